"""Behaviour the mutation run (``make mutation``, docs/mutation.md) found unpinned: exact hand-computed values and
boundaries of the overlap metrics, the agreement statistics, the stage filters and the region/orientation code."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from nnsam2_utils.data.geometry import canonical, crop_z, from_stack, stack_offsets, to_input_grid, to_stack
from nnsam2_utils.data.manifest import Discs
from nnsam2_utils.evaluate import metrics
from nnsam2_utils.refine.filters import is_smooth, largest_growth, scan_agreement, scan_filter, stage1_filter


# --------------------------------------------------------------------------- overlap metrics
def test_dice_counts_each_mask_once_and_keeps_the_classes_apart():
    prediction = np.array([[0, 1, 1, 2], [2, 2, 0, 0]])
    reference = np.array([[1, 1, 0, 2], [2, 0, 0, 1]])
    # class 1: |P| = 2, |R| = 3, overlap 1 → 2/5; class 2: |P| = 3, |R| = 2, overlap 2 → 4/5
    assert metrics.dice_per_class(prediction, reference) == {1: pytest.approx(0.4), 2: pytest.approx(0.8)}
    rows = metrics.dsc_rows("d", "c", "stage0", prediction, reference)
    assert rows == [
        {"dataset": "d", "case": "c", "class": 1, "stage": "stage0", "dsc": pytest.approx(0.4)},
        {"dataset": "d", "case": "c", "class": 2, "stage": "stage0", "dsc": pytest.approx(0.8)},
    ]
    assert [r["class"] for r in metrics.dsc_rows("d", "c", "s", prediction, reference, classes=(2,))] == [2]


def test_dice_reads_any_non_zero_value_as_inside():
    """A mask given as a label array (values 2, 7) is a mask of its non-zero voxels, not weighted by value."""
    assert metrics.dice(np.array([2, 2, 0, 0]), np.array([1, 7, 0, 0])) == 1.0
    assert metrics.dice(np.array([2, 0, 0, 0]), np.array([1, 5, 0, 0])) == pytest.approx(2 / 3)


# --------------------------------------------------------------------------- stage-1 filter
def _frames(confidence: dict[tuple[str, int], float], dataset: str = "d") -> pd.DataFrame:
    """A stage-0 confidence table whose frame confidence (sum of the two classes' IoU) is the value given."""
    rows = [
        {"dataset": dataset, "case": case, "slice": z, "class": cls, "iou": value / 2, "prompted": False}
        for (case, z), value in confidence.items()
        for cls in (1, 2)
    ]
    return pd.DataFrame(rows)


# 100 frames of 10 scans × 10 positions, confidences 0.01 … 1.00 (×2 classes / 2): the ten best (0.91 … 1.00) lie
# at positions 0 (1.00 and 0.99) and 1 … 8 (0.98 … 0.91), one per position, the rest spread below.
TOP = {("c00", 0): 1.00, ("c01", 0): 0.99} | {(f"c{z:02d}", z): round(0.99 - 0.01 * z, 2) for z in range(1, 9)}
LOW = iter(round(0.01 * i, 2) for i in range(1, 91))
TEN_BY_TEN = TOP | {(f"c{i:02d}", z): next(LOW) for i in range(10) for z in range(10) if (f"c{i:02d}", z) not in TOP}


def test_stage1_defaults_are_the_90th_percentile_and_two_percent_per_position():
    out = stage1_filter(_frames(TEN_BY_TEN))
    # threshold: the 90th percentile of 0.01 … 1.00 (linear) = 0.901; quota max(1, ⌊0.02 · 10⌋) = 1 per position
    assert out["threshold"].unique().tolist() == [pytest.approx(0.901)]
    kept = out[out.kept]
    assert sorted(zip(kept.case, kept.slice)) == [("c00", 0)] + [(f"c{z:02d}", z) for z in range(1, 9)]
    assert out.loc[(out.case == "c01") & (out.slice == 0), "reason"].tolist() == ["over the per-position quota"]
    assert stage1_filter(_frames(TEN_BY_TEN), percentile=91)["kept"].sum() == 8  # 0.91 falls below 0.9109
    assert stage1_filter(_frames(TEN_BY_TEN), slice_fraction=0.2)["kept"].sum() == 10  # quota 2 at position 0


def test_stage1_gives_every_frame_its_reason_rank_and_a_fresh_index():
    out = stage1_filter(_frames({("a", 0): 1.0, ("b", 0): 0.98, ("c", 0): 0.5, ("a", 1): 0.2}), percentile=50)
    # threshold: median of 0.2, 0.5, 0.98, 1.0 = 0.74; one position of 3 scans and one of 1: quota 1 each
    assert out.index.tolist() == [0, 1, 2, 3]
    assert list(zip(out.case, out.slice, out.reason)) == [
        ("a", 0, "kept"),
        ("a", 1, "below dataset percentile"),
        ("b", 0, "over the per-position quota"),
        ("c", 0, "below dataset percentile"),
    ]
    assert out["rank_at_position"].dtype == "Int64"
    assert out["rank_at_position"].tolist() == [1, pd.NA, 2, pd.NA]
    assert out["threshold"].tolist() == [pytest.approx(0.74)] * 4


def test_stage1_of_prompted_frames_only_keeps_nothing():
    table = _frames({("a", 0): 1.0}).assign(prompted=True)
    out = stage1_filter(table)
    assert out.empty and {"threshold", "kept", "reason"} <= set(out.columns)
    assert out["kept"].dtype == bool and out["threshold"].dtype == float


def test_floor_per_scan_of_one_takes_the_best_frame_at_or_above_the_median_only_where_missing():
    frames = {("a", 0): 1.0, ("a", 1): 0.9, ("b", 0): 0.6, ("b", 1): 0.6, ("b", 2): 0.1, ("c", 0): 0.5}
    frames |= {("c", 1): 0.2, ("c", 2): 0.3}
    out = stage1_filter(_frames(frames), percentile=90, slice_fraction=0.02, min_per_scan=1)
    # the paper's filter keeps a/0 only (threshold 0.93); median 0.55: b gets one of its two 0.6 frames (the
    # superior one on a tie), c none (its best, 0.5, is below the median), a nothing more (it has its one)
    assert sorted(zip(out.case[out.kept], out.slice[out.kept], out.reason[out.kept])) == [
        ("a", 0, "kept"),
        ("b", 0, "floor per scan"),
    ]


def test_floor_per_scan_takes_a_frame_exactly_at_the_median():
    frames = {("a", 0): 1.0, ("b", 0): 0.5, ("b", 1): 0.1, ("c", 0): 0.4, ("c", 1): 0.6}
    out = stage1_filter(_frames(frames), percentile=90, slice_fraction=0.02, min_per_scan=1)
    assert out.set_index(["case", "slice"]).loc[("b", 0), "reason"] == "floor per scan"  # 0.5 is the median
    assert out.set_index(["case", "slice"]).loc[("c", 1), "reason"] == "floor per scan"


# --------------------------------------------------------------------------- smoothness, agreement, stage 2/3
def test_smoothness_resumes_after_an_empty_pair_and_bounds_growth_from_one_pixel():
    assert not is_smooth(np.array([100, 0, 0, 50]), 1.5)  # the empty pair is skipped, not the end of the check
    assert is_smooth(np.array([1, 1]), 1.5) and not is_smooth(np.array([1, 2]), 1.5)


def test_largest_growth_is_the_largest_slice_to_slice_ratio_after_a_non_empty_slice():
    assert largest_growth(np.array([10, 11, 22])) == pytest.approx(2.0)  # the last pair counts
    assert largest_growth(np.array([0, 10, 15, 30, 0])) == pytest.approx(2.0)  # growth out of nothing is not a ratio
    assert largest_growth(np.array([1, 3])) == pytest.approx(3.0)
    assert math.isnan(largest_growth(np.array([0, 0, 5])))


def test_scan_agreement_of_two_empty_scans_is_nan_and_uses_the_classes_asked_for():
    empty = np.zeros((2, 3, 3), np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no mean of an empty list
        assert math.isnan(scan_agreement(empty, empty))
    a = empty.copy()
    a[:, 0] = 1
    b = a.copy()
    b[:, 2] = 2  # class 2 only in b: DSC 0 for class 2
    assert scan_agreement(a, b, classes=(1,)) == 1.0 and scan_agreement(a, b) == 0.5


def _scans(agreement: list[float], dataset: str = "d", smooth=True) -> pd.DataFrame:
    cases = [f"{dataset}{i}" for i in range(len(agreement))]
    return pd.DataFrame({"dataset": dataset, "case": cases, "agreement": agreement, "smooth": smooth})


def test_scan_filter_defaults_are_agreement_above_0_90_and_two_scans():
    out = scan_filter(_scans([0.95, 0.91, 0.90, 0.85]))
    assert out[out.kept].case.tolist() == ["d0", "d1"] and out.quota.tolist() == [2] * 4
    assert out.set_index("case").loc["d2", "reason"] == "low agreement"  # 0.90 is not above 0.90


def test_scan_filter_orders_datasets_by_name_with_a_fresh_index_and_an_empty_table_keeps_its_columns():
    out = scan_filter(pd.concat([_scans([0.95, 0.96], "b"), _scans([0.97, 0.99], "a")]))
    assert out.dataset.tolist() == ["a", "a", "b", "b"] and out.index.tolist() == [0, 1, 2, 3]
    empty = scan_filter(_scans([]))
    assert empty.empty and list(empty.columns) == [
        "dataset",
        "case",
        "agreement",
        "smooth",
        "eligible",
        "quota",
        "kept",
        "reason",
    ]


def test_scan_filter_reads_smooth_given_as_0_and_1():
    out = scan_filter(_scans([0.99, 0.98, 0.97], smooth=[0, 1, 1]))
    assert out.set_index("case").eligible.to_dict() == {"d0": False, "d1": True, "d2": True}
    assert out.set_index("case").loc["d0", "reason"] == "not smooth"


# --------------------------------------------------------------------------- region and orientation
def test_stack_offsets_without_edges_in_either_storage_order():
    """Discs 30/20/10 (slice numbers falling towards L5/S1) or 2/12/22 (rising), decimation 2: L4/L5 lies 5 and
    L5/S1 10 prepared slices below the top slice, whichever way the numbers run."""
    expected = {"L3L4": 0.0, "L4L5": 5.0, "L5S1": 10.0}
    assert stack_offsets(Discs(L3L4=30, L4L5=20, L5S1=10), 11, 2) == expected
    assert stack_offsets(Discs(L3L4=2, L4L5=12, L5S1=22), 11, 2) == expected
    assert stack_offsets(Discs(L3L4=2, L5S1=5), 1, 3) == {
        "L3L4": 0.0,
        "L4L5": None,
        "L5S1": 1.0,
    }  # one slice is a stack
    # a level given on the far side of L3/L4 lies above the top slice: a negative offset, not its distance
    assert stack_offsets(Discs(L3L4=10, L4L5=12, L5S1=2), 9, 1) == {"L3L4": 0.0, "L4L5": -2.0, "L5S1": 8.0}
    with pytest.raises(ValueError, match=r"at least one slice and a decimation ≥ 1; got 0, 1"):
        stack_offsets(Discs(L3L4=2, L5S1=5), 0, 1)


def test_from_stack_inverts_to_stack_on_the_reference_grid():
    lps = sitk.GetImageFromArray(np.arange(4 * 3 * 2, dtype=np.int16).reshape(4, 3, 2))
    lps.SetSpacing((0.8, 0.9, 3.0))
    lps.SetOrigin((1.0, 2.0, 3.0))
    stack = to_stack(lps)
    assert stack[0].tolist() == sitk.GetArrayFromImage(lps)[-1].tolist()  # superior first
    back = from_stack(stack, lps)
    assert np.array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(lps))
    assert (back.GetSpacing(), back.GetOrigin(), back.GetDirection()) == (
        lps.GetSpacing(),
        lps.GetOrigin(),
        lps.GetDirection(),
    )


@pytest.mark.parametrize("region", [(3, 9), (0, 6)])
def test_labels_go_back_to_a_scans_own_grid_and_orientation(region):
    """A scan stored LSA (its j axis runs superior) with voxel values naming their LPS (z, y, x); labels on the
    prepared grid (LPS z 3 … 9 kept every third slice: 3, 6, 9; or 0 … 6 from the scan's first slice) name their slice
    and side, stored as 16-bit integers. Back on the scan's grid (8-bit), each voxel holds the label of the nearest kept
    slice at its own y, x, and 0 outside the region."""
    nz, ny, nx = 12, 4, 6
    z, y, x = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    lps = sitk.GetImageFromArray((z * 10000 + y * 100 + x).astype(np.int32))
    lps.SetSpacing((0.9, 0.8, 2.0))
    lps.SetOrigin((-3.0, 5.0, 40.0))
    scan = sitk.DICOMOrient(lps, "LSA")  # i: left, j: superior, k: anterior
    assert int(np.argmax(np.abs(np.asarray(scan.GetDirection()).reshape(3, 3)[2]))) == 1  # stored j: superior
    low, high = region
    prepared = crop_z(canonical(scan), low, high, step=3)
    assert prepared.GetSize()[2] == 3
    kept = np.arange(3)[:, None, None] + np.zeros((3, ny, nx), int)
    labels_array = (10 * (kept + 1) + np.where(np.arange(nx) < nx // 2, 1, 2)).astype(np.int16)
    labels = sitk.GetImageFromArray(labels_array)
    labels.CopyInformation(prepared)

    restored = sitk.GetArrayFromImage(to_input_grid(labels, scan))
    ids = sitk.GetArrayFromImage(scan)
    assert restored.shape == ids.shape
    vz, vx = ids // 10000, ids % 100
    nearest = np.abs(vz[..., None] - np.array([low, low + 3, high])).argmin(axis=-1)
    expected = np.where((vz >= low) & (vz <= high), 10 * (nearest + 1) + np.where(vx < nx // 2, 1, 2), 0)
    assert np.array_equal(restored, expected)
    assert to_input_grid(labels, scan).GetPixelID() == sitk.sitkUInt8
