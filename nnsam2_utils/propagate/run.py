"""Stage 0 over a dataset: reference selection, propagation to every scan, pseudo-labels on disk."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
from tqdm.auto import tqdm

from nnsam2_utils.data.geometry import from_stack
from nnsam2_utils.data.io import read_csv, read_image, write_csv, write_image, write_json
from nnsam2_utils.errors import DataError, GeometryError
from nnsam2_utils.prepare.model_input import label_from_model, label_to_model, load_model_input, load_stack
from nnsam2_utils.propagate.base import Propagator

log = logging.getLogger(__name__)


class PreparedStacks(Mapping):
    """The model-input stacks of a prepared dataset's scans, each read from disk only when asked for."""

    def __init__(self, prepared_dir: Path, cases: list[str]):
        self.prepared_dir, self.cases = Path(prepared_dir), list(cases)

    def __getitem__(self, case: str) -> np.ndarray:
        if case not in self.cases:
            raise KeyError(case)
        return load_model_input(self.prepared_dir / case)

    def __iter__(self):
        return iter(self.cases)

    def __len__(self) -> int:
        return len(self.cases)


def select_reference(propagator: Propagator, prepared_dir: Path, cases: list[str]) -> tuple[str, pd.DataFrame]:
    """The medoid scan of a dataset by the backend's image-encoder embeddings (docs/method.md §3)."""
    from nnsam2_utils.propagate.reference import choose_reference

    choice = choose_reference(propagator, PreparedStacks(prepared_dir, cases), progress=False)
    return choice.case, choice.distances


def annotated_slice_mask(
    prepared_dir: Path, reference_case: str, slice_index: int = 0, volume: str = "label"
) -> np.ndarray:
    """The one annotated slice at model size: by default the expert label of the reference scan's top
    slice; ``volume="annotation"`` reads the user's own annotated slice (see :mod:`..annotation`)."""
    label, _ = load_stack(prepared_dir / reference_case, volume)
    if not 0 <= slice_index < len(label):
        raise GeometryError(
            f"{prepared_dir / reference_case / (volume + '.nii.gz')}: annotated slice {slice_index} is outside the "
            "region "
            f"(slices 0..{len(label) - 1}, L3/L4 to L5/S1). Annotate a slice inside the region."
        )
    mask = label_to_model(label[slice_index : slice_index + 1])[0]
    if not mask.any():
        raise DataError(
            f"{prepared_dir / reference_case / (volume + '.nii.gz')}: slice {slice_index} of the region has no label; "
            "the annotated slice must show both muscles. Label both muscles on that slice."
        )
    return mask


def propagate_case(
    propagator: Propagator,
    prepared_dir: Path,
    out_dir: Path,
    dataset: str,
    case: str,
    reference_case: str,
    reference: np.ndarray,
    annotated_slice: int,
    annotated_mask: np.ndarray,
) -> pd.DataFrame:
    """Propagate into one scan; write its pseudo-label (native grid) and confidence table.

    ``reference`` is the reference scan's model-input stack (loaded once per dataset by the
    caller). ``out_dir`` is the dataset's stage-0 folder; a case whose files exist is not
    redone (resume).
    """
    label_path = out_dir / "labels" / f"{case}.nii.gz"
    conf_path = out_dir / "confidence" / f"{case}.csv"
    if label_path.exists() and conf_path.exists():
        return read_csv(conf_path)
    target = reference if case == reference_case else load_model_input(prepared_dir / case)
    result = propagator.propagate(
        reference, annotated_slice, annotated_mask, target, case, target_is_reference=(case == reference_case)
    )
    image_stack, image = load_stack(prepared_dir / case)
    native = label_from_model(result.masks, image_stack.shape[1:])
    write_image(from_stack(native, image), label_path)
    confidence = result.confidence.assign(dataset=dataset, reference=reference_case)
    write_csv(confidence, conf_path)
    return confidence


def propagate_dataset(
    propagator: Propagator,
    prepared_dir: Path,
    out_dir: Path,
    dataset: str,
    cases: list[str],
    reference_case: str,
    annotated_slice: int = 0,
    volume: str = "label",
) -> pd.DataFrame:
    """Stage 0 for every scan of a dataset (reference first); returns the pooled confidence table.

    ``volume`` is the prepared volume holding the annotated slice: ``label`` (expert label) or
    ``annotation`` (the user's own slice)."""
    mask = annotated_slice_mask(prepared_dir, reference_case, annotated_slice, volume)
    write_json(
        {
            "dataset": dataset,
            "reference_case": reference_case,
            "annotated_slice": annotated_slice,
            "annotation_volume": volume,
            "backend": propagator.name,
            "classes_in_annotation": sorted(set(np.unique(mask).tolist()) - {0}),
        },
        out_dir / "annotation.json",
    )
    reference = load_model_input(prepared_dir / reference_case)
    order = [reference_case] + [c for c in cases if c != reference_case]
    tables = [
        propagate_case(
            propagator, prepared_dir, out_dir, dataset, case, reference_case, reference, annotated_slice, mask
        )
        for case in tqdm(order, desc=f"stage 0 {dataset}", leave=False)
    ]
    return pd.concat(tables, ignore_index=True)


def rerun_stage0_case(propagator, workspace, dataset: str, case: str, scratch: Path) -> dict:
    """Propagate into one scan again, exactly as the run's stage 0 did, and compare with its pseudo-label.

    Reads the reference scan, annotated slice and annotation volume from the dataset's stage-0
    ``annotation.json``; writes into ``scratch`` (emptied first, removed afterwards). Returns
    ``{"dataset", "case", "voxels", "voxels_differing", "identical"}``.
    """

    stage_dir = workspace.stage("stage0", dataset)
    record_path = stage_dir / "annotation.json"
    if not record_path.exists():
        raise FileNotFoundError(f"{record_path}: stage 0 of {dataset} has not run (no annotation record).")
    record = json.loads(record_path.read_text(encoding="utf-8"))
    prepared = workspace.prepared(dataset)
    reference_case, annotated = record["reference_case"], int(record["annotated_slice"])
    mask = annotated_slice_mask(prepared, reference_case, annotated, record.get("annotation_volume", "label"))
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        propagate_case(
            propagator,
            prepared,
            scratch,
            dataset,
            case,
            reference_case,
            load_model_input(prepared / reference_case),
            annotated,
            mask,
        )
        again = sitk.GetArrayFromImage(read_image(scratch / "labels" / f"{case}.nii.gz"))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    before = sitk.GetArrayFromImage(read_image(workspace.labels("stage0", dataset, case)))
    differing = int(np.count_nonzero(again != before)) if again.shape == before.shape else int(before.size)
    return {
        "dataset": dataset,
        "case": case,
        "voxels": int(before.size),
        "voxels_differing": differing,
        "identical": differing == 0 and again.shape == before.shape,
    }
