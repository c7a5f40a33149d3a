"""Reading a user-drawn annotated slice: the volume, its one labelled slice, and that slice inside the region."""

from __future__ import annotations

import logging

import numpy as np
import SimpleITK as sitk

from nnsam2_utils.data.io import array_to_image
from nnsam2_utils.data.manifest import DatasetManifest
from nnsam2_utils.errors import DataError

log = logging.getLogger(__name__)


def labelled_slices(label: sitk.Image) -> list[int]:
    """Slice numbers (along the stored axis closest to superior–inferior, as a viewer counts them)
    that hold any non-zero voxel."""
    from nnsam2_utils.data.geometry import slice_axis

    array = sitk.GetArrayViewFromImage(label)
    numpy_axis = 2 - slice_axis(label)  # SimpleITK arrays are (k, j, i)
    other = tuple(a for a in range(3) if a != numpy_axis)
    return [int(k) for k in np.flatnonzero(np.any(array != 0, axis=other))]


def read_annotation(manifest: DatasetManifest) -> tuple[sitk.Image, sitk.Image, int]:
    """The annotation volume, its scan's image and the stored slice number it labels.

    Errors name the file: missing or unreadable file, another grid than the scan, zero or several
    labelled slices.
    """
    from nnsam2_utils.data.geometry import check_same_grid
    from nnsam2_utils.data.io import read_image

    note = manifest.annotation
    if note is None:
        raise DataError(f"{manifest.manifest_path}: names no annotation.")
    case = manifest.case(note.case)
    image_path, path = manifest.resolve(case.image), manifest.resolve(note.file)
    image, label = read_image(image_path), read_image(path)
    check_same_grid(image, label, str(image_path), str(path))
    slices = labelled_slices(label)
    if len(slices) != 1:
        found = (
            "no labelled slice"
            if not slices
            else f"{len(slices)} labelled slices ({slices[:8]}{' …' if len(slices) > 8 else ''})"
        )
        raise DataError(
            f"{path}: the annotation must label exactly one slice; found {found}. "
            "Draw both muscles on one axial slice near the L3/L4 disc and save only that slice's labels."
        )
    return label, image, slices[0]


def prepare_annotation(manifest: DatasetManifest) -> tuple[sitk.Image, int]:
    """The annotation in the prepared grid of its scan (LPS, region crop, CT decimation), classes
    mapped through ``label_map``; and its index in the scan's superior→inferior stack."""
    from nnsam2_utils.data.geometry import (
        canonical,
        case_region,
        crop_z,
        decimation_factor,
        lps_slice_index,
        slice_axis,
        to_stack,
    )
    from nnsam2_utils.data.labels import map_labels

    label, image, k = read_annotation(manifest)
    note, case = manifest.annotation, manifest.case(manifest.annotation.case)
    path = manifest.resolve(note.file)
    z_low, z_high = case_region(image, case, manifest.resolve(case.image))
    z = lps_slice_index(image, k)
    step = (
        decimation_factor(canonical(image).GetSpacing()[2], manifest.decimate_to_mm) if manifest.modality == "CT" else 1
    )
    kept = list(range(z_high, z_low - 1, -step))
    if z not in kept:
        where = "outside the region L3/L4–L5/S1" if not z_low <= z <= z_high else "on a slice dropped by CT decimation"
        kept_k = [j for j in range(image.GetSize()[slice_axis(image)]) if lps_slice_index(image, j) in kept]
        raise DataError(f"{path}: the labelled slice {k} lies {where}. Annotate one of the slices {kept_k} instead.")
    cropped = crop_z(canonical(sitk.Cast(label, sitk.sitkUInt16)), z_low, z_high, step)
    classes = map_labels(sitk.GetArrayFromImage(cropped), manifest.label_map, str(path), manifest.other_labels)
    prepared = array_to_image(classes, cropped)
    index = int(np.flatnonzero(to_stack(prepared).reshape(len(kept), -1).any(axis=1))[0])
    present = set(np.unique(classes).tolist()) - {0}
    if present != {1, 2}:
        log.warning(
            "%s: the annotated slice holds classes %s; both 1 (right) and 2 (left) are expected.", path, sorted(present)
        )
    return prepared, index
