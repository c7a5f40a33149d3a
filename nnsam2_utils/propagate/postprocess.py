"""Post-processing of class masks: largest connected component and hole filling.

Applied per class. 2-D operations act on each slice of a stack independently; 3-D on the
whole volume (6-connectivity in 3-D, 4-connectivity in 2-D, so that components touching only
at an edge or corner stay separate). Empty classes stay empty.

A hole of a class is what it encloses outside every class's kept component: the kept voxels
of another class are never holes, so a class that surrounds part of another (a network unsure
which side is which) does not swallow it.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

_STRUCT_2D = ndimage.generate_binary_structure(2, 1)
_STRUCT_3D = ndimage.generate_binary_structure(3, 1)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """Keep the largest connected component of a boolean 2-D or 3-D mask (ties: lowest label)."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return mask.copy()
    structure = _STRUCT_3D if mask.ndim == 3 else _STRUCT_2D
    labels, n = ndimage.label(mask, structure=structure)
    if n == 1:
        return mask.copy()
    sizes = np.bincount(labels.ravel())[1:]
    return labels == (int(np.argmax(sizes)) + 1)


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill holes of a boolean mask; 3-D masks are filled slice by slice (axial holes)."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim == 2:
        return ndimage.binary_fill_holes(mask, structure=_STRUCT_2D)
    return np.stack([ndimage.binary_fill_holes(s, structure=_STRUCT_2D) for s in mask])


def _clean(labels: np.ndarray, classes: tuple[int, ...]) -> np.ndarray:
    """Per class: largest component; then each class's holes filled where no class's kept
    component is (earlier classes win a voxel enclosed by two classes)."""
    labels = np.asarray(labels)
    out = np.zeros_like(labels, dtype=np.uint8)
    components = {cls: largest_component(labels == cls) for cls in classes}
    for cls in classes:
        out[components[cls]] = cls
    for cls in classes:
        holes = fill_holes(components[cls]) & (out == 0)
        out[holes] = cls
    return out


def clean_slice(labels: np.ndarray, classes: tuple[int, ...] = (1, 2)) -> np.ndarray:
    """Per class on one 2-D slice: largest component, then hole filling."""
    return _clean(labels, classes)


def clean_volume(labels: np.ndarray, classes: tuple[int, ...] = (1, 2)) -> np.ndarray:
    """Per class on a 3-D stack: 3-D largest component, then hole filling (slice by slice)."""
    return _clean(labels, classes)


def clean_pseudo_label(stack: np.ndarray, classes: tuple[int, ...] = (1, 2)) -> np.ndarray:
    """docs/method.md §6: 2-D largest component + holes on every slice, then 3-D largest component per class."""
    per_slice = np.stack([clean_slice(s, classes) for s in stack]) if len(stack) else stack.astype(np.uint8)
    return clean_volume(per_slice, classes)
