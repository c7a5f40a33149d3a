"""Using what a run trained (docs/method.md §13): new scans read and prepared (inputs), the run's trained nnU-Net
found and checked (model), segmented with their labels, measurements, overlays and provenance (predict, outputs),
and the model exported for nnU-Net's own tools with its model card (export, model_card).

This phase sits above the pipeline: it reads a finished run's files and never changes them.
"""
