"""nnU-Net v2 driven from Python: raw dataset, planning, training and prediction.

One nnU-Net per refinement stage, trained on pseudo-labels pooled across datasets (MRI and
CT in one single-channel model, z-score normalisation per image). Every stage lives in its
own folder ``<stage_dir>/nnunet/{raw,preprocessed,results}``; nnU-Net's path variables are
set for the duration of each call only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import SimpleITK as sitk
import torch

from nnsam2_utils.data.io import array_to_image, read_json, write_image, write_json
from nnsam2_utils.errors import ConfigError
from nnsam2_utils.refine.checkpoint import (
    read_checkpoint,
    verify_trained_checkpoint,
    write_checksum_file,
)
from nnsam2_utils.refine.pools import thread_pools

log = logging.getLogger(__name__)

TRAINER = "nnUNetTrainer_nnsam2"
PLANS = "nnUNetPlans"
LABELS = {"background": 0, "right_lpm": 1, "left_lpm": 2}
IGNORE = 3


@dataclass(frozen=True)
class Budget:
    """Training budget and configuration of one nnU-Net stage (a run-profile setting)."""

    configuration: Literal["2d", "3d_fullres"] = "2d"
    epochs: int | None = None  # None: nnU-Net's default (1000)
    iterations_per_epoch: int | None = None  # None: 250
    val_iterations: int | None = 2
    batch_size: int | None = None  # None: nnU-Net's plan
    max_features: int | None = None  # cap on feature maps per stage (CPU budget); None: the plan's
    target_spacing_mm: float | None = None  # in-plane; None: nnU-Net's plan
    rotation_deg: float | None = None  # in-plane rotation range of augmentation (±); None: nnU-Net's
    warm_start: bool = False  # stages 2-3 start from the previous stage's weights (CPU budget)
    device: str = "cpu"
    fold: int | str = "all"
    seed: int = 0
    augmentation_workers: int = 1
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16: the forward pass under CPU autocast (native bf16 only)
    progress_plot: bool = True  # nnU-Net's progress.png after the last epoch (about 0.8 s; the chapter's skip it)

    @classmethod
    def from_settings(cls, settings: dict, seed: int = 0) -> Budget:
        """The budget from a run profile's ``refine`` section (unknown keys are ignored; ``precision`` resolved)."""
        names = {f for f in cls.__dataclass_fields__ if f not in ("seed", "precision")}
        values = {k: v for k, v in settings.items() if k in names}
        device = values.get("device", "cpu")
        return cls(**values, seed=seed, precision=training_precision(settings.get("precision") or "fp32", device))


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (avx512_bf16 or AMX), as torch's oneDNN kernels need."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def training_precision(asked: str, device: str = "cpu") -> Literal["fp32", "bf16"]:
    """The precision a training runs in: ``auto`` is bf16 on a CPU with native bf16, fp32 otherwise.

    ``bf16`` on a CPU without native bf16 is refused (emulated bf16 is slower than fp32); on a GPU
    nnU-Net's own mixed precision applies and the setting is fp32 (nothing to change).
    """
    if asked not in ("fp32", "bf16", "auto"):
        raise ConfigError(f"refine.precision must be fp32, bf16 or auto, got {asked!r}")
    if asked == "fp32" or device != "cpu":
        return "fp32"
    if cpu_has_native_bf16():
        return "bf16"
    if asked == "bf16":
        raise ConfigError(
            "refine.precision: bf16 needs a CPU with native bf16 (avx512_bf16 or AMX) and this one has neither; "
            "set refine.precision to fp32 or auto in the run profile"
        )
    return "fp32"


@dataclass(frozen=True)
class TrainingCase:
    """One training case: an image file and a label array in that image's (z, y, x) grid."""

    case_id: str
    image: sitk.Image
    label: np.ndarray


def _apply_environ(values: dict[str, str | None]) -> None:
    for key, value in values.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@contextlib.contextmanager
def temporary_environ(values: dict[str, str | None]) -> Iterator[None]:
    """Set (or, for None, unset) environment variables for the block; restore them afterwards."""
    saved = {k: os.environ.get(k) for k in values}
    try:
        _apply_environ(values)
        yield
    finally:
        _apply_environ(saved)


@contextlib.contextmanager
def nnunet_environment(root: str | Path, workers: int = 1) -> Iterator[Path]:
    """Point nnU-Net at ``root/{raw,preprocessed,results}`` and at nnsam2's trainer for the block."""
    root = Path(root)
    folders = {
        name: root / sub
        for name, sub in (("nnUNet_raw", "raw"), ("nnUNet_preprocessed", "preprocessed"), ("nnUNet_results", "results"))
    }
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    values = {
        **{k: str(v) for k, v in folders.items()},
        "nnUNet_extTrainer": str(Path(__file__).parent / "trainers"),
        "nnUNet_n_proc_DA": str(workers),
    }
    with temporary_environ(values):
        yield root


def dataset_name(dataset_id: int, name: str) -> str:
    """nnU-Net's folder name ``DatasetXXX_Name``."""
    return f"Dataset{dataset_id:03d}_{name}"


def write_raw_dataset(
    root: str | Path, dataset_id: int, name: str, cases: Sequence[TrainingCase], ignore_label: bool = False
) -> Path:
    """Write an nnU-Net raw dataset (imagesTr, labelsTr, dataset.json) under ``root/raw``."""
    folder = Path(root) / "raw" / dataset_name(dataset_id, name)
    if folder.exists():
        shutil.rmtree(folder)
    for case in cases:
        write_image(sitk.Cast(case.image, sitk.sitkFloat32), folder / "imagesTr" / f"{case.case_id}_0000.nii.gz")
        label = array_to_image(case.label.astype(np.uint8), case.image)
        write_image(label, folder / "labelsTr" / f"{case.case_id}.nii.gz")
    labels = dict(LABELS)
    if ignore_label:
        labels["ignore"] = IGNORE
    write_json(
        {
            "channel_names": {"0": "MRI_or_CT_zscore"},
            "labels": labels,
            "numTraining": len(cases),
            "file_ending": ".nii.gz",
            "name": name,
        },
        folder / "dataset.json",
    )
    return folder


def plan_and_preprocess(
    root: str | Path, dataset_id: int, budget: Budget, plans_from: str | Path | None = None
) -> dict:
    """Fingerprint, plan and preprocess one configuration.

    The budget may override the plan: in-plane target spacing, batch size (set exactly, even
    above nnU-Net's 5 %-of-the-dataset cap, which starves tiny pseudo-label sets) and a cap on
    the feature maps per stage (a smaller network for a CPU budget). With ``plans_from`` (the
    plans file of an earlier stage) that plan is reused as it is, so the earlier stage's
    weights fit the network (a warm start), and so is the fingerprint it was planned from. nnU-Net's
    pools run as threads of this process (:mod:`nnsam2_utils.refine.pools`: same results, no interpreter
    start-ups).
    """
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprint_dataset,
        plan_experiments,
        preprocess,
    )
    from nnunetv2.utilities.dataset_name_id_conversion import convert_id_to_dataset_name

    # nnU-Net's planner sets torch's threads to nnUNet_n_proc_DA: at least one, even when training augments in-process
    with nnunet_environment(root, max(1, budget.augmentation_workers)), thread_pools():
        earlier = Path(plans_from).with_name("dataset_fingerprint.json") if plans_from is not None else None
        if earlier is not None and earlier.is_file():
            # a warm start reuses the earlier plan as it is: the fingerprint behind that plan goes with it (nnU-Net
            # plans from a fingerprint and nothing else reads one; extracting a new one cost ~10 s per stage)
            target = Path(root) / "preprocessed" / convert_id_to_dataset_name(dataset_id) / "dataset_fingerprint.json"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(earlier, target)
        else:
            extract_fingerprint_dataset(
                dataset_id,
                _fingerprint_extractor(),
                num_processes=1,
                check_dataset_integrity=True,
                verbose=False,
                show_progress_bar=False,
            )
        spacing = None
        if budget.target_spacing_mm:
            fingerprint = read_json(
                Path(root) / "preprocessed" / convert_id_to_dataset_name(dataset_id) / "dataset_fingerprint.json"
            )
            z = float(np.median([s[0] for s in fingerprint["spacings"]]))
            spacing = (z, float(budget.target_spacing_mm), float(budget.target_spacing_mm))
        plans_file = Path(root) / "preprocessed" / convert_id_to_dataset_name(dataset_id) / f"{PLANS}.json"
        if plans_from is not None:  # what plan_experiments would write: the plan, and the dataset.json beside it
            plans = read_json(plans_from)
            plans["dataset_name"] = convert_id_to_dataset_name(dataset_id)
            write_json(plans, plans_file)
            raw_json = Path(root) / "raw" / convert_id_to_dataset_name(dataset_id) / "dataset.json"
            write_json(read_json(raw_json), plans_file.parent / "dataset.json")
        else:
            plan_experiments([dataset_id], overwrite_target_spacing=spacing)
            plans = read_json(plans_file)
        if plans_from is None and (budget.batch_size or budget.max_features):
            for config in plans["configurations"].values():
                if budget.batch_size and "batch_size" in config:
                    config["batch_size"] = int(budget.batch_size)
                kwargs = config.get("architecture", {}).get("arch_kwargs", {})
                if budget.max_features and "features_per_stage" in kwargs:
                    kwargs["features_per_stage"] = [
                        min(int(f), budget.max_features) for f in kwargs["features_per_stage"]
                    ]
            write_json(plans, plans_file)
        preprocess(
            [dataset_id],
            PLANS,
            configurations=(budget.configuration,),
            num_processes=(1,),
            verbose=False,
            show_progress_bar=False,
        )
    return plans


#: Foreground voxels nnU-Net's fingerprint samples for its intensity statistics (nnU-Net: 10⁸ over the dataset, ~7 s
#: of sampling and percentiles whatever the dataset's size). They set only CT normalisation; the run's single channel
#: is z-scored per image (write_raw_dataset), so a million samples leave every plan as it was.
FINGERPRINT_INTENSITY_SAMPLES = 1_000_000


def _fingerprint_extractor():
    """nnU-Net's dataset fingerprint extractor sampling :data:`FINGERPRINT_INTENSITY_SAMPLES` foreground voxels."""
    from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import DatasetFingerprintExtractor

    class Extractor(DatasetFingerprintExtractor):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.num_foreground_voxels_for_intensitystats = FINGERPRINT_INTENSITY_SAMPLES

    return Extractor


def plan_only(root: str | Path, dataset_id: int, name: str, cases: Sequence[TrainingCase], budget: Budget) -> Path:
    """Write the raw dataset, plan and preprocess it without training; returns the plans file (for ``fit``'s
    ``plans_from``: several trainings on one network)."""
    write_raw_dataset(root, dataset_id, name, cases)
    plan_and_preprocess(root, dataset_id, budget)
    return Path(root) / "preprocessed" / dataset_name(dataset_id, name) / f"{PLANS}.json"


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def model_folder(root: str | Path, dataset_id: int, name: str, budget: Budget) -> Path:
    """nnU-Net's results folder of this dataset, trainer, plans and configuration."""
    return Path(root) / "results" / dataset_name(dataset_id, name) / f"{TRAINER}__{PLANS}__{budget.configuration}"


def is_trained(root: str | Path, dataset_id: int, name: str, budget: Budget) -> bool:
    """Whether the final checkpoint of this model exists."""
    return (model_folder(root, dataset_id, name, budget) / f"fold_{budget.fold}" / "checkpoint_final.pth").exists()


def fit(
    root: str | Path,
    dataset_id: int,
    name: str,
    cases: Sequence[TrainingCase],
    budget: Budget,
    ignore_label: bool = False,
    start_from: str | Path | None = None,
    plans_from: str | Path | None = None,
) -> Path:
    """Write the raw dataset, plan, preprocess and train — or resume / skip what is already done.

    ``start_from``: the model folder of an earlier stage; its plan is reused and training starts
    from its final weights (a warm start), instead of from a new plan and random weights.
    ``plans_from``: a plans file (nnU-Net's, with the ``dataset_fingerprint.json`` it was planned from beside it) that
    is reused with random weights: trainings that must share one network and patch size skip nnU-Net's planning.
    """
    pretrained = None
    if plans_from is not None and start_from is None and not Path(plans_from).is_file():
        raise FileNotFoundError(f"{plans_from}: the plan to reuse does not exist; plan that training first")
    if start_from is not None:
        pretrained = Path(start_from) / f"fold_{budget.fold}" / "checkpoint_final.pth"
        plans_from = Path(start_from) / "plans.json"
        for needed in (pretrained, plans_from):
            if not needed.exists():
                raise FileNotFoundError(
                    f"{needed}: the earlier stage's model to start from is missing; "
                    "train that stage first (or set refine.warm_start: false)"
                )
        verify_trained_checkpoint(pretrained)
    if not is_trained(root, dataset_id, name, budget):
        preprocessed = Path(root) / "preprocessed" / dataset_name(dataset_id, name) / f"{PLANS}.json"
        resuming = any(
            (model_folder(root, dataset_id, name, budget) / f"fold_{budget.fold}").glob("checkpoint_latest.pth")
        )
        if not (resuming and preprocessed.exists()):
            write_raw_dataset(root, dataset_id, name, cases, ignore_label=ignore_label)
            plan_and_preprocess(root, dataset_id, budget, plans_from=plans_from)
    return train(root, dataset_id, name, budget, pretrained=pretrained)


def train(root: str | Path, dataset_id: int, name: str, budget: Budget, pretrained: str | Path | None = None) -> Path:
    """Train (or resume, or skip when finished) one fold of a planned dataset; returns the model folder.

    ``pretrained``: a checkpoint whose weights initialise the network of a new training (not a
    resumed one, which continues from its own latest checkpoint).
    """
    from nnunetv2.run.run_training import get_trainer_from_args

    folder = model_folder(root, dataset_id, name, budget)
    fold_dir = folder / f"fold_{budget.fold}"
    if (fold_dir / "checkpoint_final.pth").exists():
        log.info("nnU-Net already trained: %s", fold_dir)
        verify_trained_checkpoint(fold_dir / "checkpoint_final.pth")  # a final checkpoint this run did not record
        return folder
    resume = (fold_dir / "checkpoint_latest.pth").exists()
    if resume:  # refused before anything is built: only an epoch this run's training recorded is resumed from
        verify_trained_checkpoint(fold_dir / "checkpoint_latest.pth")
    budget_env = {
        "NNSAM2_EPOCHS": budget.epochs,
        "NNSAM2_ITERATIONS": budget.iterations_per_epoch,
        "NNSAM2_VAL_ITERATIONS": budget.val_iterations,
        "NNSAM2_ROTATION_DEG": budget.rotation_deg,
        "NNSAM2_SEED": budget.seed,
        "NNSAM2_PRECISION": budget.precision,
        "NNSAM2_PROGRESS_PLOT": int(budget.progress_plot),
    }
    with (
        temporary_environ({k: None if v is None else str(v) for k, v in budget_env.items()}),
        nnunet_environment(root, budget.augmentation_workers),
    ):
        seed_everything(budget.seed)
        trainer = get_trainer_from_args(
            str(dataset_id), budget.configuration, budget.fold, TRAINER, PLANS, device=torch.device(budget.device)
        )
        if resume:
            log.info("resuming nnU-Net training from %s", fold_dir / "checkpoint_latest.pth")
            trainer.load_checkpoint(str(fold_dir / "checkpoint_latest.pth"))  # nnsam2's trainer: recorded, plain data
        else:
            trainer.initialize()
            if pretrained is not None:
                load_network_weights(trainer, pretrained)
        trainer.run_training()
    # the trainer recorded the final checkpoint as it saved it; the copy beside it is checked against that record
    write_checksum_file(fold_dir / "checkpoint_final.pth")  # for the exported model's recipient only
    return folder


def load_network_weights(trainer, checkpoint: str | Path) -> None:
    """Every weight of an earlier model of the same plan into an initialised trainer's network (a warm start).

    nnU-Net's own ``load_pretrained_weights`` leaves out the segmentation output layers (it is
    meant for fine-tuning on other labels), so a warm start through it restarts the output layers
    from random weights. nnsam2's stages share their labels, so the whole network is carried over
    (strict: any missing or unexpected weight is an error). Read by :func:`read_checkpoint`: recorded by this
    run's training, and plain data (``weights_only=True``).
    """
    state = read_checkpoint(checkpoint)["network_weights"]
    network = trainer.network
    network = getattr(network, "module", network)  # DistributedDataParallel
    network = getattr(network, "_orig_mod", network)  # torch.compile
    network.load_state_dict({k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in state.items()})


def load_predictor(folder: str | Path, budget: Budget):
    """An nnUNetPredictor for a trained model folder, mirroring off."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(
        tile_step_size=0.5,
        use_gaussian=True,
        use_mirroring=False,
        perform_everything_on_device=budget.device != "cpu",
        device=torch.device(budget.device),
        verbose=False,
        verbose_preprocessing=False,
        allow_tqdm=False,
    )
    checkpoint = verify_trained_checkpoint(Path(folder) / f"fold_{budget.fold}" / "checkpoint_final.pth")
    with nnunet_environment(Path(folder).parents[2], budget.augmentation_workers):
        _initialise_predictor(predictor, Path(folder), read_checkpoint(checkpoint))
    return predictor


def _initialise_predictor(predictor, folder: Path, checkpoint: dict) -> None:
    """What nnU-Net's ``initialize_from_trained_model_folder`` does, from a checkpoint read as plain data."""
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnsam2_utils.refine.trainers.nnsam2_trainer import nnUNetTrainer_nnsam2

    dataset_json = read_json(folder / "dataset.json")
    plans_manager = PlansManager(read_json(folder / "plans.json"))
    configuration = plans_manager.get_configuration(checkpoint["init_args"]["configuration"])
    network = nnUNetTrainer_nnsam2.build_network_architecture(
        plans_manager,
        configuration,
        determine_num_input_channels(plans_manager, configuration, dataset_json),
        plans_manager.get_label_manager(dataset_json).num_segmentation_heads,
        enable_deep_supervision=False,
    )
    network.load_state_dict(checkpoint["network_weights"])
    predictor.manual_initialization(
        network, plans_manager, configuration, [checkpoint["network_weights"]], dataset_json, TRAINER, None
    )


def predict_image(predictor, image: sitk.Image) -> np.ndarray:
    """Predict one image in memory; returns a (z, y, x) uint8 class array in the image's grid."""
    array = sitk.GetArrayFromImage(sitk.Cast(image, sitk.sitkFloat32))[None]
    spacing = image.GetSpacing()
    # the same properties nnU-Net's SimpleITKIO reader returns
    props = {
        "sitk_stuff": {"spacing": spacing, "origin": image.GetOrigin(), "direction": image.GetDirection()},
        "spacing": list(spacing)[::-1],
    }
    seg = predictor.predict_single_npy_array(array, props, None, None, False)
    return np.asarray(seg, dtype=np.uint8)
