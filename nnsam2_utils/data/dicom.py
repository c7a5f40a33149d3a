"""DICOM series: a folder of 2-D slices read as one 3-D volume.

A manifest's ``image`` (or ``fat``) may name a folder that holds exactly one DICOM series;
:func:`nnsam2_utils.data.io.read_image` reads it with SimpleITK's ``ImageSeriesReader`` (slices sorted
by position by GDCM). Labels stay volumes (NIfTI/NRRD), as ITK-SNAP and 3D Slicer save them, on
the grid of the series. :func:`write_series` writes a volume as a series: the tests use it to
build DICOM scans, and it converts a volume for tools that want DICOM.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nnsam2_utils.errors import DataError

log = logging.getLogger(__name__)

MODALITIES = {"MRI": "MR", "CT": "CT"}


def series_ids(folder: str | os.PathLike) -> list[str]:
    """The DICOM series UIDs found in a folder (not recursive)."""
    return list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)) or [])


def series_files(folder: str | os.PathLike) -> list[str]:
    """The files of the folder's one DICOM series, sorted by slice position; errors name the folder."""
    folder = Path(folder)
    ids = series_ids(folder)
    if not ids:
        raise DataError(
            f"{folder}: holds no DICOM series. Point the manifest at a folder of .dcm slices or a NIfTI file."
        )
    if len(ids) > 1:
        raise DataError(f"{folder}: holds {len(ids)} DICOM series ({ids[:3]}). Put each series in its own folder.")
    return list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), ids[0]))


def slice_positions(files: list[str]) -> np.ndarray:
    """Each file's position along the series' slice normal (mm), from its DICOM header."""
    positions = []
    normal = None
    for name in files:
        reader = sitk.ImageFileReader()
        reader.SetFileName(name)
        reader.ReadImageInformation()
        if normal is None:
            direction = np.asarray(reader.GetDirection(), dtype=float).reshape(3, 3)
            normal = direction[:, 2]
        positions.append(float(np.dot(reader.GetOrigin(), normal)))
    return np.asarray(positions)


def check_uniform_spacing(folder: str | os.PathLike, files: list[str], tolerance: float = 0.05) -> None:
    """A series whose slice gaps differ by more than ``tolerance`` (relative) misses a slice or mixes stacks."""
    if len(files) < 3:
        return
    gaps = np.abs(np.diff(np.sort(slice_positions(files))))
    if gaps.min() <= 0 or (gaps.max() - gaps.min()) > tolerance * np.median(gaps):
        raise DataError(
            f"{folder}: slice gaps of the DICOM series range from {gaps.min():.2f} to {gaps.max():.2f} mm "
            f"over {len(files)} files: a slice is missing, duplicated or the folder mixes stacks. "
            "Export the complete series again, one series per folder."
        )


def read_series(folder: str | os.PathLike) -> sitk.Image:
    """The folder's one DICOM series as a 3-D image: one series per folder, evenly spaced slices, or a DataError."""
    files = series_files(folder)
    check_uniform_spacing(folder, files)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    return reader.Execute()


def _uid(root: str = "1.2.826.0.1.3680043.2.1125") -> str:
    """A fresh DICOM UID under a documentation root (time and process based)."""
    return f"{root}.{int(time.time() * 1e6) % 10**12}.{os.getpid() % 10**6}.{np.random.randint(10**6)}"


def write_series(
    image: sitk.Image, folder: str | os.PathLike, modality: str = "MRI", description: str = "nnsam2"
) -> Path:
    """Write a 3-D image as a DICOM series (int16, one file per slice along the stored k axis).

    Geometry (origin, spacing, direction) is kept through ImagePositionPatient,
    ImageOrientationPatient and PixelSpacing, so reading the folder back gives the same grid.
    The folder is filled under a temporary name and moved into place (never half written); it must
    not exist yet.
    """
    folder = Path(folder)
    if folder.exists():
        raise DataError(f"{folder}: exists already. Choose a new folder for the DICOM series (nothing is overwritten).")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        volume = sitk.Cast(
            sitk.Round(image) if image.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64) else image, sitk.sitkInt16
        )
        direction = volume.GetDirection()
        orientation = "\\".join(
            f"{v:.6f}" for v in (direction[0], direction[3], direction[6], direction[1], direction[4], direction[7])
        )
        study, series = _uid(), _uid()
        stamp = time.strftime("%Y%m%d")
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        for k in range(volume.GetDepth()):
            plane = volume[:, :, k]
            position = volume.TransformIndexToPhysicalPoint((0, 0, k))
            tags = {
                "0008|0060": MODALITIES.get(modality, modality),
                "0008|0020": stamp,
                "0008|0021": stamp,
                "0008|103e": description,
                "0010|0010": "nnsam2^test",
                "0010|0020": "nnsam2",
                "0020|000d": study,
                "0020|000e": series,
                "0020|0013": str(k + 1),
                "0020|0032": "\\".join(f"{v:.6f}" for v in position),
                "0020|0037": orientation,
                "0018|0050": f"{volume.GetSpacing()[2]:.6f}",
                "0028|0030": f"{volume.GetSpacing()[1]:.6f}\\{volume.GetSpacing()[0]:.6f}",
                "0008|0018": f"{series}.{k + 1}",
            }
            for key, value in tags.items():
                plane.SetMetaData(key, value)
            writer.SetFileName(str(tmp / f"slice_{k:04d}.dcm"))
            writer.Execute(plane)
        os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    log.info("wrote DICOM series %s (%d slices)", folder, image.GetDepth())
    return folder
