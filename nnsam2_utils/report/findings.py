"""What the results show, in sentences decided by the run's own numbers (the landing and results pages open
with them), so the text stays true when the data, the profile or the code change.

Every function takes tables the run wrote and returns plain sentences; none holds a number of its own
except the thresholds named in its signature.
"""

from __future__ import annotations

import pandas as pd

from nnsam2_utils.report.plots import STAGE_LABELS


def scan_means(dsc: pd.DataFrame) -> pd.DataFrame:
    """Per stage, dataset and scan: the mean class DSC."""
    return dsc.groupby(["stage", "dataset", "case"], as_index=False)["dsc"].mean()


def stage_means(dsc: pd.DataFrame) -> pd.Series:
    """Per stage: the mean over scans of the per-scan mean class DSC (the results page's per-stage table)."""
    from nnsam2_utils.report.results import mean_dsc_per_stage

    return mean_dsc_per_stage(dsc)


def dataset_means(dsc: pd.DataFrame) -> pd.DataFrame:
    """Per dataset (rows) and stage (columns): mean DSC over scans."""
    return scan_means(dsc).pivot_table(index="dataset", columns="stage", values="dsc")


def _label(stage: str) -> str:
    return STAGE_LABELS.get(stage, stage)


def refinement_finding(dsc: pd.DataFrame, margin: float = 0.01) -> str:
    """Does refinement beat stage 0, overall and per dataset?"""
    means, per_dataset = stage_means(dsc), dataset_means(dsc)
    refined = [s for s in means.index if s.startswith("nnunet")]
    if "stage0" not in means or not refined:
        return "No refinement stage was scored against expert labels in this run."
    first = min(refined)
    change = means[first] - means["stage0"]
    better = per_dataset.index[per_dataset[first] > per_dataset["stage0"] + margin].tolist()
    worse = per_dataset.index[per_dataset[first] < per_dataset["stage0"] - margin].tolist()
    verb = "raises" if change > margin else "lowers" if change < -margin else "leaves"
    text = (
        f"{_label(first)} {verb} the mean DSC from {means['stage0']:.3f} (stage 0) to {means[first]:.3f}; "
        f"it is better by more than {margin:.2f} in {len(better)} of {len(per_dataset)} datasets"
    )
    return text + (f" and worse in {', '.join(worse)}." if worse else ", worse in none.")


def later_stages_finding(dsc: pd.DataFrame) -> str:
    """Do stages 2–3 improve on stage 1, measured against the final stage's seed-to-seed difference?"""
    means = stage_means(dsc)
    refined = sorted(s for s in means.index if s.startswith("nnunet"))
    if len(refined) < 2:
        return ""
    first, last = refined[0], refined[-1]
    change = means[last] - means[first]
    seed = abs(means["repeat"] - means[last]) if "repeat" in means else None
    trail = " → ".join(f"{means[s]:.3f}" for s in refined)
    if seed is None:
        return f"From {_label(first)} to {_label(last)} the mean DSC goes {trail} (no repeat training to compare with)."
    if abs(change) <= seed:
        return (
            f"Stages after the first change the mean DSC by {change:+.3f} ({trail}), no more than the final stage "
            f"differs from itself trained with another seed ({seed:.3f}): here they neither help nor hurt measurably."
        )
    direction = "improve on" if change > 0 else "fall below"
    return (
        f"Stages after the first {direction} {_label(first)} by {change:+.3f} ({trail}), more than the final stage "
        f"differs from itself trained with another seed ({seed:.3f})."
    )


def baseline_finding(dsc: pd.DataFrame, supervised_folds: int = 1, supervised_budget: str = "per_fold") -> str:
    """How the one-shot registration baseline and the supervised bound compare with the stages.

    ``supervised_folds``: the bound's cross-validation folds (1: trained and scored on the same scans);
    ``supervised_budget``: ``split`` or ``per_fold`` (``baselines.supervised_budget``).
    """
    means = stage_means(dsc)
    sentences = []
    if "registration" in means and "stage0" in means:
        ahead = means["registration"] > means["stage0"]
        sentences.append(
            f"Registering the annotated slice to every scan (one-shot baseline, {means['registration']:.3f}) "
            + (
                f"beats stage 0 ({means['stage0']:.3f}): on this cohort the promptable model alone is not the better "
                "way to spread one slice; the refinement is what pays."
                if ahead
                else f"stays below stage 0 ({means['stage0']:.3f})."
            )
        )
    if "supervised" in means:
        sentences.append(supervised_sentence(means, supervised_folds, supervised_budget))
    return " ".join(sentences)


def supervised_sentence(means: pd.Series, folds: int, budget: str = "per_fold") -> str:
    """What the supervised bound says about the pipeline, decided by the stage means.

    ``budget``: ``split`` when the folds shared one training's epochs (each fold trained less than nnU-Net 1).
    """
    bound = means["supervised"]
    if folds < 2:
        return (
            f"nnU-Net trained on every expert label reaches {bound:.3f}, scored on the scans it was trained on, so an "
            "optimistic upper bound rather than a fair competitor."
        )
    text = (
        f"nnU-Net trained on expert labels, {folds}-fold cross-validated over subjects (each scan scored by a model "
        f"that saw neither it nor its subject's other scans), reaches {bound:.3f}"
    )
    refined = [s for s in means.index if s.startswith("nnunet")]
    if not refined or "stage0" not in means:
        return text + "."
    best = max(refined, key=lambda s: means[s])
    if means[best] >= bound:
        held_back = (
            f", and each fold trained for 1/{folds} of nnU-Net 1's epochs (`baselines.supervised_budget: split`)"
            if budget == "split"
            else ""
        )
        return (
            text + f"; {_label(best)} ({means[best]:.3f}) is above it. That is not evidence that one slice beats full "
            "labels: the method's nnU-Nets train on the very scans they segment (with pseudo-labels), the "
            f"cross-validated bound never sees them{held_back}."
        )
    gap = bound - means["stage0"]
    closed = (means[best] - means["stage0"]) / gap if gap > 0 else float("nan")
    return text + (
        f"; {_label(best)} ({means[best]:.3f}) closes {closed:.0%} of the gap from stage 0 ({means['stage0']:.3f}) "
        "to it."
        if gap > 0
        else f", not above stage 0 ({means['stage0']:.3f})."
    )


#: A real-scan reference point (issue 16 of this project): a public Dixon dataset of two real scans
#: (400 × 400 × 29 voxels, 1 × 1 × 4 mm, L2–L5, four expert classes) run through "Bring your own dataset".
REAL_TWO_SCAN_DIXON = {"stage0": 0.876, "nnunet": 0.817, "supervised": 0.96}


def real_scan_finding(dsc: pd.DataFrame, real: dict[str, float] = REAL_TWO_SCAN_DIXON) -> str:
    """The run's phantoms beside a real two-scan test: is stage 0 harder here, does refinement gain here and there."""
    means = stage_means(dsc)
    refined = [s for s in means.index if s.startswith("nnunet")]
    if "stage0" not in means or not refined:
        return ""
    best = max(refined, key=lambda s: means[s])
    gain, real_gain = means[best] - means["stage0"], real["nnunet"] - real["stage0"]
    harder = "harder" if means["stage0"] < real["stage0"] else "not harder"
    same_way = (gain > 0) == (real_gain > 0)
    return (
        f"Real scans can behave otherwise: on a public Dixon dataset of two real scans stage 0 scored "
        f"{real['stage0']:.3f} and nnU-Net trained on its confident slices {real['nnunet']:.3f} ({real_gain:+.3f}). "
        f"Here stage 0 scores {means['stage0']:.3f}, so these phantoms are {harder} for the promptable model "
        "than those "
        f"scans, and the best nnU-Net {means[best]:.3f} ({gain:+.3f}): "
        + (
            "the same direction as on the real scans."
            if same_way
            else "the opposite direction, so the gains on this page are not a forecast for a small real dataset."
        )
    )


def delivered_finding(delivered: pd.DataFrame) -> str:
    """Which stage the run delivers, and where stage 0 is kept because refinement looked worse."""
    kept0 = delivered.loc[delivered["delivered"] == "stage0", "dataset"].tolist()
    counts = delivered["delivered"].map(_label).value_counts()
    listed = ", ".join(f"{stage} for {n}" for stage, n in counts.items())
    text = f"The run delivers {listed} of {len(delivered)} datasets (chosen without expert labels)"
    return text + (f"; stage 0 is kept for {', '.join(kept0)}." if kept0 else ".")


def new_subjects_finding(gaps: pd.DataFrame, same: float = 0.005, same_size: float = 0.05) -> str:
    """How the final model scores on subjects the run never saw, against the run's own DSC (``gaps``: the table of
    :func:`nnsam2_utils.evaluate.new_subjects.gap_table`, its last row ``all``); empty without new scans. A mean
    gap within ``same`` reads as the same; muscle sizes within ``same_size`` (a fraction) go unmentioned."""
    if "all" not in gaps.index:
        return ""
    pooled, per = gaps.loc["all"], gaps.drop(index="all")
    scans = int(per["new_scans"].max())
    text = (
        f"**On subjects the run never saw** (the phantoms drawn again with another seed, {scans} scans per dataset, "
        f"segmented by `nnsam2 predict`) the final model scores a mean DSC of {pooled['new']:.3f}, against "
        f"{pooled['book']:.3f} on the run's own scans: "
    )
    if abs(pooled["gap"]) <= same:
        text += "the same on average"
    else:
        text += f"{abs(pooled['gap']):.3f} {'lower' if pooled['gap'] > 0 else 'higher'} on average"
    text += (
        f" (per dataset from {per['gap'].min():+.3f} to {per['gap'].max():+.3f}, the run's minus the new). The "
        "run's DSC is measured on the scans whose pseudo-labels trained its nnU-Nets (the method has no held-out split)"
    )
    if pooled["gap"] > same:
        text += "; expect new scans of the same kind to score about this much lower"
    spread = per["new_sd"].max()
    if scans > 1 and pd.notna(spread):
        text += (
            f". With {scans} new scans a dataset's gap also carries the spread between subjects "
            f"(SD of a new scan's DSC up to {spread:.3f})"
        )
    return text + "." + size_clause(pooled.get("book_ml"), pooled.get("new_ml"), same_size)


def size_clause(book_ml: float | None, new_ml: float | None, same_size: float = 0.05) -> str:
    """A sentence on how the new subjects' muscles compare in size with the run's (mean true class volume in the
    region, mL), when they differ by more than ``same_size`` (a fraction); empty otherwise."""
    if book_ml is None or new_ml is None or not (pd.notna(book_ml) and pd.notna(new_ml)) or book_ml <= 0:
        return ""
    change = new_ml / book_ml - 1
    if abs(change) <= same_size:
        return ""
    return (
        f" The new subjects' muscles are {abs(change):.0%} {'smaller' if change < 0 else 'larger'} than the run's "
        f"({new_ml:.0f} against {book_ml:.0f} mL per class in the region): DSC weighs the voxels at a muscle's border "
        f"against its volume, so a smaller muscle scores lower with any model, and part of a gap is the subjects', "
        "not the model's."
    )


def results_findings(
    dsc: pd.DataFrame,
    delivered: pd.DataFrame | None = None,
    supervised_folds: int = 1,
    supervised_budget: str = "per_fold",
    synthetic: bool = False,
    new_subjects: pd.DataFrame | None = None,
) -> str:
    """The 'what this shows' paragraph of the results and landing pages (Markdown bullet list).

    ``synthetic``: the scored datasets include generated phantoms; a real-scan reference point is added.
    ``new_subjects``: the final model's gap to new subjects (:func:`new_subjects_finding`).
    """
    parts = [
        refinement_finding(dsc),
        later_stages_finding(dsc),
        baseline_finding(dsc, supervised_folds, supervised_budget),
    ]
    if new_subjects is not None:
        parts.append(new_subjects_finding(new_subjects))
    if synthetic:
        parts.append(real_scan_finding(dsc))
    if delivered is not None and len(delivered):
        parts.append(delivered_finding(delivered))
    return "\n".join(f"- {p}" for p in parts if p)


MEASURES = {"volume_ml": "volume", "fat_ratio": "Dixon fat ratio", "hu_mean": "CT attenuation"}


def _name(row) -> str:
    return f"{MEASURES.get(row.measure, row.measure)} ({row.group})"


def agreement_finding(agreement: pd.DataFrame, alpha: float = 0.05, min_icc: float = 0.5, few: int = 10) -> str:
    """Which measures are equivalent to the expert's, which are not (with their bias), and which pass TOST
    while the automated values do not track the expert's (ICC below ``min_icc``); small samples flagged."""
    tested = agreement.dropna(subset=["tost_p"])
    if tested.empty:
        return "- No measure could be tested for equivalence (no expert labels, or too few scans)."
    bias = 100 * tested["bias"] / tested["expert_mean"]
    equivalent = tested["tost_p"] < alpha
    lines = [
        f"- {int(equivalent.sum())} of {len(tested)} measure × group comparisons are equivalent (TOST, p < {alpha})."
    ]
    rows = zip(tested.itertuples(), bias)
    failing = [f"{_name(r)}: bias {b:+.1f} % of the expert mean" for r, b in rows if r.tost_p >= alpha]
    if failing:
        lines.append("- Not equivalent: " + "; ".join(failing) + ".")
    loose = [f"{_name(r)} (ICC {r.icc:.2f})" for r in tested.itertuples() if r.tost_p < alpha and r.icc < min_icc]
    if loose:
        lines.append(
            "- Equivalent on average but not scan by scan: " + ", ".join(loose) + f". An ICC below {min_icc} means "
            "the automated values do not rank scans as the expert's do; the mean agrees, the individual values do not."
        )
    small = [f"{_name(r)}: n = {r.n}" for r in tested.itertuples() if r.n < few]
    if small:
        lines.append(
            f"- Fewer than {few} paired values ({'; '.join(small)}): confidence intervals this wide decide little; "
            "treat these rows as a demonstration of the analysis, not as evidence."
        )
    return "\n".join(lines)


def supervised_budget_sentence(plan: pd.DataFrame, fold_epochs: int | None, refine: dict, mode: str) -> str:
    """How the supervised bound was split and trained, from its fold plan (dataset, case, subject, fold)."""
    folds = int(plan["fold"].max()) + 1 if len(plan) else 0
    iterations = refine.get("iterations_per_epoch") or 250
    if folds < 2:
        return (
            f"One model trained on all {len(plan)} expert-labelled scans for {fold_epochs} epochs × {iterations} "
            "iterations, scored on those same scans: an optimistic bound."
        )
    sizes = plan.groupby("fold").size()
    share = (
        f"the folds share one training's budget ({refine.get('epochs')} epochs), so each trains {fold_epochs} epochs"
        if mode == "split"
        else f"each trains the whole budget of {fold_epochs} epochs"
    )
    return (
        f"{len(plan)} expert-labelled scans of {plan['subject'].nunique()} subjects in {folds} folds "
        f"({', '.join(str(n) for n in sizes)} scans); {share} × {iterations} iterations. "
        + (
            "With the budget split, each fold model trains for less than nnU-Net 1 does: the bound is a lower "
            "estimate of what full labels reach at nnU-Net 1's budget."
            if mode == "split"
            else ""
        )
    ).strip()


def supervised_scoring(folds: int) -> str:
    """How the supervised bound's DSC was scored, for the abstract."""
    if folds > 1:
        return "cross-validated over subjects: each scan scored by a model that did not see it"
    return "scored on the scans it was trained on, so optimistic"
