"""Label maps: source label values to the two classes (right, left LPM) and to the four muscles."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from nnsam2_utils.data.manifest import MUSCLES
from nnsam2_utils.errors import DataError


def integer_labels(label: sitk.Image, where: str) -> sitk.Image:
    """A label volume as non-negative integers, or a DataError: never a lossy cast.

    Labels stored as floats (some exporters do) are accepted only where every value is a whole
    number; 0.9999 or -1 would otherwise be turned silently into another class.
    """
    array = sitk.GetArrayViewFromImage(label)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise DataError(f"{where}: the label volume holds NaN or Inf. Save the label as integers (0 = background).")
        off = np.abs(array - np.round(array))
        if off.max() > 0:
            bad = float(array.flat[int(np.argmax(off))])
            raise DataError(
                f"{where}: label values are not whole numbers (e.g. {bad!r}); a label volume holds class numbers. "
                "Export the segmentation as an integer label map (ITK-SNAP, 3D Slicer: labelmap)."
            )
    if array.size and array.min() < 0:
        raise DataError(
            f"{where}: label value {int(array.min())} is negative. Label values are class numbers >= 0 (0 = "
            "background)."
        )
    if array.size and array.max() > 65535:
        raise DataError(f"{where}: label value {int(array.max())} is above 65535. Renumber the labels.")
    return sitk.Cast(sitk.Round(label) if np.issubdtype(array.dtype, np.floating) else label, sitk.sitkUInt16)


def map_labels(label: np.ndarray, label_map: dict[int, int], where: str, others: str = "error") -> np.ndarray:
    """Map source label values to classes {0, 1, 2}; values not in the map are an error, or background when
    ``others="background"`` (the manifest's ``other_labels``: e.g. a whole-body label file)."""
    values = set(np.unique(label).tolist()) - {0}
    unknown = sorted(values - set(label_map))
    if unknown and others != "background":
        raise DataError(
            f"{where}: label values {unknown} are not in the manifest's label_map {label_map}. Add them to label_map "
            "(0 = background), or set other_labels: background to treat every unmapped value as background."
        )
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
