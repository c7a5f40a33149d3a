"""A minimal synthetic scan for tests and benchmarks of the propagation backends (not anatomy:
the demo cohort is :mod:`nnsam2_utils.data.synthetic.cohort`)."""

from __future__ import annotations

import numpy as np


def ellipse_stack(n: int = 6, shift: int = 0, seed: int = 0, size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """A minimal model-space scan for tests and benchmarks: uint8 (n, size, size) slices (body,
    vertebra, two muscle ellipses drifting apart from slice to slice, superior → inferior) and
    their class masks (1 right, 2 left)."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    scale = size / 256
    r, c = np.ogrid[:size, :size]

    def ellipse(centre: tuple[float, float], axes: tuple[float, float]) -> np.ndarray:
        return ((r - centre[0] * scale) / (axes[0] * scale)) ** 2 + (
            (c - centre[1] * scale) / (axes[1] * scale)
        ) ** 2 <= 1

    images, labels = [], []
    for k in range(n):
        image = np.full((size, size), 5.0)
        label = np.zeros((size, size), np.uint8)
        image[ellipse((128, 128), (90, 115))] = 70
        image[ellipse((112, 128), (14, 14))] = 235
        for cls, col in ((1, 84 - k + shift), (2, 172 + k + shift)):
            muscle = ellipse((165 + 2 * k, col), (20 + k, 24 + k))
            image[muscle] = 185
            label[muscle] = cls
        image = ndimage.gaussian_filter(image, 1.0) + rng.normal(0, 4, image.shape)
        images.append(np.clip(image, 0, 255).astype(np.uint8))
        labels.append(label)
    return np.stack(images), np.stack(labels)
