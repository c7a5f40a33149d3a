"""The "Which slice to annotate" page (docs/method.md §10.6): its table, figures and what a teacher should say,
each sentence decided by the run's own numbers so that it stays true when the data change.

Every function takes the tables the step wrote (the plan of variants, their stage-0 DSC rows and, where the profile
trained them, the DSC rows of each variant's nnU-Net) and holds no number of its own except the margin named in its
signature.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

#: Per-variant statistics of the stage-0 DSC and (prefix ``final_``) of the variant's nnU-Net DSC.
STAGE0_COLUMNS: tuple[str, ...] = ("mean_dsc", "sd_dsc", "min_dsc", "delta")
FINAL_COLUMNS: tuple[str, ...] = ("final_mean_dsc", "final_sd_dsc", "final_min_dsc", "final_delta")
#: Columns of :func:`variant_table`.
TABLE_COLUMNS: tuple[str, ...] = (
    "comparison",
    "variant",
    "reference",
    "slice",
    *STAGE0_COLUMNS,
    *FINAL_COLUMNS,
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
    "mean_dsc": "stage-0 mean DSC",
    "sd_dsc": "stage-0 SD over scans",
    "min_dsc": "stage-0 lowest scan",
    "delta": "stage-0 Δ vs today",
    "final_mean_dsc": "nnU-Net mean DSC",
    "final_sd_dsc": "nnU-Net SD over scans",
    "final_min_dsc": "nnU-Net lowest scan",
    "final_delta": "nnU-Net Δ vs today",
    "scans": "scans",
    "note": "note",
}


def scan_scores(dsc: pd.DataFrame) -> pd.DataFrame:
    """Per variant key and scan: the mean DSC over the two classes (columns key, case, dsc)."""
    return dsc.groupby(["key", "case"], as_index=False, sort=False)["dsc"].mean()


def mean_scan_dsc(rows: pd.DataFrame) -> float | None:
    """Mean over scans of the per-scan DSC (mean of the classes) of DSC rows with a ``case`` column; None if empty."""
    scored = rows.dropna(subset=["dsc"]) if len(rows) else rows
    if not len(scored):
        return None
    return float(scored.groupby("case")["dsc"].mean().mean())


def kept_slices(selection: pd.DataFrame) -> dict[str, int]:
    """Per variant key: how many slices the stage-1 filter kept for its nnU-Net (``kept`` summed)."""
    if not len(selection):
        return {}
    kept = selection["kept"].astype(str).str.lower().isin(["true", "1", "1.0"])
    return {str(k): int(n) for k, n in kept.groupby(selection["key"].astype(str), sort=False).sum().items()}


def has_final(table: pd.DataFrame) -> bool:
    """Does the table hold any variant's nnU-Net DSC?"""
    return "final_mean_dsc" in table and bool(table["final_mean_dsc"].notna().any())


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


def _key_stats(dsc: pd.DataFrame | None, prefix: str = "") -> pd.DataFrame:
    """Per key: mean, SD and lowest of the per-scan DSC and the scans scored (columns named with ``prefix``)."""
    names = {"mean_dsc": "mean", "sd_dsc": "std", "min_dsc": "min", "scans": "count"}
    if dsc is None or not len(dsc):
        return pd.DataFrame(columns=[prefix + n for n in names], dtype=float)
    stats = scan_scores(dsc).groupby("key")["dsc"].agg(**names)
    return stats.rename(columns=lambda n: prefix + n)


def _delta(table: pd.DataFrame, column: str) -> pd.Series:
    """``column`` minus the default row's value (NaN when the default has none)."""
    default = table.loc[table["default"], column].dropna()
    return table[column] - (float(default.iloc[0]) if len(default) else np.nan)


def variant_table(
    plan: pd.DataFrame, dsc: pd.DataFrame, notes: dict[str, str] | None = None, final: pd.DataFrame | None = None
) -> pd.DataFrame:
    """One row per variant of the plan: mean, SD and lowest per-scan DSC, the change against today's choice (the
    default row), the scans scored and a note (a shared propagation, a level not given, a slice without labels).

    ``final`` (DSC rows of each variant's nnU-Net, the columns of ``dsc``) fills the ``final_`` columns the same way;
    they are NaN without it and for a key it lacks."""
    final_stats = _key_stats(final, "final_").drop(columns="final_scans")
    table = plan.join(_key_stats(dsc), on="key").join(final_stats, on="key")
    table["default"] = table["default"].astype(bool)
    table["scans"] = table["scans"].fillna(0).astype(int)
    for column in (*STAGE0_COLUMNS[:3], *FINAL_COLUMNS[:3]):
        table[column] = table[column].astype(float)
    table["delta"] = _delta(table, "mean_dsc")
    table["final_delta"] = _delta(table, "final_mean_dsc")
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
    """The table as the page shows it: rounded, today's choice marked, readable headings; the nnU-Net columns only
    where some variant has one."""
    shown = table.copy()
    shown["variant"] = [f"{v} (today)" if d else v for v, d in zip(shown["variant"], shown["default"])]
    columns = [c for c in (*STAGE0_COLUMNS, *FINAL_COLUMNS) if c in shown]
    for column in columns:
        shown[column] = shown[column].astype(float).round(3)
    empty = [c for c in FINAL_COLUMNS if c in shown and shown[c].isna().all()]
    return shown.drop(columns=["default", "key", *empty]).rename(columns=HEADINGS)


def level_effect(table: pd.DataFrame, column: str = "mean_dsc") -> dict | None:
    """The annotated slice's level (medoid kept), by ``column`` (``final_mean_dsc``: the nnU-Nets): best, worst, their
    spread and the best's gain over today's slice (NaN when today's slice has no value in ``column``).

    None when fewer than two levels were scored. Ties go to the first row (today's slice first)."""
    rows = table[(table["comparison"] == "level") & table[column].notna()]
    if len(rows) < 2:
        return None
    best, worst = rows.loc[rows[column].idxmax()], rows.loc[rows[column].idxmin()]
    default = rows[rows["default"].astype(bool)]
    today = float(default[column].iloc[0]) if len(default) else float("nan")
    return {
        "levels": rows["variant"].tolist(),
        "spread": float(best[column] - worst[column]),
        "best": str(best["variant"]),
        "best_dsc": float(best[column]),
        "best_is_default": bool(best["default"]),
        "worst": str(worst["variant"]),
        "worst_dsc": float(worst[column]),
        "default_dsc": today,
        "gain": float(best[column]) - today,
        "shared": [n for n in rows["note"] if n.startswith("same slice as")],
        "shared_rows": rows.loc[rows["note"].str.startswith("same slice as"), "variant"].tolist(),
    }


def reference_effect(table: pd.DataFrame, column: str = "mean_dsc") -> dict | None:
    """The medoid against random other scans (L3/L4 slice), by ``column``: the random draws' range and mean, and the
    medoid's gain.

    None without a scored default row or a scored random draw in ``column``."""
    default = table[table["default"].astype(bool) & table[column].notna()]
    drawn = table[(table["comparison"] == "reference") & table[column].notna()]
    if default.empty or drawn.empty:
        return None
    medoid = float(default[column].iloc[0])
    mean = float(drawn[column].mean())
    return {
        "medoid": str(default["reference"].iloc[0]),
        "medoid_dsc": medoid,
        "random_min": float(drawn[column].min()),
        "random_max": float(drawn[column].max()),
        "random_mean": mean,
        "gain": medoid - mean,
        "seeds": int(len(drawn)),
        "references": int(drawn["reference"].nunique()),
    }


def _dsc_range(low: float, high: float) -> str:
    return f"{low:.3f}" if f"{low:.3f}" == f"{high:.3f}" else f"{low:.3f}–{high:.3f}"


def scan_spread(table: pd.DataFrame, column: str = "sd_dsc") -> float:
    """SD over scans of the per-scan DSC with today's choice (``final_sd_dsc``: its nnU-Net): how much the scans
    differ from one another. NaN when the default row has none."""
    default = table[table["default"].astype(bool)]
    return float(default[column].iloc[0]) if len(default) else float("nan")


def _beyond(change: float, sd: float) -> bool:
    """Is a change larger than the scans' own spread (False when the spread is unknown)?"""
    return bool(np.isfinite(sd) and abs(change) > sd)


def level_sentence(effect: dict | None, sd: float = float("nan"), margin: float = 0.02, stage: str = "stage-0") -> str:
    """What the level of the annotated slice changed in the ``stage`` DSC ("stage-0" or "nnU-Net"), and what to tell
    students about it: within ``margin`` the level hardly matters; beyond it, the advice depends on whether the change
    also exceeds the scans' spread ``sd``."""
    if effect is None:
        if stage == "stage-0":
            return "Fewer than two levels of the annotated slice could be scored, so the level is not compared here."
        return f"Fewer than two levels of the annotated slice have a {stage} DSC, so the {stage}s do not compare them."
    text = (
        f"Putting the one annotated slice at {', '.join(effect['levels'])} (the medoid kept) changed the mean "
        f"{stage} DSC by at most {effect['spread']:.3f}: from {effect['worst']} ({effect['worst_dsc']:.3f}) to "
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
    if not np.isfinite(effect["gain"]):
        return text + f" Today's L3/L4 slice has no {stage} DSC, so this says nothing for or against it."
    if _beyond(effect["gain"], sd):
        return text + (
            f" {effect['best']} beat today's L3/L4 slice by {effect['gain']:.3f}, more than {spread}: tell students "
            f"that the level matters, and that on these scans {effect['best']} did best."
        )
    return text + (
        f" {effect['best']} beat today's L3/L4 slice by {effect['gain']:.3f}, less than {spread}: tell students "
        "that the level may matter, and to check on their own scans before moving away from L3/L4."
    )


def reference_sentence(
    effect: dict | None, sd: float = float("nan"), margin: float = 0.02, stage: str = "stage-0"
) -> str:
    """What the choice of reference scan changed in the ``stage`` DSC, and what to tell students about it (``margin``
    and the scans' spread ``sd`` as in :func:`level_sentence`)."""
    if effect is None:
        if stage == "stage-0":
            return "No other scan could serve as a random reference, so the medoid rule is not compared here."
        return f"The medoid or every random reference lacks a {stage} DSC, so the {stage}s do not compare the two."
    draws = "draw" if effect["seeds"] == 1 else "draws"
    scans = "scan" if effect["references"] == 1 else "different scans"
    text = (
        f"A random other scan as the reference (its L3/L4 slice; {effect['seeds']} seeded {draws}, "
        f"{effect['references']} {scans}) gave a mean {stage} DSC of "
        f"{_dsc_range(effect['random_min'], effect['random_max'])} against {effect['medoid_dsc']:.3f} with the medoid "
        f"({effect['medoid']})."
    )
    gain = effect["gain"]
    if abs(gain) <= margin:
        return text + _draw_spread_clause(effect, margin)
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


def _draw_spread_clause(effect: dict, margin: float) -> str:
    """When the medoid matches the random draws' mean: whether the draws themselves differed (the reference scan then
    matters draw by draw even though the rule gains nothing on average), and where the medoid falls among them."""
    spread = effect["random_max"] - effect["random_min"]
    if spread <= margin:
        return f" The choice of reference made no measurable difference here (within {margin:.2f})."
    text = (
        f" On average the random references did about as well as the medoid (within {margin:.2f}), but from one draw "
        f"to another the DSC ranged over {spread:.3f}: which scan is annotated matters."
    )
    if effect["medoid_dsc"] > effect["random_min"] + margin:
        return text + (
            f" The medoid stayed {effect['medoid_dsc'] - effect['random_min']:.3f} above the worst draw: tell students "
            "that the most typical scan protects against a bad pick rather than finds the best one."
        )
    return text + " The medoid did not avoid the worst draw here: do not promise students that it will."


def level_gap_sentence(stage0: dict | None, final: dict | None, margin: float = 0.02) -> str:
    """Did training nnU-Net on the pseudo-labels narrow or widen the gap between the best and worst level? Compares
    the spreads of two :func:`level_effect` results (stage 0, the nnU-Nets) taken on the same levels; a change within
    ``margin`` leaves it about the same."""
    if stage0 is None or final is None:
        return (
            "Fewer than two levels have both a stage-0 and a nnU-Net DSC, so whether training nnU-Net narrowed or "
            "widened the gap between levels is not known here."
        )
    change = final["spread"] - stage0["spread"]
    if abs(change) <= margin:
        verb, meaning = "left the gap", " about the same"
        why = f"a change of {change:+.3f}, within {margin:.2f}"
        lesson = "the slice choice carries through to the final model about as stage 0 shows it."
    elif change < 0:
        verb, meaning, why = "narrowed the gap", "", f"{change:+.3f}"
        lesson = (
            "the nnU-Nets made up for part of a weaker slice, so the level weighs less on the final model than "
            "stage 0 shows."
        )
    else:
        verb, meaning, why = "widened the gap", "", f"{change:+.3f}"
        lesson = "the level weighs more on the final model than stage 0 shows."
    text = (
        f"Training nnU-Net on the pseudo-labels {verb} between the best and worst level ({', '.join(stage0['levels'])})"
        f"{meaning}: {stage0['spread']:.3f} at stage 0, {final['spread']:.3f} with the nnU-Nets ({why}); {lesson}"
    )
    if stage0["best"] == final["best"]:
        return text + f" {final['best']} did best at both."
    return text + f" The best level moved from {stage0['best']} at stage 0 to {final['best']} with the nnU-Nets."


def strength_sentence(table: pd.DataFrame, modality: str, margin: float = 0.02, noise: float | None = None) -> str:
    """Where the comparison is weak: how many scans and draws it rests on, which variants coincided, and (when the
    table holds the variants' nnU-Nets) that each trained once, so differences within ``margin`` may be noise — or,
    with ``noise`` measured (:func:`training_noise`), how far a second seed moved today's variant."""
    default = table[table["default"].astype(bool)]
    n = int(default["scans"].iloc[0]) if len(default) else 0
    seeds = int((table["comparison"] == "reference").sum())
    if has_final(table) and noise is not None:
        stages = (
            f"; each variant's nnU-Net trained once, and today's trained again with the next seed landed {noise:.3f} "
            f"away, so differences between the nnU-Nets smaller than {max(margin, noise):.3f} say nothing about the "
            "slice: at this chapter's small budget a training's seed weighs as much as the choice of slice."
            if noise > margin
            else f"; each variant's nnU-Net trained once, and today's trained again with the next seed landed "
            f"{noise:.3f} away, within {margin:.2f}: the nnU-Nets' differences beyond that are the slice's doing."
        )
    elif has_final(table):
        stages = (
            f"; each variant's nnU-Net trained once (one seed), so differences between the nnU-Nets smaller than "
            f"about {margin:.2f} may be training noise rather than the slice's doing."
        )
    else:
        stages = (
            "; only stage 0 is compared, and the nnU-Nets trained on its pseudo-labels may narrow or widen these gaps."
        )
    text = (
        f"Where this is weak: {n} scans of one {modality} dataset, synthetic phantoms rather than patients, "
        f"{seeds} random {'draw' if seeds == 1 else 'draws'} of the reference, and one run per variant (the promptable "
        "model is deterministic, so another seed would change only the draws)" + stages
    )
    effect = level_effect(table)
    if effect is not None and effect["shared_rows"]:
        shared = "; ".join(effect["shared"])
        text += f" On the medoid, {', '.join(effect['shared_rows'])} fell on a slice already compared ({shared})."
    return text


def training_noise(final: pd.DataFrame, key: str, again: str) -> float | None:
    """How far one variant's nnU-Net landed from its second training with another seed (keys ``key`` and ``again``):
    |difference of their mean DSC over scans|; None when either is missing."""
    first, second = mean_scan_dsc(final[final["key"] == key]), mean_scan_dsc(final[final["key"] == again])
    return None if first is None or second is None else abs(first - second)


def teacher_paragraph(
    table: pd.DataFrame, dataset: str, modality: str, margin: float = 0.02, noise: float | None = None
) -> str:
    """The page's "what a teacher should tell students": level and reference at stage 0, then (when the table holds
    them) the same for the variants' nnU-Nets and whether training narrowed the level's gap, then the weak points.

    ``noise`` (:func:`training_noise`): the nnU-Net comparisons use the larger of it and ``margin``, since a difference
    smaller than two seeds of one variant apart says nothing about the slice."""
    head = f"On {dataset} ({modality}): "
    final_margin = max(margin, noise or 0.0)
    parts = [
        head + level_sentence(level_effect(table), scan_spread(table), margin),
        reference_sentence(reference_effect(table), scan_spread(table), margin),
    ]
    if has_final(table):
        sd = scan_spread(table, "final_sd_dsc")
        both = table[table["mean_dsc"].notna() & table["final_mean_dsc"].notna()]
        parts += [
            "Each variant's pseudo-labels then trained a nnU-Net of its own, scored against the same expert labels.",
            level_sentence(level_effect(table, "final_mean_dsc"), sd, final_margin, stage="nnU-Net"),
            reference_sentence(reference_effect(table, "final_mean_dsc"), sd, final_margin, stage="nnU-Net"),
            level_gap_sentence(level_effect(both), level_effect(both, "final_mean_dsc"), final_margin),
        ]
    return " ".join([*parts, strength_sentence(table, modality, margin, noise)])


def _iterations(budget: dict) -> str:
    """The budget's training length in words: epochs × iterations per epoch (nnU-Net's default when not set)."""
    epochs, per_epoch = int(budget["epochs"]), budget.get("iterations_per_epoch")
    if not per_epoch:
        return f"{epochs} {'epoch' if epochs == 1 else 'epochs'} of nnU-Net's default iterations"
    return f"{epochs} epochs × {int(per_epoch)} iterations = {epochs * int(per_epoch)} iterations"


def _slices_clause(slices: dict[str, int]) -> str:
    """How many slices the stage-1 filter kept per variant, and which variants it left without any."""
    counts = list(slices.values())
    low, high = min(counts), max(counts)
    text = f" The stage-1 filter kept {low if low == high else f'{low}–{high}'} slices per variant"
    empty = [key for key, n in slices.items() if n == 0]
    return text + (f"; {', '.join(empty)} kept none and trained no nnU-Net." if empty else ".")


def _beside_run(default_final: float | None, run_final: float | None) -> str:
    """Today's variant's nnU-Net DSC beside the run's own nnU-Net 1 on this dataset, as far as both are known."""
    pooled = "trained on all datasets pooled with the full budget"
    if default_final is not None and run_final is not None:
        return (
            f" Today's variant scored a mean nnU-Net DSC of {default_final:.3f}, the run's own nnU-Net 1 "
            f"{run_final:.3f} on this dataset ({default_final - run_final:+.3f}); nnU-Net 1 {pooled}, so the variants "
            "compare with one another, not with it."
        )
    if default_final is not None:
        return (
            f" Today's variant scored a mean nnU-Net DSC of {default_final:.3f}; the run's own nnU-Net 1 has no DSC on "
            "this dataset to set beside it."
        )
    if run_final is not None:
        return (
            f" Today's variant has no nnU-Net DSC; the run's own nnU-Net 1 ({pooled}) scored {run_final:.3f} on this "
            "dataset."
        )
    return ""


def encoding_clause(from_stage0: int, encoded: int) -> str:
    """Where the variants' slice embeddings came from (the stage-0 part's run record): stage 0's kept ones, or
    encoded here."""
    if from_stage0 and not encoded:
        return (
            f"the embeddings of its {from_stage0} slices are the ones the run's stage 0 computed and kept for this "
            "dataset (no slice is encoded again)"
        )
    if from_stage0:
        return (
            f"{from_stage0} of its slices' embeddings come from what the run's stage 0 kept, and {encoded} "
            f"{'was' if encoded == 1 else 'were'} encoded here"
        )
    return f"each of its {encoded} slices is encoded once here"


def budget_sentence(
    budget: dict,
    seconds: float,
    trained: int,
    default_final: float | None,
    run_final: float | None,
    slices: dict[str, int] | None = None,
) -> str:
    """What the variants' nnU-Nets were: their budget (``budget``: the step's, empty when none trained), how many
    trained in how many ``seconds`` (the run record), today's variant's mean DSC beside the run's own nnU-Net 1 on
    this dataset and the slices kept per variant (``slices``); without a budget, how to switch the trainings on."""
    if not budget:
        return (
            "Only stage 0 is compared: this profile trains no nnU-Net per variant (`baselines.which_slice_epochs: 0`). "
            "Set `baselines.which_slice_epochs` in the profile to a number of epochs (1 or more) to train one on each "
            "variant's pseudo-labels and see where each variant leaves the final model."
        )
    batch = f", batch size {int(budget['batch_size'])}" if budget.get("batch_size") else ""
    configuration = f" ({budget['configuration']})" if budget.get("configuration") else ""
    text = (
        f"Each variant's pseudo-labels trained a nnU-Net of its own with nnU-Net 1's network{configuration} and "
        f"stage-1 filter, {_iterations(budget)}{batch}, on this one dataset: {trained} "
        f"{'nnU-Net' if trained == 1 else 'nnU-Nets'} in {seconds:.0f} s (the run record)."
    )
    if slices:
        text += _slices_clause(slices)
    return text + _beside_run(default_final, run_final)


def _per_scan(dsc: pd.DataFrame) -> pd.DataFrame:
    """:func:`scan_scores` with the scan ids as text (as the plan names its reference scans)."""
    return scan_scores(dsc).astype({"case": str})


def _variant_panels(axes, table: pd.DataFrame, per_scan: pd.DataFrame, colours: dict, column: str, titles: bool):
    """One row of the figure: per-scan DSC (``per_scan``) and the mean in ``column`` of every variant, the levels on
    the left axis, the reference scans on the right."""
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
            mean = getattr(row, column)
            if np.isfinite(mean):
                ax.hlines(mean, x - 0.3, x + 0.3, color="black" if not row.default else "#e4572e", lw=2)
        ax.set_xticks(range(len(labels)), labels, fontsize=8)
        ax.set_xlim(-0.6, len(labels) - 0.4)
        if titles:
            ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)


def variants_figure(table: pd.DataFrame, dsc: pd.DataFrame, final: pd.DataFrame | None = None):
    """Per-scan stage-0 DSC of every variant (one colour per scan, the mean as a bar): the level of the annotated
    slice on the left, the reference scan on the right; with ``final`` (non-empty) a second row of the same panels
    for each variant's nnU-Net."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    rows = [(_per_scan(dsc), "mean_dsc", "stage-0 DSC per scan (mean of classes)")]
    if final is not None and len(final):
        rows.append((_per_scan(final), "final_mean_dsc", "nnU-Net DSC per scan (mean of classes)"))
    cases = sorted(set().union(*(per_scan["case"].unique() for per_scan, _, _ in rows)))
    colours = dict(zip(cases, plt.get_cmap("tab10").colors))
    height = 3.6 + 3.0 * (len(rows) - 1)
    fig, axes = plt.subplots(len(rows), 2, figsize=(10, height), sharey=True, width_ratios=[4, 4], squeeze=False)
    for i, (per_scan, column, label) in enumerate(rows):
        _variant_panels(axes[i], table, per_scan, colours, column, titles=i == 0)
        axes[i][0].set_ylabel(label)
    fig.text(0.99, 0.02, "bar: mean over scans (red: today's choice); ◆: the reference scan", ha="right", fontsize=8)
    axes[0][0].set_ylim(0, 1.02)
    handles = [Line2D([], [], ls="", marker="o", color=colours[c], label=c) for c in cases]
    fig.legend(handles=handles, loc="lower left", ncol=len(handles), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.08 * 3.6 / height, 1, 1))
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
