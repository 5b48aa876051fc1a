"""Parameters and the module base class shared by every layer."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

__all__ = ["Module", "Parameter"]


class RemovableHandle:
    """Returned by :meth:`Parameter.register_post_accumulate_grad_hook`; ``remove()`` undoes it."""

    _next_id = 0

    def __init__(self, hooks: dict[int, Any]) -> None:
        self._hooks = hooks
        self.id = RemovableHandle._next_id
        RemovableHandle._next_id += 1

    def remove(self) -> None:
        """Unregister the hook (a no-op the second time)."""
        self._hooks.pop(self.id, None)


class Parameter:
    """A trainable array and the gradient accumulated for it.

    Parameters
    ----------
    data : ndarray
        The value. Stored as a C-contiguous float32 or float64 array, updated in place by
        optimizers.

    Attributes
    ----------
    data : ndarray
        The current value.
    grad : ndarray or None
        The accumulated gradient, same shape and dtype as ``data``; ``None`` until a backward pass
        writes one (or after ``zero_grad(set_to_none=True)``).
    """

    __slots__ = ("_post_accumulate_grad_hooks", "data", "grad")

    def __init__(self, data: np.ndarray) -> None:
        data = np.asarray(data)
        if data.dtype not in (np.float32, np.float64):
            raise TypeError(f"Parameter data must be float32 or float64, got dtype {data.dtype}")
        self.data = np.ascontiguousarray(data)
        self.grad: np.ndarray | None = None
        self._post_accumulate_grad_hooks: dict[int, Callable[[Parameter], None]] | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    def accumulate_grad(self, g: np.ndarray) -> None:
        """Add ``g`` to ``grad`` (allocating it on first use), as autograd frameworks do."""
        if self.grad is None:
            self.grad = np.array(g, dtype=self.data.dtype, copy=True, order="C")
        else:
            self.grad += g
        self._grad_accumulated()

    def register_post_accumulate_grad_hook(
        self, hook: Callable[[Parameter], None]
    ) -> RemovableHandle:
        """Call ``hook(self)`` each time a backward has added a gradient to ``grad``.

        Torch's ``Tensor.register_post_accumulate_grad_hook``: every module of :mod:`fastrnn.nn`
        calls the hooks of a parameter right after adding a gradient to it, during the backward
        (a recurrent layer after each of its layers, from the top one down). This is what
        :class:`fastrnn.distributed.DistributedDataParallel` starts its all-reduces from.

        Parameters
        ----------
        hook : callable
            Called with the parameter; its return value is ignored.

        Returns
        -------
        RemovableHandle
            ``handle.remove()`` unregisters the hook.
        """
        if not callable(hook):
            raise TypeError(f"hook must be callable, got {type(hook).__name__}")
        if self._post_accumulate_grad_hooks is None:
            self._post_accumulate_grad_hooks = {}
        handle = RemovableHandle(self._post_accumulate_grad_hooks)
        self._post_accumulate_grad_hooks[handle.id] = hook
        return handle

    def _grad_accumulated(self) -> None:
        """Run the post-accumulate hooks (called by whoever has just added to ``grad``)."""
        hooks = self._post_accumulate_grad_hooks
        if hooks:
            for hook in list(hooks.values()):
                hook(self)

    def __repr__(self) -> str:
        return f"Parameter(shape={self.data.shape}, dtype={self.data.dtype})"


class Module:
    """Base class: named parameters, sub-modules, train/eval mode and state dicts.

    Sub-classes assign :class:`Parameter` and :class:`Module` instances as attributes; they are
    registered in assignment order, which fixes the order of :meth:`named_parameters` and of
    :meth:`state_dict`.
    """

    def __init__(self) -> None:
        object.__setattr__(self, "_parameters", {})
        object.__setattr__(self, "_modules", {})
        object.__setattr__(self, "training", True)

    def __setattr__(self, name: str, value: Any) -> None:
        params = self.__dict__.get("_parameters")
        if params is None:
            raise AttributeError("Module.__init__() must be called before assigning attributes")
        self._parameters.pop(name, None)
        self._modules.pop(name, None)
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        self._parameters.pop(name, None)
        self._modules.pop(name, None)
        object.__delattr__(self, name)

    # -- traversal ---------------------------------------------------------------------------
    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        """Yield ``(name, module)`` for this module and every sub-module, depth first."""
        yield prefix, self
        for name, mod in self._modules.items():
            yield from mod.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self) -> Iterator[Module]:
        for _, m in self.named_modules():
            yield m

    def children(self) -> Iterator[Module]:
        yield from self._modules.values()

    def named_parameters(
        self, prefix: str = "", remove_duplicate: bool = True
    ) -> Iterator[tuple[str, Parameter]]:
        """Yield ``(name, parameter)`` pairs, PyTorch-style dotted names for sub-modules.

        A parameter shared by several modules (tied weights) is yielded once, under its first
        name, unless ``remove_duplicate=False``; optimizers would otherwise update it twice.
        """
        memo: set[int] | None = set() if remove_duplicate else None
        yield from self._named_parameters(prefix, memo)

    def _named_parameters(
        self, prefix: str, memo: set[int] | None
    ) -> Iterator[tuple[str, Parameter]]:
        for name, p in self._parameters.items():
            if memo is not None:
                if id(p) in memo:
                    continue
                memo.add(id(p))
            yield (f"{prefix}.{name}" if prefix else name), p
        for name, mod in self._modules.items():
            yield from mod._named_parameters(f"{prefix}.{name}" if prefix else name, memo)

    def parameters(self) -> Iterator[Parameter]:
        for _, p in self.named_parameters():
            yield p

    # -- modes and gradients -----------------------------------------------------------------
    def train(self, mode: bool = True) -> Module:
        """Set training mode (forwards keep what backward needs) and return ``self``."""
        for m in self.modules():
            object.__setattr__(m, "training", bool(mode))
        return self

    def eval(self) -> Module:
        """Set inference mode (forwards keep nothing) and return ``self``."""
        return self.train(False)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset every parameter's gradient to ``None`` (default) or to zeros."""
        for p in self.parameters():
            if set_to_none or p.grad is None:
                p.grad = None
            else:
                p.grad.fill(0)

    # -- state dicts ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, np.ndarray]:
        """Return a dict of copies of every parameter, keyed by :meth:`named_parameters` names."""
        return {name: p.data.copy() for name, p in self.named_parameters()}

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True) -> None:
        """Copy values into the parameters.

        Parameters
        ----------
        state_dict : mapping of str to array-like
            Values may be anything ``np.asarray`` accepts, PyTorch tensors included.
        strict : bool, default=True
            Refuse missing and unexpected keys. Mis-shaped values are always refused.

        Raises
        ------
        KeyError
            Listing every missing and unexpected key (with ``strict=True``).
        ValueError
            Listing every entry whose shape differs from the parameter's.
        """
        params = dict(self.named_parameters())
        missing = [k for k in params if k not in state_dict]
        unexpected = [k for k in state_dict if k not in params]
        problems = []
        if strict and missing:
            problems.append(f"missing keys: {missing}")
        if strict and unexpected:
            problems.append(f"unexpected keys: {unexpected}")
        if problems:
            raise KeyError(f"load_state_dict for {type(self).__name__}: " + "; ".join(problems))
        values = {}
        bad = []
        for k, p in params.items():
            if k not in state_dict:
                continue
            v = state_dict[k]
            if hasattr(v, "detach"):  # torch tensors: avoid autograd-tracked conversion
                v = v.detach().cpu().numpy()
            v = np.asarray(v)
            if v.shape != p.data.shape:
                bad.append(f"{k}: expected shape {p.data.shape}, got {v.shape}")
            elif v.dtype.kind not in "fiu":
                bad.append(f"{k}: expected a real numeric array, got dtype {v.dtype}")
            else:
                values[k] = v
        if bad:
            raise ValueError(f"load_state_dict for {type(self).__name__}: " + "; ".join(bad))
        for k, v in values.items():
            params[k].data[...] = v

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.forward(*args, **kwargs)

    def forward(self, *args: Any, **kwargs: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        for name, m in self._modules.items():
            sub = repr(m).replace("\n", "\n  ")
            lines.append(f"  ({name}): {sub}")
        return "\n".join(lines) + ("\n)" if len(lines) > 1 else ")")
