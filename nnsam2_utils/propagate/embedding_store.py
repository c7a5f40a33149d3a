"""Slice embeddings kept on disk, so a later step reuses what stage 0 encoded (docs/method.md §10.6).

LiteMedSAM's image encoder is most of stage 0's cost, and the Which-slice chapter propagates the same scans of one
dataset again from other annotated slices: it needs exactly the embeddings stage 0 computed. An
:class:`EmbeddingStore` keeps each slice's embedding as one ``.npy`` file (float32, 4 MiB per 256² slice), named by
the slice's content (:func:`~nnsam2_utils.propagate.litemedsam.slice_key`) under a folder named by the encoder that
made it (its weights' SHA-256, the encoder kind and, for OpenVINO, its version; for torch, the device type), so an
embedding is only ever reused for the same slice bytes through the same encoder, and a missing or unreadable file is
simply encoded again.

Files are written under a temporary name and moved in place (a killed step leaves no half file under a final
name); a store opened read-only never writes, so a step never changes another step's folder.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from nnsam2_utils.data.io import atomic_path

log = logging.getLogger(__name__)


def encoder_identity(weights_sha256: str, encoder: str, device: str = "cpu") -> str:
    """The folder name of one encoder's embeddings: weights, encoder kind and, for OpenVINO, its version (CPU only);
    for torch the device type (a GPU's embeddings differ from the CPU's in the last digits)."""
    identity = f"{weights_sha256[:16]}-{encoder}"
    if encoder.startswith("openvino"):  # imported with OpenVINO's telemetry declined, as for the encoder's export
        from nnsam2_utils.propagate.encoder_export import openvino_release

        return f"{identity}-ov{openvino_release()}"
    return f"{identity}-{device}"


class EmbeddingStore:
    """Slice embeddings of one encoder in ``folder / identity``; ``writable=False`` only reads.

    ``hits`` and ``writes`` count what the store served and kept (for run records and tests).
    """

    def __init__(self, folder: str | Path, writable: bool = True) -> None:
        self.folder = Path(folder)
        self.writable = bool(writable)
        self.identity: str | None = None
        self.hits = 0
        self.writes = 0

    def bind(self, identity: str) -> None:
        """Serve the embeddings of the encoder named ``identity`` (:func:`encoder_identity`)."""
        self.identity = identity

    def _path(self, key: str) -> Path:
        if self.identity is None:
            raise RuntimeError("EmbeddingStore.bind(identity) must be called before the store is used.")
        return self.folder / self.identity / f"{key}.npy"

    def get(self, key: str, shape: tuple[int, ...]) -> torch.Tensor | None:
        """The stored embedding of slice ``key`` (float32, ``shape``), or None when absent or unreadable."""
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as error:
            log.warning("%s: unreadable stored embedding (%s); the slice is encoded again", path, error)
            return None
        if array.shape != tuple(shape) or array.dtype != np.float32:
            log.warning(
                "%s: stored embedding is %s %s, not float32 %s; encoded again", path, array.dtype, array.shape, shape
            )
            return None
        self.hits += 1
        return torch.from_numpy(array)

    def put(self, key: str, embedding: torch.Tensor) -> None:
        """Keep the embedding of slice ``key`` (nothing when read-only or already kept)."""
        if not self.writable:
            return
        path = self._path(key)
        if path.is_file():
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path, suffix=".npy") as tmp, open(tmp, "wb") as file:
            np.save(file, embedding.detach().float().cpu().numpy(), allow_pickle=False)
        self.writes += 1
