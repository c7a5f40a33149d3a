"""A slice viewer of one prepared scan as static HTML: every slice of the region with the outlines of the expert
label and of stages' pseudo-labels, a slider (and the arrow keys) to move through it, each slice's index and
position between the disc levels.

The page is self-contained: each slice is a small base64 PNG of the image with one transparent PNG per outline
layer on top, the script is inline, nothing is fetched, so it works opened from disk (``file://``), inside a book
page or on its own.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from nnsam2_utils.data.io import atomic_path
from nnsam2_utils.evaluate.metrics import dice_per_class
from nnsam2_utils.report.plots import CT_DISPLAY_WINDOW

if TYPE_CHECKING:  # pragma: no cover
    from nnsam2_utils.data.manifest import DatasetManifest
    from nnsam2_utils.workflow.workspace import Workspace

#: Outline colours of the viewer's layers: bright on a grey slice and far from each other.
OUTLINE_COLOURS = {"expert": "#ffd60a", "stage0": "#ff4d6d", "final": "#4cc9f0"}
#: Largest side of a slice in the viewer, in pixels of the embedded PNGs.
VIEW_SIZE = 256
#: Marks a viewer element in the HTML (the book check finds viewers by it).
VIEWER_ATTRIBUTE = "data-nnsam2-viewer"


@dataclass(frozen=True)
class Layer:
    """One outline layer: a label stack (slice, row, column) drawn as the outline of each class."""

    key: str  # expert | stage0 | final (its colour in OUTLINE_COLOURS unless ``colour`` is given)
    name: str  # the legend's words
    labels: np.ndarray
    colour: str = ""

    @property
    def rgb(self) -> tuple[int, int, int]:
        code = (self.colour or OUTLINE_COLOURS[self.key]).lstrip("#")
        return tuple(int(code[i : i + 2], 16) for i in (0, 2, 4))  # type: ignore[return-value]


def outline(labels: np.ndarray) -> np.ndarray:
    """The boundary pixels of a label slice: labelled pixels with a 4-neighbour of another value (the slice's
    edge counts as background)."""
    padded = np.pad(labels, 1, constant_values=0)
    centre = padded[1:-1, 1:-1]
    differs = np.zeros(labels.shape, dtype=bool)
    for rows, cols in ((slice(None, -2), slice(1, -1)), (slice(2, None), slice(1, -1))):
        differs |= padded[rows, cols] != centre
    for rows, cols in ((slice(1, -1), slice(None, -2)), (slice(1, -1), slice(2, None))):
        differs |= padded[rows, cols] != centre
    return (centre > 0) & differs


def display_shape(shape: tuple[int, int], spacing: tuple[float, float], size: int = VIEW_SIZE) -> tuple[int, int]:
    """(rows, columns) of a slice of ``shape`` with pixel ``spacing`` (row, column mm) shown with its true aspect,
    the longer side ``size`` pixels."""
    height, width = shape[0] * spacing[0], shape[1] * spacing[1]
    scale = size / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def resize_labels(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A label slice resized to ``shape`` (rows, columns), nearest neighbour."""
    if labels.shape == shape:
        return labels.astype(np.uint8)
    resized = Image.fromarray(labels.astype(np.uint8)).resize((shape[1], shape[0]), Image.Resampling.NEAREST)
    return np.asarray(resized)


def grey_slices(image: np.ndarray, modality: str = "MRI") -> np.ndarray:
    """The stack as uint8 grey values: CT in the book's soft-tissue window, MRI between the scan's 1st and 99th
    percentile (one window for every slice, so brightness compares across slices)."""
    low, high = CT_DISPLAY_WINDOW if modality == "CT" else np.percentile(image, (1, 99))
    scaled = (np.asarray(image, dtype=np.float64) - low) / max(float(high - low), 1e-6)
    return (np.clip(scaled, 0, 1) * 255).round().astype(np.uint8)


def png_data_uri(image: Image.Image) -> str:
    """An image as a ``data:image/png;base64,…`` URI (optimised PNG)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def outline_png(labels: np.ndarray, rgb: tuple[int, int, int]) -> Image.Image:
    """The outline of a (resized) label slice as a two-colour PNG: transparent, and ``rgb`` on the boundary."""
    image = Image.fromarray(outline(labels).astype(np.uint8), mode="L").convert("P")
    image.putpalette([0, 0, 0, *rgb])
    image.info["transparency"] = 0
    return image


def slice_positions(n_slices: int, discs: Mapping[str, float | None]) -> list[str]:
    """Where each slice of a stack lies between the disc levels: ``L3/L4 disc`` on a disc (within half a slice),
    ``L3/L4–L4/L5`` between two, ``below L5/S1`` past the last. ``discs``: each level's position on the stack
    (0 = the top slice, superior; None: not in the scan)."""
    known = sorted((float(p), level[:2] + "/" + level[2:]) for level, p in discs.items() if p is not None)
    words = []
    for k in range(n_slices):
        on = [name for p, name in known if abs(k - p) < 0.5]
        above = [name for p, name in known if p <= k]
        below = [name for p, name in known if p > k]
        if on:
            words.append(f"{on[0]} disc")
        elif above and below:
            words.append(f"{above[-1]}–{below[0]}")
        elif above:
            words.append(f"below {above[-1]}")
        elif below:
            words.append(f"above {below[0]}")
        else:
            words.append("")
    return words


def slice_notes(layers: Sequence[Layer]) -> list[str]:
    """Per slice, each non-expert layer's DSC with the expert layer (mean over the classes either holds); empty
    when there is no expert layer."""
    expert = next((layer for layer in layers if layer.key == "expert"), None)
    if expert is None:
        return [""] * len(layers[0].labels) if layers else []
    notes = []
    for k in range(len(expert.labels)):
        parts = []
        for layer in layers:
            if layer is expert:
                continue
            values = [v for v in dice_per_class(layer.labels[k], expert.labels[k]).values() if not np.isnan(v)]
            parts.append(f"{layer.name} DSC {np.mean(values):.2f}" if values else f"{layer.name}: no muscle")
        notes.append(" · ".join(parts))
    return notes


VIEWER_CSS = """
.nnsam2-viewer{font:14px/1.4 system-ui,sans-serif;max-width:540px;margin:0.5em 0 1em;outline:none}
.nnsam2-viewer .nnsam2-stack{position:relative;width:100%;background:#000}
.nnsam2-viewer .nnsam2-frame img{position:absolute;left:0;top:0;width:100%;height:100%;image-rendering:pixelated}
.nnsam2-viewer .nnsam2-frame[hidden]{display:none}
.nnsam2-viewer input[type=range]{width:100%;margin:0.4em 0}
.nnsam2-viewer .nnsam2-where{font-weight:600}
.nnsam2-viewer .nnsam2-legend label{margin-right:1em;white-space:nowrap;cursor:pointer}
.nnsam2-viewer .nnsam2-swatch{display:inline-block;width:1.6em;height:0.35em;vertical-align:middle;margin:0 0.3em}
.nnsam2-viewer.hide-expert img[data-layer=expert],.nnsam2-viewer.hide-stage0 img[data-layer=stage0],
.nnsam2-viewer.hide-final img[data-layer=final]{display:none}
"""

#: Sets up every viewer of the page once: the slider and the arrow keys show one frame, the checkboxes hide layers.
VIEWER_JS = """
(function () {
  document.querySelectorAll('[data-nnsam2-viewer]:not([data-ready])').forEach(function (viewer) {
    viewer.setAttribute('data-ready', '1');
    var frames = viewer.querySelectorAll('.nnsam2-frame');
    var slider = viewer.querySelector('input[type=range]');
    var where = viewer.querySelector('.nnsam2-where');
    var note = viewer.querySelector('.nnsam2-note');
    function show(k) {
      k = Math.max(0, Math.min(frames.length - 1, k));
      frames.forEach(function (f, i) { f.hidden = (i !== k); });
      slider.value = k;
      var place = frames[k].dataset.position;
      where.textContent = 'slice ' + k + ' of 0\\u2013' + (frames.length - 1) + (place ? ' \\u00b7 ' + place : '');
      note.textContent = frames[k].dataset.note;
      viewer.dataset.shown = k;
    }
    slider.addEventListener('input', function () { show(parseInt(slider.value, 10)); });
    viewer.addEventListener('keydown', function (event) {
      if (event.target !== viewer) return;  // the slider handles its own keys
      var step = {ArrowUp: -1, ArrowLeft: -1, ArrowDown: 1, ArrowRight: 1}[event.key];
      if (step) { show(parseInt(slider.value, 10) + step); event.preventDefault(); }
    });
    viewer.querySelectorAll('input[data-toggle]').forEach(function (box) {
      box.addEventListener('change', function () {
        viewer.classList.toggle('hide-' + box.dataset.toggle, !box.checked);
      });
    });
    show(parseInt(slider.value, 10));
  });
})();
"""


def viewer_html(
    image: np.ndarray,
    layers: Sequence[Layer],
    title: str,
    positions: Sequence[str] | None = None,
    spacing: tuple[float, float] = (1.0, 1.0),
    modality: str = "MRI",
    size: int = VIEW_SIZE,
    start: int | None = None,
) -> str:
    """The viewer of one scan as an HTML fragment (a ``<div>`` with its style and script), one frame per slice.

    ``image`` and every layer's labels are stacks of the same shape (slice, row, column; superior → inferior);
    ``positions`` the words for each slice's place (:func:`slice_positions`); ``spacing`` the in-plane pixel
    spacing (row, column) in mm; ``start`` the slice shown first (default: the middle one).
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[0] == 0:
        raise ValueError(f"the viewer needs a stack (slice, row, column) with at least one slice; got {image.shape}")
    for layer in layers:
        if layer.labels.shape != image.shape:
            raise ValueError(f"layer '{layer.name}' has shape {layer.labels.shape}, the image {image.shape}")
    n = image.shape[0]
    positions = list(positions) if positions is not None else [""] * n
    if len(positions) != n:
        raise ValueError(f"{len(positions)} slice positions for {n} slices")
    shape = display_shape(image.shape[1:], spacing, size)
    grey = grey_slices(image, modality)
    notes = slice_notes(layers)
    start = n // 2 if start is None else min(max(start, 0), n - 1)
    frames = []
    for k in range(n):
        base = Image.fromarray(grey[k], mode="L").resize((shape[1], shape[0]), Image.Resampling.BILINEAR)
        imgs = [f'<img class="nnsam2-base" alt="slice {k}" src="{png_data_uri(base)}">']
        for layer in layers:
            uri = png_data_uri(outline_png(resize_labels(layer.labels[k], shape), layer.rgb))
            imgs.append(f'<img data-layer="{html.escape(layer.key)}" alt="" src="{uri}">')
        hidden = "" if k == start else " hidden"
        frames.append(
            f'<div class="nnsam2-frame" data-slice="{k}" data-position="{html.escape(positions[k])}" '
            f'data-note="{html.escape(notes[k])}"{hidden}>' + "".join(imgs) + "</div>"
        )
    legend = "".join(
        f'<label><input type="checkbox" data-toggle="{html.escape(layer.key)}" checked>'
        f'<span class="nnsam2-swatch" style="background:{layer.colour or OUTLINE_COLOURS[layer.key]}"></span>'
        f"{html.escape(layer.name)}</label>"
        for layer in layers
    )
    info = json.dumps({"slices": n, "layers": [layer.key for layer in layers]})
    return (
        f"<style>{VIEWER_CSS}</style>"
        f'<div class="nnsam2-viewer" {VIEWER_ATTRIBUTE}=\'{html.escape(info)}\' tabindex="0">'
        f'<div class="nnsam2-title">{html.escape(title)}</div>'
        f'<div class="nnsam2-stack" style="aspect-ratio:{shape[1]}/{shape[0]}">' + "".join(frames) + "</div>"
        f'<input type="range" min="0" max="{n - 1}" step="1" value="{start}" aria-label="slice">'
        f'<div><span class="nnsam2-where">slice {start}</span> <span class="nnsam2-note"></span></div>'
        f'<div class="nnsam2-legend">{legend}</div>'
        '<div class="nnsam2-help">Slider or arrow keys: move through the slices (0 = L3/L4, superior). Image in '
        "radiological view: the patient's right on the left. Tick a box to hide or show its outline.</div>"
        f"</div><script>{VIEWER_JS}</script>"
    )


def standalone_html(fragment: str, title: str) -> str:
    """A viewer fragment as a whole HTML document (opens from disk in any browser)."""
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title></head><body>{fragment}</body></html>\n"
    )


def write_viewer(fragment: str, title: str, path: str | Path) -> Path:
    """Write a viewer as a standalone HTML file, atomically; returns its path."""
    path = Path(path)
    with atomic_path(path, suffix=".html") as tmp:
        Path(tmp).write_text(standalone_html(fragment, title), encoding="utf-8")
    return path


def scan_viewer(
    workspace: Workspace, manifest: DatasetManifest, case: str, stages: Mapping[str, str], size: int = VIEW_SIZE
) -> tuple[str, str]:
    """The viewer of one prepared scan of a run: its expert label (when it has one) and each of ``stages``
    (layer key → stage folder name, e.g. ``{"stage0": "stage0", "final": "nnunet3"}``), with every slice's place
    between the disc levels from the manifest. Returns (HTML fragment, title)."""
    from nnsam2_utils.data.geometry import stack_offsets
    from nnsam2_utils.prepare.model_input import load_stack
    from nnsam2_utils.report.plots import STAGE_LABELS

    dataset = manifest.name
    folder = workspace.prepared(dataset, case)
    image, lps = load_stack(folder)
    layers = []
    if (folder / "label.nii.gz").exists():
        layers.append(Layer("expert", "expert label", load_stack(folder, "label")[0]))
    for key, stage in stages.items():
        labels, _ = load_stack(workspace.labels(stage, dataset, case).parent, case)
        layers.append(Layer(key, STAGE_LABELS.get(stage, stage), labels))
    row = workspace.case_table(dataset).set_index("case").loc[case]
    discs = next(c.discs for c in manifest.cases if c.id == case)
    offsets = stack_offsets(discs, int(row["n_slices"]), int(row["decimation"]))
    spacing = lps.GetSpacing()
    title = f"{dataset}, scan {case}: every slice of the L3/L4–L5/S1 region"
    fragment = viewer_html(
        image,
        layers,
        title,
        slice_positions(len(image), offsets),
        spacing=(spacing[1], spacing[0]),
        modality=manifest.modality,
        size=size,
    )
    return fragment, title
