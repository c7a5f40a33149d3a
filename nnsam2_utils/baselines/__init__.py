"""Baselines beside nnsam2: one-shot registration and a plain threshold, and predictions made elsewhere."""
