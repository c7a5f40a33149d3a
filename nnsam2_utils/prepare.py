"""Preparation: canonical orientation, region crop, CT decimation, model-input slices.

Conventions (fixed here, used everywhere):

* Volumes are reoriented to **LPS** (SimpleITK's DICOM convention): array axes ``(z, y, x)``
  run inferior→superior, anterior→posterior, right→left. Displayed with ``imshow`` a slice
  is in radiological view (patient's right on the image's left, anterior at the top).
* A **stack** is the region of a scan as ``(slice, row, column)`` ordered **superior →
  inferior**: ``stack[0]`` is the L3/L4 disc slice, ``stack[-1]`` the L5/S1 disc slice.
* Model input: intensities clipped (CT to [-30, 150] HU; MRI to the 0.5–99.5th percentile
  of the volume), scaled to [0, 255] as uint8 and resized to 256 × 256 (bilinear); labels
  nearest-neighbour. Measurements always use the unclipped native images.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from .errors import DataError, GeometryError
from .manifest import MUSCLE_TO_CLASS, MUSCLES, Case, DatasetManifest

log = logging.getLogger(__name__)

MODEL_SIZE = 256
CT_WINDOW = (-30.0, 150.0)
MRI_PERCENTILES = (0.5, 99.5)


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


def canonical(image: sitk.Image) -> sitk.Image:
    """Reorient to LPS without resampling (a permutation/flip of axes)."""
    return sitk.DICOMOrient(image, "LPS")


def slice_axis(image: sitk.Image) -> int:
    """The stored axis (0, 1 or 2) closest to the superior–inferior direction (2 for axial scans)."""
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    return int(np.argmax(np.abs(direction[2])))


def lps_slice_index(image: sitk.Image, k: int) -> int:
    """The LPS z index of slice ``k`` counted along the stored superior–inferior axis (see :func:`slice_axis`)."""
    axis = slice_axis(image)
    size_k = image.GetSize()[axis]
    if not 0 <= k < size_k:
        raise GeometryError(f"disc slice index {k} is outside the volume (0..{size_k - 1} along the "
                            "superior–inferior axis). Fix the disc levels in the manifest.")
    index = [(s - 1) / 2 for s in image.GetSize()]
    index[axis] = k
    point = image.TransformContinuousIndexToPhysicalPoint(index)
    return int(round(canonical(image).TransformPhysicalPointToContinuousIndex(point)[2]))


def region_slices(image: sitk.Image, k_a: int, k_b: int) -> tuple[int, int]:
    """Map two disc slice indices of the stored image to the LPS z-range (low, high), inclusive.

    Disc indices count along the stored axis closest to superior–inferior (k for an axial
    scan, whatever its storage order), so they can be read off any viewer's slice number.
    """
    zs = [lps_slice_index(image, k) for k in (k_a, k_b)]
    return min(zs), max(zs)


def case_region(image: sitk.Image, case: Case, image_path: str | Path) -> tuple[int, int]:
    """The LPS z-range (low, high) of a case's L3/L4–L5/S1 region; errors name the file and the case.

    L3/L4 must lie superior to L5/S1 in the image's own orientation: reversed levels (or an image
    header whose direction says the scan is upside down) are a GeometryError, not silently swapped.
    """
    try:
        z_top, z_bottom = (lps_slice_index(image, k) for k in (case.discs.L3L4, case.discs.L5S1))
    except GeometryError as exc:
        raise GeometryError(f"{image_path} (case {case.id}): {exc}") from exc
    if z_top <= z_bottom:
        raise GeometryError(f"{image_path} (case {case.id}): disc L3L4 (slice {case.discs.L3L4}) lies inferior to "
                            f"L5S1 (slice {case.discs.L5S1}) in the image's orientation. Swap the two disc levels in "
                            "the manifest, or fix the image header's direction if the scan is stored upside down.")
    return z_bottom, z_top


def verify_sha256(path: Path, expected: str | None, field: str, manifest: DatasetManifest) -> None:
    """Compare a file with the SHA-256 its manifest pins (nothing pinned, or a folder: no check)."""
    from .io import sha256

    if not expected or not path.is_file():
        return
    found = sha256(path)
    if found != expected.strip().lower():
        raise DataError(f"{path}: SHA-256 mismatch (manifest {manifest.manifest_path} pins {field} = {expected}, the "
                        f"file has {found}). The file is incomplete, altered or another version: download or export it "
                        f"again; if this file is the right one, set {field} to {found} in the manifest.")


def decimation_factor(spacing_z: float, target_mm: float | None) -> int:
    """k = round(target / spacing_z), at least 1 (no decimation when target is None)."""
    if not target_mm:
        return 1
    return max(1, int(round(target_mm / spacing_z)))


def crop_z(image: sitk.Image, z_low: int, z_high: int, step: int = 1) -> sitk.Image:
    """Keep LPS slices z_high, z_high - step, … down to z_low (the superior disc is always kept)."""
    keep = list(range(z_high, z_low - 1, -step))[::-1]
    first, last = keep[0], keep[-1]
    cropped = image[:, :, first : last + 1 : step]
    return cropped


def map_labels(label: np.ndarray, label_map: dict[int, int], where: str) -> np.ndarray:
    """Map source label values to classes {0, 1, 2}; unknown values are an error."""
    values = set(np.unique(label).tolist()) - {0}
    unknown = sorted(values - set(label_map))
    if unknown:
        raise DataError(f"{where}: label values {unknown} are not in the manifest's label_map {label_map}. Add them to label_map (0 = background).")
    out = np.zeros(label.shape, dtype=np.uint8)
    for source, target in label_map.items():
        out[label == source] = target
    return out


def map_muscles(label: np.ndarray, muscle_map: dict[int, str]) -> np.ndarray:
    """Four-class muscle volume: 1 R-ES, 2 R-MF, 3 L-MF, 4 L-ES."""
    out = np.zeros(label.shape, dtype=np.uint8)
    for source, name in muscle_map.items():
        out[label == source] = MUSCLES.index(name) + 1
    return out


def check_same_grid(a: sitk.Image, b: sitk.Image, name_a: str, name_b: str, tol: float = 1e-3) -> None:
    """Raise GeometryError if two images do not share size, spacing, origin and direction."""
    problems = []
    if a.GetSize() != b.GetSize():
        problems.append(f"size {a.GetSize()} vs {b.GetSize()}")
    for what, va, vb in (("spacing", a.GetSpacing(), b.GetSpacing()), ("origin", a.GetOrigin(), b.GetOrigin()), ("direction", a.GetDirection(), b.GetDirection())):
        if not np.allclose(va, vb, atol=tol * max(1.0, float(np.max(np.abs(va))))):
            problems.append(f"{what} {tuple(round(v, 4) for v in va)} vs {tuple(round(v, 4) for v in vb)}")
    if problems:
        raise GeometryError(f"{name_b} does not match the grid of {name_a}: {'; '.join(problems)}. Resample the label onto the image grid (e.g. in 3D Slicer) or fix the header.")


def region_crop(manifest: DatasetManifest, case: Case, image: sitk.Image, image_path: str | Path):
    """The preparation of any volume on this scan's grid (reorient to LPS, crop to the region,
    decimate CT) as a function, with the decimation step: images, labels and external
    predictions of the scan all go through the same one."""
    z_low, z_high = case_region(image, case, image_path)
    step = decimation_factor(canonical(image).GetSpacing()[2], manifest.decimate_to_mm) if manifest.modality == "CT" else 1

    def crop(volume: sitk.Image) -> sitk.Image:
        return crop_z(canonical(volume), z_low, z_high, step)

    return crop, step


def prepare_case(manifest: DatasetManifest, case: Case) -> PreparedCase:
    """Load one case, reorient to LPS, crop to the L3/L4–L5/S1 region, decimate CT."""
    from .io import read_image

    image_path = manifest.resolve(case.image)
    verify_sha256(image_path, case.sha256.image, "sha256.image", manifest)
    image = read_image(image_path)
    array = sitk.GetArrayViewFromImage(image)
    if not np.isfinite(array).all():
        raise DataError(f"{image_path}: holds NaN or Inf voxels. Replace them (e.g. with the background value) before running.")
    _prep, step = region_crop(manifest, case, image, image_path)

    label = muscles = fat = None
    if case.label:
        label_path = manifest.resolve(case.label)
        verify_sha256(label_path, case.sha256.label, "sha256.label", manifest)
        source = read_image(label_path)
        check_same_grid(image, source, str(image_path), str(label_path))
        source = _prep(sitk.Cast(source, sitk.sitkUInt16))
        source_array = sitk.GetArrayFromImage(source)
        label = sitk.GetImageFromArray(map_labels(source_array, manifest.label_map, str(label_path)))
        label.CopyInformation(source)
        if manifest.muscle_map:
            muscles = sitk.GetImageFromArray(map_muscles(source_array, manifest.muscle_map))
            muscles.CopyInformation(source)
    if case.fat:
        fat_path = manifest.resolve(case.fat)
        verify_sha256(fat_path, case.sha256.fat, "sha256.fat", manifest)
        fat_image = read_image(fat_path)
        check_same_grid(image, fat_image, str(image_path), str(fat_path))
        fat = _prep(fat_image)
    return PreparedCase(manifest.name, case.id, _prep(image), label, muscles, fat, step)


def to_stack(image: sitk.Image) -> np.ndarray:
    """LPS image → (slice, row, column) array ordered superior → inferior."""
    return sitk.GetArrayFromImage(image)[::-1].copy()


def from_stack(stack: np.ndarray, reference: sitk.Image) -> sitk.Image:
    """Inverse of :func:`to_stack`, in the geometry of ``reference``."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(stack[::-1]))
    image.CopyInformation(reference)
    return image


def normalise(volume: np.ndarray, modality: str) -> np.ndarray:
    """Clip (CT window or MRI percentiles over the volume) and scale to [0, 255] as float32."""
    volume = volume.astype(np.float32)
    if modality == "CT":
        low, high = CT_WINDOW
    else:
        low, high = np.percentile(volume, MRI_PERCENTILES)
    if high <= low:
        return np.zeros_like(volume)
    return (np.clip(volume, low, high) - low) / (high - low) * 255.0


def resize_stack(stack: np.ndarray, size: tuple[int, int], nearest: bool) -> np.ndarray:
    """Resize every slice of a (n, h, w) stack (bilinear for images, nearest for labels)."""
    tensor = torch.from_numpy(np.ascontiguousarray(stack, dtype=np.float32))[:, None]
    if nearest:
        out = F.interpolate(tensor, size=size, mode="nearest-exact")
    else:
        out = F.interpolate(tensor, size=size, mode="bilinear", align_corners=False)
    return out[:, 0].numpy()


def model_input(image: sitk.Image, modality: str, size: int = MODEL_SIZE) -> np.ndarray:
    """The (n, size, size) uint8 stack the promptable model sees, superior → inferior."""
    scaled = resize_stack(normalise(to_stack(image), modality), (size, size), nearest=False)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def label_to_model(label: np.ndarray, size: int = MODEL_SIZE) -> np.ndarray:
    """Class stack (n, h, w) → (n, size, size) uint8, nearest neighbour."""
    return resize_stack(label, (size, size), nearest=True).astype(np.uint8)


def label_from_model(masks: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Class stack at model size → native (n, rows, columns), nearest neighbour."""
    return resize_stack(masks, shape, nearest=True).astype(np.uint8)


def write_prepared(case: PreparedCase, folder: str | Path, modality: str) -> Path:
    """Write a prepared case: image/label/muscles/fat NIfTI, the model-input stack and meta.json.

    ``meta.json`` is written last, so its presence marks a complete case (resume point).
    """
    from .io import save_npz, write_image, write_json

    folder = Path(folder)
    write_image(case.image, folder / "image.nii.gz")
    for name in ("label", "muscles", "fat"):
        img = getattr(case, name)
        if img is not None:
            write_image(img, folder / f"{name}.nii.gz")
    save_npz(folder / "model_input.npz", frames=model_input(case.image, modality))
    write_json({"dataset": case.dataset, "case": case.case_id, "modality": modality,
                "decimation": case.decimation, "spacing": case.image.GetSpacing(),
                "size": case.image.GetSize(), "n_slices": case.image.GetSize()[2],
                "has_label": case.label is not None, "has_fat": case.fat is not None},
               folder / "meta.json")
    return folder


def prepare_dataset(manifest: DatasetManifest, out_dir: str | Path) -> "pd.DataFrame":
    """Prepare every case of a dataset into ``out_dir/<case>/`` (finished cases are skipped).

    Returns the case table: dataset, case, subject, timepoint, n_slices, spacing (x, y, z in mm),
    decimation, has_label, has_fat.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    from .io import read_json

    out_dir = Path(out_dir)
    rows = []
    for case in tqdm(manifest.cases, desc=f"prepare {manifest.name}", leave=False):
        folder = out_dir / case.id
        if not (folder / "meta.json").exists():
            write_prepared(prepare_case(manifest, case), folder, manifest.modality)
        meta = read_json(folder / "meta.json")
        rows.append({"dataset": manifest.name, "case": case.id, "subject": case.subject or case.id,
                     "timepoint": case.timepoint, "n_slices": meta["n_slices"],
                     "spacing_x": meta["spacing"][0], "spacing_y": meta["spacing"][1], "spacing_z": meta["spacing"][2],
                     "decimation": meta["decimation"], "has_label": meta["has_label"], "has_fat": meta["has_fat"]})
    return pd.DataFrame(rows)


def load_stack(folder: str | Path, name: str = "image") -> tuple[np.ndarray, sitk.Image]:
    """A prepared volume as a superior→inferior stack, with its LPS image for geometry."""
    from .io import read_image

    image = read_image(Path(folder) / f"{name}.nii.gz")
    return to_stack(image), image


def load_model_input(folder: str | Path) -> np.ndarray:
    """The prepared (n, 256, 256) uint8 model-input stack of a case."""
    with np.load(Path(folder) / "model_input.npz") as data:
        return data["frames"]
