"""Parameters and the module base class shared by every layer."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, ClassVar

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
    requires_grad : bool, default=True
        False freezes the parameter: backwards then leave ``grad`` alone (None).

    Attributes
    ----------
    data : ndarray
        The current value. Layers in eval mode keep their weights packed for the kernels
        between calls and re-pack them after ``p.data = new``, an optimizer step,
        ``load_state_dict`` or a checkpoint load; after writing into ``p.data`` in place
        yourself (``p.data[...] = v``, ``p.data *= 2``), call the layer's
        ``flatten_parameters()`` before its next eval-mode call.
    grad : ndarray or None
        The accumulated gradient, same shape and dtype as ``data``; ``None`` until a backward pass
        writes one (or after ``zero_grad(set_to_none=True)``). Write it by assignment
        (``p.grad = g``, ``p.grad += g``) or :meth:`accumulate_grad`: that is how optimizers
        know a gradient was written since the parameter's forward (see :class:`Module`).
    requires_grad : bool
        Whether backwards accumulate a gradient into ``grad``.
    """

    __slots__ = (
        "_data",
        "_grad",
        "_grad_written",
        "_post_accumulate_grad_hooks",
        "_used_by",
        "_version",
        "requires_grad",
    )

    def __init__(self, data: np.ndarray, requires_grad: bool = True) -> None:
        data = np.asarray(data)
        if data.dtype not in (np.float32, np.float64):
            raise TypeError(f"Parameter data must be float32 or float64, got dtype {data.dtype}")
        self._version = 0
        self.data = np.ascontiguousarray(data)
        self.requires_grad = bool(requires_grad)
        self._grad: np.ndarray | None = None
        # Set by a training-mode forward of a built-in block that read this parameter (the
        # block's name), and by any write of a gradient; Optimizer.step compares and clears them.
        self._used_by: str | None = None
        self._grad_written = False
        self._post_accumulate_grad_hooks: dict[int, Callable[[Parameter], None]] | None = None

    @property
    def data(self) -> np.ndarray:
        """The current value."""
        return self._data

    @data.setter
    def data(self, value: np.ndarray) -> None:
        self._data = value
        self._version += 1

    def _bump_version(self) -> None:
        """Say that ``data`` changed in place: layers re-pack their weights before their next
        forward (optimizers, ``load_state_dict`` and checkpoint loads call it)."""
        self._version += 1

    @property
    def grad(self) -> np.ndarray | None:
        return self._grad

    @grad.setter
    def grad(self, value: np.ndarray | None) -> None:
        self._grad = value
        if value is not None:
            self._grad_written = True

    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    def accumulate_grad(self, g: np.ndarray) -> None:
        """Add ``g`` to ``grad`` (allocating it on first use), as autograd frameworks do.

        Does nothing when ``requires_grad`` is False.
        """
        if not self.requires_grad:
            return
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
        frozen = "" if self.requires_grad else ", requires_grad=False"
        return f"Parameter(shape={self.data.shape}, dtype={self.data.dtype}{frozen})"


class Module:
    """Base class of every block and loss, and of your own models.

    fastrnn has no autograd. A model is a Module whose ``forward`` calls its children and whose
    ``backward`` calls their ``backward`` methods in reverse order, giving each the gradient of
    its output and taking back the gradient of its input. The contract:

    * **Registration.** Call ``super().__init__()`` first, then assign each child
      :class:`Module` and each :class:`Parameter` as an attribute: assignment registers it, in
      assignment order, which fixes the names and order of :meth:`named_parameters`,
      :meth:`state_dict` and checkpoints (``"encoder.weight_ih_l0"``, ``"head.bias"``).
      Modules kept in a list or dict are not registered: assign each one, or use
      :class:`~fastrnn.nn.Sequential`. A parameter assigned to two modules (tied weights)
      is listed once.
    * **Forward.** Call children as ``child(x)``, not ``child.forward(x)`` (the call also marks
      the parameters for the check below). In training mode each child keeps what its
      backward needs, for one backward: a block used twice in one forward needs two instances.
    * **Backward.** Call each child's ``backward`` once per forward, in the reverse order of
      the forward, with the gradient of that child's output. Each one adds its parameters'
      gradients to their ``.grad`` (accumulating until ``zero_grad``) and returns the
      gradient of its input: ``Linear``, ``Dropout`` and ``Sequential`` return ``dx``;
      ``RNN``/``GRU`` take ``backward(dout, dh_n=None)`` and return ``(dx, dh0)``; ``LSTM``
      takes ``backward(dout, (dh_n, dc_n))`` and returns ``(dx, (dh0, dc0))`` (``dout`` or a
      state gradient may be None for zeros); ``Embedding`` returns None (integer indices have
      no gradient); losses take an optional ``dout`` scale and return the gradient of their
      first input. Return your own input's gradient (or None).
    * **Modes.** :meth:`train` and :meth:`eval` set ``training`` on the module and every
      descendant. Training: forwards keep their caches and dropout is on. Eval: forwards keep
      nothing (a ``backward`` then raises RuntimeError) and dropout is off.
    * **A forgotten child.** The built-in blocks mark their parameters in a training-mode
      call; writing a gradient clears the mark. ``Optimizer.step`` warns
      (:class:`~fastrnn.optim.MissingGradientWarning`) about parameters still marked: a
      ``backward`` that forgot a child would otherwise leave it untrained without a word. To
      keep part of a model fixed, freeze it with ``requires_grad_(False)``, leave its
      parameters out of the optimizer, or run it in eval mode.

    Examples
    --------
    An LSTM encoder and a linear head that classify whole sequences::

        class Classifier(fastrnn.nn.Module):
            def __init__(self, features, hidden, n_classes):
                super().__init__()
                self.encoder = fastrnn.nn.LSTM(features, hidden)
                self.head = fastrnn.nn.Linear(hidden, n_classes)

            def forward(self, x):                      # x: (T, B, features)
                out, (h_n, c_n) = self.encoder(x)      # h_n: (1, B, hidden)
                return self.head(h_n[0])               # (B, n_classes)

            def backward(self, dlogits):
                dh = self.head.backward(dlogits)       # (B, hidden)
                dx, _ = self.encoder.backward(None, (dh[None], None))
                return dx                              # (T, B, features)

    README.md ("Writing your own model") has the complete program and every block's shapes;
    docs/tutorial.md trains a language model step by step.
    """

    #: Whether a training-mode call marks this module's own parameters as used, so that an
    #: optimizer step can tell a forgotten backward. True for the built-in blocks, whose
    #: backward always writes the gradients; False for user modules (their backward may write
    #: gradients by any means).
    _marks_parameter_use: ClassVar[bool] = False

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

    def requires_grad_(self, requires_grad: bool = True) -> Module:
        """Set ``requires_grad`` of every parameter (False freezes them) and return ``self``."""
        for p in self.parameters():
            p.requires_grad = bool(requires_grad)
        return self

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
            params[k]._bump_version()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        out = self.forward(*args, **kwargs)
        if self.training and self._marks_parameter_use:
            # This forward kept a cache whose backward writes these parameters' gradients;
            # Optimizer.step warns if it was never run (a child forgotten in a backward).
            for name, p in self._parameters.items():
                p._used_by = f"{type(self).__name__}.{name}"
        return out

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
