"""The user's own annotated slice: a label volume with one labelled slice (ITK-SNAP, 3D Slicer).

When a manifest names ``annotation: {case, file}``, that slice replaces the medoid reference
scan and its expert-labelled top slice (docs/method.md §3) as the dataset's one annotated slice. The
volume must share the grid of its scan; its values follow the manifest's ``label_map``. After
preparation it lives, cropped and in LPS like every prepared volume, at
``prepared/<dataset>/<case>/annotation.nii.gz``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from nnsam2_utils.data.annotation import prepare_annotation
from nnsam2_utils.data.manifest import DatasetManifest
from nnsam2_utils.errors import DataError

log = logging.getLogger(__name__)

FILE_NAME = "annotation.nii.gz"


def write_prepared_annotation(manifest: DatasetManifest, prepared_dir: str | Path) -> Path | None:
    """Write the prepared annotation into ``prepared_dir/<case>/annotation.nii.gz``; None without one."""
    from nnsam2_utils.data.io import write_image

    if manifest.annotation is None:
        return None
    prepared, index = prepare_annotation(manifest)
    path = write_image(prepared, Path(prepared_dir) / manifest.annotation.case / FILE_NAME)
    log.info("user annotation of %s: scan %s, stack slice %d", manifest.name, manifest.annotation.case, index)
    return path


def user_annotation(prepared_dir: str | Path, manifest: DatasetManifest) -> tuple[str, int] | None:
    """(reference case, stack slice index) of the user's prepared annotation, or None when the
    manifest names none (then stage 0 picks the medoid and its top slice)."""
    from nnsam2_utils.prepare.model_input import load_stack

    if manifest.annotation is None:
        return None
    case = manifest.annotation.case
    path = Path(prepared_dir) / case / FILE_NAME
    if not path.exists():
        raise DataError(f"{path}: the prepared annotation is missing. Re-run the prepare step of {manifest.name}.")
    stack, _ = load_stack(path.parent, "annotation")
    return case, int(np.flatnonzero(stack.reshape(len(stack), -1).any(axis=1))[0])
