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


# ----------------------------------------------------------------------------------------
# Rescued and not rescued: where refinement fixes a stage-0 failure, and where it does not
# ----------------------------------------------------------------------------------------

#: A scan counts as rescued when the final stage beats stage 0 on it by at least this much mean class DSC.
RESCUE_MIN_GAIN = 0.05


def stage_gains(dsc: pd.DataFrame, final: str, first: str = "stage0") -> pd.DataFrame:
    """Per labelled scan: its mean class DSC at ``first`` and at ``final`` and the gain (final − first), sorted by
    gain (smallest first)."""
    per_scan = dsc[dsc["stage"].isin([first, final])].groupby(["dataset", "case", "stage"])["dsc"].mean().unstack()
    per_scan = per_scan.dropna(subset=[first, final]).rename(columns={first: "first", final: "final"})
    per_scan["gain"] = per_scan["final"] - per_scan["first"]
    return per_scan[["first", "final", "gain"]].sort_values("gain", kind="stable").reset_index()


def rescue_pair(gains: pd.DataFrame, references: dict[str, str] | None = None) -> tuple[pd.Series, pd.Series]:
    """The scan refinement helps most (largest gain) and the one it helps least (largest loss or smallest gain).

    Each dataset's reference scan (``references``: dataset → case) is left out while two other scans remain: its
    stage-0 label contains the annotated slice itself, so its stage-0 DSC is not a propagation's."""
    others = gains[[references.get(d) != c for d, c in zip(gains["dataset"], gains["case"])]] if references else gains
    chosen = others if len(others) >= 2 else gains
    if len(chosen) < 2:
        raise ValueError("comparing a rescued scan with one that is not needs at least two scans with expert labels")
    return chosen.iloc[-1], chosen.iloc[0]


def rescue_sentence(best: pd.Series, worst: pd.Series, final_name: str, references: dict[str, str]) -> str:
    """What the two scans show, decided by their numbers: whether the best one is a rescue (gain ≥
    :data:`RESCUE_MIN_GAIN`), and whether the other one got worse; a dataset's reference scan is named as such (its
    stage-0 label contains the annotated slice itself)."""

    def scan(row: pd.Series) -> str:
        ref = " (its dataset's reference scan: stage 0 there includes the annotated slice itself)"
        return f"scan {row['case']} of {row['dataset']}" + (
            ref if references.get(row["dataset"]) == row["case"] else ""
        )

    def numbers(row: pd.Series) -> str:
        return f"stage 0 {row['first']:.3f} → {final_name} {row['final']:.3f} ({row['gain']:+.3f})"

    if best["gain"] >= RESCUE_MIN_GAIN:
        first = f"Refinement rescues {scan(best)}: {numbers(best)}."
    else:
        first = (
            f"No scan of this run is rescued: the largest gain of {final_name} over stage 0, on {scan(best)}, is "
            f"{best['gain']:+.3f} ({numbers(best)}), below the {RESCUE_MIN_GAIN:.2f} that would count as a rescue."
        )
    if worst["gain"] < 0:
        second = f"It does not help {scan(worst)}, which it makes worse: {numbers(worst)}."
    else:
        second = f"It helps {scan(worst)} least: {numbers(worst)}."
    chosen_refs = any(references.get(row["dataset"]) == row["case"] for row in (best, worst))
    note = "" if chosen_refs or not references else " (The datasets' reference scans are left out of this choice.)"
    return f"{first} {second}{note}"


def slice_dsc(prediction: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Mean class DSC of each slice of a stack (NaN where neither holds a muscle)."""
    values = []
    for pred, true in zip(prediction, truth):
        scores = [v for v in dice_per_class(pred, true).values() if not np.isnan(v)]
        values.append(np.mean(scores) if scores else np.nan)
    return np.asarray(values, dtype=float)


def rescue_figure(workspace: Workspace, rows: list[tuple[str, pd.Series]], final: str):
    """Per scan (a row each, with its tag): expert label, stage 0 and the final stage on the slice where the two
    stages differ most, each with that slice's DSC."""
    fig, axes = plt.subplots(len(rows), 3, figsize=(7.8, 2.9 * len(rows)), squeeze=False)
    for ax_row, (tag, row) in zip(axes, rows):
        dataset, case = row["dataset"], row["case"]
        image, _ = load_stack(workspace.prepared(dataset, case))
        truth, _ = load_stack(workspace.prepared(dataset, case), "label")
        first, _ = load_stack(workspace.labels("stage0", dataset, case).parent, case)
        last, _ = load_stack(workspace.labels(final, dataset, case).parent, case)
        change = slice_dsc(last, truth) - slice_dsc(first, truth)
        k = int(np.nanargmax(change if row["gain"] >= 0 else -change)) if np.isfinite(change).any() else len(image) // 2
        show_slice(ax_row[0], image[k], truth[k], f"{tag}: {case} ({dataset})\nexpert label, slice {k}")
        for ax, stage, labels in ((ax_row[1], "stage0", first), (ax_row[2], final, last)):
            value = slice_dsc(labels[k : k + 1], truth[k : k + 1])[0]
            show_slice(ax, image[k], labels[k], f"{STAGE_LABELS.get(stage, stage)}\nslice DSC {value:.3f}")
            ax.title.set_color(STAGE_COLOURS.get(stage, "black"))
    fig.tight_layout()
    return fig


def trend_sentence(table: pd.DataFrame) -> str:
    """How the followed scan's mean class DSC moves from stage 0 through the stages (``table``: :func:`scan_table`)."""
    means = table.mean(axis=1)
    steps = np.diff(means.to_numpy(float))
    names = [STAGE_LABELS.get(s, s) for s in means.index]
    path = " → ".join(f"{v:.3f}" for v in means)
    if len(steps) and (steps < 0).all():
        verdict = "every stage after stage 0 scores lower on this scan"
    elif len(steps) and (steps > 0).all():
        verdict = "every stage improves on the one before"
    else:
        best = names[int(np.argmax(means.to_numpy(float)))]
        verdict = f"its best stage is {best}"
    return f"Mean class DSC of this scan, {names[0]} to {names[-1]}: {path}; {verdict}."


# ----------------------------------------------------------------------------------------
# Exercises: the knobs to turn, each a profile key, with what to expect and the command
# ----------------------------------------------------------------------------------------


def profile_edit_command(profile: str, text: str, key: str, value: object, new_profile: str) -> str:
    """Shell lines that copy ``config/<profile>.yaml`` to ``config/<new_profile>.yaml`` with ``key`` (``section.name``,
    a plain ``name: value`` line of that section in ``text``, the profile file's text) set to ``value``, then build
    its book. Raises ValueError when the file has no such line."""
    import re

    section, name = key.split(".")
    inside, found = False, None
    for line in text.splitlines():
        if re.match(r"^[A-Za-z_]", line):
            inside = line.split(":")[0] == section
        elif inside and (match := re.match(rf"^(\s+{re.escape(name)}:\s*)([^\s#]+)", line)):
            found = match
            break
    if found is None:
        raise ValueError(f"config/{profile}.yaml has no line '{name}: <value>' under '{section}:'; add one first")
    indent, old = found.group(1).rstrip(), found.group(2).replace(".", r"\.")
    new = str(value).lower() if isinstance(value, bool) else str(value)
    edit = rf"/^{section}:/,/^[a-z]/s/^\({indent}\) *{old}\b/\1 {new}/"
    return (
        f"sed -e 's/^profile:.*/profile: {new_profile}/' \\\n    -e '{edit}' \\\n"
        f"    config/{profile}.yaml > config/{new_profile}.yaml\nmake book PROFILE={new_profile}"
    )


def kept_frames(confidence: pd.DataFrame, percentile: float, slice_fraction: float, min_per_scan: int) -> int:
    """How many frames the stage-1 filter keeps from the run's stage-0 confidence at ``percentile``."""
    from nnsam2_utils.refine.filters import stage1_filter

    return int(stage1_filter(confidence, percentile, slice_fraction, min_per_scan)["kept"].sum())


def run_minutes(records: list[dict]) -> float:
    """Minutes the run's steps took together, from its step records (steps that ran side by side count each)."""
    return sum(float(r.get("seconds") or 0) for r in records) / 60


def exercises(run, profile_text: str, confidence: pd.DataFrame, dsc: pd.DataFrame, minutes: float) -> str:
    """The exercises as Markdown: per knob, its profile key and this run's value, what to expect (computed from this
    run where it can be), and the commands that copy the profile with the knob turned and build its book."""
    refine, name = run.profile.refine, run.name
    means = dsc.groupby(["stage", "dataset", "case"])["dsc"].mean().groupby("stage").mean()
    stages = [s for s in stages_of(dsc) if s in means.index]
    final = stages[-1]
    percentile = refine.confidence_percentile
    other = 95.0 if percentile < 95 else 80.0
    now = kept_frames(confidence, percentile, refine.slice_fraction, refine.min_slices_per_scan)
    then = kept_frames(confidence, other, refine.slice_fraction, refine.min_slices_per_scan)
    rotation = refine.rotation_deg
    fewer_stages = 1 if refine.stages > 1 else 3
    stage2 = refine.stage2.epochs if refine.stage2 and refine.stage2.epochs else refine.epochs
    stage2_words = f"{stage2} epochs each" if stage2 else "nnU-Net's default epochs"
    items = [
        (
            "Confidence percentile",
            "refine.confidence_percentile",
            percentile,
            f"{other:g}",
            f"The stage-1 filter keeps the frames above the dataset's {percentile:g}th percentile of stage-0 "
            f"confidence: {now} frames in this run; at {other:g} it would keep {then} "
            f"(computed from this run's confidence tables). {'Fewer' if then < now else 'More'} frames, "
            f"{'each more likely right' if then < now else 'some of them wrong'}: watch nnU-Net 1's DSC on the "
            "results page.",
        ),
        (
            "Number of stages",
            "refine.stages",
            refine.stages,
            str(fewer_stages),
            (
                f"The run stops at nnU-Net 1. Here nnU-Net 1 scores {means.get('nnunet1', float('nan')):.3f} mean "
                f"scan DSC and {STAGE_LABELS.get(final, final)} {means[final]:.3f}: do the later stages pay for "
                "their training time on this cohort?"
                if fewer_stages == 1
                else "The run trains the paper's three nnU-Nets one after the other, each on the previous one's "
                "labels; compare each stage's DSC with nnU-Net 1's on the results page."
            ),
        ),
        (
            "Augmentation rotation",
            "refine.rotation_deg",
            "nnU-Net's default" if rotation is None else rotation,
            "180",
            "nnU-Net's own 2-D default is 180°: a muscle may then appear on either side in training, so the network "
            "learns right versus left more slowly; at this run's small budget expect lower DSC, and right and left "
            "LPM swapped on some slices (look at the overlays).",
        ),
        (
            "Warm start",
            "refine.warm_start",
            refine.warm_start,
            str(not refine.warm_start).lower(),
            "Stages 2–3 then "
            + ("start from random weights, as the paper does" if refine.warm_start else "start from the previous stage")
            + f", with {stage2_words} (`refine.stage2.epochs`): "
            + (
                "expect them to fall below nnU-Net 1 unless you also raise that budget."
                if refine.warm_start
                else "expect them to reach nnU-Net 1's level in fewer epochs."
            ),
        ),
    ]
    lines = []
    for i, (title, key, value, new, expect) in enumerate(items, start=1):
        shown = str(value).lower() if isinstance(value, bool) else f"{value:g}" if isinstance(value, float) else value
        try:
            command = profile_edit_command(name, profile_text, key, new, f"{name}_ex{i}")
        except ValueError:  # the profile leaves the key at its default: the line has to be added by hand
            section, field = key.split(".")
            command = (
                f"cp config/{name}.yaml config/{name}_ex{i}.yaml   # then set profile: {name}_ex{i} and, under "
                f"{section}:, {field}: {new}\nmake book PROFILE={name}_ex{i}"
            )
        lines += [f"### {i}. {title}: `{key}` (this run: {shown})", "", expect, "", "```bash", command, "```", ""]
    which = run.profile.baselines.which_slice
    lines += [
        f"### {len(items) + 1}. Reference scan and annotated slice (no profile key)",
        "",
        "The reference is the dataset's medoid scan and the annotated slice its L3/L4 slice (docs/method.md §3). "
        "The *Which slice to annotate* chapter runs stage 0 again with the slice at each disc level and with random "
        f"references (`baselines.which_slice`, this run: {str(which).lower()}). To choose them yourself, draw one "
        "slice of the scan you want as reference and name it in the dataset's manifest under `annotation:` "
        "(`case:` and `file:`, see `data_manifest/TEMPLATE.yaml` and the chapter *Use it on your own scans*).",
        "",
        "Each command writes a new profile next to this one and builds its own book in `work/<profile>/book/` "
        f"(this book is left as it is), a whole run of its own: this run's steps took {minutes:.0f} min in all (its "
        "step records, on the run record page; a step that reused earlier results counts only its check). Compare "
        "the new book's results page with this one's.",
    ]
    return "\n".join(lines)


def run_exercises(run, dsc: pd.DataFrame) -> str:
    """:func:`exercises` for a run: its profile file, every dataset's stage-0 confidence and its step records."""
    from nnsam2_utils.data.io import read_csv
    from nnsam2_utils.workflow.profile import profile_path
    from nnsam2_utils.workflow.runlog import collect_records

    ws = run.workspace
    confidence = pd.concat(
        [read_csv(ws.stage("stage0", d) / "confidence.csv") for d in run.datasets], ignore_index=True
    )
    text = profile_path(run.name).read_text(encoding="utf-8")
    return exercises(run, text, confidence, dsc, run_minutes(collect_records(ws.runlog)))


def pair_tags(best: pd.Series, worst: pd.Series) -> tuple[str, str]:
    """The figure's words for the two scans of :func:`rescue_pair`."""
    return (
        "rescued" if best["gain"] >= RESCUE_MIN_GAIN else "largest gain",
        "made worse" if worst["gain"] < 0 else "smallest gain",
    )


def viewer_files(run, scans: list[tuple[str, str]], final: str) -> list[tuple[str, str, str]]:
    """A standalone slice viewer per (dataset, case), with expert, stage-0 and ``final`` outlines: written to the
    run's figures folder and copied into the book. Returns (HTML fragment, title, link relative to a page in
    ``generated/``) per scan."""
    from nnsam2_utils.report import viewer
    from nnsam2_utils.report.provenance import publish

    out = []
    for dataset, case in scans:
        fragment, title = viewer.scan_viewer(
            run.workspace, run.manifest(dataset), case, {"stage0": "stage0", "final": final}
        )
        path = viewer.write_viewer(fragment, title, run.workspace.figures / f"viewer_{dataset}_{case}.html")
        out.append((fragment, title, f"figures/{publish(path, subdir='figures').name}"))
    return out
