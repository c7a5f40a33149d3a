"""New scans for ``nnsam2 predict`` (docs/method.md §13): files or DICOM series folders, read, checked and prepared
the way the run prepared its own scans (LPS orientation, the slices to segment, unclipped intensities).

A new scan usually comes without disc levels, so the model segments the whole volume, or the slice range a user
gives (``--slices FIRST:LAST``, counted along the stored axis closest to superior–inferior, first slice = 0, as a
viewer numbers them). CT is not decimated: the 2-D model segments every slice (a 3-D model resamples to its own
spacing), so every slice of the input gets a label.

Disc levels may be given per scan (``--discs L3L4=12,L4L5=8,L5S1=3``, slice numbers counted as ``--slices``
counts them): the scan is then also measured per level (docs/method.md §8.1). A disc outside the scan, or
levels out of their anatomical order (L3/L4 superior to L4/L5, L4/L5 superior to L5/S1), are refused with the
file named.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nnsam2_utils.data.checks import path_sha256
from nnsam2_utils.data.geometry import canonical, check_same_grid, lps_slice_index, region_slices, slice_axis
from nnsam2_utils.data.io import check_finite, read_image
from nnsam2_utils.data.manifest import DISC_LEVELS, EDGE
from nnsam2_utils.errors import DataError, GeometryError

log = logging.getLogger(__name__)

#: File endings of the scan formats read (a folder is read as one DICOM series).
SCAN_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
MODALITIES: tuple[str, ...] = ("MRI", "CT")
#: Below this value a scan holds air in Hounsfield units, which a magnitude MRI never does.
HU_AIR = -500.0
#: A CT in HU holds values below this one: fat (−190 to −30 HU) or air (−1000 HU).
HU_FAT = -100.0


@dataclass(frozen=True)
class Scan:
    """A new scan, read and checked: what it is and what to segment (its images are loaded by :func:`load_scan`,
    one scan at a time, so a long list of scans never sits in memory at once)."""

    name: str  # the stem of its outputs (``<name>_lpm.nii.gz``)
    path: Path
    sha256: str
    modality: str
    slices: tuple[int, int] | None  # the slice range given, or None for the whole volume
    z_range: tuple[int, int]  # the LPS slices segmented (low, high), inclusive
    fat_path: Path | None = None
    fat_sha256: str | None = None
    discs: dict[str, int] | None = None  # the disc slice numbers given (as a viewer numbers them), or None
    disc_positions: dict[str, float] | None = None  # the same discs as slice indices of the prepared stack


@dataclass(frozen=True)
class ScanImages:
    """A scan's images: as stored, and prepared for the model (with its Dixon fat image, prepared alike)."""

    image: sitk.Image  # as stored: the grid and orientation its labels are written on
    prepared: sitk.Image  # LPS, the slices to segment, unclipped: what the model sees and what is measured
    fat: sitk.Image | None = None


def scan_name(path: str | Path) -> str:
    """The name of a scan's outputs: its file name without the image ending, or its DICOM folder's name."""
    path = Path(path)
    name = path.name
    if path.is_file():
        ending = next((s for s in SCAN_SUFFIXES if name.lower().endswith(s)), path.suffix)
        name = name[: len(name) - len(ending)] if ending else name
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "scan"


def parse_slices(text: str) -> tuple[int, int]:
    """``"FIRST:LAST"`` as two slice numbers (inclusive, first slice = 0); ValueError with the expected form."""
    parts = text.split(":")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(
            f"--slices {text!r}: expected FIRST:LAST, two slice numbers counted from 0 along the superior–inferior "
            "axis as a viewer shows them (e.g. 3:12)"
        )
    first, last = (int(p) for p in parts)
    return first, last


def parse_discs(text: str) -> dict[str, int]:
    """``"L3L4=12,L4L5=8,L5S1=3"`` as disc level → slice number; any of the three levels, each at most once.

    ``L3/L4`` is read as ``L3L4`` (any case). ``LEVEL=edge`` (as in a manifest: the scan does not reach that disc) is
    read as the level left out: it is not measured. ValueError with the expected form for anything else.
    """
    form = (
        "expected LEVEL=SLICE pairs separated by commas, LEVEL one of L3L4, L4L5, L5S1 and SLICE a slice number "
        "counted from 0 along the superior–inferior axis as a viewer shows it (e.g. L3L4=12,L4L5=8,L5S1=3; "
        "L5S1=edge or leaving L5S1 out: the scan ends above L5/S1)"
    )
    discs: dict[str, int] = {}
    edges: set[str] = set()
    for part in text.split(","):
        name, sep, number = part.partition("=")
        level = name.strip().upper().replace("/", "")
        if not sep or not level:
            raise ValueError(f"--discs {text!r}: {part.strip()!r} is not LEVEL=SLICE; {form}")
        if level not in DISC_LEVELS:
            raise ValueError(f"--discs {text!r}: unknown disc level {name.strip()!r}; {form}")
        if level in discs or level in edges:
            raise ValueError(f"--discs {text!r}: {level} is given twice; give each level once")
        if number.strip().lower() == EDGE:
            edges.add(level)
            continue
        if not (number.strip().isascii() and number.strip().isdigit()):
            raise ValueError(f"--discs {text!r}: {level} slice {number.strip()!r} is not a slice number; {form}")
        discs[level] = int(number.strip())
    if edges and not discs:
        raise ValueError(f"--discs {text!r}: every level given is 'edge'; give at least one disc's slice number")
    return discs


def disc_positions(
    image: sitk.Image, discs: Mapping[str, int], z_range: tuple[int, int], path: Path
) -> dict[str, float]:
    """The given discs as slice indices of the prepared stack (LPS slices ``z_range``; may lie outside it).

    A disc number outside the scan, or levels out of their anatomical order, is a GeometryError naming the file.
    """
    count = image.GetSize()[slice_axis(image)]
    given = ",".join(f"{level}={k}" for level, k in discs.items())
    for level, k in discs.items():
        if not 0 <= k < count:
            raise GeometryError(
                f"{path}: --discs {given} names slice {k} for {level}, but the scan has {count} slices along its "
                f"superior–inferior axis (0..{count - 1}). Give slice numbers inside the scan."
            )
    z = {level: lps_slice_index(image, discs[level]) for level in DISC_LEVELS if level in discs}
    ordered = list(z)
    for upper, lower in zip(ordered, ordered[1:]):
        if z[upper] <= z[lower]:
            raise GeometryError(
                f"{path}: --discs {given}: {upper} (slice {discs[upper]}) does not lie superior to {lower} (slice "
                f"{discs[lower]}) in the scan's orientation. L3L4 lies above L4L5 above L5S1: check the slice "
                "numbers, or the image header's direction if the scan is stored upside down."
            )
    return {level: float(index - z_range[0]) for level, index in z.items()}


def dicom_modality(folder: str | Path) -> str | None:
    """The modality a DICOM series states (``MRI`` or ``CT``; None when it states another or none)."""
    from nnsam2_utils.data.dicom import series_files

    reader = sitk.ImageFileReader()
    reader.SetFileName(series_files(folder)[0])
    reader.ReadImageInformation()
    tag = reader.GetMetaData("0008|0060").strip() if reader.HasMetaDataKey("0008|0060") else ""
    return {"MR": "MRI", "CT": "CT"}.get(tag)


def scan_modality(path: Path, image: sitk.Image, given: str | None, stated: str | None) -> str:
    """The scan's modality: given, else stated by its DICOM header, else CT when it holds air in HU.

    A modality that contradicts the header or the intensities is a DataError naming the file: the model
    segments both, but the measurements (mean HU of CT) would be wrong.
    """
    lowest = float(np.min(sitk.GetArrayViewFromImage(image)))
    if given and stated and given != stated:
        raise DataError(
            f"{path}: given as {given} (--modality), but its DICOM header says {stated}. Give --modality {stated}, "
            "or check that this is the series you meant."
        )
    modality = given or stated or ("CT" if lowest <= HU_AIR else "MRI")
    if not (given or stated):
        log.info("%s: no modality given; treated as %s (lowest value %g)", path, modality, lowest)
    if modality == "CT" and lowest > HU_FAT:
        raise DataError(
            f"{path}: given as CT, but its lowest value is {lowest:g}: a CT in Hounsfield units holds fat (about "
            "-100) or air (-1000). If it is a CT stored without its rescale slope and intercept, export it in HU; "
            "if it is an MRI, give --modality MRI."
        )
    if modality == "MRI" and lowest <= HU_AIR:
        raise DataError(
            f"{path}: given as MRI, but it holds values down to {lowest:g}, which a magnitude MRI never has: it "
            "looks like a CT in Hounsfield units. Give --modality CT, or export the MRI's magnitude image."
        )
    return modality


def slice_range(image: sitk.Image, slices: tuple[int, int] | None, path: Path) -> tuple[int, int]:
    """The LPS z-range (low, high), inclusive, to segment: the given slices, or the whole volume."""
    if slices is None:
        return 0, canonical(image).GetSize()[2] - 1
    count = image.GetSize()[slice_axis(image)]
    outside = [k for k in slices if not 0 <= k < count]
    if outside:
        raise GeometryError(
            f"{path}: --slices {slices[0]}:{slices[1]} names slice {outside[0]}, but the scan has {count} slices "
            f"along its superior–inferior axis (0..{count - 1}). Give slice numbers inside the scan."
        )
    return region_slices(image, *slices)


def prepare_scan(image: sitk.Image, z_range: tuple[int, int]) -> sitk.Image:
    """A scan as the model sees it: reoriented to LPS (no resampling), the LPS slices ``low..high`` kept."""
    low, high = z_range
    return canonical(image)[:, :, low : high + 1]


def _read(path: Path, role: str) -> sitk.Image:
    """Read one image of a new scan; a missing path or an empty folder is a DataError naming it."""
    if not path.exists():
        raise DataError(
            f"{path}: not found. Give a NIfTI, NRRD or MHA file, or a folder holding one DICOM series, as the {role}."
        )
    if path.is_dir() and not any(path.iterdir()):
        raise DataError(f"{path}: the folder is empty. Give a folder holding one DICOM series, or an image file.")
    return check_finite(read_image(path), path)


def check_scan(
    path: str | Path,
    modality: str | None = None,
    fat: str | Path | None = None,
    slices: tuple[int, int] | None = None,
    discs: Mapping[str, int] | None = None,
) -> Scan:
    """Read and check one new scan (its Dixon fat image, its disc levels); errors name the file and the fix."""
    path = Path(path)
    image = _read(path, "scan")
    stated = dicom_modality(path) if path.is_dir() else None
    modality = scan_modality(path, image, modality, stated)
    z_range = slice_range(image, slices, path)
    where = "whole volume (no slice range given)" if slices is None else f"slices {slices[0]}–{slices[1]}"
    log.info("%s: %s, %s, %d slices to segment", path, modality, where, z_range[1] - z_range[0] + 1)
    fat_path = fat_digest = None
    if fat is not None:
        fat_path = Path(fat)
        if modality != "MRI":
            raise DataError(f"{fat_path}: a fat image is given for {path}, which is a {modality}; Dixon is MRI.")
        check_same_grid(image, _read(fat_path, "fat image"), str(path), str(fat_path))
        fat_digest = path_sha256(fat_path)
    positions = disc_positions(image, discs, z_range, path) if discs else None
    if positions:
        log.info("%s: disc levels %s", path, ", ".join(f"{lv} slice {discs[lv]}" for lv in positions))
    digest = path_sha256(path)
    given = dict(discs) if discs else None
    return Scan(scan_name(path), path, digest, modality, slices, z_range, fat_path, fat_digest, given, positions)


def load_scan(scan: Scan) -> ScanImages:
    """A checked scan's images, read again and prepared as the run prepared its own."""
    image = _read(scan.path, "scan")
    fat = prepare_scan(_read(scan.fat_path, "fat image"), scan.z_range) if scan.fat_path else None
    return ScanImages(image, prepare_scan(image, scan.z_range), fat)


def check_scans(
    paths: Sequence[str | Path],
    modality: str | None = None,
    fats: Sequence[str | Path] | None = None,
    slices: tuple[int, int] | None = None,
    discs: Sequence[Mapping[str, int]] | None = None,
) -> list[Scan]:
    """Read and check every new scan (``fats``: one Dixon fat image per scan, in the same order, or none;
    ``discs``: the disc levels of each scan, in the same order, or none)."""
    if not paths:
        raise DataError("no scan given: name at least one image file or DICOM series folder.")
    if fats and len(fats) != len(paths):
        raise DataError(
            f"--fat: {len(fats)} fat image(s) for {len(paths)} scan(s): give one fat image per scan, in the order "
            "of the scans (or run the Dixon scans separately)."
        )
    if discs and len(discs) != len(paths):
        raise DataError(
            f"--discs: disc levels for {len(discs)} scan(s) but {len(paths)} scan(s) given: give one "
            "LEVEL=SLICE,... list per scan, in the order of the scans (or run the scans separately)."
        )
    names: dict[str, Path] = {}
    for path in paths:
        name = scan_name(path)
        if name in names:
            raise DataError(
                f"{path}: its outputs would be named {name}_lpm.nii.gz like those of {names[name]}. Give each scan "
                "its own file or folder name (or run them into different output folders)."
            )
        names[name] = Path(path)
    fat_list = list(fats) if fats else [None] * len(paths)
    disc_list = list(discs) if discs else [None] * len(paths)
    return [check_scan(p, modality, f, slices, d) for p, f, d in zip(paths, fat_list, disc_list)]
