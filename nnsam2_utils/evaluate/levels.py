"""Per-level measurements (docs/method.md §8.1): cross-sectional area (CSA, mm²), Dixon fat ratio and CT attenuation
per class at each disc level, averaged over a slab of slices around the disc.

The measured volume is a stack of axial slices: SimpleITK axis 2, numpy axis 0, as every prepared (LPS) scan is,
with the slice spacing in its header. A disc level is given by its **position** on that stack: a continuous slice
index (slice centres at 0, 1, …, n − 1), so a disc that fell between two kept slices of a decimated CT has a
fractional position, and one above or below the stack a position outside ``[0, n − 1]``.

**Slab**: the slices whose centres lie within ±``half_width_mm`` of the disc's position (``|i − position| ×
slice spacing ≤ half_width_mm``, with a tolerance of 1e-3 mm); the default :data:`SLAB_HALF_WIDTH_MM` = 5 mm holds
the disc slice and one slice on each side at the demo's 4.5–5 mm slices; 0 mm keeps the disc slice alone.

* **CSA** = the mean over the slab's slices of (voxels of the class on the slice × in-plane voxel area);
* **fat ratio** = Σ fat / Σ (fat + water) over the class's voxels in the slab (signal-weighted, as §8);
* **mean HU** = the mean over the class's voxels in the slab, unclipped.

Edge-case semantics (every row says what happened in ``note``; ``slices`` is how many slices were averaged):

* **Level not given** (position None): every measure NaN, note ``"<level> not given"`` (or the reason passed in
  ``missing``, e.g. ``"L5S1 not given: the scan ends above L5/S1"``).
* **Slab off the volume's edge**: the slab is cut to the slices the volume has and those are averaged; note
  ``"slab clipped at the volume edge: m of M slices"``.
* **No slice in the slab** (the disc lies outside the volume, farther than ``half_width_mm`` from its first or last
  slice, or between two slices farther apart than the slab): every measure NaN, ``slices`` 0, with the reason.
* **Class absent in the whole slab**: CSA ``0.0`` mm², a real measurement (the mask holds no muscle there, as the
  volume of an empty mask is 0 mL in §8, so an automated mask that misses a level counts against it in the
  agreement), with the note ``"class absent in the slab"``; fat ratio and mean HU NaN with the same note.
* **Class absent on some slab slices**: those slices count with area 0 (note ``"class on k of m slices"``).
* **Zero water + fat signal** inside a non-empty mask: fat ratio NaN (note).

Tidy rows (:func:`level_rows`) have the columns ``level, class, measure, value, slices, note``, ``measure`` in
:data:`LEVEL_MEASURES`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from nnsam2_utils.data.manifest import DISC_LEVELS
from nnsam2_utils.errors import GeometryError
from nnsam2_utils.evaluate.measurements import LPM_CLASSES, ArrayOrImage, fat_ratio, hu_mean

log = logging.getLogger(__name__)

#: Half the slab's thickness in mm: slices whose centres lie within ± this distance of the disc are averaged.
SLAB_HALF_WIDTH_MM = 5.0
#: Slack on the slab's boundary, so that a slice exactly ``half_width_mm`` away is inside despite rounding.
SLAB_TOLERANCE_MM = 1e-3
LEVEL_MEASURES: tuple[str, ...] = ("csa_mm2", "fat_ratio", "hu_mean")
#: Columns of :func:`level_rows`.
LEVEL_COLUMNS: tuple[str, ...] = ("level", "class", "measure", "value", "slices", "note")


@dataclass(frozen=True)
class Slab:
    """The slices averaged at one disc level."""

    level: str
    position: float  # the disc's position: a continuous slice index of the measured volume
    slices: tuple[int, ...]  # the slab's slices inside the volume, in order
    full: int  # how many slices the slab would hold on a volume without edges
    note: str  # "" when the whole slab lies inside the volume; else what was cut or why it is empty


def check_half_width(half_width_mm: float) -> float:
    """The slab's half-width as a float; ValueError unless it is finite and not negative."""
    value = float(half_width_mm)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"slab half-width {half_width_mm!r} mm: give a finite distance ≥ 0 (0 = the disc slice only).")
    return value


def slab(level: str, position: float, n_slices: int, spacing_mm: float, half_width_mm: float) -> Slab:
    """The slices of an ``n_slices`` stack whose centres lie within ±``half_width_mm`` of ``position``.

    ``spacing_mm`` is the distance between slice centres. The slab is cut to ``0..n_slices − 1``; the note says
    so, or why no slice is left (see the module docstring).
    """
    half_width_mm = check_half_width(half_width_mm)
    if not (math.isfinite(position) and math.isfinite(spacing_mm) and spacing_mm > 0):
        raise GeometryError(
            f"{level}: disc position {position!r} or slice spacing {spacing_mm!r} mm is not a finite number (the "
            "spacing must be positive). Fix the disc slice number or the image header."
        )
    reach = (half_width_mm + SLAB_TOLERANCE_MM) / spacing_mm  # in slices
    first, last = math.ceil(position - reach), math.floor(position + reach)
    full = max(0, last - first + 1)
    inside = tuple(range(max(first, 0), min(last, n_slices - 1) + 1))
    if not inside:
        where = f"disc at slice position {position:.2f}, volume slices 0..{n_slices - 1}, {spacing_mm:g} mm apart"
        note = f"no slice within ±{half_width_mm:g} mm of the disc ({where})"
    elif len(inside) < full:
        note = f"slab clipped at the volume edge: {len(inside)} of {full} slices"
    else:
        note = ""
    return Slab(level, float(position), inside, full, note)


def csa_mm2(mask: np.ndarray, slices: tuple[int, ...], pixel_area_mm2: float) -> float:
    """Mean cross-sectional area (mm²) of a boolean ``(slice, row, column)`` mask over ``slices`` (NaN for none)."""
    if not slices:
        return float("nan")
    counts = mask[list(slices)].reshape(len(slices), -1).sum(axis=1)
    return float(counts.mean() * pixel_area_mm2)


def _array(data: ArrayOrImage) -> np.ndarray:
    """The voxel array of an image (a view) or the array itself."""
    return sitk.GetArrayViewFromImage(data) if isinstance(data, sitk.Image) else np.asarray(data)


def _intensities(labels: np.ndarray, images: Mapping[str, ArrayOrImage | None]) -> dict[str, np.ndarray]:
    """The intensity arrays given, each checked to share the label's array shape."""
    arrays = {}
    for name, image in images.items():
        if image is None:
            continue
        array = _array(image)
        if array.shape != labels.shape:
            raise GeometryError(
                f"{name} image: array shape {array.shape} differs from the label's {labels.shape}. Measure on the "
                "label's grid (resample the image or the label first)."
            )
        arrays[name] = array
    return arrays


def _nan_rows(level: str, classes: Mapping[int, int | str], measures: list[str], slices: int, note: str) -> list[dict]:
    """NaN rows of every class and measure of one level, with the reason."""
    return [
        {"level": level, "class": name, "measure": m, "value": float("nan"), "slices": slices, "note": note}
        for name in classes.values()
        for m in measures
    ]


def _class_rows(
    level_slab: Slab,
    mask: np.ndarray,
    name: int | str,
    pixel_area_mm2: float,
    arrays: dict[str, np.ndarray],
) -> list[dict]:
    """The rows of one class at one level: CSA, and the fat ratio and mean HU where their images are given."""
    index = list(level_slab.slices)
    in_slab = mask[index]
    present = int(in_slab.reshape(len(index), -1).any(axis=1).sum())
    notes = [level_slab.note] if level_slab.note else []
    if present == 0:
        notes.append("class absent in the slab")
        log.warning("%s: class %s absent in the slab: CSA 0 mm², fat ratio and HU NaN", level_slab.level, name)
    elif present < len(index):
        notes.append(f"class on {present} of {len(index)} slices")
    note = "; ".join(notes)
    values = {"csa_mm2": (csa_mm2(mask, level_slab.slices, pixel_area_mm2), note)}
    if "water" in arrays and "fat" in arrays:
        ratio = fat_ratio(in_slab, arrays["water"][index], arrays["fat"][index])
        zero_signal = present > 0 and math.isnan(ratio)
        values["fat_ratio"] = (ratio, "; ".join([*notes, "zero water + fat signal"]) if zero_signal else note)
    if "ct" in arrays:
        values["hu_mean"] = (hu_mean(in_slab, arrays["ct"][index]), note)
    return [
        {"level": level_slab.level, "class": name, "measure": m, "value": v, "slices": len(index), "note": n}
        for m, (v, n) in values.items()
    ]


def level_rows(
    labels: sitk.Image,
    positions: Mapping[str, float | None],
    half_width_mm: float = SLAB_HALF_WIDTH_MM,
    water: ArrayOrImage | None = None,
    fat: ArrayOrImage | None = None,
    ct: ArrayOrImage | None = None,
    classes: Mapping[int, int | str] | None = None,
    missing: Mapping[str, str] | None = None,
) -> list[dict]:
    """Tidy rows (level, class, measure, value, slices, note) of a label volume at each disc level given.

    ``labels``: a label volume whose SimpleITK axis 2 is the slice axis (its spacing gives the pixel area and the
    slice distance). ``positions``: disc level → continuous slice index on that axis (None: not given).
    ``water`` and ``fat`` (both or neither) add the fat ratio, ``ct`` the mean HU; arrays in numpy order
    ``(slice, row, column)`` or images on the label's grid. ``classes``: label value → class name (default the
    two LPM classes, 1 and 2). ``missing``: the note of a level whose position is None (default ``"<level> not
    given"``; e.g. why: the scan ends above L5/S1). Edge cases: see the module docstring.
    """
    if (water is None) != (fat is None):
        raise ValueError("the fat ratio needs both `water` and `fat` images; pass both or neither.")
    unknown = sorted(set(positions) - set(DISC_LEVELS))
    if unknown:
        raise ValueError(f"disc levels {unknown} unknown; the levels are {', '.join(DISC_LEVELS)}.")
    half_width_mm = check_half_width(half_width_mm)
    classes = dict(classes) if classes is not None else {c: c for c in LPM_CLASSES}
    array = _array(labels)
    arrays = _intensities(array, {"water": water, "fat": fat, "ct": ct})
    measures = ["csa_mm2"] + (["fat_ratio"] if "fat" in arrays else []) + (["hu_mean"] if "ct" in arrays else [])
    spacing = labels.GetSpacing()
    rows: list[dict] = []
    for level in (lv for lv in DISC_LEVELS if lv in positions):
        position = positions[level]
        if position is None:
            rows += _nan_rows(level, classes, measures, 0, (missing or {}).get(level, f"{level} not given"))
            continue
        level_slab = slab(level, position, array.shape[0], spacing[2], half_width_mm)
        if not level_slab.slices:
            log.warning("%s: %s; its measurements are NaN", level, level_slab.note)
            rows += _nan_rows(level, classes, measures, 0, level_slab.note)
            continue
        for value, name in classes.items():
            rows += _class_rows(level_slab, array == value, name, spacing[0] * spacing[1], arrays)
    return rows
