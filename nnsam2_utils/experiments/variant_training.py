"""Which slice to annotate, carried into nnU-Net (docs/method.md §10.6): each variant's pseudo-labels are filtered as
stage 1 filters the run's, one nnU-Net is trained on the slices kept and its predictions are scored against the expert
labels.

Every variant trains the same network: it is planned once, by nnU-Net's planner on the default variant's kept slices
with the run's ``refine`` overrides, and every training starts from random weights on that plan, so the variants
differ only in their pseudo-labels. The budget is nnU-Net 1's with fewer epochs (``baselines.which_slice_epochs``),
trained on the one dataset: the chapter's numbers are comparable with one another, not with the run's own nnU-Net 1,
which trains on every dataset with the full budget (the page shows both for the default variant).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from nnsam2_utils.refine.nnunet import Budget, TrainingCase
from nnsam2_utils.workflow.runlog import captured_output

log = logging.getLogger(__name__)

#: nnU-Net's name for the chapter's trainings (its dataset id: ``refine.stages.DATASET_IDS``).
NAME = "which_slice"


def repeat_key(key: str) -> str:
    """The key of a variant's second training with the next seed (its DSC rows say how noisy one training is)."""
    return f"{key}|again"


def variant_budget(refine: dict, epochs: int, seed: int = 0) -> Budget:
    """nnU-Net 1's budget from the profile's ``refine`` section, with ``epochs`` epochs (≥ 1)."""
    from nnsam2_utils.refine.stages import stage_budget

    if int(epochs) < 1:
        raise ValueError(f"a variant's nnU-Net trains at least one epoch; got {epochs}.")
    budget = stage_budget(refine, 1, seed=seed)  # no progress plot: no page shows a variant's training curve
    return dataclasses.replace(budget, epochs=int(epochs), warm_start=False, progress_plot=False)


def train_variant(root: Path, cases: list[TrainingCase], budget: Budget, plans_from: Path | None = None) -> Path:
    """Train (or resume, or find trained) one variant's nnU-Net under ``root``; returns its model folder."""
    from nnsam2_utils.refine.nnunet import fit
    from nnsam2_utils.refine.stages import dataset_id

    if not cases:
        raise ValueError(f"{root}: the stage-1 filter kept no slice of this variant, so there is nothing to train on.")
    return fit(root, dataset_id(NAME), NAME, cases, budget, plans_from=plans_from)


def predict_variant(model: Path, budget: Budget, images: Mapping[str, sitk.Image]) -> dict[str, np.ndarray]:
    """The variant's nnU-Net on every scan (prepared images), post-processed as the stages are: native stacks."""
    from nnsam2_utils.propagate.postprocess import clean_volume
    from nnsam2_utils.refine.nnunet import load_predictor, predict_image

    predictor = load_predictor(model, budget)
    out = {}
    for case, image in images.items():
        labels = clean_volume(predict_image(predictor, image))  # (z, y, x) of the LPS image
        out[case] = np.ascontiguousarray(labels[::-1])  # superior → inferior, as geometry.to_stack orders it
    return out


@dataclass(frozen=True)
class VariantJob:
    """One variant's training, as plain paths and settings (it may run in another process)."""

    key: str
    dataset: str
    labels: Path  # the variant's pseudo-labels, ``<case>.nii.gz``, and its ``confidence.csv``
    images: dict[str, Path]  # per scan of the dataset: its prepared image
    root: Path  # the nnU-Net folder of this training
    refine: dict
    budget: Budget
    plans_from: Path | None = None
    log: Path | None = None  # where nnU-Net's own output goes


def job_cases(job: VariantJob) -> tuple[pd.DataFrame, list[TrainingCase]]:
    """Stage 1's filter (the run's values) on the job's confidence table, and the training cases it keeps."""
    from nnsam2_utils.data.io import read_csv
    from nnsam2_utils.refine.training_set import stage1_training_set

    return stage1_training_set(
        read_csv(job.labels / "confidence.csv"),
        job.refine,
        lambda d, c: job.labels / f"{c}.nii.gz",
        lambda d, c: job.images[c],
    )


def run_job(job: VariantJob, threads: int | None = None) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Filter, train (or resume) and predict one variant: its filter table and its predictions (native stacks, empty
    when the filter kept no slice). ``threads``: torch's CPU threads for this job (None: as they are)."""
    import torch

    from nnsam2_utils.data.io import read_image

    if threads:
        torch.set_num_threads(int(threads))
    selection, cases = job_cases(job)
    selection = selection.assign(key=job.key)
    if not cases:
        return selection, {}
    with captured_output(job.log) if job.log else contextlib.nullcontext():
        model = train_variant(job.root, cases, job.budget, job.plans_from)
        images = {case: read_image(path) for case, path in job.images.items()}
        return selection, predict_variant(model, job.budget, images)


def plan_network(root: Path, job: VariantJob) -> Path | None:
    """Plan the network every variant trains (nnU-Net's planner on ``job``'s kept slices) under ``root``; returns
    the plans file, or None when that variant kept no slice (each training then plans its own)."""
    from nnsam2_utils.refine.nnunet import plan_only
    from nnsam2_utils.refine.stages import dataset_id

    _, cases = job_cases(job)
    if not cases:
        return None
    with captured_output(job.log) if job.log else contextlib.nullcontext():
        return plan_only(root, dataset_id(NAME), NAME, cases, job.budget)


def run_jobs(jobs: list[VariantJob], plans: Path | None, workers: int = 1) -> list[tuple[pd.DataFrame, dict]]:
    """Every variant's training on the plan ``plans`` (:func:`plan_network`): in this process, or in ``workers``
    processes of one torch thread each when ``workers`` > 1 (trainings side by side use the cores better than one
    training with several threads; a last job left alone takes them all; each augments in its own process, as a
    pool's worker may start none). Results in the order given."""
    jobs = [dataclasses.replace(job, plans_from=plans) for job in jobs]
    if workers <= 1 or len(jobs) <= 1:
        return [run_job(job) for job in jobs]
    # a pool's worker may start no process of its own: nnU-Net augments in the training process there
    jobs = [dataclasses.replace(job, budget=dataclasses.replace(job.budget, augmentation_workers=0)) for job in jobs]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("spawn")  # no fork of a process holding torch's thread pools
    threads = [1] * len(jobs)
    if len(jobs) % workers == 1:  # the last job trains alone once the others are done: it takes their cores
        threads[-1] = workers
    with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=context) as pool:
        return list(pool.map(run_job, jobs, threads))
