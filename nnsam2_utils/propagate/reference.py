"""Reference ("seed") scan selection per dataset (docs/method.md §3).

Each scan is embedded by the mean of the pooled image-encoder embeddings of three slices of its
region (first, middle, last). The authors used DINOv2-large; we use the promptable model's own
image encoder **(ours: no extra model)**. The reference is the medoid: the scan with the
smallest mean cosine distance to all other scans of the dataset. Its top slice (index 0 of the
stack, the L3/L4 disc level) is the dataset's one annotated slice.

Tie rule: mean distances are rounded to 12 decimals (so that float noise between identical
embeddings does not decide), then the smallest case id (string order) wins.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from nnsam2_utils.errors import DataError
from nnsam2_utils.propagate.base import Propagator

log = logging.getLogger(__name__)

ANNOTATED_SLICE = 0  # the top (L3/L4 disc) slice of the reference stack
DISTANCE_DECIMALS = 12


@dataclass(frozen=True)
class ReferenceChoice:
    """The chosen reference scan, its annotated slice and the ranking of every scan."""

    case: str
    annotated_slice: int
    distances: pd.DataFrame  # columns case, mean_distance; sorted, the chosen case first


def embedding_slices(n_slices: int) -> list[int]:
    """Indices of the first, middle and last slice (duplicates removed for short stacks)."""
    if n_slices < 1:
        raise DataError("cannot embed an empty stack (0 slices): check the region crop of this scan.")
    return sorted({0, n_slices // 2, n_slices - 1})


def scan_embedding(propagator: Propagator, frames: np.ndarray) -> np.ndarray:
    """One vector per scan: mean of the pooled encoder embeddings of its first, middle and last slice."""
    frames = np.asarray(frames)
    pooled = np.asarray(propagator.embed(frames[embedding_slices(len(frames))]), dtype=np.float64)
    return pooled.mean(axis=0)


def cosine_distances(embeddings: Mapping[str, np.ndarray]) -> tuple[list[str], np.ndarray]:
    """Case ids (sorted) and their pairwise cosine distance matrix; zero or non-finite vectors are errors."""
    if not embeddings:
        raise DataError("no scan embeddings given: the dataset has no scans to choose a reference from.")
    cases = sorted(embeddings, key=str)
    if len({np.asarray(embeddings[c]).size for c in cases}) != 1:
        raise DataError("scan embeddings differ in length: embed every scan with the same model.")
    matrix = np.stack([np.asarray(embeddings[c], dtype=np.float64).ravel() for c in cases])
    norms = np.linalg.norm(matrix, axis=1)
    for case, vector, norm in zip(cases, matrix, norms):
        if not np.all(np.isfinite(vector)):
            raise DataError(f"scan {case!r}: its embedding holds NaN or Inf; check the scan's model-input stack.")
        if norm == 0:
            raise DataError(
                f"scan {case!r}: its embedding is the zero vector, so its cosine distance is undefined; check the "
                "scan's model-input stack (an all-black region?)."
            )
    unit = matrix / norms[:, None]
    distances = np.clip(1.0 - unit @ unit.T, 0.0, 2.0)
    np.fill_diagonal(distances, 0.0)
    return cases, distances


def medoid(embeddings: Mapping[str, np.ndarray]) -> tuple[str, pd.DataFrame]:
    """The medoid scan (smallest mean cosine distance to all others) and the table of every scan.

    The table has columns ``case`` and ``mean_distance`` sorted by distance then case id; its first
    row is the medoid. A single scan is its own medoid (mean distance 0.0).
    """
    cases, distances = cosine_distances(embeddings)
    n = len(cases)
    mean = distances.sum(axis=1) / (n - 1) if n > 1 else np.zeros(1)
    table = pd.DataFrame({"case": cases, "mean_distance": np.round(mean, DISTANCE_DECIMALS)})
    table = table.sort_values(["mean_distance", "case"], kind="stable").reset_index(drop=True)
    return str(table.loc[0, "case"]), table


def embed_scans(
    propagator: Propagator, stacks: Mapping[str, np.ndarray], progress: bool = True
) -> dict[str, np.ndarray]:
    """Scan embedding of every case: {case: vector}."""
    return {
        case: scan_embedding(propagator, frames)
        for case, frames in tqdm(stacks.items(), desc="reference embeddings", disable=not progress)
    }


def choose_reference(
    propagator: Propagator, stacks: Mapping[str, np.ndarray], progress: bool = True
) -> ReferenceChoice:
    """Embed every scan's model-input stack and pick the medoid; its top slice is the annotated slice."""
    case, table = medoid(embed_scans(propagator, stacks, progress))
    log.info(
        "reference scan %s (mean cosine distance %.4g over %d scans), annotated slice %d",
        case,
        table.loc[0, "mean_distance"],
        len(table),
        ANNOTATED_SLICE,
    )
    return ReferenceChoice(case, ANNOTATED_SLICE, table)
