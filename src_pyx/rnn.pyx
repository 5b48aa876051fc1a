"""Elman RNN forward and BPTT over a whole sequence.

Legend: T steps, B batch rows, I input size, H hidden size (G = H: one gate block).
    h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh),  act = tanh or relu

The outputs y double as the pre-activation workspace: y[t] holds W_ih x_t + b until step t adds
the recurrent term and applies act in place. Rows are sorted by decreasing length;
``batch_sizes[t]`` rows are active at step t, and inactive rows output zeros.

Options (RNNOps fields, NULL / 0 off):
    recurrent dropout (rmask, (B, H)): W_hh (h_{t-1} * rmask); dW_hh reads hd_t = h_{t-1} * rmask
    zoneout (zw, (T, B, H) weights, or one number p):  h_t = zw h_{t-1} + (1 - zw) a_t with
        a_t = act(...) above; a training forward keeps a_t in acts, since y_t is no longer a_t
"""

from cython cimport floating
from libc.string cimport memcpy, memset

from _activations cimport drelu, dtanh, relu, tanh_
from _blocks cimport (Packed, bias_grad_active, input_grad_active, pack_nn, pack_nt, pack_nt_k,
                      project_active, project_rows, recurrent_nn, recurrent_nt, release,
                      step_gates, steps_per_chunk, thread_units_isa, weight_grad,
                      weight_grad_active)
from _prepack cimport next_sweep, rows_fit, rows_panels, take_prepacked
from _ops cimport RNNOps
from _parallel cimport batch_share, fr_barrier, fr_barrier_wait, run_team, run_threads
from _rgemm cimport fr_cpu_level, fr_rgemm_pick
from _util cimport last_step, zero_rows


# The micro-kernels of the per-step GEMMs (_rgemm.h): the best this CPU runs, unless fastrnn._isa
# (FASTRNN_ISA) picks another. Read by the kernels, written only through _set_isa.
cdef int ISA = fr_rgemm_pick(-1)


def _set_isa(int isa):
    """Use the micro-kernels of instruction set ``isa`` (0 BLAS, 1 AVX2, 2 AVX-512); the caller
    checks that the CPU runs them."""
    global ISA
    ISA = isa


def _best_isa():
    """The best instruction set of the micro-kernels this CPU runs (0 when none)."""
    return fr_rgemm_pick(-1)


def _cpu_level():
    """The x86-64 level of this CPU (4, 3, or 0): which compiled variants of the kernels run."""
    return fr_cpu_level()


# --- tier 1: one batch row ------------------------------------------------------------------------
cdef inline void _row_forward(floating* a, Py_ssize_t H, bint use_relu) noexcept nogil:
    """a := act(a) in place."""
    cdef Py_ssize_t j
    if use_relu:
        for j in range(H):
            a[j] = relu(a[j])
    else:
        for j in range(H):
            a[j] = tanh_(a[j])


cdef inline void _row_backward(const floating* h, const floating* dy, const floating* dh,
                               floating* da, Py_ssize_t H, bint use_relu) noexcept nogil:
    """da = (dh_t + dy_t) * act'(h_t), act' written in terms of the output h_t."""
    cdef Py_ssize_t j
    if use_relu:
        for j in range(H):
            da[j] = (dh[j] + dy[j]) * drelu(h[j])
    else:
        for j in range(H):
            da[j] = (dh[j] + dy[j]) * dtanh(h[j])


cdef inline void _row_backward_zoneout(const floating* a, const floating* dy, const floating* zw,
                                       Py_ssize_t zs, floating* dh, floating* da, Py_ssize_t m,
                                       bint use_relu) noexcept nogil:
    """_row_backward through h_t = zw h_{t-1} + (1 - zw) a_t: da = (1 - zw) dh_t act'(a_t), and
    dh becomes the direct part zw dh_t of dh_{t-1} (zw[j * zs]: zs 0 for one weight)."""
    cdef Py_ssize_t j
    cdef floating dht
    for j in range(m):
        dht = dh[j] + dy[j]
        if use_relu:
            da[j] = (<floating> 1 - zw[j * zs]) * dht * drelu(a[j])
        else:
            da[j] = (<floating> 1 - zw[j * zs]) * dht * dtanh(a[j])
        dh[j] = zw[j * zs] * dht


cdef inline void _row_zoneout(floating* h, const floating* h_prev, const floating* zw,
                              Py_ssize_t zs, Py_ssize_t m) noexcept nogil:
    """h := zw h_prev + (1 - zw) h (zoneout; zw[j * zs]: zs 0 for one weight of every unit)."""
    cdef Py_ssize_t j
    for j in range(m):
        h[j] = zw[j * zs] * h_prev[j] + (<floating> 1 - zw[j * zs]) * h[j]


cdef inline void _row_mul(const floating* a, const floating* b, floating* out,
                          Py_ssize_t m) noexcept nogil:
    """out := a * b (the dropped state h * rmask)."""
    cdef Py_ssize_t j
    for j in range(m):
        out[j] = a[j] * b[j]


cdef inline void _row_add_mul(const floating* a, const floating* b, floating* out,
                              Py_ssize_t m) noexcept nogil:
    """out += a * b (dh_{t-1} += rmask * da_t W_hh)."""
    cdef Py_ssize_t j
    for j in range(m):
        out[j] += a[j] * b[j]


# --- tier 2: the time loops (one parallel region each; see lstm.pyx and _blocks.pxd) ------------
cdef void _forward_part(const void* ops, fr_barrier* bar, int size, int rank,
                        floating* tag) noexcept nogil:
    cdef const RNNOps* op = <const RNNOps*> ops
    cdef Py_ssize_t T = op.T, B = op.B, I = op.I, H = op.H
    cdef const int* batch_sizes = op.batch_sizes
    cdef bint use_relu = op.use_relu
    cdef const floating* x = <const floating*> op.x
    cdef const floating* h0 = <const floating*> op.h0
    cdef const floating* w_ih = <const floating*> op.w_ih
    cdef const floating* w_hh = <const floating*> op.w_hh
    cdef const floating* bias = <const floating*> op.bias
    cdef floating* y = <floating*> op.y
    cdef floating* h_n = <floating*> op.h_n
    cdef const floating* rmask = <const floating*> op.rmask
    cdef floating* hds = <floating*> op.hds
    cdef floating* acts = <floating*> op.acts
    cdef floating zp = <floating> op.zoneout_p
    cdef const floating* zw = <const floating*> op.zoneout
    cdef bint zoneout = zw != NULL or zp != 0
    cdef Py_ssize_t zs = 1 if zw != NULL else 0  # stride of the zoneout weights (0: just zp)
    cdef bint training = op.training
    cdef Py_ssize_t tc = steps_per_chunk(B)
    cdef Py_ssize_t t, b, n, o, j0, j1, m
    cdef const floating* h_prev
    cdef const floating* h_in
    cdef floating* y_t
    cdef floating* hd_t
    cdef Packed pk, pk_ih
    cdef bint own, sweep

    if zw == NULL:
        zw = &zp
    thread_units_isa(H, size, rank, ISA, &j0, &j1)
    m = j1 - j0
    own = not take_prepacked(op.prepacked, ISA, sizeof(floating), size, rank, &pk, &pk_ih)
    if own:  # no fitting prepacked panels: pack this call's (_prepack.pxd)
        pack_nt(&pk, ISA, H, j0, j1, 1, w_hh)
        pack_nt_k(&pk_ih, ISA, H, I, j0, j1, 1, w_ih)
    sweep = T == 1 and not own and next_sweep(op.prepacked, rank)  # step_gates' direction
    if rmask != NULL:
        # hds[0] = h0 * rmask: the first GEMM reads every thread's units
        for b in range(B if m > 0 else 0):
            _row_mul(h0 + b * H + j0, rmask + b * H + j0, hds + b * H + j0, m)
        fr_barrier_wait(bar, size)

    for t in range(T):
        n = batch_sizes[t]
        y_t = y + t * B * H
        # y[t'] = W_ih x[t'] + (b_ih + b_hh) for the next tc steps and this thread's units
        if t % tc == 0 and T > 1:
            project_active(t, min(t + tc, T), B, batch_sizes, I, H, j0, j1, 1, x, w_ih, bias,
                           y_t, &pk_ih)
        h_prev = h0 if t == 0 else y + (t - 1) * B * H
        # the GEMM reads h_{t-1}, or hd_t = h_{t-1} * rmask (training: all steps; inference:
        # a ring of 2, as step t writes hd_{t+1} while another thread may still read hd_t)
        h_in = h_prev if rmask == NULL else hds + (t if training else t % 2) * B * H
        # y_t[:n, units] += h_in W_hh[units]^T, then the activation on those units
        if T == 1:  # a streaming step: both GEMMs, in one sweep over the weights
            step_gates(n, I, H, j0, j1, 1, x, h_in, w_ih, w_hh, bias, y_t, y_t, True, &pk_ih,
                       &pk, sweep)
        else:
            recurrent_nt(n, H, j0, j1, 1, h_in, w_hh, <floating> 1, y_t, H, &pk)
        if m == H:
            _row_forward(y_t, n * H, use_relu)
        else:
            for b in range(n if m > 0 else 0):
                _row_forward(y_t + b * H + j0, m, use_relu)
        if zoneout:  # y_t = zw h_{t-1} + (1 - zw) a_t, a_t kept for BPTT in training
            for b in range(n if m > 0 else 0):
                o = (t * B + b) * H + j0
                if acts != NULL:
                    memcpy(acts + o, y + o, m * sizeof(floating))
                _row_zoneout(y + o, h_prev + b * H + j0, zw + o * zs, zs, m)
        if rmask != NULL and t + 1 < T:
            hd_t = hds + (t + 1 if training else (t + 1) % 2) * B * H
            for b in range(n if m > 0 else 0):
                _row_mul(y_t + b * H + j0, rmask + b * H + j0, hd_t + b * H + j0, m)
            if training and rank == 0:  # read by the dW_hh GEMM: no uninitialized rows
                zero_rows(hd_t, n, B, H)
        # inactive rows output zeros: each thread clears its own columns, which it projected
        for b in range(n, B if m > 0 else n):
            memset(y_t + b * H + j0, 0, m * sizeof(floating))
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
    cdef const RNNOps* op = <const RNNOps*> ops
    cdef Py_ssize_t T = op.T, B = op.B, I = op.I, H = op.H
    cdef const floating* x = <const floating*> op.x
    cdef const floating* h0 = <const floating*> op.h0
    cdef const floating* w_ih = <const floating*> op.w_ih
    cdef const floating* w_hh = <const floating*> op.w_hh
    cdef const floating* bias = <const floating*> op.bias
    cdef floating* y = <floating*> op.y
    cdef Py_ssize_t tc = steps_per_chunk(B)
    cdef Py_ssize_t t, b0, b1
    cdef const floating* h_prev
    cdef Packed pk, pk_ih
    batch_share(B, size, rank, &b0, &b1)
    if b1 <= b0:
        return
    rows_panels(op.prepacked, &pk, &pk_ih)
    for t in range(T):
        if t % tc == 0:  # y[t'] = W_ih x[t'] + bias for the next tc steps, this thread's rows
            project_rows(t, min(t + tc, T), B, b0, b1, I, H, 1, x, w_ih, bias, y + t * B * H,
                         &pk_ih)
        h_prev = h0 if t == 0 else y + (t - 1) * B * H
        recurrent_nt(b1 - b0, H, 0, H, 1, h_prev + b0 * H, w_hh, <floating> 1,
                     y + (t * B + b0) * H, H, &pk)
        _row_forward(y + (t * B + b0) * H, (b1 - b0) * H, op.use_relu)
    memcpy(<floating*> op.h_n + b0 * H, y + ((T - 1) * B + b0) * H,
           (b1 - b0) * H * sizeof(floating))


cdef void _backward_part(const void* ops, fr_barrier* bar, int size, int rank,
                         floating* tag) noexcept nogil:
    cdef const RNNOps* op = <const RNNOps*> ops
    cdef Py_ssize_t T = op.T, B = op.B, I = op.I, H = op.H
    cdef const int* batch_sizes = op.batch_sizes
    cdef bint use_relu = op.use_relu
    cdef const floating* x = <const floating*> op.x
    cdef const floating* h0 = <const floating*> op.h0
    cdef const floating* w_ih = <const floating*> op.w_ih
    cdef const floating* w_hh = <const floating*> op.w_hh
    cdef const floating* y = <const floating*> op.y
    cdef const floating* dy = <const floating*> op.dy
    cdef floating* dh = <floating*> op.dh
    cdef floating* dgates = <floating*> op.dgates
    cdef floating* dx = <floating*> op.dx
    cdef floating* dw_ih = <floating*> op.dw_ih
    cdef floating* dw_hh = <floating*> op.dw_hh
    cdef floating* db = <floating*> op.db
    cdef const floating* rmask = <const floating*> op.rmask
    cdef const floating* hds = <const floating*> op.hds
    cdef floating* dhd = <floating*> op.dhd
    cdef const floating* acts = <const floating*> op.acts
    cdef floating zp = <floating> op.zoneout_p
    cdef const floating* zw = <const floating*> op.zoneout
    cdef bint zoneout = zw != NULL or zp != 0
    cdef Py_ssize_t zs = 1 if zw != NULL else 0
    cdef Py_ssize_t t, b, n, o, j0, j1, m
    cdef floating* da_t
    cdef Packed pk

    if zw == NULL:
        zw = &zp
    thread_units_isa(H, size, rank, ISA, &j0, &j1)
    m = j1 - j0
    pack_nn(&pk, ISA, H, j0, j1, H, w_hh)
    for t in range(T - 1, -1, -1):
        n = batch_sizes[t]
        da_t = dgates + t * B * H
        if zoneout:  # da from a_t (acts); dh := zw dh_t, the direct part of dh_{t-1}
            for b in range(n if m > 0 else 0):
                o = t * B + b
                _row_backward_zoneout(acts + o * H + j0, dy + o * H + j0, zw + (o * H + j0) * zs,
                                      zs, dh + b * H + j0, da_t + b * H + j0, m, use_relu)
        elif m == H:
            _row_backward(y + t * B * H, dy + t * B * H, dh, da_t, n * H, use_relu)
        else:
            for b in range(n if m > 0 else 0):
                o = t * B + b
                _row_backward(y + o * H + j0, dy + o * H + j0, dh + b * H + j0,
                              da_t + b * H + j0, m, use_relu)
        # (da_t's padding rows stay unset: every GEMM after the loop skips them)
        fr_barrier_wait(bar, size)
        # dh_{t-1}[:n, units] = da_t[:n] W_hh[:, units]   (inactive rows keep the dh they carry),
        # plus zoneout's direct part, the GEMM's part times rmask with recurrent dropout
        if rmask == NULL:
            recurrent_nn(n, H, j0, j1, H, da_t, w_hh, <floating> zoneout, dh, &pk)
        else:
            recurrent_nn(n, H, j0, j1, H, da_t, w_hh, <floating> 0, dhd, &pk)
            for b in range(n if m > 0 else 0):
                if zoneout:
                    _row_add_mul(dhd + b * H + j0, rmask + b * H + j0, dh + b * H + j0, m)
                else:
                    _row_mul(dhd + b * H + j0, rmask + b * H + j0, dh + b * H + j0, m)

    release(&pk)
    fr_barrier_wait(bar, size)
    # the weight and input gradients over the active rows of all T steps (_blocks.pxd)
    weight_grad_active(T, B, batch_sizes, I, H, 1, dgates, H, x, <floating> 0, dw_ih, size, rank,
                       ISA)
    if rmask == NULL:  # dW_hh = sum_t da_t^T h_{t-1}, h_{t-1} from h0 and y
        weight_grad(B, H, H, 1, dgates, h0, <floating> 0, dw_hh, size, rank, ISA)
        weight_grad_active(T - 1, B, batch_sizes + 1, H, H, 1, dgates + B * H, H, y,
                           <floating> 1, dw_hh, size, rank, ISA)
    else:  # dW_hh = sum_t da_t^T hd_t
        weight_grad_active(T, B, batch_sizes, H, H, 1, dgates, H, hds, <floating> 0, dw_hh,
                           size, rank, ISA)
    bias_grad_active(T, B, batch_sizes, H, 1, dgates, db, size, rank)
    input_grad_active(T, B, batch_sizes, I, H, dgates, w_ih, dx, size, rank, ISA)


cdef inline RNNOps _ops(Py_ssize_t T, Py_ssize_t B, Py_ssize_t I, Py_ssize_t H,
                        const void* x, const void* h0, const void* w_ih, const void* w_hh,
                        const int* batch_sizes, const void* y, bint use_relu) noexcept nogil:
    """An operand struct with the operands every call takes; the rest NULL (off)."""
    cdef RNNOps o
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
    o.use_relu = use_relu
    return o


# --- tier 3: the Python entry points -------------------------------------------------------------
def forward(const floating[:, :, ::1] x,       # IN    (T, B, I)
            const floating[:, ::1] h0,         # IN    (B, H)
            const floating[:, ::1] w_ih,       # IN    (H, I)
            const floating[:, ::1] w_hh,       # IN    (H, H)
            const floating[::1] bias,          # IN    (H,) b_ih + b_hh (zeros without bias)
            const int[::1] batch_sizes,        # IN    (T,) non-increasing, batch_sizes[0] == B
            floating[:, :, ::1] y,             # OUT   (T, B, H)
            floating[:, ::1] h_n,              # OUT   (B, H)
            bint use_relu,
            int n_threads,
            bint training=True,
            rmask=None,                        # IN    (B, H) or None
            hds=None,                          # OUT   (T, B, H) ((2, B, H) if eval) with rmask
            zoneout=None,                      # IN    (T, B, H) or None
            double zoneout_p=0,
            acts=None,                         # OUT   (T, B, H) with zoneout in training
            PackedWeights prepacked=None):
    """Elman RNN forward over all T steps (T, B >= 1; arrays validated by fastrnn.functional).

    Parameters
    ----------
    x : ndarray of shape (T, B, I), dtype=float32 or float64
    h0 : ndarray of shape (B, H)
    w_ih : ndarray of shape (H, I)
    w_hh : ndarray of shape (H, H)
    bias : ndarray of shape (H,)
    batch_sizes : ndarray of shape (T,), dtype=int32
    y : ndarray of shape (T, B, H), written (also what BPTT needs)
    h_n : ndarray of shape (B, H), written
    use_relu : bool
        relu instead of tanh.
    n_threads : int
    training : bool
        Keep what BPTT needs of the options (hds of every step, acts); the plain cell keeps y.
    rmask : ndarray of shape (B, H) or None
        Recurrent dropout mask, applied to h_{t-1} before the W_hh GEMM at every step.
    hds : ndarray of shape (T, B, H) when training else (2, B, H), written; with rmask only
    zoneout : ndarray of shape (T, B, H) or None
        Zoneout weights of h: h_t = zoneout h_{t-1} + (1 - zoneout) act(...).
    zoneout_p : float
        The one zoneout weight of every unit when zoneout is None (0: no zoneout).
    acts : ndarray of shape (T, B, H), written; with zoneout in training only
    prepacked : PackedWeights, optional
        ``prepack(w_ih, w_hh, G, n)`` of exactly these weights: used when it was packed for
        this call's team, else the call packs its own.
    """
    cdef Py_ssize_t T = x.shape[0], B = x.shape[1], I = x.shape[2], H = h0.shape[1]
    cdef RNNOps o = _ops(T, B, I, H, &x[0, 0, 0], &h0[0, 0], &w_ih[0, 0], &w_hh[0, 0],
                         &batch_sizes[0], &y[0, 0, 0], use_relu)
    o.bias = &bias[0]
    o.h_n = &h_n[0, 0]
    if prepacked is not None:  # from prepack(w_ih, w_hh, ...) of these weights
        o.prepacked = &prepacked.pp
    o.training = training
    cdef const floating[:, ::1] rmask_v
    cdef floating[:, :, ::1] hds_v, acts_v
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
    if training and (zoneout is not None or zoneout_p != 0):
        acts_v = acts
        o.acts = &acts_v[0, 0, 0]
    with nogil:
        run_team(_forward_part[floating], &o, H, n_threads)


def backward(const floating[:, :, ::1] x,      # IN    (T, B, I)
             const floating[:, ::1] h0,        # IN    (B, H)
             const floating[:, ::1] w_ih,      # IN    (H, I)
             const floating[:, ::1] w_hh,      # IN    (H, H)
             const int[::1] batch_sizes,       # IN    (T,)
             const floating[:, :, ::1] y,      # IN    (T, B, H) from the forward
             const floating[:, :, ::1] dy,     # IN    (T, B, H)
             floating[:, ::1] dh,              # INOUT (B, H) dh_n in, dh0 out
             floating[:, :, ::1] dgates,       # OUT   (T, B, H) workspace
             floating[:, :, ::1] dx,           # OUT   (T, B, I)
             floating[:, ::1] dw_ih,           # OUT   (H, I)
             floating[:, ::1] dw_hh,           # OUT   (H, H)
             floating[::1] db,                 # OUT   (H,) gradient of b_ih (and of b_hh)
             bint use_relu,
             int n_threads,
             rmask=None,                       # IN    (B, H) or None, as the forward's
             hds=None,                         # IN    (T, B, H) with rmask, from the forward
             dhd=None,                         # OUT   (B, H) workspace with rmask
             zoneout=None,                     # IN    (T, B, H) or None, as the forward's
             double zoneout_p=0,
             acts=None):                       # IN    (T, B, H) with zoneout, from the forward
    """Elman RNN BPTT over all T steps (T, B >= 1); see forward for the shapes."""
    cdef Py_ssize_t T = x.shape[0], B = x.shape[1], I = x.shape[2], H = h0.shape[1]
    cdef RNNOps o = _ops(T, B, I, H, &x[0, 0, 0], &h0[0, 0], &w_ih[0, 0], &w_hh[0, 0],
                         &batch_sizes[0], &y[0, 0, 0], use_relu)
    o.dy = &dy[0, 0, 0]
    o.dh = &dh[0, 0]
    o.dgates = &dgates[0, 0, 0]
    o.dx = &dx[0, 0, 0]
    o.dw_ih = &dw_ih[0, 0]
    o.dw_hh = &dw_hh[0, 0]
    o.db = &db[0]
    cdef const floating[:, ::1] rmask_v
    cdef const floating[:, :, ::1] hds_v, zoneout_v, acts_v
    cdef floating[:, ::1] dhd_v
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
    if zoneout is not None or zoneout_p != 0:
        acts_v = acts
        o.acts = <void*> &acts_v[0, 0, 0]
    with nogil:
        run_team(_backward_part[floating], &o, H, n_threads)


# --- tier 4: the stable C API (declared in fastrnn/_kernels/rnn.pxd) -----------------------------
ctypedef RNNOps Ops

include "_capi.pxi"


cdef inline Layout _layout(Py_ssize_t T, Py_ssize_t B, Py_ssize_t I, Py_ssize_t H) noexcept nogil:
    """Workspace: [batch_sizes | bias or db (H) | zero h0 (B*H) | dgates (T*B*H)].
    No reserve: the backward reads y."""
    cdef Layout L
    L.G = H
    L.vec = int_slots(T)
    L.vec_hh = L.vec
    L.states = L.vec + H
    L.scratch = L.states + B * H
    L.big = L.scratch
    L.work = L.big + T * B * H
    L.keep = 0
    L.reserve = 0
    return L


cdef Py_ssize_t rnn_reserve_size(Py_ssize_t T, Py_ssize_t B, Py_ssize_t I,
                                 Py_ssize_t H) noexcept nogil:
    return _layout(T, B, I, H).reserve


cdef Py_ssize_t rnn_workspace_size(Py_ssize_t T, Py_ssize_t B, Py_ssize_t I,
                                   Py_ssize_t H) noexcept nogil:
    return _layout(T, B, I, H).work


cdef int _bind_forward(RNNOps* o, const Layout* L, const floating* b_ih, const floating* b_hh,
                       floating* reserve, floating* work) noexcept nogil:
    cdef Py_ssize_t j
    cdef floating* bias = work + L.vec
    o.h0 = or_zeros(<const floating*> o.h0, work + L.states, o.B * o.H)
    for j in range(L.G):
        bias[j] = 0 if b_ih == NULL else b_ih[j] + b_hh[j]
    o.bias = bias
    return 0


cdef void _pass_states(RNNOps* o, floating* tag) noexcept nogil:
    memcpy(o.h_n, o.h0, o.B * o.H * sizeof(floating))


cdef int _bind_backward(RNNOps* o, const Layout* L, const floating* dc_n,
                        const floating* reserve, floating* work) noexcept nogil:
    o.h0 = or_zeros(<const floating*> o.h0, work + L.states, o.B * o.H)
    o.dgates = work + L.big
    o.db = work + L.vec
    return 0


cdef int rnn_forward_f32(Py_ssize_t T, Py_ssize_t B, Py_ssize_t I, Py_ssize_t H,
                         const float* x, const float* h0, const float* w_ih, const float* w_hh,
                         const float* b_ih, const float* b_hh, const int* batch_sizes,
                         float* y, float* h_n, float* reserve, float* workspace,
                         bint use_relu, int n_threads) noexcept nogil:
    cdef RNNOps o = _ops(T, B, I, H, x, h0, w_ih, w_hh, batch_sizes, y, use_relu)
    o.h_n = h_n
    return _c_forward(&o, b_ih, b_hh, reserve, workspace, n_threads)


cdef int rnn_forward_f64(Py_ssize_t T, Py_ssize_t B, Py_ssize_t I, Py_ssize_t H,
                         const double* x, const double* h0, const double* w_ih,
                         const double* w_hh, const double* b_ih, const double* b_hh,
                         const int* batch_sizes, double* y, double* h_n, double* reserve,
                         double* workspace, bint use_relu, int n_threads) noexcept nogil:
    cdef RNNOps o = _ops(T, B, I, H, x, h0, w_ih, w_hh, batch_sizes, y, use_relu)
    o.h_n = h_n
    return _c_forward(&o, b_ih, b_hh, reserve, workspace, n_threads)


cdef int rnn_backward_f32(Py_ssize_t T, Py_ssize_t B, Py_ssize_t I, Py_ssize_t H,
                          const float* x, const float* h0, const float* w_ih, const float* w_hh,
                          const int* batch_sizes, const float* y, const float* reserve,
                          const float* dy, const float* dh_n,
                          float* dx, float* dh0, float* dw_ih, float* dw_hh,
                          float* db_ih, float* db_hh, float* workspace,
                          bint use_relu, int n_threads) noexcept nogil:
    cdef RNNOps o = _ops(T, B, I, H, x, h0, w_ih, w_hh, batch_sizes, y, use_relu)
    o.dy = dy
    o.dx = dx
    o.dh = dh0
    o.dw_ih = dw_ih
    o.dw_hh = dw_hh
    return _c_backward(&o, dh_n, NULL, reserve, db_ih, db_hh, workspace, n_threads)


cdef int rnn_backward_f64(Py_ssize_t T, Py_ssize_t B, Py_ssize_t I, Py_ssize_t H,
                          const double* x, const double* h0, const double* w_ih,
                          const double* w_hh, const int* batch_sizes, const double* y,
                          const double* reserve, const double* dy, const double* dh_n,
                          double* dx, double* dh0, double* dw_ih, double* dw_hh,
                          double* db_ih, double* db_hh, double* workspace,
                          bint use_relu, int n_threads) noexcept nogil:
    cdef RNNOps o = _ops(T, B, I, H, x, h0, w_ih, w_hh, batch_sizes, y, use_relu)
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
         bint use_relu, Py_ssize_t T, Py_ssize_t B, Py_ssize_t layer):
    """forward(x, h0[layer], ..., use_relu, training=False, prepacked=s.prepacked), bitwise,
    taking its arrays as raw buffers (_prepack.pxi). T, B >= 1; the arrays are checked for
    dtype size, C-contiguity and length only (fastrnn.nn.rnn validates them)."""
    cdef Py_ssize_t I = s.K, H = s.H, e = s.elem, off = layer * B * H * s.elem
    cdef Py_buffer vx, vh, vy, vhn
    cdef RNNOps o
    cdef int* sizes = NULL
    if T < 1 or B < 1 or layer < 0:
        raise ValueError("step needs T, B >= 1 and layer >= 0")
    memset(&vx, 0, sizeof(Py_buffer))
    vh = vy = vhn = vx
    try:
        o = _ops(T, B, I, H, _acquire(&vx, x, T * B * I * e, e, False),
                 _acquire(&vh, h0, off + B * H * e, e, False) + off, s.w_ih, s.w_hh, NULL,
                 _acquire(&vy, y, T * B * H * e, e, True), use_relu)
        o.h_n = _acquire(&vhn, h_n, off + B * H * e, e, True) + off
        sizes = _full_sizes(T, B)
        o.batch_sizes = sizes
        o.bias = s.bias
        if s.prepacked is not None:  # else the forward packs its own
            o.prepacked = &s.prepacked.pp
        with nogil:
            _run_step(&o, o.prepacked, s.rows, s.n_threads, H, T, e)
    finally:
        free(sizes)
        PyBuffer_Release(&vx)
        PyBuffer_Release(&vh)
        PyBuffer_Release(&vy)
        PyBuffer_Release(&vhn)
