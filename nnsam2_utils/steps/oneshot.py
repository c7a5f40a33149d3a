"""Step ``oneshot`` (docs/method.md §10): registration of the annotated slice and a plain threshold, per dataset.

:func:`oneshot_dataset` runs one dataset (the workflow starts it as soon as that dataset's stage 0 is done);
:func:`oneshot` runs, or reads back, every dataset for the page.
"""

from __future__ import annotations

import pandas as pd

from nnsam2_utils.baselines.oneshot import run_dataset_baselines
from nnsam2_utils.data.io import read_csv, write_csv
from nnsam2_utils.workflow.runlog import captured_output, claim_folder, read_key, run_key, step_record
from nnsam2_utils.workflow.session import Run

STAGES = ("registration", "threshold")
COLUMNS = ["dataset", "case", "class", "stage", "dsc"]


def oneshot_dataset(run: Run, dataset: str) -> pd.DataFrame:
    """Both one-shot baselines on one dataset; returns its DSC rows (none without expert labels).

    Writes ``<baseline>/<dataset>/dsc.csv`` for both baselines last (empty when the dataset has no labels); a
    dataset finished under the same run key is read back, not run or timed again.
    """
    ws = run.workspace
    manifest = run.manifest(dataset)
    upstream = [ws.prepared(dataset), ws.stage("stage0", dataset)]
    resumed = [
        claim_folder(ws.stage(stage, dataset), run_key({"stage": stage, "dataset": dataset}, upstream, step="oneshot"))
        for stage in STAGES
    ]
    tables = [ws.stage(stage, dataset) / "dsc.csv" for stage in STAGES]
    if all(resumed) and all(path.exists() for path in tables):
        return pd.concat([read_csv(path) for path in tables], ignore_index=True)[COLUMNS]
    key = read_key(ws.stage(STAGES[0], dataset))
    with step_record(ws.runlog, "oneshot_baselines", dataset, key=key), captured_output(ws.logs / "oneshot.log"):
        dsc = run_dataset_baselines(ws, dataset, manifest.modality, manifest.sequence)
    for stage, path in zip(STAGES, tables):
        write_csv(dsc.loc[dsc["stage"] == stage, COLUMNS], path)
    return dsc[COLUMNS]


def oneshot(run: Run) -> pd.DataFrame:
    """Both one-shot baselines on every dataset; returns their DSC rows (none for datasets without labels)."""
    return pd.concat([oneshot_dataset(run, dataset) for dataset in run.datasets], ignore_index=True)
