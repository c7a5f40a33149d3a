"""The own-scans chapter's computed parts (nnsam2_utils.report.own_scans): slice numbering read from the example
dataset's real files (a sagittal DICOM series, a RAS NIfTI, an MHA) and checked on their prepared scans, the
delivered labels' grid check, the stage-0 sentence, and the cohort cost from step records."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from nnsam2_utils.data.io import read_image, write_image
from nnsam2_utils.data.manifest import load_manifest
from nnsam2_utils.data.synthetic.own_example import assemble_example
from nnsam2_utils.report import own_scans as guide
from nnsam2_utils.steps.prepare import prepare_manifest
from nnsam2_utils.workflow.workspace import Workspace


@pytest.fixture(scope="module")
def example(tiny_cohort, tmp_path_factory):
    """The example user dataset assembled from the tiny phantom cohort, and its prepared scans."""
    folder = tmp_path_factory.mktemp("own")
    path = assemble_example(tiny_cohort / "backpain_t2w.yaml", folder / "data" / "mine", "mine")
    manifest = load_manifest(path)
    ws = Workspace(folder / "work")
    prepare_manifest(ws, manifest)
    return manifest, ws


def test_slice_numbers_as_the_manifest_itk_snap_and_slicer_count_them(example) -> None:
    manifest, ws = example
    table = guide.slice_numbering(manifest, ws.prepared("mine"))
    assert guide.numbering_checked(table)
    assert len(table) == len(manifest.cases)
    manifest_k = table["L3/L4 in the manifest (from 0)"]
    assert (table["ITK-SNAP voxel (from 1)"] == manifest_k + 1).all()
    assert table["3D Slicer IJK (from 0)"].tolist() == [
        f"{axis[0]} = {k}" for axis, k in zip(table["stored axis closest to S–I"], manifest_k)
    ]
    # the example stores one scan sagittally: its disc numbers count along an in-plane axis, not k
    assert {a[0] for a in table["stored axis closest to S–I"]} >= {"k"} and (
        table["stored axis closest to S–I"] != "k (axis 2)"
    ).any()
    assert set(table["slice numbers run"]) == {"inferior → superior", "superior → inferior"}


def test_the_check_fails_against_another_region(example, tmp_path) -> None:
    manifest, ws = example
    case = manifest.cases[0]
    moved = case.model_copy(update={"discs": case.discs.model_copy(update={"L3L4": case.discs.L3L4 + 1, "L4L5": None})})
    shifted = manifest.model_copy(update={"name": "shifted", "cases": [moved], "annotation": None})
    other = Workspace(tmp_path / "work")
    prepare_manifest(other, shifted)
    assert guide.numbering_checked(guide.slice_numbering(shifted, other.prepared("shifted")))
    # the original manifest read against the shifted scan's preparation: the check says they differ
    assert not guide.numbering_checked(
        guide.slice_numbering(manifest.model_copy(update={"cases": [case]}), other.prepared("shifted"))
    )


def test_delivered_labels_on_the_scans_grid_and_off_it(example) -> None:
    manifest, ws = example
    case = manifest.cases[1]  # a RAS-stored NIfTI
    scan = read_image(manifest.resolve(case.image))
    label = sitk.Cast(scan > float(np.median(sitk.GetArrayViewFromImage(scan))), sitk.sitkUInt8)
    write_image(label, ws.root / "delivered" / "mine" / f"{case.id}.nii.gz")
    table = guide.delivered_grid_check(ws, [manifest])
    row = table.iloc[0]
    assert row["label file"].endswith(f"delivered/mine/{case.id}.nii.gz")
    assert row["same grid as the scan"] and row["scan orientation"] == row["label orientation"] != "LPS"
    assert row["values"] == "0, 1"
    label.SetOrigin(tuple(o + 5 for o in label.GetOrigin()))
    write_image(label, ws.root / "delivered" / "mine" / f"{case.id}.nii.gz")
    assert not guide.delivered_grid_check(ws, [manifest]).iloc[0]["same grid as the scan"]


def test_stage0_sentence_follows_the_numbers() -> None:
    def dsc(values: dict[str, float]) -> pd.DataFrame:
        return pd.DataFrame([{"case": c, "class": k, "dsc": v} for c, v in values.items() for k in (1, 2)])

    text = guide.stage0_sentence(dsc({"a": 0.95, "b": 0.30, "c": 0.10}), "a")
    assert text.startswith("Stage 0 reaches a mean class DSC of at least 0.7 on 1 of 3 scans; it fails on b (0.30), c")
    assert "The scan with the drawn slice, a, scores 0.95; the other scans 0.10–0.30." in text
    assert guide.stage0_sentence(dsc({"a": 0.95, "b": 0.80}), "a") == (
        "Stage 0 reaches a mean class DSC of at least 0.7 on 2 of 2 scans."
    )


def record(step: str, seconds: float, peak: float = 1000.0, **extra) -> dict:
    return {
        "step": step,
        "dataset": "d",
        "started": "2026-01-01T00:00:00+00:00",
        "seconds": seconds,
        "peak_mb": peak,
    } | extra


def test_cost_from_step_records_resumed_steps_and_their_fallback() -> None:
    records = [
        record("prepare", 0.1, parameters={"resumed": True}),
        record("stage0", 50.0),
        record("stage0", 30.0, resumed=False),
        record("nnunet1_train", 100.0, 3000.0),
        record("nnunet2_train", 40.0),
        record("nnunet1_predict", 20.0),
        record("nnunet2_predict", 10.0),
        record("supervised_train", 999.0),
    ]
    costs = guide.cost_table(records, scans=10).set_index("step")
    assert costs.loc["stage 0 (promptable model)", "seconds per scan"] == 8.0
    assert costs.loc["nnU-Net training, each stage", "seconds in this run"] == 70.0
    assert costs.loc["nnU-Net training, each stage", "peak memory (MB)"] == 3000
    assert costs.loc["nnU-Net prediction, each stage", "seconds per scan"] == 1.5
    assert np.isnan(costs.loc["prepare", "seconds in this run"]) and "not timed" in costs.loc["prepare", "note"]
    fallback = ([record("prepare", 6.0)], 3, "the example scans")
    timed = guide.cost_table(records, 10, fallback).set_index("step")
    assert timed.loc["prepare", "seconds per scan"] == 2.0
    assert timed.loc["prepare", "note"] == "timed on the example scans (3 scans)"
    text = guide.cohort_sentence(timed.reset_index(), stages=2, device="cpu", iterations=750, cores=2)
    hours = (2.0 + 8.0 + 2 * 1.5) * guide.PAPER_SCANS / 3600
    assert f"would take about {hours:.1f} h for the paper's 1,219 scans" in text
    assert "333 times that" in text and "2 CPU cores" in text and "Not included" not in text
    assert "Not included: prepare" in guide.cohort_sentence(costs.reset_index(), 2, "cpu", 750, 2)


def test_template_is_the_shipped_file() -> None:
    text = guide.template_text()
    assert text.startswith("# TEMPLATE: a dataset manifest") and "fat:" in text and "subject:" in text


def test_stage1_iterations_of_the_real_profiles() -> None:
    from nnsam2_utils.workflow.profile import load_profile

    demo = load_profile("demo").refine
    assert guide.stage1_iterations(demo) == demo.epochs * demo.iterations_per_epoch
    assert guide.stage1_iterations(load_profile("paper").refine) == guide.NNUNET_DEFAULT_ITERATIONS


def test_stage0_confidence_per_scan_and_whether_it_points_at_the_worst_scan() -> None:
    def frames(case: str, ious: list[tuple[float, float]]) -> list[dict]:
        rows = [{"case": case, "slice": 0, "class": k, "iou": None, "prompted": True} for k in (1, 2)]
        for i, pair in enumerate(ious, 1):
            rows += [{"case": case, "slice": i, "class": k, "iou": v, "prompted": False} for k, v in zip((1, 2), pair)]
        return rows

    confidence = pd.DataFrame(frames("a", [(0.9, 0.9), (0.8, 0.8)]) + frames("b", [(0.5, 0.6), (0.9, 0.2)]))
    dsc = pd.DataFrame([{"case": c, "class": k, "dsc": v} for c, v in (("a", 0.9), ("b", 0.4)) for k in (1, 2)])
    table = guide.confidence_table(confidence, dsc)
    # a: frames 1.8 and 1.6 → mean 1.7, lowest 1.6; b: 1.1 and 1.1; prompted frames (no IoU) left out
    assert table.index.tolist() == ["b", "a"]
    assert table.loc["a", "mean confidence"] == pytest.approx(1.7) and table.loc["a", "lowest slice"] == 1.6
    assert table.loc["b", "DSC"] == pytest.approx(0.4)
    assert "points the right way" in guide.confidence_sentence(table)
    wrong = dsc.assign(dsc=dsc["case"].map({"a": 0.3, "b": 0.9}))
    text = guide.confidence_sentence(guide.confidence_table(confidence, wrong))
    assert "its worst scan is a (DSC 0.30" in text and "would have missed it" in text
    assert "scan to look at first" in guide.confidence_sentence(guide.confidence_table(confidence))
