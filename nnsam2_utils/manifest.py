"""Dataset manifests: one YAML per dataset, validated with pydantic.

A manifest names the scans of one dataset (image, optional expert label, optional extra
channels such as the Dixon fat image), the disc levels that bound the region of every scan,
how the source label values map to the project's classes, and where the files come from.
Paths are relative to ``root``, which is itself relative to the manifest's folder unless
absolute. ``${VAR}`` in ``root`` expands environment variables.

Classes of the project: 0 background, 1 right LPM, 2 left LPM. Where the source labels
separate erector spinae (ES) and multifidus (MF), ``muscle_map`` keeps that four-class
information: R-ES, R-MF, L-MF, L-ES.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ManifestError

CLASSES: dict[int, str] = {1: "right_lpm", 2: "left_lpm"}
MUSCLES: tuple[str, ...] = ("R-ES", "R-MF", "L-MF", "L-ES")
MUSCLE_TO_CLASS: dict[str, int] = {"R-ES": 1, "R-MF": 1, "L-MF": 2, "L-ES": 2}
DISC_LEVELS: tuple[str, ...] = ("L3L4", "L4L5", "L5S1")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Discs(_Strict):
    """Slice index of the disc levels of one scan, counted along the stored axis closest to
    superior–inferior (k for an axial scan), as a viewer shows it."""

    L3L4: int = Field(ge=0)
    L4L5: int | None = Field(default=None, ge=0)
    L5S1: int = Field(ge=0)


class Checksums(_Strict):
    image: str | None = None
    label: str | None = None
    fat: str | None = None


class Case(_Strict):
    """One scan."""

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    image: str
    label: str | None = None
    fat: str | None = None
    subject: str | None = None
    timepoint: int | None = None
    discs: Discs
    sha256: Checksums = Checksums()


class Source(_Strict):
    url: str | None = None
    citation: str | None = None
    licence: str | None = None
    how_to_get: str | None = None


class Annotation(_Strict):
    """A user-drawn annotated slice: a label volume with one labelled slice."""

    case: str
    file: str


class DatasetManifest(_Strict):
    """A whole dataset."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_]*$")
    modality: Literal["MRI", "CT"]
    sequence: Literal["T1w", "T2w", "Dixon", "CT"]
    description: str = ""
    root: str
    source: Source = Source()
    label_map: dict[int, int] = Field(default_factory=lambda: {1: 1, 2: 2})
    muscle_map: dict[int, Literal["R-ES", "R-MF", "L-MF", "L-ES"]] | None = None
    decimate_to_mm: float | None = None
    annotation: Annotation | None = None
    cases: list[Case] = Field(min_length=1)
    manifest_path: str | None = None

    @field_validator("label_map")
    @classmethod
    def _classes_known(cls, value: dict[int, int]) -> dict[int, int]:
        bad = {k: v for k, v in value.items() if v not in (0, 1, 2)}
        if bad:
            raise ValueError(f"label_map targets must be 0, 1 or 2 (background, right LPM, left LPM); got {bad}")
        return value

    @model_validator(mode="after")
    def _unique_ids(self) -> "DatasetManifest":
        seen: set[str] = set()
        dupes = [c.id for c in self.cases if c.id in seen or seen.add(c.id)]
        if dupes:
            raise ValueError(f"duplicate case ids: {sorted(set(dupes))}")
        for case in self.cases:
            if case.discs.L3L4 == case.discs.L5S1:
                raise ValueError(f"case {case.id}: L3L4 and L5S1 disc slices are the same ({case.discs.L3L4})")
        return self

    @property
    def root_path(self) -> Path:
        """The data root as an absolute path."""
        root = Path(os.path.expandvars(self.root)).expanduser()
        if not root.is_absolute() and self.manifest_path:
            root = Path(self.manifest_path).parent / root
        return root.resolve()

    def resolve(self, relative: str) -> Path:
        """Absolute path of a file named in the manifest; refuses paths that escape ``root``."""
        root = self.root_path
        path = (root / relative).resolve()
        if root != path and root not in path.parents:
            raise ManifestError(f"{self.manifest_path}: path '{relative}' escapes the data root {root}. Use a path inside the root.")
        return path

    def case(self, case_id: str) -> Case:
        """The case with this id."""
        for case in self.cases:
            if case.id == case_id:
                return case
        raise ManifestError(f"{self.manifest_path}: no case '{case_id}'. Known: {[c.id for c in self.cases]}")


def load_manifest(path: str | os.PathLike) -> DatasetManifest:
    """Load and validate a dataset manifest; errors name the file and the field."""
    path = Path(path)
    if not path.exists():
        raise ManifestError(f"{path}: manifest not found. Create it from data_manifest/TEMPLATE.yaml.")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ManifestError(f"{path}: not valid YAML ({exc}). Fix the syntax at the position shown.") from exc
    if not isinstance(raw, dict):
        raise ManifestError(f"{path}: expected a mapping at the top level, found {type(raw).__name__}.")
    raw["manifest_path"] = str(path.resolve())
    try:
        return DatasetManifest.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top)'}: {err['msg']}" for err in exc.errors()
        )
        raise ManifestError(f"{path}: invalid manifest: {problems}. Correct the fields named "
                            "(each field and its type: nnsam2_utils/manifest.py, class DatasetManifest).") from exc


def dump_manifest(manifest: DatasetManifest, path: str | os.PathLike) -> Path:
    """Write a manifest as YAML atomically (without the runtime-only ``manifest_path``)."""
    from .io import atomic_path

    data = manifest.model_dump(mode="json", exclude={"manifest_path"}, exclude_none=True)
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def cohort_table(manifests: list[DatasetManifest]) -> "pd.DataFrame":
    """One row per scan from file headers only: dataset, modality, case, subject, size, voxel size, and
    the number of region slices the pipeline will use (L3/L4 to L5/S1 inclusive, after CT decimation)."""
    import pandas as pd
    import SimpleITK as sitk

    from .prepare import decimation_factor

    rows = []
    for manifest in manifests:
        for case in manifest.cases:
            reader = sitk.ImageFileReader()
            reader.SetFileName(str(manifest.resolve(case.image)))
            reader.ReadImageInformation()
            sx, sy, sz = reader.GetSpacing()
            span = abs(case.discs.L3L4 - case.discs.L5S1) + 1
            step = decimation_factor(sz, manifest.decimate_to_mm) if manifest.modality == "CT" else 1
            rows.append({"dataset": manifest.name, "modality": manifest.modality, "sequence": manifest.sequence,
                         "case": case.id, "subject": case.subject or case.id, "timepoint": case.timepoint,
                         "size": "×".join(str(s) for s in reader.GetSize()),
                         "voxel_mm": f"{sx:.2f}×{sy:.2f}×{sz:.2f}",
                         "region_slices": len(range(0, span, step)),
                         "has_label": case.label is not None})
    return pd.DataFrame(rows)
