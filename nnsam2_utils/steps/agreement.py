"""Steps ``measure`` and ``agreement`` (docs/method.md §8–9): measures of the delivered stage, agreement."""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from nnsam2_utils.data.io import write_csv
from nnsam2_utils.evaluate.scans import dataset_group, measurements
from nnsam2_utils.evaluate.statistics import agreement_table
from nnsam2_utils.steps.deliver import delivered_stages
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
