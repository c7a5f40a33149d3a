"""The work folder of a run: every file a step reads or writes, under ``work/<profile>/``."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from nnsam2_utils.data.io import read_csv


def repo_root(start: str | Path | None = None) -> Path:
    """The project root: the first folder upwards holding pyproject.toml and config/."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").exists() and (folder / "config").is_dir():
            return folder
    return Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Workspace:
    """Every file a run reads or writes, under ``work/<profile>/``."""

    root: Path

    @classmethod
    def for_profile(cls, profile: str, repo: str | Path | None = None) -> Workspace:
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

    def case_table(self, dataset: str) -> pd.DataFrame:
        """The prepared dataset's case table (``prepared/<dataset>/cases.csv``, written by the prepare step)."""
        return read_csv(self.prepared(dataset) / "cases.csv")

    def case_ids(self, dataset: str) -> list[str]:
        """The dataset's case ids in manifest order."""
        return [str(case) for case in self.case_table(dataset)["case"]]

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

    @property
    def logs(self) -> Path:
        """Log files of the run's steps (never shown on a book page; linked from it)."""
        return self.root / "logs"
