"""A real nnU-Net v2 cycle on CPU: raw dataset → plan/preprocess → train a few iterations → predict."""

import json

import numpy as np
import pytest
from conftest import make_image

from nnsam2_utils.errors import ConfigError
from nnsam2_utils.refine import nnunet
from nnsam2_utils.refine.stages import DATASET_IDS

FIRST, SECOND, THIRD = (DATASET_IDS[f"nnunet{k}"] for k in (1, 2, 3))


def blob_case(i: int, rng, nz: int = 1) -> nnunet.TrainingCase:
    yy, xx = np.mgrid[:80, :80]
    image = rng.normal(0, 0.2, (nz, 80, 80)).astype(np.float32)
    label = np.zeros((nz, 80, 80), np.uint8)
    for cls, cx in ((1, 25 + i % 3), (2, 55 - i % 3)):
        inside = (yy - 40) ** 2 / 120 + (xx - cx) ** 2 / 60 < 1
        label[:, inside] = cls
        image[:, inside] += 1.0 + 0.5 * cls
    return nnunet.TrainingCase(f"case{i:02d}", make_image(image, spacing=(1.0, 1.0, 4.0)), label)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("nnunet")
    budget = nnunet.Budget(epochs=3, iterations_per_epoch=8, val_iterations=1, batch_size=4, target_spacing_mm=2.0)
    folder = nnunet.fit(root, FIRST, "blobs", [blob_case(i, rng) for i in range(6)], budget)
    plans = json.loads(
        (root / "preprocessed" / f"Dataset{FIRST}_blobs" / "nnUNetPlans.json").read_text(encoding="utf-8")
    )
    return root, budget, plans, folder


def test_plans_follow_the_budget(trained):
    _, budget, plans, _ = trained
    config = plans["configurations"]["2d"]
    assert config["batch_size"] <= 4
    assert config["spacing"][-1] == pytest.approx(2.0)


def test_training_writes_a_final_checkpoint_without_mirroring(trained):
    import torch

    _, _, _, folder = trained
    checkpoint = torch.load(folder / "fold_all" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert checkpoint["trainer_name"] == "nnUNetTrainer_nnsam2"
    assert checkpoint["inference_allowed_mirroring_axes"] is None
    assert checkpoint["current_epoch"] == 3
    assert not list((folder / "fold_all").glob(".*.tmp*"))  # checkpoints are renamed into place
    assert not (folder / "fold_all" / "checkpoint_best.pth").exists()  # the final weights are the model
    assert (folder / "fold_all" / "progress.png").is_file()  # drawn once, after the last epoch
    assert json.loads((folder / "dataset.json").read_text(encoding="utf-8"))["labels"]["left_lpm"] == 2


def test_prediction_keeps_the_image_grid_and_left_right(trained):
    root, budget, _, folder = trained
    case = blob_case(9, np.random.default_rng(5), nz=3)
    predictor = nnunet.load_predictor(folder, budget)
    seg = nnunet.predict_image(predictor, case.image)
    assert seg.shape == case.label.shape and seg.dtype == np.uint8
    assert set(np.unique(seg)) <= {0, 1, 2}
    # a few iterations already find both blobs, and the right one stays on the image's left
    right, left = (seg == 1), (seg == 2)
    assert right.any() and left.any()
    assert np.argwhere(right)[:, 2].mean() < np.argwhere(left)[:, 2].mean()


def test_a_finished_model_is_not_trained_again(trained):
    root, budget, _, folder = trained
    stamp = (folder / "fold_all" / "checkpoint_final.pth").stat().st_mtime_ns
    assert nnunet.is_trained(root, FIRST, "blobs", budget)
    assert nnunet.fit(root, FIRST, "blobs", [], budget) == folder
    assert (folder / "fold_all" / "checkpoint_final.pth").stat().st_mtime_ns == stamp


def test_nnunet_paths_are_set_only_inside_the_block(tmp_path, monkeypatch):
    import os

    monkeypatch.setenv("nnUNet_raw", "/somewhere/else")
    monkeypatch.delenv("nnUNet_results", raising=False)
    with nnunet.nnunet_environment(tmp_path):
        assert os.environ["nnUNet_raw"] == str(tmp_path / "raw")
        assert (tmp_path / "results").is_dir()
        assert os.environ["nnUNet_extTrainer"].endswith("trainers")
    assert os.environ["nnUNet_raw"] == "/somewhere/else"
    assert "nnUNet_results" not in os.environ


def test_budget_from_profile_settings_ignores_filter_keys():
    budget = nnunet.Budget.from_settings(
        {"epochs": 3, "batch_size": 4, "confidence_percentile": 90, "stages": 3}, seed=7
    )
    assert (budget.epochs, budget.batch_size, budget.seed) == (3, 4, 7)


def test_a_warm_start_reuses_the_earlier_plan_and_weights(trained):
    """Stage k+1 started from stage k: same plan, network initialised from the final weights
    (two SGD steps later the encoder is still close to the earlier model's), rotation limited."""
    import torch

    root, budget, plans, folder = trained
    rng = np.random.default_rng(1)
    warm = nnunet.Budget(
        epochs=1,
        iterations_per_epoch=2,
        val_iterations=1,
        batch_size=4,
        target_spacing_mm=3.0,
        rotation_deg=10,
        warm_start=True,
    )
    cases = [blob_case(i, rng, nz=2) for i in range(4)]
    second = nnunet.fit(root, SECOND, "blobs2", cases, warm, start_from=folder)
    plans2 = json.loads(
        (root / "preprocessed" / f"Dataset{SECOND}_blobs2" / "nnUNetPlans.json").read_text(encoding="utf-8")
    )
    assert plans2["configurations"]["2d"] == plans["configurations"]["2d"]  # not re-planned (3.0 mm ignored)
    assert plans2["dataset_name"] == f"Dataset{SECOND}_blobs2"
    # the fingerprint the reused plan was made from goes with it (not re-extracted from the new cases)
    fingerprint = (root / "preprocessed" / f"Dataset{SECOND}_blobs2" / "dataset_fingerprint.json").read_bytes()
    assert fingerprint == (folder / "dataset_fingerprint.json").read_bytes()
    log = next((second / "fold_all").glob("training_log_*.txt")).read_text(encoding="utf-8")
    assert "rotation limited to +/-10.0 degrees" in log
    first = torch.load(folder / "fold_all" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    after = torch.load(second / "fold_all" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert after["network_weights"].keys() == first["network_weights"].keys()
    encoder = [k for k in first["network_weights"] if k.startswith("encoder") and k.endswith("conv.weight")]
    change = [
        float((after["network_weights"][k] - first["network_weights"][k]).norm() / first["network_weights"][k].norm())
        for k in encoder
    ]
    assert encoder and max(change) < 0.2  # a random initialisation would differ by about 1.4
    # the output layers too (nnU-Net's own fine-tuning loader re-initialises them: stage 2 began half-random)
    heads = [k for k in first["network_weights"] if ".seg_layers." in k and k.endswith("weight")]
    assert (
        heads
        and max(
            float(
                (after["network_weights"][k] - first["network_weights"][k]).norm() / first["network_weights"][k].norm()
            )
            for k in heads
        )
        < 0.2
    )
    with pytest.raises(FileNotFoundError, match="earlier stage's model"):
        nnunet.fit(root, THIRD, "blobs3", cases, warm, start_from=root / "missing")


def test_rotation_range_is_validated():
    from nnsam2_utils.refine.trainers.nnsam2_trainer import rotation_range

    low, high = rotation_range(15)
    assert high == pytest.approx(np.pi / 12) and low == -high
    with pytest.raises(ValueError, match="0-180"):
        rotation_range(270)


def test_a_checkpoint_changed_after_training_is_refused(trained, tmp_path):
    """nnU-Net unpickles its checkpoints (weights_only=False): only the bytes this run trained are loaded."""
    import shutil

    from nnsam2_utils.data.io import sha256
    from nnsam2_utils.errors import CheckpointError

    _, budget, _, folder = trained
    digest = folder / "fold_all" / "checkpoint_final.pth.sha256"
    assert digest.read_text(encoding="utf-8").split()[0] == sha256(folder / "fold_all" / "checkpoint_final.pth")
    copy = tmp_path / "results" / f"Dataset{FIRST}_blobs" / folder.name
    shutil.copytree(folder, copy)
    with open(copy / "fold_all" / "checkpoint_final.pth", "ab") as f:
        f.write(b"\0")
    with pytest.raises(CheckpointError, match="changed or replaced after training"):
        nnunet.load_predictor(copy, budget)
    (copy / "fold_all" / "checkpoint_final.pth.sha256").unlink()
    with pytest.raises(CheckpointError, match="no SHA-256 recorded"):
        nnunet.load_predictor(copy, budget)


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2], ids=["in_process", "two_worker_processes"])
def test_augmentation_trains_the_same_model_twice(tmp_path, workers):
    """With the same seed and threads, two trainings from scratch end with identical weights and identical
    predictions: augmentation in the main process, and in worker processes (seeded, batches in a fixed order)."""
    import torch

    def train(root):
        rng = np.random.default_rng(3)
        budget = nnunet.Budget(
            epochs=2,
            iterations_per_epoch=3,
            val_iterations=1,
            batch_size=2,
            target_spacing_mm=2.0,
            augmentation_workers=workers,
            seed=5,
        )
        cases = [blob_case(i, rng) for i in range(3)]
        folder = nnunet.fit(root, DATASET_IDS["nnunet1"], "inprocess", cases, budget)
        weights = torch.load(folder / "fold_all" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
        predicted = nnunet.predict_image(nnunet.load_predictor(folder, budget), cases[0].image)
        return weights["network_weights"], predicted

    first_weights, first_labels = train(tmp_path / "a")
    second_weights, second_labels = train(tmp_path / "b")
    assert first_weights.keys() == second_weights.keys()
    assert all(torch.equal(first_weights[k], second_weights[k]) for k in first_weights)
    assert np.array_equal(first_labels, second_labels)


class _Payload:
    """Unpickling this runs code: it would create the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _plant(path, marker):
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"network_weights": {}, "payload": _Payload(marker)}, path)


def test_a_planted_checkpoint_never_runs_code(trained, tmp_path):
    """A checkpoint placed in a model folder is refused: unrecorded, it is not adopted; recorded (or resumed from),
    it is read as plain data and its code never runs."""
    from nnsam2_utils.errors import CheckpointError

    root, budget, _, folder = trained
    marker = tmp_path / "code_ran"
    planted = nnunet.model_folder(tmp_path, THIRD, "planted", budget) / "fold_all"
    _plant(planted / "checkpoint_final.pth", marker)
    with pytest.raises(CheckpointError, match="no SHA-256 recorded"):
        nnunet.train(tmp_path, THIRD, "planted", budget)
    nnunet.record_checkpoint_digest(planted / "checkpoint_final.pth")  # even with a digest written beside it
    with pytest.raises(CheckpointError, match="not a plain nnU-Net checkpoint"):
        nnunet.load_predictor(planted.parent, budget)
    _plant(planted / "checkpoint_latest.pth", marker)
    with pytest.raises(CheckpointError, match="not a plain nnU-Net checkpoint"):
        nnunet.read_checkpoint(planted / "checkpoint_latest.pth")
    assert not marker.exists()


# ----------------------------------------------------------------------------- precision
def test_training_precision_resolves_auto_by_the_cpu(monkeypatch):
    assert nnunet.training_precision("fp32") == "fp32"
    assert nnunet.training_precision("auto", device="cuda") == "fp32"  # nnU-Net's own mixed precision on a GPU
    monkeypatch.setattr(nnunet, "cpu_has_native_bf16", lambda: False)
    assert nnunet.training_precision("auto") == "fp32"
    with pytest.raises(ConfigError, match="refine.precision: bf16 needs a CPU with native bf16"):
        nnunet.training_precision("bf16")
    monkeypatch.setattr(nnunet, "cpu_has_native_bf16", lambda: True)
    assert nnunet.training_precision("auto") == "bf16"
    with pytest.raises(ConfigError, match="fp32, bf16 or auto"):
        nnunet.training_precision("fp16")
    budget = nnunet.Budget.from_settings({"precision": "auto", "epochs": 2})
    assert (budget.precision, budget.epochs) == ("bf16", 2)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_training_step_runs_the_network_in_the_asked_precision(trained, precision, monkeypatch, tmp_path):
    """The trainer's step: with bf16 the convolutions compute in bf16 and the loss and weights stay fp32."""
    import shutil

    import torch
    from nnunetv2.run.run_training import get_trainer_from_args

    if precision == "bf16" and not nnunet.cpu_has_native_bf16():
        pytest.skip("this CPU has no native bf16")
    shutil.copytree(trained[0] / "preprocessed", tmp_path / "preprocessed")  # the fixture's folders stay as trained
    monkeypatch.setenv("NNSAM2_PRECISION", precision)
    with nnunet.nnunet_environment(tmp_path, 0):
        trainer = get_trainer_from_args(
            str(FIRST), "2d", "all", nnunet.TRAINER, nnunet.PLANS, device=torch.device("cpu")
        )
        trainer.initialize()
        trainer.on_train_start()
        seen = []
        first_conv = next(m for m in trainer.network.modules() if isinstance(m, torch.nn.Conv2d))
        first_conv.register_forward_hook(lambda module, args, output: seen.append(output.dtype))
        before = first_conv.weight.detach().clone()
        result = trainer.train_step(next(trainer.dataloader_train))
    assert seen == [torch.bfloat16 if precision == "bf16" else torch.float32]
    assert first_conv.weight.dtype == torch.float32 and not torch.equal(before, first_conv.weight.detach())
    assert np.isfinite(result["loss"])
