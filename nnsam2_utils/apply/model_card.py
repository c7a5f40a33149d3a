"""The model card of an exported nnU-Net (docs/method.md §13): what it segments, how to run it with nnU-Net's own
tools, what it was trained on (datasets, annotated slices, training cases), its DSC per dataset, the data
licences, the seed and budget, and the SHA-256 of its checkpoint — all read from the run's own files."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from nnsam2_utils.apply.model import TrainedModel
from nnsam2_utils.data.io import read_csv, read_json, sha256
from nnsam2_utils.errors import Nnsam2Error
from nnsam2_utils.refine.nnunet import PLANS, TRAINER
from nnsam2_utils.refine.stages import stage_settings
from nnsam2_utils.report.provenance import markdown_table
from nnsam2_utils.workflow.session import Run, own_manifests

#: Where the trainer file goes inside the export (beside the model folder, under the dataset folder).
TRAINER_FOLDER = "nnsam2_trainer"
TRAINER_FILE = "nnsam2_trainer.py"


def trainer_source() -> Path:
    """The file that defines ``nnUNetTrainer_nnsam2`` (nnU-Net imports it by path; absolute imports only)."""
    from nnsam2_utils.refine import trainers

    return Path(trainers.__file__).parent / TRAINER_FILE


def run_of(model: TrainedModel) -> Run:
    """The run a model belongs to, without creating anything in its work folder."""
    return Run(model.profile, model.workspace, own_manifests(model.profile))


def dataset_table(run: Run) -> pd.DataFrame:
    """One row per dataset of the run: modality, sequence, scans, expert labels, licence, citation."""
    rows = []
    for name in run.datasets:
        try:
            manifest = run.manifest(name)
        except Nnsam2Error:
            rows.append({"dataset": name, "modality": "?", "licence": "manifest not found"})
            continue
        rows.append(
            {
                "dataset": name,
                "modality": manifest.modality,
                "sequence": manifest.sequence,
                "scans": len(manifest.cases),
                "expert labels": sum(case.label is not None for case in manifest.cases),
                "licence": manifest.source.licence or "not stated in the manifest",
                "citation": manifest.source.citation or "",
            }
        )
    return pd.DataFrame(rows)


def optional_table(path: Path) -> pd.DataFrame | None:
    """A table of the run, or None when that step has not written it."""
    return read_csv(path) if path.is_file() else None


def dsc_per_dataset(dsc: pd.DataFrame, stage: str) -> pd.DataFrame:
    """Per dataset: mean ± SD over scans of the scan's mean class DSC for ``stage``, and the number of scans."""
    per_scan = dsc[dsc["stage"] == stage].groupby(["dataset", "case"], as_index=False)["dsc"].mean()
    summary = per_scan.groupby("dataset")["dsc"].agg(["mean", "std", "count"]).reset_index()
    return pd.DataFrame(
        {
            "dataset": summary["dataset"],
            "DSC (mean ± SD over scans)": [f"{m:.3f} ± {s:.3f}" for m, s in zip(summary["mean"], summary["std"])],
            "scans": summary["count"],
        }
    )


def kept_per_dataset(selection: pd.DataFrame) -> pd.DataFrame:
    """How many training cases (stage 1: slices; stages 2–3: scans) the stage's filter kept per dataset."""
    kept = selection[selection["kept"].astype(str).str.lower() == "true"]
    unit = "slices" if "slice" in selection.columns else "scans"
    return kept.groupby("dataset").size().rename(f"{unit} kept for training").reset_index()


def usage(model: TrainedModel, zip_name: str) -> str:
    """How to install and run the exported model with nnU-Net's own commands."""
    dataset = model.dataset_folder.name
    return f"""```bash
export nnUNet_results=/path/to/nnUNet_results        # any folder
nnUNetv2_install_pretrained_model_from_zip {zip_name}
export nnUNet_extTrainer=$nnUNet_results/{dataset}/{TRAINER_FOLDER}
nnUNetv2_predict -i IN -o OUT -d {model.dataset_id} -c {model.budget.configuration} -f {model.budget.fold} \\
    -tr {TRAINER} -p {PLANS} --disable_tta -device cpu          # or -device cuda
```

nnU-Net finds the trainer class `{TRAINER}` through `nnUNet_extTrainer` (a folder holding
`{TRAINER_FILE}`); instead, copy `{dataset}/{TRAINER_FOLDER}/{TRAINER_FILE}` into the
`nnunetv2/training/nnUNetTrainer/` folder of your nnU-Net installation. Prediction needs only the class
(its network is nnU-Net's own); it never mirrors (right and left are different classes), and
`--disable_tta` says so to nnU-Net.

**Prepare the inputs as nnsam2 does.** One channel per scan, named `<scan>_0000.nii.gz` in `IN`,
**reoriented to LPS** (e.g. `SimpleITK.DICOMOrient(image, "LPS")`): nnU-Net does not reorient, and the
network learned right from left on LPS arrays. MRI as stored, CT in Hounsfield units; nnU-Net z-scores
each image. nnsam2 then keeps each class's largest connected component and fills its holes
(`nnsam2 predict` does all of this, and writes the labels back on each scan's own grid)."""


def model_card(model: TrainedModel, zip_name: str) -> str:
    """The model card (Markdown) of an exported model."""
    run, ws = run_of(model), model.workspace
    datasets = dataset_table(run)
    annotated = optional_table(ws.tables / "annotated_slices.csv")
    dsc = optional_table(ws.tables / "dsc.csv")
    selection = optional_table(ws.stage(model.stage) / "selection.csv")
    delivered = optional_table(ws.tables / "delivered.csv")
    dataset_json = read_json(model.folder / "dataset.json")
    synthetic = bool(run.generated_datasets)
    settings = stage_settings(model.profile.section("refine"), int(model.stage.removeprefix("nnunet")))
    parts = [
        f"# Model card: nnsam2 {model.stage}, run profile `{model.profile.profile}`",
        "",
        f"An nnU-Net v2 model ({model.budget.configuration}, fold `{model.budget.fold}`, one input channel) that "
        "segments the lumbar paraspinal muscles on axial MRI and CT: label 1 the right, label 2 the left erector "
        "spinae + multifidus, 0 background. nnsam2 trained it from **one annotated slice per dataset**: a promptable "
        "model propagated each slice through its dataset's scans, and nnU-Nets were trained on the filtered "
        f"pseudo-labels, pooled across datasets, in {model.profile.refine.stages} stage(s) one after the other; "
        f"this is `{model.stage}`.",
    ]
    if synthetic:
        parts += [
            "",
            "> **Trained on the synthetic demo cohort** (phantoms generated in code): it shows the method and the "
            "tools, and is not meant for real scans.",
        ]
    parts += [
        "",
        "## Files",
        "",
        markdown_table(
            pd.DataFrame(
                [
                    {
                        "file": f"{model.dataset_folder.name}/{model.folder.name}/fold_{model.budget.fold}/"
                        f"{model.checkpoint.name}",
                        "SHA-256": model.sha256,
                    },
                    {
                        "file": f"{model.dataset_folder.name}/{TRAINER_FOLDER}/{TRAINER_FILE}",
                        "SHA-256": sha256(trainer_source()),
                    },
                ]
            )
        ),
        "",
        "The checkpoint's SHA-256 is the one recorded when it was trained (`checkpoint_final.pth.sha256` beside it).",
        "",
        "## Run it with nnU-Net alone",
        "",
        usage(model, zip_name),
        "",
        "## What it was trained on",
        "",
        f"Run profile `{model.profile.profile}`, seed {model.profile.seed}; {dataset_json.get('numTraining', '?')} "
        "nnU-Net training cases.",
        "",
        markdown_table(datasets),
    ]
    if selection is not None and "kept" in selection.columns:
        parts += [
            "",
            f"Training cases kept by the {model.stage} filter:",
            "",
            markdown_table(kept_per_dataset(selection)),
        ]
    if annotated is not None:
        parts += ["", "The one annotated slice of each dataset:", "", markdown_table(annotated)]
    else:
        parts += ["", "(No `tables/annotated_slices.csv` in this run: the annotated slices are not listed.)"]
    parts += [
        "",
        f"Training budget and filters (run profile, section `refine`, with the `stage{model.stage[-1]}` entries):",
        "",
        markdown_table(pd.DataFrame({"key": list(settings), "value": [str(v) for v in settings.values()]})),
    ]
    if settings.get("warm_start") and model.stage != "nnunet1":
        parts += [
            "",
            "With `warm_start` this stage began from the previous stage's final weights (and so on back to "
            "nnunet1, trained from random weights with the section's own budget); the budget above is its own.",
        ]
    parts += ["", "## DSC per dataset", ""]
    if dsc is not None and (dsc["stage"] == model.stage).any():
        parts += [
            "Against the expert labels of the run's own scans (the scans whose pseudo-labels trained it):",
            "",
            markdown_table(dsc_per_dataset(dsc, model.stage)),
        ]
    else:
        parts += ["No DSC for this stage in this run (no `tables/dsc.csv`, or no expert labels)."]
    if delivered is not None:
        parts += [
            "",
            "The stage the run delivered per dataset (chosen without expert labels):",
            "",
            markdown_table(delivered[["dataset", "delivered"]]),
        ]
    parts += [
        "",
        "## Data licences",
        "",
        "Using these weights is subject to the licences of the data they were trained on:",
        "",
        *[f"- {row.dataset}: {row.licence}" for row in datasets.itertuples()],
        "",
    ]
    return "\n".join(parts)
