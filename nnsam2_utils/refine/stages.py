"""The refinement stages (docs/method.md §5): stage names, budgets, nnU-Net dataset ids, training and
prediction of one stage."""

from __future__ import annotations

import logging
from pathlib import Path

from nnsam2_utils.data.io import array_to_image, read_image
from nnsam2_utils.refine.nnunet import TrainingCase

log = logging.getLogger(__name__)


def predict_all(model_folder: Path, budget, datasets: list[str], workspace, stage: str) -> list[Path]:
    """Predict every prepared scan of every dataset, post-process, write ``<stage>/<dataset>/labels``.

    Scans whose prediction already exists are not predicted again (resume). DSC is computed from the
    written files by :func:`nnsam2_utils.evaluate.scans.stage_dsc`. Returns the label files.
    """
    scans = [(dataset, case) for dataset in datasets for case in workspace.case_ids(dataset)]
    return predict_scans(model_folder, budget, scans, workspace, stage)


def predict_scans(model_folder: Path, budget, scans: list[tuple[str, str]], workspace, stage: str) -> list[Path]:
    """Predict the given (dataset, case) scans with one model, post-process, write ``<stage>/<dataset>/labels``.

    A scan whose prediction already exists is not predicted again (resume); the model is loaded only
    when a scan needs it. Returns the label files, in the order of ``scans``.
    """
    from tqdm.auto import tqdm

    from nnsam2_utils.data.io import write_image
    from nnsam2_utils.propagate.postprocess import clean_volume
    from nnsam2_utils.refine.nnunet import load_predictor, predict_image

    predictor = None
    written = []
    for dataset, case in tqdm(scans, desc=f"{stage} predict", leave=False):
        out = workspace.labels(stage, dataset, case)
        if not out.exists():
            predictor = predictor or load_predictor(model_folder, budget)
            image = read_image(workspace.prepared(dataset, case) / "image.nii.gz")
            labels = clean_volume(predict_image(predictor, image))
            write_image(array_to_image(labels, image), out)
        written.append(out)
    return written


#: nnU-Net dataset ids of the run's trainings: the one place these numbers are named.
DATASET_IDS: dict[str, int] = {
    "nnunet1": 501,
    "nnunet2": 502,
    "nnunet3": 503,
    "which_slice": 580,
    "repeat": 590,
    "supervised": 599,
}


def dataset_id(name: str) -> int:
    """The nnU-Net dataset id of a training (``nnunet<k>``, ``repeat``, ``supervised``)."""
    return DATASET_IDS[name]


def stage_names(stage: int) -> tuple[str, str, str | None]:
    """(this stage, the stage whose labels it trains on, the stage those labels are checked against)."""
    name = f"nnunet{stage}"
    previous = "stage0" if stage == 1 else f"nnunet{stage - 1}"
    before = None if stage == 1 else ("stage0" if stage == 2 else f"nnunet{stage - 2}")
    return name, previous, before


def fit_stage(
    workspace, stage: int, cases: list[TrainingCase], budget, settings: dict, name: str | None = None
) -> Path:
    """Train (or resume) the nnU-Net of a refinement stage; returns its model folder.

    Stage 1 trains on sparse pseudo-labels (2-D kept slices, or volumes with nnU-Net's ignore
    label); with ``budget.warm_start`` stages 2-3 start from the previous stage's plan and final
    weights rather than from random weights (a CPU-budget choice; the paper trains each anew).
    ``name`` trains the same stage again under another folder and nnU-Net dataset (``repeat``: the
    repeat with another seed); by default ``nnunet<stage>``. Dataset ids: :data:`DATASET_IDS`.
    """
    from nnsam2_utils.refine.nnunet import fit, model_folder

    stage_name, previous, _ = stage_names(stage)
    name = name or stage_name
    root = workspace.stage(name) / "nnunet"
    start_from = None
    if stage > 1 and budget.warm_start:
        start_from = model_folder(workspace.stage(previous) / "nnunet", dataset_id(previous), previous, budget)
    return fit(
        root,
        dataset_id(name),
        name,
        cases,
        budget,
        ignore_label=stage == 1 and settings.get("sparse_mode") == "ignore_label",
        start_from=start_from,
    )


def stage_settings(settings: dict, stage: int) -> dict:
    """A stage's refine settings: the section's values, overridden by its ``stage<k>`` entry."""
    return {**{k: v for k, v in settings.items() if not k.startswith("stage")}, **(settings.get(f"stage{stage}") or {})}


def stage_budget(settings: dict, stage: int, seed: int = 0):
    """The nnU-Net budget of a refinement stage (``stage<k>`` entries override the section)."""
    from nnsam2_utils.refine.nnunet import Budget

    return Budget.from_settings(stage_settings(settings, stage), seed=seed)
