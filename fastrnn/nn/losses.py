"""Loss functions: cross-entropy over logits and mean squared error.

Each loss exists as a functional form that returns ``(loss, dinput)`` in one pass and as a
:class:`~fastrnn.nn.Module` whose ``forward(input, target)`` returns the loss and whose
``backward()`` returns the gradient with respect to ``input``.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from fastrnn.nn._checks import as_float_array, as_index_array, as_real_array, check_reduction
from fastrnn.nn.module import Module

__all__ = ["CrossEntropyLoss", "MSELoss", "cross_entropy", "mse_loss"]

_LossValue = np.floating | np.ndarray


# -- cross-entropy -----------------------------------------------------------------------------
def _check_ignore_index(ignore_index: Any) -> int:
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral):
        raise TypeError(f"ignore_index must be an int, got {ignore_index!r}")
    return int(ignore_index)


def _ce_forward(
    logits: Any, target: Any, ignore_index: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple[int, ...]]:
    """Per-element losses and what the gradient needs.

    Returns ``(losses, probs, tgt, valid, shape)``: ``losses`` of shape (N,) (0 where ignored),
    ``probs`` the (N, C) softmax, ``tgt`` the (N,) targets with ignored ones set to 0, ``valid``
    the (N,) mask of counted elements and ``shape`` the target shape.
    """
    x = as_float_array(logits, "logits")
    if x.ndim == 0:
        raise ValueError("logits must have shape (..., C), got a scalar")
    n_classes = x.shape[-1]
    if n_classes == 0:
        raise ValueError(f"logits must have at least one class on the last axis, got {x.shape}")
    t = as_index_array(target, "target")
    if t.shape != x.shape[:-1]:
        hint = ""
        if x.ndim >= 3 and t.shape == x.shape[:1] + x.shape[2:]:
            hint = (
                " (the class axis is the last one, not the second as in PyTorch: pass "
                "np.moveaxis(logits, 1, -1))"
            )
        raise ValueError(
            f"logits of shape {x.shape} (..., C) need a target of shape logits.shape[:-1] = "
            f"{x.shape[:-1]}, got a target of shape {t.shape}{hint}"
        )
    x2 = x.reshape(-1, n_classes)
    t1 = t.reshape(-1).astype(np.intp, copy=True)
    valid = t1 != ignore_index
    if not valid.all():
        t1[~valid] = 0
    bad = (t1 < 0) | (t1 >= n_classes)
    if bad.any():
        raise ValueError(
            f"target values must be in [0, C={n_classes}) or equal ignore_index={ignore_index}; "
            f"got {t.reshape(-1)[bad][0]}"
        )
    # log softmax_c(x) = (x_c - m) - log sum_k exp(x_k - m), m = max_k x_k: no overflow, and the
    # largest term of the sum is exp(0) = 1, so the log never sees an underflowed 0.
    shifted = x2 - x2.max(axis=1, keepdims=True)
    rows = np.arange(x2.shape[0])
    picked = shifted[rows, t1]
    probs = np.exp(shifted, out=shifted)
    sumexp = probs.sum(axis=1)
    losses = np.log(sumexp) - picked
    losses[~valid] = 0
    probs /= sumexp[:, None]
    return losses, probs, t1, valid, t.shape


def _ce_reduce(losses: np.ndarray, valid: np.ndarray, reduction: str, shape: tuple[int, ...]):
    """Reduce per-element losses and return ``(loss, scale)`` with d loss / d loss_i = scale."""
    dt = losses.dtype
    if reduction == "none":
        return losses.reshape(shape), None
    total = losses.sum(dtype=np.float64)
    if reduction == "sum":
        return dt.type(total), 1.0
    n = int(valid.sum())
    # As PyTorch: a mean over zero counted elements is NaN, and its gradient is zero.
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = dt.type(total / n) if n else dt.type(np.nan)
    return mean, (1.0 / n if n else 0.0)


def _ce_backward(
    probs: np.ndarray,
    t1: np.ndarray,
    valid: np.ndarray,
    scale: float | None,
    dout: Any,
    logits_shape: tuple[int, ...],
    target_shape: tuple[int, ...],
) -> np.ndarray:
    """d loss / d logits = (softmax - onehot(target)) * dloss_i, computed in place in ``probs``."""
    grad = probs
    grad[np.arange(grad.shape[0]), t1] -= 1
    if scale is None:  # reduction="none": dout holds one weight per element
        if dout is None:
            w = valid.astype(grad.dtype)
        else:
            w = as_real_array(dout, "dout", grad.dtype)
            if w.shape != target_shape:
                raise ValueError(f"dout must have the loss's shape {target_shape}, got {w.shape}")
            w = w.reshape(-1) * valid
        grad *= w[:, None]
    else:
        s = scale if dout is None else scale * float(dout)
        grad[~valid] = 0
        grad *= s
    return grad.reshape(logits_shape)


def cross_entropy(
    logits: Any,
    target: Any,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> tuple[_LossValue, np.ndarray]:
    r"""Cross-entropy of integer targets under softmax(logits), and its gradient.

    .. math:: \ell_i = -\log \frac{\exp(x_{i, t_i})}{\sum_c \exp(x_{i, c})}

    Parameters
    ----------
    logits : ndarray of shape (..., C), dtype=float32 or float64
        Unnormalised scores; the class axis is the **last** one (for a sequence model's
        ``(T, B, C)`` output). PyTorch puts it second for inputs of more than two dimensions.
    target : ndarray of int, shape logits.shape[:-1]
        Class indices in ``[0, C)``, or ``ignore_index``.
    ignore_index : int, default=-100
        Target value that contributes neither to the loss nor to the gradient; ``"mean"``
        divides by the number of other targets (NaN if there are none, as in PyTorch).
    reduction : {"mean", "sum", "none"}, default="mean"

    Returns
    -------
    loss : scalar of the logits' dtype, or ndarray of shape target.shape with ``"none"``
    dlogits : ndarray of shape logits.shape
        Gradient of ``loss`` (of ``loss.sum()`` with ``"none"``) with respect to ``logits``.
    """
    reduction = check_reduction(reduction)
    ignore_index = _check_ignore_index(ignore_index)
    losses, probs, t1, valid, tshape = _ce_forward(logits, target, ignore_index)
    loss, scale = _ce_reduce(losses, valid, reduction, tshape)
    shape = (*tshape, probs.shape[1])
    return loss, _ce_backward(probs, t1, valid, scale, None, shape, tshape)


class CrossEntropyLoss(Module):
    """Cross-entropy of integer targets under softmax(logits) (see :func:`cross_entropy`).

    Parameters
    ----------
    ignore_index : int, default=-100
    reduction : {"mean", "sum", "none"}, default="mean"

    Notes
    -----
    Arguments are keyword-only: PyTorch's first positional argument is a class-weight tensor,
    which this class does not take.
    """

    def __init__(self, *, ignore_index: int = -100, reduction: str = "mean") -> None:
        super().__init__()
        self.ignore_index = _check_ignore_index(ignore_index)
        self.reduction = check_reduction(reduction)
        self._cache: tuple | None = None

    def forward(self, logits: Any, target: Any) -> _LossValue:
        """Return the loss of ``logits`` against integer ``target``.

        Parameters
        ----------
        logits : ndarray of shape (..., C), dtype=float32 or float64
            Any leading axes: (B, C) for one prediction per sequence, (T, B, C) or (B, T, C)
            for one per step. The class axis is the **last** one.
        target : ndarray of int, shape logits.shape[:-1]
            (B,) or (T, B) / (B, T) to match. A mismatch raises ValueError naming both shapes.

        Returns
        -------
        loss : scalar of the logits' dtype, or ndarray of shape target.shape with ``"none"``
        """
        losses, probs, t1, valid, tshape = _ce_forward(logits, target, self.ignore_index)
        loss, scale = _ce_reduce(losses, valid, self.reduction, tshape)
        self._cache = (probs, t1, valid, scale, tshape) if self.training else None
        return loss

    def backward(self, dout: Any = None) -> np.ndarray:
        """Return d loss / d logits.

        Parameters
        ----------
        dout : float or ndarray of shape target.shape, optional
            Upstream gradient of the loss: a scalar for ``"mean"``/``"sum"`` (default 1), one
            value per element for ``"none"`` (default ones, i.e. the gradient of ``loss.sum()``).

        Returns
        -------
        dlogits : ndarray of the logits' shape and dtype
        """
        if self._cache is None:
            raise RuntimeError(
                "CrossEntropyLoss.backward() called without a training-mode forward() before it"
            )
        probs, t1, valid, scale, tshape = self._cache
        self._cache = None
        shape = (*tshape, probs.shape[1])
        return _ce_backward(probs, t1, valid, scale, dout, shape, tshape)

    def extra_repr(self) -> str:
        return f"ignore_index={self.ignore_index}, reduction={self.reduction!r}"


# -- mean squared error ------------------------------------------------------------------------
def _mse_forward(input: Any, target: Any) -> np.ndarray:
    x = as_float_array(input, "input")
    t = as_real_array(target, "target", x.dtype)
    if t.shape != x.shape:
        raise ValueError(
            f"target must have the input's shape: input has shape {x.shape}, target {t.shape} "
            "(no broadcasting; reshape one of them)"
        )
    return x - t


def _mse_loss_value(diff: np.ndarray, reduction: str) -> _LossValue:
    sq = np.square(diff)
    if reduction == "none":
        return sq
    total = sq.sum(dtype=np.float64)
    if reduction == "sum":
        return diff.dtype.type(total)
    with np.errstate(invalid="ignore", divide="ignore"):
        return diff.dtype.type(total / diff.size if diff.size else np.nan)


def _mse_backward(diff: np.ndarray, reduction: str, dout: Any) -> np.ndarray:
    """d/dx of (x - t)^2 is 2 (x - t), times 1/N for the mean; computed in place in ``diff``."""
    grad = diff
    if reduction == "none":
        grad *= 2
        if dout is not None:
            w = as_real_array(dout, "dout", grad.dtype)
            if w.shape != grad.shape:
                raise ValueError(f"dout must have the loss's shape {grad.shape}, got {w.shape}")
            grad *= w
        return grad
    s = 2.0 / diff.size if reduction == "mean" and diff.size else 2.0
    grad *= s if dout is None else s * float(dout)
    return grad


def mse_loss(input: Any, target: Any, *, reduction: str = "mean") -> tuple[_LossValue, np.ndarray]:
    r"""Mean squared error :math:`\ell_i = (x_i - t_i)^2` and its gradient.

    Parameters
    ----------
    input : ndarray of any shape, dtype=float32 or float64
    target : array-like of real numbers, same shape as ``input``
        Converted to the input's dtype.
    reduction : {"mean", "sum", "none"}, default="mean"

    Returns
    -------
    loss : scalar of the input's dtype, or ndarray of the input's shape with ``"none"``
    dinput : ndarray of the input's shape and dtype
        Gradient of ``loss`` (of ``loss.sum()`` with ``"none"``) with respect to ``input``.
    """
    reduction = check_reduction(reduction)
    diff = _mse_forward(input, target)
    loss = _mse_loss_value(diff, reduction)
    return loss, _mse_backward(diff, reduction, None)


class MSELoss(Module):
    """Mean squared error (see :func:`mse_loss`).

    Parameters
    ----------
    reduction : {"mean", "sum", "none"}, default="mean"
    """

    def __init__(self, *, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = check_reduction(reduction)
        self._cache: np.ndarray | None = None

    def forward(self, input: Any, target: Any) -> _LossValue:
        """Return the loss of ``input`` against ``target``.

        Parameters
        ----------
        input : ndarray of any shape, dtype=float32 or float64
        target : array-like of real numbers, exactly the shape of ``input``
            No broadcasting: a (B, 1) input against a (B,) target raises ValueError naming
            both shapes.

        Returns
        -------
        loss : scalar of the input's dtype, or ndarray of the input's shape with ``"none"``
        """
        diff = _mse_forward(input, target)
        loss = _mse_loss_value(diff, self.reduction)
        self._cache = diff if self.training else None
        return loss

    def backward(self, dout: Any = None) -> np.ndarray:
        """Return d loss / d input (``dout`` as in :meth:`CrossEntropyLoss.backward`)."""
        if self._cache is None:
            raise RuntimeError(
                "MSELoss.backward() called without a training-mode forward() before it"
            )
        diff = self._cache
        self._cache = None
        return _mse_backward(diff, self.reduction, dout)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"
