"""Step ``refine`` (docs/method.md §5): one nnU-Net stage — filter, train on the pooled datasets, predict every scan."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from nnsam2_utils.data.io import write_csv
from nnsam2_utils.evaluate.scans import stage_dsc
from nnsam2_utils.refine.nnunet import Budget, is_trained
from nnsam2_utils.refine.stages import dataset_id, fit_stage, predict_all, stage_budget, stage_names
from nnsam2_utils.refine.training_set import training_set
from nnsam2_utils.workflow.runlog import captured_output, claim_folder, read_key, run_key, step_record
from nnsam2_utils.workflow.session import Run


@dataclass(frozen=True)
class RefineResult:
    """One refinement stage: what its filter kept, the model it trained, its DSC."""

    stage: int
    name: str  # nnunet<k>
    budget: Budget
    selection: pd.DataFrame  # the filter table: one row per frame (stage 1) or scan (stages 2-3), with kept and reason
    n_training_cases: int
    model: Path
    dsc: pd.DataFrame


def refine(run: Run, stage: int) -> RefineResult:
    """Train (or resume) nnU-Net ``stage`` on its filtered pseudo-labels and predict every scan of the run."""
    ws = run.workspace
    settings = run.section("refine")
    name, previous, _ = stage_names(stage)
    budget = stage_budget(settings, stage, seed=run.seed)
    upstream = [ws.stage("stage0", d) for d in run.datasets] if stage == 1 else [ws.stage(previous)]
    claim_folder(ws.stage(name), run_key({"stage": stage, **settings}, upstream, step="refine"))
    selection, cases = training_set(ws, run.datasets, stage, settings)
    write_csv(selection, ws.stage(name) / "selection.csv")
    parameters = {**settings, "budget": budget.__dict__, "cases": len(cases)}
    trained = is_trained(ws.stage(name) / "nnunet", dataset_id(name), name, budget)
    log = ws.logs / f"{name}.log"
    key = read_key(ws.stage(name))
    with step_record(ws.runlog, f"{name}_train", "pooled", parameters, reuse=trained, key=key), captured_output(log):
        model = fit_stage(ws, stage, cases, budget, settings)
    predicted = all(ws.labels(name, d, c).exists() for d in run.datasets for c in ws.case_ids(d))
    with step_record(ws.runlog, f"{name}_predict", "pooled", reuse=predicted), captured_output(log):
        predict_all(model, budget, run.datasets, ws, name)
    dsc = stage_dsc(ws, run.datasets, name)
    write_csv(dsc, ws.stage(name) / "dsc.csv")
    return RefineResult(stage, name, budget, selection, len(cases), model, dsc)
