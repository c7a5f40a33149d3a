"""Per-scan, per-class measurements: volume, Dixon fat ratio, CT attenuation.

Inputs are SimpleITK images or numpy arrays. Arrays need a ``spacing`` (mm per axis; the
order of the axes does not matter because only the product is used); images carry their own.
Every image of one call must share the mask's voxel grid (same array shape, and for two
SimpleITK images the same spacing), otherwise :class:`~nnsam2_utils.errors.GeometryError`.

Edge-case semantics (the same everywhere in this module):

* **Empty mask** (no voxel of the class): the volume is ``0.0`` mL (a real measurement: the
  segmentation found nothing), while the fat ratio and the mean HU are undefined and returned
  as ``NaN`` (a warning is logged). NaN values are dropped, and counted, by :mod:`.stats`.
* **Zero signal** inside a non-empty mask (Σ(fat + water) = 0): fat ratio ``NaN`` (warning).
* Intensities are used as given: pass the **native, unclipped** images (never model input).
* Non-finite intensities inside the mask raise :class:`~nnsam2_utils.errors.DataError`.

Tidy rows (:func:`measurement_rows`) have the columns ``dataset, case, class, measure,
source, value`` with ``measure`` in ``volume_ml``, ``fat_ratio``, ``hu_mean`` and ``source``
in ``auto``, ``expert``. ``class`` is ``1`` (right LPM) and ``2`` (left LPM), and, where a
four-class muscle volume is given, ``"R-ES"``, ``"R-MF"``, ``"L-MF"``, ``"L-ES"``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk

from nnsam2_utils.data.manifest import MUSCLES
from nnsam2_utils.errors import DataError, GeometryError

log = logging.getLogger(__name__)

ArrayOrImage = np.ndarray | sitk.Image
SOURCES: tuple[str, ...] = ("auto", "expert")
MEASURES: tuple[str, ...] = ("volume_ml", "fat_ratio", "hu_mean")
LPM_CLASSES: tuple[int, ...] = (1, 2)


def _array(data: ArrayOrImage) -> np.ndarray:
    """The voxel array of an image (a view, no copy) or the array itself."""
    if isinstance(data, sitk.Image):
        return sitk.GetArrayViewFromImage(data)
    return np.asarray(data)


def _mask(mask: ArrayOrImage) -> np.ndarray:
    """Boolean voxel mask; any non-zero value counts as inside."""
    return _array(mask).astype(bool, copy=False)


def _same_grid(mask: ArrayOrImage, other: ArrayOrImage, name: str) -> np.ndarray:
    """The array of ``other`` after checking it shares the mask's grid."""
    values = _array(other)
    shape = _array(mask).shape
    if values.shape != shape:
        raise GeometryError(
            f"{name}: array shape {values.shape} differs from the mask's {shape}. "
            "Measure on the mask's grid (resample the image or the mask first)."
        )
    if isinstance(mask, sitk.Image) and isinstance(other, sitk.Image):
        if not np.allclose(mask.GetSpacing(), other.GetSpacing(), rtol=1e-3):
            raise GeometryError(
                f"{name}: spacing {other.GetSpacing()} differs from the mask's {mask.GetSpacing()}. "
                "Resample onto the mask's grid first."
            )
    return values


def voxel_volume_mm3(mask: ArrayOrImage, spacing: Sequence[float] | None = None) -> float:
    """Volume of one voxel in mm³: the product of the spacing.

    ``spacing`` overrides the image's own; it is required for a numpy array. It must have
    one positive entry per array axis.
    """
    if spacing is None:
        if not isinstance(mask, sitk.Image):
            raise ValueError("volume of a numpy mask needs `spacing` (mm per axis); pass it or pass a SimpleITK image.")
        spacing = mask.GetSpacing()
    spacing = tuple(float(s) for s in spacing)
    ndim = _array(mask).ndim
    if len(spacing) != ndim:
        raise GeometryError(
            f"spacing {spacing} has {len(spacing)} entries but the mask has {ndim} axes. Give one spacing per axis."
        )
    if not all(np.isfinite(s) and s > 0 for s in spacing):
        raise GeometryError(f"spacing {spacing} must be finite and positive (mm). Fix the image header.")
    return float(np.prod(spacing))


def volume_ml(mask: ArrayOrImage, spacing: Sequence[float] | None = None) -> float:
    """Voxel count × voxel volume (mm³) / 1000. An empty mask gives ``0.0`` mL."""
    count = int(np.count_nonzero(_mask(mask)))
    return count * voxel_volume_mm3(mask, spacing) / 1000.0


def _inside(mask: ArrayOrImage, image: ArrayOrImage, name: str) -> np.ndarray | None:
    """Float64 intensities of ``image`` inside the mask; None when the mask is empty."""
    inside = _mask(mask)
    values = _same_grid(mask, image, name)
    if not inside.any():
        return None
    selected = np.asarray(values[inside], dtype=np.float64)
    if not np.isfinite(selected).all():
        raise DataError(f"{name}: NaN or Inf voxels inside the mask. Replace them in the image before measuring.")
    return selected


def fat_ratio(mask: ArrayOrImage, water: ArrayOrImage, fat: ArrayOrImage) -> float:
    """Signal-weighted fat ratio Σfat / Σ(fat + water) inside the mask.

    NaN when the mask is empty or when Σ(fat + water) inside it is zero (warning logged).
    """
    water_in = _inside(mask, water, "water image")
    fat_in = _inside(mask, fat, "fat image")
    if water_in is None or fat_in is None:
        log.warning("fat_ratio: empty mask, fat ratio undefined -> NaN")
        return float("nan")
    fat_sum = float(fat_in.sum())
    total = fat_sum + float(water_in.sum())
    if total == 0.0:
        log.warning("fat_ratio: zero water + fat signal inside the mask -> NaN")
        return float("nan")
    return fat_sum / total


def hu_mean(mask: ArrayOrImage, ct: ArrayOrImage) -> float:
    """Mean attenuation (HU) inside the mask on the unclipped CT; NaN for an empty mask."""
    values = _inside(mask, ct, "CT image")
    if values is None:
        log.warning("hu_mean: empty mask, mean HU undefined -> NaN")
        return float("nan")
    return float(values.mean())


def _class_rows(
    dataset: str,
    case: str,
    source: str,
    label: ArrayOrImage,
    classes: dict[int, int | str],
    spacing: Sequence[float] | None,
    water: ArrayOrImage | None,
    fat: ArrayOrImage | None,
    ct: ArrayOrImage | None,
) -> list[dict]:
    """Rows for each ``label value → class name`` of one label volume."""
    labels = _array(label)
    rows = []
    for value, name in classes.items():
        mask = labels == value
        if not mask.any():
            log.warning("%s/%s (%s): class %s is empty: volume 0 mL, fat ratio and HU NaN", dataset, case, source, name)
        measures = {"volume_ml": volume_ml(mask, spacing)}
        if water is not None and fat is not None:
            measures["fat_ratio"] = fat_ratio(mask, water, fat)
        if ct is not None:
            measures["hu_mean"] = hu_mean(mask, ct)
        rows += [
            {"dataset": dataset, "case": case, "class": name, "measure": measure, "source": source, "value": result}
            for measure, result in measures.items()
        ]
    return rows


def measurement_rows(
    dataset: str,
    case: str,
    source: str,
    classes_volume: ArrayOrImage,
    spacing: Sequence[float] | None = None,
    water: ArrayOrImage | None = None,
    fat: ArrayOrImage | None = None,
    ct: ArrayOrImage | None = None,
    muscles: ArrayOrImage | None = None,
) -> list[dict]:
    """Tidy measurement rows of one scan and one source (``auto`` or ``expert``).

    ``classes_volume`` holds classes 1 (right LPM) and 2 (left LPM); ``muscles``, optional,
    the four-class volume 1 R-ES, 2 R-MF, 3 L-MF, 4 L-ES (rows with class ``"R-ES"`` …).
    Volume is always measured; the fat ratio when both ``water`` and ``fat`` are given; the
    mean HU when ``ct`` is given. ``spacing`` is needed when the label is a numpy array and
    overrides an image's own spacing otherwise. An absent class gives volume 0 mL and NaN
    fat ratio / HU (see the module docstring).
    """
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}.")
    if (water is None) != (fat is None):
        raise ValueError("the fat ratio needs both `water` and `fat` images; pass both or neither.")
    if spacing is None and isinstance(classes_volume, sitk.Image):
        spacing = classes_volume.GetSpacing()
    rows = _class_rows(dataset, case, source, classes_volume, {c: c for c in LPM_CLASSES}, spacing, water, fat, ct)
    if muscles is not None:
        _same_grid(classes_volume, muscles, "muscle label")
        named = {index + 1: name for index, name in enumerate(MUSCLES)}
        rows += _class_rows(dataset, case, source, muscles, named, spacing, water, fat, ct)
    return rows
