"""Slice embeddings kept on disk by one step and read by another (propagate/embedding_store.py), with the real
LiteMedSAM: the same slices through the same encoder are never encoded twice, anything else is."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from nnsam2_utils.propagate.embedding_store import EmbeddingStore, encoder_identity
from nnsam2_utils.propagate.litemedsam import EMBEDDING_SHAPE, LiteMedSAMPropagator, slice_key


def scan(n: int = 4, shift: int = 0, seed: int = 0):
    from synthetic import ellipse_stack

    return ellipse_stack(n, shift=shift, seed=seed)


@pytest.fixture(scope="module")
def kept(tmp_path_factory):
    """A propagator that encoded one scan into a writable store: (store folder, frames, embeddings, masks)."""
    folder = tmp_path_factory.mktemp("embeddings")
    frames, labels = scan()
    writer = LiteMedSAMPropagator(device="cpu", embedding_store=EmbeddingStore(folder))
    embeddings = writer.encode(frames)
    masks = writer.propagate(frames, 0, labels[0], frames, "ref", target_is_reference=True).masks
    assert writer.slices_encoded == len(frames) and writer.store.writes == len(frames)
    return folder, frames, labels, embeddings, masks


def test_a_second_propagator_reads_every_slice_and_builds_no_encoder(kept):
    folder, frames, labels, embeddings, masks = kept
    store = EmbeddingStore(folder, writable=False)
    reader = LiteMedSAMPropagator(device="cpu", embedding_store=store)
    again = reader.encode(frames)
    assert torch.equal(again, embeddings)  # float32 on disk: bit for bit
    assert reader.slices_encoded == 0 and store.hits == len(frames) and reader._image_encoder is None
    result = reader.propagate(frames, 0, labels[0], frames, "ref", target_is_reference=True)
    assert np.array_equal(result.masks, masks) and reader.slices_encoded == 0


def test_new_slices_are_encoded_and_a_read_only_store_writes_nothing(kept):
    folder, *_ = kept
    files = sorted(folder.rglob("*.npy"))
    other, _ = scan(3, shift=6, seed=4)
    store = EmbeddingStore(folder, writable=False)
    reader = LiteMedSAMPropagator(device="cpu", embedding_store=store)
    reader.encode(other)
    assert reader.slices_encoded == 3 and store.hits == 0 and store.writes == 0
    assert sorted(folder.rglob("*.npy")) == files


def test_another_encoder_never_reads_this_one(kept):
    folder, frames, *_ = kept
    store = EmbeddingStore(folder)
    store.bind(encoder_identity("0" * 64, "torch"))
    assert store.get(slice_key(frames[0]), EMBEDDING_SHAPE) is None
    identities = {p.name for p in folder.iterdir()}
    assert len(identities) == 1 and next(iter(identities)).endswith("-torch-cpu")
    assert encoder_identity("0" * 64, "torch", "cuda") != encoder_identity("0" * 64, "torch")
    assert "-openvino-ov" in encoder_identity("0" * 64, "openvino")
    with pytest.raises(RuntimeError, match="bind"):
        EmbeddingStore(folder).get("x", EMBEDDING_SHAPE)


def test_a_damaged_or_misshapen_file_is_encoded_again(kept, tmp_path, caplog):
    folder, frames, _, embeddings, _ = kept
    copy = tmp_path / "copy"
    for path in folder.rglob("*.npy"):
        target = copy / path.relative_to(folder)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
    first = next(copy.rglob(f"{slice_key(frames[0])}.npy"))
    first.write_bytes(b"not an array")
    second = next(copy.rglob(f"{slice_key(frames[1])}.npy"))
    np.save(second, np.zeros((2, 2), np.float32))
    store = EmbeddingStore(copy, writable=False)
    reader = LiteMedSAMPropagator(device="cpu", embedding_store=store)
    with caplog.at_level(logging.WARNING):
        again = reader.encode(frames)
    assert reader.slices_encoded == 2 and store.hits == len(frames) - 2
    assert torch.allclose(again, embeddings, atol=1e-5)
    assert "unreadable stored embedding" in caplog.text and "not float32" in caplog.text
