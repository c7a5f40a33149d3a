"""Benchmark of stage-0 propagation: seconds per slice, peak memory, time outside model forward passes.

Usage::

    .venv/bin/python benchmarks/bench_propagation.py [--slices 8] [--batch-sizes 1 2 4] [--device cpu] [--threads N]

For LiteMedSAM it reports, on a synthetic scan (two bright ellipses either side of the midline
drifting over the slices):

* encoder seconds per slice for each encoder batch size (each slice encoded once, no cache);
* prompt encoder + mask decoder seconds per box (one and two boxes per call);
* a full propagation (encoding included): seconds per slice, and the share of its wall time
  spent outside the encoder and decoder forward passes (box chaining, overlap resolution,
  post-processing, table building);
* peak memory: the process's maximum resident set size (``resource.getrusage``) and the peak of
  Python-level allocations during the propagation (``tracemalloc``; torch's own buffers are not
  seen by tracemalloc, hence both).

The SAM2 section is a marked hook (``bench_sam2``) for the SAM2 backend in ``propagate/sam2.py``.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))

from nnsam2_utils.evaluate.metrics import dice_per_class  # noqa: E402


def synthetic_scan(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (n, 256, 256) stack and its class masks: body, vertebra, two drifting muscle ellipses."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the tests' synthetic scan
    from synthetic import ellipse_stack

    return ellipse_stack(n, seed=seed)


def peak_rss_mb() -> float:
    """Maximum resident set size of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def bench_litemedsam(
    frames: np.ndarray, labels: np.ndarray, device: str, threads: int | None, batch_sizes: list[int], repeats: int
) -> dict[str, float]:
    """LiteMedSAM timings and memory on one synthetic scan (see the module docstring)."""
    from nnsam2_utils.propagate.litemedsam import LiteMedSAMPropagator

    start = time.perf_counter()
    propagator = LiteMedSAMPropagator(device=device, threads=threads, cache_slices=0)
    out: dict[str, float] = {"load_s": time.perf_counter() - start}

    for batch in batch_sizes:
        propagator.batch_size = batch
        propagator.seconds["encoder"] = 0.0
        embeddings = propagator.encode(frames)
        out[f"encoder_s_per_slice_batch{batch}"] = propagator.seconds["encoder"] / len(frames)

    for n_boxes in (1, 2):
        boxes = [(60, 140, 110, 190), (146, 140, 196, 190)][:n_boxes]
        propagator.decode(embeddings[0], boxes)  # warm-up
        propagator.seconds["decoder"] = 0.0
        for _ in range(repeats):
            propagator.decode(embeddings[0], boxes)
        out[f"decoder_s_per_call_{n_boxes}box"] = propagator.seconds["decoder"] / repeats

    propagator.batch_size = 1
    propagator.seconds.update(encoder=0.0, decoder=0.0)
    tracemalloc.start()
    start = time.perf_counter()
    result = propagator.propagate(frames, 0, labels[0], frames, "bench")
    wall = time.perf_counter() - start
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    inside = propagator.seconds["encoder"] + propagator.seconds["decoder"]
    dsc = dice_per_class(result.masks, labels)
    out.update(
        propagate_s_per_slice=wall / len(frames),
        share_outside_forward=(wall - inside) / wall,
        tracemalloc_peak_mb=traced_peak / 2**20,
        peak_rss_mb=peak_rss_mb(),
        dsc_class1=dsc[1],
        dsc_class2=dsc[2],
    )
    return out


def bench_sam2(frames: np.ndarray, labels: np.ndarray, device: str, threads: int | None) -> dict[str, float] | None:
    """SAM2 section: hiera-tiny at image size 256 with random weights (the timing, not the quality),
    through :func:`bench_sam2.benchmark_sam2` on the same number of slices."""
    import sys

    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_sam2 import benchmark_sam2

    if threads:
        torch.set_num_threads(threads)
    row = benchmark_sam2(n_slices=len(frames), image_size=256, device=device)
    return {
        "propagate_s_per_slice": row["seconds_per_frame"] * 2,
        "seconds_per_frame": row["seconds_per_frame"],
        "share_outside_forward": row["share_outside_forward"],
        "peak_rss_mb": row["peak_rss_mb"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=8)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--repeats", type=int, default=5, help="decoder calls timed per setting")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)

    frames, labels = synthetic_scan(args.slices)
    sections = {
        "litemedsam": bench_litemedsam(frames, labels, args.device, args.threads, args.batch_sizes, args.repeats),
        "sam2": bench_sam2(frames, labels, args.device, args.threads),
    }
    import torch

    print(
        f"synthetic scan: {args.slices} slices of 256x256; device {args.device}; torch threads "
        f"{torch.get_num_threads()}"
    )
    for backend, values in sections.items():
        if values is None:
            print(f"[{backend}] skipped (no benchmark yet)")
            continue
        for key, value in values.items():
            print(f"[{backend}] {key:32s} {value:10.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
