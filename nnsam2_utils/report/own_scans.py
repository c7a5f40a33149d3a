"""The "Use it on your own scans" chapter: the manifest template, how the manifest's slice numbers relate to ITK-SNAP's
and 3D Slicer's (checked on the example scans), where a run's delivered labels and tables land (checked on this run),
what stage 0 made of the example scans, and what a real cohort costs (from this run's step records)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from nnsam2_utils.data.geometry import grid_differences, slice_axis
from nnsam2_utils.data.io import read_csv, read_image
from nnsam2_utils.data.manifest import DatasetManifest
from nnsam2_utils.workflow.workspace import Workspace, repo_root

#: The template users copy (data_manifest/TEMPLATE.yaml).
TEMPLATE = Path("data_manifest") / "TEMPLATE.yaml"
#: The paper's cohort (arXiv:2510.05555): scans segmented by its full run.
PAPER_SCANS = 1219
#: A scan whose stage-0 mean class DSC is below this counts as a stage-0 failure in the chapter's sentence.
FAILED_DSC = 0.7
#: IJK letter of a stored axis (3D Slicer's Data Probe names voxel coordinates so).
IJK = "ijk"


def template_text(root: Path | None = None) -> str:
    """The manifest template as the project ships it."""
    return ((root or repo_root()) / TEMPLATE).read_text(encoding="utf-8")


def slice_numbering(manifest: DatasetManifest, prepared: Path) -> pd.DataFrame:
    """Per scan of a dataset: which stored axis its disc slice numbers count along, in which direction, the L3/L4
    slice as the manifest has it and as ITK-SNAP and 3D Slicer show it, and a check on the prepared scan that the
    region's top slice (L3/L4) is that stored slice (``prepared``: the dataset's prepared folder)."""
    rows = []
    for case in manifest.cases:
        image = read_image(manifest.resolve(case.image))
        axis = slice_axis(image)
        rising = np.asarray(image.GetDirection()).reshape(3, 3)[2, axis] > 0
        k = case.discs.L3L4
        top = read_image(prepared / case.id / "image.nii.gz")
        size = top.GetSize()
        centre = top.TransformContinuousIndexToPhysicalPoint(((size[0] - 1) / 2, (size[1] - 1) / 2, size[2] - 1))
        found = image.TransformPhysicalPointToContinuousIndex(centre)[axis]
        rows.append(
            {
                "scan": case.id,
                "file": Path(case.image).name,
                "slices along it": image.GetSize()[axis],
                "stored axis closest to S–I": f"{IJK[axis]} (axis {axis})",
                "slice numbers run": "inferior → superior" if rising else "superior → inferior",
                "L3/L4 in the manifest (from 0)": k,
                "ITK-SNAP voxel (from 1)": k + 1 if isinstance(k, int) else k,
                "3D Slicer IJK (from 0)": f"{IJK[axis]} = {k}",
                "prepared L3/L4 slice is stored slice": int(round(found)),
            }
        )
    return pd.DataFrame(rows)


def numbering_checked(table: pd.DataFrame) -> bool:
    """Every scan's prepared top slice is the stored slice its manifest names for L3/L4."""
    return bool((table["prepared L3/L4 slice is stored slice"] == table["L3/L4 in the manifest (from 0)"]).all())


def stage0_sentence(dsc: pd.DataFrame, reference_case: str) -> str:
    """What stage 0 made of the example scans, decided by their DSC: how many fail (mean class DSC below
    :data:`FAILED_DSC`), and how the scan with the drawn slice compares."""
    per_scan = dsc.groupby("case")["dsc"].mean()
    failed = per_scan[per_scan < FAILED_DSC]
    others = per_scan.drop(reference_case, errors="ignore")
    first = (
        f"Stage 0 reaches a mean class DSC of at least {FAILED_DSC:.1f} on {len(per_scan) - len(failed)} of "
        f"{len(per_scan)} scans"
    )
    if failed.empty:
        return first + "."
    listed = ", ".join(f"{case} ({value:.2f})" for case, value in failed.items())
    ref = per_scan.get(reference_case)
    where = (
        f" The scan with the drawn slice, {reference_case}, scores {ref:.2f}; the other scans "
        f"{others.min():.2f}–{others.max():.2f}."
        if ref is not None and len(others)
        else ""
    )
    return (
        f"{first}; it fails on {listed}.{where} This chapter stops at stage 0. In a whole run the nnU-Nets learn from "
        "the most confident frames of every scan, and the results page says, from signals that need no expert label, "
        "whether they beat stage 0 and which stage's labels the run delivers."
    )


def confidence_table(confidence: pd.DataFrame, dsc: pd.DataFrame | None = None) -> pd.DataFrame:
    """Stage 0's own confidence per scan, a quality signal without expert labels: the mean and the lowest
    frame confidence (predicted IoU summed over the two classes, 0–2; prompted frames left out), with the
    scan's DSC beside them where expert labels exist. Sorted from least to most confident."""
    frames = confidence.loc[~confidence["prompted"].astype(bool)]
    per_frame = frames.groupby(["case", "slice"])["iou"].sum(min_count=1)
    table = (
        per_frame.groupby("case")
        .agg(["mean", "min"])
        .rename(columns={"mean": "mean confidence", "min": "lowest slice"})
    )
    if dsc is not None and len(dsc):
        table["DSC"] = dsc.groupby("case")["dsc"].mean()
    return table.sort_values("mean confidence").round(3)


def confidence_sentence(table: pd.DataFrame) -> str:
    """Whether stage 0's confidence points at its worst scan, decided by the table of :func:`confidence_table`."""
    least = table.index[0]
    text = f"Stage 0 is least sure of {least} (mean confidence {table.loc[least, 'mean confidence']:.2f} of 2)"
    if "DSC" not in table or table["DSC"].isna().all():
        return text + ": without expert labels, that is the scan to look at first."
    worst = table["DSC"].idxmin()
    if worst == least:
        return (
            text
            + f", and that is its worst scan (DSC {table.loc[worst, 'DSC']:.2f}): here the signal points the right way."
        )
    return (
        text + f", but its worst scan is {worst} (DSC {table.loc[worst, 'DSC']:.2f}, confidence "
        f"{table.loc[worst, 'mean confidence']:.2f}): on these scans confidence alone would have missed it, so look "
        "at every scan's overlay, not only the least confident one."
    )


#: The run's tables a user of their own data reads first, and what each holds.
DELIVERED_TABLES = {
    "delivered.csv": "which stage's labels each dataset gets, and why",
    "measurements.csv": "volume, Dixon fat ratio and CT attenuation per scan and class, from the delivered labels",
    "level_measurements.csv": "the same per disc level (L3/L4, L4/L5, L5/S1)",
    "quality.csv": "the label-free quality signals of every stage and dataset",
    "review.csv": "the slices most worth a human look",
    "dsc.csv": "DSC against the expert labels (datasets that have them)",
}


def shown(path: Path, workspace: Workspace) -> str:
    """A path of the run as a page may show it (no folder of the build machine): relative to the project folder,
    or, for a work folder elsewhere (``$NNSAM2_WORK``), from ``$NNSAM2_WORK/<profile>/`` on."""
    from nnsam2_utils.report.provenance import shown_path

    text = shown_path(str(path))
    if not text.startswith("…"):
        return text
    return f"$NNSAM2_WORK/{workspace.root.name}/{Path(path).resolve().relative_to(workspace.root.resolve()).as_posix()}"


def outputs_table(workspace: Workspace) -> pd.DataFrame:
    """The run's tables of :data:`DELIVERED_TABLES` that exist: where, how many rows, what they hold."""
    rows = []
    for name, what in DELIVERED_TABLES.items():
        path = workspace.tables / name
        if path.is_file():
            rows.append({"file": shown(path, workspace), "rows": len(read_csv(path)), "what it holds": what})
    return pd.DataFrame(rows, columns=["file", "rows", "what it holds"])


def orientation(image: sitk.Image) -> str:
    """The three-letter orientation code of an image's axes as stored (``LPS``, ``RAI``, …)."""
    return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection())


def delivered_grid_check(workspace: Workspace, manifests: Sequence[DatasetManifest]) -> pd.DataFrame:
    """Per dataset, one delivered label file beside the scan it belongs to: whether both share one grid (size,
    spacing, origin, direction) and the label's values."""
    rows = []
    for manifest in manifests:
        folder = workspace.root / "delivered" / manifest.name
        case = next((c for c in manifest.cases if (folder / f"{c.id}.nii.gz").is_file()), None)
        if case is None:
            continue
        label = read_image(folder / f"{case.id}.nii.gz")
        scan = read_image(manifest.resolve(case.image))
        values = sorted(int(v) for v in np.unique(sitk.GetArrayViewFromImage(label)))
        rows.append(
            {
                "label file": shown(folder / f"{case.id}.nii.gz", workspace),
                "scan size": "×".join(map(str, scan.GetSize())),
                "scan orientation": orientation(scan),
                "label orientation": orientation(label),
                "same grid as the scan": not grid_differences(scan, label),
                "values": ", ".join(map(str, values)),
            }
        )
    return pd.DataFrame(rows)


#: nnU-Net v2's own training budget (nnUNetTrainer: 1000 epochs of 250 iterations), the paper profile's.
NNUNET_DEFAULT_ITERATIONS = 1000 * 250


def resumed(record: dict) -> bool:
    """A step record of a step that found earlier results and reused them: its time is not the step's cost."""
    return bool(record.get("resumed") or (record.get("parameters") or {}).get("resumed"))


def stage1_iterations(refine) -> int:
    """Training iterations of nnU-Net 1 under a profile's ``refine`` section (nnU-Net's own values where unset)."""
    override = refine.stage1
    epochs = (override.epochs if override and override.epochs else None) or refine.epochs or 1000
    per_epoch = override.iterations_per_epoch if override and override.iterations_per_epoch else None
    return int(epochs * (per_epoch or refine.iterations_per_epoch or 250))


def cost_table(records: list[dict], scans: int, fallback: tuple[list[dict], int, str] | None = None) -> pd.DataFrame:
    """From a run's step records: per kind of step, its measured time (a stage's mean for the nnU-Net steps), how
    it scales, the time per scan where it scales with scans, and its peak memory (``scans``: the run's scan count).

    A step that reused earlier results (:func:`resumed`) was not timed: its row takes the ``fallback`` records
    (records, their scan count, words for where they come from, e.g. the example scans' own run) where they time
    that kind of step, else it stays empty with a note."""
    kinds = {
        "prepare": lambda step: step == "prepare",
        "stage 0 (promptable model)": lambda step: step == "stage0",
        "nnU-Net training, each stage": lambda step: step.startswith("nnunet") and step.endswith("_train"),
        "nnU-Net prediction, each stage": lambda step: step.startswith("nnunet") and step.endswith("_predict"),
    }
    rows = []
    for kind, matches in kinds.items():
        chosen = [r for r in records if matches(r["step"])]
        if not chosen:
            continue
        timed, count, note = [r for r in chosen if not resumed(r)], scans, ""
        if not timed and fallback is not None:
            timed = [r for r in fallback[0] if matches(r["step"]) and not resumed(r)]
            count, note = fallback[1], f"timed on {fallback[2]} ({fallback[1]} scans)" if timed else ""
        per_scan = "training" not in kind
        repeats = len({r["step"] for r in timed}) or 1  # stages, for the nnU-Net steps; 1 otherwise
        seconds = sum(float(r.get("seconds") or 0) for r in timed) / repeats if timed else np.nan
        rows.append(
            {
                "step": kind,
                "seconds in this run": round(seconds, 1),
                "scales with": "the number of scans" if per_scan else "the training budget, not the scans",
                "seconds per scan": round(seconds / count, 2) if per_scan else np.nan,
                "peak memory (MB)": round(max(float(r.get("peak_mb") or 0) for r in chosen + timed)),
                "note": note if timed else "reused from an earlier run: not timed",
            }
        )
    return pd.DataFrame(rows)


def cohort_sentence(costs: pd.DataFrame, stages: int, device: str, iterations: int, cores: int | None) -> str:
    """What a cohort of the paper's size needs, from :func:`cost_table`: the per-scan steps scaled to
    :data:`PAPER_SCANS` scans on this run's machine, and the training budget against nnU-Net's own."""
    per_scan = costs.dropna(subset=["seconds per scan"]).set_index("step")["seconds per scan"]
    repeats = {k: stages if k.startswith("nnU-Net prediction") else 1 for k in per_scan.index}
    hours = float(sum(per_scan[k] * repeats[k] for k in per_scan.index) * PAPER_SCANS / 3600)
    untimed = costs.loc[costs["seconds in this run"].isna(), "step"].tolist()
    memory = costs["peak memory (MB)"].max() / 1024
    where = f"{cores} CPU cores" if device == "cpu" else f"the {device} device"
    text = (
        f"At this run's measured speed ({where}, scans the size of this cohort's), the steps that grow with the "
        f"number of scans ({', '.join(per_scan.index)}; prediction once per stage) would take about {hours:.1f} h "
        f"for the paper's {PAPER_SCANS:,} scans; a step never needed more than {memory:.1f} GB of memory."
    )
    if untimed:
        text += f" Not included: {', '.join(untimed)} (reused from an earlier run, so not timed in this one)."
    ratio = NNUNET_DEFAULT_ITERATIONS / iterations
    return text + (
        f" Training does not grow with the scans at a fixed budget, but this run's nnU-Net 1 trains for {iterations:,} "
        f"iterations; nnU-Net's own (1000 epochs × 250 iterations, the paper profile's) is {ratio:,.0f} "
        "times that, with a full-size network: a GPU's work (config/paper.yaml plans the paper's run on one)."
    )


def show(frame: pd.DataFrame) -> None:
    """Display a table in a notebook as Markdown (no index column; an empty cell for a missing value)."""
    from IPython.display import Markdown, display

    from nnsam2_utils.report.provenance import markdown_table

    display(Markdown(markdown_table(frame) if len(frame) else "*(none in this run yet)*"))
