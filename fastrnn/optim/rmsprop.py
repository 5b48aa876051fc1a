"""RMSprop, optionally centered and with momentum."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from fastrnn.optim.optimizer import Optimizer, ParamsT, axpy, check_range

__all__ = ["RMSprop"]


class RMSprop(Optimizer):
    r"""RMSprop, with PyTorch's update rule and defaults.

    With :math:`d_t = \pm g_t + \lambda \theta_{t-1}`:

    .. math::
        v_t = \alpha v_{t-1} + (1 - \alpha) d_t^2, \qquad
        \bar g_t = \alpha \bar g_{t-1} + (1 - \alpha) d_t \ (\text{centered}), \\
        s_t = \sqrt{v_t - \bar g_t^2} + \epsilon \ (\text{centered}) \ \text{or} \
        \sqrt{v_t} + \epsilon, \\
        b_t = \mu b_{t-1} + d_t / s_t, \quad \theta_t = \theta_{t-1} - \gamma b_t
        \quad (\text{or } \theta_{t-1} - \gamma d_t / s_t \text{ without momentum})

    Parameters
    ----------
    params : iterable of Parameter or of dict
        Parameters or parameter groups (see :class:`Optimizer`).
    lr : float, default=1e-2
        Learning rate :math:`\gamma`.
    alpha : float, default=0.99
        Smoothing constant :math:`\alpha`, in ``[0, 1]``.
    eps : float, default=1e-8
        Added to the denominator for stability.
    weight_decay : float, default=0
        L2 penalty :math:`\lambda`.
    momentum : float, default=0
        Momentum factor :math:`\mu`.
    centered : bool, default=False
        Normalise by an estimate of the gradient's variance instead of its second moment.
    maximize : bool, default=False
        Maximize the objective instead of minimizing it.
    """

    _n_work = 2
    _hyper: ClassVar[dict[str, Any]] = {
        "lr": 1e-2,
        "alpha": 0.99,
        "eps": 1e-8,
        "weight_decay": 0.0,
        "momentum": 0.0,
        "centered": False,
        "maximize": False,
    }

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-2,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        momentum: float = 0.0,
        centered: bool = False,
        *,
        maximize: bool = False,
    ) -> None:
        defaults = {
            "lr": lr,
            "alpha": alpha,
            "eps": eps,
            "weight_decay": weight_decay,
            "momentum": momentum,
            "centered": centered,
            "maximize": maximize,
        }
        super().__init__(params, defaults)

    def _validate(self, group: dict[str, Any]) -> None:
        check_range("lr", group["lr"])
        check_range("alpha", group["alpha"], 0.0, 1.0)
        check_range("eps", group["eps"])
        check_range("weight_decay", group["weight_decay"])
        check_range("momentum", group["momentum"])

    def _init_state(self, param: np.ndarray, group: dict[str, Any]) -> dict[str, Any]:
        state: dict[str, Any] = {"step": 0, "square_avg": np.zeros_like(param)}
        if group["momentum"] > 0:
            state["momentum_buffer"] = np.zeros_like(param)
        if group["centered"]:
            state["grad_avg"] = np.zeros_like(param)
        return state

    def _update(self, param, grad, state, group, work):
        lr, alpha, momentum = group["lr"], group["alpha"], group["momentum"]
        d = self._direction(param, grad, group["weight_decay"], group["maximize"], work[0])
        v = state["square_avg"].reshape(-1)
        t = work[1]
        # v <- alpha v + (1 - alpha) d^2
        np.multiply(d, d, out=t)
        t *= 1.0 - alpha
        v *= alpha
        v += t
        if group["centered"]:
            # gbar <- alpha gbar + (1 - alpha) d ;  s = sqrt(v - gbar^2)
            gbar = _buffer(state, "grad_avg", param)
            gbar *= alpha
            axpy(1.0 - alpha, d, gbar, t)
            np.multiply(gbar, gbar, out=t)
            np.subtract(v, t, out=t)
            np.sqrt(t, out=t)
        else:
            np.sqrt(v, out=t)
        t += group["eps"]
        np.divide(d, t, out=t)  # d / s
        if momentum > 0:
            buf = _buffer(state, "momentum_buffer", param)
            buf *= momentum
            buf += t
            axpy(-lr, buf, param, t)
        else:
            axpy(-lr, t, param, t)
        state["step"] += 1


def _buffer(state: dict[str, Any], name: str, param: np.ndarray) -> np.ndarray:
    """Flat view of a state buffer, created as zeros if an option was switched on mid-run."""
    arr = state.get(name)
    if arr is None:
        arr = state[name] = np.zeros_like(param)
    return arr.reshape(-1)
