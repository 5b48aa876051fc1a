"""fastrnn._kernels._rows: the batch-row permutations of variable-length batches, split over the
kernels' team, against NumPy's take (bit for bit: they only move bytes)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import awake_team, record_calls

import fastrnn
from fastrnn import functional as F
from fastrnn._kernels import _rows


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16])
@pytest.mark.parametrize("n_threads", [1, 2, 3])
@pytest.mark.parametrize("shape", [(7, 5, 3), (1, 1, 1), (4, 9, 17), (0, 3, 2), (3, 0, 2)])
def test_gather_and_permute_equal_numpy(dtype, n_threads, shape):
    rng = np.random.default_rng(sum(shape) + n_threads)
    a = (rng.standard_normal(shape) * 100).astype(dtype)
    index = rng.permutation(shape[1]).astype(np.intp)
    out = np.full(a.shape, 7, dtype)
    _rows.gather_rows(a.view(np.uint8), index, out.view(np.uint8), n_threads)
    np.testing.assert_array_equal(out, np.take(a, index, axis=1))
    some = rng.integers(0, max(shape[1], 1), size=11).astype(np.intp)  # repeats, another size
    if shape[1]:
        out = np.empty((shape[0], 11, shape[2]), dtype)
        _rows.gather_rows(a.view(np.uint8), some, out.view(np.uint8), n_threads)
        np.testing.assert_array_equal(out, a[:, some])
    b = a.copy()
    scratch = np.empty((n_threads, shape[1] * shape[2] * a.itemsize), np.uint8)
    _rows.permute_rows(b.view(np.uint8), index, scratch, n_threads)
    np.testing.assert_array_equal(b, a[:, index])


def test_bad_operands_raise():
    a = np.zeros((3, 4, 2), np.float32).view(np.uint8)
    out = np.zeros((3, 4, 8), np.uint8)
    with pytest.raises(ValueError, match=r"index\[1\] = 4 is not a row of the 4 rows"):
        _rows.gather_rows(a, np.array([0, 4], np.intp), np.zeros((3, 2, 8), np.uint8), 2)
    with pytest.raises(ValueError, match=r"index\[0\] = -1"):
        _rows.gather_rows(a, np.array([-1], np.intp), np.zeros((3, 1, 8), np.uint8), 2)
    with pytest.raises(ValueError, match="out has shape"):
        _rows.gather_rows(a, np.arange(3, dtype=np.intp), out, 2)
    with pytest.raises(ValueError, match="index has 3 rows, expected 4"):
        _rows.permute_rows(a, np.arange(3, dtype=np.intp), np.zeros((2, 32), np.uint8), 2)
    with pytest.raises(ValueError, match="scratch must be at least"):
        _rows.permute_rows(a, np.arange(4, dtype=np.intp), np.zeros((1, 32), np.uint8), 2)
    with pytest.raises(ValueError, match="not C-contiguous"):  # refused, not misread
        _rows.gather_rows(a[:, ::2], np.arange(2, dtype=np.intp), np.zeros((3, 2, 8), np.uint8), 2)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_lengths_in_any_order_permute_on_the_team_with_the_same_bits(cell, monkeypatch):
    """With the team awake (a loop of calls) the gathers of x and dy and the put-backs of y and
    dx split over 2 threads: the forward's outputs and every gradient are the bits of the
    one-thread NumPy permutations."""
    rng = np.random.default_rng(5)
    T, B, I, H = 9, 6, 5, 7
    G = {"rnn": 1, "lstm": 4, "gru": 3}[cell] * H
    x = rng.standard_normal((T, B, I))
    w_ih, w_hh = rng.standard_normal((G, I)) * 0.3, rng.standard_normal((G, H)) * 0.3
    b_ih, b_hh = rng.standard_normal(G) * 0.1, rng.standard_normal(G) * 0.1
    lengths = np.array([3, 9, 1, 6, 9, 4])
    dy = rng.standard_normal((T, B, H))
    fwd, bwd = getattr(F, f"{cell}_forward"), getattr(F, f"{cell}_backward")
    states = (None, None) if cell == "lstm" else (None,)

    def run():
        *outs, cache = fwd(x, *states, w_ih, w_hh, b_ih, b_hh, lengths=lengths)
        return [np.copy(o) for o in outs], [
            None if g is None else np.copy(g) for g in bwd(cache, dy)
        ]

    before = fastrnn.get_num_threads()
    try:
        fastrnn.set_num_threads(2)
        monkeypatch.setattr(F, "_ROWS_SPLIT_MIN", 1 << 40)  # NumPy's take, one thread
        one = run()
        monkeypatch.setattr(F, "_ROWS_SPLIT_MIN", 0)
        awake_team(monkeypatch)
        splits = record_calls(monkeypatch, F, "_rows_team")
        split = run()
    finally:
        fastrnn.set_num_threads(before)
    assert 2 in splits  # the gathers after the first did split
    for a, b in zip(one[0] + one[1], split[0] + split[1], strict=True):
        if a is None:
            assert b is None
        else:
            np.testing.assert_array_equal(a, b)
