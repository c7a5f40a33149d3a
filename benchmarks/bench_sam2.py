"""Benchmark of SAM2 video propagation: seconds per frame, peak memory, time outside the model.

Usable from ``benchmarks/bench_propagation.py``::

    from bench_sam2 import benchmark_sam2
    row = benchmark_sam2(n_slices=4, image_size=256)

or alone: ``python benchmarks/bench_sam2.py --n-slices 4 --image-size 256`` (prints JSON).
Without a checkpoint the model has random weights: the timing is that of the real network,
the masks mean nothing.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from nnsam2_utils.propagate.sam2 import DEFAULT_CONFIG, SAM2Propagator  # noqa: E402

log = logging.getLogger(__name__)

# the network's forward passes, as SAM2Base methods (outermost call timed only)
FORWARD_METHODS = (
    "forward_image",
    "_prepare_memory_conditioned_features",
    "_forward_sam_heads",
    "_use_mask_as_output",
    "_encode_new_memory",
)


def synthetic_scan(n_slices: int, seed: int, size: int = 256) -> np.ndarray:
    """A grey (n, size, size) uint8 stack with two bright blobs on noise."""
    rng = np.random.default_rng(seed)
    stack = rng.integers(0, 60, (n_slices, size, size), dtype=np.uint8)
    stack[:, size * 27 // 100 : size * 59 // 100, size * 20 // 100 : size * 43 // 100] += 150
    stack[:, size * 27 // 100 : size * 59 // 100, size * 57 // 100 : size * 80 // 100] += 150
    return stack


def annotation_of(size: int = 256) -> np.ndarray:
    """The two-class mask matching :func:`synthetic_scan`'s blobs."""
    mask = np.zeros((size, size), np.uint8)
    mask[size * 27 // 100 : size * 59 // 100, size * 20 // 100 : size * 43 // 100] = 1
    mask[size * 27 // 100 : size * 59 // 100, size * 57 // 100 : size * 80 // 100] = 2
    return mask


@contextmanager
def timed_forwards(model: torch.nn.Module, device: torch.device) -> Iterator[dict[str, float]]:
    """Wrap the model's forward methods on the instance; yields {"seconds": time inside them}."""
    totals = {"seconds": 0.0}
    depth = [0]

    def wrap(fn: Callable) -> Callable:
        def inner(*args: Any, **kwargs: Any) -> Any:
            depth[0] += 1
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                depth[0] -= 1
                if depth[0] == 0:
                    totals["seconds"] += time.perf_counter() - start

        return inner

    for name in FORWARD_METHODS:
        setattr(model, name, wrap(getattr(model, name)))
    try:
        yield totals
    finally:
        for name in FORWARD_METHODS:
            model.__dict__.pop(name, None)  # back to the class's methods


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (MB; Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def benchmark_sam2(
    n_slices: int = 4,
    image_size: int | None = 256,
    config: str = DEFAULT_CONFIG,
    checkpoint: str | None = None,
    sha256: str | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Time one propagation (reference and target of ``n_slices`` each → 2·n frames).

    Returns seconds per frame, the share of wall time outside the network's forward passes
    (frame conversion, state bookkeeping, resizing, overlap rule, post-processing), the peak
    resident memory of the process and, on CUDA, the peak allocated GPU memory.
    """
    torch_device = torch.device(device)
    start = time.perf_counter()
    propagator = SAM2Propagator(
        config=config,
        checkpoint=checkpoint,
        sha256=sha256,
        device=device,
        image_size=image_size,
        allow_random_weights=checkpoint is None,
    )
    build_s = time.perf_counter() - start
    reference, target = synthetic_scan(n_slices, 0), synthetic_scan(n_slices, 1)
    annotation = annotation_of()
    propagator.propagate(reference[:1], 0, annotation, target[:1], "warmup")  # first-call costs
    if torch_device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(torch_device)
    with timed_forwards(propagator.predictor, torch_device) as forward:
        start = time.perf_counter()
        result = propagator.propagate(reference, 0, annotation, target, "bench")
        total_s = time.perf_counter() - start
    n_frames = len(result.frame_order)
    row = {
        "backend": "sam2",
        "config": config,
        "image_size": propagator.image_size,
        "device": device,
        "random_weights": checkpoint is None,
        "n_frames": n_frames,
        "build_seconds": round(build_s, 3),
        "seconds": round(total_s, 3),
        "seconds_per_frame": round(total_s / n_frames, 4),
        "forward_seconds": round(forward["seconds"], 3),
        "share_outside_forward": round(1.0 - forward["seconds"] / total_s, 4),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "torch_threads": torch.get_num_threads(),
    }
    if torch_device.type == "cuda":
        row["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated(torch_device) / 2**20, 1)
    log.info("sam2 benchmark: %s", row)
    return row


def main(argv: list[str] | None = None) -> None:
    """Command line: run :func:`benchmark_sam2` and print its row as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-slices", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=256, help="model image size (0: the config's own)")
    parser.add_argument("--config", default=DEFAULT_CONFIG)
    parser.add_argument("--checkpoint")
    parser.add_argument("--sha256")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    row = benchmark_sam2(args.n_slices, args.image_size or None, args.config, args.checkpoint, args.sha256, args.device)
    print(json.dumps(row, indent=2))


if __name__ == "__main__":
    main()
