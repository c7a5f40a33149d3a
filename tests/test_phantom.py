"""The synthetic demo cohort: files, geometry, determinism and anatomy within published ranges."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from nnsam2_utils.data.geometry import canonical, check_same_grid, region_slices, to_stack
from nnsam2_utils.data.io import sha256
from nnsam2_utils.data.manifest import load_manifest
from nnsam2_utils.data.synthetic.cohort import generate_cohort
from nnsam2_utils.data.synthetic.specs import DATASETS, SIZES
from nnsam2_utils.prepare.dataset import prepare_case


def _files(folder):
    return {p.relative_to(folder).as_posix(): sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def default_pair(tmp_path_factory):
    """Default-size back-pain T2w and TotalSegmentator-like CT (the statistics need full size)."""
    folder = tmp_path_factory.mktemp("phantom_default")
    generate_cohort(folder, size="default", seed=0, datasets=["backpain_t2w", "totalseg_ct"])
    return folder


@pytest.fixture(scope="module")
def bedrest(tmp_path_factory):
    folder = tmp_path_factory.mktemp("phantom_bedrest")
    generate_cohort(folder, size="tiny", seed=0, datasets=["bedrest_dixon"])
    return folder


def _slice(path, k):
    """The axial slice k (third axis as stored) of a file, and its in-plane voxel area in cm²."""
    image = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(image)[k], image.GetSpacing()[0] * image.GetSpacing()[1] / 100.0


def test_public_api():
    assert DATASETS == ("backpain_t1w", "backpain_t2w", "bedrest_dixon", "athletes_mri", "totalseg_ct", "word_ct")
    assert set(SIZES) >= {"tiny", "default"}
    assert SIZES["tiny"].datasets == ("backpain_t2w", "totalseg_ct")


def test_tiny_cohort_files_manifest_and_geometry(tiny_cohort):
    for name in ("backpain_t2w", "totalseg_ct"):
        manifest = load_manifest(tiny_cohort / f"{name}.yaml")
        assert manifest.label_map == {1: 1, 2: 1, 3: 2, 4: 2}
        assert manifest.muscle_map == {1: "R-ES", 2: "R-MF", 3: "L-MF", 4: "L-ES"}
        assert manifest.source.licence == "CC0 (synthetic)"
        assert manifest.decimate_to_mm == (5.0 if manifest.modality == "CT" else None)
        assert len(manifest.cases) == 3
        truth = pd.read_csv(tiny_cohort / f"{name}_truth.csv")
        assert set(truth["muscle"]) == {"LPM", "R-ES", "R-MF", "L-MF", "L-ES"}
        assert len(truth) == 6 * len(manifest.cases)
        for case in manifest.cases:
            image_path, label_path = manifest.resolve(case.image), manifest.resolve(case.label)
            assert sha256(image_path) == case.sha256.image and sha256(label_path) == case.sha256.label
            image, label = sitk.ReadImage(str(image_path)), sitk.ReadImage(str(label_path))
            check_same_grid(image, label, "image", "label")
            assert max(image.GetSize()[:2]) <= 128
            assert set(np.unique(sitk.GetArrayViewFromImage(label))) <= {0, 1, 2, 3, 4}
            discs = case.discs
            for k in (discs.L3L4, discs.L4L5, discs.L5S1):
                assert 0 <= k < image.GetSize()[2]
            # superior -> inferior in physical space: z of L3/L4 > L4/L5 > L5/S1 (LPS z grows superiorly)
            z = [image.TransformIndexToPhysicalPoint((0, 0, k))[2] for k in (discs.L3L4, discs.L4L5, discs.L5S1)]
            assert z[0] > z[1] > z[2]
            lps = canonical(image)
            zc = [
                lps.TransformPhysicalPointToIndex(image.TransformIndexToPhysicalPoint((0, 0, k)))[2]
                for k in (discs.L3L4, discs.L5S1)
            ]
            assert zc[0] > zc[1]  # canonical LPS: L3/L4 has the higher (more superior) index
            prepared = prepare_case(manifest, case)
            n = prepared.image.GetSize()[2]
            assert 6 <= n <= 8, f"{case.id}: {n} region slices"
            muscles = to_stack(prepared.muscles)
            # left/right: R-ES (1) on the image's left half in LPS (x grows to the patient's left)
            cols = np.nonzero(muscles == 1)[2].mean(), np.nonzero(muscles == 4)[2].mean()
            assert cols[0] < cols[1]
            assert (muscles > 0).sum(axis=(1, 2)).min() > 0  # every region slice holds muscle


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for folder, seed in ((a, 0), (b, 0), (c, 1)):
        generate_cohort(folder, size="tiny", seed=seed, datasets=["backpain_t2w"])
    files_a, files_b, files_c = _files(a), _files(b), _files(c)
    assert files_a == files_b
    assert files_a.keys() == files_c.keys()
    assert files_a["backpain_t2w/images/t2w_001.nii.gz"] != files_c["backpain_t2w/images/t2w_001.nii.gz"]
    # a re-run leaves identical files untouched
    mtimes = {p: p.stat().st_mtime_ns for p in a.rglob("*.nii.gz")}
    generate_cohort(a, size="tiny", seed=0, datasets=["backpain_t2w"])
    assert {p: p.stat().st_mtime_ns for p in a.rglob("*.nii.gz")} == mtimes


def test_default_mri_muscle_areas_and_fat(default_pair):
    manifest = load_manifest(default_pair / "backpain_t2w.yaml")
    truth = pd.read_csv(default_pair / "backpain_t2w_truth.csv")
    for case in manifest.cases:
        label, cm2 = _slice(manifest.resolve(case.label), case.discs.L4L5)
        # adult ranges at L4/L5 for women and men (erector spinae 8-22 cm², multifidus 4-12 cm² per side;
        # Marras et al., Clin Biomech 2001; Crawford et al., AJNR 2016)
        for value, low, high in ((1, 8, 22), (4, 8, 22), (2, 4, 12), (3, 4, 12)):
            area = (label == value).sum() * cm2
            assert low <= area <= high, f"{case.id} label {value}: {area:.1f} cm² at L4/L5"
        assert max(label.shape) <= 256
        n = prepare_case(manifest, case).image.GetSize()[2]
        assert 12 <= n <= 16
    assert truth["fat_fraction"].between(0.05, 0.30).all()
    by_muscle = truth.groupby("muscle")["fat_fraction"].mean()
    assert by_muscle[["R-MF", "L-MF"]].mean() > by_muscle[["R-ES", "L-ES"]].mean()
    assert truth["hu_mean"].isna().all()


def test_default_ct_attenuation_and_anatomy(default_pair):
    manifest = load_manifest(default_pair / "totalseg_ct.yaml")
    truth = pd.read_csv(default_pair / "totalseg_ct_truth.csv")
    assert truth["hu_mean"].between(30, 55).all()
    for case in manifest.cases:
        prepared = prepare_case(manifest, case)
        assert 12 <= prepared.image.GetSize()[2] <= 16
        image = sitk.GetArrayFromImage(canonical(sitk.ReadImage(str(manifest.resolve(case.image)))))
        label = sitk.GetArrayFromImage(canonical(sitk.ReadImage(str(manifest.resolve(case.label)))))
        lo, hi = region_slices(sitk.ReadImage(str(manifest.resolve(case.image))), case.discs.L3L4, case.discs.L5S1)
        region_img, region_lab = image[lo : hi + 1], label[lo : hi + 1]
        muscle_hu = region_img[region_lab > 0].mean()
        assert 35 <= muscle_hu <= 55, muscle_hu
        # subcutaneous fat: the voxels behind the back muscles, between fascia and skin
        k = (lo + hi) // 2
        ys, xs = np.nonzero(label[k] == 4)
        column = image[k, :, int(np.median(xs))]
        behind = column[ys.max() + 4 :]
        behind = behind[: np.argmax(behind < -500) - 3]
        assert -120 <= np.median(behind) <= -85
        # vertebral body (midline, in front of the canal): cancellous 150-250 HU, a brighter cortex;
        # the recorded L4/L5 disc slice shows disc (< 120 HU) where the body was
        image_ref = sitk.ReadImage(str(manifest.resolve(case.image)))
        z_l4l5, z_l3l4 = region_slices(image_ref, case.discs.L4L5, case.discs.L3L4)
        mid_x = int(round(np.nonzero(np.isin(label[k], (2, 3)))[1].mean()))
        front_of_muscle = int(np.nonzero(np.isin(label[k], (2, 3)))[0].min())
        body_column = image[(z_l4l5 + z_l3l4) // 2, :front_of_muscle, mid_x]
        rows = np.nonzero(body_column > 110)[0]
        rows = rows[rows < rows.min() + 40]  # the vertebral body (the first bony run from the front)
        bone = body_column[rows]
        assert bone.size >= 15
        assert 150 <= np.median(bone) <= 260, np.median(bone)
        assert bone.max() >= 400
        disc_column = image[z_l4l5, rows.min() + 3 : rows.max() - 3, mid_x]
        assert np.median(disc_column) < 120, np.median(disc_column)


def test_bedrest_changes_between_time_points(bedrest):
    manifest = load_manifest(bedrest / "bedrest_dixon.yaml")
    assert [c.timepoint for c in manifest.cases] == [1, 2, 3]
    assert len({c.subject for c in manifest.cases}) == 1
    truth = pd.read_csv(bedrest / "bedrest_dixon_truth.csv")
    lpm = truth[truth["muscle"] == "LPM"].groupby("timepoint")[["volume_ml", "fat_fraction"]].sum()
    change = lpm["volume_ml"] / lpm.loc[1, "volume_ml"] - 1
    assert change[2] == pytest.approx(-0.03, abs=0.015) and change[3] == pytest.approx(-0.06, abs=0.015)
    ff = truth[truth["muscle"] == "LPM"].groupby("timepoint")["fat_fraction"].mean()
    assert ff[2] - ff[1] == pytest.approx(0.01, abs=0.005) and ff[3] - ff[1] == pytest.approx(0.02, abs=0.006)
    # the Dixon fat ratio inside the label agrees with the true fat fraction
    for case in manifest.cases:
        water = sitk.GetArrayFromImage(sitk.ReadImage(str(manifest.resolve(case.image)))).astype(float)
        fat = sitk.GetArrayFromImage(sitk.ReadImage(str(manifest.resolve(case.fat)))).astype(float)
        label = sitk.GetArrayFromImage(sitk.ReadImage(str(manifest.resolve(case.label))))
        lo, hi = sorted((case.discs.L3L4, case.discs.L5S1))
        mask = np.zeros(label.shape, bool)
        mask[lo : hi + 1] = label[lo : hi + 1] > 0
        ratio = fat[mask].sum() / (fat[mask].sum() + water[mask].sum())
        true = truth[(truth["case"] == case.id) & (truth["muscle"] == "LPM")]
        expected = (true["fat_fraction"] * true["volume_ml"]).sum() / true["volume_ml"].sum()
        assert ratio == pytest.approx(expected, abs=0.03)
