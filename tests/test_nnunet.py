"""A real nnU-Net v2 cycle on CPU: raw dataset → plan/preprocess → train a few iterations → predict."""

import json

import numpy as np
import pytest
from conftest import make_image

from nnsam2_utils.errors import ConfigError
from nnsam2_utils.evaluate.metrics import dice_per_class
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

    _, _, _, folder = trained
    checkpoint = nnunet.read_checkpoint(folder / "fold_all" / "checkpoint_final.pth")
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
    # 24 iterations learn both blobs, each as its own class (the right one stays on the image's left): DSC 0.64 and
    # 0.80 here; untrained weights, or the two classes swapped, score near 0
    dsc = dice_per_class(seg, case.label)
    assert min(dsc.values()) > 0.5, dsc


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
    first = nnunet.read_checkpoint(folder / "fold_all" / "checkpoint_final.pth")
    after = nnunet.read_checkpoint(second / "fold_all" / "checkpoint_final.pth")
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
    """The trainer records every checkpoint's SHA-256 in the run record, outside the model folder: a copy of the
    whole nnU-Net root whose checkpoint changed is refused, and so is a model folder copied into another root
    (its checksum file beside the checkpoint vouches for nothing)."""
    import shutil

    from nnsam2_utils.data.io import sha256
    from nnsam2_utils.errors import CheckpointError
    from nnsam2_utils.refine.checkpoint import record_path

    root, budget, _, folder = trained
    checkpoint = folder / "fold_all" / "checkpoint_final.pth"
    record = record_path(checkpoint)
    assert record == root / "checkpoint_record" / f"Dataset{FIRST}_blobs" / folder.name / "fold_all" / (
        "checkpoint_final.pth.sha256"
    )
    assert record.read_text(encoding="utf-8").split()[0] == sha256(checkpoint)
    beside = checkpoint.with_name("checkpoint_final.pth.sha256")  # what the export ships
    assert beside.read_text(encoding="utf-8") == f"{sha256(checkpoint)}  checkpoint_final.pth\n"

    copy_root = tmp_path / "copy"
    shutil.copytree(root / "results", copy_root / "results")
    shutil.copytree(root / "checkpoint_record", copy_root / "checkpoint_record")
    copy = copy_root / folder.relative_to(root)
    nnunet.load_predictor(copy, budget)  # the copy of a whole root, record included, is still this run's
    with open(copy / "fold_all" / "checkpoint_final.pth", "ab") as f:
        f.write(b"\0")
    with pytest.raises(CheckpointError, match=r"checkpoint_final\.pth: SHA-256 differs .* changed or replaced"):
        nnunet.load_predictor(copy, budget)

    elsewhere = tmp_path / "other" / folder.relative_to(root)
    shutil.copytree(folder, elsewhere)
    with pytest.raises(CheckpointError, match=r"fold_all/checkpoint_final\.pth: not written by this run's training"):
        nnunet.load_predictor(elsewhere, budget)


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
        weights = nnunet.read_checkpoint(folder / "fold_all" / "checkpoint_final.pth")
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


def test_a_planted_final_checkpoint_never_runs_code(trained, tmp_path):
    """A ``checkpoint_final.pth`` someone placed in a model folder: training does not adopt it (nor record it),
    prediction and a warm start refuse it, naming the file; recorded as well, it is still read as plain data only.
    Its code (which would create the marker file) never runs."""
    from nnsam2_utils.errors import CheckpointError
    from nnsam2_utils.refine.checkpoint import record_checkpoint_digest, record_path

    _, budget, _, _ = trained
    marker = tmp_path / "code_ran"
    model = nnunet.model_folder(tmp_path, THIRD, "planted", budget)
    planted = model / "fold_all" / "checkpoint_final.pth"
    _plant(planted, marker)
    (model / "plans.json").write_text("{}", encoding="utf-8")
    named = r"fold_all/checkpoint_final\.pth: not written by this run's training"
    with pytest.raises(CheckpointError, match=named):
        nnunet.train(tmp_path, THIRD, "planted", budget)
    assert not record_path(planted).exists()  # nothing recorded for a file the run did not train
    with pytest.raises(CheckpointError, match=named):
        nnunet.load_predictor(model, budget)
    with pytest.raises(CheckpointError, match=named):
        nnunet.fit(tmp_path, SECOND, "warm", [], budget, start_from=model)  # with a plan placed beside it

    record_checkpoint_digest(planted)  # even with a SHA-256 in the run record, the file is read as plain data
    with pytest.raises(CheckpointError, match=r"fold_all/checkpoint_final\.pth: not a plain nnU-Net checkpoint"):
        nnunet.load_predictor(model, budget)
    assert not marker.exists()


def test_a_planted_latest_checkpoint_is_never_resumed_from(trained, tmp_path):
    """A ``checkpoint_latest.pth`` placed beside a planned training: the resume refuses it before building the
    trainer; recorded as well, the trainer reads it as plain data (nnU-Net's own loader would unpickle it)."""
    import shutil

    from nnsam2_utils.errors import CheckpointError
    from nnsam2_utils.refine.checkpoint import record_checkpoint_digest

    root, budget, _, _ = trained
    shutil.copytree(root / "preprocessed", tmp_path / "preprocessed")  # the fixture's plan, ready to train
    marker = tmp_path / "code_ran"
    planted = nnunet.model_folder(tmp_path, FIRST, "blobs", budget) / "fold_all" / "checkpoint_latest.pth"
    _plant(planted, marker)
    with pytest.raises(CheckpointError, match=r"fold_all/checkpoint_latest\.pth: not written by this run's training"):
        nnunet.train(tmp_path, FIRST, "blobs", budget)
    record_checkpoint_digest(planted)
    with pytest.raises(CheckpointError, match=r"fold_all/checkpoint_latest\.pth: not a plain nnU-Net checkpoint"):
        nnunet.train(tmp_path, FIRST, "blobs", budget)
    assert not marker.exists()
    assert not (planted.parent / "checkpoint_final.pth").exists()  # nothing trained from it


def test_a_training_resumes_from_the_latest_checkpoint_it_recorded(trained, tmp_path, monkeypatch):
    """Killed after its first epoch (before the final checkpoint), a training left a ``checkpoint_latest.pth``
    recorded in the run record; run again, it resumes from it, and at the end only the final one stays recorded."""
    import dataclasses
    import shutil

    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnsam2_utils.data.io import sha256
    from nnsam2_utils.refine.checkpoint import record_path

    root, budget, _, _ = trained
    budget = dataclasses.replace(budget, epochs=2, iterations_per_epoch=2, augmentation_workers=0)
    shutil.copytree(root / "preprocessed", tmp_path / "preprocessed")
    fold = nnunet.model_folder(tmp_path, FIRST, "blobs", budget) / "fold_all"

    def killed(self):
        raise RuntimeError("killed before the final checkpoint")

    with monkeypatch.context() as patch:
        patch.setattr(nnUNetTrainer, "on_train_end", killed)
        with pytest.raises(RuntimeError, match="killed"):
            nnunet.train(tmp_path, FIRST, "blobs", budget)
    latest = fold / "checkpoint_latest.pth"
    assert not (fold / "checkpoint_final.pth").exists()
    assert record_path(latest).read_text(encoding="utf-8").split()[0] == sha256(latest)
    assert nnunet.read_checkpoint(latest)["current_epoch"] == 1

    nnunet.train(tmp_path, FIRST, "blobs", budget)
    assert nnunet.read_checkpoint(fold / "checkpoint_final.pth")["current_epoch"] == 2
    assert not latest.exists() and not record_path(latest).exists()
    assert record_path(fold / "checkpoint_final.pth").is_file()


def test_the_run_record_keeps_the_previous_checkpoint_until_the_rename(tmp_path):
    """The trainer records a checkpoint before renaming it into place: killed in between, the file on disk (the
    previous epoch's) still loads; two saves later it is no longer recorded. Outside nnU-Net's layout: refused."""
    import os

    from nnsam2_utils.errors import CheckpointError
    from nnsam2_utils.refine.checkpoint import record_checkpoint_digest, recorded_digest

    fold = tmp_path / "results" / "Dataset501_x" / "model" / "fold_all"
    fold.mkdir(parents=True)
    latest, pending = fold / "checkpoint_latest.pth", fold / ".pending"
    latest.write_bytes(b"epoch 0")
    record_checkpoint_digest(latest)
    for epoch in (1, 2):
        pending.write_bytes(f"epoch {epoch}".encode())
        record_checkpoint_digest(latest, written=pending)
        recorded_digest(latest)  # killed before the rename: the previous epoch's file
        os.replace(pending, latest)
        recorded_digest(latest)
    latest.write_bytes(b"epoch 0")  # two saves ago
    with pytest.raises(CheckpointError, match=r"checkpoint_latest\.pth: SHA-256 differs"):
        recorded_digest(latest)
    with pytest.raises(CheckpointError, match=r"stray\.pth: not inside an nnU-Net results folder"):
        recorded_digest(tmp_path / "stray.pth")


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
