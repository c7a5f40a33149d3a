"""``dsc.csv`` recomputed from the label files of a small run folder (docs/method.md §7).

The stages write their DSC rows with :func:`nnsam2_utils.evaluate.scans.stage_dsc`, where the steps put them
(stage 0 per dataset, nnU-Nets pooled); the results page collects them with
:func:`nnsam2_utils.report.results.collect_dsc`. Every value the run reports must be the overlap of the stage's
label file with the expert label file, class by class, voxel for voxel.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import make_image

from nnsam2_utils.data.io import read_image, write_csv, write_image
from nnsam2_utils.evaluate.scans import stage_dsc
from nnsam2_utils.report.results import collect_dsc
from nnsam2_utils.workflow.workspace import Workspace

SHAPE = (3, 8, 8)  # (z, y, x)


def volume(*regions: tuple[int, tuple[slice, slice, slice]]) -> np.ndarray:
    """A label volume with each (class, region) painted in order."""
    labels = np.zeros(SHAPE, np.uint8)
    for cls, region in regions:
        labels[region] = cls
    return labels


#: Expert labels: scan ``a`` has both classes, ``b`` only the left LPM (class 2), ``c`` none (no file).
TRUTH = {
    "a": volume((1, np.s_[0, 0:4, 0:4]), (2, np.s_[1:3, 4:8, 4:8])),
    "b": volume((2, np.s_[0, :, 0:4])),
}
#: Each stage's labels, chosen so that a flipped axis, swapped classes or another stage's files change the DSC.
STAGES = {
    "stage0": {
        "a": volume((1, np.s_[0, 0:4, 0:2]), (2, np.s_[1:3, 4:8, 4:8])),
        "b": volume((2, np.s_[0, :, 0:2])),
        "c": volume((1, np.s_[1, 0:2, 0:2])),
    },
    "nnunet1": {
        "a": volume((1, np.s_[2, 0:4, 0:4]), (2, np.s_[1:3, 4:8, 4:6])),  # class 1 on the wrong slice
        "b": volume((1, np.s_[1, 0, 0]), (2, np.s_[0, :, 0:4])),
        "c": volume(),
    },
}
EXPECTED = {  # (stage, case, class): DSC by hand, 2|A∩B| / (|A| + |B|)
    ("stage0", "a", 1): 16 / 24,
    ("stage0", "a", 2): 1.0,
    ("stage0", "b", 1): np.nan,  # empty in both
    ("stage0", "b", 2): 32 / 48,
    ("nnunet1", "a", 1): 0.0,
    ("nnunet1", "a", 2): 32 / 48,
    ("nnunet1", "b", 1): 0.0,  # empty in the expert label only
    ("nnunet1", "b", 2): 1.0,
}


@pytest.fixture
def run_folder(tmp_path) -> Workspace:
    """A run folder of dataset ``d``: the case table, expert labels and two stages' labels and dsc.csv files."""
    ws = Workspace(tmp_path)
    ws.prepared("d").mkdir(parents=True)
    pd.DataFrame({"case": ["a", "b", "c"], "has_label": [True, True, False]}).to_csv(
        ws.prepared("d") / "cases.csv", index=False
    )
    for case, labels in TRUTH.items():
        write_image(make_image(labels), ws.prepared("d", case) / "label.nii.gz")
    for stage, cases in STAGES.items():
        for case, labels in cases.items():
            write_image(make_image(labels), ws.labels(stage, "d", case))
    write_csv(stage_dsc(ws, ["d"], "stage0"), ws.stage("stage0", "d") / "dsc.csv")  # where the steps write them
    write_csv(stage_dsc(ws, ["d"], "nnunet1"), ws.stage("nnunet1") / "dsc.csv")
    return ws


def recomputed(ws: Workspace, stage: str, case: str, cls: int) -> float:
    """DSC of one class straight from the two label files."""
    import SimpleITK as sitk

    truth = sitk.GetArrayFromImage(read_image(ws.prepared("d", case) / "label.nii.gz")) == cls
    labels = sitk.GetArrayFromImage(read_image(ws.labels(stage, "d", case))) == cls
    total = truth.sum() + labels.sum()
    return float(2 * (truth & labels).sum() / total) if total else np.nan


def test_the_collected_dsc_table_is_the_overlap_of_the_label_files(run_folder):
    table = collect_dsc(run_folder, ["d"])
    assert list(table.columns) == ["dataset", "case", "class", "stage", "dsc"]
    keys = [(row.stage, row.case, row["class"]) for _, row in table.iterrows()]
    assert sorted(keys) == sorted(EXPECTED)  # scan c has no expert label: no rows
    for _, row in table.iterrows():
        key = (row.stage, row.case, row["class"])
        assert row.dsc == pytest.approx(recomputed(run_folder, *key), nan_ok=True), key
        assert row.dsc == pytest.approx(EXPECTED[key], nan_ok=True), key
