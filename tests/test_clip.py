"""fastrnn/optim/clip.py: clip_grad_norm_ / clip_grad_value_ against torch, non-finite norms."""

import math
import warnings

import numpy as np
import pytest

from fastrnn.nn import Linear, Parameter
from fastrnn.optim import clip_grad_norm_, clip_grad_value_
from fastrnn.optim.clip import clip_grad_norm_ as clip_from_module

SHAPES = [(4, 3), (5,), (2, 3, 2)]


def _params(rng, scale, dtype=np.float64):
    ps = []
    for s in SHAPES:
        p = Parameter(np.zeros(s, dtype))
        p.grad = (scale * rng.standard_normal(s)).astype(dtype)
        ps.append(p)
    return ps


@pytest.mark.parametrize("norm_type", [2.0, 1.0, math.inf, 3.0])
@pytest.mark.parametrize("scale", [0.01, 10.0])  # below and above max_norm
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_clip_grad_norm_matches_torch(norm_type, scale, dtype):
    torch = pytest.importorskip("torch")
    ps = _params(np.random.default_rng(0), scale, dtype)
    ts = []
    for p in ps:
        t = torch.zeros(p.shape, dtype=getattr(torch, np.dtype(dtype).name), requires_grad=True)
        t.grad = torch.tensor(p.grad.copy())
        ts.append(t)
    total = clip_grad_norm_(ps, max_norm=1.5, norm_type=norm_type)
    ttotal = torch.nn.utils.clip_grad_norm_(ts, max_norm=1.5, norm_type=norm_type, foreach=False)
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    assert isinstance(total, float)
    np.testing.assert_allclose(total, float(ttotal), rtol=rtol)
    for p, t in zip(ps, ts, strict=True):
        np.testing.assert_allclose(p.grad, t.grad.numpy(), rtol=rtol, atol=1e-7)
        assert p.grad.dtype == dtype


def test_clip_grad_norm_is_global_and_accepts_one_parameter():
    a, b = Parameter(np.zeros(1)), Parameter(np.zeros(1))
    a.grad, b.grad = np.array([3.0]), np.array([4.0])
    assert clip_grad_norm_([a, b], 1.0) == pytest.approx(5.0)
    np.testing.assert_allclose([a.grad[0], b.grad[0]], [0.6, 0.8], rtol=1e-5)
    c = Parameter(np.zeros(2))
    c.grad = np.array([0.3, 0.4])
    assert clip_grad_norm_(c, 10.0) == pytest.approx(0.5)  # no clipping: grads unchanged
    np.testing.assert_array_equal(c.grad, [0.3, 0.4])
    lin = Linear(3, 2)
    assert clip_grad_norm_(lin.parameters(), 1.0) == 0.0  # generator, and no grads at all
    assert clip_from_module is clip_grad_norm_


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("norm_type", [2.0, 1.0, math.inf])
def test_nonfinite_norm_warns_and_leaves_grads_unscaled(bad, norm_type):
    ps = _params(np.random.default_rng(1), 10.0)
    ps[1].grad[2] = bad
    before = [p.grad.copy() for p in ps]
    with pytest.warns(RuntimeWarning, match="left unscaled"):
        total = clip_grad_norm_(ps, 1.0, norm_type=norm_type)
    assert not math.isfinite(total)
    for p, g in zip(ps, before, strict=True):
        np.testing.assert_array_equal(p.grad, g)  # no NaN introduced, nothing scaled


def test_nonfinite_norm_raises_when_asked():
    ps = _params(np.random.default_rng(2), 1.0)
    ps[0].grad[0, 0] = np.nan
    before = ps[1].grad.copy()
    with pytest.raises(RuntimeError, match="total norm of order 2.0 of the gradients is nan"):
        clip_grad_norm_(ps, 1.0, error_if_nonfinite=True)
    np.testing.assert_array_equal(ps[1].grad, before)


def test_float32_overflowing_square_is_not_called_infinite():
    p = Parameter(np.zeros(2, np.float32))
    p.grad = np.array([3e20, 4e20], np.float32)  # x.x overflows float32, the norm does not
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        total = clip_grad_norm_(p, 1.0)
    assert total == pytest.approx(5e20, rel=1e-6)
    np.testing.assert_allclose(p.grad, [0.6, 0.8], rtol=1e-5)


def test_clip_grad_norm_argument_errors():
    p = Parameter(np.zeros(2))
    p.grad = np.ones(2)
    with pytest.raises(ValueError, match="max_norm must be >= 0"):
        clip_grad_norm_(p, -1.0)
    with pytest.raises(ValueError, match="norm_type must be a positive number or inf"):
        clip_grad_norm_(p, 1.0, norm_type=0)
    with pytest.raises(TypeError, match="max_norm must be a number"):
        clip_grad_norm_(p, "1")
    with pytest.raises(TypeError, match=r"parameters\[0\] must be a Parameter"):
        clip_grad_norm_([np.ones(2)], 1.0)


def test_clip_grad_value_matches_torch():
    torch = pytest.importorskip("torch")
    ps = _params(np.random.default_rng(3), 2.0)
    ps.append(Parameter(np.zeros(2)))  # no grad: ignored
    ts = [torch.tensor(p.grad.copy()) for p in ps[:3]]
    clip_grad_value_(ps, 0.5)
    for t in ts:
        t.clamp_(-0.5, 0.5)
    for p, t in zip(ps, ts, strict=False):
        np.testing.assert_array_equal(p.grad, t.numpy())
    assert ps[3].grad is None
    q = Parameter(np.zeros(3))
    q.grad = np.array([-3.0, 0.1, np.nan])
    clip_grad_value_(q, 1.0)
    np.testing.assert_array_equal(q.grad, [-1.0, 0.1, np.nan])
    with pytest.raises(ValueError, match="clip_value must be >= 0"):
        clip_grad_value_(q, -1.0)
