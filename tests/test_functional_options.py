"""fastrnn/functional.py and reference.py: the keyword options (reverse, w_hr, reset_after).

The options: ``reverse=`` on every cell, the LSTM projection ``w_hr=`` and GRU ``reset_after=``.

Same oracles as ``test_functional.py`` (finite differences in float64 on both backends, Cython vs
reference, an independent invariant), applied to each extension, alone and combined with
``lengths``.
"""

import dataclasses

import numpy as np
import pytest
from conftest import (
    FD_TOL,
    SPEC_BY_NAME,
    SPECS,
    TOL,
    assert_close,
    assert_grads_close,
    backend_module,
    make_case,
    numeric_grad,
    numerical_grads,
)

from fastrnn._common import LSTMGrads, LSTMProjGrads

LENGTHS = np.array([3, 1, 2])  # T = 3, B = 3: one full, one length-1 and one in between


def _variant(spec, **kw):
    """The spec with extra forward keywords (e.g. reverse=True, reset_after=False)."""
    name = spec.name + "".join(f"-{k}={v}" for k, v in kw.items())
    return dataclasses.replace(spec, name=name, kwargs={**spec.kwargs, **kw})


VARIANTS = [_variant(s, reverse=True) for s in SPECS] + [
    _variant(SPEC_BY_NAME["gru"], reset_after=False),
    _variant(SPEC_BY_NAME["gru"], reset_after=False, reverse=True),
]


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.name)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
def test_variant_gradients_match_finite_differences(variant, backend, bias, with_lengths, rng):
    case = make_case(variant, rng, 3, 3, 2, 2, bias=bias, lengths=LENGTHS if with_lengths else None)
    fwd = variant.forward_case(backend, case)
    grads = variant.backward_case(backend, fwd.cache, case)
    expected = numerical_grads(variant, backend, case)
    if not bias:
        expected["db_ih"] = expected["db_hh"] = None
    assert_grads_close(variant, grads, expected, **FD_TOL)


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.name)
@pytest.mark.parametrize("T,B,D,H", [(1, 1, 1, 1), (4, 5, 3, 4), (7, 3, 2, 9), (5, 4, 1, 1)])
@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
def test_variant_cython_matches_reference(variant, dtype, T, B, D, H, with_lengths):
    rng = np.random.default_rng([T, B, D, H])
    lengths = "random" if with_lengths else None
    case = make_case(variant, rng, T, B, D, H, dtype, lengths=lengths)
    f_cy = variant.forward_case("cython", case)
    f_np = variant.forward_case("numpy", case)
    for name in variant.output_names():
        assert getattr(f_cy, name).dtype == dtype
        assert_close(getattr(f_cy, name), getattr(f_np, name), name, **TOL[dtype])
    g_cy = variant.backward_case("cython", f_cy.cache, case)
    g_np = variant.backward_case("numpy", f_np.cache, case)
    assert_grads_close(variant, g_cy, g_np, **TOL[dtype])


def _flip_within(a, lengths):
    """Reverse each sequence of a time-major (T, B, ...) array within its own length."""
    T, B = a.shape[:2]
    t = np.arange(T)[:, None]
    lens = np.full(B, T) if lengths is None else lengths
    steps = np.where(t < lens[None, :], lens[None, :] - 1 - t, t)
    return a[steps, np.arange(B)[None, :]]


@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
def test_reverse_is_forward_on_flipped_input(spec, backend, with_lengths, rng):
    """reverse=True == the forward direction run on each sequence flipped within its length."""
    case = make_case(
        spec, rng, 5, 4, 3, 4, lengths=np.array([5, 2, 4, 1]) if with_lengths else None
    )
    rev = _variant(spec, reverse=True)
    f_rev = rev.forward_case(backend, case)
    flipped = case.replace(
        x=_flip_within(case.x, case.lengths), dy=_flip_within(case.dy, case.lengths)
    )
    f_fwd = spec.forward_case(backend, flipped)
    assert_close(f_rev.y, _flip_within(f_fwd.y, case.lengths), "y", **TOL[np.float64])
    assert_close(f_rev.h_n, f_fwd.h_n, "h_n", **TOL[np.float64])
    g_rev = rev.backward_case(backend, f_rev.cache, case)
    g_fwd = spec.backward_case(backend, f_fwd.cache, flipped)
    g_fwd = g_fwd._replace(dx=_flip_within(g_fwd.dx, case.lengths))
    assert_grads_close(spec, g_rev, g_fwd, **TOL[np.float64])


# -------------------------------------------------------------------------------------------------
# LSTM projection: h_t = W_hr (o * tanh(c_t))
# -------------------------------------------------------------------------------------------------
PROJ_INPUTS = ("x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh", "w_hr")


def _proj_case(rng, T, B, D, H, P, dtype=np.float64, bias=True):
    k = 1 / np.sqrt(H)

    def u(*s):
        return rng.uniform(-k, k, s).astype(dtype)

    def n(*s):
        return rng.standard_normal(s).astype(dtype)

    return {
        "x": n(T, B, D),
        "h0": n(B, P),
        "c0": n(B, H),
        "w_ih": u(4 * H, D),
        "w_hh": u(4 * H, P),
        "b_ih": u(4 * H) if bias else None,
        "b_hh": u(4 * H) if bias else None,
        "w_hr": u(P, H),
        "dy": n(T, B, P),
        "dh_n": n(B, P),
        "dc_n": n(B, H),
    }


def _proj_forward(backend, a, **kw):
    F = backend_module(backend)
    return F.lstm_forward(
        a["x"], a["h0"], a["c0"], a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"], w_hr=a["w_hr"], **kw
    )


def _proj_loss(backend, a, **kw):
    y, h, c, _ = _proj_forward(backend, a, training=False, **kw)
    return np.sum(y * a["dy"]) + np.sum(h * a["dh_n"]) + np.sum(c * a["dc_n"])


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_projection_gradients_match_finite_differences(backend, bias, with_lengths, reverse, rng):
    a = _proj_case(rng, 3, 3, 2, 3, 2, bias=bias)
    kw = {"lengths": LENGTHS if with_lengths else None, "reverse": reverse}
    _, _, _, cache = _proj_forward(backend, a, **kw)
    grads = backend_module(backend).lstm_backward(cache, a["dy"], a["dh_n"], a["dc_n"])
    assert isinstance(grads, LSTMProjGrads)
    assert grads._fields[: len(LSTMGrads._fields)] == LSTMGrads._fields  # stable prefix
    for name in PROJ_INPUTS:
        if a[name] is None:
            assert getattr(grads, "d" + name) is None
            continue
        num = numeric_grad(lambda: _proj_loss(backend, a, **kw), a[name])
        assert_close(getattr(grads, "d" + name), num, "d" + name, **FD_TOL)


@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize(
    "T,B,D,H,P", [(1, 1, 1, 2, 1), (6, 5, 3, 7, 4), (4, 9, 5, 16, 3), (5, 4, 1, 2, 1)]
)
def test_projection_cython_matches_reference(dtype, with_lengths, reverse, T, B, D, H, P):
    rng = np.random.default_rng([T, B, D, H, P])
    a = _proj_case(rng, T, B, D, H, P, dtype)
    lengths = rng.integers(1, T + 1, B) if with_lengths else None
    out = {}
    for backend in ("cython", "numpy"):
        y, h, c, cache = _proj_forward(backend, a, lengths=lengths, reverse=reverse)
        g = backend_module(backend).lstm_backward(cache, a["dy"], a["dh_n"], a["dc_n"])
        out[backend] = (y, h, c, *g)
    names = ("y", "h_n", "c_n", *LSTMProjGrads._fields)
    for name, u, v in zip(names, out["cython"], out["numpy"], strict=True):
        assert u.dtype == dtype, name
        assert_close(u, v, name, **TOL[dtype])


def test_projection_eval_forward_equals_training_forward(backend, rng):
    a = _proj_case(rng, 5, 4, 3, 6, 2)
    y1, h1, c1, cache = _proj_forward(backend, a, training=False, lengths=[5, 2, 1, 3])
    y2, h2, c2, _ = _proj_forward(backend, a, training=True, lengths=[5, 2, 1, 3])
    assert cache is None
    for u, v, name in ((y1, y2, "y"), (h1, h2, "h_n"), (c1, c2, "c_n")):
        assert_close(u, v, name, rtol=0, atol=0)


def test_projection_empty_batch(backend):
    F = backend_module(backend)
    H, P = 4, 2
    w = [np.zeros((4 * H, 3)), np.zeros((4 * H, P)), None, None]
    y, h, c, cache = F.lstm_forward(np.zeros((0, 2, 3)), None, None, *w, w_hr=np.zeros((P, H)))
    assert y.shape == (0, 2, P) and h.shape == (2, P) and c.shape == (2, H)
    g = F.lstm_backward(cache, None)
    assert g.dw_hr.shape == (P, H) and g.dh0.shape == (2, P) and not g.dw_hr.any()


@pytest.mark.parametrize(
    "change, match",
    [
        ({"w_hh": np.zeros((16, 4))}, r"w_hh must have shape \(4 \* hidden_size, proj_size\)"),
        ({"h0": np.zeros((3, 4))}, r"h0 must have shape \(3, 2\)"),
        ({"c0": np.zeros((3, 2))}, r"c0 must have shape \(3, 4\)"),
        ({"w_hr": np.zeros((2,))}, r"w_hr must be a 2-D array"),
        ({"w_hr": np.zeros((0, 4))}, r"w_hr must have shape \(proj_size >= 1"),
    ],
)
def test_projection_validation(backend, change, match):
    a = _proj_case(np.random.default_rng(0), 2, 3, 2, 4, 2)
    a.update(change)
    with pytest.raises(ValueError, match=match):
        _proj_forward(backend, a)


def test_gru_backward_follows_the_variant_of_its_cache(backend, rng):
    """gru_backward needs no reset_after argument: the cache says which variant ran."""
    spec = SPEC_BY_NAME["gru"]
    case = make_case(spec, rng, 3, 2, 2, 3)
    after = spec.forward_case(backend, case)
    before = _variant(spec, reset_after=False).forward_case(backend, case)
    assert not np.allclose(after.y, before.y)  # the two variants differ ...
    g_before = spec.backward_case(backend, before.cache, case)  # ... and each backward knows
    g_ref = _variant(spec, reset_after=False).backward_case(backend, before.cache, case)
    assert_grads_close(spec, g_before, g_ref, rtol=0, atol=0)
