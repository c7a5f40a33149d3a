"""Measurements against values computed by hand on small synthetic volumes."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from nnsam2_utils.errors import DataError, GeometryError
from nnsam2_utils.evaluate.measurements import fat_ratio, hu_mean, measurement_rows, volume_ml


def _cube(shape=(20, 20, 20), corner=(5, 5, 5), side=10) -> np.ndarray:
    mask = np.zeros(shape, dtype=np.uint8)
    z, y, x = corner
    mask[z : z + side, y : y + side, x : x + side] = 1
    return mask


def _image(array: np.ndarray, spacing=(0.5, 1.0, 2.0)) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    return image


def test_volume_of_known_cube_array_and_image():
    mask = _cube()  # 1000 voxels
    assert volume_ml(mask, (0.5, 1.0, 2.0)) == pytest.approx(1.0)  # 1000 × 1 mm³ = 1 mL
    assert volume_ml(mask, (1.0, 1.0, 1.0)) == pytest.approx(1.0)
    assert volume_ml(mask, (2.0, 2.0, 2.0)) == pytest.approx(8.0)
    assert volume_ml(_image(mask, (0.8, 0.8, 5.0))) == pytest.approx(1000 * 3.2 / 1000)


def test_volume_edge_cases():
    assert volume_ml(np.zeros((4, 4, 4)), (1, 1, 1)) == 0.0  # empty mask: a real 0 mL
    with pytest.raises(ValueError, match="spacing"):
        volume_ml(_cube())  # numpy needs a spacing
    with pytest.raises(GeometryError, match="one spacing per axis"):
        volume_ml(_cube(), (1.0, 1.0))
    with pytest.raises(GeometryError, match="positive"):
        volume_ml(_cube(), (1.0, 0.0, 1.0))


def test_fat_ratio_known_water_fat():
    mask = _cube()
    water = np.full(mask.shape, 3.0)
    fat = np.full(mask.shape, 1.0)
    water[mask == 0], fat[mask == 0] = 0.0, 100.0  # outside the mask: ignored
    assert fat_ratio(mask, water, fat) == pytest.approx(0.25)
    assert fat_ratio(_image(mask), _image(water), _image(fat)) == pytest.approx(0.25)


def test_fat_ratio_is_signal_weighted_not_mean_of_voxel_ratios():
    mask = np.array([1, 1, 0], dtype=bool)
    water = np.array([1.0, 8.0, 5.0])
    fat = np.array([1.0, 0.0, 5.0])
    # Σfat/Σ(fat+water) = 1/10; the mean of voxel ratios would be (0.5 + 0)/2 = 0.25
    assert fat_ratio(mask, water, fat) == pytest.approx(0.1)


def test_fat_ratio_empty_mask_and_zero_signal_are_nan():
    empty = np.zeros((3, 3), dtype=bool)
    assert math.isnan(fat_ratio(empty, np.ones((3, 3)), np.ones((3, 3))))
    mask = np.ones((3, 3), dtype=bool)
    assert math.isnan(fat_ratio(mask, np.zeros((3, 3)), np.zeros((3, 3))))


def test_hu_mean_uses_unclipped_values():
    ct = np.full((4, 4, 4), 1000.0)
    mask = np.zeros((4, 4, 4), dtype=bool)
    mask[0, 0, :] = True
    ct[0, 0, :] = [-200.0, 300.0, 40.0, 60.0]  # outside the model window [-30, 150]
    assert hu_mean(mask, ct) == pytest.approx(50.0)
    assert hu_mean(_image(mask.astype(np.uint8)), _image(ct)) == pytest.approx(50.0)
    assert math.isnan(hu_mean(np.zeros_like(mask), ct))


def test_grid_and_value_errors():
    with pytest.raises(GeometryError, match="shape"):
        hu_mean(np.ones((3, 3), bool), np.ones((3, 4)))
    with pytest.raises(GeometryError, match="spacing"):
        hu_mean(_image(np.ones((3, 3, 3), np.uint8), (1, 1, 1)), _image(np.ones((3, 3, 3)), (1, 1, 2)))
    ct = np.ones((3, 3))
    ct[1, 1] = np.nan
    with pytest.raises(DataError, match="NaN"):
        hu_mean(np.ones((3, 3), bool), ct)


def test_measurement_rows_classes_muscles_and_missing_class():
    shape = (4, 6, 8)
    label = np.zeros(shape, np.uint8)
    label[:, :, :4] = 1  # right LPM: 96 voxels; class 2 is absent
    muscles = np.zeros(shape, np.uint8)
    muscles[:, :3, :4] = 1  # R-ES 48 voxels
    muscles[:, 3:, :4] = 2  # R-MF 48 voxels
    ct = np.where(label == 1, 50.0, -1000.0)
    rows = measurement_rows("ds", "c1", "auto", label, (1.0, 1.0, 2.0), ct=ct, muscles=muscles)
    table = pd.DataFrame(rows)
    assert list(table.columns) == ["dataset", "case", "class", "measure", "source", "value"]
    value = table.set_index(["class", "measure"])["value"]
    assert value[(1, "volume_ml")] == pytest.approx(96 * 2 / 1000)
    assert value[(1, "hu_mean")] == pytest.approx(50.0)
    assert value[(2, "volume_ml")] == 0.0 and math.isnan(value[(2, "hu_mean")])
    assert value[("R-ES", "volume_ml")] == pytest.approx(48 * 2 / 1000)
    assert value[("R-MF", "volume_ml")] == pytest.approx(48 * 2 / 1000)
    assert value[("L-MF", "volume_ml")] == 0.0
    assert set(table["class"]) == {1, 2, "R-ES", "R-MF", "L-MF", "L-ES"}
    assert set(table["measure"]) == {"volume_ml", "hu_mean"}
    assert (table["source"] == "auto").all() and len(table) == 12


def test_measurement_rows_dixon_from_images():
    label = np.zeros((2, 4, 4), np.uint8)
    label[:, :, :2], label[:, :, 2:] = 1, 2
    water = np.where(label == 1, 9.0, 1.0)
    fat = np.where(label == 1, 1.0, 1.0)
    rows = measurement_rows(
        "dixon", "c", "expert", _image(label, (1, 1, 3)), water=_image(water, (1, 1, 3)), fat=_image(fat, (1, 1, 3))
    )
    value = pd.DataFrame(rows).set_index(["class", "measure"])["value"]
    assert value[(1, "fat_ratio")] == pytest.approx(0.1)
    assert value[(2, "fat_ratio")] == pytest.approx(0.5)
    assert value[(1, "volume_ml")] == pytest.approx(16 * 3 / 1000)  # spacing read from the image


def test_measurement_rows_rejects_bad_arguments():
    label = np.ones((2, 2, 2), np.uint8)
    with pytest.raises(ValueError, match="source"):
        measurement_rows("d", "c", "manual", label, (1, 1, 1))
    with pytest.raises(ValueError, match="both"):
        measurement_rows("d", "c", "auto", label, (1, 1, 1), water=np.ones((2, 2, 2)))
    with pytest.raises(GeometryError):
        measurement_rows("d", "c", "auto", label, (1, 1, 1), muscles=np.ones((2, 2, 3), np.uint8))


def test_datasets_without_expert_labels_get_a_summary_of_their_automated_measurements():
    import pandas as pd

    from nnsam2_utils.evaluate.scans import measurement_summary, unlabelled_datasets

    def row(dataset, case, cls, source, value, measure="volume_ml"):
        return {
            "dataset": dataset,
            "case": case,
            "subject": case,
            "class": cls,
            "measure": measure,
            "source": source,
            "value": value,
        }

    table = pd.DataFrame(
        [
            row("own", "a", 1, "auto", 10.0),
            row("own", "b", 1, "auto", 14.0),
            row("own", "a", 0, "auto", 99.0),
            row("own", "a", 2, "auto", 8.0),
            row("demo", "a", 1, "auto", 5.0),
            row("demo", "a", 1, "expert", 6.0),
        ]
    )
    assert unlabelled_datasets(table, ["demo", "own", "absent"]) == ["own"]
    summary = measurement_summary(table, ["own"]).set_index("class")
    assert list(summary.index) == ["1", "2"]  # the background class (0) is not a muscle
    assert summary.loc["1", "scans"] == 2 and summary.loc["1", "mean"] == 12.0
    assert summary.loc["1", "sd"] == pytest.approx(np.std([10.0, 14.0], ddof=1))
    assert summary.loc["2", "scans"] == 1 and np.isnan(summary.loc["2", "sd"])
