"""Stage 0 through a slice-to-image-file round trip (JPEG, PNG) vs nnsam2's in-memory stacks.

Usage::

    .venv/bin/python benchmarks/bench_roundtrip.py [--prepared work/demo/prepared/athletes_mri]
        [--max-slices 36] [--jpeg-quality 95] [--device cpu]

The paper's pipeline hands SAM2 its frames as one image file per slice; nnsam2 passes the
model-input stacks (``model_input.npz``, uint8 (n, 256, 256)) in memory. This script does the
same stage-0 work both ways on a few scans of a prepared dataset (the first scan is the
reference, its top slice's expert label the annotation, every scan a target; scans are taken
until ``--max-slices`` is reached) and prints:

* the I/O part: seconds to write every normalised slice as a greyscale JPEG and as a PNG file
  and to read them back, the bytes written, against the time to load the in-memory stacks;
* JPEG's loss: the largest and mean absolute intensity error of the read-back slices (PNG is
  checked to be exact), for ``--jpeg-quality`` and for the other qualities in ``--also-quality``;
* its effect on the pseudo-labels: LiteMedSAM propagation (the demo's backend) from the JPEG
  round-trip slices vs from the in-memory slices, DSC between the two per class (pooled over
  every target slice), and each one's DSC against the expert labels when the scans have them.
  A lossless PNG round trip returns the same bytes, hence the same pseudo-labels; it is not
  propagated again.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nnsam2_utils.evaluate.metrics import dice_per_class  # noqa: E402


@dataclass
class Scans:
    """Model-input stacks of a few scans, their expert labels at model size (or None), the reference's name."""

    stacks: dict[str, np.ndarray]
    labels: dict[str, np.ndarray | None]
    reference: str
    annotated_mask: np.ndarray
    load_seconds: float


def load_scans(folder: Path, max_slices: int) -> Scans:
    """Prepared scans of ``folder`` (sorted; the first is the reference) until ``max_slices`` slices."""
    from nnsam2_utils.prepare.model_input import label_to_model, load_model_input, load_stack
    from nnsam2_utils.propagate.run import annotated_slice_mask

    cases = sorted(p.name for p in folder.iterdir() if (p / "model_input.npz").exists())
    if not cases:
        raise SystemExit(f"{folder}: no prepared scans (model_input.npz); run the demo profile first")
    stacks: dict[str, np.ndarray] = {}
    start = time.perf_counter()
    for case in cases:
        if stacks and sum(map(len, stacks.values())) >= max_slices:
            break
        stacks[case] = load_model_input(folder / case)
    load_s = time.perf_counter() - start
    labels = {}
    for case in stacks:
        labels[case] = (
            label_to_model(load_stack(folder / case, "label")[0]) if (folder / case / "label.nii.gz").exists() else None
        )
    return Scans(stacks, labels, cases[0], annotated_slice_mask(folder, cases[0], 0), load_s)


def encode(frame: np.ndarray, fmt: str, quality: int) -> bytes:
    """One uint8 slice as greyscale JPEG (``quality``) or PNG bytes."""
    buffer = io.BytesIO()
    options = {"quality": quality} if fmt == "JPEG" else {}
    Image.fromarray(frame, mode="L").save(buffer, format=fmt, **options)
    return buffer.getvalue()


def write_slices(stacks: dict[str, np.ndarray], folder: Path, fmt: str, quality: int) -> tuple[float, int]:
    """Write every slice to ``folder/<case>/<index>.<ext>``; returns seconds and bytes written."""
    ext = "jpg" if fmt == "JPEG" else "png"
    total = 0
    start = time.perf_counter()
    for case, stack in stacks.items():
        (folder / case).mkdir(parents=True, exist_ok=True)
        for index, frame in enumerate(stack):
            data = encode(frame, fmt, quality)
            (folder / case / f"{index:05d}.{ext}").write_bytes(data)
            total += len(data)
    return time.perf_counter() - start, total


def read_slices(folder: Path, cases: list[str], fmt: str) -> tuple[dict[str, np.ndarray], float]:
    """Read the slices back into (n, h, w) uint8 stacks; returns the stacks and seconds."""
    ext = "jpg" if fmt == "JPEG" else "png"
    start = time.perf_counter()
    stacks = {
        case: np.stack([np.asarray(Image.open(p).convert("L")) for p in sorted((folder / case).glob(f"*.{ext}"))])
        for case in cases
    }
    return stacks, time.perf_counter() - start


def intensity_error(original: dict[str, np.ndarray], roundtrip: dict[str, np.ndarray]) -> tuple[int, float]:
    """Largest and mean absolute difference (grey levels) over every slice."""
    diffs = np.concatenate(
        [np.abs(original[c].astype(np.int16) - roundtrip[c].astype(np.int16)).ravel() for c in original]
    )
    return int(diffs.max()), float(diffs.mean())


def propagate(propagator, scans: Scans, stacks: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], float]:
    """Stage 0 over every scan from ``stacks`` (the reference's top slice annotated); masks and seconds."""
    propagator.clear_cache()
    reference = stacks[scans.reference]
    start = time.perf_counter()
    masks = {
        case: propagator.propagate(
            reference, 0, scans.annotated_mask, stack, case, target_is_reference=(case == scans.reference)
        ).masks
        for case, stack in stacks.items()
    }
    return masks, time.perf_counter() - start


def pooled_dsc(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[int, float]:
    """DSC per class pooled over every slice of the scans in ``a``."""
    return dice_per_class(np.concatenate([a[c] for c in a]), np.concatenate([b[c] for c in a]))


def main(argv: list[str] | None = None) -> int:
    """Command line: run both paths and print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--prepared", type=Path, default=Path(__file__).resolve().parents[1] / "work/demo/prepared/athletes_mri"
    )
    parser.add_argument("--max-slices", type=int, default=36)
    parser.add_argument("--jpeg-quality", type=int, default=95)
    parser.add_argument(
        "--also-quality", type=int, nargs="*", default=[75], help="JPEG qualities measured for loss only"
    )
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    scans = load_scans(args.prepared, args.max_slices)
    n = sum(map(len, scans.stacks.values()))
    cases = list(scans.stacks)
    print(
        f"{args.prepared}: {len(cases)} scans, {n} slices of 256x256 (reference {scans.reference}, its slice 0 "
        "annotated)"
    )
    print(f"in-memory: load model_input.npz stacks {scans.load_seconds:.3f} s")
    jpeg_stacks = {}
    with tempfile.TemporaryDirectory(prefix="nnsam2_roundtrip_") as tmp:
        for fmt, quality in [("PNG", 0), ("JPEG", args.jpeg_quality)] + [("JPEG", q) for q in args.also_quality]:
            folder = Path(tmp) / f"{fmt}{quality}"
            write_s, size = write_slices(scans.stacks, folder, fmt, quality)
            back, read_s = read_slices(folder, cases, fmt)
            worst, mean = intensity_error(scans.stacks, back)
            name = fmt if fmt == "PNG" else f"JPEG q{quality}"
            print(
                f"{name:9s}: write {write_s:.3f} s, read {read_s:.3f} s, I/O {write_s + read_s:.3f} s "
                f"({(write_s + read_s) / n * 1000:.2f} ms/slice), {size / 2**20:.2f} MiB ({size / n / 1024:.1f} "
                "KiB/slice), "
                f"max |error| {worst} grey levels, mean |error| {mean:.3f}"
            )
            if fmt == "PNG" and worst != 0:
                print("PNG round trip is NOT exact: unexpected")
            if fmt == "JPEG" and quality == args.jpeg_quality:
                jpeg_stacks = back

    from nnsam2_utils.propagate import make_propagator

    propagator = make_propagator({"backend": "litemedsam", "device": args.device})
    warm = scans.stacks[scans.reference][:2]
    propagator.propagate(warm, 0, scans.annotated_mask, warm, "warmup")  # first-call costs out of the timings
    memory_masks, memory_s = propagate(propagator, scans, scans.stacks)
    jpeg_masks, jpeg_s = propagate(propagator, scans, jpeg_stacks)
    agree = pooled_dsc(memory_masks, jpeg_masks)
    print(
        f"LiteMedSAM on {args.device}: in-memory {memory_s:.1f} s, JPEG q{args.jpeg_quality} round trip {jpeg_s:.1f} s "
        f"({n / memory_s:.2f} and {n / jpeg_s:.2f} slices/s)"
    )
    print(
        f"pseudo-labels, JPEG q{args.jpeg_quality} vs in-memory: DSC class 1 {agree[1]:.4f}, class 2 {agree[2]:.4f}; "
        f"slices differing {sum(int((memory_masks[c] != jpeg_masks[c]).any(axis=(1, 2)).sum()) for c in cases)}/{n}"
    )
    if all(scans.labels[c] is not None for c in cases):
        truth = {c: scans.labels[c] for c in cases}
        for name, masks in (("in-memory", memory_masks), (f"JPEG q{args.jpeg_quality}", jpeg_masks)):
            dsc = pooled_dsc(masks, truth)
            print(f"vs expert labels, {name:9s}: DSC class 1 {dsc[1]:.4f}, class 2 {dsc[2]:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
