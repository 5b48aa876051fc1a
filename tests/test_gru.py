"""GRU: the functional forward against its defining equations, written out here.

Gate order r, z, n, with the reset gate applied *after* the hidden matmul (PyTorch's ``nn.GRU``)::

    r = sigmoid(W_ir x + b_ir + W_hr h + b_hr)
    z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
    n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
    h' = (1 - z) * n + z * h

Every other property of the plain cell (gradients, lengths, layouts, PyTorch parity) is in
``test_functional.py``; the layer-normalized GRU's are at the end of this file.
"""

import numpy as np
import pytest
from conftest import (
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

from fastrnn._isa import available_isas

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
        else:  # the original Cho et al. variant, which fastrnn must NOT compute
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


@pytest.mark.parametrize("isa", available_isas())
def test_gru_layer_norm_threads_bitwise(rng, isa):
    """One or two threads (rows and columns shared differently) give the same bits."""
    check_layer_norm_threads_bitwise(SPEC, rng, isa)


def test_gru_layer_norm_empty(rng):
    """T == 0: the initial state passes through and every layer-norm gradient is zero."""
    check_layer_norm_empty(SPEC, rng)


def test_gru_layer_norm_refuses_what_its_kernel_does_not_run(rng):
    """The Cython layer-norm GRU names the operand it cannot combine (the reference can)."""
    case = make_case(SPEC, rng, 3, 2, 2, 4)
    ln = make_layer_norm(SPEC, rng, 4)
    with pytest.raises(ValueError, match="ln_ih .* cannot be combined with zoneout_h"):
        SPEC.forward_case("cython", case, zoneout_h=0.5, **ln)
