"""Step ``which_slice`` (docs/method.md §10.6): which slice to annotate, on one dataset of the run.

Stage 0 is run again on one dataset with the annotated slice at each disc level and the mid-region slice (the medoid
kept), and with random other scans as the reference (the L3/L4 slice kept); every scan is encoded once for all
variants (:mod:`nnsam2_utils.experiments.which_slice`). Then each variant's pseudo-labels train a nnU-Net of their own
under a small budget (:mod:`nnsam2_utils.experiments.variant_training`, ``baselines.which_slice_epochs``; 0: stage 0
alone), so the chapter shows where the slice choice leaves the final model, not only stage 0.

Files under ``which_slice/``: ``plan.csv``, ``notes.json``, ``variants/<key>/`` (each variant's pseudo-labels and
confidence), ``dsc.csv`` (stage 0, written last of that part), ``nnunet/<key>/`` (the variant's nnU-Net),
``final_selection.csv`` and ``final_dsc.csv`` (written last). Run records: ``which_slice__<dataset>`` (stage 0) and
``which_slice_nnunet__<dataset>`` (the trainings).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from nnsam2_utils.data.io import read_csv, read_json, write_csv, write_json
from nnsam2_utils.errors import DataError
from nnsam2_utils.workflow.runlog import claim_folder, read_key, run_key, step_record
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
    seconds: float  # the stage-0 part's recorded time (its run record)
    slices_from_stage0: int  # slice embeddings read from what stage 0 kept (its run record)
    slices_encoded: int  # slices encoded by the stage-0 part itself
    final_dsc: pd.DataFrame  # DSC_COLUMNS: each variant's nnU-Net (empty when which_slice_epochs is 0)
    final_selection: pd.DataFrame  # the stage-1 filter table per variant (column key)
    final_seconds: float  # the trainings' recorded time (0 when none ran)
    final_budget: dict  # the variants' nnU-Net budget (empty when none ran)
    run_final_dsc: pd.DataFrame  # the run's own nnU-Net 1 DSC rows of the dataset (empty when it did not train)


def study_dataset(run: Run) -> str:
    """The dataset the chapter runs on (:func:`~nnsam2_utils.steps.stage0.which_slice_dataset`)."""
    from nnsam2_utils.steps.stage0 import which_slice_dataset

    dataset = which_slice_dataset(run)
    if dataset is None:
        raise DataError(
            f"profile {run.name}: no dataset with expert labels on every scan, two scans or more and no drawn "
            "annotation, so there is nothing to compare the annotated slice on. Set baselines.which_slice: false."
        )
    return dataset


def _scan_shapes(run: Run, dataset: str) -> dict:
    from nnsam2_utils.experiments.which_slice import ScanShape

    discs = {case.id: case.discs for case in run.manifest(dataset).cases}
    return {
        str(row.case): ScanShape(int(row.n_slices), int(row.decimation), discs.get(str(row.case)))
        for row in run.workspace.case_table(dataset).itertuples()
    }


@dataclass(frozen=True)
class _Study:
    """What both parts of the step need: the dataset, its medoid, the settings and the run-key parameters."""

    dataset: str
    medoid: str
    settings: dict  # stage 0's propagation settings
    seeds: list[int]
    epochs: int  # the variants' nnU-Net epochs (0: none)
    refine: dict
    parameters: dict  # the stage-0 part's record parameters


def _study(run: Run) -> _Study:
    """The study's settings, with the step's folder claimed for them (stale outputs removed, finished ones kept).

    The run key holds the propagation settings, the seeds, the dataset, the variants' nnU-Net budget and the stage-0
    and prepared folders' keys."""
    from nnsam2_utils.experiments.which_slice import LEVELS
    from nnsam2_utils.steps.stage0 import propagation_settings

    ws = run.workspace
    dataset = study_dataset(run)
    stage_dir = ws.stage("stage0", dataset)
    settings, _ = propagation_settings(run)
    seeds = [run.seed + i for i in range(N_SEEDS)]
    epochs = int(run.profile.baselines.which_slice_epochs)
    batch = run.profile.baselines.which_slice_batch_size
    refine = run.section("refine") | ({"batch_size": int(batch)} if batch else {})
    parameters = {"dataset": dataset, "levels": list(LEVELS), "seeds": seeds, **settings}
    final = {"epochs": epochs, "refine": refine} if epochs else {}
    key = run_key({**parameters, "final": final}, [ws.prepared(dataset), stage_dir], step=STEP)
    claim_folder(ws.stage(STEP), key)
    medoid = str(read_json(stage_dir / "annotation.json")["reference_case"])
    return _Study(dataset, medoid, settings, seeds, epochs, refine, parameters)


def which_slice_variants(run: Run) -> None:
    """The stage-0 part alone (the workflow runs it on the job's cores as soon as stage 0 is done; the trainings
    follow)."""
    study = _study(run)
    _stage0_part(run, study.dataset, study.medoid, study.seeds, study.settings, study.parameters)


def which_slice(run: Run) -> WhichSliceResult:
    """Run (or read back) the comparison on :func:`study_dataset`: stage 0 per variant, then a nnU-Net per variant.

    A rebuild with nothing changed reads the tables back and is not timed again; an interrupted one resumes (the
    stage-0 part as a whole, each finished training from its folder).
    """
    ws = run.workspace
    study = _study(run)
    dataset, medoid, stage_dir = study.dataset, study.medoid, ws.stage("stage0", study.dataset)
    plan, notes, dsc, record = _stage0_part(run, dataset, medoid, study.seeds, study.settings, study.parameters)
    final = _final_part(run, dataset, plan, study.refine, study.epochs) if study.epochs else None
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
        float(record["seconds"]),
        int(record.get("slices_from_stage0", 0)),
        int(record.get("slices_encoded", 0)),
        final["dsc"] if final else pd.DataFrame(columns=["dataset", "key", "case", "class", "dsc"]),
        final["selection"] if final else pd.DataFrame(columns=["key", "dataset", "case", "slice", "kept"]),
        final["seconds"] if final else 0.0,
        final["budget"] if final else {},
        _dataset_rows(ws.stage("nnunet1") / "dsc.csv", dataset),
    )


def _dataset_rows(path, dataset: str) -> pd.DataFrame:
    """A DSC table's rows of one dataset (empty when the file does not exist)."""
    if not path.exists():
        return pd.DataFrame(columns=["dataset", "case", "class", "stage", "dsc"])
    table = read_csv(path)
    return table[table["dataset"] == dataset].reset_index(drop=True)


def _variant_folder(run: Run, key: str):
    """Where one variant's pseudo-labels and confidence table are kept (``@`` spelled out for nnU-Net's paths)."""
    return run.workspace.stage(STEP) / "variants" / key.replace("@", "_at_")


def _stage0_part(
    run: Run, dataset: str, medoid: str, seeds: list[int], settings: dict, parameters: dict
) -> tuple[pd.DataFrame, dict, pd.DataFrame, dict]:
    """Stage 0 per variant (or its files read back): the plan, the notes, the DSC rows and the part's run record."""
    from nnsam2_utils.experiments.which_slice import plan_variants

    ws = run.workspace
    folder = ws.stage(STEP)
    record_path = ws.runlog / f"{STEP}__{dataset}.json"
    done = [folder / name for name in ("plan.csv", "notes.json", "dsc.csv")]
    if all(path.exists() for path in done) and record_path.exists():
        plan, notes, dsc = read_csv(done[0]), read_json(done[1]), read_csv(done[2])
    else:
        plan = plan_variants(dataset, _scan_shapes(run, dataset), medoid, seeds)
        with step_record(ws.runlog, STEP, dataset, parameters, key=read_key(folder)) as record:
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
    return plan, notes, dsc, read_json(record_path)


def _propagate(run: Run, dataset: str, plan: pd.DataFrame, settings: dict) -> tuple[pd.DataFrame, dict, dict]:
    """Load the dataset's stacks and expert labels, build stage 0's model, run every variant and keep its labels."""
    from nnsam2_utils.data.geometry import from_stack
    from nnsam2_utils.data.io import read_image, write_image
    from nnsam2_utils.experiments.which_slice import propagate_variants, score_variants
    from nnsam2_utils.prepare.model_input import load_model_input, load_stack
    from nnsam2_utils.propagate import make_propagator
    from nnsam2_utils.propagate.embedding_store import EmbeddingStore
    from nnsam2_utils.steps.stage0 import embeddings_folder

    ws = run.workspace
    cases = ws.case_ids(dataset)
    stacks = {case: load_model_input(ws.prepared(dataset, case)) for case in cases}
    truths = {case: load_stack(ws.prepared(dataset, case), "label")[0] for case in cases}
    # the slices stage 0 encoded are read from its folder, never written there; a missing one is encoded here
    store = EmbeddingStore(embeddings_folder(ws, dataset), writable=False)
    propagator = make_propagator(settings, embedding_store=store)
    variants, notes = propagate_variants(propagator, plan, stacks, truths)
    for key, variant in variants.items():  # the labels a variant's nnU-Net trains on, as stage 0 writes its own
        out = _variant_folder(run, key)
        for case, label in variant.labels.items():
            grid = read_image(ws.prepared(dataset, case) / "image.nii.gz")
            write_image(from_stack(label, grid), out / f"{case}.nii.gz")
        write_csv(variant.confidence, out / "confidence.csv")
    counters = {
        "slices_encoded": int(getattr(propagator, "slices_encoded", 0)),
        "slices_from_stage0": store.hits,
        "decoder_calls": int(getattr(propagator, "decoder_calls", 0)),
        "model_seconds": {k: round(v, 2) for k, v in getattr(propagator, "seconds", {}).items()},
    }
    return score_variants(dataset, {k: v.labels for k, v in variants.items()}, truths), notes, counters


def _final_part(run: Run, dataset: str, plan: pd.DataFrame, refine: dict, epochs: int) -> dict:
    """A nnU-Net per propagated variant (or its files read back): DSC rows, filter tables, seconds and budget.

    The network is planned once on the default variant's kept slices; every variant trains on that plan, side by
    side in as many processes as torch has threads here (the job's cores), and today's variant trains a second time
    with the next seed (key :func:`~nnsam2_utils.experiments.variant_training.repeat_key`): how far two seeds land
    apart is the run's own measure of training noise. A variant whose filter kept no slice is
    not trained (its filter table says so)."""
    import torch

    from nnsam2_utils.experiments.variant_training import (
        VariantJob,
        plan_network,
        repeat_key,
        run_jobs,
        variant_budget,
    )
    from nnsam2_utils.experiments.which_slice import score_variants
    from nnsam2_utils.prepare.model_input import load_stack

    ws = run.workspace
    folder = ws.stage(STEP)
    record_path = ws.runlog / f"{STEP}_nnunet__{dataset}.json"
    budget = variant_budget(refine, epochs, seed=run.seed)
    done = [folder / "final_selection.csv", folder / "final_dsc.csv"]
    if not (all(path.exists() for path in done) and record_path.exists()):
        keys = [k for k in dict.fromkeys(plan.sort_values("default", ascending=False)["key"].fillna("")) if k]
        keys = [k for k in keys if (_variant_folder(run, k) / "confidence.csv").exists()]
        cases = ws.case_ids(dataset)
        images = {case: ws.prepared(dataset, case) / "image.nii.gz" for case in cases}
        jobs = [
            VariantJob(
                key,
                dataset,
                _variant_folder(run, key),
                images,
                folder / "nnunet" / _variant_folder(run, key).name,
                refine,
                budget,
                log=ws.logs / f"{STEP}_nnunet.log",
            )
            for key in keys
        ]
        if jobs:  # today's variant once more with the next seed: the run's own measure of training noise
            first, again = jobs[0], dataclasses.replace(budget, seed=budget.seed + 1)
            root = Path(f"{first.root}_again")
            jobs.append(dataclasses.replace(first, key=repeat_key(first.key), root=root, budget=again))
        workers = max(1, torch.get_num_threads())
        parameters = {"budget": budget.__dict__}
        with step_record(ws.runlog, f"{STEP}_nnunet", dataset, parameters, key=read_key(folder)) as record:
            plans = plan_network(folder / "nnunet" / "_plan", jobs[0]) if jobs else None
            results = run_jobs(jobs, plans, workers) if jobs else []
            record.update(variants=len(jobs), trained=sum(bool(r[1]) for r in results), workers=workers)
        truths = {case: load_stack(ws.prepared(dataset, case), "label")[0] for case in cases}
        predictions = {job.key: labels for job, (_, labels) in zip(jobs, results) if labels}
        selection = pd.concat([r[0] for r in results], ignore_index=True) if results else pd.DataFrame()
        write_csv(selection, done[0])
        write_csv(score_variants(dataset, predictions, truths), done[1])
    return {
        "selection": read_csv(done[0]),
        "dsc": read_csv(done[1]),
        "seconds": float(read_json(record_path)["seconds"]),
        "budget": dict(budget.__dict__),
    }
