"""SAM2.1 video propagation (docs/method.md §3, §4.2): one "video" per target scan, one mask prompt.

How it talks to the installed ``sam2`` package (1.1.0), without touching its files:

* **Model**: ``sam2.build_sam.build_sam2_video_predictor`` with two extra hydra overrides,
  ``++model._target_=`` :class:`ArrayVideoPredictor` (a small subclass of
  ``SAM2VideoPredictor``; the later override wins) and optionally ``++model.image_size=N``.
  Its checkpoint loading and post-processing overrides are reused as they are; the hole
  filling is switched off (``fill_hole_area = 0``: it needs the CUDA extension).
* **Frames without files**: ``init_state`` only reads JPEG folders or video files, so
  :meth:`ArrayVideoPredictor.init_state_from_tensor` builds the same inference-state dict
  from a preloaded ``(n, 3, S, S)`` tensor. The tensor is made as SAM2's own loader does:
  grey → 3 identical channels, scaled to [0, 1], resized to the model's image size,
  normalised with the ImageNet mean/std (:func:`frames_to_model`).
* **Confidence**: the mask decoder's predicted IoUs are returned by ``SAM2Base._track_step``
  but dropped before ``propagate_in_video`` yields. The subclass overrides ``_track_step`` to
  note the IoU of the kept mask (the highest-IoU candidate when SAM2 decodes several, which is
  the one SAM2 keeps) and ``_run_single_frame_inference`` to store it as ``"pred_iou"`` in the
  per-object, per-frame output dict of the inference state, next to SAM2's own
  ``"object_score_logits"``. Both are read from that public state after each yielded frame.
"""

from __future__ import annotations

import contextlib
import logging
import pickle
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sam2.sam2_video_predictor import SAM2VideoPredictor

from nnsam2_utils.data.checkpoints import verify_checkpoint
from nnsam2_utils.data.io import sha256 as file_sha256
from nnsam2_utils.errors import CheckpointError
from nnsam2_utils.propagate.base import CLASS_IDS, PropagationResult, confidence_frame
from nnsam2_utils.propagate.postprocess import clean_pseudo_label

log = logging.getLogger(__name__)

DEFAULT_CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"
IMG_MEAN = (0.485, 0.456, 0.406)
IMG_STD = (0.229, 0.224, 0.225)
CHECKPOINT_URL = {
    "sam2.1": "https://dl.fbaipublicfiles.com/segment_anything_2/092824/",
    "sam2": "https://dl.fbaipublicfiles.com/segment_anything_2/072824/",
}
_SIZE_NAMES = {"t": "tiny", "s": "small", "b+": "base_plus", "l": "large"}


# --------------------------------------------------------------------------- pure helpers


def official_checkpoint_name(config: str) -> str:
    """The official checkpoint file of a shipped config, e.g. ``sam2.1_hiera_large.pt`` for ``…_l.yaml``."""
    stem = Path(config).name.removesuffix(".yaml")
    family, _, size = stem.rpartition("_hiera_")
    if not family or size not in _SIZE_NAMES:
        return f"the SAM2 checkpoint that matches {config}"
    return f"{family}_hiera_{_SIZE_NAMES[size]}.pt"


def download_hint(config: str) -> str:
    """One sentence saying which checkpoint file fits ``config`` and where it is published."""
    name = official_checkpoint_name(config)
    family = Path(config).name.split("_hiera_")[0]
    url = CHECKPOINT_URL.get(family)
    where = (
        f" from {url}{name} (or the facebook/{family}-hiera-* model on Hugging Face)"
        if url and name.endswith(".pt")
        else ""
    )
    return (
        f"The config {config} needs {name}: download it{where} on a machine with internet and copy it to this machine."
    )


def interleave(n_reference: int, n_target: int, reference_start: int = 0) -> list[tuple[str, int]]:
    """Feeding order ref0, tgt0, ref1, tgt1, …; reference slices start at ``reference_start``.

    When one source runs out the rest of the other follows.
    """
    refs = [("reference", i) for i in range(reference_start, n_reference)]
    tgts = [("target", i) for i in range(n_target)]
    order: list[tuple[str, int]] = []
    for k in range(max(len(refs), len(tgts))):
        if k < len(refs):
            order.append(refs[k])
        if k < len(tgts):
            order.append(tgts[k])
    return order


def frames_to_model(frames: np.ndarray, image_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 grey stack (n, h, w) → float32 (n, 3, S, S) normalised like SAM2's frame loader."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).to(device=device, dtype=torch.float32).div_(255.0)[:, None]
    if tuple(x.shape[-2:]) != (image_size, image_size):
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor(IMG_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMG_STD, device=device).view(1, 3, 1, 1)
    return ((x.expand(-1, 3, -1, -1) - mean) / std).contiguous()


def resolve_overlaps(logits: np.ndarray, class_ids: tuple[int, ...] = CLASS_IDS) -> np.ndarray:
    """(n_obj, h, w) logits → uint8 class map: highest positive logit wins, none positive → 0."""
    best = np.argmax(logits, axis=0)
    top = np.max(logits, axis=0)
    return np.where(top > 0, np.asarray(class_ids, dtype=np.uint8)[best], 0).astype(np.uint8)


def autocast_for(device: torch.device) -> contextlib.AbstractContextManager:
    """bfloat16 autocast on CUDA (as SAM2's examples do); nothing on CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


# --------------------------------------------------------------------------- SAM2 adapter


class ArrayVideoPredictor(SAM2VideoPredictor):
    """``SAM2VideoPredictor`` that takes in-memory frames and keeps the decoder's predicted IoU.

    Instantiated by hydra through ``++model._target_`` (see :func:`build_predictor`).
    """

    _nnsam2_iou: torch.Tensor | None = None

    def _track_step(self, *args: Any, **kwargs: Any):  # noqa: D401 - same contract as SAM2Base
        """SAM2's tracking step; notes the predicted IoU of the mask it keeps."""
        current_out, sam_outputs, high_res_features, pix_feat = super()._track_step(*args, **kwargs)
        ious = sam_outputs[2]  # (B, M): M candidates; SAM2 keeps the argmax when M > 1
        self._nnsam2_iou = ious.detach().float().amax(dim=-1)
        return current_out, sam_outputs, high_res_features, pix_feat

    def _run_single_frame_inference(self, *args: Any, **kwargs: Any):
        """SAM2's single-frame inference; adds ``"pred_iou"`` to the stored per-frame output."""
        self._nnsam2_iou = None
        compact_out, pred_masks = super()._run_single_frame_inference(*args, **kwargs)
        compact_out["pred_iou"] = self._nnsam2_iou
        self._nnsam2_iou = None
        return compact_out, pred_masks

    @torch.inference_mode()
    def init_state_from_tensor(self, images: torch.Tensor, video_height: int, video_width: int) -> dict[str, Any]:
        """The inference state ``init_state`` builds, from preloaded (n, 3, S, S) normalised frames."""
        device = self.device
        state: dict[str, Any] = {
            "images": images,
            "num_frames": len(images),
            "offload_video_to_cpu": images.device.type == "cpu" and device.type != "cpu",
            "offload_state_to_cpu": False,
            "video_height": int(video_height),
            "video_width": int(video_width),
            "device": device,
            "storage_device": device,
            "point_inputs_per_obj": {},
            "mask_inputs_per_obj": {},
            "cached_features": {},
            "constants": {},
            "obj_id_to_idx": OrderedDict(),
            "obj_idx_to_id": OrderedDict(),
            "obj_ids": [],
            "output_dict_per_obj": {},
            "temp_output_dict_per_obj": {},
            "frames_tracked_per_obj": {},
        }
        self._get_image_feature(state, frame_idx=0, batch_size=1)
        return state


def build_predictor(
    config: str, checkpoint: Path | None, device: torch.device, image_size: int | None
) -> ArrayVideoPredictor:
    """Build :class:`ArrayVideoPredictor` through SAM2's own builder (checkpoint loaded, eval mode)."""
    from sam2.build_sam import build_sam2_video_predictor

    overrides = [
        f"++model._target_={ArrayVideoPredictor.__module__}.{ArrayVideoPredictor.__qualname__}",
        "++model.fill_hole_area=0",
    ]
    if image_size is not None:
        overrides.append(f"++model.image_size={int(image_size)}")
    try:
        predictor = build_sam2_video_predictor(
            config,
            ckpt_path=None if checkpoint is None else str(checkpoint),
            device=str(device),
            hydra_overrides_extra=overrides,
        )
    except (RuntimeError, KeyError, EOFError, OSError, ValueError, pickle.UnpicklingError) as exc:
        if checkpoint is None:
            raise
        raise CheckpointError(
            f"{checkpoint}: does not load into the model of {config} ({type(exc).__name__}: "
            f"{exc or 'missing or unexpected weights'}). "
            f"{download_hint(config)}"
        ) from exc
    predictor.fill_hole_area = 0
    if not isinstance(predictor, ArrayVideoPredictor):  # pragma: no cover - guards a changed sam2 builder
        raise RuntimeError(
            f"sam2 built {type(predictor).__name__}, not ArrayVideoPredictor; the sam2 version is not the pinned 1.1.0"
        )
    return predictor


# --------------------------------------------------------------------------- the propagator


class SAM2Propagator:
    """SAM2.1 video propagation of one annotated reference slice through a target scan."""

    name = "sam2"

    def __init__(
        self,
        config: str = DEFAULT_CONFIG,
        checkpoint: str | Path | None = None,
        sha256: str | None = None,
        device: str = "cpu",
        image_size: int | None = None,
        allow_random_weights: bool = False,
        postprocess: bool = True,
        embed_batch: int = 4,
        seed: int = 0,
    ) -> None:
        self.config = config
        self.device = torch.device(device)
        self.postprocess = postprocess
        self.embed_batch = max(1, int(embed_batch))
        if checkpoint is None:
            if not allow_random_weights:
                raise CheckpointError(
                    f"no SAM2 checkpoint configured for {config}. Set the run profile's propagation.sam2_checkpoint "
                    f"to the file's path (and propagation.sam2_sha256 to its SHA-256). {download_hint(config)} "
                    f"Random weights are for tests only "
                    f"(allow_random_weights=True)."
                )
            log.warning("SAM2 with RANDOM weights (%s): for testing the plumbing only.", config)
            self.checkpoint, self.checkpoint_sha256 = None, None
        else:
            self.checkpoint = verify_checkpoint(checkpoint, sha256, download_hint(config))
            self.checkpoint_sha256 = sha256.strip().lower() if sha256 else file_sha256(self.checkpoint)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # random weights (tests) are the same in every run
            self.predictor = build_predictor(config, self.checkpoint, self.device, image_size)
        self.image_size = int(self.predictor.image_size)

    # ------------------------------------------------------------------ embeddings
    @torch.inference_mode()
    def embed(self, frames: np.ndarray) -> np.ndarray:
        """Image-encoder embedding per frame (top-level ``vision_features`` mean-pooled): (n, d) float32."""
        frames = np.asarray(frames)
        out = []
        for start in range(0, len(frames), self.embed_batch):
            batch = frames_to_model(frames[start : start + self.embed_batch], self.image_size, self.device)
            with autocast_for(self.device):
                features = self.predictor.forward_image(batch)["vision_features"]
            out.append(features.float().mean(dim=(2, 3)).cpu().numpy())
        dim = int(self.predictor.hidden_dim)
        return np.concatenate(out, axis=0).astype(np.float32) if out else np.zeros((0, dim), np.float32)

    # ------------------------------------------------------------------ video
    def run_video(
        self, frames: np.ndarray, prompts: dict[int, np.ndarray]
    ) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
        """Propagate mask prompts on frame 0 forward through ``frames`` (n, h, w) uint8.

        Yields per frame ``(frame_idx, logits (n_obj, h, w), iou (n_obj,), object_score (n_obj,))``
        with objects in the order of ``prompts`` (obj id → bool mask of frame 0). On the prompted
        frame SAM2 turns the mask into ±10 logits itself; its IoU is a dummy 1.
        """
        predictor = self.predictor
        images = frames_to_model(frames, self.image_size, self.device)
        with torch.inference_mode(), autocast_for(self.device):
            state = predictor.init_state_from_tensor(images, frames.shape[1], frames.shape[2])
            for obj_id, mask in prompts.items():
                predictor.add_new_mask(state, frame_idx=0, obj_id=int(obj_id), mask=np.asarray(mask, dtype=bool))
        steps = predictor.propagate_in_video(state, start_frame_idx=0, reverse=False)
        while True:
            # enter autocast per step: a context held across ``yield`` would leak into the caller
            with autocast_for(self.device):
                step = next(steps, None)
            if step is None:
                break
            frame_idx, obj_ids, video_res_masks = step
            ious, scores = [], []
            for obj_idx in range(len(obj_ids)):
                per_obj = state["output_dict_per_obj"][obj_idx]
                out = per_obj["cond_frame_outputs"].get(frame_idx) or per_obj["non_cond_frame_outputs"][frame_idx]
                iou = out.get("pred_iou")
                ious.append(float("nan") if iou is None else float(iou.flatten()[0]))
                scores.append(float(out["object_score_logits"].float().flatten()[0]))
            logits = video_res_masks[:, 0].float().cpu().numpy()
            yield frame_idx, logits, np.asarray(ious), np.asarray(scores)

    def propagate(
        self,
        reference: np.ndarray,
        annotated_slice: int,
        annotated_mask: np.ndarray,
        target: np.ndarray,
        case_id: str,
        target_is_reference: bool = False,
    ) -> PropagationResult:
        """Pseudo-labels of ``target`` from the annotation of ``reference[annotated_slice]`` (docs/method.md §4.2)."""
        reference, target, annotated_mask = _check_inputs(
            reference, annotated_slice, annotated_mask, target, target_is_reference
        )
        if target_is_reference:
            order = [("target", i) for i in range(annotated_slice, len(target))]
            frames = target[annotated_slice:]
        else:
            order = interleave(len(reference), len(target), annotated_slice)
            frames = np.stack([reference[i] if src == "reference" else target[i] for src, i in order])
        prompts = {cls: annotated_mask == cls for cls in CLASS_IDS}
        for cls, mask in prompts.items():
            if not mask.any():
                log.warning(
                    "%s: class %d is empty on the annotated slice %d; SAM2 gets an empty prompt.",
                    case_id,
                    cls,
                    annotated_slice,
                )

        masks = np.zeros(target.shape, dtype=np.uint8)
        raw: dict[int, tuple[np.ndarray, np.ndarray, bool]] = {}
        for frame_idx, logits, ious, scores in self.run_video(frames, prompts):
            source, index = order[frame_idx]
            if source != "target":
                continue
            prompted = target_is_reference and frame_idx == 0
            masks[index] = annotated_mask if prompted else resolve_overlaps(logits)
            raw[index] = (ious, scores, prompted)
        if target_is_reference and annotated_slice > 0:
            log.warning(
                "%s: slices 0..%d lie above the annotated slice; forward-only propagation leaves them empty.",
                case_id,
                annotated_slice - 1,
            )
        if self.postprocess:
            masks = clean_pseudo_label(masks, CLASS_IDS)
        if target_is_reference:
            masks[annotated_slice] = annotated_mask  # the annotation itself, never altered by cleaning
        rows = []
        for index in range(len(target)):
            ious, scores, prompted = raw.get(index, (None, None, False))
            for k, cls in enumerate(CLASS_IDS):
                tracked = ious is not None and not prompted
                rows.append(
                    {
                        "case": case_id,
                        "slice": index,
                        "class": cls,
                        "iou": float(ious[k]) if tracked else float("nan"),
                        "object_score": float(scores[k]) if tracked else float("nan"),
                        "area": int(np.count_nonzero(masks[index] == cls)),
                        "prompted": prompted,
                    }
                )
        return PropagationResult(masks=masks, confidence=confidence_frame(rows), frame_order=order)


def _check_inputs(
    reference: np.ndarray,
    annotated_slice: int,
    annotated_mask: np.ndarray,
    target: np.ndarray,
    target_is_reference: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate shapes and the annotated slice; return uint8 arrays."""
    reference, target = np.asarray(reference), np.asarray(target)
    annotated_mask = np.asarray(annotated_mask).astype(np.uint8)
    if reference.ndim != 3 or target.ndim != 3:
        raise ValueError(f"reference and target must be (slice, h, w) stacks, got {reference.shape} and {target.shape}")
    if reference.shape[1:] != target.shape[1:] or annotated_mask.shape != reference.shape[1:]:
        raise ValueError(
            f"slice sizes differ: reference {reference.shape[1:]}, target {target.shape[1:]}, mask "
            f"{annotated_mask.shape}"
        )
    if not 0 <= annotated_slice < len(reference):
        raise ValueError(f"annotated_slice {annotated_slice} is outside the reference (0..{len(reference) - 1})")
    if target_is_reference and target.shape != reference.shape:
        raise ValueError(f"target_is_reference=True but target {target.shape} and reference {reference.shape} differ")
    if len(target) == 0:
        raise ValueError("the target scan has no slices")
    return reference.astype(np.uint8, copy=False), target.astype(np.uint8, copy=False), annotated_mask
