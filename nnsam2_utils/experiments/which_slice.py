"""Which slice to annotate (docs/method.md §10.6): stage 0 run again with the one annotated slice at another disc level,
or in another reference scan, and scored against the expert labels.

A **variant** is one (reference scan, annotated slice) pair. The default is the run's own stage 0: the medoid
scan's L3/L4 slice. The level variants keep the medoid and move the slice to the L4/L5 or L5/S1 disc or to the middle
of the region; the reference variants keep the L3/L4 slice and take a scan drawn at random (one draw per seed) from
the dataset's other scans. Variants that land on the same pair (on the demo the mid-region slice is often the L4/L5
slice, and two seeds may draw the same scan) are propagated once.

Cost: the promptable model's image encoder dominates stage 0 (docs/method.md §4.1). Every scan is encoded **once**
and its slice embeddings are handed to every variant (``target_embeddings`` of the LiteMedSAM backend), so each
variant costs only the prompt encoder and mask decoder along its box chains.

Slices are indices of the model-input stack, superior → inferior: 0 is the L3/L4 disc (the prepared region's top
slice), the last is at or just above L5/S1 (docs/method.md §2.2–2.3). A disc Δ stored slices from L3/L4 lies Δ / k
prepared slices below it (k the CT decimation); a disc between two kept slices is rounded to the nearer (halves
upward, towards L5/S1), and one beyond the stack's end is clipped to its last slice. A disc given as ``edge`` (the
scan does not reach it) has no slice: that variant is not run on that scan. With ``L3L4: edge`` slice 0 is the
volume's top slice, not the disc, but still the run's own annotated slice (the default variant).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from nnsam2_utils.data.geometry import stack_offsets
from nnsam2_utils.data.manifest import DISC_LEVELS, Discs
from nnsam2_utils.evaluate.metrics import dsc_rows
from nnsam2_utils.prepare.model_input import label_from_model, label_to_model

#: The annotated slice's positions compared: the three discs of the region and its middle slice.
LEVELS: tuple[str, ...] = (*DISC_LEVELS, "mid")
LEVEL_LABELS = {"L3L4": "L3/L4", "L4L5": "L4/L5", "L5S1": "L5/S1", "mid": "mid-region"}
#: The run's own choice (docs/method.md §3): the medoid's top slice, at the L3/L4 disc.
DEFAULT_LEVEL = "L3L4"
#: Columns of :func:`plan_variants`.
PLAN_COLUMNS: tuple[str, ...] = (
    "dataset",
    "variant",
    "comparison",
    "level",
    "reference",
    "seed",
    "slice",
    "key",
    "default",
)
#: Columns of :func:`score_variants`.
DSC_COLUMNS: tuple[str, ...] = ("dataset", "key", "case", "class", "dsc")


@dataclass(frozen=True)
class ScanShape:
    """What the slice choice needs of one prepared scan: its slice count, CT decimation and disc levels."""

    n_slices: int
    decimation: int = 1
    discs: Discs | None = None


def level_slice(level: str, scan: ScanShape) -> int | None:
    """The model-stack index of the slice at ``level`` (see the module docstring); None for a disc not given."""
    n = int(scan.n_slices)
    if n < 1 or scan.decimation < 1:
        raise ValueError(f"a scan has at least one slice and a decimation ≥ 1; got {n}, {scan.decimation}.")
    if level == "mid":
        return n // 2
    if level not in DISC_LEVELS:
        raise ValueError(f"unknown level {level!r}; use one of {LEVELS}.")
    if level == DEFAULT_LEVEL:
        return 0
    if scan.discs is None:
        return None
    below = stack_offsets(scan.discs, n, scan.decimation)[level]  # prepared slices below the top; None: not in scan
    if below is None:
        return None
    return int(min(max(math.floor(below + 0.5), 0), n - 1))


def random_references(dataset: str, cases: Sequence[str], medoid: str, seeds: Sequence[int]) -> dict[int, str]:
    """One reference per seed, drawn uniformly from the dataset's scans other than the medoid.

    The draw depends only on the seed, the dataset's name and its sorted scan ids (not on the order given, the
    other seeds or the platform); a dataset with no other scan gets none.
    """
    others = sorted({str(c) for c in cases} - {str(medoid)})
    if not others:
        return {}
    salt = zlib.crc32(dataset.encode("utf-8"))
    return {int(s): others[int(np.random.default_rng([int(s), salt]).integers(len(others)))] for s in seeds}


def plan_variants(
    dataset: str, scans: Mapping[str, ScanShape], medoid: str, seeds: Sequence[int], levels: Sequence[str] = LEVELS
) -> pd.DataFrame:
    """Every variant of one dataset (columns :data:`PLAN_COLUMNS`), the default first.

    ``comparison`` is ``level`` (the medoid, the slice at each of ``levels``) or ``reference`` (a random other scan's
    L3/L4 slice, one row per seed). ``key`` names the (reference, slice) pair that is propagated; rows with the same
    key share one propagation. ``slice`` is NaN where the level is not given for that scan (nothing to run).
    """
    if medoid not in scans:
        raise ValueError(f"the medoid {medoid!r} is not a scan of {dataset}.")
    rows = []

    def add(variant: str, comparison: str, level: str, reference: str, seed: int | None) -> None:
        index = level_slice(level, scans[reference])
        rows.append(
            {
                "dataset": dataset,
                "variant": variant,
                "comparison": comparison,
                "level": level,
                "reference": reference,
                "seed": seed,
                "slice": index,
                "key": f"{reference}@{index}" if index is not None else "",
                "default": comparison == "level" and level == DEFAULT_LEVEL,
            }
        )

    for level in dict.fromkeys([DEFAULT_LEVEL, *levels]):
        add(LEVEL_LABELS[level], "level", level, medoid, None)
    for seed, reference in random_references(dataset, list(scans), medoid, seeds).items():
        add(f"random scan, seed {seed}", "reference", DEFAULT_LEVEL, reference, seed)
    plan = pd.DataFrame(rows, columns=list(PLAN_COLUMNS))
    plan["seed"] = plan["seed"].astype("Int64")
    plan["slice"] = plan["slice"].astype("Int64")
    return plan


def annotation_at(truth: np.ndarray, index: int) -> np.ndarray:
    """The annotated slice's mask at model size: the expert label of ``truth[index]`` (a native stack)."""
    return label_to_model(np.asarray(truth)[index : index + 1])[0]


@dataclass(frozen=True)
class VariantLabels:
    """What one variant's propagation gave: per scan its pseudo-label (native stack, superior → inferior) and the
    promptable model's confidence table (as stage 0 writes it)."""

    labels: dict[str, np.ndarray]
    confidence: pd.DataFrame


def propagate_variants(
    propagator,
    plan: pd.DataFrame,
    stacks: Mapping[str, np.ndarray],
    truths: Mapping[str, np.ndarray],
    progress: bool = False,
) -> tuple[dict[str, VariantLabels], dict[str, str]]:
    """Propagate every distinct (reference, slice) of ``plan`` into every scan; each scan encoded once.

    ``stacks``: model-input stacks (superior → inferior); ``truths``: the expert labels as native stacks in the same
    order (the annotated slice is read from them, as stage 0 reads the reference's label). Returns the pseudo-labels
    per key and notes per key: an annotated slice without any label is not run (stage 0 refuses it too), one without
    one of the classes runs with that class empty, as stage 0 does.
    """
    cases = list(stacks)
    dataset = str(plan["dataset"].iloc[0]) if len(plan) else ""
    keys = plan.loc[plan["key"] != "", ["key", "reference", "slice"]].drop_duplicates("key")
    encode = getattr(propagator, "encode", None)  # LiteMedSAM: hand the embeddings over; another backend encodes
    embeddings = {case: encode(stacks[case]) for case in cases} if encode else {}
    out: dict[str, VariantLabels] = {}
    notes: dict[str, str] = {}
    for key, reference, index in tqdm(list(keys.itertuples(index=False)), desc="variants", disable=not progress):
        index = int(index)
        mask = annotation_at(truths[reference], index)
        missing = sorted({1, 2} - set(np.unique(mask).tolist()))
        if missing:  # as stage 0: an empty slice is refused, a missing class stays empty (DSC 0 on every scan)
            notes[key] = (
                f"no label on slice {index} of {reference}"
                if len(missing) == 2
                else (f"class {missing[0]} absent on slice {index} of {reference}")
            )
            if len(missing) == 2:
                continue
        labels, tables = {}, []
        for case in cases:
            extra = {"target_embeddings": embeddings[case]} if case in embeddings else {}
            result = propagator.propagate(
                stacks[reference], index, mask, stacks[case], case, target_is_reference=case == reference, **extra
            )
            labels[case] = label_from_model(result.masks, np.asarray(truths[case]).shape[1:])
            tables.append(result.confidence.assign(dataset=dataset, reference=reference))
        out[key] = VariantLabels(labels, pd.concat(tables, ignore_index=True))
    return out, notes


def score_variants(
    dataset: str, variants: Mapping[str, Mapping[str, np.ndarray]], truths: Mapping[str, np.ndarray]
) -> pd.DataFrame:
    """DSC rows (columns :data:`DSC_COLUMNS`, one per key, scan and class) of labels per key and scan (native stacks)
    against the expert labels."""
    rows: list[dict] = []
    for key, labels in variants.items():
        for case, label in labels.items():
            rows += dsc_rows(dataset, case, key, np.asarray(label), np.asarray(truths[case]))
    table = pd.DataFrame(rows).rename(columns={"stage": "key"})
    return table.reindex(columns=list(DSC_COLUMNS))
