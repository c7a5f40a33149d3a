"""Preparation of a dataset (docs/method.md §2): each scan reoriented to LPS, cropped to the L3/L4–L5/S1
region, CT decimated; written with its model-input stack and a meta.json that marks it complete."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from nnsam2_utils.data.geometry import check_same_grid, region_crop
from nnsam2_utils.data.io import array_to_image, check_finite
from nnsam2_utils.data.labels import integer_labels, map_labels, map_muscles
from nnsam2_utils.data.manifest import Case, DatasetManifest
from nnsam2_utils.errors import DataError
from nnsam2_utils.prepare.model_input import model_input

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreparedCase:
    """A case after preparation (everything in LPS, cropped to the region)."""

    dataset: str
    case_id: str
    image: sitk.Image
    label: sitk.Image | None
    muscles: sitk.Image | None
    fat: sitk.Image | None
    decimation: int


def verify_sha256(path: Path, expected: str | None, field: str, manifest: DatasetManifest) -> None:
    """Compare a file with the SHA-256 its manifest pins (nothing pinned, or a folder: no check)."""
    from nnsam2_utils.data.io import sha256

    if not expected or not path.is_file():
        return
    found = sha256(path)
    if found != expected.strip().lower():
        raise DataError(
            f"{path}: SHA-256 mismatch (manifest {manifest.manifest_path} pins {field} = {expected}, the "
            f"file has {found}). The file is incomplete, altered or another version: download or export it "
            f"again; if this file is the right one, set {field} to {found} in the manifest."
        )


def _not_empty(array: np.ndarray, path: Path, role: str) -> None:
    """An expert label or fat image with no voxel inside the region is a mistake, never data."""
    if not array.any():
        raise DataError(
            f"{path}: the {role} is empty inside the L3/L4–L5/S1 region. Check the disc slice numbers and that the "
            "file belongs to this scan; a label resampled across a shifted grid can end up all zeros (copy the header "
            "instead: nnsam2 data check says how)."
        )


def prepare_case(manifest: DatasetManifest, case: Case) -> PreparedCase:
    """Load one case, reorient to LPS, crop to the L3/L4–L5/S1 region, decimate CT."""
    from nnsam2_utils.data.io import read_image

    image_path = manifest.resolve(case.image)
    verify_sha256(image_path, case.sha256.image, "sha256.image", manifest)
    image = check_finite(read_image(image_path), image_path)
    _prep, step = region_crop(manifest, case, image, image_path)

    label = muscles = fat = None
    if case.label:
        label_path = manifest.resolve(case.label)
        verify_sha256(label_path, case.sha256.label, "sha256.label", manifest)
        source = read_image(label_path)
        check_same_grid(image, source, str(image_path), str(label_path))
        source = _prep(integer_labels(source, str(label_path)))
        source_array = sitk.GetArrayFromImage(source)
        _not_empty(source_array, label_path, "expert label")
        label = array_to_image(
            map_labels(source_array, manifest.label_map, str(label_path), manifest.other_labels), source
        )
        if manifest.muscle_map:
            muscles = array_to_image(map_muscles(source_array, manifest.muscle_map), source)
    if case.fat:
        fat_path = manifest.resolve(case.fat)
        verify_sha256(fat_path, case.sha256.fat, "sha256.fat", manifest)
        fat_image = check_finite(read_image(fat_path), fat_path)
        check_same_grid(image, fat_image, str(image_path), str(fat_path))
        fat = _prep(fat_image)
        _not_empty(sitk.GetArrayFromImage(fat), fat_path, "fat image")
    return PreparedCase(manifest.name, case.id, _prep(image), label, muscles, fat, step)


def write_prepared(case: PreparedCase, folder: str | Path, modality: str) -> Path:
    """Write a prepared case: image/label/muscles/fat NIfTI, the model-input stack and meta.json.

    ``meta.json`` is written last, so its presence marks a complete case (resume point).
    """
    from nnsam2_utils.data.io import save_npz, write_image, write_json

    folder = Path(folder)
    write_image(case.image, folder / "image.nii.gz")
    for name in ("label", "muscles", "fat"):
        img = getattr(case, name)
        if img is not None:
            write_image(img, folder / f"{name}.nii.gz")
    save_npz(folder / "model_input.npz", frames=model_input(case.image, modality))
    write_json(
        {
            "dataset": case.dataset,
            "case": case.case_id,
            "modality": modality,
            "decimation": case.decimation,
            "spacing": case.image.GetSpacing(),
            "size": case.image.GetSize(),
            "n_slices": case.image.GetSize()[2],
            "has_label": case.label is not None,
            "has_fat": case.fat is not None,
        },
        folder / "meta.json",
    )
    return folder


def prepare_dataset(manifest: DatasetManifest, out_dir: str | Path) -> pd.DataFrame:
    """Prepare every case of a dataset into ``out_dir/<case>/`` (finished cases are skipped).

    Returns the case table: dataset, case, subject, timepoint, n_slices, spacing (x, y, z in mm),
    decimation, has_label, has_fat.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    from nnsam2_utils.data.io import read_json

    out_dir = Path(out_dir)
    rows = []
    for case in tqdm(manifest.cases, desc=f"prepare {manifest.name}", leave=False):
        folder = out_dir / case.id
        if not (folder / "meta.json").exists():
            write_prepared(prepare_case(manifest, case), folder, manifest.modality)
        meta = read_json(folder / "meta.json")
        rows.append(
            {
                "dataset": manifest.name,
                "case": case.id,
                "subject": case.subject or case.id,
                "timepoint": case.timepoint,
                "n_slices": meta["n_slices"],
                "spacing_x": meta["spacing"][0],
                "spacing_y": meta["spacing"][1],
                "spacing_z": meta["spacing"][2],
                "decimation": meta["decimation"],
                "has_label": meta["has_label"],
                "has_fat": meta["has_fat"],
            }
        )
    return pd.DataFrame(rows)
