"""nnsam2 helper module."""
