"""LSTM: the functional forward against its defining equations, written out here.

Gate order i, f, g, o (PyTorch's ``nn.LSTM``)::

    i, f, g, o = split(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh, 4)
    c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g)
    h_t = sigmoid(o) * tanh(c_t)

Every other property of the plain cell (gradients, lengths, layouts, PyTorch parity) is in
``test_functional.py``. The kernels' optional features (peephole, recurrent dropout, zoneout,
every step's cell state) are tested below against ``fastrnn.reference``, whose equations are
their spec, and by float64 finite differences through the Cython path; the layer-normalized
LSTM's at the end of this file.
"""

import numpy as np
import pytest
from conftest import (
    FD_EPS,
    FD_TOL,
    LN_CASES,
    SPEC_BY_NAME,
    TOL,
    assert_close,
    check_layer_norm_empty,
    check_layer_norm_finite_differences,
    check_layer_norm_matches_reference,
    check_layer_norm_threads_bitwise,
    make_case,
    make_layer_norm,
)

import fastrnn
from fastrnn import functional, reference
from fastrnn._isa import available_isas

SPEC = SPEC_BY_NAME["lstm"]


def _sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def test_lstm_forward_matches_equations(backend, dtype, rng):
    case = make_case(SPEC, rng, 4, 3, 2, 5, dtype)
    fwd = SPEC.forward_case(backend, case)
    h, c = case.h0.astype(np.float64), case.c0.astype(np.float64)
    ys = []
    for x_t in case.x.astype(np.float64):
        gates = x_t @ case.w_ih.T + case.b_ih + h @ case.w_hh.T + case.b_hh
        i, f, g, o = np.split(gates, 4, axis=1)
        c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
        h = _sigmoid(o) * np.tanh(c)
        ys.append(h)
    assert_close(fwd.y, np.stack(ys), "y", **TOL[dtype])
    assert_close(fwd.h_n, h, "h_n", **TOL[dtype])
    assert_close(fwd.c_n, c, "c_n", **TOL[dtype])


def test_lstm_gate_order(backend):
    """Drive one gate block at a time with a large bias and watch which quantity moves."""
    H, D = 2, 1
    x = np.zeros((1, 1, D))
    c0 = np.full((1, H), 0.5)
    w_ih, w_hh = np.zeros((4 * H, D)), np.zeros((4 * H, H))

    def run(block, value):
        b = np.zeros(4 * H)
        b[block * H : (block + 1) * H] = value
        _, h_n, c_n, _ = SPEC.forward_fn(backend)(x, None, c0, w_ih, w_hh, b, np.zeros(4 * H))
        return h_n[0, 0], c_n[0, 0]

    # all pre-activations 0: i = f = o = 1/2, g = 0 -> c = 0.25
    assert np.isclose(run(0, 0.0)[1], 0.25)
    assert np.isclose(run(0, 30.0)[1], 0.25)  # i open, but g = 0: c unchanged
    assert np.isclose(run(1, 30.0)[1], 0.5)  # f open: c = c0
    assert np.isclose(run(2, 30.0)[1], 0.25 + 0.5)  # g = 1: c = 0.25 + 0.5 * 1
    h_closed, _ = run(3, -30.0)  # o shut: h = 0
    assert abs(h_closed) < 1e-12


# -------------------------------------------------------------------------------------------------
# peephole, recurrent dropout, zoneout, return_cell_states (functional vs reference)
# -------------------------------------------------------------------------------------------------
FEATURES = {
    "peephole": ("w_peephole",),
    "recurrent_dropout": ("recurrent_mask",),
    "zoneout_h": ("zoneout_h",),
    "zoneout_c": ("zoneout_c",),
    "zoneout_float": ("zoneout_h_float", "zoneout_c_float"),  # one p for every step
    "cell_states": ("cs",),
    "all": ("w_peephole", "recurrent_mask", "zoneout_h", "zoneout_c", "cs"),
}
WEIGHTS = ("x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh", "w_peephole")


def _feature_case(rng, T, B, D, H, dtype, features, training=True):
    """Operands of an LSTM forward with ``features`` (keys of FEATURES' values), upstream
    gradients included; zoneout masks become their probability when not training."""
    case = {
        "x": rng.standard_normal((T, B, D)),
        "h0": rng.standard_normal((B, H)) * 0.5,
        "c0": rng.standard_normal((B, H)),
        "w_ih": rng.standard_normal((4 * H, D)) * 0.4,
        "w_hh": rng.standard_normal((4 * H, H)) * 0.4,
        "b_ih": rng.standard_normal(4 * H) * 0.1,
        "b_hh": rng.standard_normal(4 * H) * 0.1,
    }
    kw = {}
    if "w_peephole" in features:
        case["w_peephole"] = rng.standard_normal((3, H))
    if "recurrent_mask" in features:
        kw["recurrent_mask"] = (rng.random((B, H)) > 0.3) / 0.7
    for name, p in (("zoneout_h", 0.3), ("zoneout_c", 0.4)):
        if name in features:
            kw[name] = (rng.random((T, B, H)) < p) * 1.0 if training else p
        if name + "_float" in features:
            kw[name] = p
    case = {k: v.astype(dtype) for k, v in case.items()}
    kw = {k: v.astype(dtype) if isinstance(v, np.ndarray) else v for k, v in kw.items()}
    up = {
        "dy": rng.standard_normal((T, B, H)).astype(dtype),
        "dh_n": rng.standard_normal((B, H)).astype(dtype),
        "dc_n": rng.standard_normal((B, H)).astype(dtype),
        "dcs": rng.standard_normal((T, B, H)).astype(dtype) if "cs" in features else None,
    }
    return case, {**kw, "return_cell_states": "cs" in features}, up


def _forward(mod, case, kw, **options):
    """(outputs, cache) of mod.lstm_forward; outputs y, h_n, c_n (and cs)."""
    *out, cache = mod.lstm_forward(
        case["x"], case["h0"], case["c0"], case["w_ih"], case["w_hh"], case["b_ih"],
        case["b_hh"], w_peephole=case.get("w_peephole"), **kw, **options,
    )  # fmt: skip
    return out, cache


def _backward(mod, cache, up):
    return mod.lstm_backward(cache, up["dy"], up["dh_n"], up["dc_n"], dcs=up["dcs"])


@pytest.mark.parametrize("feature", list(FEATURES))
@pytest.mark.parametrize("training", [True, False], ids=["training", "inference"])
@pytest.mark.parametrize(
    "shape", [(5, 4, 3, 20, "lengths"), (5, 4, 3, 20, None), (4, 1, 2, 33, None)],
    ids=["lengths", "full", "B1_H33"],
)  # fmt: skip
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_lstm_features_match_reference(feature, training, shape, reverse, dtype):
    T, B, D, H, lengths = shape
    rng = np.random.default_rng(1)
    case, kw, up = _feature_case(rng, T, B, D, H, dtype, FEATURES[feature], training)
    options = {"training": training, "reverse": reverse}
    if lengths:
        options["lengths"] = np.array([5, 2, 4, 1])
    out, cache = _forward(functional, case, kw, **options)
    out_ref, cache_ref = _forward(reference, case, kw, **options)
    names = ["y", "h_n", "c_n", "cs"]
    assert len(out) == len(out_ref) == (4 if kw["return_cell_states"] else 3)
    for name, a, b in zip(names, out, out_ref, strict=False):
        assert a.dtype == dtype
        assert_close(a, b, name, **TOL[dtype])
    if lengths and kw["return_cell_states"]:  # zero past each sequence's end
        assert not out[3][2:, 1].any() and not out[3][1:, 3].any()
    if not training:
        assert cache is None
        return
    g, g_ref = _backward(functional, cache, up), _backward(reference, cache_ref, up)
    assert g._fields == g_ref._fields
    assert ("dw_peephole" in g._fields) == ("w_peephole" in case)
    for name in g._fields:
        assert_close(getattr(g, name), getattr(g_ref, name), name, **TOL[dtype])


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_lstm_features_finite_differences(reverse):
    """Every feature at once, through the Cython path: the gradient of
    sum(y dy) + sum(h_n dh_n) + sum(c_n dc_n) + sum(cs dcs) for every input and weight."""
    rng = np.random.default_rng(2)
    case, kw, up = _feature_case(rng, 4, 3, 2, 5, np.float64, FEATURES["all"])
    options = {"lengths": np.array([4, 2, 3]), "reverse": reverse}

    def loss(**changed):
        (y, h_n, c_n, cs), _ = _forward(functional, {**case, **changed}, kw, training=False,
                                        **options)  # fmt: skip
        return (
            (y * up["dy"]).sum()
            + (h_n * up["dh_n"]).sum()
            + (c_n * up["dc_n"]).sum()
            + (cs * up["dcs"]).sum()
        )

    _, cache = _forward(functional, case, kw, **options)
    grads = _backward(functional, cache, up)
    for name in WEIGHTS:
        num = np.zeros_like(case[name])
        for idx in np.ndindex(num.shape):
            a = case[name].copy()
            a[idx] += FD_EPS
            plus = loss(**{name: a})
            a[idx] -= 2 * FD_EPS
            num[idx] = (plus - loss(**{name: a})) / (2 * FD_EPS)
        assert_close(getattr(grads, "d" + name), num, "d" + name, **FD_TOL)


@pytest.fixture
def restore_threads():
    before = fastrnn.get_num_threads()
    yield
    fastrnn.set_num_threads(before)


@pytest.mark.parametrize("training", [True, False], ids=["training", "inference"])
def test_lstm_features_are_bitwise_equal_for_1_and_2_threads(training, restore_threads):
    rng = np.random.default_rng(3)
    T, B, D, H = 5, 24, 3, 80  # 2 unit blocks (48 and 32 units), enough work for 2 threads
    case, kw, up = _feature_case(rng, T, B, D, H, np.float64, FEATURES["all"], training)
    options = {"lengths": rng.integers(1, T + 1, B), "training": training}
    results = []
    for n in (1, 2):
        fastrnn.set_num_threads(n)
        out, cache = _forward(functional, case, kw, **options)
        named = dict(zip(["y", "h_n", "c_n", "cs"], out, strict=True))
        if training:
            named.update(_backward(functional, cache, up)._asdict())
        results.append(named)
    assert "dw_peephole" in results[0] or not training
    for name, a in results[0].items():
        assert_close(a, results[1][name], name, rtol=0, atol=0)


@pytest.mark.parametrize("lengths", [None, [4, 2, 1]], ids=["full", "lengths"])
def test_lstm_large_weight_paths_are_bitwise_the_small_ones(lengths, restore_threads):
    # float64 I = H = 512: 16 MB of packed weights, so a training forward projects all steps
    # before its loop (_blocks.pxd: upfront_projection) where an inference forward projects
    # them chunk by chunk inside it, and a 2-thread backward shares dx by columns
    # (dx_by_columns) where one thread computes all of it; the sums are the same, bit for bit
    rng = np.random.default_rng(5)
    lengths = None if lengths is None else np.array(lengths)
    case = make_case(SPEC, rng, 4, 3, 512, 512, np.float64, lengths=lengths)
    outs, grads = [], []
    for n in (1, 2):
        fastrnn.set_num_threads(n)
        for training in (True, False):
            outs.append(SPEC.forward_case("cython", case, training=training))
        grads.append(SPEC.backward_case("cython", outs[-2].cache, case))
    ref = SPEC.forward_case("numpy", case)
    ref_grads = SPEC.backward_case("numpy", ref.cache, case)
    for name in SPEC.output_names():
        for out in outs[1:]:
            assert_close(getattr(out, name), getattr(outs[0], name), name, rtol=0, atol=0)
        assert_close(getattr(outs[0], name), getattr(ref, name), name, **TOL[np.float64])
    for name in SPEC.grad_names():
        assert_close(getattr(grads[1], name), getattr(grads[0], name), name, rtol=0, atol=0)
        assert_close(getattr(grads[0], name), getattr(ref_grads, name), name, **TOL[np.float64])


def test_lstm_peephole_zero_weights_is_the_plain_cell(rng):
    case, kw, up = _feature_case(rng, 5, 3, 2, 6, np.float64, ("w_peephole",))
    case["w_peephole"][:] = 0
    out, cache = _forward(functional, case, kw)
    plain, plain_cache = _forward(functional, {**case, "w_peephole": None}, kw)
    for a, b in zip(out, plain, strict=True):
        assert_close(a, b, "outputs", rtol=1e-12, atol=1e-12)
    g, gp = _backward(functional, cache, up), _backward(functional, plain_cache, up)
    for name in gp._fields:
        assert_close(getattr(g, name), getattr(gp, name), name, rtol=1e-12, atol=1e-12)


def test_lstm_zoneout_one_keeps_the_state_and_zero_is_the_plain_cell(rng):
    case, kw, _ = _feature_case(rng, 4, 2, 3, 5, np.float64, ())
    (y, h_n, c_n), _ = _forward(functional, case, {}, zoneout_h=1.0, zoneout_c=1.0)
    assert_close(y, np.broadcast_to(case["h0"], y.shape), "y", rtol=0, atol=0)
    assert_close(c_n, case["c0"], "c_n", rtol=0, atol=0)
    zeros = np.zeros((4, 2, 5))
    out, _ = _forward(functional, case, {}, zoneout_h=zeros, zoneout_c=0.0)
    plain, _ = _forward(functional, case, {})
    for a, b in zip(out, plain, strict=True):
        assert_close(a, b, "outputs", rtol=0, atol=0)


def test_lstm_empty_sequences_with_features(rng):
    case, kw, _ = _feature_case(rng, 0, 3, 2, 4, np.float64, FEATURES["all"])
    kw["zoneout_h"] = kw["zoneout_c"] = 0.5
    (y, h_n, c_n, cs), cache = _forward(functional, case, kw)
    assert y.shape == cs.shape == (0, 3, 4)
    assert_close(h_n, case["h0"], "h_n", rtol=0, atol=0)
    g = functional.lstm_backward(cache, None, dcs=np.zeros((0, 3, 4)))
    assert_close(g.dw_peephole, np.zeros((3, 4)), "dw_peephole", rtol=0, atol=0)


def test_lstm_feature_errors(rng):
    case, kw, up = _feature_case(rng, 3, 2, 2, 4, np.float64, ())
    _, cache = _forward(functional, case, kw)
    with pytest.raises(ValueError, match="return_cell_states=True"):
        functional.lstm_backward(cache, None, dcs=np.zeros((3, 2, 4)))
    _, cache = _forward(functional, case, {"return_cell_states": True})
    with pytest.raises(ValueError, match="dcs"):
        functional.lstm_backward(cache, None, dcs=np.zeros((3, 2, 5)))
    w_hr = np.zeros((2, 4))
    w_hh = np.zeros((16, 2))
    with pytest.raises(ValueError, match="return_cell_states cannot be combined with w_hr"):
        functional.lstm_forward(case["x"], None, None, case["w_ih"], w_hh, w_hr=w_hr,
                                return_cell_states=True)  # fmt: skip
    with pytest.raises(ValueError, match="zoneout_h must hold values in"):
        _forward(functional, case, {"zoneout_h": np.full((3, 2, 4), 2.0)})
    with pytest.raises(ValueError, match="recurrent_mask"):
        _forward(functional, case, {"recurrent_mask": np.ones((3, 4))})


# ---------------------------------------------------------------------------------------------
# Layer normalization (Ba, Kiros & Hinton 2016): a = LN(W_ih x) + LN(W_hh h) + b_ih + b_hh,
# h = o * tanh(LN(c)). The Cython kernels against the reference (fastrnn.reference.lstm_forward
# states the equations) and against finite differences; the cases are conftest's LN_CASES.
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case_id", list(LN_CASES))
def test_lstm_layer_norm_matches_reference(case_id, dtype, rng):
    check_layer_norm_matches_reference(SPEC, LN_CASES[case_id], dtype, rng)


@pytest.mark.parametrize("reverse", [False, True])
def test_lstm_layer_norm_finite_differences(reverse, rng):
    """Every gradient of the Cython layer-norm LSTM, float64 central differences."""
    check_layer_norm_finite_differences(SPEC, reverse, rng)


@pytest.mark.parametrize("isa", available_isas())
def test_lstm_layer_norm_threads_bitwise(rng, isa):
    """One or two threads (rows and columns shared differently) give the same bits."""
    check_layer_norm_threads_bitwise(SPEC, rng, isa)


def test_lstm_layer_norm_empty(rng):
    """T == 0: the initial states pass through and every parameter gradient is zero."""
    check_layer_norm_empty(SPEC, rng)


def test_lstm_layer_norm_refuses_what_its_kernel_does_not_run(rng):
    """The Cython layer-norm LSTM names the operand it cannot combine (the reference can)."""
    case = make_case(SPEC, rng, 3, 2, 2, 4)
    ln = make_layer_norm(SPEC, rng, 4)
    with pytest.raises(ValueError, match="ln_ih .* cannot be combined with w_peephole"):
        SPEC.forward_case("cython", case, w_peephole=np.zeros((3, 4)), **ln)
    with pytest.raises(ValueError, match="cannot be combined with return_cell_states"):
        SPEC.forward_case("cython", case, return_cell_states=True, **ln)
