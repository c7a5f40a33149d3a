"""The method in one figure (landing page): annotated slice → propagation → refinements → measurements.

Drawn with matplotlib on one axes in data coordinates, from a real slice of the run's cohort
and the run's own settings (backend, number of refinement stages), so it always matches
what the run did.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

from nnsam2_utils.report.plots import CLASS_COLOURS, STAGE_COLOURS, label_cmap

if TYPE_CHECKING:  # pragma: no cover
    from nnsam2_utils.data.manifest import DatasetManifest

FILTERS = {
    1: "most confident\nstage-0 slices",
    2: "scans agreeing with\nstage 1, smooth",
    3: "scans agreeing with\nstage 2, smooth",
}
BACKENDS = {"litemedsam": "LiteMedSAM", "sam2": "SAM2"}


def windowed(image: np.ndarray, window: tuple[float, float] | None = None) -> np.ndarray:
    """Scale a slice to [0, 1] with a window (default: 1st–99th percentile)."""
    low, high = window if window else np.percentile(image, (1, 99))
    return np.clip((np.asarray(image, dtype=float) - low) / max(high - low, 1e-6), 0, 1)


def annotated_level_slice(manifest: DatasetManifest, case_index: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
    """A scan's slice at the L3/L4 disc (the level of the one annotated slice), image and classes 0/1/2."""
    import SimpleITK as sitk

    from nnsam2_utils.data.geometry import canonical, region_slices, stored_discs
    from nnsam2_utils.data.io import read_image

    case = manifest.cases[case_index]
    image = read_image(manifest.resolve(case.image))
    discs = stored_discs(case.discs, image)
    _, top = region_slices(image, discs.L3L4, discs.L5S1)  # (inferior, superior) in LPS: L3/L4 is the superior end
    pixels = sitk.GetArrayFromImage(canonical(image))[top]
    if not case.label:
        return pixels, None
    raw = sitk.GetArrayFromImage(canonical(read_image(manifest.resolve(case.label))))[top]
    classes = np.zeros(raw.shape, dtype=np.uint8)
    for value, cls in manifest.label_map.items():
        classes[raw == int(value)] = cls
    return pixels, classes


def stage_filter(stage: int) -> str:
    """What trains nnU-Net ``stage`` (docs/method.md §5)."""
    return FILTERS.get(stage, f"scans agreeing with\nstage {stage - 1}, smooth")


def _arrow(ax, x0: float, x1: float, y: float) -> None:
    ax.add_patch(FancyArrowPatch((x0, y), (x1, y), arrowstyle="-|>", mutation_scale=16, lw=1.6, color="#333333"))


def _box(ax, x: float, y: float, w: float, h: float, text: str, colour: str, fontsize: float = 8.5) -> None:
    ax.add_patch(
        FancyBboxPatch(
            (x, y), w, h, boxstyle="round,pad=0.04,rounding_size=0.12", fc=colour, ec="#333333", lw=1.0, alpha=0.9
        )
    )
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=fontsize, color="white", weight="bold")


def _slice(
    ax, image: np.ndarray, label: np.ndarray | None, extent: tuple[float, float, float, float], contour: bool = False
) -> None:
    ax.imshow(image, cmap="gray", vmin=0, vmax=1, extent=extent, interpolation="nearest", zorder=2)
    if label is None:
        return
    if contour:
        rows, cols = label.shape
        x = np.linspace(extent[0], extent[1], cols)
        y = np.linspace(extent[3], extent[2], rows)
        for cls, colour in CLASS_COLOURS.items():
            if (label == cls).any():
                ax.contour(x, y, (label == cls).astype(float), levels=[0.5], colors=[colour], linewidths=1.0, zorder=3)
    else:
        ax.imshow(
            np.ma.masked_equal(label, 0),
            cmap=label_cmap(),
            vmin=0,
            vmax=2,
            alpha=0.55,
            extent=extent,
            interpolation="nearest",
            zorder=3,
        )


def method_figure(
    image: np.ndarray,
    label: np.ndarray | None,
    n_stages: int = 3,
    backend: str = "litemedsam",
    window: tuple[float, float] | None = None,
    caption: str = "",
) -> plt.Figure:
    """The method schematic drawn around one real slice (``image``, ``label`` with classes 0/1/2).

    ``n_stages`` refinement boxes are drawn (the run's ``refine.stages``); ``backend`` names the
    promptable model; ``caption`` (e.g. the dataset and scan) is written under the slice.
    """
    if image.ndim != 2:
        raise ValueError(f"method_figure needs one 2-D slice, got an array of shape {image.shape}")
    if label is not None and label.shape != image.shape:
        raise ValueError(f"label shape {label.shape} differs from image shape {image.shape}")
    if n_stages < 1:
        raise ValueError(f"n_stages must be at least 1, got {n_stages}")
    shown = windowed(image, window)
    box_w, gap = 1.35, 0.35
    refine_w = n_stages * box_w + (n_stages - 1) * gap
    width = 2.6 + 0.9 + 3.0 + 0.9 + refine_w + 0.9 + 2.4 + 0.2
    fig, ax = plt.subplots(figsize=(1.0 * width, 3.9))
    ax.set_xlim(0, width)
    ax.set_ylim(-0.35, 3.55)
    ax.set_aspect("equal")
    ax.axis("off")
    top = 3.15

    # 1. the one annotated slice
    _slice(ax, shown, label, (0.0, 2.6, 0.25, 2.85))
    ax.text(1.3, top, "1. One annotated slice\nper dataset", ha="center", va="bottom", fontsize=9.5, weight="bold")
    if caption:
        ax.text(1.3, 0.1, caption, ha="center", va="top", fontsize=7.5, color="#555555")
    x = 2.6
    _arrow(ax, x + 0.1, x + 0.8, 1.55)

    # 2. propagation through the scan, with the model's confidence
    x0 = x + 0.9
    for i in range(4, -1, -1):
        dx, dy = 0.16 * i, -0.16 * i
        extent = (x0 + dx + 0.3, x0 + dx + 2.4, 0.75 + dy + 0.3, 2.85 + dy)
        _slice(ax, shown, label if i == 0 else None, extent, contour=True)
        ax.add_patch(
            plt.Rectangle(
                (extent[0], extent[2]),
                extent[1] - extent[0],
                extent[3] - extent[2],
                fill=False,
                ec="#333333",
                lw=0.8,
                zorder=4,
            )
        )
    ax.text(
        x0 + 1.5,
        top,
        f"2. Propagation ({BACKENDS.get(backend, backend)})\nto every slice of every scan",
        ha="center",
        va="bottom",
        fontsize=9.5,
        weight="bold",
    )
    ax.text(x0 + 1.5, 0.1, "each mask with its predicted IoU", ha="center", va="top", fontsize=7.5, color="#555555")
    x = x0 + 3.0
    _arrow(ax, x + 0.1, x + 0.8, 1.55)

    # 3. the sequential nnU-Nets
    x0 = x + 0.9
    for stage in range(1, n_stages + 1):
        bx = x0 + (stage - 1) * (box_w + gap)
        colour = STAGE_COLOURS.get(f"nnunet{stage}", STAGE_COLOURS["nnunet3"])
        _box(ax, bx, 1.55, box_w, 0.95, f"nnU-Net {stage}", colour, fontsize=9)
        ax.text(bx + box_w / 2, 1.4, stage_filter(stage), ha="center", va="top", fontsize=7.2, color="#333333")
        if stage > 1:
            _arrow(ax, bx - gap + 0.02, bx - 0.02, 2.02)
    plural = "s" if n_stages > 1 else ""
    ax.text(
        x0 + refine_w / 2,
        top,
        f"3. {n_stages} refinement{plural}: nnU-Net v2\non pooled pseudo-labels",
        ha="center",
        va="bottom",
        fontsize=9.5,
        weight="bold",
    )
    x = x0 + refine_w
    _arrow(ax, x + 0.1, x + 0.8, 2.02)

    # 4. what is measured
    x0 = x + 0.9
    _box(
        ax,
        x0,
        0.55,
        2.4,
        2.3,
        "DSC vs expert\n\nvolume (mL)\nDixon fat ratio\nCT attenuation (HU)\n\nTOST · ICC ·\nBland–Altman",
        "#2b9348",
        fontsize=8.5,
    )
    ax.text(x0 + 1.2, top, "4. Measurements\nand agreement", ha="center", va="bottom", fontsize=9.5, weight="bold")
    fig.tight_layout()
    return fig
