"""Figures of the teaching chapter: one scan walked through every stage of nnsam2."""

from __future__ import annotations

import json

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from nnsam2_utils.evaluate.metrics import dice_per_class
from nnsam2_utils.prepare.model_input import load_stack
from nnsam2_utils.report.plots import STAGE_COLOURS, STAGE_LABELS, show_slice
from nnsam2_utils.workflow.workspace import Workspace


def annotation_of(workspace: Workspace, dataset: str) -> dict:
    """The stage-0 annotation record of a dataset (reference scan, annotated slice, backend)."""
    return json.loads((workspace.stage("stage0", dataset) / "annotation.json").read_text(encoding="utf-8"))


def annotated_slice_figure(workspace: Workspace, dataset: str):
    """The one annotated slice of the dataset: image, and image with its expert mask."""
    note = annotation_of(workspace, dataset)
    image, _ = load_stack(workspace.prepared(dataset, note["reference_case"]))
    label, _ = load_stack(workspace.prepared(dataset, note["reference_case"]), note.get("annotation_volume", "label"))
    k = note["annotated_slice"]
    fig, axes = plt.subplots(1, 2, figsize=(6.4, 3.4))
    show_slice(axes[0], image[k], None, f"reference scan {note['reference_case']}, slice {k} (L3/L4)")
    show_slice(axes[1], image[k], label[k], "the one annotated slice of the dataset")
    fig.tight_layout()
    return fig


def propagation_figure(workspace: Workspace, dataset: str, case: str, confidence: pd.DataFrame, n_show: int = 6):
    """Stage-0 pseudo-labels down the scan (superior → inferior) with the predicted IoU per slice."""
    image, _ = load_stack(workspace.prepared(dataset, case))
    pseudo, _ = load_stack(workspace.labels("stage0", dataset, case).parent, case)
    picks = np.unique(np.linspace(0, len(image) - 1, min(n_show, len(image))).round().astype(int))
    fig = plt.figure(figsize=(2.1 * len(picks), 5.2))
    grid = fig.add_gridspec(2, len(picks), height_ratios=[1.3, 1])
    for i, k in enumerate(picks):
        show_slice(fig.add_subplot(grid[0, i]), image[k], pseudo[k], f"slice {k}")
    ax = fig.add_subplot(grid[1, :])
    mine = confidence[confidence["case"] == case]
    for cls, colour, name in ((1, "#e4572e", "right LPM"), (2, "#17bebb", "left LPM")):
        part = mine[mine["class"] == cls].sort_values("slice")
        ax.plot(part["slice"], part["iou"], marker="o", color=colour, label=name)
    ax.set_xlabel("slice (0 = L3/L4 disc, superior)")
    ax.set_ylabel("predicted IoU")
    ax.set_ylim(0, 1.05)
    ax.legend(frameon=False)
    fig.tight_layout()
    return fig


def filter_figure(selection: pd.DataFrame, dataset: str, case: str):
    """Stage-1 filter of a dataset: every frame's confidence by slice position, threshold, kept frames."""
    part = selection[selection["dataset"] == dataset]
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    ax.scatter(part["slice"], part["confidence"], s=14, color="0.65", label="target frames")
    mine = part[part["case"] == case]
    ax.scatter(mine["slice"], mine["confidence"], s=22, color="#4361ee", label=f"frames of {case}")
    kept = part[part["kept"].astype(bool)]
    ax.scatter(
        kept["slice"],
        kept["confidence"],
        s=70,
        facecolors="none",
        edgecolors="#2b9348",
        linewidths=1.6,
        label="kept for nnU-Net 1",
    )
    ax.axhline(part["threshold"].iloc[0], color="#bc4749", linestyle="--", linewidth=1, label="dataset 90th percentile")
    ax.set_xlabel("slice position (0 = superior)")
    ax.set_ylabel("frame confidence (Σ predicted IoU)")
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    return fig


def stages_figure(workspace: Workspace, dataset: str, case: str, stages: list[str]):
    """The middle slice of the scan: expert label, then every stage's output with its scan DSC."""
    image, _ = load_stack(workspace.prepared(dataset, case))
    truth, _ = load_stack(workspace.prepared(dataset, case), "label")
    k = len(image) // 2
    fig, axes = plt.subplots(1, len(stages) + 1, figsize=(2.6 * (len(stages) + 1), 3.2))
    show_slice(axes[0], image[k], truth[k], "expert label")
    for ax, stage in zip(axes[1:], stages):
        pred, _ = load_stack(workspace.labels(stage, dataset, case).parent, case)
        value = np.nanmean(list(dice_per_class(pred, truth).values()))
        show_slice(ax, image[k], pred[k], f"{STAGE_LABELS.get(stage, stage)}\nscan DSC {value:.3f}")
        ax.title.set_color(STAGE_COLOURS.get(stage, "black"))
    fig.tight_layout()
    return fig


def pick_scan(
    dsc: pd.DataFrame, datasets: list[str], dataset: str | None = None, case: str | None = None
) -> tuple[str, str]:
    """The scan to follow: ``dataset`` (default: the run's first with expert labels) and ``case`` (default: its
    scan with the median stage-0 DSC)."""
    from nnsam2_utils.report.results import pick_cases

    labelled = [d for d in datasets if d in set(dsc["dataset"])]
    if not labelled:
        raise ValueError(
            "the teaching walk-through compares every stage with the expert labels; no dataset of this run has any"
        )
    dataset = dataset or labelled[0]
    if case is None:
        case = next(c for _, c, _, tag in pick_cases(dsc[dsc["dataset"] == dataset], "stage0") if tag == "median")
    return dataset, case


def stages_of(dsc: pd.DataFrame) -> list[str]:
    """Stage 0 and the refinement stages of the run, in order."""
    from nnsam2_utils.report.results import stage_order

    return [s for s in stage_order(dsc["stage"].unique()) if s == "stage0" or s.startswith("nnunet")]


def scan_table(dsc: pd.DataFrame, dataset: str, case: str, stages: list[str]) -> pd.DataFrame:
    """DSC per stage (rows) and class (columns) of one scan."""
    scan = dsc[(dsc["dataset"] == dataset) & (dsc["case"] == case)]
    return scan.pivot(index="stage", columns="class", values="dsc").loc[stages].round(3)
