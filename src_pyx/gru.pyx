"""GRU forward and BPTT over a whole sequence.

Legend: T steps, B batch rows, I input size, H hidden size, G = 3H gate width.
Gates are PyTorch's r, z, n, with the reset gate applied after the hidden matmul:
    gi = W_ih x_t + b_ih,  gh = W_hh h_{t-1} + b_hh                     (B, G)
    r = sigmoid(gi_r + gh_r),  z = sigmoid(gi_z + gh_z)
    n = tanh(gi_n + r * gh_n),  h_t = (1 - z) * n + z * h_{t-1}

The kernel receives bias_i = b_ih + [b_hr, b_hz, 0] (folded into the input GEMM) and b_hn apart,
since b_hn sits inside r * (...). Rows are sorted by decreasing length; ``batch_sizes[t]`` rows
are active at step t, and inactive rows keep their state and output zeros.
"""

from cython cimport floating
from libc.string cimport memcpy, memset

from _activations cimport dsigmoid, dtanh, sigmoid, tanh_
from _blocks cimport (Packed, bias_grad, input_grad, input_projection, pack_nn, pack_nt, pack_nt_k,
                      project_steps, recurrent_nn, recurrent_nn_ld, recurrent_nt, release,
                      steps_per_chunk, thread_units, weight_grad, weight_grad_ld)
from _prepack cimport take_prepacked
from _ops cimport GRUOps
from _parallel cimport fr_barrier, fr_barrier_wait, run_team
from _rgemm cimport fr_rgemm_pick
from _util cimport last_step, zero_rows

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
        h[j] = (1 - z) * n + z * h_prev[j]


cdef inline void _row_backward(const floating* a, const floating* hn, const floating* h_prev,
                               const floating* dy, floating* dh, floating* dgi, floating* dgh,
                               Py_ssize_t m, Py_ssize_t H) noexcept nogil:
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
        dn_pre = dhj * (1 - z) * dtanh(n)
        dr_pre = dn_pre * hn[j] * dsigmoid(r)
        dz_pre = dhj * (h_prev[j] - n) * dsigmoid(z)
        dgi[j] = dr_pre
        dgi[H + j] = dz_pre
        dgi[2 * H + j] = dn_pre
        dgh[j] = dr_pre
        dgh[H + j] = dz_pre
        dgh[2 * H + j] = dn_pre * r
        dh[j] = dhj * z


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
    cdef Py_ssize_t G = 3 * H, tc = steps_per_chunk(B)
    cdef Py_ssize_t t, b, n, j0, j1, m
    cdef const floating* h_prev
    cdef floating* a_t
    cdef floating* hn_t
    cdef Packed pk, pk_ih
    cdef bint own

    thread_units(H, size, rank, &j0, &j1)
    m = j1 - j0
    own = not take_prepacked(op.prepacked, ISA, sizeof(floating), size, rank, &pk, &pk_ih)
    if own:  # no fitting prepacked panels: pack this call's (_prepack.pxd)
        pack_nt(&pk, ISA, H, j0, j1, 3, w_hh)
        pack_nt_k(&pk_ih, ISA, H, I, j0, j1, 3, w_ih)

    for t in range(T):
        n = batch_sizes[t]
        # gates[t'] = W_ih x[t'] + bias_i for the next tc steps and this thread's units
        # (training: gates holds all T steps; inference: a ring of tc steps)
        a_t = gates + (t if training else t % tc) * B * G
        if t % tc == 0:
            project_steps(min(tc, T - t) * B, I, H, j0, j1, 3, x + t * B * I, w_ih, bias_i, a_t,
                          &pk_ih)
        hn_t = hns + t * B * H if training else hns
        h_prev = h0 if t == 0 else y + (t - 1) * B * H
        # hw[:n, units] = h_{t-1} W_hh[units]^T, then the gate pass on those units
        recurrent_nt(n, H, j0, j1, 3, h_prev, w_hh, <floating> 0, hw, G, &pk)
        for b in range(n if m > 0 else 0):
            _row_forward(a_t + b * G + j0, hw + b * G + j0, b_hn + j0, h_prev + b * H + j0,
                         hn_t + b * H + j0, y + (t * B + b) * H + j0, m, H)
        if rank == 0:
            zero_rows(y + t * B * H, n, B, H)
        fr_barrier_wait(bar, size)

    if own:
        release(&pk)
        release(&pk_ih)
    for b in range(B if m > 0 else 0):
        t = last_step(batch_sizes, T, b)
        memcpy(h_n + b * H + j0, y + (t * B + b) * H + j0, m * sizeof(floating))


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
    cdef Py_ssize_t G = 3 * H
    cdef Py_ssize_t t, b, n, o, j0, j1, m
    cdef const floating* h_prev
    cdef Packed pk

    thread_units(H, size, rank, &j0, &j1)
    m = j1 - j0
    pack_nn(&pk, ISA, H, j0, j1, G, w_hh)
    for t in range(T - 1, -1, -1):
        n = batch_sizes[t]
        h_prev = h0 if t == 0 else y + (t - 1) * B * H
        for b in range(n if m > 0 else 0):
            o = t * B + b
            _row_backward(gates + o * G + j0, hns + o * H + j0, h_prev + b * H + j0,
                          dy + o * H + j0, dh + b * H + j0, dgi + o * G + j0, dgh + o * G + j0,
                          m, H)
        if rank == 0:
            zero_rows(dgi + t * B * G, n, B, G)
            zero_rows(dgh + t * B * G, n, B, G)
        fr_barrier_wait(bar, size)
        # dh_{t-1}[:n, units] = z * dh_t + dgh_t[:n] W_hh[:, units]   (inactive rows keep dh)
        recurrent_nn(n, H, j0, j1, G, dgh + t * B * G, w_hh, <floating> 1, dh, &pk)

    release(&pk)
    fr_barrier_wait(bar, size)
    weight_grad(T * B, I, H, 3, dgi, x, <floating> 0, dw_ih, size, rank, ISA)
    weight_grad(B, H, H, 3, dgh, h0, <floating> 0, dw_hh, size, rank, ISA)
    weight_grad((T - 1) * B, H, H, 3, dgh + B * G, y, <floating> 1, dw_hh, size, rank, ISA)
    bias_grad(T * B, H, 3, dgi, db_ih, size, rank)
    bias_grad(T * B, H, 3, dgh, db_hh, size, rank)
    input_grad(T * B, I, G, dgi, w_ih, dx, size, rank, ISA)


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
             int n_threads):
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
    with nogil:
        run_team(_backward_part[floating], &o, H, n_threads)


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
        h[j] = (1 - z) * n + z * h_prev[j]


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
        dg[2 * H + j] = dhj * (1 - z) * dtanh(n)
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
    input_projection(T * B, I, H, 3, x, w_ih, bias, gates, size, rank, ISA)
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

    # The weight and input gradients, as large GEMMs over all T*B rows.
    release(&pk_rz)
    release(&pk_n)
    fr_barrier_wait(bar, size)
    weight_grad(T * B, I, H, 3, dg, x, <floating> 0, dw_ih, size, rank, ISA)
    # dW_hh[:2H] = sum_t [dr, dz]_t^T h_{t-1};  dW_hh[2H:] = sum_t dn_t^T (r * h_{t-1})
    weight_grad_ld(B, H, H, 2, dg, G, h0, <floating> 0, dw_hh, size, rank, ISA)
    weight_grad_ld((T - 1) * B, H, H, 2, dg + B * G, G, y, <floating> 1, dw_hh, size, rank, ISA)
    weight_grad_ld(T * B, H, H, 1, dg + 2 * H, G, rhs, <floating> 0, dw_hh + 2 * H * H, size,
                   rank, ISA)
    bias_grad(T * B, H, 3, dg, db, size, rank)
    input_grad(T * B, I, G, dg, w_ih, dx, size, rank, ISA)


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
