"""Describing a cohort from its files: muscle areas, fat and attenuation per scan."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from nnsam2_utils.data.geometry import canonical, lps_slice_index, stored_discs
from nnsam2_utils.data.io import read_csv, read_image
from nnsam2_utils.data.labels import map_muscles
from nnsam2_utils.data.manifest import MUSCLES, DatasetManifest


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
    discs = stored_discs(case.discs, label_image)
    z = lps_slice_index(label_image, discs.L4L5 if discs.L4L5 is not None else (discs.L3L4 + discs.L5S1) // 2)
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


def cohort_summary(scans: pd.DataFrame) -> pd.DataFrame:
    """Per dataset: modality, sequence, scans, subjects, region slices and voxel size (from :func:`cohort_table`)."""
    return (
        scans.groupby(["dataset", "modality", "sequence"], sort=False)
        .agg(
            scans=("case", "count"),
            subjects=("subject", "nunique"),
            region_slices=("region_slices", "sum"),
            voxel_mm=("voxel_mm", "first"),
        )
        .reset_index()
    )


def dataset_description(manifests: list[DatasetManifest]) -> pd.DataFrame:
    """Per dataset: mean muscle areas, HU and fat ratio over its scans, and the generator's true fat fractions."""
    description = cohort_description(manifests)
    per_dataset = description.drop(columns="case").groupby("dataset", sort=False).mean().round(2)
    truths = [t for m in manifests if (t := truth_table(m)) is not None]
    if truths:
        truth = pd.concat(truths)
        truth = truth[truth.muscle != "LPM"].assign(muscle=lambda t: t.muscle.str[-2:])
        fat = truth.groupby(["dataset", "muscle"]).fat_fraction.mean().unstack().add_prefix("true fat ").round(3)
        per_dataset = per_dataset.join(fat)
    return per_dataset


def middle_slice(manifest: DatasetManifest, case_index: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
    """The LPS slice in the middle of a scan's region and its class label (None without an expert label)."""
    from nnsam2_utils.data.geometry import region_slices
    from nnsam2_utils.data.labels import map_labels

    case = manifest.cases[case_index]
    image = read_image(manifest.resolve(case.image))
    discs = stored_discs(case.discs, image)
    low, high = region_slices(image, discs.L3L4, discs.L5S1)
    z = (low + high) // 2
    array = sitk.GetArrayFromImage(canonical(image))[z]
    if not case.label:
        return array, None
    label = sitk.GetArrayFromImage(canonical(read_image(manifest.resolve(case.label))))[z]
    return array, map_labels(label, manifest.label_map, str(manifest.resolve(case.label)), manifest.other_labels)


def _lps_spacing(reader) -> tuple[float, float, float]:
    """Voxel size along the LPS axes (x, y, z) of an image whose header has been read."""
    import numpy as np

    direction = np.abs(np.asarray(reader.GetDirection()).reshape(3, 3))
    spacing = reader.GetSpacing()
    return tuple(float(spacing[int(np.argmax(direction[axis]))]) for axis in range(3))


def cohort_table(manifests: list[DatasetManifest]) -> pd.DataFrame:
    """One row per scan from file headers only: dataset, modality, case, subject, size, voxel size, and
    the number of region slices the pipeline will use (L3/L4 to L5/S1 inclusive, after CT decimation)."""
    import pandas as pd
    import SimpleITK as sitk

    from nnsam2_utils.data.geometry import decimation_factor

    rows = []
    for manifest in manifests:
        for case in manifest.cases:
            reader = sitk.ImageFileReader()
            reader.SetFileName(str(manifest.resolve(case.image)))
            reader.ReadImageInformation()
            sx, sy, sz = _lps_spacing(reader)
            discs = stored_discs(case.discs, reader)
            span = abs(discs.L3L4 - discs.L5S1) + 1
            step = decimation_factor(sz, manifest.decimate_to_mm) if manifest.modality == "CT" else 1
            rows.append(
                {
                    "dataset": manifest.name,
                    "modality": manifest.modality,
                    "sequence": manifest.sequence,
                    "case": case.id,
                    "subject": case.subject or case.id,
                    "timepoint": case.timepoint,
                    "size": "×".join(str(s) for s in reader.GetSize()),
                    "voxel_mm": f"{sx:.2f}×{sy:.2f}×{sz:.2f}",
                    "region_slices": len(range(0, span, step)),
                    "has_label": case.label is not None,
                }
            )
    return pd.DataFrame(rows)


def cohort_phrase(generated: list[str], own: list[str]) -> str:
    """What the run's data are, in words for the abstract: the synthetic demo cohort, your own datasets, or both."""
    synthetic = "the synthetic demo cohort" if generated else ""
    yours = f"{len(own)} dataset{'s' if len(own) != 1 else ''} of your own ({', '.join(own)})" if own else ""
    return " and ".join(p for p in (synthetic, yours) if p) or "no datasets"


def cohort_caveat(generated: list[str], own: list[str]) -> str:
    """How far the run's numbers carry, in one sentence for the landing page: phantoms, your own data, or both."""
    phantoms = (
        "phantoms with exact ground truth, made hard in the ways real scans are but not real scans (the results page "
        "sets their numbers beside a real two-scan test)"
    )
    yours = f"{len(own)} dataset{'s' if len(own) != 1 else ''} of your own ({', '.join(own)})"
    if generated and own:
        return (
            f"The data mix the synthetic demo cohort with {yours}: {phantoms}, so read the rows of your own datasets "
            "on their own"
        )
    if own:
        return (
            f"The data are {yours}, not the synthetic demo cohort: these numbers are about your scans (a dataset "
            "without expert labels has measurements but no DSC)"
        )
    return f"The cohort is synthetic: {phantoms}, so the stage-to-stage gains here are not a forecast for your data"


def phantoms_vs_real() -> str:
    """The cohort chapter's section on how the generated phantoms compare with real scans (Markdown)."""
    return """## How the phantoms compare with real scans

The phantoms are made hard in the ways real lumbar scans are ([method §11](../methods.md), with a source for
each): men and women, muscles of different size, shape and left–right balance, the erector spinae shrinking and
the multifidus growing towards L5/S1, psoas and quadratus lumborum of the same intensity beside the back muscles,
fascia thinner than a voxel, patchy fat infiltration rising with age, pose, per-scan noise, coil bias and
breathing ghosts, and partial volume at 4–5 mm slices. They are still not real scans, and they need not favour
the two halves of the method the way real scans do. A reference point from real data: on a public Dixon dataset
of **two real scans** (400 × 400 × 29 voxels, 1 × 1 × 4 mm, L2–L5, four expert classes), run through this
pipeline as one's own data, stage 0 (LiteMedSAM) scored 0.876, nnU-Net trained on the three confident slices
0.82, and nnU-Net trained on both scans' expert labels 0.96 (scored on those same scans). The results page sets
this run's numbers beside these and says, from them, whether the phantoms lean the same way."""
