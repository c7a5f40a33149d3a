"""Evaluation: DSC (metrics), muscle measurements, agreement statistics, run-to-run variation.

This layer knows no model: it reads label volumes and images and computes numbers.
"""
