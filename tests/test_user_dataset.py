"""A dataset assembled the way a user brings one: generated scans rewritten in an unfamiliar form.

From the tiny phantom cohort (backpain_t2w, three scans), a user-style dataset is written:
one scan as a DICOM series stored sagittally, one as NIfTI in another orientation and with another
file name, one as MHA; four-class labels with the user's own values (11, 12, 21, 22); disc levels in
a CSV with the user's own column names, counted along each file's own superior–inferior axis; and
the one annotated slice as a label volume with a single labelled slice. It must pass
``data check``, prepare to exactly the same LPS volumes as the original files, and go through
stage 0 (LiteMedSAM on the CPU) from the user's slice.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from nnsam2_utils.data.checks import check_manifest
from nnsam2_utils.data.geometry import slice_axis, to_stack
from nnsam2_utils.data.io import read_image
from nnsam2_utils.data.manifest import load_manifest
from nnsam2_utils.data.synthetic.own_example import assemble_example
from nnsam2_utils.prepare.dataset import prepare_case


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    """The tiny phantom's backpain_t2w dataset (3 scans) and its manifest."""
    from nnsam2_utils.data.synthetic.cohort import generate_cohort

    folder = tmp_path_factory.mktemp("phantom")
    return generate_cohort(folder, size="tiny", seed=0, datasets=["backpain_t2w"])[0]


@pytest.fixture(scope="module")
def user_dataset(phantom, tmp_path_factory) -> Path:
    return assemble_example(phantom, tmp_path_factory.mktemp("user"))


def test_the_files_are_in_an_unfamiliar_form(user_dataset):
    root = user_dataset.parent
    dicom = sorted((root / "scans" / "Patient1" / "T2_TSE_ax").glob("*.dcm"))
    assert len(dicom) > 10  # sagittal storage: one file per left–right position
    sagittal = read_image(dicom[0].parent)
    assert slice_axis(sagittal) == 1  # superior–inferior is a stored in-plane axis
    ras = read_image(root / "scans" / "Patient2" / "Patient2_t2.nii")
    assert np.allclose(np.diag(np.asarray(ras.GetDirection()).reshape(3, 3)), (-1, -1, 1))  # RAS+ storage (not LPS)
    values = set(np.unique(sitk.GetArrayFromImage(read_image(root / "segmentations" / "Patient3-muscles.nrrd"))))
    assert values == {0, 11, 12, 21, 22}
    assert list(pd.read_csv(root / "discs.csv").columns) == ["scan", "disc_L3_L4", "disc_L4_L5", "disc_L5_S1"]


def test_manifest_takes_discs_from_the_csv(user_dataset):
    manifest = load_manifest(user_dataset)
    table = pd.read_csv(user_dataset.parent / "discs.csv").set_index("scan")
    for case in manifest.cases:
        assert case.discs.L3L4 == table.loc[case.id, "disc_L3_L4"]
        assert case.discs.L5S1 == table.loc[case.id, "disc_L5_S1"]
    assert manifest.annotation.case == "Patient2"


def test_two_csv_rows_for_one_scan_are_an_error(user_dataset, tmp_path):
    """The last row used to win silently; which one is right cannot be guessed."""
    import shutil

    from nnsam2_utils.errors import ManifestError

    copy = tmp_path / "user"
    shutil.copytree(user_dataset.parent, copy)
    csv = copy / "discs.csv"
    lines = csv.read_text(encoding="utf-8").splitlines()
    csv.write_text("\n".join([*lines, lines[1]]) + "\n", encoding="utf-8")
    with pytest.raises(ManifestError, match=rf"rows 2 and {len(lines) + 1} both describe scan"):
        load_manifest(copy / user_dataset.name)


def test_data_check_passes(user_dataset):
    assert check_manifest(user_dataset) == []


def test_prepared_volumes_equal_those_of_the_original_files(user_dataset, phantom):
    """Orientation, DICOM, names, label values and the CSV change nothing in what the pipeline sees."""
    user, original = load_manifest(user_dataset), load_manifest(phantom)
    for mine, theirs in zip(user.cases, original.cases):
        a, b = prepare_case(user, mine), prepare_case(original, theirs)
        assert a.image.GetSize() == b.image.GetSize()
        np.testing.assert_allclose(a.image.GetOrigin(), b.image.GetOrigin(), atol=1e-3)
        np.testing.assert_array_equal(to_stack(a.image), to_stack(b.image))
        np.testing.assert_array_equal(to_stack(a.label), to_stack(b.label))
        np.testing.assert_array_equal(to_stack(a.muscles), to_stack(b.muscles))
        assert set(np.unique(to_stack(a.label))) == {0, 1, 2}


def test_user_annotation_is_the_labelled_slice(user_dataset):
    from nnsam2_utils.data.annotation import prepare_annotation

    manifest = load_manifest(user_dataset)
    prepared, index = prepare_annotation(manifest)
    stack = to_stack(prepared)
    assert [i for i in range(len(stack)) if stack[i].any()] == [index]
    assert index == 1  # one slice below the L3/L4 disc slice, which is stack slice 0
    label = to_stack(prepare_case(manifest, manifest.case("Patient2")).label)
    np.testing.assert_array_equal(stack[index], label[index])


def narrow(case, slices: int = 3):
    """The case with its region cut to ``slices`` slices from L3/L4 down (keeps the CPU test short)."""
    d = case.discs
    step = 1 if d.L5S1 > d.L3L4 else -1
    return case.model_copy(update={"discs": d.model_copy(update={"L4L5": None, "L5S1": d.L3L4 + step * (slices - 1)})})


def test_stage0_runs_from_the_user_slice(user_dataset, tmp_path):
    """prepare → stage 0 (LiteMedSAM, CPU) on two scans (regions cut to 3 slices), from the user's
    annotated scan and slice: the prompt is the user's slice, and both classes land on the right side."""
    from nnsam2_utils.data.io import read_json
    from nnsam2_utils.evaluate.metrics import dice_per_class
    from nnsam2_utils.prepare.annotation import user_annotation, write_prepared_annotation
    from nnsam2_utils.prepare.dataset import prepare_dataset
    from nnsam2_utils.prepare.model_input import load_stack
    from nnsam2_utils.propagate import make_propagator
    from nnsam2_utils.propagate.run import propagate_dataset

    manifest = load_manifest(user_dataset)
    manifest = manifest.model_copy(
        update={"cases": [narrow(manifest.case("Patient2")), narrow(manifest.case("Patient3"))]}
    )
    prepared = tmp_path / "prepared"
    prepare_dataset(manifest, prepared)
    write_prepared_annotation(manifest, prepared)
    reference, annotated = user_annotation(prepared, manifest)
    assert (reference, annotated) == ("Patient2", 1)
    out = tmp_path / "stage0"
    confidence = propagate_dataset(
        make_propagator({"backend": "litemedsam"}),
        prepared,
        out,
        manifest.name,
        ["Patient2", "Patient3"],
        reference,
        annotated,
        "annotation",
    )
    note = read_json(out / "annotation.json")
    assert note["annotation_volume"] == "annotation" and note["annotated_slice"] == 1
    assert note["classes_in_annotation"] == [1, 2]
    prompted = confidence[confidence["prompted"].astype(bool)]
    assert set(prompted["case"]) == {"Patient2"} and set(prompted["slice"]) == {1}
    reference_pseudo = to_stack(read_image(out / "labels" / "Patient2.nii.gz"))
    user_slice, _ = load_stack(prepared / "Patient2", "annotation")
    assert min(dice_per_class(reference_pseudo[1], user_slice[1], (1, 2)).values()) > 0.9  # the prompt itself
    target = to_stack(read_image(out / "labels" / "Patient3.nii.gz"))
    columns = {cls: np.nonzero(target == cls)[2].mean() for cls in (1, 2)}  # LPS columns run right → left
    assert columns[1] < target.shape[2] / 2 < columns[2], columns


def test_damaged_copy_is_caught_kind_by_kind(user_dataset, tmp_path):
    from nnsam2_utils.data.synthetic.own_example import damaged_copy

    before = {p: p.read_bytes() for p in user_dataset.parent.rglob("*") if p.is_file()}
    damaged = damaged_copy(user_dataset, tmp_path / "damaged")
    problems = {p.kind: p for p in check_manifest(damaged)}
    assert sorted(problems) == ["checksum", "geometry", "label-values", "unreadable"]
    assert problems["unreadable"].file.endswith("Patient2_t2.nii")
    assert problems["checksum"].file.endswith("Patient3_t2.mha")
    assert problems["geometry"].file.endswith("Patient3-muscles.nrrd") and "origin" in problems["geometry"].what
    assert problems["label-values"].file.endswith("Patient1-muscles.nrrd") and "[99]" in problems["label-values"].what
    assert {
        p: p.read_bytes() for p in user_dataset.parent.rglob("*") if p.is_file()
    } == before  # the original untouched
