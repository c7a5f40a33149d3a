"""nnU-Net's planning pools as threads (nnsam2_utils/refine/pools.py): the same fingerprint, no process started."""

import contextlib
import json
import multiprocessing
from multiprocessing.pool import ThreadPool

import numpy as np
from test_nnunet import FIRST, blob_case

from nnsam2_utils.refine import nnunet
from nnsam2_utils.refine.pools import FORKED_MODULE, POOLED_MODULES, thread_pools


def fingerprint(root, pooled: bool) -> dict:
    """nnU-Net's own fingerprint of the blob dataset, through its spawn pool or through :func:`thread_pools`."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprints

    with nnunet.nnunet_environment(root, 1), thread_pools() if pooled else contextlib.nullcontext():
        extract_fingerprints([FIRST], num_processes=1, check_dataset_integrity=True, verbose=False)
    return json.loads((root / "preprocessed" / f"Dataset{FIRST}_blobs" / "dataset_fingerprint.json").read_text())


def test_thread_pools_give_nnunets_own_fingerprint_without_starting_a_process(tmp_path):
    import importlib

    rng = np.random.default_rng(0)
    cases = [blob_case(i, rng, nz=2) for i in range(3)]
    for root in (tmp_path / "spawned", tmp_path / "threads"):
        with nnunet.nnunet_environment(root, 1):
            nnunet.write_raw_dataset(root, FIRST, "blobs", cases)
    expected = fingerprint(tmp_path / "spawned", pooled=False)
    started = []
    real_start = multiprocessing.process.BaseProcess.start
    try:
        multiprocessing.process.BaseProcess.start = lambda self: started.append(self) or real_start(self)
        got = fingerprint(tmp_path / "threads", pooled=True)
    finally:
        multiprocessing.process.BaseProcess.start = real_start
    assert got == expected  # spacings, shapes, intensity statistics: nnU-Net's own numbers
    assert not started  # no worker interpreter was started
    for name in POOLED_MODULES:  # and the modules have their multiprocessing back
        assert importlib.import_module(name).multiprocessing is multiprocessing
    assert importlib.import_module(FORKED_MODULE).Pool is multiprocessing.Pool


def test_a_pool_inside_the_block_is_a_thread_pool():
    module = __import__(POOLED_MODULES[0], fromlist=["multiprocessing"])
    with thread_pools():
        with module.multiprocessing.get_context("spawn").Pool(1) as pool:
            assert isinstance(pool, ThreadPool)
            assert all(worker.is_alive() for worker in pool._pool)  # what nnU-Net's progress loops poll
            assert pool.starmap(divmod, [(7, 2)]) == [(3, 1)]
    assert module.multiprocessing is multiprocessing
