"""Running the pipeline: typed run profiles and work folders, run keys and step records, the papermill
wrapper, the pre-run check, and which code each step depends on.
"""
