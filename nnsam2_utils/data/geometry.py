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

import logging
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nnsam2_utils.data.io import array_to_image
from nnsam2_utils.data.manifest import DISC_LEVELS, EDGE, EDGE_MEANING, EDGE_SIDE, Case, DatasetManifest, Discs
from nnsam2_utils.errors import GeometryError

log = logging.getLogger(__name__)


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
#: (image path, case, level) of the ``edge`` levels already warned about: once per scan and process.
_WARNED: set[tuple[str, str, str]] = set()


def edge_slice(image, level: str) -> int:
    """The stored slice number of the volume's end on the side of ``level`` (L3L4: superior, L5S1: inferior).

    ``image``: a SimpleITK image or an ``ImageFileReader`` that has read the header (both give size and direction).
    """
    axis = slice_axis(image)
    count = image.GetSize()[axis]
    rising = np.asarray(image.GetDirection()).reshape(3, 3)[2, axis] > 0  # slice numbers run inferior → superior
    superior = EDGE_SIDE[level] == "superior"
    return count - 1 if rising == superior else 0


def stored_discs(discs: Discs, image) -> Discs:
    """The discs with each ``edge`` replaced by the stored slice number of the volume's end on its side."""
    return discs.model_copy(update={level: edge_slice(image, level) for level in discs.edges})


def _short_region(length: float, case: Case, image_path: str | Path) -> bool:
    """A region shorter than a lumbar spine allows is fine when the scan stops short of a disc: say so."""
    if length >= REGION_MM[0] or not case.discs.edges:
        return False
    log.warning(
        "%s (case %s): the region is only %.0f mm long (L3/L4 to L5/S1 spans at least %.0f mm) because %s; "
        "it is kept as it is",
        image_path,
        case.id,
        length,
        REGION_MM[0],
        " and ".join(EDGE_MEANING[level] for level in case.discs.edges),
    )
    return True


def _slice_words(given: Discs, stored: Discs, level: str) -> str:
    """``slice 8``, or for an ``edge`` level ``edge: slice 0`` (the volume's end slice it stands for)."""
    return (
        f"edge: slice {getattr(stored, level)}" if getattr(given, level) == EDGE else f"slice {getattr(given, level)}"
    )


def case_region(image: sitk.Image, case: Case, image_path: str | Path) -> tuple[int, int]:
    """The LPS z-range (low, high) of a case's L3/L4–L5/S1 region; errors name the file and the case.

    L3/L4 must lie superior to L5/S1 in the image's own orientation: reversed levels (or an image
    header whose direction says the scan is upside down) are a GeometryError, not silently swapped.
    A level given as ``edge`` (the scan does not reach it) puts that end of the region at the volume's end slice,
    with a warning naming the scan; a region short for that reason is kept (a warning says so), not refused.
    """
    discs = stored_discs(case.discs, image)
    try:
        z_top, z_bottom = (lps_slice_index(image, k) for k in (discs.L3L4, discs.L5S1))
    except GeometryError as exc:
        raise GeometryError(f"{image_path} (case {case.id}): {exc}") from exc
    for level in case.discs.edges:
        if (str(image_path), case.id, level) in _WARNED:
            continue
        _WARNED.add((str(image_path), case.id, level))
        log.warning(
            "%s (case %s): %s is 'edge': %s, so the region is clipped at the volume's %s end (slice %d) and %s is "
            "not measured",
            image_path,
            case.id,
            level,
            EDGE_MEANING[level],
            EDGE_SIDE[level],
            getattr(discs, level),
            level,
        )
    top, bottom = (_slice_words(case.discs, discs, level) for level in ("L3L4", "L5S1"))
    if z_top <= z_bottom:
        raise GeometryError(
            f"{image_path} (case {case.id}): disc L3L4 ({top}) lies inferior to L5S1 ({bottom}) in the image's "
            "orientation. Swap the two disc levels in the manifest, or fix the image header's direction if the scan "
            "is stored upside down."
        )
    length = (z_top - z_bottom) * canonical(image).GetSpacing()[2]
    if not REGION_MM[0] <= length <= REGION_MM[1] and not _short_region(length, case, image_path):
        raise GeometryError(
            f"{image_path} (case {case.id}): discs L3L4 ({top}) and L5S1 ({bottom}) lie {length:.0f} mm apart; "
            f"no lumbar spine spans L3/L4 to L5/S1 in less than {REGION_MM[0]:.0f} or more than {REGION_MM[1]:.0f} mm "
            "(adults: about 60–100 mm). Check that the slice numbers are of these discs (count in the viewer, first "
            "slice = 0) and the slice spacing in the header; a scan that stops short of a disc takes `edge` for it."
        )
    return z_bottom, z_top


def stack_offsets(discs: Discs, n_slices: int, decimation: int) -> dict[str, float | None]:
    """Each disc level's distance below the top slice of a prepared stack, in prepared slices (may be fractional).

    The top slice is L3/L4 (``n_slices`` and ``decimation`` the prepared case's): a level Δ stored slices from
    L3/L4 towards L5/S1 lies Δ / decimation below it, and one on the far side of L3/L4 above it (negative). When
    L3/L4 is ``edge`` the stack ends on L5/S1 (:func:`region_crop` keeps it), which then anchors the others at
    ``n_slices − 1``. None for a level not given or given as ``edge`` (not in the scan).
    """
    if n_slices < 1 or decimation < 1:
        raise ValueError(f"a prepared stack has at least one slice and a decimation ≥ 1; got {n_slices}, {decimation}.")
    if not discs.edges:
        towards = 1 if discs.L5S1 > discs.L3L4 else -1
        anchor, at, sign = discs.L3L4, 0.0, towards
    elif discs.L3L4 != EDGE:  # the slice-number direction is unknown here: other discs lie below L3/L4
        anchor, at, sign = discs.L3L4, 0.0, None
    else:
        anchor, at, sign = discs.L5S1, float(n_slices - 1), None
    below = -1.0 if discs.L3L4 == EDGE else 1.0
    offsets: dict[str, float | None] = {}
    for level in DISC_LEVELS:
        k = getattr(discs, level)
        if k is None or k == EDGE:
            offsets[level] = None
        elif sign is None:
            offsets[level] = at + below * abs(k - anchor) / decimation
        else:
            offsets[level] = at + (k - anchor) * sign / decimation
    return offsets


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
    predictions of the scan all go through the same one. The decimation keeps the L3/L4 slice, or the L5/S1 slice
    when L3/L4 is ``edge``."""
    z_low, z_high = case_region(image, case, image_path)
    step = (
        decimation_factor(canonical(image).GetSpacing()[2], manifest.decimate_to_mm) if manifest.modality == "CT" else 1
    )
    if case.discs.L3L4 == EDGE:  # no disc at the top: keep L5/S1 instead, the stack's one disc
        z_high = z_low + step * ((z_high - z_low) // step)

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
