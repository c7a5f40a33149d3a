"""The synthetic demo cohort: anatomy (anatomy), dataset and size specifications (specs), rendering (render),
and writing a cohort with manifests and truth tables (cohort); the example of a user's own dataset (own_example).
"""
