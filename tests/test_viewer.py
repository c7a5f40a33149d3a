"""The slice viewer (nnsam2_utils.report.viewer) on a prepared scan of the tiny phantom cohort: one frame per slice,
each outline layer drawn from its own label file, disc positions from the manifest, nothing fetched from the net."""

from __future__ import annotations

import base64
import io
import re
from html.parser import HTMLParser

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image
from scipy import ndimage

from nnsam2_utils.data.io import write_image
from nnsam2_utils.data.manifest import load_manifest
from nnsam2_utils.prepare.model_input import load_stack
from nnsam2_utils.report import viewer
from nnsam2_utils.steps.prepare import prepare_manifest
from nnsam2_utils.workflow.workspace import Workspace

DATASET, CASE = "backpain_t2w", None  # the case: the dataset's first


class Frames(HTMLParser):
    """The viewer's frames: per slice, its attributes and the (layer, data URI) of each image."""

    def __init__(self) -> None:
        super().__init__()
        self.frames: list[dict] = []

    def handle_starttag(self, tag, attrs):
        values = dict(attrs)
        if tag == "div" and "nnsam2-frame" in (values.get("class") or ""):
            self.frames.append({"attrs": values, "images": {}})
        elif tag == "img" and self.frames:
            self.frames[-1]["images"][values.get("data-layer") or "base"] = values["src"]


def decode(uri: str) -> Image.Image:
    assert uri.startswith("data:image/png;base64,")
    return Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))


def boundary(labels: np.ndarray) -> np.ndarray:
    """Boundary pixels computed independently of the viewer: a labelled pixel that an erosion of its own class
    (4-neighbourhood, outside = background) removes."""
    edge = np.zeros(labels.shape, bool)
    for cls in np.unique(labels[labels > 0]):
        mask = labels == cls
        edge |= mask & ~ndimage.binary_erosion(mask, ndimage.generate_binary_structure(2, 1), border_value=0)
    return edge


@pytest.fixture(scope="module")
def scan(tiny_cohort, tmp_path_factory):
    """A prepared phantom scan with two made-up stage outputs: stage 0 the expert label shrunk, the final stage
    the expert label moved sideways (so each layer's outline is told apart)."""
    manifest = load_manifest(tiny_cohort / f"{DATASET}.yaml")
    ws = Workspace(tmp_path_factory.mktemp("viewer") / "work")
    cases = prepare_manifest(ws, manifest)
    case = str(cases["case"].iloc[0])
    truth, lps = load_stack(ws.prepared(DATASET, case), "label")
    shrunk = np.where(ndimage.binary_erosion(truth > 0, iterations=3), truth, 0).astype(np.uint8)
    moved = np.roll(truth, 9, axis=2)
    for stage, stack in (("stage0", shrunk), ("nnunet3", moved)):
        image = sitk.GetImageFromArray(np.ascontiguousarray(stack[::-1]))
        image.CopyInformation(lps)
        write_image(image, ws.labels(stage, DATASET, case))
    fragment, title = viewer.scan_viewer(ws, manifest, case, {"stage0": "stage0", "final": "nnunet3"})
    return {"ws": ws, "manifest": manifest, "case": case, "fragment": fragment, "title": title, "truth": truth}


def test_one_frame_per_slice_with_every_layer(scan) -> None:
    parser = Frames()
    parser.feed(scan["fragment"])
    n = len(scan["truth"])
    assert [int(f["attrs"]["data-slice"]) for f in parser.frames] == list(range(n))
    assert all(set(f["images"]) == {"base", "expert", "stage0", "final"} for f in parser.frames)
    shown = [f for f in parser.frames if "hidden" not in f["attrs"]]
    assert len(shown) == 1 and shown[0]["attrs"]["data-slice"] == str(n // 2)
    assert f'max="{n - 1}"' in scan["fragment"]


def test_each_outline_lies_exactly_on_its_own_label_files_boundary(scan) -> None:
    ws, case = scan["ws"], scan["case"]
    parser = Frames()
    parser.feed(scan["fragment"])
    files = {
        "expert": load_stack(ws.prepared(DATASET, case), "label")[0],
        "stage0": load_stack(ws.labels("stage0", DATASET, case).parent, case)[0],
        "final": load_stack(ws.labels("nnunet3", DATASET, case).parent, case)[0],
    }
    checked = 0
    for frame in parser.frames:
        k = int(frame["attrs"]["data-slice"])
        base = decode(frame["images"]["base"])
        for key, stack in files.items():
            layer = np.asarray(decode(frame["images"][key]).convert("RGBA"))
            assert layer.shape[:2] == (base.height, base.width)
            resized = np.asarray(Image.fromarray(stack[k]).resize((base.width, base.height), Image.Resampling.NEAREST))
            drawn = layer[..., 3] > 0
            assert np.array_equal(drawn, boundary(resized)), f"slice {k}, layer {key}"
            colour = tuple(int(viewer.OUTLINE_COLOURS[key][i : i + 2], 16) for i in (1, 3, 5))
            assert {tuple(p) for p in layer[drawn][:, :3]} <= {colour}
            checked += int(drawn.any())
    assert checked >= 2 * len(parser.frames), "the phantom's muscles should show on most slices"
    # the layers differ, so a layer drawn from another layer's file would have failed above
    assert not np.array_equal(boundary(files["expert"][1]), boundary(files["final"][1]))


def test_slices_are_placed_between_the_manifests_disc_levels(scan) -> None:
    parser = Frames()
    parser.feed(scan["fragment"])
    places = [f["attrs"]["data-position"] for f in parser.frames]
    assert places[0] == "L3/L4 disc" and places[-1] == "L5/S1 disc"
    assert "L4/L5 disc" in places
    assert places[1] == "L3/L4–L4/L5"


def test_self_contained_and_small(scan, tmp_path) -> None:
    path = viewer.write_viewer(scan["fragment"], scan["title"], tmp_path / "viewer.html")
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and scan["fragment"] in text
    assert not re.search(r"https?:|(?:src|href)=\"//|url\(", text, re.IGNORECASE), "the viewer must fetch nothing"
    assert not re.search(r"<(?:script|link|img)[^>]+(?:src|href)=\"(?!data:)", text), "only inline resources"
    assert len(text) < 1_500_000


@pytest.mark.parametrize(
    ("discs", "expected"),
    [
        (
            {"L3L4": 0.0, "L4L5": 2.0, "L5S1": 4.0},
            ["L3/L4 disc", "L3/L4–L4/L5", "L4/L5 disc", "L4/L5–L5/S1", "L5/S1 disc"],
        ),
        (
            {"L3L4": 0.0, "L4L5": 2.4, "L5S1": None},
            ["L3/L4 disc", "L3/L4–L4/L5", "L4/L5 disc", "below L4/L5", "below L4/L5"],
        ),
        ({"L3L4": None, "L4L5": None, "L5S1": None}, ["", "", "", "", ""]),
    ],
)
def test_slice_positions(discs, expected) -> None:
    assert viewer.slice_positions(5, discs) == expected


def test_outline_of_a_square_and_bad_stacks() -> None:
    labels = np.zeros((6, 6), np.uint8)
    labels[1:5, 1:5] = 1
    labels[1:5, 3:5] = 2
    edge = viewer.outline(labels)
    assert edge[1:5, 1:5].sum() == 16  # every pixel of two 4×2 halves touches background or the other class
    assert not edge[0].any() and not edge[:, 0].any()
    with pytest.raises(ValueError, match="layer 'x' has shape"):
        viewer.viewer_html(np.zeros((2, 4, 4)), [viewer.Layer("expert", "x", np.zeros((3, 4, 4)))], "t")
    with pytest.raises(ValueError, match="at least one slice"):
        viewer.viewer_html(np.zeros((0, 4, 4)), [], "t")
