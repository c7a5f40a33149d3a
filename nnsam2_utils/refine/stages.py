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


def stage_names(stage: int) -> tuple[str, str, str | None]:
    """(this stage, the stage whose labels it trains on, the stage those labels are checked against)."""
    name = f"nnunet{stage}"
    previous = "stage0" if stage == 1 else f"nnunet{stage - 1}"
    before = None if stage == 1 else ("stage0" if stage == 2 else f"nnunet{stage - 2}")
    return name, previous, before


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
