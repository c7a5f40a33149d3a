"""The figures of the results, refine and agreement pages plot the run's own numbers (issue 21).

Each figure is checked through what it drew (the artists' data) on a small run folder of real label files, a real
nnU-Net training and the project's agreement statistics; no image snapshots.
"""

from __future__ import annotations

import re
import shutil

import matplotlib
import numpy as np
import pandas as pd
import pytest
from conftest import make_image
from matplotlib.collections import PathCollection, PolyCollection

from nnsam2_utils.data.io import write_image
from nnsam2_utils.errors import CheckpointError
from nnsam2_utils.evaluate.scans import stage_dsc
from nnsam2_utils.evaluate.statistics import agreement_table
from nnsam2_utils.report import curves, results
from nnsam2_utils.report.agreement_page import agreement_figure
from nnsam2_utils.report.plots import bland_altman_axes
from nnsam2_utils.workflow.workspace import Workspace

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

SLICES, SIZE = 5, 12  # a scan: 5 slices of 12 × 12, superior → inferior


def scan_truth() -> np.ndarray:
    """An expert label stack (superior → inferior): right LPM (1) and left LPM (2) on every slice."""
    stack = np.zeros((SLICES, SIZE, SIZE), np.uint8)
    stack[:, 3:9, 1:5] = 1
    stack[:, 3:9, 7:11] = 2
    return stack


def shifted(stack: np.ndarray, slices: list[int], by: int) -> np.ndarray:
    """``stack`` with its labels on ``slices`` moved ``by`` rows down (a worse segmentation there)."""
    out = stack.copy()
    for k in slices:
        out[k] = np.roll(stack[k], by, axis=0)
    return out


def write_stack(stack: np.ndarray, path) -> None:
    """A superior → inferior stack as an LPS label file (array z runs inferior → superior)."""
    write_image(make_image(np.ascontiguousarray(stack[::-1])), path)


#: Per stage, how each scan departs from the expert label: (slices, rows shifted). Stage 0 fails at the superior
#: end (L3/L4) and more on one scan; nnU-Net 1 only in the middle; the registration baseline everywhere a little.
DEPARTURES = {
    "stage0": {"a": ([0], 2), "b": ([0, 1], 3), "c": ([0], 1)},
    "nnunet1": {"a": ([2], 1), "b": ([2], 1), "c": ([], 0)},
    "registration": {"a": ([0, 1, 2, 3, 4], 1), "b": ([0, 1, 2, 3, 4], 2), "c": ([1, 3], 1)},
}


@pytest.fixture
def run_folder(tmp_path) -> tuple[Workspace, pd.DataFrame]:
    """Dataset ``d``: three scans with expert labels and each stage's labels; the DSC table computed from them."""
    ws = Workspace(tmp_path)
    ws.prepared("d").mkdir(parents=True)
    pd.DataFrame({"case": ["a", "b", "c"]}).to_csv(ws.prepared("d") / "cases.csv", index=False)
    truth = scan_truth()
    for case in "abc":
        write_stack(truth, ws.prepared("d", case) / "label.nii.gz")
        for stage, departures in DEPARTURES.items():
            write_stack(shifted(truth, *departures[case]), ws.labels(stage, "d", case))
    dsc = pd.concat([stage_dsc(ws, ["d"], stage) for stage in DEPARTURES], ignore_index=True)
    return ws, dsc


def by_hand(truth: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Slice k's DSC, mean over the two classes, counted voxel by voxel."""
    values = []
    for cls in (1, 2):
        a, b = truth[k] == cls, labels[k] == cls
        values.append(2 * (a & b).sum() / (a.sum() + b.sum()))
    return float(np.mean(values))


# ----------------------------------------------------------------------------- per-scan DSC as points


def test_scan_points_draw_every_scan_and_the_mean_on_a_zoomed_axis(run_folder):
    _, dsc = run_folder
    fig = results.scan_points_figure(dsc)
    ax = fig.axes[0]
    assert ax.get_title() == "d"
    expected = dsc.groupby(["stage", "case"])["dsc"].mean()
    shown = ["stage0", "nnunet1", "registration"]  # pipeline first, baselines right of the line
    assert [t.get_text() for t in ax.get_xticklabels()] == ["Stage 0 (promptable)", "nnU-Net 1", "Registration"]
    dots = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert len(dots) == len(shown)
    for x, (stage, collection) in enumerate(zip(shown, dots)):
        offsets = collection.get_offsets()
        assert np.all(np.abs(offsets[:, 0] - x) <= 0.16)  # jittered around the stage's place
        assert sorted(offsets[:, 1]) == pytest.approx(sorted(expected[stage]))
    bars = [c for c in ax.collections if c not in dots and len(c.get_segments()) == 1]
    means = sorted(float(c.get_segments()[0][0][1]) for c in bars)
    assert means == pytest.approx(sorted(expected.groupby("stage").mean()))
    low, high = ax.get_ylim()
    assert 0.5 < low < expected.min() and expected.max() < high < 1.05  # zoomed to the data, not 0–1
    assert [line.get_xdata()[0] for line in ax.get_lines()] == [1.5]  # the line between pipeline and baselines
    plt.close(fig)


def test_scan_points_keep_only_the_asked_stages(run_folder):
    _, dsc = run_folder
    fig = results.scan_points_figure(dsc, ["nnunet1"])
    ax = fig.axes[0]
    (dots,) = [c for c in ax.collections if isinstance(c, PathCollection)]
    values = dsc[dsc.stage == "nnunet1"].groupby("case")["dsc"].mean()
    assert sorted(dots.get_offsets()[:, 1]) == pytest.approx(sorted(values))
    assert ax.get_ylim()[0] > 0.9  # zoomed in on the one stage's scans
    plt.close(fig)


# ----------------------------------------------------------------------------- per-slice DSC along the region


def test_slice_dsc_is_the_overlap_per_slice_with_position_0_at_l3l4(run_folder):
    ws, dsc = run_folder
    slices = results.slice_dsc(ws, dsc, ["stage0", "nnunet1"])
    assert len(slices) == 3 * 2 * SLICES
    truth = scan_truth()
    for row in slices.itertuples():
        labels = shifted(truth, *DEPARTURES[row.stage][row.case])
        assert row.position == pytest.approx(row.slice / (SLICES - 1))
        assert row.dsc == pytest.approx(by_hand(truth, labels, row.slice)), row
    first = slices[(slices.stage == "stage0") & (slices.position == 0)]
    assert (first.dsc < 1).all()  # stage 0's failures were written on the superior slice: position 0
    assert (slices[(slices.stage == "stage0") & (slices.position == 1)].dsc == 1).all()


def test_slice_profiles_summarise_the_scans_and_the_figure_draws_them(run_folder):
    ws, dsc = run_folder
    slices = results.slice_dsc(ws, dsc, ["stage0", "nnunet1"])
    profiles = results.slice_profiles(slices, points=SLICES)  # the grid falls on the slices: no interpolation
    at_top = profiles[(profiles.stage == "stage0") & (profiles.position == 0)].iloc[0]
    values = slices[(slices.stage == "stage0") & (slices.slice == 0)].dsc
    assert (at_top["mean"], at_top["low"], at_top["high"], at_top["scans"]) == pytest.approx(
        (values.mean(), values.min(), values.max(), 3)
    )
    fig = results.slice_profile_figure(profiles, ["stage0", "nnunet1"])
    ax = fig.axes[0]
    lines = [line for line in ax.get_lines() if len(line.get_xdata()) == SLICES]
    for line, stage in zip(lines, ["stage0", "nnunet1"]):
        assert line.get_label() == {"stage0": "Stage 0 (promptable)", "nnunet1": "nnU-Net 1"}[stage]
        assert list(line.get_ydata()) == pytest.approx(list(profiles[profiles.stage == stage]["mean"]))
    assert len([c for c in ax.collections if isinstance(c, PolyCollection)]) == 2  # a shaded range per stage
    plt.close(fig)


def test_slice_profiles_interpolate_scans_with_other_slice_counts():
    slices = pd.DataFrame(
        {
            "dataset": "d",
            "case": ["a", "a", "b", "b", "b"],
            "stage": "stage0",
            "slice": [0, 1, 0, 1, 2],
            "position": [0.0, 1.0, 0.0, 0.5, 1.0],
            "dsc": [0.6, 1.0, 0.8, np.nan, 0.8],  # a slice with neither class: left out, not counted as 0
        }
    )
    profile = results.slice_profiles(slices, points=3).set_index("position")
    assert profile.loc[0.5, "mean"] == pytest.approx((0.8 + 0.8) / 2)
    assert profile.loc[0.5, "low"] == pytest.approx(0.8) and profile.loc[0.0, "low"] == pytest.approx(0.6)


def test_the_caption_says_where_dsc_is_lowest_and_changes_with_the_numbers(run_folder):
    ws, dsc = run_folder
    slices = results.slice_dsc(ws, dsc, ["stage0", "nnunet1"])
    caption = results.slice_caption(slices, ["stage0", "nnunet1"])
    zones = results.slice_zones(slices)
    assert f"Stage 0 (promptable) is lowest at the L3/L4 end ({zones.loc['stage0', 'L3/L4 end']:.3f}" in caption
    assert "nnU-Net 1 is lowest in the middle of the region" in caption
    # the same scans with stage 0 failing at the other end instead: the sentence follows
    flipped = slices.assign(position=lambda t: np.where(t.stage == "stage0", 1 - t.position, t.position))
    assert "Stage 0 (promptable) is lowest at the L5/S1 end" in results.slice_caption(flipped, ["stage0"])
    assert results.slice_caption(slices.iloc[:0], ["stage0"]).startswith("No slice")


# ----------------------------------------------------------------------------- Bland–Altman with the margin


def measurement_table(rng) -> pd.DataFrame:
    """Tidy measurements of two datasets (both LPM per scan): automated about 6 % above the expert."""
    rows = []
    for dataset in ("t1", "ct"):
        for case in range(6):
            for cls in ("1", "2"):
                expert = rng.normal(120.0, 15.0)
                pair = {"auto": expert * 1.06 + rng.normal(0.0, 3.0), "expert": expert}
                for source, value in pair.items():
                    rows.append([dataset, f"c{case}", f"s{case}", cls, "volume_ml", source, value])
    return pd.DataFrame(rows, columns=["dataset", "case", "subject", "class", "measure", "source", "value"])


def test_bland_altman_draws_and_labels_bias_limits_and_the_equivalence_band():
    table = measurement_table(np.random.default_rng(3))
    groups = {"t1": "MRI", "ct": "CT"}
    agreement = agreement_table(table, groups)
    fig = agreement_figure(table, groups, agreement)
    for row, ax in zip(agreement.itertuples(), fig.axes[::2]):  # Bland–Altman panels, one per measure and group
        assert ax.get_title() == f"Volume (mL), {row.group}"
        heights = [line.get_ydata()[0] for line in ax.get_lines()]
        for value in (row.bias, row.loa_low, row.loa_high, row.margin, -row.margin):
            assert any(h == pytest.approx(value) for h in heights), value
        (band,) = ax.patches  # the equivalence band, in data units along y
        corners = band.get_patch_transform().transform(band.get_path().vertices)[:, 1]
        assert (min(corners), max(corners)) == pytest.approx((-row.margin, row.margin))
        texts = " | ".join(t.get_text() for t in ax.texts)
        shown = {key: f"{getattr(row, key):.3g}".replace("-", "−") for key in ("bias", "loa_low", "loa_high")}
        assert f"equivalence margin ±{row.margin:.3g}" in texts and f"bias {shown['bias']}" in texts
        assert f"+1.96 SD {shown['loa_high']}" in texts and f"−1.96 SD {shown['loa_low']}" in texts
    plt.close(fig)


def test_bland_altman_without_a_margin_draws_no_band():
    fig, ax = plt.subplots()
    drawn = bland_altman_axes(ax, [10.0, 12.0, 14.0, 16.0], [11.0, 11.0, 15.0, 14.0], "x", "mL")
    assert drawn["bias"] == pytest.approx(0.25) and np.isnan(drawn["margin"])
    assert not ax.patches and not any("margin" in t.get_text() for t in ax.texts)
    plt.close(fig)


# ----------------------------------------------------------------------------- nnU-Net learning curves


@pytest.fixture(scope="module")
def trained_model(tmp_path_factory):
    """A real nnU-Net v2 trained for three short epochs on blobs; returns (nnU-Net root, final checkpoint)."""
    from test_nnunet import blob_case

    from nnsam2_utils.refine import nnunet
    from nnsam2_utils.refine.stages import DATASET_IDS

    rng = np.random.default_rng(0)
    cases = [blob_case(i, rng) for i in range(4)]
    root = tmp_path_factory.mktemp("curves") / "nnunet"
    budget = nnunet.Budget(epochs=3, iterations_per_epoch=2, val_iterations=1, batch_size=2, target_spacing_mm=2.0)
    folder = nnunet.fit(root, DATASET_IDS["nnunet1"], "curves", cases, budget)
    return root, folder / f"fold_{budget.fold}" / "checkpoint_final.pth"


def logged(folder, name: str) -> list[float]:
    """The values nnU-Net wrote into its text training log for one entry (``train_loss``, ``val_loss``)."""
    text = "".join(p.read_text(encoding="utf-8") for p in sorted(folder.glob("training_log_*.txt")))
    return [float(v) for v in re.findall(rf": {name} (-?\d+\.\d+)", text)]


def test_learning_curves_are_what_nnunet_logged_per_epoch(trained_model):
    root, checkpoint = trained_model
    assert curves.final_checkpoints(root) == {"fold_all": checkpoint}
    table = curves.training_curves(checkpoint, "nnunet1")
    assert list(table.columns) == curves.CURVE_COLUMNS and list(table.epoch) == [0, 1, 2]
    assert list(table.train_loss) == pytest.approx(logged(checkpoint.parent, "train_loss"), abs=1e-4)
    assert list(table.val_loss) == pytest.approx(logged(checkpoint.parent, "val_loss"), abs=1e-4)
    assert table.pseudo_dice.between(0, 1).all() and table.pseudo_dice_ema.between(0, 1).all()
    fig = curves.curves_figure(table)
    loss_ax, dice_ax = fig.axes
    by_label = {line.get_label(): list(line.get_ydata()) for line in loss_ax.get_lines() + dice_ax.get_lines()}
    assert by_label["train"] == pytest.approx(list(table.train_loss))
    assert by_label["validation"] == pytest.approx(list(table.val_loss))
    assert by_label["per epoch"] == pytest.approx(list(table.pseudo_dice))
    plt.close(fig)


def test_several_trainings_are_named_in_the_table_and_the_legend(trained_model, tmp_path):
    root, checkpoint = trained_model
    both = curves.run_curves({"fold0": checkpoint, "fold1": checkpoint})
    assert list(both.model.unique()) == ["fold0", "fold1"] and len(both) == 6
    fig = curves.curves_figure(both)
    assert {"fold0: train", "fold1: validation"} <= {line.get_label() for line in fig.axes[0].get_lines()}
    plt.close(fig)
    # a supervised-like layout: one nnU-Net root per fold, named by its folder
    for fold in (0, 1):
        shutil.copytree(root, tmp_path / "supervised" / f"nnunet_fold{fold}")
    assert list(curves.final_checkpoints(tmp_path / "supervised")) == ["nnunet_fold0", "nnunet_fold1"]


def test_curves_are_read_only_from_a_checkpoint_the_run_recorded(trained_model, tmp_path):
    root, checkpoint = trained_model
    planted = tmp_path / "nnunet" / checkpoint.relative_to(root)
    planted.parent.mkdir(parents=True)
    shutil.copy(checkpoint, planted)  # the same bytes, but no run record beside them
    with pytest.raises(CheckpointError, match="not written by this run's training"):
        curves.training_curves(planted)
