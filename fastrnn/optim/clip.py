"""Gradient clipping over all parameters at once, as ``torch.nn.utils.clip_grad``."""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Iterable

import numpy as np

from fastrnn.nn.module import Parameter

__all__ = ["clip_grad_norm_", "clip_grad_value_"]


def _grads(parameters: Parameter | Iterable[Parameter]) -> list[np.ndarray]:
    if isinstance(parameters, Parameter):
        parameters = [parameters]
    grads = []
    for i, p in enumerate(parameters):
        if not isinstance(p, Parameter):
            raise TypeError(f"parameters[{i}] must be a Parameter, got {type(p).__name__}")
        if p.grad is not None:
            grads.append(p.grad)
    return grads


def _check_norm_type(norm_type: float) -> float:
    if isinstance(norm_type, bool) or not isinstance(norm_type, numbers.Real):
        raise TypeError(f"norm_type must be a positive number or inf, got {norm_type!r}")
    norm_type = float(norm_type)
    if not norm_type > 0:
        raise ValueError(f"norm_type must be a positive number or inf, got {norm_type!r}")
    return norm_type


def _vector_norm(g: np.ndarray, p: float) -> float:
    """The p-norm of ``g`` seen as one vector, as a Python float (inf and NaN propagate)."""
    x = g.reshape(-1)
    if x.size == 0:
        return 0.0
    if p == math.inf:
        return float(max(x.max(), -x.min()))
    if p == 2.0:
        with np.errstate(over="ignore"):
            n = float(np.sqrt(np.dot(x, x)))
        if math.isinf(n) and np.isfinite(x).all():
            # x.x overflowed (float32 entries above ~1e19): rescale by the largest entry.
            scale = float(max(x.max(), -x.min()))
            y = x.astype(np.float64) / scale
            n = scale * float(np.sqrt(np.dot(y, y)))
        return n
    if p == 1.0:
        return float(np.abs(x).sum(dtype=np.float64))
    return float(np.sum(np.abs(x, dtype=np.float64) ** p) ** (1.0 / p))


def clip_grad_norm_(
    parameters: Parameter | Iterable[Parameter],
    max_norm: float,
    norm_type: float = 2.0,
    error_if_nonfinite: bool = False,
) -> float:
    r"""Scale all gradients together so that their global norm is at most ``max_norm``.

    The norm is taken over all gradients as if concatenated into one vector,
    :math:`\|g\| = \big(\sum_i \|g_i\|_p^p\big)^{1/p}` (the maximum for ``inf``), and every
    gradient is multiplied in place by :math:`\min(1, \text{max\_norm} / (\|g\| + 10^{-6}))`,
    exactly as ``torch.nn.utils.clip_grad_norm_`` does.

    Parameters
    ----------
    parameters : Parameter or iterable of Parameter
        Parameters whose ``grad`` is clipped; those with ``grad is None`` are ignored.
    max_norm : float
        Largest allowed norm, >= 0.
    norm_type : float, default=2.0
        Order :math:`p` of the norm: a positive number or ``math.inf``.
    error_if_nonfinite : bool, default=False
        Raise if the total norm is NaN or infinite. Otherwise a warning is given and the
        gradients are left unscaled (PyTorch would multiply them by NaN or 0).

    Returns
    -------
    float
        The total norm of the gradients before clipping.

    Raises
    ------
    RuntimeError
        If the total norm is not finite and ``error_if_nonfinite`` is true.
    """
    norm_type = _check_norm_type(norm_type)
    if isinstance(max_norm, bool) or not isinstance(max_norm, numbers.Real):
        raise TypeError(f"max_norm must be a number, got {max_norm!r}")
    max_norm = float(max_norm)
    if not max_norm >= 0:
        raise ValueError(f"max_norm must be >= 0, got {max_norm!r}")
    grads = _grads(parameters)
    if not grads:
        return 0.0
    norms = [_vector_norm(g, norm_type) for g in grads]
    if norm_type == math.inf:
        total = max(norms)
        if any(math.isnan(n) for n in norms):
            total = math.nan
    else:
        total = _vector_norm(np.array(norms, dtype=np.float64), norm_type)
    if not math.isfinite(total):
        message = (
            f"The total norm of order {norm_type} of the gradients is {total}, so they cannot "
            "be clipped by it"
        )
        if error_if_nonfinite:
            raise RuntimeError(message + ". Set error_if_nonfinite=False to warn instead.")
        warnings.warn(
            message + "; the gradients were left unscaled. Check the loss and the inputs for "
            "NaN or inf, or pass error_if_nonfinite=True to raise instead.",
            RuntimeWarning,
            stacklevel=2,
        )
        return total
    coef = min(1.0, max_norm / (total + 1e-6))
    if coef < 1.0:
        for g in grads:
            g *= coef
    return total


def clip_grad_value_(parameters: Parameter | Iterable[Parameter], clip_value: float) -> None:
    """Clip every gradient element into ``[-clip_value, clip_value]``, in place.

    Parameters
    ----------
    parameters : Parameter or iterable of Parameter
        Parameters whose ``grad`` is clipped; those with ``grad is None`` are ignored.
    clip_value : float
        Largest allowed magnitude, >= 0.
    """
    if isinstance(clip_value, bool) or not isinstance(clip_value, numbers.Real):
        raise TypeError(f"clip_value must be a number, got {clip_value!r}")
    clip_value = float(clip_value)
    if not clip_value >= 0:
        raise ValueError(f"clip_value must be >= 0, got {clip_value!r}")
    for g in _grads(parameters):
        np.clip(g, -clip_value, clip_value, out=g)
