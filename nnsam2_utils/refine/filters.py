"""The stage filters as pure functions on tables (docs/method.md §5.1–5.2): stage 1 keeps confident frames,
stages 2–3 keep whole scans that agree with the previous stage and grow smoothly.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from nnsam2_utils.evaluate.quality import frame_confidence


def stage1_filter(
    confidence: pd.DataFrame, percentile: float = 90.0, slice_fraction: float = 0.02, min_per_scan: int = 0
) -> pd.DataFrame:
    """Stage-1 selection of pseudo-labelled frames, per dataset.

    1. keep target frames whose confidence is ≥ the dataset's ``percentile``-th percentile
       (ties at the threshold are all kept);
    2. then, per slice position (index counted from the superior end), keep the top
       ``max(1, floor(slice_fraction · n))`` of them, n = the number of target frames of the
       dataset at that position (ties broken by case id for determinism);
    3. **(ours)** a scan left with fewer than ``min_per_scan`` kept frames gets its most confident
       remaining frames at or above the dataset's median confidence, up to ``min_per_scan``
       (reason ``floor per scan``): a dataset of a few scans keeps enough to train on (0: the paper).

    Returns every frame with its confidence, the dataset threshold, its rank at its position
    and ``kept`` (bool) with ``reason``.
    """
    frames = frame_confidence(confidence)
    out = []
    for _dataset, group in frames.groupby("dataset", sort=True):
        group = group.copy()
        threshold = float(np.percentile(group["confidence"], percentile))
        group["threshold"] = threshold
        group["above_threshold"] = group["confidence"] >= threshold
        group["n_at_position"] = group.groupby("slice")["case"].transform("count")
        group["quota"] = group["n_at_position"].map(lambda n: max(1, math.floor(slice_fraction * n)))
        ranked = group.sort_values(["slice", "confidence", "case"], ascending=[True, False, True], kind="stable")
        ranked["rank_at_position"] = ranked.loc[ranked["above_threshold"]].groupby("slice").cumcount() + 1
        ranked["kept"] = ranked["above_threshold"] & (ranked["rank_at_position"] <= ranked["quota"])
        ranked["reason"] = np.where(
            ~ranked["above_threshold"],
            "below dataset percentile",
            np.where(ranked["kept"], "kept", "over the per-position quota"),
        )
        out.append(_floor_per_scan(ranked, min_per_scan))
    if not out:
        return frames.assign(threshold=np.nan, kept=False, reason="")
    table = pd.concat(out, ignore_index=True)
    table["rank_at_position"] = table["rank_at_position"].astype("Int64")
    return table.sort_values(["dataset", "case", "slice"], ignore_index=True)


def _floor_per_scan(frames: pd.DataFrame, min_per_scan: int) -> pd.DataFrame:
    """Add each scan's most confident unkept frames (≥ the dataset median) until it has ``min_per_scan`` kept."""
    if min_per_scan <= 0:
        return frames
    median = float(frames["confidence"].median())
    ordered = frames.sort_values(["case", "confidence", "slice"], ascending=[True, False, True], kind="stable")
    candidates = ordered.loc[~ordered["kept"] & (ordered["confidence"] >= median)]
    missing = (min_per_scan - ordered.groupby("case")["kept"].sum()).clip(lower=0)
    rank = candidates.groupby("case").cumcount()
    added = candidates.index[rank.to_numpy() < candidates["case"].map(missing).to_numpy()]
    frames = frames.copy()
    frames.loc[added, "kept"] = True
    frames.loc[added, "reason"] = "floor per scan"
    return frames


def area_profile(labels: np.ndarray, cls: int) -> np.ndarray:
    """Pixel count of one class per slice of a superior→inferior stack."""
    return (labels == cls).reshape(len(labels), -1).sum(axis=1)


def is_smooth(areas: np.ndarray, max_growth: float) -> bool:
    """True if, slice to slice (superior → inferior), the area grows by at most ``max_growth``×.

    Pairs of two empty slices are skipped; an empty slice followed by a non-empty one is
    unbounded growth (not smooth); shrinking is always allowed.
    """
    for before, after in zip(areas[:-1], areas[1:]):
        if before == 0 and after == 0:
            continue
        if before == 0 or after > max_growth * before:
            return False
    return True


def scan_agreement(current: np.ndarray, previous: np.ndarray, classes: tuple[int, ...] = (1, 2)) -> float:
    """Mean class DSC between a stage's output and the previous stage's label (NaN classes ignored)."""
    from nnsam2_utils.evaluate.metrics import dice_per_class

    values = [v for v in dice_per_class(current, previous, classes).values() if not np.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def scan_filter(
    scans: pd.DataFrame, min_agreement: float = 0.90, fraction: float = 0.10, min_scans: int = 2
) -> pd.DataFrame:
    """Stage-2/3 selection of whole scans, per dataset (docs/method.md §5.2).

    ``scans`` has one row per scan: dataset, case, agreement (mean class DSC of this stage's
    output against the previous stage's label) and smooth (bool). Eligible scans agree above
    ``min_agreement`` and are smooth; per dataset the top ``max(min_scans, floor(fraction · n))``
    eligible scans by agreement are kept (n = the dataset's scans). **(ours)** When fewer than
    ``min_scans`` are eligible, the best remaining scans by agreement fill up to ``min_scans`` (not
    up to the quota), marked ``filled to minimum``, so that every dataset contributes ``min_scans``.
    """
    out = []
    for _, group in scans.groupby("dataset", sort=True):
        group = group.sort_values(["agreement", "case"], ascending=[False, True], kind="stable").copy()
        quota = min(len(group), max(min_scans, math.floor(fraction * len(group))))
        group["eligible"] = (group["agreement"] > min_agreement) & group["smooth"].astype(bool)
        group["quota"] = quota
        eligible = group.index[group["eligible"]][:quota]
        filler = group.index[~group["eligible"]][: max(0, min(min_scans, len(group)) - len(eligible))]
        group["kept"] = group.index.isin(eligible) | group.index.isin(filler)
        group["reason"] = [
            _scan_reason(i in eligible, i in filler, row.eligible, row.agreement > min_agreement)
            for i, row in group.iterrows()
        ]
        out.append(group)
    columns = list(scans.columns) + ["eligible", "quota", "kept", "reason"]
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame(columns=columns)


def _scan_reason(kept: bool, filled: bool, eligible: bool, agrees: bool) -> str:
    if kept:
        return "kept"
    if filled:
        return "filled to minimum"
    if eligible:
        return "over the quota"
    return "not smooth" if agrees else "low agreement"


STAGE_RULES = {  # docs/method.md §5.2 defaults, every value a profile parameter
    2: {"min_agreement": 0.90, "max_growth": 1.5, "fraction": 0.10, "min_scans": 2},
    3: {"min_agreement": 0.90, "max_growth": 1.25, "fraction": 0.20, "min_scans": 2},
}


def largest_growth(areas: np.ndarray) -> float:
    ratios = [after / before for before, after in zip(areas[:-1], areas[1:]) if before > 0]
    return float(max(ratios)) if ratios else float("nan")
