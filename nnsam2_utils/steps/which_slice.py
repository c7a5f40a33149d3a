"""Step ``which_slice`` (docs/method.md §10.6): which slice to annotate, on one dataset of the run.

Stage 0 is run again on one dataset with the annotated slice at each disc level and the mid-region slice (the medoid
kept), and with random other scans as the reference (the L3/L4 slice kept); every scan is encoded once for all
variants (:mod:`nnsam2_utils.experiments.which_slice`). Only stage 0 is compared: a nnU-Net per variant does not fit
the chapter's budget (about 90 s on two busy cores).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from nnsam2_utils.data.io import read_csv, read_json, write_csv, write_json
from nnsam2_utils.errors import DataError
from nnsam2_utils.workflow.runlog import claim_folder, run_key, step_record
from nnsam2_utils.workflow.session import Run

STEP = "which_slice"
#: Random reference draws: seeds ``seed``, ``seed + 1``, … of the profile.
N_SEEDS = 3


@dataclass(frozen=True)
class WhichSliceResult:
    """The variants of one dataset, their DSC rows and what the run's own stage 0 scored."""

    dataset: str
    modality: str
    medoid: str
    plan: pd.DataFrame  # experiments.which_slice.PLAN_COLUMNS
    dsc: pd.DataFrame  # experiments.which_slice.DSC_COLUMNS
    notes: dict  # per variant key: why it did not run, or which class its annotated slice lacks
    stage0_dsc: pd.DataFrame  # the run's stage-0 DSC rows of the dataset
    seconds: float  # the step's recorded time (its run record)


def study_dataset(run: Run) -> str:
    """The dataset the chapter runs on: the run's first with expert labels on every scan, at least two scans and no
    user-drawn annotation (whose slice is the user's, not a level to move)."""
    ws = run.workspace
    for dataset in run.datasets:
        cases = ws.case_table(dataset)
        if len(cases) >= 2 and cases["has_label"].astype(bool).all() and run.manifest(dataset).annotation is None:
            return dataset
    raise DataError(
        f"profile {run.name}: no dataset with expert labels on every scan, two scans or more and no drawn "
        "annotation, so there is nothing to compare the annotated slice on. Set baselines.which_slice: false."
    )


def _scan_shapes(run: Run, dataset: str) -> dict:
    from nnsam2_utils.experiments.which_slice import ScanShape

    discs = {case.id: case.discs for case in run.manifest(dataset).cases}
    return {
        str(row.case): ScanShape(int(row.n_slices), int(row.decimation), discs.get(str(row.case)))
        for row in run.workspace.case_table(dataset).itertuples()
    }


def which_slice(run: Run) -> WhichSliceResult:
    """Run (or read back) the comparison on :func:`study_dataset`; writes ``which_slice/{plan,dsc}.csv`` (dsc last).

    The run key holds the propagation settings, the seeds, the dataset and the stage-0 and prepared folders' keys: a
    rebuild with nothing changed reads the tables back and is not timed again.
    """
    from nnsam2_utils.experiments.which_slice import LEVELS, plan_variants
    from nnsam2_utils.steps.stage0 import propagation_settings

    ws = run.workspace
    dataset = study_dataset(run)
    stage_dir = ws.stage("stage0", dataset)
    medoid = str(read_json(stage_dir / "annotation.json")["reference_case"])
    settings, _ = propagation_settings(run)
    seeds = [run.seed + i for i in range(N_SEEDS)]
    parameters = {"dataset": dataset, "levels": list(LEVELS), "seeds": seeds, **settings}
    folder = ws.stage(STEP)
    claim_folder(folder, run_key(parameters, [ws.prepared(dataset), stage_dir], step=STEP))
    record_path = ws.runlog / f"{STEP}__{dataset}.json"
    done = [folder / name for name in ("plan.csv", "notes.json", "dsc.csv")]
    if all(path.exists() for path in done) and record_path.exists():
        plan, notes, dsc = read_csv(done[0]), read_json(done[1]), read_csv(done[2])
    else:
        plan = plan_variants(dataset, _scan_shapes(run, dataset), medoid, seeds)
        with step_record(ws.runlog, STEP, dataset, parameters) as record:
            dsc, notes, counters = _propagate(run, dataset, plan, settings)
            record.update(
                medoid=medoid,
                variants=len(plan),
                propagations=int(plan.loc[plan["key"] != "", "key"].nunique()),
                **counters,
            )
        write_csv(plan, done[0])
        write_json(notes, done[1])
        write_csv(dsc, done[2])
    plan = plan.assign(key=plan["key"].fillna("").astype(str), seed=plan["seed"].astype("Int64"))
    plan["slice"] = plan["slice"].astype("Int64")
    return WhichSliceResult(
        dataset,
        run.manifest(dataset).modality,
        medoid,
        plan,
        dsc,
        notes,
        read_csv(stage_dir / "dsc.csv"),
        float(read_json(record_path)["seconds"]),
    )


def _propagate(run: Run, dataset: str, plan: pd.DataFrame, settings: dict) -> tuple[pd.DataFrame, dict, dict]:
    """Load the dataset's stacks and expert labels, build stage 0's model and run every variant."""
    from nnsam2_utils.experiments.which_slice import run_variants
    from nnsam2_utils.prepare.model_input import load_model_input, load_stack
    from nnsam2_utils.propagate import make_propagator

    ws = run.workspace
    cases = ws.case_ids(dataset)
    stacks = {case: load_model_input(ws.prepared(dataset, case)) for case in cases}
    truths = {case: load_stack(ws.prepared(dataset, case), "label")[0] for case in cases}
    propagator = make_propagator(settings)
    dsc, notes = run_variants(propagator, plan, stacks, truths)
    counters = {
        "slices_encoded": int(getattr(propagator, "slices_encoded", 0)),
        "decoder_calls": int(getattr(propagator, "decoder_calls", 0)),
        "model_seconds": {k: round(v, 2) for k, v in getattr(propagator, "seconds", {}).items()},
    }
    return dsc, notes, counters


def nnunet_training_seconds(run: Run, stage: str = "nnunet1") -> float | None:
    """How long the run's ``stage`` trained (its run record), or None when it did not train."""
    path = run.workspace.runlog / f"{stage}_train__pooled.json"
    return float(read_json(path)["seconds"]) if path.exists() else None
