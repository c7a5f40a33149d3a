"""Executing the stage notebooks with papermill, for the workflow and for tests.

The executed notebook is written to a temporary name and moved into place only when every
cell ran, so a failed or killed run never leaves a notebook that looks finished. Parameters
are data (YAML scalars), never code. The cell papermill injects with the parameters is tagged
``remove-input`` so the book shows its outputs (none) but readers see the values in the
run's provenance instead of a code cell.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import nbformat
import yaml

from nnsam2_utils.data.io import atomic_path

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


def tag_injected_cells(path: str | Path) -> None:
    """Hide the input of papermill's injected-parameters cell in the rendered book."""
    notebook = nbformat.read(str(path), as_version=4)
    for cell in notebook.cells:
        tags = cell.get("metadata", {}).get("tags", [])
        if "injected-parameters" in tags and "remove-input" not in tags:
            tags.append("remove-input")
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
        )
        tag_injected_cells(tmp)
    log.info("executed %s → %s", notebook, output)
    return output
