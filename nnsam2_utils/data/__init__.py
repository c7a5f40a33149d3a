"""The data layer: manifests, readers and writers, geometry of a scan, label maps, checks, the synthetic cohort.

It imports nothing from preparation, propagation, refinement or the book.
"""
