"""Wall time and peak memory per step of a finished run, and stage-0 slices/s per dataset.

Usage::

    .venv/bin/python benchmarks/bench_stages.py [--profile demo] [--work WORK] [--previous OTHER_RUN]

``--previous`` names another run folder (``<work>/<profile>`` of an earlier build, or a copy of one)
and adds a table of seconds per stage now, then, and their ratio (the book's time budget is tracked
as this ratio: the machine is shared, so absolute seconds drift between builds), and whether the
result tables (``tables/dsc.csv``, measurements, agreement, delivered, quality) are byte-identical: two
builds from scratch of the same commit with the same seed, thread count and machine must give the same
bytes (``make clean && make book`` twice, copying ``work/demo`` away in between).

Reads only the run's records: ``<work>/<profile>/runlog/<step>__<dataset>.json`` (written by
:func:`nnsam2_utils.workflow.runlog.step_record`: seconds, peak resident MB, parameters, …) and, for
stage 0, the number of slices it labelled per dataset (rows of
``<work>/<profile>/stage0/<dataset>/confidence.csv``, one per slice and class). ``<work>``
defaults to ``$NNSAM2_WORK`` or the repository's ``work/``.

A record marked ``resumed`` timed only the part of the step that was left when it was
re-run; its slices/s is then not the step's speed and is flagged.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nnsam2_utils.workflow.runlog import collect_records  # noqa: E402


def step_table(runlog: Path) -> pd.DataFrame:
    """One row per record: step, dataset, seconds, peak_mb, started, resumed, device."""
    rows = []
    for record in collect_records(runlog):
        parameters = record.get("parameters") or {}
        budget = parameters.get("budget") or {}
        rows.append(
            {
                "step": record.get("step"),
                "dataset": record.get("dataset"),
                "seconds": float(record.get("seconds", math.nan)),
                "peak_mb": float(record.get("peak_mb", math.nan)),
                "started": record.get("started", ""),
                "resumed": bool(record.get("resumed", False)),
                "device": parameters.get("device", budget.get("device", "")),
            }
        )
    return pd.DataFrame(rows, columns=["step", "dataset", "seconds", "peak_mb", "started", "resumed", "device"])


def stage_of(step: str) -> str:
    """The stage a step belongs to: ``nnunet1_train`` → ``nnunet1``, ``stage0`` → ``stage0``."""
    return step.split("_")[0] if step.startswith(("nnunet", "supervised")) else step


def stage_totals(steps: pd.DataFrame) -> pd.DataFrame:
    """Per stage: number of steps, total and largest seconds, largest peak memory."""
    grouped = steps.assign(stage=steps["step"].map(stage_of)).groupby("stage", sort=False)
    return grouped.agg(
        steps=("step", "size"), seconds=("seconds", "sum"), longest_s=("seconds", "max"), peak_mb=("peak_mb", "max")
    ).reset_index()


def stage0_speed(steps: pd.DataFrame, stage0_root: Path) -> pd.DataFrame:
    """Per dataset: scans and slices labelled by stage 0, its seconds and slices/s."""
    rows = []
    for _, row in steps[steps["step"] == "stage0"].iterrows():
        confidence = stage0_root / str(row["dataset"]) / "confidence.csv"
        if not confidence.exists():
            continue
        table = pd.read_csv(confidence, usecols=["case", "slice"]).drop_duplicates()
        slices = len(table)
        rows.append(
            {
                "dataset": row["dataset"],
                "device": row["device"],
                "scans": table["case"].nunique(),
                "slices": slices,
                "seconds": row["seconds"],
                "slices_per_s": slices / row["seconds"] if row["seconds"] > 0 else math.nan,
                "resumed": row["resumed"],
            }
        )
    return pd.DataFrame(rows, columns=["dataset", "device", "scans", "slices", "seconds", "slices_per_s", "resumed"])


def wall_minutes(steps: pd.DataFrame) -> float:
    """Minutes from the first step's start to the last step's end (steps overlap when run side by side)."""
    started = pd.to_datetime(steps["started"], utc=True)
    ends = started + pd.to_timedelta(steps["seconds"], unit="s")
    return float((ends.max() - started.min()).total_seconds() / 60.0) if len(steps) else math.nan


def compare_runs(now: pd.DataFrame, before: pd.DataFrame) -> pd.DataFrame:
    """Seconds per stage in two runs and their ratio (now / before)."""
    a, b = stage_totals(now).set_index("stage")["seconds"], stage_totals(before).set_index("stage")["seconds"]
    table = pd.DataFrame({"now_s": a, "before_s": b})
    table.loc["all steps"] = [a.sum(), b.sum()]
    table.loc["wall (minutes)"] = [wall_minutes(now), wall_minutes(before)]
    table["ratio"] = table["now_s"] / table["before_s"]
    return table.reset_index(names="stage")


#: the run's result tables that two builds of the same commit, seed, thread count and machine must reproduce
RESULT_TABLES = ("dsc.csv", "measurements.csv", "agreement.csv", "delivered.csv", "quality.csv")


def identical_tables(run: Path, previous: Path) -> pd.DataFrame:
    """Per result table: present in both runs, byte-identical, and the rows that differ (as read by pandas)."""
    rows = []
    for name in RESULT_TABLES:
        a, b = run / "tables" / name, previous / "tables" / name
        present = a.exists() and b.exists()
        same = present and a.read_bytes() == b.read_bytes()
        differing = math.nan
        if present and not same:
            left, right = pd.read_csv(a), pd.read_csv(b)
            differing = (
                abs(len(left) - len(right)) if left.shape != right.shape else int((left != right).any(axis=1).sum())
            )
        rows.append({"table": name, "present_in_both": present, "byte_identical": same, "rows_differing": differing})
    return pd.DataFrame(rows)


def default_work() -> Path:
    """``$NNSAM2_WORK`` or the repository's ``work/`` folder."""
    base = os.environ.get("NNSAM2_WORK")
    return Path(base) if base else Path(__file__).resolve().parents[1] / "work"


def main(argv: list[str] | None = None) -> int:
    """Command line: print the three tables of one run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="demo")
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--previous", type=Path, default=None, help="an earlier run folder to compare with")
    args = parser.parse_args(argv)
    run = (args.work or default_work()) / args.profile
    runlog = run / "runlog"
    if not any(runlog.glob("*__*.json")):
        print(f"no run records under {runlog}: run the profile first (make book PROFILE={args.profile})")
        return 1
    steps = step_table(runlog)
    pd.set_option("display.width", 160)
    print(
        f"run {run}: {len(steps)} step records, {steps['seconds'].sum():.1f} s summed over steps "
        f"(steps may have run side by side; peak_mb is each step process's peak RSS)\n"
    )
    print("per step")
    print(steps.drop(columns=["started"]).to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    print("\nper stage")
    print(stage_totals(steps).to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    print(f"\nwall time, first step start to last step end: {wall_minutes(steps):.1f} min")
    if args.previous:
        print(f"\nper stage, this run vs {args.previous}")
        before = step_table(args.previous / "runlog")
        print(compare_runs(steps, before).to_string(index=False, float_format=lambda v: f"{v:.2f}"))
        print(f"\nresult tables, this run vs {args.previous} (same commit, seed and machine: all byte-identical)")
        print(identical_tables(run, args.previous).to_string(index=False))
    speed = stage0_speed(steps, run / "stage0")
    print("\nstage 0 (reference selection + propagation), slices labelled per second")
    print(speed.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    resumed = speed[speed["resumed"]]
    if len(resumed):
        print(
            f"\nresumed (timed only the scans left at the re-run, so slices/s overstates the speed): "
            f"{', '.join(resumed['dataset'])}"
        )
        fresh = speed[~speed["resumed"]]
        if len(fresh):
            print(
                f"not resumed: {fresh['slices'].sum()} slices in {fresh['seconds'].sum():.1f} s = "
                f"{fresh['slices'].sum() / fresh['seconds'].sum():.3f} slices/s"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
