"""The findings text is decided by the numbers: change the numbers and the sentences change with them."""

import numpy as np
import pandas as pd

from nnsam2_utils.report import findings


def dsc_table(means: dict[str, list[float]]) -> pd.DataFrame:
    """Two datasets × two scans × two classes; ``means[stage]`` = the per-dataset DSC."""
    rows = []
    for stage, values in means.items():
        for dataset, value in zip(("d1", "d2"), values):
            for case in ("a", "b"):
                rows += [{"dataset": dataset, "case": case, "class": c, "stage": stage, "dsc": value} for c in (1, 2)]
    return pd.DataFrame(rows)


FLAT = {
    "stage0": [0.75, 0.76],
    "nnunet1": [0.92, 0.92],
    "nnunet2": [0.921, 0.92],
    "nnunet3": [0.922, 0.92],
    "repeat": [0.91, 0.91],
    "registration": [0.80, 0.81],
}


def test_later_stages_within_the_seed_variation_are_called_so():
    text = findings.later_stages_finding(dsc_table(FLAT))
    assert "neither help nor hurt measurably" in text and "+0.001" in text


def test_a_clear_gain_of_stage_3_is_reported_as_one():
    gained = {**FLAT, "nnunet3": [0.96, 0.96], "repeat": [0.955, 0.955]}
    text = findings.later_stages_finding(dsc_table(gained))
    assert "improve on nnU-Net 1 by +0.040" in text and "neither" not in text


def test_refinement_worse_than_stage0_names_the_dataset():
    worse = {**FLAT, "nnunet1": [0.92, 0.70]}
    text = findings.refinement_finding(dsc_table(worse))
    assert text.endswith("worse in d2.") and "better by more than 0.01 in 1 of 2 datasets" in text
    assert findings.refinement_finding(dsc_table(FLAT)).endswith("worse in none.")


def test_registration_beating_stage0_is_said():
    assert "beats stage 0" in findings.baseline_finding(dsc_table(FLAT))
    behind = {**FLAT, "registration": [0.6, 0.6]}
    assert "stays below stage 0" in findings.baseline_finding(dsc_table(behind))


def agreement(rows):
    columns = ["measure", "group", "n", "expert_mean", "icc", "tost_p", "bias"]
    return pd.DataFrame(rows, columns=columns)


def test_agreement_findings_name_failures_with_bias_and_loose_equivalence():
    table = agreement(
        [
            ("volume_ml", "MRI", 24, 100.0, 0.95, 0.001, 3.0),
            ("fat_ratio", "Dixon", 6, 0.20, 0.80, 0.40, 0.042),
            ("hu_mean", "CT", 12, 40.0, -0.07, 0.01, 1.0),
        ]
    )
    text = findings.agreement_finding(table)
    assert "2 of 3 measure × group comparisons are equivalent" in text
    assert "Dixon fat ratio (Dixon): bias +21.0 % of the expert mean" in text
    assert "CT attenuation (CT) (ICC -0.07)" in text
    assert "Dixon fat ratio (Dixon): n = 6" in text
    passing = table.assign(tost_p=0.001, icc=0.9, n=30)
    text = findings.agreement_finding(passing)
    assert "3 of 3" in text and "Not equivalent" not in text and "not scan by scan" not in text


def test_delivered_finding_lists_stage0_datasets():
    delivered = pd.DataFrame({"dataset": ["d1", "d2"], "delivered": ["nnunet3", "stage0"], "reason": ["", ""]})
    text = findings.delivered_finding(delivered)
    assert "stage 0 is kept for d2" in text and "of 2 datasets" in text
    assert np.all([s in text for s in ("nnU-Net 3 (nnsam2) for 1", "Stage 0 (promptable) for 1")])


def test_the_abstract_names_the_data_the_run_used():
    from nnsam2_utils.data.describe import cohort_phrase

    assert cohort_phrase(["a", "b"], []) == "the synthetic demo cohort"
    assert cohort_phrase([], ["clinic"]) == "1 dataset of your own (clinic)"
    assert "synthetic" in cohort_phrase(["a"], ["x", "y"]) and "2 datasets of your own" in cohort_phrase(
        ["a"], ["x", "y"]
    )


def test_the_landing_page_says_what_the_data_are_synthetic_yours_or_both():
    from nnsam2_utils.data.describe import cohort_caveat

    own = cohort_caveat([], ["clinic"])
    assert own == (
        "The data are 1 dataset of your own (clinic), not the synthetic demo cohort: these numbers are about your "
        "scans (a dataset without expert labels has measurements but no DSC)"
    )
    assert "phantoms" not in own
    assert cohort_caveat(["a"], []).startswith("The cohort is synthetic: phantoms with exact ground truth")
    assert cohort_caveat(["a"], ["x", "y"]).startswith(
        "The data mix the synthetic demo cohort with 2 datasets of your own"
    )


def test_every_agreement_row_gets_a_verdict_in_words():
    from nnsam2_utils.report.agreement_page import verdict

    row = pd.Series({"tost_p": 0.40, "bias": 0.042, "expert_mean": 0.20, "margin": 0.02, "icc": 0.8, "note": ""})
    assert verdict(row) == "not equivalent within ±10 % (bias +21.0 %); good reliability (ICC 0.80)"
    assert verdict(row.copy().replace({0.40: 0.001, 0.8: -0.07})).startswith("equivalent within ±10 %")
    assert "poor reliability (ICC -0.07)" in verdict(row.copy().replace({0.40: 0.001, 0.8: -0.07}))
    untested = row.copy()
    untested["tost_p"], untested["note"] = float("nan"), "TOST: at least 3 pairs needed; ICC: ..."
    assert verdict(untested) == "not tested (TOST: at least 3 pairs needed)"


def test_the_supervised_bound_sentence_follows_its_folds_and_the_numbers():
    bounded = {**FLAT, "supervised": [0.95, 0.95]}
    optimistic = findings.baseline_finding(dsc_table(bounded), supervised_folds=1)
    assert "scored on the scans it was trained on" in optimistic
    fair = findings.baseline_finding(dsc_table(bounded), supervised_folds=3)
    assert "3-fold cross-validated over subjects" in fair and "trained on" not in fair.split("reaches")[1]
    # nnU-Net 3 (0.921) closes (0.921 − 0.755) / (0.95 − 0.755) = 85 % of the gap
    assert "(nnsam2) (0.921) closes 85% of the gap from stage 0 (0.755)" in fair
    below = {**FLAT, "supervised": [0.90, 0.90]}
    passed = findings.baseline_finding(dsc_table(below), supervised_folds=2, supervised_budget="split")
    assert "(0.921) is above it" in passed and "train on the very scans they segment" in passed
    assert "1/2 of nnU-Net 1's epochs" in passed
    assert "epochs" not in findings.baseline_finding(dsc_table(below), supervised_folds=2, supervised_budget="per_fold")
    assert "supervised" not in findings.results_findings(dsc_table(FLAT), supervised_folds=2).lower()


def test_the_real_scan_reference_point_is_worded_by_the_runs_numbers():
    # FLAT: stage 0 0.755 (below the real 0.876: harder), best nnU-Net 0.921 (+0.166, the real test lost 0.059)
    text = findings.real_scan_finding(dsc_table(FLAT))
    assert "phantoms are harder for the promptable model" in text and "(+0.166)" in text
    assert "(-0.059)" in text and "opposite direction" in text
    easy = {**FLAT, "stage0": [0.95, 0.95], "nnunet1": [0.90, 0.90], "nnunet2": [0.9, 0.9], "nnunet3": [0.9, 0.9]}
    text = findings.real_scan_finding(dsc_table(easy))
    assert "not harder" in text and "the same direction as on the real scans" in text
    assert "Real scans" in findings.results_findings(dsc_table(FLAT), synthetic=True)
    assert "Real scans" not in findings.results_findings(dsc_table(FLAT))


def test_the_cohort_chapter_compares_phantoms_with_the_real_two_scan_test():
    from nnsam2_utils.data.describe import phantoms_vs_real

    text = phantoms_vs_real()
    real = findings.REAL_TWO_SCAN_DIXON
    assert f"scored {real['stage0']:.3f}" in text and f"{real['supervised']:.2f}" in text
    assert "two real scans" in text and "method §11" in text
