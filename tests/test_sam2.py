"""SAM2 propagation against the real sam2 package (hiera-tiny, RANDOM weights, 128-px model).

Random weights only test the plumbing: frame feeding, prompting, the captured confidence,
the overlap rule and the error messages. Model quality is not tested here.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import numpy as np
import pytest

# sam2 is a pinned dependency (pyproject.toml): if it stops importing, these tests fail, never skip
import sam2  # noqa: E402, F401

from nnsam2_utils.data.checkpoints import verify_checkpoint  # noqa: E402
from nnsam2_utils.errors import CheckpointError  # noqa: E402
from nnsam2_utils.propagate.base import CONFIDENCE_COLUMNS, Propagator  # noqa: E402
from nnsam2_utils.propagate.sam2 import (  # noqa: E402
    SAM2Propagator,
    frames_to_model,
    interleave,
    official_checkpoint_name,
    resolve_overlaps,
)

MODEL_SIZE = 128  # hydra override ++model.image_size; frames stay 256 px (exercises every resize)


def _sam2_sources() -> dict[str, str]:
    root = Path(importlib.util.find_spec("sam2").origin).parent
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*.py"))}


def _phantom(n: int, seed: int) -> np.ndarray:
    """Grey slices with two bright blobs (right/left 'muscles') on noise."""
    rng = np.random.default_rng(seed)
    stack = rng.integers(0, 60, (n, 256, 256), dtype=np.uint8)
    stack[:, 70:150, 50:110] += 150
    stack[:, 70:150, 146:206] += 150
    return stack


def _annotation() -> np.ndarray:
    mask = np.zeros((256, 256), np.uint8)
    mask[70:150, 50:110] = 1
    mask[70:150, 146:206] = 2
    return mask


@pytest.fixture(scope="module")
def library_before() -> dict[str, str]:
    return _sam2_sources()


@pytest.fixture(scope="module")
def propagator(library_before) -> SAM2Propagator:
    return SAM2Propagator(image_size=MODEL_SIZE, allow_random_weights=True)


@pytest.fixture(scope="module")
def unequal_run(propagator):
    """Reference of 3 slices annotated at slice 1 (2 frames) and a target of 3 slices."""
    return propagator.propagate(_phantom(3, 0), 1, _annotation(), _phantom(3, 1), "case-a")


# ------------------------------------------------------------------ pure helpers


def test_interleave_orders():
    assert interleave(2, 2) == [("reference", 0), ("target", 0), ("reference", 1), ("target", 1)]
    assert interleave(3, 1) == [("reference", 0), ("target", 0), ("reference", 1), ("reference", 2)]
    assert interleave(1, 3) == [("reference", 0), ("target", 0), ("target", 1), ("target", 2)]
    assert interleave(4, 2, reference_start=2) == [("reference", 2), ("target", 0), ("reference", 3), ("target", 1)]


def test_resolve_overlaps_highest_positive_logit_wins():
    logits = np.array([[[2.0, -1.0, 3.0, -0.5]], [[1.0, 0.5, 4.0, -0.1]]])
    assert resolve_overlaps(logits).tolist() == [[1, 2, 2, 0]]


def test_frames_to_model_matches_sam2_normalisation():
    frames = np.full((2, 256, 256), 255, np.uint8)
    x = frames_to_model(frames, 128)
    assert tuple(x.shape) == (2, 3, 128, 128)
    expected = [(1 - m) / s for m, s in zip((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))]
    assert np.allclose(x[0, :, 5, 5].numpy(), expected, atol=1e-5)


def test_official_checkpoint_names():
    assert official_checkpoint_name("configs/sam2.1/sam2.1_hiera_l.yaml") == "sam2.1_hiera_large.pt"
    assert official_checkpoint_name("configs/sam2.1/sam2.1_hiera_b+.yaml") == "sam2.1_hiera_base_plus.pt"
    assert official_checkpoint_name("configs/sam2/sam2_hiera_t.yaml") == "sam2_hiera_tiny.pt"


# ------------------------------------------------------------------ checkpoints


def test_missing_checkpoint_names_file_and_download(tmp_path):
    missing = tmp_path / "weights" / "sam2.1_hiera_large.pt"
    with pytest.raises(CheckpointError) as info:
        SAM2Propagator(config="configs/sam2.1/sam2.1_hiera_l.yaml", checkpoint=missing, sha256="0" * 64)
    message = str(info.value)
    assert str(missing) in message and "not found" in message
    assert "sam2.1_hiera_large.pt" in message and "download" in message


def test_wrong_hash_reports_expected_and_found(tmp_path):
    fake = tmp_path / "sam2.1_hiera_tiny.pt"
    fake.write_bytes(b"not a checkpoint")
    found = hashlib.sha256(b"not a checkpoint").hexdigest()
    with pytest.raises(CheckpointError) as info:
        SAM2Propagator(checkpoint=fake, sha256="ab" * 32)
    message = str(info.value)
    assert str(fake) in message and "ab" * 32 in message and found in message
    assert verify_checkpoint(fake, found) == fake


def test_unloadable_checkpoint_is_a_checkpoint_error(tmp_path):
    fake = tmp_path / "sam2.1_hiera_tiny.pt"
    fake.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="does not load"):
        SAM2Propagator(checkpoint=fake, sha256=None, image_size=MODEL_SIZE)


def test_no_checkpoint_refused_without_random_weights():
    with pytest.raises(CheckpointError) as info:
        SAM2Propagator(checkpoint=None)
    assert "sam2.1_hiera_tiny.pt" in str(info.value) and "allow_random_weights" in str(info.value)


# ------------------------------------------------------------------ the real model


def test_is_a_propagator(propagator):
    assert isinstance(propagator, Propagator) and propagator.name == "sam2"
    assert propagator.predictor.fill_hole_area == 0 and propagator.image_size == MODEL_SIZE


def test_embed_shape(propagator):
    emb = propagator.embed(_phantom(3, 2))
    assert emb.shape == (3, propagator.predictor.hidden_dim) and np.isfinite(emb).all()


def test_frame_order_interleaved_unequal(unequal_run):
    assert unequal_run.frame_order == [("reference", 1), ("target", 0), ("reference", 2), ("target", 1), ("target", 2)]


def test_every_target_slice_has_mask_and_confidence(unequal_run):
    masks, conf = unequal_run.masks, unequal_run.confidence
    assert masks.shape == (3, 256, 256) and masks.dtype == np.uint8
    assert set(np.unique(masks)) <= {0, 1, 2}
    assert list(conf.columns) == list(CONFIDENCE_COLUMNS)
    assert sorted(zip(conf["slice"], conf["class"])) == [(s, c) for s in range(3) for c in (1, 2)]
    assert not conf["prompted"].any()
    assert np.isfinite(conf["iou"]).all() and conf["iou"].between(-0.01, 1.01).all()
    assert np.isfinite(conf["object_score"]).all()
    for index, cls, area in zip(conf["slice"], conf["class"], conf["area"]):
        assert area == int((masks[index] == cls).sum())


def test_prompt_frame_output_is_the_prompt(propagator):
    """SAM2 turns a mask prompt into ±10 logits (no decoder): frame 0 gives the prompt back."""
    annotation = _annotation()
    frames = np.stack([_phantom(1, 3)[0], _phantom(1, 4)[0]])
    steps = list(propagator.run_video(frames, {1: annotation == 1, 2: annotation == 2}))
    assert [s[0] for s in steps] == [0, 1]
    _, logits, iou, score = steps[0]
    for k, cls in enumerate((1, 2)):
        predicted, truth = logits[k] > 0, annotation == cls
        dice = 2 * (predicted & truth).sum() / (predicted.sum() + truth.sum())
        assert dice > 0.95  # exact up to the low-res (model/4) round trip at the edges
    assert np.allclose(iou, 1.0) and np.allclose(score, 10.0)  # SAM2's dummy IoU and mask-derived score
    assert np.isfinite(steps[1][2]).all() and (steps[1][2] != 1.0).all()  # tracked frame: decoder IoU


def test_target_is_reference(propagator):
    reference = _phantom(3, 5)
    result = propagator.propagate(reference, 0, _annotation(), reference, "ref", target_is_reference=True)
    assert result.frame_order == [("target", 0), ("target", 1), ("target", 2)]
    assert np.array_equal(result.masks[0], _annotation())
    conf = result.confidence
    prompted = conf[conf["prompted"]]
    assert sorted(prompted["slice"]) == [0, 0] and prompted["iou"].isna().all()
    tracked = conf[~conf["prompted"]]
    assert len(tracked) == 4 and np.isfinite(tracked["iou"]).all()


def test_library_files_unchanged(library_before, unequal_run):
    assert _sam2_sources() == library_before
