"""The paper beside this run: data, models, training budget and results, the run's side read from its own files."""

from __future__ import annotations

import pandas as pd

#: What the paper reports (arXiv:2510.05555), row by row; docs/method.md gives the sources of each.
PAPER: dict[str, str] = {
    "data": "6 datasets (MRI T1w, T2w, Dixon; CT), 1,219 real scans, 19,439 slices, 762 participants",
    "annotation": "one slice per dataset, by an expert",
    "promptable model": "SAM2.1 Hiera-Large, video propagation",
    "nnU-Net": "3d_fullres (2d where slices are few), three sequential stages, each trained anew",
    "training budget": "nnU-Net's default schedule (1000 epochs × 250 iterations) on a GPU",
    "stage 0 DSC": "not reported per stage in this summary",
    "final DSC": "0.94–0.96 (MRI), 0.92–0.93 (CT)",
    "agreement": "equivalent (TOST P < 0.05) for volume, Dixon fat ratio and CT attenuation; ICC 0.86–1.00",
}

BACKENDS = {"litemedsam": "LiteMedSAM (box-chaining from slice to slice)", "sam2": "SAM2, video propagation"}


def _range(values: pd.Series) -> str:
    """``a–b`` of dataset means (one value: ``a``)."""
    low, high = values.min(), values.max()
    return f"{low:.3f}" if round(low, 3) == round(high, 3) else f"{low:.3f}–{high:.3f}"


def dsc_by_modality(dsc: pd.DataFrame, stage: str, modality: dict[str, str]) -> str:
    """Range of per-dataset mean scan DSC of ``stage`` per modality, e.g. ``0.91–0.93 (MRI), 0.90 (CT)``."""
    rows = dsc.loc[dsc["stage"] == stage]
    if rows.empty:
        return "—"
    means = rows.groupby(["dataset", "case"])["dsc"].mean().groupby("dataset").mean()
    groups = means.groupby(means.index.map(lambda d: modality.get(d, "?")))
    return ", ".join(f"{_range(values)} ({name})" for name, values in groups)


def budget_phrase(refine: dict, precision: str, stages: int = 3) -> str:
    """The run's training budget in words, from the profile's ``refine`` section and its number of stages."""
    epochs = refine.get("epochs") or 1000
    iterations = refine.get("iterations_per_epoch") or 250
    device = "GPU" if refine.get("device") == "cuda" else f"CPU ({precision})"
    # a stage<k> entry overrides the section for that stage (refine.stages.stage_settings; not imported: it pulls torch)
    later = {
        k: (refine.get(f"stage{k}") or {}).get("epochs", refine.get("epochs")) or 1000 for k in range(2, stages + 1)
    }
    if not later or set(later.values()) == {epochs}:
        return f"{epochs} epochs × {iterations} iterations on a {device}"
    each = (
        f"stages 2–{stages} {later[2]} epochs each"
        if len(set(later.values())) == 1
        else ", ".join(f"stage {k} {v} epochs" for k, v in later.items())
    )
    return f"{epochs} epochs × {iterations} iterations on a {device}; {each}"


def agreement_phrase(summary: pd.DataFrame) -> str:
    """How many measure × group comparisons are equivalent, and the ICC range (agreement_summary.csv)."""
    if summary.empty:
        return "—"
    equivalent = summary["verdict"].astype(str).str.startswith("equivalent").sum()
    icc = summary["icc"].astype(float)
    return (
        f"equivalent (TOST P < 0.05) in {equivalent} of {len(summary)} comparisons; ICC {icc.min():.2f}–{icc.max():.2f}"
    )


def paper_vs_run(
    run_facts: dict[str, str], dsc: pd.DataFrame, modality: dict[str, str], final: str, agreement: pd.DataFrame
) -> pd.DataFrame:
    """The comparison table: one row per aspect, the paper's column and this run's."""
    run = {
        **run_facts,
        "stage 0 DSC": dsc_by_modality(dsc, "stage0", modality),
        "final DSC": dsc_by_modality(dsc, final, modality),
        "agreement": agreement_phrase(agreement),
    }
    return pd.DataFrame({"paper": PAPER, "this run": {k: run.get(k, "—") for k in PAPER}}).rename_axis("aspect")


def modalities(run) -> dict[str, str]:
    """Each dataset's modality (MRI / CT) from its manifest."""
    return {d: run.manifest(d).modality for d in run.datasets}


def trained_precision(records: list[dict]) -> str:
    """The precision nnU-Net 1 trained in, from its step record (``fp32`` where none is recorded)."""
    for record in records:
        if record.get("step") == "nnunet1_train":
            return str(record.get("parameters", {}).get("budget", {}).get("precision", "fp32"))
    return "fp32"


def run_facts(run, precision: str) -> dict[str, str]:
    """The run's data, models and budget in words, from its profile, manifests and prepared scans."""
    profile = run.profile
    refine = run.section("refine")
    generated = set(run.generated_datasets)
    kinds = "synthetic" if generated >= set(run.datasets) else ("own" if not generated else "synthetic and own")
    n_scans = sum(len(run.workspace.case_ids(d)) for d in run.datasets)
    kinds_of_scan = ", ".join(sorted({run.manifest(d).sequence for d in run.datasets}))
    return {
        "data": f"{len(run.datasets)} datasets ({kinds_of_scan}), {n_scans} {kinds} scans",
        "annotation": "one slice per dataset (the medoid scan's L3/L4 slice, or the user's own)",
        "promptable model": BACKENDS.get(profile.propagation.backend, profile.propagation.backend),
        "nnU-Net": f"{refine.get('configuration', '2d')}, {profile.refine.stages} sequential stage(s)"
        + (", stages 2–3 warm-started" if refine.get("warm_start") else ", each trained anew"),
        "training budget": budget_phrase(refine, precision, profile.refine.stages),
    }


def run_comparison(run, records: list[dict]) -> pd.DataFrame:
    """The paper-vs-run table of a finished run, from its tables (dsc.csv, agreement_summary.csv) and records."""
    from nnsam2_utils.data.io import read_csv
    from nnsam2_utils.report.results import final_stage

    tables = run.workspace.tables
    dsc = read_csv(tables / "dsc.csv")
    agreement = tables / "agreement_summary.csv"
    return paper_vs_run(
        run_facts(run, trained_precision(records)),
        dsc,
        modalities(run),
        final_stage(dsc),
        read_csv(agreement) if agreement.exists() else pd.DataFrame(columns=["verdict", "icc"]),
    )
