"""Stages 1–3: confidence-guided filters and the nnU-Net training sets they define (METHOD §4).

Each filter returns a table of what was kept and why, so the book can show it.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import SimpleITK as sitk

from .io import read_image
from .nnunet import IGNORE, TrainingCase

log = logging.getLogger(__name__)


def frame_confidence(confidence: pd.DataFrame) -> pd.DataFrame:
    """Per target frame (dataset, case, slice): the summed predicted IoU over the classes (0–2).

    Prompted frames are excluded. A class without a prediction (NaN IoU: the model made no mask)
    contributes 0, so a frame missing a muscle ranks low.
    """
    frames = confidence.loc[~confidence["prompted"].astype(bool)].copy()
    frames["iou"] = frames["iou"].fillna(0.0)
    return (frames.groupby(["dataset", "case", "slice"], as_index=False)["iou"].sum()
            .rename(columns={"iou": "confidence"}))


def stage1_filter(confidence: pd.DataFrame, percentile: float = 90.0, slice_fraction: float = 0.02) -> pd.DataFrame:
    """Stage-1 selection of pseudo-labelled frames, per dataset.

    1. keep target frames whose confidence is ≥ the dataset's ``percentile``-th percentile
       (ties at the threshold are all kept);
    2. then, per slice position (index counted from the superior end), keep the top
       ``max(1, floor(slice_fraction · n))`` of them, n = the number of target frames of the
       dataset at that position (ties broken by case id for determinism).

    Returns every frame with its confidence, the dataset threshold, its rank at its position
    and ``kept`` (bool) with ``reason``.
    """
    frames = frame_confidence(confidence)
    out = []
    for dataset, group in frames.groupby("dataset", sort=True):
        group = group.copy()
        threshold = float(np.percentile(group["confidence"], percentile))
        group["threshold"] = threshold
        group["above_threshold"] = group["confidence"] >= threshold
        group["n_at_position"] = group.groupby("slice")["case"].transform("count")
        group["quota"] = group["n_at_position"].map(lambda n: max(1, math.floor(slice_fraction * n)))
        ranked = group.sort_values(["slice", "confidence", "case"], ascending=[True, False, True], kind="stable")
        ranked["rank_at_position"] = ranked.loc[ranked["above_threshold"]].groupby("slice").cumcount() + 1
        ranked["kept"] = ranked["above_threshold"] & (ranked["rank_at_position"] <= ranked["quota"])
        ranked["reason"] = np.where(~ranked["above_threshold"], "below dataset percentile",
                                    np.where(ranked["kept"], "kept", "over the per-position quota"))
        out.append(ranked)
    if not out:
        return frames.assign(threshold=np.nan, kept=False, reason="")
    table = pd.concat(out, ignore_index=True)
    table["rank_at_position"] = table["rank_at_position"].astype("Int64")
    return table.sort_values(["dataset", "case", "slice"], ignore_index=True)


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
    from .metrics import dice_per_class

    values = [v for v in dice_per_class(current, previous, classes).values() if not np.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def scan_filter(scans: pd.DataFrame, min_agreement: float = 0.90, fraction: float = 0.10,
                min_scans: int = 2) -> pd.DataFrame:
    """Stage-2/3 selection of whole scans, per dataset (METHOD §4).

    ``scans`` has one row per scan: dataset, case, agreement (mean class DSC of this stage's
    output against the previous stage's label) and smooth (bool). Eligible scans agree above
    ``min_agreement`` and are smooth; per dataset the top ``max(min_scans, floor(fraction · n))``
    eligible scans by agreement are kept (n = the dataset's scans). **(ours)** When fewer are
    eligible, the quota is filled with the best remaining scans by agreement, marked
    ``filled to minimum``, so that every dataset contributes ``min_scans`` scans.
    """
    out = []
    for _, group in scans.groupby("dataset", sort=True):
        group = group.sort_values(["agreement", "case"], ascending=[False, True], kind="stable").copy()
        quota = min(len(group), max(min_scans, math.floor(fraction * len(group))))
        group["eligible"] = (group["agreement"] > min_agreement) & group["smooth"].astype(bool)
        group["quota"] = quota
        eligible = group.index[group["eligible"]][:quota]
        filler = group.index[~group["eligible"]][: max(0, quota - len(eligible))]
        group["kept"] = group.index.isin(eligible) | group.index.isin(filler)
        group["reason"] = [_scan_reason(i in eligible, i in filler, row.eligible, row.agreement > min_agreement)
                           for i, row in group.iterrows()]
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


def sparse_training_cases(kept: pd.DataFrame, label_path, image_path,
                          mode: Literal["slices", "ignore_label"] = "slices") -> list[TrainingCase]:
    """nnU-Net training cases from kept frames.

    ``slices``: every kept slice becomes its own one-slice case (2-D training on exactly the
    kept slices — cheap, and what a CPU budget affords). ``ignore_label``: every scan with a kept
    slice becomes one case whose unkept slices carry nnU-Net's ignore label (METHOD's default).
    ``label_path(dataset, case)`` and ``image_path(dataset, case)`` give the files (LPS, prepared grid).
    Slice indices count from the superior end of the stack.
    """
    cases: list[TrainingCase] = []
    for (dataset, case), rows in kept.loc[kept["kept"]].groupby(["dataset", "case"], sort=True):
        image = read_image(image_path(dataset, case))
        label = sitk.GetArrayFromImage(read_image(label_path(dataset, case))).astype(np.uint8)
        n = label.shape[0]
        z_kept = sorted(n - 1 - int(s) for s in rows["slice"])  # stack index → LPS z index
        if mode == "slices":
            for z in z_kept:
                cases.append(TrainingCase(f"{dataset}__{case}__z{z:03d}", image[:, :, z : z + 1], label[z : z + 1]))
        else:
            sparse = np.full_like(label, IGNORE)
            sparse[z_kept] = label[z_kept]
            cases.append(TrainingCase(f"{dataset}__{case}", image, sparse))
    return cases


def full_training_cases(selected: pd.DataFrame, label_path, image_path) -> list[TrainingCase]:
    """nnU-Net training cases from whole scans (stages 2 and 3, and the supervised baseline)."""
    cases = []
    for row in selected.itertuples():
        image = read_image(image_path(row.dataset, row.case))
        label = sitk.GetArrayFromImage(read_image(label_path(row.dataset, row.case))).astype(np.uint8)
        cases.append(TrainingCase(f"{row.dataset}__{row.case}", image, label))
    return cases


def predict_all(model_folder: Path, budget, datasets: list[str], workspace, stage: str) -> pd.DataFrame:
    """Predict every prepared scan of every dataset, post-process, write labels; returns DSC rows.

    Scans whose prediction already exists are not predicted again (resume). DSC rows are only
    produced for scans with an expert label.
    """
    from tqdm.auto import tqdm

    from .io import write_image
    from .metrics import dsc_rows
    from .nnunet import load_predictor, predict_image
    from .postprocess import clean_volume

    predictor = None
    rows = []
    for dataset in datasets:
        cases = pd.read_csv(workspace.prepared(dataset) / "cases.csv")
        for case in tqdm(list(cases.case), desc=f"{stage} predict {dataset}", leave=False):
            out = workspace.labels(stage, dataset, case)
            folder = workspace.prepared(dataset, case)
            if out.exists():
                labels = sitk.GetArrayFromImage(read_image(out))
            else:
                predictor = predictor or load_predictor(model_folder, budget)
                image = read_image(folder / "image.nii.gz")
                labels = clean_volume(predict_image(predictor, image))
                result = sitk.GetImageFromArray(labels)
                result.CopyInformation(image)
                write_image(result, out)
            if (folder / "label.nii.gz").exists():
                truth = sitk.GetArrayFromImage(read_image(folder / "label.nii.gz"))
                rows += dsc_rows(dataset, case, stage, labels, truth)
    return pd.DataFrame(rows, columns=["dataset", "case", "class", "stage", "dsc"])


STAGE_RULES = {  # METHOD §4 defaults, every value a profile parameter
    2: {"min_agreement": 0.90, "max_growth": 1.5, "fraction": 0.10, "min_scans": 2},
    3: {"min_agreement": 0.90, "max_growth": 1.25, "fraction": 0.20, "min_scans": 2},
}


def scan_table(workspace, datasets: list[str], current: str, previous: str, max_growth: float) -> pd.DataFrame:
    """Per scan: agreement of stage ``current`` with stage ``previous`` and smoothness of ``current``."""
    from .prepare import to_stack

    rows = []
    for dataset in datasets:
        cases = pd.read_csv(workspace.prepared(dataset) / "cases.csv")
        for case in cases.case:
            now = to_stack(read_image(workspace.labels(current, dataset, case)))
            before = to_stack(read_image(workspace.labels(previous, dataset, case)))
            areas = {cls: area_profile(now, cls) for cls in (1, 2)}
            rows.append({"dataset": dataset, "case": case, "agreement": scan_agreement(now, before),
                         "smooth": all(is_smooth(a, max_growth) for a in areas.values()),
                         "max_growth_seen": max(_max_growth(a) for a in areas.values())})
    return pd.DataFrame(rows)


def _max_growth(areas: np.ndarray) -> float:
    ratios = [after / before for before, after in zip(areas[:-1], areas[1:]) if before > 0]
    return float(max(ratios)) if ratios else float("nan")


def stage_names(stage: int) -> tuple[str, str, str | None]:
    """(this stage, the stage whose labels it trains on, the stage those labels are checked against)."""
    name = f"nnunet{stage}"
    previous = "stage0" if stage == 1 else f"nnunet{stage - 1}"
    before = None if stage == 1 else ("stage0" if stage == 2 else f"nnunet{stage - 2}")
    return name, previous, before


def training_set(workspace, datasets: list[str], stage: int, settings: dict) -> tuple[pd.DataFrame, list[TrainingCase]]:
    """The filter table and the nnU-Net training cases of a refinement stage (METHOD §4)."""
    name, previous, before = stage_names(stage)
    image_path = lambda d, c: workspace.prepared(d, c) / "image.nii.gz"  # noqa: E731
    label_path = lambda d, c: workspace.labels(previous, d, c)  # noqa: E731
    if stage == 1:
        confidence = pd.concat([pd.read_csv(workspace.stage("stage0", d) / "confidence.csv") for d in datasets],
                               ignore_index=True)
        selection = stage1_filter(confidence, settings.get("confidence_percentile", 90.0),
                                  settings.get("slice_fraction", 0.02))
        return selection, sparse_training_cases(selection, label_path, image_path,
                                                settings.get("sparse_mode", "slices"))
    rules = {**STAGE_RULES[stage], **(settings.get(f"stage{stage}") or {})}
    scans = scan_table(workspace, datasets, previous, before, rules["max_growth"])
    selection = scan_filter(scans, rules["min_agreement"], rules["fraction"], rules["min_scans"])
    return selection, full_training_cases(selection.loc[selection["kept"]], label_path, image_path)


def supervised_cases(workspace, datasets: list[str]) -> list[TrainingCase]:
    """Every scan with its expert label: the fully supervised upper bound's training set."""
    rows = []
    for dataset in datasets:
        cases = pd.read_csv(workspace.prepared(dataset) / "cases.csv")
        rows += [{"dataset": dataset, "case": c} for c in cases.loc[cases["has_label"].astype(bool), "case"]]
    return full_training_cases(pd.DataFrame(rows, columns=["dataset", "case"]),
                               lambda d, c: workspace.prepared(d, c) / "label.nii.gz",
                               lambda d, c: workspace.prepared(d, c) / "image.nii.gz")


def fit_stage(workspace, stage: int, cases: list[TrainingCase], budget, settings: dict,
              name: str | None = None, dataset_id: int | None = None) -> Path:
    """Train (or resume) the nnU-Net of a refinement stage; returns its model folder.

    Stage 1 trains on sparse pseudo-labels (2-D kept slices, or volumes with nnU-Net's ignore
    label); with ``budget.warm_start`` stages 2-3 start from the previous stage's plan and final
    weights rather than from random weights (a CPU-budget choice; the paper trains each anew).
    ``name`` and ``dataset_id`` train the same stage again under another folder and nnU-Net
    dataset (the repeat with another seed, :mod:`.repeat`); by default ``nnunet<stage>``, 500 + stage.
    """
    from .nnunet import fit, model_folder

    stage_name, previous, _ = stage_names(stage)
    name = name or stage_name
    root = workspace.stage(name) / "nnunet"
    start_from = None
    if stage > 1 and budget.warm_start:
        start_from = model_folder(workspace.stage(previous) / "nnunet", 500 + stage - 1, previous, budget)
    return fit(root, dataset_id or 500 + stage, name, cases, budget,
               ignore_label=stage == 1 and settings.get("sparse_mode") == "ignore_label", start_from=start_from)


def stage_settings(settings: dict, stage: int) -> dict:
    """A stage's refine settings: the section's values, overridden by its ``stage<k>`` entry."""
    return {**{k: v for k, v in settings.items() if not k.startswith("stage")}, **(settings.get(f"stage{stage}") or {})}


def stage_budget(settings: dict, stage: int, seed: int = 0):
    """The nnU-Net budget of a refinement stage (``stage<k>`` entries override the section)."""
    from .nnunet import Budget

    return Budget.from_settings(stage_settings(settings, stage), seed=seed)
