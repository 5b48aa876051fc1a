"""fastrnn.RNN / LSTM / GRU: behaviour, invariants and errors (PyTorch parity is in
``test_nn_rnn_torch.py``, finite differences through whole stacks in ``test_stack.py``).
"""

import warnings

import numpy as np
import pytest
from conftest import TOL, assert_close

import fastrnn

T, B, I, H = 6, 5, 3, 4
LENGTHS = np.array([2, 6, 1, 4, 3])

# name -> (class, kwargs)
LAYERS = {
    "rnn_tanh": (fastrnn.RNN, {}),
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
    kw = {"dtype": np.float64, "seed": 0, **ckw, **kw}
    return cls(I, H, **kw)


def _state(m, rng, batch=B):
    """Random (states, state gradients) in the layer's format."""
    LD = m.num_layers * (2 if m.bidirectional else 1)
    R = m.proj_size or m.hidden_size

    def n(*s):
        return rng.standard_normal(s)

    if m.mode == "LSTM":
        return (n(LD, batch, R), n(LD, batch, H)), (n(LD, batch, R), n(LD, batch, H))
    return n(LD, batch, R), n(LD, batch, R)


def _flat(s):
    return list(s) if isinstance(s, tuple) else [s]


def _arrays(r):
    """The arrays of a ``run`` result but the parameter grads: out, states, dx, state grads."""
    y, s, dx, ds, _ = r
    return [y, *s, dx, *ds]


def _out_size(m):
    return (2 if m.bidirectional else 1) * (m.proj_size or m.hidden_size)


def run(m, x, state, dout, dstate, lengths=None):
    """Forward + backward; returns outputs, input grads and parameter grads (reset first)."""
    m.zero_grad()
    y, s = m(x, state, lengths=lengths)
    dx, ds = m.backward(dout, dstate)
    return y, _flat(s), dx, _flat(ds), {n: p.grad.copy() for n, p in m.named_parameters()}


# -------------------------------------------------------------------------------------------------
# construction, parameters, state dicts
# -------------------------------------------------------------------------------------------------
def test_parameter_names_shapes_and_order():
    m = fastrnn.LSTM(3, 5, num_layers=2, bidirectional=True, proj_size=2)
    shapes = {n: p.shape for n, p in m.named_parameters()}
    assert m._flat_weights_names == list(shapes)
    assert list(shapes)[:6] == [
        "weight_ih_l0",
        "weight_hh_l0",
        "bias_ih_l0",
        "bias_hh_l0",
        "weight_hr_l0",
        "weight_ih_l0_reverse",
    ]
    assert shapes["weight_ih_l0"] == (20, 3)
    assert shapes["weight_hh_l0"] == (20, 2)
    assert shapes["weight_hr_l0_reverse"] == (2, 5)
    assert shapes["weight_ih_l1"] == (20, 4)  # 2 directions x proj_size
    assert len(m.all_weights) == 4 and len(m.all_weights[3]) == 5
    assert [n for n, _ in fastrnn.GRU(2, 3, bias=False).named_parameters()] == [
        "weight_ih_l0",
        "weight_hh_l0",
    ]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_default_init_is_pytorchs_uniform_and_seeded(layer_name, dtype):
    m = make(layer_name, num_layers=2, bidirectional=True, dtype=dtype, seed=3)
    k = 1 / np.sqrt(H)
    for name, p in m.named_parameters():
        assert p.dtype == dtype, name
        assert np.all(np.abs(p.data) <= k), name
    same = make(layer_name, num_layers=2, bidirectional=True, dtype=dtype, seed=3)
    other = make(layer_name, num_layers=2, bidirectional=True, dtype=dtype, seed=4)
    for (n, a), b, c in zip(
        m.state_dict().items(), same.state_dict().values(), other.state_dict().values(), strict=True
    ):
        np.testing.assert_array_equal(a, b, err_msg=n)
        assert not np.array_equal(a, c), n
    # the union of all draws looks uniform on [-k, k]
    allw = np.concatenate([p.data.ravel() for p in m.parameters()])
    assert allw.min() < -0.8 * k and allw.max() > 0.8 * k and abs(allw.mean()) < 0.1 * k


def test_load_state_dict_refuses_bad_keys_and_shapes():
    m = fastrnn.GRU(3, 4, num_layers=2)
    sd = m.state_dict()
    bad = dict(sd)
    del bad["weight_hh_l1"]
    bad["weight_hh_l2"] = np.zeros((12, 4))
    with pytest.raises(
        KeyError, match=r"missing keys: \['weight_hh_l1'\].*unexpected keys: \['weight_hh_l2'\]"
    ):
        m.load_state_dict(bad)
    bad = dict(sd, bias_ih_l0=np.zeros(11), weight_ih_l1=np.zeros((12, 3)))
    with pytest.raises(
        ValueError, match=r"bias_ih_l0: expected shape \(12,\), got \(11,\).*weight_ih_l1"
    ):
        m.load_state_dict(bad)
    # a valid dict of another dtype and of lists is converted
    m.load_state_dict({k: (v.astype(np.float64) + 1).tolist() for k, v in sd.items()})
    for k, v in m.state_dict().items():
        assert v.dtype == np.float32
        np.testing.assert_allclose(v, sd[k] + 1, rtol=1e-6)


def test_repr_and_torch_compat_attributes():
    m = fastrnn.LSTM(3, 5, 2, batch_first=True, dropout=0.5, bidirectional=True, proj_size=2)
    assert repr(m) == (
        "LSTM(3, 5, proj_size=2, num_layers=2, batch_first=True, dropout=0.5, bidirectional=True)"
    )
    assert m.mode == "LSTM" and fastrnn.RNN(2, 2, nonlinearity="relu").mode == "RNN_RELU"
    assert repr(fastrnn.GRU(2, 3, reset_after=False, dtype=np.float64, backend="numpy")) == (
        "GRU(2, 3, reset_after=False, dtype=float64, backend='numpy')"
    )
    assert m.flatten_parameters() is None
    assert [a.shape for a in m._flat_weights] == [p.shape for p in m.parameters()]
    assert fastrnn.nn.LSTM is fastrnn.LSTM


# -------------------------------------------------------------------------------------------------
# forward / backward behaviour
# -------------------------------------------------------------------------------------------------
def test_output_shapes_and_dtypes(layer_name):
    for dtype in (np.float32, np.float64):
        m = make(layer_name, num_layers=2, bidirectional=True, batch_first=True, dtype=dtype)
        x = np.random.default_rng(0).standard_normal((B, T, I))  # float64 in, converted
        y, s = m(x)
        R = m.proj_size or H
        assert y.shape == (B, T, 2 * R) and y.dtype == dtype
        for a, shape in zip(_flat(s), [(4, B, R), (4, B, H)], strict=False):
            assert a.shape == shape and a.dtype == dtype
        dx, ds = m.backward(np.ones_like(y))
        assert dx.shape == x.shape and dx.dtype == dtype
        assert [a.shape for a in _flat(ds)] == [a.shape for a in _flat(s)]


def test_batch_first_is_the_transposed_time_major_run(layer_name):
    rng = np.random.default_rng(1)
    a = make(layer_name, num_layers=2, bidirectional=True)
    b = make(layer_name, num_layers=2, bidirectional=True, batch_first=True)
    x = rng.standard_normal((T, B, I))
    state, dstate = _state(a, rng)
    dout = rng.standard_normal((T, B, _out_size(a)))
    ra = run(a, x, state, dout, dstate, LENGTHS)
    rb = run(b, x.transpose(1, 0, 2), state, dout.transpose(1, 0, 2), dstate, LENGTHS)
    assert_close(rb[0].transpose(1, 0, 2), ra[0], "out", rtol=0, atol=0)
    assert_close(rb[2].transpose(1, 0, 2), ra[2], "dx", rtol=0, atol=0)
    for u, v in zip(ra[1] + ra[3], rb[1] + rb[3], strict=True):
        assert_close(u, v, "state", rtol=0, atol=0)


def test_gradients_accumulate_and_zero_grad(layer_name):
    m = make(layer_name, num_layers=2)
    x = np.random.default_rng(2).standard_normal((T, B, I))
    y, _ = m(x)
    m.backward(np.ones_like(y))
    first = {n: p.grad.copy() for n, p in m.named_parameters()}
    y, _ = m(x)
    m.backward(np.ones_like(y))
    for n, p in m.named_parameters():
        assert_close(p.grad, 2 * first[n], n, **TOL[np.float64])
    m.zero_grad()
    assert all(p.grad is None for p in m.parameters())


def test_eval_mode_keeps_nothing_and_matches_training_forward(layer_name):
    m = make(layer_name, num_layers=2, bidirectional=True, dropout=0.5)
    x = np.random.default_rng(3).standard_normal((T, B, I))
    assert m.eval() is m
    y_eval, s_eval = m(x, lengths=LENGTHS)
    assert m._cache is None
    with pytest.raises(RuntimeError, match="without a training-mode forward"):
        m.backward(np.ones_like(y_eval))
    # eval == a training forward without dropout
    plain = make(layer_name, num_layers=2, bidirectional=True)
    plain.load_state_dict(m.state_dict())
    y_tr, s_tr = plain(x, lengths=LENGTHS)
    assert_close(y_tr, y_eval, "out", rtol=0, atol=0)
    for u, v in zip(_flat(s_tr), _flat(s_eval), strict=True):
        assert_close(u, v, "state", rtol=0, atol=0)
    # a training forward after an eval one is backpropagated normally
    m.train()
    y, _ = m(x)
    m.backward(np.ones_like(y))


def test_backward_errors(layer_name):
    m = make(layer_name)
    with pytest.raises(RuntimeError, match=r"backward\(\) called without a training-mode forward"):
        m.backward(np.zeros((T, B, _out_size(m))))
    y, _ = m(np.zeros((T, B, I)))
    with pytest.raises(ValueError, match=r"dout must have the forward output's shape"):
        m.backward(np.zeros((T, B + 1, y.shape[2])))
    m.backward(None)  # the failed call kept the cache; dout=None is zeros
    with pytest.raises(RuntimeError, match="each forward supports one backward"):
        m.backward(np.zeros_like(y))


def test_padded_outputs_are_zero_and_padding_is_ignored(layer_name):
    """Outputs past each length are zero, whatever the padding holds, in every layer."""
    m = make(layer_name, num_layers=2, bidirectional=True)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((T, B, I))
    pad = np.arange(T)[:, None] >= LENGTHS[None, :]
    x2 = x.copy()
    x2[pad] = 1e3
    y, s = m(x, lengths=LENGTHS)
    y2, s2 = m(x2, lengths=LENGTHS)
    assert np.all(y[pad] == 0)
    assert_close(y2, y, "out", rtol=0, atol=0)
    for u, v in zip(_flat(s), _flat(s2), strict=True):
        assert_close(u, v, "state", rtol=0, atol=0)
    dx, _ = m.backward(rng.standard_normal(y.shape))
    assert np.all(dx[pad] == 0)


@pytest.mark.parametrize("backend", ["cython", "numpy"])
def test_each_sequence_alone_gives_the_batch_result(layer_name, backend):
    """A variable-length batch == every sequence run alone on its own length (no padding)."""
    m = make(layer_name, num_layers=2, bidirectional=True, backend=backend)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((T, B, I))
    state, dstate = _state(m, rng)
    dout = rng.standard_normal((T, B, _out_size(m)))
    y, s, dx, ds, grads = run(m, x, state, dout, dstate, LENGTHS)
    total = {n: np.zeros_like(g) for n, g in grads.items()}
    for b, L in enumerate(LENGTHS):

        def row(a, axis=1, b=b):
            return np.take(a, [b], axis=axis)

        st_b = tuple(row(a) for a in state) if isinstance(state, tuple) else row(state)
        ds_b = tuple(row(a) for a in dstate) if isinstance(dstate, tuple) else row(dstate)
        yb, sb, dxb, dsb, gb = run(m, row(x)[:L], st_b, row(dout)[:L], ds_b)
        tol = TOL[np.float64]
        assert_close(yb, row(y)[:L], f"out[{b}]", **tol)
        assert_close(dxb, row(dx)[:L], f"dx[{b}]", **tol)
        for u, v in zip(sb + dsb, s + ds, strict=True):
            assert_close(u, row(v), f"state[{b}]", **tol)
        for n in total:
            total[n] += gb[n]
    for n, g in grads.items():
        assert_close(g, total[n], n, **TOL[np.float64])


def _flip_within(a, lengths):
    """Reverse each sequence of a time-major (T, B, ...) array within its own length."""
    t = np.arange(a.shape[0])[:, None]
    steps = np.where(t < lengths[None, :], lengths[None, :] - 1 - t, t)
    return a[steps, np.arange(a.shape[1])[None, :]]


@pytest.mark.parametrize("backend", ["cython", "numpy"])
def test_reverse_direction_is_the_forward_one_on_flipped_input(layer_name, backend):
    """The _reverse half of a bidirectional layer == a forward layer with the _reverse weights
    run on every sequence flipped within its own length (outputs flipped back)."""
    bi = make(layer_name, bidirectional=True, backend=backend)
    uni = make(layer_name, backend=backend)
    uni.load_state_dict({k: bi.state_dict()[k + "_reverse"] for k in uni.state_dict()})
    rng = np.random.default_rng(10)
    x = rng.standard_normal((T, B, I))
    R = bi.proj_size or H
    dout = rng.standard_normal((T, B, 2 * R))
    dout[..., :R] = 0  # only the reverse half reaches the loss
    y, s, dx, _, grads = run(bi, x, None, dout, None, LENGTHS)
    yu, su, dxu, _, gu = run(
        uni, _flip_within(x, LENGTHS), None, _flip_within(dout[..., R:], LENGTHS), None, LENGTHS
    )
    tol = TOL[np.float64]
    assert_close(y[..., R:], _flip_within(yu, LENGTHS), "out", **tol)
    for u, v in zip(s, su, strict=True):
        assert_close(u[1:], v, "state", **tol)
    assert_close(dx, _flip_within(dxu, LENGTHS), "dx", **tol)
    for k, g in gu.items():
        assert_close(grads[k + "_reverse"], g, k, **tol)


def test_cython_and_numpy_backends_agree(layer_name, dtype):
    rng = np.random.default_rng(6)
    a = make(layer_name, num_layers=3, bidirectional=True, dtype=dtype)
    b = make(layer_name, num_layers=3, bidirectional=True, dtype=dtype, backend="numpy")
    x = rng.standard_normal((T, B, I)).astype(dtype)
    state, dstate = _state(a, rng)
    dout = rng.standard_normal((T, B, _out_size(a)))
    for lengths in (None, LENGTHS):
        ra, rb = run(a, x, state, dout, dstate, lengths), run(b, x, state, dout, dstate, lengths)
        for u, v in zip(_arrays(ra), _arrays(rb), strict=True):
            assert u.dtype == dtype
            assert_close(u, v, "outputs", **TOL[dtype])
        for n in ra[4]:
            assert_close(ra[4][n], rb[4][n], n, **TOL[dtype])


def test_lengths_equal_to_T_are_the_unpadded_run(layer_name):
    m = make(layer_name, bidirectional=True)
    x = np.random.default_rng(7).standard_normal((T, B, I))
    y1, _ = m(x, lengths=np.full(B, T))
    y2, _ = m(x)
    assert_close(y1, y2, "out", rtol=0, atol=0)


# -------------------------------------------------------------------------------------------------
# dropout
# -------------------------------------------------------------------------------------------------
def test_dropout_is_reproducible_and_applied_between_layers(layer_name):
    x = np.random.default_rng(8).standard_normal((T, B, I))
    a, b = (make(layer_name, num_layers=3, dropout=0.4, seed=11) for _ in range(2))
    c = make(layer_name, num_layers=3, dropout=0.4, seed=12)
    ya, yb, yc = a(x)[0], b(x)[0], c(x)[0]
    assert_close(ya, yb, "same seed", rtol=0, atol=0)
    assert not np.allclose(ya, yc)
    a2 = a(x)[0]  # the generator moved on: a new mask
    assert not np.allclose(a2, ya)
    # backward of the second forward is that of its own mask: same seed, same gradients
    b(x)
    dxa, _ = a.backward(np.ones_like(ya))
    dxb, _ = b.backward(np.ones_like(ya))
    assert_close(dxa, dxb, "dx", rtol=0, atol=0)
    a.eval()
    y_eval = a(x)[0]
    assert not np.allclose(y_eval, ya)


def test_zero_dropout_is_no_dropout(layer_name):
    x = np.random.default_rng(9).standard_normal((T, B, I))
    a = make(layer_name, num_layers=3, dropout=0.0, seed=5)
    b = make(layer_name, num_layers=3, seed=5)
    b.load_state_dict(a.state_dict())
    state_a = a.generator.bit_generator.state
    ya, yb = a(x)[0], b(x)[0]
    assert_close(ya, yb, "out", rtol=0, atol=0)
    assert a.generator.bit_generator.state == state_a  # no draws at p = 0


def test_dropout_one_zeroes_the_inputs_of_later_layers():
    m = fastrnn.RNN(I, H, num_layers=2, dropout=1.0, bias=False, dtype=np.float64)
    y, h = m(np.random.default_rng(0).standard_normal((T, B, I)))
    assert not np.any(h[0] == 0) and np.all(y == 0) and np.all(h[1] == 0)


def test_dropout_with_one_layer_warns():
    with pytest.warns(UserWarning, match="num_layers > 1"):
        fastrnn.GRU(2, 3, dropout=0.2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fastrnn.GRU(2, 3, num_layers=2, dropout=0.2)


# -------------------------------------------------------------------------------------------------
# LSTM options: peephole, recurrent dropout, zoneout, every step's cell state
# -------------------------------------------------------------------------------------------------
LSTM_FEATURES = {
    "peephole": True,
    "recurrent_dropout": 0.3,
    "zoneout": (0.2, 0.4),
    "return_cell_states": True,
}


def _lstm(**kw):
    return fastrnn.LSTM(I, H, **{"dtype": np.float64, "seed": 0, **kw})


def _run_lstm(m, x, dout, lengths=None, dcs=None):
    """Forward + backward of an LSTM layer (with or without cell states): outputs, input grads
    and parameter grads (reset first)."""
    m.zero_grad()
    out, (h_n, c_n), *cs = m(x, lengths=lengths)
    dx, (dh0, dc0) = m.backward(dout, dcell_states=dcs)
    grads = {n: p.grad.copy() for n, p in m.named_parameters()}
    return [out, h_n, c_n, *cs, dx, dh0, dc0], grads


def test_lstm_zero_peephole_weights_is_the_plain_layer():
    rng = np.random.default_rng(20)
    plain = _lstm(num_layers=2, bidirectional=True)
    peep = _lstm(num_layers=2, bidirectional=True, peephole=True)
    for name, p in peep.named_parameters():
        p.data[...] = 0 if "peephole" in name else getattr(plain, name).data
    x = rng.standard_normal((T, B, I))
    dout = rng.standard_normal((T, B, 2 * H))
    for lengths in (None, LENGTHS):
        (a, ga), (b, gb) = _run_lstm(peep, x, dout, lengths), _run_lstm(plain, x, dout, lengths)
        for u, v in zip(a, b, strict=True):
            assert_close(u, v, "outputs", rtol=1e-12, atol=1e-12)
        for name, g in gb.items():
            assert_close(ga[name], g, name, rtol=1e-12, atol=1e-12)
        assert np.abs(ga["weight_peephole_l0"]).max() > 0  # the zero weights still learn


@pytest.mark.parametrize(
    "kw", [{"zoneout": 0.0}, {"zoneout": (0.0, 0.0)}, {"recurrent_dropout": 0.0}], ids=str
)
def test_lstm_zero_zoneout_and_recurrent_dropout_are_the_plain_layer(kw):
    rng = np.random.default_rng(21)
    a, b = _lstm(num_layers=2, **kw), _lstm(num_layers=2)
    x, dout = rng.standard_normal((T, B, I)), rng.standard_normal((T, B, H))
    state = a.generator.bit_generator.state
    (ra, ga), (rb, gb) = _run_lstm(a, x, dout, LENGTHS), _run_lstm(b, x, dout, LENGTHS)
    for u, v in zip(ra, rb, strict=True):
        assert_close(u, v, "outputs", rtol=0, atol=0)
    for name, g in gb.items():
        assert_close(ga[name], g, name, rtol=0, atol=0)
    assert a.generator.bit_generator.state == state  # nothing drawn at p = 0


@pytest.mark.parametrize("backend", ["cython", "numpy"])
def test_lstm_eval_uses_the_expectation(backend):
    """eval: recurrent dropout is the identity and zoneout mixes the previous and the new state
    with its probability, h_t = p h_{t-1} + (1 - p) h~_t (Krueger et al.)."""
    rng = np.random.default_rng(22)
    m = _lstm(zoneout=(0.3, 0.2), recurrent_dropout=0.4, backend=backend).eval()
    x = rng.standard_normal((T, B, I))
    out, (h_n, c_n) = m(x, lengths=LENGTHS)
    w = [p.data for _, p in m.named_parameters()]
    y, h, c, _ = fastrnn.reference.lstm_forward(
        x, None, None, *w, training=False, lengths=LENGTHS, zoneout_h=0.3, zoneout_c=0.2
    )
    for u, v, name in ((out, y, "out"), (h_n[0], h, "h_n"), (c_n[0], c, "c_n")):
        assert_close(u, v, name, **TOL[np.float64])
    plain, _ = _lstm(backend=backend).eval()(x, lengths=LENGTHS)
    assert not np.allclose(out, plain)  # the expectation is not the plain cell


@pytest.mark.parametrize("kw", [{"recurrent_dropout": 0.3}, {"zoneout": 0.3}], ids=str)
def test_lstm_recurrent_dropout_and_zoneout_masks_are_seeded(kw):
    rng = np.random.default_rng(23)
    x, dout = rng.standard_normal((T, B, I)), rng.standard_normal((T, B, H))
    a, b, c = _lstm(seed=11, **kw), _lstm(seed=11, **kw), _lstm(seed=12, **kw)
    c.load_state_dict(a.state_dict())  # same weights: only the masks differ
    (ra, ga), (rb, gb) = _run_lstm(a, x, dout), _run_lstm(b, x, dout)
    for u, v in zip(ra, rb, strict=True):
        assert_close(u, v, "same seed", rtol=0, atol=0)
    for name, g in gb.items():
        assert_close(ga[name], g, name, rtol=0, atol=0)
    assert not np.allclose(c(x)[0], ra[0])  # another seed: other masks
    assert not np.allclose(a(x)[0], ra[0])  # the generator moved on: new masks
    a.eval()
    assert_close(a(x)[0], a(x)[0], "eval", rtol=0, atol=0)  # eval draws nothing


def test_lstm_features_cython_and_numpy_backends_agree(dtype):
    """Every option at once with layers, directions, lengths and batch_first: the layers draw
    the masks, so the same seed gives both backends the same ones."""
    rng = np.random.default_rng(24)
    kw = {"num_layers": 2, "bidirectional": True, "batch_first": True, "dtype": dtype}
    a = _lstm(**LSTM_FEATURES, **kw)
    b = _lstm(**LSTM_FEATURES, **kw, backend="numpy")
    x = rng.standard_normal((B, T, I)).astype(dtype)
    dout, dcs = rng.standard_normal((B, T, 2 * H)), rng.standard_normal((B, T, 2 * H))
    for lengths in (None, LENGTHS):
        (ra, ga), (rb, gb) = (
            _run_lstm(a, x, dout, lengths, dcs),
            _run_lstm(b, x, dout, lengths, dcs),
        )
        assert len(ra) == 7
        for u, v in zip(ra, rb, strict=True):
            assert u.dtype == dtype
            assert_close(u, v, "outputs", **TOL[dtype])
        for name, g in gb.items():
            assert_close(ga[name], g, name, **TOL[dtype])
        if lengths is not None:  # cell states are zero past each sequence's end
            assert not ra[3][1, LENGTHS[1] :].any()


# -------------------------------------------------------------------------------------------------
# errors
# -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"hidden_size": 0}, ValueError, "hidden_size"),
        ({"input_size": -1}, ValueError, "input_size"),
        ({"num_layers": 0}, ValueError, "num_layers"),
        ({"hidden_size": 2.5}, TypeError, "hidden_size"),
        ({"dropout": 1.5}, ValueError, "dropout"),
        ({"dropout": -0.1}, ValueError, "dropout"),
        ({"dropout": "0.1"}, ValueError, "dropout"),
        ({"backend": "cuda"}, ValueError, "backend"),
        ({"dtype": np.int32}, TypeError, "dtype"),
        ({"dtype": np.float16}, TypeError, "dtype"),
    ],
)
def test_bad_constructor_arguments(layer_name, kwargs, exc, match):
    cls, ckw = LAYERS[layer_name]
    args = {"input_size": 3, "hidden_size": 4, **ckw, **kwargs}
    with pytest.raises(exc, match=match):
        cls(**args)


@pytest.mark.parametrize(
    "cls, kwargs, match",
    [
        (fastrnn.LSTM, {"proj_size": 4}, "proj_size must be smaller than hidden_size"),
        (fastrnn.LSTM, {"proj_size": -1}, "proj_size"),
        (fastrnn.RNN, {"nonlinearity": "sigmoid"}, "nonlinearity"),
    ],
)
def test_bad_cell_specific_arguments(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(3, 4, **kwargs)


def test_wrong_input(layer_name):
    m = make(layer_name, num_layers=2, bidirectional=True)
    with pytest.raises(ValueError, match=r"x must have input_size=3 features"):
        m(np.zeros((T, B, I + 1)))
    with pytest.raises(ValueError, match=r"x must be 3-D"):
        m(np.zeros((T, B, 1, I)))
    with pytest.raises(TypeError, match=r"x must be a real numeric array"):
        m(np.zeros((T, B, I), dtype=complex))


def test_wrong_state(layer_name):
    m = make(layer_name, num_layers=2, bidirectional=True)
    x = np.zeros((T, B, I))
    (good, _) = _state(m, np.random.default_rng(0))
    h = good[0] if isinstance(good, tuple) else good
    bad_h = np.zeros((h.shape[0] - 1, *h.shape[1:]))
    bad = (bad_h, good[1]) if isinstance(good, tuple) else bad_h
    with pytest.raises(ValueError, match=r"h0 must have shape \(num_layers \* num_directions"):
        m(x, bad)
    with pytest.raises(ValueError, match=r"h0 must have shape .*unbatched"):
        m(x[:, 0], good)  # batched state for an unbatched input
    if isinstance(good, tuple):
        with pytest.raises(ValueError, match=r"c0 must have shape"):
            m(x, (good[0], good[0][..., :1]))
        with pytest.raises(TypeError, match=r"tuple \(h, c\)"):
            m(x, good[0])
    else:
        with pytest.raises(TypeError, match="one array"):
            m(x, (good, good))
    y, _ = m(x)
    with pytest.raises(ValueError, match=r"dh_n must have shape"):
        m.backward(y, (bad_h, None) if isinstance(good, tuple) else bad_h)


@pytest.mark.parametrize(
    "lengths, exc, match",
    [
        (np.array([1, 2, 3, 4, T + 1]), ValueError, r"lengths must lie in \[1, T=6\]"),
        (np.array([0, 2, 3, 4, 5]), ValueError, r"lengths must lie in \[1, T=6\]"),
        (np.array([1, 2, 3]), ValueError, r"lengths must have shape \(5,\)"),
        (np.array([1.0, 2, 3, 4, 5]), TypeError, r"lengths must be an integer array"),
    ],
)
def test_bad_lengths(layer_name, lengths, exc, match):
    m = make(layer_name, bidirectional=True)
    with pytest.raises(exc, match=match):
        m(np.zeros((T, B, I)), lengths=lengths)


def test_lengths_need_a_batched_input():
    with pytest.raises(ValueError, match="lengths needs a batched"):
        fastrnn.GRU(I, H)(np.zeros((T, I)), lengths=[3])


# -------------------------------------------------------------------------------------------------
# RNN and GRU recurrent dropout and zoneout
# -------------------------------------------------------------------------------------------------
def _noisy(backend="cython", dtype=np.float64, mode="gru", **kw):
    kw = {"num_layers": 2, "bidirectional": True, "seed": 3, **kw}
    cls = {"rnn": fastrnn.RNN, "gru": fastrnn.GRU}[mode]
    return cls(I, H, dtype=dtype, backend=backend, **kw)


@pytest.mark.parametrize("mode", ["rnn", "gru"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_noise_backends_agree_in_training(mode, dtype):
    """Same seed, same masks: the kernels and the reference, through every layer and direction."""
    rng = np.random.default_rng(21)
    a = _noisy(dtype=dtype, mode=mode, recurrent_dropout=0.3, zoneout=0.25)
    b = _noisy("numpy", dtype=dtype, mode=mode, recurrent_dropout=0.3, zoneout=0.25)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    state, dstate = _state(a, rng)
    dout = rng.standard_normal((T, B, _out_size(a)))
    for lengths in (None, LENGTHS):
        ra, rb = run(a, x, state, dout, dstate, lengths), run(b, x, state, dout, dstate, lengths)
        for u, v in zip(_arrays(ra), _arrays(rb), strict=True):
            assert_close(u, v, "outputs", **TOL[dtype])
        for n in ra[4]:
            assert_close(ra[4][n], rb[4][n], n, **TOL[dtype])


@pytest.mark.parametrize("mode", ["rnn", "gru"])
def test_zero_recurrent_dropout_and_zoneout_are_the_plain_layer(mode):
    x = np.random.default_rng(22).standard_normal((T, B, I))
    a = _noisy(mode=mode, recurrent_dropout=0.0, zoneout=0.0)
    b = _noisy(mode=mode)
    state = a.generator.bit_generator.state
    ra, rb = (
        run(a, x, None, np.ones((T, B, 2 * H)), None),
        run(b, x, None, np.ones((T, B, 2 * H)), None),
    )
    for u, v in zip(_arrays(ra), _arrays(rb), strict=True):
        assert_close(u, v, "outputs", rtol=0, atol=0)
    assert a.generator.bit_generator.state == state  # nothing drawn at p = 0


@pytest.mark.parametrize("mode", ["rnn", "gru"])
def test_noise_eval_uses_the_expectation(mode):
    """Eval: no recurrent dropout, zoneout h = p h_{t-1} + (1 - p) h~ (Krueger et al.)."""
    x = np.random.default_rng(23).standard_normal((T, B, I))
    m = _noisy(mode=mode, num_layers=1, bidirectional=False, recurrent_dropout=0.4, zoneout=0.3)
    m.eval()
    w = {n: p.data for n, p in m.named_parameters()}
    args = (x, None, w["weight_ih_l0"], w["weight_hh_l0"], w["bias_ih_l0"], w["bias_hh_l0"])
    forward = getattr(fastrnn.reference, f"{mode}_forward")
    y, h_n = m(x, lengths=LENGTHS)
    want_y, want_h, _ = forward(*args, lengths=LENGTHS, zoneout_h=0.3, training=False)
    assert_close(y, want_y, "out", **TOL[np.float64])
    assert_close(h_n[0], want_h, "h_n", **TOL[np.float64])
    plain_y, _, _ = forward(*args, lengths=LENGTHS, training=False)
    assert not np.allclose(y, plain_y)  # the expectation is not the plain cell


@pytest.mark.parametrize("mode", ["rnn", "gru"])
def test_noise_is_seeded_and_redrawn_each_forward(mode):
    x = np.random.default_rng(24).standard_normal((T, B, I))
    a, b = (_noisy(mode=mode, recurrent_dropout=0.3, zoneout=0.2, seed=11) for _ in range(2))
    c = _noisy(mode=mode, recurrent_dropout=0.3, zoneout=0.2, seed=12)
    c.load_state_dict(a.state_dict())
    dout = np.ones((T, B, 2 * H))
    ra, rb = run(a, x, None, dout, None), run(b, x, None, dout, None)
    for u, v in zip(_arrays(ra), _arrays(rb), strict=True):
        assert_close(u, v, "same seed", rtol=0, atol=0)
    assert not np.allclose(ra[0], c(x)[0])  # another seed, other masks
    assert not np.allclose(ra[0], a(x)[0])  # the generator moved on
    a.eval()
    assert not np.allclose(ra[0], a(x)[0])
