"""Elman RNN: the functional forward against its defining equation, written out here.

h_t = act(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh), act = tanh or relu (PyTorch's ``nn.RNN``).
The plain cell's other properties (gradients, lengths, layouts, PyTorch parity) are in
``test_functional.py``; the options (recurrent dropout, zoneout) are tested here.
"""

from dataclasses import replace

import numpy as np
import pytest
from conftest import (
    FD_TOL,
    SPEC_BY_NAME,
    TOL,
    assert_close,
    assert_forward_close,
    assert_grads_close,
    make_case,
    numerical_grads,
)

import fastrnn

ACT = {"tanh": np.tanh, "relu": lambda a: np.maximum(a, 0.0)}


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_rnn_forward_matches_equation(backend, dtype, nonlinearity, rng):
    spec = SPEC_BY_NAME[f"rnn_{nonlinearity}"]
    case = make_case(spec, rng, 4, 3, 2, 5, dtype)
    fwd = spec.forward_case(backend, case)
    h = case.h0.astype(np.float64)
    ys = []
    for x_t in case.x.astype(np.float64):
        h = ACT[nonlinearity](x_t @ case.w_ih.T + case.b_ih + h @ case.w_hh.T + case.b_hh)
        ys.append(h)
    assert_close(fwd.y, np.stack(ys), "y", **TOL[dtype])
    assert_close(fwd.h_n, h, "h_n", **TOL[dtype])
    if nonlinearity == "relu":
        assert (fwd.y >= 0).all()


def test_nonlinearity_defaults_to_tanh(backend, rng):
    spec = SPEC_BY_NAME["rnn_tanh"]
    case = make_case(spec, rng, 3, 2, 2, 3)
    fn = spec.forward_fn(backend)
    y_default, _, _ = fn(case.x, case.h0, case.w_ih, case.w_hh, case.b_ih, case.b_hh)
    y_tanh, _, _ = fn(
        case.x, case.h0, case.w_ih, case.w_hh, case.b_ih, case.b_hh, nonlinearity="tanh"
    )
    np.testing.assert_array_equal(y_default, y_tanh)


# -------------------------------------------------------------------------------------------------
# recurrent dropout and zoneout of h: the kernels against fastrnn.reference
# -------------------------------------------------------------------------------------------------
NOISE = ("recurrent_mask", "zoneout", "zoneout_p", "both")


def _noise(which, rng, T, B, H, dtype):
    """The functional keywords of one noise option: a (B, H) inverted-dropout mask, (T, B, H)
    0/1 zoneout weights, or the one eval weight p."""
    kw = {}
    if which in ("recurrent_mask", "both"):
        kw["recurrent_mask"] = ((rng.random((B, H)) >= 0.3) / 0.7).astype(dtype)
    if which in ("zoneout", "both"):
        kw["zoneout_h"] = (rng.random((T, B, H)) < 0.3).astype(dtype)
    if which == "zoneout_p":
        kw["zoneout_h"] = 0.3
    return kw


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("which", NOISE)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize(
    "T, B, H, lengths, reverse",
    [
        (5, 4, 5, None, False),
        (6, 3, 20, "random", False),
        (6, 3, 20, "random", True),
        (4, 1, 7, None, True),
    ],
)
def test_rnn_noise_matches_reference(
    nonlinearity, which, training, T, B, H, lengths, reverse, dtype, rng
):
    spec = SPEC_BY_NAME[f"rnn_{nonlinearity}"]
    case = make_case(spec, rng, T, B, 3, H, dtype, lengths=lengths)
    kw = {**_noise(which, rng, T, B, H, dtype), "reverse": reverse, "training": training}
    got = spec.forward_case("cython", case, **kw)
    want = spec.forward_case("numpy", case, **kw)
    assert_forward_close(spec, got, want, **TOL[dtype])
    if lengths is not None:  # padded steps output zeros
        steps = np.arange(T)[:, None] >= case.lengths[None, :]
        assert not got.y[steps].any()
    if training:
        g = spec.backward_case("cython", got.cache, case)
        assert_grads_close(spec, g, spec.backward_case("numpy", want.cache, case), **TOL[dtype])


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_rnn_noise_changes_the_result(nonlinearity, rng):
    """Each option really acts (so the comparisons above are not of two plain runs)."""
    spec = SPEC_BY_NAME[f"rnn_{nonlinearity}"]
    case = make_case(spec, rng, 5, 3, 2, 6, np.float64)
    plain = spec.forward_case("cython", case)
    g_plain = spec.backward_case("cython", plain.cache, case)
    for which in NOISE:
        fwd = spec.forward_case("cython", case, **_noise(which, rng, 5, 3, 6, np.float64))
        g = spec.backward_case("cython", fwd.cache, case)
        assert not np.allclose(fwd.y, plain.y), which
        assert not np.allclose(g.dw_hh, g_plain.dw_hh), which


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("which", ["recurrent_mask", "zoneout", "both"])
@pytest.mark.parametrize("backend", ["cython", "numpy"])
def test_rnn_noise_finite_differences(nonlinearity, which, backend, rng):
    """float64 central differences, the masks held fixed."""
    T, B, H = 4, 3, 5
    base = SPEC_BY_NAME[f"rnn_{nonlinearity}"]
    case = make_case(base, rng, T, B, 2, H, np.float64, lengths=np.array([4, 2, 3]))
    spec = replace(base, kwargs={**base.kwargs, **_noise(which, rng, T, B, H, np.float64)})
    fwd = spec.forward_case(backend, case)
    assert_grads_close(
        spec, spec.backward_case(backend, fwd.cache, case), numerical_grads(spec, backend, case),
        **FD_TOL,
    )  # fmt: skip


def test_rnn_noise_of_no_effect_is_the_plain_cell(rng):
    """An all-ones mask, all-zero zoneout weights and p = 0 compute the plain cell."""
    T, B, H = 5, 3, 6
    spec = SPEC_BY_NAME["rnn_tanh"]
    case = make_case(spec, rng, T, B, 2, H, np.float64, lengths="random")
    plain = spec.forward_case("cython", case)
    g_plain = spec.backward_case("cython", plain.cache, case)
    ones, zeros = np.ones((B, H)), np.zeros((T, B, H))
    for kw in ({"recurrent_mask": ones}, {"zoneout_h": zeros}, {"zoneout_h": 0.0}):
        fwd = spec.forward_case("cython", case, **kw)
        assert_forward_close(spec, fwd, plain, rtol=0, atol=0)
        g = spec.backward_case("cython", fwd.cache, case)
        assert_grads_close(spec, g, g_plain, **TOL[np.float64])


@pytest.mark.parametrize("dtype_", [np.float32, np.float64], ids=["float32", "float64"])
def test_rnn_noise_is_bitwise_equal_on_one_and_two_threads(dtype_, rng):
    """The team splits the units of every pass; the new row passes too (H = 600: 10 blocks)."""
    T, B, H = 6, 8, 600
    spec = SPEC_BY_NAME["rnn_tanh"]
    case = make_case(spec, rng, T, B, 16, H, dtype_, lengths="random")
    kw = _noise("both", rng, T, B, H, dtype_)
    runs = []
    before = fastrnn.get_num_threads()
    try:
        for n in (1, 2):
            fastrnn.set_num_threads(n)
            for training in (False, True):
                fwd = spec.forward_case("cython", case, training=training, **kw)
                runs += [fwd.y, fwd.h_n]
            runs += [a for a in spec.backward_case("cython", fwd.cache, case) if a is not None]
    finally:
        fastrnn.set_num_threads(before)
    half = len(runs) // 2
    for a, b in zip(runs[:half], runs[half:], strict=True):
        np.testing.assert_array_equal(a, b)
