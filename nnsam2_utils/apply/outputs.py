"""What ``nnsam2 predict`` writes for each scan (docs/method.md §13): labels on the scan's own grid, measurements
per class (and per disc level where disc levels are given), an overlay PNG, and the provenance that ties every output
to the model's SHA-256 and its input's."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from nnsam2_utils.data.geometry import slice_axis, to_input_grid
from nnsam2_utils.data.io import atomic_path
from nnsam2_utils.errors import DataError
from nnsam2_utils.evaluate.levels import level_rows
from nnsam2_utils.evaluate.measurements import measurement_rows

MEASUREMENTS = "measurements.csv"
LEVEL_MEASUREMENTS = "level_measurements.csv"
PROVENANCE = "provenance.json"
LOG = "predict.log"
#: Columns of ``measurements.csv``: one row per scan, class and measure.
COLUMNS: tuple[str, ...] = ("scan", "class", "measure", "value", "stage", "model_sha256")
#: Columns of ``level_measurements.csv``: one row per scan, disc level, class and measure (docs/method.md §8.1).
LEVEL_COLUMNS: tuple[str, ...] = (
    "scan",
    "level",
    "class",
    "measure",
    "value",
    "slices",
    "note",
    "stage",
    "model_sha256",
)


@dataclass(frozen=True)
class ScanOutputs:
    """The files written for one scan."""

    labels: Path
    overlay: Path


def scan_outputs(out: str | Path, name: str) -> ScanOutputs:
    """Where one scan's labels (NIfTI) and overlay (PNG) go."""
    return ScanOutputs(Path(out) / f"{name}_lpm.nii.gz", Path(out) / f"{name}_overlay.png")


def planned_outputs(out: str | Path, names: Sequence[str], levels: bool = False) -> list[Path]:
    """Every file a prediction of these scans writes into ``out`` (the log aside, which is appended to);
    ``levels``: with the per-level measurements (disc levels given)."""
    files = [path for name in names for path in (scan_outputs(out, name).labels, scan_outputs(out, name).overlay)]
    tables = [Path(out) / MEASUREMENTS] + ([Path(out) / LEVEL_MEASUREMENTS] if levels else [])
    return files + tables + [Path(out) / PROVENANCE]


def refuse_existing(outputs: Sequence[Path], inputs: Sequence[Path], force: bool) -> None:
    """An output that is an input is always an error; one that exists, unless ``force``. Checked before any write."""
    sources = {Path(p).resolve() for p in inputs}
    for path in outputs:
        if path.resolve() in sources:
            raise DataError(f"{path}: is an input of this prediction; inputs are never overwritten. Choose another -o.")
        if path.exists() and not force:
            raise DataError(
                f"{path}: exists already; nothing was written. Choose another output folder (-o), or give --force "
                "to replace nnsam2's outputs there."
            )


def provenance_note(stage: str, sha256: str) -> str:
    """The short provenance a label file carries in its header (NIfTI ``descrip``: 79 characters at most)."""
    return f"nnsam2 {stage} model sha256:{sha256}"[:79]


def labels_on_input_grid(labels: sitk.Image, scan: sitk.Image, note: str) -> sitk.Image:
    """Labels of the prepared scan on the grid and orientation of the scan as stored, with ``note`` in the header."""
    restored = to_input_grid(labels, scan)
    restored.SetMetaData("ITK_FileNotes", note)
    return restored


def measurement_table(
    name: str, labels: sitk.Image, image: sitk.Image, modality: str, fat: sitk.Image | None, stage: str, sha256: str
) -> pd.DataFrame:
    """Volume (mL) per class; Dixon fat ratio with a fat image (the scan is its water image); mean HU for CT.

    Measured on the prepared scan (reorientation and the slice range move no voxel, so the values are those
    of the input grid), with its unclipped intensities (docs/method.md §8).
    """
    rows = measurement_rows(
        "",
        name,
        "auto",
        labels,
        water=image if fat is not None else None,
        fat=fat,
        ct=image if modality == "CT" else None,
    )
    table = pd.DataFrame(rows).rename(columns={"case": "scan"})
    return table.assign(stage=stage, model_sha256=sha256)[list(COLUMNS)]


def level_measurement_table(
    name: str,
    labels: sitk.Image,
    image: sitk.Image,
    modality: str,
    fat: sitk.Image | None,
    positions: dict[str, float],
    half_width_mm: float,
    stage: str,
    sha256: str,
) -> pd.DataFrame:
    """CSA (mm²) per class at each disc level given, and the Dixon fat ratio or the mean HU there, averaged over the
    slices within ±``half_width_mm`` of the disc (docs/method.md §8.1); ``positions`` on the prepared stack."""
    rows = level_rows(
        labels,
        positions,
        half_width_mm,
        water=image if fat is not None else None,
        fat=fat,
        ct=image if modality == "CT" else None,
    )
    table = pd.DataFrame(rows, columns=["level", "class", "measure", "value", "slices", "note"])
    return table.assign(scan=name, stage=stage, model_sha256=sha256)[list(LEVEL_COLUMNS)]


def overlay_slice(labels: np.ndarray) -> int:
    """The z index of the middle of the labelled slices (of the whole stack when nothing is labelled)."""
    labelled = np.flatnonzero(labels.reshape(labels.shape[0], -1).any(axis=1))
    if labelled.size == 0:
        return labels.shape[0] // 2
    return int((labelled[0] + labelled[-1]) // 2)


def input_slice_number(prepared: sitk.Image, scan: sitk.Image, z: int) -> int:
    """The number a viewer shows for prepared slice ``z`` in the scan as stored (its superior–inferior axis)."""
    point = prepared.TransformIndexToPhysicalPoint((0, 0, int(z)))
    return int(round(scan.TransformPhysicalPointToContinuousIndex(point)[slice_axis(scan)]))


def write_overlay(
    path: Path, image: sitk.Image, labels: sitk.Image, title: str, modality: str, metadata: dict[str, str]
) -> Path:
    """A PNG of one axial slice (radiological view) with both classes filled; ``metadata`` in its text chunks."""
    from matplotlib.figure import Figure

    from nnsam2_utils.report.plots import ct_window, show_slice

    array = sitk.GetArrayViewFromImage(labels)
    z = overlay_slice(array)
    figure = Figure(figsize=(4.2, 4.4))
    show_slice(figure.add_subplot(), sitk.GetArrayViewFromImage(image)[z], array[z], title, window=ct_window(modality))
    with atomic_path(path, suffix=".png") as tmp:
        figure.savefig(tmp, format="png", dpi=110, bbox_inches="tight", metadata=metadata)
    return path


def provenance(model, scans, outputs: dict[str, ScanOutputs], requested_stage: str, packages: dict) -> dict:
    """The provenance of one prediction: model (stage, checkpoint, SHA-256), inputs with their SHA-256, outputs."""
    return {
        "tool": "nnsam2 predict",
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "profile": model.profile.profile,
        "stage": model.stage,
        "stage_requested": requested_stage,
        "model": {
            "folder": str(model.folder),
            "checkpoint": str(model.checkpoint),
            "sha256": model.sha256,
            "nnunet_dataset": model.dataset_folder.name,
            "configuration": model.budget.configuration,
            "fold": model.budget.fold,
            "device": model.budget.device,
            "mirroring": False,
        },
        "postprocessing": "per class the largest connected component, then holes filled (docs/method.md §6)",
        "scans": [
            {
                "scan": scan.name,
                "input": str(scan.path),
                "input_sha256": scan.sha256,
                "fat": str(scan.fat_path) if scan.fat_path else None,
                "fat_sha256": scan.fat_sha256,
                "modality": scan.modality,
                "slices": "whole volume" if scan.slices is None else list(scan.slices),
                "discs": scan.discs,
                "labels": str(outputs[scan.name].labels),
                "overlay": str(outputs[scan.name].overlay),
            }
            for scan in scans
        ],
        "measurements": MEASUREMENTS,
        "level_measurements": LEVEL_MEASUREMENTS if any(scan.discs for scan in scans) else None,
        "packages": packages,
    }
