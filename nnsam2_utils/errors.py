"""One exception type per failure family; every message names the file and the fix."""

from __future__ import annotations


class Nnsam2Error(Exception):
    """Base class of every error nnsam2 raises on purpose."""


class ManifestError(Nnsam2Error):
    """A data manifest (YAML) is missing, malformed or inconsistent."""


class DataError(Nnsam2Error):
    """An image or label file is missing, unreadable or holds invalid values."""


class GeometryError(Nnsam2Error):
    """Image and label (or two volumes) do not share a voxel grid, or the region is invalid."""


class CheckpointError(Nnsam2Error):
    """A model checkpoint is missing or its SHA-256 does not match the configuration."""


class ConfigError(Nnsam2Error):
    """A run profile is missing, malformed or asks for something unavailable."""


def validation_problems(exc) -> str:
    """A pydantic ValidationError as ``key.path: message; …`` (the keys as the user wrote them)."""
    return "; ".join(f"{'.'.join(str(p) for p in err['loc']) or '(top)'}: {err['msg']}" for err in exc.errors())
