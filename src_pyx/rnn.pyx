"""Elman RNN forward and BPTT over a whole sequence.

Legend: T steps, B batch rows, I input size, H hidden size (G = H: one gate block).
    h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh),  act = tanh or relu

The outputs y double as the pre-activation workspace: y[t] holds W_ih x_t + b until step t adds
the recurrent term and applies act in place. Rows are sorted by decreasing length;
``batch_sizes[t]`` rows are active at step t, and inactive rows output zeros.
"""

from cython cimport floating
from cython.parallel cimport parallel
from libc.string cimport memcpy, memset

from _activations cimport drelu, dtanh, relu, tanh_
from _blocks cimport (Packed, bias_grad, input_grad, pack_nn, pack_nt, pack_nt_k, project_steps,
                      recurrent_nn, recurrent_nt, release, steps_per_chunk, thread_units,
                      weight_grad)
from _parallel cimport (fr_barrier, fr_barrier_init, fr_barrier_wait, fr_team_rank,
                        fr_team_size, unit_blocks)
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


# --- tier 2: the time loops (one parallel region each; see lstm.pyx and _blocks.pxd) ------------
cdef void _forward(Py_ssize_t T, Py_ssize_t B, Py_ssize_t I, Py_ssize_t H,
                   const floating* x, const floating* h0, const floating* w_ih,
                   const floating* w_hh, const floating* bias, const int* batch_sizes,
                   floating* y, floating* h_n, bint use_relu, int n_threads) noexcept nogil:
    cdef fr_barrier bar
    cdef int size, rank
    fr_barrier_init(&bar)
    with parallel(num_threads=min(n_threads, unit_blocks(H))):
        size = fr_team_size()
        rank = fr_team_rank()
        _forward_part(T, B, I, H, x, h0, w_ih, w_hh, bias, batch_sizes, y, h_n, use_relu,
                      &bar, size, rank)


cdef void _forward_part(Py_ssize_t T, Py_ssize_t B, Py_ssize_t I, Py_ssize_t H,
                        const floating* x, const floating* h0, const floating* w_ih,
                        const floating* w_hh, const floating* bias, const int* batch_sizes,
                        floating* y, floating* h_n, bint use_relu, fr_barrier* bar, int size,
                        int rank) noexcept nogil:
    cdef Py_ssize_t tc = steps_per_chunk(B)
    cdef Py_ssize_t t, b, n, j0, j1, m
    cdef const floating* h_prev
    cdef floating* y_t
    cdef Packed pk, pk_ih

    thread_units(H, size, rank, &j0, &j1)
    m = j1 - j0
    pack_nt(&pk, ISA, H, j0, j1, 1, w_hh)
    pack_nt_k(&pk_ih, ISA, H, I, j0, j1, 1, w_ih)

    for t in range(T):
        n = batch_sizes[t]
        y_t = y + t * B * H
        # y[t'] = W_ih x[t'] + (b_ih + b_hh) for the next tc steps and this thread's units
        if t % tc == 0:
            project_steps(min(tc, T - t) * B, I, H, j0, j1, 1, x + t * B * I, w_ih, bias, y_t,
                          &pk_ih)
        h_prev = h0 if t == 0 else y + (t - 1) * B * H
        # y_t[:n, units] += h_{t-1} W_hh[units]^T, then the activation on those units
        recurrent_nt(n, H, j0, j1, 1, h_prev, w_hh, <floating> 1, y_t, H, &pk)
        if m == H:
            _row_forward(y_t, n * H, use_relu)
        else:
            for b in range(n if m > 0 else 0):
                _row_forward(y_t + b * H + j0, m, use_relu)
        # inactive rows output zeros: each thread clears its own columns, which it projected
        for b in range(n, B if m > 0 else n):
            memset(y_t + b * H + j0, 0, m * sizeof(floating))
        fr_barrier_wait(bar, size)

    release(&pk)
    release(&pk_ih)
    for b in range(B if m > 0 else 0):
        t = last_step(batch_sizes, T, b)
        memcpy(h_n + b * H + j0, y + (t * B + b) * H + j0, m * sizeof(floating))


cdef void _backward(Py_ssize_t T, Py_ssize_t B, Py_ssize_t I, Py_ssize_t H,
                    const floating* x, const floating* h0, const floating* w_ih,
                    const floating* w_hh, const int* batch_sizes, const floating* y,
                    const floating* dy, floating* dh, floating* dgates, floating* dx,
                    floating* dw_ih, floating* dw_hh, floating* db, bint use_relu,
                    int n_threads) noexcept nogil:
    cdef fr_barrier bar
    cdef int size, rank
    fr_barrier_init(&bar)
    with parallel(num_threads=min(n_threads, unit_blocks(H))):
        size = fr_team_size()
        rank = fr_team_rank()
        _backward_part(T, B, I, H, x, h0, w_ih, w_hh, batch_sizes, y, dy, dh, dgates, dx,
                       dw_ih, dw_hh, db, use_relu, &bar, size, rank)


cdef void _backward_part(Py_ssize_t T, Py_ssize_t B, Py_ssize_t I, Py_ssize_t H,
                         const floating* x, const floating* h0, const floating* w_ih,
                         const floating* w_hh, const int* batch_sizes, const floating* y,
                         const floating* dy, floating* dh, floating* dgates, floating* dx,
                         floating* dw_ih, floating* dw_hh, floating* db, bint use_relu,
                         fr_barrier* bar, int size, int rank) noexcept nogil:
    cdef Py_ssize_t t, b, n, o, j0, j1, m
    cdef floating* da_t
    cdef Packed pk

    thread_units(H, size, rank, &j0, &j1)
    m = j1 - j0
    pack_nn(&pk, ISA, H, j0, j1, H, w_hh)
    for t in range(T - 1, -1, -1):
        n = batch_sizes[t]
        da_t = dgates + t * B * H
        if m == H:
            _row_backward(y + t * B * H, dy + t * B * H, dh, da_t, n * H, use_relu)
        else:
            for b in range(n if m > 0 else 0):
                o = t * B + b
                _row_backward(y + o * H + j0, dy + o * H + j0, dh + b * H + j0,
                              da_t + b * H + j0, m, use_relu)
        if rank == 0:
            zero_rows(da_t, n, B, H)
        fr_barrier_wait(bar, size)
        # dh_{t-1}[:n, units] = da_t[:n] W_hh[:, units]   (inactive rows keep the dh they carry)
        recurrent_nn(n, H, j0, j1, H, da_t, w_hh, <floating> 0, dh, &pk)

    release(&pk)
    fr_barrier_wait(bar, size)
    weight_grad(T * B, I, H, 1, dgates, x, <floating> 0, dw_ih, size, rank, ISA)
    weight_grad(B, H, H, 1, dgates, h0, <floating> 0, dw_hh, size, rank, ISA)
    weight_grad((T - 1) * B, H, H, 1, dgates + B * H, y, <floating> 1, dw_hh, size, rank, ISA)
    bias_grad(T * B, H, 1, dgates, db, size, rank)
    input_grad(T * B, I, H, dgates, w_ih, dx, size, rank, ISA)


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
            int n_threads):
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
    """
    cdef Py_ssize_t T = x.shape[0], B = x.shape[1], I = x.shape[2], H = h0.shape[1]
    with nogil:
        _forward(T, B, I, H, &x[0, 0, 0], &h0[0, 0], &w_ih[0, 0], &w_hh[0, 0], &bias[0],
                 &batch_sizes[0], &y[0, 0, 0], &h_n[0, 0], use_relu, n_threads)


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
             int n_threads):
    """Elman RNN BPTT over all T steps (T, B >= 1); see forward for the shapes."""
    cdef Py_ssize_t T = x.shape[0], B = x.shape[1], I = x.shape[2], H = h0.shape[1]
    with nogil:
        _backward(T, B, I, H, &x[0, 0, 0], &h0[0, 0], &w_ih[0, 0], &w_hh[0, 0],
                  &batch_sizes[0], &y[0, 0, 0], &dy[0, 0, 0], &dh[0, 0], &dgates[0, 0, 0],
                  &dx[0, 0, 0], &dw_ih[0, 0], &dw_hh[0, 0], &db[0], use_relu, n_threads)


# --- tier 4: the stable C API (declared in fastrnn/_kernels/rnn.pxd) -----------------------------
from _capi cimport (ERR_ARG, check_sizes, copy_if, copy_or_zero, int_slots, or_zeros,
                    schedule)

# Workspace: [batch_sizes (T ints) | bias or db (H) | zero h0 (B*H) | dgates (T*B*H)].
# No reserve: the backward reads y.
cdef Py_ssize_t rnn_reserve_size(Py_ssize_t T, Py_ssize_t B, Py_ssize_t I,
                                 Py_ssize_t H) noexcept nogil:
    return 0


cdef Py_ssize_t rnn_workspace_size(Py_ssize_t T, Py_ssize_t B, Py_ssize_t I,
                                   Py_ssize_t H) noexcept nogil:
    return int_slots(T) + H + B * H + T * B * H


cdef int _c_forward(Py_ssize_t T, Py_ssize_t B, Py_ssize_t I, Py_ssize_t H,
                    const floating* x, const floating* h0, const floating* w_ih,
                    const floating* w_hh, const floating* b_ih, const floating* b_hh,
                    const int* batch_sizes, floating* y, floating* h_n, floating* work,
                    bint use_relu, int n_threads) noexcept nogil:
    cdef Py_ssize_t j
    cdef const int* bs
    cdef int rc = check_sizes(T, B, I, H, n_threads)
    if rc == 0 and (x == NULL or w_ih == NULL or w_hh == NULL or y == NULL or h_n == NULL
                    or work == NULL or (b_ih == NULL) != (b_hh == NULL)):
        rc = ERR_ARG
    if rc == 0:
        rc = schedule(batch_sizes, T, B, work, &bs)
    if rc != 0:
        return rc
    cdef floating* bias = work + int_slots(T)
    h0 = or_zeros(h0, bias + H, B * H)
    if T == 0 or B == 0:
        memcpy(h_n, h0, B * H * sizeof(floating))
        return 0
    for j in range(H):
        bias[j] = 0 if b_ih == NULL else b_ih[j] + b_hh[j]
    _forward(T, B, I, H, x, h0, w_ih, w_hh, bias, bs, y, h_n, use_relu, n_threads)
    return 0


cdef int _c_backward(Py_ssize_t T, Py_ssize_t B, Py_ssize_t I, Py_ssize_t H,
                     const floating* x, const floating* h0, const floating* w_ih,
                     const floating* w_hh, const int* batch_sizes, const floating* y,
                     const floating* dy, const floating* dh_n, floating* dx, floating* dh0,
                     floating* dw_ih, floating* dw_hh, floating* db_ih, floating* db_hh,
                     floating* work, bint use_relu, int n_threads) noexcept nogil:
    cdef const int* bs
    cdef int rc = check_sizes(T, B, I, H, n_threads)
    if rc == 0 and (x == NULL or w_ih == NULL or w_hh == NULL or y == NULL or dy == NULL
                    or dx == NULL or dh0 == NULL or dw_ih == NULL or dw_hh == NULL
                    or work == NULL):
        rc = ERR_ARG
    if rc == 0:
        rc = schedule(batch_sizes, T, B, work, &bs)
    if rc != 0:
        return rc
    cdef floating* db = work + int_slots(T)
    copy_or_zero(dh0, dh_n, B * H)  # the kernel carries dh back in place
    if T == 0 or B == 0:
        memset(dw_ih, 0, H * I * sizeof(floating))
        memset(dw_hh, 0, H * H * sizeof(floating))
        memset(db, 0, H * sizeof(floating))
    else:
        h0 = or_zeros(h0, db + H, B * H)
        _backward(T, B, I, H, x, h0, w_ih, w_hh, bs, y, dy, dh0, db + H + B * H, dx, dw_ih,
                  dw_hh, db, use_relu, n_threads)
    copy_if(db_ih, db, H)
    copy_if(db_hh, db, H)
    return 0


cdef int rnn_forward_f32(Py_ssize_t T, Py_ssize_t B, Py_ssize_t I, Py_ssize_t H,
                         const float* x, const float* h0, const float* w_ih, const float* w_hh,
                         const float* b_ih, const float* b_hh, const int* batch_sizes,
                         float* y, float* h_n, float* reserve, float* workspace,
                         bint use_relu, int n_threads) noexcept nogil:
    return _c_forward(T, B, I, H, x, h0, w_ih, w_hh, b_ih, b_hh, batch_sizes, y, h_n,
                      workspace, use_relu, n_threads)


cdef int rnn_forward_f64(Py_ssize_t T, Py_ssize_t B, Py_ssize_t I, Py_ssize_t H,
                         const double* x, const double* h0, const double* w_ih,
                         const double* w_hh, const double* b_ih, const double* b_hh,
                         const int* batch_sizes, double* y, double* h_n, double* reserve,
                         double* workspace, bint use_relu, int n_threads) noexcept nogil:
    return _c_forward(T, B, I, H, x, h0, w_ih, w_hh, b_ih, b_hh, batch_sizes, y, h_n,
                      workspace, use_relu, n_threads)


cdef int rnn_backward_f32(Py_ssize_t T, Py_ssize_t B, Py_ssize_t I, Py_ssize_t H,
                          const float* x, const float* h0, const float* w_ih, const float* w_hh,
                          const int* batch_sizes, const float* y, const float* reserve,
                          const float* dy, const float* dh_n,
                          float* dx, float* dh0, float* dw_ih, float* dw_hh,
                          float* db_ih, float* db_hh, float* workspace,
                          bint use_relu, int n_threads) noexcept nogil:
    return _c_backward(T, B, I, H, x, h0, w_ih, w_hh, batch_sizes, y, dy, dh_n, dx, dh0,
                       dw_ih, dw_hh, db_ih, db_hh, workspace, use_relu, n_threads)


cdef int rnn_backward_f64(Py_ssize_t T, Py_ssize_t B, Py_ssize_t I, Py_ssize_t H,
                          const double* x, const double* h0, const double* w_ih,
                          const double* w_hh, const int* batch_sizes, const double* y,
                          const double* reserve, const double* dy, const double* dh_n,
                          double* dx, double* dh0, double* dw_ih, double* dw_hh,
                          double* db_ih, double* db_hh, double* workspace,
                          bint use_relu, int n_threads) noexcept nogil:
    return _c_backward(T, B, I, H, x, h0, w_ih, w_hh, batch_sizes, y, dy, dh_n, dx, dh0,
                       dw_ih, dw_hh, db_ih, db_hh, workspace, use_relu, n_threads)
