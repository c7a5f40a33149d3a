"""The results page's account of what the run delivers: which stage per dataset and why, a warning where a
refinement looks worse than stage 0, the label-free signals beside the true DSC, and the review list."""

from __future__ import annotations

import html

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from scipy.stats import kendalltau

from nnsam2_utils.prepare.model_input import load_stack
from nnsam2_utils.report.findings import dataset_means
from nnsam2_utils.report.plots import CLASS_COLOURS, STAGE_LABELS, show_slice

COLUMNS = {
    "dataset": "Dataset",
    "stage": "Stage",
    "estimated_dsc": "Estimated DSC",
    "annotated_slice_dsc": "DSC on the annotated slice",
    "agreement_stage0": "DSC with stage 0",
    "confident_agreement": "DSC with stage 0 where it was confident",
    "true_dsc": "True DSC (expert labels)",
    "delivered": "Delivered",
}


def stage_means(dsc: pd.DataFrame) -> pd.DataFrame:
    """Mean DSC per dataset and stage, long (dataset, stage, true_dsc): :func:`findings.dataset_means` stacked."""
    return dataset_means(dsc).stack().dropna().rename("true_dsc").reset_index()


def quality_view(quality: pd.DataFrame, delivered: pd.DataFrame, dsc: pd.DataFrame | None = None) -> pd.DataFrame:
    """The label-free signals per dataset and stage, the delivered stage marked, the true DSC beside where known."""
    table = quality.copy()
    if dsc is not None and len(dsc):
        table = table.merge(stage_means(dsc), on=["dataset", "stage"], how="left")
    choice = dict(zip(delivered["dataset"], delivered["delivered"]))
    table["delivered"] = np.where(table["stage"] == table["dataset"].map(choice), "✔", "")
    table["stage"] = table["stage"].map(lambda s: STAGE_LABELS.get(s, s))
    return table[[c for c in COLUMNS if c in table.columns]].rename(columns=COLUMNS).round(3)


def worse_than_stage0(dsc: pd.DataFrame, margin: float = 0.01) -> pd.DataFrame:
    """Datasets with expert labels whose every refinement stage scores below stage 0 by more than ``margin``."""
    means = dataset_means(dsc)
    refined = [c for c in means.columns if c.startswith("nnunet")]
    if "stage0" not in means or not refined:
        return pd.DataFrame(columns=["dataset", "stage0", "best_refined"])
    best = means[refined].max(axis=1)
    worse = means.loc[best < means["stage0"] - margin]
    return pd.DataFrame({"dataset": worse.index, "stage0": worse["stage0"].values, "best_refined": best[worse.index]})


def delivery_notice(delivered: pd.DataFrame, dsc: pd.DataFrame) -> str:
    """HTML: a warning box where refinement was not delivered or scored below stage 0, and a note listing the
    delivered refinements that depart from stage 0 where stage 0 was sure (worth a look); otherwise a note."""
    warnings = [
        f"<b>{html.escape(row.dataset)}</b>: stage 0 is delivered: {html.escape(row.reason)}."
        for row in delivered.loc[delivered["delivered"] == "stage0"].itertuples()
    ]
    warnings += [
        f"<b>{html.escape(row.dataset)}</b>: against the expert labels every nnU-Net stage scores below stage 0 "
        f"(best {row.best_refined:.3f} vs {row.stage0:.3f}): refinement made this dataset worse."
        for row in worse_than_stage0(dsc).itertuples()
    ]
    flags = [
        f"<b>{html.escape(row.dataset)}</b>: {html.escape(row.flag)}."
        for row in delivered.itertuples()
        if isinstance(getattr(row, "flag", ""), str) and row.flag
    ]
    boxes = []
    if warnings:
        boxes.append(_box("warning", "Refinement did not help everywhere", warnings))
    if flags:
        boxes.append(_box("note", "Worth a look: the delivered stage departs from a confident stage 0", flags))
    if not boxes:
        boxes.append(
            _box("note", "Delivered", ["For every dataset a refinement stage passed the check and is delivered."])
        )
    return "".join(boxes)


def _box(kind: str, title: str, lines: list[str]) -> str:
    items = "".join(f"<li>{line}</li>" for line in lines)
    return f'<div class="admonition {kind}"><p class="admonition-title">{html.escape(title)}</p><ul>{items}</ul></div>'


def ordering_check(quality: pd.DataFrame, dsc: pd.DataFrame) -> pd.DataFrame:
    """Per dataset with expert labels: Kendall's τ between the estimated and the true DSC over its stages,
    and whether both pick the same best stage."""
    table = quality.merge(stage_means(dsc), on=["dataset", "stage"], how="inner").dropna(
        subset=["estimated_dsc", "true_dsc"]
    )
    rows = []
    for dataset, group in table.groupby("dataset", sort=True):
        tau = kendalltau(group["estimated_dsc"], group["true_dsc"]).statistic if len(group) > 1 else np.nan
        same_best = (
            group.loc[group["estimated_dsc"].idxmax(), "stage"] == group.loc[group["true_dsc"].idxmax(), "stage"]
        )
        rows.append({"dataset": dataset, "stages": len(group), "kendall_tau": tau, "same_best_stage": bool(same_best)})
    return pd.DataFrame(rows, columns=["dataset", "stages", "kendall_tau", "same_best_stage"])


def ordering_sentence(check: pd.DataFrame) -> str:
    """What the ordering check says, decided by its numbers."""
    if check.empty:
        return "No dataset has expert labels, so whether the label-free estimate can be trusted is not measured here."
    same, n = int(check["same_best_stage"].sum()), len(check)
    tau = float(check["kendall_tau"].mean())
    verdict = (
        "On this cohort it picks the right stage often enough to act on"
        if same >= max(1, round(0.8 * n))
        else "On this cohort it is not reliable enough to act on alone: look at the review list"
    )
    return (
        f"The label-free estimate picks the stage with the best true DSC for {same} of {n} datasets "
        f"(mean Kendall's τ between estimated and true DSC over the stages: {tau:.2f}). {verdict}."
    )


def signal_figure(quality: pd.DataFrame, dsc: pd.DataFrame):
    """Estimated vs true DSC per dataset and stage (one colour per stage), with the identity line."""
    table = quality.merge(stage_means(dsc), on=["dataset", "stage"], how="inner")
    fig, ax = plt.subplots(figsize=(5.2, 4.2))
    for stage, group in table.groupby("stage", sort=True):
        ax.scatter(group["true_dsc"], group["estimated_dsc"], label=STAGE_LABELS.get(stage, stage), s=28)
    low = float(np.nanmin(table[["true_dsc", "estimated_dsc"]].to_numpy(dtype=float), initial=1.0))
    ax.plot([low, 1], [low, 1], color="grey", lw=0.8, ls="--")
    ax.set_xlabel("true DSC (expert labels)")
    ax.set_ylabel("estimated DSC (no expert labels)")
    ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def review_figure(workspace, review: pd.DataFrame, stage: str, n: int = 12):
    """Thumbnails of the ``n`` highest-scored review slices: stage 0 (white) and ``stage`` (fill) on the image."""
    rows = review.sort_values("review_score", ascending=False).head(n)
    cols = 4
    fig, axes = plt.subplots(max(1, -(-len(rows) // cols)), cols, figsize=(9, 2.4 * max(1, -(-len(rows) // cols))))
    for ax in np.ravel(axes):
        ax.axis("off")
    for ax, row in zip(np.ravel(axes), rows.itertuples()):
        image, _ = load_stack(workspace.prepared(row.dataset, row.case))
        final, _ = load_stack(workspace.labels(stage, row.dataset, row.case).parent, row.case)
        first, _ = load_stack(workspace.labels("stage0", row.dataset, row.case).parent, row.case)
        show_slice(ax, image[row.slice], final[row.slice], f"{row.dataset}\n{row.case}, slice {row.slice}")
        for cls in CLASS_COLOURS:
            if (first[row.slice] == cls).any():
                ax.contour(first[row.slice] == cls, levels=[0.5], colors=["white"], linewidths=0.7)
    fig.suptitle(f"Review list: {STAGE_LABELS.get(stage, stage)} (fill) and stage 0 (white contour)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    return fig
