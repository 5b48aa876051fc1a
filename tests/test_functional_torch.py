"""fastrnn/functional.py and reference.py against PyTorch (1 layer, 1 direction), same weights.

Skipped when torch is not installed. Outputs, final states, dx, dh0 (dc0) and every parameter
gradient, in float32 and float64, on both backends; variable lengths against
``pack_padded_sequence(enforce_sorted=False)``.
"""

import numpy as np
import pytest
from conftest import TOL, assert_close, assert_forward_close, assert_grads_close, make_case

torch = pytest.importorskip("torch")
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence  # noqa: E402


def _t(a, requires_grad=False):
    return torch.tensor(np.ascontiguousarray(a), requires_grad=requires_grad)


def torch_run(spec, case, dtype):
    """Forward + backward of ``weighted_loss`` in torch; returns (outputs dict, grads dict)."""
    T, B, D = case.x.shape
    H = case.w_hh.shape[1]
    bias = case.b_ih is not None
    m = spec.torch_module(torch, D, H, bias, dtype)
    params = {"w_ih": m.weight_ih_l0, "w_hh": m.weight_hh_l0}
    if bias:
        params.update(b_ih=m.bias_ih_l0, b_hh=m.bias_hh_l0)
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(_t(getattr(case, name)))

    x = _t(case.x, requires_grad=True)
    h0 = _t(case.h0, requires_grad=True)
    c0 = _t(case.c0, requires_grad=True) if spec.has_c else None
    hx = (h0[None], c0[None]) if spec.has_c else h0[None]
    if case.lengths is None:
        y, state = m(x, hx)
    else:
        packed = pack_padded_sequence(
            x, torch.as_tensor(case.lengths, dtype=torch.int64), enforce_sorted=False
        )
        out, state = m(packed, hx)
        y, _ = pad_packed_sequence(out, total_length=T)
    h_n, c_n = (state[0][0], state[1][0]) if spec.has_c else (state[0], None)

    loss = (y * _t(case.dy)).sum() + (h_n * _t(case.dh_n)).sum()
    if spec.has_c:
        loss = loss + (c_n * _t(case.dc_n)).sum()
    loss.backward()

    outs = {
        "y": y.detach().numpy(),
        "h_n": h_n.detach().numpy(),
        "c_n": None if c_n is None else c_n.detach().numpy(),
    }
    grads = {"dx": x.grad.numpy(), "dh0": h0.grad.numpy(), "db_ih": None, "db_hh": None}
    if spec.has_c:
        grads["dc0"] = c0.grad.numpy()
    for name, p in params.items():
        grads["d" + name] = p.grad.numpy()
    return outs, grads


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("lengths", [None, [2, 5, 3, 5]], ids=["full", "lengths"])
def test_matches_torch(spec, backend, dtype, bias, lengths):
    T, B, D, H = 5, 4, 3, 6
    rng = np.random.default_rng(7)
    case = make_case(
        spec,
        rng,
        T,
        B,
        D,
        H,
        dtype,
        bias=bias,
        lengths=None if lengths is None else np.array(lengths),
    )
    want_out, want_grads = torch_run(spec, case, dtype)

    fwd = spec.forward_case(backend, case)
    tol = TOL[dtype]
    for name in spec.output_names():
        assert_close(getattr(fwd, name), want_out[name], name, **tol)
    grads = spec.backward_case(backend, fwd.cache, case)
    assert_grads_close(spec, grads, want_grads, **tol)


def test_torch_default_init_weights_round_trip(spec, backend):
    """A torch module's own (default-initialized) weights give the same numbers here."""
    D, H, T, B = 3, 5, 4, 2
    torch.manual_seed(0)
    m = spec.torch_module(torch, D, H, True, np.float64)
    x = np.random.default_rng(1).standard_normal((T, B, D))
    with torch.no_grad():
        y_t, state = m(torch.from_numpy(x))
    weights = [
        p.detach().numpy() for p in (m.weight_ih_l0, m.weight_hh_l0, m.bias_ih_l0, m.bias_hh_l0)
    ]
    fwd = spec.forward(backend, x, None, None, *weights, training=False)
    h_t = state[0][0] if spec.has_c else state[0]
    expected = type(fwd)(
        y_t.numpy(), h_t.numpy(), state[1][0].numpy() if spec.has_c else None, None
    )
    assert_forward_close(spec, fwd, expected, **TOL[np.float64])
