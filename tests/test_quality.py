"""Label-free quality signals, the delivered-stage rule, the review list, and labels back on the input grid."""

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from conftest import make_image

from nnsam2_utils.data.geometry import canonical, crop_z, to_input_grid
from nnsam2_utils.evaluate import quality
from nnsam2_utils.report import delivery


def test_iou_to_dsc_is_the_exact_conversion():
    assert quality.iou_to_dsc(1.0) == 1.0 and quality.iou_to_dsc(0.0) == 0.0
    assert quality.iou_to_dsc(0.5) == pytest.approx(2 / 3)


def test_stage0_estimate_leaves_out_the_prompt_and_counts_a_missing_mask_as_zero():
    confidence = pd.DataFrame(
        {
            "dataset": ["d"] * 4,
            "case": ["a"] * 4,
            "slice": [0, 0, 1, 1],
            "class": [1, 2, 1, 2],
            "iou": [1.0, 1.0, 0.5, np.nan],
            "prompted": [True, True, False, False],
        }
    )
    assert quality.stage0_estimate(confidence)["d"] == pytest.approx((2 / 3 + 0) / 2)


def test_slice_dsc_is_per_slice_and_nan_only_where_every_class_is_empty():
    a = np.zeros((3, 4, 4), np.uint8)
    b = np.zeros_like(a)
    a[0, :2], b[0, :2] = 1, 1  # slice 0: class 1 identical, class 2 empty in both -> 1.0
    a[1, :2], b[1, 2:] = 2, 2  # slice 1: class 2 disjoint -> 0.0
    values = quality.slice_dsc(a, b)
    assert values[0] == 1.0 and values[1] == 0.0 and np.isnan(values[2])


def test_confident_slices_use_the_dataset_quantile():
    confidence = pd.DataFrame(
        {
            "dataset": ["d"] * 6,
            "case": ["a"] * 6,
            "slice": [0, 0, 1, 1, 2, 2],
            "class": [1, 2] * 3,
            "iou": [0.9, 0.9, 0.5, 0.5, 0.1, np.nan],
            "prompted": [False] * 6,
        }
    )
    table = quality.confident_slices(confidence, 0.5)
    assert table["confident"].tolist() == [True, True, False]
    assert table["stage0_confidence"].tolist() == pytest.approx([1.8, 1.0, 0.1])


def signals(rows):
    return pd.DataFrame(
        rows, columns=["dataset", "stage", "agreement_stage0", "confident_agreement", "annotated_slice_dsc"]
    ).assign(estimated_dsc=lambda t: t["annotated_slice_dsc"])


def test_evidence_rule_delivers_the_best_passing_stage_and_stage0_when_none_passes():
    table = signals(
        [
            ("good", "stage0", 1, 1, np.nan),
            ("good", "nnunet1", 0.9, 0.95, 0.80),
            ("good", "nnunet2", 0.9, 0.80, 0.95),  # best on the slice; departs from a confident stage 0: flagged
            ("good", "nnunet3", 0.9, 0.90, 0.95),  # ties nnU-Net 2: the later stage
            ("flagged", "stage0", 1, 1, np.nan),
            ("flagged", "nnunet1", 0.7, 0.70, 0.90),
            ("bad", "stage0", 1, 1, np.nan),
            ("bad", "nnunet1", 0.9, 0.90, 0.60),
            ("bad", "nnunet2", 0.9, 0.90, 0.50),
        ]
    )
    chosen = quality.choose_delivered(table, "evidence", 0.85, 0.7).set_index("dataset")
    assert chosen.loc["good", "delivered"] == "nnunet3" and chosen.loc["good", "flag"] == ""
    assert chosen.loc["flagged", "delivered"] == "nnunet1"
    assert (
        chosen.loc["flagged", "flag"] == "nnunet1 agrees with stage 0 only 0.70 (DSC) on the slices stage 0 was sure of"
    )
    assert chosen.loc["bad", "delivered"] == "stage0"
    assert "DSC >= 0.70 (nnunet1 0.60; nnunet2 0.50)" in chosen.loc["bad", "reason"]


def test_other_rules_and_an_unknown_rule():
    table = signals([("d", "stage0", 1, 1, np.nan), ("d", "nnunet1", 0.1, 0.1, 0.1), ("d", "nnunet2", 0.1, 0.1, 0.1)])
    assert quality.choose_delivered(table, "final")["delivered"].item() == "nnunet2"
    assert quality.choose_delivered(table, "nnunet1")["delivered"].item() == "nnunet1"
    assert quality.choose_delivered(table, "stage0")["delivered"].item() == "stage0"
    with pytest.raises(ValueError, match="deliver.rule 'nnunet3'"):
        quality.choose_delivered(table, "nnunet3")


def test_review_list_ranks_disagreement_with_an_unsure_stage0_first_per_dataset():
    slices = pd.DataFrame(
        {
            "dataset": ["d"] * 3 + ["e"],
            "case": ["a", "a", "b", "c"],
            "slice": [0, 1, 0, 0],
            "stage": ["nnunet3"] * 4,
            "agreement": [0.95, 0.40, 0.40, 0.99],
            "stage0_confidence": [1.9, 1.9, 0.6, 1.9],
        }
    )
    review = quality.review_list(slices, "nnunet3", top=2)
    assert review[["dataset", "case", "slice"]].values.tolist() == [["d", "b", 0], ["d", "a", 1], ["e", "c", 0]]


def test_labels_go_back_onto_the_input_grid_exactly():
    """A RAS-stored scan, reoriented to LPS and cropped (and decimated): its labels land on the original voxels."""
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 3, (12, 6, 5)).astype(np.uint8)
    ras = (-1, 0, 0, 0, -1, 0, 0, 0, 1)
    scan = make_image(truth.astype(np.float32), spacing=(0.8, 0.9, 3.0), direction=ras, origin=(10.0, -5.0, 2.0))
    labels = make_image(truth, spacing=(0.8, 0.9, 3.0), direction=ras, origin=(10.0, -5.0, 2.0))
    for step in (1, 2):
        prepared = crop_z(canonical(labels), 3, 9, step)
        restored = to_input_grid(prepared, scan)
        assert restored.GetSize() == scan.GetSize() and restored.GetDirection() == scan.GetDirection()
        array = sitk.GetArrayFromImage(restored)
        kept = list(range(9, 2, -step))
        assert np.array_equal(array[kept], truth[kept])  # the prepared slices, voxel for voxel
        assert not array[:3].any() and not array[10:].any()  # outside the region: background


def test_the_results_page_warns_when_refinement_scores_below_stage0():
    dsc = pd.DataFrame(
        {
            "dataset": ["d"] * 4 + ["e"] * 4,
            "case": ["a"] * 8,
            "class": [1, 2] * 4,
            "stage": ["stage0", "stage0", "nnunet1", "nnunet1"] * 2,
            "dsc": [0.9, 0.9, 0.8, 0.8, 0.7, 0.7, 0.9, 0.9],
        }
    )
    delivered = pd.DataFrame(
        {"dataset": ["d", "e"], "delivered": ["nnunet1", "nnunet1"], "reason": ["", ""], "flag": ["", "x departs"]}
    )
    notice = delivery.delivery_notice(delivered, dsc)
    warning = notice.split('<div class="admonition note">')[0]
    assert "admonition warning" in warning and "<b>d</b>" in warning and "<b>e</b>" not in warning
    assert "admonition warning" not in delivery.delivery_notice(delivered, dsc.loc[dsc.dataset == "e"])
    assert "Worth a look" in notice and "<b>e</b>: x departs." in notice


def test_the_ordering_sentence_follows_the_numbers():
    quality_table = pd.DataFrame({"dataset": ["d", "d"], "stage": ["stage0", "nnunet1"], "estimated_dsc": [0.8, 0.9]})
    truth = pd.DataFrame(
        {"dataset": ["d"] * 2, "case": ["a"] * 2, "class": [1, 1], "stage": ["stage0", "nnunet1"], "dsc": [0.7, 0.95]}
    )
    right = delivery.ordering_sentence(delivery.ordering_check(quality_table, truth))
    assert "for 1 of 1 datasets" in right and "often enough" in right
    wrong = delivery.ordering_sentence(delivery.ordering_check(quality_table, truth.assign(dsc=[0.95, 0.7])))
    assert "for 0 of 1 datasets" in wrong and "not reliable enough" in wrong
