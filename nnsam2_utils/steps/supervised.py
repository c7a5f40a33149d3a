"""Step ``supervised`` (docs/method.md §10.1): nnU-Net on expert labels, cross-validated over subjects — the bound."""

from __future__ import annotations

import math
from dataclasses import replace

import pandas as pd

from nnsam2_utils.data.io import write_csv
from nnsam2_utils.evaluate.scans import stage_dsc
from nnsam2_utils.refine.nnunet import Budget, fit, is_trained
from nnsam2_utils.refine.stages import dataset_id, predict_scans
from nnsam2_utils.refine.training_set import labelled_scans, subject_folds, supervised_cases
from nnsam2_utils.workflow.runlog import captured_output, claim_folder, read_key, run_key, step_record
from nnsam2_utils.workflow.session import Run

STAGE = "supervised"


def fold_budget(budget: Budget, folds: int, mode: str) -> Budget:
    """The budget of one fold: ``split`` shares one training's epochs among the folds (rounded up), ``per_fold``
    gives each fold the whole budget. nnU-Net's default of 1000 epochs stands in for an unset ``epochs``."""
    if mode == "per_fold" or folds == 1:
        return budget
    return replace(budget, epochs=math.ceil((budget.epochs or 1000) / folds))


def fold_plan(run: Run) -> pd.DataFrame:
    """Every expert-labelled scan with its fold (dataset, case, subject, fold)."""
    scans = labelled_scans(run.workspace, run.datasets)
    return scans.assign(fold=subject_folds(scans, run.profile.baselines.supervised_folds))


def fold_count(plan: pd.DataFrame) -> int:
    """The folds a fold plan uses (fewer than ``baselines.supervised_folds`` when subjects are fewer)."""
    return int(plan["fold"].max()) + 1 if len(plan) else 1


def supervised(run: Run) -> tuple[int, pd.DataFrame]:
    """Train one nnU-Net per fold on the other folds' expert labels and predict the fold's scans.

    Scans without an expert label are predicted by fold 0's model (they have no DSC; their measurements
    are the bound's). Writes ``supervised/folds.csv`` and ``supervised/dsc.csv``; returns (expert-labelled
    scans, DSC rows).
    """
    ws = run.workspace
    settings = run.section("refine")
    options = run.profile.baselines
    plan = fold_plan(run)
    k = fold_count(plan)
    budget = fold_budget(Budget.from_settings(settings, seed=run.seed), k, options.supervised_budget)
    claim_folder(
        ws.stage(STAGE),
        run_key(
            {"supervised": True, **settings, "folds": k, "budget": options.supervised_budget},
            [ws.prepared(d) for d in run.datasets],
            step="supervised",
        ),
    )
    write_csv(plan, ws.stage(STAGE) / "folds.csv")
    labelled = set(zip(plan.dataset, plan.case))
    unlabelled = [(d, c) for d in run.datasets for c in ws.case_ids(d) if (d, c) not in labelled]
    log = ws.logs / f"{STAGE}.log"
    for fold in range(k):
        train = plan if k == 1 else plan.loc[plan.fold != fold]
        scored = plan.loc[plan.fold == fold]
        where = "pooled" if k == 1 else f"fold{fold}"
        root = ws.stage(STAGE) / "nnunet" if k == 1 else ws.stage(STAGE) / f"nnunet_fold{fold}"
        parameters = {**settings, "epochs": budget.epochs, "cases": len(train), "fold": fold, "folds": k}
        trained = is_trained(root, dataset_id(STAGE), STAGE, budget)
        record = step_record(ws.runlog, "supervised_train", where, parameters, trained, read_key(ws.stage(STAGE)))
        with record, captured_output(log):
            model = fit(root, dataset_id(STAGE), STAGE, supervised_cases(ws, train), budget)
        scans = list(zip(scored.dataset, scored.case)) + (unlabelled if fold == 0 else [])
        predicted = all(ws.labels(STAGE, d, c).exists() for d, c in scans)
        record = step_record(ws.runlog, "supervised_predict", where, {"scans": len(scans)}, reuse=predicted)
        with record, captured_output(log):
            predict_scans(model, budget, scans, ws, STAGE)
    dsc = stage_dsc(ws, run.datasets, STAGE)
    write_csv(dsc, ws.stage(STAGE) / "dsc.csv")
    return len(plan), dsc
