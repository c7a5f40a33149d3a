"""External predictions: segmentations made elsewhere (e.g. TotalSegmentator outputs a user ran),
listed in a dataset manifest under ``external`` and scored beside nnsam2 in the same DSC table.

Each prediction file lies on its scan's original grid; it is mapped to the project's classes by
the entry's ``label_map`` and prepared exactly like the expert label (LPS, region crop, CT
decimation), so the DSC is computed over the same voxels as every other stage's.
"""

from __future__ import annotations

import logging
import re

import numpy as np
import pandas as pd
import SimpleITK as sitk

from nnsam2_utils.data.geometry import check_same_grid, region_crop
from nnsam2_utils.data.io import array_to_image, read_image, write_csv, write_image
from nnsam2_utils.data.manifest import Case, DatasetManifest, ExternalPredictions
from nnsam2_utils.errors import DataError
from nnsam2_utils.evaluate.metrics import dsc_rows

log = logging.getLogger(__name__)

PREFIX = "external_"


def stage_name(external: ExternalPredictions) -> str:
    """The stage name of an external prediction set in tables and folders: ``external_<slug>``."""
    return PREFIX + re.sub(r"[^a-z0-9]+", "_", external.name.lower()).strip("_")


def map_to_classes(values: np.ndarray, label_map: dict[int, int]) -> np.ndarray:
    """Source values → classes (0, 1, 2); values the map does not name are background."""
    out = np.zeros(values.shape, dtype=np.uint8)
    for source, cls in label_map.items():
        out[values == source] = cls
    return out


def prepared_prediction(manifest: DatasetManifest, case: Case, external: ExternalPredictions) -> sitk.Image:
    """One external prediction in the prepared grid of its scan, as classes."""
    image_path = manifest.resolve(case.image)
    path = manifest.resolve(external.pattern.format(id=case.id))
    if not path.exists():
        raise DataError(
            f"{path}: the '{external.name}' prediction of case {case.id} is missing "
            f"(pattern '{external.pattern}' in {manifest.manifest_path}). Add the file or fix the pattern."
        )
    image = read_image(image_path)
    prediction = read_image(path)
    check_same_grid(image, prediction, str(image_path), str(path))
    crop, _ = region_crop(manifest, case, image, image_path)
    cropped = crop(sitk.Cast(prediction, sitk.sitkUInt16))
    classes = array_to_image(map_to_classes(sitk.GetArrayFromImage(cropped), external.label_map), cropped)
    return classes


def score_dataset(workspace, manifest: DatasetManifest) -> pd.DataFrame:
    """Prepare and score every external prediction set of a dataset against the expert labels.

    Writes ``<work>/<stage>/<dataset>/labels/<case>.nii.gz`` and ``dsc.csv`` per set (the layout
    of every stage, so the results chapter collects them); returns the DSC rows of all sets.
    """
    frames = []
    for external in manifest.external:
        stage = stage_name(external)
        rows = []
        for case in manifest.cases:
            truth_path = workspace.prepared(manifest.name, case.id) / "label.nii.gz"
            prepared = prepared_prediction(manifest, case, external)
            write_image(prepared, workspace.labels(stage, manifest.name, case.id))
            if truth_path.exists():
                truth = sitk.GetArrayFromImage(read_image(truth_path))
                rows += dsc_rows(manifest.name, case.id, stage, sitk.GetArrayFromImage(prepared), truth)
        table = pd.DataFrame(rows, columns=["dataset", "case", "class", "stage", "dsc"])
        write_csv(table, workspace.stage(stage, manifest.name) / "dsc.csv")
        log.info("%s on %s: %d scans scored", external.name, manifest.name, table["case"].nunique())
        frames.append(table)
    return (
        pd.concat(frames, ignore_index=True)
        if frames
        else pd.DataFrame(columns=["dataset", "case", "class", "stage", "dsc"])
    )
