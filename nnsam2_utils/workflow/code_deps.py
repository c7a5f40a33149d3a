"""Which helper modules each workflow step depends on.

Snakemake re-runs a step's notebook when one of its modules changes, and the step's run key
(see :func:`nnsam2_utils.runlog.run_key`) hashes the same modules, so editing, say, a plot
helper re-executes the results notebook but neither propagation nor training.
Patterns are relative to the package folder.
"""
from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent

COMMON = ("__init__.py", "errors.py", "io.py", "config.py", "session.py", "runlog.py",
          "notebooks.py", "manifest.py")

STEP_CODE: dict[str, tuple[str, ...]] = {
    "cohort": ("phantom*.py", "describe.py", "prepare.py"),
    "prepare": ("prepare.py", "annotation.py", "dicom.py"),
    "stage0": ("prepare.py", "annotation.py", "propagate/*.py", "reference.py", "postprocess.py", "metrics.py", "checkpoints.py"),
    "refine": ("prepare.py", "refine.py", "nnunet.py", "trainers/*.py", "postprocess.py", "metrics.py"),
    "supervised": ("prepare.py", "refine.py", "nnunet.py", "trainers/*.py", "postprocess.py", "metrics.py"),
    "repeat": ("prepare.py", "refine.py", "nnunet.py", "trainers/*.py", "postprocess.py", "metrics.py", "repeat.py",
               "evaluate.py", "measure.py", "propagate/*.py", "reference.py", "checkpoints.py"),
    "oneshot": ("baselines.py", "external.py", "prepare.py", "postprocess.py", "metrics.py"),
    "results": ("report.py", "metrics.py", "plots.py", "prepare.py"),
    "teaching": ("teaching.py", "report.py", "metrics.py", "plots.py", "prepare.py"),
    "own_scans": ("phantom*.py", "owndata.py", "dicom.py", "datacheck.py", "annotation.py", "prepare.py",
                  "propagate/*.py", "postprocess.py", "checkpoints.py", "measure.py", "evaluate.py", "metrics.py", "plots.py"),
    "agreement": ("evaluate.py", "measure.py", "stats.py", "report.py", "metrics.py", "plots.py", "prepare.py"),
}

#: Modules a step's notebook uses only to present what it computed (downloadable tables, the page's
#: provenance, the method figure). Snakemake re-runs the notebook when one changes, but they are not
#: part of the step's run key: editing them never discards a computed result.
VIEW_CODE: dict[str, tuple[str, ...]] = {
    "cohort": ("provenance.py", "method_figure.py", "plots.py"),
    "prepare": ("plots.py",),
    "stage0": ("report.py", "plots.py"),
    "results": ("provenance.py",),
    "oneshot": ("provenance.py",),
    "supervised": ("provenance.py",),
    "repeat": ("provenance.py",),
    "agreement": ("provenance.py",),
    "teaching": ("provenance.py",),
}


def view_files(step: str) -> list[Path]:
    """The presentation modules of a step's notebook (see :data:`VIEW_CODE`), sorted."""
    return sorted({p for pattern in VIEW_CODE.get(step, ()) for p in PACKAGE.glob(pattern)})


def step_files(step: str) -> list[Path]:
    """The source files a step depends on (common modules included), sorted."""
    files: set[Path] = set()
    for pattern in COMMON + STEP_CODE[step]:
        files.update(PACKAGE.glob(pattern))
    return sorted(files)
