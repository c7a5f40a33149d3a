"""The Agreement page: which columns it shows, what it glues into the prose, the run-to-run variation
beside the margins, the Bland–Altman and scatter figure, and the agreement per disc level."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd

from nnsam2_utils.data.io import read_csv, write_csv
from nnsam2_utils.evaluate.run_levels import DELIVERED
from nnsam2_utils.evaluate.scans import MEASURE_LABELS
from nnsam2_utils.evaluate.statistics import pair_measurements
from nnsam2_utils.report.plots import agreement_scatter_axes, bland_altman_axes

SHOWN = [
    "measure",
    "group",
    "n",
    "icc",
    "icc_low",
    "icc_high",
    "icc2",
    "tost_p",
    "margin",
    "bias",
    "loa_low",
    "loa_high",
    "smallest_margin",
    "lmm_p",
    "note",
]
UNITS = {"volume_ml": "mL", "fat_ratio": "fraction", "hu_mean": "HU"}
#: The per-level agreement table's columns on the page (the verdict is inserted after ``group``).
LEVEL_LABELS = {**MEASURE_LABELS, "csa_mm2": "CSA (mm²)"}
LEVEL_SHOWN = ["level", "measure", "group", "n", "icc", "tost_p", "margin", "bias", "loa_low", "loa_high", "note"]


def icc_words(icc: float) -> str:
    """ICC in words (Koo & Li 2016: < 0.5 poor, 0.5–0.75 moderate, 0.75–0.9 good, > 0.9 excellent)."""
    if pd.isna(icc):
        return "ICC not computed"
    for limit, word in ((0.5, "poor"), (0.75, "moderate"), (0.9, "good")):
        if icc < limit:
            return f"{word} reliability (ICC {icc:.2f})"
    return f"excellent reliability (ICC {icc:.2f})"


def verdict(row: pd.Series, alpha: float = 0.05) -> str:
    """One row's result in plain words: equivalent or not within the margin (with the bias), and the ICC."""
    if pd.isna(row["tost_p"]):
        return "not tested (" + (str(row.get("note", "")).split(";")[0] or "too few pairs") + ")"
    bias = 100 * row["bias"] / row["expert_mean"] if row["expert_mean"] else float("nan")
    margin = 100 * row["margin"] / abs(row["expert_mean"]) if row["expert_mean"] else float("nan")
    head = "equivalent" if row["tost_p"] < alpha else "not equivalent"
    return f"{head} within ±{margin:.0f} % (bias {bias:+.1f} %); {icc_words(row['icc'])}"


def shown_columns(agreement: pd.DataFrame) -> pd.DataFrame:
    """The agreement table as the page shows it: a plain-language verdict first, then the statistics."""
    shown = agreement[SHOWN].copy()
    shown.insert(2, "verdict", agreement.apply(verdict, axis=1))
    return shown


def glue_agreement(agreement: pd.DataFrame) -> None:
    """Glue each row's TOST p and ICC, and the count of equivalent measures, for the prose."""
    from myst_nb import glue

    for row in agreement.itertuples():
        glue(f"tost_{row.measure}_{row.group}", f"{row.tost_p:.3g}", display=False)
        glue(f"icc_{row.measure}_{row.group}", f"{row.icc:.2f}", display=False)
    tested = agreement.dropna(subset=["tost_p"])
    glue("n_equivalent", int((tested.tost_p < 0.05).sum()), display=False)
    glue("n_agreement_tests", len(tested), display=False)
    margin = f"{100 * (tested.margin / tested.expert_mean).median():.0f}" if len(tested) else "n/a"
    glue("equivalence_margin", margin, display=False)


def variation_beside_margin(workspace, agreement: pd.DataFrame) -> pd.DataFrame | None:
    """The repeat step's change per measure and group beside the margin and the bias (percent of the group mean);
    None (and "not measured" glued) when the repeat step is off. Writes ``tables/variation_vs_margin.csv``."""
    from myst_nb import glue

    path = workspace.tables / "repeatability.csv"
    if not path.exists():
        glue("seed_change_worst_pct", "not measured", display=False)
        return None
    variation = read_csv(path)[["measure", "group", "mean_abs_pct", "max_abs_pct"]]
    beside = agreement.assign(
        margin_pct=lambda t: 100 * t.margin / t.expert_mean, bias_pct=lambda t: 100 * t.bias / t.expert_mean
    )[["measure", "group", "n", "margin_pct", "bias_pct", "tost_p"]].merge(
        variation.rename(columns={"mean_abs_pct": "seed_change_mean_pct", "max_abs_pct": "seed_change_max_pct"}),
        on=["measure", "group"],
        how="left",
    )
    write_csv(beside, workspace.tables / "variation_vs_margin.csv")
    worst = beside.seed_change_mean_pct.max()
    glue("seed_change_worst_pct", f"{worst:.1f}" if pd.notna(worst) else "n/a", display=False)
    glue("seed_change_within_margin", int((beside.seed_change_max_pct < beside.margin_pct).sum()), display=False)
    glue("seed_change_rows", int(beside.seed_change_max_pct.notna().sum()), display=False)
    return beside


def agreement_figure(table: pd.DataFrame, groups: dict[str, str], agreement: pd.DataFrame | None = None):
    """Bland–Altman (left) and automated vs expert (right), one row per measure and group; with the agreement
    table, each Bland–Altman panel also draws its TOST equivalence band (± the row's ``margin``)."""
    wide, _ = pair_measurements(table)
    wide = wide[wide["class"].isin(["1", "2"])].assign(group=lambda w: w.dataset.map(groups))
    margins = {} if agreement is None else agreement.set_index(["measure", "group"])["margin"].to_dict()
    panels = wide.groupby(["measure", "group"], sort=True)
    fig, axes = plt.subplots(len(panels), 2, figsize=(8, 3.2 * len(panels)), squeeze=False)
    for ((measure, group), part), row in zip(panels, axes):
        title = f"{MEASURE_LABELS[measure]}, {group}"
        margin = margins.get((measure, group))
        bland_altman_axes(row[0], part.auto, part.expert, title, UNITS[measure], margin=margin)
        agreement_scatter_axes(row[1], part.auto, part.expert, title, UNITS[measure])
    fig.tight_layout()
    return fig


def level_columns(level_agreement: pd.DataFrame, stage: str = DELIVERED) -> pd.DataFrame:
    """One stage's per-level agreement as the page shows it: level, measure, group, a plain-language verdict, the
    statistics (default: the stage delivered for each dataset)."""
    rows = level_agreement[level_agreement["stage"] == stage]
    shown = rows[LEVEL_SHOWN].copy()
    shown.insert(3, "verdict", rows.apply(verdict, axis=1) if len(rows) else [])
    return shown.reset_index(drop=True)


def level_stage_overview(level_agreement: pd.DataFrame) -> pd.DataFrame:
    """Every stage side by side: per disc level, measure and group, the TOST p and ICC(3,1) of each stage."""
    stages = list(dict.fromkeys(level_agreement["stage"]))
    keys = ["level", "measure", "group"]
    overview = level_agreement[keys].drop_duplicates().reset_index(drop=True)
    for stage in stages:
        part = level_agreement[level_agreement["stage"] == stage][[*keys, "tost_p", "icc"]]
        overview = overview.merge(part.rename(columns={"tost_p": f"tost_p {stage}", "icc": f"icc {stage}"}), on=keys)
    return overview


def level_finding(level_agreement: pd.DataFrame, stage: str = DELIVERED, alpha: float = 0.05) -> str:
    """One sentence: how many per-level comparisons of ``stage`` are equivalent, and at which levels the others."""
    rows = level_agreement[level_agreement["stage"] == stage].dropna(subset=["tost_p"])
    if rows.empty:
        return "No per-level comparison could be tested for equivalence (no expert labels, or too few scans)."
    failing = rows[rows["tost_p"] >= alpha]
    head = f"At the disc levels, {int((rows['tost_p'] < alpha).sum())} of {len(rows)} comparisons are equivalent"
    if failing.empty:
        return head + f" (TOST, p < {alpha})."
    named = "; ".join(f"{LEVEL_LABELS.get(r.measure, r.measure)}, {r.group} at {r.level}" for r in failing.itertuples())
    return head + f" (TOST, p < {alpha}); not equivalent: {named}."
