"""The stable kernel-level API: one forward/backward pair per cell, on the Cython kernels.

Every function here has the same name, signature and results as its twin in
:mod:`fastrnn.reference` (the NumPy oracle). One layer, one direction, time-major.

Shapes (PyTorch's): ``x`` is ``(T, B, I)``; ``h0``/``c0``/``h_n``/``c_n`` are ``(B, H)``;
``w_ih`` is ``(G*H, I)``, ``w_hh`` is ``(G*H, H)``, biases are ``(G*H,)`` with G = 1 (RNN),
4 (LSTM, gates i, f, g, o) or 3 (GRU, gates r, z, n). Outputs ``y`` are ``(T, B, H)``.

Guarantees:

* Inputs may have any memory layout (non-contiguous, Fortran-ordered, negative strides,
  read-only); they are never modified.
* The computation runs in float64 if any floating-point operand is float64, else in float32.
  float16 operands are converted, and so are integer operands whose every value is exact in
  the computation dtype (``|v| <= 2**24`` for float32, ``2**53`` for float64; others raise
  ``ValueError``); complex, boolean, object, string and extended-precision arrays are refused.
* Sizes beyond the 32-bit BLAS (T * B, G * H or I above 2**31 - 1) raise ``ValueError`` before
  anything is allocated; an allocation that fails raises ``MemoryError``.
* NaN and infinities propagate (IEEE 754) unless ``check_finite=True``, which refuses them.
* ``training=False`` returns ``cache=None`` and keeps nothing; a training forward's cache holds what
  BPTT needs (``cache.nbytes`` tells how much).
* ``lengths`` (int array of shape (B,), values in [1, T], any order) gives PyTorch's
  packed-sequence semantics: outputs past a sequence's end are zero and the final state is the
  state at each sequence's own last step. Short sequences cost no recurrent work past their end.
* The returned ``y`` is also what the backward reads: do not modify it in place before calling
  the backward.
* ``T == 0`` or ``B == 0`` return empty outputs and the initial state (zeros when omitted).
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fastrnn import _workspace as _ws
from fastrnn._common import (
    Cache,
    GRUGrads,
    LSTMProjGrads,
    Prepared,
    RNNGrads,
    as_grad,
    cell_extras,
    cell_states_grad,
    check_cache,
    grads_of,
    prepare,
)
from fastrnn._isa import KERNELS as _k
from fastrnn._isa import get_isa
from fastrnn._kernels import _rows
from fastrnn._threads import blas_single_thread, get_num_threads
from fastrnn.cells import GRU as _GRU
from fastrnn.cells import LSTM as _LSTM
from fastrnn.cells import RNN as _RNN
from fastrnn.cells import Cell
from fastrnn.reference import LN_EPS

__all__ = [
    "gru_backward",
    "gru_forward",
    "lstm_backward",
    "lstm_forward",
    "rnn_backward",
    "rnn_forward",
]

BACKEND = "cython"


@functools.lru_cache(maxsize=64)
def _full_batch(T: int, B: int) -> np.ndarray:
    """``batch_sizes`` of a batch without lengths (B at every step), read-only and shared: the
    kernels take it as ``const int[::1]``."""
    a = np.full(T, B, dtype=np.intc)
    a.flags.writeable = False
    return a


# A variable-length batch in any order runs the kernels on its rows sorted by length: x and dy
# are gathered into that order, y and dx put back (_Schedule). NumPy does that on the calling
# thread alone; from _ROWS_SPLIT_MIN bytes a (T, B, F) permutation splits its steps over the
# kernels' team (fastrnn._kernels._rows), when that team is awake: the previous split ended
# within _BURST_S (the permutations of a training loop follow each other and the kernels), as
# for _step_team. At T=200 B=32 I=64 H=128 (an RNN, whose steps run on one thread) the
# permutations took 0.67 ms of a 3.9 ms forward + backward on one thread.
_ROWS_SPLIT_MIN = 1 << 18
_rows_split_end = -1.0  # time.perf_counter() at the end of the last split permutation


def _rows_team(a: np.ndarray) -> int:
    """Threads for a row permutation of ``a`` (1: NumPy's, on the calling thread)."""
    global _rows_split_end
    if a.ndim != 3 or a.nbytes < _ROWS_SPLIT_MIN or not a.flags.c_contiguous:
        return 1
    n = get_num_threads()
    if n < 2 or not (
        _TEAM_SPINS or (not _TEAM_SLEEPS and time.perf_counter() - _rows_split_end < _BURST_S)
    ):
        _rows_split_end = time.perf_counter()  # the next one, soon after, may split
        return 1
    return min(n, a.shape[0])


def _gather(a: np.ndarray, index: np.ndarray, axis: int) -> np.ndarray:
    """``np.take(a, index, axis)`` into a C-contiguous array from the kept buffers (a large
    one reuses pages instead of faulting fresh ones in); ``mode="clip"`` only spares NumPy's
    copy-then-check of ``out`` (``index`` is a permutation of that axis). The batch axis of a
    large time-major array is gathered on the kernels' team (:func:`_rows_team`)."""
    global _rows_split_end
    shape = a.shape[:axis] + (len(index),) + a.shape[axis + 1 :]
    out = _ws.empty(shape, a.dtype)
    n = _rows_team(a) if axis == 1 else 1
    if n == 1:
        return np.take(a, index, axis=axis, out=out, mode="clip")
    _rows.gather_rows(a.view(np.uint8), index, out.view(np.uint8), n)
    _rows_split_end = time.perf_counter()
    return out


class _Schedule:
    """Rows sorted by decreasing length, and how many are active at each step.

    With ``reverse`` the kernel also sees each sequence reversed within its own length: step
    ``t < L_b`` of row ``b`` reads the caller's step ``L_b - 1 - t`` (padding stays in place).
    That map is its own inverse, and :meth:`rows` / :meth:`unrows` apply it to every time-major
    (3-D) array together with the row sort, in one gather.
    """

    __slots__ = ("batch_sizes", "flip", "inverse", "order", "steps")

    def __init__(self, lengths: np.ndarray | None, T: int, B: int, reverse: bool = False) -> None:
        # flip: every sequence has length T, so the map is a[::-1]. Otherwise steps[t, b] is the
        # caller's step that row b reads at kernel step t (None: identity).
        self.flip = reverse and lengths is None
        self.steps = None
        if lengths is None:  # every row runs all T steps: the common case, kept short
            self.order = self.inverse = None
            self.batch_sizes = _full_batch(T, B)
            return
        if reverse and lengths is not None:
            t = np.arange(T)[:, None]
            self.steps = np.where(t < lengths[None, :], lengths[None, :] - 1 - t, t)
        order = np.argsort(-lengths, kind="stable")
        sorted_lengths = lengths[order]
        # batch_sizes[t] = #{b : lengths[b] > t}
        self.batch_sizes = (
            B - np.searchsorted(sorted_lengths[::-1], np.arange(T), side="right")
        ).astype(np.intc)
        if np.array_equal(order, np.arange(B)):
            self.order = self.inverse = None
        else:
            self.order = order
            self.inverse = np.argsort(order)

    def rows(self, a: np.ndarray | None, axis: int) -> np.ndarray | None:
        """Batch rows of ``a`` in kernel (sorted) order (and kernel time order if reversed)."""
        if a is not None and self.flip and a.ndim == 3:
            return np.ascontiguousarray(a[::-1])
        if a is not None and self.steps is not None and a.ndim == 3:
            cols = np.arange(a.shape[1]) if self.order is None else self.order
            # ascontiguousarray: with a trailing axis of size 1, NumPy's gather is not C-ordered
            return np.ascontiguousarray(a[self.steps[:, cols], cols[None, :]])
        if a is None or self.order is None:
            return a
        return _gather(a, self.order, axis)

    def unrows_owned(self, a: np.ndarray) -> np.ndarray:
        """:meth:`unrows` of a (T, B, .) array that nobody else holds (a kernel's output the
        caller gets): the rows are put back in place, a few steps at a time, so that no second
        (T, B, .) array is allocated."""
        global _rows_split_end
        if self.order is None or self.steps is not None or self.flip:
            return self.unrows(a, 1)
        n = _rows_team(a)
        if n > 1:  # each thread moves a step's rows through its row of scratch
            scratch = np.empty((n, a.shape[1] * a.shape[2] * a.itemsize), np.uint8)
            _rows.permute_rows(a.view(np.uint8), self.inverse, scratch, n)
            _rows_split_end = time.perf_counter()
            return a
        steps = max(1, (1 << 16) // max(1, a.shape[1] * a.shape[2]))
        for t0 in range(0, a.shape[0], steps):
            block = a[t0 : t0 + steps]
            block[...] = block[:, self.inverse]
        return a

    def unrows(self, a: np.ndarray, axis: int) -> np.ndarray:
        """Batch rows of ``a`` back in the caller's order (and time order if reversed)."""
        if self.flip and a.ndim == 3:
            return np.ascontiguousarray(a[::-1])
        if self.steps is not None and a.ndim == 3:
            cols = np.arange(a.shape[1]) if self.inverse is None else self.inverse
            return np.ascontiguousarray(a[self.steps, cols[None, :]])
        if self.order is None:
            return a
        return _gather(a, self.inverse, axis)


@dataclass(eq=False)
class _Saved:
    """What a training forward of the kernels keeps for its backward: the operands in kernel row
    order and the activations the variant saves (None where it saves none)."""

    s: _Schedule
    x: np.ndarray  # (T, B, I)
    h0: np.ndarray  # (B, R)
    y: np.ndarray  # (T, B, R)
    c0: np.ndarray | None = None  # LSTM (B, H)
    gates: np.ndarray | None = None  # (T, B, G) activated gates (LSTM, GRU)
    cs: np.ndarray | None = None  # LSTM cell states (T, B, H)
    ms: np.ndarray | None = None  # projected LSTM: o * tanh(c_t), (T, B, H)
    hns: np.ndarray | None = None  # GRU: W_hn h_{t-1} + b_hn, (T, B, H)
    rhs: np.ndarray | None = None  # GRU reset-before: r * h_{t-1}, (T, B, H)
    # the cell's optional operands in kernel row order (keyword -> array), as its kernels take
    # them, and what they keep: LSTM hds (T, B, H) h_{t-1} * recurrent_mask, cnew (T, B, H)
    # c_t before zoneout
    extras: dict[str, np.ndarray] | None = None
    hds: np.ndarray | None = None
    cnew: np.ndarray | None = None
    noise: dict[str, Any] = field(default_factory=dict)  # RNN, GRU: _noise_keywords(...)
    xs: np.ndarray | None = None  # layer norm: normalized W_ih x, (T, B, G)
    hs: np.ndarray | None = None  # layer norm: normalized W_hh h_{t-1}, (T, B, G)
    cn: np.ndarray | None = None  # LSTM layer norm: normalized c_t, (T, B, H)
    rstd: np.ndarray | None = None  # layer norm: 1/sqrt(var + eps) of each row, (T, B, 3 or 2)


# A thread's share of one step's recurrent GEMM should be at least this many multiply-adds
# (about 30-70 us of arithmetic on one core): below it the per-step barrier costs more than the
# split saves. On a machine whose vCPUs are shared, a thread that reaches the barrier first
# waits for the other vCPU to be scheduled again, so the threshold is set for the median, not
# for the best case: at 1 << 16 the 2-thread RNN longseq forward (T=1000 B=16 H=128, 2.6e5
# multiply-adds a step) had a median 5x its minimum on the development machine, and one thread
# was faster in the median (benchmarks/bench_team.py compares the rule with fixed teams).
_MIN_WORK_PER_THREAD = 1 << 20


# The kernels call scipy's BLAS only under ``set_isa("blas")``, or where a packing buffer could
# not be allocated (their fallback; BLAS's own threads then share the cores with the team's). Only
# then is BLAS held on one thread around a call: the switch costs three ctypes calls and a lock,
# about 1 us, which was a tenth of a T=1 B=1 call.
_UNGUARDED = contextlib.nullcontext()


def _blas_guard() -> contextlib.AbstractContextManager[None]:
    """What a kernel call runs under: :func:`blas_single_thread` when the kernels call BLAS."""
    return blas_single_thread() if get_isa() == "blas" else _UNGUARDED


def _team(p: Prepared) -> int:
    """Threads for a kernel call: get_num_threads(), fewer when a step is too small to split.

    Threads split the H hidden units in runs of 16 (``thread_units_isa`` in src_pyx/_blocks.pxd;
    blocks of about 64 when the GEMMs go to BLAS), so at most H // 16 threads have work."""
    return _team_for(p.B, p.w_hh.shape[0], p.H)


def _team_for(B: int, GH: int, H: int) -> int:
    """:func:`_team` of a call with B rows and a (GH, H) ``w_hh``."""
    work = B * GH * H
    if work < 2 * _MIN_WORK_PER_THREAD:  # one thread whatever the count: skip looking it up
        return 1
    return max(1, min(get_num_threads(), H // 16, work // _MIN_WORK_PER_THREAD))


def _prepacked(module: Any, p: Prepared, packs: dict | None, n: int) -> Any:
    """The weights of ``p`` packed for a forward of ``module`` on ``n`` threads, from ``packs``
    (packed and stored there on a miss); None without ``packs``."""
    if packs is None:
        return None
    key = (module.__name__, p.dtype.char, n)
    packed = packs.get(key)
    if packed is None:
        packed = packs[key] = module.prepack(p.w_ih, p.w_hh, p.w_hh.shape[0] // p.H, n)
    return packed


def _empty_forward(p: Prepared) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """T == 0 or B == 0: nothing to compute."""
    y = np.zeros((p.T, p.B, p.H), p.dtype)
    return y, p.h0.copy(), None if p.c0 is None else p.c0.copy()


def _empty_backward(
    p: Prepared, dy: Any, states: dict[str, tuple[Any, int]], out_size: int | None = None
) -> list[np.ndarray | None]:
    """T == 0 or B == 0: validate the upstream gradients and return ``[dx, <state grads>, dw_ih,
    dw_hh, db_ih, db_hh]``. Each state's gradient passes through unchanged (zeros when None);
    every weight gradient is zero. ``states`` maps ``"dh_n"``/``"dc_n"`` to (array, width)."""
    as_grad("dy", dy, (p.T, p.B, out_size or p.H), p.dtype)
    passed = []
    for name, (g, width) in states.items():
        g_a = as_grad(name, g, (p.B, width), p.dtype)
        passed.append(np.zeros((p.B, width), p.dtype) if g_a is None else g_a)
    db = None if p.b_ih is None else np.zeros(p.w_hh.shape[0], p.dtype)
    db_hh = None if db is None else db.copy()
    return [np.zeros_like(p.x), *passed, np.zeros_like(p.w_ih), np.zeros_like(p.w_hh), db, db_hh]


def _plain(p: Prepared, training: bool, reverse: bool) -> bool:
    """Whether a forward is a plain cell's inference over full-length sequences (no lengths, no
    option, forward in time): what :func:`_plain_inference` runs."""
    return not training and p.lengths is None and p.extras is None and not reverse


def _plain_inference(
    cell: Cell, p: Prepared, packs: dict | None, relu: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``y, h_n, c_n`` (None but for the LSTM) of an inference forward that :func:`_plain`
    accepts, through the kernels' raw-buffer entry that ``layer.step`` uses
    (:func:`_step_forward`): the same loop, packed weights (shared with ``packs``) and bits as
    the general entry, without its row schedule and typed memoryviews (about 3 us of the 13 a
    T=1 B=1 call took)."""
    T, B, H, G = p.T, p.B, p.H, p.w_hh.shape[0]
    bias, b_hn = _step_biases(cell, p.b_ih, p.b_hh, H, G, p.dtype)
    y = _ws.empty((T, B, H), p.dtype)
    h_n = np.empty((B, H), p.dtype)
    c_n = None if p.c0 is None else np.empty((B, H), p.dtype)
    ops = (p.w_ih, p.w_hh, bias, b_hn, packs, {})
    _step_forward(cell, p.x, p.h0, p.c0, ops, y, h_n, c_n, 0, T, B, relu)
    return y, h_n, c_n


def _kernel_extras(p: Prepared, s: _Schedule, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The optional operands among ``names`` that were given, as the kernels take them: masks in
    kernel row (and time) order, and a zoneout probability (eval) as one (1, B, width) weight
    that serves every step."""
    out = {}
    if p.extras is None:  # no option given: the common call
        return out
    for name in names:
        v = p.extra(name)
        if v is None:
            continue
        if isinstance(v, float):
            width = p.H if name == "zoneout_c" else p.h0.shape[1]
            v = np.full((1, p.B, width), v, p.dtype)
        elif name.startswith("zoneout"):
            v = s.rows(v, 1)
        elif name == "recurrent_mask":
            v = s.rows(v, 0)
        out[name] = v
    return out


def _bias_sum(p: Prepared) -> np.ndarray:
    if p.b_ih is None:
        return np.zeros(p.w_hh.shape[0], p.dtype)
    return p.b_ih + p.b_hh


def _upstream(p: Prepared, s: _Schedule, dy: Any, states: dict[str, Any]):
    """Validated upstream gradients in kernel row order (zeros where None)."""
    dy_a = as_grad("dy", dy, (p.T, p.B, p.H), p.dtype)
    dy_a = np.zeros((p.T, p.B, p.H), p.dtype) if dy_a is None else s.rows(dy_a, 1)
    out = []
    for name, g in states.items():
        g_a = as_grad(name, g, (p.B, p.H), p.dtype)
        out.append(np.zeros((p.B, p.H), p.dtype) if g_a is None else s.rows(g_a, 0).copy())
    return dy_a, out


# ---------------------------------------------------------------------------------------------
# Elman RNN
# ---------------------------------------------------------------------------------------------
def rnn_forward(
    x,
    h0,
    w_ih,
    w_hh,
    b_ih=None,
    b_hh=None,
    *,
    nonlinearity="tanh",
    training=True,
    lengths=None,
    reverse=False,
    check_finite=False,
    recurrent_mask=None,
    zoneout_h=None,
    packs=None,
):
    """Elman RNN over a whole sequence: ``h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)``.

    Parameters
    ----------
    x : array_like of shape (T, B, I)
        Input sequence, time-major.
    h0 : array_like of shape (B, H) or None
        Initial hidden state; None for zeros.
    w_ih : array_like of shape (H, I)
    w_hh : array_like of shape (H, H)
    b_ih, b_hh : array_like of shape (H,) or None
        Biases; pass both or neither.
    nonlinearity : {"tanh", "relu"}, default="tanh"
    training : bool, default=True
        Keep what :func:`rnn_backward` needs; with False the returned cache is None.
    lengths : array_like of int, shape (B,), optional
        Length of each sequence in a padded batch (values in [1, T], any order).
    reverse : bool, default=False
        Run each sequence backward in time, from its own last step (``lengths[b] - 1``) to step
        0: the reverse direction of a bidirectional layer. Outputs stay in the caller's time
        order and ``h_n`` is the state after step 0.
    check_finite : bool, default=False
        Raise ``ValueError`` naming the operand if any input, state, weight or bias holds a NaN
        or an infinity (two extra passes over each). Without it, NaN and infinities propagate
        through the arithmetic as IEEE 754 says; they are never dropped.
    recurrent_mask : array_like of shape (B, H), optional
        Recurrent (variational) dropout: ``W_hh (h_{t-1} * recurrent_mask)`` at every step (an
        inverted-dropout mask, 0 or 1 / (1 - p)).
    zoneout_h : array_like of shape (T, B, H), or float in [0, 1], optional
        Zoneout: ``h_t = zoneout_h[t] * h_{t-1} + (1 - zoneout_h[t]) * act(...)`` (1 keeps the
        previous value); a number is every unit's weight (what eval uses: the expectation).
    packs : dict, optional
        A dict the caller keeps beside ``w_ih`` and ``w_hh`` and empties when they change: the
        kernels' packed copy of the two weights is stored in it on the first call and reused
        by the later ones, which then skip packing (the same bits); with it the time the last
        call ended, so that calls in a loop share a team of threads still awake (README,
        "Inference: streaming steps and int8"). Nothing checks that the weights are still
        those packed: clear it after changing them. Ignored by the LSTM with ``w_hr``, the
        ``reset_after=False`` GRU and the layer-normalized LSTM and GRU (``ln_ih``), which
        pack per call.

    Returns
    -------
    y : ndarray of shape (T, B, H)
        Hidden state at every step (zero past a sequence's length).
    h_n : ndarray of shape (B, H)
        Hidden state at each sequence's last step.
    cache : Cache or None
        Pass to :func:`rnn_backward`.
    """
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
    extras = cell_extras(_RNN, recurrent_mask=recurrent_mask, zoneout_h=zoneout_h)
    p = prepare(_RNN, x, h0, None, w_ih, w_hh, b_ih, b_hh, lengths, None, check_finite, extras)
    relu = nonlinearity == "relu"
    options = {"nonlinearity": nonlinearity, "reverse": reverse}
    if p.T == 0 or p.B == 0:
        y, h_n, _ = _empty_forward(p)
        cache = Cache(BACKEND, _RNN, p, options)
        return y, h_n, cache if training else None
    if _plain(p, training, reverse):
        y, h_n, _ = _plain_inference(_RNN, p, packs, relu)
        return y, h_n, None
    s = _Schedule(p.lengths, p.T, p.B, reverse)
    xk, h0k = s.rows(p.x, 1), s.rows(p.h0, 0)
    noise = _noise_keywords(p, s, training)
    if training and ("zoneout" in noise or "zoneout_p" in noise):
        noise["acts"] = _ws.empty((p.T, p.B, p.H), p.dtype)  # y_t is not act(...) with zoneout
    y = _ws.empty((p.T, p.B, p.H), p.dtype)
    h_n = _ws.empty((p.B, p.H), p.dtype)
    with _blas_guard():
        n = _team(p)
        _k.rnn.forward(xk, h0k, p.w_ih, p.w_hh, _bias_sum(p), s.batch_sizes, y, h_n, relu, n,
                       training, **noise, prepacked=_prepacked(_k.rnn, p, packs, n))  # fmt: skip
    cache = None
    if training:
        cache = Cache(BACKEND, _RNN, p, options, _Saved(s, xk, h0k, y, noise=noise))
    return s.unrows(y, 1), s.unrows(h_n, 0), cache


def rnn_backward(cache, dy, dh_n=None):
    """Backpropagation through time for :func:`rnn_forward`.

    Parameters
    ----------
    cache : Cache
        From a training :func:`rnn_forward`.
    dy : array_like of shape (T, B, H) or None
        Gradient of the loss with respect to ``y``; None for zeros.
    dh_n : array_like of shape (B, H) or None
        Gradient with respect to ``h_n``; None for zeros.

    Returns
    -------
    RNNGrads
        ``dx`` (T, B, I), ``dh0`` (B, H), ``dw_ih``, ``dw_hh``, ``db_ih``, ``db_hh`` (None for a
        bias-free forward), summed over every step.
    """
    c = check_cache(cache, BACKEND, _RNN)
    p, d = c.prepared, c.saved
    if c.empty:
        return RNNGrads(*_empty_backward(p, dy, {"dh_n": (dh_n, p.H)}))
    s = d.s
    dyk, (dh,) = _upstream(p, s, dy, {"dh_n": dh_n})
    G = p.w_hh.shape[0]
    dgates = _ws.empty((p.T, p.B, G), p.dtype)
    dx = _ws.empty((p.T, p.B, p.I), p.dtype)
    dw_ih, dw_hh = _ws.empty(p.w_ih.shape, p.dtype), _ws.empty(p.w_hh.shape, p.dtype)
    db = np.empty(G, p.dtype)
    noise = dict(d.noise)
    if "rmask" in noise:
        noise["dhd"] = _ws.empty((p.B, p.H), p.dtype)
    with _blas_guard():
        _k.rnn.backward(
            d.x,
            d.h0,
            p.w_ih,
            p.w_hh,
            s.batch_sizes,
            d.y,
            dyk,
            dh,
            dgates,
            dx,
            dw_ih,
            dw_hh,
            db,
            c.options["nonlinearity"] == "relu",
            _team(p),
            **noise,
        )
    db_ih, db_hh = (None, None) if p.b_ih is None else (db, db.copy())
    return RNNGrads(s.unrows_owned(dx), s.unrows(dh, 0), dw_ih, dw_hh, db_ih, db_hh)


# ---------------------------------------------------------------------------------------------
# LSTM
# ---------------------------------------------------------------------------------------------
def lstm_forward(
    x,
    h0,
    c0,
    w_ih,
    w_hh,
    b_ih=None,
    b_hh=None,
    *,
    training=True,
    lengths=None,
    w_hr=None,
    reverse=False,
    check_finite=False,
    w_peephole=None,
    ln_ih=None,
    ln_hh=None,
    ln_c=None,
    ln_c_bias=None,
    recurrent_mask=None,
    zoneout_h=None,
    zoneout_c=None,
    return_cell_states=False,
    packs=None,
):
    """LSTM over a whole sequence, PyTorch's gates i, f, g, o.

    ``c_t = f * c_{t-1} + i * g``, ``h_t = o * tanh(c_t)`` with
    ``[i, f, g, o] = [sig, sig, tanh, sig](W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)``.
    With a projection ``w_hr`` (PyTorch's ``proj_size`` P): ``h_t = W_hr (o * tanh(c_t))``.

    Parameters
    ----------
    x : array_like of shape (T, B, I)
    h0 : array_like of shape (B, H), (B, P) with ``w_hr``, or None
        Initial hidden state; None for zeros.
    c0 : array_like of shape (B, H) or None
        Initial cell state; None for zeros.
    w_ih : array_like of shape (4H, I)
    w_hh : array_like of shape (4H, H), (4H, P) with ``w_hr``
    b_ih, b_hh : array_like of shape (4H,) or None
    training : bool, default=True
    lengths : array_like of int, shape (B,), optional
    w_hr : array_like of shape (P, H), optional
        Projection of the hidden state (``weight_hr_l{k}`` in PyTorch).
    reverse : bool, default=False
        Run each sequence backward in time from its own last step; see :func:`rnn_forward`.
    check_finite : bool, default=False
        Raise ``ValueError`` naming the operand if any input, state, weight or bias holds a NaN
        or an infinity (two extra passes over each). Without it, NaN and infinities propagate
        through the arithmetic as IEEE 754 says; they are never dropped.
    w_peephole : array_like of shape (3, H), optional
        Peephole weights of ``i``, ``f`` and ``o`` (Gers & Schmidhuber):
        ``a_i += p_i * c_{t-1}``, ``a_f += p_f * c_{t-1}``, ``a_o += p_o * c_t``.
    ln_ih, ln_hh : array_like of shape (4H,), optional
        Layer normalization (Ba, Kiros & Hinton 2016), given together with ``ln_c`` and
        ``ln_c_bias``: ``a = LN(W_ih x_t; ln_ih) + LN(W_hh h_{t-1}; ln_hh) + b_ih + b_hh`` and
        ``h_t = o * tanh(LN(c_t; ln_c, ln_c_bias))``, where ``LN(v; g, b) = g * (v - mean) /
        sqrt(var + 1e-5) + b`` over each row's features (``fastrnn.reference.LN_EPS``). The
        backward returns their gradients as ``dln_ih``, ``dln_hh``, ``dln_c``, ``dln_c_bias``.
    ln_c, ln_c_bias : array_like of shape (H,), optional
        Gain and bias of the cell state's layer norm.
    recurrent_mask : array_like of shape (B, H), optional
        Recurrent dropout: ``W_hh`` multiplies ``h_{t-1} * recurrent_mask`` at every step (one
        mask for the whole sequence, e.g. 0 or ``1 / (1 - p)``).
    zoneout_h, zoneout_c : array_like of shape (T, B, H), or float in [0, 1], optional
        Zoneout: ``h_t = z_t * h_{t-1} + (1 - z_t) * h~_t`` with ``h~_t`` the cell's new value
        (likewise ``c_t``); in training ``z`` is usually a 0/1 mask (1 keeps the previous
        value), in eval the probability itself (the expectation).
    return_cell_states : bool, default=False
        Also return every step's cell state ``cs``.
    packs : dict, optional
        A dict the caller keeps beside ``w_ih`` and ``w_hh`` and empties when they change: the
        kernels' packed copy of the two weights is stored in it on the first call and reused
        by the later ones, which then skip packing (the same bits); with it the time the last
        call ended, so that calls in a loop share a team of threads still awake (README,
        "Inference: streaming steps and int8"). Nothing checks that the weights are still
        those packed: clear it after changing them. Ignored by the LSTM with ``w_hr``, the
        ``reset_after=False`` GRU and the layer-normalized LSTM and GRU (``ln_ih``), which
        pack per call.

    Returns
    -------
    y : ndarray of shape (T, B, H), (T, B, P) with ``w_hr``
    h_n : ndarray of shape (B, H), (B, P) with ``w_hr``
    c_n : ndarray of shape (B, H)
    cs : ndarray of shape (T, B, H)
        Only with ``return_cell_states``: ``c_t`` at every step, zero past each length. Like
        ``y``, the backward reads it: do not modify it in place before the backward.
    cache : Cache or None
        Pass to :func:`lstm_backward`.
    """
    extras = cell_extras(_LSTM, w_hr, w_peephole=w_peephole, ln_ih=ln_ih, ln_hh=ln_hh, ln_c=ln_c,
                         ln_c_bias=ln_c_bias, recurrent_mask=recurrent_mask,
                         zoneout_h=zoneout_h, zoneout_c=zoneout_c)  # fmt: skip
    p = prepare(_LSTM, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, w_hr, check_finite, extras)
    if p.extra("ln_ih") is not None:
        return _lstm_ln_forward(p, training, reverse, return_cell_states)
    if p.w_hr is not None:
        if return_cell_states:
            raise ValueError("return_cell_states cannot be combined with w_hr (a projection)")
        return _lstm_proj_forward(p, training, reverse)
    options = {"reverse": reverse, "return_cell_states": bool(return_cell_states)}
    if p.T == 0 or p.B == 0:
        y, h_n, c_n = _empty_forward(p)
        cache = Cache(BACKEND, _LSTM, p, options) if training else None
        if return_cell_states:
            return y, h_n, c_n, np.zeros((p.T, p.B, p.H), p.dtype), cache
        return y, h_n, c_n, cache
    if _plain(p, training, reverse) and not return_cell_states:
        return (*_plain_inference(_LSTM, p, packs), None)
    s = _Schedule(p.lengths, p.T, p.B, reverse)
    xk, h0k, c0k = s.rows(p.x, 1), s.rows(p.h0, 0), s.rows(p.c0, 0)
    G, T, B, H = p.w_hh.shape[0], p.T, p.B, p.H
    ext = _kernel_extras(p, s, _LSTM_EXTRAS)
    # inference keeps only a ring of a few steps' gates (the kernel projects x in chunks)
    steps = T if training else _k.lstm.ring_steps(T, B)
    gates = _ws.empty((steps, B, G), p.dtype)
    y = _ws.empty((T, B, H), p.dtype)
    cs = _ws.empty((T if training or return_cell_states else 1, B, H), p.dtype)
    h_n, c_n = _ws.empty((B, H), p.dtype), _ws.empty((B, H), p.dtype)
    if "recurrent_mask" in ext:  # h_{t-1} * mask: every step's (training), else a ring of 2
        ext["hds"] = _ws.empty((T if training else min(T, 2), B, H), p.dtype)
    if "zoneout_c" in ext:  # c_t before zoneout (every step's for BPTT, else one)
        ext["cnew"] = _ws.empty((T if training else 1, B, H), p.dtype)
    with _blas_guard():
        n = _team(p)
        _k.lstm.forward(
            xk,
            h0k,
            c0k,
            p.w_ih,
            p.w_hh,
            _bias_sum(p),
            s.batch_sizes,
            gates,
            y,
            cs,
            h_n,
            c_n,
            training,
            n,
            cell_states=bool(return_cell_states),
            **ext,
            prepacked=_prepacked(_k.lstm, p, packs, n),
        )
    cache = None
    if training:
        saved = _Saved(s, xk, h0k, y, c0=c0k, gates=gates, cs=cs, extras=ext)
        cache = Cache(BACKEND, _LSTM, p, options, saved)
    out = s.unrows(y, 1), s.unrows(h_n, 0), s.unrows(c_n, 0)
    if return_cell_states:
        return *out, s.unrows(cs, 1), cache
    return *out, cache


# The LSTM kernels' optional operands, by functional keyword (layer norm aside).
_LSTM_EXTRAS = ("w_peephole", "recurrent_mask", "zoneout_h", "zoneout_c")


def lstm_backward(cache, dy, dh_n=None, dc_n=None, *, dcs=None):
    """Backpropagation through time for :func:`lstm_forward`.

    Parameters
    ----------
    cache : Cache
        From a training :func:`lstm_forward`.
    dy : array_like of shape (T, B, H) or None
    dh_n : array_like of shape (B, H), (B, P) after a forward with ``w_hr``, or None
    dc_n : array_like of shape (B, H) or None
    dcs : array_like of shape (T, B, H) or None
        Gradient with respect to ``cs`` (a forward with ``return_cell_states``); None for zeros.

    Returns
    -------
    LSTMGrads or LSTMProjGrads
        ``dx`` (T, B, I), ``dh0``, ``dc0`` (B, H), ``dw_ih``, ``dw_hh``, ``db_ih``, ``db_hh``;
        after a forward with ``w_hr``, an :class:`LSTMProjGrads` with ``dh0`` of shape (B, P)
        and one more field, ``dw_hr`` (P, H); after a forward with ``w_peephole``, one more
        field ``dw_peephole`` (3, H).
    """
    c = check_cache(cache, BACKEND, _LSTM)
    p, d = c.prepared, c.saved
    dcs = cell_states_grad(c, dcs)
    if p.w_hr is not None:
        return _lstm_proj_backward(c, dy, dh_n, dc_n)
    if p.extra("ln_ih") is not None:
        return _lstm_ln_backward(c, dy, dh_n, dc_n)
    wp = p.extra("w_peephole")
    if c.empty:
        fields = _empty_backward(p, dy, {"dh_n": (dh_n, p.H), "dc_n": (dc_n, p.H)})
        return grads_of(_LSTM, fields, {"dw_peephole": None if wp is None else wp * 0})
    s = d.s
    dyk, (dh, dc) = _upstream(p, s, dy, {"dh_n": dh_n, "dc_n": dc_n})
    G = p.w_hh.shape[0]
    dgates = _ws.empty((p.T, p.B, G), p.dtype)
    dx = _ws.empty((p.T, p.B, p.I), p.dtype)
    dw_ih, dw_hh = _ws.empty(p.w_ih.shape, p.dtype), _ws.empty(p.w_hh.shape, p.dtype)
    db = np.empty(G, p.dtype)
    ext = dict(d.extras)
    if wp is not None:
        ext["dw_peephole"] = _ws.empty(wp.shape, p.dtype)
    if "recurrent_mask" in ext:
        ext["dm"] = _ws.empty((p.B, p.H), p.dtype)
    if dcs is not None:
        ext["dcs"] = s.rows(dcs, 1)
    with _blas_guard():
        _k.lstm.backward(
            d.x,
            d.h0,
            d.c0,
            p.w_ih,
            p.w_hh,
            s.batch_sizes,
            d.gates,
            d.y,
            d.cs,
            dyk,
            dh,
            dc,
            dgates,
            dx,
            dw_ih,
            dw_hh,
            db,
            _team(p),
            **ext,
        )
    db_ih, db_hh = (None, None) if p.b_ih is None else (db, db.copy())
    fields = [s.unrows_owned(dx), s.unrows(dh, 0), s.unrows(dc, 0), dw_ih, dw_hh, db_ih, db_hh]
    return grads_of(_LSTM, fields, {"dw_peephole": ext.get("dw_peephole")})


# ---------------------------------------------------------------------------------------------
# GRU
# ---------------------------------------------------------------------------------------------
def gru_forward(
    x,
    h0,
    w_ih,
    w_hh,
    b_ih=None,
    b_hh=None,
    *,
    training=True,
    lengths=None,
    reset_after=True,
    reverse=False,
    check_finite=False,
    ln_ih=None,
    ln_hh=None,
    recurrent_mask=None,
    zoneout_h=None,
    packs=None,
):
    """GRU over a whole sequence, PyTorch's gates r, z, n (reset applied after the matmul).

    ``r = sig(W_ir x + b_ir + W_hr h + b_hr)``, ``z = sig(W_iz x + b_iz + W_hz h + b_hz)``,
    ``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))``, ``h_t = (1 - z) * n + z * h_{t-1}``.
    With ``reset_after=False`` (Cho et al. 2014, Keras' option):
    ``n = tanh(W_in x + b_in + W_hn (r * h) + b_hn)``.

    Parameters
    ----------
    x : array_like of shape (T, B, I)
    h0 : array_like of shape (B, H) or None
    w_ih : array_like of shape (3H, I)
    w_hh : array_like of shape (3H, H)
    b_ih, b_hh : array_like of shape (3H,) or None
    training : bool, default=True
    lengths : array_like of int, shape (B,), optional
    reset_after : bool, default=True
        Apply the reset gate after the hidden matmul (PyTorch, cuDNN) or before it (False).
    reverse : bool, default=False
        Run each sequence backward in time from its own last step; see :func:`rnn_forward`.
    check_finite : bool, default=False
        Raise ``ValueError`` naming the operand if any input, state, weight or bias holds a NaN
        or an infinity (two extra passes over each). Without it, NaN and infinities propagate
        through the arithmetic as IEEE 754 says; they are never dropped.
    ln_ih, ln_hh : array_like of shape (3H,), optional
        Layer normalization (Ba, Kiros & Hinton 2016), given together:
        ``gi = LN(W_ih x_t; ln_ih) + b_ih`` and ``gh = LN(W_hh h_{t-1}; ln_hh) + b_hh``, then the
        gates above from ``gi`` and ``gh``; ``LN(v; g) = g * (v - mean) / sqrt(var + 1e-5)`` over
        each row's 3H features. The backward returns ``dln_ih`` and ``dln_hh``.
    recurrent_mask : array_like of shape (B, H), optional
        Recurrent (variational) dropout: ``W_hh (h_{t-1} * recurrent_mask)`` at every step (an
        inverted-dropout mask, 0 or 1 / (1 - p)); the update ``z * h_{t-1}`` uses the undropped
        state. Needs ``reset_after=True``.
    zoneout_h : array_like of shape (T, B, H), or float in [0, 1], optional
        Zoneout: ``h_t = zoneout_h[t] * h_{t-1} + (1 - zoneout_h[t]) * h~_t`` with ``h~_t`` the
        update above (1 keeps the previous value); a number is every unit's weight (what eval
        uses: the expectation). Needs ``reset_after=True``.
    packs : dict, optional
        A dict the caller keeps beside ``w_ih`` and ``w_hh`` and empties when they change: the
        kernels' packed copy of the two weights is stored in it on the first call and reused
        by the later ones, which then skip packing (the same bits); with it the time the last
        call ended, so that calls in a loop share a team of threads still awake (README,
        "Inference: streaming steps and int8"). Nothing checks that the weights are still
        those packed: clear it after changing them. Ignored by the LSTM with ``w_hr``, the
        ``reset_after=False`` GRU and the layer-normalized LSTM and GRU (``ln_ih``), which
        pack per call.

    Returns
    -------
    y : ndarray of shape (T, B, H)
    h_n : ndarray of shape (B, H)
    cache : Cache or None
        Pass to :func:`gru_backward`.
    """
    extras = cell_extras(_GRU, ln_ih=ln_ih, ln_hh=ln_hh, recurrent_mask=recurrent_mask,
                         zoneout_h=zoneout_h, reset_after=reset_after)  # fmt: skip
    p = prepare(_GRU, x, h0, None, w_ih, w_hh, b_ih, b_hh, lengths, None, check_finite, extras)
    options = {"reset_after": bool(reset_after), "reverse": reverse}
    if p.extra("ln_ih") is not None:
        return _gru_ln_forward(p, training, options)
    if not reset_after:
        return _gru_reset_before_forward(p, training, options)
    if p.T == 0 or p.B == 0:
        y, h_n, _ = _empty_forward(p)
        cache = Cache(BACKEND, _GRU, p, options)
        return y, h_n, cache if training else None
    if _plain(p, training, reverse):
        y, h_n, _ = _plain_inference(_GRU, p, packs)
        return y, h_n, None
    s = _Schedule(p.lengths, p.T, p.B, reverse)
    xk, h0k = s.rows(p.x, 1), s.rows(p.h0, 0)
    noise = _noise_keywords(p, s, training)
    H, G = p.H, p.w_hh.shape[0]
    bias_i, b_hn = _gru_biases(p.b_ih, p.b_hh, H, p.dtype)
    # inference keeps only a ring of a few steps' gates (the kernel projects x in chunks)
    gates = _ws.empty((p.T if training else _k.gru.ring_steps(p.T, p.B), p.B, G), p.dtype)
    hns = _ws.empty((p.T if training else 1, p.B, H), p.dtype)
    hw = _ws.empty((p.B, G), p.dtype)
    y = _ws.empty((p.T, p.B, H), p.dtype)
    h_n = _ws.empty((p.B, H), p.dtype)
    with _blas_guard():
        n = _team(p)
        _k.gru.forward(
            xk,
            h0k,
            p.w_ih,
            p.w_hh,
            bias_i,
            b_hn,
            s.batch_sizes,
            gates,
            hns,
            hw,
            y,
            h_n,
            training,
            n,
            **noise,
            prepacked=_prepacked(_k.gru, p, packs, n),
        )
    cache = None
    if training:
        saved = _Saved(s, xk, h0k, y, gates=gates, hns=hns, noise=noise)
        cache = Cache(BACKEND, _GRU, p, options, saved)
    return s.unrows(y, 1), s.unrows(h_n, 0), cache


def _gru_biases(
    b_ih: np.ndarray | None, b_hh: np.ndarray | None, H: int, dtype: np.dtype
) -> tuple[np.ndarray, np.ndarray]:
    """The GRU kernels' biases: b_ih + b_hh on r and z, b_ih on n (G,), and b_hn (H,), which
    stays inside r * (W_hn h + b_hn); zeros without biases."""
    bias_i = np.zeros(3 * H, dtype)
    b_hn = np.zeros(H, dtype)
    if b_ih is not None:
        bias_i += b_ih
        bias_i[: 2 * H] += b_hh[: 2 * H]
        b_hn[:] = b_hh[2 * H :]
    return bias_i, b_hn


def gru_backward(cache, dy, dh_n=None):
    """Backpropagation through time for :func:`gru_forward`.

    Parameters
    ----------
    cache : Cache
        From a training :func:`gru_forward`.
    dy : array_like of shape (T, B, H) or None
    dh_n : array_like of shape (B, H) or None

    Returns
    -------
    GRUGrads
        ``dx`` (T, B, I), ``dh0`` (B, H), ``dw_ih``, ``dw_hh``, ``db_ih``, ``db_hh``.
    """
    c = check_cache(cache, BACKEND, _GRU)
    p, d = c.prepared, c.saved
    if not c.options["reset_after"]:
        return _gru_reset_before_backward(c, dy, dh_n)
    if p.extra("ln_ih") is not None:
        return _gru_ln_backward(c, dy, dh_n)
    if c.empty:
        return GRUGrads(*_empty_backward(p, dy, {"dh_n": (dh_n, p.H)}))
    s = d.s
    dyk, (dh,) = _upstream(p, s, dy, {"dh_n": dh_n})
    G = p.w_hh.shape[0]
    dgi = _ws.empty((p.T, p.B, G), p.dtype)
    dgh = _ws.empty((p.T, p.B, G), p.dtype)
    dx = _ws.empty((p.T, p.B, p.I), p.dtype)
    dw_ih, dw_hh = _ws.empty(p.w_ih.shape, p.dtype), _ws.empty(p.w_hh.shape, p.dtype)
    db_ih, db_hh = np.empty(G, p.dtype), np.empty(G, p.dtype)
    noise = dict(d.noise)
    if "rmask" in noise:
        noise["dhd"] = _ws.empty((p.B, p.H), p.dtype)
    with _blas_guard():
        _k.gru.backward(
            d.x,
            d.h0,
            p.w_ih,
            p.w_hh,
            s.batch_sizes,
            d.gates,
            d.hns,
            d.y,
            dyk,
            dh,
            dgi,
            dgh,
            dx,
            dw_ih,
            dw_hh,
            db_ih,
            db_hh,
            _team(p),
            **noise,
        )
    if p.b_ih is None:
        db_ih = db_hh = None
    return GRUGrads(s.unrows_owned(dx), s.unrows(dh, 0), dw_ih, dw_hh, db_ih, db_hh)


def _noise_keywords(p: Prepared, s: _Schedule, training: bool) -> dict[str, Any]:
    """The RNN and GRU kernels' keywords for recurrent dropout and zoneout, in kernel row order.

    ``rmask`` with ``hds``, the buffer of the dropped states h_{t-1} * rmask (every step in
    training, for dW_hh; a ring of two in inference); ``zoneout`` (an array) or ``zoneout_p``
    (one weight for every unit). Empty without either option.
    """
    out: dict[str, Any] = {}
    rmask, zh = p.extra("recurrent_mask"), p.extra("zoneout_h")
    if rmask is not None:
        out["rmask"] = s.rows(rmask, 0)
        out["hds"] = _ws.empty((p.T if training else 2, p.B, p.H), p.dtype)
    if isinstance(zh, float):
        out["zoneout_p"] = zh
    elif zh is not None:
        out["zoneout"] = s.rows(zh, 1)
    return out


# ---------------------------------------------------------------------------------------------
# LSTM with a projection (w_hr, PyTorch's proj_size): h_t = W_hr (o * tanh(c_t))
# ---------------------------------------------------------------------------------------------
def _lstm_proj_forward(p: Prepared, training: bool, reverse: bool):
    P = p.w_hr.shape[0]
    if p.T == 0 or p.B == 0:
        y = np.zeros((p.T, p.B, P), p.dtype)
        cache = Cache(BACKEND, _LSTM, p, {"reverse": reverse})
        return y, p.h0.copy(), p.c0.copy(), cache if training else None
    s = _Schedule(p.lengths, p.T, p.B, reverse)
    xk, h0k, c0k = s.rows(p.x, 1), s.rows(p.h0, 0), s.rows(p.c0, 0)
    G, H = p.w_hh.shape[0], p.H
    gates = _ws.empty((p.T, p.B, G), p.dtype)
    y = _ws.empty((p.T, p.B, P), p.dtype)
    cs = _ws.empty((p.T if training else 1, p.B, H), p.dtype)
    ms = _ws.empty((p.T if training else 1, p.B, H), p.dtype)
    h_n, c_n = _ws.empty((p.B, P), p.dtype), _ws.empty((p.B, H), p.dtype)
    with _blas_guard():
        _k.lstm.forward_proj(
            xk,
            h0k,
            c0k,
            p.w_ih,
            p.w_hh,
            p.w_hr,
            _bias_sum(p),
            s.batch_sizes,
            gates,
            y,
            cs,
            ms,
            h_n,
            c_n,
            training,
            _team(p),
        )
    cache = None
    if training:
        saved = _Saved(s, xk, h0k, y, c0=c0k, gates=gates, cs=cs, ms=ms)
        cache = Cache(BACKEND, _LSTM, p, {"reverse": reverse}, saved)
    return s.unrows(y, 1), s.unrows(h_n, 0), s.unrows(c_n, 0), cache


def _lstm_proj_backward(c: Cache, dy: Any, dh_n: Any, dc_n: Any) -> LSTMProjGrads:
    p, d = c.prepared, c.saved
    P, H = p.w_hr.shape
    if c.empty:
        grads = _empty_backward(p, dy, {"dh_n": (dh_n, P), "dc_n": (dc_n, H)}, out_size=P)
        return LSTMProjGrads(*grads, np.zeros_like(p.w_hr))
    s = d.s
    dy_a = as_grad("dy", dy, (p.T, p.B, P), p.dtype)
    dyk = np.zeros((p.T, p.B, P), p.dtype) if dy_a is None else s.rows(dy_a, 1)
    dh_a = as_grad("dh_n", dh_n, (p.B, P), p.dtype)
    dh = np.zeros((p.B, P), p.dtype) if dh_a is None else s.rows(dh_a, 0).copy()
    dc_a = as_grad("dc_n", dc_n, (p.B, H), p.dtype)
    dc = np.zeros((p.B, H), p.dtype) if dc_a is None else s.rows(dc_a, 0).copy()
    G = p.w_hh.shape[0]
    dgates = _ws.empty((p.T, p.B, G), p.dtype)
    dhs = _ws.empty((p.T, p.B, P), p.dtype)
    dm = _ws.empty((p.B, H), p.dtype)
    dx = _ws.empty((p.T, p.B, p.I), p.dtype)
    dw_ih, dw_hh, dw_hr = (
        _ws.empty(p.w_ih.shape, p.dtype),
        _ws.empty(p.w_hh.shape, p.dtype),
        _ws.empty(p.w_hr.shape, p.dtype),
    )
    db = np.empty(G, p.dtype)
    with _blas_guard():
        _k.lstm.backward_proj(
            d.x,
            d.h0,
            d.c0,
            p.w_ih,
            p.w_hh,
            p.w_hr,
            s.batch_sizes,
            d.gates,
            d.y,
            d.cs,
            d.ms,
            dyk,
            dh,
            dc,
            dgates,
            dhs,
            dm,
            dx,
            dw_ih,
            dw_hh,
            dw_hr,
            db,
            _team(p),
        )
    db_ih, db_hh = (None, None) if p.b_ih is None else (db, db.copy())
    return LSTMProjGrads(
        s.unrows_owned(dx), s.unrows(dh, 0), s.unrows(dc, 0), dw_ih, dw_hh, db_ih, db_hh, dw_hr
    )


# ---------------------------------------------------------------------------------------------
# GRU with reset_after=False: n = tanh(W_in x + b_in + W_hn (r * h) + b_hn)
# ---------------------------------------------------------------------------------------------
def _gru_reset_before_forward(p: Prepared, training: bool, options: dict[str, Any]):
    if p.T == 0 or p.B == 0:
        y, h_n, _ = _empty_forward(p)
        cache = Cache(BACKEND, _GRU, p, options)
        return y, h_n, cache if training else None
    s = _Schedule(p.lengths, p.T, p.B, options["reverse"])
    xk, h0k = s.rows(p.x, 1), s.rows(p.h0, 0)
    H, G = p.H, p.w_hh.shape[0]
    gates = _ws.empty((p.T, p.B, G), p.dtype)
    rhs = _ws.empty((p.T if training else 1, p.B, H), p.dtype)
    hw = _ws.empty((p.B, G), p.dtype)
    y = _ws.empty((p.T, p.B, H), p.dtype)
    h_n = _ws.empty((p.B, H), p.dtype)
    with _blas_guard():
        _k.gru.forward_reset_before(
            xk,
            h0k,
            p.w_ih,
            p.w_hh,
            _bias_sum(p),
            s.batch_sizes,
            gates,
            rhs,
            hw,
            y,
            h_n,
            training,
            _team(p),
        )
    cache = None
    if training:
        saved = _Saved(s, xk, h0k, y, gates=gates, rhs=rhs)
        cache = Cache(BACKEND, _GRU, p, options, saved)
    return s.unrows(y, 1), s.unrows(h_n, 0), cache


def _gru_reset_before_backward(c: Cache, dy: Any, dh_n: Any) -> GRUGrads:
    p, d = c.prepared, c.saved
    if c.empty:
        return GRUGrads(*_empty_backward(p, dy, {"dh_n": (dh_n, p.H)}))
    s = d.s
    dyk, (dh,) = _upstream(p, s, dy, {"dh_n": dh_n})
    G = p.w_hh.shape[0]
    dg = _ws.empty((p.T, p.B, G), p.dtype)
    drh = _ws.empty((p.B, p.H), p.dtype)
    dx = _ws.empty((p.T, p.B, p.I), p.dtype)
    dw_ih, dw_hh = _ws.empty(p.w_ih.shape, p.dtype), _ws.empty(p.w_hh.shape, p.dtype)
    db = np.empty(G, p.dtype)
    with _blas_guard():
        _k.gru.backward_reset_before(
            d.x,
            d.h0,
            p.w_ih,
            p.w_hh,
            s.batch_sizes,
            d.gates,
            d.rhs,
            d.y,
            dyk,
            dh,
            dg,
            drh,
            dx,
            dw_ih,
            dw_hh,
            db,
            _team(p),
        )
    db_ih, db_hh = (None, None) if p.b_ih is None else (db, db.copy())
    return GRUGrads(s.unrows_owned(dx), s.unrows(dh, 0), dw_ih, dw_hh, db_ih, db_hh)


# ---------------------------------------------------------------------------------------------
# Layer normalization (Ba, Kiros & Hinton 2016), LSTM and GRU: LN(v; g, b) = g * vhat + b over
# each row's features, vhat = (v - mean) / sqrt(var + LN_EPS); see reference.lstm_forward.
# ---------------------------------------------------------------------------------------------
def _ln_only(p: Prepared, cell_name: str, return_cell_states: bool = False) -> None:
    """Refuse, naming both, an operand the layer-norm kernels do not combine with."""
    others = [k for k, v in (p.extras or {}).items() if v is not None and not k.startswith("ln_")]
    if return_cell_states:
        others.append("return_cell_states")
    if others:
        raise ValueError(
            f"{cell_name}: ln_ih (layer normalization) cannot be combined with {others[0]} in "
            "the Cython kernels yet; use fastrnn.reference for this combination"
        )


def _ln_grads_empty(p: Prepared, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    return {"d" + k: np.zeros_like(p.extra(k)) for k in names}


def _lstm_ln_forward(p: Prepared, training: bool, reverse: bool, return_cell_states: bool):
    _ln_only(p, "lstm_forward", return_cell_states)
    if p.T == 0 or p.B == 0:
        y, h_n, c_n = _empty_forward(p)
        cache = Cache(BACKEND, _LSTM, p, {"reverse": reverse})
        return y, h_n, c_n, cache if training else None
    s = _Schedule(p.lengths, p.T, p.B, reverse)
    xk, h0k, c0k = s.rows(p.x, 1), s.rows(p.h0, 0), s.rows(p.c0, 0)
    T, B, H, G = p.T, p.B, p.H, p.w_hh.shape[0]
    # training keeps every step; inference one
    keep = T if training else 1
    gates = _ws.empty((keep, B, G), p.dtype)
    xs = _ws.empty((keep, B, G), p.dtype)
    hs = _ws.empty((keep, B, G), p.dtype)
    cn = _ws.empty((keep, B, H), p.dtype)
    rstd = _ws.empty((keep, B, 3), p.dtype)
    y = _ws.empty((T, B, H), p.dtype)
    cs = _ws.empty((keep, B, H), p.dtype)
    h_n, c_n = _ws.empty((B, H), p.dtype), _ws.empty((B, H), p.dtype)
    x = p.extra
    with _blas_guard():
        _k.lstm.forward_ln(
            xk,
            h0k,
            c0k,
            p.w_ih,
            p.w_hh,
            _bias_sum(p),
            x("ln_ih"),
            x("ln_hh"),
            x("ln_c"),
            x("ln_c_bias"),
            LN_EPS,
            s.batch_sizes,
            gates,
            xs,
            hs,
            cn,
            rstd,
            y,
            cs,
            h_n,
            c_n,
            training,
            _team(p),
        )
    cache = None
    if training:
        saved = _Saved(s, xk, h0k, y, c0=c0k, gates=gates, cs=cs, xs=xs, hs=hs, cn=cn, rstd=rstd)
        cache = Cache(BACKEND, _LSTM, p, {"reverse": reverse}, saved)
    return s.unrows(y, 1), s.unrows(h_n, 0), s.unrows(c_n, 0), cache


def _lstm_ln_backward(c: Cache, dy: Any, dh_n: Any, dc_n: Any) -> tuple:
    p, d = c.prepared, c.saved
    names = ("ln_ih", "ln_hh", "ln_c", "ln_c_bias")
    if c.empty:
        fields = _empty_backward(p, dy, {"dh_n": (dh_n, p.H), "dc_n": (dc_n, p.H)})
        return grads_of(_LSTM, fields, _ln_grads_empty(p, names))
    s = d.s
    dyk, (dh, dc) = _upstream(p, s, dy, {"dh_n": dh_n, "dc_n": dc_n})
    T, B, H, G = p.T, p.B, p.H, p.w_hh.shape[0]
    dgx, dgh = _ws.empty((T, B, G), p.dtype), _ws.empty((T, B, G), p.dtype)
    acc = np.empty(_k.lstm.ln_workspace(B, H), p.dtype)
    dx = _ws.empty((T, B, p.I), p.dtype)
    dw_ih, dw_hh = _ws.empty(p.w_ih.shape, p.dtype), _ws.empty(p.w_hh.shape, p.dtype)
    db = np.empty(G, p.dtype)
    dln = {"d" + k: np.empty_like(p.extra(k)) for k in names}
    x = p.extra
    with _blas_guard():
        _k.lstm.backward_ln(
            d.x,
            d.h0,
            d.c0,
            p.w_ih,
            p.w_hh,
            x("ln_ih"),
            x("ln_hh"),
            x("ln_c"),
            x("ln_c_bias"),
            s.batch_sizes,
            d.gates,
            d.xs,
            d.hs,
            d.cn,
            d.rstd,
            d.y,
            d.cs,
            dyk,
            dh,
            dc,
            dgx,
            dgh,
            acc,
            dx,
            dw_ih,
            dw_hh,
            db,
            *dln.values(),
            _team(p),
        )
    db_ih, db_hh = (None, None) if p.b_ih is None else (db, db.copy())
    fields = [s.unrows_owned(dx), s.unrows(dh, 0), s.unrows(dc, 0), dw_ih, dw_hh, db_ih, db_hh]
    return grads_of(_LSTM, fields, dln)


def _gru_ln_forward(p: Prepared, training: bool, options: dict[str, Any]):
    _ln_only(p, "gru_forward")
    if p.T == 0 or p.B == 0:
        y, h_n, _ = _empty_forward(p)
        cache = Cache(BACKEND, _GRU, p, options)
        return y, h_n, cache if training else None
    s = _Schedule(p.lengths, p.T, p.B, options["reverse"])
    xk, h0k = s.rows(p.x, 1), s.rows(p.h0, 0)
    T, B, H, G = p.T, p.B, p.H, p.w_hh.shape[0]
    keep = T if training else 1
    b_ih, b_hh = _biases(p)
    gates = _ws.empty((keep, B, G), p.dtype)
    xs = _ws.empty((keep, B, G), p.dtype)
    hs = _ws.empty((keep, B, G), p.dtype)
    hns = _ws.empty((keep, B, H), p.dtype)
    rstd = _ws.empty((keep, B, 2), p.dtype)
    y = _ws.empty((T, B, H), p.dtype)
    h_n = _ws.empty((B, H), p.dtype)
    with _blas_guard():
        _k.gru.forward_ln(
            xk,
            h0k,
            p.w_ih,
            p.w_hh,
            b_ih,
            b_hh,
            p.extra("ln_ih"),
            p.extra("ln_hh"),
            LN_EPS,
            s.batch_sizes,
            gates,
            xs,
            hs,
            hns,
            rstd,
            y,
            h_n,
            training,
            _team(p),
        )
    cache = None
    if training:
        saved = _Saved(s, xk, h0k, y, gates=gates, hns=hns, xs=xs, hs=hs, rstd=rstd)
        cache = Cache(BACKEND, _GRU, p, options, saved)
    return s.unrows(y, 1), s.unrows(h_n, 0), cache


def _gru_ln_backward(c: Cache, dy: Any, dh_n: Any) -> tuple:
    p, d = c.prepared, c.saved
    names = ("ln_ih", "ln_hh")
    if c.empty:
        fields = _empty_backward(p, dy, {"dh_n": (dh_n, p.H)})
        return grads_of(_GRU, fields, _ln_grads_empty(p, names))
    s = d.s
    dyk, (dh,) = _upstream(p, s, dy, {"dh_n": dh_n})
    T, B, G = p.T, p.B, p.w_hh.shape[0]
    dghh, dgx = _ws.empty((T, B, G), p.dtype), _ws.empty((T, B, G), p.dtype)
    acc = np.empty(_k.gru.ln_workspace(B, p.H), p.dtype)
    dx = _ws.empty((T, B, p.I), p.dtype)
    dw_ih, dw_hh = _ws.empty(p.w_ih.shape, p.dtype), _ws.empty(p.w_hh.shape, p.dtype)
    db_ih, db_hh = np.empty(G, p.dtype), np.empty(G, p.dtype)
    dln = {"d" + k: np.empty_like(p.extra(k)) for k in names}
    with _blas_guard():
        _k.gru.backward_ln(
            d.x,
            d.h0,
            p.w_ih,
            p.w_hh,
            p.extra("ln_ih"),
            p.extra("ln_hh"),
            s.batch_sizes,
            d.gates,
            d.xs,
            d.hs,
            d.hns,
            d.rstd,
            d.y,
            dyk,
            dh,
            dghh,
            dgx,
            acc,
            dx,
            dw_ih,
            dw_hh,
            db_ih,
            db_hh,
            *dln.values(),
            _team(p),
        )
    if p.b_ih is None:
        db_ih = db_hh = None
    fields = [s.unrows_owned(dx), s.unrows(dh, 0), dw_ih, dw_hh, db_ih, db_hh]
    return grads_of(_GRU, fields, dln)


def _biases(p: Prepared) -> tuple[np.ndarray, np.ndarray]:
    """b_ih and b_hh, zeros without biases."""
    if p.b_ih is None:
        zero = np.zeros(p.w_hh.shape[0], p.dtype)
        return zero, zero
    return p.b_ih, p.b_hh


# ---------------------------------------------------------------------------------------------
# Streaming steps: the eval-mode forward of one layer on validated operands (RNNBase.step)
# ---------------------------------------------------------------------------------------------
def _step_biases(
    cell: Cell, b_ih: np.ndarray | None, b_hh: np.ndarray | None, H: int, G: int, dtype: Any
) -> tuple[np.ndarray, np.ndarray | None]:
    """The bias operands of ``cell``'s kernel forward, computed as its functional forward does
    (bitwise): (b_ih + b_hh, None), or the GRU's :func:`_gru_biases`."""
    if cell is _GRU:
        return _gru_biases(b_ih, b_hh, H, np.dtype(dtype))
    return (np.zeros(G, dtype) if b_ih is None else b_ih + b_hh), None


def _team_spins(environ: Any = os.environ) -> bool:
    """Whether libgomp's idle threads spin between parallel regions, as ``environ`` asks
    (libgomp reads it once, when the kernels load it): ``GOMP_SPINCOUNT`` set to a count other
    than 0, or ``OMP_WAIT_POLICY=ACTIVE`` without it (the runtime's default spins only briefly,
    and not at all under ``PASSIVE``)."""
    count = environ.get("GOMP_SPINCOUNT", "").strip()
    if count:
        return count.lstrip("+").lstrip("0") != ""
    return environ.get("OMP_WAIT_POLICY", "").strip().upper() == "ACTIVE"


def _team_sleeps(environ: Any = os.environ) -> bool:
    """Whether libgomp's idle threads sleep as soon as a region ends, as ``environ`` asks:
    ``GOMP_SPINCOUNT`` set to 0, or ``OMP_WAIT_POLICY=PASSIVE`` without it."""
    count = environ.get("GOMP_SPINCOUNT", "").strip()
    if count:
        return count.lstrip("+").lstrip("0") == ""
    return environ.get("OMP_WAIT_POLICY", "").strip().upper() == "PASSIVE"


# A B = 1 step has too little arithmetic for _team_for's rule (2 * 2**20 multiply-adds) but
# reads all of its weights (2 MB for an LSTM with I = H = 256, twice a core's L2): two threads
# each keep their half of the gate columns in their own L2. That pays only where the second
# thread is awake when the call opens its parallel region, since the kernel waits for it at the
# first step's barrier. Measured on the 2-core development machine (a VM), a T = 1 step of that
# LSTM took 20 us on 2 awake threads against 31 us on one; a T = 25, I = H = 512 call 0.67 ms
# against 1.35 ms. But after the team's last region the worker spins (libgomp's default: about
# 3 ms; GOMP_SPINCOUNT / OMP_WAIT_POLICY change it), then sleeps, and waking it took 50-75 us
# after 5-10 ms of idleness and 2-4 ms after 50-100 ms (the hypervisor parks the idle vCPU): a
# call after such a pause ran 3.5 ms where one thread takes 0.2 ms.
#
# So a step call is split where the split pays, that is where its weights overflow one core's L2
# (at least _MIN_STEP_WEIGHTS_PER_THREAD elements of W_ih and W_hh per thread: each keeps its
# half in its own) or its arithmetic is enough for two (at least _MIN_STEP_WORK_PER_THREAD
# multiply-adds a step per thread; the RNN at T=1000 B=16 I=64 H=128, 3.9e5 a step on 98 KB of
# weights, ran 4.1-4.2 ms on one thread and 3.0 or 6.6 ms on two, medians of two runs of
# `benchmarks/bench_team.py --modes fwd`, as this VM's phases went: not worth the risk), and
# only when the worker is sure to be awake or the call is long enough to pay for waking it:
# - the team spins between regions (_TEAM_SPINS: GOMP_SPINCOUNT > 0, OMP_WAIT_POLICY=ACTIVE);
# - or the call has at least _MIN_CALL_WORK_TO_WAKE multiply-adds in all (a wake of a few ms
#   is then a small share of it: LSTM T=1000 B=16 I=64 H=128 has 1.5 * 2**30);
# - or, under libgomp's default policy, the same layer's previous call ended less than
#   _BURST_S ago: calls in a loop keep the worker spinning, the first of a burst runs alone
#   and the second pays one wake-up. The time is kept in the layer's packs dict (a forward
#   without packs has no history), not globally: the next layer of one model call follows the
#   previous layer at once, and a model called twice a second must not wake the team per call.
_MIN_STEP_WEIGHTS_PER_THREAD = 1 << 17
_MIN_STEP_WORK_PER_THREAD = 1 << 19
_MIN_CALL_WORK_TO_WAKE = 1 << 30
_BURST_S = 2e-3
_TEAM_SPINS = _team_spins()
_TEAM_SLEEPS = _team_sleeps()
_LAST_END = "last_end"  # key of a step call's end time (time.perf_counter) in its packs dict


def _step_team(B: int, G: int, H: int, I: int, T: int = 1, packs: dict | None = None) -> int:
    """Threads for one layer's call of T steps of B rows with (G, I) ``w_ih`` and (G, H)
    ``w_hh``; ``packs`` is the layer's packed-weights dict, which keeps its last call's end."""
    if B * G * H >= 2 * _MIN_WORK_PER_THREAD:
        return _team_for(B, G, H)
    weights = G * (I + H)
    work = B * weights
    if weights < 2 * _MIN_STEP_WEIGHTS_PER_THREAD and work < 2 * _MIN_STEP_WORK_PER_THREAD:
        return 1
    if not _team_awake(T * work, packs):
        return 1
    share = max(weights // _MIN_STEP_WEIGHTS_PER_THREAD, work // _MIN_STEP_WORK_PER_THREAD)
    return max(1, min(get_num_threads(), H // 16, share))


# A layer's inference forward of T > 1 steps may instead split its batch rows over the team
# (StepKernel(rows=True), src_pyx/_prepack.pxd: rows_fit): each thread runs every unit of its
# own rows over all the steps, from the panels of a team of one, which the threads share. No
# barrier per step, so it pays for steps far too short to split by units (the RNN at T=1000
# B=16 I=64 H=128: 3.9e5 multiply-adds a step), but every thread reads all the weights at
# every step: only where they fit a core's L2 beside the rest (_ROWS_WEIGHT_BYTES, the int8
# kernels' bound too) and each thread gets 4 rows or more (a micro-kernel tile's height). It
# still joins the worker at the call's end, so it takes the team on the conditions above
# (_team_awake), from _MIN_ROWS_CALL_WORK multiply-adds.
_ROWS_WEIGHT_BYTES = 512 * 1024
_MIN_ROWS_CALL_WORK = 1 << 20


def _step_rows(B: int, G: int, H: int, I: int, T: int, packs: dict | None, itemsize: int) -> int:
    """Threads for a row split of a layer's inference forward (:func:`_step_forward`), or 0
    where it does not split rows (then :func:`_step_team`)."""
    if T < 2 or B < 8 or packs is None or G * (I + H) * itemsize > _ROWS_WEIGHT_BYTES:
        return 0  # (the cheap tests first: a stream's steps pass here at every call)
    n = min(get_num_threads(), B // 4)
    if n < 2:
        return 0
    if get_isa() == "blas":  # no micro-kernels: the kernels would run it on one thread
        return 0
    work = T * B * G * (I + H)
    if work < _MIN_ROWS_CALL_WORK or not _team_awake(work, packs):
        return 0
    return n


def _team_awake(call_work: int, packs: dict | None) -> bool:
    """Whether a call of ``call_work`` multiply-adds finds the team's worker awake or is long
    enough to pay for waking it (the conditions above); ``packs`` keeps the layer's last call's
    end under ``_LAST_END``."""
    return (
        _TEAM_SPINS
        or call_work >= _MIN_CALL_WORK_TO_WAKE
        or (
            not _TEAM_SLEEPS
            and packs is not None
            and time.perf_counter() - packs.get(_LAST_END, -1.0) < _BURST_S
        )
    )


def _step_kernel(cell: Cell, ops: tuple, n: int, rows: bool) -> tuple[Any, Any]:
    """The kernel module of ``cell`` in use and its ``StepKernel`` of ``ops`` (as
    :func:`_step_forward` takes them) for a team of ``n`` threads splitting units, or rows with
    ``rows``; made on first use (packing the weights into ``ops``' packs, where it has them)
    and kept in ``ops``' kernels dict."""
    w_ih, w_hh, bias, b_hn, packs, kernels = ops
    module = getattr(_k, cell.kernel)  # set_isa may swap it between calls
    name = module.__name__
    kernel = kernels.get((name, n, rows))
    if kernel is None:
        packed = None  # without packs the kernel packs per call, inside its parallel region
        if packs is not None:
            team = 1 if rows else n  # the row split reads a team of one's panels
            key = (name, w_hh.dtype.char, team)
            packed = packs.get(key)
            if packed is None:
                G, H = w_hh.shape
                packed = packs[key] = module.prepack(w_ih, w_hh, G // H, team)
        kernel = kernels[name, n, rows] = module.StepKernel(w_ih, w_hh, bias, b_hn, packed, n, rows)
    return module, kernel


def _step_forward(
    cell: Cell,
    x: np.ndarray,
    h0: np.ndarray,
    c0: np.ndarray | None,
    ops: tuple,
    y: np.ndarray,
    h_n: np.ndarray,
    c_n: np.ndarray | None,
    layer: int,
    T: int,
    B: int,
    relu: bool = False,
) -> None:
    """One layer's inference forward over T steps of B rows (no lengths, no extras) straight
    into the kernel module's ``step``: the same loop and packed weights as :func:`lstm_forward`
    (``gru_forward``, ``rnn_forward``) with ``training=False, packs=packs`` runs, so the same
    bits, without the validation and scheduling a step has no use for.

    ``ops`` is ``(w_ih, w_hh, bias, b_hn, packs, kernels)``: ``bias``/``b_hn`` from
    :func:`_step_biases`, ``packs`` the layer's packed weights (as the functional forward's
    ``packs=``; None packs per call), ``kernels`` a dict made with ``bias`` (where the module's
    ``StepKernel`` of these operands is kept); ``x`` holds T * B * I elements (any shape),
    ``h0``/``c0`` and ``h_n``/``c_n`` are (L, B, H), ``y`` holds T * B * H elements, all
    C-contiguous in the weights' dtype. Reads layer ``layer``'s initial state, writes ``y`` and
    that layer's final state."""
    w_hh, packs = ops[1], ops[4]
    G, H = w_hh.shape
    I = ops[0].shape[1]
    rows = _step_rows(B, G, H, I, T, packs, w_hh.itemsize)
    module, kernel = _step_kernel(cell, ops, rows or _step_team(B, G, H, I, T, packs), bool(rows))
    if cell is _LSTM:
        args = (kernel, x, h0, c0, y, h_n, c_n, T, B, layer)
    elif cell is _GRU:
        args = (kernel, x, h0, y, h_n, T, B, layer)
    else:
        args = (kernel, x, h0, y, h_n, relu, T, B, layer)
    with _blas_guard():
        module.step(*args)
    if packs is not None:
        packs[_LAST_END] = time.perf_counter()
