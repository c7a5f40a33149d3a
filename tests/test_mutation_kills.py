"""Behaviour the mutation run (``make mutation``, docs/mutation.md) found unpinned: exact hand-computed values and
boundaries of the overlap metrics, the agreement statistics, the stage filters and the region/orientation code."""

from __future__ import annotations

import logging
import math
import warnings

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from scipy import stats as sps

from nnsam2_utils.data.geometry import (
    canonical,
    case_region,
    crop_z,
    from_stack,
    region_crop,
    stack_offsets,
    to_input_grid,
    to_stack,
)
from nnsam2_utils.data.manifest import Case, DatasetManifest, Discs
from nnsam2_utils.errors import GeometryError
from nnsam2_utils.evaluate import metrics
from nnsam2_utils.evaluate.statistics import (
    AGREEMENT_COLUMNS,
    StatsError,
    agreement_table,
    bland_altman,
    fixed_subject_tost,
    icc,
    icc_from_matrix,
    mixed_model_tost,
    pair_measurements,
    paired_arrays,
    relative_margin,
    smallest_equivalence_margin,
    tost_paired,
)
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


def _axial(n: int, spacing_z: float) -> sitk.Image:
    """An axial LPS volume of ``n`` slices (4 × 5 pixels of 1 mm); value = stored slice number."""
    image = sitk.GetImageFromArray(np.repeat(np.arange(n, dtype=np.int16)[:, None, None], 20).reshape(n, 4, 5))
    image.SetSpacing((1.0, 1.0, spacing_z))
    return image


def _case(**discs) -> Case:
    return Case(id="c1", image="img.nii.gz", discs=Discs(**discs))


def test_a_region_error_names_the_scan_the_case_and_the_fix_in_full():
    with pytest.raises(GeometryError) as out:
        case_region(_axial(10, 4.0), _case(L3L4=12, L5S1=1), "scans/img.nii.gz")
    assert str(out.value) == (
        "scans/img.nii.gz (case c1): disc slice index 12 is outside the volume (0..9 along the superior–inferior "
        "axis). Fix the disc levels in the manifest."
    )
    with pytest.raises(GeometryError) as out:
        case_region(_axial(10, 4.0), _case(L3L4=1, L5S1=8), "scans/img.nii.gz")
    assert str(out.value) == (
        "scans/img.nii.gz (case c1): disc L3L4 (slice 1) lies inferior to L5S1 (slice 8) in the image's orientation. "
        "Swap the two disc levels in the manifest, or fix the image header's direction if the scan is stored upside "
        "down."
    )
    with pytest.raises(GeometryError) as out:
        case_region(_axial(10, 4.0), _case(L3L4=8, L5S1=6), "scans/img.nii.gz")  # slices 6 … 8: 8 mm
    assert str(out.value) == (
        "scans/img.nii.gz (case c1): discs L3L4 (slice 8) and L5S1 (slice 6) lie 8 mm apart; no lumbar spine spans "
        "L3/L4 to L5/S1 in less than 10 or more than 160 mm (adults: about 60–100 mm). Check that the slice numbers "
        "are of these discs (count in the viewer, first slice = 0) and the slice spacing in the header; a scan that "
        "stops short of a disc takes `edge` for it."
    )


def test_the_region_may_span_exactly_10_and_exactly_160_mm():
    assert case_region(_axial(10, 2.0), _case(L3L4=7, L5S1=2), "img.nii.gz") == (2, 7)  # 5 × 2 mm
    assert case_region(_axial(82, 2.0), _case(L3L4=81, L5S1=1), "img.nii.gz") == (1, 81)  # 80 × 2 mm
    with pytest.raises(GeometryError, match="lie 162 mm apart"):
        case_region(_axial(82, 2.0), _case(L3L4=81, L5S1=0), "img.nii.gz")


def test_a_region_of_one_slice_is_refused_even_at_the_volumes_end():
    """L3/L4 on the inferior end slice of a scan that ends above L5/S1: L3/L4 does not lie superior to L5/S1."""
    with pytest.raises(GeometryError, match=r"disc L3L4 \(slice 0\) lies inferior to L5S1 \(edge: slice 0\)"):
        case_region(_axial(10, 4.0), _case(L3L4=0, L5S1="edge"), "img.nii.gz")


def test_the_edge_warning_is_given_once_per_scan_case_and_level(caplog, tmp_path):
    image = _axial(10, 4.0)
    first, second = str(tmp_path / "a.nii.gz"), str(tmp_path / "b.nii.gz")  # new to this process
    with caplog.at_level(logging.WARNING, logger="nnsam2_utils.data.geometry"):
        for path in (first, first, second):
            assert case_region(image, _case(L3L4=8, L5S1="edge"), path) == (0, 8)
    warned = [r.getMessage() for r in caplog.records if "is 'edge'" in r.getMessage()]
    assert [m.split(" ")[0] for m in warned] == [first, second], warned


def test_only_a_ct_is_decimated_and_a_region_error_names_the_scan():
    image = _axial(20, 1.0)
    case = _case(L3L4=15, L5S1=3)
    for modality, sequence, step in (("CT", "CT", 4), ("MRI", "T2w", 1)):
        manifest = DatasetManifest(
            name="t", modality=modality, sequence=sequence, root=".", decimate_to_mm=4.0, cases=[case]
        )
        crop, found = region_crop(manifest, case, image, "scans/img.nii.gz")
        assert found == step
        assert sitk.GetArrayFromImage(crop(image))[:, 0, 0].tolist() == list(range(3, 16, step))
    with pytest.raises(GeometryError, match=r"^scans/img\.nii\.gz \(case c1\): disc L3L4"):
        region_crop(manifest, _case(L3L4=3, L5S1=15), image, "scans/img.nii.gz")


# --------------------------------------------------------------------------- agreement statistics
def _long_measurements(groups: dict[str, tuple[int, int]], seed: int = 5, classes=(1, 2)) -> pd.DataFrame:
    """Tidy measurements: per dataset (cases, first case number), each case its own subject, both classes."""
    rng = np.random.default_rng(seed)
    rows = []
    for dataset, (cases, first) in groups.items():
        for number in range(first, first + cases):
            base = rng.normal(300.0, 60.0)
            for cls in classes:
                expert = base + rng.normal(0.0, 10.0)
                auto = expert * 1.02 + rng.normal(0.0, 5.0)
                for source, value in (("auto", auto), ("expert", expert)):
                    rows.append(
                        {"dataset": dataset, "case": f"c{number}", "class": cls, "measure": "volume_ml"}
                        | {"source": source, "value": value}
                    )
    return pd.DataFrame(rows)


def test_an_agreement_row_holds_every_statistic_of_its_pairs_and_says_what_was_dropped():
    table = _long_measurements({"a": (6, 0), "b": (4, 10)})
    dropped = table.index[(table.dataset == "a") & (table.case == "c5") & (table["class"] == 2)]
    holed = table.drop(index=dropped[dropped.isin(table.index[table.source == "expert"])])
    out = agreement_table(holed, {"a": "Z", "b": "A"})  # group A comes from the later dataset: sorted by group
    assert list(out.columns) == list(AGREEMENT_COLUMNS) and out.group.tolist() == ["A", "Z"]
    row = out.set_index("group").loc["Z"]
    pairs = holed[holed.dataset == "a"].pivot_table(index=["case", "class"], columns="source", values="value")
    auto, expert = pairs["auto"].to_numpy(), pairs["expert"].to_numpy()
    complete = ~np.isnan(expert)
    a, e = auto[complete], expert[complete]
    assert (row.n, row.n_dropped) == (11, 1) and row.expert_mean == pytest.approx(e.mean())
    ratings, tost, ba = icc(a, e), tost_paired(a, e, 0.10), bland_altman(a, e)
    assert [row.icc, row.icc_low, row.icc_high, row.icc2, row.icc2_low, row.icc2_high] == pytest.approx(
        [ratings.icc3, ratings.icc3_low, ratings.icc3_high, ratings.icc2, ratings.icc2_low, ratings.icc2_high]
    )
    assert [row.tost_p, row.margin, row.tost_ci_low, row.tost_ci_high] == pytest.approx(
        [tost.p, tost.margin, tost.ci_low, tost.ci_high]
    )
    assert row.margin == pytest.approx(0.10 * e.mean())  # the default margin: 10 % of the expert mean
    assert [row.bias, row.sd_diff, row.loa_low, row.loa_high] == pytest.approx(
        [ba.bias, ba.sd, ba.loa_low, ba.loa_high]
    )
    assert row.smallest_margin == pytest.approx(smallest_equivalence_margin(a, e))
    subjects = pairs.index.get_level_values("case")[complete]
    mixed = mixed_model_tost(
        pd.DataFrame({"subject": [*subjects, *subjects], "source": ["auto"] * 11 + ["expert"] * 11, "value": [*a, *e]})
    )
    assert row.n_subjects == 6
    assert [row.lmm_p, row.lmm_estimate, row.lmm_icc] == pytest.approx([mixed.p, mixed.estimate, mixed.icc])
    assert row.note == (
        "1 pairs dropped (NaN or one source missing); 11 pairs from 6 subjects: the paired TOST and ICC treat them as "
        "independent, the mixed model does not"
    )
    by_class = agreement_table(holed, {"a": "Z", "b": "A"}, by_class=True)
    assert list(by_class.columns) == ["measure", "group", "class", *AGREEMENT_COLUMNS[2:]]


def test_the_mixed_model_needs_repeated_values_of_a_subject_and_three_subjects():
    one_each = agreement_table(_long_measurements({"a": (5, 0)}, classes=(1,))).iloc[0]
    assert one_each.n_subjects == 5 and math.isnan(one_each.lmm_p) and one_each.note == ""
    three = agreement_table(_long_measurements({"a": (3, 0)})).iloc[0]  # 3 subjects × 2 classes: the mixed model
    assert three.n_subjects == 3 and np.isfinite(three.lmm_icc) and "fixed effect" not in three.note


def test_agreement_notes_name_the_statistic_that_could_not_be_computed():
    flat = _long_measurements({"f": (4, 0)}).assign(value=5.0)
    row = agreement_table(flat).iloc[0]
    assert row.note.split("; ")[0] == "ICC: all 16 values are equal (5): no variance, so the ICC is undefined."
    tiny = agreement_table(_long_measurements({"t": (1, 0)})).iloc[0]  # 2 pairs
    assert tiny.note.split("; ")[:4] == [
        "ICC: only 2 complete pairs (0 dropped for NaN): at least 3 automated/expert pairs are needed.",
        "TOST: only 2 complete pairs (0 dropped for NaN): at least 3 automated/expert pairs are needed.",
        "Bland-Altman: only 2 complete pairs (0 dropped for NaN): at least 3 automated/expert pairs are needed.",
        "smallest margin: only 2 complete pairs (0 dropped for NaN): at least 3 automated/expert pairs are needed.",
    ]


def test_subjects_mapped_by_case_fall_back_to_the_case_itself():
    table = _long_measurements({"a": (6, 0)})
    row = agreement_table(table, subjects={"c0": "s", "c1": "s", "c2": "s"}).iloc[0]
    assert row.n_subjects == 4  # s, c3, c4, c5


def test_pair_measurements_counts_keys_with_one_source_and_names_what_repeats():
    table = _long_measurements({"a": (3, 0)})
    wide, unpaired = pair_measurements(table.iloc[1:])  # the first key keeps its expert value only
    assert unpaired == 1 and list(wide.columns) == ["dataset", "case", "class", "measure", "auto", "expert"]
    assert wide.columns.name is None and wide["auto"].isna().sum() == 1 and wide["class"].tolist()[:2] == ["1", "2"]
    assert pair_measurements(table)[1] == 0
    with pytest.raises(StatsError) as out:
        pair_measurements(pd.concat([table, table.iloc[[2]]]))
    assert str(out.value) == (
        "2 rows repeat a (dataset, case, class, measure, source), e.g. {'dataset': 'a', 'case': 'c0', 'class': '2', "
        "'measure': 'volume_ml', 'source': 'auto'}; keep one value per scan, class, measure and source."
    )
    with pytest.raises(StatsError, match=r"^source values \['manual'\] unknown; use 'auto' and 'expert'\.$"):
        pair_measurements(table.assign(source="manual"))


def test_tost_of_identical_differences_is_decided_by_the_margin_alone():
    expert = np.array([10.0, 20.0, 30.0, 40.0])  # mean 25: margin 2.5
    for shift, p_lower, p_upper in ((2.5, 0.0, 1.0), (-2.5, 1.0, 0.0), (2.4, 0.0, 0.0), (-2.4, 0.0, 0.0)):
        r = tost_paired(expert + shift, expert)
        assert (r.p, r.p_lower, r.p_upper) == (max(p_lower, p_upper), p_lower, p_upper), shift
        assert (r.margin, r.mean_difference, r.ci_low, r.ci_high) == pytest.approx((2.5, shift, shift, shift))
        assert (r.n, r.n_dropped, r.df) == (4, 0, 3)
    # differences equal up to rounding of values near 1e6 are identical; a spread of 1e-4 is not
    big = np.array([1e6, 2e6, 3e6])
    assert tost_paired(big + 1.0 + np.array([0.0, 2e-10, 0.0]), big).p_lower == 0.0
    assert tost_paired(np.array([1.0, 2.0, 3.0]) + np.array([0.1, 0.1001, 0.1]), np.array([1.0, 2.0, 3.0])).p > 0.0


def test_tost_fields_and_degrees_of_freedom():
    auto, expert = np.array([10.0, 12.0, 14.0, 16.0]), np.array([11.0, 11.0, 15.0, 14.0])
    r = tost_paired(auto, expert)
    # d = −1, 1, −1, 2: mean 0.25, SE 1.5 / 2 = 0.75; margin 0.1 × 12.75
    assert (r.mean_difference, r.n, r.df) == (pytest.approx(0.25), 4, 3)
    assert r.p_lower == pytest.approx(sps.t.sf((0.25 + 1.275) / 0.75, 3))
    assert r.p_upper == pytest.approx(sps.t.cdf((0.25 - 1.275) / 0.75, 3))
    ba = bland_altman(auto, expert)
    assert (ba.n, ba.n_dropped) == (4, 0) and bland_altman([*auto, np.nan], [*expert, 1.0]).n_dropped == 1


def test_paired_values_are_floats_of_two_1d_sequences():
    a, e, dropped = paired_arrays([1, 2, 3], [2, 2, 4])
    assert a.dtype == e.dtype == np.float64 and dropped == 0
    with pytest.raises(StatsError, match=r"^auto and expert must be 1-D sequences, got shapes \(3,\) and \(1, 3\)\.$"):
        paired_arrays([1, 2, 3], [[1, 2, 3]])
    with pytest.raises(StatsError, match="got shapes"):
        paired_arrays([[1, 2, 3]], [1, 2, 3])
    with pytest.raises(StatsError, match=r"in the same order\.$"):
        paired_arrays([1, 2, 3], [1, 2])
    assert icc([1, 2, 3, 5], [1, 3, 3, 4]).icc3 == pytest.approx(icc([1.0, 2.0, 3.0, 5.0], [1.0, 3.0, 3.0, 4.0]).icc3)


def test_relative_margin_and_its_errors():
    assert relative_margin(np.array([-10.0, -30.0]), 0.1) == pytest.approx(2.0)
    with pytest.raises(StatsError, match=r"^margin_fraction must be positive, got 0\.0\.$"):
        relative_margin(np.array([1.0]), 0.0)
    with pytest.raises(StatsError, match=r"^the expert mean is 0, so a margin relative to it is 0: equivalence"):
        relative_margin(np.array([1.0, -1.0]), 0.1)
    with pytest.raises(StatsError, match="expert mean is 0"):
        smallest_equivalence_margin([1.0, 2.0, 3.0], [1.0, -1.0, 0.0])


def test_icc_errors_and_notes_in_full():
    with pytest.raises(StatsError, match=r"^ICC needs at least 3 targets × 2 raters, got shape \(3, 1\)\.$"):
        icc_from_matrix(np.ones((3, 1)))
    with pytest.raises(StatsError, match=r"got shape \(2, 2\)"):
        icc_from_matrix(np.array([[1.0, 2.0], [3.0, 4.0]]))
    with pytest.raises(StatsError, match=r"got shape \(4,\)"):
        icc_from_matrix(np.ones(4))
    assert icc_from_matrix(np.array([[1.0, 2.0], [2.0, 2.5], [4.0, 3.0]])).n == 3  # 3 targets are enough
    with pytest.raises(StatsError, match=r"^ICC ratings hold NaN/Inf; drop incomplete targets first\.$"):
        icc_from_matrix(np.array([[1.0, 2.0], [np.nan, 2.5], [4.0, 3.0]]))
    with pytest.raises(StatsError, match=r"^all 6 values are equal \(7\): no variance"):
        icc_from_matrix(np.full((3, 2), 7.0))
    offset = icc_from_matrix(np.column_stack([[1.0, 2.0, 4.0], [3.0, 4.0, 6.0]]))
    assert (
        offset.note == "raters differ by a constant (residual variance 0): ICC CIs undefined" and offset.n_dropped == 0
    )
    assert icc_from_matrix(np.array([[1, 2], [2, 2], [4, 3]])).icc3 == pytest.approx(
        icc_from_matrix(np.array([[1.0, 2.0], [2.0, 2.0], [4.0, 3.0]])).icc3
    )
    with pytest.raises(StatsError, match=r"^target ids repeat: each pair \(scan and class\) must have a unique id\.$"):
        icc([1.0, 2.0, 3.0], [1.0, 2.5, 3.5], targets=["a", "b", "a"])


def _subjects_table(auto, expert, subjects) -> pd.DataFrame:
    return pd.DataFrame(
        {"subject": [*subjects, *subjects], "source": ["auto"] * len(auto) + ["expert"] * len(expert)}
        | {"value": np.concatenate([auto, expert])}
    )


def test_the_mixed_model_result_in_full_and_its_scale_invariance():
    rng = np.random.default_rng(11)
    subjects = np.repeat(np.arange(3), 4)  # 3 subjects (the fewest) × 4 scans
    expert = rng.normal(50.0, 10.0, 3)[subjects] + rng.normal(0.0, 2.0, 12)
    auto = expert + 1.0 + rng.normal(0.0, 1.0, 12)
    r = mixed_model_tost(_subjects_table(auto, expert, subjects))
    assert r.p_lower == pytest.approx(sps.norm.sf((r.estimate + r.margin) / r.se))
    assert r.p_upper == pytest.approx(sps.norm.cdf((r.estimate - r.margin) / r.se))
    assert r.p == max(r.p_lower, r.p_upper)
    half = sps.norm.ppf(0.95) * r.se
    assert (r.ci_low, r.ci_high) == pytest.approx((r.estimate - half, r.estimate + half))
    assert r.icc == pytest.approx(r.subject_var / (r.subject_var + r.residual_var))
    assert (r.n_subjects, r.n_obs) == (3, 24)
    small = mixed_model_tost(_subjects_table(auto / 1000, expert / 1000, subjects))  # litres instead of ml
    assert (small.p, small.icc) == pytest.approx((r.p, r.icc), rel=1e-4)
    assert small.estimate == pytest.approx(r.estimate / 1000, rel=1e-4)


def test_mixed_model_errors_in_full():
    with pytest.raises(StatsError) as out:
        mixed_model_tost(_subjects_table(np.arange(4.0), np.arange(4.0) + 1, [0, 0, 1, 1]))
    assert str(out.value) == "mixed model: 2 subjects; at least 3 are needed to estimate a between-subject variance."
    with pytest.raises(StatsError, match=r"^mixed model: all values are equal; nothing to model\.$"):
        mixed_model_tost(_subjects_table(np.ones(6), np.ones(6), [0, 0, 1, 1, 2, 2]))


def test_the_fixed_subject_model_in_full():
    rows = [("A", "expert", 10), ("A", "expert", 12), ("A", "auto", 11), ("A", "auto", 13)]
    rows += [("B", "expert", 20), ("B", "expert", 22), ("B", "auto", 21), ("B", "auto", 23)]
    table = pd.DataFrame(rows, columns=["subject", "source", "value"])
    r = fixed_subject_tost(table)  # estimate 1, se √0.8 on 5 df, margin 0.1 × 16 (the default fraction)
    se = math.sqrt(0.8)
    assert r.margin == pytest.approx(1.6)
    assert r.p_lower == pytest.approx(sps.t.sf((1.0 + 1.6) / se, 5))
    assert r.p_upper == pytest.approx(sps.t.cdf((1.0 - 1.6) / se, 5))
    assert r.ci_high == pytest.approx(1.0 + sps.t.ppf(0.95, 5) * se)
    assert math.isnan(r.subject_var) and (r.n_subjects, r.n_obs, r.converged) == (2, 8, True)
    assert r.note == (
        "2 subject(s), fewer than 3 for a between-subject variance: subject as a fixed effect (the source effect "
        "within subjects; no ICC)"
    )
    three = pd.DataFrame(rows + [("C", "expert", 30), ("C", "auto", 32)], columns=["subject", "source", "value"])
    # within subjects, each weighted by n_auto · n_expert / n: (1 · 1 + 1 · 1 + 0.5 · 2) / 2.5
    assert fixed_subject_tost(three).estimate == pytest.approx(1.2)
    with pytest.raises(StatsError) as out:
        fixed_subject_tost(table.assign(source="auto"))
    assert str(out.value) == "fixed-subject model: source must hold exactly 'auto' and 'expert', found ['auto']."
    with pytest.raises(StatsError, match=r"found \['auto', 'expert', 'manual'\]"):
        fixed_subject_tost(pd.concat([table, table.iloc[:1].assign(source="manual")]))
    two = table[table.subject == "A"].iloc[[0, 2]]
    with pytest.raises(StatsError, match=r"^fixed-subject model: 2 values for 2 parameters; no residual left\.$"):
        fixed_subject_tost(two)
    assert fixed_subject_tost(table.iloc[[0, 2, 4, 6, 1]]).n_obs == 5  # one residual degree of freedom is enough


def test_a_repeated_key_is_refused_even_with_another_value_and_alpha_reaches_every_statistic():
    table = _long_measurements({"a": (4, 0)})
    with pytest.raises(StatsError, match=r"^2 rows repeat a \(dataset, case, class, measure, source\)"):
        pair_measurements(pd.concat([table, table.iloc[[2]].assign(value=1.0)]))
    row = agreement_table(table, alpha=0.10).iloc[0]
    wide = table.pivot_table(index=["case", "class"], columns="source", values="value")
    a, e = wide["auto"].to_numpy(), wide["expert"].to_numpy()
    tost = tost_paired(a, e, 0.10, alpha=0.10)  # an 80 % CI
    assert (row.tost_ci_low, row.tost_ci_high) == pytest.approx((tost.ci_low, tost.ci_high))
    assert row.smallest_margin == pytest.approx(smallest_equivalence_margin(a, e, alpha=0.10))
