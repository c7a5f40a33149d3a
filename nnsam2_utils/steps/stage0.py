"""Step ``stage0`` (docs/method.md §3–4): the reference scan, one annotated slice, propagated to every scan."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from nnsam2_utils.data.io import read_csv, write_csv
from nnsam2_utils.data.manifest import DatasetManifest
from nnsam2_utils.evaluate.scans import stage_dsc
from nnsam2_utils.prepare.annotation import user_annotation
from nnsam2_utils.propagate import make_propagator
from nnsam2_utils.propagate.run import propagate_dataset, select_reference
from nnsam2_utils.workflow.runlog import claim_folder, read_key, run_key, step_record
from nnsam2_utils.workflow.session import Run
from nnsam2_utils.workflow.workspace import Workspace


@dataclass(frozen=True)
class Stage0Result:
    """What stage 0 chose and produced for one dataset."""

    dataset: str
    stage: str  # "stage0", or "stage0_<backend>" for a compared backend
    backend: str
    reference_case: str
    annotated_slice: int  # index in the reference scan's region, 0 = L3/L4
    user_annotation: bool  # drawn by the user (manifest ``annotation``) or the medoid's top slice
    distances: pd.DataFrame | None  # mean cosine distance per scan (None for a user annotation)
    confidence: pd.DataFrame  # per frame and class: predicted IoU, object score, area
    dsc: pd.DataFrame  # per scan and class against the expert labels (empty without labels)


def propagation_settings(run: Run, backend: str | None = None) -> tuple[dict, str]:
    """The propagation settings of stage 0, or of a compared backend, and the stage's folder name."""
    settings = {k: v for k, v in run.section("propagation").items() if k != "compare_backends"}
    if backend and backend != settings.get("backend", "litemedsam"):
        return {**settings, "backend": backend}, f"stage0_{backend}"
    return settings, "stage0"


def propagate_manifest(
    ws: Workspace,
    manifest: DatasetManifest,
    settings: dict,
    stage: str = "stage0",
    record_as: str | None = None,
    keep_embeddings: bool = False,
) -> Stage0Result:
    """Stage 0 of one prepared dataset in ``ws``: choose the reference, propagate, write labels and tables.

    ``keep_embeddings``: keep every encoded slice's embedding in :func:`embeddings_folder` (LiteMedSAM)."""
    from nnsam2_utils.propagate.embedding_store import EmbeddingStore

    dataset = manifest.name
    cases = ws.case_ids(dataset)
    stage_dir = ws.stage(stage, dataset)
    resumed = claim_folder(stage_dir, run_key({"dataset": dataset, **settings}, [ws.prepared(dataset)], step="stage0"))
    user = user_annotation(ws.prepared(dataset), manifest)  # (scan, slice) or None
    store = EmbeddingStore(embeddings_folder(ws, dataset, stage)) if keep_embeddings else None
    propagator = make_propagator(settings, embedding_store=store)
    with step_record(ws.runlog, record_as or stage, dataset, settings, key=read_key(stage_dir)) as record:
        distances = None
        if user:
            reference_case, annotated = user
        elif resumed and (stage_dir / "reference.csv").exists():  # chosen under this run key already: not re-encoded
            distances, annotated = read_csv(stage_dir / "reference.csv"), 0
            reference_case = str(distances["case"].iloc[0])
        else:
            reference_case, distances = select_reference(propagator, ws.prepared(dataset), cases)
            annotated = 0
            write_csv(distances, stage_dir / "reference.csv")
        confidence = propagate_dataset(
            propagator,
            ws.prepared(dataset),
            stage_dir,
            dataset,
            cases,
            reference_case,
            annotated,
            "annotation" if user else "label",
        )
        record.update(
            reference_case=reference_case,
            annotated_slice=annotated,
            backend=propagator.name,
            resumed=resumed,
            annotation="user" if user else "medoid top slice",
            **({"embeddings_kept": store.writes} if store else {}),
        )
    write_csv(confidence, stage_dir / "confidence.csv")
    dsc = stage_dsc(ws, [dataset], stage)
    write_csv(dsc, stage_dir / "dsc.csv")
    return Stage0Result(
        dataset, stage, propagator.name, reference_case, annotated, bool(user), distances, confidence, dsc
    )


def stage0(run: Run, dataset: str, backend: str | None = None) -> Stage0Result:
    """Stage 0 of one dataset of the run, with the profile's backend or a compared one (``backend``).

    On the dataset of the Which-slice chapter (:func:`which_slice_dataset`) stage 0 keeps its slice embeddings
    (``embeddings/``, about 4 MiB a slice), which the chapter's propagations then read instead of encoding again."""
    settings, stage = propagation_settings(run, backend)
    keep = stage == "stage0" and run.profile.baselines.which_slice and dataset == which_slice_dataset(run)
    return propagate_manifest(run.workspace, run.manifest(dataset), settings, stage, keep_embeddings=keep)


def which_slice_dataset(run: Run) -> str | None:
    """The dataset the Which-slice chapter runs on (``steps.which_slice``): the run's first with expert labels on
    every scan, at least two scans and no drawn annotation (whose slice is the user's, not a level to move); None
    when no dataset qualifies. Decided from the manifests, so any step can ask before the datasets are prepared."""
    for dataset in run.datasets:
        manifest = run.manifest(dataset)
        cases = manifest.cases
        if len(cases) >= 2 and all(case.label is not None for case in cases) and manifest.annotation is None:
            return dataset
    return None


def embeddings_folder(ws: Workspace, dataset: str, stage: str = "stage0") -> Path:
    """Where stage 0 keeps a dataset's slice embeddings (:mod:`~nnsam2_utils.propagate.embedding_store`)."""
    return ws.stage(stage, dataset) / "embeddings"


def encoder(run: Run) -> None:
    """Build stage 0's promptable model once, before any dataset needs it (or find it built and verified).

    With ``propagation.encoder: openvino`` this is where LiteMedSAM's encoder is exported into the cache
    (``work/_models``): the workflow runs it beside the cohort, so no dataset's stage 0 waits for the export.
    """
    settings, _ = propagation_settings(run)
    with step_record(run.workspace.runlog, "encoder", "all", settings):
        make_propagator(settings)
