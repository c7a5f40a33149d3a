"""Label maps: source label values to the two classes (right, left LPM) and to the four muscles."""

from __future__ import annotations

import numpy as np

from nnsam2_utils.data.manifest import MUSCLES
from nnsam2_utils.errors import DataError


def map_labels(label: np.ndarray, label_map: dict[int, int], where: str) -> np.ndarray:
    """Map source label values to classes {0, 1, 2}; unknown values are an error."""
    values = set(np.unique(label).tolist()) - {0}
    unknown = sorted(values - set(label_map))
    if unknown:
        raise DataError(
            f"{where}: label values {unknown} are not in the manifest's label_map {label_map}. Add them to label_map "
            "(0 = background)."
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
