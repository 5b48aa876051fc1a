"""A well-written plain-NumPy RNN, LSTM and GRU: the bench's second NumPy baseline.

:mod:`fastrnn.reference` is the readable oracle: it validates every call, allocates as it goes
and keeps per-step tuples. This is what a careful NumPy programmer would write for speed
instead, and what the kernels should beat by a wide margin on small problems:

* the input projection of all T steps is one GEMM (``x.reshape(T * B, I) @ w_ih.T``);
* every buffer (gates, states, gradients, temporaries) is allocated once per shape, when the
  object is built, and each step writes into it with ``out=`` and in-place ufuncs;
* no validation, no per-step Python objects beyond the slices;
* BPTT keeps each step's gate gradients and runs the weight and input gradients as single
  GEMMs after the loop.

One layer, one direction, zero initial states, time-major, PyTorch's gate order and weight shapes
(the bench's :class:`~fastrnn.bench.Problem`). ``forward(training)`` returns ``y`` (a buffer that
the next call overwrites); ``backward(dy)`` after a training forward returns
``(dx, dw_ih, dw_hh, db_ih, db_hh)``, also buffers.
"""

from __future__ import annotations

import numpy as np

from fastrnn.cells import GRU, get_cell

__all__ = ["PlainNumpy"]


def _sigmoid(a: np.ndarray) -> None:
    """a := 1 / (1 + exp(-a)), in place."""
    np.negative(a, out=a)
    np.exp(a, out=a)
    a += 1.0
    np.reciprocal(a, out=a)


class PlainNumpy:
    """Forward and BPTT of one cell on fixed shapes with preallocated buffers.

    Parameters
    ----------
    cell : {"rnn", "lstm", "gru"}
        The Elman RNN is the tanh one.
    x : ndarray of shape (T, B, I)
    w_ih : ndarray of shape (G * H, I)
    w_hh : ndarray of shape (G * H, H)
    b_ih, b_hh : ndarray of shape (G * H,)
    """

    def __init__(self, cell: str, x, w_ih, w_hh, b_ih, b_hh) -> None:
        spec = get_cell(cell)  # ValueError naming the choices
        self.cell = spec.name
        has_c, is_gru = "c" in spec.states, spec is GRU  # the GRU's hidden-side n term
        T, B, I = x.shape
        GH, H = w_hh.shape
        dt = x.dtype
        self.T, self.B, self.I, self.H, self.GH = T, B, I, H, GH
        self.x2 = np.ascontiguousarray(x).reshape(T * B, I)
        self.w_ih, self.w_hh = w_ih, w_hh
        # transposed copies so that every per-step GEMM reads its weight row-major
        self.w_ih_t = np.ascontiguousarray(w_ih.T)
        self.w_hh_t = np.ascontiguousarray(w_hh.T)
        self.b_ih, self.b_hh = b_ih, b_hh
        self.b = b_ih + b_hh
        self.h0 = np.zeros((B, H), dt)
        # forward: projected then activated gates of every step, the outputs, per-step scratch
        self.gates = np.empty((T, B, GH), dt)
        self.y = np.empty((T, B, H), dt)
        self.hw = np.empty((B, GH), dt)
        self.tmp = np.empty((B, H), dt)
        self.cs = np.empty((T, B, H), dt) if has_c else None
        self.tcs = np.empty((T, B, H), dt) if has_c else None
        self.hn = np.empty((T, B, H), dt) if is_gru else None  # W_hn h + b_hn
        # backward
        self.dgates = np.empty((T, B, GH), dt)
        self.dgh = np.empty((T, B, GH), dt) if is_gru else None  # hidden-side grads
        self.dh = np.empty((B, H), dt)
        self.dc = np.empty((B, H), dt)
        self.t1 = np.empty((B, H), dt)
        self.t2 = np.empty((B, H), dt)
        self.dx = np.empty((T * B, I), dt)
        self.dw_ih = np.empty_like(w_ih)
        self.dw_hh = np.empty_like(w_hh)
        self.db_ih = np.empty(GH, dt)
        self.db_hh = np.empty(GH, dt)

    # --- forward ---------------------------------------------------------------------------------
    def forward(self, training: bool = False) -> np.ndarray:
        """All T steps; returns ``y`` of shape (T, B, H). ``training`` is accepted for symmetry:
        every buffer the backward reads is kept either way (it is preallocated)."""
        T, B, H = self.T, self.B, self.H
        g2 = self.gates.reshape(T * B, self.GH)
        if self.hn is not None:  # GRU: b_hh stays on the hidden side (r multiplies W_hn h + b_hn)
            np.dot(self.x2, self.w_ih_t, out=g2)
            g2 += self.b_ih
        else:
            np.dot(self.x2, self.w_ih_t, out=g2)
            g2 += self.b
        getattr(self, f"_forward_{self.cell}")(T, H)
        return self.y

    def _forward_rnn(self, T: int, H: int) -> None:
        h = self.h0
        for t in range(T):
            a = self.gates[t]
            np.dot(h, self.w_hh_t, out=self.hw)
            a += self.hw
            h = np.tanh(a, out=self.y[t])

    def _forward_lstm(self, T: int, H: int) -> None:
        h, c = self.h0, self.h0
        for t in range(T):
            a = self.gates[t]  # (B, 4H): i, f, g, o
            np.dot(h, self.w_hh_t, out=self.hw)
            a += self.hw
            _sigmoid(a[:, : 2 * H])
            np.tanh(a[:, 2 * H : 3 * H], out=a[:, 2 * H : 3 * H])
            _sigmoid(a[:, 3 * H :])
            c_t = self.cs[t]
            np.multiply(a[:, H : 2 * H], c, out=c_t)  # f * c_{t-1}
            np.multiply(a[:, :H], a[:, 2 * H : 3 * H], out=self.tmp)  # i * g
            c_t += self.tmp
            np.tanh(c_t, out=self.tcs[t])
            h = np.multiply(a[:, 3 * H :], self.tcs[t], out=self.y[t])
            c = c_t

    def _forward_gru(self, T: int, H: int) -> None:
        h = self.h0
        for t in range(T):
            a = self.gates[t]  # (B, 3H): x-side r, z, n (with b_ih)
            np.dot(h, self.w_hh_t, out=self.hw)
            self.hw += self.b_hh
            a[:, : 2 * H] += self.hw[:, : 2 * H]
            _sigmoid(a[:, : 2 * H])
            hn = self.hn[t]
            hn[...] = self.hw[:, 2 * H :]
            n = a[:, 2 * H :]
            np.multiply(a[:, :H], hn, out=self.tmp)  # r * (W_hn h + b_hn)
            n += self.tmp
            np.tanh(n, out=n)
            # h_t = n + z * (h_{t-1} - n)
            y = self.y[t]
            np.subtract(h, n, out=y)
            y *= a[:, H : 2 * H]
            y += n
            h = y

    # --- backward --------------------------------------------------------------------------------
    def backward(self, dy: np.ndarray):
        """BPTT after a forward: ``(dx, dw_ih, dw_hh, db_ih, db_hh)`` for the upstream ``dy``."""
        T, B, H, GH = self.T, self.B, self.H, self.GH
        self.dh.fill(0.0)
        getattr(self, f"_backward_{self.cell}")(dy, T, H)
        # after the loop: the weight, bias and input gradients as single GEMMs
        dg2 = self.dgates.reshape(T * B, GH)
        dgh = dg2 if self.dgh is None else self.dgh.reshape(T * B, GH)
        np.dot(dg2.T, self.x2, out=self.dw_ih)
        np.dot(dgh[B:].T, self.y[:-1].reshape((T - 1) * B, H), out=self.dw_hh)
        # h0 is zero: its term in dw_hh vanishes
        np.sum(dg2, axis=0, out=self.db_ih)
        np.sum(dgh, axis=0, out=self.db_hh)
        np.dot(dg2, self.w_ih, out=self.dx)
        return self.dx.reshape(T, B, self.I), self.dw_ih, self.dw_hh, self.db_ih, self.db_hh

    def _backward_rnn(self, dy: np.ndarray, T: int, H: int) -> None:
        dh = self.dh
        for t in range(T - 1, -1, -1):
            dh += dy[t]
            da = self.dgates[t]
            np.multiply(self.y[t], self.y[t], out=da)  # da = dh * (1 - y^2)
            np.subtract(1.0, da, out=da)
            da *= dh
            np.dot(da, self.w_hh, out=dh)

    def _backward_lstm(self, dy: np.ndarray, T: int, H: int) -> None:
        dh, dc, t1 = self.dh, self.dc, self.t1
        dc.fill(0.0)
        for t in range(T - 1, -1, -1):
            dh += dy[t]
            a, d = self.gates[t], self.dgates[t]
            i, f, g, o = a[:, :H], a[:, H : 2 * H], a[:, 2 * H : 3 * H], a[:, 3 * H :]
            di, df, dg, do = d[:, :H], d[:, H : 2 * H], d[:, 2 * H : 3 * H], d[:, 3 * H :]
            tc = self.tcs[t]
            # do = dh * tanh(c) * o (1 - o)
            np.multiply(dh, tc, out=do)
            np.subtract(1.0, o, out=t1)
            t1 *= o
            do *= t1
            # dc += dh * o * (1 - tanh(c)^2)
            np.multiply(tc, tc, out=t1)
            np.subtract(1.0, t1, out=t1)
            t1 *= o
            t1 *= dh
            dc += t1
            # di = dc * g * i (1 - i); dg = dc * i * (1 - g^2); df = dc * c_{t-1} * f (1 - f)
            np.subtract(1.0, i, out=t1)
            t1 *= i
            np.multiply(dc, g, out=di)
            di *= t1
            np.multiply(g, g, out=t1)
            np.subtract(1.0, t1, out=t1)
            np.multiply(dc, i, out=dg)
            dg *= t1
            if t > 0:
                np.subtract(1.0, f, out=t1)
                t1 *= f
                np.multiply(dc, self.cs[t - 1], out=df)
                df *= t1
            else:
                df.fill(0.0)  # c_{-1} = 0
            dc *= f
            np.dot(d, self.w_hh, out=dh)

    def _backward_gru(self, dy: np.ndarray, T: int, H: int) -> None:
        dh, t1, t2 = self.dh, self.t1, self.t2
        for t in range(T - 1, -1, -1):
            dh += dy[t]
            a, d, dgh = self.gates[t], self.dgates[t], self.dgh[t]
            r, z, n = a[:, :H], a[:, H : 2 * H], a[:, 2 * H :]
            dr, dz, dn = d[:, :H], d[:, H : 2 * H], d[:, 2 * H :]
            h_prev = self.y[t - 1] if t > 0 else self.h0
            # dn = dh (1 - z) (1 - n^2)
            np.subtract(1.0, z, out=t1)
            np.multiply(dh, t1, out=dn)
            np.multiply(n, n, out=t2)
            np.subtract(1.0, t2, out=t2)
            dn *= t2
            # dz = dh (h_{t-1} - n) z (1 - z)
            np.subtract(h_prev, n, out=dz)
            dz *= dh
            t1 *= z
            dz *= t1
            # dr = dn (W_hn h + b_hn) r (1 - r)
            np.multiply(dn, self.hn[t], out=dr)
            np.subtract(1.0, r, out=t1)
            t1 *= r
            dr *= t1
            # hidden side: r and z as on the input side, n scaled by r
            dgh[:, : 2 * H] = d[:, : 2 * H]
            np.multiply(dn, r, out=dgh[:, 2 * H :])
            dh *= z
            np.dot(dgh, self.w_hh, out=self.t2)
            dh += self.t2
