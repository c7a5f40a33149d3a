import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from conftest import make_image

from nnsam2_utils.data.io import write_image
from nnsam2_utils.refine.filters import (
    area_profile,
    frame_confidence,
    is_smooth,
    scan_agreement,
    scan_filter,
    stage1_filter,
)
from nnsam2_utils.refine.nnunet import IGNORE
from nnsam2_utils.refine.training_set import sparse_training_cases


def confidence_table(values, dataset="d", prompted=()):
    """values: {(case, slice): (iou_class1, iou_class2)}"""
    rows = []
    for (case, index), ious in values.items():
        for cls, iou in zip((1, 2), ious):
            rows.append(
                {
                    "dataset": dataset,
                    "case": case,
                    "slice": index,
                    "class": cls,
                    "iou": iou,
                    "object_score": np.nan,
                    "area": 10,
                    "prompted": (case, index) in prompted,
                }
            )
    return pd.DataFrame(rows)


def test_frame_confidence_sums_classes_and_excludes_prompted_frames():
    table = confidence_table({("a", 0): (0.9, 0.8), ("a", 1): (0.5, np.nan)}, prompted={("a", 0)})
    frames = frame_confidence(table)
    assert frames[["case", "slice"]].values.tolist() == [["a", 1]]
    assert frames.confidence.tolist() == [pytest.approx(0.5)]


def test_stage1_keeps_top_percentile_then_quota_per_position():
    rng = np.random.default_rng(1)
    values = {(f"c{i:02d}", s): tuple(rng.uniform(0.3, 1.0, 2)) for i in range(20) for s in range(5)}
    table = stage1_filter(confidence_table(values), percentile=90, slice_fraction=0.02)
    assert len(table) == 100
    threshold = np.percentile(table.confidence, 90)
    kept = table[table.kept]
    assert (kept.confidence >= threshold).all()
    # quota: max(1, floor(0.02 * 20)) = 1 per slice position
    assert kept.groupby("slice").size().max() == 1
    for _index, group in table[table.above_threshold].groupby("slice"):
        assert group.loc[group.kept, "confidence"].iloc[0] == group.confidence.max()
    assert set(table.reason) <= {"kept", "below dataset percentile", "over the per-position quota"}


def test_stage1_quota_grows_with_the_number_of_scans_and_percentiles_are_per_dataset():
    values = {(f"c{i:03d}", 0): (0.9, 0.9) for i in range(150)}
    low = {(f"x{i}", 0): (0.1, 0.1) for i in range(10)}
    table = pd.concat([confidence_table(values, "big"), confidence_table(low, "small")])
    out = stage1_filter(table, percentile=90, slice_fraction=0.02)
    # ties: every frame equals the big dataset's threshold; quota floor(0.02*150)=3, ties broken by case id
    big = out[out.dataset == "big"]
    assert big.kept.sum() == 3 and big[big.kept].case.tolist() == ["c000", "c001", "c002"]
    # the small, low-confidence dataset still contributes: its percentile is its own
    assert out[out.dataset == "small"].kept.sum() == 1


def test_stage1_single_frame_dataset_and_empty_masks():
    table = confidence_table({("only", 3): (np.nan, np.nan)})
    out = stage1_filter(table)
    assert out.kept.tolist() == [True] and out.confidence.tolist() == [0.0]


def test_sparse_training_cases_slices_and_ignore_label(tmp_path):
    label = np.zeros((4, 8, 8), np.uint8)
    label[:, 2:6, 1:3] = 1
    label[:, 2:6, 5:7] = 2
    image = make_image(np.random.default_rng(0).normal(size=(4, 8, 8)).astype(np.float32))
    write_image(image, tmp_path / "img.nii.gz")
    lab = sitk.GetImageFromArray(label)
    lab.CopyInformation(image)
    write_image(lab, tmp_path / "lab.nii.gz")
    selection = pd.DataFrame({"dataset": "d", "case": "c", "slice": [0, 1, 2, 3], "kept": [True, False, False, True]})
    paths = dict(label_path=lambda d, c: tmp_path / "lab.nii.gz", image_path=lambda d, c: tmp_path / "img.nii.gz")
    slices = sparse_training_cases(selection, mode="slices", **paths)
    # stack slice 0 is the most superior = LPS z index 3
    assert [c.case_id for c in slices] == ["d__c__z000", "d__c__z003"]
    assert all(c.image.GetSize()[2] == 1 and c.label.shape == (1, 8, 8) for c in slices)
    sparse = sparse_training_cases(selection, mode="ignore_label", **paths)
    assert len(sparse) == 1
    assert (sparse[0].label[[1, 2]] == IGNORE).all()
    assert (sparse[0].label[[0, 3]] == label[[0, 3]]).all()


def test_smoothness_rule_skips_empty_pairs_and_bounds_growth():
    assert is_smooth(np.array([100, 140, 150, 90, 0, 0]), 1.5)
    assert not is_smooth(np.array([100, 160]), 1.5)
    assert is_smooth(np.array([100, 150]), 1.5)  # exactly 1.5× is allowed
    assert not is_smooth(np.array([100, 0, 80]), 1.5)  # a gap then regrowth
    assert is_smooth(np.array([0, 0, 0]), 1.25)
    stack = np.zeros((3, 4, 4), np.uint8)
    stack[0, :2, :2] = 1
    stack[1, :3, :2] = 1
    assert area_profile(stack, 1).tolist() == [4, 6, 0]


def test_scan_agreement_ignores_classes_absent_from_both():
    a = np.zeros((2, 4, 4), np.uint8)
    a[:, :2, :2] = 1
    assert scan_agreement(a, a) == 1.0
    b = a.copy()
    b[:, 2:, 2:] = 2
    assert scan_agreement(a, b) == pytest.approx(0.5)


def test_scan_filter_quota_eligibility_and_minimum():
    scans = pd.DataFrame(
        {
            "dataset": ["d"] * 30 + ["small"] * 3,
            "case": [f"c{i:02d}" for i in range(30)] + ["s0", "s1", "s2"],
            "agreement": list(np.linspace(0.80, 0.99, 30)) + [0.95, 0.5, 0.6],
            "smooth": [True] * 29 + [False] + [True, True, True],
        }
    )
    out = scan_filter(scans, min_agreement=0.90, fraction=0.10, min_scans=2)
    big = out[out.dataset == "d"]
    # quota max(2, floor(3)) = 3; the most agreeing scan (c29) is not smooth
    assert big[big.kept].case.tolist() == ["c28", "c27", "c26"]
    assert big.set_index("case").loc["c29", "reason"] == "not smooth"
    small = out[out.dataset == "small"]
    assert small[small.kept].case.tolist() == ["s0", "s2"]
    assert small.set_index("case").loc["s2", "reason"] == "filled to minimum"
    assert small.set_index("case").loc["s1", "reason"] == "low agreement"


def test_scan_filter_ties_are_broken_by_case_id():
    scans = pd.DataFrame({"dataset": "d", "case": ["b", "a", "c"], "agreement": 0.95, "smooth": True})
    out = scan_filter(scans, min_scans=2)
    assert out[out.kept].case.tolist() == ["a", "b"]


def test_scan_filter_fills_only_up_to_the_minimum_not_the_quota():
    scans = pd.DataFrame(
        {"dataset": "d", "case": [f"c{i:02d}" for i in range(30)], "agreement": [0.95] + [0.5] * 29, "smooth": True}
    )
    out = scan_filter(scans, min_agreement=0.90, fraction=0.20, min_scans=2)  # quota 6, one eligible
    assert out["quota"].iloc[0] == 6
    assert out[out.kept].case.tolist() == ["c00", "c01"]
    assert out.set_index("case").loc["c01", "reason"] == "filled to minimum"


def test_stage1_floor_per_scan_keeps_a_few_scans_trainable():
    """Two scans of 20 slices: the paper's filter keeps 1 slice per position of the top decile (4 frames);
    a floor of 5 per scan adds each scan's most confident remaining frames above the median, no others."""
    rng = np.random.default_rng(1)
    rows = [
        {"dataset": "d", "case": case, "slice": z, "class": cls, "iou": float(v), "prompted": False}
        for case in ("a", "b")
        for z, v in enumerate(rng.uniform(0.2, 1.0, 20))
        for cls in (1, 2)
    ]
    table = pd.DataFrame(rows)
    paper = stage1_filter(table, 90, 0.02)
    floored = stage1_filter(table, 90, 0.02, min_per_scan=5)
    assert floored.groupby("case")["kept"].sum().tolist() == [5, 5]
    assert (floored.loc[paper.kept, "kept"]).all()  # the paper's choice stays
    added = floored.loc[floored.kept & ~paper.kept]
    assert (added["reason"] == "floor per scan").all()
    assert (added["confidence"] >= floored["confidence"].median()).all()
    for case, rows_ in floored.groupby("case"):  # the most confident of the scan's unkept frames
        rest = rows_.loc[~paper.loc[rows_.index, "kept"]]
        assert set(rest.nlargest(5 - int(paper.loc[rows_.index, "kept"].sum()), "confidence").slice) == set(
            added.loc[added.case == case].slice
        )


# ----------------------------------------------------------------------------- stage-2/3 rules on a run's files
FLAT, GROWS_1_4, GROWS_1_6 = [50] * 4, [40, 56, 56, 56], [40, 64, 64, 64]


def _labels(profile: list[int]) -> np.ndarray:
    """A (z, y, x) LPS label volume whose classes cover ``profile`` pixels per slice, superior → inferior."""
    stack = np.zeros((len(profile), 10, 20), np.uint8)
    for s, area in enumerate(profile):
        block = np.zeros(100, bool)
        block[:area] = True
        stack[s, :, :10][block.reshape(10, 10)] = 1
        stack[s, :, 10:][block.reshape(10, 10)] = 2
    return stack[::-1]  # stack index 0 is the most superior, the highest LPS z


def _write_stage_labels(ws, stage: str, profiles: dict[str, list[int]]) -> None:
    for case, profile in profiles.items():
        write_image(make_image(_labels(profile)), ws.labels(stage, "d", case))


@pytest.fixture
def three_stages(tmp_path):
    """30 scans of dataset ``d`` with stage-0, nnU-Net 1 and nnU-Net 2 labels whose agreements and growths are set.

    Stage 2 (nnU-Net 1 vs stage 0, growth of nnU-Net 1): c29 agrees best and grows 1.4x, c28 grows 1.6x, then
    c27 > c26 > c25 > c24 > c23 agree above 0.90 (0.980 … 0.936), the rest 0.889.
    Stage 3 (nnU-Net 2 vs nnU-Net 1, growth of nnU-Net 2): c01 > c02 > c03 > c04 > c05 agree (1.0 … 0.958),
    c00 (0.931, grows 1.4x), then c06 (0.925) > c07 > c08 (0.901), the rest at most 0.899 or not smooth.
    """
    from nnsam2_utils.workflow.workspace import Workspace

    ws = Workspace(tmp_path)
    cases = [f"c{i:02d}" for i in range(30)]
    ws.prepared("d").mkdir(parents=True)
    pd.DataFrame({"case": cases, "has_label": True}).to_csv(ws.prepared("d") / "cases.csv", index=False)
    for case in cases:
        write_image(make_image(np.zeros((4, 10, 20), np.float32)), ws.prepared("d", case) / "image.nii.gz")
    nnunet1 = {c: FLAT for c in cases} | {"c29": GROWS_1_4, "c28": GROWS_1_6}
    less = lambda profile, r: [a - r for a in profile]  # noqa: E731
    stage0_less = {"c29": 0, "c28": 1, "c27": 2, "c26": 3, "c25": 4, "c24": 5, "c23": 6}
    nnunet2_less = {"c01": 0, "c02": 1, "c03": 2, "c04": 3, "c05": 4, "c06": 7, "c07": 8, "c08": 9}
    _write_stage_labels(ws, "nnunet1", nnunet1)
    _write_stage_labels(ws, "stage0", {c: less(nnunet1[c], stage0_less.get(c, 10)) for c in cases})
    nnunet2 = {c: less(nnunet1[c], nnunet2_less.get(c, 10)) for c in cases} | {"c00": GROWS_1_4}
    _write_stage_labels(ws, "nnunet2", nnunet2)
    return ws


def test_stage2_keeps_the_top_10_percent_growing_at_most_1_5x_against_stage0(three_stages):
    """Stage 2 compares nnU-Net 1 with stage 0, allows 1.5x growth and keeps ⌊10 % · 30⌋ = 3 scans, trained on
    nnU-Net 1's labels. 1.25x would drop c29; 20 % would keep 6; comparing other stages would pick others."""
    from nnsam2_utils.refine.training_set import training_set

    selection, cases = training_set(three_stages, ["d"], 2, {})
    assert selection.loc[selection["kept"], "case"].tolist() == ["c29", "c27", "c26"]
    rows = selection.set_index("case")
    assert rows.loc["c29", "max_growth_seen"] == pytest.approx(1.4) and rows.loc["c29", "smooth"]
    assert rows.loc["c28", "reason"] == "not smooth" and rows.loc["c00", "reason"] == "low agreement"
    assert rows.loc["c27", "agreement"] == pytest.approx(384 / 392)  # 2·192 / (200 + 192) per class
    assert (selection["quota"] == 3).all()
    labels = {c.case_id: c.label for c in cases}
    assert sorted(labels) == ["d__c26", "d__c27", "d__c29"]
    assert (labels["d__c27"] == 1).sum() == 200  # nnU-Net 1's label (stage 0's has 192)


def test_stage3_keeps_the_top_20_percent_growing_at_most_1_25x_against_nnunet1(three_stages):
    """Stage 3 compares nnU-Net 2 with nnU-Net 1, allows 1.25x growth and keeps ⌊20 % · 30⌋ = 6 scans, trained on
    nnU-Net 2's labels. 1.5x would keep c00 instead of c06; 10 % would keep 3; against stage 0 c01 fails."""
    from nnsam2_utils.refine.training_set import training_set

    selection, cases = training_set(three_stages, ["d"], 3, {})
    assert selection.loc[selection["kept"], "case"].tolist() == ["c01", "c02", "c03", "c04", "c05", "c06"]
    rows = selection.set_index("case")
    assert rows.loc["c00", "reason"] == "not smooth" and rows.loc["c00", "max_growth_seen"] == pytest.approx(1.4)
    assert rows.loc["c07", "reason"] == "over the quota"
    assert (selection["quota"] == 6).all()
    labels = {c.case_id: c.label for c in cases}
    assert (labels["d__c02"] == 2).sum() == 196  # nnU-Net 2's label (nnU-Net 1's has 200)


def test_the_stage_rules_are_the_papers():
    """docs/method.md §5.2, the values a profile that sets nothing runs with."""
    from nnsam2_utils.refine.filters import STAGE_RULES
    from nnsam2_utils.refine.stages import stage_names

    assert STAGE_RULES == {
        2: {"min_agreement": 0.90, "max_growth": 1.5, "fraction": 0.10, "min_scans": 2},
        3: {"min_agreement": 0.90, "max_growth": 1.25, "fraction": 0.20, "min_scans": 2},
    }
    assert [stage_names(k) for k in (1, 2, 3)] == [
        ("nnunet1", "stage0", None),
        ("nnunet2", "nnunet1", "stage0"),
        ("nnunet3", "nnunet2", "nnunet1"),
    ]


def test_the_quotas_round_down():
    """⌊fraction · n⌋, not rounded: 10 % of 38 scans is 3 (not 4); 2 % of 190 frames at a position is 3."""
    scans = pd.DataFrame({"dataset": "d", "case": [f"c{i:02d}" for i in range(38)], "agreement": 0.95, "smooth": True})
    out = scan_filter(scans, min_agreement=0.90, fraction=0.10, min_scans=2)
    assert out["quota"].iloc[0] == 3 and out["kept"].sum() == 3
    frames = stage1_filter(confidence_table({(f"c{i:03d}", 0): (0.9, 0.9) for i in range(190)}), 90, 0.02)
    assert frames["quota"].iloc[0] == 3 and frames["kept"].sum() == 3


def test_agreement_must_be_strictly_above_the_threshold():
    """Eligible when the agreement is > 0.90: exactly 0.90 is not (it only fills up to the minimum)."""
    scans = pd.DataFrame(
        {
            "dataset": "d",
            "case": [f"c{i:02d}" for i in range(20)],
            "agreement": [0.9000001, 0.90, 0.90] + [0.5] * 17,
            "smooth": True,
        }
    )
    out = scan_filter(scans, min_agreement=0.90, fraction=0.20, min_scans=2).set_index("case")
    assert out["eligible"].tolist() == [True] + [False] * 19
    assert out.loc["c00", "reason"] == "kept" and out.loc["c01", "reason"] == "filled to minimum"
    assert out.loc["c02", "reason"] == "low agreement"
