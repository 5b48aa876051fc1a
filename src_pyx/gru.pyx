"""GRU forward and BPTT over a whole sequence.

Legend: T steps, B batch rows, I input size, H hidden size, G = 3H gate width.
Gates are PyTorch's r, z, n, with the reset gate applied after the hidden matmul:
    gi = W_ih x_t + b_ih,  gh = W_hh h_{t-1} + b_hh                     (B, G)
    r = sigmoid(gi_r + gh_r),  z = sigmoid(gi_z + gh_z)
    n = tanh(gi_n + r * gh_n),  h_t = (1 - z) * n + z * h_{t-1}

The kernel receives bias_i = b_ih + [b_hr, b_hz, 0] (folded into the input GEMM) and b_hn apart,
since b_hn sits inside r * (...). Rows are sorted by decreasing length; ``batch_sizes[t]`` rows
are active at step t, and inactive rows keep their state and output zeros.

Options of the reset-after cell (GRUOps fields, NULL / 0 off):
    recurrent dropout (rmask, (B, H)): gh = W_hh (h_{t-1} * rmask) + b_hh; the update
        z * h_{t-1} uses the undropped state, and dW_hh reads hd_t = h_{t-1} * rmask
    zoneout (zw, (T, B, H) weights, or one number p):  h_t = zw h_{t-1} + (1 - zw) h~_t
        with h~_t the cell's update above; y_t = h_t
"""

from cython cimport floating
from libc.string cimport memcpy, memset

from _activations cimport dsigmoid, dtanh, sigmoid, tanh_
from _blocks cimport (Packed, bias_grad_active, input_grad, input_grad_active, input_projection,
                      pack_nn, pack_nt, pack_nt_k, project_active, project_rows, recurrent_nn,
                      recurrent_nn_ld,
                      recurrent_nt, recurrent_nt_k, release, step_gates, steps_per_chunk,
                      thread_units, thread_units_isa, weight_grad, weight_grad_active,
                      weight_grad_ld)
from _layernorm cimport (ROW_BLOCK, block_sums, ln_backward, ln_normalize, n_row_blocks,
                         row_grads, run_end, share_rows)
from _prepack cimport next_sweep, rows_fit, rows_panels, take_prepacked
from _ops cimport GRUOps
from _parallel cimport batch_share, fr_barrier, fr_barrier_wait, run_team, run_threads
from _rgemm cimport fr_rgemm_pick
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


# --- tier 1: one batch row, units [0, m) of a thread's slice (gate k of unit j at k*H + j) ----
cdef inline void _row_forward(floating* a, const floating* hw, const floating* b_hn,
                              const floating* h_prev, floating* hn, floating* h,
                              Py_ssize_t m, Py_ssize_t H) noexcept nogil:
    """_row_forward_loop over units [0, m), the last m % LANES on padded copies (_util.pxd)."""
    cdef Py_ssize_t n = m - m % LANES, r = m % LANES
    cdef floating ta[3 * LANES]
    cdef floating tw[3 * LANES]
    cdef floating tb[LANES]
    cdef floating tp[LANES]
    cdef floating tn[LANES]
    cdef floating th[LANES]
    _row_forward_loop(a, hw, b_hn, h_prev, hn, h, n, H)
    if r:
        tail_in(ta, a + n, r, 3, H)
        tail_in(tw, hw + n, r, 3, H)
        tail_in(tb, b_hn + n, r, 1, 0)
        tail_in(tp, h_prev + n, r, 1, 0)
        _row_forward_loop(ta, tw, tb, tp, tn, th, LANES, LANES)
        tail_out(a + n, ta, r, 3, H)
        tail_out(hn + n, tn, r, 1, 0)
        tail_out(h + n, th, r, 1, 0)


cdef inline void _row_forward_loop(floating* a, const floating* hw, const floating* b_hn,
                                   const floating* h_prev, floating* hn, floating* h,
                                   Py_ssize_t m, Py_ssize_t H) noexcept nogil:
    """a := [r, z, n] from a = gi and hw = W_hh h_prev; hn = hw_n + b_hn; h = (1-z) n + z h_prev."""
    cdef Py_ssize_t j
    cdef floating r, z, n, ghn
    for j in range(m):
        r = sigmoid(a[j] + hw[j])
        z = sigmoid(a[H + j] + hw[H + j])
        ghn = hw[2 * H + j] + b_hn[j]
        n = tanh_(a[2 * H + j] + r * ghn)
        a[j] = r
        a[H + j] = z
        a[2 * H + j] = n
        hn[j] = ghn
        h[j] = (<floating> 1 - z) * n + z * h_prev[j]


cdef inline void _row_backward(const floating* a, const floating* hn, const floating* h_prev,
                               const floating* dy, floating* dh, floating* dgi, floating* dgh,
                               Py_ssize_t m, Py_ssize_t H) noexcept nogil:
    """_row_backward_loop over units [0, m), the last m % LANES on padded copies (_util.pxd)."""
    cdef Py_ssize_t n = m - m % LANES, r = m % LANES
    cdef floating ta[3 * LANES]
    cdef floating ti[3 * LANES]
    cdef floating tg[3 * LANES]
    cdef floating tn[LANES]
    cdef floating tp[LANES]
    cdef floating ty[LANES]
    cdef floating th[LANES]
    _row_backward_loop(a, hn, h_prev, dy, dh, dgi, dgh, n, H)
    if r:
        tail_in(ta, a + n, r, 3, H)
        tail_in(tn, hn + n, r, 1, 0)
        tail_in(tp, h_prev + n, r, 1, 0)
        tail_in(ty, dy + n, r, 1, 0)
        tail_in(th, dh + n, r, 1, 0)
        _row_backward_loop(ta, tn, tp, ty, th, ti, tg, LANES, LANES)
        tail_out(dgi + n, ti, r, 3, H)
        tail_out(dgh + n, tg, r, 3, H)
        tail_out(dh + n, th, r, 1, 0)


cdef inline void _row_backward_loop(const floating* a, const floating* hn,
                                    const floating* h_prev, const floating* dy, floating* dh,
                                    floating* dgi, floating* dgh, Py_ssize_t m,
                                    Py_ssize_t H) noexcept nogil:
    """Gate grads from dh_t (+ dy_t); dh becomes the direct part z * dh_t of dh_{t-1}.

    dn_pre = dh (1-z) (1-n^2);  dr_pre = dn_pre hn r(1-r);  dz_pre = dh (h_prev - n) z(1-z)
    dgi = [dr_pre, dz_pre, dn_pre];  dgh = [dr_pre, dz_pre, dn_pre r]
    """
    cdef Py_ssize_t j
    cdef floating r, z, n, dhj, dn_pre, dr_pre, dz_pre
    for j in range(m):
        r = a[j]
        z = a[H + j]
        n = a[2 * H + j]
        dhj = dh[j] + dy[j]
        dn_pre = dhj * (<floating> 1 - z) * dtanh(n)
        dr_pre = dn_pre * hn[j] * dsigmoid(r)
        dz_pre = dhj * (h_prev[j] - n) * dsigmoid(z)
        dgi[j] = dr_pre
        dgi[H + j] = dz_pre
        dgi[2 * H + j] = dn_pre
        dgh[j] = dr_pre
        dgh[H + j] = dz_pre
        dgh[2 * H + j] = dn_pre * r
        dh[j] = dhj * z


cdef inline void _row_zoneout(floating* h, const floating* h_prev, const floating* zw,
                              Py_ssize_t zs, Py_ssize_t m) noexcept nogil:
    """h := zw h_prev + (1 - zw) h (zoneout; zw[j * zs]: zs 0 for one weight of every unit)."""
    cdef Py_ssize_t j
    for j in range(m):
        h[j] = zw[j * zs] * h_prev[j] + (<floating> 1 - zw[j * zs]) * h[j]


cdef inline void _row_backward_zoneout(const floating* a, const floating* hn,
                                       const floating* h_prev, const floating* dy,
                                       const floating* zw, Py_ssize_t zs, floating* dh,
                                       floating* dgi, floating* dgh, Py_ssize_t m,
                                       Py_ssize_t H) noexcept nogil:
    """_row_backward through h_t = zw h_{t-1} + (1 - zw) h~_t: the gates see (1 - zw) dh_t,
    and dh becomes the direct part zw dh_t + z (1 - zw) dh_t of dh_{t-1}."""
    cdef Py_ssize_t j
    cdef floating r, z, n, dht, dhj, dn_pre, dr_pre, dz_pre
    for j in range(m):
        r = a[j]
        z = a[H + j]
        n = a[2 * H + j]
        dht = dh[j] + dy[j]
        dhj = (<floating> 1 - zw[j * zs]) * dht
        dn_pre = dhj * (<floating> 1 - z) * dtanh(n)
        dr_pre = dn_pre * hn[j] * dsigmoid(r)
        dz_pre = dhj * (h_prev[j] - n) * dsigmoid(z)
        dgi[j] = dr_pre
        dgi[H + j] = dz_pre
        dgi[2 * H + j] = dn_pre
        dgh[j] = dr_pre
        dgh[H + j] = dz_pre
        dgh[2 * H + j] = dn_pre * r
        dh[j] = zw[j * zs] * dht + dhj * z


cdef inline void _row_mul(const floating* a, const floating* b, floating* out,
                          Py_ssize_t m) noexcept nogil:
    """out := a * b (the dropped state h * rmask)."""
    cdef Py_ssize_t j
    for j in range(m):
        out[j] = a[j] * b[j]


cdef inline void _row_add_mul(const floating* a, const floating* b, floating* out,
                              Py_ssize_t m) noexcept nogil:
    """out += a * b (dh_{t-1} += rmask * dgh_t W_hh)."""
    cdef Py_ssize_t j
    for j in range(m):
        out[j] += a[j] * b[j]


# --- tier 2: the time loops (one parallel region each; see lstm.pyx and _blocks.pxd) ------------
cdef void _forward_part(const void* ops, fr_barrier* bar, int size, int rank,
                        floating* tag) noexcept nogil:
    cdef const GRUOps* op = <const GRUOps*> ops
    cdef Py_ssize_t T = op.T, B = op.B, I = op.I, H = op.H
    cdef const int* batch_sizes = op.batch_sizes
    cdef bint training = op.training
    cdef const floating* x = <const floating*> op.x
    cdef const floating* h0 = <const floating*> op.h0
    cdef const floating* w_ih = <const floating*> op.w_ih
    cdef const floating* w_hh = <const floating*> op.w_hh
    cdef const floating* bias_i = <const floating*> op.bias
    cdef const floating* b_hn = <const floating*> op.b_hn
    cdef floating* gates = <floating*> op.gates
    cdef floating* hns = <floating*> op.hns
    cdef floating* hw = <floating*> op.hw
    cdef floating* y = <floating*> op.y
    cdef floating* h_n = <floating*> op.h_n
    cdef const floating* rmask = <const floating*> op.rmask
    cdef floating* hds = <floating*> op.hds
    cdef floating zp = <floating> op.zoneout_p
    cdef const floating* zw = <const floating*> op.zoneout
    cdef bint zoneout = zw != NULL or zp != 0
    cdef Py_ssize_t zs = 1 if zw != NULL else 0  # stride of the zoneout weights (0: just zp)
    cdef Py_ssize_t G = 3 * H, tc = steps_per_chunk(B)
    cdef Py_ssize_t t, b, n, j0, j1, m
    cdef const floating* h_prev
    cdef const floating* h_in
    cdef floating* a_t
    cdef floating* hn_t
    cdef floating* hd_t
    cdef Packed pk, pk_ih
    cdef bint own, sweep

    if zw == NULL:
        zw = &zp
    thread_units_isa(H, size, rank, ISA, &j0, &j1)
    m = j1 - j0
    own = not take_prepacked(op.prepacked, ISA, sizeof(floating), size, rank, &pk, &pk_ih)
    if own:  # no fitting prepacked panels: pack this call's (_prepack.pxd)
        pack_nt(&pk, ISA, H, j0, j1, 3, w_hh)
        pack_nt_k(&pk_ih, ISA, H, I, j0, j1, 3, w_ih)
    sweep = T == 1 and not own and next_sweep(op.prepacked, rank)  # step_gates' direction
    if rmask != NULL:
        # hds[0] = h0 * rmask: the first GEMM reads every thread's units
        for b in range(B if m > 0 else 0):
            _row_mul(h0 + b * H + j0, rmask + b * H + j0, hds + b * H + j0, m)
        fr_barrier_wait(bar, size)

    for t in range(T):
        n = batch_sizes[t]
        # gates[t'] = W_ih x[t'] + bias_i for the next tc steps and this thread's units
        # (training: gates holds all T steps; inference: a ring of tc steps)
        a_t = gates + (t if training else t % tc) * B * G
        if t % tc == 0 and T > 1:
            project_active(t, min(t + tc, T), B, batch_sizes, I, H, j0, j1, 3, x, w_ih, bias_i,
                           a_t, &pk_ih)
        hn_t = hns + t * B * H if training else hns
        h_prev = h0 if t == 0 else y + (t - 1) * B * H
        # the GEMM reads h_{t-1}, or hd_t = h_{t-1} * rmask (training: all steps; inference:
        # a ring of 2, as step t writes hd_{t+1} while another thread may still read hd_t)
        h_in = h_prev if rmask == NULL else hds + (t if training else t % 2) * B * H
        # hw[:n, units] = h_in W_hh[units]^T, then the gate pass on those units
        if T == 1:  # a streaming step: both GEMMs, in one sweep over the weights
            step_gates(n, I, H, j0, j1, 3, x, h_in, w_ih, w_hh, bias_i, a_t, hw, False, &pk_ih,
                       &pk, sweep)
        else:
            recurrent_nt(n, H, j0, j1, 3, h_in, w_hh, <floating> 0, hw, G, &pk)
        for b in range(n if m > 0 else 0):
            _row_forward(a_t + b * G + j0, hw + b * G + j0, b_hn + j0, h_prev + b * H + j0,
                         hn_t + b * H + j0, y + (t * B + b) * H + j0, m, H)
        if zoneout:
            for b in range(n if m > 0 else 0):
                _row_zoneout(y + (t * B + b) * H + j0, h_prev + b * H + j0,
                             zw + (t * B + b) * H * zs + j0 * zs, zs, m)
        if rmask != NULL and t + 1 < T:
            hd_t = hds + (t + 1 if training else (t + 1) % 2) * B * H
            for b in range(n if m > 0 else 0):
                _row_mul(y + (t * B + b) * H + j0, rmask + b * H + j0, hd_t + b * H + j0, m)
            if training and rank == 0:  # read by the dW_hh GEMM: no uninitialized rows
                zero_rows(hd_t, n, B, H)
        if rank == 0:
            zero_rows(y + t * B * H, n, B, H)
        fr_barrier_wait(bar, size)

    if own:
        release(&pk)
        release(&pk_ih)
    for b in range(B if m > 0 else 0):
        t = last_step(batch_sizes, T, b)
        memcpy(h_n + b * H + j0, y + (t * B + b) * H + j0, m * sizeof(floating))


cdef void _forward_rows_part(const void* ops, fr_barrier* bar, int size, int rank,
                             floating* tag) noexcept nogil:
    """_forward_part of a plain inference forward whose threads split the batch rows
    (_prepack.pxd: rows_fit): this thread's rows [b0, b1), every unit, all T steps, from the
    team of one's panels; no barrier."""
    cdef const GRUOps* op = <const GRUOps*> ops
    cdef Py_ssize_t T = op.T, B = op.B, I = op.I, H = op.H
    cdef const floating* x = <const floating*> op.x
    cdef const floating* h0 = <const floating*> op.h0
    cdef const floating* w_ih = <const floating*> op.w_ih
    cdef const floating* w_hh = <const floating*> op.w_hh
    cdef const floating* bias_i = <const floating*> op.bias
    cdef const floating* b_hn = <const floating*> op.b_hn
    cdef floating* gates = <floating*> op.gates
    cdef floating* hns = <floating*> op.hns
    cdef floating* hw = <floating*> op.hw
    cdef floating* y = <floating*> op.y
    cdef Py_ssize_t G = 3 * H, tc = steps_per_chunk(B)
    cdef Py_ssize_t t, b, b0, b1
    cdef const floating* h_prev
    cdef floating* a_t
    cdef Packed pk, pk_ih
    batch_share(B, size, rank, &b0, &b1)
    if b1 <= b0:
        return
    rows_panels(op.prepacked, &pk, &pk_ih)
    for t in range(T):
        a_t = gates + t % tc * B * G
        if t % tc == 0:  # the ring of the next tc steps' projections, this thread's rows
            project_rows(t, min(t + tc, T), B, b0, b1, I, H, 3, x, w_ih, bias_i, gates, &pk_ih)
        h_prev = h0 if t == 0 else y + (t - 1) * B * H
        recurrent_nt(b1 - b0, H, 0, H, 3, h_prev + b0 * H, w_hh, <floating> 0, hw + b0 * G, G,
                     &pk)
        for b in range(b0, b1):
            _row_forward(a_t + b * G, hw + b * G, b_hn, h_prev + b * H, hns + b * H,
                         y + (t * B + b) * H, H, H)
    memcpy(<floating*> op.h_n + b0 * H, y + ((T - 1) * B + b0) * H,
           (b1 - b0) * H * sizeof(floating))


cdef void _backward_part(const void* ops, fr_barrier* bar, int size, int rank,
                         floating* tag) noexcept nogil:
    cdef const GRUOps* op = <const GRUOps*> ops
    cdef Py_ssize_t T = op.T, B = op.B, I = op.I, H = op.H
    cdef const int* batch_sizes = op.batch_sizes
    cdef const floating* x = <const floating*> op.x
    cdef const floating* h0 = <const floating*> op.h0
    cdef const floating* w_ih = <const floating*> op.w_ih
    cdef const floating* w_hh = <const floating*> op.w_hh
    cdef const floating* gates = <const floating*> op.gates
    cdef const floating* hns = <const floating*> op.hns
    cdef const floating* y = <const floating*> op.y
    cdef const floating* dy = <const floating*> op.dy
    cdef floating* dh = <floating*> op.dh
    cdef floating* dgi = <floating*> op.dgi
    cdef floating* dgh = <floating*> op.dgh
    cdef floating* dx = <floating*> op.dx
    cdef floating* dw_ih = <floating*> op.dw_ih
    cdef floating* dw_hh = <floating*> op.dw_hh
    cdef floating* db_ih = <floating*> op.db_ih
    cdef floating* db_hh = <floating*> op.db_hh
    cdef const floating* rmask = <const floating*> op.rmask
    cdef const floating* hds = <const floating*> op.hds
    cdef floating* dhd = <floating*> op.dhd
    cdef floating zp = <floating> op.zoneout_p
    cdef const floating* zw = <const floating*> op.zoneout
    cdef bint zoneout = zw != NULL or zp != 0
    cdef Py_ssize_t zs = 1 if zw != NULL else 0
    cdef Py_ssize_t G = 3 * H
    cdef Py_ssize_t t, b, n, o, j0, j1, m
    cdef const floating* h_prev
    cdef Packed pk

    if zw == NULL:
        zw = &zp
    thread_units_isa(H, size, rank, ISA, &j0, &j1)
    m = j1 - j0
    pack_nn(&pk, ISA, H, j0, j1, G, w_hh)
    for t in range(T - 1, -1, -1):
        n = batch_sizes[t]
        h_prev = h0 if t == 0 else y + (t - 1) * B * H
        if zoneout:
            for b in range(n if m > 0 else 0):
                o = t * B + b
                _row_backward_zoneout(gates + o * G + j0, hns + o * H + j0, h_prev + b * H + j0,
                                      dy + o * H + j0, zw + o * H * zs + j0 * zs, zs,
                                      dh + b * H + j0, dgi + o * G + j0, dgh + o * G + j0, m,
                                      H)
        else:
            for b in range(n if m > 0 else 0):
                o = t * B + b
                _row_backward(gates + o * G + j0, hns + o * H + j0, h_prev + b * H + j0,
                              dy + o * H + j0, dh + b * H + j0, dgi + o * G + j0,
                              dgh + o * G + j0, m, H)
        # (the padding rows of dgi, dgh stay unset: every GEMM after the loop skips them)
        fr_barrier_wait(bar, size)
        # dh_{t-1}[:n, units] = z * dh_t + dgh_t[:n] W_hh[:, units]   (inactive rows keep dh);
        # with recurrent dropout the GEMM's part reaches hd_t = h_{t-1} * rmask: times rmask
        if rmask == NULL:
            recurrent_nn(n, H, j0, j1, G, dgh + t * B * G, w_hh, <floating> 1, dh, &pk)
        else:
            recurrent_nn(n, H, j0, j1, G, dgh + t * B * G, w_hh, <floating> 0, dhd, &pk)
            for b in range(n if m > 0 else 0):
                _row_add_mul(dhd + b * H + j0, rmask + b * H + j0, dh + b * H + j0, m)

    release(&pk)
    fr_barrier_wait(bar, size)
    # the weight and input gradients over the active rows of all T steps (_blocks.pxd)
    weight_grad_active(T, B, batch_sizes, I, H, 3, dgi, G, x, <floating> 0, dw_ih, size, rank,
                       ISA)
    if rmask == NULL:  # dW_hh = sum_t dgh_t^T h_{t-1}, h_{t-1} from h0 and y
        weight_grad(B, H, H, 3, dgh, h0, <floating> 0, dw_hh, size, rank, ISA)
        weight_grad_active(T - 1, B, batch_sizes + 1, H, H, 3, dgh + B * G, G, y, <floating> 1,
                           dw_hh, size, rank, ISA)
    else:  # dW_hh = sum_t dgh_t^T hd_t
        weight_grad_active(T, B, batch_sizes, H, H, 3, dgh, G, hds, <floating> 0, dw_hh, size,
                           rank, ISA)
    bias_grad_active(T, B, batch_sizes, H, 3, dgi, db_ih, size, rank)
    bias_grad_active(T, B, batch_sizes, H, 3, dgh, db_hh, size, rank)
    input_grad_active(T, B, batch_sizes, I, G, dgi, w_ih, dx, size, rank, ISA)


cdef inline GRUOps _ops(Py_ssize_t T, Py_ssize_t B, Py_ssize_t I, Py_ssize_t H,
                        const void* x, const void* h0, const void* w_ih, const void* w_hh,
                        const int* batch_sizes, const void* y) noexcept nogil:
    """An operand struct with the operands every call takes; the rest NULL (off)."""
    cdef GRUOps o
    memset(&o, 0, sizeof(o))
    o.T = T
    o.B = B
    o.I = I
    o.H = H
    o.x = x
    o.h0 = h0
    o.w_ih = w_ih
    o.w_hh = w_hh
    o.batch_sizes = batch_sizes
    o.y = <void*> y
    return o


# --- tier 3: the Python entry points -------------------------------------------------------------
def forward(const floating[:, :, ::1] x,       # IN    (T, B, I)
            const floating[:, ::1] h0,         # IN    (B, H)
            const floating[:, ::1] w_ih,       # IN    (G, I)
            const floating[:, ::1] w_hh,       # IN    (G, H)
            const floating[::1] bias_i,        # IN    (G,) b_ih + [b_hr, b_hz, 0]
            const floating[::1] b_hn,          # IN    (H,)
            const int[::1] batch_sizes,        # IN    (T,) non-increasing, batch_sizes[0] == B
            floating[:, :, ::1] gates,         # OUT   (T, B, G) activated gates r, z, n
            floating[:, :, ::1] hns,           # OUT   (T, B, H) W_hn h + b_hn ((1, B, H) if eval)
            floating[:, ::1] hw,               # OUT   (B, G) workspace
            floating[:, :, ::1] y,             # OUT   (T, B, H)
            floating[:, ::1] h_n,              # OUT   (B, H)
            bint training,
            int n_threads,
            rmask=None,                        # IN    (B, H) or None
            hds=None,                          # OUT   (T, B, H) ((2, B, H) if eval) with rmask
            zoneout=None,                      # IN    (T, B, H) or None
            double zoneout_p=0,
            PackedWeights prepacked=None):
    """GRU forward over all T steps (T, B >= 1; arrays validated by fastrnn.functional).

    Parameters
    ----------
    x : ndarray of shape (T, B, I), dtype=float32 or float64
    h0 : ndarray of shape (B, H)
    w_ih : ndarray of shape (3H, I)
    w_hh : ndarray of shape (3H, H)
    bias_i : ndarray of shape (3H,)
    b_hn : ndarray of shape (H,)
    batch_sizes : ndarray of shape (T,), dtype=int32
    gates : ndarray of shape (T, B, 3H), written; an inference forward (training False) needs
        only ring_steps(T, B) steps of it
    hns : ndarray of shape (T, B, H) when training else (1, B, H), written
    hw : ndarray of shape (B, 3H), workspace
    y : ndarray of shape (T, B, H), written
    h_n : ndarray of shape (B, H), written
    training : bool
    n_threads : int
    rmask : ndarray of shape (B, H) or None
        Recurrent dropout mask, applied to h_{t-1} before the W_hh GEMM at every step.
    hds : ndarray of shape (T, B, H) when training else (2, B, H), written; with rmask only
        (h_{t-1} * rmask of each step, what the backward's dW_hh reads)
    zoneout : ndarray of shape (T, B, H) or None
        Zoneout weights of h: h_t = zoneout h_{t-1} + (1 - zoneout) h~_t.
    zoneout_p : float
        The one zoneout weight of every unit when zoneout is None (0: no zoneout).
    prepacked : PackedWeights, optional
        ``prepack(w_ih, w_hh, G, n)`` of exactly these weights: used when it was packed for
        this call's team, else the call packs its own.
    """
    cdef Py_ssize_t T = x.shape[0], B = x.shape[1], I = x.shape[2], H = h0.shape[1]
    if gates.shape[0] < (T if training else ring_steps(T, B)):
        raise ValueError(f"gates has {gates.shape[0]} steps, fewer than the forward writes")
    cdef GRUOps o = _ops(T, B, I, H, &x[0, 0, 0], &h0[0, 0], &w_ih[0, 0], &w_hh[0, 0],
                         &batch_sizes[0], &y[0, 0, 0])
    o.training = training
    o.bias = &bias_i[0]
    o.b_hn = &b_hn[0]
    o.gates = &gates[0, 0, 0]
    o.hns = &hns[0, 0, 0]
    o.hw = &hw[0, 0]
    o.h_n = &h_n[0, 0]
    if prepacked is not None:  # from prepack(w_ih, w_hh, ...) of these weights
        o.prepacked = &prepacked.pp
    cdef const floating[:, ::1] rmask_v
    cdef floating[:, :, ::1] hds_v
    cdef const floating[:, :, ::1] zoneout_v
    if rmask is not None:
        rmask_v = rmask
        hds_v = hds
        if hds_v.shape[0] < (T if training else 2):
            raise ValueError(f"hds has {hds_v.shape[0]} steps, fewer than the forward writes")
        o.rmask = &rmask_v[0, 0]
        o.hds = &hds_v[0, 0, 0]
    if zoneout is not None:
        zoneout_v = zoneout
        o.zoneout = &zoneout_v[0, 0, 0]
    o.zoneout_p = zoneout_p
    with nogil:
        run_team(_forward_part[floating], &o, H, n_threads)


def backward(const floating[:, :, ::1] x,      # IN    (T, B, I)
             const floating[:, ::1] h0,        # IN    (B, H)
             const floating[:, ::1] w_ih,      # IN    (G, I)
             const floating[:, ::1] w_hh,      # IN    (G, H)
             const int[::1] batch_sizes,       # IN    (T,)
             const floating[:, :, ::1] gates,  # IN    (T, B, G) from a training forward
             const floating[:, :, ::1] hns,    # IN    (T, B, H)
             const floating[:, :, ::1] y,      # IN    (T, B, H)
             const floating[:, :, ::1] dy,     # IN    (T, B, H)
             floating[:, ::1] dh,              # INOUT (B, H) dh_n in, dh0 out
             floating[:, :, ::1] dgi,          # OUT   (T, B, G) workspace
             floating[:, :, ::1] dgh,          # OUT   (T, B, G) workspace
             floating[:, :, ::1] dx,           # OUT   (T, B, I)
             floating[:, ::1] dw_ih,           # OUT   (G, I)
             floating[:, ::1] dw_hh,           # OUT   (G, H)
             floating[::1] db_ih,              # OUT   (G,)
             floating[::1] db_hh,              # OUT   (G,)
             int n_threads,
             rmask=None,                       # IN    (B, H) or None, as the forward's
             hds=None,                         # IN    (T, B, H) with rmask, from the forward
             dhd=None,                         # OUT   (B, H) workspace with rmask
             zoneout=None,                     # IN    (T, B, H) or None, as the forward's
             double zoneout_p=0):
    """GRU BPTT over all T steps (T, B >= 1); see forward for the shapes."""
    cdef Py_ssize_t T = x.shape[0], B = x.shape[1], I = x.shape[2], H = h0.shape[1]
    cdef GRUOps o = _ops(T, B, I, H, &x[0, 0, 0], &h0[0, 0], &w_ih[0, 0], &w_hh[0, 0],
                         &batch_sizes[0], &y[0, 0, 0])
    o.gates = <void*> &gates[0, 0, 0]
    o.hns = <void*> &hns[0, 0, 0]
    o.dy = &dy[0, 0, 0]
    o.dh = &dh[0, 0]
    o.dgi = &dgi[0, 0, 0]
    o.dgh = &dgh[0, 0, 0]
    o.dx = &dx[0, 0, 0]
    o.dw_ih = &dw_ih[0, 0]
    o.dw_hh = &dw_hh[0, 0]
    o.db_ih = &db_ih[0]
    o.db_hh = &db_hh[0]
    cdef const floating[:, ::1] rmask_v
    cdef const floating[:, :, ::1] hds_v
    cdef floating[:, ::1] dhd_v
    cdef const floating[:, :, ::1] zoneout_v
    if rmask is not None:
        rmask_v = rmask
        hds_v = hds
        dhd_v = dhd
        o.rmask = &rmask_v[0, 0]
        o.hds = <void*> &hds_v[0, 0, 0]
        o.dhd = &dhd_v[0, 0]
    if zoneout is not None:
        zoneout_v = zoneout
        o.zoneout = &zoneout_v[0, 0, 0]
    o.zoneout_p = zoneout_p
    with nogil:
        run_team(_backward_part[floating], &o, H, n_threads)


# --- layer-normalized GRU (Ba, Kiros & Hinton 2016) ----------------------------------------------
# Legend as above:
#     gi = LN(W_ih x_t; g_ih) + b_ih,  gh = LN(W_hh h_{t-1}; g_hh) + b_hh      (B, G)
#     then PyTorch's GRU: r = sigmoid(gi_r + gh_r), z = sigmoid(gi_z + gh_z),
#     n = tanh(gi_n + r * gh_n), h_t = (1 - z) * n + z * h_{t-1}
# each LN over a row's G features (_layernorm.pxd). The loops are cut as lstm.pyx's layer-norm
# loops say (and for the same reason): by batch rows, with no barrier in the time loop.
cdef inline void _row_forward_ln(const floating* xh, floating* hh, const floating* g_ih,
                                 const floating* g_hh, const floating* b_ih,
                                 const floating* b_hh, floating* a, const floating* h_prev,
                                 floating* hn, floating* h, floating* rstd, Py_ssize_t H,
                                 double eps) noexcept nogil:
    """One row: hh := vhat of W_hh h_{t-1} (in place); a = [r, z, n]; hn = gh_n (hn may be
    hh + 2H); h = (1-z) n + z h_prev; rstd[1], unless NULL, = the rstd of hh. a must not
    overlap hh (each loop then has few enough operands for the C compiler to vectorize it)."""
    cdef Py_ssize_t j, k
    cdef floating r, z, n, rs_h
    rs_h = ln_normalize(hh, hh, 3 * H, eps)
    for k in range(3 * H):  # gi
        a[k] = g_ih[k] * xh[k] + b_ih[k]
    for j in range(H):  # gh_n
        hn[j] = g_hh[2 * H + j] * hh[2 * H + j] + b_hh[2 * H + j]
    for j in range(H):
        r = sigmoid(a[j] + (g_hh[j] * hh[j] + b_hh[j]))
        z = sigmoid(a[H + j] + (g_hh[H + j] * hh[H + j] + b_hh[H + j]))
        n = tanh_(a[2 * H + j] + r * hn[j])
        a[j] = r
        a[H + j] = z
        a[2 * H + j] = n
        h[j] = (<floating> 1 - z) * n + z * h_prev[j]
    if rstd != NULL:
        rstd[1] = rs_h


cdef inline void _row_backward_ln(const floating* a, const floating* hn, const floating* h_prev,
                                  const floating* hh, const floating* g_hh, floating rs_h,
                                  const floating* dy, floating* dh, floating* dgi, floating* dgh,
                                  floating* dghh, Py_ssize_t H) noexcept nogil:
    """One row's gate grads as the plain GRU's (dgi of gi, dgh of gh; dh becomes the direct
    part z * dh_t of dh_{t-1}), then dghh = LN_hh backward(dgh), the gradient of W_hh h_{t-1}."""
    _row_backward(a, hn, h_prev, dy, dh, dgi, dgh, H, H)
    ln_backward(dgh, g_hh, hh, rs_h, dghh, 3 * H)


cdef void _forward_ln_part(const void* ops, fr_barrier* bar, int size, int rank,
                           floating* tag) noexcept nogil:
    cdef const GRUOps* op = <const GRUOps*> ops
    cdef Py_ssize_t T = op.T, B = op.B, I = op.I, H = op.H
    cdef const int* batch_sizes = op.batch_sizes
    cdef bint training = op.training
    cdef double eps = op.ln_eps
    cdef const floating* x = <const floating*> op.x
    cdef const floating* h0 = <const floating*> op.h0
    cdef const floating* w_ih = <const floating*> op.w_ih
    cdef const floating* w_hh = <const floating*> op.w_hh
    cdef const floating* b_ih = <const floating*> op.bias
    cdef const floating* b_hh = <const floating*> op.bias_hh
    cdef const floating* g_ih = <const floating*> op.ln_ih
    cdef const floating* g_hh = <const floating*> op.ln_hh
    cdef floating* gates = <floating*> op.gates
    cdef floating* xs = <floating*> op.xs
    cdef floating* hs = <floating*> op.hs
    cdef floating* hns = <floating*> op.hns
    cdef floating* rstd = <floating*> op.rstd
    cdef floating* y = <floating*> op.y
    cdef floating* h_n = <floating*> op.h_n
    cdef Py_ssize_t G = 3 * H
    cdef Py_ssize_t t, b, n, b0, b1, e, o, k, r, r1
    cdef floating rs
    cdef const floating* h_prev
    cdef floating* xs_t
    cdef floating* hs_t
    cdef floating* a_t
    cdef Packed pk, pk_ih

    # this thread's batch rows [b0, b1), the same at every step, and all of W_hh and W_ih
    share_rows(B, size, rank, &b0, &b1)
    if b1 <= b0:
        return
    pack_nt(&pk, ISA, H, 0, H, 3, w_hh)
    pack_nt_k(&pk_ih, ISA, H, I, 0, H, 3, w_ih)

    for t in range(T):
        n = batch_sizes[t]
        e = min(b1, n)  # active rows [b0, e)
        o = t * B if training else 0
        xs_t = xs + o * G
        hs_t = hs + o * G
        a_t = gates + o * G
        h_prev = h0 if t == 0 else y + (t - 1) * B * H
        # xs_t, hs_t [b0:e] = x_t W_ih^T, h_{t-1} W_hh^T; then each row's layer norms and gates
        r = b0
        while r < e:
            r1 = run_end(r, e, &pk_ih)
            recurrent_nt_k(r1 - r, H, I, 0, H, 3, x + (t * B + r) * I, w_ih, <floating> 0,
                           xs_t + r * G, G, &pk_ih)
            r = r1
        r = b0
        while r < e:
            r1 = run_end(r, e, &pk)
            recurrent_nt(r1 - r, H, 0, H, 3, h_prev + r * H, w_hh, <floating> 0, hs_t + r * G, G,
                         &pk)
            r = r1
        for b in range(b0, e):
            rs = ln_normalize(xs_t + b * G, xs_t + b * G, G, eps)
            if training:
                rstd[(o + b) * 2] = rs
                _row_forward_ln(xs_t + b * G, hs_t + b * G, g_ih, g_hh, b_ih, b_hh, a_t + b * G,
                                h_prev + b * H, hns + (o + b) * H, y + (t * B + b) * H,
                                rstd + (o + b) * 2, H, eps)
            else:  # gh_n over the row's own n block of hs_t
                _row_forward_ln(xs_t + b * G, hs_t + b * G, g_ih, g_hh, b_ih, b_hh, a_t + b * G,
                                h_prev + b * H, hs_t + b * G + 2 * H, y + (t * B + b) * H, NULL,
                                H, eps)
        for b in range(max(e, b0), b1):
            for k in range(H):
                y[(t * B + b) * H + k] = 0

    release(&pk)
    release(&pk_ih)
    for b in range(b0, b1):
        t = last_step(batch_sizes, T, b)
        memcpy(h_n + b * H, y + (t * B + b) * H, H * sizeof(floating))


cdef void _backward_ln_part(const void* ops, fr_barrier* bar, int size, int rank,
                            floating* tag) noexcept nogil:
    cdef const GRUOps* op = <const GRUOps*> ops
    cdef Py_ssize_t T = op.T, B = op.B, I = op.I, H = op.H
    cdef const int* batch_sizes = op.batch_sizes
    cdef const floating* x = <const floating*> op.x
    cdef const floating* h0 = <const floating*> op.h0
    cdef const floating* w_ih = <const floating*> op.w_ih
    cdef const floating* w_hh = <const floating*> op.w_hh
    cdef const floating* g_ih = <const floating*> op.ln_ih
    cdef const floating* g_hh = <const floating*> op.ln_hh
    cdef const floating* gates = <const floating*> op.gates
    cdef const floating* xs = <const floating*> op.xs
    cdef const floating* hs = <const floating*> op.hs
    cdef const floating* hns = <const floating*> op.hns
    cdef const floating* rstd = <const floating*> op.rstd
    cdef const floating* y = <const floating*> op.y
    cdef const floating* dy = <const floating*> op.dy
    cdef floating* dh = <floating*> op.dh
    cdef floating* dghh = <floating*> op.dghh
    cdef floating* dgx = <floating*> op.dgx
    cdef floating* acc = <floating*> op.ln_acc
    cdef floating* dx = <floating*> op.dx
    cdef Py_ssize_t G = 3 * H
    # a block's row of acc: the sums of db_ih, dln_ih, db_hh, dln_hh (G each), then its current
    # row's dgi and dgh (G each)
    cdef Py_ssize_t K = 4 * G, W = K + 2 * G, nblk = n_row_blocks(B)
    cdef Py_ssize_t t, b, n, o, b0, b1, e, r, r1
    cdef const floating* h_prev
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
        h_prev = h0 if t == 0 else y + (t - 1) * B * H
        for b in range(b0, e):
            ab = acc + (b // ROW_BLOCK) * W
            _row_backward_ln(gates + (o + b) * G, hns + (o + b) * H, h_prev + b * H,
                             hs + (o + b) * G, g_hh, rstd[(o + b) * 2 + 1], dy + (o + b) * H,
                             dh + b * H, ab + K, ab + K + G, dghh + (o + b) * G, H)
            # the row's terms of db_ih, dln_ih and of db_hh, dln_hh
            row_grads(ab + K, xs + (o + b) * G, NULL, ab, ab + G, NULL, G)
            row_grads(ab + K + G, hs + (o + b) * G, NULL, ab + 2 * G, ab + 3 * G, NULL, G)
            # dgx = the input LN's backward of dgi
            ln_backward(ab + K, g_ih, xs + (o + b) * G, rstd[(o + b) * 2], dgx + (o + b) * G, G)
        zero_rows(dghh + o * G, e, b1, G)
        zero_rows(dgx + o * G, e, b1, G)
        # dh_{t-1}[b0:e] = z * dh_t + dghh_t[b0:e] W_hh   (inactive rows keep dh)
        r = b0
        while r < e:
            r1 = run_end(r, e, &pk)
            recurrent_nn(r1 - r, H, 0, H, G, dghh + (o + r) * G, w_hh, <floating> 1, dh + r * H,
                         &pk)
            r = r1
    release(&pk)
    fr_barrier_wait(bar, size)

    # the bias and gain gradients: the blocks' sums, added in block order
    block_sums(acc, W, nblk, 0, G, <floating*> op.db_ih, size, rank)
    block_sums(acc, W, nblk, G, G, <floating*> op.dln_ih, size, rank)
    block_sums(acc, W, nblk, 2 * G, G, <floating*> op.db_hh, size, rank)
    block_sums(acc, W, nblk, 3 * G, G, <floating*> op.dln_hh, size, rank)

    # The weight and input gradients, as large GEMMs over all T*B rows.
    weight_grad(T * B, I, H, 3, dgx, x, <floating> 0, <floating*> op.dw_ih, size, rank, ISA)
    weight_grad(B, H, H, 3, dghh, h0, <floating> 0, <floating*> op.dw_hh, size, rank, ISA)
    weight_grad((T - 1) * B, H, H, 3, dghh + B * G, y, <floating> 1, <floating*> op.dw_hh, size,
                rank, ISA)
    input_grad(T * B, I, G, dgx, w_ih, dx, size, rank, ISA)


def ln_workspace(Py_ssize_t B, Py_ssize_t H):
    """The shape of backward_ln's ``ln_acc`` workspace for B batch rows and H units."""
    return (n_row_blocks(B), 6 * 3 * H)


def forward_ln(const floating[:, :, ::1] x,       # IN    (T, B, I)
               const floating[:, ::1] h0,         # IN    (B, H)
               const floating[:, ::1] w_ih,       # IN    (G, I)
               const floating[:, ::1] w_hh,       # IN    (G, H)
               const floating[::1] b_ih,          # IN    (G,)
               const floating[::1] b_hh,          # IN    (G,)
               const floating[::1] ln_ih,         # IN    (G,)
               const floating[::1] ln_hh,         # IN    (G,)
               double eps,
               const int[::1] batch_sizes,        # IN    (T,) non-increasing
               floating[:, :, ::1] gates,         # OUT   (T, B, G) activated gates ((1, B, G))
               floating[:, :, ::1] xs,            # OUT   (T, B, G) ((1, B, G) in inference)
               floating[:, :, ::1] hs,            # OUT   (T, B, G) ((1, B, G) in inference)
               floating[:, :, ::1] hns,           # OUT   (T, B, H) gh_n (training)
               floating[:, :, ::1] rstd,          # OUT   (T, B, 2) (training)
               floating[:, :, ::1] y,             # OUT   (T, B, H)
               floating[:, ::1] h_n,              # OUT   (B, H)
               bint training,
               int n_threads):
    """Layer-normalized GRU forward over all T steps (T, B >= 1).

    Parameters
    ----------
    x : ndarray of shape (T, B, I), dtype=float32 or float64
    h0 : ndarray of shape (B, H)
    w_ih : ndarray of shape (3H, I)
    w_hh : ndarray of shape (3H, H)
    b_ih, b_hh : ndarray of shape (3H,)
        Added after the layer norms (zeros without biases).
    ln_ih, ln_hh : ndarray of shape (3H,)
        Gains of LN(W_ih x) and LN(W_hh h).
    eps : float
    batch_sizes : ndarray of shape (T,), dtype=int32
    gates : ndarray of shape (T, B, 3H), or (1, B, 3H) in inference, written
    xs : ndarray of shape (T, B, 3H), or (1, B, 3H) in inference, written: the normalized W_ih x
    hs : ndarray of shape (T, B, 3H), or (1, B, 3H) in inference, written: normalized W_hh h
    hns : ndarray of shape (T, B, H), written when training: LN(W_hh h)_n + b_hn
    rstd : ndarray of shape (T, B, 2), written when training: 1/sqrt(var + eps) of each row
    y : ndarray of shape (T, B, H), written
    h_n : ndarray of shape (B, H), written
    training : bool
    n_threads : int
    """
    cdef Py_ssize_t T = x.shape[0], B = x.shape[1], I = x.shape[2], H = h0.shape[1]
    cdef Py_ssize_t steps = T if training else 1
    if (xs.shape[0] < steps or hs.shape[0] < steps or gates.shape[0] < steps
            or (training and (hns.shape[0] < T or rstd.shape[0] < T))):
        raise ValueError("a buffer has fewer steps than the forward writes")
    cdef GRUOps o = _ops(T, B, I, H, &x[0, 0, 0], &h0[0, 0], &w_ih[0, 0], &w_hh[0, 0],
                         &batch_sizes[0], &y[0, 0, 0])
    o.training = training
    o.bias = &b_ih[0]
    o.bias_hh = &b_hh[0]
    o.ln_eps = eps
    o.ln_ih = &ln_ih[0]
    o.ln_hh = &ln_hh[0]
    o.gates = &gates[0, 0, 0]
    o.xs = &xs[0, 0, 0]
    o.hs = &hs[0, 0, 0]
    o.hns = &hns[0, 0, 0]
    o.rstd = &rstd[0, 0, 0]
    o.h_n = &h_n[0, 0]
    with nogil:
        run_team(_forward_ln_part[floating], &o, H, n_threads)


def backward_ln(const floating[:, :, ::1] x,      # IN    (T, B, I)
                const floating[:, ::1] h0,        # IN    (B, H)
                const floating[:, ::1] w_ih,      # IN    (G, I)
                const floating[:, ::1] w_hh,      # IN    (G, H)
                const floating[::1] ln_ih,        # IN    (G,)
                const floating[::1] ln_hh,        # IN    (G,)
                const int[::1] batch_sizes,       # IN    (T,)
                const floating[:, :, ::1] gates,  # IN    (T, B, G) from a training forward_ln
                const floating[:, :, ::1] xs,     # IN    (T, B, G)
                const floating[:, :, ::1] hs,     # IN    (T, B, G)
                const floating[:, :, ::1] hns,    # IN    (T, B, H)
                const floating[:, :, ::1] rstd,   # IN    (T, B, 2)
                const floating[:, :, ::1] y,      # IN    (T, B, H)
                const floating[:, :, ::1] dy,     # IN    (T, B, H)
                floating[:, ::1] dh,              # INOUT (B, H) dh_n in, dh0 out
                floating[:, :, ::1] dghh,         # OUT   (T, B, G) workspace
                floating[:, :, ::1] dgx,          # OUT   (T, B, G) workspace
                floating[:, ::1] ln_acc,          # OUT   ln_workspace(B, H) workspace
                floating[:, :, ::1] dx,           # OUT   (T, B, I)
                floating[:, ::1] dw_ih,           # OUT   (G, I)
                floating[:, ::1] dw_hh,           # OUT   (G, H)
                floating[::1] db_ih,              # OUT   (G,)
                floating[::1] db_hh,              # OUT   (G,)
                floating[::1] dln_ih,             # OUT   (G,)
                floating[::1] dln_hh,             # OUT   (G,)
                int n_threads):
    """Layer-normalized GRU BPTT over all T steps (T, B >= 1); see forward_ln for shapes."""
    cdef Py_ssize_t T = x.shape[0], B = x.shape[1], I = x.shape[2], H = h0.shape[1]
    if (ln_acc.shape[0], ln_acc.shape[1]) != ln_workspace(B, H):
        raise ValueError(f"ln_acc must have the shape {ln_workspace(B, H)}")
    cdef GRUOps o = _ops(T, B, I, H, &x[0, 0, 0], &h0[0, 0], &w_ih[0, 0], &w_hh[0, 0],
                         &batch_sizes[0], &y[0, 0, 0])
    o.ln_ih = &ln_ih[0]
    o.ln_hh = &ln_hh[0]
    o.gates = <void*> &gates[0, 0, 0]
    o.xs = <void*> &xs[0, 0, 0]
    o.hs = <void*> &hs[0, 0, 0]
    o.hns = <void*> &hns[0, 0, 0]
    o.rstd = <void*> &rstd[0, 0, 0]
    o.dy = &dy[0, 0, 0]
    o.dh = &dh[0, 0]
    o.dghh = &dghh[0, 0, 0]
    o.dgx = &dgx[0, 0, 0]
    o.ln_acc = &ln_acc[0, 0]
    o.dx = &dx[0, 0, 0]
    o.dw_ih = &dw_ih[0, 0]
    o.dw_hh = &dw_hh[0, 0]
    o.db_ih = &db_ih[0]
    o.db_hh = &db_hh[0]
    o.dln_ih = &dln_ih[0]
    o.dln_hh = &dln_hh[0]
    with nogil:
        run_team(_backward_ln_part[floating], &o, H, n_threads)


# --- GRU with the reset gate applied before the hidden matmul (reset_after=False) ---------------
# Cho et al. (2014), Keras' reset_after=False:
#     r = sigmoid(gi_r + W_hr h_{t-1} + b_hr),  z = sigmoid(gi_z + W_hz h_{t-1} + b_hz)
#     n = tanh(gi_n + W_hn (r * h_{t-1}) + b_hn),  h_t = (1 - z) * n + z * h_{t-1}
# Every bias sits outside a product, so bias_i = b_ih + b_hh is folded into the input GEMM and
# db_ih = db_hh. Per step: a GEMM for the r, z blocks, the r pass, a GEMM of r * h by W_hn, the n
# pass. rhs[t] = r * h_{t-1} is kept for BPTT and for dW_hn = sum_t dn_t^T (r * h_{t-1}).
#
# Same parallel scheme as the plain GRU (thread r owns units [j0, j1) and their gate columns),
# but the W_hn GEMM reads r * h_{t-1} of all units (the backward's W_hn GEMM, dn of all units),
# so a step has two barriers: one between the two GEMMs, one at its end.
# The row functions handle units [0, m) of a thread's slice, pointers offset to its first unit.

cdef inline void _row_forward_rz(floating* a, const floating* hw, const floating* h_prev,
                                 floating* rh, Py_ssize_t m, Py_ssize_t H) noexcept nogil:
    """a[:2H] := [r, z] = sigmoid(a[:2H] + hw[:2H]);  rh = r * h_prev."""
    cdef Py_ssize_t j
    cdef floating r
    for j in range(m):
        r = sigmoid(a[j] + hw[j])
        a[j] = r
        a[H + j] = sigmoid(a[H + j] + hw[H + j])
        rh[j] = r * h_prev[j]


cdef inline void _row_forward_n(floating* a, const floating* hw, const floating* h_prev,
                                floating* h, Py_ssize_t m, Py_ssize_t H) noexcept nogil:
    """a_n := n = tanh(a_n + hw_n);  h = (1 - z) n + z h_prev."""
    cdef Py_ssize_t j
    cdef floating z, n
    for j in range(m):
        z = a[H + j]
        n = tanh_(a[2 * H + j] + hw[2 * H + j])
        a[2 * H + j] = n
        h[j] = (<floating> 1 - z) * n + z * h_prev[j]


cdef inline void _row_backward_zn(const floating* a, const floating* h_prev, const floating* dy,
                                  floating* dh, floating* dg, Py_ssize_t m,
                                  Py_ssize_t H) noexcept nogil:
    """dg[H:] = [dz_pre, dn_pre] from dh_t (+ dy_t); dh becomes z * dh_t.

    dn_pre = dh (1-z) (1-n^2);  dz_pre = dh (h_prev - n) z(1-z)
    """
    cdef Py_ssize_t j
    cdef floating z, n, dhj
    for j in range(m):
        z = a[H + j]
        n = a[2 * H + j]
        dhj = dh[j] + dy[j]
        dg[H + j] = dhj * (h_prev[j] - n) * dsigmoid(z)
        dg[2 * H + j] = dhj * (<floating> 1 - z) * dtanh(n)
        dh[j] = dhj * z


cdef inline void _row_backward_r(const floating* a, const floating* h_prev, const floating* drh,
                                 floating* dh, floating* dg, Py_ssize_t m,
                                 Py_ssize_t H) noexcept nogil:
    """dg[:H] = dr_pre = drh h_prev r(1-r);  dh += drh r, where drh = dn_pre W_hn."""
    cdef Py_ssize_t j
    cdef floating r
    for j in range(m):
        r = a[j]
        dg[j] = drh[j] * h_prev[j] * dsigmoid(r)
        dh[j] += drh[j] * r


cdef void _forward_reset_before_part(const void* ops, fr_barrier* bar, int size, int rank,
                                     floating* tag) noexcept nogil:
    cdef const GRUOps* op = <const GRUOps*> ops
    cdef Py_ssize_t T = op.T, B = op.B, I = op.I, H = op.H
    cdef const int* batch_sizes = op.batch_sizes
    cdef bint training = op.training
    cdef const floating* x = <const floating*> op.x
    cdef const floating* h0 = <const floating*> op.h0
    cdef const floating* w_ih = <const floating*> op.w_ih
    cdef const floating* w_hh = <const floating*> op.w_hh
    cdef const floating* bias = <const floating*> op.bias
    cdef floating* gates = <floating*> op.gates
    cdef floating* rhs = <floating*> op.rhs
    cdef floating* hw = <floating*> op.hw
    cdef floating* y = <floating*> op.y
    cdef floating* h_n = <floating*> op.h_n
    cdef Py_ssize_t G = 3 * H
    cdef Py_ssize_t t, b, n, j0, j1, m
    cdef const floating* h_prev
    cdef floating* a_t
    cdef floating* rh_t
    cdef Packed pk_rz, pk_n

    thread_units(H, size, rank, &j0, &j1)
    m = j1 - j0
    pack_nt(&pk_rz, ISA, H, j0, j1, 2, w_hh)
    pack_nt(&pk_n, ISA, H, j0, j1, 1, w_hh + 2 * H * H)
    # gates[t, b] = W_ih x[t, b] + b_ih + b_hh for all steps at once
    input_projection(T, B, batch_sizes, I, H, 3, x, w_ih, bias, gates, size, rank, ISA)
    fr_barrier_wait(bar, size)

    for t in range(T):
        n = batch_sizes[t]
        a_t = gates + t * B * G
        rh_t = rhs + t * B * H if training else rhs
        h_prev = h0 if t == 0 else y + (t - 1) * B * H
        # hw[:n, r and z of units] = h_{t-1} [W_hr; W_hz][units]^T, then r, z and r * h_{t-1}
        recurrent_nt(n, H, j0, j1, 2, h_prev, w_hh, <floating> 0, hw, G, &pk_rz)
        for b in range(n if m > 0 else 0):
            _row_forward_rz(a_t + b * G + j0, hw + b * G + j0, h_prev + b * H + j0,
                            rh_t + b * H + j0, m, H)
        if training and rank == 0:  # read by the dW_hn GEMM: no uninitialized rows
            zero_rows(rh_t, n, B, H)
        fr_barrier_wait(bar, size)
        # hw[:n, n of units] = (r * h_{t-1}) W_hn[units]^T, then n and h_t
        recurrent_nt(n, H, j0, j1, 1, rh_t, w_hh + 2 * H * H, <floating> 0, hw + 2 * H, G,
                     &pk_n)
        for b in range(n if m > 0 else 0):
            _row_forward_n(a_t + b * G + j0, hw + b * G + j0, h_prev + b * H + j0,
                           y + (t * B + b) * H + j0, m, H)
        if rank == 0:
            zero_rows(y + t * B * H, n, B, H)
        fr_barrier_wait(bar, size)

    release(&pk_rz)
    release(&pk_n)
    for b in range(B if m > 0 else 0):
        t = last_step(batch_sizes, T, b)
        memcpy(h_n + b * H + j0, y + (t * B + b) * H + j0, m * sizeof(floating))


cdef void _backward_reset_before_part(const void* ops, fr_barrier* bar, int size, int rank,
                                      floating* tag) noexcept nogil:
    cdef const GRUOps* op = <const GRUOps*> ops
    cdef Py_ssize_t T = op.T, B = op.B, I = op.I, H = op.H
    cdef const int* batch_sizes = op.batch_sizes
    cdef const floating* x = <const floating*> op.x
    cdef const floating* h0 = <const floating*> op.h0
    cdef const floating* w_ih = <const floating*> op.w_ih
    cdef const floating* w_hh = <const floating*> op.w_hh
    cdef const floating* gates = <const floating*> op.gates
    cdef const floating* rhs = <const floating*> op.rhs
    cdef const floating* y = <const floating*> op.y
    cdef const floating* dy = <const floating*> op.dy
    cdef floating* dh = <floating*> op.dh
    cdef floating* dg = <floating*> op.dgi
    cdef floating* drh = <floating*> op.drh
    cdef floating* dx = <floating*> op.dx
    cdef floating* dw_ih = <floating*> op.dw_ih
    cdef floating* dw_hh = <floating*> op.dw_hh
    cdef floating* db = <floating*> op.db_ih
    cdef Py_ssize_t G = 3 * H
    cdef Py_ssize_t t, b, n, o, j0, j1, m
    cdef const floating* h_prev
    cdef floating* dg_t
    cdef Packed pk_rz, pk_n

    thread_units(H, size, rank, &j0, &j1)
    m = j1 - j0
    pack_nn(&pk_rz, ISA, H, j0, j1, 2 * H, w_hh)
    pack_nn(&pk_n, ISA, H, j0, j1, H, w_hh + 2 * H * H)
    for t in range(T - 1, -1, -1):
        n = batch_sizes[t]
        dg_t = dg + t * B * G
        h_prev = h0 if t == 0 else y + (t - 1) * B * H
        # dz_pre, dn_pre of units; dh[:n, units] := z * dh_t
        for b in range(n if m > 0 else 0):
            o = t * B + b
            _row_backward_zn(gates + o * G + j0, h_prev + b * H + j0, dy + o * H + j0,
                             dh + b * H + j0, dg + o * G + j0, m, H)
        if rank == 0:
            zero_rows(dg_t, n, B, G)
        fr_barrier_wait(bar, size)
        # drh[:n, units] = dn_pre W_hn[:, units]  (the gradient reaching r * h_{t-1}), then
        # dr_pre of units and dh += r drh
        recurrent_nn_ld(n, H, j0, j1, H, dg_t + 2 * H, G, w_hh + 2 * H * H, <floating> 0, drh,
                        &pk_n)
        for b in range(n if m > 0 else 0):
            o = t * B + b
            _row_backward_r(gates + o * G + j0, h_prev + b * H + j0, drh + b * H + j0,
                            dh + b * H + j0, dg + o * G + j0, m, H)
        fr_barrier_wait(bar, size)
        # dh_{t-1}[:n, units] = z dh_t + r drh + [dr_pre, dz_pre] [W_hr; W_hz][:, units]
        recurrent_nn_ld(n, H, j0, j1, 2 * H, dg_t, G, w_hh, <floating> 1, dh, &pk_rz)

    # The weight and input gradients, as large GEMMs over the active rows of all T steps.
    release(&pk_rz)
    release(&pk_n)
    fr_barrier_wait(bar, size)
    weight_grad_active(T, B, batch_sizes, I, H, 3, dg, G, x, <floating> 0, dw_ih, size, rank, ISA)
    # dW_hh[:2H] = sum_t [dr, dz]_t^T h_{t-1};  dW_hh[2H:] = sum_t dn_t^T (r * h_{t-1})
    weight_grad_ld(B, H, H, 2, dg, G, h0, <floating> 0, dw_hh, size, rank, ISA)
    weight_grad_active(T - 1, B, batch_sizes + 1, H, H, 2, dg + B * G, G, y, <floating> 1,
                       dw_hh, size, rank, ISA)
    weight_grad_active(T, B, batch_sizes, H, H, 1, dg + 2 * H, G, rhs, <floating> 0,
                       dw_hh + 2 * H * H, size, rank, ISA)
    bias_grad_active(T, B, batch_sizes, H, 3, dg, db, size, rank)
    input_grad_active(T, B, batch_sizes, I, G, dg, w_ih, dx, size, rank, ISA)


def forward_reset_before(const floating[:, :, ::1] x,  # IN    (T, B, I)
                         const floating[:, ::1] h0,    # IN    (B, H)
                         const floating[:, ::1] w_ih,  # IN    (G, I)
                         const floating[:, ::1] w_hh,  # IN    (G, H)
                         const floating[::1] bias,     # IN    (G,) b_ih + b_hh
                         const int[::1] batch_sizes,   # IN    (T,) non-increasing
                         floating[:, :, ::1] gates,    # OUT   (T, B, G) activated r, z, n
                         floating[:, :, ::1] rhs,      # OUT   (T, B, H) r * h_{t-1} ((1, B, H))
                         floating[:, ::1] hw,          # OUT   (B, G) workspace
                         floating[:, :, ::1] y,        # OUT   (T, B, H)
                         floating[:, ::1] h_n,         # OUT   (B, H)
                         bint training,
                         int n_threads):
    """GRU forward, reset gate before the hidden matmul, over all T steps (T, B >= 1).

    Parameters
    ----------
    x : ndarray of shape (T, B, I), dtype=float32 or float64
    h0 : ndarray of shape (B, H)
    w_ih : ndarray of shape (3H, I)
    w_hh : ndarray of shape (3H, H)
    bias : ndarray of shape (3H,)
    batch_sizes : ndarray of shape (T,), dtype=int32
    gates : ndarray of shape (T, B, 3H), written
    rhs : ndarray of shape (T, B, H) when training else (1, B, H), written
    hw : ndarray of shape (B, 3H), workspace
    y : ndarray of shape (T, B, H), written
    h_n : ndarray of shape (B, H), written
    training : bool
    n_threads : int
    """
    cdef Py_ssize_t T = x.shape[0], B = x.shape[1], I = x.shape[2], H = h0.shape[1]
    cdef GRUOps o = _ops(T, B, I, H, &x[0, 0, 0], &h0[0, 0], &w_ih[0, 0], &w_hh[0, 0],
                         &batch_sizes[0], &y[0, 0, 0])
    o.training = training
    o.bias = &bias[0]
    o.gates = &gates[0, 0, 0]
    o.rhs = &rhs[0, 0, 0]
    o.hw = &hw[0, 0]
    o.h_n = &h_n[0, 0]
    with nogil:
        run_team(_forward_reset_before_part[floating], &o, H, n_threads)


def backward_reset_before(const floating[:, :, ::1] x,      # IN    (T, B, I)
                          const floating[:, ::1] h0,        # IN    (B, H)
                          const floating[:, ::1] w_ih,      # IN    (G, I)
                          const floating[:, ::1] w_hh,      # IN    (G, H)
                          const int[::1] batch_sizes,       # IN    (T,)
                          const floating[:, :, ::1] gates,  # IN    (T, B, G)
                          const floating[:, :, ::1] rhs,    # IN    (T, B, H)
                          const floating[:, :, ::1] y,      # IN    (T, B, H)
                          const floating[:, :, ::1] dy,     # IN    (T, B, H)
                          floating[:, ::1] dh,              # INOUT (B, H) dh_n in, dh0 out
                          floating[:, :, ::1] dg,           # OUT   (T, B, G) workspace
                          floating[:, ::1] drh,             # OUT   (B, H) workspace
                          floating[:, :, ::1] dx,           # OUT   (T, B, I)
                          floating[:, ::1] dw_ih,           # OUT   (G, I)
                          floating[:, ::1] dw_hh,           # OUT   (G, H)
                          floating[::1] db,                 # OUT   (G,) of b_ih (and b_hh)
                          int n_threads):
    """BPTT for forward_reset_before (T, B >= 1); see it for the shapes."""
    cdef Py_ssize_t T = x.shape[0], B = x.shape[1], I = x.shape[2], H = h0.shape[1]
    cdef GRUOps o = _ops(T, B, I, H, &x[0, 0, 0], &h0[0, 0], &w_ih[0, 0], &w_hh[0, 0],
                         &batch_sizes[0], &y[0, 0, 0])
    o.gates = <void*> &gates[0, 0, 0]
    o.rhs = <void*> &rhs[0, 0, 0]
    o.dy = &dy[0, 0, 0]
    o.dh = &dh[0, 0]
    o.dgi = &dg[0, 0, 0]
    o.drh = &drh[0, 0]
    o.dx = &dx[0, 0, 0]
    o.dw_ih = &dw_ih[0, 0]
    o.dw_hh = &dw_hh[0, 0]
    o.db_ih = &db[0]
    with nogil:
        run_team(_backward_reset_before_part[floating], &o, H, n_threads)


# --- tier 4: the stable C API (declared in fastrnn/_kernels/gru.pxd) -----------------------------
ctypedef GRUOps Ops

include "_capi.pxi"


cdef inline Layout _layout(Py_ssize_t T, Py_ssize_t B, Py_ssize_t I, Py_ssize_t H) noexcept nogil:
    """Workspace: [batch_sizes | bias_i and b_hn, or db_ih and db_hh (2G) | zero h0 (B*H) |
    hw (B*G) | gates and hns of an inference forward, or dgi and dgh (2*T*B*G)].
    Reserve: [gates (T*B*G) | hns = W_hn h + b_hn (T*B*H)]."""
    cdef Layout L
    L.G = 3 * H
    L.vec = int_slots(T)
    L.vec_hh = L.vec + L.G
    L.states = L.vec + 2 * L.G
    L.scratch = L.states + B * H
    L.big = L.scratch + B * L.G
    L.work = L.big + 2 * T * B * L.G
    L.keep = T * B * L.G
    L.reserve = L.keep + T * B * H
    return L


cdef Py_ssize_t gru_reserve_size(Py_ssize_t T, Py_ssize_t B, Py_ssize_t I,
                                 Py_ssize_t H) noexcept nogil:
    return _layout(T, B, I, H).reserve


cdef Py_ssize_t gru_workspace_size(Py_ssize_t T, Py_ssize_t B, Py_ssize_t I,
                                   Py_ssize_t H) noexcept nogil:
    return _layout(T, B, I, H).work


cdef int _bind_forward(GRUOps* o, const Layout* L, const floating* b_ih, const floating* b_hh,
                       floating* reserve, floating* work) noexcept nogil:
    cdef Py_ssize_t j, H = o.H
    cdef floating* bias_i = work + L.vec
    cdef floating* b_hn = bias_i + L.G
    o.h0 = or_zeros(<const floating*> o.h0, work + L.states, o.B * H)
    # bias_i = b_ih + [b_hr, b_hz, 0] goes into the input GEMM; b_hn stays inside r * (...)
    for j in range(L.G):
        bias_i[j] = 0 if b_ih == NULL else b_ih[j] + (b_hh[j] if j < 2 * H else 0)
    for j in range(H):
        b_hn[j] = 0 if b_ih == NULL else b_hh[2 * H + j]
    o.bias = bias_i
    o.b_hn = b_hn
    o.hw = work + L.scratch
    o.training = reserve != NULL
    if o.training:
        o.gates = reserve
        o.hns = reserve + L.keep
    else:
        o.gates = work + L.big
        o.hns = work + L.big + o.T * o.B * L.G
    return 0


cdef void _pass_states(GRUOps* o, floating* tag) noexcept nogil:
    memcpy(o.h_n, o.h0, o.B * o.H * sizeof(floating))


cdef int _bind_backward(GRUOps* o, const Layout* L, const floating* dc_n,
                        const floating* reserve, floating* work) noexcept nogil:
    o.h0 = or_zeros(<const floating*> o.h0, work + L.states, o.B * o.H)
    o.gates = <floating*> reserve
    o.hns = <floating*> reserve + L.keep
    o.dgi = work + L.big
    o.dgh = work + L.big + o.T * o.B * L.G
    o.db_ih = work + L.vec
    o.db_hh = work + L.vec_hh
    return 0


cdef int gru_forward_f32(Py_ssize_t T, Py_ssize_t B, Py_ssize_t I, Py_ssize_t H,
                         const float* x, const float* h0, const float* w_ih, const float* w_hh,
                         const float* b_ih, const float* b_hh, const int* batch_sizes,
                         float* y, float* h_n, float* reserve, float* workspace,
                         int n_threads) noexcept nogil:
    cdef GRUOps o = _ops(T, B, I, H, x, h0, w_ih, w_hh, batch_sizes, y)
    o.h_n = h_n
    return _c_forward(&o, b_ih, b_hh, reserve, workspace, n_threads)


cdef int gru_forward_f64(Py_ssize_t T, Py_ssize_t B, Py_ssize_t I, Py_ssize_t H,
                         const double* x, const double* h0, const double* w_ih,
                         const double* w_hh, const double* b_ih, const double* b_hh,
                         const int* batch_sizes, double* y, double* h_n, double* reserve,
                         double* workspace, int n_threads) noexcept nogil:
    cdef GRUOps o = _ops(T, B, I, H, x, h0, w_ih, w_hh, batch_sizes, y)
    o.h_n = h_n
    return _c_forward(&o, b_ih, b_hh, reserve, workspace, n_threads)


cdef int gru_backward_f32(Py_ssize_t T, Py_ssize_t B, Py_ssize_t I, Py_ssize_t H,
                          const float* x, const float* h0, const float* w_ih, const float* w_hh,
                          const int* batch_sizes, const float* y, const float* reserve,
                          const float* dy, const float* dh_n,
                          float* dx, float* dh0, float* dw_ih, float* dw_hh,
                          float* db_ih, float* db_hh, float* workspace,
                          int n_threads) noexcept nogil:
    cdef GRUOps o = _ops(T, B, I, H, x, h0, w_ih, w_hh, batch_sizes, y)
    o.dy = dy
    o.dx = dx
    o.dh = dh0
    o.dw_ih = dw_ih
    o.dw_hh = dw_hh
    return _c_backward(&o, dh_n, NULL, reserve, db_ih, db_hh, workspace, n_threads)


cdef int gru_backward_f64(Py_ssize_t T, Py_ssize_t B, Py_ssize_t I, Py_ssize_t H,
                          const double* x, const double* h0, const double* w_ih,
                          const double* w_hh, const int* batch_sizes, const double* y,
                          const double* reserve, const double* dy, const double* dh_n,
                          double* dx, double* dh0, double* dw_ih, double* dw_hh,
                          double* db_ih, double* db_hh, double* workspace,
                          int n_threads) noexcept nogil:
    cdef GRUOps o = _ops(T, B, I, H, x, h0, w_ih, w_hh, batch_sizes, y)
    o.dy = dy
    o.dx = dx
    o.dh = dh0
    o.dw_ih = dw_ih
    o.dw_hh = dw_hh
    return _c_backward(&o, dh_n, NULL, reserve, db_ih, db_hh, workspace, n_threads)
include "_prepack.pxi"


def step(StepKernel s,
         x,                  # IN    (T, B, I) C-contiguous, s's dtype
         h0,                 # IN    (L, B, H): layer's (B, H) is h0[layer]
         y,                  # OUT   (T, B, H)
         h_n,                # OUT   (L, B, H): writes h_n[layer]
         Py_ssize_t T, Py_ssize_t B, Py_ssize_t layer):
    """forward(x, h0[layer], ..., training=False, prepacked=s.prepacked) of the reset-after
    cell (s.b_hn set), bitwise, taking its arrays as raw buffers (_prepack.pxi). T, B >= 1;
    the arrays are checked for dtype size, C-contiguity and length only (fastrnn.nn.rnn
    validates them)."""
    cdef Py_ssize_t I = s.K, H = s.H, G = s.G, e = s.elem, off = layer * B * H * s.elem
    cdef Py_ssize_t ring = min(T, steps_per_chunk(B))
    cdef Py_buffer vx, vh, vy, vhn
    cdef GRUOps o
    cdef char* scratch = NULL
    cdef int* sizes = NULL
    if T < 1 or B < 1 or layer < 0 or s.b_hn == NULL:
        raise ValueError("step needs T, B >= 1, layer >= 0 and b_hn")
    memset(&vx, 0, sizeof(Py_buffer))
    vh = vy = vhn = vx
    try:
        o = _ops(T, B, I, H, _acquire(&vx, x, T * B * I * e, e, False),
                 _acquire(&vh, h0, off + B * H * e, e, False) + off, s.w_ih, s.w_hh, NULL,
                 _acquire(&vy, y, T * B * H * e, e, True))
        o.h_n = _acquire(&vhn, h_n, off + B * H * e, e, True) + off
        sizes = _full_sizes(T, B)
        scratch = <char*> malloc((ring * B * G + B * H + B * G) * e + 64)
        if scratch == NULL:
            raise MemoryError()
        o.batch_sizes = sizes
        o.bias = s.bias
        o.b_hn = s.b_hn
        o.gates = line_start(scratch)
        o.hns = line_start(scratch) + ring * B * G * e
        o.hw = line_start(scratch) + (ring * B * G + B * H) * e
        if s.prepacked is not None:  # else the forward packs its own
            o.prepacked = &s.prepacked.pp
        with nogil:
            _run_step(&o, o.prepacked, s.rows, s.n_threads, H, T, e)
    finally:
        free(scratch)
        free(sizes)
        PyBuffer_Release(&vx)
        PyBuffer_Release(&vh)
        PyBuffer_Release(&vy)
        PyBuffer_Release(&vhn)
