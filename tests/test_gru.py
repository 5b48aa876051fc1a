"""GRU: the functional forward against its defining equations, written out here.

Gate order r, z, n, with the reset gate applied *after* the hidden matmul (PyTorch's ``nn.GRU``)::

    r = sigmoid(W_ir x + b_ir + W_hr h + b_hr)
    z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
    n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
    h' = (1 - z) * n + z * h

Every other property (gradients, lengths, layouts, PyTorch parity) is in ``test_functional.py``.
"""

import numpy as np
from conftest import SPEC_BY_NAME, TOL, assert_close, make_case

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
