"""Promptable propagation backends behind one interface (see :mod:`.base`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nnsam2_utils.errors import ConfigError
from nnsam2_utils.propagate.base import CONFIDENCE_COLUMNS, PropagationResult, Propagator

if TYPE_CHECKING:
    from nnsam2_utils.propagate.embedding_store import EmbeddingStore

BACKENDS = ("litemedsam", "sam2")


def make_propagator(settings: dict[str, Any], embedding_store: EmbeddingStore | None = None) -> Propagator:
    """Build the backend a run profile's ``propagation`` section asks for (no silent fallback).

    ``embedding_store``: slice embeddings kept on disk (LiteMedSAM only; SAM2 encodes inside its video predictor)."""
    backend = settings.get("backend", "litemedsam")
    device = settings.get("device", "cpu")
    if backend == "litemedsam":
        from nnsam2_utils.propagate.litemedsam import LiteMedSAMPropagator

        return LiteMedSAMPropagator(
            device=device,
            encoder=settings.get("encoder", "torch"),
            encoder_cache=settings.get("encoder_cache"),
            embedding_store=embedding_store,
            decoder=settings.get("decoder", "torch"),
        )
    if backend == "sam2":
        from pathlib import Path

        from nnsam2_utils.data.checkpoints import expand_path
        from nnsam2_utils.propagate.encoder_export import find_repo_root
        from nnsam2_utils.propagate.sam2 import SAM2Propagator

        checkpoint = settings.get("sam2_checkpoint")
        if checkpoint:  # the same expansion as the start check (workflow.preflight)
            checkpoint = expand_path(checkpoint, find_repo_root() or Path.cwd(), "propagation.sam2_checkpoint")
        return SAM2Propagator(
            config=settings.get("sam2_config", "configs/sam2.1/sam2.1_hiera_l.yaml"),
            checkpoint=checkpoint,
            sha256=settings.get("sam2_sha256"),
            device=device,
            image_size=settings.get("sam2_image_size"),
        )
    raise ConfigError(f"propagation.backend '{backend}' is unknown; use one of {BACKENDS}.")


__all__ = ["BACKENDS", "CONFIDENCE_COLUMNS", "PropagationResult", "Propagator", "make_propagator"]
