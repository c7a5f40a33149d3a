"""Step ``cohort``: the synthetic demo cohort (when the profile generates one) and every dataset's manifest."""

from __future__ import annotations

from nnsam2_utils.data.manifest import DatasetManifest
from nnsam2_utils.workflow.runlog import claim_folder, run_key, step_record
from nnsam2_utils.workflow.session import Run


def cohort(run: Run) -> list[DatasetManifest]:
    """Generate the demo datasets not yet generated under this run key; return every dataset's manifest."""
    ws = run.workspace
    settings = run.section("cohort")
    with step_record(ws.runlog, "cohort", "all", settings):
        if run.profile.cohort.generate:
            from nnsam2_utils.data.synthetic.cohort import generate_cohort

            resumed = claim_folder(ws.data, run_key({**settings, "seed": run.seed}, step="cohort"))
            # a dataset's manifest and truth table are written after its files: with the same key, both mean complete
            todo = [
                d
                for d in run.generated_datasets
                if not (resumed and ws.manifest(d).exists() and (ws.data / f"{d}_truth.csv").exists())
            ]
            if todo:
                generate_cohort(ws.data, size=run.profile.cohort.size, seed=run.seed, datasets=todo)
    return [run.manifest(name) for name in run.datasets]
