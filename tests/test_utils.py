"""Tests of fastrnn.utils: batchify, tbptt_chunks, and truncated BPTT with the state carried.

The TBPTT properties are checked on the functional API of both backends, for every cell:

* forward: running the chunks one after the other, each starting from the previous chunk's final
  state, gives exactly (bit for bit) the outputs and final state of one forward over the whole
  sequence;
* backward: the gradients of the last chunk are the whole-sequence gradients truncated at the
  chunk boundary. The whole-sequence gradient of a loss on the last chunk splits into what the
  chunk's own backward returns plus what flows on through the boundary state into the earlier
  steps (the earlier steps' backward driven by the chunk's ``dh0``/``dc0``). TBPTT keeps exactly
  the first term.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import BACKENDS, SPECS, TOL, make_weights

from fastrnn.utils import batchify, tbptt_chunks


# -- batchify ----------------------------------------------------------------------------------
def test_batchify_columns_are_contiguous_pieces_of_the_stream():
    out = batchify(np.arange(11), 3)
    assert out.shape == (3, 3)
    np.testing.assert_array_equal(out[:, 0], [0, 1, 2])
    np.testing.assert_array_equal(out[:, 2], [6, 7, 8])  # 9 and 10 are dropped


def test_batchify_features_and_batch_first_are_views():
    data = np.arange(24.0).reshape(12, 2)
    tm = batchify(data, 4)
    bf = batchify(data, 4, batch_first=True)
    assert tm.shape == (3, 4, 2) and bf.shape == (4, 3, 2)
    np.testing.assert_array_equal(tm, np.swapaxes(bf, 0, 1))
    np.testing.assert_array_equal(bf[1], data[3:6])
    assert np.shares_memory(tm, data) and np.shares_memory(bf, data)


def test_batchify_accepts_lists():
    np.testing.assert_array_equal(batchify([1, 2, 3, 4], 2), [[1, 3], [2, 4]])


@pytest.mark.parametrize(
    ("data", "batch_size", "error"),
    [
        (np.arange(3), 4, ValueError),
        (np.float64(1.0), 1, ValueError),
        (np.arange(4), 0, ValueError),
        (np.arange(4), 2.0, TypeError),
        (np.arange(4), True, TypeError),
    ],
)
def test_batchify_rejects(data, batch_size, error):
    with pytest.raises(error):
        batchify(data, batch_size)


# -- tbptt_chunks ------------------------------------------------------------------------------
@pytest.mark.parametrize("T", [1, 7, 12])
@pytest.mark.parametrize("chunk_len", [1, 3, 4, 20])
def test_chunks_cover_the_sequence_in_order(T, chunk_len):
    x = np.arange(T * 2 * 3).reshape(T, 2, 3)
    chunks = list(tbptt_chunks(x, chunk_len))
    assert all(1 <= c.shape[0] <= chunk_len for c in chunks)
    assert all(c.shape[0] == chunk_len for c in chunks[:-1])
    np.testing.assert_array_equal(np.concatenate(chunks, axis=0), x)
    assert all(np.shares_memory(c, x) for c in chunks)


def test_chunks_batch_first():
    x = np.arange(2 * 10 * 3).reshape(2, 10, 3)
    chunks = list(tbptt_chunks(x, 4, batch_first=True))
    assert [c.shape for c in chunks] == [(2, 4, 3), (2, 4, 3), (2, 2, 3)]
    np.testing.assert_array_equal(np.concatenate(chunks, axis=1), x)


def test_chunks_drop_last():
    x = np.zeros((10, 2))
    assert [c.shape[0] for c in tbptt_chunks(x, 4, drop_last=True)] == [4, 4]
    assert [c.shape[0] for c in tbptt_chunks(x, 5, drop_last=True)] == [5, 5]
    assert list(tbptt_chunks(x, 11, drop_last=True)) == []


@pytest.mark.parametrize(
    ("x", "kw", "error"),
    [
        (np.zeros((4, 2)), {"chunk_len": 0}, ValueError),
        (np.zeros((4, 2)), {"chunk_len": 2.5}, TypeError),
        (np.float64(0.0), {"chunk_len": 2}, ValueError),
        (np.zeros(4), {"chunk_len": 2, "batch_first": True}, ValueError),
    ],
)
def test_chunks_reject_bad_arguments_at_the_call(x, kw, error):
    with pytest.raises(error):
        tbptt_chunks(x, **kw)  # not only when iterated


# -- truncated BPTT on the functional API --------------------------------------------------
T, B, D, H, CHUNK = 23, 3, 4, 5, 5  # chunks of 5, 5, 5, 5 and 3 steps


def _problem(spec, dtype, seed=0):
    rng = np.random.default_rng(seed)
    w = make_weights(rng, spec.G, D, H, dtype)
    x = rng.standard_normal((T, B, D)).astype(dtype)
    h0 = rng.standard_normal((B, H)).astype(dtype)
    c0 = rng.standard_normal((B, H)).astype(dtype) if spec.has_c else None
    return x, h0, c0, w


def _chunked_forward(spec, backend, x, h0, c0, w):
    """Forward chunk by chunk, each from the previous chunk's final state."""
    ys, h, c = [], h0, c0
    for xc in tbptt_chunks(x, CHUNK):
        y, h, c, _ = spec.forward(backend, xc, h, c, *w)
        ys.append(y)
    return np.concatenate(ys, axis=0), h, c


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_chunked_forward_equals_full_forward_exactly(spec, backend, dtype):
    x, h0, c0, w = _problem(spec, dtype)
    full = spec.forward(backend, x, h0, c0, *w, training=False)
    y, h_n, c_n = _chunked_forward(spec, backend, x, h0, c0, w)
    np.testing.assert_array_equal(y, full.y)
    np.testing.assert_array_equal(h_n, full.h_n)
    if spec.has_c:
        np.testing.assert_array_equal(c_n, full.c_n)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_last_chunk_gradients_are_full_gradients_truncated_at_the_boundary(spec, backend, dtype):
    x, h0, c0, w = _problem(spec, dtype)
    rng = np.random.default_rng(1)
    t0 = (T - 1) // CHUNK * CHUNK  # first step of the last chunk
    dy_last = rng.standard_normal((T - t0, B, H)).astype(dtype)
    dh_n = rng.standard_normal((B, H)).astype(dtype)
    dc_n = rng.standard_normal((B, H)).astype(dtype) if spec.has_c else None

    # TBPTT: forward every chunk with the state carried; backward the last chunk only, with no
    # gradient for its initial state (it is a constant for this chunk).
    h, c = h0, c0
    for xc in tbptt_chunks(x, CHUNK):
        fwd = spec.forward(backend, xc, h, c, *w)
        h, c = fwd.h_n, fwd.c_n
    trunc = spec.backward(backend, fwd.cache, dy_last, dh_n, dc_n)

    # Whole sequence, the same loss (it only reads the last chunk's outputs and the final state).
    full_fwd = spec.forward(backend, x, h0, c0, *w)
    dy = np.zeros((T, B, H), dtype)
    dy[t0:] = dy_last
    full = spec.backward(backend, full_fwd.cache, dy, dh_n, dc_n)

    # What truncation drops: the gradient flowing through the boundary state into steps < t0.
    head = spec.forward(backend, x[:t0], h0, c0, *w)
    dropped = spec.backward(backend, head.cache, None, trunc.dh0, trunc.dc0 if spec.has_c else None)

    tol = TOL[dtype]
    np.testing.assert_allclose(trunc.dx, full.dx[t0:], **tol)  # the chunk's own inputs: intact
    for name in ("dw_ih", "dw_hh", "db_ih", "db_hh"):
        kept, lost, total = getattr(trunc, name), getattr(dropped, name), getattr(full, name)
        np.testing.assert_allclose(kept + lost, total, **tol)
        # The test is not vacuous: the truncated gradient really differs from the full one.
        assert np.abs(lost).max() > 100 * tol["atol"]
    np.testing.assert_allclose(dropped.dx, full.dx[:t0], **tol)
    np.testing.assert_allclose(dropped.dh0, full.dh0, **tol)
    if spec.has_c:
        np.testing.assert_allclose(dropped.dc0, full.dc0, **tol)


# -- truncated BPTT with the layers --------------------------------------------------------------
LAYER_CELLS = {"RNN": "rnn", "LSTM": "lstm", "GRU": "gru"}


def _split(state, lstm):
    return state if lstm else (state, None)


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("name", sorted(LAYER_CELLS))
def test_layer_tbptt_loop(name, num_layers, batch_first):
    """The documented loop: chunks in order, each forward given the previous final state.

    Forward: exactly the full-sequence outputs and final states. Backward of the last chunk with
    no state gradient: the parameter gradients of that chunk alone, started from the carried
    state (checked against the NumPy reference, layer by layer).
    """
    import fastrnn
    from fastrnn import reference

    cell, lstm = LAYER_CELLS[name], name == "LSTM"
    layer = getattr(fastrnn, name)(
        D, H, num_layers=num_layers, batch_first=batch_first, dtype=np.float64, seed=0
    )
    rng = np.random.default_rng(2)
    x_tm = rng.standard_normal((T, B, D))  # time-major copy, for the reference
    x = np.ascontiguousarray(x_tm.transpose(1, 0, 2)) if batch_first else x_tm
    time_axis = 1 if batch_first else 0

    layer.eval()
    out_full, state_full = layer(x)
    layer.train()
    outs, state, boundary = [], None, None
    for xc in tbptt_chunks(x, CHUNK, batch_first=batch_first):
        boundary = state  # the state the last chunk starts from
        out, state = layer(xc, state)
        outs.append(out)
    np.testing.assert_array_equal(np.concatenate(outs, axis=time_axis), out_full)
    for got, want in zip(_split(state, lstm), _split(state_full, lstm), strict=True):
        if want is not None:
            np.testing.assert_array_equal(got, want)

    # Backward of the last chunk only: what a TBPTT training step does.
    dout = rng.standard_normal(out.shape)
    layer.zero_grad()
    dx, _ = layer.backward(dout)

    # Reference: each layer over the last chunk from its carried state, then BPTT down the stack.
    t0 = (T - 1) // CHUNK * CHUNK
    h_b, c_b = _split(boundary, lstm)
    params = dict(layer.named_parameters())
    names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
    inp, caches = x_tm[t0:], []
    for k in range(num_layers):
        w = [params[f"{n}_l{k}"].data for n in names]
        if lstm:
            inp, _, _, cache = reference.lstm_forward(inp, h_b[k], c_b[k], *w)
        else:
            inp, _, cache = getattr(reference, f"{cell}_forward")(inp, h_b[k], *w)
        caches.append(cache)
    dy = np.swapaxes(dout, 0, 1) if batch_first else dout
    for k in reversed(range(num_layers)):
        g = getattr(reference, f"{cell}_backward")(caches[k], dy)
        for n, want in zip(names, g[-4:], strict=True):
            np.testing.assert_allclose(params[f"{n}_l{k}"].grad, want, **TOL[np.float64])
        dy = g.dx
    np.testing.assert_allclose(np.swapaxes(dx, 0, 1) if batch_first else dx, dy, **TOL[np.float64])
