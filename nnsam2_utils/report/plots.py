"""Figures of the book: consistent colours per class, stage and dataset; labelled axes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.colors import ListedColormap

CLASS_COLOURS = {1: "#e4572e", 2: "#17bebb"}  # right LPM, left LPM
STAGE_ORDER = [
    "stage0",
    "nnunet1",
    "nnunet2",
    "nnunet3",
    "repeat",
    "stage0_sam2",
    "stage0_litemedsam",
    "supervised",
    "registration",
    "threshold",
]
STAGE_LABELS = {
    "stage0": "Stage 0 (promptable)",
    "nnunet1": "nnU-Net 1",
    "nnunet2": "nnU-Net 2",
    "nnunet3": "nnU-Net 3 (nnsam2)",
    "repeat": "Final stage, 2nd seed",
    "supervised": "Supervised nnU-Net",
    "registration": "Registration",
    "threshold": "Threshold",
    # stage 0 alone with a compared backend (profile: propagation.compare_backends)
    "stage0_litemedsam": "Stage 0 (LiteMedSAM)",
    "stage0_sam2": "Stage 0 (SAM2)",
}
STAGE_COLOURS = {
    "stage0": "#8d99ae",
    "nnunet1": "#4361ee",
    "nnunet2": "#3a0ca3",
    "nnunet3": "#7209b7",
    "repeat": "#b5179e",
    "supervised": "#2b9348",
    "registration": "#f4a261",
    "threshold": "#bc4749",
}


#: Display window of CT slices (HU): soft tissue, wider than the model's [-30, 150] clip.
CT_DISPLAY_WINDOW = (-160.0, 240.0)


def ct_window(modality: str) -> tuple[float, float] | None:
    """The display window of a modality's slices (None: the slice's own 1st–99th percentile)."""
    return CT_DISPLAY_WINDOW if modality == "CT" else None


def label_cmap() -> ListedColormap:
    """Transparent background, then the class colours."""
    return ListedColormap([(0, 0, 0, 0), CLASS_COLOURS[1], CLASS_COLOURS[2]])


def show_slice(
    ax,
    image: np.ndarray,
    label: np.ndarray | None = None,
    title: str = "",
    contour: bool = False,
    window: tuple[float, float] | None = None,
) -> None:
    """One axial slice (radiological view: patient right on the left), label as fill or contour."""
    low, high = window if window else np.percentile(image, (1, 99))
    ax.imshow(image, cmap="gray", vmin=low, vmax=high, interpolation="nearest")
    if label is not None:
        if contour:
            for cls, colour in CLASS_COLOURS.items():
                if (label == cls).any():
                    ax.contour(label == cls, levels=[0.5], colors=[colour], linewidths=1.2)
        else:
            ax.imshow(
                np.ma.masked_equal(label, 0), cmap=label_cmap(), vmin=0, vmax=2, alpha=0.45, interpolation="nearest"
            )
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.text(0.02, 0.5, "R", transform=ax.transAxes, color="w", fontsize=8, va="center")
    ax.text(0.95, 0.5, "L", transform=ax.transAxes, color="w", fontsize=8, va="center")


def save(fig, path: str | Path, dpi: int = 110) -> Path:
    """Save a figure as PNG atomically (the book shows these files)."""
    from nnsam2_utils.data.io import atomic_path

    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
    return path


def bland_altman_axes(
    ax, auto, expert, title: str, unit: str, colour: str = "#4361ee", margin: float | None = None
) -> dict[str, float]:
    """Bland–Altman plot: difference (automated − expert) against the mean, the bias (solid), the 95 % limits of
    agreement (bias ± 1.96 SD, dashed) and, given the TOST ``margin``, the equivalence band ±margin (green), each
    labelled with its value. Returns what it drew: ``bias``, ``loa_low``, ``loa_high``, ``margin`` (NaN if not drawn).
    """
    auto, expert = np.asarray(auto, float), np.asarray(expert, float)
    keep = np.isfinite(auto) & np.isfinite(expert)
    auto, expert = auto[keep], expert[keep]
    mean, diff = (auto + expert) / 2, auto - expert
    ax.scatter(mean, diff, s=14, color=colour, alpha=0.8, zorder=3)
    drawn = {"bias": np.nan, "loa_low": np.nan, "loa_high": np.nan, "margin": np.nan}
    label_at = ax.get_yaxis_transform()  # x in axes fraction, y in data
    if margin is not None and np.isfinite(margin) and margin > 0:
        ax.axhspan(-margin, margin, color="#2b9348", alpha=0.12, linewidth=0, zorder=1)
        for sign in (-1, 1):
            ax.axhline(sign * margin, color="#2b9348", linewidth=0.8, zorder=2)
        ax.text(0.01, -margin, f"equivalence margin ±{margin:.3g}", transform=label_at, fontsize=6.5, color="#2b9348",
                va="bottom", ha="left")  # fmt: skip
        drawn["margin"] = float(margin)
    if len(diff) > 1:
        bias, sd = diff.mean(), diff.std(ddof=1)
        drawn.update(bias=float(bias), loa_low=float(bias - 1.96 * sd), loa_high=float(bias + 1.96 * sd))
        for key, style, name in (("bias", "-", "bias"), ("loa_low", "--", "−1.96 SD"), ("loa_high", "--", "+1.96 SD")):
            ax.axhline(drawn[key], color="0.3", linestyle=style, linewidth=1, zorder=2)
            value = f"{drawn[key]:.3g}".replace("-", "−")  # a typographic minus, as in the label "−1.96 SD"
            ax.text(0.99, drawn[key], f"{name} {value}", transform=label_at, fontsize=6.5, color="0.2",
                    va="bottom", ha="right")  # fmt: skip
    ax.axhline(0, color="0.7", linewidth=0.8)
    ax.set_xlabel(f"mean of automated and expert ({unit})")
    ax.set_ylabel(f"automated − expert ({unit})")
    ax.set_title(title, fontsize=9)
    return drawn


def agreement_scatter_axes(ax, auto, expert, title: str, unit: str, colour: str = "#4361ee") -> None:
    """Automated against expert measurement with the identity line."""
    auto, expert = np.asarray(auto, float), np.asarray(expert, float)
    ax.scatter(expert, auto, s=14, color=colour, alpha=0.8)
    finite = np.concatenate([auto[np.isfinite(auto)], expert[np.isfinite(expert)]])
    if finite.size:
        low, high = finite.min(), finite.max()
        pad = 0.05 * (high - low or 1)
        ax.plot([low - pad, high + pad], [low - pad, high + pad], color="0.5", linewidth=0.8)
    ax.set_xlabel(f"expert ({unit})")
    ax.set_ylabel(f"automated ({unit})")
    ax.set_title(title, fontsize=9)


def model_view(folder: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """A prepared case as the promptable model sees it: the 256² uint8 stack and its label (None without one)."""
    from nnsam2_utils.prepare.model_input import label_to_model, load_model_input, load_stack

    folder = Path(folder)
    frames = load_model_input(folder)
    label = label_to_model(load_stack(folder, "label")[0]) if (folder / "label.nii.gz").exists() else None
    return frames, label


def own_scans_figure(workspace, dataset: str, reference_case: str, annotated: int, cases: list[str]):
    """The user's annotated slice, then each scan's middle slice with its stage-0 pseudo-label."""
    import matplotlib.pyplot as plt

    from nnsam2_utils.prepare.model_input import load_stack

    image, _ = load_stack(workspace.prepared(dataset, reference_case))
    drawn, _ = load_stack(workspace.prepared(dataset, reference_case), "annotation")
    fig, axes = plt.subplots(1, 1 + len(cases), figsize=(3.0 * (1 + len(cases)), 3.2), squeeze=False)
    show_slice(
        axes[0][0], image[annotated], drawn[annotated], f"drawn by the user\n{reference_case}, slice {annotated}"
    )
    for ax, case in zip(axes[0][1:], cases):
        stack, _ = load_stack(workspace.prepared(dataset, case))
        pseudo, _ = load_stack(workspace.stage("stage0", dataset) / "labels", case)
        middle = len(stack) // 2
        show_slice(ax, stack[middle], pseudo[middle], f"stage 0: {case}\nslice {middle}")
    fig.tight_layout()
    return fig
