"""What a notebook needs to start: the run profile, its work folder and its datasets."""
from __future__ import annotations

import logging
import os

# Executed notebooks are read, not watched: no progress bars in their outputs (set before tqdm is imported).
os.environ.setdefault("TQDM_DISABLE", "1")
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import Workspace, load_profile, repo_root
from .errors import ConfigError
from .manifest import DatasetManifest, load_manifest


@dataclass
class Run:
    """A run profile bound to its work folder."""

    profile: dict[str, Any]
    workspace: Workspace
    extra_manifests: dict[str, Path] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.profile["profile"]

    @property
    def generated_datasets(self) -> list[str]:
        cohort = self.profile.get("cohort") or {}
        return list(cohort.get("datasets") or []) if cohort.get("generate") else []

    @property
    def datasets(self) -> list[str]:
        """Every dataset of the run: the generated demo ones, then the profile's own manifests."""
        return self.generated_datasets + list(self.extra_manifests)

    def manifest_path(self, dataset: str) -> Path:
        if dataset in self.extra_manifests:
            return self.extra_manifests[dataset]
        if dataset in self.generated_datasets:
            return self.workspace.manifest(dataset)
        raise ConfigError(f"dataset '{dataset}' is not in run profile '{self.name}'. Known: {self.datasets}")

    def manifest(self, dataset: str) -> DatasetManifest:
        return load_manifest(self.manifest_path(dataset))

    def section(self, name: str) -> dict[str, Any]:
        return dict(self.profile.get(name) or {})


def start(profile: str = "demo", work_dir: str | None = None, level: int = logging.INFO) -> Run:
    """Load a profile for a notebook: logging on, manifests located, work folder created."""
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", force=True)
    for noisy in ("matplotlib", "PIL", "fontTools"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    data = load_profile(profile)
    workspace = Workspace(Path(work_dir).resolve()) if work_dir else Workspace.for_profile(data["profile"])
    workspace.root.mkdir(parents=True, exist_ok=True)
    root = repo_root()
    extra: dict[str, Path] = {}
    for entry in data.get("manifests") or []:
        path = Path(entry) if Path(entry).is_absolute() else root / entry
        extra[load_manifest(path).name] = path
    return Run(data, workspace, extra)
