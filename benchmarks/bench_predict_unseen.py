"""How well does a run's final model segment subjects the run never saw, against the book's final DSC?

The book's DSC is measured on the scans the nnU-Nets trained on (with their pseudo-labels). This script draws the
demo cohort again with other seeds (new subjects), segments ``--scans`` scans per dataset with ``nnsam2 predict``
(the run's final model, the disc range L5/S1..L3/L4 as ``--slices``, as the run's DSC region; one scan per subject),
scores them against their truth (mean DSC over the two classes, per scan, then the mean over scans), and prints per
dataset and seed that DSC beside the book's final DSC (``work/<profile>/tables/dsc.csv``), the gap, the scans' mean
true class volume and its change from the run's own scans (smaller muscles score lower with any model). It also
segments the run's own scans the same way, to show that ``predict`` reproduces the book's numbers on them.

Usage::

    .venv/bin/python benchmarks/bench_predict_unseen.py [--profile demo] [--seeds 1 2 3] [--scans 2]
        [--datasets backpain_t2w ...] [--out /tmp/predict_unseen]

The run must have been built first (``make book``). Cost: about a second per scan plus a cohort draw per seed.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def scan_scores(manifest, case, out: Path, profile: str) -> tuple[float, float]:
    """``predict`` one case of ``manifest`` into ``out``; its mean DSC over the classes in its disc range and its
    mean true class volume there (mL)."""
    from nnsam2_utils.apply.predict import predict
    from nnsam2_utils.evaluate.new_subjects import region_slices, scan_rows

    image = manifest.resolve(case.image)
    predict([image], out, profile=profile, slices=region_slices(case), progress=False, force=True)
    rows = scan_rows(manifest, case, out / f"{case.id}_lpm.nii.gz")
    return float(np.nanmean([r["dsc"] for r in rows])), float(np.mean([r["truth_ml"] for r in rows]))


def row(dataset: str, seed: int, scores: list[tuple[float, float]]) -> dict:
    """One dataset and draw: its scans' mean DSC and mean true class volume."""
    return {
        "dataset": dataset,
        "seed": seed,
        "scans": len(scores),
        "dsc": float(np.mean([s[0] for s in scores])),
        "truth_ml": float(np.mean([s[1] for s in scores])),
    }


def book_final_dsc(tables: Path, stage: str) -> pd.Series:
    """The book's mean DSC per dataset of ``stage`` (mean over classes per scan, then over scans)."""
    from nnsam2_utils.evaluate.metrics import summarise_dsc

    dsc = pd.read_csv(tables / "dsc.csv")
    return summarise_dsc(dsc[dsc["stage"] == stage]).set_index("dataset")["mean"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="demo")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--scans", type=int, default=2, help="new scans per dataset and seed")
    parser.add_argument("--datasets", nargs="+", help="default: the run's generated datasets")
    parser.add_argument("--out", type=Path, default=Path("/tmp/predict_unseen"))
    args = parser.parse_args(argv)
    logging.basicConfig(filename=args.out.with_suffix(".log"), level=logging.INFO)
    args.out.mkdir(parents=True, exist_ok=True)

    from nnsam2_utils.data.manifest import load_manifest
    from nnsam2_utils.evaluate.new_subjects import new_cases
    from nnsam2_utils.steps.new_subjects import draw
    from nnsam2_utils.workflow import session

    run = session.start(args.profile, None)
    ws = run.workspace
    final = f"nnunet{run.profile.refine.stages}"
    book = book_final_dsc(ws.tables, final)
    datasets = args.datasets or list(run.profile.cohort.datasets)
    size = run.profile.cohort.size
    rows = []
    for dataset in datasets:
        own = load_manifest(ws.manifest(dataset))
        rows.append(
            row(dataset, run.seed, [scan_scores(own, c, args.out / "own" / dataset, args.profile) for c in own.cases])
        )
    for seed in args.seeds:
        for manifest in draw(args.out / f"seed{seed}", size, seed, datasets, args.scans):
            out = args.out / f"seed{seed}" / "predicted" / manifest.name
            scores = [scan_scores(manifest, c, out, args.profile) for c in new_cases(manifest, args.scans)]
            rows.append(row(manifest.name, seed, scores))
    table = pd.DataFrame(rows)
    table["book"] = table["dataset"].map(book)
    table["gap"] = table["book"] - table["dsc"]
    own_ml = table[table["seed"] == run.seed].set_index("dataset")["truth_ml"]
    table["ml_change"] = table["truth_ml"] / table["dataset"].map(own_ml) - 1
    pd.set_option("display.width", 160)
    print(f"profile {args.profile}, final stage {final}; seed {run.seed} = the run's own scans")
    print(table.round(3).to_string(index=False))
    new = table[table["seed"] != run.seed]
    print("\ngap (book - new subjects) per dataset: mean, max over seeds")
    print(new.groupby("dataset")["gap"].agg(["mean", "max"]).round(3).to_string())
    print(
        f"\nall: mean gap {new['gap'].mean():.3f}, max {new['gap'].max():.3f}, |gap| > 0.02 in "
        f"{int((new['gap'].abs() > 0.02).sum())} of {len(new)} dataset draws"
    )
    pooled = new.groupby("seed")["gap"].mean()
    print("pooled over datasets, per seed: " + ", ".join(f"{seed}: {gap:.3f}" for seed, gap in pooled.items()))
    print(f"correlation of the gap with the change in muscle size: {new['gap'].corr(new['ml_change']):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
