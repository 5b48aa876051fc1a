"""fastrnn's stack as PyTorch custom operators, for ``torch.compile`` of a patched model.

Under ``torch.compile`` the forward of a patched ``nn.RNN`` / ``LSTM`` / ``GRU``
(:mod:`fastrnn.torch`) calls :func:`rnn_forward`, which Dynamo traces: it does torch's
argument checks and calls two operators registered with ``torch.library``:

* ``fastrnn::stack_v1(x, h0, c0, weights, ...) -> (y, h_n, c_n, workspace)``: the whole stack
  (every layer and direction) in one call of :func:`fastrnn.stack.stack_forward`;
* ``fastrnn::stack_backward_v1(workspace, dy, dh_n, dc_n, ...) -> [dx, dh0, dc0, *dw]``:
  :func:`fastrnn.stack.stack_backward`, registered as the backward of the first;
* each with a fake implementation (shapes and dtypes only) that Dynamo, AOTAutograd and
  Inductor trace with, so the graph has no break and Inductor calls the kernels as they are.

The workspace is what cuDNN's ``reserve`` tensor is to ``torch._cudnn_rnn``: an opaque output
of the forward that autograd saves for the backward. It is a one-element int64 tensor whose
memory belongs to an object holding the forward's :class:`fastrnn.stack.StackCache` (the
kernels' per-step gates and states); the element is the key under which the backward finds
that object. The cache lives exactly as long as that tensor, so autograd frees it with the
graph, as it frees any saved tensor.

Memory the cache reads. In a compiled graph Inductor may reuse the memory of a tensor once no
operator reads it any more, and AOTAutograd may recompute a tensor for the backward instead of
keeping it; the cache is no operator, so neither sees it read. Hence: the forward gives the
kernels their own copies of the input and the initial states (small next to the cache); the
output and the weights, which the cache reads in place, are arguments of the backward
operator, so a compiled graph keeps them for it, and the backward checks that it received
the very memory the forward used (``data_ptr``). If it did not (a recomputed weight), the
backward computes the forward again from the tensors it received before going back.

Only the forward of the module is traced differently; eager calls (outside ``torch.compile``)
keep :class:`fastrnn.torch._StackFunction` and its fallbacks (second order, forward-mode AD,
...). The operators need ``torch.library.custom_op`` (torch 2.4 and later); older torch keeps
the module's fallback to torch's own implementation under ``torch.compile``.
"""

from __future__ import annotations

import itertools
import threading
import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

from fastrnn import torch as _ft
from fastrnn.stack import stack_backward

__all__ = ["STACK", "STACK_BACKWARD", "SUPPORTED", "VERSION", "rnn_forward"]

#: Whether this torch can register the operators (``torch.library.custom_op``, torch >= 2.4).
SUPPORTED = all(
    hasattr(torch.library, name) for name in ("custom_op", "register_fake", "register_autograd")
)

Tensor = torch.Tensor


class _Workspace:
    """What one forward leaves for its backward, exposed as a one-element int64 array.

    ``np.asarray(workspace)`` is an array whose base is this object, so the tensor made from
    it with ``torch.from_numpy`` keeps it alive; its element is the key of :data:`_LIVE`,
    where the backward looks it up.
    """

    __slots__ = ("__array_interface__", "__weakref__", "_key", "args", "cache", "shared")

    def __init__(self, cache: Any, args: tuple, shared: list[int]) -> None:
        self.cache = cache  # the StackCache
        self.args = args  # (config, packing, seed): what a forward needs besides the tensors
        self.shared = shared  # data_ptr of y (-1 when not shared) and of each weight
        self._key = np.array([next(_KEYS)], dtype=np.int64)
        self.__array_interface__ = self._key.__array_interface__


_KEYS = itertools.count(1)
# how many backwards computed their forward again (tests read it; see _backward_impl)
_COUNTS = {"recomputed_forwards": 0}
_LIVE: weakref.WeakValueDictionary[int, _Workspace] = weakref.WeakValueDictionary()
_LIVE_LOCK = threading.Lock()


def _workspace_tensor(ws: _Workspace) -> Tensor:
    with _LIVE_LOCK:
        _LIVE[int(ws._key[0])] = ws
    return torch.from_numpy(np.asarray(ws))


def _workspace(handle: Tensor) -> _Workspace:
    if handle.numel() != 1 or handle.dtype != torch.int64:
        raise RuntimeError(
            f"{STACK_BACKWARD}: the workspace is empty: the forward ran without keeping "
            "what the backward needs (no input required grad when it was traced)"
        )
    with _LIVE_LOCK:
        ws = _LIVE.get(int(handle.reshape(()).item()))
    if ws is None:
        raise RuntimeError(
            f"{STACK_BACKWARD}: this forward's workspace was freed (a backward through "
            "the same graph a second time needs retain_graph=True on the first)"
        )
    return ws


def _run_forward(cfg, packing, seed, x, h0, c0, weights, training: bool):
    """:func:`stack_forward` of tensors: ``(y, h_n, c_n, cache)``, ``y`` an array, padded.

    The cache reads its own copies of ``x``, ``h0`` and ``c0``: in a compiled graph Inductor
    may reuse the memory of a tensor once no operator reads it any more (the cache is not an
    operator), or AOTAutograd may recompute it for the backward instead of keeping it.
    """
    lengths = None
    if packing is None:
        xs = np.array(_ft._np(x), order="C")
    else:  # padded (a new array), lengths in the caller's order
        batch_sizes, sorted_indices, unsorted_indices, T = packing
        seq = PackedSequence(x, batch_sizes, sorted_indices, unsorted_indices)
        xs_t, lengths_t = pad_packed_sequence(seq, total_length=T)
        xs, lengths = xs_t.numpy(), lengths_t.numpy()
    h0, c0 = (None if s is None else np.array(_ft._np(s), order="C") for s in (h0, c0))
    return _ft._stack_forward(cfg, xs, h0, c0, weights, lengths, seed, training)


def _stack_impl(
    x: Tensor,
    h0: Tensor | None,
    c0: Tensor | None,
    weights: list[Tensor],
    batch_sizes: Tensor | None,
    sorted_indices: Tensor | None,
    unsorted_indices: Tensor | None,
    seed: Tensor | None,
    mode: str,
    input_size: int,
    hidden_size: int,
    num_layers: int,
    bias: bool,
    bidirectional: bool,
    dropout: float,
    proj_size: int,
    keep: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    cfg = _ft._config(
        mode, input_size, hidden_size, num_layers, bias, bidirectional, dropout, proj_size
    )
    packing = None
    if batch_sizes is not None:
        packing = (batch_sizes, sorted_indices, unsorted_indices, int(batch_sizes.numel()))
        B = int(batch_sizes[0])
        for name, s in (("hidden[0]" if c0 is not None else "hidden", h0), ("hidden[1]", c0)):
            if s is not None and s.shape[1] != B:  # torch's check, which the graph cannot do
                raise RuntimeError(
                    f"Expected {name} size {(s.shape[0], B, s.shape[2])}, got {tuple(s.shape)}"
                )
    seed_ = None if seed is None else int(seed.item())
    y, h_n, c_n, cache = _run_forward(
        cfg, packing, seed_, x, h0, c0, weights, training=keep or dropout > 0
    )
    y_t = torch.from_numpy(y)
    if packing is not None:  # a new tensor: the cache keeps the padded y to itself
        y_t = _ft._pack(y_t, PackedSequence(x, *packing[:3]))
    c_t = torch.from_numpy(c_n) if c_n is not None else x.new_empty((0,))
    if keep:
        shared = [y_t.data_ptr() if packing is None else -1, *(w.data_ptr() for w in weights)]
        handle = _workspace_tensor(_Workspace(cache, (cfg, packing, seed_), shared))
    else:
        handle = x.new_empty((0,), dtype=torch.int64)
    return y_t, torch.from_numpy(h_n), c_t, handle


def _stack_fake(
    x, h0, c0, weights, batch_sizes, sorted_indices, unsorted_indices, seed,
    mode, input_size, hidden_size, num_layers, bias, bidirectional, dropout, proj_size, keep,
):  # fmt: skip
    D = 2 if bidirectional else 1
    R = proj_size or hidden_size
    if batch_sizes is None:
        T, B = x.shape[0], x.shape[1]
        y = x.new_empty((T, B, D * R))
    else:
        if h0 is not None:
            B = h0.shape[1]
        elif sorted_indices is not None:
            B = sorted_indices.shape[0]
        else:  # batch_sizes[0], a value the graph does not know
            B = torch.library.get_ctx().new_dynamic_size()
        y = x.new_empty((x.shape[0], D * R))
    h_n = x.new_empty((num_layers * D, B, R))
    c_n = x.new_empty((num_layers * D, B, hidden_size) if mode == "LSTM" else (0,))
    handle = x.new_empty((1,) if keep else (0,), dtype=torch.int64)
    return y, h_n, c_n, handle


def _backward_impl(
    handle: Tensor,
    dy: Tensor,
    dh_n: Tensor,
    dc_n: Tensor | None,
    x: Tensor,
    h0: Tensor | None,
    c0: Tensor | None,
    y: Tensor,
    weights: list[Tensor],
) -> list[Tensor]:
    ws = _workspace(handle)
    cfg, packing, seed = ws.args
    cache = ws.cache
    # The cache reads the memory of y and of the weights, which the backward receives: when
    # these are the very tensors the forward had, autograd kept them (a compiled graph then
    # does not reuse their memory); when AOTAutograd recomputed one, that memory may hold
    # something else by now: compute the forward again from the tensors given here.
    now = [y.data_ptr() if ws.shared[0] != -1 else -1, *(w.data_ptr() for w in weights)]
    if now != ws.shared:
        _COUNTS["recomputed_forwards"] += 1
        cache = _run_forward(cfg, packing, seed, x, h0, c0, weights, training=True)[3]
    if packing is not None:
        seq = PackedSequence(dy, *packing[:3])
        dy = pad_packed_sequence(seq, total_length=packing[3])[0]
    g = stack_backward(cache, _ft._np(dy), _ft._np(dh_n), _ft._np(dc_n))
    # C-contiguous, as the fake says (the kernels give dx the strides x had, which in a
    # compiled graph are Inductor's choice); a copy only for a batch_first model's x
    dx = torch.from_numpy(np.ascontiguousarray(g.dx))
    if packing is not None:
        dx = _ft._pack(dx, PackedSequence(x, *packing[:3]))
    out = [dx, torch.from_numpy(g.dh0)]
    if g.dc0 is not None:
        out.append(torch.from_numpy(g.dc0))
    out.extend(torch.from_numpy(a) for a in g.weights.values())
    return out


def _backward_fake(handle, dy, dh_n, dc_n, x, h0, c0, y, weights):
    # the kernels' gradients are new C-contiguous arrays, whatever the strides of x
    out = [x.new_empty(x.shape), dh_n.new_empty(dh_n.shape)]
    if dc_n is not None:
        out.append(dc_n.new_empty(dc_n.shape))
    out.extend(w.new_empty(w.shape) for w in weights)
    return out


def _setup_context(ctx, inputs, output) -> None:
    x, h0, c0, weights = inputs[:4]
    ctx.lstm = inputs[8] == "LSTM"
    ctx.has_h0, ctx.has_c0 = h0 is not None, c0 is not None
    ctx.save_for_backward(output[3], x, h0, c0, output[0], *weights)


def _backward(ctx, dy, dh_n, dc_n, _dhandle):
    handle, x, h0, c0, y, *weights = ctx.saved_tensors
    grads = backward_op(handle, dy, dh_n, dc_n if ctx.lstm else None, x, h0, c0, y, weights)
    need = ctx.needs_input_grad
    dx, dh0 = grads[0], grads[1]
    dc0 = grads[2] if ctx.lstm else None
    dws = grads[3 if ctx.lstm else 2 :]
    return (
        dx if need[0] else None,
        dh0 if need[1] and ctx.has_h0 else None,
        dc0 if need[2] and ctx.has_c0 else None,
        [g if n else None for g, n in zip(dws, need[3], strict=True)],
        *([None] * 13),  # batch_sizes ... keep: no gradient
    )


# The operators' version, in their names. Inductor and AOTAutograd cache compiled graphs on
# disk under a key made of the traced graph, which names the forward operator but holds
# neither its code nor its backward: bump this whenever a schema, a fake or the backward
# changes, so that no graph compiled against the old ones is reused.
VERSION = 1
STACK = f"fastrnn::stack_v{VERSION}"
STACK_BACKWARD = f"fastrnn::stack_backward_v{VERSION}"

if SUPPORTED:
    stack_op = torch.library.custom_op(STACK, mutates_args=())(_stack_impl)
    stack_op.register_fake(_stack_fake)
    backward_op = torch.library.custom_op(STACK_BACKWARD, mutates_args=())(_backward_impl)
    backward_op.register_fake(_backward_fake)
    stack_op.register_autograd(_backward, setup_context=_setup_context)


def _unsupported(tensors: Sequence[Tensor]) -> bool:
    """Whether these tensors need torch's own implementation (as in eager fastrnn.torch)."""
    if torch.is_autocast_enabled("cpu"):
        return True
    dtype = tensors[0].dtype
    if dtype not in _ft._DTYPES:
        return True
    for t in tensors:
        if type(t) not in _ft._PLAIN:  # a subclass's __torch_function__ must see torch's ops
            return True
        if t.dtype != dtype or t.device.type != "cpu" or t.layout != torch.strided:
            return True
        if t.numel() == 0:
            return True
    return False


def rnn_forward(m: Any, input: Any, hx: Any):  # noqa: A002 - torch's argument name
    """A patched ``nn.RNN`` / ``LSTM`` / ``GRU``'s forward, traced by ``torch.compile``.

    Returns what torch's ``forward`` returns, or None when the call is left to torch's own
    implementation (the same cases as eager :mod:`fastrnn.torch`: another device or dtype,
    autocast, malformed arguments, whose errors are then torch's).
    """
    lstm = m.mode == "LSTM"
    packed = isinstance(input, PackedSequence)
    data = input.data if packed else input
    if not isinstance(data, torch.Tensor):
        return None
    if hx is None:
        h0 = c0 = None
    elif lstm:
        if not isinstance(hx, tuple | list) or len(hx) != 2:
            return None
        h0, c0 = hx
        if not isinstance(h0, torch.Tensor) or not isinstance(c0, torch.Tensor):
            return None
    else:
        if not isinstance(hx, torch.Tensor):
            return None
        h0, c0 = hx, None
    given = [s for s in (h0, c0) if s is not None]
    weights = [getattr(m, name) for name in m._flat_weights_names]
    if _unsupported([data, *given, *weights]):
        return None
    batched = True
    if packed:
        if any(s.dim() != 3 for s in given):
            return None
        m.check_input(data, input.batch_sizes)
        if given:
            # torch's check reads batch_sizes[0], a value the graph does not have: the batch
            # size is the permutation's length (the operator checks a sorted batch's, below)
            B = h0.shape[1] if input.sorted_indices is None else input.sorted_indices.shape[0]
            LD, R = m.num_layers * (2 if m.bidirectional else 1), m.proj_size or m.hidden_size
            if lstm:
                m.check_hidden_size(h0, (LD, B, R), "Expected hidden[0] size {}, got {}")
                m.check_hidden_size(
                    c0, (LD, B, m.hidden_size), "Expected hidden[1] size {}, got {}"
                )
            else:
                m.check_hidden_size(h0, (LD, B, R))
        x = data
        packing = (input.batch_sizes, input.sorted_indices, input.unsorted_indices)
    else:
        if data.dim() not in (2, 3):
            return None
        batched = data.dim() == 3
        if any(s.dim() != (3 if batched else 2) for s in given):
            return None
        if not batched:
            data = data.unsqueeze(0 if m.batch_first else 1)
            h0 = None if h0 is None else h0.unsqueeze(1)
            c0 = None if c0 is None else c0.unsqueeze(1)
        if given:
            m.check_forward_args(data, (h0, c0) if lstm else h0, None)
        else:
            m.check_input(data, None)
        x = data.transpose(0, 1) if m.batch_first else data
        packing = (None, None, None)
    drop = m.training and m.dropout > 0 and m.num_layers > 1
    inputs = [x, *given, *weights]
    keep = torch.is_grad_enabled() and any(t.requires_grad for t in inputs)
    seed = torch.randint(0, 2**62, (), dtype=torch.int64) if drop else None
    y, h_n, c_n, _ = stack_op(
        x,
        h0,
        c0,
        weights,
        *packing,
        seed,
        m.mode,
        m.input_size,
        m.hidden_size,
        m.num_layers,
        m.bias,
        m.bidirectional,
        float(m.dropout) if drop else 0.0,
        m.proj_size,
        keep,
    )
    if packed:
        y = PackedSequence(y, input.batch_sizes, input.sorted_indices, input.unsorted_indices)
    elif not batched:
        y = y.squeeze(1)
        h_n = h_n.squeeze(1)
        c_n = c_n.squeeze(1) if lstm else c_n
    elif m.batch_first:
        y = y.transpose(0, 1)
    return y, ((h_n, c_n) if lstm else h_n)
