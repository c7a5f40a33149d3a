"""Step ``oneshot`` (docs/method.md §10): registration of the annotated slice and a plain threshold, per dataset."""

from __future__ import annotations

import pandas as pd

from nnsam2_utils.baselines.oneshot import run_dataset_baselines
from nnsam2_utils.data.io import write_csv
from nnsam2_utils.workflow.runlog import captured_output, claim_folder, run_key, step_record
from nnsam2_utils.workflow.session import Run

STAGES = ("registration", "threshold")


def oneshot(run: Run) -> pd.DataFrame:
    """Both one-shot baselines on every dataset; returns their DSC rows (none for datasets without labels)."""
    ws = run.workspace
    tables = []
    for dataset in run.datasets:
        manifest = run.manifest(dataset)
        upstream = [ws.prepared(dataset), ws.stage("stage0", dataset)]
        for stage in STAGES:
            claim_folder(
                ws.stage(stage, dataset), run_key({"stage": stage, "dataset": dataset}, upstream, step="oneshot")
            )
        with step_record(ws.runlog, "oneshot_baselines", dataset), captured_output(ws.logs / "oneshot.log"):
            dsc = run_dataset_baselines(ws, dataset, manifest.modality, manifest.sequence)
        for stage, part in dsc.groupby("stage"):
            write_csv(part, ws.stage(stage, dataset) / "dsc.csv")
        tables.append(dsc)
    return pd.concat(tables, ignore_index=True)
