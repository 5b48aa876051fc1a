"""Elman RNN: the functional forward against its defining equation, written out here.

h_t = act(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh), act = tanh or relu (PyTorch's ``nn.RNN``).
Every other property (gradients, lengths, layouts, PyTorch parity) is in ``test_functional.py``.
"""

import numpy as np
import pytest
from conftest import SPEC_BY_NAME, TOL, assert_close, make_case

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
