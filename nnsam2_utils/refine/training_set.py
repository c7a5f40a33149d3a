"""The nnU-Net training cases of a stage: the filter applied to the run's files (docs/method.md §5)."""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np
import pandas as pd
import SimpleITK as sitk

from nnsam2_utils.data.io import read_csv, read_image
from nnsam2_utils.refine.filters import (
    STAGE_RULES,
    area_profile,
    is_smooth,
    largest_growth,
    scan_agreement,
    scan_filter,
    stage1_filter,
)
from nnsam2_utils.refine.nnunet import IGNORE, TrainingCase
from nnsam2_utils.refine.stages import stage_names

log = logging.getLogger(__name__)


def sparse_training_cases(
    kept: pd.DataFrame, label_path, image_path, mode: Literal["slices", "ignore_label"] = "slices"
) -> list[TrainingCase]:
    """nnU-Net training cases from kept frames.

    ``slices``: every kept slice becomes its own one-slice case (2-D training on exactly the
    kept slices — cheap, and what a CPU budget affords). ``ignore_label``: every scan with a kept
    slice becomes one case whose unkept slices carry nnU-Net's ignore label (the paper's way, docs/method.md §5.3).
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


def scan_table(workspace, datasets: list[str], current: str, previous: str, max_growth: float) -> pd.DataFrame:
    """Per scan: agreement of stage ``current`` with stage ``previous`` and smoothness of ``current``."""
    from nnsam2_utils.data.geometry import to_stack

    rows = []
    for dataset in datasets:
        cases = workspace.case_table(dataset)
        for case in cases.case:
            now = to_stack(read_image(workspace.labels(current, dataset, case)))
            before = to_stack(read_image(workspace.labels(previous, dataset, case)))
            areas = {cls: area_profile(now, cls) for cls in (1, 2)}
            rows.append(
                {
                    "dataset": dataset,
                    "case": case,
                    "agreement": scan_agreement(now, before),
                    "smooth": all(is_smooth(a, max_growth) for a in areas.values()),
                    "max_growth_seen": max(largest_growth(a) for a in areas.values()),
                }
            )
    return pd.DataFrame(rows)


def stage1_training_set(
    confidence: pd.DataFrame, settings: dict, label_path, image_path
) -> tuple[pd.DataFrame, list[TrainingCase]]:
    """Stage 1's filter table and training cases from a confidence table (the ``refine`` settings' filter values;
    ``label_path(dataset, case)`` gives the pseudo-labels, ``image_path(dataset, case)`` the prepared images)."""
    selection = stage1_filter(
        confidence,
        settings.get("confidence_percentile", 90.0),
        settings.get("slice_fraction", 0.02),
        settings.get("min_slices_per_scan", 0),
    )
    return selection, sparse_training_cases(selection, label_path, image_path, settings.get("sparse_mode", "slices"))


def training_set(workspace, datasets: list[str], stage: int, settings: dict) -> tuple[pd.DataFrame, list[TrainingCase]]:
    """The filter table and the nnU-Net training cases of a refinement stage (docs/method.md §5)."""
    name, previous, before = stage_names(stage)
    image_path = lambda d, c: workspace.prepared(d, c) / "image.nii.gz"  # noqa: E731
    label_path = lambda d, c: workspace.labels(previous, d, c)  # noqa: E731
    if stage == 1:
        confidence = pd.concat(
            [read_csv(workspace.stage("stage0", d) / "confidence.csv") for d in datasets], ignore_index=True
        )
        return stage1_training_set(confidence, settings, label_path, image_path)
    rules = {**STAGE_RULES[stage], **(settings.get(f"stage{stage}") or {})}
    scans = scan_table(workspace, datasets, previous, before, rules["max_growth"])
    selection = scan_filter(scans, rules["min_agreement"], rules["fraction"], rules["min_scans"])
    return selection, full_training_cases(selection.loc[selection["kept"]], label_path, image_path)


def labelled_scans(workspace, datasets: list[str]) -> pd.DataFrame:
    """Every scan with an expert label: dataset, case, subject (the case id where the manifest names none)."""
    rows = []
    for dataset in datasets:
        cases = workspace.case_table(dataset)
        for _, row in cases.loc[cases["has_label"].astype(bool)].iterrows():
            subject = row.get("subject")
            rows.append(
                {"dataset": dataset, "case": row["case"], "subject": str(subject if pd.notna(subject) else row["case"])}
            )
    return pd.DataFrame(rows, columns=["dataset", "case", "subject"])


def subject_folds(scans: pd.DataFrame, k: int) -> pd.Series:
    """The cross-validation fold (0 … k−1) of every scan of ``scans`` (columns ``subject``, …).

    Subjects, sorted by id, are dealt to the folds in turn: a subject's scans, in every dataset that has
    them (the same person scanned T1w and T2w, or at several time points), share one fold, and the subjects
    of one dataset alternate between folds. ``k`` = 1 puts every scan in fold 0. With fewer subjects than
    ``k`` each subject is its own fold (one subject: a single fold, trained and scored on the same scans),
    with a warning: a run is not stopped for it after its expensive steps.
    """
    subjects = sorted(scans["subject"].astype(str).unique())
    if k > len(subjects):
        log.warning(
            "baselines.supervised_folds is %d, but the expert-labelled scans come from %d subject(s): %d fold(s)",
            k,
            len(subjects),
            max(len(subjects), 1),
        )
        k = max(len(subjects), 1)
    fold_of = {subject: i % k for i, subject in enumerate(subjects)}
    return scans["subject"].astype(str).map(fold_of).astype(int).rename("fold")


def supervised_cases(workspace, scans: pd.DataFrame) -> list[TrainingCase]:
    """Training cases of the supervised bound: the given scans (dataset, case) with their expert labels."""
    return full_training_cases(
        scans[["dataset", "case"]],
        lambda d, c: workspace.prepared(d, c) / "label.nii.gz",
        lambda d, c: workspace.prepared(d, c) / "image.nii.gz",
    )
