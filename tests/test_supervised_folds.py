"""The supervised bound's cross-validation: folds by subject, the fold budget, and a real two-fold run."""

from __future__ import annotations

import pandas as pd

from nnsam2_utils.refine.nnunet import Budget
from nnsam2_utils.refine.training_set import subject_folds
from nnsam2_utils.steps.supervised import fold_budget, fold_count


def scans(subjects: list[tuple[str, str]]) -> pd.DataFrame:
    return pd.DataFrame(
        [{"dataset": d, "case": f"{d}_{i}", "subject": s} for i, (d, s) in enumerate(subjects)],
        columns=["dataset", "case", "subject"],
    )


def test_a_subject_keeps_one_fold_across_datasets_and_time_points():
    table = scans(
        [("t1w", "bp01"), ("t1w", "bp02"), ("t1w", "bp03"), ("t2w", "bp01"), ("t2w", "bp02"), ("t2w", "bp03")]
        + [("dixon", "br01")] * 3
        + [("dixon", "br02")] * 3
    )
    folds = subject_folds(table, 2)
    by_subject = folds.groupby(table["subject"]).nunique()
    assert (by_subject == 1).all()  # the same person never sits on both sides of a split
    # sorted subjects dealt in turn: bp01 0, bp02 1, bp03 0, br01 1, br02 0
    assert folds.groupby(table["subject"]).first().to_dict() == {"bp01": 0, "bp02": 1, "bp03": 0, "br01": 1, "br02": 0}
    for dataset in ("t1w", "dixon"):  # every dataset has scans on both sides
        assert set(folds[table["dataset"] == dataset]) == {0, 1}


def test_one_fold_is_every_scan_and_fewer_subjects_than_folds_give_a_fold_each(caplog):
    table = scans([("a", "s1"), ("a", "s2"), ("b", "s1")])
    assert subject_folds(table, 1).tolist() == [0, 0, 0]
    assert subject_folds(table, 2).tolist() == [0, 1, 0]
    assert subject_folds(table, 5).tolist() == [0, 1, 0]  # two subjects: two folds, not five
    assert "supervised_folds is 5" in caplog.text and "2 subject(s)" in caplog.text
    assert subject_folds(scans([("a", "s1"), ("a", "s1")]), 2).tolist() == [0, 0]
    assert fold_count(pd.DataFrame({"fold": [0, 1, 0]})) == 2 and fold_count(pd.DataFrame({"fold": []})) == 1


def test_the_fold_budget_splits_or_keeps_the_epochs():
    budget = Budget(epochs=25, iterations_per_epoch=30)
    assert fold_budget(budget, 2, "split").epochs == 13  # rounded up: never less than one training's total
    assert fold_budget(budget, 3, "split").epochs == 9
    assert fold_budget(budget, 2, "per_fold").epochs == 25
    assert fold_budget(budget, 1, "split").epochs == 25
    assert fold_budget(Budget(), 4, "split").epochs == 250  # nnU-Net's default 1000 shared by 4 folds
    assert fold_budget(budget, 2, "split").iterations_per_epoch == 30
