"""The final model on subjects the run never saw (docs/method.md §13.1): choosing the new scans, scoring
``predict``'s labels as the run scores its own, the gap table and the sentence the results page opens with."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from nnsam2_utils.data.io import read_image, write_image
from nnsam2_utils.data.manifest import load_manifest
from nnsam2_utils.evaluate.new_subjects import class_volumes_ml, gap_table, new_cases, region_slices, scan_rows
from nnsam2_utils.report.findings import new_subjects_finding, size_clause


@pytest.fixture(scope="module")
def bedrest(tmp_path_factory):
    """A longitudinal dataset: the tiny phantom's bed-rest study (one subject, three time points)."""
    from nnsam2_utils.data.synthetic.cohort import generate_cohort

    return load_manifest(generate_cohort(tmp_path_factory.mktemp("br"), "tiny", 0, ["bedrest_dixon"])[0])


def test_new_scans_are_one_per_subject_in_manifest_order(tiny_cohort, bedrest):
    t2w = load_manifest(tiny_cohort / "backpain_t2w.yaml")
    assert [c.id for c in new_cases(t2w, 2)] == [c.id for c in t2w.cases[:2]]
    assert [c.id for c in new_cases(t2w, 10)] == [c.id for c in t2w.cases]  # fewer subjects than asked: all
    assert len({c.subject for c in bedrest.cases}) == 1 < len(bedrest.cases)
    assert [c.id for c in new_cases(bedrest, 2)] == [bedrest.cases[0].id]  # one time point of its one subject
    with pytest.raises(ValueError, match="at least 1"):
        new_cases(t2w, 0)


def test_region_slices_are_the_two_discs(tiny_cohort):
    case = load_manifest(tiny_cohort / "backpain_t2w.yaml").cases[0]
    assert region_slices(case) == (case.discs.L5S1, case.discs.L3L4)


def test_a_scan_is_scored_on_the_region_as_the_run_prepares_it(tiny_cohort, tmp_path):
    """The truth itself scores 1 per class and its region volume is the prepared label's; a label with the left
    class erased scores 0 there; CT is cut and decimated like the run's prepared scan."""
    from nnsam2_utils.prepare.dataset import prepare_case

    for name in ("backpain_t2w", "totalseg_ct"):
        manifest = load_manifest(tiny_cohort / f"{name}.yaml")
        case = manifest.cases[1]
        truth_path = manifest.resolve(case.label)
        own = read_image(truth_path)
        as_classes = sitk.GetArrayFromImage(own)
        mapped = np.select([np.isin(as_classes, [1, 2]), np.isin(as_classes, [3, 4])], [1, 2], 0).astype(np.uint8)
        labels = sitk.GetImageFromArray(mapped)
        labels.CopyInformation(own)
        write_image(labels, tmp_path / f"{name}_truth.nii.gz")
        rows = scan_rows(manifest, case, tmp_path / f"{name}_truth.nii.gz")
        assert [(r["dataset"], r["case"], r["class"], r["dsc"]) for r in rows] == [
            (name, case.id, 1, 1.0),
            (name, case.id, 2, 1.0),
        ]
        prepared = prepare_case(manifest, case).label
        expected = class_volumes_ml(sitk.GetArrayFromImage(prepared), prepared.GetSpacing())
        assert [r["truth_ml"] for r in rows] == pytest.approx([expected[1], expected[2]], rel=1e-9)
        mapped[mapped == 2] = 0
        right_only = sitk.GetImageFromArray(mapped)
        right_only.CopyInformation(own)
        write_image(right_only, tmp_path / f"{name}_right.nii.gz")
        assert [r["dsc"] for r in scan_rows(manifest, case, tmp_path / f"{name}_right.nii.gz")] == [1.0, 0.0]


def test_class_volumes_count_voxels_times_their_volume():
    label = np.zeros((2, 3, 4), np.uint8)
    label[0, :2, :2] = 1
    label[1, 0, 0] = 2
    assert class_volumes_ml(label, (0.5, 2.0, 4.0)) == {1: pytest.approx(4 * 4 / 1000), 2: pytest.approx(4 / 1000)}


def dsc_rows(dataset: str, stage: str, values: dict[str, tuple[float, float]]) -> list[dict]:
    return [
        {"dataset": dataset, "case": case, "class": cls, "stage": stage, "dsc": dsc}
        for case, pair in values.items()
        for cls, dsc in zip((1, 2), pair)
    ]


def test_gap_table_is_the_runs_mean_minus_the_new_scans_per_dataset_and_pooled():
    book = pd.DataFrame(
        dsc_rows("a", "nnunet3", {"a1": (0.9, 0.8), "a2": (0.9, 1.0)})  # scan means 0.85, 0.95: 0.90
        + dsc_rows("a", "stage0", {"a1": (0.1, 0.1)})  # another stage: not read
        + dsc_rows("b", "nnunet3", {"b1": (0.7, 0.7)})
        + dsc_rows("c", "nnunet3", {"c1": (0.5, 0.5)})  # no new scans: left out
    )
    new = pd.DataFrame(
        [
            {"dataset": "a", "case": "n1", "class": 1, "dsc": 0.8, "truth_ml": 10.0},
            {"dataset": "a", "case": "n1", "class": 2, "dsc": np.nan, "truth_ml": 0.0},  # empty class: left out
            {"dataset": "a", "case": "n2", "class": 1, "dsc": 0.9, "truth_ml": 30.0},
            {"dataset": "a", "case": "n2", "class": 2, "dsc": 0.9, "truth_ml": 20.0},
            {"dataset": "b", "case": "m1", "class": 1, "dsc": 0.8, "truth_ml": 40.0},
            {"dataset": "b", "case": "m1", "class": 2, "dsc": 0.8, "truth_ml": 40.0},
        ]
    )
    volumes = pd.DataFrame({"dataset": ["a", "a", "b"], "case": ["a1", "a1", "b1"], "truth_ml": [30.0, 50.0, 60.0]})
    table = gap_table(new, book, "nnunet3", volumes)
    assert list(table.index) == ["a", "b", "all"]
    assert table.loc["a", ["book", "new", "gap"]].tolist() == pytest.approx([0.90, 0.85, 0.05])
    assert table.loc["a", "new_sd"] == pytest.approx(np.std([0.8, 0.9], ddof=1))
    assert table.loc["b", ["book", "new", "gap"]].tolist() == pytest.approx([0.70, 0.80, -0.10])
    assert table.loc["all", ["book", "new", "gap"]].tolist() == pytest.approx([0.80, 0.825, -0.025])
    assert table.loc["all", ["book_scans", "new_scans"]].tolist() == [3, 3]
    assert table.loc["a", ["book_ml", "new_ml"]].tolist() == pytest.approx([40.0, 15.0])
    assert np.isnan(table.loc["all", "new_sd"])
    assert gap_table(new.iloc[:0], book, "nnunet3").empty


def gaps(book: list[float], new: list[float], book_ml: float = 100.0, new_ml: float = 100.0) -> pd.DataFrame:
    table = pd.DataFrame(
        {"book": book, "book_scans": 3, "new": new, "new_sd": 0.01, "new_scans": 2, "book_ml": book_ml,
         "new_ml": new_ml},
        index=[f"d{i}" for i in range(len(book))],
    )  # fmt: skip
    table["gap"] = table["book"] - table["new"]
    table.loc["all"] = table.mean()
    return table


def test_the_finding_says_how_much_lower_new_subjects_score_and_what_to_expect():
    text = new_subjects_finding(gaps([0.90, 0.92], [0.88, 0.90]))
    assert "0.890, against 0.910" in text and "0.020 lower on average" in text
    assert (
        "from +0.020 to +0.020" in text and "expect new scans of the same kind to score about this much lower" in text
    )
    assert "2 scans per dataset" in text and "SD of a new scan's DSC up to 0.010" in text
    higher = new_subjects_finding(gaps([0.80], [0.85]))
    assert "0.050 higher on average" in higher and "expect" not in higher
    assert "the same on average" in new_subjects_finding(gaps([0.80], [0.803]))
    assert new_subjects_finding(gaps([0.8], [0.8]).iloc[:0]) == ""


def test_the_finding_names_smaller_muscles_as_part_of_a_gap():
    assert "25% smaller than the run's (75 against 100 mL" in size_clause(100.0, 75.0)
    assert "10% larger" in size_clause(100.0, 110.0)
    assert size_clause(100.0, 104.0) == "" and size_clause(None, 80.0) == "" and size_clause(np.nan, 80.0) == ""
    assert "smaller than the run's" in new_subjects_finding(gaps([0.9], [0.87], new_ml=80.0))
