"""``nnsam2 data check``: is a dataset ready to run? Every problem at once, each with its file and fix.

Checks, per manifest: the manifest and its ``cases_csv`` load; the data root exists; every file
named is present; SHA-256 checksums match where the manifest pins them; images, labels, fat
images and the annotation are readable 3-D volumes; labels, fat images and the annotation share
their scan's grid; label values are all in ``label_map``; disc levels lie inside the volume and in
order; the annotation labels exactly one slice, inside the region. Nothing is modified.

``path_sha256`` is the checksum the manifests pin: a file's SHA-256, or for a DICOM folder the
SHA-256 of its sorted ``relative-name digest`` lines (so a folder has one stable checksum).
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nnsam2_utils.data.manifest import DatasetManifest, load_manifest
from nnsam2_utils.errors import DataError, GeometryError, ManifestError

log = logging.getLogger(__name__)

KINDS = ("manifest", "missing", "checksum", "unreadable", "geometry", "label-values", "empty", "discs", "annotation")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset: its kind (one of :data:`KINDS`), the file, what and the fix."""

    kind: str
    file: str
    what: str
    fix: str = ""

    def __str__(self) -> str:
        fix = f" Fix: {self.fix}" if self.fix else ""
        return f"[{self.kind}] {self.file}: {self.what}{fix}"


def path_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file, or of a folder's files (sorted relative names with their digests)."""
    from nnsam2_utils.data.io import sha256

    path = Path(path)
    if path.is_file():
        return sha256(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{file.relative_to(path).as_posix()} {sha256(file)}\n".encode())
    return digest.hexdigest()


EMPTY_FIX = (
    "export it again from the annotation tool; if it was resampled onto another grid, undo that and copy the "
    "header instead (resampling across a shifted grid moves every voxel outside)"
)


def _strip_path(message: str, path: Path) -> str:
    """An error message without its leading ``<path>: `` (the Problem names the file)."""
    prefix = f"{path}: "
    return message[len(prefix) :] if message.startswith(prefix) else message


class _Checker:
    """Collects the problems of one manifest."""

    def __init__(self, manifest: DatasetManifest, checksums: bool, read: bool):
        self.manifest, self.checksums, self.read = manifest, checksums, read
        self.problems: list[Problem] = []

    def add(self, kind: str, file: Path | str, what: str, fix: str = "") -> None:
        self.problems.append(Problem(kind, str(file), what, fix))

    def file(self, relative: str, expected: str | None, role: str) -> sitk.Image | None:
        """Presence, checksum and readability of one file; the image when it could be read."""
        try:
            path = self.manifest.resolve(relative)
        except ManifestError as exc:
            self.add("manifest", self.manifest.manifest_path, str(exc))
            return None
        if not path.exists():
            self.add(
                "missing",
                path,
                f"{role} not found.",
                f"put the file there, or correct '{relative}' in the manifest (paths are relative to root "
                f"{self.manifest.root_path}).",
            )
            return None
        if self.checksums and expected:
            found = path_sha256(path)
            if found != expected.lower():
                self.add(
                    "checksum",
                    path,
                    f"SHA-256 mismatch for the {role} (expected {expected}, found {found}).",
                    "the file is incomplete, altered or a different version: download or export it again; if this "
                    f"file is the right one, set its sha256 in the manifest to {found}.",
                )
        if not self.read:
            return None
        from nnsam2_utils.data.io import read_image

        try:
            return read_image(path)
        except DataError as exc:
            self.add("unreadable", path, _strip_path(str(exc), path))
            return None

    def grid(self, image: sitk.Image, other: sitk.Image, image_path: Path, other_path: Path, role: str) -> bool:
        from nnsam2_utils.data.geometry import check_same_grid

        try:
            check_same_grid(image, other, str(image_path), str(other_path))
        except GeometryError as exc:
            self.add("geometry", other_path, f"the {role} " + _strip_path(str(exc), other_path))
            return False
        return True

    def label_values(self, label: sitk.Image, path: Path) -> None:
        values = set(np.unique(sitk.GetArrayViewFromImage(label)).tolist()) - {0}
        unknown = sorted(int(v) if float(v).is_integer() else v for v in values - set(self.manifest.label_map))
        if unknown and self.manifest.other_labels != "background":
            self.add(
                "label-values",
                path,
                f"label values {unknown} are not in the manifest's label_map {dict(self.manifest.label_map)}.",
                "add them to label_map (0 = background, 1 = right LPM, 2 = left LPM), or correct the label file.",
            )
        if self.manifest.muscle_map:
            unmapped = sorted(set(self.manifest.label_map) - set(self.manifest.muscle_map) - {0})
            if unmapped and values & set(unmapped):
                self.add(
                    "label-values",
                    path,
                    f"label values {sorted(values & set(unmapped))} have no entry in muscle_map.",
                    "add them to muscle_map (R-ES, R-MF, L-MF, L-ES) or remove muscle_map.",
                )

    def discs(self, case, image: sitk.Image, path: Path) -> None:
        from nnsam2_utils.data.geometry import slice_axis, stored_discs

        n = image.GetSize()[slice_axis(image)]
        given = case.discs
        outside = {
            name: k
            for name, k in (("L3L4", given.L3L4), ("L4L5", given.L4L5), ("L5S1", given.L5S1))
            if isinstance(k, int) and not 0 <= k < n
        }
        if outside:
            self.add(
                "discs",
                path,
                f"case {case.id}: disc slices {outside} are outside the volume (0..{n - 1} along "
                "the superior–inferior axis).",
                "read the slice numbers off a viewer along the axial direction (first slice = 0: 3D Slicer's IJK "
                "index, ITK-SNAP's number minus 1) and correct them "
                "in the manifest or cases CSV; a scan that stops short of L5/S1 (or starts below L3/L4) takes "
                "`L5S1: edge` (`L3L4: edge`).",
            )
            return
        from nnsam2_utils.data.geometry import case_region

        try:
            case_region(image, case, path)
        except GeometryError as exc:
            self.add("discs", path, _strip_path(str(exc), path))
            return
        d = stored_discs(given, image)  # an edge is the volume's end slice on its side
        if d.L4L5 is not None and not min(d.L3L4, d.L5S1) < d.L4L5 < max(d.L3L4, d.L5S1):
            self.add(
                "discs",
                path,
                f"case {case.id}: L4L5 ({d.L4L5}) does not lie between L3L4 ({given.L3L4}) and L5S1 ({given.L5S1}).",
                "check the three disc slice numbers of this scan.",
            )

    def case(self, case) -> None:
        m = self.manifest
        image = self.file(case.image, case.sha256.image, "image")
        label = self.file(case.label, case.sha256.label, "label") if case.label else None
        fat = self.file(case.fat, case.sha256.fat, "fat image") if case.fat else None
        if image is None:
            return
        image_path = m.resolve(case.image)
        if self.odd_image_out(image, label, fat, image_path, case):
            return
        if label is not None:
            label_path = m.resolve(case.label)
            if self.grid(image, label, image_path, label_path, "label"):
                self.label_values(label, label_path)
                self.not_empty(case, image, label, image_path, label_path, "expert label")
        if fat is not None and self.grid(image, fat, image_path, m.resolve(case.fat), "fat image"):
            self.not_empty(case, image, fat, image_path, m.resolve(case.fat), "fat image")
        self.discs(case, image, image_path)

    def odd_image_out(self, image, label, fat, image_path: Path, case) -> bool:
        """When the label and the fat image agree with each other and not with the image, blame the image."""
        from nnsam2_utils.data.geometry import grid_differences, grid_fix, odd_grid_out

        if label is None or fat is None or odd_grid_out({"image": image, "label": label, "fat": fat}) != "image":
            return False
        problems = grid_differences(label, image)
        self.add(
            "geometry",
            image_path,
            f"case {case.id}: the image's grid differs from its label's and its fat image's, which agree with each "
            f"other: {'; '.join(problems)} (label vs image). The image is the file to fix.",
            grid_fix(problems).replace("onto the other", "onto the image")
            + f" (right_path: {self.manifest.resolve(case.label)}).",
        )
        return True

    def not_empty(self, case, image, volume, image_path: Path, path: Path, role: str) -> None:
        """An expert label or fat image with nothing in it, or nothing inside the L3/L4–L5/S1 region, is an error."""
        from nnsam2_utils.data.geometry import region_crop

        if not sitk.GetArrayViewFromImage(volume).any():
            self.add("empty", path, f"case {case.id}: the {role} is empty (every voxel 0).", EMPTY_FIX)
            return
        try:
            crop, _ = region_crop(self.manifest, case, image, image_path)
        except GeometryError:
            return  # reported by the disc check
        if not sitk.GetArrayFromImage(crop(volume)).any():  # a copy: a view would outlive its image
            self.add(
                "empty",
                path,
                f"case {case.id}: the {role} is empty inside the L3/L4–L5/S1 region (its voxels lie elsewhere).",
                "check the disc slice numbers of this case, and that the file belongs to this scan.",
            )

    def annotation(self) -> None:
        from nnsam2_utils.data.annotation import prepare_annotation

        note = self.manifest.annotation
        case = self.manifest.case(note.case)
        ann = self.file(note.file, note.sha256, "annotation")
        if ann is None or not self.read:
            return
        path = self.manifest.resolve(note.file)
        image_path = self.manifest.resolve(case.image)
        if not image_path.exists():
            return
        try:
            prepare_annotation(self.manifest)
        except GeometryError as exc:
            self.add("geometry", path, "the annotation " + _strip_path(str(exc), path))
        except DataError as exc:
            message = str(exc)
            if message.startswith(f"{image_path}:"):
                return  # the scan itself is unreadable: reported with the case
            kind = "label-values" if "label_map" in message else "annotation"
            self.add(kind, path, _strip_path(message, path))


def check_manifest(path: str | os.PathLike, checksums: bool = True, read: bool = True) -> list[Problem]:
    """Every problem of one dataset manifest (empty list: ready to run).

    ``checksums=False`` skips the SHA-256 checks; ``read=False`` checks presence (and checksums)
    only, without reading any image: the quick check a run does before it starts.
    """
    path = Path(path)
    try:
        manifest = load_manifest(path, cases_csv=False)
        root = manifest.root_path
        if not root.is_dir():
            how = " ".join((manifest.source.how_to_get or "Copy the dataset there.").split())
            return [
                Problem(
                    "missing",
                    str(root),
                    f"data root of '{manifest.name}' not found (manifest {path}).",
                    f"{how} Lay the files out as source.layout in the manifest says, then set 'root' in {path} "
                    "(or the environment variable it names) to that folder.",
                )
            ]
        manifest = load_manifest(path)
    except ManifestError as exc:
        return [Problem("manifest", str(path), _strip_path(str(exc), path))]
    checker = _Checker(manifest, checksums, read)
    for case in manifest.cases:
        checker.case(case)
    if manifest.annotation is not None:
        checker.annotation()
    log.info("%s: %d cases checked, %d problems", manifest.name, len(manifest.cases), len(checker.problems))
    return checker.problems


def report(problems: list[Problem]) -> str:
    """The problems as text, one per line, grouped by kind in :data:`KINDS` order."""
    order = {kind: i for i, kind in enumerate(KINDS)}
    return "\n".join(str(p) for p in sorted(problems, key=lambda p: (order.get(p.kind, 99), p.file)))
