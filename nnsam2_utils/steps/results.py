"""Step ``results`` (docs/method.md §7): every stage's and baseline's DSC in one tidy table."""

from __future__ import annotations

import pandas as pd

from nnsam2_utils.data.io import write_csv
from nnsam2_utils.report.results import collect_dsc
from nnsam2_utils.workflow.session import Run


def results(run: Run) -> pd.DataFrame:
    """Collect the DSC rows every stage wrote into ``tables/dsc.csv`` (dataset, case, class, stage, dsc)."""
    dsc = collect_dsc(run.workspace, run.datasets)
    write_csv(dsc, run.workspace.tables / "dsc.csv")
    return dsc
