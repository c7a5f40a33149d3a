"""``nnsam2 predict`` (docs/method.md §13): new scans segmented with a run's trained nnU-Net, the way the run
segmented its own (nnU-Net without mirroring, then the post-processing of §6), labels written on each scan's own
grid, with measurements (per disc level too where disc levels are given, §8.1), an overlay per scan and the
provenance of every output. Logs go to ``OUT/predict.log``."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
from tqdm.auto import tqdm

from nnsam2_utils.apply.inputs import Scan, check_scans, load_scan
from nnsam2_utils.apply.model import TrainedModel, find_model
from nnsam2_utils.apply.outputs import (
    COLUMNS,
    LEVEL_COLUMNS,
    LEVEL_MEASUREMENTS,
    LOG,
    MEASUREMENTS,
    PROVENANCE,
    ScanOutputs,
    input_slice_number,
    labels_on_input_grid,
    level_measurement_table,
    measurement_table,
    overlay_slice,
    planned_outputs,
    provenance,
    provenance_note,
    refuse_existing,
    scan_outputs,
    write_overlay,
)
from nnsam2_utils.data.io import array_to_image, read_csv, write_csv, write_image, write_json
from nnsam2_utils.errors import DataError, Nnsam2Error
from nnsam2_utils.evaluate.levels import SLAB_HALF_WIDTH_MM, check_half_width

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PredictResult:
    """One prediction: the model used, the files written, the measurements and the log."""

    model: TrainedModel
    outputs: dict[str, ScanOutputs]  # per scan name
    measurements: pd.DataFrame  # scan, class, measure, value, stage, model_sha256
    files: list[Path]  # every file written, in order
    log: Path
    level_measurements: pd.DataFrame | None = None  # scan, level, class, measure, …; None when no disc was given


@contextlib.contextmanager
def log_to(path: Path) -> Iterator[Path]:
    """Send the package's log records (INFO and up) to ``path`` for the block, appending."""
    logger = logging.getLogger("nnsam2_utils")
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    saved = logger.level
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield path
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved)
        handler.close()


def segment(predictor, prepared: sitk.Image) -> sitk.Image:
    """The model's labels of a prepared scan, post-processed as every nnU-Net stage's (docs/method.md §6)."""
    from nnsam2_utils.propagate.postprocess import clean_volume
    from nnsam2_utils.refine.nnunet import predict_image

    return array_to_image(clean_volume(predict_image(predictor, prepared)), prepared)


def delivered_stages(model: TrainedModel) -> dict[str, str]:
    """The stage the run delivered per dataset (``tables/delivered.csv``), or nothing when it has no such table."""
    table = model.workspace.tables / "delivered.csv"
    if not table.is_file():
        return {}
    frame = read_csv(table)
    return dict(zip(frame["dataset"], frame["delivered"]))


def _note_delivered(model: TrainedModel) -> dict[str, str]:
    """Log where the run delivered another stage than the one predicting (docs/method.md §7.1)."""
    delivered = delivered_stages(model)
    other = {d: s for d, s in delivered.items() if s != model.stage}
    if other:
        log.info(
            "the run delivered another stage than %s for %s; predict scans like those with --stage <that stage>",
            model.stage,
            ", ".join(f"{d} ({s})" for d, s in sorted(other.items())),
        )
    return delivered


def predict_scan(
    predictor, scan: Scan, model: TrainedModel, outputs: ScanOutputs, half_width_mm: float = SLAB_HALF_WIDTH_MM
) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Segment one scan; write its labels on its own grid and its overlay; return its measurements, and its
    per-level measurements (slab ±``half_width_mm``) when its disc levels are given (else None)."""
    from nnsam2_utils.workflow.runlog import captured_output

    images = load_scan(scan)
    with captured_output(outputs.labels.parent / LOG):  # what nnU-Net prints goes to the log
        labels = segment(predictor, images.prepared)
    note = provenance_note(model.stage, model.sha256)
    write_image(labels_on_input_grid(labels, images.image, note), outputs.labels)
    array = sitk.GetArrayViewFromImage(labels)
    if not array.any():
        log.warning("%s: no muscle found in the %d slices segmented", scan.path, array.shape[0])
    z = overlay_slice(array)
    title = f"{scan.name}, slice {input_slice_number(images.prepared, images.image, z)} ({model.stage})"
    metadata = {"Title": title, "Software": "nnsam2 predict", "Description": note, "Source": scan.sha256}
    write_overlay(outputs.overlay, images.prepared, labels, title, scan.modality, metadata)
    counts = np.bincount(array.ravel(), minlength=3)
    log.info("%s: labels written (%d right, %d left LPM voxels)", outputs.labels, counts[1], counts[2])
    table = measurement_table(scan.name, labels, images.prepared, scan.modality, images.fat, model.stage, model.sha256)
    if not scan.disc_positions:
        return table, None
    levels = level_measurement_table(
        scan.name,
        labels,
        images.prepared,
        scan.modality,
        images.fat,
        scan.disc_positions,
        half_width_mm,
        model.stage,
        model.sha256,
    )
    return table, levels


def predict(
    inputs: Sequence[str | Path],
    out: str | Path,
    profile: str = "demo",
    stage: str = "final",
    modality: str | None = None,
    fats: Sequence[str | Path] | None = None,
    slices: tuple[int, int] | None = None,
    device: str | None = None,
    force: bool = False,
    progress: bool = True,
    like: str | None = None,
    discs: Sequence[Mapping[str, int]] | None = None,
    slab_mm: float = SLAB_HALF_WIDTH_MM,
    work_dir: str | Path | None = None,
) -> PredictResult:
    """Segment new scans with the trained model of ``profile``'s ``stage`` into the folder ``out``.

    ``stage="delivered"`` with ``like=DATASET``: the nnU-Net the run delivered for that dataset. ``discs``: each
    scan's disc levels (level → slice number, in the order of the scans): the scans are then measured per level
    too, over the slices within ±``slab_mm`` of each disc, into ``level_measurements.csv`` (docs/method.md §8.1).
    ``work_dir``: the run's work folder when it is not ``work/<profile>`` (see :func:`find_model`).

    Writes ``<scan>_lpm.nii.gz`` (0 background, 1 right, 2 left LPM, on the scan's grid; 0 outside the slices
    segmented), ``<scan>_overlay.png``, ``measurements.csv`` (and ``level_measurements.csv`` with ``discs``) and
    ``provenance.json``; logs to ``predict.log``.
    Nothing is written before every input is read and checked; an existing output is refused unless ``force``.
    """
    slab_mm = check_half_width(slab_mm)
    model = find_model(profile, stage, device, like=like, work_dir=work_dir)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: is a file; give a folder for the outputs (-o).")
    out.mkdir(parents=True, exist_ok=True)
    with log_to(out / LOG) as log_file:
        try:
            checks = {"modality": modality, "fats": fats, "slices": slices, "discs": discs}
            return _predict(model, inputs, checks, out, stage, slab_mm, force, progress, log_file)
        except Nnsam2Error as exc:
            log.error("%s", exc)
            raise


def _predict(model, inputs, checks, out, stage, slab_mm, force, progress, log_file) -> PredictResult:
    """:func:`predict` once the model is found and the log is open (``checks``: :func:`check_scans`'s options)."""
    from nnsam2_utils.refine.nnunet import load_predictor
    from nnsam2_utils.workflow.runlog import captured_output, package_versions

    log.info(
        "nnsam2 predict: profile %s, %s (checkpoint %s, SHA-256 %s)",
        model.profile.profile,
        model.stage,
        model.checkpoint,
        model.sha256,
    )
    delivered = _note_delivered(model)
    scans = check_scans(inputs, **checks)  # every input checked before anything is written
    outputs = {scan.name: scan_outputs(out, scan.name) for scan in scans}
    sources = [s.path for s in scans] + [s.fat_path for s in scans if s.fat_path]
    per_level = any(scan.disc_positions for scan in scans)
    refuse_existing(planned_outputs(out, list(outputs), per_level), sources, force)
    with captured_output(log_file):
        predictor = load_predictor(model.folder, model.budget)  # checks the checkpoint's SHA-256 again
    tables, level_tables, files = [], [], []
    for scan in tqdm(scans, desc=f"nnsam2 predict ({model.stage})", unit="scan", disable=not progress):
        table, levels = predict_scan(predictor, scan, model, outputs[scan.name], slab_mm)
        tables.append(table)
        level_tables += [levels] if levels is not None else []
        files += [outputs[scan.name].labels, outputs[scan.name].overlay]
    measurements = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=list(COLUMNS))
    files.append(write_csv(measurements, out / MEASUREMENTS))
    by_level = None
    if per_level:
        by_level = pd.concat(level_tables, ignore_index=True) if level_tables else pd.DataFrame(columns=LEVEL_COLUMNS)
        files.append(write_csv(by_level, out / LEVEL_MEASUREMENTS))
    record = provenance(model, scans, outputs, stage, package_versions())
    record["delivered_by_run"] = delivered
    record["slab_half_width_mm"] = slab_mm if per_level else None
    files.append(write_json(record, out / PROVENANCE))
    log.info("wrote %d files into %s", len(files), out)
    return PredictResult(model, outputs, measurements, files, log_file, by_level)
