"""Preparation (docs/method.md §2): each scan cropped, reoriented and decimated (dataset), the promptable
model's normalised 256² input (model_input), and a user-drawn annotated slice (annotation).
"""
