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
