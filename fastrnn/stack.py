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
from types import MappingProxyType
from typing import Any, NamedTuple

import numpy as np

from fastrnn import _threads, _workspace
from fastrnn._common import check_lengths, nbytes_of
from fastrnn._threads import get_num_threads
from fastrnn.cells import BACKENDS, Cell, Param, Sizes, get_cell

__all__ = [
    "StackCache",
    "StackConfig",
    "StackGrads",
    "default_init",
    "stack_backward",
    "stack_forward",
]


def _positive_int(value: Any, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")
    return int(value)


class StackConfig:
    """Shape of a recurrent stack: PyTorch's ``nn.RNN``/``nn.LSTM``/``nn.GRU`` arguments.

    Immutable and hashable. The cell-specific options are those of the cell's entry in
    :mod:`fastrnn.cells` and read as attributes (``config.proj_size``); ``config.options``
    holds all of them, defaults included.

    Parameters
    ----------
    cell : str or fastrnn.cells.Cell
        A name of :data:`fastrnn.cells.CELLS` (``"rnn"``, ``"lstm"``, ``"gru"``).
    input_size : int
        Features of the input ``x``.
    hidden_size : int
        Features of the hidden state (of the cell state for an LSTM with a projection).
    num_layers : int, default=1
    bias : bool, default=True
    bidirectional : bool, default=False
    dropout : float, default=0.0
        Probability of zeroing an output element of every layer but the last (training only).
    backend : {"cython", "numpy"}, default="cython"
        :mod:`fastrnn.functional` or :mod:`fastrnn.reference`.
    **options
        The cell's own options: ``nonlinearity`` ({"tanh", "relu"}, RNN), ``proj_size`` (int,
        LSTM: project the hidden state to ``proj_size < hidden_size`` features),
        ``reset_after`` (bool, GRU: the reset gate after the hidden matmul, PyTorch's, or
        before it).

    Raises
    ------
    ValueError
        Naming the argument whose value is out of range, or an option of another cell.
    TypeError
        Naming the argument whose type is wrong.
    """

    __slots__ = (
        "_derived",  # what params() and weight_shapes() derive, computed once
        "backend",
        "bias",
        "bidirectional",
        "cell",
        "dropout",
        "hidden_size",
        "input_size",
        "num_layers",
        "options",
        "spec",
    )

    def __init__(
        self,
        cell: str | Cell,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        bidirectional: bool = False,
        dropout: float = 0.0,
        backend: str = "cython",
        **options: Any,
    ) -> None:
        spec = get_cell(cell)
        if backend not in BACKENDS:
            raise ValueError(f"backend must be 'cython' or 'numpy', got {backend!r}")
        d = dropout
        if isinstance(d, bool) or not isinstance(d, numbers.Real) or not 0.0 <= d <= 1.0:
            raise ValueError(
                f"dropout must be a probability in [0, 1] (of zeroing an element), got {d!r}"
            )
        opts = spec.check_options(options)
        values = {
            "spec": spec,
            "cell": spec.name,
            "input_size": _positive_int(input_size, "input_size"),
            "hidden_size": _positive_int(hidden_size, "hidden_size"),
            "num_layers": _positive_int(num_layers, "num_layers"),
            "bias": bool(bias),
            "bidirectional": bool(bidirectional),
            "dropout": float(d),
            "backend": backend,
            "options": MappingProxyType(opts),
        }
        for name, value in values.items():
            object.__setattr__(self, name, value)
        object.__setattr__(self, "_derived", {})
        if opts.get("proj_size", 0) >= self.hidden_size:
            raise ValueError(
                f"proj_size must be smaller than hidden_size={self.hidden_size}, "
                f"got {opts['proj_size']}"
            )

    # -- an immutable value ----------------------------------------------------------------------
    def __getattr__(self, name: str) -> Any:  # the cell's options, as attributes
        if name != "options":
            try:
                return self.options[name]
            except (AttributeError, KeyError):
                pass
        raise AttributeError(f"StackConfig of {self.cell!r} has no attribute {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("StackConfig is immutable; use replace()")

    def _key(self) -> tuple:
        return (
            self.cell,
            self.input_size,
            self.hidden_size,
            self.num_layers,
            self.bias,
            self.bidirectional,
            self.dropout,
            self.backend,
            tuple(self.options.items()),
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StackConfig) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __reduce__(self):
        return (_make_config, (self._key(),))

    def __repr__(self) -> str:
        opts = "".join(f", {k}={v!r}" for k, v in self.options.items())
        return (
            f"StackConfig({self.cell!r}, input_size={self.input_size}, hidden_size="
            f"{self.hidden_size}, num_layers={self.num_layers}, bias={self.bias}, "
            f"bidirectional={self.bidirectional}, dropout={self.dropout}, "
            f"backend={self.backend!r}{opts})"
        )

    def replace(self, **changes: Any) -> StackConfig:
        """A copy with some arguments (or options) changed."""
        args = {
            "input_size": self.input_size,
            "hidden_size": self.hidden_size,
            "num_layers": self.num_layers,
            "bias": self.bias,
            "bidirectional": self.bidirectional,
            "dropout": self.dropout,
            "backend": self.backend,
            **self.options,
            **changes,
        }
        return StackConfig(self.spec, **args)

    # -- derived sizes -------------------------------------------------------------------------
    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def output_size(self) -> int:
        """Features of ``h`` (and of each direction's output): proj_size or hidden_size."""
        return self.options.get("proj_size", 0) or self.hidden_size

    def layer_input_size(self, layer: int) -> int:
        return self.input_size if layer == 0 else self.num_directions * self.output_size

    def params(self) -> tuple[Param, ...]:
        """The cell's parameters that this configuration has, in PyTorch's order."""
        got = self._derived.get("params")
        if got is None:  # every stack call asks: derived once per configuration
            got = tuple(p for p in self.spec.params if p.present(self.options, self.bias))
            self._derived["params"] = got
        return got

    def weight_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every weight's PyTorch name and shape, in PyTorch's ``_flat_weights_names`` order.

        Per layer ``k`` and direction (suffix ``""`` or ``"_reverse"``), the cell's parameters
        (:attr:`fastrnn.cells.Cell.params`): ``weight_ih_l{k}`` (G*H, I_k), ``weight_hh_l{k}``
        (G*H, R), ``bias_ih_l{k}``, ``bias_hh_l{k}`` (G*H,) and, for an LSTM with a
        projection, ``weight_hr_l{k}`` (P, H); R is proj_size or hidden_size.
        """
        return dict(self._weight_shapes())

    def _weight_shapes(self) -> dict[str, tuple[int, ...]]:
        """:meth:`weight_shapes`, computed once: the dict itself, not to be modified."""
        got = self._derived.get("shapes")
        if got is None:
            got = self._derived["shapes"] = self._derive_weight_shapes()
        return got

    def _derive_weight_shapes(self) -> dict[str, tuple[int, ...]]:
        params = self.params()
        shapes: dict[str, tuple[int, ...]] = {}
        for layer in range(self.num_layers):
            sizes = Sizes(
                self.spec.G,
                self.hidden_size,
                self.output_size,
                self.layer_input_size(layer),
                self.options,
            )
            for direction in range(self.num_directions):
                sfx = _suffix(layer, direction)
                for p in params:
                    shapes[p.name + sfx] = p.shape(sizes)
        return shapes

    def weight_names(self) -> list[str]:
        """PyTorch's ``_flat_weights_names``: the order of :meth:`weight_shapes`."""
        return list(self._weight_shapes())

    def state_shapes(self, batch: int) -> dict[str, tuple[int, int, int]]:
        """Shape of each recurrent state by name: ``h`` is ``(L*D, B, R)``, ``c`` (LSTM)
        ``(L*D, B, hidden_size)``."""
        LD = self.num_layers * self.num_directions
        return {s: (LD, batch, self.state_width(s)) for s in self.spec.states}

    def state_width(self, state: str) -> int:
        """Features of a state: ``h`` has ``output_size``, every other state ``hidden_size``."""
        return self.output_size if state == "h" else self.hidden_size


def _make_config(key: tuple) -> StackConfig:
    cell, I, H, L, bias, bidir, dropout, backend, options = key
    return StackConfig(cell, I, H, L, bias, bidir, dropout, backend, **dict(options))


def _suffix(layer: int, direction: int) -> str:
    """PyTorch's parameter-name suffix of a layer and direction."""
    return f"_l{layer}" + ("_reverse" if direction else "")


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
        return nbytes_of(
            [(c.prepared, c.saved) for layer in self.caches for c in layer], self.masks
        )


class StackGrads(NamedTuple):
    """Gradients returned by :func:`stack_backward`."""

    dx: np.ndarray
    dh0: np.ndarray
    dc0: np.ndarray | None
    weights: dict[str, np.ndarray]


def _weights_dict(config: StackConfig, weights: Any) -> dict[str, Any]:
    shapes = config._weight_shapes()
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
# kernels' blocking does not depend on the thread count; tests/test_stack_concurrency.py).
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
        G, H = cfg.spec.G, cfg.hidden_size
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
    packs: Mapping[str, dict] | None = None,
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
        Draws the masks of training: dropout between layers (``dropout > 0`` and more than one
        layer), recurrent dropout (one ``(B, R)`` mask per layer and direction) and zoneout
        (one mask per step, layer and direction and state), in that order per layer, direction
        0 first; a fresh unseeded one when None.
    packs : mapping of str to dict, optional
        By parameter-name suffix (``"_l0"``, ``"_l0_reverse"``, ...), the ``packs`` dict of
        each layer and direction's functional forward: the kernels' packed weights, kept
        between calls (the caller empties a dict when that layer's weights change).

    Returns
    -------
    y : ndarray of shape (T, B, D*R)
        Output of the last layer (both directions concatenated); dtype float32 or float64 by
        the functional API's rule (float64 if any operand is float64).
    h_n : ndarray of shape (L*D, B, R)
    c_n : ndarray of shape (L*D, B, hidden_size), or None for RNN and GRU
    cell_states : ndarray of shape (T, B, D*hidden_size)
        Only with the LSTM option ``return_cell_states``: the last layer's cell state at every
        step (directions concatenated as in ``y``; zero past each sequence's end).
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
    init = _states(cfg, B, {"h": ("h0", h0), "c": ("c0", c0)})
    w = _weights_dict(cfg, weights)
    lengths = check_lengths(lengths, T, B)
    drop = training and cfg.dropout > 0 and cfg.num_layers > 1

    fwd, _ = cfg.spec.functions(cfg.backend)
    params = cfg.params()
    options = cfg.spec.functional_options(cfg.options)
    want_cs = cfg.options.get("return_cell_states", False)
    if training and generator is None and _draws(cfg):
        generator = np.random.default_rng()
    dtype = _dtype_of(x, w)
    D, S = cfg.num_directions, len(cfg.spec.states)
    inp: Any = x
    finals: list[list[np.ndarray]] = [[] for _ in range(S)]  # [state][layer * D + direction]
    caches, masks, cell_states = [], [], []
    for layer in range(cfg.num_layers):
        # drawn here, in order, never on the direction threads: the same bits every run
        noise = [_noise(cfg, T, B, training, generator, dtype) for _ in range(D)]

        def run(direction: int, layer: int = layer, inp: Any = inp, noise=noise) -> tuple:
            idx, sfx = layer * D + direction, _suffix(layer, direction)
            states = [None if s is None else s[idx] for s in init]
            kw = {p.arg: w[p.name + sfx] for p in params}
            if packs is not None:
                kw["packs"] = packs[sfx]
            # -> (y, *final states, [cell states], cache)
            return fwd(
                inp,
                *states,
                training=training,
                lengths=lengths,
                reverse=bool(direction),
                **kw,
                **options,
                **noise[direction],
            )

        outs, layer_caches = [], []
        split = _direction_split(cfg, T, B, layer)
        for y, *rest in _each_direction(D, split, run):
            outs.append(y)
            for i in range(S):
                finals[i].append(rest[i])
            if want_cs and layer == cfg.num_layers - 1:
                cell_states.append(rest[S])
            layer_caches.append(rest[-1])
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
    h_n, *others = (_stacked(f) for f in finals)
    cache = StackCache(cfg, caches, masks, y.dtype, (T, B)) if training else None
    c_n = others[0] if others else None
    if want_cs:
        cs = cell_states[0] if D == 1 else np.concatenate(cell_states, axis=2)
        return y, h_n, c_n, cs, cache
    return y, h_n, c_n, cache


def _stacked(arrays: list[np.ndarray]) -> np.ndarray:
    """``np.stack(arrays)``; a view of a single array (one layer, one direction), whose
    state the stack's caller gets without the copy."""
    return arrays[0][None] if len(arrays) == 1 else np.stack(arrays)


def _draws(cfg: StackConfig) -> bool:
    """Whether a training forward of ``cfg`` draws random masks."""
    zoneout = cfg.options.get("zoneout", ())
    return (
        (cfg.dropout > 0 and cfg.num_layers > 1)
        or cfg.options.get("recurrent_dropout", 0.0) > 0
        or any(p > 0 for p in zoneout)
    )


def _dtype_of(x: Any, weights: Mapping[str, Any]) -> np.dtype:
    """The computation dtype by the functional API's rule: float64 if any operand is."""
    for a in (x, *weights.values()):
        if np.asarray(a).dtype == np.float64:
            return np.dtype(np.float64)
    return np.dtype(np.float32)


def _bernoulli(
    generator: np.random.Generator, shape: tuple[int, ...], p: float, dtype: np.dtype
) -> np.ndarray:
    """An array of 0/1 in ``dtype``, 1 with probability ``p`` rounded to a multiple of 2**-16.

    Zoneout draws T*B*width of these per layer and direction: 16 random bits per element, four
    from each 64-bit draw, make the draw 2-3x faster than a float per element (the draw, not the
    kernel, was most of zoneout's cost at the medium shape).
    """
    n = math.prod(shape)
    words = generator.integers(0, _U64_MAX, size=(n + 3) // 4, dtype=np.uint64, endpoint=True)
    bits = words.view(np.uint16)[:n]
    out = _workspace.empty(shape, dtype)  # kept in the cache: from the kept buffers
    np.less(bits, round(p * 65536), out=out.reshape(n))
    return out


_U64_MAX = np.iinfo(np.uint64).max


def _noise(
    cfg: StackConfig,
    T: int,
    B: int,
    training: bool,
    generator: np.random.Generator | None,
    dtype: np.dtype,
) -> dict[str, Any]:
    """The functional keywords of one layer and direction for recurrent dropout and zoneout.

    Recurrent dropout (training only): ``recurrent_mask``, a (B, R) inverted-dropout mask
    (0, or 1 / (1 - p)) shared by every step. Zoneout: ``zoneout_h`` (and ``zoneout_c``), in
    training a (T, B, width) array of 0/1, 1 where the unit keeps its previous value, drawn
    with probability p (rounded to a multiple of 2**-16: :func:`_bernoulli`); in eval the
    probability p itself (the expectation, as the paper does).
    """
    out: dict[str, Any] = {}
    p = cfg.options.get("recurrent_dropout", 0.0)
    if training and p > 0:
        keep = generator.random((B, cfg.output_size), dtype=dtype) >= p
        out["recurrent_mask"] = keep.astype(dtype) / dtype.type(1.0 - p)
    zoneout = cfg.options.get("zoneout", ())
    if any(q > 0 for q in zoneout):
        for state, q in zip(cfg.spec.states, zoneout, strict=True):
            if training:
                z = _bernoulli(generator, (T, B, cfg.state_width(state)), q, dtype)
            else:
                z = q
            out[f"zoneout_{state}"] = z
    return out


def _states(cfg: StackConfig, batch: int, given: Mapping[str, tuple[str, Any]]) -> list[Any]:
    """The cell's states (or their gradients) among ``given`` (state -> (argument name,
    value)), checked against :meth:`StackConfig.state_shapes`, in the cell's order. A value
    given for a state the cell does not have raises ``ValueError``."""
    shapes = cfg.state_shapes(batch)
    for state, (name, value) in given.items():
        if state not in shapes and value is not None:
            raise ValueError(
                f"{name} is only used by cells with a {state} state (LSTM), not {cfg.spec.title}"
            )
    return [_check_state(given[s][0], given[s][1], shapes[s]) for s in cfg.spec.states]


def stack_backward(
    cache: StackCache,
    dy: Any,
    dh_n: Any = None,
    dc_n: Any = None,
    dcs: Any = None,
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
    dcs : array_like of shape (T, B, D*hidden_size) or None
        Gradient with respect to ``cell_states`` (LSTM with ``return_cell_states``); None for
        zeros.
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
    if dy is not None and np.shape(dy) != (T, B, D * R):
        raise ValueError(f"dy must have the shape of y, {(T, B, D * R)}, got {np.shape(dy)}")
    upstream = _states(cfg, B, {"h": ("dh_n", dh_n), "c": ("dc_n", dc_n)})
    want_cs = cfg.options.get("return_cell_states", False)
    if dcs is not None:
        H = cfg.hidden_size
        if not want_cs:
            raise ValueError(
                "dcs is the gradient of the cell states, which only a forward "
                "with return_cell_states=True returns"
            )
        if np.shape(dcs) != (T, B, D * H):
            raise ValueError(
                f"dcs must have the shape of cell_states, {(T, B, D * H)}, got {np.shape(dcs)}"
            )

    _, bwd = cfg.spec.functions(cfg.backend)
    params = cfg.params()
    states = cfg.spec.states
    grads: dict[str, np.ndarray] = {}
    initial: list[list[Any]] = [[None] * (cfg.num_layers * D) for _ in states]
    dout: Any = dy
    for layer in range(cfg.num_layers - 1, -1, -1):

        def run(direction: int, layer: int = layer, dout: Any = dout) -> Any:
            idx = layer * D + direction
            dy_d = None if dout is None else dout[:, :, direction * R : (direction + 1) * R]
            d_n = [None if u is None else u[idx] for u in upstream]
            kw = {}
            if want_cs and layer == cfg.num_layers - 1 and dcs is not None:
                H = cfg.hidden_size
                kw["dcs"] = dcs[:, :, direction * H : (direction + 1) * H]
            return bwd(cache.caches[layer][direction], dy_d, *d_n, **kw)

        dinp, n_before = None, len(grads)
        split = _direction_split(cfg, T, B, layer)
        for direction, g in enumerate(_each_direction(D, split, run)):
            idx, sfx = layer * D + direction, _suffix(layer, direction)
            for i, s in enumerate(states):
                initial[i][idx] = getattr(g, f"d{s}0")
            for p in params:
                grads[p.name + sfx] = getattr(g, "d" + p.arg)
            dinp = g.dx if dinp is None else dinp + g.dx
        if on_layer_grads is not None:
            on_layer_grads(layer, dict(list(grads.items())[n_before:]))  # this layer's
        if layer > 0 and cache.masks[layer - 1] is not None:
            dinp = dinp * cache.masks[layer - 1]
        dout = dinp
    dh0, *others = (_stacked(d) for d in initial)
    ordered = {name: grads[name] for name in cfg.weight_names()}
    return StackGrads(dout, dh0, others[0] if others else None, ordered)


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
        drawn from U(-k, k) with k = 1 / sqrt(hidden_size) (weights and biases alike), but for
        the parameters whose :attr:`fastrnn.cells.Param.init` is ``"zeros"`` or ``"ones"``
        (they draw nothing).
    """
    k = 1.0 / math.sqrt(config.hidden_size)
    init = {p.name: p.init for p in config.params()}
    out = {}
    for name, shape in config.weight_shapes().items():
        how = init[name[: name.rindex("_l")]]
        if how == "uniform":
            out[name] = rng.uniform(-k, k, shape).astype(dtype)
        else:
            out[name] = (np.zeros if how == "zeros" else np.ones)(shape, dtype)
    return out
