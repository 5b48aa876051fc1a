"""LSTM: the functional forward against its defining equations, written out here.

Gate order i, f, g, o (PyTorch's ``nn.LSTM``)::

    i, f, g, o = split(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh, 4)
    c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g)
    h_t = sigmoid(o) * tanh(c_t)

Every other property of the plain cell (gradients, lengths, layouts, PyTorch parity) is in
``test_functional.py``; the layer-normalized LSTM's are at the end of this file.
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
