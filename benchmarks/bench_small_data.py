"""Small-data benchmark: demo datasets cut to a few scans, run as your own data, stage by stage.

Usage::

    .venv/bin/python benchmarks/bench_small_data.py [--sizes 2 4 8] [--datasets backpain_t2w bedrest_dixon totalseg_ct]
        [--out work/_small_data] [--cores 2] [--rule evidence] [--floor 4]

For each size k it generates the chosen phantom datasets with k scans each (seed 0), writes a run
profile ``small<k>`` that brings them as manifests of your own (``cohort.generate: false``; the demo's
nnU-Net budget; baselines off), runs the workflow up to the results page (Snakemake, as ``make book``
does, without the book build) and prints per dataset and size:

* mean DSC of stage 0, of each nnU-Net, and of the delivered stage (``deliver.rule``), and which stage
  was delivered;
* the slices the stage-1 filter kept, and the scans the stage-2 and stage-3 filters kept.

``--floor`` sets ``refine.min_slices_per_scan`` (0: the paper's stage-1 filter alone), so the
table can be printed before and after the floor. Work folders stay under ``--out`` (a re-run
resumes). Cost: a few minutes per size on 2 cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from nnsam2_utils.data.synthetic import cohort as synthetic  # noqa: E402
from nnsam2_utils.data.synthetic.specs import SIZES  # noqa: E402


def generate(out: Path, datasets: list[str], scans: int) -> list[Path]:
    """The phantom datasets with ``scans`` scans each (manifests returned); the bed-rest Dixon dataset has
    three time points per subject, so ⌈scans / 3⌉ subjects (3, 3, 9 scans for 2, 4, 8)."""
    spec = dataclasses.replace(SIZES["default"], n_scans=scans, n_bedrest_subjects=max(1, -(-scans // 3)))
    return [synthetic.generate_dataset(out, name, spec, 0, "default") for name in datasets]


def profile(name: str, manifests: list[Path], rule: str, floor: int) -> dict:
    """The demo profile, with the phantoms brought as own manifests and the baselines off."""
    data = yaml.safe_load((REPO / "config" / "demo.yaml").read_text(encoding="utf-8"))
    data["profile"] = name
    data["cohort"] = {"generate": False, "datasets": []}
    data["manifests"] = [str(p) for p in manifests]
    data["baselines"] = {"supervised": False, "oneshot": False, "repeat": False}
    data["refine"]["min_slices_per_scan"] = floor
    data["deliver"]["rule"] = rule
    return data


def run(name: str, config: Path, work: Path, book: Path, cores: int) -> float:
    """Snakemake up to the results notebook; returns the wall time in seconds."""
    env = {**os.environ, "NNSAM2_CONFIG_DIR": str(config), "NNSAM2_WORK": str(work)}
    target = book / "generated" / "04_results.ipynb"
    command = [
        str(Path(sys.executable).parent / "snakemake"),
        "--snakefile",
        str(REPO / "Snakefile"),
        "--cores",
        str(cores),
        "--rerun-incomplete",
        "--quiet",
        "--config",
        f"profile={name}",
        f"book={book}",
        "--",
        str(target),
    ]
    start = time.perf_counter()
    subprocess.run(command, cwd=REPO, env=env, check=True)
    return time.perf_counter() - start


def summarise(work: Path, size: int) -> pd.DataFrame:
    """Per dataset: mean DSC per stage, the delivered stage and its DSC, what each filter kept."""
    tables = work / "tables"
    dsc = pd.read_csv(tables / "dsc.csv", dtype={"case": str})
    means = dsc.groupby(["dataset", "stage", "case"])["dsc"].mean().groupby(["dataset", "stage"]).mean().unstack()
    delivered = pd.read_csv(tables / "delivered.csv").set_index("dataset")["delivered"]
    out = means.round(3)
    out["delivered"] = delivered
    out["delivered_dsc"] = [round(means.loc[d, s], 3) for d, s in delivered.items()]
    for stage, unit in (("nnunet1", "slices"), ("nnunet2", "scans"), ("nnunet3", "scans")):
        path = work / stage / "selection.csv"
        if path.exists():
            selection = pd.read_csv(path, dtype={"case": str})
            kept = selection.groupby("dataset")["kept"].sum().astype(int)
            total = selection.groupby("dataset")["kept"].size()
            out[f"{stage}_kept_{unit}"] = kept.astype(str) + "/" + total.astype(str)
    out["scans"] = dsc.groupby("dataset")["case"].nunique()
    return out.reset_index().assign(size=size)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--datasets", nargs="+", default=["backpain_t2w", "bedrest_dixon", "totalseg_ct"])
    parser.add_argument("--out", type=Path, default=REPO / "work" / "_small_data")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--rule", default="evidence")
    parser.add_argument("--floor", type=int, default=4, help="refine.min_slices_per_scan (0: the paper's filter)")
    args = parser.parse_args(argv)
    rows, times = [], {}
    for size in args.sizes:
        name = f"small{size}f{args.floor}"
        root = args.out.resolve() / name
        manifests = generate(root / "data", args.datasets, size)
        config = root / "config"
        config.mkdir(parents=True, exist_ok=True)
        (config / f"{name}.yaml").write_text(
            yaml.safe_dump(profile(name, manifests, args.rule, args.floor), sort_keys=False), encoding="utf-8"
        )
        times[size] = run(name, config, root / "work", root / "book", args.cores)
        rows.append(summarise(root / "work" / name, size))
    table = pd.concat(rows, ignore_index=True)
    pd.set_option("display.width", 200)
    print(table.to_string(index=False))
    stage0 = table["stage0"]
    print(
        "\ndelivered >= stage 0 - 0.01 for",
        int((table["delivered_dsc"] >= stage0 - 0.01).sum()),
        "of",
        len(table),
        "dataset x size; best nnU-Net beats stage 0 for",
        int((table[[c for c in table if c.startswith("nnunet") and "_" not in c]].max(axis=1) > stage0).sum()),
    )
    print("wall time per size (s):", {k: round(v) for k, v in times.items()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
