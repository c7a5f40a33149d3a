"""Baselines: one-shot registration (real SimpleITK) and the plain threshold segmenter."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nnsam2_utils.baselines.oneshot import (
    RegistrationSettings,
    muscle_is_bright,
    register_slice,
    registration_baseline,
    threshold_baseline,
)
from nnsam2_utils.evaluate import metrics

SPACING = (2.0, 2.0)  # (row, column) mm
SIZE = 96


def _ellipse(
    rows: np.ndarray, cols: np.ndarray, centre: tuple[float, float], axes: tuple[float, float], angle: float
) -> np.ndarray:
    """Boolean ellipse (pixel units) rotated by ``angle`` radians."""
    dr, dc = rows - centre[0], cols - centre[1]
    u = dc * math.cos(angle) + dr * math.sin(angle)
    v = -dc * math.sin(angle) + dr * math.cos(angle)
    return (u / axes[1]) ** 2 + (v / axes[0]) ** 2 <= 1.0


def synthetic_slice(
    shift: tuple[float, float] = (0.0, 0.0), angle_deg: float = 0.0, seed: int = 0, size: int = SIZE
) -> tuple[np.ndarray, np.ndarray]:
    """A lumbar-like slice: bright body (fat) with a dark organ, a bright vertebra and two dark
    elliptical "muscles" posterior to it (class 1 on the image's left = patient right), with
    Gaussian noise. The whole anatomy is rotated by ``angle_deg`` about the image centre and
    shifted by ``shift`` (rows, columns; pixels)."""
    rows, cols = np.indices((size, size), dtype=np.float64)
    centre = (size / 2 + shift[0], size / 2 + shift[1])
    a = math.radians(angle_deg)

    def place(dr: float, dc: float) -> tuple[float, float]:
        return (centre[0] + dr * math.cos(a) + dc * math.sin(a), centre[1] - dr * math.sin(a) + dc * math.cos(a))

    image = np.full((size, size), 10.0)
    image[_ellipse(rows, cols, centre, (30, 42), a)] = 200.0  # body (fat)
    image[_ellipse(rows, cols, place(-12, 0), (10, 18), a)] = 120.0  # an organ
    image[_ellipse(rows, cols, place(4, 0), (5, 6), a)] = 255.0  # vertebral body
    label = np.zeros((size, size), np.uint8)
    for cls, dc in ((1, -13), (2, 13)):
        muscle = _ellipse(rows, cols, place(15, dc), (8, 10), a + (0.3 if cls == 1 else -0.3))
        image[muscle] = 70.0
        label[muscle] = cls
    image += np.random.default_rng(seed).normal(0, 8, image.shape)
    return image.astype(np.float32), label


def _mean_dsc(prediction: np.ndarray, truth: np.ndarray) -> float:
    return float(np.nanmean(list(metrics.dice_per_class(prediction, truth).values())))


# --- registration ------------------------------------------------------------------------------
@pytest.mark.parametrize("shift, angle", [((5.0, -6.0), 0.0), ((-4.0, 3.0), 8.0)])
def test_registration_recovers_a_known_shift_and_rotation(shift, angle):
    moving, moving_mask = synthetic_slice(seed=1)
    fixed, truth = synthetic_slice(shift=shift, angle_deg=angle, seed=2)
    before = _mean_dsc(moving_mask, truth)
    warped = register_slice(fixed, moving, moving_mask, SPACING)
    dsc = metrics.dice_per_class(warped, truth)
    assert warped.dtype == np.uint8 and warped.shape == fixed.shape
    assert before < 0.7  # the task is not solved by doing nothing
    assert min(dsc.values()) >= 0.9, dsc  # measured 0.95-1.00


def test_registration_keeps_right_on_the_image_left():
    moving, moving_mask = synthetic_slice(seed=1)
    fixed, _ = synthetic_slice(shift=(3.0, 4.0), angle_deg=-5.0, seed=3)
    warped = register_slice(fixed, moving, moving_mask, SPACING)
    right_col = np.nonzero(warped == 1)[1].mean()
    left_col = np.nonzero(warped == 2)[1].mean()
    assert right_col < SIZE / 2 < left_col


def test_registration_handles_different_pixel_spacings():
    moving, moving_mask = synthetic_slice(seed=1)
    coarse, coarse_truth = synthetic_slice(shift=(4.0, -3.0), seed=2)
    # the same target anatomy sampled at 1 mm: each 2 mm pixel becomes 2 x 2 pixels
    fine, fine_truth = (np.repeat(np.repeat(a, 2, axis=0), 2, axis=1) for a in (coarse, coarse_truth))
    warped = register_slice(fine, moving, moving_mask, (1.0, 1.0), moving_spacing=SPACING)
    assert warped.shape == fine.shape
    assert _mean_dsc(warped, fine_truth) >= 0.9  # measured 0.99


def test_empty_target_slice_gives_an_empty_mask():
    moving, moving_mask = synthetic_slice(seed=1)
    empty = np.zeros((SIZE, SIZE), np.float32)
    assert not register_slice(empty, moving, moving_mask, SPACING).any()
    assert not register_slice(synthetic_slice(seed=2)[0], moving, np.zeros_like(moving_mask), SPACING).any()
    stack = np.stack([synthetic_slice(seed=2)[0], empty])
    out = registration_baseline(moving, moving_mask, stack, SPACING)
    assert out.dtype == np.uint8 and out.shape == stack.shape
    assert not out[1].any() and set(np.unique(out[0])) == {0, 1, 2}


def test_registration_is_deterministic():
    moving, moving_mask = synthetic_slice(seed=1)
    fixed, _ = synthetic_slice(shift=(2.0, -3.0), angle_deg=4.0, seed=4)
    runs = [register_slice(fixed, moving, moving_mask, SPACING) for _ in range(3)]
    assert all(np.array_equal(runs[0], run) for run in runs[1:])
    with pytest.raises(ValueError, match="seed"):  # SimpleITK reads seed 0 as "use the wall clock"
        register_slice(fixed, moving, moving_mask, SPACING, settings=RegistrationSettings(seed=0))


def test_registration_rejects_mismatched_inputs():
    moving, moving_mask = synthetic_slice(seed=1)
    with pytest.raises(ValueError):
        register_slice(moving, moving, moving_mask[:-1], SPACING)
    with pytest.raises(ValueError):
        registration_baseline(moving, moving_mask, moving, SPACING)


# --- threshold baseline ------------------------------------------------------------------------
def test_threshold_baseline_labels_and_sides_on_a_synthetic_stack():
    stack = np.stack([synthetic_slice(seed=s)[0] for s in range(3)])
    truth = np.stack([synthetic_slice(seed=s)[1] for s in range(3)])
    out = threshold_baseline(stack, "MRI", "T2w")
    assert out.dtype == np.uint8 and out.shape == stack.shape
    assert set(np.unique(out)) <= {0, 1, 2}
    assert np.nonzero(out == 1)[2].max() < SIZE / 2 <= np.nonzero(out == 2)[2].min()
    assert _mean_dsc(out, truth) > 0.8  # an easy image is easy for it too (measured 1.00)


def test_threshold_baseline_edge_cases():
    assert not threshold_baseline(np.zeros((2, 16, 16), np.float32), "CT").any()
    assert threshold_baseline(np.zeros((0, 16, 16), np.float32), "MRI").shape == (0, 16, 16)
    assert muscle_is_bright("CT") and muscle_is_bright("MRI", "Dixon")
    assert not muscle_is_bright("MRI", "T1w")
    with pytest.raises(ValueError):
        muscle_is_bright("PET")


# --- both on the tiny demo cohort ----------------------------------------------------------------
@pytest.mark.parametrize("dataset", ["backpain_t2w", "totalseg_ct"])
def test_threshold_scores_clearly_below_registration_on_the_phantom(tiny_cohort, dataset):
    from nnsam2_utils.data.geometry import to_stack
    from nnsam2_utils.data.manifest import load_manifest
    from nnsam2_utils.prepare.dataset import prepare_case

    manifest = load_manifest(tiny_cohort / f"{dataset}.yaml")
    reference = prepare_case(manifest, manifest.cases[0])
    target = prepare_case(manifest, manifest.cases[-1])
    image, truth = to_stack(target.image), to_stack(target.label)
    registered = registration_baseline(
        to_stack(reference.image)[0],
        to_stack(reference.label)[0],
        image,
        spacing=target.image.GetSpacing()[1::-1],
        reference_spacing=reference.image.GetSpacing()[1::-1],
    )
    thresholded = threshold_baseline(image, manifest.modality, manifest.sequence)
    assert set(np.unique(thresholded)) <= {0, 1, 2}
    assert np.nonzero(thresholded == 1)[2].mean() < np.nonzero(thresholded == 2)[2].mean()
    reg, thr = _mean_dsc(registered, truth), _mean_dsc(thresholded, truth)
    # measured 0.74 (T2w), 0.80 (CT) on the issue-16 phantoms (sex, shape, neighbours; 0.88, 0.86 before)
    assert reg >= 0.7, reg
    assert thr <= reg - 0.1, (thr, reg)  # measured 0.57 (T2w), 0.69 (CT)
