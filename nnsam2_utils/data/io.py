"""File input/output: read-only loading, atomic writes, checksums.

Every writer here writes to a temporary name in the destination folder and moves the
file into place with :func:`os.replace`, so an interrupted run never leaves a
half-written output that a later run would mistake for a finished one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import SimpleITK as sitk
import yaml

from nnsam2_utils.errors import DataError


def _umask() -> int:
    """The process's file-creation mask (read without changing it, from /proc where available)."""
    try:
        for line in Path("/proc/self/status").read_text(encoding="utf-8").splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _temporary_path(path: Path, suffix: str | None = None) -> Path:
    """A new empty file next to ``path`` under a name :func:`is_temporary` knows, with the usual permissions."""
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = suffix if suffix is not None else "".join(path.suffixes)
    fd, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    os.chmod(name, 0o666 & ~_umask())  # mkstemp makes 0600; a finished output gets the usual permissions
    return Path(name)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it onto ``path`` if the block succeeds."""
    tmp_path = _temporary_path(Path(path), suffix)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def is_temporary(path: str | os.PathLike) -> bool:
    """Whether a file name is one of :func:`atomic_path`'s temporary names (``.<stem>.<random>.tmp<suffix>``)."""
    name = Path(path).name
    return name.startswith(".") and ".tmp" in name


def remove_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files a killed run left under ``folder`` (never a finished output); returns them."""
    stale = sorted(p for p in Path(folder).rglob(".*") if p.is_file() and is_temporary(p))
    for path in stale:
        path.unlink()
    return stale


def write_if_changed(path: str | os.PathLike, write) -> str:
    """Write through ``write(tmp)`` at a temporary name and move it onto ``path`` only if the bytes differ.

    Returns ``"written"`` or ``"unchanged"``: an unchanged file keeps its timestamp, so the workflow
    engine sees nothing new.
    """
    path = Path(path)
    tmp = _temporary_path(path)
    try:
        write(tmp)
        if path.exists() and sha256(path) == sha256(tmp):
            return "unchanged"
        os.replace(tmp, path)
        return "written"
    finally:
        tmp.unlink(missing_ok=True)


def sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def read_image(path: str | os.PathLike) -> sitk.Image:
    """Read a 3-D image (NIfTI, NRRD, MHA or a DICOM series folder) with a clear error."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found. Check the path in the manifest or re-run the step that writes it.")
    try:
        if path.is_dir():
            from nnsam2_utils.data.dicom import read_series

            image = read_series(path)
        else:
            if path.name.endswith((".nii", ".nii.gz")):
                check_nifti_payload(path)
            image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unknown reader error"
        raise DataError(
            f"{path}: cannot be read as an image ({first}). The file may be truncated or corrupted; re-export or "
            "re-download it."
        ) from exc
    if image.GetDimension() != 3:
        raise DataError(
            f"{path}: expected a 3-D image, found {image.GetDimension()}-D. Export a single 3-D volume (one time "
            "point, one channel)."
        )
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise DataError(
            f"{path}: expected one channel, found {image.GetNumberOfComponentsPerPixel()}. Store each channel (e.g. "
            "Dixon water, fat) as its own file."
        )
    if "complex" in image.GetPixelIDTypeAsString():
        raise DataError(f"{path}: complex-valued voxels. Export the magnitude image (one real value per voxel).")
    return image


def check_finite(image: sitk.Image, path: str | os.PathLike) -> sitk.Image:
    """An image with only finite voxels, or a DataError naming the file (any format, any channel)."""
    array = sitk.GetArrayViewFromImage(image)
    if np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.complexfloating):
        bad = int(np.size(array) - np.isfinite(array).sum())
        if bad:
            raise DataError(
                f"{path}: holds {bad} NaN or Inf voxels. Replace them (e.g. with the background value) before running."
            )
    return image


def check_nifti_payload(path: Path) -> None:
    """Read a NIfTI file's whole voxel payload with nibabel: truncation and NaN/Inf are errors.

    SimpleITK 2.5 silently zero-fills a truncated NIfTI file and reads NaN voxels as 0, so this
    check runs before every NIfTI read. A ``.gz`` file is first read to its end, so that gzip's
    CRC catches a corrupted byte in the middle (otherwise decoded as plausible or NaN voxels).
    """
    import gzip
    import zlib

    import nibabel as nib

    try:
        if path.name.endswith(".gz"):  # nibabel stops at the payload's end, so the gzip CRC is never checked
            with gzip.open(path, "rb") as stream:
                while stream.read(1 << 22):
                    pass
        data = np.asanyarray(nib.load(str(path)).dataobj)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(
            f"{path}: cannot be read as an image ({type(exc).__name__}: {exc}). The file is truncated "
            "or corrupted; re-export or re-download it."
        ) from exc
    except Exception as exc:  # nibabel raises several types for damaged files
        raise DataError(
            f"{path}: cannot be read as an image ({type(exc).__name__}: {exc}). The file may be truncated "
            "or corrupted; re-export or re-download it."
        ) from exc
    if data.dtype.kind == "f" and not np.isfinite(data).all():
        bad = int((~np.isfinite(data)).sum())
        raise DataError(
            f"{path}: holds {bad} NaN or Inf voxels. Replace them (e.g. with the background value) before running."
        )


def write_image(image: sitk.Image, path: str | os.PathLike, compress: bool = True) -> Path:
    """Write an image atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), compress)
    return path


def array_to_image(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    """Wrap a (z, y, x) array in the geometry of ``reference``."""
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(reference)
    return image


def write_json(data: Any, path: str | os.PathLike) -> Path:
    """Write JSON atomically (sorted keys, numpy scalars converted)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=_json_default) + "\n")
    return path


def read_json(path: str | os.PathLike) -> Any:
    """Read JSON with a clear error."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found. Run the stage that writes it first.")
    return json.loads(path.read_text(encoding="utf-8"))


def write_csv(frame: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write a table as CSV atomically (no index)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
    return path


#: Identifier columns of the run's tables: always text (a case id "001" stays "001", never the number 1).
ID_COLUMNS = ("dataset", "case", "subject")


def read_csv(path: str | os.PathLike) -> pd.DataFrame:
    """Read one of the run's CSV tables with a clear error; identifier columns are read as text."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found. Run the stage that writes it first.")
    return pd.read_csv(path, dtype={column: str for column in ID_COLUMNS})


def save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> Path:
    """Save arrays to a compressed .npz atomically."""
    path = Path(path)
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez_compressed(tmp, **arrays)
    return path


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


class _StrictLoader(yaml.SafeLoader):
    """YAML as users mean it: a key given twice, or a number written with a leading zero, is an error."""


def _strict_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"key {key!r} is given twice (line {seen[key] + 1} and line {key_node.start_mark.line + 1})",
                key_node.start_mark,
            )
        seen[key] = key_node.start_mark.line
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


def _strict_int(loader: _StrictLoader, node: yaml.ScalarNode) -> int:
    text = str(node.value).lstrip("+-")
    if len(text) > 1 and text.startswith("0") and text[1:].isdigit():
        raise yaml.constructor.ConstructorError(
            None,
            None,
            f"number {node.value!r} has a leading zero (YAML would read it as octal): write it without",
            node.start_mark,
        )
    return yaml.SafeLoader.construct_yaml_int(loader, node)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _strict_mapping)
_StrictLoader.add_constructor("tag:yaml.org,2002:int", _strict_int)


def read_yaml(path: str | os.PathLike, error: type[Exception] = DataError) -> Any:
    """Read a YAML file strictly (UTF-8, no repeated key, no leading-zero number); errors name the file."""
    path = Path(path)
    if path.is_dir():
        raise error(f"{path}: is a folder; give the YAML file itself.")
    if not path.exists():
        raise error(f"{path}: file not found.")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not UTF-8 text (byte {exc.start}). Save the file as UTF-8.") from exc
    try:
        loader = _StrictLoader(text)  # a SafeLoader: plain data only, no Python objects
        try:
            return loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        raise error(
            f"{path}: not valid YAML ({' '.join(str(exc).split())}). Fix the syntax at the position shown."
        ) from exc
