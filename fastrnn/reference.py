"""The pure-NumPy reference: same functions, signatures and results as :mod:`fastrnn.functional`.

Written to be read: one loop over time per direction, one line per equation, no fusion. It is the
oracle of the test suite and the baseline of the benchmarks. Shapes: ``x`` is ``(T, B, I)``,
states are ``(B, H)``, weights are PyTorch's (``w_ih`` is ``(G*H, I)``, ``w_hh`` is ``(G*H, H)``).

Variable lengths use masks: at step ``t`` a sequence ``b`` with ``lengths[b] <= t`` keeps its state
and outputs zeros, which is what PyTorch's packed sequences compute. ``reverse=True`` runs the same
loop from ``t = T - 1`` down to 0: a padded step keeps the initial state, so each sequence starts at
its own last step, as the reverse direction of a packed bidirectional layer does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fastrnn._common import (
    Cache,
    GRUGrads,
    LSTMGrads,
    LSTMProjGrads,
    RNNGrads,
    as_grad,
    check_cache,
    prepare,
)
from fastrnn.cells import GRU as _GRU
from fastrnn.cells import LSTM as _LSTM
from fastrnn.cells import RNN as _RNN

__all__ = [
    "gru_backward",
    "gru_forward",
    "lstm_backward",
    "lstm_forward",
    "rnn_backward",
    "rnn_forward",
]

BACKEND = "numpy"


@dataclass(eq=False)
class _Saved:
    """What a training forward of the reference keeps for its backward."""

    m: np.ndarray  # (T, B, 1) masks: 1 inside each sequence, 0 on its padding
    steps: list  # per step, the values the step computed (a tuple per cell kind)


def _sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def _masks(lengths, T, B, dtype):
    """(T, B, 1) array: 1 where step t is inside sequence b, else 0."""
    if lengths is None:
        return np.ones((T, B, 1), dtype)
    return (np.arange(T)[:, None] < lengths[None, :]).astype(dtype)[:, :, None]


def _keep(m, active, inactive):
    """``active`` where the step is inside the sequence (m = 1), else ``inactive``.

    A select, not ``m * active + (1 - m) * inactive``: 0 * inf would turn an infinite state
    into NaN, and the padding's values (finite or not) must not reach the outputs.
    """
    return np.where(m > 0, active, inactive)


def _steps(T, reverse):
    """The order in which the forward visits the steps (the backward visits them reversed)."""
    return range(T - 1, -1, -1) if reverse else range(T)


def _biases(p):
    zero = np.zeros(p.w_hh.shape[0], p.dtype)
    return (zero, zero) if p.b_ih is None else (p.b_ih, p.b_hh)


def _weight_grads(p, dgi, dgh, hprev):
    """dW_ih, dW_hh, db_ih, db_hh summed over every step."""
    dw_ih = sum(dgi[t].T @ p.x[t] for t in range(p.T))
    dw_hh = sum(dgh[t].T @ hprev[t] for t in range(p.T))
    if p.b_ih is None:
        return dw_ih, dw_hh, None, None
    return dw_ih, dw_hh, dgi.sum(axis=(0, 1)), dgh.sum(axis=(0, 1))


def _empty_weight_grads(p):
    GH = p.w_hh.shape[0]
    db = None if p.b_ih is None else np.zeros(GH, p.dtype)
    return np.zeros_like(p.w_ih), np.zeros_like(p.w_hh), db, None if db is None else db.copy()


# ---------------------------------------------------------------------------------------------
# Elman RNN: h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)
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
    packs=None,  # the kernels' packed weights (fastrnn.functional); nothing to pack here
):
    """Elman RNN over a whole sequence; see :func:`fastrnn.functional.rnn_forward`."""
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
    p = prepare(_RNN, x, h0, None, w_ih, w_hh, b_ih, b_hh, lengths, check_finite=check_finite)
    b_i, b_h = _biases(p)
    m = _masks(p.lengths, p.T, p.B, p.dtype)
    act = np.tanh if nonlinearity == "tanh" else (lambda a: np.maximum(a, 0))
    h = p.h0.copy()
    y = np.zeros((p.T, p.B, p.H), p.dtype)
    hprev = np.zeros((p.T, p.B, p.H), p.dtype)
    for t in _steps(p.T, reverse):
        hprev[t] = h
        h_new = act(p.x[t] @ p.w_ih.T + b_i + h @ p.w_hh.T + b_h)
        h = _keep(m[t], h_new, h)
        y[t] = _keep(m[t], h_new, 0)
    cache = None
    if training:
        options = {"nonlinearity": nonlinearity, "reverse": reverse}
        cache = Cache(BACKEND, _RNN, p, options, _Saved(m, [y, hprev]))
    return y, h, cache


def rnn_backward(cache, dy, dh_n=None):
    """BPTT for :func:`rnn_forward`; see :func:`fastrnn.functional.rnn_backward`."""
    c = check_cache(cache, BACKEND, _RNN)
    p, m, (y, hprev) = c.prepared, c.saved.m, c.saved.steps
    dy = as_grad("dy", dy, (p.T, p.B, p.H), p.dtype)
    dh = as_grad("dh_n", dh_n, (p.B, p.H), p.dtype)
    dh = np.zeros((p.B, p.H), p.dtype) if dh is None else dh.copy()
    dg = np.zeros((p.T, p.B, p.H), p.dtype)
    dx = np.zeros_like(p.x)
    for t in reversed(_steps(p.T, c.options["reverse"])):
        dht = _keep(m[t], dh + (0 if dy is None else dy[t]), 0)  # reaching h_t's new value
        if c.options["nonlinearity"] == "relu":
            dg[t] = dht * (y[t] > 0)
        else:
            dg[t] = dht * (1 - y[t] ** 2)
        dx[t] = dg[t] @ p.w_ih
        dh = _keep(m[t], dg[t] @ p.w_hh, dh)
    if p.T == 0:
        return RNNGrads(dx, dh, *_empty_weight_grads(p))
    return RNNGrads(dx, dh, *_weight_grads(p, dg, dg, hprev))


# ---------------------------------------------------------------------------------------------
# LSTM, gates i, f, g, o:  c_t = f * c_{t-1} + i * g,  h_t = o * tanh(c_t)
# With a projection w_hr (P, H):  h_t = W_hr (o * tanh(c_t)), so h, y and w_hh's columns are P wide.
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
    packs=None,  # the kernels' packed weights (fastrnn.functional); nothing to pack here
):
    """LSTM over a whole sequence; see :func:`fastrnn.functional.lstm_forward`."""
    p = prepare(_LSTM, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, w_hr, check_finite=check_finite)
    b_i, b_h = _biases(p)
    H = p.H
    m = _masks(p.lengths, p.T, p.B, p.dtype)
    h, c = p.h0.copy(), p.c0.copy()
    y = np.zeros((p.T, p.B, h.shape[1]), p.dtype)
    saved = [None] * p.T
    for t in _steps(p.T, reverse):
        a = p.x[t] @ p.w_ih.T + b_i + h @ p.w_hh.T + b_h
        i = _sigmoid(a[:, :H])
        f = _sigmoid(a[:, H : 2 * H])
        g = np.tanh(a[:, 2 * H : 3 * H])
        o = _sigmoid(a[:, 3 * H :])
        c_new = f * c + i * g
        mm = o * np.tanh(c_new)
        h_new = mm if p.w_hr is None else mm @ p.w_hr.T
        saved[t] = (h, c, i, f, g, o, c_new, mm)
        h = _keep(m[t], h_new, h)
        c = _keep(m[t], c_new, c)
        y[t] = _keep(m[t], h_new, 0)
    cache = None
    if training:
        cache = Cache(BACKEND, _LSTM, p, {"reverse": reverse}, _Saved(m, saved))
    return y, h, c, cache


def lstm_backward(cache, dy, dh_n=None, dc_n=None):
    """BPTT for :func:`lstm_forward`; see :func:`fastrnn.functional.lstm_backward`."""
    cc = check_cache(cache, BACKEND, _LSTM)
    p, saved, m = cc.prepared, cc.saved.steps, cc.saved.m
    H = p.H
    R = H if p.w_hr is None else p.w_hr.shape[0]  # width of h
    dy = as_grad("dy", dy, (p.T, p.B, R), p.dtype)
    dh = as_grad("dh_n", dh_n, (p.B, R), p.dtype)
    dc = as_grad("dc_n", dc_n, (p.B, H), p.dtype)
    dh = np.zeros((p.B, R), p.dtype) if dh is None else dh.copy()
    dc = np.zeros((p.B, H), p.dtype) if dc is None else dc.copy()
    dg = np.zeros((p.T, p.B, 4 * H), p.dtype)
    hprev = np.zeros((p.T, p.B, R), p.dtype)
    dx = np.zeros_like(p.x)
    dw_hr = None if p.w_hr is None else np.zeros_like(p.w_hr)
    for t in reversed(_steps(p.T, cc.options["reverse"])):
        h, c, i, f, g, o, c_new, mm = saved[t]
        hprev[t] = h
        dht = _keep(m[t], dh + (0 if dy is None else dy[t]), 0)
        dct = _keep(m[t], dc, 0)
        if p.w_hr is not None:  # h_t = mm W_hr^T
            dw_hr += dht.T @ _keep(m[t], mm, 0)
            dht = dht @ p.w_hr
        tc = np.tanh(c_new)
        do = dht * tc
        dct = dct + dht * o * (1 - tc**2)
        di, df, dgg = dct * g, dct * c, dct * i
        dg[t] = _keep(
            m[t],
            np.concatenate(
                [di * i * (1 - i), df * f * (1 - f), dgg * (1 - g**2), do * o * (1 - o)], axis=1
            ),
            0,
        )
        dx[t] = dg[t] @ p.w_ih
        dh = _keep(m[t], dg[t] @ p.w_hh, dh)
        dc = _keep(m[t], dct * f, dc)
    weight_grads = _empty_weight_grads(p) if p.T == 0 else _weight_grads(p, dg, dg, hprev)
    if p.w_hr is not None:
        return LSTMProjGrads(dx, dh, dc, *weight_grads, dw_hr)
    return LSTMGrads(dx, dh, dc, *weight_grads)


# ---------------------------------------------------------------------------------------------
# GRU, gates r, z, n (PyTorch's: the reset gate multiplies W_hn h + b_hn):
#   r = sig(W_ir x + b_ir + W_hr h + b_hr),  z = sig(W_iz x + b_iz + W_hz h + b_hz)
#   n = tanh(W_in x + b_in + r * (W_hn h + b_hn)),  h_t = (1 - z) * n + z * h_{t-1}
# With reset_after=False (Cho et al.): n = tanh(W_in x + b_in + W_hn (r * h) + b_hn).
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
    packs=None,  # the kernels' packed weights (fastrnn.functional); nothing to pack here
):
    """GRU over a whole sequence; see :func:`fastrnn.functional.gru_forward`."""
    p = prepare(_GRU, x, h0, None, w_ih, w_hh, b_ih, b_hh, lengths, check_finite=check_finite)
    b_i, b_h = _biases(p)
    H = p.H
    m = _masks(p.lengths, p.T, p.B, p.dtype)
    h = p.h0.copy()
    y = np.zeros((p.T, p.B, H), p.dtype)
    saved = [None] * p.T
    for t in _steps(p.T, reverse):
        gi = p.x[t] @ p.w_ih.T + b_i
        gh = h @ p.w_hh.T + b_h
        r = _sigmoid(gi[:, :H] + gh[:, :H])
        z = _sigmoid(gi[:, H : 2 * H] + gh[:, H : 2 * H])
        if reset_after:
            hn = gh[:, 2 * H :]
            n = np.tanh(gi[:, 2 * H :] + r * hn)
        else:
            n = np.tanh(gi[:, 2 * H :] + (r * h) @ p.w_hh[2 * H :].T + b_h[2 * H :])
            hn = None
        h_new = (1 - z) * n + z * h
        saved[t] = (h, r, z, n, hn)
        h = _keep(m[t], h_new, h)
        y[t] = _keep(m[t], h_new, 0)
    cache = None
    if training:
        options = {"reset_after": bool(reset_after), "reverse": reverse}
        cache = Cache(BACKEND, _GRU, p, options, _Saved(m, saved))
    return y, h, cache


def gru_backward(cache, dy, dh_n=None):
    """BPTT for :func:`gru_forward`; see :func:`fastrnn.functional.gru_backward`."""
    cc = check_cache(cache, BACKEND, _GRU)
    p, saved, m = cc.prepared, cc.saved.steps, cc.saved.m
    reset_after = cc.options["reset_after"]
    H = p.H
    dy = as_grad("dy", dy, (p.T, p.B, H), p.dtype)
    dh = as_grad("dh_n", dh_n, (p.B, H), p.dtype)
    dh = np.zeros((p.B, H), p.dtype) if dh is None else dh.copy()
    dgi = np.zeros((p.T, p.B, 3 * H), p.dtype)
    dgh = np.zeros((p.T, p.B, 3 * H), p.dtype)
    hprev = np.zeros((p.T, p.B, H), p.dtype)
    dw_hn = np.zeros((H, H), p.dtype)  # reset_after=False: sum_t dn_pre^T (r * h)
    dx = np.zeros_like(p.x)
    for t in reversed(_steps(p.T, cc.options["reverse"])):
        h, r, z, n, hn = saved[t]
        hprev[t] = h
        dht = _keep(m[t], dh + (0 if dy is None else dy[t]), 0)
        dn = dht * (1 - z)
        dz = dht * (h - n)
        dn_pre = _keep(m[t], dn * (1 - n**2), 0)  # padded steps' gates never reach a gradient
        dz_pre = _keep(m[t], dz * z * (1 - z), 0)
        if reset_after:
            dr_pre = _keep(m[t], dn_pre * hn * r * (1 - r), 0)
            dgh[t] = np.concatenate([dr_pre, dz_pre, _keep(m[t], dn_pre * r, 0)], axis=1)
            dh_direct = 0
        else:
            drh = dn_pre @ p.w_hh[2 * H :]  # gradient reaching r * h
            dr_pre = _keep(m[t], drh * h * r * (1 - r), 0)
            dgh[t] = np.concatenate([dr_pre, dz_pre, dn_pre], axis=1)
            dw_hn += dn_pre.T @ _keep(m[t], r * h, 0)
            dh_direct = drh * r
        dgi[t] = np.concatenate([dr_pre, dz_pre, dn_pre], axis=1)
        dx[t] = dgi[t] @ p.w_ih
        if reset_after:
            dh_mat = dgh[t] @ p.w_hh
        else:
            dh_mat = dgh[t][:, : 2 * H] @ p.w_hh[: 2 * H]
        dh = _keep(m[t], dh_mat + dh_direct + dht * z, dh)
    if p.T == 0:
        return GRUGrads(dx, dh, *_empty_weight_grads(p))
    dw_ih, dw_hh, db_ih, db_hh = _weight_grads(p, dgi, dgh, hprev)
    if not reset_after:
        dw_hh[2 * H :] = dw_hn
    return GRUGrads(dx, dh, dw_ih, dw_hh, db_ih, db_hh)
