"""Which slice to annotate (docs/method.md §10.6): the slice per level, the seeded reference draws, the page's table
and sentences decided by their numbers, and the variants run with the real LiteMedSAM on a tiny synthetic scan set."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nnsam2_utils.data.io import array_to_image
from nnsam2_utils.data.manifest import Discs
from nnsam2_utils.evaluate.metrics import dice_per_class
from nnsam2_utils.experiments.which_slice import (
    LEVELS,
    ScanShape,
    level_slice,
    plan_variants,
    propagate_variants,
    random_references,
    score_variants,
)
from nnsam2_utils.report import which_slice as page


# ----------------------------------------------------------------------------- the slice of each level
def test_level_slices_on_an_mri_scan_stored_inferior_to_superior():
    # backpain_t1w's layout: L3/L4 at stored slice 1, L5/S1 at 13, 13 prepared slices
    scan = ScanShape(13, 1, Discs(L3L4=1, L4L5=7, L5S1=13))
    assert [level_slice(level, scan) for level in LEVELS] == [0, 6, 12, 6]


def test_level_slices_follow_the_disc_direction_and_the_ct_decimation():
    # stored superior to inferior (L3/L4 has the larger index) and decimated by 3: 18 / 3 = 6, 34 / 3 = 11.3 → 11
    scan = ScanShape(12, 3, Discs(L3L4=42, L4L5=24, L5S1=8))
    assert level_slice("L4L5", scan) == 6 and level_slice("L5S1", scan) == 11
    # half a prepared slice rounds towards L5/S1; a disc beyond the stack is clipped to its last slice
    assert level_slice("L4L5", ScanShape(12, 2, Discs(L3L4=0, L4L5=5, L5S1=30))) == 3
    assert level_slice("L5S1", ScanShape(5, 1, Discs(L3L4=0, L5S1=9))) == 4


def test_a_level_not_given_has_no_slice_and_bad_input_is_refused():
    scan = ScanShape(10, 1, Discs(L3L4=0, L5S1=9))
    assert level_slice("L4L5", scan) is None
    assert level_slice("mid", scan) == 5 and level_slice("L3L4", scan) == 0
    with pytest.raises(ValueError, match="unknown level"):
        level_slice("L2L3", scan)
    with pytest.raises(ValueError, match="at least one slice"):
        level_slice("mid", ScanShape(0))


# ----------------------------------------------------------------------------- the random references
def test_random_references_are_deterministic_per_seed_and_never_the_medoid():
    cases = [f"s{i}" for i in range(8)]
    first = random_references("ds", cases, "s3", range(20))
    assert first == random_references("ds", list(reversed(cases)), "s3", range(20))  # order given does not matter
    assert random_references("ds", cases, "s3", [7]) == {7: first[7]}  # a seed's draw ignores the other seeds
    assert "s3" not in first.values() and len(set(first.values())) > 1
    assert random_references("other", cases, "s3", range(20)) != first  # the dataset's name salts the draw
    assert random_references("ds", ["only"], "only", [0, 1]) == {}


def shapes(n_cases=3, n=13):
    return {f"c{i}": ScanShape(n, 1, Discs(L3L4=1, L4L5=7, L5S1=13)) for i in range(n_cases)}


def test_plan_puts_the_default_first_and_shares_propagations():
    plan = plan_variants("ds", shapes(), "c1", [0, 1, 2])
    assert plan.loc[0, "default"] and plan.loc[0, "key"] == "c1@0" and plan["default"].sum() == 1
    levels = plan[plan["comparison"] == "level"]
    assert levels["level"].tolist() == list(LEVELS)
    assert levels.set_index("level").loc["mid", "key"] == levels.set_index("level").loc["L4L5", "key"] == "c1@6"
    drawn = plan[plan["comparison"] == "reference"]
    assert drawn["seed"].tolist() == [0, 1, 2] and set(drawn["reference"]) <= {"c0", "c2"}
    assert (drawn["slice"] == 0).all()
    with pytest.raises(ValueError, match="medoid"):
        plan_variants("ds", shapes(), "nope", [0])


# ----------------------------------------------------------------------------- the page's numbers and words
def fake_results(level_means, random_means, n_scans=3, spread=0.0):
    """A plan and DSC rows whose per-variant means are the given numbers (both classes equal, scans ± spread)."""
    plan = plan_variants("ds", shapes(n_scans), "c1", list(range(len(random_means))))
    # give every row its own key so each can carry its own mean
    plan["key"] = [f"k{i}" for i in range(len(plan))]
    means = list(level_means) + list(random_means)
    rows = []
    for key, mean in zip(plan["key"], means):
        for j in range(n_scans):
            value = mean + spread * (j - (n_scans - 1) / 2)
            rows += [{"dataset": "ds", "key": key, "case": f"c{j}", "class": c, "dsc": value} for c in (1, 2)]
    return plan, pd.DataFrame(rows)


def test_table_means_deltas_and_shared_notes():
    plan = plan_variants("ds", shapes(), "c1", [0, 1, 2])
    rows = [
        {"dataset": "ds", "key": key, "case": case, "class": c, "dsc": 0.5 + 0.1 * i}
        for i, key in enumerate(dict.fromkeys(plan["key"]))
        for case in ("c0", "c1", "c2")
        for c in (1, 2)
    ]
    table = page.variant_table(plan, pd.DataFrame(rows), {"c1@12": "class 2 absent on slice 12 of c1"})
    by = table.set_index("variant")
    assert by.loc["L3/L4", "mean_dsc"] == pytest.approx(0.5) and by.loc["L3/L4", "delta"] == 0
    assert by.loc["L4/L5", "delta"] == pytest.approx(0.1) and by.loc["L4/L5", "scans"] == 3
    assert by.loc["mid-region", "note"] == "same slice as L4/L5"
    assert by.loc["L5/S1", "note"] == "class 2 absent on slice 12 of c1"
    shown = page.page_table(table)
    assert "L3/L4 (today)" in shown[page.HEADINGS["variant"]].tolist() and "default" not in shown


def paragraph(level_means, random_means, spread=0.0, modality="MRI"):
    return page.teacher_paragraph(
        page.variant_table(*fake_results(level_means, random_means, spread=spread)), "ds", modality
    )


def test_level_sentence_follows_the_numbers():
    flat = paragraph([0.80, 0.805, 0.79, 0.80], [0.80])
    assert "at most 0.015" in flat and "hardly matters" in flat

    moved = paragraph([0.70, 0.85, 0.60, 0.85], [0.70])
    assert "at most 0.250" in moved and "L4/L5 beat today's L3/L4 slice by 0.150, more than" in moved
    assert "the level matters" in moved and "hardly matters" not in moved
    # the same gain within the scans' own spread: advice to check, not to move
    weak = paragraph([0.70, 0.85, 0.60, 0.85], [0.70], spread=0.2)
    assert "by 0.150, less than the scans' own spread (SD 0.200" in weak and "check on their own scans" in weak

    kept = paragraph([0.90, 0.70, 0.60, 0.70], [0.90])
    assert "Today's L3/L4 slice did best, by more than" in kept and "annotate at L3/L4" in kept
    assert "safe choice, not a proven best" in paragraph([0.90, 0.70, 0.60, 0.70], [0.90], spread=0.4)


def test_reference_sentence_follows_the_numbers():
    table = page.variant_table(*fake_results([0.9, 0.9, 0.9, 0.9], [0.6, 0.7, 0.8]))
    effect = page.reference_effect(table)
    assert effect["gain"] == pytest.approx(0.2) and effect["seeds"] == 3
    text = page.reference_sentence(effect, sd=0.1)
    assert "0.600–0.800" in text and "paid off by 0.200, more than" in text and "most typical scan" in text
    assert "safer pick, not a proven better one" in page.reference_sentence(effect, sd=0.3)

    worse = page.reference_effect(page.variant_table(*fake_results([0.6, 0.6, 0.6, 0.6], [0.9])))
    assert "did better than the medoid, by 0.300" in page.reference_sentence(worse)

    same = page.reference_effect(page.variant_table(*fake_results([0.8, 0.8, 0.8, 0.8], [0.81])))
    assert "no measurable difference" in page.reference_sentence(same)
    assert "not compared" in page.reference_sentence(None)

    # the medoid matches the draws' mean, but the draws differ: the reference matters draw by draw
    wide = page.reference_effect(page.variant_table(*fake_results([0.85, 0.8, 0.8, 0.8], [0.92, 0.76, 0.92])))
    text = page.reference_sentence(wide)
    assert "no measurable difference" not in text and "ranged over 0.160: which scan is annotated matters" in text
    assert "stayed 0.090 above the worst draw" in text
    lowest = page.reference_effect(page.variant_table(*fake_results([0.77, 0.8, 0.8, 0.8], [0.76, 0.76, 0.82])))
    assert "did not avoid the worst draw" in page.reference_sentence(lowest)


def test_strength_sentence_counts_scans_draws_and_shared_slices():
    text = page.strength_sentence(page.variant_table(*fake_results([0.5, 0.9, 0.5, 0.9], [0.8], n_scans=4)), "CT")
    assert "4 scans of one CT dataset" in text and "1 random draw " in text and "only stage 0" in text
    plan = plan_variants("ds", shapes(), "c1", [0, 1])
    rows = [{"dataset": "ds", "key": k, "case": "c0", "class": 1, "dsc": 0.5} for k in set(plan["key"])]
    shared = page.strength_sentence(page.variant_table(plan, pd.DataFrame(rows)), "MRI")
    assert "2 random draws" in shared and "mid-region fell on a slice already compared" in shared


def test_stage0_difference():
    ours = pd.DataFrame({"key": "k", "case": ["a", "a"], "class": [1, 2], "dsc": [0.5, 0.7]})
    stage0 = pd.DataFrame({"dataset": "d", "case": ["a", "a"], "class": [1, 2], "stage": "stage0", "dsc": [0.5, 0.6]})
    assert page.stage0_difference(ours, stage0, "k") == pytest.approx(0.1)
    assert np.isnan(page.stage0_difference(ours, stage0, "other"))


# ----------------------------------------------------------------------------- the real path
def test_variants_with_the_real_litemedsam_reproduce_plain_propagation():
    """Two synthetic scans of 4 slices, LiteMedSAM (eager torch), the L3/L4 and L5/S1 levels and one random draw:
    every scan encoded once for all variants, the default variant's DSC equal to a plain ``propagate`` of the same
    pair, and the variants differing from one another."""
    from synthetic import ellipse_stack

    from nnsam2_utils.evaluate.metrics import dice_per_class
    from nnsam2_utils.propagate.litemedsam import LiteMedSAMPropagator

    scans = {f"c{i}": ellipse_stack(4, shift=4 * i, seed=i) for i in range(2)}
    stacks = {case: frames for case, (frames, _) in scans.items()}
    truths = {case: labels for case, (_, labels) in scans.items()}
    shape = ScanShape(4, 1, Discs(L3L4=0, L4L5=2, L5S1=3))
    plan = plan_variants("syn", {case: shape for case in scans}, "c1", [0], levels=("L3L4", "L5S1"))
    assert plan["key"].tolist() == ["c1@0", "c1@3", "c0@0"]
    propagator = LiteMedSAMPropagator(device="cpu")
    variants, notes = propagate_variants(propagator, plan, stacks, truths)
    dsc = score_variants("syn", {key: variant.labels for key, variant in variants.items()}, truths)

    assert propagator.slices_encoded == 8 and notes == {}
    assert set(dsc["key"]) == set(plan["key"]) and len(dsc) == 3 * 2 * 2
    plain = propagator.propagate(stacks["c1"], 0, truths["c1"][0], stacks["c0"], "c0")
    expected = dice_per_class(plain.masks, truths["c0"])
    got = dsc[(dsc["key"] == "c1@0") & (dsc["case"] == "c0")].set_index("class")["dsc"]
    assert got.to_dict() == pytest.approx(expected)
    assert propagator.slices_encoded == 8  # the plain call found the embeddings cached too
    means = page.scan_scores(dsc).groupby("key")["dsc"].mean()
    assert means.min() > 0.5 and means.nunique() > 1
    table = page.variant_table(plan, dsc, notes)
    assert table["mean_dsc"].notna().all() and "On syn (MRI)" in page.teacher_paragraph(table, "syn", "MRI")


# ----------------------------------------------------------------------------- the variants' nnU-Nets
def final_table(level_means, random_means, final_levels, final_randoms, spread=0.0, final_spread=0.0, drop=()):
    """A table whose stage-0 and nnU-Net means per variant are the given numbers (keys in ``drop``: no nnU-Net)."""
    plan, dsc = fake_results(level_means, random_means, spread=spread)
    _, final = fake_results(final_levels, final_randoms, spread=final_spread)
    return page.variant_table(plan, dsc, final=final[~final["key"].isin(drop)])


def test_table_final_columns_and_deltas():
    # k0..k3: the levels (k0 today's), k4..k5: the random draws; k3 (mid-region) trained no nnU-Net
    table = final_table(
        [0.7, 0.8, 0.6, 0.8], [0.7, 0.75], [0.8, 0.9, 0.6, 0.9], [0.7, 0.85], final_spread=0.1, drop=["k3"]
    )
    by = table.set_index("variant")
    assert by.loc["L4/L5", "final_mean_dsc"] == pytest.approx(0.9)
    assert by.loc["L4/L5", "final_delta"] == pytest.approx(0.1)
    assert by.loc["L5/S1", "final_delta"] == pytest.approx(-0.2) and by.loc["L3/L4", "final_delta"] == 0
    # scans at mean − 0.1, mean, mean + 0.1: SD 0.1, lowest mean − 0.1; stage 0 unchanged beside it
    assert by.loc["L3/L4", "final_sd_dsc"] == pytest.approx(0.1)
    assert by.loc["L3/L4", "final_min_dsc"] == pytest.approx(0.7)
    assert by.loc["L4/L5", "delta"] == pytest.approx(0.1) and by.loc["L4/L5", "sd_dsc"] == 0
    assert by.loc["mid-region", list(page.FINAL_COLUMNS)].isna().all()
    assert by.loc["mid-region", "mean_dsc"] == pytest.approx(0.8)
    assert list(table.columns) == list(page.TABLE_COLUMNS)
    # without nnU-Nets (none given, or the trainings off: no rows) the final columns are there and empty
    plan, dsc = fake_results([0.7, 0.8, 0.6, 0.8], [0.7])
    for final in (None, dsc.iloc[:0]):
        empty = page.variant_table(plan, dsc, final=final)
        assert list(empty.columns) == list(page.TABLE_COLUMNS) and empty[list(page.FINAL_COLUMNS)].isna().all().all()


def test_page_table_shows_final_columns_only_when_some_variant_has_one():
    plan, dsc = fake_results([0.7, 0.8, 0.6, 0.8], [0.7])
    without = page.page_table(page.variant_table(plan, dsc))
    assert page.HEADINGS["mean_dsc"] in without and page.HEADINGS["final_mean_dsc"] not in without
    assert not any(heading.startswith("nnU-Net") for heading in without.columns)
    table = final_table([0.7, 0.8, 0.6, 0.8], [0.7], [0.81234, 0.9, 0.6, 0.9], [0.7])
    shown = page.page_table(table)
    assert shown[page.HEADINGS["final_mean_dsc"]].tolist()[0] == 0.812
    assert shown[page.HEADINGS["final_delta"]].tolist()[1] == pytest.approx(0.088)
    assert page.HEADINGS["delta"] == "stage-0 Δ vs today" and page.HEADINGS["final_delta"] == "nnU-Net Δ vs today"


def test_level_reference_and_spread_read_the_column_asked_for():
    table = final_table(
        [0.7, 0.8, 0.6, 0.8], [0.7, 0.75], [0.8, 0.9, 0.6, 0.9], [0.7, 0.6], final_spread=0.05, drop=["k3"]
    )
    level = page.level_effect(table, "final_mean_dsc")
    assert level["levels"] == ["L3/L4", "L4/L5", "L5/S1"] and level["best"] == "L4/L5" and level["worst"] == "L5/S1"
    assert level["spread"] == pytest.approx(0.3) and level["gain"] == pytest.approx(0.1)
    assert page.level_effect(table)["spread"] == pytest.approx(0.2)  # stage 0 by default
    reference = page.reference_effect(table, "final_mean_dsc")
    assert reference["random_mean"] == pytest.approx(0.65) and reference["gain"] == pytest.approx(0.15)
    assert page.reference_effect(table)["gain"] == pytest.approx(-0.025)
    assert page.scan_spread(table, "final_sd_dsc") == pytest.approx(0.05) and page.scan_spread(table) == 0
    # no nnU-Net for today's variant: no reference comparison; one level left: no level comparison
    alone = final_table([0.7, 0.8, 0.6, 0.8], [0.7], [0.8, 0.9, 0.6, 0.9], [0.7], drop=["k0", "k2", "k3"])
    assert page.reference_effect(alone, "final_mean_dsc") is None and page.level_effect(alone, "final_mean_dsc") is None
    assert "nnU-Net DSC" in page.level_sentence(None, stage="nnU-Net")
    assert "nnU-Net DSC" in page.reference_sentence(None, stage="nnU-Net")


def test_sentences_name_their_stage():
    table = final_table([0.7, 0.8, 0.6, 0.8], [0.7], [0.8, 0.9, 0.6, 0.9], [0.6])
    level = page.level_sentence(page.level_effect(table, "final_mean_dsc"), 0.0, stage="nnU-Net")
    assert "changed the mean nnU-Net DSC by at most 0.300" in level and "stage-0" not in level
    reference = page.reference_sentence(page.reference_effect(table, "final_mean_dsc"), 0.0, stage="nnU-Net")
    assert "gave a mean nnU-Net DSC of 0.600 against 0.800" in reference and "paid off by 0.200" in reference
    assert "gave a mean stage-0 DSC of 0.700 against 0.700" in page.reference_sentence(page.reference_effect(table))


def final_paragraph(stage0_levels, final_levels, margin=0.02):
    return page.teacher_paragraph(final_table(stage0_levels, [0.7], final_levels, [0.7]), "ds", "MRI", margin)


def test_teacher_paragraph_says_whether_nnunet_narrowed_the_level_gap():
    # stage 0 spread 0.2 (0.6–0.8), nnU-Net spread 0.05: narrowed by 0.15
    narrowed = final_paragraph([0.7, 0.8, 0.6, 0.8], [0.80, 0.82, 0.77, 0.82])
    assert "narrowed the gap between the best and worst level" in narrowed
    assert "0.200 at stage 0, 0.050 with the nnU-Nets (-0.150)" in narrowed and "L4/L5 did best at both" in narrowed
    assert "changed the mean nnU-Net DSC by at most 0.050" in narrowed
    # nnU-Net spread 0.4, best moved to L3/L4: widened
    widened = final_paragraph([0.7, 0.8, 0.6, 0.8], [0.9, 0.8, 0.5, 0.8])
    assert "widened the gap" in widened and "0.200 at stage 0, 0.400 with the nnU-Nets (+0.200)" in widened
    assert "The best level moved from L4/L5 at stage 0 to L3/L4 with the nnU-Nets" in widened
    # nnU-Net spread 0.21: within 0.02 of stage 0's, and not within a margin of 0.005
    same = final_paragraph([0.7, 0.8, 0.6, 0.8], [0.7, 0.81, 0.6, 0.81])
    assert "left the gap between the best and worst level (L3/L4, L4/L5, L5/S1, mid-region) about the same" in same
    assert "a change of +0.010, within 0.02" in same and "narrowed" not in same and "widened" not in same
    assert "widened the gap" in final_paragraph([0.7, 0.8, 0.6, 0.8], [0.7, 0.81, 0.6, 0.81], margin=0.005)
    # the weak points: one seed per nnU-Net instead of "only stage 0"
    assert "trained once (one seed)" in same and "smaller than about 0.02 may be training noise" in same
    assert "only stage 0" not in same
    without = paragraph([0.7, 0.8, 0.6, 0.8], [0.7])
    assert "only stage 0 is compared" in without and "nnU-Net DSC" not in without and "the gap" not in without


def test_level_gap_sentence_compares_the_levels_both_scored():
    # mid-region (k3) trained no nnU-Net: the gap is taken over the three levels both stages scored
    table = final_table([0.7, 0.8, 0.6, 0.95], [0.7], [0.8, 0.9, 0.6, 0.9], [0.7], drop=["k3"])
    text = page.teacher_paragraph(table, "ds", "MRI")
    assert "level (L3/L4, L4/L5, L5/S1): 0.200 at stage 0, 0.300 with the nnU-Nets (+0.100)" in text
    assert "not known here" in page.level_gap_sentence(None, page.level_effect(table, "final_mean_dsc"))


def test_encoding_clause_says_where_the_embeddings_came_from():
    assert "its 39 slices are the ones the run's stage 0 computed" in page.encoding_clause(39, 0)
    assert page.encoding_clause(30, 1) == (
        "30 of its slices' embeddings come from what the run's stage 0 kept, and 1 was encoded here"
    )
    assert page.encoding_clause(0, 12) == "each of its 12 slices is encoded once here"


def test_budget_sentence_with_and_without_the_trainings():
    budget = {"epochs": 10, "iterations_per_epoch": 25, "batch_size": 8, "configuration": "2d"}
    text = page.budget_sentence(budget, 312.4, 5, 0.8125, 0.9, {"c1@0": 14, "c1@6": 9, "c0@0": 0})
    assert "nnU-Net 1's network (2d)" in text and "10 epochs × 25 iterations = 250 iterations, batch size 8" in text
    assert "5 nnU-Nets in 312 s" in text and "kept 0–14 slices per variant; c0@0 kept none" in text
    assert "0.812, the run's own nnU-Net 1 0.900 on this dataset (-0.088)" in text
    assert "compare with one another, not with it" in text
    alone = page.budget_sentence(budget, 60.0, 1, 0.8, None, {"c1@0": 7})
    assert "1 nnU-Net in 60 s" in alone and "kept 7 slices per variant." in alone
    assert "0.800; the run's own nnU-Net 1 has no DSC on this dataset" in alone
    assert "scored 0.900 on this dataset" in page.budget_sentence(budget, 60.0, 0, None, 0.9)
    off = page.budget_sentence({}, 0.0, 0, None, None)
    assert "Only stage 0 is compared" in off and "`baselines.which_slice_epochs`" in off and "nnU-Nets in" not in off


def test_kept_slices_and_mean_scan_dsc():
    selection = pd.DataFrame(
        {"key": ["a", "a", "a", "b"], "dataset": "ds", "case": "c", "slice": [0, 1, 2, 0], "kept": [1, 0, 1, 0]}
    ).assign(kept=lambda t: t["kept"].astype(bool))
    assert page.kept_slices(selection) == {"a": 2, "b": 0} and page.kept_slices(selection.iloc[:0]) == {}
    rows = pd.DataFrame({"case": ["x", "x", "y", "y"], "class": [1, 2, 1, 2], "dsc": [0.6, 0.8, 0.9, 0.9]})
    assert page.mean_scan_dsc(rows) == pytest.approx(0.8) and page.mean_scan_dsc(rows.iloc[:0]) is None


def test_variants_figure_adds_a_row_for_the_nnunets():
    import matplotlib.pyplot as plt

    plan, dsc = fake_results([0.7, 0.8, 0.6, 0.8], [0.7])
    _, final = fake_results([0.8, 0.9, 0.6, 0.9], [0.7])
    table = page.variant_table(plan, dsc, final=final)
    one = page.variants_figure(table, dsc)
    assert len(one.axes) == 2 and one.axes[0].get_ylabel().startswith("stage-0 DSC")
    assert len(page.variants_figure(table, dsc, dsc.iloc[:0]).axes) == 2
    two = page.variants_figure(table, dsc, final)
    assert len(two.axes) == 4 and two.axes[2].get_ylabel().startswith("nnU-Net DSC per scan")
    assert two.axes[2].get_xlim() == two.axes[0].get_xlim() and two.axes[3].get_xlim() == two.axes[1].get_xlim()
    plt.close("all")


# ----------------------------------------------------------------------------- a nnU-Net per variant, for real
def _variant_files(folder, images, labels, confidence_of):
    """One variant's pseudo-labels (``<case>.nii.gz``) and confidence table, as the step writes them."""
    from nnsam2_utils.data.io import write_csv, write_image

    rows = []
    for case, label in labels.items():
        write_image(array_to_image(label, images[case]), folder / f"{case}.nii.gz")
        for z in range(label.shape[0]):
            for cls in (1, 2):
                iou, prompted = confidence_of(case, z)
                rows.append({"case": case, "slice": z, "class": cls, "iou": iou, "area": 1, "prompted": prompted})
    write_csv(pd.DataFrame(rows).assign(dataset="blobs", reference="s0"), folder / "confidence.csv")
    return folder


def test_each_variant_trains_its_own_nnunet_on_one_plan_in_worker_processes(tmp_path):
    """Three blob scans, three variants: the truth as pseudo-labels, the classes swapped, and one with no target slice
    to keep (every slice prompted). Every training shares the plan made once, two run in spawned workers of one thread,
    the variant with nothing kept is not trained, and the truth-trained nnU-Net beats the swapped one on the truth."""
    from conftest import make_image

    from nnsam2_utils.data.io import write_image
    from nnsam2_utils.experiments.variant_training import VariantJob, plan_network, run_jobs, variant_budget

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64]
    images, truths, paths = {}, {}, {}
    for i in range(3):
        image = rng.normal(0, 0.2, (4, 64, 64)).astype(np.float32)
        label = np.zeros((4, 64, 64), np.uint8)
        for cls, cx in ((1, 20 + i), (2, 44 - i)):
            inside = (yy - 32) ** 2 / 100 + (xx - cx) ** 2 / 50 < 1
            label[:, inside], image[:, inside] = cls, image[:, inside] + 1.0 + 0.5 * cls
        images[f"s{i}"], truths[f"s{i}"] = make_image(image, spacing=(1.0, 1.0, 4.0)), label
        paths[f"s{i}"] = write_image(images[f"s{i}"], tmp_path / "images" / f"s{i}.nii.gz")
    swapped = {case: np.where(t == 1, 2, np.where(t == 2, 1, 0)).astype(np.uint8) for case, t in truths.items()}
    ranked = lambda case, z: (0.5 + 0.1 * z + 0.01 * int(case[1]), False)  # noqa: E731
    variants = {
        "truth": _variant_files(tmp_path / "v_truth", images, truths, ranked),
        "swapped": _variant_files(tmp_path / "v_swapped", images, swapped, ranked),
        "empty": _variant_files(tmp_path / "v_empty", images, truths, lambda case, z: (np.nan, True)),
    }
    refine = {"confidence_percentile": 50, "slice_fraction": 0.5, "target_spacing_mm": 2.0, "batch_size": 4}
    budget = dataclasses.replace(variant_budget(refine, 3), iterations_per_epoch=10, val_iterations=1)
    jobs = [
        VariantJob(key, "blobs", folder, paths, tmp_path / "nnunet" / key, refine, budget)
        for key, folder in variants.items()
    ]
    plans = plan_network(tmp_path / "nnunet" / "_plan", jobs[0])
    results = run_jobs(jobs, plans, workers=2)

    assert [set(r[0]["key"]) for r in results[:2]] == [{"truth"}, {"swapped"}]
    kept = [int(r[0]["kept"].sum()) for r in results]
    assert kept[0] == kept[1] > 0 and kept[2] == 0 and results[2][1] == {}
    shared = json.loads(plans.read_text(encoding="utf-8"))["configurations"]["2d"]
    for key in ("truth", "swapped"):
        used = next((tmp_path / "nnunet" / key / "results").rglob("plans.json"))
        assert json.loads(used.read_text(encoding="utf-8"))["configurations"]["2d"] == shared
        fold = next((tmp_path / "nnunet" / key / "results").rglob("fold_all"))
        assert (fold / "checkpoint_final.pth").is_file() and not (fold / "progress.png").exists()  # no page shows it
    assert not (tmp_path / "nnunet" / "empty").exists()
    truth_dsc, swapped_dsc = (
        np.mean([dice_per_class(results[k][1][c], truths[c][::-1])[1] for c in truths]) for k in (0, 1)
    )
    assert all(results[0][1][c].shape == truths[c].shape for c in truths)
    assert truth_dsc > swapped_dsc + 0.3, (truth_dsc, swapped_dsc)


def test_training_noise_widens_the_margin_of_the_nnunet_sentences():
    plan, dsc = fake_results([0.70, 0.80, 0.60, 0.80], [0.70])
    _, final = fake_results([0.85, 0.90, 0.80, 0.90], [0.86])
    again = final[final["key"] == "k0"].assign(key="k0|again", dsc=lambda t: t["dsc"] - 0.08)
    rows = pd.concat([final, again], ignore_index=True)
    noise = page.training_noise(rows, "k0", "k0|again")
    assert noise == pytest.approx(0.08) and page.training_noise(final, "k0", "k0|again") is None
    table = page.variant_table(plan, dsc, final=rows)
    assert "k0|again" not in set(table["key"])  # the second training is no variant of its own
    quiet = page.teacher_paragraph(table, "ds", "MRI")
    noisy = page.teacher_paragraph(table, "ds", "MRI", noise=noise)
    # the nnU-Nets' levels spread 0.10: beyond a margin of 0.08, within one of 0.12
    assert "changed the mean nnU-Net DSC by at most 0.100" in noisy and "That is within 0.08" not in noisy
    wider = page.teacher_paragraph(table, "ds", "MRI", noise=0.12)
    assert "by at most 0.100: from L5/S1 (0.800) to L4/L5 (0.900). That is within 0.12" in wider
    assert "landed 0.080 away, so differences between the nnU-Nets smaller than 0.080 say nothing" in noisy
    assert "may be training noise" in quiet and "landed" not in quiet
    # the reference: medoid 0.85 vs the draw's 0.86 — within either margin
    assert "no measurable difference" in noisy
    small = page.strength_sentence(table, "MRI", 0.02, 0.01)
    assert "landed 0.010 away, within 0.02: the nnU-Nets' differences beyond that are the slice's doing" in small


# ----------------------------------------------------------------------------- the steps on a real run
@pytest.mark.slow
def test_the_chapter_reads_the_slices_stage0_encoded_and_reproduces_its_labels(tmp_path, monkeypatch):
    """The steps as the workflow runs them, on the tiny MRI phantom with the chapter on (stage 0 alone): stage 0 keeps
    the embeddings of the chapter's dataset only; the chapter's propagations read every slice from there (no slice
    encoded, none written into stage 0's folder) and its default variant reproduces stage 0's DSC."""
    import yaml

    from nnsam2_utils import steps
    from nnsam2_utils.data.io import read_csv
    from nnsam2_utils.workflow.session import open_run

    config = tmp_path / "config"
    config.mkdir()
    profile = yaml.safe_load((Path(__file__).parents[1] / "config" / "tiny.yaml").read_text(encoding="utf-8"))
    profile |= {"profile": "chapter", "baselines": {"which_slice": True, "which_slice_epochs": 0}}
    (config / "chapter.yaml").write_text(yaml.safe_dump(profile), encoding="utf-8")
    monkeypatch.setenv("NNSAM2_CONFIG_DIR", str(config))
    monkeypatch.setenv("NNSAM2_WORK", str(tmp_path / "work"))
    run = open_run("chapter")
    steps.cohort(run)
    for dataset in run.datasets:
        steps.prepare(run, dataset)
        steps.stage0(run, dataset)
    chapter, other = run.datasets  # backpain_t2w (MRI, labelled) is the chapter's; totalseg_ct keeps nothing
    kept = sorted((run.workspace.stage("stage0", chapter) / "embeddings").rglob("*.npy"))
    slices = sum(int(row.n_slices) for row in run.workspace.case_table(chapter).itertuples())
    assert len(kept) == slices and not (run.workspace.stage("stage0", other) / "embeddings").exists()

    result = steps.which_slice(run)
    record = json.loads((run.workspace.runlog / f"which_slice__{chapter}.json").read_text(encoding="utf-8"))
    assert record["slices_encoded"] == 0 and record["slices_from_stage0"] == slices
    assert (result.slices_from_stage0, result.slices_encoded) == (slices, 0)
    assert sorted((run.workspace.stage("stage0", chapter) / "embeddings").rglob("*.npy")) == kept
    default = result.plan.loc[result.plan["default"].astype(bool), "key"].iloc[0]
    ours = result.dsc[result.dsc["key"] == default].set_index(["case", "class"])["dsc"].sort_index()
    theirs = read_csv(run.workspace.stage("stage0", chapter) / "dsc.csv").set_index(["case", "class"])["dsc"]
    assert np.allclose(ours.to_numpy(), theirs.loc[ours.index].to_numpy())
