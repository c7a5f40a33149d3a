"""Dataset manifests: one YAML per dataset, validated with pydantic.

A manifest names the scans of one dataset (image, optional expert label, optional extra
channels such as the Dixon fat image), the disc levels that bound the region of every scan,
how the source label values map to the project's classes, and where the files come from.
Paths are relative to ``root``, which is itself relative to the manifest's folder unless
absolute. ``${VAR}`` in ``root`` expands environment variables. An image may be a file (NIfTI,
NRRD, MHA) or a folder holding one DICOM series.

Per-scan facts may also come from a CSV (``cases_csv``): one row per scan with an id column and
any of image, label, fat, subject, timepoint and the disc levels; rows complete the cases listed in
the YAML (same id) or add new ones. The one annotated slice may be drawn by the user
(``annotation``): a label volume on the grid of one scan with exactly one labelled slice.

Classes of the project: 0 background, 1 right LPM, 2 left LPM. Where the source labels
separate erector spinae (ES) and multifidus (MF), ``muscle_map`` keeps that four-class
information: R-ES, R-MF, L-MF, L-ES.
"""

from __future__ import annotations

import math
import os
import string
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.functional_validators import PlainValidator
from pydantic_core import PydanticCustomError

from nnsam2_utils.data.io import read_yaml
from nnsam2_utils.errors import ManifestError, validation_problems

CLASSES: dict[int, str] = {1: "right_lpm", 2: "left_lpm"}
MUSCLES: tuple[str, ...] = ("R-ES", "R-MF", "L-MF", "L-ES")
MUSCLE_TO_CLASS: dict[str, int] = {"R-ES": 1, "R-MF": 1, "L-MF": 2, "L-ES": 2}
DISC_LEVELS: tuple[str, ...] = ("L3L4", "L4L5", "L5S1")
#: A region end the scan does not reach: ``L5S1: edge`` (the scan ends above L5/S1), ``L3L4: edge`` (it starts below
#: L3/L4). The region then runs to the volume's inferior (superior) end slice (docs/method.md §2.1).
EDGE = "edge"
#: Which end of the volume an ``edge`` level stands for, and what it means for the scan.
EDGE_SIDE: dict[str, str] = {"L3L4": "superior", "L5S1": "inferior"}
EDGE_MEANING: dict[str, str] = {"L3L4": "the scan starts below L3/L4", "L5S1": "the scan ends above L5/S1"}


def class_targets(label_map: dict[int, int]) -> dict[int, int]:
    """A label map's targets must be the project's classes (0 background, 1 right LPM, 2 left LPM)."""
    bad = {k: v for k, v in label_map.items() if v not in (0, 1, 2)}
    if bad:
        raise ValueError(f"label_map targets must be 0, 1 or 2 (background, right LPM, left LPM); got {bad}")
    for target, side in ((1, "right"), (2, "left")):
        if target not in label_map.values():
            raise ValueError(
                f"label_map {label_map} maps no value to {target} ({side} LPM): both sides are segmented; map the "
                f"label value(s) of the {side} muscles to {target}"
            )
    return label_map


#: The placeholders a path pattern may hold (``{id}``: the case id).
PATTERN_PLACEHOLDERS: tuple[str, ...] = ("id",)


def path_pattern(value: str | None) -> str | None:
    """A path pattern holds only the known placeholders (``{id}``), each plain: checked when the manifest is
    loaded, not when the first scan's path is built (an unknown name was a KeyError traceback there)."""
    if value is None:
        return None
    allowed = ", ".join(f"{{{name}}}" for name in PATTERN_PLACEHOLDERS)
    try:
        fields = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(value) if name is not None]
    except ValueError as exc:
        raise ValueError(
            f"path pattern {value!r} is not a valid pattern ({exc}); write a literal brace as {{{{ or }}}}, "
            f"placeholders allowed: {allowed}"
        ) from exc
    unknown = [f"{{{name}}}" for name, spec, conv in fields if name not in PATTERN_PLACEHOLDERS or spec or conv]
    if unknown:
        raise ValueError(
            f"path pattern {value!r} has the unknown placeholder(s) {', '.join(unknown)}; placeholders allowed: "
            f"{allowed} (the case id), without format specs"
        )
    return value


def slice_thickness_mm(value: float | None) -> float | None:
    """``decimate_to_mm``: a finite slice thickness in mm above 0, or None (no decimation)."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise ValueError(
            f"decimate_to_mm must be a slice thickness in mm above 0 (e.g. 3.0), or left out for no decimation; "
            f"got {value}"
        )
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _disc_slice(value: object) -> int | str:
    """A region end's value: a slice number (≥ 0, as int, integral float or digits) or ``edge`` (any case)."""
    if isinstance(value, str) and value.strip().lower() == EDGE:
        return EDGE
    number = value.strip() if isinstance(value, str) else value
    if isinstance(number, str) and number.isascii() and number.lstrip("-").isdigit():
        number = int(number)
    if isinstance(number, float) and number.is_integer():
        number = int(number)
    if isinstance(number, bool) or not isinstance(number, int):
        raise PydanticCustomError(
            "disc_slice",
            "Input should be a valid integer (the disc's slice number) or 'edge' (the scan does not reach this disc: "
            "the region runs to the volume's end)",
        )
    if number < 0:
        raise PydanticCustomError("disc_slice", "Input should be greater than or equal to 0 (slices count from 0)")
    return number


#: The slice number of L3/L4 or L5S1, or ``edge``.
RegionEnd = Annotated[int | Literal["edge"], PlainValidator(_disc_slice)]


class Discs(_Strict):
    """Slice index of the disc levels of one scan, counted along the stored axis closest to
    superior–inferior (k for an axial scan), as a viewer shows it.

    ``L5S1: edge`` says the scan ends above L5/S1 (``L3L4: edge``: it starts below L3/L4): the region runs to the
    volume's end slice on that side, with a warning, and that level is not measured. One end at most."""

    L3L4: RegionEnd
    L4L5: int | None = Field(default=None, ge=0)
    L5S1: RegionEnd

    @model_validator(mode="after")
    def _one_edge_at_most(self) -> Discs:
        if self.L3L4 == EDGE and self.L5S1 == EDGE:
            raise ValueError(
                "L3L4 and L5S1 are both 'edge': give at least one of the two discs as a slice number (the region "
                "needs one disc in the scan to stand on)"
            )
        return self

    @property
    def edges(self) -> tuple[str, ...]:
        """The levels given as ``edge`` (the scan does not reach them)."""
        return tuple(level for level in ("L3L4", "L5S1") if getattr(self, level) == EDGE)


SHA256 = r"^[0-9a-f]{64}$"


class Checksums(_Strict):
    """SHA-256 of a case's files (of a DICOM folder: see :func:`nnsam2_utils.data.checks.path_sha256`)."""

    image: str | None = Field(default=None, pattern=SHA256)
    label: str | None = Field(default=None, pattern=SHA256)
    fat: str | None = Field(default=None, pattern=SHA256)


class Case(_Strict):
    """One scan."""

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    image: str
    label: str | None = None
    fat: str | None = None
    subject: str | None = None
    timepoint: int | None = None
    discs: Discs | None = None  # required, here or from cases_csv
    sha256: Checksums = Checksums()


class Download(_Strict):
    """One file with a direct link, for ``nnsam2 data fetch`` (path relative to ``root``)."""

    url: str
    path: str
    sha256: str | None = Field(default=None, pattern=SHA256)
    md5: str | None = Field(default=None, pattern=r"^[0-9a-f]{32}$")


class Source(_Strict):
    """Where the files come from and what the user must know to lay them out."""

    url: str | None = None
    citation: str | None = None
    licence: str | None = None
    how_to_get: str | None = None
    layout: str | None = None  # the expected folders and file names under root
    label_source: str | None = None  # where the expert labels come from
    disc_source: str | None = None  # where the disc levels come from
    downloads: list[Download] = Field(default_factory=list)


class Annotation(_Strict):
    """A user-drawn annotated slice: a label volume on the grid of scan ``case`` with exactly one
    labelled slice (as ITK-SNAP or 3D Slicer save it), values as in ``label_map``. It replaces the
    medoid reference scan and its expert-labelled top slice."""

    case: str
    file: str
    sha256: str | None = Field(default=None, pattern=SHA256)


class ExternalPredictions(_Strict):
    """Segmentations of this dataset's scans made elsewhere (e.g. TotalSegmentator run by the user),
    scored beside nnsam2: one file per scan on the scan's own grid, found by ``pattern`` (relative
    to ``root``, ``{id}`` the case id), its values mapped to the classes by ``label_map``
    (values not listed are background)."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9 _.+-]*$")
    pattern: str
    label_map: dict[int, int]
    citation: str | None = None

    @field_validator("pattern")
    @classmethod
    def _known_placeholders(cls, value: str) -> str:
        return path_pattern(value)

    @field_validator("label_map")
    @classmethod
    def _to_classes(cls, value: dict[int, int]) -> dict[int, int]:
        return class_targets(value)


CSV_FIELDS: tuple[str, ...] = ("image", "label", "fat", "subject", "timepoint", "L3L4", "L4L5", "L5S1")


class CasesCsv(_Strict):
    """Per-scan facts from a CSV (path relative to ``root``).

    ``columns`` maps the project's names (``id``, image, label, fat, subject, timepoint, L3L4,
    L4L5, L5S1) to the CSV's own column names where they differ. ``image``/``label``/``fat`` are
    path patterns with ``{id}`` for scans whose paths are not in a column. ``strip_suffix`` is
    removed from the id column's values (e.g. ``.nii.gz`` when the CSV names files).
    """

    file: str
    columns: dict[str, str] = Field(default_factory=dict)
    image: str | None = None
    label: str | None = None
    fat: str | None = None
    strip_suffix: str | None = None

    @field_validator("columns")
    @classmethod
    def _known_columns(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(value) - {"id", *CSV_FIELDS})
        if unknown:
            raise ValueError(f"cases_csv.columns: unknown names {unknown}; use id, {', '.join(CSV_FIELDS)}")
        return value

    @field_validator("image", "label", "fat")
    @classmethod
    def _known_placeholders(cls, value: str | None) -> str | None:
        return path_pattern(value)


class DatasetManifest(_Strict):
    """A whole dataset."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_]*$")
    modality: Literal["MRI", "CT"]
    sequence: Literal["T1w", "T2w", "Dixon", "CT"]
    description: str = ""
    root: str
    source: Source = Source()
    label_map: dict[int, int] = Field(default_factory=lambda: {1: 1, 2: 2})
    other_labels: Literal["error", "background"] = "error"  # label values not in label_map: an error, or background
    muscle_map: dict[int, Literal["R-ES", "R-MF", "L-MF", "L-ES"]] | None = None
    decimate_to_mm: float | None = None
    annotation: Annotation | None = None
    cases_csv: CasesCsv | None = None
    cases: list[Case] = Field(default_factory=list)
    external: list[ExternalPredictions] = Field(default_factory=list)
    manifest_path: str | None = None

    @field_validator("label_map")
    @classmethod
    def _classes_known(cls, value: dict[int, int]) -> dict[int, int]:
        return class_targets(value)

    @field_validator("decimate_to_mm")
    @classmethod
    def _slice_thickness(cls, value: float | None) -> float | None:
        return slice_thickness_mm(value)

    @model_validator(mode="after")
    def _maps_agree(self) -> DatasetManifest:
        for value, muscle in (self.muscle_map or {}).items():
            side = 1 if muscle.startswith("R") else 2
            if self.label_map.get(value) != side:
                raise ValueError(
                    f"muscle_map says label value {value} is {muscle} ({'right' if side == 1 else 'left'}), but "
                    f"label_map maps it to {self.label_map.get(value, 'nothing')}: make the two maps agree"
                )
        return self

    @model_validator(mode="after")
    def _unique_ids(self) -> DatasetManifest:
        seen: set[str] = set()
        dupes = [c.id for c in self.cases if c.id in seen or seen.add(c.id)]
        if dupes:
            raise ValueError(f"duplicate case ids: {sorted(set(dupes))}")
        if not self.cases and self.cases_csv is None:
            raise ValueError("no cases: list them under 'cases' or name a 'cases_csv'")
        for case in self.cases:
            if case.discs is None:
                if self.cases_csv is None:
                    raise ValueError(
                        f"case {case.id}: no disc levels; give 'discs' or a 'cases_csv' with L3L4 and L5S1 columns"
                    )
                continue
            if case.discs.L3L4 == case.discs.L5S1 and not case.discs.edges:
                raise ValueError(f"case {case.id}: L3L4 and L5S1 disc slices are the same ({case.discs.L3L4})")
        if (
            self.annotation is not None
            and self.cases
            and self.cases_csv is None
            and self.annotation.case not in {c.id for c in self.cases}
        ):
            raise ValueError(f"annotation.case '{self.annotation.case}' is not a case id of this manifest")
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
            raise ManifestError(
                f"{self.manifest_path}: path '{relative}' escapes the data root {root}. Use a path inside the root."
            )
        return path

    def case(self, case_id: str) -> Case:
        """The case with this id."""
        for case in self.cases:
            if case.id == case_id:
                return case
        raise ManifestError(f"{self.manifest_path}: no case '{case_id}'. Known: {[c.id for c in self.cases]}")


def _validate(raw: dict, path: Path) -> DatasetManifest:
    try:
        return DatasetManifest.model_validate(raw)
    except ValidationError as exc:
        raise ManifestError(
            f"{path}: invalid manifest: {validation_problems(exc)}. Correct the fields named "
            "(each field and its type: nnsam2_utils/data/manifest.py, class DatasetManifest)."
        ) from exc


def csv_rows(manifest: DatasetManifest) -> list[dict]:
    """The cases of ``manifest.cases_csv`` as dicts in the manifest's own field names (discs nested).

    Empty cells are left out, so a CSV can fill only what the YAML lacks.
    """
    import pandas as pd

    spec = manifest.cases_csv
    where = manifest.manifest_path or "manifest"
    csv_path = manifest.resolve(spec.file)
    if not csv_path.exists():
        raise ManifestError(
            f"{where}: cases_csv '{csv_path}' not found. Write it (one row per scan: "
            f"{spec.columns.get('id', 'id')}, disc levels L3L4, L4L5, L5S1, …) or fix 'cases_csv.file'."
        )
    try:
        table = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ManifestError(
            f"{csv_path}: not a readable CSV ({exc}). Save it as comma-separated text with a header row."
        ) from exc
    column = {name: spec.columns.get(name, name) for name in ("id", *CSV_FIELDS)}
    if column["id"] not in table.columns:
        raise ManifestError(
            f"{csv_path}: no id column '{column['id']}' (columns: {list(table.columns)}). "
            "Add it, or map your column with cases_csv.columns.id."
        )
    rows = []
    seen: dict[str, int] = {}
    for index, record in table.iterrows():
        case_id = record[column["id"]].strip()
        if spec.strip_suffix and case_id.endswith(spec.strip_suffix):
            case_id = case_id[: -len(spec.strip_suffix)]
        if not case_id:
            raise ManifestError(f"{csv_path}: row {index + 2} has an empty id. Fill it or delete the row.")
        if case_id in seen:
            raise ManifestError(
                f"{csv_path}: rows {seen[case_id]} and {index + 2} both describe scan '{case_id}'. Keep one row per "
                "scan (which one is right cannot be guessed)."
            )
        seen[case_id] = index + 2
        row: dict = {"id": case_id}
        for name in ("image", "label", "fat"):
            value = record.get(column[name], "") if column[name] in table.columns else ""
            if value.strip():
                row[name] = value.strip()
            elif getattr(spec, name):
                row[name] = getattr(spec, name).format(id=case_id)
        for name in ("subject", "timepoint"):
            if column[name] in table.columns and record[column[name]].strip():
                row[name] = record[column[name]].strip()
        discs = {}
        for level in DISC_LEVELS:
            if column[level] in table.columns and record[column[level]].strip():
                text = record[column[level]].strip()
                if text.lower() == EDGE:
                    discs[level] = EDGE
                    continue
                try:
                    discs[level] = int(float(text)) if float(text).is_integer() else text
                except ValueError:
                    discs[level] = text
        if discs:
            row["discs"] = discs
        rows.append(row)
    return rows


def merge_cases(listed: list[dict], from_csv: list[dict]) -> list[dict]:
    """Cases of the YAML completed by CSV rows with the same id; CSV-only ids appended. YAML wins."""
    by_id = {row["id"]: row for row in from_csv}
    merged = []
    for case in listed:
        extra = by_id.pop(str(case.get("id")), {})
        merged.append({**extra, **{k: v for k, v in case.items() if v is not None}})
    return merged + list(by_id.values())


def load_manifest(path: str | os.PathLike, cases_csv: bool = True) -> DatasetManifest:
    """Load and validate a dataset manifest (and its ``cases_csv``); errors name the file and the field.

    ``cases_csv=False`` leaves the CSV unread (for what needs only the source and root, before the
    data is there)."""
    path = Path(path)
    if not path.exists():
        raise ManifestError(f"{path}: manifest not found. Create it from data_manifest/TEMPLATE.yaml.")
    raw = read_yaml(path, ManifestError)
    if not isinstance(raw, dict):
        raise ManifestError(f"{path}: expected a mapping at the top level, found {type(raw).__name__}.")
    raw["manifest_path"] = str(path.resolve())
    manifest = _validate(raw, path)
    if manifest.cases_csv is None or not cases_csv:
        return manifest
    raw = {**raw, "cases": merge_cases([dict(c) for c in raw.get("cases") or []], csv_rows(manifest))}
    manifest = _validate(raw, path)
    missing = [c.id for c in manifest.cases if c.discs is None]
    if missing:
        raise ManifestError(
            f"{path}: no disc levels for cases {missing[:10]}{' …' if len(missing) > 10 else ''}. "
            f"Add rows with L3L4 and L5S1 to {manifest.cases_csv.file} or 'discs' to those cases."
        )
    if not manifest.cases:
        raise ManifestError(f"{path}: the cases_csv {manifest.cases_csv.file} has no rows. Add one row per scan.")
    if manifest.annotation is not None and manifest.annotation.case not in {c.id for c in manifest.cases}:
        raise ManifestError(
            f"{path}: annotation.case '{manifest.annotation.case}' is not a case id. "
            f"Known: {[c.id for c in manifest.cases][:10]}."
        )
    return manifest


def dump_manifest(manifest: DatasetManifest, path: str | os.PathLike) -> Path:
    """Write a manifest as YAML atomically (without the runtime-only ``manifest_path``)."""
    from nnsam2_utils.data.io import atomic_path

    data = manifest.model_dump(mode="json", exclude={"manifest_path"}, exclude_none=True)
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path
