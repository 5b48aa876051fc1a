"""Stochastic gradient descent with momentum, dampening, Nesterov and weight decay."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from fastrnn.optim.optimizer import Optimizer, ParamsT, axpy, check_range

__all__ = ["SGD"]


class SGD(Optimizer):
    r"""Stochastic gradient descent, with PyTorch's update rule and defaults.

    With :math:`d_t = \pm g_t + \lambda \theta_{t-1}` (minus when maximizing):

    .. math::
        b_1 = d_1, \quad b_t = \mu b_{t-1} + (1 - \tau) d_t, \qquad
        \theta_t = \theta_{t-1} - \gamma \, (d_t + \mu b_t \text{ if nesterov else } b_t)

    and :math:`\theta_t = \theta_{t-1} - \gamma d_t` without momentum.

    Parameters
    ----------
    params : iterable of Parameter or of dict
        Parameters or parameter groups (see :class:`Optimizer`).
    lr : float, default=1e-3
        Learning rate :math:`\gamma` (PyTorch's default since 2.2).
    momentum : float, default=0
        Momentum factor :math:`\mu`.
    dampening : float, default=0
        Dampening :math:`\tau` of the momentum, in ``[0, 1]``.
    weight_decay : float, default=0
        L2 penalty :math:`\lambda`.
    nesterov : bool, default=False
        Nesterov momentum (needs ``momentum > 0`` and ``dampening = 0``).
    maximize : bool, default=False
        Maximize the objective instead of minimizing it.
    """

    _n_work = 2
    _hyper: ClassVar[dict[str, Any]] = {
        "lr": 1e-3,
        "momentum": 0.0,
        "dampening": 0.0,
        "weight_decay": 0.0,
        "nesterov": False,
        "maximize": False,
    }

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
    ) -> None:
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "dampening": dampening,
            "weight_decay": weight_decay,
            "nesterov": nesterov,
            "maximize": maximize,
        }
        super().__init__(params, defaults)

    def _validate(self, group: dict[str, Any]) -> None:
        check_range("lr", group["lr"])
        check_range("momentum", group["momentum"])
        check_range("dampening", group["dampening"], 0.0, 1.0)
        check_range("weight_decay", group["weight_decay"])
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError("nesterov=True requires momentum > 0 and dampening = 0")

    def _init_state(self, param: np.ndarray, group: dict[str, Any]) -> dict[str, Any]:
        state: dict[str, Any] = {"step": 0}
        if group["momentum"] != 0:
            state["momentum_buffer"] = np.zeros_like(param)
        return state

    def _update(self, param, grad, state, group, work):
        lr, momentum = group["lr"], group["momentum"]
        d = self._direction(param, grad, group["weight_decay"], group["maximize"], work[0])
        tmp = work[1]
        if momentum != 0:
            buf_arr = state.get("momentum_buffer")
            first = state["step"] == 0 or buf_arr is None
            if buf_arr is None:  # momentum switched on after the first steps
                buf_arr = state["momentum_buffer"] = np.zeros_like(param)
            buf = buf_arr.reshape(-1)
            # b <- d on the first step, else b <- mu b + (1 - dampening) d
            if first:
                np.copyto(buf, d)
            else:
                buf *= momentum
                if group["dampening"] == 0:
                    buf += d
                else:
                    axpy(1.0 - group["dampening"], d, buf, tmp)
            if group["nesterov"]:  # theta <- theta - lr (d + mu b)
                np.multiply(buf, momentum, out=tmp)
                tmp += d
                axpy(-lr, tmp, param, tmp)
            else:
                axpy(-lr, buf, param, tmp)
        else:
            axpy(-lr, d, param, tmp)
        state["step"] += 1
