"""Model checkpoints: presence and SHA-256 checks with messages that say what to do.

Nothing here downloads anything: a missing or altered file stops the run with a
:class:`~nnsam2_utils.errors.CheckpointError` that names the file, where it is expected and
which file to fetch.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from nnsam2_utils.data.io import sha256 as file_sha256
from nnsam2_utils.errors import CheckpointError

log = logging.getLogger(__name__)


def expand_path(value: str | os.PathLike, base: Path, setting: str = "checkpoint") -> Path:
    """A path setting as the run uses it: ``$VAR``/``${VAR}`` and ``~`` expanded, relative paths under ``base``.

    A variable that is not set, or set but empty, is an error naming it (instead of a path with ``$`` in it, or
    a path at the file system's root, that fails later).
    """
    text = str(value)
    expanded = os.path.expandvars(text)
    unset = re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", expanded)
    if unset:
        raise CheckpointError(
            f"{setting} {text!r}: environment variable {', '.join(sorted(set(unset)))} is not set. Set it (export "
            f"{unset[0]}=/path/to/folder) before the run, or write the path out in the profile."
        )
    empty = sorted(
        {name for name in re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", text) if os.environ.get(name) == ""}
    )
    if empty:
        raise CheckpointError(
            f"{setting} {text!r}: environment variable {', '.join(empty)} is set but empty, so the path would be "
            f"{expanded!r}. Set it to the folder (export {empty[0]}=/path/to/folder) or write the path out in the "
            "profile."
        )
    path = Path(expanded).expanduser()
    return path if path.is_absolute() else Path(base) / path


def verify_checkpoint(path: str | os.PathLike, sha256: str | None, download_hint: str | None = None) -> Path:
    """Return ``path`` as a Path once it exists and (when ``sha256`` is given) matches it.

    ``download_hint`` is appended to the error message (e.g. which official file to fetch
    and from where). A ``sha256`` of None skips the digest check with a warning.
    """
    path = Path(path).expanduser()
    hint = f" {download_hint}" if download_hint else ""
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "not found"
        raise CheckpointError(
            f"{path}: checkpoint {what}. Put the checkpoint file at {path.resolve()} "
            f"(or point the profile's checkpoint setting at where it is).{hint}"
        )
    if sha256 is None:
        log.warning(
            "%s: no SHA-256 configured, the checkpoint is used unverified. Pin its sha256 in the profile.", path
        )
        return path
    expected = sha256.strip().lower()
    found = file_sha256(path)
    if found != expected:
        raise CheckpointError(
            f"{path}: SHA-256 mismatch (expected {expected}, found {found}). The file is incomplete, "
            f"corrupted or a different model: download it again, or, if you meant to use this file, "
            f"set the profile's sha256 to {found}.{hint}"
        )
    return path
