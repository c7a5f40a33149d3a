"""Per-level measurements of a run (docs/method.md §8.1): every stage's and the expert's masks measured at each
scan's disc levels (the manifest's ``discs``), and their agreement per stage and disc level with the statistics of
docs/method.md §9.

A prepared scan is the L3/L4–L5/S1 region in LPS, CT decimated (docs/method.md §2.2–2.3): its last slice (the most
superior) is the L3/L4 disc, which the crop and the decimation always keep, and a disc Δ stored slices from L3/L4
towards L5/S1 lies Δ / k prepared slices below it (k the decimation factor). So the disc positions on the prepared
stack follow from the manifest and the case table alone; a disc that fell between two kept CT slices gets a
fractional position, and L5/S1 may lie up to (k − 1) / k slice below the lowest kept slice.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import pandas as pd
from tqdm.auto import tqdm

from nnsam2_utils.data.geometry import stack_offsets
from nnsam2_utils.data.io import read_image
from nnsam2_utils.data.manifest import DISC_LEVELS, EDGE_MEANING, Discs
from nnsam2_utils.evaluate.levels import SLAB_HALF_WIDTH_MM, level_rows
from nnsam2_utils.evaluate.statistics import agreement_table

log = logging.getLogger(__name__)

#: Columns of the run's per-level measurements (``tables/level_measurements.csv``).
RUN_LEVEL_COLUMNS: tuple[str, ...] = (
    "dataset",
    "case",
    "subject",
    "level",
    "class",
    "measure",
    "source",
    "value",
    "stage",
    "slices",
    "note",
)
#: The stage name of the per-level agreement of each dataset's delivered stage (docs/method.md §7.1).
DELIVERED = "delivered"


def prepared_disc_positions(discs: Discs, n_slices: int, decimation: int) -> dict[str, float | None]:
    """Each disc level's position on a prepared stack (a continuous LPS slice index; None for a level not given, or
    given as ``edge``: not in the scan).

    ``n_slices`` and ``decimation`` are the prepared case's (``cases.csv``): L3/L4 is slice ``n_slices − 1``, and a
    level ``Δ`` stored slices from L3/L4 towards L5/S1 lies ``Δ / decimation`` slices below it. A level on the far
    side of L3/L4 (an L4/L5 above it) gets a position above the stack, which :func:`level_rows` reports as outside.
    With ``L3L4: edge`` the stack's lowest slice is L5/S1 (see :func:`~nnsam2_utils.data.geometry.stack_offsets`).
    """
    top = n_slices - 1
    offsets = stack_offsets(discs, n_slices, decimation)
    return {level: None if offset is None else top - offset for level, offset in offsets.items()}


def missing_notes(discs: Discs) -> dict[str, str]:
    """The note of each level the scan does not reach (``edge``): why its measurements are NaN."""
    return {level: f"{level} not given: {EDGE_MEANING[level]}" for level in discs.edges}


def case_level_rows(
    workspace,
    dataset: str,
    modality: str,
    case: str,
    positions: Mapping[str, float | None],
    stages: Sequence[str],
    half_width_mm: float = SLAB_HALF_WIDTH_MM,
    missing: Mapping[str, str] | None = None,
) -> list[dict]:
    """Per-level rows of one prepared scan: each stage's mask (``auto``) and the expert label (``expert``, if any);
    ``missing``: the note of a level whose position is None (default ``"<level> not given"``)."""
    folder = workspace.prepared(dataset, case)
    image = read_image(folder / "image.nii.gz")
    extra: dict = {"missing": missing}
    if (folder / "fat.nii.gz").exists():
        extra |= {"water": image, "fat": read_image(folder / "fat.nii.gz")}
    elif modality == "CT":
        extra |= {"ct": image}
    rows = []
    for stage in stages:
        labels = read_image(workspace.labels(stage, dataset, case))
        rows += [{**r, "source": "auto", "stage": stage} for r in level_rows(labels, positions, half_width_mm, **extra)]
    if (folder / "label.nii.gz").exists():
        expert = read_image(folder / "label.nii.gz")
        rows += [{**r, "source": "expert", "stage": ""} for r in level_rows(expert, positions, half_width_mm, **extra)]
    return rows


def level_measurements(
    workspace, run, stages: Sequence[str], half_width_mm: float = SLAB_HALF_WIDTH_MM
) -> pd.DataFrame:
    """The run's per-level measurements: every scan, disc level, class and measure, for each of ``stages`` and the
    expert labels (columns :data:`RUN_LEVEL_COLUMNS`; ``stage`` is empty on expert rows)."""
    rows = []
    for dataset in run.datasets:
        manifest = run.manifest(dataset)
        discs = {case.id: case.discs for case in manifest.cases}
        cases = workspace.case_table(dataset)
        for row in tqdm(list(cases.itertuples()), desc=f"levels {dataset}", leave=False):
            case = str(row.case)
            positions = prepared_disc_positions(discs[case], int(row.n_slices), int(row.decimation))
            notes = missing_notes(discs[case])
            for measured in case_level_rows(
                workspace, dataset, manifest.modality, case, positions, stages, half_width_mm, notes
            ):
                rows.append({**measured, "dataset": dataset, "case": case, "subject": str(row.subject)})
    return pd.DataFrame(rows, columns=list(RUN_LEVEL_COLUMNS))


def _stage_rows(table: pd.DataFrame, stage: str, delivered: Mapping[str, str] | None) -> pd.DataFrame:
    """The automated rows of one stage, or, for :data:`DELIVERED`, of each dataset's delivered stage."""
    auto = table[table["source"] == "auto"]
    if stage != DELIVERED:
        return auto[auto["stage"] == stage]
    chosen = auto["dataset"].map(dict(delivered or {}))
    return auto[auto["stage"] == chosen]


def agreement_by_level(
    table: pd.DataFrame,
    group_by: Mapping[str, str],
    delivered: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """Agreement (docs/method.md §9) of automated and expert per-level measurements, per stage and disc level.

    One :func:`~nnsam2_utils.evaluate.statistics.agreement_table` per stage (in the table's order) and level, the
    right and left LPM pooled per group; with ``delivered`` (dataset → stage), a first block :data:`DELIVERED` of
    each dataset's delivered stage. Columns ``stage, level`` and the agreement table's. No expert row: an empty
    table (nothing to agree with).
    """
    keys = ["dataset", "case", "subject", "class", "measure", "source", "value"]
    expert = table[table["source"] == "expert"]
    if expert.empty:
        log.warning("no expert per-level measurements: no per-level agreement")
        return pd.DataFrame(columns=["stage", "level"])
    stages = [s for s in dict.fromkeys(table.loc[table["source"] == "auto", "stage"]) if s]
    stages = ([DELIVERED] if delivered else []) + stages
    blocks = []
    for stage in stages:
        auto = _stage_rows(table, stage, delivered)
        for level in (lv for lv in DISC_LEVELS if lv in set(table["level"])):
            pairs = pd.concat([expert[expert["level"] == level], auto[auto["level"] == level]])[keys]
            result = agreement_table(pairs, group_by=group_by)
            blocks.append(result.assign(stage=stage, level=level))
    result = pd.concat(blocks, ignore_index=True)
    return result[["stage", "level"] + [c for c in result.columns if c not in ("stage", "level")]]
