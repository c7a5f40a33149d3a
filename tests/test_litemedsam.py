"""LiteMedSAM box-chaining propagation with the real shipped weights, on small synthetic scans.

The synthetic scan: a darker body ellipse, a bright vertebral body, and two bright muscle
ellipses either side of the midline (class 1 on the image's left = patient right), drifting
down and growing over the slices. Measured on this machine (box margin 3, max shrink 1): DSC
≥ 0.99 per class on such scans (benchmarks/bench_propagation.py: 0.995 / 0.995); the bar is 0.95.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nnsam2_utils.data.geometry import to_stack
from nnsam2_utils.errors import CheckpointError, DataError
from nnsam2_utils.evaluate.metrics import dice_per_class
from nnsam2_utils.prepare.dataset import prepare_case
from nnsam2_utils.prepare.model_input import label_from_model, label_to_model, model_input
from nnsam2_utils.propagate.base import CONFIDENCE_COLUMNS, PropagationResult, Propagator
from nnsam2_utils.propagate.litemedsam import (
    LiteMedSAMPropagator,
    encoder_input,
    load_model,
    mask_box,
    resolve_overlaps,
    start_slice,
)

DSC_BAR = 0.95
IOU_MAX = 1.05


def synthetic_scan(n: int = 6, shift: int = 0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """uint8 model-space stack (n, 256, 256) and its class masks, superior → inferior."""
    from synthetic import ellipse_stack

    return ellipse_stack(n, shift=shift, seed=seed)


@pytest.fixture(scope="module")
def propagator() -> LiteMedSAMPropagator:
    return LiteMedSAMPropagator(device="cpu")


@pytest.fixture(scope="module")
def reference_scan():
    return synthetic_scan(6, shift=0, seed=0)


@pytest.fixture(scope="module")
def target_scan():
    return synthetic_scan(5, shift=4, seed=1)


@pytest.fixture(scope="module")
def target_result(propagator, reference_scan, target_scan) -> PropagationResult:
    frames, labels = reference_scan
    return propagator.propagate(frames, 0, labels[0], target_scan[0], "target")


@pytest.fixture(scope="module")
def reference_result(propagator, reference_scan) -> PropagationResult:
    frames, labels = reference_scan
    return propagator.propagate(frames, 0, labels[0], frames, "reference", target_is_reference=True)


# ----------------------------------------------------------------------------- pure helpers
def test_encoder_input_is_three_channels_in_unit_range():
    frames = np.array([[[0, 255], [128, 64]]], dtype=np.uint8).repeat(128, 1).repeat(128, 2)
    tensor = encoder_input(frames)
    assert tensor.shape == (1, 3, 256, 256)
    assert float(tensor.min()) == 0.0 and float(tensor.max()) == 1.0
    assert torch.equal(tensor[:, 0], tensor[:, 2])


def test_encoder_input_rejects_wrong_size():
    with pytest.raises(DataError, match="model_input"):
        encoder_input(np.zeros((2, 128, 128), np.uint8))


def test_mask_box_margin_and_clipping():
    mask = np.zeros((256, 256), bool)
    mask[10:20, 250:256] = True
    assert mask_box(mask) == (250, 10, 255, 19)
    assert mask_box(mask, margin=3) == (247, 7, 255, 22)
    assert mask_box(np.zeros((256, 256), bool)) is None


def test_start_slice_keeps_relative_position():
    assert start_slice(0, 10, 7) == 0
    assert start_slice(9, 10, 7) == 6
    assert start_slice(3, 7, 13) == 6
    assert start_slice(0, 1, 5) == 0 and start_slice(4, 5, 1) == 0


def test_resolve_overlaps_highest_positive_logit_wins():
    logits = np.array([[[2.0, -1.0, 0.5, -np.inf]], [[1.0, 3.0, -2.0, -np.inf]]], dtype=np.float32)
    assert resolve_overlaps(logits).tolist() == [[1, 2, 1, 0]]


def test_wrong_checkpoint_is_refused(tmp_path):
    fake = tmp_path / "lite_medsam.pth"
    fake.write_bytes(b"not the weights")
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_model("cpu", fake)


# ----------------------------------------------------------------------------- the real model
def test_is_a_propagator(propagator):
    assert isinstance(propagator, Propagator)
    assert propagator.name == "litemedsam"
    assert not propagator.model.training


def test_every_target_slice_gets_mask_and_confidence(target_result, target_scan):
    frames, _ = target_scan
    masks, table = target_result.masks, target_result.confidence
    assert masks.shape == frames.shape and masks.dtype == np.uint8
    assert tuple(table.columns) == CONFIDENCE_COLUMNS
    assert len(table) == len(frames) * 2
    assert sorted(zip(table["slice"], table["class"])) == [(k, c) for k in range(len(frames)) for c in (1, 2)]
    assert (table["case"] == "target").all()
    assert not table["prompted"].any()
    assert table["object_score"].isna().all()
    assert table["iou"].notna().all()
    assert table["iou"].between(0.0, IOU_MAX).all()
    for k, cls, area in zip(table["slice"], table["class"], table["area"]):
        assert area == int((masks[k] == cls).sum()) > 0


def test_target_dsc(target_result, target_scan):
    dsc = dice_per_class(target_result.masks, target_scan[1])
    assert dsc[1] >= DSC_BAR and dsc[2] >= DSC_BAR, dsc


def test_right_stays_right(target_result):
    for k, labels in enumerate(target_result.masks):
        cols_right = np.nonzero(labels == 1)[1]
        cols_left = np.nonzero(labels == 2)[1]
        assert cols_right.mean() < 128 < cols_left.mean(), k


def test_reference_scan_keeps_its_annotated_slice(reference_result, reference_scan):
    frames, labels = reference_scan
    assert np.array_equal(reference_result.masks[0], labels[0])
    table = reference_result.confidence
    prompted = table[table["prompted"]]
    assert prompted["slice"].tolist() == [0, 0]
    assert prompted["iou"].isna().all()
    rest = table[~table["prompted"]]
    assert rest["iou"].between(0.0, IOU_MAX).all()
    dsc = dice_per_class(reference_result.masks[1:], labels[1:])
    assert dsc[1] >= DSC_BAR and dsc[2] >= DSC_BAR, dsc


def test_encoding_is_reused(propagator, reference_scan, target_scan, reference_result, target_result):
    """Each distinct slice is encoded once across propagation, embedding and repeated runs."""
    n_distinct = len(reference_scan[0]) + len(target_scan[0])
    assert propagator.slices_encoded == n_distinct
    pooled = propagator.embed(reference_scan[0][[0, 3, 5]])
    assert pooled.shape == (3, 256) and np.isfinite(pooled).all()
    again = propagator.propagate(reference_scan[0], 0, reference_scan[1][0], target_scan[0], "again")
    assert propagator.slices_encoded == n_distinct
    assert np.array_equal(again.masks, target_result.masks)
    # precomputed target embeddings are used as given
    embeddings = propagator.encode(target_scan[0])
    calls = propagator.encoder_calls
    given = propagator.propagate(
        reference_scan[0], 0, reference_scan[1][0], target_scan[0], "given", target_embeddings=embeddings
    )
    assert propagator.encoder_calls == calls
    assert np.array_equal(given.masks, target_result.masks)


def test_empty_class_in_annotation_stays_empty(propagator, reference_scan, target_scan):
    frames, labels = reference_scan
    only_right = np.where(labels[0] == 1, 1, 0).astype(np.uint8)
    result = propagator.propagate(frames, 0, only_right, target_scan[0], "one_class")
    assert not (result.masks == 2).any()
    left = result.confidence[result.confidence["class"] == 2]
    assert left["iou"].isna().all() and (left["area"] == 0).all()
    assert (result.masks == 1).any()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu(reference_scan, target_scan, target_result):
    gpu = LiteMedSAMPropagator(device="cuda")
    result = gpu.propagate(reference_scan[0], 0, reference_scan[1][0], target_scan[0], "target")
    dsc = dice_per_class(result.masks, target_result.masks)
    assert min(dsc.values()) > 0.98, dsc


def test_limit_shrink():
    from nnsam2_utils.propagate.litemedsam import limit_shrink

    assert limit_shrink((20, 20, 40, 40), (10, 10, 50, 50), 1) == (11, 11, 49, 49)
    assert limit_shrink((5, 20, 60, 40), (10, 10, 50, 50), 1) == (5, 11, 60, 49)
    assert limit_shrink((20, 20, 40, 40), (10, 10, 50, 50), None) == (20, 20, 40, 40)


# ----------------------------------------------------------------------------- the tiny cohort
TINY_DSC_BAR = 0.65


@pytest.fixture(scope="module")
def exported_propagator(tmp_path_factory) -> LiteMedSAMPropagator:
    """Stage 0's model as the workflow runs it: the encoder exported to OpenVINO (fp32), in a fresh cache."""
    return LiteMedSAMPropagator(device="cpu", encoder="openvino", encoder_cache=tmp_path_factory.mktemp("ov"))


@pytest.mark.slow
def test_tiny_cohort_stage0(tiny_cohort, exported_propagator):
    """prepare_case → model_input → reference → propagation into every scan; mean stage-0 DSC ≥ the bar.

    Measured (box margin 3, max shrink 1, seed 0): mean 0.74 over six scans (per scan 0.95, 0.38,
    0.94 MRI; 0.65, 0.79, 0.74 CT; the 0.38 is a scan posed 24 px away from the reference, where
    the first box misses); bar 0.65. Runs on the exported encoder, as the workflow's stage 0 does
    (its masks equal eager torch's: tests/test_encoder_export.py); about 45 slices to encode.
    """
    from nnsam2_utils.data.manifest import load_manifest
    from nnsam2_utils.propagate.reference import choose_reference

    scores = []
    for path in sorted(tiny_cohort.glob("*.yaml")):
        manifest = load_manifest(path)
        stacks, labels = {}, {}
        for case in manifest.cases:
            prepared = prepare_case(manifest, case)
            stacks[case.id] = model_input(prepared.image, manifest.modality)
            labels[case.id] = to_stack(prepared.label)
        choice = choose_reference(exported_propagator, stacks, progress=False)
        mask = label_to_model(labels[choice.case][choice.annotated_slice : choice.annotated_slice + 1])[0]
        for case_id, frames in stacks.items():
            result = exported_propagator.propagate(
                stacks[choice.case],
                choice.annotated_slice,
                mask,
                frames,
                case_id,
                target_is_reference=case_id == choice.case,
            )
            assert len(result.confidence) == 2 * len(frames)
            native = label_from_model(result.masks, labels[case_id].shape[1:])
            scores.append(np.nanmean(list(dice_per_class(native, labels[case_id]).values())))
    assert np.mean(scores) >= TINY_DSC_BAR, scores
