"""Which slice to annotate (docs/method.md §10.6): the slice per level, the seeded reference draws, the page's table
and sentences decided by their numbers, and the variants run with the real LiteMedSAM on a tiny synthetic scan set."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from nnsam2_utils.data.manifest import Discs
from nnsam2_utils.experiments.which_slice import (
    LEVELS,
    ScanShape,
    level_slice,
    plan_variants,
    random_references,
    run_variants,
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


def test_strength_sentence_counts_scans_draws_and_shared_slices():
    text = page.strength_sentence(page.variant_table(*fake_results([0.5, 0.9, 0.5, 0.9], [0.8], n_scans=4)), "CT")
    assert "4 scans of one CT dataset" in text and "1 random draw " in text and "only stage 0" in text
    plan = plan_variants("ds", shapes(), "c1", [0, 1])
    rows = [{"dataset": "ds", "key": k, "case": "c0", "class": 1, "dsc": 0.5} for k in set(plan["key"])]
    shared = page.strength_sentence(page.variant_table(plan, pd.DataFrame(rows)), "MRI")
    assert "2 random draws" in shared and "mid-region fell on a slice already compared" in shared


def test_training_sentence_uses_the_runs_own_training_time():
    assert "about 10 min for the 5 propagations" in page.training_sentence(5, 120.0)
    assert "not trained" in page.training_sentence(5, None)


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
    dsc, notes = run_variants(propagator, plan, stacks, truths)

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
