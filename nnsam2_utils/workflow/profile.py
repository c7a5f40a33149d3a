"""Run profiles (config/<profile>.yaml) and the work folder layout of a run."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError


def repo_root(start: str | Path | None = None) -> Path:
    """The project root: the first folder upwards holding pyproject.toml and config/."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").exists() and (folder / "config").is_dir():
            return folder
    return Path(__file__).resolve().parents[1]


def config_dir(root: str | Path | None = None) -> Path:
    """Where run profiles are read from: ``$NNSAM2_CONFIG_DIR`` if set, else ``<project>/config``.

    The variable lets a test (or a reader) run another profile file under a profile's name,
    e.g. the tiny cohort as ``demo``, without touching ``config/``; the Snakefile honours it too.
    """
    folder = os.environ.get("NNSAM2_CONFIG_DIR")
    return Path(folder).resolve() if folder else repo_root(root) / "config"


def profile_path(profile: str | Path, root: str | Path | None = None) -> Path:
    """The file of a run profile given by name (``<config dir>/<name>.yaml``) or by path."""
    path = Path(profile)
    return path if path.suffix else config_dir(root) / f"{profile}.yaml"


def load_profile(profile: str | Path, root: str | Path | None = None) -> dict[str, Any]:
    """Load a run profile by name (``<config dir>/<name>.yaml``, see :func:`config_dir`) or by path."""
    path = profile_path(profile, root)
    if not path.exists():
        known = sorted(p.stem for p in config_dir(root).glob("*.yaml"))
        where = " (NNSAM2_CONFIG_DIR is set)" if os.environ.get("NNSAM2_CONFIG_DIR") else ""
        raise ConfigError(f"{path}: run profile not found{where}. Known profiles: {known}.")
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict) or "profile" not in data:
        raise ConfigError(f"{path}: a run profile must be a mapping with a 'profile' key.")
    return data


@dataclass(frozen=True)
class Workspace:
    """Every file a run reads or writes, under ``work/<profile>/``."""

    root: Path

    @classmethod
    def for_profile(cls, profile: str, repo: str | Path | None = None) -> "Workspace":
        base = os.environ.get("NNSAM2_WORK")
        folder = Path(base) if base else repo_root(repo) / "work"
        return cls((folder / profile).resolve())

    @property
    def data(self) -> Path:
        return self.root / "data"

    def manifest(self, dataset: str) -> Path:
        return self.data / f"{dataset}.yaml"

    def prepared(self, dataset: str, case: str | None = None) -> Path:
        folder = self.root / "prepared" / dataset
        return folder / case if case else folder

    def stage(self, stage: str, dataset: str | None = None) -> Path:
        """A stage's folder; stage 0 has one per dataset, refinement stages one pooled folder."""
        folder = self.root / stage
        return folder / dataset if dataset else folder

    def labels(self, stage: str, dataset: str, case: str) -> Path:
        """The label volume a stage produced for a case (prepared LPS grid)."""
        return self.stage(stage, dataset) / "labels" / f"{case}.nii.gz"

    @property
    def tables(self) -> Path:
        return self.root / "tables"

    @property
    def figures(self) -> Path:
        return self.root / "figures"

    @property
    def runlog(self) -> Path:
        return self.root / "runlog"
