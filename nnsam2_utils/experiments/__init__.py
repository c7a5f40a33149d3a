"""Questions asked of the method with the run's own models, beside the pipeline (docs/method.md §10.6): which slice
to annotate (which_slice)."""
