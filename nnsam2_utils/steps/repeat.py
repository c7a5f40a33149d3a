"""Step ``repeat`` (docs/method.md §10.5): the final stage retrained with seed + 1; stage 0 re-run on a scan."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import SimpleITK as sitk

from nnsam2_utils.data.io import read_csv, read_image, write_csv
from nnsam2_utils.evaluate.repeatability import REPEAT_STAGE, mask_agreement, variation_table
from nnsam2_utils.evaluate.scans import dataset_group, measurements, stage_dsc
from nnsam2_utils.propagate import make_propagator
from nnsam2_utils.propagate.run import rerun_stage0_case
from nnsam2_utils.refine.stages import fit_stage, predict_all, stage_budget, stage_names
from nnsam2_utils.refine.training_set import training_set
from nnsam2_utils.workflow.runlog import captured_output, claim_folder, run_key, step_record
from nnsam2_utils.workflow.session import Run


@dataclass(frozen=True)
class RepeatResult:
    """A second training of the final stage beside the first."""

    name: str  # the stage repeated (nnunet<k>)
    seed: int
    n_training_cases: int
    dsc: pd.DataFrame  # the second training's DSC rows (stage "repeat")
    variation: pd.DataFrame  # per measure and group: change in percent of the group mean
    mask_dsc: pd.Series  # per scan: DSC of the second training's mask against the first's
    stage0_check: dict  # stage 0 re-run on one scan: voxels that differ


def kept_rows(selection: pd.DataFrame, stage: int) -> list[tuple]:
    """The kept (dataset, case[, slice]) of a filter table, sorted, as text."""
    keys = ["dataset", "case", "slice"] if stage == 1 else ["dataset", "case"]
    return sorted(map(tuple, selection.loc[selection["kept"].astype(bool), keys].astype(str).values))


def repeat(run: Run) -> RepeatResult:
    """Train the final stage again on exactly its training set with the next seed; compare measurements and masks."""
    ws = run.workspace
    settings = run.section("refine")
    final = run.profile.refine.stages
    name, _, _ = stage_names(final)
    seed = run.seed + 1
    budget = stage_budget(settings, final, seed=seed)
    claim_folder(
        ws.stage(REPEAT_STAGE), run_key({"repeat_of": final, "seed": seed, **settings}, [ws.stage(name)], step="repeat")
    )
    selection, cases = training_set(ws, run.datasets, final, settings)
    if kept_rows(selection, final) != kept_rows(read_csv(ws.stage(name) / "selection.csv"), final):
        raise RuntimeError(
            f"the filter kept other pseudo-labels than {name}'s first training: not a repeat. "
            f"Re-run the {name} step first."
        )
    parameters = {**settings, "budget": budget.__dict__, "cases": len(cases)}
    log = ws.logs / f"{REPEAT_STAGE}.log"
    with step_record(ws.runlog, "repeat_train", "pooled", parameters), captured_output(log):
        model = fit_stage(ws, final, cases, budget, settings, name=REPEAT_STAGE)
    with step_record(ws.runlog, "repeat_predict", "pooled"), captured_output(log):
        predict_all(model, budget, run.datasets, ws, REPEAT_STAGE)
    dsc = stage_dsc(ws, run.datasets, REPEAT_STAGE)
    write_csv(dsc, ws.stage(REPEAT_STAGE) / "dsc.csv")
    groups = {d: dataset_group(run.manifest(d).modality, run.manifest(d).sequence) for d in run.datasets}
    with step_record(ws.runlog, "repeat_measure", "pooled"):
        variation = variation_table(measurements(ws, run, name), measurements(ws, run, REPEAT_STAGE), groups)
    write_csv(variation, ws.tables / "repeatability.csv")
    rows = []
    for dataset in run.datasets:
        for case in ws.case_ids(dataset):
            first, second = (
                sitk.GetArrayFromImage(read_image(ws.labels(s, dataset, case))) for s in (name, REPEAT_STAGE)
            )
            rows += mask_agreement(dataset, case, first, second)
    mask_dsc = pd.DataFrame(rows).groupby(["dataset", "case"])["dsc"].mean()
    dataset = run.datasets[0]
    case = ws.case_ids(dataset)[-1]
    with step_record(ws.runlog, "repeat_stage0", dataset):
        check = rerun_stage0_case(
            make_propagator(run.section("propagation")), ws, dataset, case, ws.stage(REPEAT_STAGE) / "stage0_scratch"
        )
    return RepeatResult(name, seed, len(cases), dsc, variation, mask_dsc, check)
