import gzip
import shutil

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from conftest import make_image

from nnsam2_utils.data import io
from nnsam2_utils.data.io import read_image
from nnsam2_utils.errors import DataError


def test_atomic_write_leaves_no_partial_file_and_keeps_the_old_one(tmp_path):
    target = tmp_path / "table.csv"
    io.write_csv(pd.DataFrame({"a": [1]}), target)
    with pytest.raises(RuntimeError):
        with io.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert pd.read_csv(target)["a"].tolist() == [1]
    assert [p.name for p in tmp_path.iterdir()] == ["table.csv"]


def test_image_roundtrip_and_sha256(tmp_path):
    image = make_image(np.arange(24, dtype=np.int16).reshape(2, 3, 4))
    path = io.write_image(image, tmp_path / "x.nii.gz")
    back = io.read_image(path)
    assert np.array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))
    assert back.GetSpacing() == pytest.approx(image.GetSpacing())
    assert len(io.sha256(path)) == 64


def test_missing_truncated_and_wrong_dimension_images(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        io.read_image(tmp_path / "none.nii.gz")
    path = io.write_image(make_image(np.zeros((4, 8, 8), np.int16)), tmp_path / "x.nii.gz")
    raw = gzip.decompress(path.read_bytes())
    truncated = tmp_path / "cut.nii"
    truncated.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="truncated or corrupted"):
        io.read_image(truncated)
    flat = tmp_path / "flat.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((8, 8), np.int16)), str(flat))
    with pytest.raises(DataError, match="expected a 3-D image, found 2-D"):
        io.read_image(flat)
    four = tmp_path / "four.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((2, 3, 4, 5), np.int16), isVector=False), str(four))
    with pytest.raises(DataError, match="4-D"):
        io.read_image(four)


def _dicom_volume(nz: int = 6, spacing_z: float = 4.0):
    import SimpleITK as sitk

    image = sitk.GetImageFromArray((np.arange(nz * 8 * 8).reshape(nz, 8, 8) % 97).astype(np.int16))
    image.SetSpacing((1.0, 1.0, spacing_z))
    return image


def test_a_folder_with_two_dicom_series_is_refused(tmp_path):
    from nnsam2_utils.data.dicom import write_series

    first = write_series(_dicom_volume(), tmp_path / "a")
    second = write_series(_dicom_volume(), tmp_path / "b")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for i, folder in enumerate((first, second)):
        for f in sorted(folder.iterdir()):
            shutil.copy(f, mixed / f"s{i}_{f.name}")
    assert read_image(first).GetSize() == (8, 8, 6)  # one series reads
    with pytest.raises(DataError, match=r"mixed: holds 2 DICOM series .* Put each series in its own folder"):
        read_image(mixed)


def test_a_dicom_series_with_a_missing_slice_is_refused(tmp_path):
    from nnsam2_utils.data.dicom import write_series

    folder = write_series(_dicom_volume(nz=8), tmp_path / "series")
    files = sorted(folder.iterdir())
    files[3].unlink()  # a slice lost in transfer
    with pytest.raises(DataError, match=r"series: slice gaps of the DICOM series range from 4.00 to 8.00 mm"):
        read_image(folder)
