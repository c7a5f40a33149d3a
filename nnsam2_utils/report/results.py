"""Tables and figures of the results chapter, computed from a run's files."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from nnsam2_utils.data.io import read_csv
from nnsam2_utils.evaluate.metrics import dice
from nnsam2_utils.prepare.model_input import load_stack
from nnsam2_utils.report.plots import CLASS_COLOURS, STAGE_COLOURS, STAGE_LABELS, STAGE_ORDER, show_slice
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


def scan_dsc(dsc: pd.DataFrame, stages: list[str] | None = None) -> pd.DataFrame:
    """One row per dataset, stage and scan: its mean class DSC (only ``stages`` when given; in pipeline order)."""
    per_scan = dsc.groupby(["dataset", "stage", "case"], as_index=False)["dsc"].mean()
    if stages is not None:
        per_scan = per_scan[per_scan["stage"].isin(stages)]
    order = {stage: i for i, stage in enumerate(stage_order(per_scan["stage"].unique()))}
    return per_scan.sort_values(["dataset", "stage", "case"], key=lambda c: c.map(order) if c.name == "stage" else c)


def zoomed_limits(values, pad: float = 0.08, floor: float = 0.01) -> tuple[float, float]:
    """Y-limits around the data (a fraction ``pad`` of its range, at least ``floor``), never above 1 + pad."""
    values = np.asarray(values, float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0
    low, high = float(values.min()), float(values.max())
    margin = max(pad * (high - low), floor)
    return low - margin, min(high + margin, 1.0 + margin)


def scan_points_figure(dsc: pd.DataFrame, stages: list[str] | None = None, seed: int = 0):
    """Per dataset (a panel each), per stage: a dot per scan (its mean class DSC, jittered sideways) and the mean over
    scans as a black bar; baselines right of a grey line. Each panel's y-axis is zoomed to its data, not 0–1."""
    points = scan_dsc(dsc, stages)
    shown = stage_order(points["stage"].unique())
    pipeline = [s for s in shown if s == "stage0" or s.startswith("nnunet")]
    shown = pipeline + [s for s in shown if s not in pipeline]
    datasets = sorted(points["dataset"].unique())
    columns = min(3, max(1, len(datasets)))
    rows = -(-max(1, len(datasets)) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2.9 * columns, 2.9 * rows), squeeze=False)
    rng = np.random.default_rng(seed)
    for ax, dataset in zip(axes.flat, datasets):
        part = points[points["dataset"] == dataset]
        for x, stage in enumerate(shown):
            values = part.loc[part["stage"] == stage, "dsc"].to_numpy(float)
            if values.size:
                jitter = rng.uniform(-0.16, 0.16, values.size)
                ax.scatter(x + jitter, values, s=14, color=STAGE_COLOURS.get(stage, "0.4"), alpha=0.85, zorder=3)
                ax.hlines(values.mean(), x - 0.32, x + 0.32, color="black", linewidth=1.6, zorder=4)
        if len(pipeline) < len(shown):
            ax.axvline(len(pipeline) - 0.5, color="0.8", linewidth=1)
        ax.set_ylim(*zoomed_limits(part["dsc"]))
        ax.set_xlim(-0.6, len(shown) - 0.4)
        ax.set_xticks(range(len(shown)))
        ax.set_xticklabels([STAGE_LABELS.get(s, s) for s in shown], rotation=35, ha="right", fontsize=7)
        ax.set_title(dataset, fontsize=9)
        ax.grid(axis="y", color="0.92", linewidth=0.8)
        ax.tick_params(axis="y", labelsize=7)
    for ax in axes[:, 0]:
        ax.set_ylabel("scan DSC (mean of classes)", fontsize=8)
    for ax in list(axes.flat)[len(datasets) :]:
        ax.set_visible(False)
    fig.tight_layout()
    return fig


#: Where the per-slice caption splits the region: the first and last fifth are its ends (L3/L4 and L5/S1 discs).
END_FRACTION = 0.2


def slice_dsc(workspace: Workspace, dsc: pd.DataFrame, stages: list[str]) -> pd.DataFrame:
    """DSC per slice of each stage's label file against the expert label, for every scan ``dsc`` scores.

    One row per dataset, scan, stage and slice: ``position`` along the region (0 = L3/L4, the first slice of the
    superior → inferior stack; 1 = L5/S1) and ``dsc``, the mean over the classes present in either label on that
    slice (NaN when neither class is on it in either)."""
    rows = []
    for dataset, case in dsc[["dataset", "case"]].drop_duplicates().itertuples(index=False):
        truth, _ = load_stack(workspace.prepared(dataset, case), "label")
        positions = np.linspace(0.0, 1.0, len(truth)) if len(truth) > 1 else np.zeros(1)
        for stage in stages:
            labels, _ = load_stack(workspace.labels(stage, dataset, case).parent, case)
            for index, position in enumerate(positions):
                values = [dice(labels[index] == cls, truth[index] == cls) for cls in CLASS_COLOURS]
                value = float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
                rows.append([dataset, case, stage, index, float(position), value])
    return pd.DataFrame(rows, columns=["dataset", "case", "stage", "slice", "position", "dsc"])


def slice_profiles(slices: pd.DataFrame, points: int = 21) -> pd.DataFrame:
    """Per dataset and stage, each scan's per-slice DSC interpolated onto ``points`` even positions along the region,
    then summarised over scans: ``mean``, ``low`` and ``high`` (the lowest and highest scan) and ``scans``."""
    grid = np.linspace(0.0, 1.0, points)
    rows = []
    for (dataset, stage), part in slices.groupby(["dataset", "stage"], sort=False):
        profiles = []
        for _, scan in part.groupby("case"):
            scan = scan.dropna(subset=["dsc"]).sort_values("position")
            if len(scan):
                profiles.append(np.interp(grid, scan["position"], scan["dsc"]))
        if profiles:
            stack = np.vstack(profiles)
            for i, position in enumerate(grid):
                column = stack[:, i]
                rows.append([dataset, stage, position, column.mean(), column.min(), column.max(), len(profiles)])
    return pd.DataFrame(rows, columns=["dataset", "stage", "position", "mean", "low", "high", "scans"])


def slice_zones(slices: pd.DataFrame) -> pd.DataFrame:
    """Mean per-slice DSC of each stage at the region's L3/L4 end, in its middle and at its L5/S1 end (the ends: the
    first and last :data:`END_FRACTION` of the region), pooled over every scored slice."""
    zone = np.where(
        slices["position"] <= END_FRACTION,
        "L3/L4 end",
        np.where(slices["position"] >= 1 - END_FRACTION, "L5/S1 end", "middle"),
    )
    table = slices.assign(zone=zone).groupby(["stage", "zone"])["dsc"].mean().unstack()
    return table.reindex(columns=["L3/L4 end", "middle", "L5/S1 end"])


def slice_caption(slices: pd.DataFrame, stages: list[str]) -> str:
    """One sentence, decided by the numbers: where along the region each stage's per-slice DSC is lowest."""
    zones = slice_zones(slices)
    parts = []
    for stage in stages:
        if stage not in zones.index or zones.loc[stage].isna().all():
            continue
        row = zones.loc[stage]
        lowest = row.idxmin()
        name = STAGE_LABELS.get(stage, stage)
        if lowest == "middle":
            ends = np.nanmean([row["L3/L4 end"], row["L5/S1 end"]])
            parts.append(
                f"{name} is lowest in the middle of the region ({row['middle']:.3f} vs {ends:.3f} at the ends)"
            )
        else:
            parts.append(f"{name} is lowest at the {lowest} ({row[lowest]:.3f} vs {row['middle']:.3f} in the middle)")
    if not parts:
        return "No slice could be scored against an expert label."
    share = f"{100 * END_FRACTION:.0f} %"
    return f"Mean DSC per slice (ends: the first and last {share} of the region): " + "; ".join(parts) + "."


def slice_profile_figure(profiles: pd.DataFrame, stages: list[str]):
    """Per dataset (a panel each): per-slice DSC along the region of each stage, the mean over scans as a line and
    the range from the lowest to the highest scan shaded; 0 = L3/L4, 1 = L5/S1; dotted: where the ends begin."""
    datasets = sorted(profiles["dataset"].unique())
    columns = min(3, max(1, len(datasets)))
    rows = -(-max(1, len(datasets)) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2.9 * columns, 2.5 * rows), squeeze=False)
    for ax, dataset in zip(axes.flat, datasets):
        part = profiles[profiles["dataset"] == dataset]
        for stage in stages:
            line = part[part["stage"] == stage]
            colour = STAGE_COLOURS.get(stage, "0.4")
            ax.fill_between(line["position"], line["low"], line["high"], color=colour, alpha=0.2, linewidth=0)
            ax.plot(line["position"], line["mean"], color=colour, label=STAGE_LABELS.get(stage, stage))
        for end in (END_FRACTION, 1 - END_FRACTION):  # the ends the caption compares with the middle
            ax.axvline(end, color="0.85", linewidth=0.8, linestyle=":")
        ax.set_ylim(*zoomed_limits(part[["low", "high"]].to_numpy().ravel()))
        ax.set_xlim(0, 1)
        ax.set_xticks([0, 0.5, 1])
        ax.set_xticklabels(["L3/L4", "", "L5/S1"], fontsize=7)
        ax.tick_params(axis="y", labelsize=7)
        ax.set_title(dataset, fontsize=9)
    for ax in axes[:, 0]:
        ax.set_ylabel("slice DSC", fontsize=8)
    for ax in list(axes.flat)[len(datasets) :]:
        ax.set_visible(False)
    axes.flat[0].legend(frameon=False, fontsize=7, loc="lower center")
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
