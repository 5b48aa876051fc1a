"""Learning-rate schedulers with ``torch.optim.lr_scheduler`` semantics.

A scheduler writes ``group["lr"]`` of its optimizer's parameter groups. Construction performs the
initial step (epoch 0, the optimizer's learning rates); call :meth:`LRScheduler.step` once per
epoch (or iteration) after ``optimizer.step()``. :class:`StepLR`, :class:`ExponentialLR` and
:class:`CosineAnnealingLR` use PyTorch's recursive ("chainable") formulas, so they compose with
learning rates changed by hand; :class:`ReduceLROnPlateau` steps on a metric.

State dicts hold only ints, floats, strings and lists, so they can go into a checkpoint's
``extra`` entries.
"""

from __future__ import annotations

import copy
import math
import numbers
from collections.abc import Mapping
from typing import Any

from fastrnn.optim.optimizer import Optimizer

__all__ = ["CosineAnnealingLR", "ExponentialLR", "LRScheduler", "ReduceLROnPlateau", "StepLR"]


def _check_optimizer(optimizer: Any) -> Optimizer:
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"optimizer must be a fastrnn Optimizer, got {type(optimizer).__name__}")
    return optimizer


def _check_int(value: Any, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return int(value)


def _check_real(value: Any, name: str, low: float = -math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not value >= low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return value


class LRScheduler:
    """Base class: epoch counter, initial step, ``get_last_lr`` and state dicts.

    Parameters
    ----------
    optimizer : Optimizer
        The optimizer whose ``param_groups[i]["lr"]`` are set.
    last_epoch : int, default=-1
        Index of the last epoch; leave -1 except when resuming (then every group must have an
        ``"initial_lr"``, which a first construction stores).
    """

    def __init__(self, optimizer: Optimizer, last_epoch: int = -1) -> None:
        self.optimizer = _check_optimizer(optimizer)
        last_epoch = _check_int(last_epoch, "last_epoch", -1)
        if last_epoch == -1:
            for group in optimizer.param_groups:
                group.setdefault("initial_lr", group["lr"])
        else:
            for i, group in enumerate(optimizer.param_groups):
                if "initial_lr" not in group:
                    raise ValueError(
                        f"param_groups[{i}] has no 'initial_lr': last_epoch={last_epoch} resumes "
                        "a schedule, which needs the optimizer state of that schedule"
                    )
        self.base_lrs: list[float] = [group["initial_lr"] for group in optimizer.param_groups]
        self.last_epoch = last_epoch
        self._step_count = 0
        self._is_initial = True
        self.step()
        self._is_initial = False

    def get_lr(self) -> list[float]:  # pragma: no cover - abstract
        """The learning rates for the epoch ``last_epoch`` (already incremented)."""
        raise NotImplementedError

    def _current_lrs(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]

    def step(self) -> None:
        """Advance one epoch and write the new learning rates into the optimizer."""
        self._step_count += 1
        self.last_epoch += 1
        for group, lr in zip(self.optimizer.param_groups, self.get_lr(), strict=True):
            group["lr"] = lr
        self._last_lr = self._current_lrs()

    def get_last_lr(self) -> list[float]:
        """Return the learning rates the last :meth:`step` set, one per parameter group."""
        return list(self._last_lr)

    def state_dict(self) -> dict[str, Any]:
        """Return the scheduler's state (every attribute but the optimizer), as plain values."""
        return {k: copy.deepcopy(v) for k, v in vars(self).items() if k != "optimizer"}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore the state from :meth:`state_dict` output.

        Raises
        ------
        ValueError
            If entries are missing or unknown (the state of another scheduler class).
        """
        expected = set(self.state_dict())
        got = set(state_dict)
        if got != expected:
            raise ValueError(
                f"{type(self).__name__}.load_state_dict: missing {sorted(expected - got)}, "
                f"unexpected {sorted(got - expected)}"
            )
        for k, v in state_dict.items():
            setattr(self, k, copy.deepcopy(list(v) if isinstance(v, tuple) else v))


class StepLR(LRScheduler):
    """Multiply the learning rate by ``gamma`` every ``step_size`` epochs.

    ``lr(epoch) = initial_lr * gamma ** (epoch // step_size)``.

    Parameters
    ----------
    optimizer : Optimizer
    step_size : int
        Period of the decay, >= 1.
    gamma : float, default=0.1
        Multiplicative factor, >= 0.
    last_epoch : int, default=-1
    """

    def __init__(
        self, optimizer: Optimizer, step_size: int, gamma: float = 0.1, last_epoch: int = -1
    ) -> None:
        self.step_size = _check_int(step_size, "step_size", 1)
        self.gamma = _check_real(gamma, "gamma", 0.0)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        if self.last_epoch == 0 or self.last_epoch % self.step_size != 0:
            return self._current_lrs()
        return [lr * self.gamma for lr in self._current_lrs()]


class ExponentialLR(LRScheduler):
    """Multiply the learning rate by ``gamma`` every epoch.

    Parameters
    ----------
    optimizer : Optimizer
    gamma : float
        Multiplicative factor, >= 0.
    last_epoch : int, default=-1
    """

    def __init__(self, optimizer: Optimizer, gamma: float, last_epoch: int = -1) -> None:
        self.gamma = _check_real(gamma, "gamma", 0.0)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        if self._is_initial:
            return self._current_lrs()
        return [lr * self.gamma for lr in self._current_lrs()]


class CosineAnnealingLR(LRScheduler):
    r"""Cosine annealing from the initial learning rate to ``eta_min`` over ``T_max`` epochs.

    .. math::
        \eta_t = \eta_{min} + \tfrac12 (\eta_{max} - \eta_{min})
        \left(1 + \cos\left(\tfrac{t}{T_{max}}\pi\right)\right)

    computed, as in PyTorch, by the recursive form that multiplies the current learning rate, so
    after ``T_max`` epochs the rate climbs back up (a period of ``2 T_max``).

    Parameters
    ----------
    optimizer : Optimizer
    T_max : int
        Half-period in epochs, >= 1.
    eta_min : float, default=0.0
        Minimum learning rate.
    last_epoch : int, default=-1
    """

    def __init__(
        self, optimizer: Optimizer, T_max: int, eta_min: float = 0.0, last_epoch: int = -1
    ) -> None:
        self.T_max = _check_int(T_max, "T_max", 1)
        self.eta_min = _check_real(eta_min, "eta_min", 0.0)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        t, t_max, eta_min = self.last_epoch, self.T_max, self.eta_min
        if self._is_initial:
            return self._current_lrs()
        if self._step_count == 1 and t > 0:  # resumed with last_epoch >= 0: closed form
            return [
                eta_min + (base - eta_min) * (1 + math.cos(t * math.pi / t_max)) / 2
                for base in self.base_lrs
            ]
        if (t - 1 - t_max) % (2 * t_max) == 0:  # the trough: the ratio below would be 0/0
            return [
                lr + (base - eta_min) * (1 - math.cos(math.pi / t_max)) / 2
                for base, lr in zip(self.base_lrs, self._current_lrs(), strict=True)
            ]
        ratio = (1 + math.cos(math.pi * t / t_max)) / (1 + math.cos(math.pi * (t - 1) / t_max))
        return [ratio * (lr - eta_min) + eta_min for lr in self._current_lrs()]


class ReduceLROnPlateau(LRScheduler):
    """Reduce the learning rate when a metric has stopped improving.

    Call ``step(metric)`` after each evaluation. After more than ``patience`` epochs without
    improvement, each group's rate becomes ``max(lr * factor, min_lr)`` (changes smaller than
    ``eps`` are skipped), then ``cooldown`` epochs pass before bad epochs are counted again.

    Parameters
    ----------
    optimizer : Optimizer
    mode : {"min", "max"}, default="min"
        Whether the metric should decrease or increase.
    factor : float, default=0.1
        Multiplier of the learning rate, in ``[0, 1)``.
    patience : int, default=10
        Number of epochs without improvement tolerated.
    threshold : float, default=1e-4
        Minimum change counted as an improvement.
    threshold_mode : {"rel", "abs"}, default="rel"
        ``"rel"``: better than ``best * (1 ∓ threshold)``; ``"abs"``: than ``best ∓ threshold``.
    cooldown : int, default=0
        Epochs to wait after a reduction.
    min_lr : float or list of float, default=0
        Lower bound of the learning rate, for all groups or per group.
    eps : float, default=1e-8
        Minimal decay applied to the learning rate.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        mode: str = "min",
        factor: float = 0.1,
        patience: int = 10,
        threshold: float = 1e-4,
        threshold_mode: str = "rel",
        cooldown: int = 0,
        min_lr: float | list[float] = 0.0,
        eps: float = 1e-8,
    ) -> None:
        self.optimizer = _check_optimizer(optimizer)
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        if threshold_mode not in ("rel", "abs"):
            raise ValueError(f"threshold_mode must be 'rel' or 'abs', got {threshold_mode!r}")
        factor = _check_real(factor, "factor", 0.0)
        if not factor < 1.0:
            raise ValueError(f"factor must be < 1.0, got {factor}")
        n_groups = len(optimizer.param_groups)
        if isinstance(min_lr, (list, tuple)):
            if len(min_lr) != n_groups:
                raise ValueError(f"min_lr must have {n_groups} entries, got {len(min_lr)}")
            self.min_lrs = [_check_real(v, "min_lr", 0.0) for v in min_lr]
        else:
            self.min_lrs = [_check_real(min_lr, "min_lr", 0.0)] * n_groups
        self.mode = mode
        self.factor = factor
        self.patience = _check_int(patience, "patience", 0)
        self.threshold = _check_real(threshold, "threshold", 0.0)
        self.threshold_mode = threshold_mode
        self.cooldown = _check_int(cooldown, "cooldown", 0)
        self.eps = _check_real(eps, "eps", 0.0)
        self.last_epoch = 0
        self.best = math.inf if mode == "min" else -math.inf
        self.cooldown_counter = 0
        self.num_bad_epochs = 0
        self._last_lr = self._current_lrs()

    def _is_better(self, a: float, best: float) -> bool:
        if self.mode == "min" and self.threshold_mode == "rel":
            return a < best * (1.0 - self.threshold)
        if self.mode == "min":
            return a < best - self.threshold
        if self.threshold_mode == "rel":
            return a > best * (self.threshold + 1.0)
        return a > best + self.threshold

    def step(self, metrics: float) -> None:  # type: ignore[override]
        """Record one epoch's metric and reduce the learning rates if it has plateaued.

        Parameters
        ----------
        metrics : float
            The monitored quantity (a validation loss, say).
        """
        current = float(metrics)
        self.last_epoch += 1
        if self._is_better(current, self.best):
            self.best = current
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0  # bad epochs in cooldown are ignored
        if self.num_bad_epochs > self.patience:
            if len(self.min_lrs) != len(self.optimizer.param_groups):
                raise RuntimeError(
                    f"ReduceLROnPlateau was built for {len(self.min_lrs)} parameter groups, the "
                    f"optimizer now has {len(self.optimizer.param_groups)}: set min_lrs to match"
                )
            for group, min_lr in zip(self.optimizer.param_groups, self.min_lrs, strict=True):
                old = float(group["lr"])
                new = max(old * self.factor, min_lr)
                if old - new > self.eps:
                    group["lr"] = new
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0
        self._last_lr = self._current_lrs()
