"""Mutation testing of the code whose numbers the paper reports (``make mutation``; docs/mutation.md).

Runs mutmut (configured in pyproject.toml, ``[tool.mutmut]``) over the overlap metrics, the agreement statistics,
the stage filters and the region/orientation functions of the geometry, each mutant against the fast unit tests
that reach it, then prints the score per module and every mutant not killed. mutmut works in ``mutants/`` (ignored
by git), made afresh by every run (``--survivors``: keep it and try again only the mutants the last run left).

    .venv/bin/python tools/mutation.py [--jobs 2] [--survivors | --report-only]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: Modules mutated as a whole.
WHOLE = ("nnsam2_utils.evaluate.metrics", "nnsam2_utils.evaluate.statistics", "nnsam2_utils.refine.filters")
#: The region and orientation code of the geometry (docs/method.md §2): LPS, the stored superior–inferior axis, disc
#: slices to the region, edges, offsets in a prepared stack, decimation, cropping, stacks and the way back to a scan's
#: grid. The grid comparison helpers (grid_differences, check_same_grid, odd_grid_out, grid_fix) are left out.
GEOMETRY = (
    "canonical",
    "slice_axis",
    "lps_slice_index",
    "region_slices",
    "edge_slice",
    "stored_discs",
    "_short_region",
    "_slice_words",
    "case_region",
    "stack_offsets",
    "decimation_factor",
    "crop_z",
    "region_crop",
    "to_stack",
    "from_stack",
    "to_input_grid",
)
#: mutmut forks each mutant's test run from a process whose ITK and OpenMP thread pools already run: a forked child
#: waits for pool threads that were not forked and hangs (it used to end as a false timeout). One thread each.
SINGLE_THREADED = {"ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
#: Outcomes that count as detected (mutmut's own score: killed and timed out over all mutants tried).
DETECTED = ("killed", "timeout")


def selection() -> list[str]:
    """mutmut name patterns of the mutants to try (functions are named ``x_<name>`` in mutmut's copy; a pattern also
    picks the tests of the clean run by the function's name, so it ends in ``*``, not ``__mutmut_*``)."""
    return [f"{module}.*" for module in WHOLE] + [f"nnsam2_utils.data.geometry.x_{name}*" for name in GEOMETRY]


def selected(name: str) -> bool:
    """Whether a mutant (``module.x_function__mutmut_n``) belongs to the selection."""
    module, _, function = name.partition("__mutmut_")[0].rpartition(".")
    return module in WHOLE or (module == "nnsam2_utils.data.geometry" and function[2:] in GEOMETRY)


def results() -> dict[str, dict[str, int | None]]:
    """Exit code of every selected mutant, per module, from mutmut's records under ``mutants/``."""
    out: dict[str, dict[str, int | None]] = {}
    for meta in sorted((ROOT / "mutants").rglob("*.py.meta")):
        try:
            codes = json.loads(meta.read_text(encoding="utf-8")).get("exit_code_by_key", {})
        except json.JSONDecodeError:  # written when a run was interrupted: run again
            print(f"{meta}: unreadable (an interrupted run?); its mutants are left out", file=sys.stderr)
            continue
        module = meta.relative_to(ROOT / "mutants").with_suffix("").with_suffix("").as_posix().replace("/", ".")
        kept = {name: code for name, code in codes.items() if selected(name)}
        if kept:
            out[module] = kept
    return out


def outcome(code: int | None) -> str:
    """mutmut's word for a mutant's exit code: killed, survived, timeout, no tests, not checked, …"""
    from mutmut.stats import status_by_exit_code

    return status_by_exit_code[code]


def report(by_module: dict[str, dict[str, int | None]]) -> tuple[str, float]:
    """The score table (killed + timeout over all mutants, per module and in all) and the mutants not killed."""
    lines = [f"{'module':<36} {'mutants':>7} {'killed':>7} {'timeout':>7} {'survived':>8} {'other':>6} {'score':>6}"]
    total: Counter = Counter()
    missed = []
    for module, codes in by_module.items():
        counts = Counter(outcome(code) for code in codes.values())
        detected = sum(counts[o] for o in DETECTED)
        other = len(codes) - detected - counts["survived"]
        lines.append(
            f"{module:<36} {len(codes):>7} {counts['killed']:>7} {counts['timeout']:>7} {counts['survived']:>8} "
            f"{other:>6} {detected / len(codes):>6.1%}"
        )
        total.update(counts)
        missed += [f"{name}  ({outcome(code)})" for name, code in codes.items() if outcome(code) not in DETECTED]
    n = sum(total.values())
    detected = sum(total[o] for o in DETECTED)
    score = detected / n if n else float("nan")
    other = n - detected - total["survived"]
    lines.append(
        f"{'all':<36} {n:>7} {total['killed']:>7} {total['timeout']:>7} {total['survived']:>8} {other:>6} {score:>6.1%}"
    )
    lines += ["", f"not killed ({len(missed)}):", *sorted(missed)]
    return "\n".join(lines), score


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2, help="mutants tried at once (default 2)")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--survivors", action="store_true", help="try again only the mutants the last run left")
    what.add_argument("--report-only", action="store_true", help="print the last run's results, run nothing")
    parser.add_argument("--min-score", type=float, default=0.85, help="exit 1 below this score (default 0.85)")
    args = parser.parse_args(argv)
    if not args.report_only:
        names = selection()
        if not args.survivors:  # a fresh copy: mutmut's incremental test mapping went stale when the code changed
            shutil.rmtree(ROOT / "mutants", ignore_errors=True)
        else:  # the last results kept; which test reaches which function measured again (tests may have changed)
            names = [n for codes in results().values() for n, code in codes.items() if outcome(code) not in DETECTED]
            (ROOT / "mutants" / "mutmut-stats.json").unlink(missing_ok=True)
        mutmut = Path(sys.executable).parent / "mutmut"
        command = [str(mutmut), "run", "--max-children", str(args.jobs), *names]
        code = subprocess.call(command, cwd=ROOT, env={**os.environ, **SINGLE_THREADED}) if names else 0
        if code not in (0, 1):
            return code
    text, score = report(results())
    print(text)
    return 0 if score >= args.min_score else 1


if __name__ == "__main__":
    sys.exit(main())
