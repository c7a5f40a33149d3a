"""The promptable model's input: intensities clipped (CT to [-30, 150] HU; MRI to the 0.5–99.5th
percentile of the volume), scaled to [0, 255] as uint8 and resized to 256 × 256 (bilinear); labels
nearest-neighbour (docs/method.md §2). Measurements always use the unclipped native images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nnsam2_utils.data.geometry import to_stack

MODEL_SIZE = 256


CT_WINDOW = (-30.0, 150.0)


MRI_PERCENTILES = (0.5, 99.5)


def normalise(volume: np.ndarray, modality: str) -> np.ndarray:
    """Clip (CT window or MRI percentiles over the volume) and scale to [0, 255] as float32."""
    volume = volume.astype(np.float32)
    if modality == "CT":
        low, high = CT_WINDOW
    else:
        low, high = np.percentile(volume, MRI_PERCENTILES)
    if high <= low:
        return np.zeros_like(volume)
    return (np.clip(volume, low, high) - low) / (high - low) * 255.0


def resize_stack(stack: np.ndarray, size: tuple[int, int], nearest: bool) -> np.ndarray:
    """Resize every slice of a (n, h, w) stack (bilinear for images, nearest for labels)."""
    import torch  # imported here: pages that only read prepared scans start without torch
    import torch.nn.functional as F

    tensor = torch.from_numpy(np.ascontiguousarray(stack, dtype=np.float32))[:, None]
    if nearest:
        out = F.interpolate(tensor, size=size, mode="nearest-exact")
    else:
        out = F.interpolate(tensor, size=size, mode="bilinear", align_corners=False)
    return out[:, 0].numpy()


def model_input(image: sitk.Image, modality: str, size: int = MODEL_SIZE) -> np.ndarray:
    """The (n, size, size) uint8 stack the promptable model sees, superior → inferior."""
    scaled = resize_stack(normalise(to_stack(image), modality), (size, size), nearest=False)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def label_to_model(label: np.ndarray, size: int = MODEL_SIZE) -> np.ndarray:
    """Class stack (n, h, w) → (n, size, size) uint8, nearest neighbour."""
    return resize_stack(label, (size, size), nearest=True).astype(np.uint8)


def label_from_model(masks: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Class stack at model size → native (n, rows, columns), nearest neighbour."""
    return resize_stack(masks, shape, nearest=True).astype(np.uint8)


def load_stack(folder: str | Path, name: str = "image") -> tuple[np.ndarray, sitk.Image]:
    """A prepared volume as a superior→inferior stack, with its LPS image for geometry."""
    from nnsam2_utils.data.io import read_image

    image = read_image(Path(folder) / f"{name}.nii.gz")
    return to_stack(image), image


def load_model_input(folder: str | Path) -> np.ndarray:
    """The prepared (n, 256, 256) uint8 model-input stack of a case."""
    with np.load(Path(folder) / "model_input.npz") as data:
        return data["frames"]
