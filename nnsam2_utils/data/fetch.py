"""``nnsam2 data fetch``: download a manifest's direct links, only when the user asks.

Each entry of ``source.downloads`` (url, path under ``root``, optional sha256/md5) is fetched to a
temporary name next to its destination, verified, then moved into place. An existing file is never
overwritten: it is verified and kept (a mismatch is an error that says what to do).

Only ``https://`` links are fetched (and ``file://``, for a copy on a local or mounted disk); a link
without a pinned checksum is fetched but reported as unverified.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from nnsam2_utils.data.io import atomic_path
from nnsam2_utils.data.manifest import Download, load_manifest
from nnsam2_utils.errors import DataError

log = logging.getLogger(__name__)


def _digests(path: Path) -> dict[str, str]:
    sha, md5 = hashlib.sha256(), hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha.update(block)
            md5.update(block)
    return {"sha256": sha.hexdigest(), "md5": md5.hexdigest()}


def verify(path: Path, item: Download) -> None:
    """Raise DataError if ``path`` does not match the checksums the manifest pins."""
    found = _digests(path)
    for name in ("sha256", "md5"):
        expected = getattr(item, name)
        if expected and found[name] != expected:
            raise DataError(
                f"{path}: {name} mismatch (expected {expected}, found {found[name]}). The download is "
                f"incomplete or the file changed at {item.url}: delete it and fetch again, or check the record."
            )


SCHEMES = ("https", "file")


def check_url(url: str, where: str) -> None:
    """Refuse a link whose scheme is not https (or file:// for a local copy)."""
    scheme = urlsplit(url).scheme.lower()
    if scheme not in SCHEMES:
        raise DataError(
            f"{where}: download link {url!r} uses {scheme or 'no scheme'}://; only https:// (or file:// for a copy "
            "on a local disk) is fetched. Use the https link the data provider gives."
        )


def is_pinned(item: Download) -> bool:
    """Whether the manifest pins a checksum for this download."""
    return bool(item.sha256 or item.md5)


def fetch_one(item: Download, destination: Path, timeout: float = 60.0) -> Path:
    """Download one file unless present; verify it either way."""
    if destination.is_dir():
        raise DataError(
            f"{destination}: is a folder, but the manifest's download path names a file there. Give the file's "
            "name in source.downloads[].path (e.g. archive.zip)."
        )
    if destination.exists():
        verify(destination, item)
        log.info("%s: present, kept (not overwritten)", destination)
        return destination
    log.info("downloading %s → %s", item.url, destination)
    with atomic_path(destination) as tmp:
        try:
            with urllib.request.urlopen(item.url, timeout=timeout) as response, open(tmp, "wb") as out:
                shutil.copyfileobj(response, out)
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            raise DataError(
                f"{item.url}: could not be downloaded ({reason}). Check the link and the network; nothing was "
                f"written to {destination}."
            ) from exc
        verify(tmp, item)
    if not (item.sha256 or item.md5):
        log.warning("%s: no checksum in the manifest, the download is unverified.", destination)
    return destination


def fetch_manifest(path: str | os.PathLike) -> list[Path]:
    """Fetch every direct link of a manifest; returns the destination paths."""
    manifest = load_manifest(path, cases_csv=False)
    items = manifest.source.downloads
    if not items:
        raise DataError(
            f"{path}: lists no direct downloads (source.downloads). Get the files as source.how_to_get says."
        )
    for item in items:
        check_url(item.url, str(path))
    return [fetch_one(item, manifest.resolve(item.path)) for item in items]
