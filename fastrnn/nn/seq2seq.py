r"""Encoder-decoder (sequence-to-sequence) models with attention.

:class:`Encoder` embeds a padded batch of source token sequences and runs a (bidirectional)
:class:`~fastrnn.LSTM` or :class:`~fastrnn.GRU` over it; its outputs are the memory the decoder
attends to and its final states initialise the decoder. :class:`AttentionDecoder` is Luong et
al.'s (2015) attentive decoder with input feeding; at step t, with :math:`y_{t-1}` the previous
target token (the start token at t = 1) and :math:`\tilde h_0 = 0`:

.. math::
    \begin{array}{ll}
    x_t = [E y_{t-1};\ \tilde h_{t-1}] & \text{(input feeding)} \\
    h_t, c_t = \text{LSTM}(x_t, (h_{t-1}, c_{t-1})) & \text{(or a GRU)} \\
    a_t = \text{softmax}_{s < \text{len}}(\text{score}(h_t, m_s)),\quad
        \text{ctx}_t = \textstyle\sum_s a_{t,s} m_s & \text{(attention)} \\
    \tilde h_t = \tanh(W_c [\text{ctx}_t; h_t] + b_c) \\
    \text{logits}_t = W_o \tilde h_t + b_o
    \end{array}

The initial state is :math:`h_0 = \tanh(W_b f + b_b)` of the encoder's final states
:math:`f` (both directions of its last layer, concatenated), :math:`c_0 = 0`. Without attention
(``attention=None``) the context is left out, :math:`\tilde h_t = \tanh(W_c h_t + b_c)`: a plain
encoder-decoder whose only view of the source is :math:`f`.

:class:`Seq2Seq` joins the two: ``forward`` runs the decoder with teacher forcing (the true
previous token as input) and returns the logits of every step, ``backward`` backpropagates
through both, and :meth:`Seq2Seq.greedy` and :meth:`Seq2Seq.beam_search` decode new sources.

The decoder advances one step at a time (input feeding makes step t's input depend on step
t - 1's output), each step one call of :func:`fastrnn.functional.lstm_forward` (or
``gru_forward``) with T = 1 on the parameters of its ``rnn`` layer (the weights packed for the
kernels once per ``forward``), whose caches the backward runs in reverse through
:func:`~fastrnn.functional.lstm_backward`. The dense products (``combine``, ``out``) run on the
kernels' GEMM micro-kernels (``fastrnn.nn.attention._dot``). The ``rnn`` layer is an
ordinary :class:`~fastrnn.LSTM`: its parameters have PyTorch's names and shapes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fastrnn.cells import Cell, get_cell
from fastrnn.nn import rnn as _rnn_layers
from fastrnn.nn._checks import as_index_array, check_float_dtype, check_positive_int
from fastrnn.nn.attention import (
    KINDS,
    Attention,
    AttentionMemory,
    _dot,
    _dot_tn,
    _one_blas_thread,
)
from fastrnn.nn.blocks import Embedding, Linear, _accumulate, _no_cache_error
from fastrnn.nn.module import Module

__all__ = ["AttentionDecoder", "Encoder", "Seq2Seq"]

#: The decoder cell's parameters (PyTorch's names), in the functional API's argument order.
_CELL_WEIGHTS = ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")


def _check_cell(cell: Any) -> Cell:
    """The registry's entry of ``cell`` (a name of :data:`fastrnn.cells.CELLS`)."""
    return get_cell(cell)


def _layer_class(cell: Cell) -> type:
    """The recurrent layer of a cell: ``fastrnn.LSTM`` for the LSTM entry, and so on."""
    return getattr(_rnn_layers, cell.title)


def _check_tokens(tokens: Any, name: str, vocab: int, ndim: int = 2) -> np.ndarray:
    idx = as_index_array(tokens, name)
    if idx.ndim != ndim:
        what = "(T, B)" if ndim == 2 else "(B,)"
        raise ValueError(f"{name} must have shape {what}, got {idx.shape}")
    if idx.size and (idx.min() < 0 or idx.max() >= vocab):
        raise ValueError(
            f"{name} must hold token ids in [0, vocab_size={vocab}), got values in "
            f"[{idx.min()}, {idx.max()}]"
        )
    return idx


def _check_token_id(value: Any, name: str, vocab: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an int token id, got {value!r}")
    if not 0 <= value < vocab:
        raise ValueError(f"{name} must be in [0, vocab_size={vocab}), got {value}")
    return int(value)


class Encoder(Module):
    """Embedding followed by a (bidirectional, multi-layer) LSTM or GRU over padded sources.

    Parameters
    ----------
    vocab_size : int
        Number of source token ids.
    embed_size : int
        Size of the token vectors.
    hidden_size : int
        Hidden size of each direction.
    num_layers : int, default=1
    bidirectional : bool, default=True
    cell : {"lstm", "gru", "rnn"}, default="lstm"
        A cell of the registry (:data:`fastrnn.cells.CELLS`).
    dtype : {np.float32, np.float64}, default=np.float32
    backend : {"cython", "numpy"}, default="cython"
    seed : int, numpy.random.Generator or None, default=None

    Attributes
    ----------
    embedding : Embedding
    rnn : LSTM or GRU
    output_size : int
        Features of each memory position: ``D * hidden_size``, D = 2 if bidirectional else 1
        (also the size of the final state handed to the decoder).
    """

    def __init__(
        self,
        vocab_size: int,
        embed_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bidirectional: bool = True,
        cell: str = "lstm",
        dtype: Any = np.float32,
        backend: str = "cython",
        seed: int | np.random.Generator | None = None,
    ) -> None:
        super().__init__()
        rng = np.random.default_rng(seed)
        g1, g2 = rng.spawn(2)
        self._cell = _check_cell(cell)
        self.cell = self._cell.name
        self.embedding = Embedding(vocab_size, embed_size, dtype=dtype, seed=g1)
        self.rnn = _layer_class(self._cell)(
            embed_size,
            hidden_size,
            num_layers,
            bidirectional=bidirectional,
            dtype=dtype,
            backend=backend,
            seed=g2,
        )
        self.num_directions = 2 if bidirectional else 1
        self.output_size = self.num_directions * hidden_size
        self._cache: tuple[Any, ...] | None = None

    def forward(self, src: Any, lengths: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """Encode a padded batch.

        Parameters
        ----------
        src : array_like of int, shape (S, B)
            Token ids, time-major; values past each length are ignored.
        lengths : array_like of int, shape (B,), optional
            Length of each source, in [1, S]; None means all S.

        Returns
        -------
        memory : ndarray of shape (S, B, output_size)
            Last layer's outputs, both directions concatenated; zero past each length.
        final : ndarray of shape (B, output_size)
            Last layer's final hidden state of each direction (at each source's own end),
            concatenated.
        """
        src = _check_tokens(src, "src", self.embedding.num_embeddings)
        x = self.embedding(src)
        out, state = self.rnn(x, lengths=lengths)
        h_n = state[0] if isinstance(state, tuple) else state
        D = self.num_directions
        final = np.concatenate(list(h_n[-D:]), axis=1)
        self._cache = (h_n.shape, state) if self.training else None
        return out, final

    def backward(self, dmemory: Any, dfinal: Any = None) -> None:
        """Backpropagate the gradients of ``memory`` and ``final`` into every parameter.

        Parameters
        ----------
        dmemory : array_like of shape (S, B, output_size) or None
        dfinal : array_like of shape (B, output_size) or None
        """
        if self._cache is None:
            raise _no_cache_error(self)
        h_shape, state = self._cache
        self._cache = None
        dstate = None
        if dfinal is not None:
            dh = np.zeros(h_shape, self.rnn.dtype)
            D, H = self.num_directions, h_shape[2]
            dfinal = np.asarray(dfinal)
            for d in range(D):
                dh[h_shape[0] - D + d] = dfinal[:, d * H : (d + 1) * H]
            dstate = (dh, None) if isinstance(state, tuple) else dh
        dx, _ = self.rnn.backward(dmemory, dstate)
        self.embedding.backward(dx)


class AttentionDecoder(Module):
    """Luong's attentive decoder with input feeding (equations in the module docstring).

    Parameters
    ----------
    vocab_size : int
        Number of target token ids.
    embed_size : int
        Size of the target token vectors.
    hidden_size : int
        Hidden size H of the decoder's cell, of :math:`\\tilde h` and of the attention's query.
    memory_size : int
        Features K of each memory position (the encoder's ``output_size``).
    init_size : int or None, default=None
        Size of the encoder's final state that initialises :math:`h_0` through ``bridge``;
        None starts from zeros.
    attention : {"general", "dot", "additive"} or None, default="general"
        Score of the :class:`~fastrnn.nn.Attention`; None for a decoder without attention.
    attn_size : int, optional
        Hidden size of the additive score (default H).
    cell : {"lstm", "gru", "rnn"}, default="lstm"
        A cell of the registry (:data:`fastrnn.cells.CELLS`).
    input_feeding : bool, default=True
        Feed :math:`\\tilde h_{t-1}` into step t's input.
    dtype, backend, seed
        As in :class:`Encoder`.

    Attributes
    ----------
    embedding : Embedding
    rnn : LSTM or GRU
        One layer of input size ``embed_size (+ hidden_size)``, advanced one step at a time.
    attention : Attention or None
    bridge : Linear(init_size, H) or None
    combine : Linear(K + H, H), or Linear(H, H) without attention
    out : Linear(H, vocab_size)
    """

    def __init__(
        self,
        vocab_size: int,
        embed_size: int,
        hidden_size: int,
        memory_size: int,
        init_size: int | None = None,
        attention: str | None = "general",
        attn_size: int | None = None,
        cell: str = "lstm",
        input_feeding: bool = True,
        dtype: Any = np.float32,
        backend: str = "cython",
        seed: int | np.random.Generator | None = None,
    ) -> None:
        super().__init__()
        if attention is not None and attention not in KINDS:
            raise ValueError(f"attention must be one of {KINDS} or None, got {attention!r}")
        self._cell = _check_cell(cell)
        self.cell = self._cell.name
        dt = check_float_dtype(dtype)
        H = check_positive_int(hidden_size, "hidden_size")
        K = check_positive_int(memory_size, "memory_size")
        E = check_positive_int(embed_size, "embed_size")
        self.hidden_size, self.memory_size, self.embed_size = H, K, E
        self.input_feeding = bool(input_feeding)
        self.vocab_size = check_positive_int(vocab_size, "vocab_size")
        rng = np.random.default_rng(seed)
        gs = rng.spawn(6)
        self.embedding = Embedding(vocab_size, E, dtype=dt, seed=gs[0])
        self.rnn = _layer_class(self._cell)(
            E + (H if self.input_feeding else 0), H, dtype=dt, backend=backend, seed=gs[1]
        )
        self._forward, self._backward = self._cell.functions(self.rnn.backend)
        self.attention = (
            Attention(H, K, attention, attn_size, dtype=dt, seed=gs[2]) if attention else None
        )
        self.bridge = (
            Linear(check_positive_int(init_size, "init_size"), H, dtype=dt, seed=gs[3])
            if init_size is not None
            else None
        )
        self.combine = Linear((K if attention else 0) + H, H, dtype=dt, seed=gs[4])
        self.out = Linear(H, vocab_size, dtype=dt, seed=gs[5])
        self._cache: tuple[Any, ...] | None = None

    @property
    def dtype(self) -> np.dtype:
        return self.out.weight.data.dtype

    # -- pieces ---------------------------------------------------------------------------------
    def initial_state(self, init: Any, batch: int) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
        """``(state, feed)`` before the first step: ``state`` is ``(h0, c0)`` (``(h0,)`` for a
        GRU), ``feed`` the zero :math:`\\tilde h_0`."""
        dt, H = self.dtype, self.hidden_size
        if self.bridge is None:
            h0 = np.zeros((batch, H), dt)
        else:
            if init is None:
                raise TypeError("init is required: this decoder has a bridge (init_size given)")
            init = np.asarray(init, dtype=dt)
            if init.shape != (batch, self.bridge.in_features):
                raise ValueError(
                    f"init must have shape (B, init_size) = ({batch}, {self.bridge.in_features}),"
                    f" got {init.shape}"
                )
            h0 = np.tanh(init @ self.bridge.weight.data.T + self.bridge.bias.data)
        # h0, then zeros for the cell's other states (an LSTM's c)
        state = tuple(h0 if s == "h" else np.zeros((batch, H), dt) for s in self._cell.states)
        return state, np.zeros((batch, H), dt)

    def _rnn_weights(self) -> list[np.ndarray]:
        return [getattr(self.rnn, n).data for n in _CELL_WEIGHTS]

    def step(
        self,
        y_prev: np.ndarray,
        state: tuple[np.ndarray, ...],
        feed: np.ndarray,
        mem: AttentionMemory | None,
        training: bool = False,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...], np.ndarray, np.ndarray | None, Any]:
        """One decoder step (no validation: called in the decoding loops).

        Parameters
        ----------
        y_prev : ndarray of int, shape (B,)
            Previous target tokens.
        state : tuple of ndarray of shape (B, H)
            ``(h, c)`` for an LSTM, ``(h,)`` for a GRU.
        feed : ndarray of shape (B, H)
            :math:`\\tilde h_{t-1}`.
        mem : AttentionMemory or None
            From ``attention.prepare``; None without attention.
        training : bool, default=False
            Return a cache for the backward.

        Returns
        -------
        logits : ndarray of shape (B, vocab_size)
        state : tuple of ndarray of shape (B, H)
        feed : ndarray of shape (B, H)
            :math:`\\tilde h_t`.
        weights : ndarray of shape (B, S) or None
            Attention weights.
        cache : tuple or None
        """
        emb = self.embedding.weight.data[y_prev]
        B, H = emb.shape[0], self.hidden_size
        u = np.empty((B, self._combine_in), self.dtype)
        ht = np.empty((B, H), self.dtype)
        # eval: the cell's weights packed once for all the steps of a decoding (re-packed
        # when they change), as an eval-mode LSTM layer does
        packs = None if training else self._eval_packs()
        new_state, a, cache = self._advance(emb, state, feed, mem, training, packs, u, ht)
        logits = np.ascontiguousarray(_dot(ht, self.out.weight.data.T))
        logits += self.out.bias.data
        return logits, new_state, ht, a, (*cache, u, ht) if training else None

    @property
    def _combine_in(self) -> int:
        """Input features of ``combine``: K + H with attention, H without."""
        return self.combine.in_features

    def _eval_packs(self) -> dict | None:
        """The ``packs`` dict of the cell's weights kept by the ``rnn`` layer (None: numpy)."""
        packs = self.rnn._weight_packs()
        return None if packs is None else packs["_l0"]

    def _advance(self, emb, state, feed, mem, training, packs, u, ht):
        """The recurrent part of a step from the token vectors ``emb`` (B, E): the cell, the
        attention and ``combine``. Writes :math:`[ctx_t; h_t]` into ``u`` (B, K + H) and
        :math:`\\tilde h_t` into ``ht`` (B, H); returns ``(state, weights, cache)``, the cache
        ``(cell cache, attention cache)`` (None when not training)."""
        if self.input_feeding:  # x = [emb; feed], written in place of a concatenation
            E = self.embed_size
            x = np.empty((1, emb.shape[0], E + self.hidden_size), self.dtype)
            x[0, :, :E] = emb
            x[0, :, E:] = feed
        else:
            x = emb[None]
        _, *states, rc = self._forward(
            x, *state, *self._rnn_weights(), training=training, packs=packs
        )
        h = states[0]
        K = u.shape[1] - self.hidden_size
        a = ac = None
        if self.attention is not None:  # the context straight into u[:, :K]
            _, a, ac = self.attention._step(h, mem, training, ctx_out=u[:, :K])
        u[:, K:] = h
        # ht = tanh(u W_c^T + b_c), in place
        ht[...] = _dot(u, self.combine.weight.data.T)
        ht += self.combine.bias.data
        np.tanh(ht, out=ht)
        return tuple(states), a, ((rc, ac) if training else None)

    # -- teacher forcing -------------------------------------------------------------------------
    @_one_blas_thread
    def forward(
        self, tgt_in: Any, mem: AttentionMemory | None, init: Any = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Run every step with the true previous tokens as inputs (teacher forcing).

        Parameters
        ----------
        tgt_in : array_like of int, shape (T, B)
            Decoder inputs: the start token, then the target without its last token.
        mem : AttentionMemory or None
            ``attention.prepare(memory, lengths)``; None without attention.
        init : array_like of shape (B, init_size), optional
            The encoder's final state (needed when the decoder has a bridge).

        Returns
        -------
        logits : ndarray of shape (T, B, vocab_size)
        weights : ndarray of shape (T, B, S), or None without attention
        """
        y = _check_tokens(tgt_in, "tgt_in", self.vocab_size)
        if (self.attention is None) != (mem is None):
            raise TypeError("mem must be an AttentionMemory with attention and None without it")
        T, B = y.shape
        if mem is not None and mem.memory.shape[0] != B:
            raise ValueError(f"mem has batch {mem.memory.shape[0]}, tgt_in has batch {B}")
        state, feed = self.initial_state(init, B)
        training, dt, H = self.training, self.dtype, self.hidden_size
        weights = None if mem is None else np.empty((T, B, mem.memory.shape[1]), dt)
        # the cell's weights packed once for the T steps (they do not change in between)
        packs = {} if training else self._eval_packs()
        us = np.empty((T, B, self._combine_in), dt)  # [ctx_t; h_t]
        hts = np.empty((T, B, H), dt)  # h~_t, the next step's feed
        caches = []
        # (T, B, E): every input token is known with teacher forcing
        emb = np.take(self.embedding.weight.data, y, axis=0)
        for t in range(T):
            state, a, cache = self._advance(
                emb[t], state, feed, mem, training, packs, us[t], hts[t]
            )
            feed = hts[t]
            if weights is not None:
                weights[t] = a
            caches.append(cache)
        # the output layer is outside the recurrence: one GEMM for every step
        logits = _dot(hts.reshape(-1, H), self.out.weight.data.T).reshape(T, B, self.vocab_size)
        logits += self.out.bias.data
        self._cache = (caches, mem, init, y, us, hts) if training else None
        return logits, weights

    @_one_blas_thread
    def backward(self, dlogits: Any) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Backpropagate through every step of the last training-mode :meth:`forward`.

        Parameter gradients accumulate into ``.grad``.

        Parameters
        ----------
        dlogits : array_like of shape (T, B, vocab_size)

        Returns
        -------
        dmemory : ndarray of shape (S, B, K), or None without attention
        dinit : ndarray of shape (B, init_size), or None without a bridge
        """
        if self._cache is None:
            raise _no_cache_error(self)
        caches, mem, init, y, us, hts = self._cache
        dt = self.dtype
        dlogits = np.asarray(dlogits, dtype=dt)
        T, B, H = hts.shape
        V = self.vocab_size
        if dlogits.shape != (T, B, V):
            raise ValueError(
                f"dlogits must have shape (T, B, vocab_size) = {(T, B, V)}, got {dlogits.shape}"
            )
        self._cache = None
        E = self.embed_size
        Wo, Wc = self.out.weight.data, self.combine.weight.data
        # the output layers' gradients summed over the steps, once: dW_o = sum_t dlogits_t^T ht_t
        dl = dlogits.reshape(-1, V)
        _accumulate(self.out.weight, _dot_tn(dl, hts.reshape(-1, H)))
        _accumulate(self.out.bias, dl.sum(axis=0))
        dpres = _dot(dl, Wo).reshape(T, B, H)  # d h~_t from the logits; each made d pre_t below
        params = [getattr(self.rnn, n) for n in _CELL_WEIGHTS]
        dfeed = None
        dstate: tuple[Any, ...] = (None,) * len(self._cell.states)
        demb = np.empty((T, B, E), dt)
        K = us.shape[2] - H
        for t in range(T - 1, -1, -1):
            rc, ac = caches[t]
            ht = hts[t]
            dpre = dpres[t]
            if dfeed is not None:
                dpre += dfeed
            # ht = tanh(u W_c^T + b_c)  =>  dpre = dht (1 - ht^2),  du = dpre W_c
            dpre *= 1 - ht * ht
            du = _dot(dpre, Wc)
            if self.attention is not None:
                dh = self.attention._step_backward(ac, mem, du[:, :K])
                dh += du[:, K:]
            else:
                dh = du
            g = self._backward(rc, dh[None], *dstate)
            dstate = tuple(getattr(g, f"d{s}0") for s in self._cell.states)
            for p, gw in zip(params, (g.dw_ih, g.dw_hh, g.db_ih, g.db_hh), strict=True):
                _accumulate(p, gw)  # the backward's own arrays: adopted on first use
            dx = g.dx[0]
            demb[t] = dx[:, :E]
            dfeed = dx[:, E:] if self.input_feeding else None
        _accumulate(self.combine.weight, _dot_tn(dpres.reshape(-1, H), us.reshape(-1, K + H)))
        _accumulate(self.combine.bias, dpres.reshape(-1, H).sum(axis=0))
        # the rows of the (few) input tokens: a scatter-add, for T * B rows
        demb_sum = np.zeros_like(self.embedding.weight.data)
        np.add.at(demb_sum, y.reshape(-1), demb.reshape(-1, E))
        _accumulate(self.embedding.weight, demb_sum)
        dinit = None
        if self.bridge is not None:
            # h0 = tanh(init W_b^T + b_b)  =>  dpre = dh0 (1 - h0^2)
            (h0, *_), _ = self.initial_state(init, B)
            dh0 = dstate[0] if dstate[0] is not None else np.zeros((B, H), dt)
            dpre0 = dh0 * (1 - h0 * h0)
            init = np.asarray(init, dtype=dt)
            self.bridge.weight.accumulate_grad(dpre0.T @ init)
            self.bridge.bias.accumulate_grad(dpre0.sum(axis=0))
            dinit = dpre0 @ self.bridge.weight.data
        dmemory = None if self.attention is None else self.attention.memory_backward(mem)
        return dmemory, dinit


class Seq2Seq(Module):
    """An :class:`Encoder` and an :class:`AttentionDecoder`, trained with teacher forcing.

    Parameters
    ----------
    src_vocab, tgt_vocab : int
        Sizes of the source and target vocabularies.
    embed_size : int, default=32
        Size of the token vectors (source and target).
    hidden_size : int, default=128
        Hidden size of the decoder; each encoder direction has ``hidden_size // 2`` when
        bidirectional (so the memory has ``hidden_size`` features), ``hidden_size`` otherwise.
    num_layers : int, default=1
        Encoder layers.
    bidirectional : bool, default=True
        Bidirectional encoder.
    attention : {"general", "dot", "additive"} or None, default="general"
    cell : {"lstm", "gru", "rnn"}, default="lstm"
        A cell of the registry (:data:`fastrnn.cells.CELLS`).
        Cell of the encoder and of the decoder.
    dtype : {np.float32, np.float64}, default=np.float32
    backend : {"cython", "numpy"}, default="cython"
    seed : int, numpy.random.Generator or None, default=None

    Examples
    --------
    >>> model = Seq2Seq(src_vocab=40, tgt_vocab=13, seed=0)
    >>> logits = model(src, src_lengths, tgt_in)           # (T, B, 13), teacher forcing
    >>> loss = criterion(logits, tgt_out); model.backward(criterion.backward())
    >>> hyps = model.beam_search(src, src_lengths, bos=1, eos=2, max_len=12)
    """

    def __init__(
        self,
        src_vocab: int,
        tgt_vocab: int,
        embed_size: int = 32,
        hidden_size: int = 128,
        num_layers: int = 1,
        bidirectional: bool = True,
        attention: str | None = "general",
        cell: str = "lstm",
        dtype: Any = np.float32,
        backend: str = "cython",
        seed: int | np.random.Generator | None = None,
    ) -> None:
        super().__init__()
        rng = np.random.default_rng(seed)
        g1, g2 = rng.spawn(2)
        H = check_positive_int(hidden_size, "hidden_size")
        if bidirectional and H % 2:
            raise ValueError(f"hidden_size must be even with bidirectional=True, got {H}")
        He = H // 2 if bidirectional else H
        self.encoder = Encoder(
            src_vocab, embed_size, He, num_layers, bidirectional, cell, dtype, backend, g1
        )
        self.decoder = AttentionDecoder(
            tgt_vocab,
            embed_size,
            H,
            self.encoder.output_size,
            init_size=self.encoder.output_size,
            attention=attention,
            cell=cell,
            dtype=dtype,
            backend=backend,
            seed=g2,
        )
        self._cache: tuple[Any, ...] | None = None

    def _encode(self, src: Any, src_lengths: Any) -> tuple[AttentionMemory | None, np.ndarray]:
        memory, final = self.encoder(src, src_lengths)
        att = self.decoder.attention
        return (None if att is None else att.prepare(memory, src_lengths)), final

    @_one_blas_thread
    def forward(self, src: Any, src_lengths: Any, tgt_in: Any) -> np.ndarray:
        """Teacher-forced logits of every target step.

        Parameters
        ----------
        src : array_like of int, shape (S, B)
        src_lengths : array_like of int, shape (B,), or None
        tgt_in : array_like of int, shape (T, B)
            The start token followed by the target without its last token.

        Returns
        -------
        logits : ndarray of shape (T, B, tgt_vocab)
        """
        mem, final = self._encode(src, src_lengths)
        logits, _ = self.decoder(tgt_in, mem, final)
        self._cache = (mem is not None,) if self.training else None
        return logits

    @_one_blas_thread
    def backward(self, dlogits: Any) -> None:
        """Accumulate every parameter's gradient from d loss / d logits."""
        if self._cache is None:
            raise _no_cache_error(self)
        self._cache = None
        dmemory, dfinal = self.decoder.backward(dlogits)
        self.encoder.backward(dmemory, dfinal)

    # -- decoding ---------------------------------------------------------------------------------
    def _start(self, src: Any, src_lengths: Any, bos: Any, eos: Any, max_len: Any):
        V = self.decoder.vocab_size
        bos = _check_token_id(bos, "bos", V)
        eos = _check_token_id(eos, "eos", V)
        max_len = check_positive_int(max_len, "max_len")
        was = self.training
        self.eval()
        try:
            mem, final = self._encode(src, src_lengths)
        finally:
            self.train(was)
        return mem, final, bos, eos, max_len

    @_one_blas_thread
    def greedy(
        self, src: Any, src_lengths: Any = None, *, bos: int, eos: int, max_len: int
    ) -> tuple[list[np.ndarray], np.ndarray | None]:
        """Decode by taking the most likely token at every step.

        Parameters
        ----------
        src : array_like of int, shape (S, B)
        src_lengths : array_like of int, shape (B,), optional
        bos, eos : int
            Start and end tokens of the target vocabulary.
        max_len : int
            Most tokens generated per sequence (the end token included).

        Returns
        -------
        hypotheses : list of B ndarray of int
            Generated tokens of each source, without the end token.
        weights : ndarray of shape (L, B, S) or None
            Attention weights of each generated step (None without attention).
        """
        mem, final, bos, eos, max_len = self._start(src, src_lengths, bos, eos, max_len)
        B = final.shape[0]
        state, feed = self.decoder.initial_state(final, B)
        y = np.full(B, bos, np.intp)
        out, ws = [], []
        done = np.zeros(B, bool)
        for _ in range(max_len):
            logits, state, feed, a, _ = self.decoder.step(y, state, feed, mem)
            y = logits.argmax(axis=1)
            out.append(np.where(done, eos, y))
            if a is not None:
                ws.append(a)
            done |= y == eos
            if done.all():
                break
        toks = np.stack(out, axis=1)
        hyps = [row[: np.argmax(row == eos)] if (row == eos).any() else row for row in toks]
        return hyps, (np.stack(ws) if ws else None)

    @_one_blas_thread
    def beam_search(
        self,
        src: Any,
        src_lengths: Any = None,
        *,
        bos: int,
        eos: int,
        max_len: int,
        beam_width: int = 5,
        length_penalty: float = 1.0,
    ) -> tuple[list[np.ndarray], np.ndarray]:
        """Decode with beam search.

        Each source keeps the ``beam_width`` hypotheses of highest normalized score
        :math:`\\log p(y) / |y|^\\alpha` (:math:`|y|` counts the end token, :math:`\\alpha` =
        ``length_penalty``; 0 ranks by the raw log-probability, which favours short outputs). A
        hypothesis that emitted the end token is finished: it stays in the beam with its score
        and competes with the others until every hypothesis is finished or ``max_len`` steps.

        Parameters
        ----------
        src, src_lengths, bos, eos, max_len
            As in :meth:`greedy`.
        beam_width : int, default=5
            1 gives greedy decoding.
        length_penalty : float, default=1.0
            :math:`\\alpha` above, >= 0.

        Returns
        -------
        hypotheses : list of B ndarray of int
            The best hypothesis of each source, without the end token.
        scores : ndarray of shape (B,)
            Their normalized log-probabilities.
        """
        W = check_positive_int(beam_width, "beam_width")
        alpha = float(length_penalty)
        if not alpha >= 0:
            raise ValueError(f"length_penalty must be >= 0, got {length_penalty!r}")
        mem, final, bos, eos, max_len = self._start(src, src_lengths, bos, eos, max_len)
        B = final.shape[0]
        V = self.decoder.vocab_size
        memw = None if mem is None else mem.repeat(W)
        state, feed = self.decoder.initial_state(np.repeat(final, W, axis=0), B * W)
        y = np.full(B * W, bos, np.intp)
        score = np.zeros((B, W))
        score[:, 1:] = -np.inf  # the W copies of the start are one hypothesis
        length = np.zeros((B, W))
        done = np.zeros((B, W), bool)
        hist = np.zeros((B, W, 0), np.intp)
        rows = np.arange(B)[:, None]
        for _ in range(max_len):
            logits, state, feed, _, _ = self.decoder.step(y, state, feed, memw)
            logp = logits.astype(np.float64)
            logp -= logp.max(axis=1, keepdims=True)
            logp -= np.log(np.exp(logp).sum(axis=1, keepdims=True))
            logp = logp.reshape(B, W, V)
            logp[done] = -np.inf  # a finished hypothesis only "extends" by eos, at no cost
            logp[done, eos] = 0.0
            cand = score[:, :, None] + logp
            new_len = length + ~done
            norm = cand / (new_len[:, :, None] ** alpha)
            flat = norm.reshape(B, -1)
            top = np.argsort(-flat, axis=1, kind="stable")[:, :W]
            beam, tok = top // V, top % V
            score = cand.reshape(B, -1)[rows, top]
            length = new_len[rows, beam]
            done = done[rows, beam] | (tok == eos)
            hist = np.concatenate([hist[rows, beam], tok[:, :, None]], axis=2)
            src_rows = (rows * W + beam).reshape(-1)
            state = tuple(s[src_rows] for s in state)
            feed = feed[src_rows]
            y = tok.reshape(-1)
            if done.all():
                break
        final_score = score / np.maximum(length, 1) ** alpha
        best = final_score.argmax(axis=1)
        hyps = []
        for b in range(B):
            seq = hist[b, best[b]]
            stop = np.flatnonzero(seq == eos)
            hyps.append(seq[: stop[0]] if stop.size else seq)
        return hyps, final_score[np.arange(B), best]
