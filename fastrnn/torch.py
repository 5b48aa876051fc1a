"""fastrnn inside PyTorch models: drop-in ``torch.nn.RNN``, ``LSTM`` and ``GRU`` on its kernels.

:class:`LSTM`, :class:`GRU` and :class:`RNN` subclass ``torch.nn.LSTM``, ``torch.nn.GRU`` and
``torch.nn.RNN`` and change only ``forward``: the constructor, the parameters (names, shapes,
init), ``state_dict`` keys, ``extra_repr`` and ``flatten_parameters`` are torch's own. ``forward``
takes and returns what torch's does (time-major or ``batch_first`` tensors, unbatched 2-D input,
``PackedSequence``, optional initial states) and computes on the CPU with
:func:`fastrnn.stack.stack_forward` / :func:`fastrnn.stack.stack_backward` inside one
``torch.autograd.Function``; tensors are handed to NumPy and back without copies where the memory
can be shared (``tensor.detach().numpy()``, ``torch.from_numpy``).

To speed up an existing model, patch it in place::

    import torch
    import fastrnn.torch

    model = MyModel()                      # holds nn.LSTM / nn.GRU / nn.RNN modules somewhere
    opt = torch.optim.Adam(model.parameters())
    fastrnn.torch.patch(model)             # same modules, same Parameter objects: opt still works
    ...
    fastrnn.torch.unpatch(model)           # back to torch's own implementation
    with fastrnn.torch.patched(model):     # or only for a block
        ...

What runs where:

* fastrnn computes float32 and float64 CPU tensors (input, states and weights of one dtype),
  with or without autograd, in training and eval mode.
* Anything else goes to torch's own implementation, unchanged: CUDA or other devices, float16,
  bfloat16, mixed dtypes, autocast, TorchScript, tracing, ``torch.compile`` and functorch
  transforms (``vmap``, ``grad``). Malformed arguments also go there, so errors are torch's.
* The backward is ``once_differentiable``: double backward (a gradient of a gradient, e.g. a
  gradient penalty) raises ``RuntimeError``; forward-mode AD is not implemented either.
  ``backward(retain_graph=True)`` and several backward passes through one graph work.
* Dropout between layers (training mode, ``num_layers > 1``): inverted dropout as in torch,
  with the same probability and scaling, and the gradient masked by the same mask. The masks
  cannot be bitwise torch's (torch draws them inside its C++ kernels); they are drawn by NumPy
  from a seed taken from torch's default generator, so ``torch.manual_seed`` still makes a run
  reproducible, but a patched and an unpatched model draw different masks.
* Modifying an input, a weight, an initial state or the output in place between the forward
  and the backward raises torch's usual "modified by an inplace operation" error, as torch's own
  modules do: those tensors share memory with what the backward reads.
* Threads: the kernels use fastrnn's threads (:func:`fastrnn.set_num_threads`) and SciPy's
  BLAS threads, not ``torch.set_num_threads``. Import torch before fastrnn: both load an OpenMP
  runtime, and fastrnn sets ``OMP_WAIT_POLICY=PASSIVE`` (unless set) before loading its own.
* Whole-model pickles (``torch.save(model)``) of a patched model refer to these classes; the
  ``state_dict`` is identical to torch's. Call :func:`unpatch` before ``torch.jit.script``.

Importing this module needs torch; ``import fastrnn`` never imports it.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any

try:
    import torch
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "fastrnn.torch needs PyTorch, which is not installed: pip install torch "
        "(or pip install 'fastrnn[torch]'). The rest of fastrnn works without it."
    ) from exc

import numpy as np
from torch.autograd.function import once_differentiable
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

from fastrnn.cells import CELLS
from fastrnn.stack import StackConfig, stack_backward, stack_forward

__all__ = ["GRU", "LSTM", "RNN", "patch", "patched", "unpatch"]

_DTYPES = (torch.float32, torch.float64)
# torch's mode strings ("LSTM", "GRU", "RNN_TANH", "RNN_RELU") -> (cell, its options)
_MODES = {
    cell.torch_mode({**cell.option_defaults(), **options}): (cell, dict(options))
    for cell in CELLS.values()
    for options in cell.variants.values()
}


@functools.lru_cache(maxsize=256)
def _config(
    mode: str,
    input_size: int,
    hidden_size: int,
    num_layers: int,
    bias: bool,
    bidirectional: bool,
    dropout: float,
    proj_size: int,
) -> StackConfig:
    cell, options = _MODES[mode]
    return StackConfig(
        cell,
        input_size,
        hidden_size,
        num_layers,
        bias,
        bidirectional,
        dropout,
        **{**options, "proj_size": proj_size},
    )


def _np(t: torch.Tensor | None) -> np.ndarray | None:
    """A NumPy view of a CPU tensor (no copy), or None."""
    if t is None:
        return None
    return t.detach().resolve_neg().resolve_conj().numpy()


def _keep_graph() -> bool:
    """Whether the running backward was asked to retain the graph (True when unknown)."""
    get = getattr(torch._C._autograd, "_get_current_graph_task_keep_graph", None)
    return True if get is None else bool(get())


class _StackFunction(torch.autograd.Function):
    """``stack_forward`` / ``stack_backward`` as one autograd node.

    ``apply(config, lengths, seed, x, h0, c0, *weights)``: ``x`` time-major (T, B, I), ``h0`` /
    ``c0`` (L*D, B, ...) or None, ``weights`` in ``config.weight_names()`` order; ``lengths`` an
    int64 array (B,) or None; ``seed`` seeds the dropout masks. Returns ``(y, h_n, c_n)`` for
    LSTM, ``(y, h_n)`` otherwise.
    """

    @staticmethod
    def forward(ctx, config, lengths, seed, x, h0, c0, *weights):
        ctx.set_materialize_grads(False)
        generator = None if seed is None else np.random.default_rng(seed)
        arrays = dict(zip(config.weight_names(), (_np(w) for w in weights), strict=True))
        y, h_n, c_n, cache = stack_forward(
            config,
            _np(x),
            _np(h0),
            _np(c0),
            arrays,
            lengths=lengths,
            training=True,
            generator=generator,
        )
        ctx.cache = cache
        ctx.lstm = "c" in config.spec.states
        outputs = (torch.from_numpy(y), torch.from_numpy(h_n))
        if ctx.lstm:
            outputs += (torch.from_numpy(c_n),)
        # Saved only for autograd's version counters: the cache shares memory with these, so an
        # in-place change before the backward must raise, as it does for torch's own modules.
        ctx.save_for_backward(x, h0, c0, outputs[0], *weights)
        return outputs

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, dh_n, dc_n=None):
        ctx.saved_tensors  # noqa: B018 - raises if a saved tensor was modified in place
        cache = ctx.cache
        if cache is None:
            raise RuntimeError(
                "fastrnn.torch: backward through this forward a second time; pass "
                "retain_graph=True to the first backward"
            )
        if not _keep_graph():
            ctx.cache = None  # free the workspace now, as autograd frees saved tensors
        g = stack_backward(cache, _np(dy), _np(dh_n), _np(dc_n) if ctx.lstm else None)
        need = ctx.needs_input_grad

        def grad(a: np.ndarray | None, i: int) -> torch.Tensor | None:
            return torch.from_numpy(a) if a is not None and need[i] else None

        dws = [grad(a, 6 + i) for i, a in enumerate(g.weights.values())]
        return (None, None, None, grad(g.dx, 3), grad(g.dh0, 4), grad(g.dc0, 5), *dws)


class _FastRNNBase:
    """``forward`` on fastrnn's kernels; mixed in before ``torch.nn.RNN/LSTM/GRU``."""

    _torch_class: type[torch.nn.RNNBase]

    def forward(self, input, hx=None):  # noqa: A002 - torch's argument name
        """Torch's ``forward``, computed by fastrnn when it can (see the module docstring)."""
        args = _prepare(self, input, hx)
        if args is None:
            return self._torch_class.forward(self, input, hx)
        return _run(self, input, *args)


def _fallback_reason(tensors: list[torch.Tensor]) -> str | None:
    """Why fastrnn cannot run this call (None: it can)."""
    if torch.jit.is_scripting() or torch.jit.is_tracing():
        return "TorchScript"
    if torch.compiler.is_compiling():
        return "torch.compile"
    if torch._C._are_functorch_transforms_active():
        return "functorch"
    if torch.is_autocast_enabled("cpu"):
        return "autocast"
    dtype = tensors[0].dtype
    if dtype not in _DTYPES:
        return "dtype"
    for t in tensors:
        if not isinstance(t, torch.Tensor) or t.dtype != dtype or t.device.type != "cpu":
            return "device or dtype"
        if t.layout != torch.strided or t.is_quantized or t.numel() == 0:
            return "layout"
    return None


def _prepare(m: Any, input: Any, hx: Any):
    """Torch's argument handling; None when the call is left to torch.

    Returns ``(x, h0, c0, lengths, packed, batched)`` with ``x`` time-major (T, B, I) and the
    states (L*D, B, ...) in the caller's batch order.
    """
    lstm = m.mode == "LSTM"
    packed = isinstance(input, PackedSequence)
    data = input.data if packed else input
    if not isinstance(data, torch.Tensor):
        return None
    if hx is None:
        states: tuple[Any, ...] = (None, None) if lstm else (None,)
    elif lstm:
        if not isinstance(hx, tuple | list) or len(hx) != 2 or hx[0] is None or hx[1] is None:
            return None
        states = tuple(hx)
    else:
        states = (hx,)
    if any(s is not None and not isinstance(s, torch.Tensor) for s in states):
        return None
    m._update_flat_weights()
    given = [s for s in states if s is not None]
    if _fallback_reason([data, *given, *m._flat_weights]) is not None:
        return None
    batched = True
    if packed:
        if any(s.dim() != 3 for s in given):
            return None
        # torch checks the sizes against the packed data; the states stay in the caller's order
        if given:
            m.check_forward_args(data, hx, input.batch_sizes)
        else:
            m.check_input(data, input.batch_sizes)
        x, lengths_t = pad_packed_sequence(input)  # (T, B, I) and lengths, the caller's order
        lengths = lengths_t.numpy()
    else:
        if data.dim() not in (2, 3):
            return None  # torch raises its ValueError
        batched = data.dim() == 3
        if any(s.dim() != (3 if batched else 2) for s in given):
            return None  # torch raises its RuntimeError
        if not batched:
            data = data.unsqueeze(0 if m.batch_first else 1)
            given = [s.unsqueeze(1) for s in given]
            states = tuple(None if s is None else s.unsqueeze(1) for s in states)
        if given:
            m.check_forward_args(data, states if lstm else states[0], None)
        else:
            m.check_input(data, None)
        x = data.transpose(0, 1) if m.batch_first else data
        lengths = None
    h0, c0 = states if lstm else (states[0], None)
    return x, h0, c0, lengths, packed, batched


def _run(m: Any, input: Any, x, h0, c0, lengths, packed: bool, batched: bool):
    """Compute the stack and shape the outputs as torch does."""
    drop = m.training and m.dropout > 0 and m.num_layers > 1
    cfg = _config(
        m.mode,
        m.input_size,
        m.hidden_size,
        m.num_layers,
        m.bias,
        m.bidirectional,
        float(m.dropout) if drop else 0.0,
        m.proj_size,
    )
    seed = int(torch.randint(0, 2**62, (), dtype=torch.int64).item()) if drop else None
    weights = m._flat_weights
    inputs = [x, h0, c0, *weights]
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs):
        outs = _StackFunction.apply(cfg, lengths, seed, x, h0, c0, *weights)
    else:
        names = cfg.weight_names()
        y, h_n, c_n, _ = stack_forward(
            cfg,
            _np(x),
            _np(h0),
            _np(c0),
            dict(zip(names, (_np(w) for w in weights), strict=True)),
            lengths=lengths,
            training=drop,  # dropout needs the training path; nothing else does
            generator=None if seed is None else np.random.default_rng(seed),
        )
        outs = tuple(torch.from_numpy(a) for a in (y, h_n, c_n) if a is not None)
    y, states = outs[0], outs[1:]
    if packed:
        y = PackedSequence(_pack(y, input), input.batch_sizes, *input[2:])
    elif not batched:
        y = y.squeeze(1)
        states = tuple(s.squeeze(1) for s in states)
    elif m.batch_first:
        y = y.transpose(0, 1)
    return y, (states if m.mode == "LSTM" else states[0])


def _pack(y: torch.Tensor, like: PackedSequence) -> torch.Tensor:
    """The packed data of a padded time-major ``y`` (caller's batch order), laid out as ``like``."""
    bs = like.batch_sizes
    B = int(bs[0])
    t_idx, k_idx = (torch.arange(B)[None, :] < bs[:, None]).nonzero(as_tuple=True)
    b_idx = k_idx if like.sorted_indices is None else like.sorted_indices.cpu()[k_idx]
    return y[t_idx, b_idx]


class RNN(_FastRNNBase, torch.nn.RNN):
    """``torch.nn.RNN`` computed by fastrnn's kernels on the CPU (same constructor and forward)."""

    _torch_class = torch.nn.RNN


class LSTM(_FastRNNBase, torch.nn.LSTM):
    """``torch.nn.LSTM`` computed by fastrnn's kernels on the CPU (same constructor and forward)."""

    _torch_class = torch.nn.LSTM


class GRU(_FastRNNBase, torch.nn.GRU):
    """``torch.nn.GRU`` computed by fastrnn's kernels on the CPU (same constructor and forward)."""

    _torch_class = torch.nn.GRU


_FAST = {torch.nn.RNN: RNN, torch.nn.LSTM: LSTM, torch.nn.GRU: GRU}


def _patch(model: torch.nn.Module) -> list[torch.nn.Module]:
    done = []
    for module in model.modules():
        fast = _FAST.get(type(module))
        if fast is not None:
            module.__class__ = fast
            done.append(module)
    return done


def patch(model: torch.nn.Module) -> torch.nn.Module:
    """Make every ``nn.RNN``, ``nn.LSTM`` and ``nn.GRU`` inside ``model`` compute with fastrnn.

    In place: each such module (``model`` itself included) keeps its identity, its Parameter
    objects, buffers and hooks, and only changes class to :class:`RNN`, :class:`LSTM` or
    :class:`GRU`, so an optimizer built before the patch keeps working. Subclasses of torch's
    modules (which may override ``forward``) are left alone.

    Parameters
    ----------
    model : torch.nn.Module

    Returns
    -------
    torch.nn.Module
        ``model``.
    """
    _patch(model)
    return model


def unpatch(model: torch.nn.Module) -> torch.nn.Module:
    """Turn every fastrnn module inside ``model`` back into torch's class, in place.

    Parameters
    ----------
    model : torch.nn.Module

    Returns
    -------
    torch.nn.Module
        ``model``.
    """
    for module in model.modules():
        if isinstance(module, _FastRNNBase):
            module.__class__ = module._torch_class
    return model


@contextlib.contextmanager
def patched(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Context manager: :func:`patch` ``model`` inside the block, restore it after.

    Only the modules this call patched are restored; modules that were fastrnn's before stay so.

    Yields
    ------
    torch.nn.Module
        ``model``.
    """
    done = _patch(model)
    try:
        yield model
    finally:
        for module in done:
            if isinstance(module, _FastRNNBase):
                module.__class__ = module._torch_class
