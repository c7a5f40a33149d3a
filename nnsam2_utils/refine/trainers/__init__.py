"""nnU-Net trainer classes of nnsam2 (found by nnU-Net through ``nnUNet_extTrainer``)."""
