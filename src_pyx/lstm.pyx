"""LSTM forward and BPTT over a whole sequence.

Legend: T steps, B batch rows, I input size, H hidden size, G = 4H gate width.
Gates are PyTorch's i, f, g, o:
    a_t = W_ih x_t + b_ih + W_hh h_{t-1} + b_hh           (B, G)
    i, f, o = sigmoid(a_i, a_f, a_o);  g = tanh(a_g)
    c_t = f * c_{t-1} + i * g;  h_t = o * tanh(c_t)

Optional, each off unless its LSTMOps field is set (cell without a projection only):
    peephole       a_i += p_i * c_{t-1};  a_f += p_f * c_{t-1};  a_o += p_o * c_t
    recurrent      W_hh multiplies h_{t-1} * mask, one (B, H) mask for all steps
      dropout
    zoneout        h_t = zh_t * h_{t-1} + (1 - zh_t) * h~_t, likewise c_t (h~, c~: the values
                   above); zh_t a 0/1 mask in training, the probability p in inference
    cell states    every step's c_t kept and returned (zero on inactive rows), dcs its gradient

Rows are sorted by decreasing sequence length; ``batch_sizes[t]`` rows are active at step t. An
inactive row keeps its state and outputs zeros (PyTorch's packed-sequence semantics).
"""

from cython cimport floating
from libc.string cimport memcpy, memset

from _activations cimport dsigmoid, dtanh, sigmoid, tanh_
from _blocks cimport (Packed, bias_grad_active, input_grad, input_grad_active, input_projection,
                      pack_nn, pack_nt, pack_nt_k, project_active, project_rows, recurrent_nn,
                      recurrent_nt, recurrent_nt_k, release, step_gates, steps_per_chunk,
                      thread_units, thread_units_isa, upfront_projection, weight_grad,
                      weight_grad_active)
from _layernorm cimport (ROW_BLOCK, block_sums, ln_backward, ln_normalize, n_row_blocks,
                         row_dot2, row_grads, run_end, share_rows)
from _prepack cimport next_sweep, rows_fit, rows_panels, take_prepacked
from _ops cimport LSTMOps
from _parallel cimport batch_share, fr_barrier, fr_barrier_wait, run_team, run_threads
from _rgemm cimport FR_ISA_NONE, fr_rgemm_pick
from _util cimport LANES, last_step, line_start, tail_in, tail_out, zero_rows

# The micro-kernels of the per-step GEMMs (_rgemm.h): the best this CPU runs, unless fastrnn._isa
# (FASTRNN_ISA) picks another. Read by the kernels, written only through _set_isa.
cdef int ISA = fr_rgemm_pick(-1)


def _set_isa(int isa):
    """Use the micro-kernels of instruction set ``isa`` (0 BLAS, 1 AVX2, 2 AVX-512); the caller
    checks that the CPU runs them."""
    global ISA
    ISA = isa


def ring_steps(Py_ssize_t T, Py_ssize_t B):
    """Steps of projected gates an inference forward keeps at once (its ``gates`` length)."""
    return min(T, steps_per_chunk(B))


# --- tier 1: one batch row of the gate math ------------------------------------------------------
# A row's gate block k of unit j is a[k * H + j]; the row functions handle units [0, m) of a
# thread's slice, with the pointers already offset to the slice's first unit.
cdef inline void _row_forward(floating* a, const floating* c_prev, floating* c, floating* h,
                              Py_ssize_t m, Py_ssize_t H) noexcept nogil:
    """_row_forward_loop over units [0, m), the last m % LANES on padded copies (_util.pxd)."""
    cdef Py_ssize_t n = m - m % LANES, r = m % LANES
    cdef floating ta[4 * LANES]
    cdef floating tp[LANES]
    cdef floating tc[LANES]
    cdef floating th[LANES]
    _row_forward_loop(a, c_prev, c, h, n, H)
    if r:
        tail_in(ta, a + n, r, 4, H)
        tail_in(tp, c_prev + n, r, 1, 0)
        _row_forward_loop(ta, tp, tc, th, LANES, LANES)
        tail_out(a + n, ta, r, 4, H)
        tail_out(c + n, tc, r, 1, 0)
        tail_out(h + n, th, r, 1, 0)


cdef inline void _row_forward_loop(floating* a, const floating* c_prev, floating* c,
                                   floating* h, Py_ssize_t m, Py_ssize_t H) noexcept nogil:
    """Activate a = [a_i, a_f, a_g, a_o] in place; c = f c_prev + i g; h = o tanh(c)."""
    cdef Py_ssize_t j
    cdef floating i, f, g, o
    for j in range(m):
        i = sigmoid(a[j])
        f = sigmoid(a[H + j])
        g = tanh_(a[2 * H + j])
        o = sigmoid(a[3 * H + j])
        a[j] = i
        a[H + j] = f
        a[2 * H + j] = g
        a[3 * H + j] = o
        c[j] = f * c_prev[j] + i * g
        h[j] = o * tanh_(c[j])


cdef inline void _row_backward(const floating* a, const floating* c_prev, const floating* c,
                               const floating* dy, floating* dh, floating* dc,
                               floating* da, Py_ssize_t m, Py_ssize_t H) noexcept nogil:
    """_row_backward_loop over units [0, m), the last m % LANES on padded copies (_util.pxd)."""
    cdef Py_ssize_t n = m - m % LANES, r = m % LANES
    cdef floating ta[4 * LANES]
    cdef floating tda[4 * LANES]
    cdef floating tp[LANES]
    cdef floating tc[LANES]
    cdef floating ty[LANES]
    cdef floating th[LANES]
    cdef floating tdc[LANES]
    _row_backward_loop(a, c_prev, c, dy, dh, dc, da, n, H)
    if r:
        tail_in(ta, a + n, r, 4, H)
        tail_in(tp, c_prev + n, r, 1, 0)
        tail_in(tc, c + n, r, 1, 0)
        tail_in(ty, dy + n, r, 1, 0)
        tail_in(th, dh + n, r, 1, 0)
        tail_in(tdc, dc + n, r, 1, 0)
        _row_backward_loop(ta, tp, tc, ty, th, tdc, tda, LANES, LANES)
        tail_out(da + n, tda, r, 4, H)
        tail_out(dc + n, tdc, r, 1, 0)


cdef inline void _row_backward_loop(const floating* a, const floating* c_prev,
                                    const floating* c, const floating* dy, floating* dh,
                                    floating* dc, floating* da, Py_ssize_t m,
                                    Py_ssize_t H) noexcept nogil:
    """Gate pre-activation grads da from dh_t (+ dy_t) and dc_t; dc becomes dc_{t-1}.

    dh  = dh_t + dy_t;  tc = tanh(c_t)
    dc  = dc_t + dh o (1 - tc^2)
    da  = [dc g i(1-i), dc c_prev f(1-f), dc i (1-g^2), dh tc o(1-o)];  dc_{t-1} = dc f
    """
    cdef Py_ssize_t j
    cdef floating i, f, g, o, tc, dhj, dcj
    for j in range(m):
        i = a[j]
        f = a[H + j]
        g = a[2 * H + j]
        o = a[3 * H + j]
        tc = tanh_(c[j])
        dhj = dh[j] + dy[j]
        dcj = dc[j] + dhj * o * dtanh(tc)
        da[j] = dcj * g * dsigmoid(i)
        da[H + j] = dcj * c_prev[j] * dsigmoid(f)
        da[2 * H + j] = dcj * i * dtanh(g)
        da[3 * H + j] = dhj * tc * dsigmoid(o)
        dc[j] = dcj * f


# The optional extensions (peephole, zoneout, recurrent dropout, the cell states' gradient) are
# separate short passes over the row rather than branches inside one loop: a loop that tests an
# optional pointer per element is not vectorized (GCC neither unswitches a body this large nor
# if-converts a load that may be NULL), and the sigmoids and tanhs then run 4-8 times slower.
# Each pass is branch-free and reads few arrays; the caller picks the passes once per row.
cdef inline void _row_forward_peephole(floating* a, const floating* c_prev, floating* c,
                                       floating* h, const floating* wp, Py_ssize_t m,
                                       Py_ssize_t H) noexcept nogil:
    """_row_forward with peepholes (wp: the (3, H) weights, offset to the slice's first unit):
    i = sig(a_i + p_i c_prev), f = sig(a_f + p_f c_prev), c = f c_prev + i g,
    o = sig(a_o + p_o c), h = o tanh(c)."""
    cdef Py_ssize_t j
    cdef floating i, f, g, o, cp, cn
    for j in range(m):
        cp = c_prev[j]
        i = sigmoid(a[j] + wp[j] * cp)
        f = sigmoid(a[H + j] + wp[H + j] * cp)
        g = tanh_(a[2 * H + j])
        cn = f * cp + i * g
        o = sigmoid(a[3 * H + j] + wp[2 * H + j] * cn)
        a[j] = i
        a[H + j] = f
        a[2 * H + j] = g
        a[3 * H + j] = o
        c[j] = cn
        h[j] = o * tanh_(cn)


cdef inline void _row_zoneout(floating* v, const floating* v_prev, const floating* v_new,
                              const floating* z, Py_ssize_t m) noexcept nogil:
    """Zoneout: v = z v_prev + (1 - z) v_new (v may be v_prev or v_new)."""
    cdef Py_ssize_t j
    for j in range(m):
        v[j] = z[j] * v_prev[j] + (<floating> 1 - z[j]) * v_new[j]


cdef inline void _row_mul(floating* out, const floating* v, const floating* s,
                          Py_ssize_t m) noexcept nogil:
    """out = v s (recurrent dropout: the next step's GEMM input h * mask)."""
    cdef Py_ssize_t j
    for j in range(m):
        out[j] = v[j] * s[j]


cdef inline void _row_backward_split(const floating* dy, const floating* dcs,
                                     const floating* zh, const floating* zc, floating* dh,
                                     floating* dc, floating* da, Py_ssize_t m,
                                     Py_ssize_t H) noexcept nogil:
    """Split the gradients reaching h_t and c_t (zoneout: a part of each is the previous state):

    dh_t = dh + dy;  dc_t = dc + dcs  (dcs NULL: 0)
    dh := zh dh_t (the kept part; the W_hh GEMM adds to it);  dh~ = (1 - zh) dh_t
    dc := zc dc_t (0 without zoneout_c);                     dc~ = (1 - zc) dc_t
    dh~ and dc~ go to da's o and g slots, where _row_backward_cell reads them.
    """
    cdef Py_ssize_t j
    cdef floating* th = da + 3 * H
    cdef floating* tcell = da + 2 * H
    for j in range(m):
        th[j] = dh[j] + dy[j]
    if dcs == NULL:
        memcpy(tcell, dc, m * sizeof(floating))
    else:
        for j in range(m):
            tcell[j] = dc[j] + dcs[j]
    if zh != NULL:
        for j in range(m):
            dh[j] = zh[j] * th[j]
            th[j] = (<floating> 1 - zh[j]) * th[j]
    if zc != NULL:
        for j in range(m):
            dc[j] = zc[j] * tcell[j]
            tcell[j] = (<floating> 1 - zc[j]) * tcell[j]
    else:
        memset(dc, 0, m * sizeof(floating))


cdef inline void _row_backward_cell(const floating* a, const floating* c_prev,
                                    const floating* c, floating* dc, floating* da,
                                    const floating* wp, Py_ssize_t m,
                                    Py_ssize_t H) noexcept nogil:
    """Gate pre-activation grads da from dh~ (in da's o slot) and dc~ (in its g slot), as
    _row_backward_split leaves them; dc += dc_{t-1} through the cell. c is c_t before zoneout.

    da_o = dh~ tc o(1-o);  dc~ += dh~ o (1 - tc^2) + p_o da_o    (tc = tanh(c_t))
    da_i, da_f, da_g as in _row_backward;  dc += dc~ f + p_i da_i + p_f da_f
    (wp NULL: no peephole terms)
    """
    cdef Py_ssize_t j
    cdef floating i, f, g, o, tc, dhj, dcj, dai, daf, dao
    if wp == NULL:
        for j in range(m):
            i = a[j]
            f = a[H + j]
            g = a[2 * H + j]
            o = a[3 * H + j]
            tc = tanh_(c[j])
            dhj = da[3 * H + j]
            dcj = da[2 * H + j] + dhj * o * dtanh(tc)
            da[j] = dcj * g * dsigmoid(i)
            da[H + j] = dcj * c_prev[j] * dsigmoid(f)
            da[2 * H + j] = dcj * i * dtanh(g)
            da[3 * H + j] = dhj * tc * dsigmoid(o)
            dc[j] = dc[j] + dcj * f
    else:
        for j in range(m):
            i = a[j]
            f = a[H + j]
            g = a[2 * H + j]
            o = a[3 * H + j]
            tc = tanh_(c[j])
            dhj = da[3 * H + j]
            dao = dhj * tc * dsigmoid(o)
            dcj = da[2 * H + j] + dhj * o * dtanh(tc) + wp[2 * H + j] * dao
            dai = dcj * g * dsigmoid(i)
            daf = dcj * c_prev[j] * dsigmoid(f)
            da[j] = dai
            da[H + j] = daf
            da[2 * H + j] = dcj * i * dtanh(g)
            da[3 * H + j] = dao
            dc[j] = dc[j] + (dcj * f + wp[j] * dai + wp[H + j] * daf)


cdef inline void _row_peephole_grad(const floating* da, const floating* c_prev,
                                    const floating* c, floating* dwp, Py_ssize_t m,
                                    Py_ssize_t H) noexcept nogil:
    """dwp += [da_i c_prev, da_f c_prev, da_o c_t] (summed over steps and rows, per unit)."""
    cdef Py_ssize_t j
    for j in range(m):
        dwp[j] += da[j] * c_prev[j]
        dwp[H + j] += da[H + j] * c_prev[j]
        dwp[2 * H + j] += da[3 * H + j] * c[j]


# --- tier 2: the time loops ---------------------------------------------------------------------
# Each is one thread's share of the parallel region that run_team opens (_parallel.pxd), called
# once per thread per kernel call with the cell's operand struct (_ops.pxd), whose pointers it
# types once at its top. Work is cut as _blocks.pxd says: thread r owns hidden units [j0, j1)
# and the gate columns k*H + [j0, j1): its share of each step's GEMM writes only those columns,
# reading the rows (forward) or columns (backward) of W_hh for its units, which stay in its
# cache from step to step; its gate pass reads and writes only them; and one barrier per step
# publishes the h_t (forward) or da_t (backward) that every thread's next GEMM reads in full.
cdef void _forward_part(const void* ops, fr_barrier* bar, int size, int rank,
                        floating* tag) noexcept nogil:
    cdef const LSTMOps* op = <const LSTMOps*> ops
    cdef Py_ssize_t T = op.T, B = op.B, I = op.I, H = op.H
    cdef const int* batch_sizes = op.batch_sizes
    cdef bint training = op.training
    cdef const floating* x = <const floating*> op.x
    cdef const floating* h0 = <const floating*> op.h0
    cdef const floating* c0 = <const floating*> op.c0
    cdef const floating* w_ih = <const floating*> op.w_ih
    cdef const floating* w_hh = <const floating*> op.w_hh
    cdef const floating* bias = <const floating*> op.bias
    cdef floating* gates = <floating*> op.gates
    cdef floating* y = <floating*> op.y
    cdef floating* cs = <floating*> op.cs
    cdef floating* h_n = <floating*> op.h_n
    cdef floating* c_n = <floating*> op.c_n
    # the optional extensions (NULL: off)
    cdef const floating* wp = <const floating*> op.w_peephole
    cdef const floating* rmask = <const floating*> op.rmask
    cdef floating* hds = <floating*> op.hds
    cdef const floating* zh = <const floating*> op.zoneout_h
    cdef const floating* zc = <const floating*> op.zoneout_c
    cdef floating* cnew = <floating*> op.cnew
    cdef bint ext = wp != NULL or rmask != NULL or zh != NULL or zc != NULL
    # cs keeps every step (training, or return_cell_states), else one state updated in place
    cdef bint all_cs = training or op.cell_states
    cdef Py_ssize_t G = 4 * H, tc = steps_per_chunk(B)
    cdef Py_ssize_t t, b, n, o, j, j0, j1, m
    cdef const floating* h_prev
    cdef const floating* h_in
    cdef floating* cn
    cdef const floating* c_prev
    cdef const floating* zh_t
    cdef const floating* zc_t
    cdef floating* c_cur
    cdef floating* cn_t
    cdef floating* hd_next
    cdef floating* a_t
    cdef Packed pk, pk_ih
    cdef bint own, sweep, upfront

    thread_units_isa(H, size, rank, ISA, &j0, &j1)
    m = j1 - j0
    own = not take_prepacked(op.prepacked, ISA, sizeof(floating), size, rank, &pk, &pk_ih)
    # a training forward whose packed weights would crowd the L3 projects all T steps first
    upfront = (own and training and T > 1 and ISA != FR_ISA_NONE
               and upfront_projection(H, I, 4, sizeof(floating)))
    if own:  # no fitting prepacked panels: pack this call's (_prepack.pxd)
        pack_nt(&pk, ISA, H, j0, j1, 4, w_hh)
        if not upfront:
            pack_nt_k(&pk_ih, ISA, H, I, j0, j1, 4, w_ih)
            # (else pk_ih stays unset: released only when packed)
    sweep = T == 1 and not own and next_sweep(op.prepacked, rank)  # step_gates' direction
    if not all_cs:  # one cell-state buffer, updated in place
        for b in range(B):
            memcpy(cs + b * H + j0, c0 + b * H + j0, m * sizeof(floating))
    if rmask != NULL:  # hds[0] = h0 * rmask, read in full by the first step's GEMM
        for b in range(B):
            for j in range(b * H + j0, b * H + j1):
                hds[j] = h0[j] * rmask[j]
        fr_barrier_wait(bar, size)
    if upfront:  # gates = W_ih x + (b_ih + b_hh) for all T steps, over the wide blocks
        input_projection(T, B, batch_sizes, I, H, 4, x, w_ih, bias, gates, size, rank, ISA)
        fr_barrier_wait(bar, size)

    for t in range(T):
        n = batch_sizes[t]
        # gates[t'] = W_ih x[t'] + (b_ih + b_hh) for the next tc steps and this thread's units
        # (training: gates holds all T steps; inference: a ring of tc steps)
        a_t = gates + (t if training else t % tc) * B * G
        if t % tc == 0 and T > 1 and not upfront:
            project_active(t, min(t + tc, T), B, batch_sizes, I, H, j0, j1, 4, x, w_ih, bias,
                           a_t, &pk_ih)
        h_prev = h0 if t == 0 else y + (t - 1) * B * H
        if all_cs:
            c_prev = c0 if t == 0 else cs + (t - 1) * B * H
            c_cur = cs + t * B * H
        else:
            c_prev = cs
            c_cur = cs
        # recurrent dropout: the GEMM reads h_{t-1} * rmask (hds[t]; inference: a ring of 2)
        h_in = h_prev if rmask == NULL else hds + (t if training else t % 2) * B * H
        # a_t[:n, units] += h_{t-1} W_hh[units]^T, then the gate pass on those units
        if T == 1:  # a streaming step: both GEMMs, in one sweep over the weights
            step_gates(n, I, H, j0, j1, 4, x, h_in, w_ih, w_hh, bias, a_t, a_t, True, &pk_ih,
                       &pk, sweep)
        else:
            recurrent_nt(n, H, j0, j1, 4, h_in, w_hh, <floating> 1, a_t, G, &pk)
        if ext:
            zh_t = NULL if zh == NULL else zh + t * op.zh_step
            zc_t = NULL if zc == NULL else zc + t * op.zc_step
            cn_t = NULL if cnew == NULL else cnew + (t if training else 0) * B * H
            hd_next = NULL
            if rmask != NULL and t + 1 < T:
                hd_next = hds + (t + 1 if training else (t + 1) % 2) * B * H
            for b in range(n if m > 0 else 0):
                o = t * B + b
                # c~ goes to cnew (zoneout_c: c_t mixes it with c_{t-1}) or straight to c_t
                cn = c_cur + b * H + j0 if cn_t == NULL else cn_t + b * H + j0
                if wp != NULL:
                    _row_forward_peephole(a_t + b * G + j0, c_prev + b * H + j0, cn,
                                          y + o * H + j0, wp + j0, m, H)
                else:
                    _row_forward(a_t + b * G + j0, c_prev + b * H + j0, cn, y + o * H + j0, m, H)
                if zc_t != NULL:
                    _row_zoneout(c_cur + b * H + j0, c_prev + b * H + j0, cn, zc_t + b * H + j0,
                                 m)
                if zh_t != NULL:
                    _row_zoneout(y + o * H + j0, h_prev + b * H + j0, y + o * H + j0,
                                 zh_t + b * H + j0, m)
                if hd_next != NULL:
                    _row_mul(hd_next + b * H + j0, y + o * H + j0, rmask + b * H + j0, m)
            if training and hd_next != NULL and rank == 0:  # read by the dW_hh GEMM
                zero_rows(hd_next, n, B, H)
        else:
            for b in range(n if m > 0 else 0):
                _row_forward(a_t + b * G + j0, c_prev + b * H + j0, c_cur + b * H + j0,
                             y + (t * B + b) * H + j0, m, H)
        if rank == 0:
            zero_rows(y + t * B * H, n, B, H)
            if op.cell_states:
                zero_rows(c_cur, n, B, H)
        fr_barrier_wait(bar, size)

    if own:
        release(&pk)
        if not upfront:
            release(&pk_ih)
    for b in range(B if m > 0 else 0):
        t = last_step(batch_sizes, T, b)
        memcpy(h_n + b * H + j0, y + (t * B + b) * H + j0, m * sizeof(floating))
        if all_cs:
            memcpy(c_n + b * H + j0, cs + (t * B + b) * H + j0, m * sizeof(floating))
        else:
            memcpy(c_n + b * H + j0, cs + b * H + j0, m * sizeof(floating))


cdef void _forward_rows_part(const void* ops, fr_barrier* bar, int size, int rank,
                             floating* tag) noexcept nogil:
    """_forward_part of a plain inference forward whose threads split the batch rows
    (_prepack.pxd: rows_fit): this thread's rows [b0, b1), every unit, all T steps, from the
    team of one's panels; cs is the (B, H) cell state, updated in place; no barrier."""
    cdef const LSTMOps* op = <const LSTMOps*> ops
    cdef Py_ssize_t T = op.T, B = op.B, I = op.I, H = op.H
    cdef const floating* x = <const floating*> op.x
    cdef const floating* h0 = <const floating*> op.h0
    cdef const floating* w_ih = <const floating*> op.w_ih
    cdef const floating* w_hh = <const floating*> op.w_hh
    cdef const floating* bias = <const floating*> op.bias
    cdef floating* gates = <floating*> op.gates
    cdef floating* y = <floating*> op.y
    cdef floating* cs = <floating*> op.cs
    cdef Py_ssize_t G = 4 * H, tc = steps_per_chunk(B)
    cdef Py_ssize_t t, b, b0, b1
    cdef const floating* h_prev
    cdef floating* a_t
    cdef Packed pk, pk_ih
    batch_share(B, size, rank, &b0, &b1)
    if b1 <= b0:
        return
    rows_panels(op.prepacked, &pk, &pk_ih)
    memcpy(cs + b0 * H, <const floating*> op.c0 + b0 * H, (b1 - b0) * H * sizeof(floating))
    for t in range(T):
        a_t = gates + t % tc * B * G
        if t % tc == 0:  # the ring of the next tc steps' projections, this thread's rows
            project_rows(t, min(t + tc, T), B, b0, b1, I, H, 4, x, w_ih, bias, gates, &pk_ih)
        h_prev = h0 if t == 0 else y + (t - 1) * B * H
        recurrent_nt(b1 - b0, H, 0, H, 4, h_prev + b0 * H, w_hh, <floating> 1, a_t + b0 * G,
                     G, &pk)
        for b in range(b0, b1):
            _row_forward(a_t + b * G, cs + b * H, cs + b * H, y + (t * B + b) * H, H, H)
    memcpy(<floating*> op.h_n + b0 * H, y + ((T - 1) * B + b0) * H,
           (b1 - b0) * H * sizeof(floating))
    memcpy(<floating*> op.c_n + b0 * H, cs + b0 * H, (b1 - b0) * H * sizeof(floating))


cdef void _backward_part(const void* ops, fr_barrier* bar, int size, int rank,
                         floating* tag) noexcept nogil:
    cdef const LSTMOps* op = <const LSTMOps*> ops
    cdef Py_ssize_t T = op.T, B = op.B, I = op.I, H = op.H
    cdef const int* batch_sizes = op.batch_sizes
    cdef const floating* x = <const floating*> op.x
    cdef const floating* h0 = <const floating*> op.h0
    cdef const floating* c0 = <const floating*> op.c0
    cdef const floating* w_ih = <const floating*> op.w_ih
    cdef const floating* w_hh = <const floating*> op.w_hh
    cdef const floating* gates = <const floating*> op.gates
    cdef const floating* y = <const floating*> op.y
    cdef const floating* cs = <const floating*> op.cs
    cdef const floating* dy = <const floating*> op.dy
    cdef floating* dh = <floating*> op.dh
    cdef floating* dc = <floating*> op.dc
    cdef floating* dgates = <floating*> op.dgates
    cdef floating* dx = <floating*> op.dx
    cdef floating* dw_ih = <floating*> op.dw_ih
    cdef floating* dw_hh = <floating*> op.dw_hh
    cdef floating* db = <floating*> op.db
    # the optional extensions (NULL: off)
    cdef const floating* wp = <const floating*> op.w_peephole
    cdef floating* dwp = <floating*> op.dw_peephole
    cdef const floating* rmask = <const floating*> op.rmask
    cdef const floating* hds = <const floating*> op.hds
    cdef floating* dm = <floating*> op.dm  # (B, H) workspace of recurrent dropout
    cdef const floating* zh = <const floating*> op.zoneout_h
    cdef const floating* zc = <const floating*> op.zoneout_c
    cdef const floating* cnew = <const floating*> op.cnew
    cdef const floating* dcs = <const floating*> op.dcs
    cdef bint ext = wp != NULL or rmask != NULL or zh != NULL or zc != NULL or dcs != NULL
    cdef Py_ssize_t G = 4 * H
    cdef Py_ssize_t t, b, n, o, j, j0, j1, m
    cdef const floating* c_prev
    cdef const floating* c_new
    cdef floating* da_t
    cdef Packed pk

    thread_units_isa(H, size, rank, ISA, &j0, &j1)
    m = j1 - j0
    pack_nn(&pk, ISA, H, j0, j1, G, w_hh)
    if dwp != NULL:  # accumulated per unit by the thread that owns it
        for j in range(3):
            memset(dwp + j * H + j0, 0, m * sizeof(floating))
    for t in range(T - 1, -1, -1):
        n = batch_sizes[t]
        da_t = dgates + t * B * G
        c_prev = c0 if t == 0 else cs + (t - 1) * B * H
        if ext:
            # c_t before zoneout: cnew with zoneout_c, else the carried cs
            c_new = (cs if cnew == NULL else cnew) + t * B * H
            for b in range(n if m > 0 else 0):
                o = t * B + b
                _row_backward_split(dy + o * H + j0, NULL if dcs == NULL else dcs + o * H + j0,
                                    NULL if zh == NULL else zh + t * op.zh_step + b * H + j0,
                                    NULL if zc == NULL else zc + t * op.zc_step + b * H + j0,
                                    dh + b * H + j0, dc + b * H + j0, da_t + b * G + j0, m, H)
                _row_backward_cell(gates + o * G + j0, c_prev + b * H + j0, c_new + b * H + j0,
                                   dc + b * H + j0, da_t + b * G + j0,
                                   NULL if wp == NULL else wp + j0, m, H)
                if wp != NULL:
                    _row_peephole_grad(da_t + b * G + j0, c_prev + b * H + j0,
                                       c_new + b * H + j0, dwp + j0, m, H)
        else:
            for b in range(n if m > 0 else 0):
                o = t * B + b
                _row_backward(gates + o * G + j0, c_prev + b * H + j0, cs + o * H + j0,
                              dy + o * H + j0, dh + b * H + j0, dc + b * H + j0,
                              da_t + b * G + j0, m, H)
        # (da_t's padding rows stay unset: every GEMM after the loop skips them)
        fr_barrier_wait(bar, size)
        # dh_{t-1}[:n, units] = da_t[:n] W_hh[:, units]   (inactive rows keep the dh they carry)
        # zoneout_h: + the kept part the gate pass left in dh; recurrent dropout: the GEMM
        # gives the gradient of h_{t-1} * rmask, so dh_{t-1} = kept + rmask * (da_t W_hh)
        if rmask == NULL:
            recurrent_nn(n, H, j0, j1, G, da_t, w_hh, <floating> (zh != NULL), dh, &pk)
        else:
            recurrent_nn(n, H, j0, j1, G, da_t, w_hh, <floating> 0, dm, &pk)
            for b in range(n):
                if zh != NULL:
                    for j in range(b * H + j0, b * H + j1):
                        dh[j] = dh[j] + rmask[j] * dm[j]
                else:
                    _row_mul(dh + b * H + j0, rmask + b * H + j0, dm + b * H + j0, m)

    # The weight and input gradients, as large GEMMs over the active rows of all T steps.
    release(&pk)
    fr_barrier_wait(bar, size)
    weight_grad_active(T, B, batch_sizes, I, H, 4, dgates, G, x, <floating> 0, dw_ih, size, rank,
                       ISA)
    if rmask == NULL:  # step t's rows of dG with step t - 1's of y (h0 at t = 0: all B rows)
        weight_grad(B, H, H, 4, dgates, h0, <floating> 0, dw_hh, size, rank, ISA)
        weight_grad_active(T - 1, B, batch_sizes + 1, H, H, 4, dgates + B * G, G, y,
                           <floating> 1, dw_hh, size, rank, ISA)
    else:  # the GEMMs read h_{t-1} * rmask, kept in hds
        weight_grad_active(T, B, batch_sizes, H, H, 4, dgates, G, hds, <floating> 0, dw_hh,
                           size, rank, ISA)
    bias_grad_active(T, B, batch_sizes, H, 4, dgates, db, size, rank)
    input_grad_active(T, B, batch_sizes, I, G, dgates, w_ih, dx, size, rank, ISA)


cdef inline LSTMOps _ops(Py_ssize_t T, Py_ssize_t B, Py_ssize_t I, Py_ssize_t H,
                         const void* x, const void* h0, const void* c0, const void* w_ih,
                         const void* w_hh, const int* batch_sizes, const void* y) noexcept nogil:
    """An operand struct with the operands every call takes; the rest NULL (off)."""
    cdef LSTMOps o
    memset(&o, 0, sizeof(o))
    o.T = T
    o.B = B
    o.I = I
    o.H = H
    o.x = x
    o.h0 = h0
    o.c0 = c0
    o.w_ih = w_ih
    o.w_hh = w_hh
    o.batch_sizes = batch_sizes
    o.y = <void*> y
    return o


# --- tier 3: the Python entry points -------------------------------------------------------------
def forward(const floating[:, :, ::1] x,       # IN    (T, B, I)
            const floating[:, ::1] h0,         # IN    (B, H)
            const floating[:, ::1] c0,         # IN    (B, H)
            const floating[:, ::1] w_ih,       # IN    (G, I)
            const floating[:, ::1] w_hh,       # IN    (G, H)
            const floating[::1] bias,          # IN    (G,) b_ih + b_hh (zeros without bias)
            const int[::1] batch_sizes,        # IN    (T,) non-increasing, batch_sizes[0] == B
            floating[:, :, ::1] gates,         # OUT   (T, B, G) activated gates i, f, g, o
                                               #       (inference: (>= ring_steps(T, B), B, G))
            floating[:, :, ::1] y,             # OUT   (T, B, H)
            floating[:, :, ::1] cs,            # OUT   (T, B, H) if training else (1, B, H)
            floating[:, ::1] h_n,              # OUT   (B, H)
            floating[:, ::1] c_n,              # OUT   (B, H)
            bint training,
            int n_threads,
            const floating[:, ::1] w_peephole=None,       # IN    (3, H)
            const floating[:, ::1] recurrent_mask=None,   # IN    (B, H)
            floating[:, :, ::1] hds=None,                 # OUT   (T, B, H), inference (2, B, H)
            const floating[:, :, ::1] zoneout_h=None,     # IN    (T, B, H) or (1, B, H)
            const floating[:, :, ::1] zoneout_c=None,     # IN    (T, B, H) or (1, B, H)
            floating[:, :, ::1] cnew=None,                # OUT   (T, B, H), inference (1, B, H)
            bint cell_states=False,
            PackedWeights prepacked=None):
    """LSTM forward over all T steps (T, B >= 1; arrays validated by fastrnn.functional).

    Parameters
    ----------
    x : ndarray of shape (T, B, I), dtype=float32 or float64
    h0, c0 : ndarray of shape (B, H)
    w_ih : ndarray of shape (4H, I)
    w_hh : ndarray of shape (4H, H)
    bias : ndarray of shape (4H,)
    batch_sizes : ndarray of shape (T,), dtype=int32
    gates : ndarray of shape (T, B, 4H), written; an inference forward (training False) needs
        only ring_steps(T, B) steps of it
    y : ndarray of shape (T, B, H), written
    cs : ndarray of shape (T, B, H) when training else (1, B, H), written
    h_n, c_n : ndarray of shape (B, H), written
    training : bool
    n_threads : int
    w_peephole : ndarray of shape (3, H), optional
        Peephole weights of i, f (on c_{t-1}) and o (on c_t).
    recurrent_mask : ndarray of shape (B, H), optional
        Recurrent dropout: the W_hh GEMM reads h_{t-1} * recurrent_mask; needs ``hds``.
    hds : ndarray of shape (T, B, H) when training else (2, B, H), optional
        Written with h_{t-1} * recurrent_mask of every step (what BPTT reads).
    zoneout_h, zoneout_c : ndarray of shape (T, B, H) or (1, B, H), optional
        Zoneout: h_t = z h_{t-1} + (1 - z) h~_t (and likewise c_t); (1, B, H) serves every step.
    cnew : ndarray of shape (T, B, H) when training else (1, B, H), optional
        Written with c_t before zoneout; ``zoneout_c`` needs it.
    cell_states : bool, default=False
        ``cs`` is (T, B, H) even in inference and gets zeros on the rows past each length.
    prepacked : PackedWeights, optional
        ``prepack(w_ih, w_hh, G, n)`` of exactly these weights: used when it was packed for
        this call's team, else the call packs its own.
    """
    cdef Py_ssize_t T = x.shape[0], B = x.shape[1], I = x.shape[2], H = h0.shape[1]
    if gates.shape[0] < (T if training else ring_steps(T, B)):
        raise ValueError(f"gates has {gates.shape[0]} steps, fewer than the forward writes")
    if cs.shape[0] < (T if training or cell_states else 1):
        raise ValueError(f"cs has {cs.shape[0]} steps, fewer than the forward writes")
    if recurrent_mask is not None and (hds is None
                                       or hds.shape[0] < (T if training else min(T, 2))):
        raise ValueError("recurrent_mask needs hds of T steps (training) or 2 (inference)")
    if zoneout_c is not None and (cnew is None or cnew.shape[0] < (T if training else 1)):
        raise ValueError("zoneout_c needs cnew of T steps (training) or 1 (inference)")
    cdef LSTMOps o = _ops(T, B, I, H, &x[0, 0, 0], &h0[0, 0], &c0[0, 0], &w_ih[0, 0], &w_hh[0, 0],
                          &batch_sizes[0], &y[0, 0, 0])
    o.training = training
    o.bias = &bias[0]
    o.gates = &gates[0, 0, 0]
    o.cs = &cs[0, 0, 0]
    o.h_n = &h_n[0, 0]
    o.c_n = &c_n[0, 0]
    if prepacked is not None:  # from prepack(w_ih, w_hh, ...) of these weights
        o.prepacked = &prepacked.pp
    o.cell_states = cell_states
    if w_peephole is not None:
        o.w_peephole = &w_peephole[0, 0]
    if recurrent_mask is not None:
        o.rmask = &recurrent_mask[0, 0]
        o.hds = &hds[0, 0, 0]
    if zoneout_h is not None:
        o.zoneout_h = &zoneout_h[0, 0, 0]
        o.zh_step = 0 if zoneout_h.shape[0] == 1 else B * H
    if zoneout_c is not None:
        o.zoneout_c = &zoneout_c[0, 0, 0]
        o.zc_step = 0 if zoneout_c.shape[0] == 1 else B * H
        o.cnew = &cnew[0, 0, 0]
    with nogil:
        run_team(_forward_part[floating], &o, H, n_threads)


def backward(const floating[:, :, ::1] x,      # IN    (T, B, I)
             const floating[:, ::1] h0,        # IN    (B, H)
             const floating[:, ::1] c0,        # IN    (B, H)
             const floating[:, ::1] w_ih,      # IN    (G, I)
             const floating[:, ::1] w_hh,      # IN    (G, H)
             const int[::1] batch_sizes,       # IN    (T,)
             const floating[:, :, ::1] gates,  # IN    (T, B, G) from a training forward
             const floating[:, :, ::1] y,      # IN    (T, B, H)
             const floating[:, :, ::1] cs,     # IN    (T, B, H)
             const floating[:, :, ::1] dy,     # IN    (T, B, H)
             floating[:, ::1] dh,              # INOUT (B, H) dh_n in, dh0 out
             floating[:, ::1] dc,              # INOUT (B, H) dc_n in, dc0 out
             floating[:, :, ::1] dgates,       # OUT   (T, B, G) workspace
             floating[:, :, ::1] dx,           # OUT   (T, B, I)
             floating[:, ::1] dw_ih,           # OUT   (G, I)
             floating[:, ::1] dw_hh,           # OUT   (G, H)
             floating[::1] db,                 # OUT   (G,) gradient of b_ih (and of b_hh)
             int n_threads,
             const floating[:, ::1] w_peephole=None,      # IN    (3, H)
             floating[:, ::1] dw_peephole=None,           # OUT   (3, H)
             const floating[:, ::1] recurrent_mask=None,  # IN    (B, H)
             const floating[:, :, ::1] hds=None,          # IN    (T, B, H) from the forward
             floating[:, ::1] dm=None,                    # OUT   (B, H) workspace
             const floating[:, :, ::1] zoneout_h=None,    # IN    (T, B, H) or (1, B, H)
             const floating[:, :, ::1] zoneout_c=None,    # IN    (T, B, H) or (1, B, H)
             const floating[:, :, ::1] cnew=None,         # IN    (T, B, H) from the forward
             const floating[:, :, ::1] dcs=None):         # IN    (T, B, H)
    """LSTM BPTT over all T steps (T, B >= 1); see forward for the shapes.

    The optional operands are the forward's (the same arrays), plus ``dw_peephole`` (written,
    with ``w_peephole``), ``dm`` (a workspace, with ``recurrent_mask``) and ``dcs``, the
    gradient of the cell states ``cs``.
    """
    cdef Py_ssize_t T = x.shape[0], B = x.shape[1], I = x.shape[2], H = h0.shape[1]
    cdef LSTMOps o = _ops(T, B, I, H, &x[0, 0, 0], &h0[0, 0], &c0[0, 0], &w_ih[0, 0], &w_hh[0, 0],
                          &batch_sizes[0], &y[0, 0, 0])
    o.gates = <void*> &gates[0, 0, 0]
    o.cs = <void*> &cs[0, 0, 0]
    o.dy = &dy[0, 0, 0]
    o.dh = &dh[0, 0]
    o.dc = &dc[0, 0]
    o.dgates = &dgates[0, 0, 0]
    o.dx = &dx[0, 0, 0]
    o.dw_ih = &dw_ih[0, 0]
    o.dw_hh = &dw_hh[0, 0]
    o.db = &db[0]
    if w_peephole is not None:
        if dw_peephole is None:
            raise ValueError("w_peephole needs dw_peephole")
        o.w_peephole = &w_peephole[0, 0]
        o.dw_peephole = &dw_peephole[0, 0]
    if recurrent_mask is not None:
        if hds is None or dm is None:
            raise ValueError("recurrent_mask needs hds and dm")
        o.rmask = &recurrent_mask[0, 0]
        o.hds = <void*> &hds[0, 0, 0]
        o.dm = &dm[0, 0]
    if zoneout_h is not None:
        o.zoneout_h = &zoneout_h[0, 0, 0]
        o.zh_step = 0 if zoneout_h.shape[0] == 1 else B * H
    if zoneout_c is not None:
        if cnew is None:
            raise ValueError("zoneout_c needs cnew")
        o.zoneout_c = &zoneout_c[0, 0, 0]
        o.zc_step = 0 if zoneout_c.shape[0] == 1 else B * H
        o.cnew = <void*> &cnew[0, 0, 0]
    if dcs is not None:
        o.dcs = &dcs[0, 0, 0]
    with nogil:
        run_team(_backward_part[floating], &o, H, n_threads)


# --- layer-normalized LSTM (Ba, Kiros & Hinton 2016) ---------------------------------------------
# Legend as above:
#     a_t = LN(W_ih x_t; g_ih) + LN(W_hh h_{t-1}; g_hh) + b_ih + b_hh       (B, G)
#     c_t = f * c_{t-1} + i * g;  h_t = o * tanh(LN(c_t; g_c, b_c))
# each LN over a row's G (or H) features (_layernorm.pxd).
#
# Not a branch of _forward_part: a row's layer norm needs all G of its pre-activations (and all H
# of its c_t), while the plain gate pass gives each thread a slice of units. The forward is cut by
# batch rows instead: thread r owns rows [b0, b1) at every step and computes their W_ih x_t and
# W_hh h_{t-1} over all G columns (each thread packs all of W_ih and W_hh), their layer norms and
# gates. A row's recurrence then never reads another thread's rows: no barrier at all in the
# loop. (Each output element of the micro-kernels is the same sum in the same order for any
# number of rows per call, so the bits do not depend on the team size.) The backward is cut the
# same way: a row's gate grads (with the LN backward of c, W_hh h and W_ih x) and its
# dh_{t-1} = dgh_t W_hh need no other row; the row's terms of the bias and gain gradients are
# added right there into its block's sums (_layernorm.pxd's block_sums: so the gate gradients
# are never stored, and the bits are the same for any thread count). After the loop, one
# barrier, then the blocks' sums added in order, and the weight gradients and dx as large GEMMs.
cdef inline void _row_forward_ln(const floating* xh, floating* hh, const floating* g_ih,
                                 const floating* g_hh, const floating* bias, floating* a,
                                 const floating* c_prev, floating* c, floating* cn,
                                 const floating* g_c, const floating* b_c, floating* h,
                                 floating* rstd, Py_ssize_t H, double eps) noexcept nogil:
    """One row: hh := LN's vhat of W_hh h_{t-1} (in place); a = [i, f, g, o]; c = f c_prev +
    i g; cn = vhat of c; h = o tanh(g_c cn + b_c); rstd (3,), or NULL, receives the rstd of hh
    and c (its [1] and [2]). a must not overlap hh, nor cn h: each loop below then has few
    enough operands for the C compiler to vectorize it."""
    cdef Py_ssize_t j, k, G = 4 * H
    cdef floating i, f, g, rs_h, rs_c
    rs_h = ln_normalize(hh, hh, G, eps)
    for k in range(G):
        a[k] = g_ih[k] * xh[k] + g_hh[k] * hh[k] + bias[k]
    for j in range(H):
        i = sigmoid(a[j])
        f = sigmoid(a[H + j])
        g = tanh_(a[2 * H + j])
        a[j] = i
        a[H + j] = f
        a[2 * H + j] = g
        a[3 * H + j] = sigmoid(a[3 * H + j])
        c[j] = f * c_prev[j] + i * g
    rs_c = ln_normalize(c, cn, H, eps)
    for j in range(H):
        h[j] = a[3 * H + j] * tanh_(g_c[j] * cn[j] + b_c[j])
    if rstd != NULL:
        rstd[1] = rs_h
        rstd[2] = rs_c


cdef inline void _row_backward_ln(const floating* a, const floating* c_prev, const floating* cn,
                                  const floating* g_c, const floating* b_c, floating rs_c,
                                  const floating* hh, const floating* g_hh, floating rs_h,
                                  const floating* dy, floating* dh, floating* dc,
                                  floating* da, floating* du, floating* dgh,
                                  Py_ssize_t H) noexcept nogil:
    """One row's gate grads: da (of the pre-activations, also b's), du (of LN(c)), dgh (of
    W_hh h_{t-1}); dc becomes dc_{t-1}, dh becomes dh_t + dy_t (the GEMM then overwrites it).

    dh = dh_t + dy_t;  u = g_c cn + b_c;  du = dh o (1 - tanh(u)^2);  da_o = dh tanh(u) o(1-o)
    dc = dc_t + LN_c backward(du);  da_{i,f,g} as the plain LSTM;  dc_{t-1} = dc f
    dgh = LN_hh backward(da)
    """
    cdef Py_ssize_t j
    cdef floating i, f, g, o, tu, dcj, m1, m2, s1, s2
    for j in range(H):
        dh[j] += dy[j]
    for j in range(H):
        o = a[3 * H + j]
        tu = tanh_(g_c[j] * cn[j] + b_c[j])
        du[j] = dh[j] * o * dtanh(tu)
        da[3 * H + j] = dh[j] * tu * dsigmoid(o)
    row_dot2(du, g_c, cn, H, &s1, &s2)
    m1 = s1 / H
    m2 = s2 / H
    for j in range(H):
        i = a[j]
        f = a[H + j]
        g = a[2 * H + j]
        dcj = dc[j] + rs_c * (du[j] * g_c[j] - m1 - cn[j] * m2)
        da[j] = dcj * g * dsigmoid(i)
        da[H + j] = dcj * c_prev[j] * dsigmoid(f)
        da[2 * H + j] = dcj * i * dtanh(g)
        dc[j] = dcj * f
    ln_backward(da, g_hh, hh, rs_h, dgh, 4 * H)


cdef void _forward_ln_part(const void* ops, fr_barrier* bar, int size, int rank,
                           floating* tag) noexcept nogil:
    cdef const LSTMOps* op = <const LSTMOps*> ops
    cdef Py_ssize_t T = op.T, B = op.B, I = op.I, H = op.H
    cdef const int* batch_sizes = op.batch_sizes
    cdef bint training = op.training
    cdef double eps = op.ln_eps
    cdef const floating* x = <const floating*> op.x
    cdef const floating* h0 = <const floating*> op.h0
    cdef const floating* c0 = <const floating*> op.c0
    cdef const floating* w_ih = <const floating*> op.w_ih
    cdef const floating* w_hh = <const floating*> op.w_hh
    cdef const floating* bias = <const floating*> op.bias
    cdef const floating* g_ih = <const floating*> op.ln_ih
    cdef const floating* g_hh = <const floating*> op.ln_hh
    cdef const floating* g_c = <const floating*> op.ln_c
    cdef const floating* b_c = <const floating*> op.ln_c_bias
    cdef floating* gates = <floating*> op.gates
    cdef floating* xs = <floating*> op.xs
    cdef floating* hs = <floating*> op.hs
    cdef floating* cn = <floating*> op.cn
    cdef floating* rstd = <floating*> op.rstd
    cdef floating* y = <floating*> op.y
    cdef floating* cs = <floating*> op.cs
    cdef floating* h_n = <floating*> op.h_n
    cdef floating* c_n = <floating*> op.c_n
    cdef Py_ssize_t G = 4 * H
    cdef Py_ssize_t t, b, n, b0, b1, e, o, k, r, r1
    cdef floating rs
    cdef const floating* h_prev
    cdef const floating* c_prev
    cdef floating* c_cur
    cdef floating* xs_t
    cdef floating* hs_t
    cdef floating* a_t
    cdef Packed pk, pk_ih

    # this thread's batch rows [b0, b1), the same at every step, and all of W_hh and W_ih
    share_rows(B, size, rank, &b0, &b1)
    if b1 <= b0:
        return
    pack_nt(&pk, ISA, H, 0, H, 4, w_hh)
    pack_nt_k(&pk_ih, ISA, H, I, 0, H, 4, w_ih)
    if not training:  # one cell-state buffer, updated in place
        memcpy(cs + b0 * H, c0 + b0 * H, (b1 - b0) * H * sizeof(floating))

    for t in range(T):
        n = batch_sizes[t]
        e = min(b1, n)  # active rows [b0, e)
        o = t * B if training else 0
        xs_t = xs + o * G
        hs_t = hs + o * G
        a_t = gates + o * G
        h_prev = h0 if t == 0 else y + (t - 1) * B * H
        if training:
            c_prev = c0 if t == 0 else cs + (t - 1) * B * H
            c_cur = cs + t * B * H
        else:
            c_prev = cs
            c_cur = cs
        # xs_t, hs_t [b0:e] = x_t W_ih^T, h_{t-1} W_hh^T; then each row's layer norms and gates
        r = b0
        while r < e:
            r1 = run_end(r, e, &pk_ih)
            recurrent_nt_k(r1 - r, H, I, 0, H, 4, x + (t * B + r) * I, w_ih, <floating> 0,
                           xs_t + r * G, G, &pk_ih)
            r = r1
        r = b0
        while r < e:
            r1 = run_end(r, e, &pk)
            recurrent_nt(r1 - r, H, 0, H, 4, h_prev + r * H, w_hh, <floating> 0, hs_t + r * G, G,
                         &pk)
            r = r1
        for b in range(b0, e):
            rs = ln_normalize(xs_t + b * G, xs_t + b * G, G, eps)
            if training:
                rstd[(o + b) * 3] = rs
                _row_forward_ln(xs_t + b * G, hs_t + b * G, g_ih, g_hh, bias, a_t + b * G,
                                c_prev + b * H, c_cur + b * H, cn + (o + b) * H, g_c, b_c,
                                y + (t * B + b) * H, rstd + (o + b) * 3, H, eps)
            else:  # the normalized c over the row's spent hs_t
                _row_forward_ln(xs_t + b * G, hs_t + b * G, g_ih, g_hh, bias, a_t + b * G,
                                c_prev + b * H, c_cur + b * H, hs_t + b * G, g_c, b_c,
                                y + (t * B + b) * H, NULL, H, eps)
        for b in range(max(e, b0), b1):
            for k in range(H):
                y[(t * B + b) * H + k] = 0

    release(&pk)
    release(&pk_ih)
    for b in range(b0, b1):
        t = last_step(batch_sizes, T, b)
        memcpy(h_n + b * H, y + (t * B + b) * H, H * sizeof(floating))
        if training:
            memcpy(c_n + b * H, cs + (t * B + b) * H, H * sizeof(floating))
        else:
            memcpy(c_n + b * H, cs + b * H, H * sizeof(floating))


cdef void _backward_ln_part(const void* ops, fr_barrier* bar, int size, int rank,
                            floating* tag) noexcept nogil:
    cdef const LSTMOps* op = <const LSTMOps*> ops
    cdef Py_ssize_t T = op.T, B = op.B, I = op.I, H = op.H
    cdef const int* batch_sizes = op.batch_sizes
    cdef const floating* x = <const floating*> op.x
    cdef const floating* h0 = <const floating*> op.h0
    cdef const floating* c0 = <const floating*> op.c0
    cdef const floating* w_ih = <const floating*> op.w_ih
    cdef const floating* w_hh = <const floating*> op.w_hh
    cdef const floating* g_ih = <const floating*> op.ln_ih
    cdef const floating* g_hh = <const floating*> op.ln_hh
    cdef const floating* g_c = <const floating*> op.ln_c
    cdef const floating* b_c = <const floating*> op.ln_c_bias
    cdef const floating* gates = <const floating*> op.gates
    cdef const floating* xs = <const floating*> op.xs
    cdef const floating* hs = <const floating*> op.hs
    cdef const floating* cn = <const floating*> op.cn
    cdef const floating* rstd = <const floating*> op.rstd
    cdef const floating* y = <const floating*> op.y
    cdef const floating* cs = <const floating*> op.cs
    cdef const floating* dy = <const floating*> op.dy
    cdef floating* dh = <floating*> op.dh
    cdef floating* dc = <floating*> op.dc
    cdef floating* dgx = <floating*> op.dgx
    cdef floating* dgh = <floating*> op.dgh
    cdef floating* acc = <floating*> op.ln_acc
    cdef floating* dx = <floating*> op.dx
    cdef floating* dw_ih = <floating*> op.dw_ih
    cdef floating* dw_hh = <floating*> op.dw_hh
    cdef Py_ssize_t G = 4 * H
    # a block's row of acc: the sums of db, dln_ih, dln_hh (G each), dln_c_bias, dln_c (H each),
    # then its current row's da (G) and du (H)
    cdef Py_ssize_t K = 3 * G + 2 * H, W = K + G + H, nblk = n_row_blocks(B)
    cdef Py_ssize_t t, b, n, o, b0, b1, e, r, r1
    cdef const floating* c_prev
    cdef floating* ab
    cdef Packed pk

    # this thread's batch rows [b0, b1) at every step, and all of W_hh (as the forward)
    share_rows(B, size, rank, &b0, &b1)
    for b in range(b0 // ROW_BLOCK, n_row_blocks(b1)):
        memset(acc + b * W, 0, K * sizeof(floating))
    pack_nn(&pk, ISA, H, 0, H, G, w_hh)
    for t in range(T - 1, -1, -1):
        n = batch_sizes[t]
        e = max(b0, min(b1, n))  # active rows [b0, e)
        o = t * B
        c_prev = c0 if t == 0 else cs + (t - 1) * B * H
        for b in range(b0, e):
            ab = acc + (b // ROW_BLOCK) * W
            _row_backward_ln(gates + (o + b) * G, c_prev + b * H, cn + (o + b) * H, g_c, b_c,
                             rstd[(o + b) * 3 + 2], hs + (o + b) * G, g_hh,
                             rstd[(o + b) * 3 + 1], dy + (o + b) * H, dh + b * H, dc + b * H,
                             ab + K, ab + K + G, dgh + (o + b) * G, H)
            # the row's terms of db, dln_ih, dln_hh and of dln_c_bias, dln_c
            row_grads(ab + K, xs + (o + b) * G, hs + (o + b) * G, ab, ab + G, ab + 2 * G, G)
            row_grads(ab + K + G, cn + (o + b) * H, NULL, ab + 3 * G, ab + 3 * G + H, NULL, H)
            # dgx = the input LN's backward of da
            ln_backward(ab + K, g_ih, xs + (o + b) * G, rstd[(o + b) * 3], dgx + (o + b) * G, G)
        zero_rows(dgx + o * G, e, b1, G)
        zero_rows(dgh + o * G, e, b1, G)
        # dh_{t-1}[b0:e] = dgh_t[b0:e] W_hh   (inactive rows keep the dh they carry)
        r = b0
        while r < e:
            r1 = run_end(r, e, &pk)
            recurrent_nn(r1 - r, H, 0, H, G, dgh + (o + r) * G, w_hh, <floating> 0, dh + r * H, &pk)
            r = r1
    release(&pk)
    fr_barrier_wait(bar, size)

    # the bias and gain gradients: the blocks' sums, added in block order
    block_sums(acc, W, nblk, 0, G, <floating*> op.db, size, rank)
    block_sums(acc, W, nblk, G, G, <floating*> op.dln_ih, size, rank)
    block_sums(acc, W, nblk, 2 * G, G, <floating*> op.dln_hh, size, rank)
    block_sums(acc, W, nblk, 3 * G, H, <floating*> op.dln_c_bias, size, rank)
    block_sums(acc, W, nblk, 3 * G + H, H, <floating*> op.dln_c, size, rank)

    # The weight and input gradients, as large GEMMs over all T*B rows.
    weight_grad(T * B, I, H, 4, dgx, x, <floating> 0, dw_ih, size, rank, ISA)
    weight_grad(B, H, H, 4, dgh, h0, <floating> 0, dw_hh, size, rank, ISA)
    weight_grad((T - 1) * B, H, H, 4, dgh + B * G, y, <floating> 1, dw_hh, size, rank, ISA)
    input_grad(T * B, I, G, dgx, w_ih, dx, size, rank, ISA)


def ln_workspace(Py_ssize_t B, Py_ssize_t H):
    """The shape of backward_ln's ``ln_acc`` workspace for B batch rows and H units."""
    return (n_row_blocks(B), 3 * 4 * H + 2 * H + 4 * H + H)


def forward_ln(const floating[:, :, ::1] x,       # IN    (T, B, I)
               const floating[:, ::1] h0,         # IN    (B, H)
               const floating[:, ::1] c0,         # IN    (B, H)
               const floating[:, ::1] w_ih,       # IN    (G, I)
               const floating[:, ::1] w_hh,       # IN    (G, H)
               const floating[::1] bias,          # IN    (G,) b_ih + b_hh
               const floating[::1] ln_ih,         # IN    (G,)
               const floating[::1] ln_hh,         # IN    (G,)
               const floating[::1] ln_c,          # IN    (H,)
               const floating[::1] ln_c_bias,     # IN    (H,)
               double eps,
               const int[::1] batch_sizes,        # IN    (T,) non-increasing
               floating[:, :, ::1] gates,         # OUT   (T, B, G) activated gates ((1, B, G))
               floating[:, :, ::1] xs,            # OUT   (T, B, G) ((1, B, G) in inference)
               floating[:, :, ::1] hs,            # OUT   (T, B, G) ((1, B, G) in inference)
               floating[:, :, ::1] cn,            # OUT   (T, B, H) (training)
               floating[:, :, ::1] rstd,          # OUT   (T, B, 3) (training)
               floating[:, :, ::1] y,             # OUT   (T, B, H)
               floating[:, :, ::1] cs,            # OUT   (T, B, H) or (1, B, H) in inference
               floating[:, ::1] h_n,              # OUT   (B, H)
               floating[:, ::1] c_n,              # OUT   (B, H)
               bint training,
               int n_threads):
    """Layer-normalized LSTM forward over all T steps (T, B >= 1).

    Parameters
    ----------
    x : ndarray of shape (T, B, I), dtype=float32 or float64
    h0, c0 : ndarray of shape (B, H)
    w_ih : ndarray of shape (4H, I)
    w_hh : ndarray of shape (4H, H)
    bias : ndarray of shape (4H,)
        b_ih + b_hh (added after the layer norms).
    ln_ih, ln_hh : ndarray of shape (4H,)
        Gains of LN(W_ih x) and LN(W_hh h).
    ln_c, ln_c_bias : ndarray of shape (H,)
        Gain and bias of LN(c).
    eps : float
    batch_sizes : ndarray of shape (T,), dtype=int32
    gates : ndarray of shape (T, B, 4H), or (1, B, 4H) in inference, written
    xs : ndarray of shape (T, B, 4H), or (1, B, 4H) in inference, written: the normalized W_ih x
    hs : ndarray of shape (T, B, 4H), or (1, B, 4H) in inference, written: normalized W_hh h
    cn : ndarray of shape (T, B, H), written when training: the normalized c_t
    rstd : ndarray of shape (T, B, 3), written when training: 1/sqrt(var + eps) of each row
    y : ndarray of shape (T, B, H), written
    cs : ndarray of shape (T, B, H) when training else (1, B, H), written
    h_n, c_n : ndarray of shape (B, H), written
    training : bool
    n_threads : int
    """
    cdef Py_ssize_t T = x.shape[0], B = x.shape[1], I = x.shape[2], H = h0.shape[1]
    cdef Py_ssize_t steps = T if training else 1
    if (xs.shape[0] < steps or hs.shape[0] < steps or gates.shape[0] < steps
            or (training and (cn.shape[0] < T or rstd.shape[0] < T))):
        raise ValueError("a buffer has fewer steps than the forward writes")
    cdef LSTMOps o = _ops(T, B, I, H, &x[0, 0, 0], &h0[0, 0], &c0[0, 0], &w_ih[0, 0], &w_hh[0, 0],
                          &batch_sizes[0], &y[0, 0, 0])
    o.training = training
    o.bias = &bias[0]
    o.ln_eps = eps
    o.ln_ih = &ln_ih[0]
    o.ln_hh = &ln_hh[0]
    o.ln_c = &ln_c[0]
    o.ln_c_bias = &ln_c_bias[0]
    o.gates = &gates[0, 0, 0]
    o.xs = &xs[0, 0, 0]
    o.hs = &hs[0, 0, 0]
    o.cn = &cn[0, 0, 0]
    o.rstd = &rstd[0, 0, 0]
    o.cs = &cs[0, 0, 0]
    o.h_n = &h_n[0, 0]
    o.c_n = &c_n[0, 0]
    with nogil:
        run_team(_forward_ln_part[floating], &o, H, n_threads)


def backward_ln(const floating[:, :, ::1] x,      # IN    (T, B, I)
                const floating[:, ::1] h0,        # IN    (B, H)
                const floating[:, ::1] c0,        # IN    (B, H)
                const floating[:, ::1] w_ih,      # IN    (G, I)
                const floating[:, ::1] w_hh,      # IN    (G, H)
                const floating[::1] ln_ih,        # IN    (G,)
                const floating[::1] ln_hh,        # IN    (G,)
                const floating[::1] ln_c,         # IN    (H,)
                const floating[::1] ln_c_bias,    # IN    (H,)
                const int[::1] batch_sizes,       # IN    (T,)
                const floating[:, :, ::1] gates,  # IN    (T, B, G) from a training forward_ln
                const floating[:, :, ::1] xs,     # IN    (T, B, G)
                const floating[:, :, ::1] hs,     # IN    (T, B, G)
                const floating[:, :, ::1] cn,     # IN    (T, B, H)
                const floating[:, :, ::1] rstd,   # IN    (T, B, 3)
                const floating[:, :, ::1] y,      # IN    (T, B, H)
                const floating[:, :, ::1] cs,     # IN    (T, B, H)
                const floating[:, :, ::1] dy,     # IN    (T, B, H)
                floating[:, ::1] dh,              # INOUT (B, H) dh_n in, dh0 out
                floating[:, ::1] dc,              # INOUT (B, H) dc_n in, dc0 out
                floating[:, :, ::1] dgx,          # OUT   (T, B, G) workspace
                floating[:, :, ::1] dgh,          # OUT   (T, B, G) workspace
                floating[:, ::1] ln_acc,          # OUT   ln_workspace(B, H) workspace
                floating[:, :, ::1] dx,           # OUT   (T, B, I)
                floating[:, ::1] dw_ih,           # OUT   (G, I)
                floating[:, ::1] dw_hh,           # OUT   (G, H)
                floating[::1] db,                 # OUT   (G,) gradient of b_ih (and of b_hh)
                floating[::1] dln_ih,             # OUT   (G,)
                floating[::1] dln_hh,             # OUT   (G,)
                floating[::1] dln_c,              # OUT   (H,)
                floating[::1] dln_c_bias,         # OUT   (H,)
                int n_threads):
    """Layer-normalized LSTM BPTT over all T steps (T, B >= 1); see forward_ln for shapes."""
    cdef Py_ssize_t T = x.shape[0], B = x.shape[1], I = x.shape[2], H = h0.shape[1]
    if (ln_acc.shape[0], ln_acc.shape[1]) != ln_workspace(B, H):
        raise ValueError(f"ln_acc must have the shape {ln_workspace(B, H)}")
    cdef LSTMOps o = _ops(T, B, I, H, &x[0, 0, 0], &h0[0, 0], &c0[0, 0], &w_ih[0, 0], &w_hh[0, 0],
                          &batch_sizes[0], &y[0, 0, 0])
    o.ln_ih = &ln_ih[0]
    o.ln_hh = &ln_hh[0]
    o.ln_c = &ln_c[0]
    o.ln_c_bias = &ln_c_bias[0]
    o.gates = <void*> &gates[0, 0, 0]
    o.xs = <void*> &xs[0, 0, 0]
    o.hs = <void*> &hs[0, 0, 0]
    o.cn = <void*> &cn[0, 0, 0]
    o.rstd = <void*> &rstd[0, 0, 0]
    o.cs = <void*> &cs[0, 0, 0]
    o.dy = &dy[0, 0, 0]
    o.dh = &dh[0, 0]
    o.dc = &dc[0, 0]
    o.dgx = &dgx[0, 0, 0]
    o.dgh = &dgh[0, 0, 0]
    o.ln_acc = &ln_acc[0, 0]
    o.dx = &dx[0, 0, 0]
    o.dw_ih = &dw_ih[0, 0]
    o.dw_hh = &dw_hh[0, 0]
    o.db = &db[0]
    o.dln_ih = &dln_ih[0]
    o.dln_hh = &dln_hh[0]
    o.dln_c = &dln_c[0]
    o.dln_c_bias = &dln_c_bias[0]
    with nogil:
        run_team(_backward_ln_part[floating], &o, H, n_threads)


# --- LSTM with a projection (proj_size P > 0) ----------------------------------------------------
# Legend as above plus P, the projection size:
#     a_t = W_ih x_t + b_ih + W_hh h_{t-1} + b_hh          W_hh is (G, P), h is (B, P)
#     c_t = f * c_{t-1} + i * g;  m_t = o * tanh(c_t);  h_t = W_hr m_t      W_hr is (P, H)
# The cell math is the plain LSTM's with m_t in place of h_t (the forward calls _row_forward on
# the thread's units); the projection is one more GEMM per step forward and backward, and
# dW_hr = sum_t dh_t^T m_t is one large GEMM after the loop.
#
# Same parallel scheme as the plain LSTM, with a second cut: thread r owns hidden units [j0, j1)
# (its gate columns, c_t and m_t) and projection columns [p0, p1) (its columns of h_t, dh_t and
# rows of W_hr), both in fixed blocks of ~64 (thread_units over H and over P). A step's
# projection GEMM reads m_t (dm's GEMM reads dh_t) of all units, so a step has two barriers.

cdef inline void _row_backward_proj(const floating* a, const floating* c_prev, const floating* c,
                                    const floating* dm, floating* dc, floating* da,
                                    Py_ssize_t m, Py_ssize_t H) noexcept nogil:
    """Gate grads da from dm_t = dh_t W_hr and dc_t; dc becomes dc_{t-1}.

    tc = tanh(c_t);  dc = dc_t + dm o (1 - tc^2)
    da = [dc g i(1-i), dc c_prev f(1-f), dc i (1-g^2), dm tc o(1-o)];  dc_{t-1} = dc f
    """
    cdef Py_ssize_t j
    cdef floating i, f, g, o, tc, dmj, dcj
    for j in range(m):
        i = a[j]
        f = a[H + j]
        g = a[2 * H + j]
        o = a[3 * H + j]
        tc = tanh_(c[j])
        dmj = dm[j]
        dcj = dc[j] + dmj * o * dtanh(tc)
        da[j] = dcj * g * dsigmoid(i)
        da[H + j] = dcj * c_prev[j] * dsigmoid(f)
        da[2 * H + j] = dcj * i * dtanh(g)
        da[3 * H + j] = dmj * tc * dsigmoid(o)
        dc[j] = dcj * f


cdef void _forward_proj_part(const void* ops, fr_barrier* bar, int size, int rank,
                             floating* tag) noexcept nogil:
    cdef const LSTMOps* op = <const LSTMOps*> ops
    cdef Py_ssize_t T = op.T, B = op.B, I = op.I, H = op.H, P = op.P
    cdef const int* batch_sizes = op.batch_sizes
    cdef bint training = op.training
    cdef const floating* x = <const floating*> op.x
    cdef const floating* h0 = <const floating*> op.h0
    cdef const floating* c0 = <const floating*> op.c0
    cdef const floating* w_ih = <const floating*> op.w_ih
    cdef const floating* w_hh = <const floating*> op.w_hh
    cdef const floating* w_hr = <const floating*> op.w_hr
    cdef const floating* bias = <const floating*> op.bias
    cdef floating* gates = <floating*> op.gates
    cdef floating* y = <floating*> op.y
    cdef floating* cs = <floating*> op.cs
    cdef floating* ms = <floating*> op.ms
    cdef floating* h_n = <floating*> op.h_n
    cdef floating* c_n = <floating*> op.c_n
    cdef Py_ssize_t G = 4 * H
    cdef Py_ssize_t t, b, n, j0, j1, m, p0, p1, q
    cdef const floating* h_prev
    cdef const floating* c_prev
    cdef floating* c_cur
    cdef floating* m_cur
    cdef floating* a_t
    cdef Packed pk, pk_r

    thread_units(H, size, rank, &j0, &j1)
    thread_units(P, size, rank, &p0, &p1)
    m = j1 - j0
    q = p1 - p0
    pack_nt_k(&pk, ISA, H, P, j0, j1, 4, w_hh)
    pack_nt_k(&pk_r, ISA, P, H, p0, p1, 1, w_hr)
    # gates[t, b] = W_ih x[t, b] + (b_ih + b_hh) for all steps at once
    input_projection(T, B, batch_sizes, I, H, 4, x, w_ih, bias, gates, size, rank, ISA)
    if not training:  # one cell-state buffer, updated in place
        for b in range(B):
            memcpy(cs + b * H + j0, c0 + b * H + j0, m * sizeof(floating))
    fr_barrier_wait(bar, size)

    for t in range(T):
        n = batch_sizes[t]
        a_t = gates + t * B * G
        h_prev = h0 if t == 0 else y + (t - 1) * B * P
        if training:
            c_prev = c0 if t == 0 else cs + (t - 1) * B * H
            c_cur = cs + t * B * H
            m_cur = ms + t * B * H
        else:
            c_prev = cs
            c_cur = cs
            m_cur = ms
        # a_t[:n, units] += h_{t-1} W_hh[units]^T, then the gate pass: m_t[:n, units]
        recurrent_nt_k(n, H, P, j0, j1, 4, h_prev, w_hh, <floating> 1, a_t, G, &pk)
        for b in range(n if m > 0 else 0):
            _row_forward(a_t + b * G + j0, c_prev + b * H + j0, c_cur + b * H + j0,
                         m_cur + b * H + j0, m, H)
        if training and rank == 0:  # read by the dW_hr GEMM: no uninitialized rows
            zero_rows(m_cur, n, B, H)
        fr_barrier_wait(bar, size)
        # h_t[:n, cols] = m_t[:n] W_hr[cols]^T
        recurrent_nt_k(n, P, H, p0, p1, 1, m_cur, w_hr, <floating> 0, y + t * B * P, P, &pk_r)
        if rank == 0:
            zero_rows(y + t * B * P, n, B, P)
        fr_barrier_wait(bar, size)

    release(&pk)
    release(&pk_r)
    for b in range(B):
        t = last_step(batch_sizes, T, b)
        memcpy(h_n + b * P + p0, y + (t * B + b) * P + p0, q * sizeof(floating))
        if training:
            memcpy(c_n + b * H + j0, cs + (t * B + b) * H + j0, m * sizeof(floating))
        else:
            memcpy(c_n + b * H + j0, cs + b * H + j0, m * sizeof(floating))


cdef void _backward_proj_part(const void* ops, fr_barrier* bar, int size, int rank,
                              floating* tag) noexcept nogil:
    cdef const LSTMOps* op = <const LSTMOps*> ops
    cdef Py_ssize_t T = op.T, B = op.B, I = op.I, H = op.H, P = op.P
    cdef const int* batch_sizes = op.batch_sizes
    cdef const floating* x = <const floating*> op.x
    cdef const floating* h0 = <const floating*> op.h0
    cdef const floating* c0 = <const floating*> op.c0
    cdef const floating* w_ih = <const floating*> op.w_ih
    cdef const floating* w_hh = <const floating*> op.w_hh
    cdef const floating* w_hr = <const floating*> op.w_hr
    cdef const floating* gates = <const floating*> op.gates
    cdef const floating* y = <const floating*> op.y
    cdef const floating* cs = <const floating*> op.cs
    cdef const floating* ms = <const floating*> op.ms
    cdef const floating* dy = <const floating*> op.dy
    cdef floating* dh = <floating*> op.dh
    cdef floating* dc = <floating*> op.dc
    cdef floating* dgates = <floating*> op.dgates
    cdef floating* dhs = <floating*> op.dhs
    cdef floating* dm = <floating*> op.dm
    cdef floating* dx = <floating*> op.dx
    cdef floating* dw_ih = <floating*> op.dw_ih
    cdef floating* dw_hh = <floating*> op.dw_hh
    cdef floating* dw_hr = <floating*> op.dw_hr
    cdef floating* db = <floating*> op.db
    cdef Py_ssize_t G = 4 * H
    cdef Py_ssize_t t, b, n, o, j0, j1, m, p0, p1, k
    cdef const floating* c_prev
    cdef floating* da_t
    cdef floating* dh_t
    cdef Packed pk, pk_r

    thread_units(H, size, rank, &j0, &j1)
    thread_units(P, size, rank, &p0, &p1)
    m = j1 - j0
    pack_nn(&pk, ISA, P, p0, p1, G, w_hh)
    pack_nn(&pk_r, ISA, H, j0, j1, P, w_hr)
    for t in range(T - 1, -1, -1):
        n = batch_sizes[t]
        da_t = dgates + t * B * G
        dh_t = dhs + t * B * P
        c_prev = c0 if t == 0 else cs + (t - 1) * B * H
        # dhs_t[:n, cols] = dh_t + dy_t (the gradient reaching h_t)
        for b in range(n):
            for k in range(b * P + p0, b * P + p1):
                dh_t[k] = dh[k] + dy[t * B * P + k]
        if rank == 0:
            zero_rows(dh_t, n, B, P)
        fr_barrier_wait(bar, size)
        # dm[:n, units] = dhs_t[:n] W_hr[:, units], then the gate grads of those units
        recurrent_nn(n, H, j0, j1, P, dh_t, w_hr, <floating> 0, dm, &pk_r)
        for b in range(n if m > 0 else 0):
            o = t * B + b
            _row_backward_proj(gates + o * G + j0, c_prev + b * H + j0, cs + o * H + j0,
                               dm + b * H + j0, dc + b * H + j0, da_t + b * G + j0, m, H)
        if rank == 0:
            zero_rows(da_t, n, B, G)
        fr_barrier_wait(bar, size)
        # dh_{t-1}[:n, cols] = da_t[:n] W_hh[:, cols]   (inactive rows keep the dh they carry)
        recurrent_nn(n, P, p0, p1, G, da_t, w_hh, <floating> 0, dh, &pk)

    # The weight and input gradients, as large GEMMs over the active rows of all T steps.
    release(&pk)
    release(&pk_r)
    fr_barrier_wait(bar, size)
    weight_grad_active(T, B, batch_sizes, I, H, 4, dgates, G, x, <floating> 0, dw_ih, size, rank,
                       ISA)
    weight_grad(B, P, H, 4, dgates, h0, <floating> 0, dw_hh, size, rank, ISA)
    weight_grad_active(T - 1, B, batch_sizes + 1, P, H, 4, dgates + B * G, G, y, <floating> 1,
                       dw_hh, size, rank, ISA)
    # dW_hr = sum_t dh_t^T m_t
    weight_grad_active(T, B, batch_sizes, H, P, 1, dhs, P, ms, <floating> 0, dw_hr, size, rank,
                       ISA)
    bias_grad_active(T, B, batch_sizes, H, 4, dgates, db, size, rank)
    input_grad_active(T, B, batch_sizes, I, G, dgates, w_ih, dx, size, rank, ISA)


def forward_proj(const floating[:, :, ::1] x,       # IN    (T, B, I)
                 const floating[:, ::1] h0,         # IN    (B, P)
                 const floating[:, ::1] c0,         # IN    (B, H)
                 const floating[:, ::1] w_ih,       # IN    (G, I)
                 const floating[:, ::1] w_hh,       # IN    (G, P)
                 const floating[:, ::1] w_hr,       # IN    (P, H)
                 const floating[::1] bias,          # IN    (G,) b_ih + b_hh
                 const int[::1] batch_sizes,        # IN    (T,) non-increasing
                 floating[:, :, ::1] gates,         # OUT   (T, B, G) activated gates
                 floating[:, :, ::1] y,             # OUT   (T, B, P)
                 floating[:, :, ::1] cs,            # OUT   (T, B, H) or (1, B, H) in eval
                 floating[:, :, ::1] ms,            # OUT   (T, B, H) or (1, B, H) in eval
                 floating[:, ::1] h_n,              # OUT   (B, P)
                 floating[:, ::1] c_n,              # OUT   (B, H)
                 bint training,
                 int n_threads):
    """LSTM forward with a projection over all T steps (T, B >= 1).

    Parameters
    ----------
    x : ndarray of shape (T, B, I), dtype=float32 or float64
    h0 : ndarray of shape (B, P)
    c0 : ndarray of shape (B, H)
    w_ih : ndarray of shape (4H, I)
    w_hh : ndarray of shape (4H, P)
    w_hr : ndarray of shape (P, H)
    bias : ndarray of shape (4H,)
    batch_sizes : ndarray of shape (T,), dtype=int32
    gates : ndarray of shape (T, B, 4H), written
    y : ndarray of shape (T, B, P), written
    cs, ms : ndarray of shape (T, B, H) when training else (1, B, H), written
        Cell states c_t and unprojected outputs m_t = o * tanh(c_t).
    h_n : ndarray of shape (B, P), written
    c_n : ndarray of shape (B, H), written
    training : bool
    n_threads : int
    """
    cdef Py_ssize_t T = x.shape[0], B = x.shape[1], I = x.shape[2]
    cdef Py_ssize_t H = c0.shape[1], P = h0.shape[1]
    cdef LSTMOps o = _ops(T, B, I, H, &x[0, 0, 0], &h0[0, 0], &c0[0, 0], &w_ih[0, 0], &w_hh[0, 0],
                          &batch_sizes[0], &y[0, 0, 0])
    o.P = P
    o.training = training
    o.w_hr = &w_hr[0, 0]
    o.bias = &bias[0]
    o.gates = &gates[0, 0, 0]
    o.cs = &cs[0, 0, 0]
    o.ms = &ms[0, 0, 0]
    o.h_n = &h_n[0, 0]
    o.c_n = &c_n[0, 0]
    with nogil:
        run_team(_forward_proj_part[floating], &o, H, n_threads)


def backward_proj(const floating[:, :, ::1] x,      # IN    (T, B, I)
                  const floating[:, ::1] h0,        # IN    (B, P)
                  const floating[:, ::1] c0,        # IN    (B, H)
                  const floating[:, ::1] w_ih,      # IN    (G, I)
                  const floating[:, ::1] w_hh,      # IN    (G, P)
                  const floating[:, ::1] w_hr,      # IN    (P, H)
                  const int[::1] batch_sizes,       # IN    (T,)
                  const floating[:, :, ::1] gates,  # IN    (T, B, G) from a training forward
                  const floating[:, :, ::1] y,      # IN    (T, B, P)
                  const floating[:, :, ::1] cs,     # IN    (T, B, H)
                  const floating[:, :, ::1] ms,     # IN    (T, B, H)
                  const floating[:, :, ::1] dy,     # IN    (T, B, P)
                  floating[:, ::1] dh,              # INOUT (B, P) dh_n in, dh0 out
                  floating[:, ::1] dc,              # INOUT (B, H) dc_n in, dc0 out
                  floating[:, :, ::1] dgates,       # OUT   (T, B, G) workspace
                  floating[:, :, ::1] dhs,          # OUT   (T, B, P) workspace
                  floating[:, ::1] dm,              # OUT   (B, H) workspace
                  floating[:, :, ::1] dx,           # OUT   (T, B, I)
                  floating[:, ::1] dw_ih,           # OUT   (G, I)
                  floating[:, ::1] dw_hh,           # OUT   (G, P)
                  floating[:, ::1] dw_hr,           # OUT   (P, H)
                  floating[::1] db,                 # OUT   (G,)
                  int n_threads):
    """LSTM-with-projection BPTT over all T steps (T, B >= 1); see forward_proj for shapes."""
    cdef Py_ssize_t T = x.shape[0], B = x.shape[1], I = x.shape[2]
    cdef Py_ssize_t H = c0.shape[1], P = h0.shape[1]
    cdef LSTMOps o = _ops(T, B, I, H, &x[0, 0, 0], &h0[0, 0], &c0[0, 0], &w_ih[0, 0], &w_hh[0, 0],
                          &batch_sizes[0], &y[0, 0, 0])
    o.P = P
    o.w_hr = &w_hr[0, 0]
    o.gates = <void*> &gates[0, 0, 0]
    o.cs = <void*> &cs[0, 0, 0]
    o.ms = <void*> &ms[0, 0, 0]
    o.dy = &dy[0, 0, 0]
    o.dh = &dh[0, 0]
    o.dc = &dc[0, 0]
    o.dgates = &dgates[0, 0, 0]
    o.dhs = &dhs[0, 0, 0]
    o.dm = &dm[0, 0]
    o.dx = &dx[0, 0, 0]
    o.dw_ih = &dw_ih[0, 0]
    o.dw_hh = &dw_hh[0, 0]
    o.dw_hr = &dw_hr[0, 0]
    o.db = &db[0]
    with nogil:
        run_team(_backward_proj_part[floating], &o, H, n_threads)


# --- tier 4: the stable C API (declared in fastrnn/_kernels/lstm.pxd) ----------------------------
ctypedef LSTMOps Ops

include "_capi.pxi"


cdef inline Layout _layout(Py_ssize_t T, Py_ssize_t B, Py_ssize_t I, Py_ssize_t H) noexcept nogil:
    """Workspace: [batch_sizes | bias or db (G) | zero h0, c0 (2*B*H) | gates of an inference
    forward, or dgates (T*B*G) | cell state of an inference forward (B*H)].
    Reserve: [gates (T*B*G) | cell states (T*B*H)]."""
    cdef Layout L
    L.G = 4 * H
    L.vec = int_slots(T)
    L.vec_hh = L.vec
    L.states = L.vec + L.G
    L.scratch = L.states + 2 * B * H
    L.big = L.scratch
    L.work = L.big + T * B * L.G + B * H
    L.keep = T * B * L.G
    L.reserve = L.keep + T * B * H
    return L


cdef Py_ssize_t lstm_reserve_size(Py_ssize_t T, Py_ssize_t B, Py_ssize_t I,
                                  Py_ssize_t H) noexcept nogil:
    return _layout(T, B, I, H).reserve


cdef Py_ssize_t lstm_workspace_size(Py_ssize_t T, Py_ssize_t B, Py_ssize_t I,
                                    Py_ssize_t H) noexcept nogil:
    return _layout(T, B, I, H).work


cdef int _bind_forward(LSTMOps* o, const Layout* L, const floating* b_ih, const floating* b_hh,
                       floating* reserve, floating* work) noexcept nogil:
    cdef Py_ssize_t j, BH = o.B * o.H
    cdef floating* bias = work + L.vec
    if o.c_n == NULL:
        return ERR_ARG
    o.h0 = or_zeros(<const floating*> o.h0, work + L.states, BH)
    o.c0 = or_zeros(<const floating*> o.c0, work + L.states + BH, BH)
    for j in range(L.G):
        bias[j] = 0 if b_ih == NULL else b_ih[j] + b_hh[j]
    o.bias = bias
    o.training = reserve != NULL
    if o.training:
        o.gates = reserve
        o.cs = reserve + L.keep
    else:
        o.gates = work + L.big
        o.cs = work + L.big + o.T * o.B * L.G
    return 0


cdef void _pass_states(LSTMOps* o, floating* tag) noexcept nogil:
    memcpy(o.h_n, o.h0, o.B * o.H * sizeof(floating))
    memcpy(o.c_n, o.c0, o.B * o.H * sizeof(floating))


cdef int _bind_backward(LSTMOps* o, const Layout* L, const floating* dc_n,
                        const floating* reserve, floating* work) noexcept nogil:
    cdef Py_ssize_t BH = o.B * o.H
    if o.dc == NULL:
        return ERR_ARG
    copy_or_zero(<floating*> o.dc, dc_n, BH)  # the kernel carries dc back in place
    o.h0 = or_zeros(<const floating*> o.h0, work + L.states, BH)
    o.c0 = or_zeros(<const floating*> o.c0, work + L.states + BH, BH)
    o.gates = <floating*> reserve
    o.cs = <floating*> reserve + L.keep
    o.dgates = work + L.big
    o.db = work + L.vec
    return 0


cdef int lstm_forward_f32(Py_ssize_t T, Py_ssize_t B, Py_ssize_t I, Py_ssize_t H,
                          const float* x, const float* h0, const float* c0,
                          const float* w_ih, const float* w_hh,
                          const float* b_ih, const float* b_hh, const int* batch_sizes,
                          float* y, float* h_n, float* c_n,
                          float* reserve, float* workspace, int n_threads) noexcept nogil:
    cdef LSTMOps o = _ops(T, B, I, H, x, h0, c0, w_ih, w_hh, batch_sizes, y)
    o.h_n = h_n
    o.c_n = c_n
    return _c_forward(&o, b_ih, b_hh, reserve, workspace, n_threads)


cdef int lstm_forward_f64(Py_ssize_t T, Py_ssize_t B, Py_ssize_t I, Py_ssize_t H,
                          const double* x, const double* h0, const double* c0,
                          const double* w_ih, const double* w_hh,
                          const double* b_ih, const double* b_hh, const int* batch_sizes,
                          double* y, double* h_n, double* c_n,
                          double* reserve, double* workspace, int n_threads) noexcept nogil:
    cdef LSTMOps o = _ops(T, B, I, H, x, h0, c0, w_ih, w_hh, batch_sizes, y)
    o.h_n = h_n
    o.c_n = c_n
    return _c_forward(&o, b_ih, b_hh, reserve, workspace, n_threads)


cdef int lstm_backward_f32(Py_ssize_t T, Py_ssize_t B, Py_ssize_t I, Py_ssize_t H,
                           const float* x, const float* h0, const float* c0,
                           const float* w_ih, const float* w_hh, const int* batch_sizes,
                           const float* y, const float* reserve,
                           const float* dy, const float* dh_n, const float* dc_n,
                           float* dx, float* dh0, float* dc0, float* dw_ih, float* dw_hh,
                           float* db_ih, float* db_hh,
                           float* workspace, int n_threads) noexcept nogil:
    cdef LSTMOps o = _ops(T, B, I, H, x, h0, c0, w_ih, w_hh, batch_sizes, y)
    o.dy = dy
    o.dx = dx
    o.dh = dh0
    o.dc = dc0
    o.dw_ih = dw_ih
    o.dw_hh = dw_hh
    return _c_backward(&o, dh_n, dc_n, reserve, db_ih, db_hh, workspace, n_threads)


cdef int lstm_backward_f64(Py_ssize_t T, Py_ssize_t B, Py_ssize_t I, Py_ssize_t H,
                           const double* x, const double* h0, const double* c0,
                           const double* w_ih, const double* w_hh, const int* batch_sizes,
                           const double* y, const double* reserve,
                           const double* dy, const double* dh_n, const double* dc_n,
                           double* dx, double* dh0, double* dc0, double* dw_ih, double* dw_hh,
                           double* db_ih, double* db_hh,
                           double* workspace, int n_threads) noexcept nogil:
    cdef LSTMOps o = _ops(T, B, I, H, x, h0, c0, w_ih, w_hh, batch_sizes, y)
    o.dy = dy
    o.dx = dx
    o.dh = dh0
    o.dc = dc0
    o.dw_ih = dw_ih
    o.dw_hh = dw_hh
    return _c_backward(&o, dh_n, dc_n, reserve, db_ih, db_hh, workspace, n_threads)
include "_prepack.pxi"


def step(StepKernel s,
         x,                  # IN    (T, B, I) C-contiguous, s's dtype
         h0,                 # IN    (L, B, H): layer's (B, H) is h0[layer]
         c0,                 # IN    (L, B, H)
         y,                  # OUT   (T, B, H)
         h_n,                # OUT   (L, B, H): writes h_n[layer]
         c_n,                # OUT   (L, B, H)
         Py_ssize_t T, Py_ssize_t B, Py_ssize_t layer):
    """forward(x, h0[layer], c0[layer], ..., training=False, prepacked=s.prepacked) of the
    plain cell, bitwise, taking its arrays as raw buffers (_prepack.pxi). T, B >= 1; the
    arrays are checked for dtype size, C-contiguity and length only (fastrnn.nn.rnn validates
    them)."""
    cdef Py_ssize_t I = s.K, H = s.H, G = s.G, e = s.elem, off = layer * B * H * s.elem
    cdef Py_ssize_t ring = min(T, steps_per_chunk(B))
    cdef Py_buffer vx, vh, vc, vy, vhn, vcn
    cdef LSTMOps o
    cdef char* scratch = NULL
    cdef int* sizes = NULL
    if T < 1 or B < 1 or layer < 0:
        raise ValueError("step needs T, B >= 1 and layer >= 0")
    memset(&vx, 0, sizeof(Py_buffer))
    vh = vc = vy = vhn = vcn = vx
    try:
        o = _ops(T, B, I, H, _acquire(&vx, x, T * B * I * e, e, False),
                 _acquire(&vh, h0, off + B * H * e, e, False) + off,
                 _acquire(&vc, c0, off + B * H * e, e, False) + off, s.w_ih, s.w_hh,
                 NULL, _acquire(&vy, y, T * B * H * e, e, True))
        o.h_n = _acquire(&vhn, h_n, off + B * H * e, e, True) + off
        o.c_n = _acquire(&vcn, c_n, off + B * H * e, e, True) + off
        sizes = _full_sizes(T, B)
        scratch = <char*> malloc((ring * B * G + B * H) * e + 64)
        if scratch == NULL:
            raise MemoryError()
        o.batch_sizes = sizes
        o.bias = s.bias
        o.gates = line_start(scratch)
        o.cs = line_start(scratch) + ring * B * G * e
        if s.prepacked is not None:  # else the forward packs its own
            o.prepacked = &s.prepacked.pp
        with nogil:
            _run_step(&o, o.prepacked, s.rows, s.n_threads, H, T, e)
    finally:
        free(scratch)
        free(sizes)
        PyBuffer_Release(&vx)
        PyBuffer_Release(&vh)
        PyBuffer_Release(&vc)
        PyBuffer_Release(&vy)
        PyBuffer_Release(&vhn)
        PyBuffer_Release(&vcn)
