"""Run-to-run variation between two trainings (nnsam2_utils.evaluate.repeatability), against hand-computed numbers."""

import numpy as np
import pandas as pd
import pytest

from nnsam2_utils.evaluate.repeatability import VARIATION_COLUMNS, mask_agreement, variation_table


def rows(values: dict[tuple[str, str, int, str], float], source: str = "auto") -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"dataset": d, "case": c, "subject": c, "class": k, "measure": m, "source": source, "value": v}
            for (d, c, k, m), v in values.items()
        ]
    )


GROUPS = {"t2": "MRI", "ct": "CT"}


def test_percentages_are_of_the_group_mean_like_the_margin():
    first = rows(
        {
            ("t2", "a", 1, "volume_ml"): 100.0,
            ("t2", "a", 2, "volume_ml"): 200.0,
            ("t2", "b", 1, "volume_ml"): 300.0,
            ("ct", "x", 1, "hu_mean"): 40.0,
        }
    )
    second = rows(
        {
            ("t2", "a", 1, "volume_ml"): 110.0,
            ("t2", "a", 2, "volume_ml"): 190.0,
            ("t2", "b", 1, "volume_ml"): 330.0,
            ("ct", "x", 1, "hu_mean"): 38.0,
        }
    )
    table = variation_table(first, second, GROUPS).set_index(["measure", "group"])
    mri = table.loc[("volume_ml", "MRI")]
    # differences +10, -10, +30; group mean of the first training 200
    assert mri.n == 3
    assert mri.mean_abs_diff == pytest.approx(50 / 3)
    assert mri.mean_abs_pct == pytest.approx(100 * (50 / 3) / 200)
    assert mri.max_abs_pct == pytest.approx(15.0)
    assert mri.mean_diff_pct == pytest.approx(100 * (30 / 3) / 200)
    ct = table.loc[("hu_mean", "CT")]
    assert ct.max_abs_pct == pytest.approx(5.0) and ct.note == ""


def test_expert_rows_other_classes_and_unpaired_values_are_left_out():
    first = rows(
        {("t2", "a", 1, "volume_ml"): 100.0, ("t2", "b", 1, "volume_ml"): 100.0, ("t2", "a", 0, "volume_ml"): 999.0}
    )
    second = pd.concat(
        [
            rows({("t2", "a", 1, "volume_ml"): 105.0, ("t2", "a", 0, "volume_ml"): 1.0}),
            rows({("t2", "b", 1, "volume_ml"): 500.0}, source="expert"),
        ]
    )
    table = variation_table(first, second, GROUPS)
    assert len(table) == 1 and table.n.iloc[0] == 1
    assert table.max_abs_pct.iloc[0] == pytest.approx(5.0)
    assert "1 scan/class values without a counterpart" in table.note.iloc[0]


def test_a_zero_mean_gives_no_percentages_and_says_why():
    first = rows({("t2", "a", 1, "volume_ml"): 0.0})
    second = rows({("t2", "a", 1, "volume_ml"): 2.0})
    table = variation_table(first, second, GROUPS)
    assert np.isnan(table.mean_abs_pct.iloc[0]) and table.mean_abs_diff.iloc[0] == 2.0
    assert "group mean is zero" in table.note.iloc[0]


def test_no_common_values_give_an_empty_table_with_the_columns():
    table = variation_table(rows({("t2", "a", 1, "volume_ml"): 1.0}), rows({("t2", "b", 1, "volume_ml"): 1.0}), GROUPS)
    assert table.empty and list(table.columns) == VARIATION_COLUMNS


def test_mask_agreement_is_the_dsc_between_the_two_trainings():
    a = np.zeros((1, 4, 4), np.uint8)
    b = a.copy()
    a[0, :2, :2] = 1
    b[0, :2, :1] = 1
    a[0, 2:, 2:] = 2
    b[0, 2:, 2:] = 2
    dsc = {r["class"]: r["dsc"] for r in mask_agreement("t2", "a", a, b)}
    assert dsc[1] == pytest.approx(2 * 2 / (4 + 2)) and dsc[2] == 1.0
