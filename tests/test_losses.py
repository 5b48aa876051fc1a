"""fastrnn/nn/losses.py: CrossEntropyLoss, MSELoss vs PyTorch, finite differences, errors."""

import numpy as np
import pytest
from conftest import numeric_grad
from hypothesis import given, settings
from hypothesis import strategies as st

from fastrnn.nn import CrossEntropyLoss, MSELoss, cross_entropy, mse_loss

REDUCTIONS = ["mean", "sum", "none"]


def _targets(rng, shape, n_classes, ignore_index=-100):
    t = rng.integers(0, n_classes, shape)
    t.reshape(-1)[::4] = ignore_index
    return t


# -- cross-entropy -----------------------------------------------------------------------------
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(6, 5), (3, 4, 7), (5,)])
def test_cross_entropy_matches_pytorch(reduction, dtype, shape):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    logits = (3 * rng.standard_normal(shape)).astype(dtype)
    target = _targets(rng, shape[:-1], shape[-1])
    if target.ndim == 0:
        target = np.array(2)
    loss, grad = cross_entropy(logits, target, reduction=reduction)

    xt = torch.tensor(logits, requires_grad=True)
    # PyTorch wants the class axis second: flatten (..., C) to (N, C).
    tl = torch.nn.functional.cross_entropy(
        xt.reshape(-1, shape[-1]), torch.from_numpy(target).reshape(-1), reduction=reduction
    )
    tl.sum().backward()
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(
        np.reshape(loss, -1), tl.detach().numpy().reshape(-1), rtol=rtol, atol=rtol
    )
    np.testing.assert_allclose(grad, xt.grad.numpy(), rtol=rtol, atol=rtol)
    assert grad.dtype == dtype and np.asarray(loss).dtype == dtype
    if reduction == "none":
        assert loss.shape == target.shape


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_module_finite_differences(reduction):
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((2, 3, 4))
    target = np.array([[0, 3, 1], [1, -100, 2]])
    weights = rng.standard_normal((2, 3)) if reduction == "none" else 0.7
    crit = CrossEntropyLoss(reduction=reduction)

    def f():
        loss, _ = cross_entropy(logits, target, reduction=reduction)
        return float(np.sum(loss * weights))

    crit(logits, target)
    grad = crit.backward(weights)
    np.testing.assert_allclose(grad, numeric_grad(f, logits), rtol=1e-6, atol=1e-9)
    assert not grad[1, 1].any()  # ignored position
    with pytest.raises(RuntimeError, match="without a training-mode forward"):
        crit.backward()


@settings(max_examples=50, deadline=None)
@given(
    n=st.integers(1, 6),
    c=st.integers(1, 8),
    shift=st.floats(-1e3, 1e3),
    seed=st.integers(0, 2**32 - 1),
)
def test_cross_entropy_properties(n, c, shift, seed):
    """Invariant to a per-row shift of the logits; gradient rows sum to zero; loss >= 0."""
    rng = np.random.default_rng(seed)
    logits = 5 * rng.standard_normal((n, c))
    target = rng.integers(0, c, n)
    loss, grad = cross_entropy(logits, target, reduction="none")
    loss2, grad2 = cross_entropy(logits + shift, target, reduction="none")
    np.testing.assert_allclose(loss2, loss, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(grad2, grad, atol=1e-9)
    np.testing.assert_allclose(grad.sum(axis=1), 0, atol=1e-12)
    assert (loss >= 0).all()


def test_cross_entropy_is_numerically_stable():
    logits = np.array([[1e4, -1e4, 0.0], [-5e3, -5e3, -5e3]], np.float32)
    loss, grad = cross_entropy(logits, np.array([1, 2]), reduction="none")
    np.testing.assert_allclose(loss, [2e4, np.log(3)], rtol=1e-6)
    assert np.isfinite(grad).all()
    loss, _ = cross_entropy(logits, np.array([0, 0]), reduction="sum")
    np.testing.assert_allclose(loss, np.log(3), rtol=1e-6)


def test_cross_entropy_ignore_index_semantics():
    rng = np.random.default_rng(2)
    logits = rng.standard_normal((4, 3))
    target = np.array([0, 5, 5, 2])
    loss, grad = cross_entropy(logits, target, ignore_index=5)
    ref, _ = cross_entropy(logits[[0, 3]], target[[0, 3]])
    np.testing.assert_allclose(loss, ref)  # mean over the counted targets only
    assert not grad[1:3].any()
    # All targets ignored: NaN mean and zero gradient, as in PyTorch.
    loss, grad = cross_entropy(logits, np.full(4, -100))
    assert np.isnan(loss) and not grad.any()
    loss, grad = cross_entropy(logits, np.full(4, -100), reduction="sum")
    assert loss == 0 and not grad.any()


def test_cross_entropy_errors():
    x = np.zeros((3, 4))
    with pytest.raises(ValueError, match=r"target values must be in \[0, C=4\)"):
        cross_entropy(x, np.array([0, 4, 1]))
    with pytest.raises(ValueError, match="target values must be in"):
        cross_entropy(x, np.array([0, -1, 1]))
    with pytest.raises(TypeError, match="target must be an integer array"):
        cross_entropy(x, np.array([0.0, 1.0, 2.0]))
    with pytest.raises(
        ValueError,
        match=r"logits of shape \(3, 4\) .* = \(3,\), got a target of shape \(2,\)$",
    ):
        cross_entropy(x, np.array([0, 1]))
    # PyTorch's (B, C, T) layout against a (B, T) target: the message says where the class axis goes
    with pytest.raises(
        ValueError, match=r"\(2, 4, 5\).*shape \(2, 5\) \(the class axis is the last"
    ):
        cross_entropy(np.zeros((2, 4, 5)), np.zeros((2, 5), int))
    with pytest.raises(TypeError, match="logits must be a float32 or float64 array"):
        cross_entropy(x.astype(np.int64), np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="logits must have at least one class"):
        cross_entropy(np.zeros((3, 0)), np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="reduction must be"):
        CrossEntropyLoss(reduction="avg")
    with pytest.raises(TypeError, match="ignore_index must be an int"):
        CrossEntropyLoss(ignore_index=0.5)
    crit = CrossEntropyLoss(reduction="none")
    crit(x, np.array([0, 1, 2]))
    with pytest.raises(ValueError, match=r"dout must have the loss's shape \(3,\)"):
        crit.backward(np.ones(4))


# -- MSE ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_mse_matches_pytorch(reduction, dtype):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 3, 2)).astype(dtype)
    t = rng.standard_normal((4, 3, 2)).astype(dtype)
    loss, grad = mse_loss(x, t, reduction=reduction)
    xt = torch.tensor(x, requires_grad=True)
    tl = torch.nn.functional.mse_loss(xt, torch.from_numpy(t), reduction=reduction)
    tl.sum().backward()
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(loss, tl.detach().numpy(), rtol=rtol)
    np.testing.assert_allclose(grad, xt.grad.numpy(), rtol=rtol)
    assert grad.dtype == dtype


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_mse_module_finite_differences(reduction):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 4))
    t = rng.standard_normal((3, 4))
    weights = rng.standard_normal((3, 4)) if reduction == "none" else -1.3
    crit = MSELoss(reduction=reduction)

    def f():
        return float(np.sum(mse_loss(x, t, reduction=reduction)[0] * weights))

    crit(x, t)
    np.testing.assert_allclose(crit.backward(weights), numeric_grad(f, x), rtol=1e-6)


def test_mse_errors():
    with pytest.raises(ValueError, match=r"input has shape \(3,\), target \(4,\)"):
        mse_loss(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match=r"input has shape \(5, 1\), target \(5,\) \(no broad"):
        mse_loss(np.zeros((5, 1)), np.zeros(5))
    with pytest.raises(TypeError, match="input must be a float32 or float64 array"):
        mse_loss(np.zeros(3, np.int32), np.zeros(3))
    with pytest.raises(TypeError, match="target must be a real numeric array"):
        mse_loss(np.zeros(3), np.zeros(3, complex))
    with pytest.raises(RuntimeError, match="without a training-mode forward"):
        MSELoss().backward()
    loss, _ = mse_loss(np.zeros(3, np.float32), np.arange(3))  # int target converted
    assert loss.dtype == np.float32 and np.isclose(loss, 5 / 3)
