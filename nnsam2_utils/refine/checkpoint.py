"""nnU-Net checkpoints this pipeline trusts: only those its own training recorded, and read as plain data.

Two rules, for every load (training resume, warm start, prediction, ``nnsam2 predict`` / ``export``):

* **Recorded.** The trainer writes each checkpoint's SHA-256 into the run record of its nnU-Net root,
  ``<root>/checkpoint_record/<Dataset>/<model>/<fold>/<checkpoint>.sha256``, outside nnU-Net's ``results``
  tree. A checkpoint placed in a model folder by anyone else (or copied in with its model folder, any
  checksum file beside it included) has no matching record and is refused before it is opened.
* **Plain data.** It is read with ``torch.load(weights_only=True)``: tensors, numbers, strings and the few
  NumPy types nnU-Net's training log holds, never an object whose unpickling runs code. nnU-Net's own
  loaders (``nnUNetTrainer.load_checkpoint``, ``nnUNetPredictor.initialize_from_trained_model_folder``,
  ``load_pretrained_weights``) unpickle with ``weights_only=False`` and are never called.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from nnsam2_utils.data.io import atomic_path, sha256
from nnsam2_utils.errors import CheckpointError

#: The run record's folder in an nnU-Net root (beside ``raw``, ``preprocessed`` and ``results``).
RECORD = "checkpoint_record"


def allowed_globals() -> list:
    """The non-tensor types an nnU-Net v2 checkpoint of nnsam2's trainer holds besides builtins.

    Found by listing ``torch.serialization.get_unsafe_globals_in_checkpoint`` of checkpoints the trainer wrote:
    the training log's NumPy scalars (``numpy._core.multiarray.scalar`` rebuilt from a ``numpy.dtype``, whose
    class is ``Float32DType``; float64 and int64 when nnU-Net logs those). The trainer's arguments (dicts,
    strings, a ``torch.device``) and the optimizer state are builtins torch allows without a list.
    """
    dtypes = [type(np.dtype(t)) for t in (np.float32, np.float64, np.int64)]
    return [np._core.multiarray.scalar, np.dtype, *dtypes]


def record_path(checkpoint: str | Path) -> Path:
    """The run-record file holding the SHA-256 of a checkpoint under ``<root>/results/<Dataset>/<model>/<fold>/``.

    A checkpoint outside that layout is a CheckpointError: nnsam2 trains (and so loads) only there.
    """
    checkpoint = Path(checkpoint).absolute()
    parents = checkpoint.parents
    if len(parents) < 5 or parents[3].name != "results":
        raise CheckpointError(
            f"{checkpoint}: not inside an nnU-Net results folder (<root>/results/<Dataset>/<model>/<fold>/); nnsam2 "
            "loads only checkpoints its own training wrote there. Train the stage with nnsam2 (delete the folder)."
        )
    return parents[4] / RECORD / checkpoint.relative_to(parents[3]).with_name(checkpoint.name + ".sha256")


def record_checkpoint_digest(checkpoint: str | Path, written: str | Path | None = None) -> Path:
    """Record in the run record the SHA-256 of a checkpoint this run's training wrote; returns the record file.

    ``written``: the temporary file about to be renamed to ``checkpoint`` (nnsam2's trainer records before it
    renames). The digest recorded before is kept as well, so a run killed between the record and the rename
    still resumes from the checkpoint it had: both files are its own. Written atomically.
    """
    target = record_path(checkpoint)
    digests = [sha256(written or checkpoint)] + recorded_digests(target)[:1]
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        tmp.write_text("".join(f"{d}\n" for d in dict.fromkeys(digests)), encoding="utf-8")
    return target


def recorded_digests(record: Path) -> list[str]:
    """The SHA-256 digests a run-record file holds (newest first; none when it is missing)."""
    if not record.is_file():
        return []
    return [line.split()[0] for line in record.read_text(encoding="utf-8").splitlines() if line.strip()]


def recorded_digest(checkpoint: str | Path) -> str:
    """The SHA-256 of a checkpoint, checked against the one the run recorded when its training wrote it.

    Raises CheckpointError naming the checkpoint when the run recorded none for it (a file this run did not
    train) or recorded another one (changed or replaced since).
    """
    checkpoint = Path(checkpoint)
    record = record_path(checkpoint)
    if not record.is_file():
        raise CheckpointError(
            f"{checkpoint}: not written by this run's training (no SHA-256 for it in the run record {record}). "
            "A checkpoint placed or copied into a model folder is never loaded (unpickling one can run code); "
            f"retrain the stage (delete {checkpoint.parent.parent})."
        )
    actual = sha256(checkpoint)
    if actual not in recorded_digests(record):
        raise CheckpointError(
            f"{checkpoint}: SHA-256 differs from the one recorded when it was trained ({record}): the file was "
            f"changed or replaced after training. Retrain the stage (delete {checkpoint.parent.parent}) rather "
            "than load a checkpoint nobody can vouch for."
        )
    return actual


def verify_trained_checkpoint(checkpoint: str | Path) -> Path:
    """The checkpoint's path once :func:`recorded_digest` has checked it (a CheckpointError otherwise)."""
    recorded_digest(checkpoint)
    return Path(checkpoint)


def read_checkpoint(checkpoint: str | Path) -> dict:
    """A checkpoint this run recorded, read as plain data: ``torch.load(weights_only=True)``, never code.

    The record is checked first (:func:`recorded_digest`); a recorded file that still holds anything but
    tensors and the types of :func:`allowed_globals` is a CheckpointError naming it.
    """
    recorded_digest(checkpoint)
    try:
        with torch.serialization.safe_globals(allowed_globals()):
            return torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle refuses other globals with UnpicklingError; a damaged file raises others
        raise CheckpointError(
            f"{checkpoint}: not a plain nnU-Net checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}). "
            f"Only tensors, numbers and settings are loaded, never code; retrain the stage (delete "
            f"{Path(checkpoint).parent.parent})."
        ) from exc


def write_checksum_file(checkpoint: str | Path) -> Path:
    """``<checkpoint>.sha256`` beside a final checkpoint, for whoever receives the model (``nnsam2 export`` ships it).

    nnsam2 itself never trusts this file (anyone who can place a checkpoint can place it too): loads are checked
    against the run record only (:func:`recorded_digest`).
    """
    checkpoint = Path(checkpoint)
    target = checkpoint.with_name(checkpoint.name + ".sha256")
    with atomic_path(target) as tmp:
        tmp.write_text(f"{recorded_digest(checkpoint)}  {checkpoint.name}\n", encoding="utf-8")
    return target


def forget_removed_checkpoint(checkpoint: str | Path) -> None:
    """Drop the record of a checkpoint the training removed (nnU-Net deletes ``checkpoint_latest.pth`` at the end)."""
    if not Path(checkpoint).exists():
        record_path(checkpoint).unlink(missing_ok=True)
