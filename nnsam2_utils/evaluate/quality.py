"""Quality signals that need no expert labels (docs/method.md §7.1): how good each stage looks on a dataset
whose scans carry no expert labels, which stage the run delivers, and which slices most deserve a human look.

Three signals per dataset and stage, all computed from the run's own files:

* ``annotated_slice_dsc``: DSC of a refinement stage on the one annotated slice, against the annotation.
  No nnU-Net ever trains on that slice (stage 1 trains on propagated slices, the prompted one excluded;
  stages 2–3 on earlier stages' outputs), so it is a withheld test — of one slice, at one level. For stage 0
  it is undefined (the slice is the prompt): NaN.
* ``agreement_stage0``: mean DSC between the stage's labels and stage 0's over every scan.
* ``confident_agreement``: the same, only on slices where stage 0 was confident (its summed predicted IoU at
  or above the dataset's ``confident_quantile``). A refinement that departs from stage 0 there has either
  fixed a confident mistake or broken a good slice: a reason for a human look, not for a verdict (on the
  demo cohort stage 0 is often confidently wrong).

And one estimate per stage on one scale, for ordering stages: ``estimated_dsc`` = the annotated-slice DSC for
nnU-Net stages, and for stage 0 its own predicted IoU turned into DSC (``2·IoU / (1 + IoU)``, averaged over
target slices and classes; a class without a mask counts 0). Whether these estimates can be trusted is
measured on the demo cohort, where the truth is known (the results page).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from nnsam2_utils.evaluate.metrics import dice

CLASSES = (1, 2)
RULES = ("evidence", "final", "stage0")


def iou_to_dsc(iou: np.ndarray | float) -> np.ndarray | float:
    """DSC of a mask whose IoU with the truth is ``iou`` (DSC = 2·IoU / (1 + IoU))."""
    iou = np.asarray(iou, dtype=float)
    return 2 * iou / (1 + iou)


def stage0_estimate(confidence: pd.DataFrame) -> pd.Series:
    """Per dataset: stage 0's own predicted quality as DSC, the mean over target slices and classes.

    ``confidence`` is stage 0's table (dataset, case, slice, class, iou, prompted); a class the model
    made no mask for (NaN IoU) counts 0; the prompted slice is left out.
    """
    targets = confidence.loc[~confidence["prompted"].astype(bool)]
    return targets.assign(dsc=iou_to_dsc(targets["iou"].fillna(0.0))).groupby("dataset")["dsc"].mean()


def slice_dsc(labels: np.ndarray, other: np.ndarray, classes: Sequence[int] = CLASSES) -> np.ndarray:
    """Per slice of two (slice, row, column) stacks: the mean class DSC (NaN where every class is empty in both)."""
    values = np.full((len(labels), len(classes)), np.nan)
    for z in range(len(labels)):
        for j, cls in enumerate(classes):
            values[z, j] = dice(labels[z] == cls, other[z] == cls)
    empty = np.isnan(values).all(axis=1)
    mean = np.full(len(labels), np.nan)
    mean[~empty] = np.nanmean(values[~empty], axis=1)
    return mean


def frame_confidence(confidence: pd.DataFrame) -> pd.DataFrame:
    """Per target frame (dataset, case, slice): the summed predicted IoU over the classes (0–2).

    Prompted frames are excluded. A class without a prediction (NaN IoU: the model made no mask)
    contributes 0, so a frame missing a muscle ranks low.
    """
    frames = confidence.loc[~confidence["prompted"].astype(bool)].copy()
    frames["iou"] = frames["iou"].fillna(0.0)
    return (
        frames.groupby(["dataset", "case", "slice"], as_index=False)["iou"].sum().rename(columns={"iou": "confidence"})
    )


def confident_slices(confidence: pd.DataFrame, quantile: float) -> pd.DataFrame:
    """Stage 0's target slices with their summed predicted IoU and ``confident`` (≥ the dataset's ``quantile``)."""
    frames = frame_confidence(confidence).rename(columns={"confidence": "stage0_confidence"})
    limit = frames.groupby("dataset")["stage0_confidence"].transform(lambda s: s.quantile(quantile))
    return frames.assign(confident=frames["stage0_confidence"] >= limit)


def summarise_signals(slices: pd.DataFrame, annotated: pd.DataFrame, estimate0: pd.Series) -> pd.DataFrame:
    """One row per dataset and stage from the per-slice agreement table and the annotated-slice DSC.

    ``slices``: dataset, case, slice, stage, agreement (with stage 0), confident. ``annotated``: dataset,
    stage, annotated_slice_dsc. ``estimate0``: stage 0's estimate per dataset (:func:`stage0_estimate`).
    """
    scan = slices.groupby(["dataset", "stage", "case"])
    per_scan = scan["agreement"].mean().rename("agreement_stage0").to_frame()
    per_scan["confident_agreement"] = (
        slices.loc[slices["confident"]].groupby(["dataset", "stage", "case"])["agreement"].mean()
    )
    table = per_scan.groupby(["dataset", "stage"]).mean().reset_index()
    table = table.merge(annotated, on=["dataset", "stage"], how="outer")
    stage0 = pd.DataFrame({"dataset": estimate0.index, "stage": "stage0", "agreement_stage0": 1.0})
    stage0["confident_agreement"], stage0["annotated_slice_dsc"] = 1.0, np.nan
    table = pd.concat([stage0, table], ignore_index=True)
    table["estimated_dsc"] = np.where(
        table["stage"] == "stage0", table["dataset"].map(estimate0), table["annotated_slice_dsc"]
    )
    return table.sort_values(["dataset", "stage"], key=_stage_key, ignore_index=True)


def _stage_key(column: pd.Series) -> pd.Series:
    if column.name != "stage":
        return column
    return column.map(lambda s: -1 if s == "stage0" else int(s.removeprefix("nnunet")) if s[-1].isdigit() else 99)


def choose_delivered(
    quality: pd.DataFrame, rule: str = "evidence", min_confident_agreement: float = 0.85, min_annotated_dsc: float = 0.7
) -> pd.DataFrame:
    """Per dataset, the stage whose labels the run delivers, why, and a flag for a human look (docs/method.md §7.1).

    ``final``: the last refinement stage (the paper). ``stage0``: stage 0. A stage name (``nnunet2``):
    that stage. ``evidence``: the refinement stage that reproduces the annotated slice it never trained on
    best, if at least ``min_annotated_dsc`` (a tie goes to the later stage); stage 0 when none does.
    ``flag`` is set where the delivered refinement departs from stage 0 on the slices stage 0 was sure of
    (``confident_agreement < min_confident_agreement``): not a reason to switch — on the demo cohort
    stage 0 is often confidently wrong — but a reason to look (the review list).
    """
    rows = []
    for dataset, group in quality.groupby("dataset", sort=True):
        refined = group.loc[group["stage"] != "stage0"]
        if rule == "evidence":
            choice, reason = _by_evidence(refined, min_annotated_dsc)
        elif rule == "final":
            choice = refined["stage"].iloc[-1] if len(refined) else "stage0"
            reason = "the final stage (rule: final)" if len(refined) else "no refinement stage ran"
        elif rule in set(group["stage"]):
            choice, reason = rule, f"rule: {rule}"
        else:
            raise ValueError(f"deliver.rule {rule!r}: use evidence, final or one of {sorted(group['stage'])}")
        chosen = group.loc[group["stage"] == choice, "confident_agreement"]
        departs = bool(len(chosen)) and float(chosen.iloc[0]) < min_confident_agreement
        flag = (
            f"{choice} agrees with stage 0 only {float(chosen.iloc[0]):.2f} (DSC) on the slices stage 0 was sure of"
            if departs
            else ""
        )
        rows.append({"dataset": dataset, "delivered": choice, "reason": reason, "flag": flag})
    return pd.DataFrame(rows, columns=["dataset", "delivered", "reason", "flag"])


def _by_evidence(refined: pd.DataFrame, min_annotated: float) -> tuple[str, str]:
    passing = refined.loc[refined["annotated_slice_dsc"] >= min_annotated]
    if passing.empty:
        scores = "; ".join(f"{row.stage} {row.annotated_slice_dsc:.2f}" for row in refined.itertuples())
        if not scores:
            return "stage0", "no refinement stage ran"
        return "stage0", f"no refinement reproduced the annotated slice with DSC >= {min_annotated:.2f} ({scores})"
    best = passing.iloc[::-1].sort_values("annotated_slice_dsc", ascending=False, kind="stable").iloc[0]
    return str(
        best["stage"]
    ), f"reproduces the annotated slice it never trained on best: DSC {best['annotated_slice_dsc']:.2f}"


def review_list(slices: pd.DataFrame, stage: str, top: int = 10) -> pd.DataFrame:
    """The slices most worth a human look, per dataset: stage 0 unsure, or ``stage`` departing from stage 0.

    Score per slice = (1 − DSC of ``stage`` with stage 0) + (1 − stage-0 confidence / number of classes):
    high when the two stages disagree, when stage 0 was unsure, highest when both. The ``top`` highest
    of each dataset, best first.
    """
    rows = slices.loc[slices["stage"] == stage].copy()
    rows["review_score"] = (1 - rows["agreement"].fillna(0.0)) + (1 - rows["stage0_confidence"] / len(CLASSES))
    rows = rows.sort_values(["review_score", "dataset", "case", "slice"], ascending=[False, True, True, True])
    columns = ["dataset", "case", "slice", "review_score", "agreement", "stage0_confidence"]
    return (
        rows.groupby("dataset", sort=True)
        .head(top)[columns]
        .sort_values(["dataset", "review_score"], ascending=[True, False], ignore_index=True)
    )


def _stack(path) -> np.ndarray:
    from nnsam2_utils.data.geometry import to_stack
    from nnsam2_utils.data.io import read_image

    return to_stack(read_image(path))


def slice_signals(workspace, datasets: Sequence[str], stages: Sequence[str], confident: pd.DataFrame):
    """Per dataset, scan, target slice and refinement stage: agreement with stage 0 and stage 0's confidence.

    ``confident`` is stage 0's per-slice confidence (:func:`confident_slices`).

    Returns (slices, annotated): the per-slice table (dataset, case, slice, stage, agreement,
    stage0_confidence, confident) and the annotated-slice DSC per dataset and stage.
    """
    from nnsam2_utils.data.io import read_json

    slices, annotated = [], []
    for dataset in datasets:
        note = read_json(workspace.stage("stage0", dataset) / "annotation.json")
        reference, index = note["reference_case"], int(note["annotated_slice"])
        truth = _stack(workspace.prepared(dataset, reference) / f"{note['annotation_volume']}.nii.gz")[index]
        for case in workspace.case_ids(dataset):
            stage0 = _stack(workspace.labels("stage0", dataset, case))
            for stage in stages:
                labels = _stack(workspace.labels(stage, dataset, case))
                agreement = slice_dsc(labels, stage0)
                slices.append(
                    pd.DataFrame(
                        {
                            "dataset": dataset,
                            "case": case,
                            "slice": range(len(agreement)),
                            "stage": stage,
                            "agreement": agreement,
                        }
                    )
                )
                if case == reference:
                    values = [dice(labels[index] == c, truth == c) for c in CLASSES]
                    annotated.append({"dataset": dataset, "stage": stage, "annotated_slice_dsc": np.nanmean(values)})
    table = pd.concat(slices, ignore_index=True).merge(confident, on=["dataset", "case", "slice"], how="inner")
    return table, pd.DataFrame(annotated, columns=["dataset", "stage", "annotated_slice_dsc"])
