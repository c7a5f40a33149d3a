"""Which helper modules each workflow step depends on.

Snakemake re-runs a step's notebook when one of its modules changes, and the step's run key
(see :func:`nnsam2_utils.workflow.runlog.run_key`) hashes the same modules, so editing, say, a plot
helper re-executes the results notebook but neither propagation nor training.
Patterns are relative to the package folder.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1]  # nnsam2_utils/

COMMON = (
    "__init__.py",
    "errors.py",
    "data/__init__.py",
    "data/io.py",
    "data/dicom.py",
    "data/manifest.py",
    # the workflow modules a step's results depend on; not workflow/notebook.py (how a page is executed and shown,
    # see VIEW_COMMON) nor workflow/preflight.py (the start check): editing those must not recompute the pipeline
    "workflow/__init__.py",
    "workflow/profile.py",
    "workflow/workspace.py",
    "workflow/session.py",
    "workflow/runlog.py",
    "workflow/code_deps.py",
    "steps/__init__.py",
)

#: Presentation modules of every step's notebook (see :data:`VIEW_CODE`).
VIEW_COMMON = ("workflow/notebook.py",)

#: Shared building blocks of several steps.
_GRID = ("data/geometry.py", "data/labels.py", "data/annotation.py")
_STAGE0 = (
    *_GRID,
    "data/checkpoints.py",
    "prepare/*.py",
    "propagate/*.py",
    "evaluate/metrics.py",
    "evaluate/scans.py",
    "evaluate/measurements.py",
    "steps/prepare.py",
    "steps/stage0.py",
)
_NNUNET = (
    *_GRID,
    "prepare/model_input.py",
    "propagate/postprocess.py",
    "refine/*.py",
    "refine/trainers/*.py",
    "evaluate/metrics.py",
    "evaluate/quality.py",
    "evaluate/scans.py",
    "evaluate/measurements.py",
)

STEP_CODE: dict[str, tuple[str, ...]] = {
    "cohort": ("data/synthetic/*.py", "data/describe.py", *_GRID, "steps/cohort.py"),
    "prepare": (*_GRID, "data/dicom.py", "prepare/*.py", "steps/prepare.py"),
    "stage0": _STAGE0,
    "refine": (*_NNUNET, "steps/refine.py"),
    "supervised": (*_NNUNET, "steps/supervised.py"),
    "repeat": (*_NNUNET, *_STAGE0, "evaluate/repeatability.py", "steps/repeat.py"),
    "oneshot": (
        "baselines/*.py",
        *_GRID,
        "prepare/model_input.py",
        "propagate/postprocess.py",
        "evaluate/metrics.py",
        "steps/oneshot.py",
    ),
    "new_subjects": (
        *_NNUNET,
        "apply/*.py",
        "data/checks.py",
        "data/synthetic/*.py",
        "data/describe.py",
        "evaluate/levels.py",
        "report/plots.py",
        "report/provenance.py",
        "evaluate/new_subjects.py",
        "steps/new_subjects.py",
    ),
    "results": (
        "evaluate/quality.py",
        "evaluate/new_subjects.py",
        "evaluate/measurements.py",
        "report/delivery.py",
        "steps/deliver.py",
        "report/results.py",
        "report/plots.py",
        "evaluate/metrics.py",
        "prepare/model_input.py",
        *_GRID,
        "steps/results.py",
    ),
    "teaching": (
        "report/teaching.py",
        "report/results.py",
        "report/plots.py",
        "evaluate/metrics.py",
        "prepare/model_input.py",
        *_GRID,
    ),
    "own_scans": (*_STAGE0, "data/synthetic/*.py", "data/dicom.py", "data/checks.py", "steps/own_scans.py"),
    "which_slice": (*_STAGE0, *_NNUNET, "experiments/*.py", "steps/which_slice.py"),
    "agreement": (
        "evaluate/*.py",
        "report/results.py",
        "report/plots.py",
        "prepare/model_input.py",
        *_GRID,
        "steps/agreement.py",
        "steps/deliver.py",
    ),
}

#: Modules a step's notebook uses only to present what it computed (downloadable tables, the page's
#: provenance, the method figure). Snakemake re-runs the notebook when one changes, but they are not
#: part of the step's run key: editing them never discards a computed result.
VIEW_CODE: dict[str, tuple[str, ...]] = {
    "cohort": ("report/provenance.py", "report/method_figure.py", "report/plots.py", "prepare/model_input.py"),
    "prepare": ("report/plots.py",),
    "stage0": ("report/results.py", "report/plots.py"),
    "refine": ("report/provenance.py", "report/curves.py", "report/plots.py", "report/results.py"),
    "results": ("report/provenance.py", "report/findings.py", "report/paper.py"),
    "oneshot": ("report/provenance.py",),
    "supervised": (
        "report/provenance.py",
        "report/findings.py",
        "report/curves.py",
        "report/plots.py",
        "report/results.py",
    ),
    "repeat": ("report/provenance.py",),
    "agreement": ("report/provenance.py", "report/findings.py", "report/agreement_page.py"),
    "teaching": ("report/provenance.py", "report/viewer.py", "evaluate/quality.py", "refine/filters.py"),
    "own_scans": ("report/plots.py", "report/own_scans.py", "report/provenance.py"),
    "which_slice": ("report/which_slice.py", "report/plots.py", "report/provenance.py"),
}


def view_files(step: str) -> list[Path]:
    """The presentation modules of a step's notebook (see :data:`VIEW_CODE`), sorted."""
    return sorted({p for pattern in (*VIEW_CODE.get(step, ()), *VIEW_COMMON) for p in PACKAGE.glob(pattern)})


def step_files(step: str) -> list[Path]:
    """The source files a step depends on (common modules included), sorted."""
    files: set[Path] = set()
    for pattern in COMMON + STEP_CODE[step]:
        files.update(PACKAGE.glob(pattern))
    return sorted(files)
