"""Step ``own_scans`` (the book's "your own data" chapter): a user's dataset taken through prepare and stage 0.

The example is a phantom scan written the way a user brings scans (DICOM and NIfTI files, a disc-level
CSV, one slice drawn by hand); it runs the very steps the pipeline runs (:func:`prepare_manifest`,
:func:`propagate_manifest`), in its own work folder ``work/<profile>/own_scans``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from nnsam2_utils.data.manifest import DatasetManifest, load_manifest
from nnsam2_utils.steps.prepare import prepare_manifest
from nnsam2_utils.steps.stage0 import Stage0Result, propagate_manifest
from nnsam2_utils.workflow.runlog import claim_folder, run_key, step_record
from nnsam2_utils.workflow.session import Run
from nnsam2_utils.workflow.workspace import Workspace

EXAMPLE = "my_lumbar_t2"


@dataclass(frozen=True)
class OwnScans:
    """The example user dataset after prepare and stage 0."""

    workspace: Workspace
    manifest_path: Path
    manifest: DatasetManifest
    cases: pd.DataFrame
    stage0: Stage0Result


def example_dataset(run: Run, size: str = "tiny") -> tuple[Workspace, Path]:
    """Write the example user dataset (once per run key); returns its work folder and manifest path."""
    own = Workspace(run.workspace.root / "own_scans")
    claim_folder(own.root, run_key({"size": size, "seed": run.seed, **run.section("propagation")}, step="own_scans"))
    manifest_path = own.data / EXAMPLE / f"{EXAMPLE}.yaml"
    if not manifest_path.exists():
        from nnsam2_utils.data.synthetic.cohort import generate_cohort
        from nnsam2_utils.data.synthetic.own_example import assemble_example

        source = generate_cohort(own.root / "phantom", size=size, seed=run.seed, datasets=["backpain_t2w"])[0]
        assemble_example(source, own.data / EXAMPLE, EXAMPLE)
    return own, manifest_path


def own_scans_example(run: Run, size: str = "tiny") -> OwnScans:
    """The example dataset, prepared and propagated from the user's slice with the run's promptable model."""
    with step_record(run.workspace.runlog, "own_scans", "example", {"size": size}):
        own, manifest_path = example_dataset(run, size)
        manifest = load_manifest(manifest_path)
        cases = prepare_manifest(own, manifest)
        result = propagate_manifest(own, manifest, run.section("propagation"))
    return OwnScans(own, manifest_path, manifest, cases, result)


def volumes_table(own: OwnScans) -> pd.DataFrame:
    """Muscle volumes per scan and class from the stage-0 masks (``auto``) and, with expert labels, from those
    (``expert``) and the DSC between the two."""
    from nnsam2_utils.evaluate.scans import scan_measurements

    rows = []
    for case in own.cases["case"]:
        rows += scan_measurements(own.workspace, own.manifest.name, own.manifest.modality, case, "stage0")
    volumes = (
        pd.DataFrame(rows)
        .query("measure == 'volume_ml' and `class` in [1, 2]")
        .pivot_table(index=["case", "class"], columns="source", values="value")
        .round(1)
    )
    if not len(own.stage0.dsc):
        return volumes
    return volumes.join(own.stage0.dsc.set_index(["case", "class"])["dsc"].round(3))
