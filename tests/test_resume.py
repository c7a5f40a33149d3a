"""Kill and resume: a real run killed with SIGKILL resumes on the next run and ends as an uninterrupted one.

Stage 0 (LiteMedSAM propagation over a small prepared dataset) and nnU-Net training each run in
a subprocess, as the notebooks run them. One run goes through uninterrupted; another is killed
as soon as its first output is on disk, then started again. While the killed run writes, every
file visible under its final name is read back completely: an output is either absent or whole.

* Stage 0 resumes case by case (finished scans are not redone) and ends bit-identical to the
  uninterrupted run: pseudo-label arrays, per-scan confidence tables, pooled table.
* nnU-Net resumes from ``checkpoint_latest.pth`` and ends with the same number of epochs and a
  final checkpoint. It is not bit-identical to an uninterrupted run (the augmentation workers are
  not seeded and the resumed run restarts its data loader): the test records the difference.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from nnsam2_utils.data.io import is_temporary
from nnsam2_utils.refine.stages import DATASET_IDS


def run_stage0(prepared: str | Path, out: str | Path) -> None:
    """Stage 0 as notebook 02_stage0 runs it: claim the folder, choose the reference, propagate, pool."""
    from nnsam2_utils.data.io import write_csv
    from nnsam2_utils.propagate import make_propagator
    from nnsam2_utils.propagate.run import propagate_dataset, select_reference
    from nnsam2_utils.workflow import runlog

    prepared, out = Path(prepared), Path(out)
    cases = sorted(p.name for p in prepared.iterdir() if (p / "meta.json").exists())
    settings = {"backend": "litemedsam", "device": "cpu"}
    runlog.claim_folder(out, runlog.run_key({"dataset": "t", **settings}, [prepared], step="stage0"))
    propagator = make_propagator(settings)
    reference, _ = select_reference(propagator, prepared, cases)
    write_csv(propagate_dataset(propagator, prepared, out, "t", cases, reference), out / "confidence.csv")


def blob_case(i: int, rng: np.random.Generator):
    """A 64 × 64 one-slice training case: two ellipses (class 1 on the image's left, class 2 right)."""
    from nnsam2_utils.refine import nnunet

    yy, xx = np.mgrid[:64, :64]
    image = rng.normal(0, 0.2, (1, 64, 64)).astype(np.float32)
    label = np.zeros((1, 64, 64), np.uint8)
    for cls, cx in ((1, 20 + i % 3), (2, 44 - i % 3)):
        inside = (yy - 32) ** 2 / 100 + (xx - cx) ** 2 / 50 < 1
        label[:, inside] = cls
        image[:, inside] += 1.0 + 0.5 * cls
    img = sitk.GetImageFromArray(image)
    img.SetSpacing((1.0, 1.0, 4.0))
    return nnunet.TrainingCase(f"case{i:02d}", img, label)


def budget():
    from nnsam2_utils.refine import nnunet

    return nnunet.Budget(
        epochs=4, iterations_per_epoch=4, val_iterations=1, batch_size=2, max_features=16, target_spacing_mm=2.0, seed=0
    )


def train_blobs(root: str | Path) -> None:
    """nnU-Net fit (raw dataset, plan, preprocess, train or resume) on four blob cases."""
    from nnsam2_utils.refine import nnunet

    rng = np.random.default_rng(0)
    nnunet.fit(Path(root), DATASET_IDS["nnunet2"], "blobs", [blob_case(i, rng) for i in range(4)], budget())


SCRIPT = "import sys; sys.path.insert(0, {tests!r}); import test_resume; test_resume.{function}(*sys.argv[1:])"


def start(function: str, *args: str | Path, log: Path) -> subprocess.Popen:
    """A Python subprocess running ``function`` of this module (its own process group, output to ``log``)."""
    env = dict(os.environ, TQDM_DISABLE="1")
    script = SCRIPT.format(tests=str(Path(__file__).parent), function=function)
    with open(log, "ab") as handle:
        return subprocess.Popen(
            [sys.executable, "-c", script, *map(str, args)],
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )


def finish(process: subprocess.Popen, log: Path, timeout: float = 900) -> None:
    assert process.wait(timeout=timeout) == 0, log.read_text(encoding="utf-8")[-3000:]


def final_files(folder: Path, pattern: str) -> list[Path]:
    """Files under a folder that carry a final (not temporary) name."""
    return sorted(p for p in folder.glob(pattern) if p.is_file() and not is_temporary(p))


def read_whole(path: Path) -> None:
    """Read a finished output completely (raises on a partial file)."""
    from nnsam2_utils.data.io import read_image

    if path.name.endswith(".nii.gz"):
        read_image(path)
    elif path.suffix == ".csv":
        assert len(pd.read_csv(path)) > 0, path
    elif path.suffix == ".json":
        json.loads(path.read_text(encoding="utf-8"))


def kill_when(process: subprocess.Popen, ready, watch, timeout: float = 900) -> int:
    """Poll until ``ready()`` is true, calling ``watch()`` at every poll; SIGKILL the process group.

    Returns the number of polls. Fails if the process ends before it could be killed.
    """
    polls, deadline = 0, time.monotonic() + timeout
    while not ready():
        watch()
        polls += 1
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline, "no output appeared in time"
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    return polls


# --------------------------------------------------------------------------- stage 0
@pytest.fixture(scope="module")
def prepared(tiny_cohort, tmp_path_factory) -> Path:
    """The tiny T2w dataset prepared with a 3-slice region per scan (keeps three LiteMedSAM runs short; two slices,
    7 mm, would be refused as no lumbar spine's L3/L4–L5/S1 distance)."""
    from nnsam2_utils.data.manifest import Discs, load_manifest
    from nnsam2_utils.prepare.dataset import prepare_dataset

    manifest = load_manifest(tiny_cohort / "backpain_t2w.yaml")
    cases = []
    for case in manifest.cases:
        d = case.discs
        top = d.L5S1 + 2 if d.L3L4 > d.L5S1 else d.L5S1 - 2
        cases.append(case.model_copy(update={"discs": Discs(L3L4=top, L5S1=d.L5S1)}))
    folder = tmp_path_factory.mktemp("resume") / "prepared"
    prepare_dataset(manifest.model_copy(update={"cases": cases}), folder)
    return folder


@pytest.mark.slow
def test_stage0_killed_and_resumed_equals_an_uninterrupted_run(prepared, tmp_path):
    reference, resumed = tmp_path / "uninterrupted", tmp_path / "resumed"
    log = tmp_path / "stage0.log"
    run_stage0(prepared, reference)  # the uninterrupted run (in this process)
    cases = sorted(p.stem.replace(".nii", "") for p in final_files(reference / "labels", "*.nii.gz"))
    assert len(cases) == 3

    seen: dict[str, int] = {}

    def watch() -> None:  # every file visible under its final name is whole
        for path in final_files(resumed, "**/*"):
            if path.name != ".runkey" and str(path) not in seen:
                read_whole(path)
                seen[str(path)] = path.stat().st_size

    run = start("run_stage0", prepared, resumed, log=log)
    kill_when(run, lambda: len(final_files(resumed / "confidence", "*.csv")) >= 1, watch)  # one scan finished
    watch()
    done_before = [resumed / "labels" / f"{p.stem}.nii.gz" for p in final_files(resumed / "confidence", "*.csv")]
    assert 1 <= len(done_before) < 3, "the kill did not interrupt the propagation"
    assert not (resumed / "confidence.csv").exists()
    stamps = {p: p.stat().st_mtime_ns for p in done_before}

    finish(start("run_stage0", prepared, resumed, log=log), log)
    assert {p: p.stat().st_mtime_ns for p in done_before} == stamps, "a finished scan was propagated again"
    assert not [p for p in resumed.rglob("*") if is_temporary(p)], "a killed run's temporary file was left"
    for case in cases:
        a = sitk.ReadImage(str(reference / "labels" / f"{case}.nii.gz"))
        b = sitk.ReadImage(str(resumed / "labels" / f"{case}.nii.gz"))
        assert np.array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b)), case
        assert sitk.GetArrayFromImage(a).any(), case
        assert a.GetOrigin() == b.GetOrigin() and a.GetSpacing() == b.GetSpacing()
        pd.testing.assert_frame_equal(
            pd.read_csv(reference / "confidence" / f"{case}.csv"),
            pd.read_csv(resumed / "confidence" / f"{case}.csv"),
            check_exact=True,
        )
    pd.testing.assert_frame_equal(
        pd.read_csv(reference / "confidence.csv"), pd.read_csv(resumed / "confidence.csv"), check_exact=True
    )
    assert json.loads((reference / "annotation.json").read_text(encoding="utf-8")) == json.loads(
        (resumed / "annotation.json").read_text(encoding="utf-8")
    )


# --------------------------------------------------------------------------- nnU-Net
def _checkpoint(path: Path) -> dict:
    import torch

    return torch.load(path, map_location="cpu", weights_only=False)


def _loadable(path: Path) -> bool:
    if not path.exists():
        return False
    try:
        _checkpoint(path)
        return True
    except Exception:  # still being written by torch.save (not atomic in nnU-Net)
        return False


@pytest.mark.slow
def test_nnunet_training_killed_after_a_checkpoint_resumes_and_finishes(tmp_path):
    from nnsam2_utils.refine import nnunet

    plan = budget()
    log = tmp_path / "nnunet.log"
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train_blobs(straight)  # the uninterrupted run (in this process)

    fold = nnunet.model_folder(resumed, DATASET_IDS["nnunet2"], "blobs", plan) / "fold_all"
    run = start("train_blobs", resumed, log=log)
    kill_when(run, lambda: _loadable(fold / "checkpoint_latest.pth"), lambda: None)
    assert not (fold / "checkpoint_final.pth").exists(), "the kill did not interrupt the training"
    killed = _checkpoint(fold / "checkpoint_latest.pth")
    killed_at = killed["current_epoch"]
    assert 1 <= killed_at < plan.epochs

    finish(start("train_blobs", resumed, log=log), log)
    a = _checkpoint(
        nnunet.model_folder(straight, DATASET_IDS["nnunet2"], "blobs", plan) / "fold_all" / "checkpoint_final.pth"
    )
    b = _checkpoint(fold / "checkpoint_final.pth")
    assert a["current_epoch"] == b["current_epoch"] == plan.epochs
    # the resumed run continued the killed one's log rather than starting over
    assert len(b["logging"]["train_losses"]) == len(a["logging"]["train_losses"]) == plan.epochs
    # the epochs finished before the kill were kept, not trained again
    started = b["logging"]["epoch_start_timestamps"]
    assert started[:killed_at] == killed["logging"]["epoch_start_timestamps"][:killed_at]
    diff = max(
        float((a["network_weights"][k].float() - b["network_weights"][k].float()).abs().max())
        for k in a["network_weights"]
    )
    losses = np.abs(np.subtract(a["logging"]["train_losses"], b["logging"]["train_losses"]))
    from nnsam2_utils.evaluate.metrics import dice_per_class

    case = blob_case(9, np.random.default_rng(5))
    seg = {
        name: nnunet.predict_image(
            nnunet.load_predictor(nnunet.model_folder(root, DATASET_IDS["nnunet2"], "blobs", plan), plan), case.image
        )
        for name, root in (("uninterrupted", straight), ("resumed", resumed))
    }
    truth = {name: dice_per_class(s, case.label, (1, 2)) for name, s in seg.items()}
    between = dice_per_class(seg["resumed"], seg["uninterrupted"], (1, 2))
    record = {
        "killed_after_epoch": killed_at,
        "max_weight_diff": diff,
        "train_loss_diff": losses.tolist(),
        "dsc_vs_truth": truth,
        "dsc_between": between,
    }
    (tmp_path / "difference.json").write_text(json.dumps(record, default=float))
    print(f"nnU-Net resumed vs uninterrupted: {record}")
    for name in seg:
        assert set(np.unique(seg[name])) <= {0, 1, 2}
    # Both learned: each scores a mean class DSC above 0.2 on a new case, which no constant prediction (what a network
    # that learned nothing outputs: background or one class everywhere) reaches (each blob covers ~5 % of the image).
    constant = max(
        np.mean(list(dice_per_class(np.full_like(case.label, k), case.label, (1, 2)).values())) for k in (0, 1, 2)
    )
    assert constant < 0.1, constant
    for name, dsc in truth.items():
        assert np.mean(list(dsc.values())) > 0.2, (name, record)
    # The resumed model segments as the uninterrupted one does (measured: DSC 0.85 and 0.96 between the two; not
    # identical, as the module docstring says).
    assert np.mean(list(between.values())) > 0.8 and min(between.values()) > 0.7, record


def test_a_resumed_step_removes_a_killed_runs_temporary_files_only(tmp_path):
    from nnsam2_utils.data import io
    from nnsam2_utils.workflow import runlog

    folder = tmp_path / "stage0"
    assert runlog.claim_folder(folder, "k") is False
    finished = io.write_json({"done": True}, folder / "labels" / "a.json")
    with pytest.raises(KeyboardInterrupt):  # what SIGKILL leaves: the temporary name, never the final one
        with io.atomic_path(folder / "labels" / "b.nii.gz") as tmp:
            tmp.write_bytes(b"half")
            left = tmp.with_name(tmp.name.replace(".tmp", ".copy.tmp"))
            left.write_bytes(b"half")  # a copy survives the clean-up of the with block, as after a kill
            raise KeyboardInterrupt
    assert not (folder / "labels" / "b.nii.gz").exists() and left.exists() and io.is_temporary(left)
    assert runlog.claim_folder(folder, "k") is True
    assert finished.exists() and not left.exists()
    assert sorted(p.name for p in folder.rglob("*")) == [".runkey", "a.json", "labels"]


def test_atomic_outputs_get_the_usual_file_permissions(tmp_path):
    import stat

    from nnsam2_utils.data.io import write_json

    old = os.umask(0o027)
    try:
        path = write_json({"a": 1}, tmp_path / "x.json")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640  # not mkstemp's 0600
