"""fastrnn inside PyTorch models: drop-in ``torch.nn.RNN``, ``LSTM``, ``GRU`` and their cells.

:class:`LSTM`, :class:`GRU` and :class:`RNN` subclass ``torch.nn.LSTM``, ``torch.nn.GRU`` and
``torch.nn.RNN`` and change only ``forward``: the constructor, the parameters (names, shapes,
init), ``state_dict`` keys, ``extra_repr`` and ``flatten_parameters`` are torch's own. ``forward``
takes and returns what torch's does (time-major or ``batch_first`` tensors, unbatched 2-D input,
``PackedSequence``, optional initial states) and computes on the CPU with
:func:`fastrnn.stack.stack_forward` / :func:`fastrnn.stack.stack_backward` inside one
``torch.autograd.Function``; tensors are handed to NumPy and back without copies where the memory
can be shared (``tensor.detach().numpy()``, ``torch.from_numpy``). :class:`LSTMCell`,
:class:`GRUCell` and :class:`RNNCell` do the same for torch's cells, as a one-step, one-layer
stack.

To speed up an existing model, patch it in place::

    import torch
    import fastrnn.torch

    model = MyModel()                      # holds nn.LSTM / nn.GRU / nn.RNN / cells somewhere
    opt = torch.optim.Adam(model.parameters())
    fastrnn.torch.patch(model)             # same modules, same Parameter objects: opt still works
    fastrnn.torch.fastrnn_modules(model)   # {"encoder.rnn": "LSTM", ...}: what was swapped
    ...
    fastrnn.torch.unpatch(model)           # back to torch's implementation
    with fastrnn.torch.patched(model):     # or only for a block
        ...

What computes what (each mode is compared with torch's modules in ``tests/test_torch_*.py``):

* Forward and first-order backward (``loss.backward()``, ``torch.autograd.grad``, with or
  without ``retain_graph``): fastrnn, for float32 and float64 CPU tensors (input, states and
  weights of one dtype), in training and eval mode, under ``no_grad`` and ``inference_mode``,
  whichever of input, states and weights require grad, with parameter hooks, non-leaf or view
  parameters (``functional_call``), activation checkpointing.
* Second order (``create_graph=True``: gradient penalties, Hessian-vector products,
  ``gradgradcheck``) and batched incoming gradients (``is_grads_batched=True``,
  ``jacobian(..., vectorize=True)``): the forward is fastrnn's; the backward of that node
  recomputes the forward with torch's own differentiable implementation (``torch._VF``, layer by
  layer, with the forward's dropout masks) from the saved inputs and lets autograd
  differentiate it, so the gradient and everything above it are torch's. It costs one more
  forward.
* Forward-mode AD (``torch.autograd.forward_ad``: anything inside a ``dual_level``) and every
  ``torch.func`` transform (``grad``, ``vjp``, ``jvp``, ``jacrev``, ``jacfwd``, ``hessian``,
  ``vmap``): torch's own implementation, unchanged.
* ``torch.compile`` (with ``torch._dynamo.config.allow_rnn = True``, without which Dynamo
  refuses any ``nn.RNNBase``): the forward of :class:`LSTM`, :class:`GRU` and :class:`RNN` is
  traced as calls of fastrnn's custom operators (``fastrnn::stack_v1`` and its backward, see
  :mod:`fastrnn._torch_ops`), so the graph has no break and runs the same kernels; cells
  compile as torch's.
* Torch's own implementation also runs for CUDA or other devices, float16, bfloat16, mixed
  dtypes, autocast, TorchScript, tracing, tensor subclasses, active ``TorchFunctionMode`` /
  ``TorchDispatchMode`` (``FlopCounterMode``, fake tensors), and malformed arguments (so
  errors are torch's).
* Dropout between layers (training mode, ``num_layers > 1``): inverted dropout as in torch,
  with the same probability and scaling, and the gradient masked by the same mask. The masks
  cannot be bitwise torch's (torch draws them inside its C++ kernels); they are drawn by NumPy
  from a seed taken from torch's default generator, so ``torch.manual_seed`` still makes a run
  reproducible, but a patched and an unpatched model draw different masks.
* Modifying an input, a weight, an initial state or the output in place between the forward
  and the backward raises torch's usual "modified by an inplace operation" error, as torch's own
  modules do: those tensors share memory with what the backward reads.
* Threads: the kernels use fastrnn's threads (:func:`fastrnn.set_num_threads`) and SciPy's
  BLAS threads, not ``torch.set_num_threads``. Both use one OpenMP runtime in a process
  (``libgomp.so.1``, whichever loads it first); fastrnn leaves ``OMP_WAIT_POLICY`` as it is.
* Saving: a patched module pickles as the torch module it replaces, so ``torch.save(model)``
  writes the very file the unpatched model would, which loads with plain torch (no fastrnn
  needed) as torch's modules; :func:`load` loads it patched again. The ``state_dict`` is
  torch's. Call :func:`unpatch` before ``torch.jit.script``.

Importing this module needs torch; ``import fastrnn`` never imports it.
"""

from __future__ import annotations

import contextlib
import copy
import copyreg
import functools
import logging
import threading
import warnings
import weakref
from collections.abc import Iterator, Sequence
from typing import Any

try:
    import torch
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "fastrnn.torch needs PyTorch, which is not installed: pip install torch "
        "(or pip install 'fastrnn[torch]'). The rest of fastrnn works without it."
    ) from exc

import numpy as np
from torch import _VF
from torch.autograd import forward_ad
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence
from torch.utils._python_dispatch import _get_current_dispatch_mode

from fastrnn import cells as _cells
from fastrnn.cells import CELLS, Cell
from fastrnn.stack import StackConfig, stack_backward, stack_forward

__all__ = [
    "GRU",
    "LSTM",
    "RNN",
    "GRUCell",
    "LSTMCell",
    "RNNCell",
    "clear_packed",
    "fastrnn_modules",
    "load",
    "patch",
    "patched",
    "unpatch",
]

_log = logging.getLogger(__name__)

_DTYPES = (torch.float32, torch.float64)
_PLAIN = (torch.Tensor, torch.nn.Parameter)
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


_BATCHED = tuple(
    getattr(torch._C._functorch, name, lambda t: False)
    for name in ("is_batchedtensor", "is_legacy_batchedtensor")
)


def _plain(t: torch.Tensor) -> bool:
    """Whether ``t`` is an ordinary tensor (not a subclass, not batched by vmap)."""
    return type(t) in _PLAIN and not any(batched(t) for batched in _BATCHED)


def _np(t: torch.Tensor | None) -> np.ndarray | None:
    """A NumPy view of a CPU tensor (no copy), or None."""
    if t is None:
        return None
    return t.detach().resolve_neg().resolve_conj().numpy()


def _keep_graph() -> bool:
    """Whether the running backward was asked to retain the graph (True when unknown)."""
    get = getattr(torch._C._autograd, "_get_current_graph_task_keep_graph", None)
    return True if get is None else bool(get())


def _stack_forward(
    config: StackConfig,
    x,
    h0,
    c0,
    weights: Sequence[torch.Tensor],
    lengths,
    seed,
    training: bool,
    packs=None,
):
    """:func:`stack_forward` of arrays ``x``, ``h0``, ``c0`` and the tensors ``weights`` (in
    ``config.weight_names()`` order), dropout masks seeded by ``seed`` (None: unseeded)."""
    return stack_forward(
        config,
        x,
        h0,
        c0,
        dict(zip(config.weight_names(), (_np(w) for w in weights), strict=True)),
        lengths=lengths,
        training=training,
        generator=None if seed is None else np.random.default_rng(seed),
        packs=packs,
    )


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
        y, h_n, c_n, cache = _stack_forward(
            config, _np(x), _np(h0), _np(c0), weights, lengths, seed, training=True
        )
        ctx.cache = cache
        ctx.config = config
        ctx.lengths = lengths
        ctx.lstm = "c" in config.spec.states
        outputs = (torch.from_numpy(y), torch.from_numpy(h_n))
        if ctx.lstm:
            outputs += (torch.from_numpy(c_n),)
        # Saved only for autograd's version counters: the cache shares memory with these, so an
        # in-place change before the backward must raise, as it does for torch's own modules.
        ctx.save_for_backward(x, h0, c0, outputs[0], *weights)
        return outputs

    @staticmethod
    def backward(ctx, dy, dh_n, dc_n=None):
        saved = ctx.saved_tensors  # raises if a saved tensor was modified in place
        cache = ctx.cache
        if cache is None:
            raise RuntimeError(
                "fastrnn.torch: backward through this forward a second time; pass "
                "retain_graph=True to the first backward"
            )
        if not _keep_graph():
            ctx.cache = None  # free the workspace now, as autograd frees saved tensors
        need = ctx.needs_input_grad
        grads = (dy, dh_n, dc_n) if ctx.lstm else (dy, dh_n)
        graph = torch.is_grad_enabled()
        if graph or not all(g is None or _plain(g) for g in grads):
            # create_graph=True: the gradient must itself be differentiable (a gradient
            # penalty, a Hessian-vector product); or the incoming gradients are batched
            # (is_grads_batched=True, jacobian(vectorize=True), vmap). Recompute this node with
            # torch's own differentiable implementation, the same dropout masks applied, and
            # let autograd differentiate it: torch's numbers, to any order.
            dxs = _torch_vjp(ctx.config, ctx.lengths, cache, saved, grads, need, graph)
            return (None, None, None, *dxs)
        g = stack_backward(cache, _np(dy), _np(dh_n), _np(dc_n) if ctx.lstm else None)

        def grad(a: np.ndarray | None, i: int) -> torch.Tensor | None:
            return torch.from_numpy(a) if a is not None and need[i] else None

        dws = [grad(a, 6 + i) for i, a in enumerate(g.weights.values())]
        return (None, None, None, grad(g.dx, 3), grad(g.dh0, 4), grad(g.dc0, 5), *dws)


def _torch_stack(config: StackConfig, lengths, masks, x, h0, c0, weights):
    """The stack of ``config`` computed by torch's own (differentiable) kernels, layer by layer.

    Time-major ``x`` (T, B, I); ``lengths`` (B,) or None (padded steps give zeros, as fastrnn's);
    ``masks[layer]``: the scaled dropout mask fastrnn applied to that layer's output, or None.
    Returns ``(y, h_n, c_n)`` (``c_n`` None but for LSTM).
    """
    lstm = "c" in config.spec.states
    # torch's functions are named after the mode: _VF.lstm, _VF.gru, _VF.rnn_tanh, _VF.rnn_relu
    fn = getattr(_VF, config.spec.torch_mode(config.options).lower())
    L, D = config.num_layers, config.num_directions
    T, B = x.shape[:2]
    per_layer = len(weights) // L
    shapes = config.state_shapes(B)
    if h0 is None:
        h0 = x.new_zeros(shapes["h"])
    if lstm and c0 is None:
        c0 = x.new_zeros(shapes["c"])
    packing = None
    if lengths is not None:  # torch's packed path: the batch sorted by length, states permuted
        lengths_t = torch.as_tensor(lengths, dtype=torch.int64)
        packing = pack_padded_sequence(x, lengths_t, enforce_sorted=False)
    hs, cs = [], []
    inp = x
    for layer in range(L):
        w = list(weights[layer * per_layer : (layer + 1) * per_layer])
        rows = slice(layer * D, (layer + 1) * D)
        hx = (h0[rows], c0[rows]) if lstm else h0[rows]
        if packing is None:
            out = fn(inp, hx, w, config.bias, 1, 0.0, True, config.bidirectional, False)
        else:
            order = packing.sorted_indices
            data = pack_padded_sequence(inp, lengths_t, enforce_sorted=False).data
            hx = tuple(h.index_select(1, order) for h in hx) if lstm else hx.index_select(1, order)
            out = fn(
                data, packing.batch_sizes, hx, w, config.bias, 1, 0.0, True, config.bidirectional
            )
            back = packing.unsorted_indices
            y_packed = PackedSequence(out[0], packing.batch_sizes, order, back)
            y_pad, _ = pad_packed_sequence(y_packed, total_length=T)
            out = (y_pad, *(h.index_select(1, back) for h in out[1:]))
        inp = out[0]
        hs.append(out[1])
        if lstm:
            cs.append(out[2])
        if layer < L - 1 and masks[layer] is not None:
            inp = inp * torch.from_numpy(masks[layer])
    return inp, torch.cat(hs), torch.cat(cs) if lstm else None


def _torch_vjp(config, lengths, cache, saved, grads, need, graph: bool):
    """Gradients of ``(x, h0, c0, *weights)`` (those in ``need[3:]``) by torch's implementation,
    with a graph when ``graph`` (the backward runs under create_graph=True)."""
    x, h0, c0, _, *weights = saved
    inputs = [x, h0, c0, *weights]
    wrt = [i for i, t in enumerate(inputs) if t is not None and need[3 + i]]
    with torch.enable_grad():
        outs = _torch_stack(config, lengths, cache.masks, x, h0, c0, weights)
        pairs = [(o, g) for o, g in zip(outs[: len(grads)], grads, strict=True) if g is not None]
        got = torch.autograd.grad(
            [o for o, _ in pairs],
            [inputs[i] for i in wrt],
            [g for _, g in pairs],
            create_graph=graph,
            allow_unused=True,
        )
    result: list[torch.Tensor | None] = [None] * len(inputs)
    for i, g in zip(wrt, got, strict=True):
        result[i] = g
    return result


# ids of the modules this thread is pickling (see _Swapped.__reduce_ex__)
_PICKLING = threading.local()
_SET_CLASS = object.__dict__["__class__"].__set__


def _pickling() -> set[int]:
    ids = getattr(_PICKLING, "ids", None)
    if ids is None:
        ids = _PICKLING.ids = set()
    return ids


class _Swapped:
    """What every fastrnn module shares: it pickles as the torch module it replaces.

    ``torch.save(model)`` of a patched model names torch's class (``torch.nn.LSTM``, ...), so the
    file loads with plain torch, without fastrnn, as the torch model it was (:func:`load` loads it
    patched again). ``copy.deepcopy`` and ``copy.copy`` keep the fastrnn class.
    """

    _torch_class: type[torch.nn.Module]

    def __reduce_ex__(self, protocol):
        rv = super().__reduce_ex__(protocol)
        # object.__reduce_ex__ gives (constructor, (cls, ...), state): name torch's class instead
        if isinstance(rv, tuple) and len(rv) > 1 and isinstance(rv[1], tuple):
            args = tuple(self._torch_class if a is type(self) else a for a in rv[1])
            rv = (rv[0], args, *rv[2:])
            if rv[0] is copyreg.__newobj__:
                # the pickler then checks args[0] against obj.__class__, read once: answer
                # torch's class to that one read
                _pickling().add(id(self))
        return rv

    @property
    def __class__(self):
        ids = _pickling()
        if id(self) in ids:
            ids.discard(id(self))
            return self._torch_class
        return type(self)

    @__class__.setter
    def __class__(self, cls):  # module.__class__ = torch's class, as unpatch() does
        _SET_CLASS(self, cls)

    def __deepcopy__(self, memo):
        # what copy.deepcopy does with object.__reduce_ex__, keeping this class
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        new.__setstate__(copy.deepcopy(self.__getstate__(), memo))
        return new

    def __copy__(self):
        new = type(self).__new__(type(self))
        new.__setstate__(self.__getstate__())
        return new


class _FastRNNBase(_Swapped):
    """``forward`` on fastrnn's kernels; mixed in before ``torch.nn.RNN/LSTM/GRU``."""

    _torch_class: type[torch.nn.RNNBase]

    def forward(self, input, hx=None):  # noqa: A002 - torch's argument name
        """Torch's ``forward``, computed by fastrnn when it can (see the module docstring)."""
        if torch.compiler.is_compiling() and _torch_ops.SUPPORTED:
            out = _torch_ops.rnn_forward(self, input, hx)  # traced: custom operators
            return self._torch_class.forward(self, input, hx) if out is None else out
        args = _prepare(self, input, hx)
        if args is None:
            return self._torch_class.forward(self, input, hx)
        return _run(self, input, *args)


class _FastCellBase(_Swapped):
    """``forward`` of ``torch.nn.RNNCell/LSTMCell/GRUCell`` as a one-step, one-layer stack."""

    _torch_class: type[torch.nn.RNNCellBase]
    _cell: Cell  # the registry's entry of the cell

    def forward(self, input, hx=None):  # noqa: A002 - torch's argument name
        """Torch's ``forward``, computed by fastrnn when it can (see the module docstring)."""
        args = _prepare_cell(self, input, hx)
        if args is None:
            return self._torch_class.forward(self, input, hx)
        x, h0, c0, weights, batched = args
        mode = self._cell.torch_mode(_cell_options(self))
        cfg = _config(mode, self.input_size, self.hidden_size, 1, self.bias, False, 0.0, 0)
        _, *states = _compute(cfg, None, None, False, x, h0, c0, weights)
        states = [s[0] if batched else s[0, 0] for s in states]
        return tuple(states) if len(states) > 1 else states[0]


def _fallback_reason(tensors: list[torch.Tensor]) -> str | None:
    """Why fastrnn cannot run this call (None: it can)."""
    if torch.jit.is_scripting() or torch.jit.is_tracing():
        return "TorchScript"
    if torch.compiler.is_compiling():
        return "torch.compile"
    if torch._C._are_functorch_transforms_active():
        return "functorch"
    if getattr(forward_ad, "_current_level", 0) >= 0:
        return "forward-mode AD"  # inside forward_ad.dual_level(): dual tensors may come in
    if torch._C._is_torch_function_mode_enabled() or _get_current_dispatch_mode() is not None:
        return "torch function or dispatch mode"  # e.g. FlopCounterMode, FakeTensorMode
    if torch.is_autocast_enabled("cpu"):
        return "autocast"
    dtype = tensors[0].dtype
    if dtype not in _DTYPES:
        return "dtype"
    for t in tensors:
        if type(t) not in _PLAIN:
            return "tensor subclass"  # its __torch_function__ must see torch's ops
        if t.dtype != dtype or t.device.type != "cpu":
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


def _cell_options(m: Any) -> dict[str, Any]:
    """The registry options that torch's cell ``m`` has (torch's cells keep them, such as
    ``RNNCell.nonlinearity``, as plain instance attributes): read from the instance's dict,
    without the ``AttributeError`` that ``hasattr`` raises and catches inside
    ``Module.__getattr__`` for each option it lacks (5 us per call for an LSTMCell)."""
    attrs = vars(m)
    return {o.name: attrs[o.name] for o in m._cell.options if o.name in attrs}


def _prepare_cell(m: Any, input: Any, hx: Any):
    """A cell's arguments as a one-step stack's; None when the call is left to torch.

    Returns ``(x, h0, c0, weights, batched)``: ``x`` (1, B, I), states (1, B, H) or None.
    Anything torch would refuse (wrong ranks or sizes) goes to torch, which raises its error.
    """
    lstm = "c" in m._cell.states
    if not isinstance(input, torch.Tensor) or input.dim() not in (1, 2):
        return None
    options = _cell_options(m)  # those torch's cell has
    for option in m._cell.options:  # a value fastrnn refuses: torch raises its own error
        if option.name not in options:
            continue
        try:
            option.check(options[option.name], option.name)
        except (TypeError, ValueError):
            return None
    if hx is None:
        states: tuple[Any, ...] = (None, None) if lstm else (None,)
    elif lstm:
        if not isinstance(hx, tuple | list) or len(hx) != 2:
            return None
        states = tuple(hx)
    else:
        states = (hx,)
    batched = input.dim() == 2
    x = input if batched else input.unsqueeze(0)
    B = x.shape[0]
    given = [s for s in states if s is not None]
    if x.shape[1] != m.input_size or any(
        not isinstance(s, torch.Tensor) or s.dim() != input.dim() for s in given
    ):
        return None
    states = tuple(None if s is None else (s if batched else s.unsqueeze(0)) for s in states)
    if any(s is not None and s.shape != (B, m.hidden_size) for s in states):
        return None
    weights = [m.weight_ih, m.weight_hh] + ([m.bias_ih, m.bias_hh] if m.bias else [])
    if _fallback_reason([x, *given, *weights]) is not None:
        return None
    h0, c0 = states if lstm else (states[0], None)
    h0, c0 = (None if s is None else s.unsqueeze(0) for s in (h0, c0))
    return x.unsqueeze(0), h0, c0, weights, batched


# The kernels' packed weights of the no-grad path (stack_forward's packs), by id of the
# weight_ih tensor, held weakly (the entry goes with the tensor): reused while torch's version
# counters of weight_ih and weight_hh and their storage stay the same. torch counts every
# in-place write through a tensor (optimizer steps, copy_, load_state_dict); a write through
# ``p.data`` is not counted: call clear_packed() after one.
_PACKS: dict[int, tuple] = {}  # id(weight_ih) -> (weakref to it, weight_hh, state, packs)


def clear_packed() -> None:
    """Forget the weights fastrnn packed for the kernels; the next forwards re-pack them.

    Needed only after writing a parameter in place through ``p.data`` (which torch's version
    counter does not see); every other change of a parameter is seen.
    """
    _PACKS.clear()


def _packs(cfg, weights) -> dict[str, dict]:
    by_name = dict(zip(cfg.weight_names(), weights, strict=True))
    out = {}
    for layer in range(cfg.num_layers):
        for d in range(cfg.num_directions):
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            w_ih, w_hh = by_name["weight_ih" + sfx], by_name["weight_hh" + sfx]
            state = (w_ih._version, w_hh._version, w_ih.data_ptr(), w_hh.data_ptr())
            key = id(w_ih)
            entry = _PACKS.get(key)
            if entry is None or entry[0]() is not w_ih or entry[1] is not w_hh or entry[2] != state:
                ref = weakref.ref(w_ih, lambda _, key=key: _PACKS.pop(key, None))
                entry = _PACKS[key] = (ref, w_hh, state, {})
            out[sfx] = entry[3]
    return out


def _compute(cfg, lengths, seed, drop, x, h0, c0, weights) -> tuple[torch.Tensor, ...]:
    """``(y, h_n[, c_n])`` of the stack: one autograd node when a gradient may be asked for."""
    inputs = [x, h0, c0, *weights]
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs):
        return _StackFunction.apply(cfg, lengths, seed, x, h0, c0, *weights)
    y, h_n, c_n, _ = _stack_forward(
        cfg,
        _np(x),
        _np(h0),
        _np(c0),
        weights,
        lengths,
        seed,
        training=drop,  # dropout needs the training path; nothing else does
        packs=_packs(cfg, weights),
    )
    return tuple(torch.from_numpy(a) for a in (y, h_n, c_n) if a is not None)


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
    outs = _compute(cfg, lengths, seed, drop, x, h0, c0, m._flat_weights)
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


class RNNCell(_FastCellBase, torch.nn.RNNCell):
    """``torch.nn.RNNCell`` computed by fastrnn's kernels on the CPU (one step of :class:`RNN`)."""

    _torch_class = torch.nn.RNNCell
    _cell = _cells.RNN


class LSTMCell(_FastCellBase, torch.nn.LSTMCell):
    """``torch.nn.LSTMCell`` computed by fastrnn's kernels on the CPU (a step of :class:`LSTM`)."""

    _torch_class = torch.nn.LSTMCell
    _cell = _cells.LSTM


class GRUCell(_FastCellBase, torch.nn.GRUCell):
    """``torch.nn.GRUCell`` computed by fastrnn's kernels on the CPU (one step of :class:`GRU`)."""

    _torch_class = torch.nn.GRUCell
    _cell = _cells.GRU


_FAST: dict[type, type] = {
    cls._torch_class: cls for cls in (RNN, LSTM, GRU, RNNCell, LSTMCell, GRUCell)
}


def _patch(model: torch.nn.Module, cells: bool = True) -> list[torch.nn.Module]:
    """Swap the classes; log what was swapped and what was left alone, warn when nothing was."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    done, swapped, skipped = [], [], []
    for name, module in model.named_modules():
        fast = _FAST.get(type(module))
        label = f"{name or '(model)'} ({type(module).__name__})"
        if fast is not None and not cells and issubclass(fast, _FastCellBase):
            skipped.append(f"{label}, cells=False")
            continue
        if fast is not None:
            module.__class__ = fast
            done.append(module)
            swapped.append(label)
        elif isinstance(module, tuple(_FAST)) and not isinstance(module, _Swapped):
            skipped.append(label)
    if swapped:
        _log.info("fastrnn.torch.patch: now computed by fastrnn: %s", ", ".join(swapped))
    if skipped:
        _log.info(
            "fastrnn.torch.patch: left alone (subclasses may override forward): %s",
            ", ".join(skipped),
        )
    if not done and not any(isinstance(m, _Swapped) for m in model.modules()):
        warnings.warn(
            f"fastrnn.torch.patch: nothing to patch in {type(model).__name__}: it holds no "
            "torch.nn.RNN, LSTM, GRU, RNNCell, LSTMCell or GRUCell"
            + (f" (left alone: {', '.join(skipped)})" if skipped else ""),
            UserWarning,
            stacklevel=3,
        )
    return done


def patch(model: torch.nn.Module, *, cells: bool = True) -> torch.nn.Module:
    """Make every ``nn.RNN``, ``LSTM``, ``GRU`` and cell inside ``model`` compute with fastrnn.

    In place: each such module (``model`` itself included) keeps its identity, its Parameter
    objects, buffers and hooks, and only changes class to :class:`RNN`, :class:`LSTM`,
    :class:`GRU`, :class:`RNNCell`, :class:`LSTMCell` or :class:`GRUCell`, so an optimizer built
    before the patch keeps working. Subclasses of torch's modules (which may override
    ``forward``) are left alone. What was swapped is logged (logger ``fastrnn.torch``, level
    INFO) and listed by :func:`fastrnn_modules`; a model with nothing to swap warns.

    Parameters
    ----------
    model : torch.nn.Module
    cells : bool, default=True
        Patch ``nn.RNNCell``, ``LSTMCell`` and ``GRUCell`` too. A cell called once per time step
        from a Python loop does little work per call, where fastrnn's per-call cost can exceed
        torch's (see ``benchmarks/bench_torch_shapes.py``); ``cells=False`` leaves them to torch.

    Returns
    -------
    torch.nn.Module
        ``model``.

    Raises
    ------
    TypeError
        If ``model`` is not a ``torch.nn.Module``.

    Warns
    -----
    UserWarning
        If ``model`` holds no module that fastrnn computes (patched before or now).
    """
    _patch(model, cells)
    return model


def fastrnn_modules(model: torch.nn.Module) -> dict[str, str]:
    """The modules inside ``model`` that fastrnn computes: qualified name -> torch class name.

    Parameters
    ----------
    model : torch.nn.Module

    Returns
    -------
    dict of str to str
        ``{"": "LSTM"}`` for a patched ``nn.LSTM`` itself, ``{"rnn": "LSTM", "cell": "GRUCell"}``
        for a model with two patched submodules; empty when nothing is patched.
    """
    modules = model.named_modules()
    return {name: m._torch_class.__name__ for name, m in modules if isinstance(m, _Swapped)}


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
        if isinstance(module, _Swapped):
            module.__class__ = module._torch_class
    return model


@contextlib.contextmanager
def patched(model: torch.nn.Module, *, cells: bool = True) -> Iterator[torch.nn.Module]:
    """Context manager: :func:`patch` ``model`` inside the block, restore it after.

    Only the modules this call patched are restored; modules that were fastrnn's before stay so.

    Parameters
    ----------
    model : torch.nn.Module
    cells : bool, default=True
        As for :func:`patch`.

    Yields
    ------
    torch.nn.Module
        ``model``.
    """
    done = _patch(model, cells)
    try:
        yield model
    finally:
        for module in done:
            if isinstance(module, _Swapped):
                module.__class__ = module._torch_class


def load(f: Any, **kwargs: Any) -> torch.nn.Module:
    """``torch.load`` a whole saved model and :func:`patch` it.

    A patched model saved with ``torch.save(model)`` is stored as the torch model it was (see
    :class:`LSTM`), so plain ``torch.load`` gives torch's modules; this gives fastrnn's again.
    Loading a whole model unpickles its classes: since torch 2.6 that needs
    ``weights_only=False`` or the classes listed in ``torch.serialization.safe_globals``, for
    fastrnn's files as for torch's.

    Parameters
    ----------
    f : str, os.PathLike or file-like
        What ``torch.load`` takes.
    **kwargs
        Passed to ``torch.load`` (``weights_only``, ``map_location``, ...).

    Returns
    -------
    torch.nn.Module
        The loaded model, patched.

    Raises
    ------
    TypeError
        If the file holds something else than a ``torch.nn.Module`` (a ``state_dict``: load it
        into a model and :func:`patch` that).
    """
    obj = torch.load(f, **kwargs)
    if not isinstance(obj, torch.nn.Module):
        raise TypeError(
            f"f holds a {type(obj).__name__}, not a torch.nn.Module: fastrnn.torch.load is for "
            "whole models saved with torch.save(model); load a state_dict into your model with "
            "model.load_state_dict(torch.load(f)) and call fastrnn.torch.patch(model)"
        )
    return patch(obj)


# torch.compile: the stack as torch.library custom operators (their module imports this one)
from fastrnn import _torch_ops  # noqa: E402
