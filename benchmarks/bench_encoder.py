"""Benchmark of LiteMedSAM's image encoder: eager torch against OpenVINO (fp32, and bf16 where the CPU has it).

Usage::

    .venv/bin/python benchmarks/bench_encoder.py [--slices 12] [--repeats 2] [--threads 1 2] [--bf16] [--cache DIR]

On the same synthetic slices, in one process, for each thread count (torch's intra-op threads and
OpenVINO's ``INFERENCE_NUM_THREADS``): seconds per slice of each encoder (one slice per call, the
stage-0 default; torch and OpenVINO passes interleaved so load on a shared machine hits both alike)
and their ratio. Then accuracy against torch: the largest absolute embedding difference, and the
masks of a full box-chaining propagation run on each encoder's embeddings (DSC per class against the
torch masks, and the number of differing pixels). The IR comes from the cache in ``--cache`` (default:
``encoder_export.default_cache_folder()``), exported there first if needed (about a minute).

Then the prompt encoder + mask decoder (``propagation.decoder``): seconds per call with two box prompts on one
slice embedding, torch against OpenVINO fp32 (interleaved, best of ``--repeats``), their ratio, and the largest
logit and IoU differences for one and two boxes.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the tests' synthetic scan

from synthetic import ellipse_stack  # noqa: E402

from nnsam2_utils.evaluate.metrics import dice_per_class  # noqa: E402
from nnsam2_utils.propagate import encoder_export  # noqa: E402
from nnsam2_utils.propagate.litemedsam import LiteMedSAMPropagator, encoder_input  # noqa: E402

log = logging.getLogger("bench_encoder")


def seconds_per_slice(encoder, images: torch.Tensor) -> float:
    """Mean seconds of one encoder call per slice over ``images`` (n, 3, 256, 256)."""
    start = time.perf_counter()
    with torch.inference_mode():
        for k in range(len(images)):
            encoder(images[k : k + 1])
    return (time.perf_counter() - start) / len(images)


def embeddings(encoder, images: torch.Tensor) -> torch.Tensor:
    """Embeddings (n, 256, 64, 64) of ``images``, one slice per call."""
    with torch.inference_mode():
        return torch.cat([encoder(images[k : k + 1]) for k in range(len(images))])


def timings(encoders: dict, images: torch.Tensor, repeats: int) -> dict[str, float]:
    """Best-of-``repeats`` seconds per slice of each encoder, passes interleaved, after one warm-up slice each."""
    for encoder in encoders.values():
        seconds_per_slice(encoder, images[:1])
    best = {name: float("inf") for name in encoders}
    for _ in range(repeats):
        for name, encoder in encoders.items():
            best[name] = min(best[name], seconds_per_slice(encoder, images))
    return best


def mask_agreement(propagator: LiteMedSAMPropagator, reference, target, reference_emb, target_emb) -> dict:
    """DSC per class and differing pixels of propagations on two sets of target embeddings (torch first)."""
    frames, labels = reference
    masks = [
        propagator.propagate(frames, 0, labels[0], target, "bench", target_embeddings=emb).masks
        for emb in (reference_emb, target_emb)
    ]
    return {"dsc": dice_per_class(masks[1], masks[0]), "pixels": int(np.count_nonzero(masks[0] != masks[1]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--bf16", action="store_true", help="also OpenVINO bf16 (only on CPUs with native bf16)")
    parser.add_argument("--cache", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    cache = args.cache or encoder_export.default_cache_folder()
    propagator = LiteMedSAMPropagator(device="cpu", encoder="torch", cache_slices=0)
    precisions = ["f32"] + (["bf16"] if args.bf16 and encoder_export.cpu_supports_bf16() else [])
    irs = {p: encoder_export.cached_ir(cache, propagator.checkpoint_sha256, p, propagator.model) for p in precisions}
    target, _ = ellipse_stack(args.slices, shift=4, seed=1)
    images = encoder_input(target)
    log.info("OpenVINO %s, %d slices, %d repeats", encoder_export.openvino_version(), args.slices, args.repeats)

    for threads in args.threads:
        torch.set_num_threads(threads)
        encoders = {"torch": propagator.model.image_encoder}
        for p in precisions:
            compiled = encoder_export.compile_encoder(*irs[p], precision=p, threads=threads)
            encoders[f"openvino-{p}"] = encoder_export.OpenVINOEncoder(compiled, p)
        best = timings(encoders, images, args.repeats)
        for name, seconds in best.items():
            log.info(
                "threads %d  %-14s %.3f s/slice  ratio to torch %.2f", threads, name, seconds, seconds / best["torch"]
            )

    reference = ellipse_stack(6, shift=0, seed=0)
    torch_emb = embeddings(encoders["torch"], images)
    for p in precisions:
        ov_emb = embeddings(encoders[f"openvino-{p}"], images)
        diff = float((ov_emb - torch_emb).abs().max())
        agree = mask_agreement(propagator, reference, target, torch_emb, ov_emb)
        log.info(
            "openvino-%s: max |embedding diff| %.3g (max |embedding| %.3g); masks vs torch: DSC %s, %d pixels differ",
            p,
            diff,
            float(torch_emb.abs().max()),
            {c: round(v, 5) for c, v in agree["dsc"].items()},
            agree["pixels"],
        )
    decoder_report(propagator, cache, torch_emb, args.repeats)


def decoder_report(propagator: LiteMedSAMPropagator, cache: Path, embeddings: torch.Tensor, repeats: int) -> None:
    """Timings and accuracy of the OpenVINO decoder against torch's on the given slice embeddings."""
    ov = LiteMedSAMPropagator(device="cpu", decoder="openvino", encoder_cache=cache, cache_slices=0)
    boxes = [(40, 60, 120, 180), (130, 60, 210, 180)]

    def per_call(p: LiteMedSAMPropagator) -> float:
        start = time.perf_counter()
        for embedding in embeddings:
            p.decode(embedding, boxes)
        return (time.perf_counter() - start) / len(embeddings)

    per_call(propagator), per_call(ov)  # warm-up
    best = {"torch": float("inf"), "openvino": float("inf")}
    for _ in range(repeats):
        best["torch"] = min(best["torch"], per_call(propagator))
        best["openvino"] = min(best["openvino"], per_call(ov))
    log.info(
        "decoder (2 boxes, %d threads): torch %.1f ms/call, openvino-f32 %.1f ms/call, ratio %.2f",
        torch.get_num_threads(),
        1000 * best["torch"],
        1000 * best["openvino"],
        best["openvino"] / best["torch"],
    )
    for count in (1, 2):
        (a, ia), (b, ib) = (p.decode(embeddings[0], boxes[:count]) for p in (propagator, ov))
        log.info(
            "decoder, %d box(es): max |logit diff| %.3g (max |logit| %.3g), max |IoU diff| %.3g",
            count,
            float(np.abs(a - b).max()),
            float(np.abs(a).max()),
            float(np.abs(ia - ib).max()),
        )


if __name__ == "__main__":
    main()
