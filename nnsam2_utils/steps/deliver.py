"""Step ``deliver`` (docs/method.md §7.1): which stage's labels the run hands over for each dataset, chosen by
quality signals that need no expert labels, written on each input scan's own grid; and the review list."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from nnsam2_utils.data.geometry import to_input_grid
from nnsam2_utils.data.io import read_csv, read_image, write_csv, write_image
from nnsam2_utils.evaluate.quality import (
    choose_delivered,
    confident_slices,
    review_list,
    slice_signals,
    stage0_estimate,
    summarise_signals,
)
from nnsam2_utils.workflow.runlog import step_record
from nnsam2_utils.workflow.session import Run


@dataclass(frozen=True)
class DeliverResult:
    """The label-free signals, the stage delivered per dataset, the review list and the delivered files."""

    quality: pd.DataFrame  # dataset, stage, agreement_stage0, confident_agreement, annotated_slice_dsc, estimated_dsc
    delivered: pd.DataFrame  # dataset, delivered, reason
    slices: pd.DataFrame  # per dataset, scan, slice and stage: agreement with stage 0, stage-0 confidence
    review: pd.DataFrame  # the slices most worth a human look
    review_stage: str  # the stage the review list compares with stage 0 (the last nnU-Net)
    files: list[Path]


def refined_stages(run: Run) -> list[str]:
    """The refinement stages of the run, in order (``nnunet1`` …)."""
    return [f"nnunet{k}" for k in range(1, run.profile.refine.stages + 1)]


def deliver(run: Run) -> DeliverResult:
    """Label-free signals, the delivered stage per dataset, its labels on every input scan's grid, the review list.

    Writes ``tables/quality.csv``, ``tables/delivered.csv``, ``tables/review.csv`` and
    ``delivered/<dataset>/<case>.nii.gz`` (uint8, 0 background, 1 right, 2 left LPM, on the grid of the scan
    the manifest names).
    """
    ws, settings = run.workspace, run.section("deliver")
    with step_record(ws.runlog, "deliver", "pooled", settings):
        confidence = pd.concat([read_csv(ws.stage("stage0", d) / "confidence.csv") for d in run.datasets])
        confident = confident_slices(confidence, settings["confident_quantile"])
        slices, annotated = slice_signals(ws, run.datasets, refined_stages(run), confident)
        quality = summarise_signals(slices, annotated, stage0_estimate(confidence))
        delivered = choose_delivered(
            quality, settings["rule"], settings["min_confident_agreement"], settings["min_annotated_dsc"]
        )
        choice = dict(zip(delivered["dataset"], delivered["delivered"]))
        review_stage = refined_stages(run)[-1]
        review = review_list(slices, review_stage, settings["review_slices"])
        files = [path for dataset, stage in choice.items() for path in write_delivered(run, dataset, stage)]
    write_csv(quality, ws.tables / "quality.csv")
    write_csv(delivered, ws.tables / "delivered.csv")
    write_csv(review, ws.tables / "review.csv")
    return DeliverResult(quality, delivered, slices, review, review_stage, files)


def write_delivered(run: Run, dataset: str, stage: str) -> list[Path]:
    """A dataset's delivered labels, each written on the grid of the scan its manifest names."""
    manifest = run.manifest(dataset)
    files = []
    for case in tqdm(manifest.cases, desc=f"deliver {dataset}", leave=False):
        out = run.workspace.root / "delivered" / dataset / f"{case.id}.nii.gz"
        labels = read_image(run.workspace.labels(stage, dataset, case.id))
        write_image(to_input_grid(labels, read_image(manifest.resolve(case.image))), out)
        files.append(out)
    return files


def delivered_stages(run: Run) -> dict[str, str]:
    """The stage delivered for each dataset, as the ``deliver`` step recorded it."""
    table = read_csv(run.workspace.tables / "delivered.csv")
    return dict(zip(table["dataset"], table["delivered"]))
