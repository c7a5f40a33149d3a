"""Run-to-run variation of nnU-Net training: the final stage trained again with another seed.

Stage 0 is deterministic on CPU (same seed, same pseudo-labels, byte for byte), but nnU-Net
training is not: its augmentation runs in worker processes and the CPU kernels sum in varying
order, so even the same seed gives a slightly different model. The repeat step trains the final
refinement stage a second time on exactly the same training set (same filter output, same warm
start, same budget) with seed + 1, predicts every scan, and compares the measurements of the two
models. The comparison is expressed in the unit of the equivalence margin (percent of the group
mean), so the book can show the variation beside the ±10 % margin (docs/method.md §9, §10.5).

The repeat also re-runs stage 0 on one scan into a scratch folder and compares the bytes of the
pseudo-label with the run's (:func:`rerun_stage0_case`).

Public API: :data:`REPEAT_STAGE`, :func:`variation_table`, :func:`mask_agreement`,
:func:`rerun_stage0_case`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from nnsam2_utils.evaluate.metrics import dsc_rows

REPEAT_STAGE = "repeat"
VARIATION_COLUMNS = [
    "measure",
    "group",
    "n",
    "mean_first",
    "mean_abs_diff",
    "mean_abs_pct",
    "max_abs_pct",
    "mean_diff_pct",
    "note",
]


def _auto_values(measurements: pd.DataFrame, classes: tuple[str, ...]) -> pd.DataFrame:
    """Automated values of the two LPM classes, keyed by (dataset, case, class, measure)."""
    auto = measurements[measurements["source"] == "auto"].copy()
    auto["class"] = auto["class"].astype(str)
    auto = auto[auto["class"].isin(classes)]
    return auto.set_index(["dataset", "case", "class", "measure"])["value"].astype(float)


def variation_table(
    first: pd.DataFrame, second: pd.DataFrame, groups: dict[str, str], classes: tuple[str, ...] = ("1", "2")
) -> pd.DataFrame:
    """Per measure and dataset group: how much the second training's measurements differ from the first's.

    ``first`` and ``second`` are tidy measurement tables (columns dataset, case, class, measure,
    source, value; only ``source == "auto"`` rows are used) of the same scans from two trainings;
    ``groups`` maps dataset → group (MRI, CT, Dixon). Differences are per scan and class
    (second − first); ``mean_abs_pct`` = mean |difference| / |mean of first| × 100 and
    ``max_abs_pct`` the largest |difference| on the same scale — the scale of the equivalence margin
    (a fraction of the group mean). Keys present in only one table are left out (counted in
    ``note``); a group whose mean is zero gets NaN percentages and a note.
    """
    a, b = _auto_values(first, classes), _auto_values(second, classes)
    paired = pd.concat({"first": a, "second": b}, axis=1)
    unpaired = int(paired.isna().any(axis=1).sum())
    paired = paired.dropna().reset_index()
    rows = []
    if paired.empty:
        return pd.DataFrame(columns=VARIATION_COLUMNS)
    paired["group"] = paired["dataset"].map(groups)
    for (measure, group), part in paired.groupby(["measure", "group"], sort=True):
        diff = part["second"] - part["first"]
        mean_first = float(part["first"].mean())
        notes = []
        if unpaired:
            notes.append(f"{unpaired} scan/class values without a counterpart left out")
        scale = abs(mean_first)
        if scale == 0 or not np.isfinite(scale):
            notes.append("group mean is zero: no percentages")
            pct = lambda v: float("nan")  # noqa: E731
        else:
            pct = lambda v, s=scale: 100.0 * float(v) / s  # noqa: E731
        rows.append(
            {
                "measure": measure,
                "group": group,
                "n": int(len(part)),
                "mean_first": mean_first,
                "mean_abs_diff": float(diff.abs().mean()),
                "mean_abs_pct": pct(diff.abs().mean()),
                "max_abs_pct": pct(diff.abs().max()),
                "mean_diff_pct": pct(diff.mean()),
                "note": "; ".join(notes),
            }
        )
    return pd.DataFrame(rows, columns=VARIATION_COLUMNS)


def mask_agreement(dataset: str, case: str, first: np.ndarray, second: np.ndarray) -> list[dict]:
    """DSC rows (per class) between the masks of the two trainings for one scan (``stage``: ``run_to_run``)."""
    return dsc_rows(dataset, case, "run_to_run", second, first)
