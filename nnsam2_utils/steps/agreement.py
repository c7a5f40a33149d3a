"""Steps ``measure`` and ``agreement`` (docs/method.md §8–9): measures of the delivered stage, agreement."""

from __future__ import annotations

import pandas as pd

from nnsam2_utils.data.io import read_csv, write_csv
from nnsam2_utils.evaluate.scans import dataset_group, measurements
from nnsam2_utils.evaluate.statistics import agreement_table
from nnsam2_utils.report.results import final_stage
from nnsam2_utils.workflow.runlog import step_record
from nnsam2_utils.workflow.session import Run


def measured_stage(run: Run, stage: str | None = None) -> str:
    """The stage whose masks are measured: ``stage``, or the run's final refinement stage."""
    return stage or final_stage(read_csv(run.workspace.tables / "dsc.csv"))


def groups(run: Run) -> dict[str, str]:
    """The agreement group (MRI, Dixon, CT) of every dataset of the run."""
    return {d: dataset_group(run.manifest(d).modality, run.manifest(d).sequence) for d in run.datasets}


def measure(run: Run, stage: str) -> pd.DataFrame:
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
