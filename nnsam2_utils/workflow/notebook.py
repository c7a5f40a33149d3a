"""Executing the stage notebooks with papermill, for the workflow and for tests.

The executed notebook is written to a temporary name and moved into place only when every
cell ran, so a failed or killed run never leaves a notebook that looks finished. Parameters
are data (YAML scalars), never code. The cell papermill injects with the parameters is tagged
``remove-input`` so the book shows its outputs (none) but readers see the values in the
run's provenance instead of a code cell.

The executed notebook shows the values it ran with: the notebook's default parameters cell is removed
from the page and papermill's injected cell (the values given) is shown instead; the page title names
the run's own parameters (``# Stage 0: backpain_t1w``), so six pages of one notebook have six titles.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any


def _without_iri_format_checks() -> None:
    """Keep ``jsonschema`` from importing ``rfc3987_syntax`` (0.9 s per process, measured; it builds a grammar).

    nbformat validates notebooks with jsonschema, whose format checkers import the optional
    ``rfc3987_syntax`` to check the ``iri`` formats that no notebook schema uses. A page job imports
    nbformat once, so every page of the book paid this; marking the module absent (the way Python
    itself spells "not installed") makes jsonschema skip those two checkers and nothing else.
    """
    if "jsonschema" not in sys.modules:
        sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[arg-type]


_without_iri_format_checks()

import nbformat  # noqa: E402
import yaml  # noqa: E402

from nnsam2_utils.data.io import atomic_path  # noqa: E402

#: How long a page waits, after a cell's reply, for the kernel to report the cell's last output and go idle.
#: papermill's default (4 s) failed a page on a machine starved by other work (nbclient's "Timeout waiting for
#: IOPub output"); the wait ends the moment the kernel reports, so a long one costs a healthy run nothing.
IOPUB_TIMEOUT_S = 300

log = logging.getLogger(__name__)


def parse_parameters(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """``[("stage", "2"), ("dataset", "ct")]`` → ``{"stage": 2, "dataset": "ct"}`` (YAML scalars only)."""
    out: dict[str, Any] = {}
    for key, text in pairs:
        if not key.isidentifier():
            raise ValueError(f"parameter name '{key}' is not a Python identifier")
        value = yaml.safe_load(text)
        if not isinstance(value, (str, int, float, bool)) and value is not None:
            raise ValueError(f"parameter '{key}' must be a scalar (string, number, boolean or null), got {text!r}")
        out[key] = value
    return out


#: Parameters a page title names (the profile is the same on every page of a book).
TITLED = ("dataset", "stage", "backend")


def page_title(title: str, parameters: dict[str, Any]) -> str:
    """``"# Stage 0"`` + ``{"dataset": "ct"}`` → ``"# Stage 0: ct"`` (``stage`` is written ``stage 2``)."""
    named = [f"stage {v}" if k == "stage" else str(v) for k, v in parameters.items() if k in TITLED and v is not None]
    return f"{title}: {', '.join(named)}" if named else title


def show_values_run_with(path: str | Path, parameters: dict[str, Any] | None = None) -> None:
    """Show the injected parameters (the values run with) instead of the defaults, and title the page with them."""
    notebook = nbformat.read(str(path), as_version=4)
    injected = any("injected-parameters" in c.get("metadata", {}).get("tags", []) for c in notebook.cells)
    for cell in notebook.cells:
        tags = cell.setdefault("metadata", {}).setdefault("tags", [])
        if injected and "parameters" in tags and "remove-cell" not in tags:
            tags.append("remove-cell")
    for cell in notebook.cells:
        if cell.cell_type == "markdown" and cell.source.startswith("# "):
            first, _, rest = cell.source.partition("\n")
            cell.source = page_title(first, parameters or {}) + (("\n" + rest) if rest else "")
            break
    nbformat.write(notebook, str(path))


def execute(
    notebook: str | Path,
    output: str | Path,
    parameters: dict[str, Any] | None = None,
    kernel: str = "python3",
    cwd: str | Path | None = None,
) -> Path:
    """Run a notebook with papermill; the output appears only if every cell succeeded."""
    import papermill

    output = Path(output)
    with atomic_path(output, suffix=".ipynb") as tmp:
        papermill.execute_notebook(
            str(notebook),
            str(tmp),
            parameters=parameters or {},
            kernel_name=kernel,
            progress_bar=False,
            log_output=False,
            cwd=str(cwd) if cwd else None,
            # the kernel is stopped once the last cell ran: every step has written its outputs (atomically) by
            # then, and a graceful shutdown waited 1.2-2.6 s per page for a kernel holding torch (measured)
            shutdown_kernel="immediate",
            iopub_timeout=IOPUB_TIMEOUT_S,
        )
        show_values_run_with(tmp, parameters)
    log.info("executed %s → %s", notebook, output)
    return output
