"""Per-level measurements (docs/method.md §8.1) against values worked out by hand on small volumes of known
geometry: the slab of slices around a disc, CSA, fat ratio and mean HU, every edge case, the disc positions on a
prepared (cropped, decimated) scan, a run's per-level table read from its files, and the per-level agreement."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from nnsam2_utils.data.manifest import Discs
from nnsam2_utils.errors import GeometryError
from nnsam2_utils.evaluate.levels import SLAB_HALF_WIDTH_MM, level_rows, slab
from nnsam2_utils.evaluate.run_levels import (
    DELIVERED,
    agreement_by_level,
    case_level_rows,
    prepared_disc_positions,
)
from nnsam2_utils.workflow.workspace import Workspace

SPACING = (0.8, 0.5, 4.0)  # x, y, z in mm: a pixel is 0.4 mm², slices 4 mm apart
PIXEL_MM2 = 0.8 * 0.5


def image(array: np.ndarray, spacing=SPACING) -> sitk.Image:
    """A SimpleITK image of a (slice, row, column) array."""
    result = sitk.GetImageFromArray(array)
    result.SetSpacing(spacing)
    return result


def growing_labels(n: int = 10) -> np.ndarray:
    """Class 1 (right) on slice i: a block of 10 × (i + 1) pixels; class 2 (left): 20 pixels on slices 0–4 only."""
    labels = np.zeros((n, 20, 30), dtype=np.uint8)
    for i in range(n):
        labels[i, :10, : i + 1] = 1
    labels[:5, 15:19, 20:25] = 2
    return labels


def by_key(rows: list[dict]) -> dict[tuple, dict]:
    return {(r["level"], r["class"], r["measure"]): r for r in rows}


# ------------------------------------------------------------------------------------------------------------------
# the slab
# ------------------------------------------------------------------------------------------------------------------


def test_the_slab_holds_the_slices_whose_centres_lie_within_the_half_width():
    assert slab("L4L5", 5.0, 11, 2.5, 5.0).slices == (3, 4, 5, 6, 7)  # ±2 slices of 2.5 mm
    assert slab("L4L5", 5.0, 11, 5.0, 5.0).slices == (4, 5, 6)  # a slice exactly 5 mm away is inside
    assert slab("L4L5", 5.0, 11, 5.0, 4.9).slices == (5,)
    assert slab("L4L5", 5.0, 11, 4.0, 0.0).slices == (5,)  # 0 mm: the disc slice alone
    assert slab("L4L5", 4.5, 11, 5.0, 2.5).slices == (4, 5)  # a disc between two slices (decimated CT)
    whole = slab("L4L5", 5.0, 11, 2.5, 5.0)
    assert whole.full == 5 and whole.note == ""


def test_a_slab_that_runs_off_the_volume_edge_keeps_the_slices_inside_and_says_so():
    top = slab("L3L4", 9.0, 10, 2.5, 5.0)  # slices 7..11 on an unbounded stack; the volume ends at 9
    assert top.slices == (7, 8, 9) and top.full == 5
    assert top.note == "slab clipped at the volume edge: 3 of 5 slices"
    bottom = slab("L5S1", -1 / 3, 12, 4.5, 5.0)  # L5S1 a third of a slice below the last kept CT slice
    assert bottom.slices == (0,) and bottom.full == 2
    assert bottom.note == "slab clipped at the volume edge: 1 of 2 slices"


def test_a_disc_outside_the_volume_gives_an_empty_slab_with_the_reason():
    outside = slab("L5S1", -3.0, 10, 4.0, 5.0)  # 12 mm below the first slice
    assert outside.slices == ()
    assert outside.note.startswith("no slice within ±5 mm of the disc (disc at slice position -3.00")
    assert slab("L4L5", 4.5, 10, 5.0, 2.0).slices == ()  # between slices 5 mm apart, nearer than neither
    with pytest.raises(ValueError, match="finite distance ≥ 0"):
        slab("L4L5", 4.0, 10, 4.0, -1.0)
    with pytest.raises(GeometryError, match="not a finite number"):
        slab("L4L5", float("nan"), 10, 4.0, 5.0)


# ------------------------------------------------------------------------------------------------------------------
# CSA, fat ratio, mean HU
# ------------------------------------------------------------------------------------------------------------------


def test_csa_is_the_mean_area_over_the_slab_in_mm2():
    rows = by_key(level_rows(image(growing_labels()), {"L4L5": 4.0}, half_width_mm=4.0))
    # slices 3, 4, 5 (4 mm apart): class 1 has 40, 50, 60 pixels of 0.4 mm² -> (16 + 20 + 24) / 3 = 20 mm²
    right = rows[("L4L5", 1, "csa_mm2")]
    assert right["value"] == pytest.approx(20.0) and right["slices"] == 3 and right["note"] == ""
    # class 2 lies on slices 0-4: 20 pixels on slices 3 and 4, none on 5 -> (8 + 8 + 0) / 3 mm²
    left = rows[("L4L5", 2, "csa_mm2")]
    assert left["value"] == pytest.approx(16 / 3) and left["note"] == "class on 2 of 3 slices"
    assert set(r["measure"] for r in rows.values()) == {"csa_mm2"}  # no fat, no CT: CSA only
    single = by_key(level_rows(image(growing_labels()), {"L4L5": 4.0}, half_width_mm=0.0))
    assert single[("L4L5", 1, "csa_mm2")]["value"] == pytest.approx(50 * PIXEL_MM2)


def test_the_default_slab_at_4_mm_slices_is_the_disc_and_one_slice_each_side():
    assert SLAB_HALF_WIDTH_MM == 5.0
    rows = by_key(level_rows(image(growing_labels()), {"L4L5": 4.0}))
    assert rows[("L4L5", 1, "csa_mm2")]["slices"] == 3


def test_a_class_absent_at_a_level_has_csa_zero_and_nan_fat_ratio_with_the_reason():
    labels = growing_labels()
    water, fat = np.full(labels.shape, 3.0), np.full(labels.shape, 1.0)
    rows = by_key(level_rows(image(labels), {"L3L4": 8.0}, 4.0, water=water, fat=fat))  # slices 7-9: no class 2
    assert rows[("L3L4", 2, "csa_mm2")]["value"] == 0.0
    assert rows[("L3L4", 2, "csa_mm2")]["note"] == "class absent in the slab"
    assert math.isnan(rows[("L3L4", 2, "fat_ratio")]["value"])
    assert rows[("L3L4", 2, "fat_ratio")]["note"] == "class absent in the slab"
    assert rows[("L3L4", 1, "fat_ratio")]["value"] == pytest.approx(0.25)


def test_the_fat_ratio_is_signal_weighted_over_the_slab_only():
    labels = growing_labels()
    water = np.zeros(labels.shape)
    fat = np.full(labels.shape, 100.0)  # outside the slab: would pull the ratio towards 1 if it were counted
    water[3:6], fat[3:6] = 9.0, 1.0
    fat[5] = 3.0  # slice 5: 60 pixels of fat 3, water 9
    rows = by_key(level_rows(image(labels), {"L4L5": 4.0}, 4.0, water=water, fat=fat))
    # class 1 in slices 3-5: 40 + 50 pixels with fat 1, 60 with fat 3; water 9 everywhere
    expected = (90 * 1.0 + 60 * 3.0) / (90 * 1.0 + 60 * 3.0 + 150 * 9.0)
    assert rows[("L4L5", 1, "fat_ratio")]["value"] == pytest.approx(expected)
    zero = by_key(
        level_rows(image(labels), {"L4L5": 4.0}, 4.0, water=np.zeros(labels.shape), fat=np.zeros(labels.shape))
    )
    assert math.isnan(zero[("L4L5", 1, "fat_ratio")]["value"])
    assert zero[("L4L5", 1, "fat_ratio")]["note"] == "zero water + fat signal"


def test_the_mean_hu_is_over_the_class_voxels_of_the_slab_unclipped():
    labels = growing_labels()
    ct = np.full(labels.shape, 1000.0)
    ct[labels == 1] = -200.0  # below the model's window: measured as it is
    ct[4][labels[4] == 1] = 400.0
    rows = by_key(level_rows(image(labels), {"L4L5": 4.0}, 4.0, ct=image(ct.astype(np.float32))))
    # slices 3, 4, 5: 40 and 60 voxels at -200 HU, 50 at 400 HU
    assert rows[("L4L5", 1, "hu_mean")]["value"] == pytest.approx((100 * -200.0 + 50 * 400.0) / 150)


def test_levels_not_given_or_outside_the_volume_are_nan_with_the_reason():
    labels = growing_labels()
    rows = level_rows(image(labels), {"L3L4": 20.0, "L4L5": None, "L5S1": 0.0}, 4.0, ct=np.zeros(labels.shape))
    table = pd.DataFrame(rows)
    assert list(dict.fromkeys(table["level"])) == ["L3L4", "L4L5", "L5S1"]
    outside = table[table["level"] == "L3L4"]
    assert outside["value"].isna().all() and (outside["slices"] == 0).all()
    assert outside["note"].str.startswith("no slice within ±4 mm of the disc").all()
    missing = table[table["level"] == "L4L5"]
    assert missing["value"].isna().all() and (missing["note"] == "L4L5 not given").all()
    assert len(missing) == 4  # two classes × (CSA, HU)
    edge = by_key(rows)[("L5S1", 1, "csa_mm2")]
    assert edge["value"] == pytest.approx((10 + 20) / 2 * PIXEL_MM2)  # slices 0 and 1 of -1..1
    assert edge["note"] == "slab clipped at the volume edge: 2 of 3 slices"


def test_wrong_inputs_are_refused():
    labels = image(growing_labels())
    with pytest.raises(ValueError, match=r"disc levels \['L2L3'\] unknown"):
        level_rows(labels, {"L2L3": 3.0})
    with pytest.raises(ValueError, match="both `water` and `fat`"):
        level_rows(labels, {"L4L5": 3.0}, water=np.ones((10, 20, 30)))
    with pytest.raises(GeometryError, match=r"ct image: array shape \(10, 20, 29\) differs"):
        level_rows(labels, {"L4L5": 3.0}, ct=np.ones((10, 20, 29)))
    with pytest.raises(ValueError, match="finite distance"):
        level_rows(labels, {"L4L5": 3.0}, half_width_mm=float("inf"))


# ------------------------------------------------------------------------------------------------------------------
# a run: disc positions on prepared scans, the per-level table from the run's files, agreement
# ------------------------------------------------------------------------------------------------------------------


def test_disc_positions_on_a_prepared_stack_by_hand():
    # a CT with L3/L4 at stored slice 42, L4/L5 at 24, L5/S1 at 8, every 3rd slice kept (12 slices prepared)
    assert prepared_disc_positions(Discs(L3L4=42, L4L5=24, L5S1=8), 12, 3) == pytest.approx(
        {"L3L4": 11.0, "L4L5": 5.0, "L5S1": -1 / 3}
    )
    # the same spine stored the other way round (slice numbers grow downwards)
    assert prepared_disc_positions(Discs(L3L4=8, L4L5=26, L5S1=42), 12, 3) == pytest.approx(
        {"L3L4": 11.0, "L4L5": 5.0, "L5S1": -1 / 3}
    )
    assert prepared_disc_positions(Discs(L3L4=12, L5S1=2), 11, 1) == {"L3L4": 10.0, "L4L5": None, "L5S1": 0.0}


def test_disc_positions_match_the_geometry_of_a_prepared_decimated_ct(tmp_path):
    """The tiny phantom's CT (3 mm slices, decimated to every 2nd): each disc's position computed from the manifest
    and the case table is where its slice's centre lands in the prepared image's own grid."""
    from nnsam2_utils.data.geometry import slice_axis
    from nnsam2_utils.data.io import read_image
    from nnsam2_utils.data.manifest import load_manifest
    from nnsam2_utils.data.synthetic.cohort import generate_cohort
    from nnsam2_utils.prepare.dataset import prepare_case

    generate_cohort(tmp_path, size="tiny", seed=0, datasets=["totalseg_ct"])
    manifest = load_manifest(tmp_path / "totalseg_ct.yaml")
    for case in manifest.cases:
        prepared = prepare_case(manifest, case)
        assert prepared.decimation == 2
        original = read_image(manifest.resolve(case.image))
        computed = prepared_disc_positions(case.discs, prepared.image.GetSize()[2], prepared.decimation)
        for level, position in computed.items():
            index = [(s - 1) / 2 for s in original.GetSize()]
            index[slice_axis(original)] = getattr(case.discs, level)
            point = original.TransformContinuousIndexToPhysicalPoint(index)
            assert position == pytest.approx(prepared.image.TransformPhysicalPointToContinuousIndex(point)[2]), level


def test_a_scans_level_rows_read_from_a_runs_files(tmp_path):
    """A prepared CT with an expert label and two stages' labels on disk: CSA and HU per level for each stage and
    the expert, each stage's rows marked with its name and the expert's with none."""
    from nnsam2_utils.data.io import write_image

    ws = Workspace(tmp_path / "work")
    labels = growing_labels()
    ct = np.where(labels > 0, 50.0, -100.0).astype(np.float32)
    folder = ws.prepared("ct", "c1")
    write_image(image(ct), folder / "image.nii.gz")
    write_image(image(labels), folder / "label.nii.gz")
    write_image(image(np.zeros_like(labels)), ws.labels("stage0", "ct", "c1"))  # stage 0 found nothing
    write_image(image(labels), ws.labels("nnunet1", "ct", "c1"))
    positions = {"L3L4": 9.0, "L4L5": 4.0, "L5S1": 0.0}
    rows = pd.DataFrame(case_level_rows(ws, "ct", "CT", "c1", positions, ["stage0", "nnunet1"], 4.0))
    assert len(rows) == 3 * 3 * 2 * 2  # (stage 0, nnU-Net 1, expert) × 3 levels × 2 classes × (CSA, HU)
    assert set(zip(rows["source"], rows["stage"])) == {("auto", "stage0"), ("auto", "nnunet1"), ("expert", "")}
    key = (rows["level"] == "L4L5") & (rows["class"] == 1) & (rows["measure"] == "csa_mm2")
    assert rows.loc[key & (rows["stage"] == "nnunet1"), "value"].item() == pytest.approx(20.0)
    assert rows.loc[key & (rows["source"] == "expert"), "value"].item() == pytest.approx(20.0)
    missed = rows.loc[key & (rows["stage"] == "stage0")].iloc[0]
    assert missed["value"] == 0.0 and missed["note"] == "class absent in the slab"
    hu = (rows["measure"] == "hu_mean") & (rows["source"] == "expert")
    assert (rows.loc[hu & (rows["class"] == 1), "value"] == 50.0).all()


def _level_table() -> pd.DataFrame:
    """Expert CSA of 6 scans at two levels, and two stages: nnunet1 a constant +2 mm² off, nnunet2 +4 mm² off."""
    rows = []
    for i in range(6):
        for level in ("L3L4", "L4L5"):
            for cls in (1, 2):
                expert = 500.0 + 37.0 * i + 11.0 * cls + (50.0 if level == "L4L5" else 0.0)
                noise = 0.5 * ((i + cls) % 3 - 1)
                base = {"dataset": "d1" if i < 3 else "d2", "case": f"c{i}", "subject": f"s{i}", "level": level}
                base.update({"class": cls, "measure": "csa_mm2", "slices": 3, "note": ""})
                rows.append({**base, "source": "expert", "stage": "", "value": expert})
                rows.append({**base, "source": "auto", "stage": "nnunet1", "value": expert + 2.0 + noise})
                rows.append({**base, "source": "auto", "stage": "nnunet2", "value": expert + 4.0 + noise})
    return pd.DataFrame(rows)


def test_agreement_per_stage_and_level_with_the_delivered_stage_first():
    table = _level_table()
    result = agreement_by_level(table, {"d1": "MRI", "d2": "MRI"}, delivered={"d1": "nnunet1", "d2": "nnunet2"})
    assert list(zip(result["stage"], result["level"])) == [
        (stage, level) for stage in (DELIVERED, "nnunet1", "nnunet2") for level in ("L3L4", "L4L5")
    ]
    assert (result["measure"] == "csa_mm2").all() and (result["group"] == "MRI").all() and (result["n"] == 12).all()
    # the noise sums to zero over the 12 pairs of a level: the bias is the offset itself
    bias = dict(zip(zip(result["stage"], result["level"]), result["bias"]))
    assert bias[("nnunet1", "L3L4")] == pytest.approx(2.0) and bias[("nnunet2", "L4L5")] == pytest.approx(4.0)
    assert bias[(DELIVERED, "L3L4")] == pytest.approx(3.0)  # d1's 6 pairs from nnunet1 (+2), d2's from nnunet2 (+4)
    assert (result["tost_p"] < 0.05).all()  # offsets of 2-4 mm² are far inside 10 % of about 600 mm²


def test_agreement_without_expert_rows_is_empty():
    table = _level_table()
    assert agreement_by_level(table[table["source"] == "auto"], {"d1": "MRI", "d2": "MRI"}).empty


def test_the_agreement_page_shows_the_delivered_stage_per_level_and_every_stage_side_by_side():
    from nnsam2_utils.report.agreement_page import level_columns, level_finding, level_stage_overview

    result = agreement_by_level(
        _level_table(), {"d1": "MRI", "d2": "MRI"}, delivered={"d1": "nnunet1", "d2": "nnunet2"}
    )
    shown = level_columns(result)
    assert list(shown["level"]) == ["L3L4", "L4L5"] and list(shown.columns[:4]) == [
        "level",
        "measure",
        "group",
        "verdict",
    ]
    assert shown["verdict"].str.startswith("equivalent within ±10 % (bias +0.5 %)").all()  # +3 mm² of about 600 mm²
    overview = level_stage_overview(result)
    assert list(overview.columns) == ["level", "measure", "group"] + [
        f"{statistic} {stage}" for stage in (DELIVERED, "nnunet1", "nnunet2") for statistic in ("tost_p", "icc")
    ]
    assert len(overview) == 2
    assert level_finding(result) == "At the disc levels, 2 of 2 comparisons are equivalent (TOST, p < 0.05)."
