"""fastrnn/nn/rnn.py (the RNN / LSTM / GRU layers) under bad input, threads, repetition and NaN.

tests/test_layers.py covers the common errors (constructor arguments, input size and rank,
state shapes, lengths, backward without a forward). This file adds, for every layer kind:

* refused dtypes and values of the input, the states and the upstream gradients, each a Python
  exception naming the argument (the functional API's rules: tests/test_common.py);
* the backward protocol: one backward per training forward; none after an eval forward, or
  after a forward that raised;
* zero-size batches and sequences, forward and backward;
* NaN propagation (never dropped) and float64 input to a float32 layer (converted);
* thread safety: separate layer objects in threads give their serial bits; one eval-mode layer
  may serve concurrent forwards;
* memory: ``cache_nbytes`` of a pending forward, nothing kept in eval mode, no RSS growth;
* determinism: the same seed gives the same parameters, outputs and gradients, bit for bit.
"""

import gc
import os
import threading

import numpy as np
import pytest

import fastrnn
from fastrnn._kernels import _build

T, B, I, H = 5, 3, 4, 6

LAYERS = {
    "rnn_relu": (fastrnn.RNN, {"nonlinearity": "relu"}),
    "lstm": (fastrnn.LSTM, {}),
    "lstm_proj": (fastrnn.LSTM, {"proj_size": 2}),
    "gru": (fastrnn.GRU, {}),
    "gru_reset_before": (fastrnn.GRU, {"reset_after": False}),
}


@pytest.fixture(params=list(LAYERS))
def layer_name(request):
    return request.param


def make(name, **kw):
    cls, ckw = LAYERS[name]
    kw = {"seed": 0, "num_layers": 2, "bidirectional": True, **ckw, **kw}
    return cls(I, H, **kw)


def _x(rng=None, dtype=np.float32, shape=(T, B, I)):
    rng = rng or np.random.default_rng(1)
    return rng.standard_normal(shape).astype(dtype)


def _states(m, batch=B, dtype=np.float32):
    LD = m.num_layers * (2 if m.bidirectional else 1)
    R = m.proj_size or m.hidden_size
    h = np.full((LD, batch, R), 0.1, dtype)
    if m.mode == "LSTM":
        return h, np.full((LD, batch, m.hidden_size), 0.1, dtype)
    return h


def _with_h(m, fn):
    """The state argument with its h member replaced by ``fn(h)``."""
    s = _states(m)
    return (fn(s[0]), s[1]) if isinstance(s, tuple) else fn(s)


def _word(*names):
    return r"\b(" + "|".join(names) + r")\b"


# -------------------------------------------------------------------------------------------------
# bad input: (id, call(m) raising, exception, argument names)
# -------------------------------------------------------------------------------------------------
FORWARD_BAD = [
    ("x_none", lambda m: m(None), TypeError, ("x",)),
    ("x_bool", lambda m: m(_x() > 0), TypeError, ("x",)),
    ("x_object", lambda m: m(_x().astype(object)), TypeError, ("x",)),
    ("x_str", lambda m: m(_x().astype(str)), TypeError, ("x",)),
    ("x_datetime", lambda m: m(_x().astype("M8[s]")), TypeError, ("x",)),
    ("x_ragged", lambda m: m([[[0.0] * I], [[0.0] * (I - 1)]]), ValueError, ("x",)),
    ("x_masked", lambda m: m(np.ma.masked_less(_x(), 0)), TypeError, ("x",)),
    ("x_int_beyond_2_24", lambda m: m(np.full((T, B, I), 2**24 + 1)), ValueError, ("x",)),
    ("x_scalar", lambda m: m(1.0), ValueError, ("x",)),
    ("x_0d_features", lambda m: m(np.zeros((T, B, 0), np.float32)), ValueError, ("x",)),
    ("h0_complex", lambda m: m(_x(), _with_h(m, lambda h: h.astype(complex))), TypeError, ("h0",)),
    ("h0_bool", lambda m: m(_x(), _with_h(m, lambda h: h > 0)), TypeError, ("h0",)),
    ("h0_masked", lambda m: m(_x(), _with_h(m, np.ma.masked_array)), TypeError, ("h0",)),
    (
        "h0_swapped_axes",
        lambda m: m(_x(), _with_h(m, lambda h: h.transpose(1, 0, 2))),
        ValueError,
        ("h0",),
    ),  # fmt: skip
    ("lengths_bool", lambda m: m(_x(), lengths=np.ones(B, bool)), TypeError, ("lengths",)),
    ("lengths_2d", lambda m: m(_x(), lengths=np.ones((B, 1), int)), ValueError, ("lengths",)),
    ("lengths_ragged", lambda m: m(_x(), lengths=[[1], [1, 2], [3]]), ValueError, ("lengths",)),
]

CONSTRUCTOR_BAD = [
    ("seed_str", {"seed": "abc"}, TypeError, ("seed",)),
    ("seed_negative", {"seed": -1}, TypeError, ("seed",)),
    ("dtype_complex", {"dtype": np.complex64}, TypeError, ("dtype",)),
    ("dtype_str", {"dtype": "not-a-dtype"}, TypeError, ("dtype",)),
    ("hidden_bool", {"hidden_size": True}, TypeError, ("hidden_size",)),
    ("layers_float", {"num_layers": 2.0}, TypeError, ("num_layers",)),
    ("dropout_nan", {"dropout": float("nan")}, ValueError, ("dropout",)),
]


@pytest.mark.parametrize(
    "call,exc,names", [c[1:] for c in FORWARD_BAD], ids=[c[0] for c in FORWARD_BAD]
)
def test_forward_rejects_bad_input(layer_name, call, exc, names):
    m = make(layer_name)
    with pytest.raises(exc, match=_word(*names)):
        call(m)


@pytest.mark.parametrize(
    "kwargs,exc,names", [c[1:] for c in CONSTRUCTOR_BAD], ids=[c[0] for c in CONSTRUCTOR_BAD]
)
def test_constructor_rejects_bad_arguments(layer_name, kwargs, exc, names):
    with pytest.raises(exc, match=_word(*names)):
        make(layer_name, **kwargs)


def _backward_bad(m, y):
    s = _states(m)
    h = s[0] if isinstance(s, tuple) else s
    wrap = (lambda a: (a, None)) if isinstance(s, tuple) else (lambda a: a)
    return [
        ("dout_bool", lambda: m.backward(y > 0), TypeError, ("dout",)),
        ("dout_complex", lambda: m.backward(y.astype(complex)), TypeError, ("dout",)),
        ("dout_masked", lambda: m.backward(np.ma.masked_array(y)), TypeError, ("dout",)),
        ("dout_transposed", lambda: m.backward(y.transpose(1, 0, 2)), ValueError, ("dout",)),
        ("dout_ragged", lambda: m.backward([[[0.0]], [[0.0, 1.0]]]), ValueError, ("dout",)),
        ("dh_n_complex", lambda: m.backward(None, wrap(h.astype(complex))), TypeError, ("dh_n",)),
        ("dh_n_wrong_batch", lambda: m.backward(None, wrap(h[:, :1])), ValueError, ("dh_n",)),
    ]


def test_backward_rejects_bad_upstream_gradients(layer_name):
    m = make(layer_name)
    y, _ = m(_x())
    for _, call, exc, names in _backward_bad(m, y):
        with pytest.raises(exc, match=_word(*names)):
            call()
    # every refusal happened before the cache was used: the right backward still works
    dx, _ = m.backward(np.ones_like(y))
    assert dx.shape == (T, B, I)


def test_backward_protocol(layer_name):
    """One backward per training forward: not before, not twice, not after an eval forward or
    after a forward that raised (which leaves the previous pending forward in place)."""
    m = make(layer_name)
    y, _ = m(_x())
    with pytest.raises(TypeError):
        m(_x() > 0)  # refused: the pending forward is untouched
    m.backward(np.ones_like(y))
    with pytest.raises(RuntimeError, match="one backward"):
        m.backward(np.ones_like(y))
    m.eval()
    m(_x())
    with pytest.raises(RuntimeError, match="training-mode forward"):
        m.backward(np.ones_like(y))
    assert m.cache_nbytes == 0


@pytest.mark.parametrize("T0,B0", [(0, B), (T, 0), (0, 0)])
def test_zero_size_forward_and_backward(layer_name, T0, B0):
    m = make(layer_name)
    y, s = m(np.zeros((T0, B0, I), np.float32))
    assert y.shape == (T0, B0, 2 * (m.proj_size or H))
    dx, ds = m.backward(np.zeros_like(y))
    assert dx.shape == (T0, B0, I)
    h = s[0] if isinstance(s, tuple) else s
    assert h.shape[1] == B0
    for p in m.parameters():  # no step: nothing reaches the weights
        assert not np.any(p.grad)


def test_nan_input_propagates_and_float64_input_is_converted(layer_name):
    m = make(layer_name)
    x = _x(dtype=np.float64)
    y64, _ = m(x)
    y32, _ = m(x.astype(np.float32))
    assert y64.dtype == np.float32
    np.testing.assert_array_equal(y64, y32)
    x[2, 1, 0] = np.nan
    y, s = m(x)
    h = s[0] if isinstance(s, tuple) else s
    assert np.isnan(y[2:, 1]).any() and np.isnan(h[:, 1]).any()  # never dropped
    assert not np.isnan(y[:, 0]).any()  # other sequences unaffected
    dx, _ = m.backward(np.ones_like(y))
    assert np.isnan(m.weight_ih_l0.grad).any()


# -------------------------------------------------------------------------------------------------
# threads
# -------------------------------------------------------------------------------------------------
def _run(m, x, lengths):
    m.zero_grad()
    y, _ = m(x, lengths=lengths)
    dx, _ = m.backward(np.ones_like(y))
    return [y, dx, *(p.grad.copy() for p in m.parameters())]


def _threads(n, target):
    errors = []
    barrier = threading.Barrier(n)

    def body(k):
        try:
            barrier.wait()
            target(k)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    ts = [threading.Thread(target=body, args=(k,)) for k in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errors:
        raise errors[0]


def test_separate_layers_in_threads_equal_serial(layer_name):
    n = 3
    xs = [_x(np.random.default_rng(k)) for k in range(n)]
    lengths = np.array([T, 2, 4])
    expected = [_run(make(layer_name), xs[k], lengths) for k in range(n)]
    got = [None] * n

    def work(k):
        m = make(layer_name)  # one layer per thread
        for _ in range(3):
            got[k] = _run(m, xs[k], lengths)

    _threads(n, work)
    for k in range(n):
        for a, b in zip(got[k], expected[k], strict=True):
            np.testing.assert_array_equal(a, b)


def test_one_eval_layer_serves_concurrent_forwards(layer_name):
    m = make(layer_name).eval()
    xs = [_x(np.random.default_rng(k)) for k in range(4)]
    expected = [m(x)[0] for x in xs]
    got = [[] for _ in xs]

    def work(k):
        for _ in range(5):
            got[k].append(m(xs[k])[0])

    _threads(len(xs), work)
    for k, ys in enumerate(got):
        for y in ys:
            np.testing.assert_array_equal(y, expected[k])


# -------------------------------------------------------------------------------------------------
# memory and determinism
# -------------------------------------------------------------------------------------------------
def _formula(cell, T, B, I, H, itemsize):
    """README's per-layer formula (one layer, one direction, bias, no lengths)."""
    G = {"rnn": 1, "lstm": 4, "gru": 3}[cell]
    k = {"rnn": 1, "lstm": 6, "gru": 5}[cell]
    n = 2 if cell == "lstm" else 1
    return itemsize * (T * B * (k * H + I) + n * B * H + G * H * (I + H + 2))


@pytest.mark.parametrize("cls,cell", [(fastrnn.RNN, "rnn"), (fastrnn.LSTM, "lstm"),
                                      (fastrnn.GRU, "gru")])  # fmt: skip
def test_cache_nbytes(cls, cell):
    m = cls(I, H, seed=0, dtype=np.float64)
    assert m.cache_nbytes == 0
    m(_x(dtype=np.float64))
    assert m.cache_nbytes == _formula(cell, T, B, I, H, 8)
    # two layers: layer 1's input is layer 0's output, counted once
    m2 = cls(I, H, num_layers=2, seed=0, dtype=np.float64)
    m2(_x(dtype=np.float64))
    assert m2.cache_nbytes == _formula(cell, T, B, I, H, 8) + _formula(cell, T, B, H, H, 8) - (
        T * B * H * 8
    )
    m2.eval()
    m2(_x(dtype=np.float64))
    assert m2.cache_nbytes == 0


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="Linux RSS")
@pytest.mark.skipif(_build.CONFIG["asan"], reason="ASan's quarantine grows RSS by design")
def test_layer_rss_does_not_grow(layer_name):
    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    m = make(layer_name, num_layers=1, bidirectional=True)
    x, lengths = _x(), np.array([T, 2, 4])
    for _ in range(200):
        _run(m, x, lengths)
    gc.collect()
    before = rss()
    for _ in range(1000):  # each round: training forward + backward + eval forward
        _run(m, x, lengths)
        m.eval()
        m(x)
        m.train()
    gc.collect()
    assert rss() - before < 1 << 20


def test_same_seed_same_bits(layer_name):
    x, lengths = _x(), np.array([T, 2, 4])
    a = _run(make(layer_name, dropout=0.3), x, lengths)
    b = _run(make(layer_name, dropout=0.3), x, lengths)
    for u, v in zip(a, b, strict=True):
        np.testing.assert_array_equal(u, v)
