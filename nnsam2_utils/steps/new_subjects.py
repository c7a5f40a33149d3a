"""Step ``new_subjects`` (docs/method.md §13.1): the final nnU-Net on subjects the run never saw.

The book's DSC is measured on the scans whose pseudo-labels trained the nnU-Nets. This step draws the run's generated
datasets again with the next seed (other subjects, the same acquisitions, exact truth), segments ``NEW_SCANS`` of
them per dataset with :func:`nnsam2_utils.apply.predict.predict` (what ``nnsam2 predict`` runs; the region L3/L4–L5/S1
as its slices) and scores them as the run scores its own. A run of the user's own data alone draws nothing: its
table is empty. Writes ``work/<profile>/new_subjects/``: ``data/`` (the draw), ``predicted/<dataset>/<case>/``
(predict's outputs) and ``dsc.csv``.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pandas as pd

from nnsam2_utils.data.io import read_csv, write_csv
from nnsam2_utils.data.manifest import DatasetManifest, load_manifest
from nnsam2_utils.evaluate.new_subjects import COLUMNS, new_cases, region_slices, scan_rows
from nnsam2_utils.workflow.runlog import claim_folder, read_key, run_key, step_record
from nnsam2_utils.workflow.session import Run

log = logging.getLogger(__name__)

#: new scans per dataset (each another subject)
NEW_SCANS = 2
#: the draw's seed is the run's plus this: other subjects than the run's own (seed + 0)
SEED_OFFSET = 1


def draw(folder: Path, size: str, seed: int, datasets: list[str], scans: int) -> list[DatasetManifest]:
    """The generated datasets drawn again with ``seed``: ``scans`` subjects each (a longitudinal dataset keeps its
    time points); files already written by an interrupted draw are kept when unchanged."""
    from nnsam2_utils.data.synthetic.cohort import generate_dataset
    from nnsam2_utils.data.synthetic.specs import SIZES

    spec = dataclasses.replace(SIZES[size], n_scans=scans, n_bedrest_subjects=scans)
    return [load_manifest(generate_dataset(folder, name, spec, seed, size)) for name in datasets]


def segment_and_score(run: Run, manifest: DatasetManifest, scans: int, folder: Path) -> list[dict]:
    """``predict`` each new scan of ``manifest`` with the run's final model (skipped when its outputs are all
    written) and its DSC rows against the truth."""
    from nnsam2_utils.apply.outputs import PROVENANCE
    from nnsam2_utils.apply.predict import predict

    rows = []
    cases = new_cases(manifest, scans)
    for case in cases:
        out = folder / manifest.name / case.id
        labels = out / f"{case.id}_lpm.nii.gz"
        if not (out / PROVENANCE).exists():  # written last by predict: a scan interrupted mid-way is predicted again
            image = manifest.resolve(case.image)
            predict([image], out, run.name, slices=region_slices(case), progress=False, force=True,
                     work_dir=run.workspace.root)  # fmt: skip
        rows += scan_rows(manifest, case, labels)
    log.info("%s: %d new scans segmented and scored", manifest.name, len(cases))
    return rows


def new_subjects(run: Run, scans: int = NEW_SCANS) -> pd.DataFrame:
    """DSC per new scan and class of the run's final nnU-Net on a fresh draw of its generated datasets (columns
    :data:`~nnsam2_utils.evaluate.new_subjects.COLUMNS`); resumed, or read back when already done."""
    ws = run.workspace
    folder = ws.root / "new_subjects"
    final = f"nnunet{run.profile.refine.stages}"
    seed = run.seed + SEED_OFFSET
    parameters = {"seed": seed, "size": run.profile.cohort.size, "datasets": run.generated_datasets, "scans": scans}
    claim_folder(folder, run_key(parameters, [ws.stage(final)], step="new_subjects"))
    table_path = folder / "dsc.csv"
    if table_path.exists():
        return read_csv(table_path)
    rows: list[dict] = []
    with step_record(ws.runlog, "new_subjects", "pooled", parameters, key=read_key(folder)):
        manifests = draw(folder / "data", run.profile.cohort.size, seed, run.generated_datasets, scans)
        for manifest in manifests:
            rows += segment_and_score(run, manifest, scans, folder / "predicted")
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    write_csv(table, table_path)
    return table
