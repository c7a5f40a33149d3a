"""nnU-Net checkpoints this pipeline trusts: read as plain data, and only those whose SHA-256 it recorded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from nnsam2_utils.data.io import atomic_path, sha256
from nnsam2_utils.errors import CheckpointError


def read_checkpoint(checkpoint: str | Path) -> dict:
    """An nnU-Net checkpoint as plain data: ``torch.load(weights_only=True)``, never unpickling code.

    nnU-Net's own loaders (trainer resume, predictor) unpickle with ``weights_only=False``, so a
    checkpoint planted in a model folder could run code; every load of this pipeline goes through
    here instead. Besides tensors a checkpoint holds its training log (NumPy scalars) and the
    trainer's arguments (plain dicts, a ``torch.device``): those are the only other types allowed.
    """
    allowed = [np._core.multiarray.scalar, np.dtype] + [type(np.dtype(t)) for t in (np.float64, np.float32, np.int64)]
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle refuses other globals with UnpicklingError; a damaged file raises others
        raise CheckpointError(
            f"{checkpoint}: not a plain nnU-Net checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}). "
            "Only tensors, numbers and settings are loaded, never code; retrain the stage (delete its folder)."
        ) from exc


def record_checkpoint_digest(checkpoint: str | Path) -> Path:
    """Write ``<checkpoint>.sha256`` beside a checkpoint this run trained (atomically); returns its path.

    nnU-Net reads its own checkpoints with ``torch.load(weights_only=False)`` (they hold the
    trainer's settings, not only tensors), so :func:`load_predictor` first checks the file
    against this digest: a checkpoint swapped or altered after training is refused.
    """
    checkpoint = Path(checkpoint)
    target = checkpoint.with_name(checkpoint.name + ".sha256")
    with atomic_path(target) as tmp:
        tmp.write_text(sha256(checkpoint) + "\n", encoding="utf-8")
    return target


def verify_trained_checkpoint(checkpoint: str | Path) -> Path:
    """Check a trained checkpoint against the digest written at the end of its training.

    Raises CheckpointError when the digest file is missing or does not match.
    """
    checkpoint = Path(checkpoint)
    digest = checkpoint.with_name(checkpoint.name + ".sha256")
    if not digest.is_file():
        raise CheckpointError(
            f"{digest}: no SHA-256 recorded for {checkpoint.name}. nnU-Net checkpoints are loaded with "
            "pickle, so only checkpoints this pipeline trained (and recorded) are used; retrain the stage "
            "(delete its folder) or, for a checkpoint you trust, write its SHA-256 into that file."
        )
    expected = (digest.read_text(encoding="utf-8").split() or [""])[0]
    if sha256(checkpoint) != expected:
        raise CheckpointError(
            f"{checkpoint}: SHA-256 differs from the one recorded when it was trained ({digest.name}): the "
            "file was changed or replaced after training. Retrain the stage (delete its folder) rather "
            "than load a checkpoint nobody can vouch for."
        )
    return checkpoint
