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
    RNNGrads,
    as_grad,
    cell_extras,
    cell_states_grad,
    check_cache,
    grads_of,
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


#: Layer normalization's epsilon (as torch.nn.LayerNorm's default).
LN_EPS = 1e-5


def _layer_norm(v, gain, bias=0):
    """``gain * (v - mean) / sqrt(var + eps) + bias`` over the last axis.

    Returns ``(out, vhat, rstd)``: the result, the normalized ``v`` and 1 / sqrt(var + eps).
    """
    d = v - v.mean(axis=-1, keepdims=True)
    rstd = 1.0 / np.sqrt((d * d).mean(axis=-1, keepdims=True) + LN_EPS)
    vhat = d * rstd
    return vhat * gain + bias, vhat, rstd


def _layer_norm_backward(dout, ln, gain):
    """Gradients of :func:`_layer_norm` (given its result ``ln``): ``(dv, dgain, dbias)`` with
    the gain's and bias's gradients per row (sum them over the rows).

    dv = rstd * (dvhat - mean(dvhat) - vhat * mean(dvhat * vhat)),  dvhat = dout * gain
    """
    _, vhat, rstd = ln
    dvhat = dout * gain
    dv = rstd * (
        dvhat
        - dvhat.mean(axis=-1, keepdims=True)
        - vhat * (dvhat * vhat).mean(axis=-1, keepdims=True)
    )
    return dv, dout * vhat, dout


def _zoneout(p, name, t):
    """Step t's zoneout weights of one state: None (off), a number (eval), or (B, width)."""
    z = p.extra(name)
    return z if z is None or isinstance(z, float) else z[t]


def _biases(p):
    zero = np.zeros(p.w_hh.shape[0], p.dtype)
    return (zero, zero) if p.b_ih is None else (p.b_ih, p.b_hh)


def _weight_grads(p, dgi, dgh, hprev, db_i=None, db_h=None):
    """dW_ih, dW_hh, db_ih, db_hh summed over every step (zeros for T == 0).

    ``dgi``/``dgh``: gradients of W_ih x and W_hh h; the biases' come from ``db_i``/``db_h``
    (the gradients where the biases are added, after a layer norm) or else from ``dgi``/``dgh``.
    """
    if p.T == 0:
        return _empty_weight_grads(p)
    dw_ih = sum(dgi[t].T @ _active_rows(p, p.x[t], t) for t in range(p.T))
    dw_hh = sum(dgh[t].T @ _active_rows(p, hprev[t], t) for t in range(p.T))
    if p.b_ih is None:
        return dw_ih, dw_hh, None, None
    db_i, db_h = dgi if db_i is None else db_i, dgh if db_h is None else db_h
    return dw_ih, dw_hh, db_i.sum(axis=(0, 1)), db_h.sum(axis=(0, 1))


def _active_rows(p, a, t):
    """``a`` (B, width) of step t with its padding rows (``t >= lengths[b]``) set to zero: their
    gradient rows are zero, and this keeps a NaN or infinity there out of the sum (``0 * NaN``),
    as a packed sequence, which has no padding, does."""
    if p.lengths is None:
        return a
    return np.where((t < p.lengths)[:, None], a, a.dtype.type(0))


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
    recurrent_mask=None,
    zoneout_h=None,
    packs=None,  # the kernels' packed weights (fastrnn.functional); nothing to pack here
):
    """Elman RNN over a whole sequence; see :func:`fastrnn.functional.rnn_forward`."""
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
    extras = cell_extras(_RNN, recurrent_mask=recurrent_mask, zoneout_h=zoneout_h)
    p = prepare(_RNN, x, h0, None, w_ih, w_hh, b_ih, b_hh, lengths, None, check_finite, extras)
    b_i, b_h = _biases(p)
    rmask = p.extra("recurrent_mask")
    m = _masks(p.lengths, p.T, p.B, p.dtype)
    act = np.tanh if nonlinearity == "tanh" else (lambda a: np.maximum(a, 0))
    h = p.h0.copy()
    y = np.zeros((p.T, p.B, p.H), p.dtype)
    acts = np.zeros((p.T, p.B, p.H), p.dtype)  # act(...) of each step, before zoneout
    hprev = np.zeros((p.T, p.B, p.H), p.dtype)  # what W_hh multiplies: h_{t-1} (* rmask)
    for t in _steps(p.T, reverse):
        hd = h if rmask is None else h * rmask  # recurrent dropout: the same mask every step
        hprev[t] = hd
        h_new = act(p.x[t] @ p.w_ih.T + b_i + hd @ p.w_hh.T + b_h)
        acts[t] = _keep(m[t], h_new, 0)  # as y: nothing of the padding reaches a gradient
        zh = _zoneout(p, "zoneout_h", t)
        h_out = h_new if zh is None else zh * h + (1 - zh) * h_new  # zoneout keeps h_{t-1}
        h = _keep(m[t], h_out, h)
        y[t] = _keep(m[t], h_out, 0)
    cache = None
    if training:
        options = {"nonlinearity": nonlinearity, "reverse": reverse}
        cache = Cache(BACKEND, _RNN, p, options, _Saved(m, [acts, hprev]))
    return y, h, cache


def rnn_backward(cache, dy, dh_n=None):
    """BPTT for :func:`rnn_forward`; see :func:`fastrnn.functional.rnn_backward`."""
    c = check_cache(cache, BACKEND, _RNN)
    p, m, (acts, hprev) = c.prepared, c.saved.m, c.saved.steps
    rmask = p.extra("recurrent_mask")
    dy = as_grad("dy", dy, (p.T, p.B, p.H), p.dtype)
    dh = as_grad("dh_n", dh_n, (p.B, p.H), p.dtype)
    dh = np.zeros((p.B, p.H), p.dtype) if dh is None else dh.copy()
    dg = np.zeros((p.T, p.B, p.H), p.dtype)
    dx = np.zeros_like(p.x)
    for t in reversed(_steps(p.T, c.options["reverse"])):
        dht = _keep(m[t], dh + (0 if dy is None else dy[t]), 0)  # reaching h_t
        zh = _zoneout(p, "zoneout_h", t)
        dh_keep = 0 if zh is None else zh * dht  # zoneout: part of h_t is h_{t-1}
        if zh is not None:
            dht = (1 - zh) * dht  # reaching h_t's new value
        if c.options["nonlinearity"] == "relu":
            dg[t] = dht * (acts[t] > 0)
        else:
            dg[t] = dht * (1 - acts[t] ** 2)
        dx[t] = _keep(m[t], dg[t] @ p.w_ih, 0)  # zero at padded steps
        dh_mat = dg[t] @ p.w_hh
        if rmask is not None:
            dh_mat = dh_mat * rmask
        dh = _keep(m[t], dh_keep + dh_mat, dh)
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
    w_peephole=None,
    ln_ih=None,
    ln_hh=None,
    ln_c=None,
    ln_c_bias=None,
    recurrent_mask=None,
    zoneout_h=None,
    zoneout_c=None,
    return_cell_states=False,
    packs=None,  # the kernels' packed weights (fastrnn.functional); nothing to pack here
):
    """LSTM over a whole sequence; see :func:`fastrnn.functional.lstm_forward`."""
    extras = cell_extras(_LSTM, w_hr, w_peephole=w_peephole, ln_ih=ln_ih, ln_hh=ln_hh, ln_c=ln_c,
                         ln_c_bias=ln_c_bias, recurrent_mask=recurrent_mask,
                         zoneout_h=zoneout_h, zoneout_c=zoneout_c)  # fmt: skip
    p = prepare(_LSTM, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, w_hr, check_finite, extras)
    b_i, b_h = _biases(p)
    H = p.H
    wp, rmask = p.extra("w_peephole"), p.extra("recurrent_mask")
    ln = p.extra("ln_ih") is not None
    m = _masks(p.lengths, p.T, p.B, p.dtype)
    h, c = p.h0.copy(), p.c0.copy()
    y = np.zeros((p.T, p.B, h.shape[1]), p.dtype)
    cs = np.zeros((p.T, p.B, H), p.dtype) if return_cell_states else None
    saved = [None] * p.T
    for t in _steps(p.T, reverse):
        hd = h if rmask is None else h * rmask  # recurrent dropout: the same mask every step
        ax, ah = p.x[t] @ p.w_ih.T, hd @ p.w_hh.T
        if ln:  # a = LN(W_ih x) + b_ih + LN(W_hh h) + b_hh
            ax, ah = _layer_norm(ax, p.extra("ln_ih")), _layer_norm(ah, p.extra("ln_hh"))
            a = ax[0] + ah[0] + b_i + b_h
        else:
            a = ax + ah + b_i + b_h
        if wp is not None:  # peepholes: i and f see c_{t-1}
            a[:, :H] += wp[0] * c
            a[:, H : 2 * H] += wp[1] * c
        i = _sigmoid(a[:, :H])
        f = _sigmoid(a[:, H : 2 * H])
        g = np.tanh(a[:, 2 * H : 3 * H])
        c_new = f * c + i * g
        a_o = a[:, 3 * H :] if wp is None else a[:, 3 * H :] + wp[2] * c_new  # o sees c_t
        o = _sigmoid(a_o)
        cn = _layer_norm(c_new, p.extra("ln_c"), p.extra("ln_c_bias")) if ln else None
        mm = o * np.tanh(c_new if cn is None else cn[0])
        h_new = mm if p.w_hr is None else mm @ p.w_hr.T
        zh, zc = _zoneout(p, "zoneout_h", t), _zoneout(p, "zoneout_c", t)
        h_out = h_new if zh is None else zh * h + (1 - zh) * h_new  # zoneout keeps h_{t-1}
        c_out = c_new if zc is None else zc * c + (1 - zc) * c_new
        saved[t] = (h, c, hd, i, f, g, o, c_new, mm, ax, ah, cn)
        h = _keep(m[t], h_out, h)
        c = _keep(m[t], c_out, c)
        y[t] = _keep(m[t], h_out, 0)
        if cs is not None:
            cs[t] = _keep(m[t], c_out, 0)
    cache = None
    if training:
        options = {"reverse": reverse, "return_cell_states": bool(return_cell_states)}
        cache = Cache(BACKEND, _LSTM, p, options, _Saved(m, saved))
    if return_cell_states:
        return y, h, c, cs, cache
    return y, h, c, cache


def lstm_backward(cache, dy, dh_n=None, dc_n=None, *, dcs=None):
    """BPTT for :func:`lstm_forward`; see :func:`fastrnn.functional.lstm_backward`."""
    cc = check_cache(cache, BACKEND, _LSTM)
    p, saved, m = cc.prepared, cc.saved.steps, cc.saved.m
    H = p.H
    R = H if p.w_hr is None else p.w_hr.shape[0]  # width of h
    dy = as_grad("dy", dy, (p.T, p.B, R), p.dtype)
    dh = as_grad("dh_n", dh_n, (p.B, R), p.dtype)
    dc = as_grad("dc_n", dc_n, (p.B, H), p.dtype)
    dcs = cell_states_grad(cc, dcs)
    dh = np.zeros((p.B, R), p.dtype) if dh is None else dh.copy()
    dc = np.zeros((p.B, H), p.dtype) if dc is None else dc.copy()
    wp, rmask = p.extra("w_peephole"), p.extra("recurrent_mask")
    ln = p.extra("ln_ih") is not None
    da_all = np.zeros((p.T, p.B, 4 * H), p.dtype)  # gradient of the gates' pre-activations
    dgx = np.zeros((p.T, p.B, 4 * H), p.dtype)  # ... of W_ih x (after LN's backward)
    dgh = np.zeros((p.T, p.B, 4 * H), p.dtype)  # ... of W_hh h
    hds = np.zeros((p.T, p.B, R), p.dtype)  # the (dropped-out) h_{t-1} each step multiplied
    dx = np.zeros_like(p.x)
    dw_hr = None if p.w_hr is None else np.zeros_like(p.w_hr)
    dwp = None if wp is None else np.zeros_like(wp)
    dln = {k: np.zeros_like(p.extra(k)) for k in ("ln_ih", "ln_hh", "ln_c", "ln_c_bias") if ln}
    for t in reversed(_steps(p.T, cc.options["reverse"])):
        h, c, hd, i, f, g, o, c_new, mm, ax, ah, cn = saved[t]
        hds[t] = hd
        dht = _keep(m[t], dh + (0 if dy is None else dy[t]), 0)
        dct = _keep(m[t], dc + (0 if dcs is None else dcs[t]), 0)
        zh, zc = _zoneout(p, "zoneout_h", t), _zoneout(p, "zoneout_c", t)
        dh_keep = 0 if zh is None else zh * dht  # zoneout: part of h_t is h_{t-1}
        dc_keep = 0 if zc is None else zc * dct
        if zh is not None:
            dht = (1 - zh) * dht
        if zc is not None:
            dct = (1 - zc) * dct
        if p.w_hr is not None:  # h_t = mm W_hr^T
            dw_hr += dht.T @ _keep(m[t], mm, 0)
            dht = dht @ p.w_hr
        tc = np.tanh(c_new if cn is None else cn[0])
        do = dht * tc
        dtc = dht * o * (1 - tc**2)
        if cn is None:
            dct = dct + dtc
        else:  # tanh(LN(c_t))
            dcn, dgain, dbias = _layer_norm_backward(dtc, cn, p.extra("ln_c"))
            dct = dct + dcn
            dln["ln_c"] += _keep(m[t], dgain, 0).sum(0)
            dln["ln_c_bias"] += _keep(m[t], dbias, 0).sum(0)
        da_o = do * o * (1 - o)
        if wp is not None:  # o saw c_t
            dct = dct + wp[2] * da_o
        da_i = dct * g * i * (1 - i)
        da_f = dct * c * f * (1 - f)
        da_g = dct * i * (1 - g**2)
        dc_prev = dct * f
        if wp is not None:  # i and f saw c_{t-1}
            dc_prev = dc_prev + wp[0] * da_i + wp[1] * da_f
            dwp += _keep(m[t], np.stack([da_i * c, da_f * c, da_o * c_new]), 0).sum(axis=1)
        da = _keep(m[t], np.concatenate([da_i, da_f, da_g, da_o], axis=1), 0)
        da_all[t] = da
        if ln:
            dgx[t], dgain_x, _ = _layer_norm_backward(da, ax, p.extra("ln_ih"))
            dgh[t], dgain_h, _ = _layer_norm_backward(da, ah, p.extra("ln_hh"))
            dln["ln_ih"] += dgain_x.sum(0)
            dln["ln_hh"] += dgain_h.sum(0)
        else:
            dgx[t] = dgh[t] = da
        dx[t] = _keep(m[t], dgx[t] @ p.w_ih, 0)  # zero at padded steps
        dhd = dgh[t] @ p.w_hh
        dh = _keep(m[t], dh_keep + (dhd if rmask is None else dhd * rmask), dh)
        dc = _keep(m[t], dc_keep + dc_prev, dc)
    dw_ih, dw_hh, db_ih, db_hh = _weight_grads(p, dgx, dgh, hds, da_all, da_all)
    fields = [dx, dh, dc, dw_ih, dw_hh, db_ih, db_hh]
    extra = {"dw_hr": dw_hr, "dw_peephole": dwp, **{"d" + k: v for k, v in dln.items()}}
    return grads_of(_LSTM, fields, extra)


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
    ln_ih=None,
    ln_hh=None,
    recurrent_mask=None,
    zoneout_h=None,
    packs=None,  # the kernels' packed weights (fastrnn.functional); nothing to pack here
):
    """GRU over a whole sequence; see :func:`fastrnn.functional.gru_forward`."""
    extras = cell_extras(_GRU, ln_ih=ln_ih, ln_hh=ln_hh, recurrent_mask=recurrent_mask,
                         zoneout_h=zoneout_h, reset_after=reset_after)  # fmt: skip
    p = prepare(_GRU, x, h0, None, w_ih, w_hh, b_ih, b_hh, lengths, None, check_finite, extras)
    b_i, b_h = _biases(p)
    H = p.H
    rmask = p.extra("recurrent_mask")
    ln = p.extra("ln_ih") is not None
    m = _masks(p.lengths, p.T, p.B, p.dtype)
    h = p.h0.copy()
    y = np.zeros((p.T, p.B, H), p.dtype)
    saved = [None] * p.T
    for t in _steps(p.T, reverse):
        hd = h if rmask is None else h * rmask  # recurrent dropout: the same mask every step
        gx, gh = p.x[t] @ p.w_ih.T, hd @ p.w_hh.T
        lx = lh = None
        if ln:  # gi = LN(W_ih x) + b_ih, gh = LN(W_hh h) + b_hh
            lx, lh = _layer_norm(gx, p.extra("ln_ih")), _layer_norm(gh, p.extra("ln_hh"))
            gx, gh = lx[0], lh[0]
        gi, gh = gx + b_i, gh + b_h
        r = _sigmoid(gi[:, :H] + gh[:, :H])
        z = _sigmoid(gi[:, H : 2 * H] + gh[:, H : 2 * H])
        if reset_after:
            hn = gh[:, 2 * H :]
            n = np.tanh(gi[:, 2 * H :] + r * hn)
        else:
            n = np.tanh(gi[:, 2 * H :] + (r * h) @ p.w_hh[2 * H :].T + b_h[2 * H :])
            hn = None
        h_new = (1 - z) * n + z * h
        zh = _zoneout(p, "zoneout_h", t)
        h_out = h_new if zh is None else zh * h + (1 - zh) * h_new  # zoneout keeps h_{t-1}
        saved[t] = (h, hd, r, z, n, hn, lx, lh)
        h = _keep(m[t], h_out, h)
        y[t] = _keep(m[t], h_out, 0)
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
    rmask = p.extra("recurrent_mask")
    ln = p.extra("ln_ih") is not None
    dy = as_grad("dy", dy, (p.T, p.B, H), p.dtype)
    dh = as_grad("dh_n", dh_n, (p.B, H), p.dtype)
    dh = np.zeros((p.B, H), p.dtype) if dh is None else dh.copy()
    dgi = np.zeros((p.T, p.B, 3 * H), p.dtype)  # gradient of gi = W_ih x + b_ih
    dgh = np.zeros((p.T, p.B, 3 * H), p.dtype)  # ... of gh = W_hh h + b_hh
    dgx = np.zeros((p.T, p.B, 3 * H), p.dtype)  # ... of W_ih x (after LN's backward)
    dghh = np.zeros((p.T, p.B, 3 * H), p.dtype)  # ... of W_hh h (after LN's backward)
    hds = np.zeros((p.T, p.B, H), p.dtype)
    dw_hn = np.zeros((H, H), p.dtype)  # reset_after=False: sum_t dn_pre^T (r * h)
    dln = {k: np.zeros_like(p.extra(k)) for k in ("ln_ih", "ln_hh") if ln}
    dx = np.zeros_like(p.x)
    for t in reversed(_steps(p.T, cc.options["reverse"])):
        h, hd, r, z, n, hn, lx, lh = saved[t]
        hds[t] = hd
        dht = _keep(m[t], dh + (0 if dy is None else dy[t]), 0)
        zh = _zoneout(p, "zoneout_h", t)
        dh_keep = 0 if zh is None else zh * dht  # zoneout: part of h_t is h_{t-1}
        if zh is not None:
            dht = (1 - zh) * dht
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
        if ln:
            dgx[t], dgain_x, _ = _layer_norm_backward(dgi[t], lx, p.extra("ln_ih"))
            dghh[t], dgain_h, _ = _layer_norm_backward(dgh[t], lh, p.extra("ln_hh"))
            dln["ln_ih"] += dgain_x.sum(0)
            dln["ln_hh"] += dgain_h.sum(0)
        else:
            dgx[t], dghh[t] = dgi[t], dgh[t]
        dx[t] = _keep(m[t], dgx[t] @ p.w_ih, 0)  # zero at padded steps
        if reset_after:
            dh_mat = dghh[t] @ p.w_hh
        else:
            dh_mat = dgh[t][:, : 2 * H] @ p.w_hh[: 2 * H]
        if rmask is not None:
            dh_mat = dh_mat * rmask
        dh = _keep(m[t], dh_keep + dh_mat + dh_direct + dht * z, dh)
    dw_ih, dw_hh, db_ih, db_hh = _weight_grads(p, dgx, dghh, hds, dgi, dgh)
    if not reset_after:
        dw_hh[2 * H :] = dw_hn
    fields = [dx, dh, dw_ih, dw_hh, db_ih, db_hh]
    return grads_of(_GRU, fields, {"d" + k: v for k, v in dln.items()})
