"""Step ``prepare`` (docs/method.md §2): LPS, the L3/L4–L5/S1 crop, CT decimation, the model-input stacks."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from nnsam2_utils.data.io import write_csv
from nnsam2_utils.data.manifest import DatasetManifest
from nnsam2_utils.prepare.annotation import write_prepared_annotation
from nnsam2_utils.prepare.dataset import prepare_dataset
from nnsam2_utils.workflow.runlog import claim_folder, run_key, step_record
from nnsam2_utils.workflow.session import Run
from nnsam2_utils.workflow.workspace import Workspace


def prepare_manifest(ws: Workspace, manifest: DatasetManifest, upstream: list[Path] | None = None) -> pd.DataFrame:
    """Prepare every scan of one dataset into ``ws.prepared(<dataset>)``; returns (and writes) its case table."""
    key = run_key(
        {"manifest": manifest.model_dump(mode="json", exclude={"manifest_path"})},
        upstream=upstream or [],
        step="prepare",
    )
    out = ws.prepared(manifest.name)
    resumed = claim_folder(out, key)
    with step_record(ws.runlog, "prepare", manifest.name, {"resumed": resumed}, key=key):
        cases = prepare_dataset(manifest, out)
        write_prepared_annotation(manifest, out)  # the user's own annotated slice, if the manifest names one
    write_csv(cases, out / "cases.csv")
    return cases


def prepare(run: Run, dataset: str) -> pd.DataFrame:
    """The prepare step of one dataset of the run (a generated dataset depends on the cohort's files)."""
    upstream = [run.workspace.data] if dataset in run.generated_datasets else []
    return prepare_manifest(run.workspace, run.manifest(dataset), upstream)
