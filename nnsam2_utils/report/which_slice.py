"""The "Which slice to annotate" page (docs/method.md §10.6): its table, figures and what a teacher should say,
each sentence decided by the run's own numbers so that it stays true when the data change.

Every function takes the tables the step wrote (the plan of variants and their DSC rows) and holds no number of its
own except the margin named in its signature.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

#: Columns of :func:`variant_table`.
TABLE_COLUMNS: tuple[str, ...] = (
    "comparison",
    "variant",
    "reference",
    "slice",
    "mean_dsc",
    "sd_dsc",
    "min_dsc",
    "delta",
    "scans",
    "default",
    "note",
    "key",
)
#: Column headings on the page.
HEADINGS = {
    "comparison": "compared",
    "variant": "annotated slice / reference",
    "reference": "reference scan",
    "slice": "slice (0 = L3/L4)",
    "mean_dsc": "mean DSC",
    "sd_dsc": "SD over scans",
    "min_dsc": "lowest scan",
    "delta": "Δ vs today",
    "scans": "scans",
    "note": "note",
}


def scan_scores(dsc: pd.DataFrame) -> pd.DataFrame:
    """Per variant key and scan: the mean DSC over the two classes (columns key, case, dsc)."""
    return dsc.groupby(["key", "case"], as_index=False, sort=False)["dsc"].mean()


def _same_as(plan: pd.DataFrame) -> dict[int, str]:
    """Per plan row whose propagation an earlier row of the same comparison already made: that row's name."""
    notes, first = {}, {}
    for index, row in plan.iterrows():
        if not row["key"]:
            continue
        seen = first.get((row["comparison"], row["key"]))
        if seen is not None:
            notes[index] = f"same slice as {seen}" if row["comparison"] == "level" else f"same scan as {seen}"
        else:
            first[(row["comparison"], row["key"])] = row["variant"]
    return notes


def variant_table(plan: pd.DataFrame, dsc: pd.DataFrame, notes: dict[str, str] | None = None) -> pd.DataFrame:
    """One row per variant of the plan: mean, SD and lowest per-scan DSC, the change against today's choice (the
    default row), the scans scored and a note (a shared propagation, a level not given, a slice without labels)."""
    per_scan = scan_scores(dsc)
    stats = per_scan.groupby("key")["dsc"].agg(mean_dsc="mean", sd_dsc="std", min_dsc="min", scans="count")
    table = plan.join(stats, on="key")
    table["default"] = table["default"].astype(bool)
    table["scans"] = table["scans"].fillna(0).astype(int)
    default = table.loc[table["default"].astype(bool), "mean_dsc"]
    table["delta"] = table["mean_dsc"] - (default.iloc[0] if len(default) else np.nan)
    shared = _same_as(plan)
    given = notes or {}
    table["note"] = [
        "; ".join(
            n
            for n in (
                "level not given for this scan" if not row.key else "",
                given.get(row.key, ""),
                shared.get(index, ""),
            )
            if n
        )
        for index, row in table.iterrows()
    ]
    return table[list(TABLE_COLUMNS)].reset_index(drop=True)


def page_table(table: pd.DataFrame) -> pd.DataFrame:
    """The table as the page shows it: rounded, today's choice marked, readable headings."""
    shown = table.copy()
    shown["variant"] = [f"{v} (today)" if d else v for v, d in zip(shown["variant"], shown["default"])]
    for column in ("mean_dsc", "sd_dsc", "min_dsc", "delta"):
        shown[column] = shown[column].astype(float).round(3)
    return shown.drop(columns=["default", "key"]).rename(columns=HEADINGS)


def level_effect(table: pd.DataFrame) -> dict | None:
    """The annotated slice's level (medoid kept): best, worst, their spread and the best's gain over today's slice.

    None when fewer than two levels were scored. Ties go to the first row (today's slice first)."""
    rows = table[(table["comparison"] == "level") & table["mean_dsc"].notna()]
    if len(rows) < 2:
        return None
    best, worst = rows.loc[rows["mean_dsc"].idxmax()], rows.loc[rows["mean_dsc"].idxmin()]
    default = rows[rows["default"].astype(bool)]
    today = float(default["mean_dsc"].iloc[0]) if len(default) else float("nan")
    return {
        "levels": rows["variant"].tolist(),
        "spread": float(best["mean_dsc"] - worst["mean_dsc"]),
        "best": str(best["variant"]),
        "best_dsc": float(best["mean_dsc"]),
        "best_is_default": bool(best["default"]),
        "worst": str(worst["variant"]),
        "worst_dsc": float(worst["mean_dsc"]),
        "default_dsc": today,
        "gain": float(best["mean_dsc"]) - today,
        "shared": [n for n in rows["note"] if n.startswith("same slice as")],
        "shared_rows": rows.loc[rows["note"].str.startswith("same slice as"), "variant"].tolist(),
    }


def reference_effect(table: pd.DataFrame) -> dict | None:
    """The medoid against random other scans (L3/L4 slice): the random draws' range and mean, and the medoid's gain.

    None without a scored default row or a scored random draw."""
    default = table[table["default"].astype(bool) & table["mean_dsc"].notna()]
    drawn = table[(table["comparison"] == "reference") & table["mean_dsc"].notna()]
    if default.empty or drawn.empty:
        return None
    medoid = float(default["mean_dsc"].iloc[0])
    mean = float(drawn["mean_dsc"].mean())
    return {
        "medoid": str(default["reference"].iloc[0]),
        "medoid_dsc": medoid,
        "random_min": float(drawn["mean_dsc"].min()),
        "random_max": float(drawn["mean_dsc"].max()),
        "random_mean": mean,
        "gain": medoid - mean,
        "seeds": int(len(drawn)),
        "references": int(drawn["reference"].nunique()),
    }


def _dsc_range(low: float, high: float) -> str:
    return f"{low:.3f}" if f"{low:.3f}" == f"{high:.3f}" else f"{low:.3f}–{high:.3f}"


def scan_spread(table: pd.DataFrame) -> float:
    """SD over scans of the per-scan DSC with today's choice: how much the scans differ from one another."""
    default = table[table["default"].astype(bool)]
    return float(default["sd_dsc"].iloc[0]) if len(default) else float("nan")


def _beyond(change: float, sd: float) -> bool:
    """Is a change larger than the scans' own spread (False when the spread is unknown)?"""
    return bool(np.isfinite(sd) and abs(change) > sd)


def level_sentence(effect: dict | None, sd: float = float("nan"), margin: float = 0.02) -> str:
    """What the level of the annotated slice changed, and what to tell students about it: within ``margin`` the level
    hardly matters; beyond it, the advice depends on whether the change also exceeds the scans' spread ``sd``."""
    if effect is None:
        return "Fewer than two levels of the annotated slice could be scored, so the level is not compared here."
    text = (
        f"Putting the one annotated slice at {', '.join(effect['levels'])} (the medoid kept) changed the mean "
        f"stage-0 DSC by at most {effect['spread']:.3f}: from {effect['worst']} ({effect['worst_dsc']:.3f}) to "
        f"{effect['best']} ({effect['best_dsc']:.3f})."
    )
    if effect["spread"] <= margin:
        return text + (
            f" That is within {margin:.2f}: tell students that on scans like these the level hardly matters, and to "
            "annotate the slice of the region where they can draw both muscles most surely."
        )
    spread = f"the scans' own spread (SD {sd:.3f} of the per-scan DSC)"
    if effect["best_is_default"]:
        if _beyond(effect["spread"], sd):
            return text + f" Today's L3/L4 slice did best, by more than {spread}: tell students to annotate at L3/L4."
        return text + (
            f" Today's L3/L4 slice did best, but by less than {spread}: tell students that L3/L4 is a safe choice, "
            "not a proven best."
        )
    if _beyond(effect["gain"], sd):
        return text + (
            f" {effect['best']} beat today's L3/L4 slice by {effect['gain']:.3f}, more than {spread}: tell students "
            f"that the level matters, and that on these scans {effect['best']} did best."
        )
    return text + (
        f" {effect['best']} beat today's L3/L4 slice by {effect['gain']:.3f}, less than {spread}: tell students "
        "that the level may matter, and to check on their own scans before moving away from L3/L4."
    )


def reference_sentence(effect: dict | None, sd: float = float("nan"), margin: float = 0.02) -> str:
    """What the choice of reference scan changed, and what to tell students about it (``margin`` and the scans'
    spread ``sd`` as in :func:`level_sentence`)."""
    if effect is None:
        return "No other scan could serve as a random reference, so the medoid rule is not compared here."
    draws = "draw" if effect["seeds"] == 1 else "draws"
    scans = "scan" if effect["references"] == 1 else "different scans"
    text = (
        f"A random other scan as the reference (its L3/L4 slice; {effect['seeds']} seeded {draws}, "
        f"{effect['references']} {scans}) gave a mean DSC of {_dsc_range(effect['random_min'], effect['random_max'])} "
        f"against {effect['medoid_dsc']:.3f} with the medoid ({effect['medoid']})."
    )
    gain = effect["gain"]
    if abs(gain) <= margin:
        return text + f" The choice of reference made no measurable difference here (within {margin:.2f})."
    size = "more" if _beyond(gain, sd) else "less"
    if gain > 0:
        advice = (
            "tell students to annotate the dataset's most typical scan, not the first one at hand"
            if size == "more"
            else "tell students that the most typical scan is the safer pick, not a proven better one"
        )
        return text + f" The medoid rule paid off by {gain:.3f}, {size} than the scans' own spread: {advice}."
    return text + (
        f" Here a random scan did better than the medoid, by {-gain:.3f} ({size} than the scans' own spread): the "
        "rule did not help on these scans, so do not promise students that it always will."
    )


def strength_sentence(table: pd.DataFrame, modality: str) -> str:
    """Where the comparison is weak: how many scans and draws it rests on, and which variants coincided."""
    default = table[table["default"].astype(bool)]
    n = int(default["scans"].iloc[0]) if len(default) else 0
    seeds = int((table["comparison"] == "reference").sum())
    text = (
        f"Where this is weak: {n} scans of one {modality} dataset, synthetic phantoms rather than patients, "
        f"{seeds} random {'draw' if seeds == 1 else 'draws'} of the reference, and one run per variant (the promptable "
        "model is deterministic, so another seed would change only the draws); only stage 0 is compared, and the "
        "nnU-Nets trained on its pseudo-labels may narrow or widen these gaps."
    )
    effect = level_effect(table)
    if effect is not None and effect["shared_rows"]:
        shared = "; ".join(effect["shared"])
        text += f" On the medoid, {', '.join(effect['shared_rows'])} fell on a slice already compared ({shared})."
    return text


def teacher_paragraph(table: pd.DataFrame, dataset: str, modality: str, margin: float = 0.02) -> str:
    """The page's "what a teacher should tell students": level, reference and the comparison's weak points."""
    head = f"On {dataset} ({modality}): "
    return " ".join(
        [
            head + level_sentence(level_effect(table), scan_spread(table), margin),
            reference_sentence(reference_effect(table), scan_spread(table), margin),
            strength_sentence(table, modality),
        ]
    )


def training_sentence(variants: int, training_seconds: float | None, stage: str = "nnU-Net 1") -> str:
    """Why only stage 0 is compared: what a training per variant would have cost, from this run's own record."""
    if training_seconds is None:
        return (
            f"Only stage 0 is compared: {stage} was not trained in this run, so the cost of one training per variant "
            "is not known here."
        )
    return (
        f"Only stage 0 is compared. {stage} took {training_seconds:.0f} s to train in this run (its run record); one "
        f"training per variant would add about {variants * training_seconds / 60:.0f} min for the {variants} "
        "propagations compared here, beyond this chapter's budget."
    )


def variants_figure(table: pd.DataFrame, dsc: pd.DataFrame):
    """Per-scan stage-0 DSC of every variant (one colour per scan, the mean as a bar): the level of the annotated
    slice on the left, the reference scan on the right."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    per_scan = scan_scores(dsc)
    cases = sorted(per_scan["case"].unique())
    colours = dict(zip(cases, plt.get_cmap("tab10").colors))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True, width_ratios=[4, 4])
    panels = (
        ("level", "annotated slice (reference: the medoid)", axes[0]),
        ("reference", "reference scan (slice: L3/L4)", axes[1]),
    )
    for comparison, title, ax in panels:
        rows = table[table["comparison"] == comparison]
        if comparison == "reference":
            rows = pd.concat([table[table["default"].astype(bool)], rows])
        labels = []
        for x, row in enumerate(rows.itertuples()):
            name = "medoid" if comparison == "reference" and row.default else row.variant.replace("random scan, ", "")
            labels.append(f"{name}\n{row.reference if comparison == 'reference' else f'slice {row.slice}'}")
            scores = per_scan[per_scan["key"] == row.key]
            for case, value in zip(scores["case"], scores["dsc"]):
                marker = "D" if case == row.reference else "o"  # the reference scan holds its annotated slice
                ax.scatter(x, value, color=colours[case], marker=marker, s=28, zorder=3)
            if np.isfinite(row.mean_dsc):
                ax.hlines(row.mean_dsc, x - 0.3, x + 0.3, color="black" if not row.default else "#e4572e", lw=2)
        ax.set_xticks(range(len(labels)), labels, fontsize=8)
        ax.set_xlim(-0.6, len(labels) - 0.4)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("stage-0 DSC per scan (mean of classes)")
    fig.text(0.99, 0.02, "bar: mean over scans (red: today's choice); ◆: the reference scan", ha="right", fontsize=8)
    axes[0].set_ylim(0, 1.02)
    handles = [Line2D([], [], ls="", marker="o", color=colours[c], label=c) for c in cases]
    fig.legend(handles=handles, loc="lower left", ncol=len(handles), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig


def slices_figure(frames: np.ndarray, labels: np.ndarray, table: pd.DataFrame, reference: str):
    """The medoid's candidate annotated slices (model input, the expert label as contours), one panel per level."""
    import matplotlib.pyplot as plt

    from nnsam2_utils.report.plots import show_slice

    rows = table[(table["comparison"] == "level") & table["slice"].notna()].drop_duplicates("slice")
    fig, axes = plt.subplots(1, max(len(rows), 1), figsize=(2.6 * max(len(rows), 1), 2.8), squeeze=False)
    for ax, row in zip(axes[0], rows.itertuples()):
        index = int(row.slice)
        same = table[(table["comparison"] == "level") & (table["slice"] == index)]["variant"].tolist()
        show_slice(ax, frames[index], labels[index], f"{' = '.join(same)}: slice {index}", contour=True)
    fig.suptitle(f"The annotated slice's candidates on the medoid ({reference})", fontsize=10)
    fig.tight_layout()
    return fig


def stage0_difference(dsc: pd.DataFrame, stage0_dsc: pd.DataFrame, key: str) -> float:
    """Largest |DSC difference| per scan and class between the default variant (``key``) and the run's own stage 0:
    0 when the chapter's propagation reproduces stage 0 exactly; NaN when they share no scan."""
    ours = dsc[dsc["key"] == key].set_index(["case", "class"])["dsc"]
    theirs = stage0_dsc.assign(case=stage0_dsc["case"].astype(str)).set_index(["case", "class"])["dsc"]
    both = pd.concat([ours, theirs], axis=1, join="inner", keys=["ours", "stage0"]).dropna()
    return float((both["ours"] - both["stage0"]).abs().max()) if len(both) else float("nan")
