"""The propagation contract shared by every promptable backend (SAM2, LiteMedSAM).

All arrays are model-space stacks (see :mod:`nnsam2_utils.data.geometry`): ``(slice, 256, 256)``
uint8 images ordered superior → inferior, and uint8 class masks with 0 background,
1 right LPM, 2 left LPM.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
import pandas as pd

CONFIDENCE_COLUMNS = ("case", "slice", "class", "iou", "object_score", "area", "prompted")
CLASS_IDS: tuple[int, ...] = (1, 2)


@dataclass
class PropagationResult:
    """Pseudo-labels of one target scan and the model's confidence per slice and class.

    ``masks``: (n_slices, 256, 256) uint8 class ids of the target scan.
    ``confidence``: tidy table with :data:`CONFIDENCE_COLUMNS`; ``iou`` is the mask decoder's
    predicted IoU of the kept mask (NaN where the model made no prediction, e.g. a prompted
    slice), ``object_score`` the object-presence logit (NaN where the backend has none),
    ``area`` the mask's pixel count at model size, ``prompted`` True on the annotated slice.
    ``frame_order``: for video backends, the (source, slice) pairs in the order fed to the model
    (source is ``"reference"`` or ``"target"``).
    """

    masks: np.ndarray
    confidence: pd.DataFrame
    frame_order: list[tuple[str, int]] = field(default_factory=list)


@runtime_checkable
class Propagator(Protocol):
    """A promptable model that propagates one annotated slice through a target scan."""

    name: str

    def embed(self, frames: np.ndarray) -> np.ndarray:
        """Image-encoder embedding of each frame, pooled to one vector per frame: (n, d)."""
        ...

    def propagate(
        self,
        reference: np.ndarray,
        annotated_slice: int,
        annotated_mask: np.ndarray,
        target: np.ndarray,
        case_id: str,
        target_is_reference: bool = False,
    ) -> PropagationResult:
        """Propagate the annotation of ``reference[annotated_slice]`` through ``target``."""
        ...


CONFIDENCE_DTYPES = {
    "case": "str",
    "slice": "int64",
    "class": "int64",
    "iou": "float64",
    "object_score": "float64",
    "area": "int64",
    "prompted": "bool",
}


def confidence_frame(rows: list[dict]) -> pd.DataFrame:
    """Rows → the tidy confidence table of :data:`CONFIDENCE_COLUMNS` with stable dtypes."""
    return pd.DataFrame(rows, columns=list(CONFIDENCE_COLUMNS)).astype(CONFIDENCE_DTYPES)


def empty_confidence() -> pd.DataFrame:
    """An empty confidence table with the right columns."""
    return pd.DataFrame(
        {
            c: pd.Series(dtype=t)
            for c, t in zip(CONFIDENCE_COLUMNS, ("str", "int64", "int64", "float64", "float64", "int64", "bool"))
        }
    )
