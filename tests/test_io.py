import gzip

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from conftest import make_image

from nnsam2_utils.data import io
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
