"""Geometry of a scan: canonical LPS orientation, disc slices, the L3/L4–L5/S1 region, CT decimation, grids.

Conventions (used everywhere):

* Volumes are reoriented to **LPS** (SimpleITK's DICOM convention): array axes ``(z, y, x)``
  run inferior→superior, anterior→posterior, right→left. Displayed with ``imshow`` a slice
  is in radiological view (patient's right on the image's left, anterior at the top).
* A **stack** is the region of a scan as ``(slice, row, column)`` ordered **superior →
  inferior**: ``stack[0]`` is the L3/L4 disc slice, ``stack[-1]`` the L5/S1 disc slice.

See docs/method.md §2.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nnsam2_utils.data.io import array_to_image
from nnsam2_utils.data.manifest import Case, DatasetManifest
from nnsam2_utils.errors import GeometryError


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
        raise GeometryError(
            f"disc slice index {k} is outside the volume (0..{size_k - 1} along the "
            "superior–inferior axis). Fix the disc levels in the manifest."
        )
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


#: The plausible distance from the L3/L4 to the L5/S1 disc in mm: generous bounds around the adult 60–100 mm
#: (the synthetic phantoms, 14–55 mm, are compressed in z), so only impossible regions are refused.
REGION_MM = (10.0, 160.0)


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
        raise GeometryError(
            f"{image_path} (case {case.id}): disc L3L4 (slice {case.discs.L3L4}) lies inferior to "
            f"L5S1 (slice {case.discs.L5S1}) in the image's orientation. Swap the two disc levels in "
            "the manifest, or fix the image header's direction if the scan is stored upside down."
        )
    length = (z_top - z_bottom) * canonical(image).GetSpacing()[2]
    if not REGION_MM[0] <= length <= REGION_MM[1]:
        raise GeometryError(
            f"{image_path} (case {case.id}): discs L3L4 (slice {case.discs.L3L4}) and L5S1 (slice "
            f"{case.discs.L5S1}) lie {length:.0f} mm apart; no lumbar spine spans L3/L4 to L5/S1 in less than "
            f"{REGION_MM[0]:.0f} or more than {REGION_MM[1]:.0f} mm (adults: about 60–100 mm). Check that the slice "
            "numbers are of these discs (count in the viewer, first slice = 0) and the slice spacing in the header."
        )
    return z_bottom, z_top


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


def grid_differences(a: sitk.Image, b: sitk.Image) -> list[str]:
    """How two images' grids differ (empty when they share one).

    Size must be equal; spacing within 0.1 % ; direction within 1e-4; origin within 5 % of the smallest
    voxel spacing (an absolute tolerance: a 1 mm shift of a 1 mm grid is a different grid, wherever the
    origin lies).
    """
    problems = []
    if a.GetSize() != b.GetSize():
        problems.append(f"size {a.GetSize()} vs {b.GetSize()}")
    spacing = min(a.GetSpacing())
    for what, va, vb, rtol, atol in (
        ("spacing", a.GetSpacing(), b.GetSpacing(), 1e-3, 0.0),
        ("origin", a.GetOrigin(), b.GetOrigin(), 0.0, 0.05 * spacing),
        ("direction", a.GetDirection(), b.GetDirection(), 0.0, 1e-4),
    ):
        if not np.allclose(va, vb, rtol=rtol, atol=atol):
            problems.append(f"{what} {tuple(round(v, 4) for v in va)} vs {tuple(round(v, 4) for v in vb)}")
    return problems


HEADER_FIX = (
    "the voxels line up, only the header differs: copy the header of the file that is right onto the other "
    "(SimpleITK: `wrong = sitk.ReadImage(path); wrong.CopyInformation(sitk.ReadImage(right_path)); "
    "sitk.WriteImage(wrong, new_path)`; 3D Slicer: Volumes > Volume Information, or the Transforms module), "
    "write it to a new file and point the manifest at it"
)
RESAMPLE_FIX = (
    "the grids differ in size or spacing: resample it onto the image grid (e.g. 3D Slicer, "
    "Resample Scalar/Vector/DWI Volume; nearest neighbour for labels)"
)


def grid_fix(problems: list[str]) -> str:
    """The fix for grid differences: copy the header when only origin/direction differ, else resample."""
    return HEADER_FIX if all(p.startswith(("origin", "direction")) for p in problems) else RESAMPLE_FIX


def check_same_grid(a: sitk.Image, b: sitk.Image, name_a: str, name_b: str) -> None:
    """Raise GeometryError if two images do not share size, spacing, origin and direction (:func:`grid_differences`)."""
    problems = grid_differences(a, b)
    if problems:
        raise GeometryError(
            f"{name_b} does not match the grid of {name_a}: {'; '.join(problems)}. Fix: {grid_fix(problems)}."
        )


def odd_grid_out(images: dict[str, sitk.Image]) -> str | None:
    """Of three or more images of one scan, the one whose grid differs from all the others while those
    agree with each other (the file to blame); None otherwise."""
    names = list(images)
    if len(names) < 3:
        return None
    for odd in names:
        rest = [n for n in names if n != odd]
        agree = all(not grid_differences(images[rest[0]], images[n]) for n in rest[1:])
        if agree and all(grid_differences(images[n], images[odd]) for n in rest):
            return odd
    return None


def region_crop(manifest: DatasetManifest, case: Case, image: sitk.Image, image_path: str | Path):
    """The preparation of any volume on this scan's grid (reorient to LPS, crop to the region,
    decimate CT) as a function, with the decimation step: images, labels and external
    predictions of the scan all go through the same one."""
    z_low, z_high = case_region(image, case, image_path)
    step = (
        decimation_factor(canonical(image).GetSpacing()[2], manifest.decimate_to_mm) if manifest.modality == "CT" else 1
    )

    def crop(volume: sitk.Image) -> sitk.Image:
        return crop_z(canonical(volume), z_low, z_high, step)

    return crop, step


def to_stack(image: sitk.Image) -> np.ndarray:
    """LPS image → (slice, row, column) array ordered superior → inferior."""
    return sitk.GetArrayFromImage(image)[::-1].copy()


def from_stack(stack: np.ndarray, reference: sitk.Image) -> sitk.Image:
    """Inverse of :func:`to_stack`, in the geometry of ``reference``."""
    image = array_to_image(np.ascontiguousarray(stack[::-1]), reference)
    return image


def to_input_grid(labels: sitk.Image, scan: sitk.Image) -> sitk.Image:
    """Labels of a prepared (LPS, cropped, maybe decimated) volume on the grid and orientation of the scan it
    came from: each voxel of ``scan`` takes the label at its physical point (nearest neighbour, so classes stay
    classes; reorientation and cropping move no voxel centre), 0 outside the prepared region. Between the
    slices that a decimated CT kept, a voxel takes the nearest kept slice's label."""
    restored = sitk.Resample(labels, scan, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    axis, last = slice_axis(scan), labels.GetSize()[2] - 1
    ends = [
        scan.TransformPhysicalPointToContinuousIndex(labels.TransformIndexToPhysicalPoint((0, 0, k)))[axis]
        for k in (0, last)
    ]
    low, high = round(min(ends)), round(max(ends))
    array = sitk.GetArrayViewFromImage(restored).copy()
    outside = [slice(None)] * 3
    numpy_axis = 2 - axis  # (z, y, x) arrays
    for part in (slice(None, max(low, 0)), slice(high + 1, None)):  # beyond the region's end slices
        outside[numpy_axis] = part
        array[tuple(outside)] = 0
    result = sitk.GetImageFromArray(array)
    result.CopyInformation(restored)
    return result
