"""GRU: the functional forward against its defining equations, written out here.

Gate order r, z, n, with the reset gate applied *after* the hidden matmul (PyTorch's ``nn.GRU``)::

    r = sigmoid(W_ir x + b_ir + W_hr h + b_hr)
    z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
    n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
    h' = (1 - z) * n + z * h

The plain cell's other properties (gradients, lengths, layouts, PyTorch parity) are in
``test_functional.py``; the GRU's options (recurrent dropout, zoneout) are tested here, and the
layer-normalized GRU at the end of this file.
"""

from dataclasses import replace

import numpy as np
import pytest
from conftest import (
    FD_TOL,
    LN_CASES,
    SPEC_BY_NAME,
    TOL,
    assert_close,
    assert_forward_close,
    assert_grads_close,
    check_layer_norm_empty,
    check_layer_norm_finite_differences,
    check_layer_norm_matches_reference,
    check_layer_norm_threads_bitwise,
    make_case,
    make_layer_norm,
    numerical_grads,
)

import fastrnn

SPEC = SPEC_BY_NAME["gru"]


def _sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def _gru_reference(case, reset_after=True):
    h = case.h0.astype(np.float64)
    ys = []
    W_ir, W_iz, W_in = np.split(case.w_ih, 3)
    W_hr, W_hz, W_hn = np.split(case.w_hh, 3)
    b_ir, b_iz, b_in = np.split(case.b_ih, 3)
    b_hr, b_hz, b_hn = np.split(case.b_hh, 3)
    for x in case.x.astype(np.float64):
        r = _sigmoid(x @ W_ir.T + b_ir + h @ W_hr.T + b_hr)
        z = _sigmoid(x @ W_iz.T + b_iz + h @ W_hz.T + b_hz)
        if reset_after:
            n = np.tanh(x @ W_in.T + b_in + r * (h @ W_hn.T + b_hn))
        else:  # Cho et al.'s reset-before variant: not the default (reset_after=False computes it)
            n = np.tanh(x @ W_in.T + b_in + (r * h) @ W_hn.T + b_hn)
        h = (1 - z) * n + z * h
        ys.append(h)
    return np.stack(ys), h


def test_gru_forward_matches_equations(backend, dtype, rng):
    case = make_case(SPEC, rng, 4, 3, 2, 5, dtype)
    fwd = SPEC.forward_case(backend, case)
    y, h = _gru_reference(case)
    assert_close(fwd.y, y, "y", **TOL[dtype])
    assert_close(fwd.h_n, h, "h_n", **TOL[dtype])


def test_gru_reset_gate_is_applied_after_the_hidden_matmul(backend, rng):
    case = make_case(SPEC, rng, 3, 2, 2, 4, np.float64)
    fwd = SPEC.forward_case(backend, case)
    y_before, _ = _gru_reference(case, reset_after=False)
    # The two variants really differ on this case, so matching the first test is meaningful.
    assert not np.allclose(fwd.y, y_before, rtol=1e-6, atol=1e-6)


def test_gru_reset_before_matches_equations(backend, dtype, rng):
    """``reset_after=False`` computes Cho et al.'s variant: ``n = tanh(.. + (r * h) W_hn^T ..)``."""
    case = make_case(SPEC, rng, 4, 3, 2, 5, dtype)
    fwd = SPEC.forward_case(backend, case, reset_after=False)
    y, h = _gru_reference(case, reset_after=False)
    assert_close(fwd.y, y, "y", **TOL[dtype])
    assert_close(fwd.h_n, h, "h_n", **TOL[dtype])


# -------------------------------------------------------------------------------------------------
# recurrent dropout and zoneout of h (reset after): the kernels against fastrnn.reference
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
def test_gru_noise_matches_reference(which, training, T, B, H, lengths, reverse, dtype, rng):
    case = make_case(SPEC, rng, T, B, 3, H, dtype, lengths=lengths)
    kw = {**_noise(which, rng, T, B, H, dtype), "reverse": reverse, "training": training}
    got = SPEC.forward_case("cython", case, **kw)
    want = SPEC.forward_case("numpy", case, **kw)
    assert_forward_close(SPEC, got, want, **TOL[dtype])
    if lengths is not None:  # padded steps output zeros
        steps = np.arange(T)[:, None] >= case.lengths[None, :]
        assert not got.y[steps].any()
    if training:
        g = SPEC.backward_case("cython", got.cache, case)
        assert_grads_close(SPEC, g, SPEC.backward_case("numpy", want.cache, case), **TOL[dtype])


def test_gru_noise_changes_the_result(rng):
    """Each option really acts (so the comparisons above are not of two plain runs)."""
    case = make_case(SPEC, rng, 5, 3, 2, 6, np.float64)
    plain = SPEC.forward_case("cython", case)
    g_plain = SPEC.backward_case("cython", plain.cache, case)
    for which in NOISE:
        fwd = SPEC.forward_case("cython", case, **_noise(which, rng, 5, 3, 6, np.float64))
        g = SPEC.backward_case("cython", fwd.cache, case)
        assert not np.allclose(fwd.y, plain.y), which
        assert not np.allclose(g.dw_hh, g_plain.dw_hh), which


@pytest.mark.parametrize("which", ["recurrent_mask", "zoneout", "both"])
def test_gru_noise_finite_differences(which, rng):
    """float64 central differences through the Cython path, the masks held fixed."""
    T, B, H = 4, 3, 5
    case = make_case(SPEC, rng, T, B, 2, H, np.float64, lengths=np.array([4, 2, 3]))
    spec = replace(SPEC, kwargs=_noise(which, rng, T, B, H, np.float64))
    fwd = spec.forward_case("cython", case)
    assert_grads_close(
        spec, spec.backward_case("cython", fwd.cache, case), numerical_grads(spec, "cython", case),
        **FD_TOL,
    )  # fmt: skip


def test_gru_noise_of_no_effect_is_the_plain_cell(rng):
    """An all-ones mask, all-zero zoneout weights and p = 0 compute the plain cell."""
    T, B, H = 5, 3, 6
    case = make_case(SPEC, rng, T, B, 2, H, np.float64, lengths="random")
    plain = SPEC.forward_case("cython", case)
    g_plain = SPEC.backward_case("cython", plain.cache, case)
    ones, zeros = np.ones((B, H)), np.zeros((T, B, H))
    for kw in ({"recurrent_mask": ones}, {"zoneout_h": zeros}, {"zoneout_h": 0.0}):
        fwd = SPEC.forward_case("cython", case, **kw)
        assert_forward_close(SPEC, fwd, plain, rtol=0, atol=0)
        g = SPEC.backward_case("cython", fwd.cache, case)
        assert_grads_close(SPEC, g, g_plain, **TOL[np.float64])


def test_gru_zoneout_one_keeps_the_initial_state(rng):
    case = make_case(SPEC, rng, 4, 2, 3, 5, np.float64)
    fwd = SPEC.forward_case("cython", case, zoneout_h=np.ones((4, 2, 5)))
    np.testing.assert_array_equal(fwd.y, np.broadcast_to(case.h0, fwd.y.shape))
    g = SPEC.backward_case("cython", fwd.cache, case)
    np.testing.assert_allclose(g.dh0, case.dy.sum(0) + case.dh_n, rtol=1e-14)
    assert not g.dw_ih.any() and not g.dx.any()


@pytest.mark.parametrize("dtype_", [np.float32, np.float64], ids=["float32", "float64"])
def test_gru_noise_is_bitwise_equal_on_one_and_two_threads(dtype_, rng):
    """The team splits the units of every pass; the new row passes too (H = 200: 4 blocks)."""
    T, B, H = 6, 8, 200
    case = make_case(SPEC, rng, T, B, 16, H, dtype_, lengths="random")
    kw = _noise("both", rng, T, B, H, dtype_)
    runs = []
    before = fastrnn.get_num_threads()
    try:
        for n in (1, 2):
            fastrnn.set_num_threads(n)
            for training in (False, True):
                fwd = SPEC.forward_case("cython", case, training=training, **kw)
                runs += [fwd.y, fwd.h_n]
            runs += [a for a in SPEC.backward_case("cython", fwd.cache, case) if a is not None]
    finally:
        fastrnn.set_num_threads(before)
    half = len(runs) // 2
    for a, b in zip(runs[:half], runs[half:], strict=True):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------------------------
# Layer normalization (Ba, Kiros & Hinton 2016): gi = LN(W_ih x) + b_ih, gh = LN(W_hh h) + b_hh,
# then the GRU above. The Cython kernels against the reference (fastrnn.reference.gru_forward
# states the equations) and against finite differences; the cases are conftest's LN_CASES.
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case_id", list(LN_CASES))
def test_gru_layer_norm_matches_reference(case_id, dtype, rng):
    check_layer_norm_matches_reference(SPEC, LN_CASES[case_id], dtype, rng)


@pytest.mark.parametrize("reverse", [False, True])
def test_gru_layer_norm_finite_differences(reverse, rng):
    """Every gradient of the Cython layer-norm GRU, float64 central differences."""
    check_layer_norm_finite_differences(SPEC, reverse, rng)


def test_gru_layer_norm_threads_bitwise(rng):
    """One or two threads (rows and columns shared differently) give the same bits."""
    check_layer_norm_threads_bitwise(SPEC, rng)


def test_gru_layer_norm_empty(rng):
    """T == 0: the initial state passes through and every layer-norm gradient is zero."""
    check_layer_norm_empty(SPEC, rng)


def test_gru_layer_norm_refuses_what_its_kernel_does_not_run(rng):
    """The Cython layer-norm GRU names the operand it cannot combine (the reference can)."""
    case = make_case(SPEC, rng, 3, 2, 2, 4)
    ln = make_layer_norm(SPEC, rng, 4)
    with pytest.raises(ValueError, match="ln_ih .* cannot be combined with zoneout_h"):
        SPEC.forward_case("cython", case, zoneout_h=0.5, **ln)
