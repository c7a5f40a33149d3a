"""Shared fixtures: small real images built with SimpleITK, and the tiny demo cohort."""

from __future__ import annotations

import os

# Each pytest-xdist worker (make test runs one per core) computes with one thread, as each workflow job does
# (Snakefile THREAD_LIMITS): two workers with a thread pool per core each would contend for the same two cores.
# Set before torch, OpenVINO or ITK is imported; an explicit setting in the environment wins.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import SimpleITK as sitk  # noqa: E402


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


#: Test modules that take minutes, longest first (measured with pytest --durations). make test runs
#: a module per pytest-xdist worker in collection order (--no-loadscope-reorder): the long ones start first, so no
#: worker is left with a long module at the end while the other idles.
LONGEST_FIRST = (
    "test_workflow.py",
    "test_apply.py",
    "test_nnunet.py",
    "test_resume.py",
    "test_litemedsam.py",
    "test_gpu_check.py",
    "test_encoder_export.py",
    "test_report_figures.py",
)


def pytest_collection_modifyitems(config, items) -> None:
    """Collect the long test modules first (a stable sort: the order inside a module is kept)."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
