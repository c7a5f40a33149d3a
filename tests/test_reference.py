"""Reference (seed) scan selection: medoid by cosine distance (hand-made embeddings) and the scan embedding."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from nnsam2_utils.errors import DataError
from nnsam2_utils.propagate.reference import (
    ANNOTATED_SLICE,
    choose_reference,
    cosine_distances,
    embedding_slices,
    medoid,
    scan_embedding,
)


def test_medoid_is_the_central_scan():
    embeddings = {"a": np.array([1.0, 0.0]), "b": np.array([1.0, 1.0]), "c": np.array([0.0, 1.0])}
    case, table = medoid(embeddings)
    assert case == "b"
    assert list(table.columns) == ["case", "mean_distance"]
    assert table["case"].tolist()[0] == "b"
    assert table["mean_distance"].is_monotonic_increasing
    expected_b = 1 - np.cos(np.pi / 4)
    assert table.set_index("case").loc["b", "mean_distance"] == pytest.approx(expected_b)
    assert table.set_index("case").loc["a", "mean_distance"] == pytest.approx((expected_b + 1.0) / 2)


def test_cosine_distance_ignores_scale():
    base = {"a": np.array([1.0, 0.2, 0.0]), "b": np.array([0.9, 0.3, 0.1]), "c": np.array([0.0, 0.1, 1.0])}
    scaled = {k: v * s for (k, v), s in zip(base.items(), (3.0, 0.01, 50.0))}
    assert medoid(base)[0] == medoid(scaled)[0]
    pd.testing.assert_frame_equal(medoid(base)[1], medoid(scaled)[1])


def test_ties_go_to_the_smallest_case_id():
    # symmetric: "x" and "y" are equally central; "z" and "w" are the outliers on either side
    angles = {"z": 0.0, "x": 0.3, "y": 0.6, "w": 0.9}
    embeddings = {k: np.array([np.cos(a), np.sin(a)]) for k, a in angles.items()}
    case, table = medoid(embeddings)
    assert case == "x"
    assert table["case"].tolist()[:2] == ["x", "y"]


def test_identical_embeddings_all_tie():
    vector = np.array([0.3, -1.2, 4.0])
    case, table = medoid({"s3": vector.copy(), "s10": vector.copy(), "s2": vector.copy()})
    assert case == "s10"  # string order
    assert (table["mean_distance"] == 0.0).all()
    assert table["case"].tolist() == ["s10", "s2", "s3"]


def test_one_scan_is_its_own_reference():
    case, table = medoid({"only": np.array([1.0, 2.0])})
    assert case == "only"
    assert table.to_dict("records") == [{"case": "only", "mean_distance": 0.0}]


def test_zero_vector_is_a_clear_error():
    with pytest.raises(DataError, match="'dark'.*zero vector"):
        medoid({"ok": np.array([1.0, 0.0]), "dark": np.zeros(2)})


def test_invalid_embeddings_are_errors():
    with pytest.raises(DataError, match="no scan"):
        medoid({})
    with pytest.raises(DataError, match="NaN"):
        medoid({"a": np.array([1.0, np.nan]), "b": np.array([1.0, 0.0])})
    with pytest.raises(DataError, match="length"):
        medoid({"a": np.ones(2), "b": np.ones(3)})


def test_distance_matrix_is_symmetric_with_zero_diagonal():
    rng = np.random.default_rng(0)
    cases, d = cosine_distances({f"c{i}": rng.normal(size=8) for i in range(5)})
    assert cases == sorted(cases)
    assert np.allclose(d, d.T) and np.all(np.diag(d) == 0) and np.all((d >= 0) & (d <= 2))


def test_embedding_slices_first_middle_last():
    assert embedding_slices(7) == [0, 3, 6]
    assert embedding_slices(2) == [0, 1]
    assert embedding_slices(1) == [0]
    with pytest.raises(DataError):
        embedding_slices(0)


@pytest.fixture(scope="module")
def propagator():
    from nnsam2_utils.propagate.litemedsam import LiteMedSAMPropagator

    return LiteMedSAMPropagator(device="cpu")


def test_scan_embedding_and_choice_with_the_real_encoder(propagator):
    """Scans: a bright square, the same square slightly moved (near), and a disc in noise (far)."""
    rng = np.random.default_rng(0)
    square = np.zeros((3, 256, 256), np.uint8)
    square[:, 80:180, 70:190] = 200
    moved = np.roll(square, 6, axis=2)
    noise = rng.integers(0, 255, (3, 256, 256), dtype=np.uint8)
    noise[0] = square[0]
    stacks = {"square": square, "moved": moved, "noise": noise}

    vector = scan_embedding(propagator, square)
    assert vector.shape == (256,) and np.isfinite(vector).all()
    assert np.allclose(vector, propagator.embed(square[[0, 1, 2]]).mean(axis=0), atol=1e-5)

    encoded = propagator.slices_encoded
    choice = choose_reference(propagator, stacks, progress=False)
    # identical slices (within and across scans) are encoded once
    assert propagator.slices_encoded - encoded == 1 + 2  # moved's one distinct slice + noise's two new ones
    assert choice.annotated_slice == ANNOTATED_SLICE == 0
    assert choice.case in {"square", "moved"}
    assert choice.distances["case"].iloc[-1] == "noise"
