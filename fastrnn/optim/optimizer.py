"""The optimizer base class: parameter groups, state, workspaces and state dicts.

A subclass supplies its defaults, a ``_validate`` of one parameter group, an ``_init_state`` of
one parameter and an ``_update`` of one parameter. The update works in place on flat views, with
preallocated state buffers and a workspace shared by all parameters of a dtype, so a step
allocates nothing proportional to the parameter sizes.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

import numpy as np

from fastrnn.nn.module import Parameter

__all__ = ["MissingGradientWarning", "Optimizer"]


class MissingGradientWarning(UserWarning):
    """A parameter's training-mode forward ran, but no gradient was written for it before the step.

    The usual cause is a user-written ``backward`` that forgets to call a child's ``backward``:
    the step would then skip that child's parameters (or apply a stale gradient). To silence it
    for a part of the model that is meant to stay fixed, freeze it
    (``module.requires_grad_(False)``), leave its parameters out of the optimizer, or run it in
    ``eval()`` mode. ``warnings.simplefilter("error", MissingGradientWarning)`` makes it an error.
    """


ParamsT = Iterable[Parameter] | Iterable[dict[str, Any]]


def axpy(a: float, x: np.ndarray, y: np.ndarray, tmp: np.ndarray) -> None:
    """y += a * x in place, through the scratch array ``tmp`` (which may be ``x`` itself).

    Two single-threaded NumPy passes and no allocation. (BLAS ``?axpy`` does it in one pass, but
    OpenBLAS threads it, and on a machine whose cores are busy that was 20-40x slower.)
    """
    np.multiply(x, a, out=tmp)
    np.add(y, tmp, out=y)


def _coerce(name: str, value: Any, default: Any) -> Any:
    """Give a hyper-parameter the type of its default (bool, float, or tuple of floats)."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if isinstance(default, bool):
        if not isinstance(value, (bool, np.bool_)):
            raise TypeError(f"{name} must be a bool, got {value!r}")
        return bool(value)
    if isinstance(default, tuple):
        if isinstance(value, np.ndarray):
            value = value.tolist()
        if not isinstance(value, (tuple, list)) or len(value) != len(default):
            raise TypeError(f"{name} must be a tuple of {len(default)} floats, got {value!r}")
        return tuple(_coerce(f"{name}[{i}]", v, 0.0) for i, v in enumerate(value))
    if isinstance(default, numbers.Real):
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
            raise TypeError(f"{name} must be a real number, got {value!r}")
        return float(value)
    return value


def check_range(
    name: str, value: float, low: float = 0.0, high: float = math.inf, high_open: bool = False
) -> None:
    """Raise ValueError naming ``name`` unless ``low <= value <= high`` (``< high`` if open)."""
    ok = low <= value < high if high_open else low <= value <= high
    if not ok or (math.isnan(value)):
        bracket = ")" if high_open else "]"
        raise ValueError(f"{name} must be in [{low}, {high}{bracket}, got {value!r}")


class Optimizer:
    """Base class of the optimizers.

    Parameters
    ----------
    params : iterable of Parameter, or iterable of dict
        The parameters to optimize, or parameter groups: dicts with a ``"params"`` entry and
        hyper-parameters that override the defaults for that group (as in PyTorch).
    defaults : dict
        Hyper-parameter names and default values.

    Attributes
    ----------
    param_groups : list of dict
        Each group's ``"params"`` list and hyper-parameters; schedulers change ``"lr"`` here.
    state : dict
        Per-parameter state (step count and buffers), created on the parameter's first update.
    """

    #: Number of parameter-sized scratch arrays ``_update`` needs.
    _n_work: ClassVar[int] = 0
    #: Hyper-parameter names and PyTorch's defaults; each value's type (bool, float, tuple of
    #: floats) is the type every group's value is given. A name missing here takes the type of
    #: the value passed in ``defaults``.
    _hyper: ClassVar[dict[str, Any]] = {}

    def __init__(self, params: ParamsT, defaults: dict[str, Any]) -> None:
        self.defaults = {k: _coerce(k, v, self._hyper.get(k, v)) for k, v in defaults.items()}
        self.param_groups: list[dict[str, Any]] = []
        self.state: dict[Parameter, dict[str, Any]] = {}
        self._work: dict[np.dtype, np.ndarray] = {}
        if isinstance(params, (Parameter, np.ndarray, dict)):
            raise TypeError(
                "params must be an iterable of Parameters or of parameter-group dicts, got "
                f"{type(params).__name__}"
            )
        groups = list(params)
        if not groups:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for group in groups:
            self.add_param_group(group)

    # -- subclass interface --------------------------------------------------------------------
    def _validate(self, group: dict[str, Any]) -> None:
        """Raise ValueError naming any hyper-parameter of ``group`` that is out of range."""

    def _init_state(self, param: np.ndarray, group: dict[str, Any]) -> dict[str, Any]:
        """Return the state of ``param`` before its first update."""
        return {"step": 0}

    def _update(
        self,
        param: np.ndarray,
        grad: np.ndarray,
        state: dict[str, Any],
        group: dict[str, Any],
        work: list[np.ndarray],
    ) -> None:  # pragma: no cover - abstract
        """Update one parameter in place.

        ``param`` and ``grad`` are flat (1-D) views; state arrays keep the parameter's shape
        (take ``.reshape(-1)`` views); ``work`` holds ``_n_work`` flat scratch arrays.
        """
        raise NotImplementedError

    # -- helpers for subclasses ------------------------------------------------------------------
    @staticmethod
    def _direction(
        param: np.ndarray, grad: np.ndarray, weight_decay: float, maximize: bool, out: np.ndarray
    ) -> np.ndarray:
        """Return ``±grad + weight_decay * param`` (``-`` if maximizing), ``grad`` if neither."""
        if weight_decay != 0:
            np.multiply(param, weight_decay, out=out)
            return (np.subtract if maximize else np.add)(out, grad, out=out)
        if maximize:
            return np.negative(grad, out=out)
        return grad

    # -- public API ----------------------------------------------------------------------------
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group of parameters with its own hyper-parameters (missing ones take defaults).

        Raises
        ------
        TypeError
            If the group is not a dict or holds something other than Parameters.
        ValueError
            If a parameter is repeated or already in another group, or a hyper-parameter is out
            of range.
        """
        if not isinstance(param_group, dict):
            raise TypeError(f"a parameter group must be a dict, got {type(param_group).__name__}")
        if "params" not in param_group:
            raise ValueError("a parameter group must have a 'params' entry")
        params = param_group["params"]
        if isinstance(params, Parameter):
            params = [params]
        elif isinstance(params, (set, frozenset)):
            raise TypeError("a parameter group's params must be an ordered sequence, not a set")
        else:
            params = list(params)
        for i, p in enumerate(params):
            if not isinstance(p, Parameter):
                raise TypeError(f"params[{i}] must be a Parameter, got {type(p).__name__}")
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        for p in params:
            if id(p) in seen:
                raise ValueError(
                    f"{p!r} appears more than once in the optimizer's parameter groups"
                )
            seen.add(id(p))
        group = {"params": params}
        for k, v in param_group.items():
            if k != "params":
                group[k] = v
        for k, v in self.defaults.items():
            group.setdefault(k, v)
        self._check_group(group)
        self.param_groups.append(group)

    def _check_group(self, group: dict[str, Any]) -> None:
        for k, v in self.defaults.items():
            group[k] = _coerce(k, group[k], self._hyper.get(k, v))
        self._validate(group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset the gradients of every parameter to ``None`` (default) or to zeros."""
        for group in self.param_groups:
            for p in group["params"]:
                if set_to_none or p.grad is None:
                    p.grad = None
                else:
                    p.grad.fill(0)

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Update every parameter that has a gradient (those with ``grad is None`` are skipped).

        Before updating, warns (:class:`MissingGradientWarning`) about every parameter, frozen
        ones (``requires_grad=False``) excepted, that a built-in block's training-mode forward
        used since the previous step but that received no gradient since then: a ``backward``
        that forgot a child. Gradient accumulation over several forwards and backwards,
        truncated BPTT, extra training-mode forwards after a backward, eval-mode forwards and
        parameters outside the optimizer never trigger it.

        Parameters
        ----------
        closure : callable, optional
            Re-evaluates the model and returns the loss; called before the update.

        Returns
        -------
        The closure's return value, or None.
        """
        loss = closure() if closure is not None else None
        self._check_gradients_written()
        for group in self.param_groups:
            for p in group["params"]:
                grad = p.grad
                if grad is None:
                    continue
                data = p.data
                if grad.shape != data.shape:
                    raise ValueError(f"{p!r} has a gradient of shape {grad.shape}")
                if not data.flags.c_contiguous or not data.flags.writeable:
                    raise ValueError(f"{p!r}: data must be a writeable C-contiguous array")
                state = self.state.get(p)
                if state is None:
                    state = self.state[p] = self._init_state(data, group)
                self._update(
                    data.reshape(-1), grad.reshape(-1), state, group, self._workspace(data)
                )
                p._bump_version()  # packed copies of it (the layers') are stale now
        return loss

    def _check_gradients_written(self) -> None:
        """Warn about parameters used by a forward but given no gradient; reset the marks."""
        forgotten = []
        for group in self.param_groups:
            for p in group["params"]:
                if p._used_by is not None and not p._grad_written and p.requires_grad:
                    forgotten.append(f"{p._used_by} {p.data.shape}")
                p._used_by = None
                p._grad_written = False
        if forgotten:
            shown = ", ".join(forgotten[:6]) + (", ..." if len(forgotten) > 6 else "")
            warnings.warn(
                f"{len(forgotten)} parameter(s) were used by a training-mode forward since the "
                f"last step but received no gradient: {shown}. Did a backward() forget to call "
                "this block's backward? (If the block is meant to stay fixed: "
                "block.requires_grad_(False), leave it out of the optimizer, or block.eval().)",
                MissingGradientWarning,
                stacklevel=3,
            )

    def _workspace(self, data: np.ndarray) -> list[np.ndarray]:
        """``_n_work`` flat scratch arrays of ``data``'s size, views of one buffer per dtype."""
        n = self._n_work
        if n == 0:
            return []
        size = data.size
        buf = self._work.get(data.dtype)
        if buf is None or buf.size < n * size:
            largest = max(
                (
                    q.data.size
                    for g in self.param_groups
                    for q in g["params"]
                    if q.data.dtype == data.dtype
                ),
                default=size,
            )
            buf = self._work[data.dtype] = np.empty(n * max(largest, size), data.dtype)
        return [buf[i * size : (i + 1) * size] for i in range(n)]

    # -- state dicts -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Return the optimizer's state as plain dicts, lists, numbers and arrays (copies).

        Returns
        -------
        dict
            ``{"state": {index: {name: value}}, "param_groups": [{..., "params": [index]}]}``,
            parameters numbered in group order as in PyTorch.
        """
        index: dict[int, int] = {}
        groups = []
        for group in self.param_groups:
            ids = []
            for p in group["params"]:
                index[id(p)] = len(index)
                ids.append(index[id(p)])
            saved = {k: v for k, v in group.items() if k != "params"}
            saved["params"] = ids
            groups.append(saved)
        state = {
            index[id(p)]: {
                k: v.reshape(p.data.shape).copy() if isinstance(v, np.ndarray) else v
                for k, v in st.items()
            }
            for p, st in self.state.items()
            if id(p) in index
        }
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore hyper-parameters and state from :meth:`state_dict` output.

        Everything is checked before anything changes: on error the optimizer is untouched.

        Raises
        ------
        ValueError
            If the groups, parameter counts, state entries or array shapes do not match this
            optimizer (for instance a state dict of another optimizer class).
        """
        if (
            not isinstance(state_dict, Mapping)
            or "state" not in state_dict
            or "param_groups" not in state_dict
        ):
            raise ValueError("state_dict must be a dict with 'state' and 'param_groups' entries")
        saved_groups = list(state_dict["param_groups"])
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(
                f"state_dict has {len(saved_groups)} parameter groups, the optimizer has "
                f"{len(self.param_groups)}"
            )
        new_groups = []
        by_index: dict[int, tuple[Parameter, dict[str, Any]]] = {}
        for gi, (group, saved) in enumerate(zip(self.param_groups, saved_groups, strict=True)):
            if not isinstance(saved, Mapping) or "params" not in saved:
                raise ValueError(f"parameter group {gi} of state_dict is not a dict with 'params'")
            ids = [_as_index(i, f"param_groups[{gi}]['params']") for i in saved["params"]]
            if len(ids) != len(group["params"]):
                raise ValueError(
                    f"parameter group {gi}: state_dict has {len(ids)} parameters, the optimizer "
                    f"has {len(group['params'])}"
                )
            missing = sorted(k for k in self.defaults if k not in saved)
            if missing:
                raise ValueError(
                    f"parameter group {gi} of state_dict lacks {missing} (is it the state of "
                    f"another optimizer than {type(self).__name__}?)"
                )
            new = {k: v for k, v in saved.items() if k != "params"}
            new["params"] = group["params"]
            try:
                self._check_group(new)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"parameter group {gi} of state_dict: {exc}") from exc
            new_groups.append(new)
            for i, p in zip(ids, group["params"], strict=True):
                by_index[i] = (p, new)

        new_state: dict[Parameter, dict[str, Any]] = {}
        for key, saved in dict(state_dict["state"]).items():
            i = _as_index(key, "state key")
            if i not in by_index:
                raise ValueError(f"state_dict has state for unknown parameter index {i}")
            p, group = by_index[i]
            template = self._init_state(p.data, group)
            if not isinstance(saved, Mapping) or set(saved) != set(template):
                names = sorted(saved) if isinstance(saved, Mapping) else saved
                raise ValueError(
                    f"state of parameter {i} has entries {names}, {type(self).__name__} with "
                    f"these settings expects {sorted(template)}"
                )
            for name, slot in template.items():
                value = saved[name]
                if isinstance(slot, np.ndarray):
                    arr = np.asarray(value)
                    if arr.shape != slot.shape or arr.dtype.kind not in "fiu":
                        raise ValueError(
                            f"state '{name}' of parameter {i} has shape {arr.shape} and dtype "
                            f"{arr.dtype}, expected shape {slot.shape} (real numbers)"
                        )
                    slot[...] = arr  # fresh, C-contiguous, in the parameter's dtype
                else:
                    template[name] = _as_index(value, f"state '{name}' of parameter {i}")
            new_state[p] = template

        for group, new in zip(self.param_groups, new_groups, strict=True):
            group.clear()
            group.update(new)
        self.state = new_state

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            for k in sorted(group):
                if k != "params":
                    lines.append(f"    {k}: {group[k]}")
        return "\n".join(lines) + "\n)"


def _as_index(value: Any, what: str) -> int:
    """A non-negative int from an int, an int-valued 0-d array or a decimal string."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"{what} must be a non-negative int, got {value!r}")
    return int(value)
