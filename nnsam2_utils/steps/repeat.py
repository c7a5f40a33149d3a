"""Step ``repeat`` (docs/method.md §10.5): the final stage retrained with seed + 1; stage 0 re-run on a scan.

:func:`repeat_train` trains (beside the final stage: it needs only the previous stage); :func:`repeat` compares.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import SimpleITK as sitk

from nnsam2_utils.data.io import read_csv, read_image, read_json, write_csv, write_json
from nnsam2_utils.evaluate.repeatability import REPEAT_STAGE, mask_agreement, variation_table
from nnsam2_utils.evaluate.scans import dataset_group, measurements, stage_dsc
from nnsam2_utils.propagate import make_propagator
from nnsam2_utils.propagate.run import rerun_stage0_case
from nnsam2_utils.refine.stages import fit_stage, predict_all, stage_budget, stage_names
from nnsam2_utils.refine.training_set import training_set
from nnsam2_utils.workflow.runlog import captured_output, claim_folder, read_key, run_key, step_record
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


def _repeat_settings(run: Run) -> tuple[int, str, int, dict]:
    """(final stage, its name, the repeat's seed, the refine settings)."""
    final = run.profile.refine.stages
    return final, stage_names(final)[0], run.seed + 1, run.section("refine")


def repeat_train(run: Run) -> pd.DataFrame:
    """Train the final stage again with the next seed on its training set; predict every scan; re-run stage 0 on one.

    Needs only what the final stage's filter reads (the previous stage's labels), so it runs beside the final
    stage itself. Writes ``repeat/selection.csv``, ``repeat/dsc.csv`` and ``repeat/stage0_check.json``; a
    finished repeat under the same run key is not trained again. Returns the DSC rows.
    """
    ws = run.workspace
    final, _, seed, settings = _repeat_settings(run)
    previous = stage_names(final)[1]
    upstream = [ws.stage(previous)] if final > 1 else [ws.stage(previous, d) for d in run.datasets]
    folder = ws.stage(REPEAT_STAGE)
    claim_folder(folder, run_key({"repeat_of": final, "seed": seed, **settings}, upstream, step="repeat"))
    if all((folder / f).exists() for f in ("dsc.csv", "stage0_check.json", "training.json")):
        return read_csv(folder / "dsc.csv")
    budget = stage_budget(settings, final, seed=seed)
    selection, cases = training_set(ws, run.datasets, final, settings)
    write_csv(selection, folder / "selection.csv")
    parameters = {**settings, "budget": budget.__dict__, "cases": len(cases)}
    log = ws.logs / f"{REPEAT_STAGE}.log"
    with step_record(ws.runlog, "repeat_train", "pooled", parameters, key=read_key(folder)), captured_output(log):
        model = fit_stage(ws, final, cases, budget, settings, name=REPEAT_STAGE)
    with step_record(ws.runlog, "repeat_predict", "pooled"), captured_output(log):
        predict_all(model, budget, run.datasets, ws, REPEAT_STAGE)
    dataset = run.datasets[0]
    case = ws.case_ids(dataset)[-1]
    with step_record(ws.runlog, "repeat_stage0", dataset):
        check = rerun_stage0_case(
            make_propagator(run.section("propagation")), ws, dataset, case, folder / "stage0_scratch"
        )
    write_json(check, folder / "stage0_check.json")
    write_json({"training_cases": len(cases)}, folder / "training.json")
    dsc = stage_dsc(ws, run.datasets, REPEAT_STAGE)
    write_csv(dsc, folder / "dsc.csv")
    return dsc


def repeat(run: Run) -> RepeatResult:
    """The final stage against its second training (:func:`repeat_train`, run first if it has not run).

    Checks that both trained on the same pseudo-labels, then compares measurements and masks.
    """
    ws = run.workspace
    final, name, seed, _ = _repeat_settings(run)
    dsc = repeat_train(run)
    folder = ws.stage(REPEAT_STAGE)
    selection = read_csv(folder / "selection.csv")
    if kept_rows(selection, final) != kept_rows(read_csv(ws.stage(name) / "selection.csv"), final):
        raise RuntimeError(
            f"the filter kept other pseudo-labels than {name}'s first training: not a repeat. "
            f"Re-run the {name} step first."
        )
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
    check = read_json(folder / "stage0_check.json")
    cases = read_json(folder / "training.json")["training_cases"]
    return RepeatResult(name, seed, cases, dsc, variation, mask_dsc, check)
