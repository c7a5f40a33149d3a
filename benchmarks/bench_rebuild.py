"""Incremental rebuilds of the book: what a second ``make book`` costs.

Usage (after a finished ``make book``; PROFILE defaults to demo)::

    .venv/bin/python benchmarks/bench_rebuild.py [--profile demo] [--cores 2]

Prints the wall time and the jobs Snakemake ran for

1. a rebuild with nothing changed (should run no job);
2. a rebuild after editing only the agreement notebook (a trailing newline added, then removed
   again: Snakemake re-runs a job when an input's content changed, not when it was only touched):
   the agreement notebook, the run record that reads its tables, and the book re-run; propagation
   and training do not.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def build(profile: str, cores: int) -> tuple[float, list[str]]:
    """One ``snakemake ... book`` as ``make book`` runs it: seconds and the rules of the jobs it ran."""
    snakemake = Path(sys.executable).parent / "snakemake"
    start = time.perf_counter()
    result = subprocess.run(
        [
            str(snakemake),
            "--snakefile",
            "Snakefile",
            "--cores",
            str(cores),
            "--rerun-incomplete",
            "--config",
            f"profile={profile}",
            "--",
            "book",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"snakemake failed:\n{result.stderr[-3000:]}")
    rules = re.findall(r"^(?:local)?rule (\w+):", result.stdout + result.stderr, flags=re.M)
    return seconds, rules


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="demo")
    parser.add_argument("--cores", type=int, default=2)
    args = parser.parse_args()
    seconds, rules = build(args.profile, args.cores)
    print(f"first call (finishes anything left over): {seconds:.1f} s, jobs: {rules or 'none'}")
    seconds, rules = build(args.profile, args.cores)
    print(f"rebuild, nothing changed: {seconds:.1f} s, jobs: {rules or 'none'}")
    notebook = REPO / "notebooks" / "06_agreement.ipynb"
    original = notebook.read_bytes()
    # A real edit: Snakemake compares the content of a newer input with its stored checksum, so a
    # touch alone is not an edit. A trailing newline keeps the JSON (and the notebook) as it was.
    try:
        notebook.write_bytes(original + b"\n")
        seconds, rules = build(args.profile, args.cores)
        print(f"rebuild after editing notebooks/06_agreement.ipynb: {seconds:.1f} s, jobs: {rules}")
    finally:
        notebook.write_bytes(original)
    seconds, rules = build(args.profile, args.cores)
    print(f"rebuild after undoing that edit: {seconds:.1f} s, jobs: {rules}")


if __name__ == "__main__":
    main()
