"""Adam and AdamW (Adam with decoupled weight decay), with optional AMSGrad."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np

from fastrnn.optim.optimizer import Optimizer, ParamsT, axpy, check_range

__all__ = ["Adam", "AdamW"]


class Adam(Optimizer):
    r"""Adam, with PyTorch's update rule and defaults.

    With :math:`d_t = \pm g_t + \lambda \theta_{t-1}` (the :math:`\lambda` term only without
    decoupled weight decay):

    .. math::
        m_t = \beta_1 m_{t-1} + (1 - \beta_1) d_t, \qquad
        v_t = \beta_2 v_{t-1} + (1 - \beta_2) d_t^2, \\
        \theta_t = \theta_{t-1} - \frac{\gamma}{1 - \beta_1^t} \,
        \frac{m_t}{\sqrt{\hat v_t} / \sqrt{1 - \beta_2^t} + \epsilon}

    where :math:`\hat v_t = v_t`, or :math:`\max(\hat v_{t-1}, v_t)` with AMSGrad. With
    decoupled weight decay, :math:`\theta_{t-1}` is first multiplied by :math:`1 - \gamma\lambda`.

    Parameters
    ----------
    params : iterable of Parameter or of dict
        Parameters or parameter groups (see :class:`Optimizer`).
    lr : float, default=1e-3
        Learning rate :math:`\gamma`.
    betas : tuple of 2 floats, default=(0.9, 0.999)
        Decay rates :math:`\beta_1, \beta_2` of the moment estimates, each in ``[0, 1)``.
    eps : float, default=1e-8
        Added to the denominator for stability.
    weight_decay : float, default=0
        Weight decay :math:`\lambda` (an L2 penalty added to the gradient).
    amsgrad : bool, default=False
        Use the running maximum of :math:`v_t` (AMSGrad).
    maximize : bool, default=False
        Maximize the objective instead of minimizing it.
    decoupled_weight_decay : bool, default=False
        Apply the weight decay to the parameters directly, as :class:`AdamW` does.
    """

    _n_work = 2
    _hyper: ClassVar[dict[str, Any]] = {
        "lr": 1e-3,
        "betas": (0.9, 0.999),
        "eps": 1e-8,
        "weight_decay": 0.0,
        "amsgrad": False,
        "maximize": False,
        "decoupled_weight_decay": False,
    }

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        decoupled_weight_decay: bool = False,
    ) -> None:
        defaults = {
            "lr": lr,
            "betas": betas,
            "eps": eps,
            "weight_decay": weight_decay,
            "amsgrad": amsgrad,
            "maximize": maximize,
            "decoupled_weight_decay": decoupled_weight_decay,
        }
        super().__init__(params, defaults)

    def _validate(self, group: dict[str, Any]) -> None:
        check_range("lr", group["lr"])
        check_range("eps", group["eps"])
        check_range("betas[0]", group["betas"][0], 0.0, 1.0, high_open=True)
        check_range("betas[1]", group["betas"][1], 0.0, 1.0, high_open=True)
        check_range("weight_decay", group["weight_decay"])

    def _init_state(self, param: np.ndarray, group: dict[str, Any]) -> dict[str, Any]:
        state: dict[str, Any] = {
            "step": 0,
            "exp_avg": np.zeros_like(param),
            "exp_avg_sq": np.zeros_like(param),
        }
        if group["amsgrad"]:
            state["max_exp_avg_sq"] = np.zeros_like(param)
        return state

    def _update(self, param, grad, state, group, work):
        lr, (beta1, beta2), wd = group["lr"], group["betas"], group["weight_decay"]
        step = state["step"] = state["step"] + 1
        if group["decoupled_weight_decay"]:
            if wd != 0:
                param *= 1.0 - lr * wd
            d = self._direction(param, grad, 0.0, group["maximize"], work[0])
        else:
            d = self._direction(param, grad, wd, group["maximize"], work[0])
        m = state["exp_avg"].reshape(-1)
        v = state["exp_avg_sq"].reshape(-1)
        t = work[1]
        # m <- beta1 m + (1 - beta1) d ;  v <- beta2 v + (1 - beta2) d^2
        m *= beta1
        axpy(1.0 - beta1, d, m, t)
        np.multiply(d, d, out=t)
        t *= 1.0 - beta2
        v *= beta2
        v += t
        if group["amsgrad"]:
            vmax_arr = state.get("max_exp_avg_sq")
            if vmax_arr is None:  # amsgrad switched on after the first steps
                vmax_arr = state["max_exp_avg_sq"] = np.zeros_like(param)
            v = np.maximum(vmax_arr.reshape(-1), v, out=vmax_arr.reshape(-1))
        # theta <- theta - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
        bias_correction1 = 1.0 - beta1**step
        bias_correction2_sqrt = math.sqrt(1.0 - beta2**step)
        np.sqrt(v, out=t)
        t /= bias_correction2_sqrt
        t += group["eps"]
        np.divide(m, t, out=t)
        axpy(-lr / bias_correction1, t, param, t)


class AdamW(Adam):
    r"""Adam with decoupled weight decay (Loshchilov & Hutter), as ``torch.optim.AdamW``.

    Each step first shrinks the parameters, :math:`\theta \leftarrow (1 - \gamma\lambda)\theta`,
    then applies the Adam update to the gradient alone.

    Parameters
    ----------
    params, lr, betas, eps, amsgrad, maximize
        As for :class:`Adam`.
    weight_decay : float, default=1e-2
        Decoupled weight decay :math:`\lambda`.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
    ) -> None:
        super().__init__(
            params,
            lr,
            betas,
            eps,
            weight_decay,
            amsgrad,
            maximize=maximize,
            decoupled_weight_decay=True,
        )

    def _validate(self, group: dict[str, Any]) -> None:
        super()._validate(group)
        group["decoupled_weight_decay"] = True  # what makes it AdamW, whatever a group says
