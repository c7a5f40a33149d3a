"""Step ``supervised`` (docs/method.md §10): nnU-Net on every expert label at the same budget — the upper bound."""

from __future__ import annotations

import pandas as pd

from nnsam2_utils.data.io import write_csv
from nnsam2_utils.evaluate.scans import stage_dsc
from nnsam2_utils.refine.nnunet import Budget, fit
from nnsam2_utils.refine.stages import dataset_id, predict_all
from nnsam2_utils.refine.training_set import supervised_cases
from nnsam2_utils.workflow.runlog import captured_output, claim_folder, run_key, step_record
from nnsam2_utils.workflow.session import Run

STAGE = "supervised"


def supervised(run: Run) -> tuple[int, pd.DataFrame]:
    """Train on every expert-labelled scan and predict every scan; returns (training scans, DSC rows)."""
    ws = run.workspace
    settings = run.section("refine")
    budget = Budget.from_settings(settings, seed=run.seed)
    claim_folder(
        ws.stage(STAGE),
        run_key({"supervised": True, **settings}, [ws.prepared(d) for d in run.datasets], step="supervised"),
    )
    cases = supervised_cases(ws, run.datasets)
    log = ws.logs / f"{STAGE}.log"
    with step_record(ws.runlog, "supervised_train", "pooled", {**settings, "cases": len(cases)}), captured_output(log):
        model = fit(ws.stage(STAGE) / "nnunet", dataset_id(STAGE), STAGE, cases, budget)
    with step_record(ws.runlog, "supervised_predict", "pooled"), captured_output(log):
        predict_all(model, budget, run.datasets, ws, STAGE)
    dsc = stage_dsc(ws, run.datasets, STAGE)
    write_csv(dsc, ws.stage(STAGE) / "dsc.csv")
    return len(cases), dsc
