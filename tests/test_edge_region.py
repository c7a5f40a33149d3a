"""A scan that stops short of a disc (``L5S1: edge``, ``L3L4: edge``): how it is given in a manifest or cases CSV, its
region clipped at the volume's end with a warning naming the scan, and every consumer of the disc levels (data
check, preparation, the cohort table, per-level measurements, the which-slice experiment)."""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import yaml

from nnsam2_utils.data.checks import check_manifest
from nnsam2_utils.data.describe import cohort_table
from nnsam2_utils.data.geometry import case_region, edge_slice, stack_offsets, stored_discs
from nnsam2_utils.data.io import write_image
from nnsam2_utils.data.manifest import Discs, load_manifest
from nnsam2_utils.errors import GeometryError, ManifestError
from nnsam2_utils.evaluate.levels import level_rows
from nnsam2_utils.evaluate.run_levels import missing_notes, prepared_disc_positions
from nnsam2_utils.experiments.which_slice import ScanShape, level_slice, plan_variants
from nnsam2_utils.prepare.dataset import prepare_case

GEOMETRY_LOG = "nnsam2_utils.data.geometry"
FLIPPED = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0)  # slice numbers run superior → inferior


def volume(n: int = 12, spacing_z: float = 4.0, direction=None, dtype=np.float32) -> sitk.Image:
    """An axial volume of ``n`` slices (6 x 8 pixels of 1 mm); value = stored slice number + 1."""
    array = np.repeat(np.arange(1, n + 1, dtype=dtype)[:, None, None], 6 * 8).reshape(n, 6, 8)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((1.0, 1.0, spacing_z))
    if direction is not None:
        image.SetDirection(direction)
    return image


def labels_like(image: sitk.Image) -> sitk.Image:
    """Both muscles on every slice (1 right, 2 left), on the image's grid."""
    array = np.zeros(sitk.GetArrayViewFromImage(image).shape, np.uint8)
    array[:, 1:4, 1:3], array[:, 1:4, 5:7] = 1, 2
    label = sitk.GetImageFromArray(array)
    label.CopyInformation(image)
    return label


def dataset(tmp_path, discs: dict, image: sitk.Image | None = None, extra: dict | None = None) -> tuple:
    """One scan with its label and a manifest naming ``discs``; returns (manifest path, image path)."""
    image = image if image is not None else volume()
    folder = tmp_path / "d"
    write_image(image, folder / "img.nii.gz")
    write_image(labels_like(image), folder / "seg.nii.gz")
    data = {
        "name": "short",
        "modality": "MRI",
        "sequence": "T2w",
        "root": "d",
        "cases": [{"id": "c1", "image": "img.nii.gz", "label": "seg.nii.gz", "discs": discs}],
        **(extra or {}),
    }
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path, folder / "img.nii.gz"


# --- the manifest -------------------------------------------------------------------------------------------------


def test_edge_is_read_from_the_yaml_and_from_a_cases_csv(tmp_path):
    path, _ = dataset(tmp_path, {"L3L4": 8, "L5S1": "edge"})
    assert load_manifest(path).cases[0].discs == Discs(L3L4=8, L5S1="edge")
    (tmp_path / "d" / "discs.csv").write_text("scan,top,bottom\nc1,Edge,3\nc2,9, edge \n", encoding="utf-8")
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data["cases"] = [{"id": "c1", "image": "img.nii.gz"}, {"id": "c2", "image": "img.nii.gz"}]
    data["cases_csv"] = {"file": "discs.csv", "columns": {"id": "scan", "L3L4": "top", "L5S1": "bottom"}}
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    cases = load_manifest(path).cases
    assert [c.discs for c in cases] == [Discs(L3L4="edge", L5S1=3), Discs(L3L4=9, L5S1="edge")]
    assert [c.discs.edges for c in cases] == [("L3L4",), ("L5S1",)]


@pytest.mark.parametrize(
    "discs, expected",
    [
        ({"L3L4": "edge", "L5S1": "edge"}, "L3L4 and L5S1 are both 'edge': give at least one of the two discs"),
        (
            {"L3L4": 8, "L5S1": "bottom"},
            "cases.0.discs.L5S1: Input should be a valid integer (the disc's slice number) or 'edge'",
        ),
        ({"L3L4": -2, "L5S1": "edge"}, "cases.0.discs.L3L4: Input should be greater than or equal to 0"),
    ],
)
def test_a_wrong_region_end_names_the_file_and_the_field(tmp_path, discs, expected):
    path, _ = dataset(tmp_path, discs)
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    assert str(path) in str(info.value) and expected in str(info.value)


# --- the region ---------------------------------------------------------------------------------------------------


def test_the_edge_is_the_volumes_end_slice_on_the_levels_side_whatever_the_storage_order():
    assert (edge_slice(volume(), "L5S1"), edge_slice(volume(), "L3L4")) == (0, 11)
    flipped = volume(direction=FLIPPED)
    assert (edge_slice(flipped, "L5S1"), edge_slice(flipped, "L3L4")) == (11, 0)
    assert stored_discs(Discs(L3L4=3, L5S1="edge"), flipped) == Discs(L3L4=3, L5S1=11)


def test_a_scan_ending_above_l5s1_is_clipped_at_its_inferior_end_with_a_warning(tmp_path, caplog):
    path, image_path = dataset(tmp_path, {"L3L4": 8, "L5S1": "edge"})
    case = load_manifest(path).cases[0]
    with caplog.at_level(logging.WARNING, logger=GEOMETRY_LOG):
        assert case_region(sitk.ReadImage(str(image_path)), case, image_path) == (0, 8)
    assert [r.getMessage() for r in caplog.records] == [
        f"{image_path} (case c1): L5S1 is 'edge': the scan ends above L5/S1, so the region is clipped at the "
        "volume's inferior end (slice 0) and L5S1 is not measured"
    ]


def test_a_scan_starting_below_l3l4_stored_upside_down(tmp_path, caplog):
    image = volume(direction=FLIPPED)
    path, image_path = dataset(tmp_path, {"L3L4": "edge", "L5S1": 9}, image)
    case = load_manifest(path).cases[0]
    with caplog.at_level(logging.WARNING, logger=GEOMETRY_LOG):
        assert case_region(sitk.ReadImage(str(image_path)), case, image_path) == (2, 11)  # LPS z of slices 9 and 0
    assert (
        "(case c1): L3L4 is 'edge': the scan starts below L3/L4, so the region is clipped at the volume's "
        "superior end (slice 0)" in caplog.text
    )


def test_a_short_region_is_kept_when_the_scan_ends_and_refused_when_it_does_not(tmp_path, caplog):
    path, image_path = dataset(tmp_path, {"L3L4": 2, "L5S1": "edge"})  # 2 slices of 4 mm: 8 mm
    case = load_manifest(path).cases[0]
    image = sitk.ReadImage(str(image_path))
    with caplog.at_level(logging.WARNING, logger=GEOMETRY_LOG):
        assert case_region(image, case, image_path) == (0, 2)
    assert (
        f"{image_path} (case c1): the region is only 8 mm long (L3/L4 to L5/S1 spans at least 10 mm) because the "
        "scan ends above L5/S1; it is kept as it is"
    ) in [r.getMessage() for r in caplog.records]
    both = case.model_copy(update={"discs": Discs(L3L4=2, L5S1=0)})
    with pytest.raises(GeometryError, match="lie 8 mm apart; no lumbar spine spans L3/L4 to L5/S1 in less than 10"):
        case_region(image, both, image_path)
    too_long = case.model_copy(update={"discs": Discs(L3L4=11, L5S1="edge")})
    with pytest.raises(GeometryError, match=r"discs L3L4 \(slice 11\) and L5S1 \(edge: slice 0\) lie 176 mm apart"):
        case_region(volume(spacing_z=4.0 * 4), too_long, image_path)  # 11 slices of 16 mm: 176 mm, still refused


# --- data check, preparation, cohort table -------------------------------------------------------------------------


def test_data_check_accepts_an_edge_and_still_checks_the_other_discs(tmp_path):
    path, image_path = dataset(tmp_path, {"L3L4": 8, "L4L5": 4, "L5S1": "edge"})
    assert check_manifest(path) == []
    path, image_path = dataset(tmp_path, {"L3L4": 8, "L4L5": 10, "L5S1": "edge"})  # L4/L5 above L3/L4
    problems = check_manifest(path)
    assert [(p.kind, p.what) for p in problems] == [
        ("discs", "case c1: L4L5 (10) does not lie between L3L4 (8) and L5S1 (edge).")
    ]
    path, _ = dataset(tmp_path, {"L3L4": 12, "L5S1": "edge"})
    (problem,) = check_manifest(path)
    assert "disc slices {'L3L4': 12} are outside the volume (0..11" in problem.what
    assert "a scan that stops short of L5/S1 (or starts below L3/L4) takes `L5S1: edge`" in problem.fix


def test_prepare_keeps_the_slices_down_to_the_volumes_end(tmp_path):
    path, _ = dataset(tmp_path, {"L3L4": 8, "L5S1": "edge"})
    manifest = load_manifest(path)
    prepared = prepare_case(manifest, manifest.cases[0])
    assert sitk.GetArrayFromImage(prepared.image)[:, 0, 0].tolist() == list(range(1, 10))  # stored slices 0..8
    assert prepared.label.GetSize()[2] == 9
    assert cohort_table([manifest])["region_slices"].tolist() == [9]


def test_a_decimated_ct_starting_below_l3l4_keeps_its_l5s1_slice(tmp_path):
    image = volume(n=30, spacing_z=1.0, dtype=np.int16) - 200  # values −199..−170: a CT in HU
    extra = {"modality": "CT", "sequence": "CT", "decimate_to_mm": 3.0}
    path, _ = dataset(tmp_path, {"L3L4": "edge", "L4L5": 16, "L5S1": 4}, image, extra)
    manifest = load_manifest(path)
    prepared = prepare_case(manifest, manifest.cases[0])
    kept = (sitk.GetArrayFromImage(prepared.image)[:, 0, 0] + 200 - 1).tolist()  # stored slice numbers kept
    assert kept == [4, 7, 10, 13, 16, 19, 22, 25, 28] and prepared.decimation == 3
    positions = prepared_disc_positions(manifest.cases[0].discs, len(kept), prepared.decimation)
    assert positions == {"L3L4": None, "L4L5": 4.0, "L5S1": 0.0}  # prepared slice 4 is stored 16, slice 0 stored 4
    assert cohort_table([manifest])["region_slices"].tolist() == [9]


# --- per-level measurements and the which-slice experiment --------------------------------------------------------


def test_an_edge_level_is_not_measured_and_says_why():
    discs = Discs(L3L4=8, L4L5=4, L5S1="edge")
    assert prepared_disc_positions(discs, 9, 1) == {"L3L4": 8.0, "L4L5": 4.0, "L5S1": None}
    assert stack_offsets(Discs(L3L4=2, L4L5=8, L5S1="edge"), 10, 2) == {"L3L4": 0.0, "L4L5": 3.0, "L5S1": None}
    notes = missing_notes(discs)
    assert notes == {"L5S1": "L5S1 not given: the scan ends above L5/S1"}
    labels = labels_like(volume(n=9))
    rows = pd.DataFrame(level_rows(labels, prepared_disc_positions(discs, 9, 1), 4.0, missing=notes))
    edge = rows[rows["level"] == "L5S1"]
    assert len(edge) == 2 and edge["value"].map(math.isnan).all() and (edge["slices"] == 0).all()
    assert set(edge["note"]) == {"L5S1 not given: the scan ends above L5/S1"}
    assert rows.loc[rows["level"] == "L3L4", "value"].tolist() == [6.0, 6.0]  # 3 x 2 pixels of 1 mm² per class


def test_the_which_slice_experiment_skips_a_disc_the_scan_does_not_reach():
    short = ScanShape(9, 1, Discs(L3L4=8, L4L5=4, L5S1="edge"))
    assert [level_slice(level, short) for level in ("L3L4", "L4L5", "L5S1", "mid")] == [0, 4, None, 4]
    from_below = ScanShape(9, 3, Discs(L3L4="edge", L4L5=16, L5S1=4))
    assert [level_slice(level, from_below) for level in ("L3L4", "L4L5", "L5S1")] == [0, 4, 8]
    plan = plan_variants("d", {"a": short, "b": from_below}, "a", [0], levels=("L3L4", "L5S1"))
    level_rows_ = plan[plan["comparison"] == "level"].set_index("level")
    assert level_rows_.loc["L3L4", "slice"] == 0 and pd.isna(level_rows_.loc["L5S1", "slice"])


def test_predict_reads_an_edge_disc_as_a_level_left_out():
    from nnsam2_utils.apply.inputs import parse_discs

    assert parse_discs("L3L4=12,L4L5=8,L5S1=edge") == {"L3L4": 12, "L4L5": 8}
    with pytest.raises(ValueError, match="every level given is 'edge'; give at least one disc's slice number"):
        parse_discs("L5S1=Edge")
    with pytest.raises(ValueError, match="L5S1 is given twice"):
        parse_discs("L3L4=12,L5S1=edge,L5S1=3")
