r"""Attention over encoder outputs: additive (Bahdanau) and multiplicative (Luong dot, general).

A query :math:`q \in \mathbb{R}^Q` (a decoder state) attends to a memory :math:`m_1 \dots m_S`,
:math:`m_s \in \mathbb{R}^K` (the encoder's outputs), of which only the first ``lengths[b]``
positions of each batch row are real:

.. math::
    \begin{array}{ll}
    e_s = \text{score}(q, m_s) & \text{for } s < \text{length}, \quad -\infty \text{ after} \\
    a = \text{softmax}(e) & \text{(padded positions get exactly } a_s = 0) \\
    \text{context} = \sum_s a_s m_s
    \end{array}

with one of three scores:

* ``"dot"`` (Luong): :math:`q^\top m_s`, needs ``Q == K``;
* ``"general"`` (Luong): :math:`q^\top W_a^\top m_s`, ``weight`` :math:`W_a` of shape (K, Q);
* ``"additive"`` (Bahdanau): :math:`v^\top \tanh(W_q q + W_k m_s + b)`, with ``w_query`` (A, Q),
  ``w_key`` (A, K), ``bias`` (A,) and ``v`` (A,).

A decoder calls attention once per step over the same memory, so the work that depends only on
the memory is done once: :meth:`Attention.prepare` turns the memory into a
:class:`AttentionMemory` (a copy, and for ``"additive"`` a mask and the keys
:math:`W_k m_s + b`); :meth:`Attention.step` attends to it and returns a cache for
:meth:`Attention.step_backward`, which returns the query's gradient and adds the memory's into
the :class:`AttentionMemory`; :meth:`Attention.memory_backward` finally returns the memory's
total gradient (through the keys too). :meth:`Attention.forward` / :meth:`Attention.backward` do
the three at once for the usual one-forward-one-backward module use.

The dot and general scores run in ``fastrnn._kernels.attention`` (``src_pyx/attention.pyx``): the
scores, the softmax over each row's real positions, the contexts, their backward and the
memory's gradient, one batch row at a time through BLAS on the time-major memory, read in place
and only up to each row's length. The additive score is batched NumPy (``matmul`` over the
batch, BLAS inside) over a batch-major copy whose padded positions are zeroed.
``tests/test_attention.py`` checks both against PyTorch and finite differences, and
``benchmarks/bench_attention.py`` times a decoder step.
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

import numpy as np

from fastrnn._isa import _CODES as _ISA_CODES
from fastrnn._isa import get_isa
from fastrnn._kernels import attention as _kernel
from fastrnn._threads import blas_single_thread, blas_threads
from fastrnn.nn._checks import as_real_array, check_float_dtype, check_positive_int
from fastrnn.nn.blocks import _accumulate, _no_cache_error
from fastrnn.nn.module import Module, Parameter

__all__ = ["KINDS", "Attention", "AttentionMemory", "masked_softmax"]

#: The score functions :class:`Attention` implements.
KINDS = ("dot", "general", "additive")


_F = TypeVar("_F", bound=Callable[..., Any])
# Whether this Python thread runs inside a method wrapped by _one_blas_thread.
_inside = threading.local()


def _one_blas_thread(method: _F) -> _F:
    """Run ``method`` with NumPy's BLAS on one thread.

    Attention's products are batched (S, K) by (K, T), a decoder's (B, H) by (H, H): too small to
    gain from BLAS threads, and on a small machine the OpenBLAS workers that a threaded product
    wakes keep spinning for a while after it and take the cores from the recurrent kernel that
    runs next (a training step of ``examples/dates.py`` was several times slower with NumPy's
    default threads than with one, on the shared 2-core development machine).
    """

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if getattr(_inside, "active", False):  # called by another wrapped method: already on one
            return method(*args, **kwargs)
        _inside.active = True
        try:
            with blas_threads(1, "numpy"):
                return method(*args, **kwargs)
        finally:
            _inside.active = False

    return wrapper  # type: ignore[return-value]


def masked_softmax(scores: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """Softmax over the last axis where ``mask`` is True; exactly 0 where it is False.

    Parameters
    ----------
    scores : ndarray of shape (..., S), dtype=float32 or float64
    mask : ndarray of bool broadcastable to ``scores.shape``, or None
        Every row must keep at least one position.

    Returns
    -------
    weights : ndarray of the shape and dtype of ``scores``
    """
    # softmax(e)_s = exp(e_s - max e) / sum_r exp(e_r - max e), the max over kept positions only
    if mask is None:
        shifted = scores - scores.max(axis=-1, keepdims=True)
        w = np.exp(shifted)
    else:
        e = np.where(mask, scores, -np.inf)
        shifted = e - e.max(axis=-1, keepdims=True)
        w = np.exp(shifted)  # exp(-inf) = 0 exactly
    w /= w.sum(axis=-1, keepdims=True)
    return w


def _softmax_backward(w: np.ndarray, dw: np.ndarray) -> np.ndarray:
    """de = a * (da - sum_s a_s da_s): zero wherever a is zero (the masked positions)."""
    de = dw - (w * dw).sum(axis=-1, keepdims=True)
    de *= w
    return de


class AttentionMemory(NamedTuple):
    """A memory prepared for repeated attention (made by :meth:`Attention.prepare`).

    Attributes
    ----------
    memory : ndarray of shape (B, S, K)
        Batch-major copy of the memory: for ``"additive"`` a contiguous one, zero at padded
        positions; for ``"dot"`` and ``"general"`` a view of ``time_major``.
    mask : ndarray of bool, shape (B, 1, S), or None
        ``"additive"``: True at the real positions (None when every position is real);
        None for the other scores, which read ``lengths``.
    lengths : ndarray of int, shape (B,), or None
        Real positions of each row; None when every position is real (``"additive"`` only:
        the other scores always have it).
    keys : ndarray of shape (B, S, A) or None
        :math:`W_k m_s + b` for ``"additive"``, else None.
    grads : dict
        What :meth:`Attention.step_backward` leaves for :meth:`Attention.memory_backward`: the
        factors of the memory's gradient (``"left"``, ``"right"``) and, for ``"additive"``, the
        keys' gradient (``"keys"``).
    time_major : ndarray of shape (S, B, K) or None
        ``"dot"`` and ``"general"``: a C-contiguous copy of the memory in the layout the
        encoder wrote it, which the compiled kernels (``fastrnn._kernels.attention``) read in
        place, only each row's real positions (padded ones keep whatever values they had and
        are never read). None for ``"additive"``.
    """

    memory: np.ndarray
    mask: np.ndarray | None
    lengths: np.ndarray | None
    keys: np.ndarray | None
    grads: dict[str, np.ndarray]
    time_major: np.ndarray | None = None

    def repeat(self, n: int) -> AttentionMemory:
        """Each batch row repeated ``n`` times in a row (for beam search; no gradients)."""
        if self.time_major is not None:
            mt = np.repeat(self.time_major, n, axis=1)
            return AttentionMemory(
                mt.transpose(1, 0, 2), None, np.repeat(self.lengths, n), None, {}, mt
            )
        return AttentionMemory(
            np.repeat(self.memory, n, axis=0),
            None if self.mask is None else np.repeat(self.mask, n, axis=0),
            None if self.lengths is None else np.repeat(self.lengths, n),
            None if self.keys is None else np.repeat(self.keys, n, axis=0),
            {},
        )


def _check_lengths(lengths: Any, S: int, B: int) -> np.ndarray | None:
    if lengths is None:
        return None
    arr = np.asarray(lengths)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"lengths must be an integer array, got dtype {arr.dtype}")
    if arr.shape != (B,):
        raise ValueError(f"lengths must have shape (B,) = ({B},), got {arr.shape}")
    if B and (arr.min() < 1 or arr.max() > S):
        raise ValueError(
            f"lengths must lie in [1, S={S}] (every row needs a position to attend to), "
            f"got values in [{arr.min()}, {arr.max()}]"
        )
    return arr.astype(np.intp)


class Attention(Module):
    r"""Attention of a query over a masked memory (see the module docstring for the equations).

    Parameters
    ----------
    query_size : int
        Q, the features of a query (the decoder's hidden size).
    key_size : int
        K, the features of a memory position (the encoder's output size, both directions).
    kind : {"general", "dot", "additive"}, default="general"
        The score function: Luong's general :math:`q^\top W_a^\top m_s` or dot :math:`q^\top
        m_s`, or Bahdanau's additive :math:`v^\top \tanh(W_q q + W_k m_s + b)`.
    attn_size : int, optional
        A, the hidden size of the additive score (default: ``query_size``). Only for
        ``"additive"``.
    dtype : {np.float32, np.float64}, default=np.float32
    seed : int, numpy.random.Generator or None, default=None

    Attributes
    ----------
    weight : Parameter of shape (K, Q)
        ``"general"`` only; :math:`\mathcal{U}(-1/\sqrt{Q}, 1/\sqrt{Q})`, as a bias-free
        ``Linear(Q, K)``.
    w_query : Parameter of shape (A, Q)
        ``"additive"`` only; :math:`\mathcal{U}(-1/\sqrt{Q}, 1/\sqrt{Q})`.
    w_key : Parameter of shape (A, K)
        ``"additive"`` only; :math:`\mathcal{U}(-1/\sqrt{K}, 1/\sqrt{K})`.
    bias : Parameter of shape (A,)
        ``"additive"`` only; same distribution as ``w_key``.
    v : Parameter of shape (A,)
        ``"additive"`` only; :math:`\mathcal{U}(-1/\sqrt{A}, 1/\sqrt{A})`.

    Notes
    -----
    Memories are time-major, ``(S, B, K)``, as the recurrent layers' outputs; queries are
    ``(B, Q)`` (one decoder step) or ``(T, B, Q)`` (T queries per row at once); contexts and
    weights follow the query's layout: ``(B, K)`` and ``(B, S)``, or ``(T, B, K)`` and
    ``(T, B, S)``.
    """

    def __init__(
        self,
        query_size: int,
        key_size: int,
        kind: str = "general",
        attn_size: int | None = None,
        dtype: Any = np.float32,
        seed: int | np.random.Generator | None = None,
    ) -> None:
        super().__init__()
        self.query_size = check_positive_int(query_size, "query_size")
        self.key_size = check_positive_int(key_size, "key_size")
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        self.kind = kind
        if attn_size is not None and kind != "additive":
            raise ValueError(f"attn_size is only used by kind='additive', got kind={kind!r}")
        self.attn_size = (
            check_positive_int(attn_size, "attn_size") if attn_size is not None else query_size
        )
        dt = check_float_dtype(dtype)
        self._dtype = dt
        rng = np.random.default_rng(seed)
        Q, K, A = self.query_size, self.key_size, self.attn_size
        if kind == "dot" and Q != K:
            raise ValueError(
                f"kind='dot' needs query_size == key_size, got {Q} and {K} "
                "(use kind='general' to learn a map between them)"
            )
        if kind == "general":
            k = 1.0 / math.sqrt(Q)
            self.weight = Parameter(rng.uniform(-k, k, (K, Q)).astype(dt))
        elif kind == "additive":
            kq, kk, ka = 1.0 / math.sqrt(Q), 1.0 / math.sqrt(K), 1.0 / math.sqrt(A)
            self.w_query = Parameter(rng.uniform(-kq, kq, (A, Q)).astype(dt))
            self.w_key = Parameter(rng.uniform(-kk, kk, (A, K)).astype(dt))
            self.bias = Parameter(rng.uniform(-kk, kk, A).astype(dt))
            self.v = Parameter(rng.uniform(-ka, ka, A).astype(dt))
        self._cache: tuple[Any, ...] | None = None

    @property
    def dtype(self) -> np.dtype:
        """The dtype of the parameters and of the outputs."""
        return self._dtype

    # -- the memory ----------------------------------------------------------------------------
    @_one_blas_thread
    def prepare(self, memory: Any, lengths: Any = None) -> AttentionMemory:
        """Validate a memory and do the work that does not depend on the query.

        Parameters
        ----------
        memory : array_like of shape (S, B, K)
            Converted to the layer's dtype. Values at padded positions are ignored.
        lengths : array_like of int, shape (B,), optional
            Real positions of each row, in [1, S]; None means all S.

        Returns
        -------
        AttentionMemory
        """
        m = as_real_array(memory, "memory", self.dtype)
        if m.ndim != 3 or m.shape[2] != self.key_size:
            raise ValueError(
                f"memory must have shape (S, B, key_size={self.key_size}), got {m.shape}"
            )
        S, B, _ = m.shape
        if S == 0:
            raise ValueError("memory must have at least one position (S >= 1), got S = 0")
        lens = _check_lengths(lengths, S, B)
        if self.kind != "additive":
            # the kernels read the time-major memory in place: a plain copy (none when the
            # conversion already made one), no transposition, no zeroing of padded positions
            fresh = m is not memory and m.flags.owndata and m.flags.c_contiguous
            mt = m if fresh else np.array(m, order="C", copy=True)
            lens = np.full(B, S, np.intp) if lens is None else lens
            return AttentionMemory(mt.transpose(1, 0, 2), None, lens, None, {}, mt)
        mb = np.ascontiguousarray(m.transpose(1, 0, 2))
        if mb is m or np.shares_memory(mb, m):
            mb = mb.copy()
        mask = None
        if lens is not None and (lens < S).any():
            mask = (np.arange(S)[None, :] < lens[:, None])[:, None, :]
            mb[~mask[:, 0, :]] = 0  # padded positions never reach a context or a gradient
        else:
            lens = None
        keys = None
        if self.kind == "additive":
            keys = mb @ self.w_key.data.T
            keys += self.bias.data
        return AttentionMemory(mb, mask, lens, keys, {})

    @_one_blas_thread
    def memory_backward(self, mem: AttentionMemory) -> np.ndarray:
        """Total gradient of the memory after every :meth:`step_backward` over ``mem``.

        Accumulates ``w_key.grad`` and ``bias.grad`` (``"additive"``) from the keys' gradient.

        Returns
        -------
        dmemory : ndarray of shape (S, B, K), zero at padded positions
        """
        # Every step's d memory is a sum of outer products over its T queries,
        # dm = sum_t w_t^T dcontext_t (+ de_t^T p_t for the Luong scores): all of them at once
        # are one batched GEMM whose inner dimension is the number of queries. (NumPy runs a
        # product with an inner dimension of 1 several times slower than with 2.)
        # It is written time-major, (S, B, K), through a batch-major view (BLAS takes the strides).
        B, S, K = mem.memory.shape
        out = np.empty((S, B, K), mem.memory.dtype)
        dm = out.transpose(1, 0, 2)  # (B, S, K) view
        left, right = mem.grads.get("left"), mem.grads.get("right")
        if left:
            lhs = np.concatenate(left, axis=1) if len(left) > 1 else left[0]  # (B, n, S)
            rhs = np.concatenate(right, axis=1) if len(right) > 1 else right[0]  # (B, n, K)
            if mem.time_major is not None:  # the kernel: each row's real positions only
                with blas_single_thread():
                    _kernel.memory_grad(mem.lengths, lhs, rhs, out)
            else:
                np.matmul(lhs.transpose(0, 2, 1), rhs, out=dm)
        else:
            dm[...] = 0
        dk = mem.grads.get("keys")
        if dk is not None:
            # keys = m W_k^T + b  =>  dW_k = sum dkeys^T m,  db = sum dkeys,  dm += dkeys W_k
            A = self.attn_size
            _accumulate(self.w_key, dk.reshape(-1, A).T @ mem.memory.reshape(-1, self.key_size))
            _accumulate(self.bias, dk.reshape(-1, A).sum(axis=0))
            dm += dk @ self.w_key.data
        mem.grads.clear()
        return out

    # -- one attention over a prepared memory --------------------------------------------------
    @_one_blas_thread
    def step(
        self, query: Any, mem: AttentionMemory, training: bool | None = None
    ) -> tuple[np.ndarray, np.ndarray, tuple[Any, ...] | None]:
        """Attend with ``query`` over a prepared memory.

        Parameters
        ----------
        query : array_like of shape (B, Q) or (T, B, Q)
        mem : AttentionMemory
            From :meth:`prepare` with the same B.
        training : bool, optional
            Keep what :meth:`step_backward` needs (default: the module's mode).

        Returns
        -------
        context : ndarray of shape (B, K) or (T, B, K)
        weights : ndarray of shape (B, S) or (T, B, S)
            Zero at padded positions; each row sums to 1.
        cache : tuple or None
            For :meth:`step_backward` (None when not training).
        """
        q = as_real_array(query, "query", self.dtype)
        B = mem.memory.shape[0]
        if q.ndim not in (2, 3) or q.shape[-2:] != (B, self.query_size):
            raise ValueError(
                f"query must have shape (B, query_size) = ({B}, {self.query_size}) or "
                f"(T, B, query_size), got {q.shape}"
            )
        keep = self.training if training is None else training
        return self._step(q, mem, keep)

    def _step(
        self, q: np.ndarray, mem: AttentionMemory, keep: bool, ctx_out: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, tuple[Any, ...] | None]:
        """:meth:`step` of a validated query (B, Q) or (T, B, Q) of the layer's dtype; a single
        query's context is written into ``ctx_out`` (B, K) when given (a decoder's buffer)."""
        single = q.ndim == 2
        qb = q[:, None, :] if single else q.transpose(1, 0, 2)  # (B, T, Q)
        m = mem.memory  # (B, S, K)
        if self.kind == "additive":
            # z = tanh(W_q q + (W_k m_s + b)),  e_s = v . z_s
            qp = _rows_matmul(qb, self.w_query.data.T)  # (B, T, A)
            z = np.tanh(mem.keys[:, None, :, :] + qp[:, :, None, :])  # (B, T, S, A)
            p = None
            scores = z @ self.v.data  # (B, T, S)
            w = masked_softmax(scores, mem.mask)
            ctx = w @ m  # (B, T, K)
        else:
            # e_s = p . m_s,  w = softmax over the real positions,  ctx = w @ m: the kernel
            if mem.time_major is None:
                raise ValueError(
                    f"mem has no time_major memory: prepare it with this {self.kind!r} "
                    "attention's prepare()"
                )
            z = None
            p = qb if self.kind == "dot" else _rows_matmul(qb, self.weight.data.T)  # (B, T, K)
            p = np.ascontiguousarray(p)
            w = np.empty((*p.shape[:2], m.shape[1]), p.dtype)
            ctx = np.empty(p.shape, p.dtype)
            with blas_single_thread():
                _kernel.forward(mem.time_major, mem.lengths, p, w, ctx)
        cache = (qb, p, z, w, single) if keep else None
        if single and ctx_out is not None:
            ctx_out[...] = ctx[:, 0]
            return ctx_out, w[:, 0], cache
        if single:
            return ctx[:, 0], w[:, 0], cache
        return ctx.transpose(1, 0, 2), w.transpose(1, 0, 2), cache

    @_one_blas_thread
    def step_backward(
        self, cache: tuple[Any, ...], mem: AttentionMemory, dcontext: Any, dweights: Any = None
    ) -> np.ndarray:
        """Backward of one :meth:`step`: returns d query, adds d memory into ``mem``.

        Parameter gradients (``weight``, ``w_query``, ``v``) accumulate into ``.grad``; those of
        ``w_key`` and ``bias`` wait for :meth:`memory_backward`.

        Parameters
        ----------
        cache : tuple
            The third result of a training :meth:`step`.
        mem : AttentionMemory
            The memory that step attended to.
        dcontext : array_like of the context's shape
        dweights : array_like of the weights' shape, optional

        Returns
        -------
        dquery : ndarray of the query's shape
        """
        if cache is None:
            raise TypeError("cache is None: step() was called with training=False")
        w, single = cache[3:]
        dt = self.dtype
        want_c = (w.shape[0], self.key_size) if single else (w.shape[1], w.shape[0], self.key_size)
        want_w = (w.shape[0], w.shape[2]) if single else (w.shape[1], w.shape[0], w.shape[2])
        dc = as_real_array(dcontext, "dcontext", dt)
        if dc.shape != want_c:
            raise ValueError(f"dcontext must have the context's shape {want_c}, got {dc.shape}")
        dwx = None
        if dweights is not None:
            dwx = as_real_array(dweights, "dweights", dt)
            if dwx.shape != want_w:
                raise ValueError(f"dweights must have the weights' shape {want_w}, got {dwx.shape}")
        return self._step_backward(cache, mem, dc, dwx)

    def _step_backward(
        self,
        cache: tuple[Any, ...],
        mem: AttentionMemory,
        dc: np.ndarray,
        dwx: np.ndarray | None = None,
    ) -> np.ndarray:
        """:meth:`step_backward` of validated gradients (the layer's dtype, the step's shapes)."""
        qb, p, z, w, single = cache
        dcb = dc[:, None, :] if single else dc.transpose(1, 0, 2)  # (B, T, K)
        m = mem.memory
        dwb = None if dwx is None else (dwx[:, None, :] if single else dwx.transpose(1, 0, 2))
        if self.kind == "additive":
            # context = w @ m  =>  dw = dcontext @ m^T,  dm = w^T @ dcontext
            dw = dcb @ m.transpose(0, 2, 1)  # (B, T, S)
            if dwb is not None:
                dw += dwb
            de = _softmax_backward(w, dw)  # (B, T, S), zero at padded positions
        else:
            # the same, and dp = de @ m, by the kernel
            dcb = np.ascontiguousarray(dcb)
            de = np.empty_like(w)
            dp = np.empty_like(p)
            dwb = None if dwb is None else np.ascontiguousarray(dwb)
            with blas_single_thread():
                _kernel.backward(mem.time_major, mem.lengths, w, dcb, dwb, de, dp)
        # dm = w^T @ dcontext, deferred to memory_backward (one GEMM for every step)
        lhs, rhs = [w], [dcb]
        if self.kind == "additive":
            # e = z @ v,  z = tanh(pre)  =>  dv = sum de z,  dpre = de v (1 - z^2)
            A = self.attn_size
            _accumulate(self.v, de.reshape(-1) @ z.reshape(-1, A))
            dpre = de[..., None] * self.v.data
            dpre *= 1 - z * z  # (B, T, S, A)
            dqp = dpre.sum(axis=2)  # (B, T, A)
            dkeys = dpre.sum(axis=1)  # (B, S, A)
            _accumulate(self.w_query, _dot_tn(dqp.reshape(-1, A), qb.reshape(-1, self.query_size)))
            dq = _rows_matmul(dqp, self.w_query.data)
            _add_grad(mem.grads, "keys", dkeys)
        else:
            # e = p @ m^T  =>  dp = de @ m (above),  dm += de^T @ p
            lhs.append(de)  # dm += de^T @ p
            rhs.append(p)
            if self.kind == "dot":
                dq = dp
            else:  # p = q W_a^T  =>  dq = dp W_a,  dW_a = dp^T q
                _accumulate(
                    self.weight,
                    _dot_tn(dp.reshape(-1, self.key_size), qb.reshape(-1, self.query_size)),
                )
                dq = _rows_matmul(dp, self.weight.data)
        # zero at padded positions: w = de = 0 there
        mem.grads.setdefault("left", []).extend(lhs)
        mem.grads.setdefault("right", []).extend(rhs)
        return dq[:, 0] if single else np.ascontiguousarray(dq.transpose(1, 0, 2))

    # -- module use: one forward, one backward ---------------------------------------------------
    @_one_blas_thread
    def forward(
        self, query: Any, memory: Any, lengths: Any = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Attend with ``query`` over ``memory``.

        Parameters
        ----------
        query : array_like of shape (B, Q) or (T, B, Q)
        memory : array_like of shape (S, B, K)
        lengths : array_like of int, shape (B,), optional
            Real positions of each memory row, in [1, S].

        Returns
        -------
        context : ndarray of shape (B, K) or (T, B, K)
        weights : ndarray of shape (B, S) or (T, B, S)
        """
        mem = self.prepare(memory, lengths)
        ctx, w, cache = self.step(query, mem)
        self._cache = (mem, cache) if cache is not None else None
        return ctx, w

    @_one_blas_thread
    def backward(self, dcontext: Any, dweights: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """Gradients of the last training-mode :meth:`forward`'s query and memory.

        Parameters
        ----------
        dcontext : array_like of the context's shape
        dweights : array_like of the weights' shape, optional

        Returns
        -------
        dquery : ndarray of the query's shape
        dmemory : ndarray of shape (S, B, K)
        """
        if self._cache is None:
            raise _no_cache_error(self)
        mem, cache = self._cache
        dq = self.step_backward(cache, mem, dcontext, dweights)
        self._cache = None
        return dq, self.memory_backward(mem)

    def extra_repr(self) -> str:
        s = f"{self.query_size}, {self.key_size}, kind={self.kind!r}"
        if self.kind == "additive":
            s += f", attn_size={self.attn_size}"
        if self.dtype != np.float32:
            s += f", dtype={self.dtype}"
        return s


def _rows_matmul(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``x @ w`` for x of shape (B, T, X) and w (X, Y) as one 2-D GEMM of B * T rows (NumPy runs
    the 3-D product as B products, vector products when T = 1)."""
    return _dot(x.reshape(-1, x.shape[-1]), w).reshape(*x.shape[:-1], w.shape[-1])


def _dot(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``x @ w`` for a 2-D ``x`` and a weight ``w`` (X, Y) or a weight's transpose (a view), on
    the kernels' GEMM micro-kernels, which read a row-major right operand in place: ``x @ W``
    directly, ``x @ W^T`` as ``(W @ x^T)^T`` (the returned array is then a transposed view).

    A decoder's products, (B, X) by (X, Y) with B = 32 and X, Y in the hundreds, ran 2-3x
    slower through NumPy's OpenBLAS, which packs the right operand at every call (one thread,
    the development machine: (32, 256) @ (256, 512) in 49 us against 168 us).
    """
    if x.dtype != w.dtype or x.dtype.kind != "f" or w.ndim != 2:
        return x @ w
    if w.flags.c_contiguous:
        return _matmul(np.ascontiguousarray(x), w)
    if w.T.flags.c_contiguous:
        return _matmul(w.T, np.ascontiguousarray(x.T)).T
    return x @ w


def _dot_tn(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a^T @ b`` for 2-D C-contiguous ``a`` (R, M) and ``b`` (R, N): a weight's gradient."""
    if a.dtype != b.dtype or a.dtype.kind != "f":
        return a.T @ b
    return _matmul(np.ascontiguousarray(a), np.ascontiguousarray(b), trans_a=True)


def _matmul(a: np.ndarray, b: np.ndarray, trans_a: bool = False) -> np.ndarray:
    """``op(a) @ b`` (C-contiguous operands) by ``fastrnn._kernels.attention.matmul`` with the
    micro-kernels of the instruction set in use (``fastrnn.get_isa()``; BLAS for ``"blas"``)."""
    c = np.empty((a.shape[1] if trans_a else a.shape[0], b.shape[1]), a.dtype)
    with blas_single_thread():
        _kernel.matmul(_ISA_CODES[get_isa()], a, trans_a, b, c)
    return c


def _add_grad(grads: dict[str, np.ndarray], key: str, g: np.ndarray) -> None:
    if key in grads:
        grads[key] += g
    else:
        grads[key] = g
