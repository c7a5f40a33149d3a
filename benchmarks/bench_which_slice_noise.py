"""How much of the Which-slice chapter's nnU-Net differences is training noise?

The chapter trains one nnU-Net per variant (annotated slice, reference scan) with one seed. This script trains every
variant's nnU-Net again with other seeds, on the very pseudo-labels and plan of a finished run's study
(``work/<profile>/which_slice/``), and prints per variant and seed the mean DSC over scans, then per variant the SD over
seeds, and the median SD: the margin under which two variants' nnU-Net DSCs cannot be told apart.

Usage::

    .venv/bin/python benchmarks/bench_which_slice_noise.py [--profile demo] [--seeds 1 2] [--workers 2]
        [--out /tmp/which_slice_noise]

The run must have built its Which-slice chapter first (``make book``). Cost: one study's trainings per seed (about a
minute each on 2 cores for the demo).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="demo")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("/tmp/which_slice_noise"))
    parser.add_argument("--epochs", type=int, help="the variants' epochs (default: the profile's)")
    parser.add_argument("--batch-size", type=int, help="their batch size (default: the profile's refine.batch_size)")
    parser.add_argument("--book-seed", action="store_true", help="train the run's own seed again too (not read back)")
    args = parser.parse_args(argv)

    from nnsam2_utils.experiments.variant_training import VariantJob, plan_network, run_jobs, variant_budget
    from nnsam2_utils.experiments.which_slice import score_variants
    from nnsam2_utils.prepare.model_input import load_stack
    from nnsam2_utils.workflow import session

    run = session.start(args.profile, None)
    ws = run.workspace
    study = ws.stage("which_slice")
    book = pd.read_csv(study / "final_dsc.csv")
    dataset = str(book["dataset"].iloc[0])
    cases = ws.case_ids(dataset)
    images = {case: ws.prepared(dataset, case) / "image.nii.gz" for case in cases}
    truths = {case: load_stack(ws.prepared(dataset, case), "label")[0] for case in cases}
    keys = list(dict.fromkeys(book["key"]))
    refine = run.section("refine") | ({"batch_size": args.batch_size} if args.batch_size else {})
    epochs = args.epochs or run.profile.baselines.which_slice_epochs
    same = args.epochs is None and args.batch_size is None and not args.book_seed
    rows = [book.assign(seed=run.seed)] if same else []  # the book's own trainings, when this budget is theirs
    for seed in args.seeds:
        budget = variant_budget(refine, epochs, seed=seed)
        root = args.out / f"e{epochs}b{refine.get('batch_size')}" / f"seed{seed}"
        jobs = [
            VariantJob(
                key,
                dataset,
                study / "variants" / key.replace("@", "_at_"),
                images,
                root / key,
                refine,
                budget,
                log=args.out / "nnunet.log",
            )
            for key in keys
            if "|" not in key  # the run's second training of today's variant: every seed here is one
        ]
        start = time.perf_counter()
        plans = plan_network(root / "_plan", jobs[0])
        results = run_jobs(jobs, plans, args.workers)
        predictions = {job.key: labels for job, (_, labels) in zip(jobs, results) if labels}
        rows.append(score_variants(dataset, predictions, truths).assign(seed=seed))
        print(f"seed {seed}: {time.perf_counter() - start:.0f} s", flush=True)
    table = pd.concat(rows, ignore_index=True)
    per_seed = table.groupby(["key", "seed", "case"])["dsc"].mean().groupby(["key", "seed"]).mean().unstack()
    pd.set_option("display.width", 160)
    print(per_seed.round(3).to_string())
    spread = per_seed.std(axis=1, ddof=1)
    print("\nSD over seeds per variant:", spread.round(3).to_dict())
    print(f"median SD {spread.median():.3f}, largest {spread.max():.3f}, seeds {sorted(table['seed'].unique())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
