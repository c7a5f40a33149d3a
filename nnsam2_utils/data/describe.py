"""Describing a cohort from its files: muscle areas, fat and attenuation per scan."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from nnsam2_utils.data.geometry import canonical, lps_slice_index
from nnsam2_utils.data.io import read_image
from nnsam2_utils.data.labels import map_muscles
from nnsam2_utils.data.manifest import MUSCLES, DatasetManifest
from nnsam2_utils.data.io import read_csv


def scan_description(manifest: DatasetManifest, case_index: int) -> dict:
    """Areas (cm²) of each muscle at the L4/L5 disc slice, mean LPM HU (CT) and Dixon fat ratio.

    Areas need four-class labels (``muscle_map``); without them only LPM areas are given.
    The Dixon fat ratio is Σfat / Σ(fat + water) over both LPM in the region at L4/L5.
    """
    case = manifest.cases[case_index]
    image = read_image(manifest.resolve(case.image))
    row: dict = {"dataset": manifest.name, "case": case.id}
    if not case.label:
        return row
    label_image = read_image(manifest.resolve(case.label))
    label = sitk.GetArrayFromImage(canonical(label_image))
    z = lps_slice_index(label_image, case.discs.L4L5 if case.discs.L4L5 is not None else (case.discs.L3L4 + case.discs.L5S1) // 2)
    sx, sy, _ = canonical(label_image).GetSpacing()
    pixel_cm2 = sx * sy / 100.0
    if manifest.muscle_map:
        muscles = map_muscles(label[z], manifest.muscle_map)
        for i, name in enumerate(MUSCLES, start=1):
            row[f"{name} cm²"] = round(float((muscles == i).sum() * pixel_cm2), 1)
    lpm = np.isin(label[z], [v for v, c in manifest.label_map.items() if c in (1, 2)])
    row["LPM cm²"] = round(float(lpm.sum() * pixel_cm2), 1)
    values = sitk.GetArrayFromImage(canonical(image))[z]
    if manifest.modality == "CT":
        row["LPM HU"] = round(float(values[lpm].mean()), 1) if lpm.any() else np.nan
    if case.fat:
        fat = sitk.GetArrayFromImage(canonical(read_image(manifest.resolve(case.fat))))[z].astype(float)
        water = values.astype(float)
        row["LPM fat ratio"] = round(float(fat[lpm].sum() / (fat[lpm] + water[lpm]).sum()), 3) if lpm.any() else np.nan
    return row


def cohort_description(manifests: list[DatasetManifest]) -> pd.DataFrame:
    """One row per scan (see :func:`scan_description`)."""
    return pd.DataFrame([scan_description(m, i) for m in manifests for i in range(len(m.cases))])


def truth_table(manifest: DatasetManifest) -> pd.DataFrame | None:
    """The generator's truth table next to a generated dataset's manifest (None for real data)."""
    path = Path(manifest.manifest_path or "").with_name(f"{manifest.name}_truth.csv")
    return read_csv(path) if path.exists() else None
