"""What a notebook or a workflow step needs to start: the run profile, its work folder and its datasets."""

from __future__ import annotations

import logging
import os

# Executed notebooks are read, not watched: no progress bars in their outputs (set before tqdm is imported).
os.environ.setdefault("TQDM_DISABLE", "1")
from dataclasses import dataclass, field
from pathlib import Path

from nnsam2_utils.data.manifest import DatasetManifest, load_manifest
from nnsam2_utils.errors import ConfigError
from nnsam2_utils.workflow.profile import RunProfile, load_profile
from nnsam2_utils.workflow.workspace import Workspace


@dataclass
class Run:
    """A run profile bound to its work folder and its datasets' manifests."""

    profile: RunProfile
    workspace: Workspace
    extra_manifests: dict[str, Path] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.profile.profile

    @property
    def seed(self) -> int:
        return self.profile.seed

    @property
    def generated_datasets(self) -> list[str]:
        return self.profile.generated_datasets

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

    def section(self, name: str) -> dict:
        """A profile section as a plain dict (see :meth:`RunProfile.section`)."""
        return self.profile.section(name)


def own_manifests(profile: RunProfile) -> dict[str, Path]:
    """The profile's own datasets by name; two manifests of one name, or one named like a demo dataset, are errors."""
    found: dict[str, Path] = {}
    for path in profile.manifest_paths():
        name = load_manifest(path, cases_csv=False).name
        if name in found:
            raise ConfigError(
                f"{path}: dataset name '{name}' is also the name of {found[name]}. Every dataset of a "
                "run needs its own name: change 'name:' in one of the manifests."
            )
        if name in profile.generated_datasets:
            raise ConfigError(
                f"{path}: dataset name '{name}' is also a generated demo dataset of profile "
                f"'{profile.profile}'. Rename your dataset (its 'name:' key)."
            )
        found[name] = path
    return found


def open_run(profile: str = "demo", work_dir: str | Path | None = None) -> Run:
    """The run of a profile, its work folder created (no logging set up: see :func:`start`)."""
    loaded = load_profile(profile)
    workspace = Workspace(Path(work_dir).resolve()) if work_dir else Workspace.for_profile(loaded.profile)
    workspace.root.mkdir(parents=True, exist_ok=True)
    return Run(loaded, workspace, own_manifests(loaded))


def start(
    profile: str = "demo",
    work_dir: str | Path | None = None,
    level: int = logging.INFO,
    log_name: str = "notebooks.log",
) -> Run:
    """Open a run for a notebook: logging to ``work/<profile>/logs/<log_name>``, never onto the page."""
    run = open_run(profile, work_dir)
    log_file = run.workspace.root / "logs" / log_name
    log_file.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_file, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    for noisy in ("matplotlib", "PIL", "fontTools"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.captureWarnings(True)  # library warnings (tqdm, pandas, nnU-Net) go to the log file, not the page
    return run
