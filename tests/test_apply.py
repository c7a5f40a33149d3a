"""``nnsam2 predict`` and ``nnsam2 export`` (docs/method.md §13) on a run built here in seconds.

The run: profile ``applied`` (a temporary config folder and work folder, as ``NNSAM2_CONFIG_DIR`` and
``NNSAM2_WORK`` let a reader do), its data the tiny phantom's backpain_t2w (seed 0), and its final stage an nnU-Net
trained on those scans' labels for two iterations (about half a minute): nearly untrained, so its labels are
arbitrary but non-empty and deterministic, which is what the checks of grids, files, errors and the nnU-Net round
trip need. The new scans are another draw of the phantom (seed 1), never seen by the run. How well ``predict``
segments them, compared with the run's own DSC, needs a trained model: that test is marked slow.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import yaml

from nnsam2_utils.apply.export import export_model
from nnsam2_utils.apply.inputs import check_scan, load_scan, parse_discs, parse_slices
from nnsam2_utils.apply.outputs import labels_on_input_grid
from nnsam2_utils.apply.predict import predict
from nnsam2_utils.data.checks import path_sha256
from nnsam2_utils.data.geometry import canonical, grid_differences
from nnsam2_utils.data.io import read_image, sha256, write_image
from nnsam2_utils.errors import CheckpointError, ConfigError, DataError, GeometryError

PROFILE = "applied"
DATASET = "backpain_t2w"


def refine_settings(epochs: int, iterations: int) -> dict:
    """A small 2-D nnU-Net budget (the tiny profile's kind)."""
    return {
        "stages": 3,
        "configuration": "2d",
        "epochs": epochs,
        "iterations_per_epoch": iterations,
        "val_iterations": 1,
        "batch_size": 8,
        "max_features": 16,
        "target_spacing_mm": 4.0,
        "rotation_deg": 15,
        "augmentation_workers": 0,
        "precision": "auto",  # bf16 where the CPU has it, as the demo
        "device": "cpu",
    }


def write_profile(config: Path, name: str, refine: dict) -> Path:
    """A run profile whose cohort is the tiny phantom's backpain_t2w."""
    config.mkdir(parents=True, exist_ok=True)
    settings = {
        "profile": name,
        "seed": 0,
        "cohort": {"generate": True, "size": "tiny", "datasets": [DATASET]},
        "refine": refine,
    }
    path = config / f"{name}.yaml"
    path.write_text(yaml.safe_dump(settings, sort_keys=False), encoding="utf-8")
    return path


def train_final_stage(name: str, refine: dict):
    """Generate the run's cohort (seed 0) and train its final nnU-Net on the scans' labels; returns the workspace."""
    from nnsam2_utils.data.manifest import load_manifest
    from nnsam2_utils.data.synthetic.cohort import generate_cohort
    from nnsam2_utils.prepare.dataset import prepare_case
    from nnsam2_utils.refine.nnunet import TrainingCase, fit
    from nnsam2_utils.refine.stages import dataset_id, stage_budget
    from nnsam2_utils.workflow.workspace import Workspace

    ws = Workspace.for_profile(name)
    generate_cohort(ws.data, size="tiny", seed=0, datasets=[DATASET])
    manifest = load_manifest(ws.manifest(DATASET))
    cases = []
    for case in manifest.cases:
        prepared = prepare_case(manifest, case)
        cases.append(TrainingCase(case.id, prepared.image, sitk.GetArrayFromImage(prepared.label)))
    budget = stage_budget(refine, 3)
    folder = fit(ws.stage("nnunet3") / "nnunet", dataset_id("nnunet3"), "nnunet3", cases, budget)
    return ws, folder


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The ``applied`` run with its final nnU-Net, the run's tables, and new scans (seed 1) of three datasets."""
    from nnsam2_utils.data.synthetic.cohort import generate_cohort

    root = tmp_path_factory.mktemp("apply")
    patch = pytest.MonkeyPatch()
    patch.setenv("NNSAM2_CONFIG_DIR", str(root / "config"))
    patch.setenv("NNSAM2_WORK", str(root / "work"))
    try:
        write_profile(root / "config", PROFILE, refine_settings(epochs=1, iterations=2))
        ws, folder = train_final_stage(PROFILE, refine_settings(epochs=1, iterations=2))
        ws.tables.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(
            [{"dataset": DATASET, "reference scan": "t2w_002", "annotated slice": 0, "backend": "litemedsam"}]
        ).to_csv(ws.tables / "annotated_slices.csv", index=False)
        pd.DataFrame(
            [
                {"dataset": DATASET, "case": case, "class": cls, "stage": "nnunet3", "dsc": value}
                for case, values in (("t2w_001", (0.91, 0.93)), ("t2w_002", (0.95, 0.97)))
                for cls, value in zip((1, 2), values)
            ]
        ).to_csv(ws.tables / "dsc.csv", index=False)
        new = root / "new"
        generate_cohort(new, size="tiny", seed=1, datasets=[DATASET, "totalseg_ct", "bedrest_dixon"])
        yield SimpleNamespace(root=root, ws=ws, folder=folder, new=new)
    finally:
        patch.undo()


def scan_file(run, dataset: str = DATASET, case: str = "t2w_001", kind: str = "images") -> Path:
    return run.new / dataset / kind / f"{case}.nii.gz"


def other_orientation(image: sitk.Image) -> sitk.Image:
    """The same voxels stored another way: superior–inferior first, then anterior–posterior reversed."""
    return sitk.Flip(sitk.PermuteAxes(image, [2, 0, 1]), [False, True, False])


def same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    return not grid_differences(a, b)


# ------------------------------------------------------------------------------------------------------------------
# predict
# ------------------------------------------------------------------------------------------------------------------


def test_predict_writes_labels_on_each_scans_own_grid(run, tmp_path):
    """A NIfTI scan, the same scan stored in another orientation (NRRD) and as a DICOM series: each one's labels on
    its own grid, the same muscles in all three; measurements, overlays, provenance and the log beside them."""
    from PIL import Image

    from nnsam2_utils.data.dicom import write_series

    nifti = scan_file(run)
    image = read_image(nifti)
    turned = tmp_path / "in" / "t2w_001_turned.nrrd"
    write_image(other_orientation(image), turned)
    dicom = write_series(image, tmp_path / "in" / "t2w_001_dicom", modality="MRI")
    digests = {path: path_sha256(path) for path in (nifti, turned, dicom)}
    out = tmp_path / "out"
    result = predict([nifti, turned, dicom], out, profile=PROFILE, progress=False)

    labels = {}
    for path, name in ((nifti, "t2w_001"), (turned, "t2w_001_turned"), (dicom, "t2w_001_dicom")):
        written = read_image(out / f"{name}_lpm.nii.gz")
        assert same_grid(written, read_image(path)), name
        labels[name] = sitk.GetArrayFromImage(canonical(written))
        assert set(np.unique(labels[name])) <= {0, 1, 2}
    assert labels["t2w_001"].any()  # the comparisons below compare muscles, not empty volumes
    assert np.array_equal(labels["t2w_001"], labels["t2w_001_turned"])
    assert np.array_equal(labels["t2w_001"], labels["t2w_001_dicom"])
    assert {path: path_sha256(path) for path in digests} == digests  # inputs untouched

    checkpoint = run.folder / "fold_all" / "checkpoint_final.pth"
    digest = sha256(checkpoint)
    table = pd.read_csv(out / "measurements.csv", dtype={"scan": str})
    assert set(table["scan"]) == {"t2w_001", "t2w_001_turned", "t2w_001_dicom"}
    assert set(table["measure"]) == {"volume_ml"}  # a T2w scan without a fat image: volume only
    assert (table["model_sha256"] == digest).all() and (table["stage"] == "nnunet3").all()
    voxel_ml = float(np.prod(image.GetSpacing())) / 1000
    for cls in (1, 2):
        row = table[(table["scan"] == "t2w_001") & (table["class"] == cls)]
        assert row["value"].item() == pytest.approx((labels["t2w_001"] == cls).sum() * voxel_ml)

    record = json.loads((out / "provenance.json").read_text(encoding="utf-8"))
    assert record["model"]["sha256"] == digest and record["stage"] == "nnunet3" and record["profile"] == PROFILE
    assert {s["scan"]: s["input_sha256"] for s in record["scans"]} == {
        "t2w_001": digests[nifti],
        "t2w_001_turned": digests[turned],
        "t2w_001_dicom": digests[dicom],
    }
    assert record["scans"][0]["slices"] == "whole volume" and record["packages"]["nnunetv2"] != "not installed"
    assert digest[:40] in read_image(out / "t2w_001_lpm.nii.gz").GetMetaData("descrip")
    with Image.open(out / "t2w_001_overlay.png") as png:
        assert digest[:40] in png.text["Description"]
    assert "whole volume (no slice range given)" in (out / "predict.log").read_text(encoding="utf-8")
    assert sorted(result.files) == sorted(
        [out / f"{n}_{kind}" for n in labels for kind in ("lpm.nii.gz", "overlay.png")]
        + [out / "measurements.csv", out / "provenance.json"]
    )


def test_an_existing_output_is_refused_without_force(run, tmp_path, capsys):
    """Through the command line: a second prediction into the same folder names the file it would overwrite and
    writes nothing; with --force it replaces the outputs. --slices keeps the labels inside the range given."""
    from nnsam2_utils.cli import main

    nifti = scan_file(run)
    out = tmp_path / "out"
    command = ["predict", str(nifti), "-o", str(out), "--profile", PROFILE, "--slices", "2:5"]
    assert main(command) == 0
    assert str(out / "t2w_001_lpm.nii.gz") in capsys.readouterr().out  # the written paths are printed
    stamp = (out / "t2w_001_lpm.nii.gz").stat().st_mtime_ns
    assert main(command) == 2
    assert f"{out / 't2w_001_lpm.nii.gz'}: exists already" in capsys.readouterr().err
    assert (out / "t2w_001_lpm.nii.gz").stat().st_mtime_ns == stamp
    assert main([*command, "--force"]) == 0
    labels = sitk.GetArrayFromImage(read_image(out / "t2w_001_lpm.nii.gz"))  # stored z = the slice number
    assert not labels[:2].any() and not labels[6:].any()
    assert "slices 2–5" in (out / "predict.log").read_text(encoding="utf-8")


def test_dixon_fat_ratio_and_ct_attenuation(run, tmp_path):
    """A Dixon water image with its fat image gets the fat ratio per class; a CT (recognised by its HU) the mean HU."""
    water = scan_file(run, "bedrest_dixon", "br01_tp1")
    fat = scan_file(run, "bedrest_dixon", "br01_tp1", kind="fat")
    dixon = predict([water], tmp_path / "dixon", profile=PROFILE, fats=[fat], progress=False).measurements
    assert set(dixon["measure"]) == {"volume_ml", "fat_ratio"}
    ratios = dixon.loc[(dixon["measure"] == "fat_ratio") & dixon["value"].notna(), "value"]
    assert ((ratios > 0) & (ratios < 1)).all()
    ct = predict([scan_file(run, "totalseg_ct", "ts_001")], tmp_path / "ct", profile=PROFILE, progress=False)
    assert set(ct.measurements["measure"]) == {"volume_ml", "hu_mean"}
    hu = ct.measurements.loc[ct.measurements["measure"] == "hu_mean", "value"].dropna()
    assert ((hu > -1024) & (hu < 2000)).all()


def test_labels_go_back_onto_a_scan_stored_in_any_orientation(run, tmp_path):
    """The geometry alone, with the phantom's true labels: prepared (LPS) labels written back onto a scan stored
    in another orientation are that scan's own labels, voxel for voxel."""
    truth = other_orientation(read_image(scan_file(run, kind="labels")))
    stored = tmp_path / "turned.nrrd"
    write_image(other_orientation(read_image(scan_file(run))), stored)
    scan = load_scan(check_scan(stored))
    prepared_truth = canonical(truth)
    assert same_grid(prepared_truth, scan.prepared)
    restored = labels_on_input_grid(prepared_truth, scan.image, "note")
    assert same_grid(restored, scan.image)
    assert np.array_equal(sitk.GetArrayFromImage(restored), sitk.GetArrayFromImage(truth))
    assert restored.GetMetaData("ITK_FileNotes") == "note"


def _two_series_folder(tmp_path: Path, image: sitk.Image) -> Path:
    from nnsam2_utils.data.dicom import write_series

    mixed = tmp_path / "two_series"
    mixed.mkdir()
    for i in range(2):
        for f in sorted(write_series(image, tmp_path / f"series{i}").iterdir()):
            shutil.copy(f, mixed / f"s{i}_{f.name}")
    return mixed


def test_bad_inputs_are_refused_with_the_file_named(run, tmp_path):
    """Each bad input stops the prediction before anything is written, with a message naming the file."""
    nifti = scan_file(run)
    image = read_image(nifti)
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not an image at all")
    empty = tmp_path / "empty_folder"
    empty.mkdir()
    flat = tmp_path / "one_slice.nrrd"
    write_image(image[:, :, 3], flat)
    shifted_fat = tmp_path / "fat_on_another_grid.nii.gz"
    fat = read_image(scan_file(run, "bedrest_dixon", "br01_tp1", kind="fat"))
    fat.SetSpacing([s * 1.5 for s in fat.GetSpacing()])
    write_image(fat, shifted_fat)
    mr_series = tmp_path / "mr_series"
    from nnsam2_utils.data.dicom import write_series

    write_series(image, mr_series, modality="MRI")
    cases = [
        ({"inputs": [broken]}, DataError, r"broken\.nii\.gz: cannot be read as an image"),
        ({"inputs": [tmp_path / "missing.nii.gz"]}, DataError, r"missing\.nii\.gz: not found"),
        ({"inputs": [empty]}, DataError, r"empty_folder: the folder is empty"),
        ({"inputs": [_two_series_folder(tmp_path, image)]}, DataError, r"two_series: holds 2 DICOM series"),
        ({"inputs": [flat]}, DataError, r"one_slice\.nrrd: expected a 3-D image, found 2-D"),
        (
            {"inputs": [scan_file(run, "bedrest_dixon", "br01_tp1")], "fats": [shifted_fat]},
            GeometryError,
            r"fat_on_another_grid\.nii\.gz does not match the grid of .*br01_tp1\.nii\.gz: spacing",
        ),
        ({"inputs": [nifti], "fats": [nifti, nifti]}, DataError, r"--fat: 2 fat image\(s\) for 1 scan\(s\)"),
        ({"inputs": [nifti], "modality": "CT"}, DataError, r"t2w_001\.nii\.gz: given as CT, but its lowest value"),
        (
            {"inputs": [scan_file(run, "totalseg_ct", "ts_001")], "modality": "MRI"},
            DataError,
            r"ts_001\.nii\.gz: given as MRI, but it holds values down to -1024",
        ),
        ({"inputs": [mr_series], "modality": "CT"}, DataError, r"mr_series: given as CT .* DICOM header says MRI"),
        ({"inputs": [nifti], "slices": (2, 40)}, GeometryError, r"t2w_001\.nii\.gz: --slices 2:40 names slice 40"),
        ({"inputs": [nifti, nifti]}, DataError, r"t2w_001\.nii\.gz: its outputs would be named t2w_001_lpm"),
    ]
    for i, (arguments, error, message) in enumerate(cases):
        out = tmp_path / f"out{i}"
        with pytest.raises(error, match=message):
            predict(out=out, profile=PROFILE, progress=False, **arguments)
        assert not list(out.glob("*_lpm.nii.gz")) and not (out / "measurements.csv").exists()
        assert " ERROR " in (out / "predict.log").read_text(encoding="utf-8")  # the log says why
    with pytest.raises(ValueError, match="expected FIRST:LAST"):
        parse_slices("3-12")


def test_predict_measures_each_disc_level_given(run, tmp_path):
    """With --discs, CSA per class at each disc level, averaged over the slices within ±slab of the disc: the values
    of the written labels, slice by slice, on the scan's own grid; a slab at the scan's edge is cut and says so."""
    nifti = scan_file(run)
    image = read_image(nifti)
    n, (sx, sy, sz) = image.GetSize()[2], image.GetSpacing()
    discs = {"L3L4": n - 3, "L4L5": n // 2, "L5S1": 0}
    out = tmp_path / "out"
    result = predict([nifti], out, profile=PROFILE, discs=[discs], slab_mm=sz, progress=False)

    labels = sitk.GetArrayFromImage(read_image(out / "t2w_001_lpm.nii.gz"))  # stored z = the slice number
    table = pd.read_csv(out / "level_measurements.csv", dtype={"scan": str}, keep_default_na=False, na_values=[""])
    assert len(table) == 3 * 2 and set(table["measure"]) == {"csa_mm2"}  # a T2w scan: CSA only
    assert (table["scan"] == "t2w_001").all() and (table["stage"] == "nnunet3").all()
    assert (table["model_sha256"] == sha256(run.folder / "fold_all" / "checkpoint_final.pth")).all()
    for level, k in discs.items():
        slab = [z for z in (k - 1, k, k + 1) if 0 <= z < n]  # ± one slice spacing: three slices inside the scan
        for cls in (1, 2):
            row = table[(table["level"] == level) & (table["class"] == cls)]
            assert row["value"].item() == pytest.approx(np.mean([(labels[z] == cls).sum() for z in slab]) * sx * sy)
            assert row["slices"].item() == len(slab)
    edge = table.loc[table["level"] == "L5S1", "note"]
    assert edge.str.startswith("slab clipped at the volume edge: 2 of 3 slices").all()
    assert_frame_equal_values(result.level_measurements, table)
    record = json.loads((out / "provenance.json").read_text(encoding="utf-8"))
    assert record["scans"][0]["discs"] == discs and record["slab_half_width_mm"] == sz
    assert record["level_measurements"] == "level_measurements.csv"
    assert out / "level_measurements.csv" in result.files


def assert_frame_equal_values(returned: pd.DataFrame, read: pd.DataFrame) -> None:
    """The table predict returned holds the values of the file it wrote."""
    assert list(returned.columns) == list(read.columns)
    assert np.allclose(returned["value"].to_numpy(float), read["value"].to_numpy(float), equal_nan=True)


def test_disc_levels_outside_the_slices_segmented_are_nan_with_the_reason(run, tmp_path, capsys):
    """Through the command line, with --slices: a disc inside the range is measured on its slice (--slab-mm 0), the
    discs outside it get NaN and the reason; no disc given means no per-level table."""
    from nnsam2_utils.cli import main

    nifti = scan_file(run)
    image = read_image(nifti)
    n, (sx, sy, _) = image.GetSize()[2], image.GetSpacing()
    out = tmp_path / "out"
    discs = f"L3L4={n - 1},L4L5=4,L5S1=0"
    command = ["predict", str(nifti), "-o", str(out), "--profile", PROFILE, "--slices", "2:5", "--discs", discs]
    assert main([*command, "--slab-mm", "0"]) == 0
    labels = sitk.GetArrayFromImage(read_image(out / "t2w_001_lpm.nii.gz"))
    table = pd.read_csv(out / "level_measurements.csv", keep_default_na=False, na_values=[""])
    inside = table[table["level"] == "L4L5"].set_index("class")
    for cls in (1, 2):
        assert inside.loc[cls, "value"] == pytest.approx((labels[4] == cls).sum() * sx * sy)
        assert inside.loc[cls, "slices"] == 1
    outside = table[table["level"] != "L4L5"]
    assert len(outside) == 4 and outside["value"].isna().all() and (outside["slices"] == 0).all()
    assert outside["note"].str.startswith("no slice within ±0 mm of the disc").all()
    plain = predict([nifti], tmp_path / "plain", profile=PROFILE, progress=False)
    assert plain.level_measurements is None and not (tmp_path / "plain" / "level_measurements.csv").exists()
    assert (
        json.loads((tmp_path / "plain" / "provenance.json").read_text(encoding="utf-8"))["level_measurements"] is None
    )


def test_bad_disc_levels_are_refused_with_the_file_named(run, tmp_path, capsys):
    """A disc outside the scan, discs out of anatomical order, a count of disc lists that is not the count of scans,
    an existing per-level table: stopped before anything is written. Malformed --discs and --slab-mm values are
    refused by the command line with the expected form."""
    from nnsam2_utils.cli import main

    nifti = scan_file(run)
    n = read_image(nifti).GetSize()[2]
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "level_measurements.csv").write_text("kept\n", encoding="utf-8")
    cases = [
        (
            {"discs": [{"L3L4": n + 3, "L5S1": 0}]},
            GeometryError,
            rf"t2w_001\.nii\.gz: --discs L3L4={n + 3},L5S1=0 names slice {n + 3} for L3L4, but the scan has {n} slices",
        ),
        (
            {"discs": [{"L3L4": 1, "L4L5": n - 2}]},
            GeometryError,
            rf"t2w_001\.nii\.gz: --discs L3L4=1,L4L5={n - 2}: L3L4 \(slice 1\) does not lie superior to L4L5",
        ),
        (
            {"discs": [{"L3L4": 5}, {"L3L4": 5}]},
            DataError,
            r"--discs: disc levels for 2 scan\(s\) but 1 scan\(s\) given",
        ),
    ]
    for i, (arguments, error, message) in enumerate(cases):
        out = tmp_path / f"out{i}"
        with pytest.raises(error, match=message):
            predict([nifti], out=out, profile=PROFILE, progress=False, **arguments)
        assert not list(out.glob("*_lpm.nii.gz")) and not (out / "level_measurements.csv").exists()
        assert " ERROR " in (out / "predict.log").read_text(encoding="utf-8")
    with pytest.raises(DataError, match=r"level_measurements\.csv: exists already"):
        predict([nifti], existing, profile=PROFILE, discs=[{"L4L5": 3}], progress=False)
    assert (existing / "level_measurements.csv").read_text(encoding="utf-8") == "kept\n"
    assert not (existing / "t2w_001_lpm.nii.gz").exists()

    assert parse_discs("L3/L4=12, l4l5=8,L5S1=3") == {"L3L4": 12, "L4L5": 8, "L5S1": 3}
    for text, message in (
        ("L3L4=12,L4L5", r"'L4L5' is not LEVEL=SLICE"),
        ("L2L3=4", r"unknown disc level 'L2L3'"),
        ("L3L4=-1", r"L3L4 slice '-1' is not a slice number"),
        ("L3L4=1,l3/l4=2", r"L3L4 is given twice"),
    ):
        with pytest.raises(ValueError, match=message):
            parse_discs(text)
    for option, message in ((["--discs", "L3L4=x"], "is not a slice number"), (["--slab-mm", "-1"], "finite distance")):
        with pytest.raises(SystemExit) as stopped:
            main(["predict", str(nifti), "-o", str(tmp_path / "cli"), "--profile", PROFILE, *option])
        assert stopped.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "cli").exists()


def test_a_profile_without_a_trained_model_or_with_a_changed_checkpoint_is_refused(run, tmp_path):
    """No model: the error names the missing checkpoint and the command that trains it. A checkpoint whose bytes
    changed after training: refused before it is loaded (nnU-Net checkpoints are unpickled)."""
    from nnsam2_utils.refine.nnunet import model_folder
    from nnsam2_utils.refine.stages import dataset_id, stage_budget
    from nnsam2_utils.workflow.workspace import Workspace

    config = run.root / "config"
    write_profile(config, "untrained", refine_settings(1, 2))
    with pytest.raises(
        CheckpointError, match=r"untrained/nnunet3/.*/fold_all/checkpoint_final\.pth: no trained nnunet3"
    ):
        predict([scan_file(run)], tmp_path / "a", profile="untrained", progress=False)
    with pytest.raises(CheckpointError, match=r"make book PROFILE=untrained"):
        export_model(tmp_path / "a.zip", profile="untrained")

    write_profile(config, "tampered", refine_settings(1, 2))
    budget = stage_budget(refine_settings(1, 2), 3)
    root = Workspace.for_profile("tampered").stage("nnunet3") / "nnunet"
    for part in ("results", "checkpoint_record"):  # the run's nnU-Net root, its record of checkpoints included
        shutil.copytree(run.folder.parents[2] / part, root / part)
    copy = model_folder(root, dataset_id("nnunet3"), "nnunet3", budget)
    with open(copy / "fold_all" / "checkpoint_final.pth", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(CheckpointError, match=r"checkpoint_final\.pth: SHA-256 differs .* changed or replaced"):
        predict([scan_file(run)], tmp_path / "b", profile="tampered", progress=False)
    with pytest.raises(CheckpointError, match="changed or replaced after training"):
        export_model(tmp_path / "b.zip", profile="tampered")
    assert not (tmp_path / "b.zip").exists()

    write_profile(config, "copied", refine_settings(1, 2))  # the model folder alone, its checksum file beside it
    copy = model_folder(
        Workspace.for_profile("copied").stage("nnunet3") / "nnunet", dataset_id("nnunet3"), "nnunet3", budget
    )
    shutil.copytree(run.folder, copy)
    with pytest.raises(CheckpointError, match=r"fold_all/checkpoint_final\.pth: not written by this run's training"):
        predict([scan_file(run)], tmp_path / "c", profile="copied", progress=False)


class _Payload:
    """Unpickling this runs code: it would create the marker file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_planted_checkpoint_never_runs_code_in_predict_or_export(run, tmp_path):
    """A ``checkpoint_final.pth`` placed where a profile's final model belongs: predict and export refuse it,
    naming the file; with its SHA-256 in the run record as well, predict still reads it as plain data only. The
    code its unpickling would run (creating the marker file) never runs."""
    import torch

    from nnsam2_utils.refine.checkpoint import record_checkpoint_digest
    from nnsam2_utils.refine.nnunet import model_folder
    from nnsam2_utils.refine.stages import dataset_id, stage_budget
    from nnsam2_utils.workflow.workspace import Workspace

    write_profile(run.root / "config", "planted", refine_settings(1, 2))
    budget = stage_budget(refine_settings(1, 2), 3)
    root = Workspace.for_profile("planted").stage("nnunet3") / "nnunet"
    planted = model_folder(root, dataset_id("nnunet3"), "nnunet3", budget) / "fold_all" / "checkpoint_final.pth"
    planted.parent.mkdir(parents=True)
    marker = tmp_path / "code_ran"
    torch.save({"network_weights": {}, "payload": _Payload(marker)}, planted)
    named = r"planted/nnunet3/.*/fold_all/checkpoint_final\.pth: not written by this run's training"
    with pytest.raises(CheckpointError, match=named):
        predict([scan_file(run)], tmp_path / "a", profile="planted", progress=False)
    with pytest.raises(CheckpointError, match=named):
        export_model(tmp_path / "a.zip", profile="planted")
    assert not (tmp_path / "a.zip").exists()

    record_checkpoint_digest(planted)
    with pytest.raises(CheckpointError, match=r"fold_all/checkpoint_final\.pth: not a plain nnU-Net checkpoint"):
        predict([scan_file(run)], tmp_path / "b", profile="planted", progress=False)
    assert not marker.exists()
    assert not list((tmp_path / "b").glob("*_lpm.nii.gz"))


def test_the_delivered_stage_of_a_dataset_is_the_model_used_or_the_reason_there_is_none(run, tmp_path):
    """``--stage delivered --like DATASET`` applies the nnU-Net the run delivered for that dataset; where the run
    delivered stage 0 (which needs a prompted slice in every scan) it refuses and says how to apply one anyway."""
    from nnsam2_utils.apply.model import find_model

    delivered = run.ws.tables / "delivered.csv"
    with pytest.raises(ConfigError, match=r"delivered\.csv: missing"):
        find_model(PROFILE, "delivered", like=DATASET)
    pd.DataFrame([{"dataset": DATASET, "delivered": "nnunet3"}, {"dataset": "word_ct", "delivered": "stage0"}]).to_csv(
        delivered, index=False
    )
    try:
        assert find_model(PROFILE, "delivered", like=DATASET).stage == "nnunet3"
        with pytest.raises(ConfigError, match="needs --like DATASET"):
            find_model(PROFILE, "delivered")
        with pytest.raises(ConfigError, match=r"no dataset 'totalseg_ct'; the run's datasets: backpain_t2w, word_ct"):
            find_model(PROFILE, "delivered", like="totalseg_ct")
        with pytest.raises(ConfigError, match=r"delivered stage0 for word_ct .* Use --stage final or nnunet<k>"):
            predict([scan_file(run)], tmp_path / "out", profile=PROFILE, stage="delivered", like="word_ct")
        assert not (tmp_path / "out").exists()  # refused before anything is written
    finally:
        delivered.unlink()


# ------------------------------------------------------------------------------------------------------------------
# export
# ------------------------------------------------------------------------------------------------------------------


def test_the_export_installs_and_predicts_with_nnunets_own_tools(run, tmp_path, monkeypatch):
    """The zip installs with nnU-Net's own installer; nnU-Net's own predictor, finding the trainer through
    nnUNet_extTrainer, gives the same probabilities as the run's model and, post-processed, predict's labels."""
    import torch
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.model_sharing.model_import import install_model_from_zip_file

    from nnsam2_utils.apply.model import find_model
    from nnsam2_utils.propagate.postprocess import clean_volume
    from nnsam2_utils.refine.nnunet import load_predictor

    exported = export_model(tmp_path / "model.zip", profile=PROFILE)
    dataset, model = run.folder.parent.name, run.folder.name
    assert {
        f"{dataset}/{model}/fold_all/checkpoint_final.pth",
        f"{dataset}/{model}/plans.json",
        f"{dataset}/{model}/dataset.json",
        f"{dataset}/nnsam2_trainer/nnsam2_trainer.py",
        f"{dataset}/MODEL_CARD.md",
    } <= set(exported.members)
    card = exported.card.read_text(encoding="utf-8")
    digest = sha256(run.folder / "fold_all" / "checkpoint_final.pth")
    for fact in (digest, "CC0 (synthetic)", "t2w_002", "0.940 ± 0.028", "seed 0", "nnUNet_extTrainer", "-d 503"):
        assert fact in card, fact
    with pytest.raises(DataError, match=r"model\.zip: exists already"):
        export_model(tmp_path / "model.zip", profile=PROFILE)

    results = tmp_path / "nnUNet_results"
    monkeypatch.setenv("nnUNet_results", str(results))
    install_model_from_zip_file(str(exported.zip))
    monkeypatch.setenv("nnUNet_extTrainer", str(results / dataset / "nnsam2_trainer"))
    theirs = nnUNetPredictor(
        use_mirroring=False, perform_everything_on_device=False, device=torch.device("cpu"), allow_tqdm=False
    )
    theirs.initialize_from_trained_model_folder(str(results / dataset / model), use_folds=("all",))
    assert theirs.trainer_name == "nnUNetTrainer_nnsam2" and theirs.allowed_mirroring_axes is None

    prepared = tmp_path / "prepared" / "t2w_001_0000.nii.gz"  # a prepared (LPS) scan, as nnU-Net reads its inputs
    write_image(canonical(read_image(scan_file(run))), prepared)
    array, properties = SimpleITKIO().read_images([str(prepared)])
    seg, probabilities = theirs.predict_single_npy_array(array, properties, None, None, True)
    ours = load_predictor(run.folder, find_model(PROFILE).budget)
    own_seg, own_probabilities = ours.predict_single_npy_array(array, properties, None, None, True)
    assert np.array_equal(probabilities, own_probabilities) and np.array_equal(seg, own_seg)

    predict([prepared], tmp_path / "out", profile=PROFILE, progress=False)
    labels = sitk.GetArrayFromImage(read_image(tmp_path / "out" / "t2w_001_0000_lpm.nii.gz"))
    assert labels.any() and np.array_equal(labels, clean_volume(np.asarray(seg, dtype=np.uint8)))


# ------------------------------------------------------------------------------------------------------------------
# accuracy on scans the run never saw (a trained model: minutes)
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_predict_on_unseen_scans_is_as_good_as_on_the_runs_own(tmp_path, monkeypatch):
    """A final stage trained for 600 iterations on the run's three scans. ``predict`` on the run's own scans as
    stored (their disc range as --slices) scores what the pipeline's own prediction scores (the reading, reorienting,
    cropping and writing back lose nothing); on three scans the run never saw (another seed) it scores within 0.05.
    The second gap is the model's, not predict's: trained on three subjects, it meets new ones (on the phantoms of
    issue 16, which vary sex, size and shape: 0.029 for this draw, 0.012–0.029 over the draws of seeds 1–5; 0.01 on the
    earlier, more alike phantoms)."""
    from nnsam2_utils.data.geometry import region_crop
    from nnsam2_utils.data.labels import map_labels
    from nnsam2_utils.data.manifest import load_manifest
    from nnsam2_utils.data.synthetic.cohort import generate_cohort
    from nnsam2_utils.evaluate.metrics import dice_per_class
    from nnsam2_utils.prepare.dataset import prepare_case
    from nnsam2_utils.propagate.postprocess import clean_volume
    from nnsam2_utils.refine.nnunet import load_predictor, predict_image
    from nnsam2_utils.refine.stages import stage_budget

    monkeypatch.setenv("NNSAM2_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("NNSAM2_WORK", str(tmp_path / "work"))
    refine = refine_settings(epochs=24, iterations=25)
    write_profile(tmp_path / "config", "trained", refine)
    ws, folder = train_final_stage("trained", refine)

    def mean_dsc(pairs) -> float:
        return float(np.mean([np.nanmean(list(dice_per_class(a, b).values())) for a, b in pairs]))

    own = load_manifest(ws.manifest(DATASET))
    predictor = load_predictor(folder, stage_budget(refine, 3))
    pairs = []
    for case in own.cases:  # what the pipeline's predict_all does for the run's own scans
        prepared = prepare_case(own, case)
        labels = clean_volume(predict_image(predictor, prepared.image))
        pairs.append((labels, sitk.GetArrayFromImage(prepared.label)))
    own_dsc = mean_dsc(pairs)

    def predicted_pairs(manifest, out: Path) -> list:
        pairs = []
        for case in manifest.cases:
            path = manifest.resolve(case.image)
            slices = (case.discs.L5S1, case.discs.L3L4)
            predict([path], out / case.id, profile="trained", slices=slices, progress=False)
            crop, _ = region_crop(manifest, case, read_image(path), path)
            labels = sitk.GetArrayFromImage(crop(read_image(out / case.id / f"{case.id}_lpm.nii.gz")))
            label = sitk.GetArrayFromImage(crop(read_image(manifest.resolve(case.label))))
            pairs.append((labels, map_labels(label, manifest.label_map, "truth")))
        return pairs

    assert own_dsc > 0.6, own_dsc
    as_stored = mean_dsc(predicted_pairs(own, tmp_path / "own"))
    assert abs(as_stored - own_dsc) < 0.005, (as_stored, own_dsc)
    new = load_manifest(generate_cohort(tmp_path / "new", size="tiny", seed=1, datasets=[DATASET])[0])
    new_dsc = mean_dsc(predicted_pairs(new, tmp_path / "out"))
    assert new_dsc >= own_dsc - 0.05, (new_dsc, own_dsc)
