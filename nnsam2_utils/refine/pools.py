"""nnU-Net's planning and preprocessing pools, run as threads of the calling process.

nnU-Net fingerprints, checks and preprocesses a dataset through ``multiprocessing.get_context("spawn")
.Pool`` even with one process, and lists a raw dataset's files through a forked pool of 12. Each
spawned worker starts a fresh interpreter that imports torch and nnU-Net before it reads its first
case: the fingerprint of a small training set took ~14 s (12 s of it waiting for the workers to
start), the integrity check ~3.6 s and the preprocessing ~4 s (cProfile, tests/test_apply.py's
training set, 2 cores). :func:`thread_pools` hands those modules a pool of threads instead: the same
functions run on the same cases in the same order with the same seeds, so the fingerprint, the plan
and the preprocessed arrays are unchanged (tests/test_pools.py compares the fingerprint; a training's
preprocessed files and final weights were byte-identical with and without); only the interpreter
start-ups are gone.
"""

from __future__ import annotations

import importlib
import multiprocessing
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing.pool import ThreadPool
from typing import Any

#: The nnU-Net modules whose ``multiprocessing.get_context("spawn").Pool`` becomes a thread pool.
POOLED_MODULES = (
    "nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor",
    "nnunetv2.experiment_planning.verify_dataset_integrity",
    "nnunetv2.preprocessing.preprocessors.default_preprocessor",
)

#: The nnU-Net module that lists a raw dataset's files with ``from multiprocessing import Pool`` (a fork pool of 12).
FORKED_MODULE = "nnunetv2.utilities.utils"


class _ThreadContext:
    """A multiprocessing context whose ``Pool`` is a :class:`ThreadPool` (its workers answer ``is_alive``)."""

    def Pool(self, processes: int | None = None, *args: Any, **kwargs: Any) -> ThreadPool:  # noqa: N802 (stdlib name)
        return ThreadPool(processes or 1)


class _InProcessMultiprocessing:
    """``multiprocessing`` as the pooled modules see it: every context is :class:`_ThreadContext`."""

    def get_context(self, method: str | None = None) -> _ThreadContext:
        return _ThreadContext()

    def __getattr__(self, name: str) -> Any:
        return getattr(multiprocessing, name)


@contextmanager
def thread_pools() -> Iterator[None]:
    """Within the block, nnU-Net's fingerprint, integrity check, preprocessing and file-listing pools are threads."""
    stand_in = _InProcessMultiprocessing()
    replaced = [(importlib.import_module(name), "multiprocessing", stand_in) for name in POOLED_MODULES]
    replaced.append((importlib.import_module(FORKED_MODULE), "Pool", _ThreadContext().Pool))
    originals = [getattr(module, attribute) for module, attribute, _ in replaced]
    try:
        for module, attribute, replacement in replaced:
            setattr(module, attribute, replacement)
        yield
    finally:
        for (module, attribute, _), original in zip(replaced, originals):
            setattr(module, attribute, original)
