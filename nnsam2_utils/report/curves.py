"""nnU-Net learning curves of a run's trainings: train and validation loss and pseudo-Dice per epoch, read from the
training log each final checkpoint carries (through the verified loader, never a bare ``torch.load``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from nnsam2_utils.errors import CheckpointError

CURVE_COLUMNS = ["model", "epoch", "train_loss", "val_loss", "pseudo_dice", "pseudo_dice_ema"]


def final_checkpoints(root: str | Path) -> dict[str, Path]:
    """Every final checkpoint under a folder holding nnU-Net roots (``<root>/…/results/<Dataset>/<model>/<fold>/``),
    named by the folders between ``root`` and ``results`` (``nnunet_fold0``), or by the fold where none is."""
    root = Path(root)
    found = {}
    for checkpoint in sorted(root.glob("**/results/*/*/fold_*/checkpoint_final.pth")):
        parts = checkpoint.relative_to(root).parts
        found["/".join(parts[: parts.index("results")]) or parts[-2]] = checkpoint
    return found


def training_curves(checkpoint: str | Path, model: str = "") -> pd.DataFrame:
    """One training's curves, one row per epoch (``CURVE_COLUMNS``): the losses nnU-Net logged, the mean foreground
    pseudo-Dice of each epoch's validation batches, and its exponential moving average (what nnU-Net plots).

    Read by :func:`nnsam2_utils.refine.checkpoint.read_checkpoint`: only a checkpoint this run's training recorded,
    as plain data (a CheckpointError names any other)."""
    from nnsam2_utils.refine.checkpoint import read_checkpoint

    log = read_checkpoint(checkpoint).get("logging")
    keys = {"train_losses": "train_loss", "val_losses": "val_loss", "mean_fg_dice": "pseudo_dice"}
    if not isinstance(log, dict) or any(key not in log for key in keys):
        raise CheckpointError(
            f"{checkpoint}: holds no nnU-Net training log (train_losses, val_losses, mean_fg_dice); it was not "
            "written by nnU-Net v2's trainer. Retrain the stage (delete its nnunet folder)."
        )
    epochs = min(len(log[key]) for key in keys)  # a log saved mid-epoch can be one entry longer in some lists
    table = pd.DataFrame({column: np.asarray(log[key][:epochs], float) for key, column in keys.items()})
    ema = log.get("ema_fg_dice", [])
    table["pseudo_dice_ema"] = np.asarray(ema[:epochs], float) if len(ema) >= epochs else np.nan
    table.insert(0, "epoch", np.arange(epochs))
    table.insert(0, "model", model)
    return table[CURVE_COLUMNS]


def run_curves(checkpoints: dict[str, Path]) -> pd.DataFrame:
    """The curves of several trainings (name → final checkpoint) in one table."""
    frames = [training_curves(path, name) for name, path in checkpoints.items()]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=CURVE_COLUMNS)


def curves_figure(curves: pd.DataFrame):
    """Loss per epoch (left: train solid, validation dashed) and pseudo-Dice per epoch with nnU-Net's moving average
    (right, dotted); a colour per model, named in the legends when there are several."""
    import matplotlib.pyplot as plt

    fig, (loss_ax, dice_ax) = plt.subplots(1, 2, figsize=(8.0, 3.0))
    colours = plt.get_cmap("tab10")
    several = curves["model"].nunique() > 1
    for i, (model, part) in enumerate(curves.groupby("model", sort=False)):
        colour, name = colours(i % 10), f"{model}: " if several else ""
        loss_ax.plot(part["epoch"], part["train_loss"], marker="o", ms=3, color=colour, label=f"{name}train")
        loss_ax.plot(
            part["epoch"], part["val_loss"], marker="o", ms=3, ls="--", color=colour, label=f"{name}validation"
        )
        dice_ax.plot(part["epoch"], part["pseudo_dice"], marker="o", ms=3, color=colour, label=f"{name}per epoch")
        dice_ax.plot(part["epoch"], part["pseudo_dice_ema"], ls=":", color=colour, label=f"{name}moving average")
    loss_ax.set_ylabel("loss (lower is better)")
    dice_ax.set_ylabel("pseudo-Dice (validation batches)")
    for ax in (loss_ax, dice_ax):
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend(frameon=False, fontsize=7)
    fig.tight_layout()
    return fig
