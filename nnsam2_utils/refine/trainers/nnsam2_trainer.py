"""The nnU-Net v2 trainer used by every nnsam2 stage.

* No mirroring, in training or at inference: left and right LPM are different classes.
* The training budget comes from the environment (set by :func:`nnsam2_utils.refine.nnunet.train`):
  ``NNSAM2_EPOCHS``, ``NNSAM2_ITERATIONS``, ``NNSAM2_VAL_ITERATIONS``; unset means nnU-Net's
  defaults (1000 × 250, 50), the paper's budget.
* The rotation range of data augmentation from ``NNSAM2_ROTATION_DEG`` (± degrees, about every
  axis nnU-Net rotates); unset means nnU-Net's choice, ±180° in-plane for near-square 2-D patches.
  Axial lumbar scans are never upside down, and arbitrary rotations slow down learning which
  side is which (right and left LPM are different classes) far beyond a CPU budget.
* Checkpoints are written atomically (a temporary name, then a rename): a run killed while
  saving leaves the previous ``checkpoint_latest.pth`` intact, never a half-written one. Each one's
  SHA-256 goes into the run record first (:mod:`nnsam2_utils.refine.checkpoint`): nothing else is loaded.
* A checkpoint after every epoch (``checkpoint_latest.pth``, ``save_every = 1``) so an
  interrupted run resumes from the last finished epoch.
* ``NNSAM2_PRECISION=bf16`` (a CPU with native bf16 only): the network's forward pass runs under bf16
  autocast, the loss, gradients and weights stay fp32. On a CPU nnU-Net itself never autocasts.
* No ``checkpoint_best.pth`` (nnsam2 uses the final weights) and the progress plot drawn once, after the last
  epoch (nnU-Net draws it after every epoch: with the demo's 4-second epochs, a sixth of the time).
* nnU-Net's end-of-training validation is skipped: nnsam2 predicts every scan itself.
* A resumed training reads its checkpoint only if recorded, as plain data (``weights_only=True``), never code.
* Augmentation in worker processes is deterministic: batchgenerators' ``MultiThreadedAugmenter`` (workers
  seeded from ``NNSAM2_SEED``, batches taken in turn from each worker) replaces nnU-Net's
  ``NonDetMultiThreadedAugmenter``, whose batch order depends on which worker finishes first. Same
  seed, thread count and machine: the same weights.

This module is imported by nnU-Net by file path, so it uses absolute imports only.
"""

from __future__ import annotations

import math
import os

import torch
from nnunetv2.training.data_augmentation.compute_initial_patch_size import get_patch_size
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


def worker_seeds(seed: int, stream: int, workers: int) -> list[int]:
    """Seeds of the augmentation workers of one stream (0 training, 1 validation) of a training."""
    return [int(seed) * 1000 + stream * 100 + i for i in range(workers)]


class SeededWorkerLoader:
    """A data loader as one augmentation worker process sees it: one torch thread and torch seeded per worker.

    ``MultiThreadedAugmenter`` calls ``set_thread_id`` first thing in each worker process. A forked
    worker that kept torch's thread pool of its parent can hang in its first parallel operation
    (nnU-Net's own augmenter sets one thread for this reason), and would share the parent's torch
    random stream with its sibling workers.
    """

    def __init__(self, loader, seeds: list[int]):
        self.loader, self.seeds = loader, list(seeds)

    def set_thread_id(self, thread_id: int) -> None:
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(1)
        threadpool_limits(1)
        torch.manual_seed(self.seeds[thread_id])
        self.loader.set_thread_id(thread_id)

    def __iter__(self):
        return self

    def __next__(self):
        return next(self.loader)

    def __getattr__(self, name: str):
        return getattr(self.loader, name)


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


def precision() -> str:
    """The training precision asked for in ``NNSAM2_PRECISION``: ``fp32`` (unset) or ``bf16``."""
    value = os.environ.get("NNSAM2_PRECISION") or "fp32"
    if value not in ("fp32", "bf16"):
        raise ValueError(f"NNSAM2_PRECISION must be fp32 or bf16, got {value!r}")
    return value


def rotation_range(degrees: float) -> tuple[float, float]:
    """nnU-Net's rotation range (radians, used for every axis) for ±``degrees``."""
    if not 0 <= float(degrees) <= 180:
        raise ValueError(f"NNSAM2_ROTATION_DEG must be within 0-180 degrees, got {degrees}")
    limit = math.radians(float(degrees))
    return (-limit, limit)


class nnUNetTrainer_nnsam2(nnUNetTrainer):
    """nnU-Net trainer without mirroring, with a budget from the environment."""

    def __init__(
        self,
        plans: dict,
        configuration: str,
        fold: int,
        dataset_json: dict,
        device: torch.device = torch.device("cuda"),  # noqa: B008 (nnU-Net's own signature)
    ):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = _env_int("NNSAM2_EPOCHS", self.num_epochs)
        self.num_iterations_per_epoch = _env_int("NNSAM2_ITERATIONS", self.num_iterations_per_epoch)
        self.num_val_iterations_per_epoch = _env_int("NNSAM2_VAL_ITERATIONS", self.num_val_iterations_per_epoch)
        self.save_every = 1

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        rotation, dummy_2d, initial_patch_size, _ = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        degrees = os.environ.get("NNSAM2_ROTATION_DEG")
        if degrees:
            rotation = rotation_range(float(degrees))
            dim = len(self.configuration_manager.patch_size)
            initial_patch_size = get_patch_size(
                self.configuration_manager.patch_size[-dim:], rotation, rotation, rotation, (0.85, 1.25)
            )
            if dummy_2d:
                initial_patch_size[0] = self.configuration_manager.patch_size[0]
            self.print_to_log_file(
                f"nnsam2: augmentation rotation limited to +/-{float(degrees)} degrees"
            )  # ASCII: nnU-Net writes its log in the locale encoding
        self.inference_allowed_mirroring_axes = None
        return rotation, dummy_2d, initial_patch_size, None

    def get_dataloaders(self):
        """nnU-Net's data loaders, with seeded worker processes whose batches arrive in a fixed order."""
        import nnunetv2.training.nnUNetTrainer.nnUNetTrainer as base
        from batchgenerators.dataloading.multi_threaded_augmenter import MultiThreadedAugmenter

        seed, streams = _env_int("NNSAM2_SEED", 0), iter(range(2))

        def augmenter(data_loader, transform, num_processes, num_cached, seeds, pin_memory, wait_time):
            seeds = worker_seeds(seed, next(streams), num_processes)
            return MultiThreadedAugmenter(
                SeededWorkerLoader(data_loader, seeds),
                transform,
                num_processes,
                num_cached_per_queue=max(2, num_cached // num_processes),
                seeds=seeds,
                pin_memory=pin_memory,
                wait_time=wait_time,
            )

        original = base.NonDetMultiThreadedAugmenter
        base.NonDetMultiThreadedAugmenter = augmenter  # nnU-Net builds its augmenters by this module-level name
        try:
            return super().get_dataloaders()
        finally:
            base.NonDetMultiThreadedAugmenter = original

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        """Resume from a checkpoint this run recorded, read as plain data (``weights_only=True``), never code.

        nnU-Net's own loader unpickles with ``weights_only=False``; this one restores the same state
        (network, optimizer, epoch, training log) from :func:`nnsam2_utils.refine.checkpoint.read_checkpoint`,
        which refuses a file whose SHA-256 the run record does not hold.
        """
        from nnsam2_utils.refine.checkpoint import read_checkpoint

        checkpoint = filename_or_checkpoint
        if not isinstance(checkpoint, dict):
            checkpoint = read_checkpoint(checkpoint)
        if not self.was_initialized:
            self.initialize()
        network = self.network.module if self.is_ddp else self.network
        network = getattr(network, "_orig_mod", network)
        network.load_state_dict({k.removeprefix("module."): v for k, v in checkpoint["network_weights"].items()})
        self.my_init_kwargs = checkpoint["init_args"]
        self.current_epoch = checkpoint["current_epoch"]
        self.logger.load_checkpoint(checkpoint["logging"])
        self._best_ema = checkpoint["_best_ema"]
        self.inference_allowed_mirroring_axes = checkpoint.get(
            "inference_allowed_mirroring_axes", self.inference_allowed_mirroring_axes
        )
        self.optimizer.load_state_dict(checkpoint["optimizer_state"])
        if self.grad_scaler is not None and checkpoint.get("grad_scaler_state") is not None:
            self.grad_scaler.load_state_dict(checkpoint["grad_scaler_state"])

    def on_train_start(self) -> None:
        """nnU-Net's start; its progress plot is then drawn only after the last epoch, or never when
        ``NNSAM2_PROGRESS_PLOT`` is 0."""
        super().on_train_start()
        draw = self.logger.plot_progress_png
        wanted = _env_int("NNSAM2_PROGRESS_PLOT", 1) != 0

        def draw_at_the_end(output_folder: str) -> None:
            if wanted and self.current_epoch >= self.num_epochs - 1:
                draw(output_folder)

        self.logger.plot_progress_png = draw_at_the_end

    def on_train_end(self) -> None:
        """nnU-Net's end (the final checkpoint saved, the latest deleted); the deleted one's record goes with it."""
        from nnsam2_utils.refine.checkpoint import forget_removed_checkpoint

        super().on_train_end()
        if self.local_rank == 0:
            forget_removed_checkpoint(os.path.join(self.output_folder, "checkpoint_latest.pth"))

    def save_checkpoint(self, filename: str) -> None:
        """nnU-Net's checkpoint, written to a temporary name and renamed into place; no best-epoch checkpoint."""
        folder, name = os.path.split(filename)
        if name == "checkpoint_best.pth":  # nnsam2 predicts with the final weights, never the best-EMA epoch's
            return
        temporary = os.path.join(folder, f".{name}.{os.getpid()}.tmp.pth")
        super().save_checkpoint(temporary)
        if os.path.exists(temporary):  # only the main process writes
            from nnsam2_utils.refine.checkpoint import record_checkpoint_digest

            record_checkpoint_digest(filename, written=temporary)  # the run record: all nnsam2 ever loads
            os.replace(temporary, filename)

    def train_step(self, batch: dict) -> dict:
        """nnU-Net's training step; with bf16 the forward pass under CPU autocast, the loss in fp32."""
        if precision() != "bf16" or self.device.type != "cpu":
            return super().train_step(batch)
        data = batch["data"].to(self.device)
        target = batch["target"]
        target = [t.to(self.device) for t in target] if isinstance(target, list) else target.to(self.device)
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            output = self.network(data)
        output = [o.float() for o in output] if isinstance(output, (list, tuple)) else output.float()
        loss = self.loss(output, target)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
        self.optimizer.step()
        return {"loss": loss.detach().cpu().numpy()}

    def perform_actual_validation(self, save_probabilities: bool = False):
        self.print_to_log_file("nnsam2: validation skipped (every scan is predicted by the pipeline)")
