import math

import numpy as np
import pandas as pd
import pytest

from nnsam2_utils.evaluate import metrics
from nnsam2_utils.propagate import postprocess


def test_largest_component_keeps_the_biggest_blob_and_handles_empty():
    mask = np.zeros((10, 10), bool)
    mask[1:3, 1:3] = True
    mask[5:9, 5:9] = True
    kept = postprocess.largest_component(mask)
    assert kept.sum() == 16 and kept[6, 6]
    assert not postprocess.largest_component(np.zeros((4, 4), bool)).any()


def test_diagonal_touching_blobs_are_separate_components():
    mask = np.zeros((4, 4), bool)
    mask[0:2, 0:2] = True
    mask[2, 2] = True
    assert postprocess.largest_component(mask).sum() == 4


def test_pseudo_label_cleaning_fills_holes_and_drops_islands():
    stack = np.zeros((3, 12, 12), np.uint8)
    stack[:, 2:8, 1:5] = 1
    stack[1, 4, 2] = 0  # hole
    stack[1, 10, 10] = 1  # island
    stack[:, 2:8, 7:11] = 2
    clean = postprocess.clean_pseudo_label(stack)
    assert clean[1, 4, 2] == 1 and clean[1, 10, 10] == 0
    assert (clean == 2).sum() == (stack == 2).sum()


def test_a_class_enclosing_another_does_not_swallow_it():
    """A right-LPM ring around a left-LPM blob (a network unsure of the side): the blob stays left,
    while a background hole and a dropped left-LPM island inside the ring are filled as right."""
    volume = np.zeros((3, 16, 16), np.uint8)
    volume[:, 2:14, 2:14] = 1
    volume[:, 4:12, 4:9] = 2  # the bigger left component, enclosed by the ring
    volume[:, 5:7, 10:12] = 0  # a background hole inside the ring
    volume[1, 9, 10] = 2  # a left island, smaller: dropped, then filled
    clean = postprocess.clean_volume(volume)
    assert (clean[:, 4:12, 4:9] == 2).all()
    assert (clean[:, 5:7, 10:12] == 1).all() and clean[1, 9, 10] == 1
    assert (clean == 2).sum() == 3 * 8 * 5


def test_dice_edge_cases():
    a = np.zeros((4, 4), bool)
    assert math.isnan(metrics.dice(a, a))
    b = a.copy()
    b[0, 0] = True
    assert metrics.dice(a, b) == 0.0
    assert metrics.dice(b, b) == 1.0
    c = np.zeros((4, 4), bool)
    c[0, :2] = True
    assert metrics.dice(b, c) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="shape"):
        metrics.dice(a, np.zeros((3, 3)))


def test_summary_is_mean_and_sd_over_scans_of_the_class_mean():
    table = pd.DataFrame(
        {
            "dataset": "d",
            "stage": "s",
            "case": ["a", "a", "b", "b"],
            "class": [1, 2, 1, 2],
            "dsc": [0.8, 1.0, 0.6, np.nan],
        }
    )
    out = metrics.summarise_dsc(table).iloc[0]
    assert out["mean"] == pytest.approx((0.9 + 0.6) / 2)
    assert out["sd"] == pytest.approx(np.std([0.9, 0.6], ddof=1))
    assert out["n"] == 2
