"""Adagrad."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from fastrnn.optim.optimizer import Optimizer, ParamsT, axpy, check_range

__all__ = ["Adagrad"]


class Adagrad(Optimizer):
    r"""Adagrad, with PyTorch's update rule and defaults.

    With :math:`d_t = \pm g_t + \lambda \theta_{t-1}`:

    .. math::
        s_t = s_{t-1} + d_t^2, \qquad
        \theta_t = \theta_{t-1}
        - \frac{\gamma}{1 + (t - 1)\eta} \, \frac{d_t}{\sqrt{s_t} + \epsilon}

    with :math:`s_0` = ``initial_accumulator_value``.

    Parameters
    ----------
    params : iterable of Parameter or of dict
        Parameters or parameter groups (see :class:`Optimizer`).
    lr : float, default=1e-2
        Learning rate :math:`\gamma`.
    lr_decay : float, default=0
        Learning-rate decay :math:`\eta`.
    weight_decay : float, default=0
        L2 penalty :math:`\lambda`.
    initial_accumulator_value : float, default=0
        Starting value of the sum of squared gradients.
    eps : float, default=1e-10
        Added to the denominator for stability.
    maximize : bool, default=False
        Maximize the objective instead of minimizing it.
    """

    _n_work = 2
    _hyper: ClassVar[dict[str, Any]] = {
        "lr": 1e-2,
        "lr_decay": 0.0,
        "weight_decay": 0.0,
        "initial_accumulator_value": 0.0,
        "eps": 1e-10,
        "maximize": False,
    }

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-2,
        lr_decay: float = 0.0,
        weight_decay: float = 0.0,
        initial_accumulator_value: float = 0.0,
        eps: float = 1e-10,
        *,
        maximize: bool = False,
    ) -> None:
        defaults = {
            "lr": lr,
            "lr_decay": lr_decay,
            "weight_decay": weight_decay,
            "initial_accumulator_value": initial_accumulator_value,
            "eps": eps,
            "maximize": maximize,
        }
        super().__init__(params, defaults)

    def _validate(self, group: dict[str, Any]) -> None:
        check_range("lr", group["lr"])
        check_range("lr_decay", group["lr_decay"])
        check_range("weight_decay", group["weight_decay"])
        check_range("initial_accumulator_value", group["initial_accumulator_value"])
        check_range("eps", group["eps"])

    def _init_state(self, param: np.ndarray, group: dict[str, Any]) -> dict[str, Any]:
        return {"step": 0, "sum": np.full_like(param, group["initial_accumulator_value"])}

    def _update(self, param, grad, state, group, work):
        step = state["step"] = state["step"] + 1
        d = self._direction(param, grad, group["weight_decay"], group["maximize"], work[0])
        s = state["sum"].reshape(-1)
        t = work[1]
        # s <- s + d^2 ;  theta <- theta - lr / (1 + (t - 1) lr_decay) * d / (sqrt(s) + eps)
        np.multiply(d, d, out=t)
        s += t
        np.sqrt(s, out=t)
        t += group["eps"]
        np.divide(d, t, out=t)
        axpy(-group["lr"] / (1.0 + (step - 1) * group["lr_decay"]), t, param, t)
