"""The final model on subjects the run never saw (docs/method.md §13.1): which new scans, their DSC, the gap.

The book's DSC is measured on the scans whose pseudo-labels trained the nnU-Nets (there is no held-out split in the
method). A fresh draw of the phantom cohort gives other subjects with the same acquisitions and exact truth; the
functions here choose its scans, score ``predict``'s labels as the run scores its own (3-D DSC per class over the
L3/L4–L5/S1 region, CT decimated as prepared) and set the result beside the book's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from nnsam2_utils.data.manifest import Case, DatasetManifest

#: the columns of a new-subjects DSC table (one row per scan and class)
COLUMNS = ("dataset", "case", "subject", "class", "dsc", "truth_ml")


def new_cases(manifest: DatasetManifest, scans: int) -> list[Case]:
    """The first scan of each subject, in manifest order, up to ``scans`` (a longitudinal dataset gives one time
    point per subject, so every scan scored is another person)."""
    if scans < 1:
        raise ValueError(f"scans must be at least 1, got {scans}")
    chosen: list[Case] = []
    seen: set[str] = set()
    for case in manifest.cases:
        subject = case.subject or case.id
        if subject not in seen:
            seen.add(subject)
            chosen.append(case)
        if len(chosen) == scans:
            break
    return chosen


def region_slices(case: Case) -> tuple[int, int]:
    """The scan's L3/L4–L5/S1 region as ``predict``'s ``--slices`` (the two disc slice numbers, in either order)."""
    return case.discs.L5S1, case.discs.L3L4


def class_volumes_ml(label: np.ndarray, spacing: tuple[float, ...], classes: tuple[int, ...] = (1, 2)) -> dict:
    """Each class's volume (mL) in a label array of voxel ``spacing`` (mm), by the run's own volume measure."""
    from nnsam2_utils.evaluate.measurements import volume_ml

    return {cls: volume_ml(label == cls, spacing) for cls in classes}


def scan_rows(manifest: DatasetManifest, case: Case, labels_path: str | Path) -> list[dict]:
    """DSC rows (dataset, case, subject, class, dsc, truth_ml) of a label file on the scan's own grid against its
    truth, both cut to the region and prepared as the run prepares its scans; ``truth_ml``: the class's true volume
    in the region."""
    import SimpleITK as sitk

    from nnsam2_utils.data.geometry import region_crop
    from nnsam2_utils.data.io import read_image
    from nnsam2_utils.data.labels import map_labels
    from nnsam2_utils.evaluate.metrics import dice_per_class

    image_path = manifest.resolve(case.image)
    crop, _ = region_crop(manifest, case, read_image(image_path), image_path)
    labels = sitk.GetArrayFromImage(crop(read_image(labels_path)))
    label = crop(read_image(manifest.resolve(case.label)))
    truth = map_labels(sitk.GetArrayFromImage(label), manifest.label_map, "truth")
    volumes = class_volumes_ml(truth, label.GetSpacing())
    subject = case.subject or case.id
    return [
        {"dataset": manifest.name, "case": case.id, "subject": subject, "class": cls, "dsc": value,
         "truth_ml": volumes[cls]}
        for cls, value in dice_per_class(labels, truth).items()
    ]  # fmt: skip


def own_volumes(workspace, datasets: list[str]) -> pd.DataFrame:
    """The true volume (mL) per class of the run's own labelled scans in their prepared region (dataset, case,
    class, truth_ml): what the new subjects' ``truth_ml`` is compared with."""
    import SimpleITK as sitk

    from nnsam2_utils.data.io import read_image

    rows = []
    for dataset in datasets:
        for case in workspace.case_ids(dataset):
            path = workspace.prepared(dataset, case) / "label.nii.gz"
            if path.exists():
                label = read_image(path)
                volumes = class_volumes_ml(sitk.GetArrayViewFromImage(label), label.GetSpacing())
                rows += [{"dataset": dataset, "case": case, "class": c, "truth_ml": v} for c, v in volumes.items()]
    return pd.DataFrame(rows, columns=["dataset", "case", "class", "truth_ml"])


def gap_table(new: pd.DataFrame, book: pd.DataFrame, stage: str, volumes: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per dataset with new scans: the book's mean DSC of ``stage`` on the run's own scans (``book``: the run's DSC
    rows), the mean and SD over the new scans, their number, and the gap (book minus new: positive when the new
    subjects score lower); with ``volumes`` (the own scans' :func:`own_volumes`), the mean true class volume (mL) of
    the own scans and of the new ones. The last row, ``all``, pools the datasets' means (each weighs the same)."""
    from nnsam2_utils.evaluate.metrics import summarise_dsc

    columns = ["book", "book_scans", "new", "new_sd", "new_scans", "gap", "book_ml", "new_ml"]
    own = summarise_dsc(book[book["stage"] == stage]).set_index("dataset")
    fresh = summarise_dsc(new.assign(stage="new")).set_index("dataset")
    own = own[["mean", "n"]].rename(columns={"mean": "book", "n": "book_scans"})
    fresh = fresh[["mean", "sd", "n"]].rename(columns={"mean": "new", "sd": "new_sd", "n": "new_scans"})
    table = own.join(fresh, how="inner")
    table["gap"] = table["book"] - table["new"]
    table["new_ml"] = new.groupby("dataset")["truth_ml"].mean()
    table["book_ml"] = volumes.groupby("dataset")["truth_ml"].mean() if volumes is not None else np.nan
    if len(table):
        pooled = table.mean()
        pooled[["book_scans", "new_scans"]] = table[["book_scans", "new_scans"]].sum()
        pooled["new_sd"] = np.nan
        table.loc["all"] = pooled
    return table.reindex(columns=columns)
