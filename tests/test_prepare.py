import numpy as np
import pytest
import SimpleITK as sitk
import yaml
from conftest import make_image

from nnsam2_utils.data.geometry import (
    canonical,
    crop_z,
    decimation_factor,
    lps_slice_index,
    region_slices,
    to_stack,
)
from nnsam2_utils.data.io import write_image
from nnsam2_utils.data.labels import map_labels
from nnsam2_utils.data.manifest import load_manifest
from nnsam2_utils.errors import DataError, GeometryError
from nnsam2_utils.prepare.dataset import prepare_case, prepare_dataset
from nnsam2_utils.prepare.model_input import label_from_model, label_to_model, load_model_input, model_input

RAS = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)
LIS = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0, 0.0, 1.0, 0.0)  # k runs inferior: an unusual storage order


def ramp_volume(nz=10, ny=6, nx=8):
    z = np.arange(nz)[:, None, None] * 100
    y = np.arange(ny)[None, :, None] * 10
    x = np.arange(nx)[None, None, :]
    return (z + y + x).astype(np.int16)


def test_canonical_orientation_is_lps_without_resampling():
    image = make_image(ramp_volume(), direction=RAS)
    lps = canonical(image)
    assert np.allclose(lps.GetDirection(), np.eye(3).ravel())
    assert sorted(sitk.GetArrayFromImage(lps).ravel()) == sorted(ramp_volume().ravel())
    # RAS index i grows to the patient's left? no: RAS x grows to the right, so LPS flips x
    assert sitk.GetArrayFromImage(lps)[0, 0, 0] == ramp_volume()[0, -1, -1]


def test_region_is_inclusive_and_stack_runs_superior_to_inferior():
    image = make_image(ramp_volume(nz=12), direction=RAS)
    low, high = region_slices(image, k_a=9, k_b=3)  # L3L4 at k=9 (superior), L5S1 at k=3
    assert (low, high) == (3, 9)
    cropped = crop_z(canonical(image), low, high)
    stack = to_stack(cropped)
    assert len(stack) == 7
    assert stack[0].min() // 100 == 9 and stack[-1].min() // 100 == 3


def test_region_maps_disc_indices_through_an_unusual_orientation():
    """LIS storage: the stored j axis runs superior, so a disc's slice number counts along j and its LPS slice
    holds exactly the voxels of that stored j-plane (each voxel's value encodes its stored i, j, k)."""
    k, j, i = np.meshgrid(np.arange(6), np.arange(12), np.arange(8), indexing="ij")
    stored = (k * 1000 + j * 10 + i).astype(np.int16)  # array axes (k, j, i)
    image = make_image(stored, direction=LIS)
    lps = canonical(image)
    assert lps.GetSize()[2] == 12
    lps_array = sitk.GetArrayFromImage(lps)
    for disc in (1, 4, 9):
        z = lps_slice_index(image, disc)
        assert z == disc  # j runs superior, as LPS z does: no flip
        assert set(lps_array[z].ravel()) == set(stored[:, disc, :].ravel())
    assert region_slices(image, k_a=9, k_b=1) == (1, 9)
    # the voxel at stored (i=0, j, k=0) is at the patient's right (x smallest) and most posterior (k runs anterior)
    assert lps_array[4, -1, 0] == 4 * 10


def test_disc_outside_volume_is_a_geometry_error():
    with pytest.raises(GeometryError, match="outside the volume"):
        region_slices(make_image(ramp_volume()), 0, 10)


def test_decimation_keeps_the_superior_disc():
    assert decimation_factor(2.5, 5.0) == 2
    assert decimation_factor(1.0, 5.0) == 5
    assert decimation_factor(6.0, 5.0) == 1
    assert decimation_factor(2.5, None) == 1
    image = make_image(ramp_volume(nz=12))
    cropped = crop_z(image, 2, 10, step=3)
    assert [int(s.min()) // 100 for s in to_stack(cropped)] == [10, 7, 4]


def test_label_mapping_and_unknown_values():
    label = np.array([[0, 1, 2, 3, 4]])
    assert map_labels(label, {1: 1, 2: 1, 3: 2, 4: 2}, "x").tolist() == [[0, 1, 1, 2, 2]]
    with pytest.raises(DataError, match=r"label values \[9\]"):
        map_labels(np.array([[0, 9]]), {1: 1}, "seg.nii.gz")


def test_model_input_normalisation_and_size():
    ct = np.full((3, 40, 50), -1000.0)
    ct[:, 10:30, 10:40] = 60.0
    ct[:, 15:20, 15:20] = 1500.0
    frames = model_input(make_image(ct.astype(np.float32)), "CT")
    assert frames.shape == (3, 256, 256) and frames.dtype == np.uint8
    assert frames.min() == 0 and frames.max() == 255
    mri = np.random.default_rng(0).gamma(2.0, 100.0, (4, 30, 30)).astype(np.float32)
    frames = model_input(make_image(mri), "MRI")
    assert frames.max() == 255 and frames.min() == 0


def test_label_resize_is_nearest_and_roundtrips():
    label = np.zeros((2, 64, 48), np.uint8)
    label[:, 10:30, 5:20] = 1
    label[:, 10:30, 28:44] = 2
    small = label_to_model(label)
    assert set(np.unique(small)) == {0, 1, 2}
    back = label_from_model(small, (64, 48))
    assert (back == label).mean() > 0.99


def _dataset(tmp_path, image, label, extra=None):
    write_image(image, tmp_path / "d" / "img.nii.gz")
    write_image(label, tmp_path / "d" / "seg.nii.gz")
    data = {
        "name": "t",
        "modality": "MRI",
        "sequence": "T2w",
        "root": "d",
        "label_map": {1: 1, 2: 2},
        "cases": [{"id": "c1", "image": "img.nii.gz", "label": "seg.nii.gz", "discs": {"L3L4": 8, "L5S1": 1}}],
    }
    data.update(extra or {})
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(data))
    return load_manifest(tmp_path / "m.yaml")


def test_prepare_case_checks_geometry_and_values(tmp_path):
    image = make_image(ramp_volume().astype(np.float32))
    muscles = np.zeros((10, 6, 8), np.uint8)
    muscles[:, 1:4, 1:3], muscles[:, 1:4, 5:7] = 1, 2
    label = make_image(muscles)
    shifted = make_image(np.zeros((10, 6, 8), np.uint8), origin=(5.0, 0.0, 0.0))
    manifest = _dataset(tmp_path, image, shifted)
    with pytest.raises(GeometryError, match="origin"):
        prepare_case(manifest, manifest.cases[0])
    nan = sitk.GetArrayFromImage(image)
    nan[2, 2, 2] = np.nan
    manifest = _dataset(tmp_path, make_image(nan), label)
    with pytest.raises(DataError, match="NaN or Inf"):
        prepare_case(manifest, manifest.cases[0])
    manifest = _dataset(tmp_path, image, label)
    case = prepare_case(manifest, manifest.cases[0])
    assert case.image.GetSize()[2] == 8 and case.label.GetSize() == case.image.GetSize()


def test_prepare_dataset_resumes_and_never_touches_inputs(tmp_path):
    from nnsam2_utils.data.io import sha256

    image = make_image(ramp_volume().astype(np.float32))
    lab = np.zeros((10, 6, 8), np.uint8)
    lab[:, 1:4, 1:3] = 1
    lab[:, 1:4, 5:7] = 2
    manifest = _dataset(tmp_path, image, make_image(lab))
    before = sha256(tmp_path / "d" / "img.nii.gz")
    table = prepare_dataset(manifest, tmp_path / "out")
    assert table.n_slices.tolist() == [8]
    meta = tmp_path / "out" / "c1" / "meta.json"
    stamp = meta.stat().st_mtime_ns
    prepare_dataset(manifest, tmp_path / "out")
    assert meta.stat().st_mtime_ns == stamp
    assert sha256(tmp_path / "d" / "img.nii.gz") == before
    assert load_model_input(tmp_path / "out" / "c1").shape == (8, 256, 256)


def test_prepare_refuses_a_label_empty_inside_the_region(tmp_path):
    """A label whose voxels all lie outside L3/L4–L5/S1 would train and score against nothing: an error naming it."""
    import shutil

    import numpy as np
    import SimpleITK as sitk

    from nnsam2_utils.data.io import read_image, write_image
    from nnsam2_utils.data.manifest import load_manifest
    from nnsam2_utils.data.synthetic.cohort import generate_cohort
    from nnsam2_utils.errors import DataError
    from nnsam2_utils.prepare.dataset import prepare_case

    manifest = load_manifest(generate_cohort(tmp_path, size="tiny", seed=0, datasets=["backpain_t2w"])[0])
    case = manifest.cases[0]
    path = manifest.resolve(case.label)
    label = read_image(path)
    array = np.zeros_like(sitk.GetArrayFromImage(label))
    array[0, 2:4, 2:4] = 1  # the most inferior stored slice only, below L5/S1
    empty = sitk.GetImageFromArray(array)
    empty.CopyInformation(label)
    write_image(empty, path)
    before = path.read_bytes()
    with pytest.raises(DataError, match="empty inside the L3/L4–L5/S1 region") as caught:
        prepare_case(manifest, case.model_copy(update={"sha256": case.sha256.model_copy(update={"label": None})}))
    assert str(path) in str(caught.value) and path.read_bytes() == before
    shutil.rmtree(tmp_path)
