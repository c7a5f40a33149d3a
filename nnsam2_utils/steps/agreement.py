"""Steps ``measure`` and ``agreement`` (docs/method.md §8–9): measures of the delivered stage, agreement; and per
disc level (§8.1), every stage's measures and their agreement."""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from nnsam2_utils.data.io import write_csv
from nnsam2_utils.evaluate.levels import SLAB_HALF_WIDTH_MM, check_half_width
from nnsam2_utils.evaluate.run_levels import agreement_by_level, level_measurements
from nnsam2_utils.evaluate.scans import dataset_group, measurements
from nnsam2_utils.evaluate.statistics import agreement_table
from nnsam2_utils.steps.deliver import delivered_stages, refined_stages
from nnsam2_utils.workflow.runlog import step_record
from nnsam2_utils.workflow.session import Run


def measured_stage(run: Run, stage: str | None = None) -> dict[str, str]:
    """The stage whose masks are measured, per dataset: ``stage`` for all, or each dataset's delivered stage."""
    if stage:
        return dict.fromkeys(run.datasets, stage)
    return delivered_stages(run)


def groups(run: Run) -> dict[str, str]:
    """The agreement group (MRI, Dixon, CT) of every dataset of the run."""
    return {d: dataset_group(run.manifest(d).modality, run.manifest(d).sequence) for d in run.datasets}


def measure(run: Run, stage: str | Mapping[str, str]) -> pd.DataFrame:
    """Volume, Dixon fat ratio and CT attenuation of every scan, automated and expert: ``tables/measurements.csv``."""
    with step_record(run.workspace.runlog, "measure", "pooled", {"stage": stage}):
        table = measurements(run.workspace, run, stage)
    write_csv(table, run.workspace.tables / "measurements.csv")
    return table


def agreement(run: Run, table: pd.DataFrame) -> pd.DataFrame:
    """TOST, ICC, Bland–Altman and the mixed model per measure and group: ``tables/agreement.csv``."""
    result = agreement_table(table, group_by=groups(run))
    write_csv(result, run.workspace.tables / "agreement.csv")
    return result


def measure_levels(run: Run, half_width_mm: float | None = None) -> pd.DataFrame:
    """CSA, Dixon fat ratio and CT attenuation per class at each disc level, averaged over a slab of ±``half_width_mm``
    (None: :data:`~nnsam2_utils.evaluate.levels.SLAB_HALF_WIDTH_MM`), for stage 0, every nnU-Net stage and the expert
    labels: ``tables/level_measurements.csv``."""
    half_width_mm = check_half_width(SLAB_HALF_WIDTH_MM if half_width_mm is None else half_width_mm)
    stages = ["stage0", *refined_stages(run)]
    with step_record(
        run.workspace.runlog, "measure_levels", "pooled", {"stages": stages, "half_width_mm": half_width_mm}
    ):
        table = level_measurements(run.workspace, run, stages, half_width_mm)
    write_csv(table, run.workspace.tables / "level_measurements.csv")
    return table


def level_agreement(run: Run, table: pd.DataFrame, delivered: Mapping[str, str] | None = None) -> pd.DataFrame:
    """TOST, ICC, Bland–Altman and the mixed model per stage, disc level, measure and group (first the stage
    delivered for each dataset, ``delivered``): ``tables/level_agreement.csv``."""
    result = agreement_by_level(table, groups(run), delivered)
    write_csv(result, run.workspace.tables / "level_agreement.csv")
    return result
