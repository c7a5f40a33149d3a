"""The nnU-Net v2 trainer used by every nnsam2 stage.

* No mirroring, in training or at inference: left and right LPM are different classes.
* The training budget comes from the environment (set by :func:`nnsam2_utils.nnunet.train`):
  ``NNSAM2_EPOCHS``, ``NNSAM2_ITERATIONS``, ``NNSAM2_VAL_ITERATIONS``; unset means nnU-Net's
  defaults (1000 × 250, 50), the paper's budget.
* A checkpoint after every epoch (``checkpoint_latest.pth``, ``save_every = 1``) so an
  interrupted run resumes from the last finished epoch.
* nnU-Net's end-of-training validation is skipped: nnsam2 predicts every scan itself.

This module is imported by nnU-Net by file path, so it uses absolute imports only.
"""
from __future__ import annotations

import os

import torch

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


class nnUNetTrainer_nnsam2(nnUNetTrainer):
    """nnU-Net trainer without mirroring, with a budget from the environment."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = _env_int("NNSAM2_EPOCHS", self.num_epochs)
        self.num_iterations_per_epoch = _env_int("NNSAM2_ITERATIONS", self.num_iterations_per_epoch)
        self.num_val_iterations_per_epoch = _env_int("NNSAM2_VAL_ITERATIONS", self.num_val_iterations_per_epoch)
        self.save_every = 1

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        rotation, dummy_2d, initial_patch_size, _ = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        self.inference_allowed_mirroring_axes = None
        return rotation, dummy_2d, initial_patch_size, None

    def perform_actual_validation(self, save_probabilities: bool = False):
        self.print_to_log_file("nnsam2: validation skipped (every scan is predicted by the pipeline)")
