"""Tables and figures of the results chapter, computed from a run's files."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from nnsam2_utils.data.io import read_csv
from nnsam2_utils.evaluate.metrics import dice
from nnsam2_utils.prepare.model_input import load_stack
from nnsam2_utils.report.plots import CLASS_COLOURS, STAGE_LABELS, STAGE_ORDER, show_slice
from nnsam2_utils.workflow.workspace import Workspace

DSC_COLUMNS = ["dataset", "case", "class", "stage", "dsc"]


def collect_dsc(workspace: Workspace, datasets: list[str]) -> pd.DataFrame:
    """The tidy DSC table of a run: every stage and baseline that ran (pooled or per dataset)."""
    frames = []
    for stage in STAGE_ORDER:
        paths = [workspace.stage(stage) / "dsc.csv"] + [workspace.stage(stage, d) / "dsc.csv" for d in datasets]
        frames += [read_csv(p) for p in paths if p.exists()]
    frames += [read_csv(p) for p in sorted(workspace.root.glob("external_*/*/dsc.csv"))]  # see external.py
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=DSC_COLUMNS)
    return table.loc[table["dataset"].isin(datasets), DSC_COLUMNS].reset_index(drop=True)


def stage_order(stages) -> list[str]:
    """Stages in pipeline order (unknown names last, alphabetically)."""
    known = [s for s in STAGE_ORDER if s in set(stages)]
    return known + sorted(set(stages) - set(known))


def final_stage(dsc: pd.DataFrame) -> str:
    """The last nnU-Net stage present (the nnsam2 result), else stage 0."""
    nnunets = [s for s in stage_order(dsc["stage"].unique()) if s.startswith("nnunet")]
    return nnunets[-1] if nnunets else "stage0"


def dsc_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Wide table: one row per dataset, one column per stage, cells 'mean ± SD (n)'."""
    cells = summary.assign(
        cell=[f"{m:.3f} ± {s:.3f}" if np.isfinite(s) else f"{m:.3f}" for m, s in zip(summary["mean"], summary["sd"])]
    )
    wide = cells.pivot(index="dataset", columns="stage", values="cell")
    wide = wide[stage_order(wide.columns)]
    wide.columns = [STAGE_LABELS.get(c, c) for c in wide.columns]
    n = summary.groupby("dataset")["n"].max()
    wide.insert(0, "scans", n)
    return wide


def confidence_vs_dsc(
    workspace: Workspace, dataset: str, confidence: pd.DataFrame, stage: str = "stage0"
) -> pd.DataFrame:
    """Per target slice and class of stage 0: predicted IoU and the true 2-D DSC of the pseudo-label.

    ``stage``: the stage-0 folder (``stage0``, or ``stage0_<backend>`` for a compared backend)."""
    rows = []
    for case, group in confidence.loc[~confidence["prompted"].astype(bool)].groupby("case"):
        truth, _ = load_stack(workspace.prepared(dataset, case), "label")
        pseudo, _ = load_stack(workspace.labels(stage, dataset, case).parent, case)  # labels/<case>.nii.gz
        for record in group.to_dict("records"):
            cls, index = int(record["class"]), int(record["slice"])
            rows.append(
                {
                    "dataset": dataset,
                    "case": case,
                    "slice": index,
                    "class": cls,
                    "iou": record["iou"],
                    "dsc": dice(pseudo[index] == cls, truth[index] == cls),
                }
            )
    return pd.DataFrame(rows)


def confidence_figure(points: pd.DataFrame):
    """Scatter of predicted IoU against the true slice DSC, coloured by class."""
    fig, ax = plt.subplots(figsize=(4.2, 3.6))
    for cls, colour in CLASS_COLOURS.items():
        sel = points[points["class"] == cls]
        ax.scatter(sel["iou"], sel["dsc"], s=12, color=colour, alpha=0.8, label="right LPM" if cls == 1 else "left LPM")
    ax.set_xlabel("predicted IoU (model confidence)")
    ax.set_ylabel("true slice DSC")
    ax.set_xlim(0, 1.05)
    ax.set_ylim(-0.02, 1.02)
    ax.legend(frameon=False, loc="lower right")
    fig.tight_layout()
    return fig


def pick_cases(dsc: pd.DataFrame, stage: str) -> list[tuple[str, str, float, str]]:
    """Best, median and worst scan of a stage by mean class DSC: (dataset, case, dsc, tag)."""
    per_scan = dsc[dsc["stage"] == stage].groupby(["dataset", "case"])["dsc"].mean().sort_values()
    if per_scan.empty:
        return []
    picks = [(per_scan.index[-1], "best"), (per_scan.index[len(per_scan) // 2], "median"), (per_scan.index[0], "worst")]
    return [(d, c, float(per_scan[(d, c)]), tag) for (d, c), tag in picks]


def overlay_figure(workspace: Workspace, dsc: pd.DataFrame, stage: str):
    """Per dataset (rows), its best, median and worst scan of a stage (columns, by mean class DSC):
    the middle slice of the region with the prediction filled and the expert label as a contour."""
    datasets = sorted(dsc.loc[dsc["stage"] == stage, "dataset"].unique())
    fig, axes = plt.subplots(max(1, len(datasets)), 3, figsize=(7.5, 2.6 * max(1, len(datasets))), squeeze=False)
    for row, dataset in zip(axes, datasets):
        for ax, (_, case, value, tag) in zip(row, pick_cases(dsc[dsc["dataset"] == dataset], stage)):
            image, _ = load_stack(workspace.prepared(dataset, case))
            truth, _ = load_stack(workspace.prepared(dataset, case), "label")
            pred, _ = load_stack(workspace.labels(stage, dataset, case).parent, case)
            k = len(image) // 2
            show_slice(ax, image[k], pred[k], f"{dataset} {tag}: {case}\nDSC {value:.3f}, slice {k}")
            for cls in CLASS_COLOURS:
                if (truth[k] == cls).any():
                    ax.contour(truth[k] == cls, levels=[0.5], colors=["white"], linewidths=0.8)
    fig.suptitle(f"{STAGE_LABELS.get(stage, stage)}: prediction (fill) and expert label (white contour)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.985))
    return fig


def stage_figure(dsc: pd.DataFrame):
    """Mean scan DSC per dataset across the pipeline's stages (lines), baselines as markers."""
    per_scan = dsc.groupby(["dataset", "stage", "case"])["dsc"].mean().groupby(["dataset", "stage"]).mean().unstack()
    pipeline = [s for s in stage_order(per_scan.columns) if s == "stage0" or s.startswith("nnunet")]
    baselines = [s for s in stage_order(per_scan.columns) if s not in pipeline]
    fig, ax = plt.subplots(figsize=(7.2, 3.8))
    x = np.arange(len(pipeline))
    colours = plt.get_cmap("tab10")
    for i, (dataset, row) in enumerate(per_scan.iterrows()):
        ax.plot(x, row[pipeline].to_numpy(float), marker="o", color=colours(i), label=dataset)
        for j, base in enumerate(baselines):
            ax.scatter(len(pipeline) + j, row[base], color=colours(i), marker="s", s=22)
    ax.set_xticks(list(x) + [len(pipeline) + j for j in range(len(baselines))])
    ax.set_xticklabels([STAGE_LABELS.get(s, s) for s in pipeline + baselines], rotation=25, ha="right", fontsize=8)
    if baselines:
        ax.axvline(len(pipeline) - 0.5, color="0.8", linewidth=1)
    ax.set_ylabel("mean scan DSC")
    ax.set_ylim(0, 1.0)
    ax.legend(frameon=False, fontsize=7, ncol=2, loc="lower left")
    fig.tight_layout()
    return fig


def kept_counts(workspace: Workspace, stages: list[str]) -> pd.DataFrame:
    """Pseudo-labels kept by every refinement filter, per dataset: slices (stage 1) or scans (2, 3)."""
    columns = {}
    for stage in stages:
        path = workspace.stage(stage) / "selection.csv"
        if path.exists():
            selection = read_csv(path)
            unit = "slices" if stage == "nnunet1" else "scans"
            kept = selection.groupby("dataset")["kept"].sum().astype(int).astype(str)
            total = selection.groupby("dataset")["kept"].size().astype(str)
            columns[f"{STAGE_LABELS.get(stage, stage)} ({unit} kept / candidates)"] = kept + " / " + total
    return pd.DataFrame(columns)


def mean_dsc_per_stage(dsc: pd.DataFrame) -> pd.Series:
    """Mean over scans of each scan's mean class DSC, per stage."""
    return dsc.groupby(["stage", "dataset", "case"])["dsc"].mean().groupby("stage").mean()


def kept_summary(selection: pd.DataFrame, stage: int) -> pd.DataFrame:
    """Per dataset: candidates (frames for stage 1, scans for stages 2–3) and how many the filter kept."""
    unit = "slice" if stage == 1 else "case"
    return selection.groupby("dataset").agg(candidates=(unit, "count"), kept=("kept", "sum"))
