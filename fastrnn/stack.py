"""Multi-layer, bidirectional recurrent stacks over the functional API.

The layer classes (:class:`fastrnn.RNN`, :class:`fastrnn.LSTM`, :class:`fastrnn.GRU`) are thin
wrappers around the two functions of this module, which know nothing about ``Module`` or
``Parameter``: arrays in, arrays out, weights passed by their PyTorch names. That makes them the
place to build other front ends on (a PyTorch autograd wrapper, for instance).

Layout (PyTorch's): ``x`` is time-major ``(T, B, I)``; states are ``(L*D, B, ...)`` with index
``layer * D + direction``; the output of a bidirectional layer concatenates the forward and the
reverse direction along the last axis; dropout (training only) is applied to the output of every
layer but the last. With two or more kernel threads (:func:`fastrnn.set_num_threads`), the two
directions of a large enough bidirectional layer run at once on two Python threads, with the
same results bit for bit (see ``_direction_split``).

    cfg = StackConfig("lstm", input_size=8, hidden_size=16, num_layers=2, bidirectional=True)
    y, h_n, c_n, cache = stack_forward(cfg, x, None, None, weights)      # weights: name -> array
    g = stack_backward(cache, dy)         # g.dx, g.dh0, g.dc0, g.weights (name -> gradient)
"""

from __future__ import annotations

import math
import numbers
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from fastrnn import _threads
from fastrnn._common import CELLS, check_lengths, nbytes_of
from fastrnn._threads import get_num_threads

__all__ = [
    "StackCache",
    "StackConfig",
    "StackGrads",
    "default_init",
    "stack_backward",
    "stack_forward",
]

BACKENDS = ("cython", "numpy")


def _backend_module(backend: str):
    if backend == "cython":
        from fastrnn import functional

        return functional
    from fastrnn import reference

    return reference


def _positive_int(value: Any, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")
    return int(value)


@dataclass(frozen=True)
class StackConfig:
    """Shape of a recurrent stack: PyTorch's ``nn.RNN``/``nn.LSTM``/``nn.GRU`` arguments.

    Parameters
    ----------
    cell : {"rnn", "lstm", "gru"}
    input_size : int
        Features of the input ``x``.
    hidden_size : int
        Features of the hidden state (of the cell state for an LSTM with a projection).
    num_layers : int, default=1
    bias : bool, default=True
    bidirectional : bool, default=False
    dropout : float, default=0.0
        Probability of zeroing an output element of every layer but the last (training only).
    proj_size : int, default=0
        LSTM only: project the hidden state to ``proj_size < hidden_size`` features.
    nonlinearity : {"tanh", "relu"}, default="tanh"
        RNN only.
    reset_after : bool, default=True
        GRU only: apply the reset gate after the hidden matmul (PyTorch) or before it (False).
    backend : {"cython", "numpy"}, default="cython"
        :mod:`fastrnn.functional` or :mod:`fastrnn.reference`.

    Raises
    ------
    ValueError
        Naming the argument whose value is out of range.
    TypeError
        Naming the argument whose type is wrong.
    """

    cell: str
    input_size: int
    hidden_size: int
    num_layers: int = 1
    bias: bool = True
    bidirectional: bool = False
    dropout: float = 0.0
    proj_size: int = 0
    nonlinearity: str = "tanh"
    reset_after: bool = True
    backend: str = "cython"

    def __post_init__(self) -> None:
        if self.cell not in CELLS:
            raise ValueError(f"cell must be 'rnn', 'lstm' or 'gru', got {self.cell!r}")
        _positive_int(self.input_size, "input_size")
        _positive_int(self.hidden_size, "hidden_size")
        _positive_int(self.num_layers, "num_layers")
        if self.cell != "lstm" and self.proj_size != 0:
            raise ValueError(f"proj_size is only supported for LSTM, not {self.cell.upper()}")
        _positive_int(self.proj_size, "proj_size", minimum=0)
        if self.proj_size >= self.hidden_size:
            raise ValueError(
                f"proj_size must be smaller than hidden_size={self.hidden_size}, "
                f"got {self.proj_size}"
            )
        d = self.dropout
        if isinstance(d, bool) or not isinstance(d, numbers.Real) or not 0.0 <= d <= 1.0:
            raise ValueError(
                f"dropout must be a probability in [0, 1] (of zeroing an element), got {d!r}"
            )
        if self.nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {self.nonlinearity!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be 'cython' or 'numpy', got {self.backend!r}")
        for flag in ("bias", "bidirectional", "reset_after"):
            object.__setattr__(self, flag, bool(getattr(self, flag)))
        object.__setattr__(self, "dropout", float(d))

    # -- derived sizes -------------------------------------------------------------------------
    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def output_size(self) -> int:
        """Features of ``h`` (and of each direction's output): proj_size or hidden_size."""
        return self.proj_size or self.hidden_size

    def layer_input_size(self, layer: int) -> int:
        return self.input_size if layer == 0 else self.num_directions * self.output_size

    def weight_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every weight's PyTorch name and shape, in PyTorch's ``_flat_weights_names`` order.

        Per layer ``k`` and direction (suffix ``""`` or ``"_reverse"``): ``weight_ih_l{k}``
        (G*H, I_k), ``weight_hh_l{k}`` (G*H, R), ``bias_ih_l{k}``, ``bias_hh_l{k}`` (G*H,) and,
        with a projection, ``weight_hr_l{k}`` (P, H); R is proj_size or hidden_size.
        """
        G, H, R = CELLS[self.cell], self.hidden_size, self.output_size
        shapes: dict[str, tuple[int, ...]] = {}
        for layer in range(self.num_layers):
            for direction in range(self.num_directions):
                sfx = f"_l{layer}" + ("_reverse" if direction else "")
                shapes[f"weight_ih{sfx}"] = (G * H, self.layer_input_size(layer))
                shapes[f"weight_hh{sfx}"] = (G * H, R)
                if self.bias:
                    shapes[f"bias_ih{sfx}"] = (G * H,)
                    shapes[f"bias_hh{sfx}"] = (G * H,)
                if self.proj_size:
                    shapes[f"weight_hr{sfx}"] = (self.proj_size, H)
        return shapes

    def weight_names(self) -> list[str]:
        """PyTorch's ``_flat_weights_names``: the order of :meth:`weight_shapes`."""
        return list(self.weight_shapes())

    def state_shapes(self, batch: int) -> tuple[tuple[int, int, int], tuple[int, int, int] | None]:
        """Shapes of ``h`` and (LSTM) ``c``: ``(L*D, B, R)`` and ``(L*D, B, H)``."""
        LD = self.num_layers * self.num_directions
        c = (LD, batch, self.hidden_size) if self.cell == "lstm" else None
        return (LD, batch, self.output_size), c


class StackCache:
    """What a training :func:`stack_forward` keeps for :func:`stack_backward` (opaque)."""

    __slots__ = ("caches", "config", "dtype", "masks", "shape")

    def __init__(self, config, caches, masks, dtype, shape) -> None:
        self.config = config
        self.caches = caches  # [layer][direction] -> functional Cache
        self.masks = masks  # [layer] -> scaled dropout mask of that layer's output, or None
        self.dtype = dtype
        self.shape = shape  # (T, B)

    @property
    def nbytes(self) -> int:
        """Bytes held by the per-layer caches and the dropout masks, each array counted once
        (a layer's input is the previous layer's output, and both directions share it)."""
        return nbytes_of([c.data for layer in self.caches for c in layer], self.masks)


class StackGrads(NamedTuple):
    """Gradients returned by :func:`stack_backward`."""

    dx: np.ndarray
    dh0: np.ndarray
    dc0: np.ndarray | None
    weights: dict[str, np.ndarray]


def _weights_dict(config: StackConfig, weights: Any) -> dict[str, Any]:
    shapes = config.weight_shapes()
    if not isinstance(weights, Mapping):
        if not isinstance(weights, Sequence) or len(weights) != len(shapes):
            raise ValueError(
                f"weights must be a mapping from name to array, or a sequence of "
                f"{len(shapes)} arrays in the order {list(shapes)}"
            )
        weights = dict(zip(shapes, weights, strict=True))
    missing = [k for k in shapes if k not in weights]
    unexpected = [k for k in weights if k not in shapes]
    bad = [
        f"{k}: expected shape {s}, got {np.shape(weights[k])}"
        for k, s in shapes.items()
        if k in weights and np.shape(weights[k]) != s
    ]
    problems = []
    if missing:
        problems.append(f"missing weights: {missing}")
    if unexpected:
        problems.append(f"unexpected weights: {unexpected}")
    problems.extend(bad)
    if problems:
        raise ValueError("; ".join(problems))
    return dict(weights)


def _check_state(name: str, a: Any, shape: tuple[int, ...] | None) -> Any:
    if a is None:
        return None
    if np.shape(a) != shape:
        raise ValueError(
            f"{name} must have shape (num_layers * num_directions, batch, size) = {shape}, "
            f"got {np.shape(a)}"
        )
    return a


# --- the two directions of a bidirectional layer at once -----------------------------------------
# The kernels release the GIL and run one OpenMP team each, of at most get_num_threads()
# threads, fewer for small hidden sizes. So with two or more threads allowed, the forward and
# the reverse direction of a layer run at once on two Python threads, each of its kernel calls
# capped at its share (n // 2 and n - n // 2): the caller runs direction 0 while one worker
# thread runs direction 1. Results are bitwise those of the one-after-the-other path (the
# kernels' blocking does not depend on the thread count; tests/test_bidirectional_concurrency.py).
#
# None: at once when the rule below says it pays; True: at once whenever two threads are
# allowed; False: one after the other (tests and benchmarks/bench_bidirectional.py set these).
_CONCURRENT_DIRECTIONS: bool | None = None

# Multiply-adds of one direction's forward GEMMs, T * B * G * H * (I + H), below which the
# directions run one after the other: such a call lasts well under a millisecond, and handing
# it to the worker thread (tens of microseconds each way, the two threads then taking turns
# on the GIL for their Python prologues) costs more than the overlap saves. Measured on 2
# cores (benchmarks/bench_bidirectional.py): break-even at 2-3e6 (LSTM and GRU, T=50, B=1-2,
# H=64-128); from 4e6 up the concurrent path won by 1.05-2x, up to T x B x I x H =
# 100x64x512x512; at 50x1x32x64 (1e6) it lost, 0.5-0.9x.
_MIN_WORK_CONCURRENT = 1 << 22

_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def _direction_worker() -> ThreadPoolExecutor:
    """The one worker thread that runs direction 1 (created on first use)."""
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fastrnn-bidir")
        return _executor


def _forget_worker_after_fork() -> None:
    # A forked child has no worker thread: an inherited executor would queue work forever.
    global _executor, _executor_lock
    _executor, _executor_lock = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_worker_after_fork)


def _direction_split(cfg: StackConfig, T: int, B: int, layer: int) -> tuple[int, int] | None:
    """Kernel threads of direction 0 and 1 of ``layer`` when they run at once, else None."""
    if not cfg.bidirectional or cfg.backend != "cython" or _CONCURRENT_DIRECTIONS is False:
        return None
    if _threads._in_thread_limit():
        return None  # already one direction's share: never nest (the one worker would wait)
    n = get_num_threads()
    if n < 2:
        return None
    if _CONCURRENT_DIRECTIONS is None:
        G, H = CELLS[cfg.cell], cfg.hidden_size
        if T * B * G * H * (cfg.layer_input_size(layer) + H) < _MIN_WORK_CONCURRENT:
            return None
    return n // 2, n - n // 2


def _each_direction(D: int, split: tuple[int, int] | None, run: Callable[[int], Any]) -> list:
    """``[run(0), ..., run(D - 1)]``, the two directions at once when ``split`` is given.

    Direction 1 runs on the worker thread while this thread runs direction 0. An exception
    of either is raised here, direction 0's first, and only once both have finished.
    """
    if split is None:
        return [run(direction) for direction in range(D)]
    n0, n1 = split

    def reverse() -> Any:
        with _threads._thread_limit(n1):
            return run(1)

    future = _direction_worker().submit(reverse)
    try:
        with _threads._thread_limit(n0):
            first = run(0)
    except BaseException:
        wait([future])  # never leave the worker on this layer's arrays
        raise
    return [first, future.result()]


def stack_forward(
    config: StackConfig,
    x: Any,
    h0: Any = None,
    c0: Any = None,
    weights: Mapping[str, Any] | Sequence[Any] = (),
    *,
    lengths: Any = None,
    training: bool = True,
    generator: np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, StackCache | None]:
    """Run a stack of recurrent layers over a time-major batch.

    Parameters
    ----------
    config : StackConfig
    x : array_like of shape (T, B, input_size), dtype=float32 or float64
    h0 : array_like of shape (L*D, B, R) or None
        Initial hidden states, ``R = proj_size or hidden_size``; None for zeros.
    c0 : array_like of shape (L*D, B, hidden_size) or None
        LSTM only: initial cell states; None for zeros.
    weights : mapping of str to array_like, or sequence of array_like
        By PyTorch name, or in :meth:`StackConfig.weight_names` order; shapes as in
        :meth:`StackConfig.weight_shapes`.
    lengths : array_like of int, shape (B,), optional
        Packed-sequence semantics in every layer and direction: zero outputs past each
        sequence's end, final states at its last step, the reverse direction starting there.
    training : bool, default=True
        Keep what :func:`stack_backward` needs and apply dropout; False returns ``cache=None``.
    generator : numpy.random.Generator, optional
        Draws the dropout masks (only used when training with ``dropout > 0`` and more than one
        layer); a fresh unseeded one when None.

    Returns
    -------
    y : ndarray of shape (T, B, D*R)
        Output of the last layer (both directions concatenated); dtype float32 or float64 by
        the functional API's rule (float64 if any operand is float64).
    h_n : ndarray of shape (L*D, B, R)
    c_n : ndarray of shape (L*D, B, hidden_size), or None for RNN and GRU
    cache : StackCache or None
    """
    cfg = config
    if np.ndim(x) != 3:
        raise ValueError(f"x must be a 3-D array of shape (T, B, input_size), got {np.shape(x)}")
    T, B, I = np.shape(x)
    if I != cfg.input_size:
        raise ValueError(
            f"x must have input_size={cfg.input_size} features in its last axis, "
            f"got shape {np.shape(x)}"
        )
    h_shape, c_shape = cfg.state_shapes(B)
    h0 = _check_state("h0", h0, h_shape)
    if cfg.cell == "lstm":
        c0 = _check_state("c0", c0, c_shape)
    elif c0 is not None:
        raise ValueError(f"c0 is only used by LSTM, not {cfg.cell.upper()}")
    w = _weights_dict(cfg, weights)
    lengths = check_lengths(lengths, T, B)
    drop = training and cfg.dropout > 0 and cfg.num_layers > 1
    if drop and generator is None:
        generator = np.random.default_rng()

    F = _backend_module(cfg.backend)
    fwd = getattr(F, f"{cfg.cell}_forward")
    D = cfg.num_directions
    inp: Any = x
    h_n, c_n, caches, masks = [], [], [], []
    for layer in range(cfg.num_layers):

        def run(direction: int, layer: int = layer, inp: Any = inp) -> tuple:
            idx = layer * D + direction
            sfx = f"_l{layer}" + ("_reverse" if direction else "")
            args = [w[f"weight_ih{sfx}"], w[f"weight_hh{sfx}"]]
            args += [w[f"bias_ih{sfx}"], w[f"bias_hh{sfx}"]] if cfg.bias else [None, None]
            kw: dict[str, Any] = {
                "training": training,
                "lengths": lengths,
                "reverse": bool(direction),
            }
            h = None if h0 is None else h0[idx]
            if cfg.cell == "lstm":
                if cfg.proj_size:
                    kw["w_hr"] = w[f"weight_hr{sfx}"]
                c = None if c0 is None else c0[idx]
                return fwd(inp, h, c, *args, **kw)
            if cfg.cell == "rnn":
                kw["nonlinearity"] = cfg.nonlinearity
            else:
                kw["reset_after"] = cfg.reset_after
            y, hn, cache = fwd(inp, h, *args, **kw)
            return y, hn, None, cache

        outs, layer_caches = [], []
        split = _direction_split(cfg, T, B, layer)
        for y, hn, cn, cache in _each_direction(D, split, run):
            outs.append(y)
            h_n.append(hn)
            if cfg.cell == "lstm":
                c_n.append(cn)
            layer_caches.append(cache)
        out = outs[0] if D == 1 else np.concatenate(outs, axis=2)
        mask = None
        if drop and layer < cfg.num_layers - 1:
            # inverted dropout: keep with probability 1 - p, scale the kept by 1 / (1 - p)
            p = cfg.dropout
            keep = generator.random(out.shape, dtype=out.dtype) >= p
            mask = keep.astype(out.dtype) * (0.0 if p == 1.0 else 1.0 / (1.0 - p))
            out = out * mask
        caches.append(layer_caches)
        masks.append(mask)
        inp = out
    y = inp
    c_n_a = np.stack(c_n) if cfg.cell == "lstm" else None
    cache = StackCache(cfg, caches, masks, y.dtype, (T, B)) if training else None
    return y, np.stack(h_n), c_n_a, cache


def stack_backward(
    cache: StackCache,
    dy: Any,
    dh_n: Any = None,
    dc_n: Any = None,
    *,
    on_layer_grads: Callable[[int, dict[str, np.ndarray]], None] | None = None,
) -> StackGrads:
    """Backpropagation through a training :func:`stack_forward`.

    Parameters
    ----------
    cache : StackCache
        From a training :func:`stack_forward`; the same dropout masks are applied.
    dy : array_like of shape (T, B, D*R) or None
        Gradient with respect to ``y``; None for zeros.
    dh_n : array_like of shape (L*D, B, R) or None
    dc_n : array_like of shape (L*D, B, hidden_size) or None
        LSTM only.
    on_layer_grads : callable, optional
        ``on_layer_grads(layer, grads)`` as soon as a layer's weight gradients are final
        (``grads``: name -> gradient, both directions), from the top layer down; the layers
        below are still to run (a data-parallel caller starts their all-reduce there).

    Returns
    -------
    StackGrads
        ``dx`` (T, B, input_size), ``dh0`` (L*D, B, R), ``dc0`` (L*D, B, hidden_size) or None,
        and ``weights``, a dict from PyTorch name to gradient in ``weight_names()`` order, each
        summed over every step and sequence.
    """
    if not isinstance(cache, StackCache):
        raise TypeError(
            "stack_backward needs the StackCache of a training stack_forward, got "
            f"{type(cache).__name__} (was the forward called with training=False?)"
        )
    cfg = cache.config
    T, B = cache.shape
    D, R = cfg.num_directions, cfg.output_size
    h_shape, c_shape = cfg.state_shapes(B)
    if dy is not None and np.shape(dy) != (T, B, D * R):
        raise ValueError(f"dy must have the shape of y, {(T, B, D * R)}, got {np.shape(dy)}")
    dh_n = _check_state("dh_n", dh_n, h_shape)
    if cfg.cell == "lstm":
        dc_n = _check_state("dc_n", dc_n, c_shape)
    elif dc_n is not None:
        raise ValueError(f"dc_n is only used by LSTM, not {cfg.cell.upper()}")

    F = _backend_module(cfg.backend)
    bwd = getattr(F, f"{cfg.cell}_backward")
    grads: dict[str, np.ndarray] = {}
    dh0: list[Any] = [None] * (cfg.num_layers * D)
    dc0: list[Any] = [None] * (cfg.num_layers * D)
    dout: Any = dy
    for layer in range(cfg.num_layers - 1, -1, -1):

        def run(direction: int, layer: int = layer, dout: Any = dout) -> Any:
            idx = layer * D + direction
            dy_d = None if dout is None else dout[:, :, direction * R : (direction + 1) * R]
            dh = None if dh_n is None else dh_n[idx]
            c = cache.caches[layer][direction]
            if cfg.cell == "lstm":
                return bwd(c, dy_d, dh, None if dc_n is None else dc_n[idx])
            return bwd(c, dy_d, dh)

        dinp, n_before = None, len(grads)
        split = _direction_split(cfg, T, B, layer)
        for direction, g in enumerate(_each_direction(D, split, run)):
            idx = layer * D + direction
            sfx = f"_l{layer}" + ("_reverse" if direction else "")
            if cfg.cell == "lstm":
                dc0[idx] = g.dc0
                if cfg.proj_size:
                    grads[f"weight_hr{sfx}"] = g.dw_hr
            dh0[idx] = g.dh0
            grads[f"weight_ih{sfx}"] = g.dw_ih
            grads[f"weight_hh{sfx}"] = g.dw_hh
            if cfg.bias:
                grads[f"bias_ih{sfx}"] = g.db_ih
                grads[f"bias_hh{sfx}"] = g.db_hh
            dinp = g.dx if dinp is None else dinp + g.dx
        if on_layer_grads is not None:
            on_layer_grads(layer, dict(list(grads.items())[n_before:]))  # this layer's
        if layer > 0 and cache.masks[layer - 1] is not None:
            dinp = dinp * cache.masks[layer - 1]
        dout = dinp
    dc0_a = np.stack(dc0) if cfg.cell == "lstm" else None
    ordered = {name: grads[name] for name in cfg.weight_names()}
    return StackGrads(dout, np.stack(dh0), dc0_a, ordered)


def default_init(
    config: StackConfig, dtype: Any, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """PyTorch's default init of every weight of a stack.

    Parameters
    ----------
    config : StackConfig
    dtype : {np.float32, np.float64}
    rng : numpy.random.Generator
        Draws the weights one after the other, in :meth:`StackConfig.weight_names` order.

    Returns
    -------
    dict of str to ndarray
        Name to array of the shape given by :meth:`StackConfig.weight_shapes` and of ``dtype``,
        drawn from U(-k, k) with k = 1 / sqrt(hidden_size) (weights and biases alike).
    """
    k = 1.0 / math.sqrt(config.hidden_size)
    return {
        name: rng.uniform(-k, k, shape).astype(dtype)
        for name, shape in config.weight_shapes().items()
    }
