"""Overlap metrics with explicit edge-case semantics.

Dice similarity coefficient per class: ``2|A∩B| / (|A| + |B|)``. When both A and B are
empty the DSC is undefined and returned as NaN (excluded from means, and counted), when
exactly one is empty it is 0.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def dice(prediction: np.ndarray, reference: np.ndarray) -> float:
    """DSC of two boolean masks of equal shape; NaN when both are empty."""
    prediction = np.asarray(prediction, dtype=bool)
    reference = np.asarray(reference, dtype=bool)
    if prediction.shape != reference.shape:
        raise ValueError(f"shape mismatch: prediction {prediction.shape} vs reference {reference.shape}")
    total = int(prediction.sum()) + int(reference.sum())
    if total == 0:
        return float("nan")
    return 2.0 * int(np.logical_and(prediction, reference).sum()) / total


def dice_per_class(
    prediction: np.ndarray, reference: np.ndarray, classes: tuple[int, ...] = (1, 2)
) -> dict[int, float]:
    """DSC for each class id of two label arrays."""
    return {cls: dice(prediction == cls, reference == cls) for cls in classes}


def dsc_rows(
    dataset: str,
    case: str,
    stage: str,
    prediction: np.ndarray,
    reference: np.ndarray,
    classes: tuple[int, ...] = (1, 2),
) -> list[dict]:
    """Tidy rows (dataset, case, class, stage, dsc) for one scan."""
    return [
        {"dataset": dataset, "case": case, "class": cls, "stage": stage, "dsc": value}
        for cls, value in dice_per_class(prediction, reference, classes).items()
    ]


def summarise_dsc(table: pd.DataFrame) -> pd.DataFrame:
    """Per dataset and stage: mean ± SD over scans of the per-scan mean class DSC, and n."""
    per_scan = table.groupby(["dataset", "stage", "case"], as_index=False)["dsc"].mean()
    out = per_scan.groupby(["dataset", "stage"])["dsc"].agg(mean="mean", sd="std", n="count").reset_index()
    return out
