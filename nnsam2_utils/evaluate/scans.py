"""Measurements of a run: volume, Dixon fat ratio and CT attenuation from automated and expert masks."""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd
from tqdm.auto import tqdm

from nnsam2_utils.data.io import read_image
from nnsam2_utils.evaluate.measurements import measurement_rows

MEASURE_LABELS = {"volume_ml": "Volume (mL)", "fat_ratio": "Dixon fat ratio", "hu_mean": "CT attenuation (HU)"}


def dataset_group(modality: str, sequence: str) -> str:
    """The agreement group of a dataset: CT, Dixon, or MRI (T1w/T2w)."""
    if modality == "CT":
        return "CT"
    return "Dixon" if sequence == "Dixon" else "MRI"


def scan_measurements(workspace, dataset: str, modality: str, case: str, stage: str) -> list[dict]:
    """Tidy measurement rows of one scan: the stage's mask (``auto``) and the expert label (``expert``)."""
    folder = workspace.prepared(dataset, case)
    image = read_image(folder / "image.nii.gz")
    extra = {}
    if (folder / "fat.nii.gz").exists():
        extra = {"water": image, "fat": read_image(folder / "fat.nii.gz")}
    elif modality == "CT":
        extra = {"ct": image}
    rows = measurement_rows(dataset, case, "auto", read_image(workspace.labels(stage, dataset, case)), **extra)
    if (folder / "label.nii.gz").exists():
        muscles = read_image(folder / "muscles.nii.gz") if (folder / "muscles.nii.gz").exists() else None
        rows += measurement_rows(dataset, case, "expert", read_image(folder / "label.nii.gz"), muscles=muscles, **extra)
    return rows


def measurements(workspace, run, stage: str | Mapping[str, str]) -> pd.DataFrame:
    """The run's tidy measurements table (dataset, case, subject, class, measure, source, value, stage).

    ``stage``: one stage for every dataset, or the stage of each dataset (the delivered ones).
    """
    rows = []
    for dataset in run.datasets:
        measured = stage if isinstance(stage, str) else stage[dataset]
        manifest = run.manifest(dataset)
        cases = workspace.case_table(dataset)
        subjects = dict(zip(cases["case"], cases["subject"].astype(str)))
        for case in tqdm(list(cases["case"]), desc=f"measure {dataset}", leave=False):
            for row in scan_measurements(workspace, dataset, manifest.modality, case, measured):
                rows.append({**row, "subject": subjects[case], "stage": measured if row["source"] == "auto" else ""})
    columns = ["dataset", "case", "subject", "class", "measure", "source", "value", "stage"]
    return pd.DataFrame(rows)[columns]


def unlabelled_datasets(measurements: pd.DataFrame, datasets: list[str]) -> list[str]:
    """The datasets (in run order) with automated measurements but no expert measurement at all."""
    expert = set(measurements.loc[measurements["source"] == "expert", "dataset"])
    auto = set(measurements.loc[measurements["source"] == "auto", "dataset"])
    return [d for d in datasets if d in auto and d not in expert]


def measurement_summary(
    measurements: pd.DataFrame, datasets: list[str], classes: tuple[str, ...] = ("1", "2")
) -> pd.DataFrame:
    """Automated measurements of some datasets, per dataset, class and measure: scans, mean and SD over scans.

    For datasets without expert labels this is what the book can report (no DSC, no agreement);
    ``class`` is compared as a string (1 = right LPM, 2 = left LPM).
    """
    auto = measurements[(measurements["source"] == "auto") & measurements["dataset"].isin(datasets)].copy()
    auto["class"] = auto["class"].astype(str)
    auto = auto[auto["class"].isin(classes)]
    summary = (
        auto.groupby(["dataset", "class", "measure"], sort=False)["value"]
        .agg(scans="count", mean="mean", sd="std")
        .reset_index()
    )
    return summary[["dataset", "class", "measure", "scans", "mean", "sd"]]


def stage_dsc(workspace, datasets: list[str], stage: str) -> pd.DataFrame:
    """DSC per scan and class of a stage's label files against the expert labels (docs/method.md §7).

    Scans without an expert label give no rows; the one place the run computes DSC from its files.
    """
    import SimpleITK as sitk

    from nnsam2_utils.evaluate.metrics import dsc_rows

    rows = []
    for dataset in datasets:
        for case in workspace.case_ids(dataset):
            truth_path = workspace.prepared(dataset, case) / "label.nii.gz"
            if truth_path.exists():
                truth = sitk.GetArrayFromImage(read_image(truth_path))
                pseudo = sitk.GetArrayFromImage(read_image(workspace.labels(stage, dataset, case)))
                rows += dsc_rows(dataset, case, stage, pseudo, truth)
    return pd.DataFrame(rows, columns=["dataset", "case", "class", "stage", "dsc"])
