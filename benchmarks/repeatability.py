"""Repeatability on CPU: do two runs with the same seed give the same pseudo-labels and predictions?

1. The tiny T2w phantom dataset (3 scans; region cut to ``--slices`` slices to stay light) is
   prepared once.
2. Stage 0 (LiteMedSAM) runs twice, each in a fresh process: pseudo-labels and confidence
   tables are compared voxel by voxel and value by value.
3. nnU-Net (tiny budget) is trained on the first run's pseudo-labels once per entry of
   ``--seeds`` (repeat a seed to test bit-reproducibility) and for every ``--workers`` setting
   (nnU-Net's augmentation workers, >0 = worker processes, whose random streams nnU-Net does not
   seed; 0, the single-threaded loader, currently fails in planning because the driver sets
   ``nnUNet_n_proc_DA=0`` there too and nnU-Net calls ``torch.set_num_threads(0)``). Each model
   predicts the three scans; the script prints
   the DSC against the expert labels and the volume per class, and their spread over seeds
   (as % of the mean volume, next to the ±10 % TOST margin of the agreement chapter).

Usage: ``python benchmarks/repeatability.py [--work /tmp/repeat] [--seeds 0 0 1 2] [--workers 1]``
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

log = logging.getLogger("repeatability")
DATASET = "backpain_t2w"


def prepare(work: Path, slices: int) -> Path:
    """Generate the tiny dataset and prepare it with a ``slices``-slice region; returns the prepared folder."""
    from nnsam2_utils.data.manifest import Discs, load_manifest
    from nnsam2_utils.data.synthetic.cohort import generate_cohort
    from nnsam2_utils.prepare.dataset import prepare_dataset

    folder = work / "prepared" / DATASET
    if not (work / "data" / f"{DATASET}.yaml").exists():
        generate_cohort(work / "data", size="tiny", seed=0, datasets=[DATASET])
    manifest = load_manifest(work / "data" / f"{DATASET}.yaml")
    cases = []
    for case in manifest.cases:
        d, step = case.discs, slices - 1
        top = d.L5S1 + step if d.L3L4 > d.L5S1 else d.L5S1 - step
        cases.append(case.model_copy(update={"discs": Discs(L3L4=top, L5S1=d.L5S1)}))
    prepare_dataset(manifest.model_copy(update={"cases": cases}), folder)
    return folder


def stage0(prepared: Path, out: Path) -> None:
    """One stage-0 run (reference choice + propagation), as notebook 02_stage0 runs it."""
    from nnsam2_utils.data.io import write_csv
    from nnsam2_utils.propagate import make_propagator
    from nnsam2_utils.propagate.run import propagate_dataset, select_reference

    cases = sorted(p.name for p in prepared.iterdir() if (p / "meta.json").exists())
    propagator = make_propagator({"backend": "litemedsam", "device": "cpu"})
    reference, _ = select_reference(propagator, prepared, cases)
    write_csv(propagate_dataset(propagator, prepared, out, DATASET, cases, reference), out / "confidence.csv")


def compare_stage0(a: Path, b: Path, cases: list[str]) -> dict:
    """Differing voxels and the largest confidence difference between two stage-0 runs."""
    voxels = sum(
        int(
            (
                sitk.GetArrayFromImage(sitk.ReadImage(str(a / "labels" / f"{c}.nii.gz")))
                != sitk.GetArrayFromImage(sitk.ReadImage(str(b / "labels" / f"{c}.nii.gz")))
            ).sum()
        )
        for c in cases
    )
    ta, tb = pd.read_csv(a / "confidence.csv"), pd.read_csv(b / "confidence.csv")
    numeric = ta.select_dtypes("number").columns
    diff = float(np.nanmax(np.abs(ta[numeric].to_numpy(float) - tb[numeric].to_numpy(float)))) if len(ta) else 0.0
    same_nan = bool((ta[numeric].isna().to_numpy() == tb[numeric].isna().to_numpy()).all())
    return {
        "differing_voxels": voxels,
        "max_confidence_diff": diff,
        "same_missing_values": same_nan,
        "tables_identical": bool(ta.equals(tb)),
    }


def train_and_predict(prepared: Path, pseudo: Path, root: Path, seed: int, workers: int, settings: dict) -> dict:
    """Train a tiny nnU-Net on the pseudo-labels and predict every scan; {case: class array}."""
    from nnsam2_utils.refine import nnunet

    cases = sorted(p.name for p in prepared.iterdir() if (p / "meta.json").exists())
    images = {c: sitk.ReadImage(str(prepared / c / "image.nii.gz")) for c in cases}
    training = [
        nnunet.TrainingCase(
            c, images[c], sitk.GetArrayFromImage(sitk.ReadImage(str(pseudo / "labels" / f"{c}.nii.gz")))
        )
        for c in cases
    ]
    budget = nnunet.Budget.from_settings({**settings, "augmentation_workers": workers}, seed=seed)
    folder = nnunet.fit(root, 503, "repeat", training, budget)
    predictor = nnunet.load_predictor(folder, budget)
    return {c: nnunet.predict_image(predictor, images[c]) for c in cases}


def score(predictions: dict, prepared: Path) -> list[dict]:
    """DSC against the expert label and volume (ml) per scan and class."""
    from nnsam2_utils.evaluate.metrics import dice_per_class

    rows = []
    for case, seg in predictions.items():
        label_image = sitk.ReadImage(str(prepared / case / "label.nii.gz"))
        truth = sitk.GetArrayFromImage(label_image)
        voxel_ml = float(np.prod(label_image.GetSpacing())) / 1000.0
        for cls, dsc in dice_per_class(seg, truth, (1, 2)).items():
            rows.append({"case": case, "class": cls, "dsc": dsc, "volume_ml": float((seg == cls).sum()) * voxel_ml})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/nnsam2_repeatability"))
    parser.add_argument("--slices", type=int, default=3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 0, 1, 2])
    parser.add_argument("--workers", type=int, nargs="+", default=[1])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=4)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("nnsam2_utils").setLevel(logging.WARNING)
    work = args.work.resolve()

    prepared = prepare(work, args.slices)
    cases = sorted(p.name for p in prepared.iterdir() if (p / "meta.json").exists())
    runs = [work / f"stage0_run{i}" for i in (1, 2)]
    for out in runs:
        if not (out / "confidence.csv").exists():
            start = time.perf_counter()
            subprocess.run([sys.executable, __file__, "--stage0", str(prepared), str(out)], check=True)
            log.info("stage 0 %s: %.0f s", out.name, time.perf_counter() - start)
    stage0_result = compare_stage0(*runs, cases)

    settings = {
        "configuration": "2d",
        "epochs": args.epochs,
        "iterations_per_epoch": args.iterations,
        "batch_size": 4,
        "target_spacing_mm": 2.5,
        "device": "cpu",
    }
    rows, predictions = [], {}
    for workers in args.workers:
        for run, seed in enumerate(args.seeds):
            root = work / f"nnunet_w{workers}_run{run}_seed{seed}"
            start = time.perf_counter()
            predictions[(workers, run)] = train_and_predict(prepared, runs[0], root, seed, workers, settings)
            log.info("nnU-Net workers=%d seed=%d: %.0f s", workers, seed, time.perf_counter() - start)
            rows += [
                {"workers": workers, "run": run, "seed": seed, **r}
                for r in score(predictions[(workers, run)], prepared)
            ]
    table = pd.DataFrame(rows)
    same_seed = {}
    for workers in args.workers:
        pairs = [
            (i, j)
            for i in range(len(args.seeds))
            for j in range(i + 1, len(args.seeds))
            if args.seeds[i] == args.seeds[j]
        ]
        same_seed[workers] = [
            int(sum((predictions[(workers, i)][c] != predictions[(workers, j)][c]).sum() for c in cases))
            for i, j in pairs
        ]
    # spread over runs: per (workers, case, class), then summarised
    spread = table.groupby(["workers", "case", "class"]).agg(
        dsc_mean=("dsc", "mean"),
        dsc_sd=("dsc", "std"),
        dsc_range=("dsc", lambda x: x.max() - x.min()),
        vol_mean=("volume_ml", "mean"),
        vol_sd=("volume_ml", "std"),
    )
    spread["vol_cv_pct"] = 100 * spread.vol_sd / spread.vol_mean
    summary = spread.groupby("workers").agg(
        dsc_mean=("dsc_mean", "mean"),
        dsc_sd_mean=("dsc_sd", "mean"),
        dsc_range_max=("dsc_range", "max"),
        vol_cv_pct_mean=("vol_cv_pct", "mean"),
        vol_cv_pct_max=("vol_cv_pct", "max"),
    )
    table.to_csv(work / "repeatability_runs.csv", index=False)
    result = {
        "stage0_two_runs": stage0_result,
        "nnunet_same_seed_differing_voxels": same_seed,
        "seeds": args.seeds,
        "budget": settings,
        "slices_per_scan": args.slices,
    }
    (work / "repeatability.json").write_text(json.dumps(result, indent=2, default=str))
    sys.stdout.write(f"stage 0, two runs: {json.dumps(stage0_result)}\n")
    sys.stdout.write(f"nnU-Net, same seed, differing voxels per pair (by workers): {same_seed}\n\n")
    sys.stdout.write("per run (mean over scans and classes):\n")
    sys.stdout.write(
        table.groupby(["workers", "run", "seed"])[["dsc", "volume_ml"]].mean().round(4).to_markdown() + "\n\n"
    )
    sys.stdout.write("spread over runs (per scan and class, then summarised; TOST margin ±10 % of the mean):\n")
    sys.stdout.write(summary.round(4).to_markdown() + "\n")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--stage0":
        logging.basicConfig(level=logging.WARNING)
        stage0(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        main()
