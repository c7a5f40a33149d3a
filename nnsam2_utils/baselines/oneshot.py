"""Two non-learned baselines for the stage-0 comparison.

* :func:`registration_baseline` — classical one-shot atlas registration: the dataset's one
  annotated slice (image + 2-class mask) is registered to every slice of a target scan with
  SimpleITK (moments-centred exhaustive shift search, 2-D affine, then a cubic B-spline
  deformable stage, all with Mattes mutual information, multi-resolution; see
  :class:`RegistrationSettings`), and its mask is warped with nearest-neighbour
  interpolation. The result is post-processed like stage-0 pseudo-labels
  (:func:`postprocess.clean_pseudo_label`).
* :func:`threshold_baseline` — the "is the cohort trivially easy?" check: two Otsu levels per
  scan (air/body, then muscle/not-muscle inside the body), a left/right split at the body's
  midline column, and per side the largest muscle-like component posterior to the body's
  centre. No learning, no tuning to the phantom.

Both work on **native prepared slices** (the ``prepare.to_stack`` arrays of the prepared
image, in their own pixel spacing), not on the 256² model input: registration then happens in
millimetres (spacings of reference and target may differ — CT fields of view follow the
patient), the output is already on the grid of the manual label (no resize round trip), and
the tiny/default cohorts' native slices (128² / 256²) are no larger than the model input.

Conventions (see :mod:`nnsam2_utils.data.geometry`): stacks are ``(slice, row, column)`` ordered
superior → inferior, rows anterior → posterior, columns patient right → left (radiological
view), classes 0 background, 1 right LPM, 2 left LPM.

Determinism: registration uses regular (grid) metric sampling jittered by a fixed seed, an
exhaustive (not random) search and one thread by default, so two runs on the same input give
identical masks.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
import SimpleITK as sitk
from scipy import ndimage
from skimage.filters import threshold_multiotsu
from tqdm.auto import tqdm

from nnsam2_utils.data.io import array_to_image
from nnsam2_utils.prepare.model_input import CT_WINDOW
from nnsam2_utils.propagate.postprocess import clean_pseudo_label, fill_holes, largest_component

log = logging.getLogger(__name__)

CLASS_IDS: tuple[int, ...] = (1, 2)


# --- registration baseline -------------------------------------------------------------------
@dataclass(frozen=True)
class RegistrationSettings:
    """Parameters of the 2-D registration (defaults are the baseline's; none is tuned per scan).

    Three stages, all maximising Mattes mutual information:

    1. translation search: the centres of mass are aligned (moments), then an exhaustive grid
       of in-plane shifts (``search_steps`` × ``search_step_mm`` each way, at 1/``search_shrink``
       resolution) picks the best start — gradient descent alone gets trapped when the body
       sits differently in the field of view;
    2. affine: gradient descent with a learning rate re-estimated every iteration, on a
       ``affine_shrink`` pyramid;
    3. cubic B-spline with control points about ``bspline_grid_mm`` apart (``None`` skips it).

    ``working_mm``: every shrink factor is multiplied by ``max(1, round(working_mm / finest
    fixed spacing))``, so fine (e.g. 0.9 mm) slices cost about as much as 1.8 mm ones; the
    mask is still warped onto the full-resolution grid. ``sampling_fraction``: share of
    pixels used by the metric at every level (regular grid, jittered with ``seed``; 1.0 uses
    all; the translation search always uses all). ``seed`` must be positive: SimpleITK reads
    0 as "seed from the wall clock", which would make runs differ. ``threads``: ITK threads
    per registration (1 keeps results bit-identical on machines with different core counts).
    """

    histogram_bins: int = 32
    search_step_mm: float = 4.0
    search_steps: int = 8
    search_shrink: int = 4
    affine_iterations: int = 200
    affine_shrink: tuple[int, ...] = (4, 2)
    affine_smoothing_mm: tuple[float, ...] = (4.0, 2.0)
    bspline_grid_mm: float | None = 40.0
    bspline_iterations: int = 50
    bspline_shrink: tuple[int, ...] = (2,)
    bspline_smoothing_mm: tuple[float, ...] = (2.0,)
    sampling_fraction: float = 0.25
    working_mm: float = 1.8
    seed: int = 1
    threads: int = 1


DEFAULT_SETTINGS = RegistrationSettings()


def _as_image(array: np.ndarray, spacing: tuple[float, float]) -> sitk.Image:
    """A float32 2-D image from a (row, column) array; ``spacing`` is (row, column) in mm.

    Intensities are clipped to the slice's own 0.5–99.5th percentiles and scaled to [0, 1],
    so that the mutual-information histogram bins cover the tissues, not outliers.
    """
    values = np.asarray(array, dtype=np.float32)
    low, high = np.percentile(values, (0.5, 99.5))
    scaled = np.zeros_like(values) if high <= low else (np.clip(values, low, high) - low) / (high - low)
    image = sitk.GetImageFromArray(scaled.astype(np.float32))
    image.SetSpacing((float(spacing[1]), float(spacing[0])))  # SimpleITK order: (x = column, y = row)
    return image


def _extra_shrink(image: sitk.Image, settings: RegistrationSettings) -> int:
    """Factor applied to every shrink level so the registration works at about ``working_mm``."""
    return max(1, int(round(settings.working_mm / min(image.GetSpacing()))))


def _method(
    settings: RegistrationSettings,
    shrink: tuple[int, ...],
    smoothing_mm: tuple[float, ...],
    extra_shrink: int = 1,
    sampling_fraction: float | None = None,
) -> sitk.ImageRegistrationMethod:
    """A registration method with Mattes MI, deterministic sampling and a pyramid."""
    fraction = settings.sampling_fraction if sampling_fraction is None else sampling_fraction
    if settings.seed <= 0:
        raise ValueError(
            f"registration seed must be a positive integer (0 means wall clock in SimpleITK); got {settings.seed}"
        )
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=settings.histogram_bins)
    if fraction < 1.0:
        method.SetMetricSamplingStrategy(method.REGULAR)
        method.SetMetricSamplingPercentage(fraction, settings.seed)
    else:
        method.SetMetricSamplingStrategy(method.NONE)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetShrinkFactorsPerLevel([factor * extra_shrink for factor in shrink])
    method.SetSmoothingSigmasPerLevel(list(smoothing_mm))
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    method.SetNumberOfThreads(settings.threads)
    return method


def _gradient_descent(method: sitk.ImageRegistrationMethod, iterations: int, max_step_mm: float) -> None:
    """Gradient descent with its learning rate estimated each iteration, scales from physical shift."""
    method.SetOptimizerAsGradientDescent(
        learningRate=1.0,
        numberOfIterations=iterations,
        convergenceMinimumValue=1e-6,
        convergenceWindowSize=10,
        estimateLearningRate=method.EachIteration,
        maximumStepSizeInPhysicalUnits=max_step_mm,
    )
    method.SetOptimizerScalesFromPhysicalShift()


def _search(fixed: sitk.Image, moving: sitk.Image, settings: RegistrationSettings) -> sitk.Euler2DTransform:
    """Moments-centred start refined by an exhaustive search over in-plane shifts (all pixels)."""
    start = sitk.CenteredTransformInitializer(
        fixed, moving, sitk.Euler2DTransform(), sitk.CenteredTransformInitializerFilter.MOMENTS
    )
    method = _method(
        settings,
        (settings.search_shrink,),
        (float(settings.search_shrink),),
        _extra_shrink(fixed, settings),
        sampling_fraction=1.0,
    )
    method.SetOptimizerAsExhaustive(
        [0, settings.search_steps, settings.search_steps], stepLength=settings.search_step_mm
    )
    method.SetOptimizerScales([1.0, 1.0, 1.0])
    method.SetInitialTransform(start, inPlace=True)
    method.Execute(fixed, moving)
    return start


def _affine(fixed: sitk.Image, moving: sitk.Image, settings: RegistrationSettings) -> sitk.AffineTransform:
    """2-D affine transform (fixed → moving points) from the translation search, refined."""
    start = _search(fixed, moving, settings)
    affine = sitk.AffineTransform(2)
    affine.SetCenter(start.GetCenter())
    affine.SetTranslation(start.GetTranslation())
    method = _method(settings, settings.affine_shrink, settings.affine_smoothing_mm, _extra_shrink(fixed, settings))
    _gradient_descent(method, settings.affine_iterations, max_step_mm=2.0)
    method.SetInitialTransform(affine, inPlace=True)
    method.Execute(fixed, moving)
    return affine


def _bspline(
    fixed: sitk.Image, moving: sitk.Image, affine: sitk.Transform, settings: RegistrationSettings
) -> sitk.Transform:
    """A cubic B-spline stage on top of ``affine``; returns the composite (fixed → moving)."""
    extent = [size * spacing for size, spacing in zip(fixed.GetSize(), fixed.GetSpacing())]
    mesh = [max(1, int(round(e / settings.bspline_grid_mm))) for e in extent]
    bspline = sitk.BSplineTransformInitializer(fixed, mesh, order=3)
    method = _method(settings, settings.bspline_shrink, settings.bspline_smoothing_mm, _extra_shrink(fixed, settings))
    _gradient_descent(method, settings.bspline_iterations, max_step_mm=1.0)
    method.SetMovingInitialTransform(affine)
    method.SetInitialTransform(bspline, inPlace=True)
    method.Execute(fixed, moving)
    composite = sitk.CompositeTransform(2)
    composite.AddTransform(affine)  # applied second
    composite.AddTransform(bspline)  # applied first (ITK composites apply the last-added first)
    return composite


def register_slice(
    fixed: np.ndarray,
    moving: np.ndarray,
    moving_mask: np.ndarray,
    spacing: tuple[float, float],
    moving_spacing: tuple[float, float] | None = None,
    settings: RegistrationSettings = DEFAULT_SETTINGS,
) -> np.ndarray:
    """Register ``moving`` (the annotated slice) to ``fixed`` (a target slice) and warp its mask.

    Arrays are 2-D ``(row, column)``; ``spacing`` is the fixed slice's (row, column) pixel
    spacing in mm, ``moving_spacing`` the moving slice's (default: the same). Returns a uint8
    class mask on the fixed grid (nearest-neighbour warp; pixels mapped outside the moving
    slice are background). No post-processing.

    Edge cases: a constant fixed or moving slice (e.g. all zeros), or an empty moving mask,
    gives an all-background mask; a registration that ITK cannot complete (e.g. too few
    samples overlap) falls back to the affine result when only the B-spline stage fails, and
    otherwise to an all-background mask — each with a logged warning, never an exception.
    """
    fixed = np.asarray(fixed)
    moving = np.asarray(moving)
    moving_mask = np.asarray(moving_mask)
    if fixed.ndim != 2 or moving.ndim != 2 or moving.shape != moving_mask.shape:
        raise ValueError(
            f"need 2-D slices and a mask the shape of the moving slice; got fixed {fixed.shape}, "
            f"moving {moving.shape}, mask {moving_mask.shape}"
        )
    empty = np.zeros(fixed.shape, dtype=np.uint8)
    if not moving_mask.any() or np.ptp(fixed) == 0 or np.ptp(moving) == 0:
        return empty
    fixed_image = _as_image(fixed, spacing)
    moving_image = _as_image(moving, moving_spacing or spacing)
    try:
        transform = _affine(fixed_image, moving_image, settings)
    except RuntimeError as error:
        log.warning("affine registration failed (%s); returning an empty mask", str(error).strip().splitlines()[-1])
        return empty
    if settings.bspline_grid_mm:
        try:
            transform = _bspline(fixed_image, moving_image, transform, settings)
        except RuntimeError as error:
            log.warning(
                "B-spline registration failed (%s); keeping the affine result", str(error).strip().splitlines()[-1]
            )
    mask_image = array_to_image(moving_mask.astype(np.uint8), moving_image)
    warped = sitk.Resample(mask_image, fixed_image, transform, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return sitk.GetArrayFromImage(warped).astype(np.uint8)


def registration_baseline(
    reference_slice: np.ndarray,
    reference_mask: np.ndarray,
    target_stack: np.ndarray,
    spacing: tuple[float, float],
    reference_spacing: tuple[float, float] | None = None,
    settings: RegistrationSettings = DEFAULT_SETTINGS,
    postprocess: bool = True,
) -> np.ndarray:
    """One-shot registration baseline for one target scan.

    ``reference_slice``/``reference_mask``: the annotated native slice and its class mask;
    ``target_stack``: the target's native ``(slice, row, column)`` stack, superior → inferior;
    ``spacing``/``reference_spacing``: (row, column) pixel spacing in mm of target and
    reference (default: equal). Every target slice is registered independently
    (:func:`register_slice`); the stacked masks are cleaned with
    :func:`postprocess.clean_pseudo_label` unless ``postprocess`` is False. Returns a uint8
    stack of the target's shape (an empty target stack gives an empty stack).
    """
    target_stack = np.asarray(target_stack)
    if target_stack.ndim != 3:
        raise ValueError(f"target_stack must be (slice, row, column); got shape {target_stack.shape}")
    masks = np.zeros(target_stack.shape, dtype=np.uint8)
    for k in tqdm(range(len(target_stack)), desc="register", leave=False, disable=len(target_stack) < 2):
        masks[k] = register_slice(
            target_stack[k], reference_slice, reference_mask, spacing, reference_spacing, settings
        )
    return clean_pseudo_label(masks) if postprocess and len(masks) else masks


# --- threshold baseline ----------------------------------------------------------------------
def scan_thresholds(stack: np.ndarray) -> tuple[float, float]:
    """Three-class Otsu thresholds (low, high) of a scan's voxels, clipped to their 0.5–99.5th
    percentiles first (so bone, contrast or bowel gas outliers do not steer them).

    The classes are roughly air / intermediate / bright tissue: in CT air, fat, soft tissue; in
    T1w/T2w MRI air and dark tissue, muscle and organs, fat. A constant stack returns its value twice.
    """
    values = np.asarray(stack, dtype=np.float64).ravel()
    low, high = np.percentile(values, (0.5, 99.5))
    if high <= low:
        return float(low), float(low)
    t_low, t_high = threshold_multiotsu(np.clip(values, low, high), classes=3)
    return float(t_low), float(t_high)


def muscle_is_bright(modality: str, sequence: str | None = None) -> bool:
    """Whether muscle is brighter than fat: CT and Dixon water images yes, T1w/T2w MRI no."""
    if modality == "CT" or sequence in ("CT", "Dixon"):
        return True
    if modality != "MRI":
        raise ValueError(f"modality must be 'MRI' or 'CT', not {modality!r}")
    return False


def body_mask(image: np.ndarray, air_threshold: float) -> np.ndarray:
    """The body on one 2-D slice: largest component above ``air_threshold``, holes filled."""
    return fill_holes(largest_component(np.asarray(image) > air_threshold))


def threshold_slice(image: np.ndarray, body: np.ndarray, low: float, high: float) -> np.ndarray:
    """Plain rule on one slice: muscle-like pixels (``low <= value <= high``) inside ``body``,
    split at the body's centroid column (image left = class 1, patient right), restricted to
    rows posterior to the body's centroid row; per side the largest 2-D component.

    An empty body gives an empty mask.
    """
    out = np.zeros(image.shape, dtype=np.uint8)
    if not body.any():
        return out
    row_c, col_c = ndimage.center_of_mass(body)
    rows, cols = np.indices(image.shape)
    candidate = body & (image >= low) & (image <= high) & (rows > row_c)
    for cls, side in ((1, cols < col_c), (2, cols >= col_c)):
        out[largest_component(candidate & side)] = cls
    return out


def threshold_baseline(
    stack: np.ndarray, modality: str, sequence: str | None = None, bright: bool | None = None
) -> np.ndarray:
    """Plain intensity-threshold segmentation of one scan's native stack (superior → inferior).

    Per scan, three-class Otsu thresholds ``t_low < t_high`` (:func:`scan_thresholds`); per
    slice the body is the hole-filled largest component above ``t_low`` (:func:`body_mask`).
    Muscle-like = below ``t_high`` where muscle is darker than fat (T1w/T2w MRI), otherwise at
    or above it (CT, Dixon water; see :func:`muscle_is_bright`, or force with ``bright``), and
    for CT at most the top of the model's CT window (150 HU: no bone, no contrast-filled
    vessels). Each slice then goes through :func:`threshold_slice` (midline split, posterior
    half, largest component per side); the stack is cleaned with
    :func:`postprocess.clean_pseudo_label`. Returns a uint8 stack with labels in {0, 1, 2}; a
    constant scan (e.g. all zeros) or an empty stack gives an all-background stack.
    """
    stack = np.asarray(stack, dtype=np.float32)
    if stack.ndim != 3:
        raise ValueError(f"stack must be (slice, row, column); got shape {stack.shape}")
    out = np.zeros(stack.shape, dtype=np.uint8)
    if stack.size == 0 or np.ptp(stack) == 0:
        return out
    bright = muscle_is_bright(modality, sequence) if bright is None else bright
    t_low, t_high = scan_thresholds(stack)
    if bright:
        low, high = t_high, (CT_WINDOW[1] if modality == "CT" else np.inf)
    else:
        low, high = -np.inf, np.nextafter(np.float32(t_high), np.float32(-np.inf))
    log.debug("threshold baseline: t_low %.1f, t_high %.1f, muscle in [%.1f, %.1f]", t_low, t_high, low, high)
    for k, image in enumerate(stack):
        out[k] = threshold_slice(image, body_mask(image, t_low), low, high)
    return clean_pseudo_label(out)


def run_dataset_baselines(workspace, dataset: str, modality: str, sequence: str) -> pd.DataFrame:
    """Registration and threshold baselines for every scan of a dataset; writes labels, returns DSC rows.

    The registration baseline uses the same one annotated slice as stage 0 (from its
    ``annotation.json``). Labels go to ``<stage>/<dataset>/labels/<case>.nii.gz`` in the
    prepared grid; finished scans are not redone.
    """
    import json

    import pandas as pd

    from nnsam2_utils.data.geometry import from_stack
    from nnsam2_utils.data.io import write_image
    from nnsam2_utils.evaluate.metrics import dsc_rows
    from nnsam2_utils.prepare.model_input import load_stack

    note = json.loads((workspace.stage("stage0", dataset) / "annotation.json").read_text(encoding="utf-8"))
    ref_image, ref_itk = load_stack(workspace.prepared(dataset, note["reference_case"]))
    ref_label, _ = load_stack(
        workspace.prepared(dataset, note["reference_case"]), note.get("annotation_volume", "label")
    )
    k = note["annotated_slice"]
    ref_spacing = (ref_itk.GetSpacing()[1], ref_itk.GetSpacing()[0])
    cases = workspace.case_table(dataset)
    rows = []
    for case in tqdm(list(cases["case"]), desc=f"baselines {dataset}", leave=False):
        stack, image = load_stack(workspace.prepared(dataset, case))
        spacing = (image.GetSpacing()[1], image.GetSpacing()[0])
        makers = {
            "registration": lambda s=stack, sp=spacing: registration_baseline(
                ref_image[k], ref_label[k], s, sp, ref_spacing
            ),
            "threshold": lambda s=stack: threshold_baseline(s, modality, sequence),
        }
        has_truth = (workspace.prepared(dataset, case) / "label.nii.gz").exists()
        truth = load_stack(workspace.prepared(dataset, case), "label")[0] if has_truth else None
        for stage, make in makers.items():
            out = workspace.labels(stage, dataset, case)
            if out.exists():
                labels = load_stack(out.parent, case)[0]
            else:
                labels = make()
                write_image(from_stack(labels, image), out)
            if truth is not None:
                rows += dsc_rows(dataset, case, stage, labels, truth)
    return pd.DataFrame(rows, columns=["dataset", "case", "class", "stage", "dsc"])
