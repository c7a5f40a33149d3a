"""Shared fixtures: small real images built with SimpleITK, and the tiny demo cohort."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk


def make_image(array: np.ndarray, spacing=(0.9, 0.9, 4.0), direction=None, origin=(0.0, 0.0, 0.0)) -> sitk.Image:
    """A SimpleITK image from a (z, y, x) array with the given geometry."""
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    if direction is not None:
        image.SetDirection(direction)
    return image


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory):
    """The tiny demo cohort generated once per test session; returns its folder."""
    from nnsam2_utils.data.synthetic.cohort import generate_cohort

    folder = tmp_path_factory.mktemp("tiny_cohort")
    generate_cohort(folder, size="tiny", seed=0)
    return folder
