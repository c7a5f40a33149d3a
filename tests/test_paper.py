"""The paper-vs-run table: the run's column is computed from its own numbers."""

from __future__ import annotations

import pandas as pd

from nnsam2_utils.report import paper


def dsc_rows(values: dict[tuple[str, str], list[float]]) -> pd.DataFrame:
    """(dataset, stage) → per-scan DSC (two classes each, equal)."""
    rows = []
    for (dataset, stage), scans in values.items():
        for i, value in enumerate(scans):
            rows += [{"dataset": dataset, "case": f"c{i}", "class": c, "stage": stage, "dsc": value} for c in (1, 2)]
    return pd.DataFrame(rows)


DSC = dsc_rows(
    {
        ("t1", "stage0"): [0.6, 0.8],
        ("t1", "nnunet3"): [0.90, 0.94],
        ("t2", "nnunet3"): [0.95, 0.95],
        ("ct", "stage0"): [0.5, 0.7],
        ("ct", "nnunet3"): [0.88, 0.90],
    }
)
MODALITY = {"t1": "MRI", "t2": "MRI", "ct": "CT"}


def test_dsc_ranges_per_modality_come_from_the_dataset_means():
    # t1 mean 0.92, t2 0.95 → 0.920–0.950 (MRI); ct 0.89 alone → 0.890
    assert paper.dsc_by_modality(DSC, "nnunet3", MODALITY) == "0.890 (CT), 0.920–0.950 (MRI)"
    assert paper.dsc_by_modality(DSC, "stage0", MODALITY) == "0.600 (CT), 0.700 (MRI)"
    assert paper.dsc_by_modality(DSC, "nnunet2", MODALITY) == "—"


def test_agreement_and_budget_phrases():
    summary = pd.DataFrame(
        {"verdict": ["equivalent within ±10 %", "not equivalent within ±10 %", "equivalent"], "icc": [0.9, -0.2, 0.5]}
    )
    assert paper.agreement_phrase(summary) == "equivalent (TOST P < 0.05) in 2 of 3 comparisons; ICC -0.20–0.90"
    refine = {
        "epochs": 25,
        "iterations_per_epoch": 30,
        "device": "cpu",
        "stage2": {"epochs": 4},
        "stage3": {"epochs": 4},
    }
    assert paper.budget_phrase(refine, "bf16") == "25 epochs × 30 iterations on a CPU (bf16); stages 2–3 4 epochs each"
    # stage 3 without an entry of its own trains the section's 25 epochs
    only_2 = {**refine, "stage3": None}
    assert paper.budget_phrase(only_2, "bf16").endswith("; stage 2 4 epochs, stage 3 25 epochs")
    assert paper.budget_phrase(refine, "bf16", stages=1) == "25 epochs × 30 iterations on a CPU (bf16)"
    assert paper.budget_phrase({"device": "cuda"}, "fp32") == "1000 epochs × 250 iterations on a GPU"


def test_the_table_puts_the_run_beside_every_paper_row():
    facts = {"data": "2 datasets", "training budget": "short"}
    table = paper.paper_vs_run(facts, DSC, MODALITY, "nnunet3", pd.DataFrame(columns=["verdict", "icc"]))
    assert list(table.index) == list(paper.PAPER)
    assert table.loc["final DSC", "this run"] == "0.890 (CT), 0.920–0.950 (MRI)"
    assert table.loc["final DSC", "paper"] == paper.PAPER["final DSC"]
    assert table.loc["data", "this run"] == "2 datasets" and table.loc["promptable model", "this run"] == "—"
    assert table.loc["agreement", "this run"] == "—"


def test_the_precision_is_read_from_nnunet1s_record():
    records = [{"step": "stage0"}, {"step": "nnunet1_train", "parameters": {"budget": {"precision": "bf16"}}}]
    assert paper.trained_precision(records) == "bf16"
    assert paper.trained_precision(records[:1]) == "fp32"
