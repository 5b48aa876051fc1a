"""int8 dynamic quantization: the GEMMs of fastrnn.quantize_dynamic's layers (inference only).

Legend: T steps, B batch rows, I input size, H hidden size, NG gate blocks (1 RNN, 4 LSTM,
3 GRU), Hp = H rounded up to 16 (each gate block is padded to Hp outputs, so that a 16-wide
block of outputs never straddles two gates), Ip = I rounded up to 4.

Weights are int8 with one scale per output channel (row of W), packed once (_qgemm.h); an
activation row (x_t of one sequence, h_{t-1} of one sequence) is quantized on the fly with one
scale per row; the integer GEMM runs on AVX-512 VNNI (vpdpbusd), AVX-VNNI (vpdpbusd on 256
bits, where a CPU has that but not AVX-512 VNNI) or portable C, the same integers on all three,
and everything else (scales, biases, the gate math) is float32:
    gx[t, b] = W_ih x_t + b_ih (+ b_hh but b_hn for the GRU)      ring_steps(T, B) steps at once
    gh[b]    = W_hh h_{t-1}                                       per step
    then the cell's gate pass of fastrnn.functional, on float32.
"""

from libc.stdint cimport int8_t, int32_t, uint8_t
from libc.stdlib cimport free, malloc
from libc.string cimport memset

from _parallel cimport batch_share, fr_barrier, fr_barrier_wait, run_threads, unit_blocks
from _blocks cimport steps_per_chunk, thread_units
from _util cimport line_start

cdef extern from "_qgates.h" nogil:
    void fr_quantize_rows(Py_ssize_t M, Py_ssize_t K, const float* a, Py_ssize_t lda,
                          Py_ssize_t Kp, uint8_t* q, float* s)
    void fr_qlstm_row(const float* ax, const float* ah, float* c, float* h, Py_ssize_t j0,
                      Py_ssize_t j1, Py_ssize_t Hp)
    void fr_qgru_row(const float* ax, const float* ah, const float* b_hn, const float* hp,
                     float* h, Py_ssize_t j0, Py_ssize_t j1, Py_ssize_t Hp)
    void fr_qrnn_row(const float* ax, const float* ah, float* h, Py_ssize_t j0, Py_ssize_t j1,
                     int relu)

cdef extern from "_qgemm.h" nogil:
    int fr_qgemm_vnni_ok()
    int fr_qgemm_avxvnni_ok()
    void fr_qpack(Py_ssize_t N, Py_ssize_t K, const int8_t* w, int8_t* p, int32_t* colsum)
    void fr_qgemm(int isa, Py_ssize_t M, Py_ssize_t nb0, Py_ssize_t nb1, Py_ssize_t Kq,
                  const uint8_t* a, Py_ssize_t lda, const float* sa, const int8_t* p,
                  const int32_t* colsum, const float* sw, const float* bias, float* c,
                  Py_ssize_t ldc, int add)

# 1: AVX-512 VNNI, 2: AVX-VNNI (256-bit), 0: portable C: the best this CPU runs. Read by the
# kernels, written by _set_isa (fastrnn.quantization).
cdef int ISA = 1 if fr_qgemm_vnni_ok() else (2 if fr_qgemm_avxvnni_ok() else 0)


def vnni_available():
    """Whether this CPU runs the AVX-512 VNNI path."""
    return bool(fr_qgemm_vnni_ok())


def avxvnni_available():
    """Whether this CPU runs the AVX-VNNI (256-bit) path."""
    return bool(fr_qgemm_avxvnni_ok())


def _set_isa(int isa):
    """1: AVX-512 VNNI, 2: AVX-VNNI (the caller checks vnni_available() /
    avxvnni_available()), 0: portable C."""
    global ISA
    ISA = isa


def _get_isa():
    return ISA


# --- packing and quantizing ----------------------------------------------------------------------
def pack(const int8_t[:, ::1] w,      # IN  (N, K)
         int8_t[::1] packed,          # OUT (ceil(N/16) * 16 * ceil(K/4) * 4,)
         int32_t[::1] colsum):        # OUT (ceil(N/16) * 16,)
    """Pack an int8 weight (N, K) for the GEMMs and write its column sums."""
    with nogil:
        fr_qpack(w.shape[0], w.shape[1], &w[0, 0], &packed[0], &colsum[0])


def quantize_rows(const float[:, ::1] a,   # IN  (M, K)
                  uint8_t[:, ::1] q,       # OUT (M, Kp), Kp >= K a multiple of 4
                  float[::1] s):           # OUT (M,)
    """Quantize each row of a to u8 (symmetric, + 128) with its own scale max|row| / 127."""
    if a.shape[0] == 0:
        return
    with nogil:
        fr_quantize_rows(a.shape[0], a.shape[1], &a[0, 0], a.shape[1], q.shape[1], &q[0, 0],
                         &s[0])


def gemm(const uint8_t[:, ::1] a,      # IN  (M, Kp) from quantize_rows
         const float[::1] sa,          # IN  (M,)
         const int8_t[::1] packed,     # IN  from pack, N outputs padded to Np
         const int32_t[::1] colsum,    # IN  (Np,)
         const float[::1] sw,          # IN  (Np,) per-output scales (0 for padding)
         bias,                         # IN  (Np,) float32 or None
         float[:, ::1] c):             # OUT (M, Np)
    """c = (sa sw) * (a - 128) @ w^T + bias over the packed weight (a Linear layer)."""
    cdef const float[::1] b
    cdef const float* bp = NULL
    cdef Py_ssize_t M = a.shape[0], Kq = a.shape[1] // 4, NB = c.shape[1] // 16
    if bias is not None:
        b = bias
        bp = &b[0]
    if M == 0:
        return
    with nogil:
        fr_qgemm(ISA, M, 0, NB, Kq, &a[0, 0], a.shape[1], &sa[0], &packed[0], &colsum[0],
                 &sw[0], bp, &c[0, 0], c.shape[1], 0)


# --- the recurrent loop --------------------------------------------------------------------------
cdef enum:
    CELL_RNN_TANH = 0
    CELL_RNN_RELU = 1
    CELL_LSTM = 2
    CELL_GRU = 3


def ring_steps(Py_ssize_t T, Py_ssize_t B):
    """Steps of projected inputs forward's ``gx`` holds at once (the float32 kernels' chunk)."""
    return min(T, steps_per_chunk(B))


# The threads of a call split its batch rows (each runs every unit of its rows: no barrier per
# step, and each quantizes only its rows of h) where each gets ROWS_MIN rows or more (a GEMM
# tile's height) and the packed weights W_ih and W_hh take at most ROWS_WEIGHT_BYTES, which
# every thread then reads at every step from its own L2; else they split the units (each
# keeps its columns of the weights, and all threads meet at a barrier at every step).
cdef Py_ssize_t ROWS_WEIGHT_BYTES = 512 * 1024
cdef enum:
    ROWS_MIN = 4


cdef int team(Py_ssize_t B, Py_ssize_t H, Py_ssize_t NG, Py_ssize_t Ip, int n_threads,
              int* by_rows) noexcept nogil:
    """The team's size for a call of n_threads at most, and whether it splits rows."""
    cdef Py_ssize_t Hp = (H + 15) // 16 * 16
    cdef Py_ssize_t rows = min(<Py_ssize_t> n_threads, B // ROWS_MIN)
    by_rows[0] = rows >= 2 and NG * Hp * (Hp + Ip) <= ROWS_WEIGHT_BYTES
    if by_rows[0]:
        return <int> rows
    return <int> min(<Py_ssize_t> n_threads, unit_blocks(H))


def plan(Py_ssize_t B, Py_ssize_t H, int cell, Py_ssize_t I, int n_threads):
    """(threads, "rows" or "units"): how forward() and step() split a call of B rows of a layer
    with input size I over n_threads threads at most (cell: as forward's)."""
    cdef int by_rows
    cdef Py_ssize_t NG = 4 if cell == CELL_LSTM else (3 if cell == CELL_GRU else 1)
    n = team(B, H, NG, (I + 3) // 4 * 4, n_threads, &by_rows)
    return n, ("rows" if by_rows else "units")


def _set_rows_weight_bytes(Py_ssize_t n):
    """Set ROWS_WEIGHT_BYTES (0: the threads always split units); returns the previous value.
    For benchmarks that compare the two splits."""
    global ROWS_WEIGHT_BYTES
    old = ROWS_WEIGHT_BYTES
    ROWS_WEIGHT_BYTES = n
    return old


cdef struct QOps:
    Py_ssize_t T, B, H, Hp, NG, Ip
    int cell
    const uint8_t* xq       # (T * B, Ip) x quantized per row (quantize_rows)
    const float* xs         # (T * B,) its row scales
    const int8_t* w_ih      # packed (NG * Hp outputs, Ip inputs)
    const int32_t* cs_ih    # (NG * Hp,)
    const float* sw_ih      # (NG * Hp,)
    const float* bias       # (NG * Hp,) b_ih + b_hh (GRU: + [b_hr, b_hz, 0])
    float* gx               # (tc, B, NG * Hp) W_ih x_t + bias of tc steps at a time (a ring)
    Py_ssize_t tc           # steps per chunk of the input GEMM: ring_steps(T, B)
    const int8_t* w_hh      # packed (NG * Hp outputs, Hp inputs)
    const int32_t* cs_hh    # (NG * Hp,)
    const float* sw_hh      # (NG * Hp,)
    const float* b_hn       # (Hp,) GRU: b_hn (inside r * (.)); NULL otherwise
    const float* h0         # (B, H)
    const float* c0         # (B, H) LSTM
    float* gh               # (B, NG * Hp) workspace
    float* c                # (B, H) LSTM cell state, updated in place
    float* y                # (T, B, H)
    int by_rows             # threads split the batch rows, not the units (team())


cdef void _loop_part(const void* ops, fr_barrier* bar, int size, int rank,
                     float* tag) noexcept nogil:
    cdef const QOps* op = <const QOps*> ops
    cdef Py_ssize_t T = op.T, B = op.B, H = op.H, Hp = op.Hp, NG = op.NG
    cdef Py_ssize_t W = NG * Hp, Kq = Hp // 4, Iq = op.Ip // 4
    cdef Py_ssize_t t, s, b, g, j0, j1, nb0, nb1, b0, b1, M, steps
    cdef const float* h_prev
    cdef const float* ax
    cdef float* ah
    cdef float* h
    cdef uint8_t* hq
    cdef float* hs
    if op.by_rows:
        # each thread runs all units of its own rows (runs of 4, the GEMM tile's height):
        # no row of one thread's is ever read by another, so the steps need no barrier, and a
        # thread quantizes only its rows of h
        batch_share(B, size, rank, &b0, &b1)
        j0, j1, nb0, nb1 = 0, H, 0, Hp // 16
    else:
        # each thread computes its units' gate columns of every row, from all of h_{t-1}: a
        # barrier per step
        b0, b1 = 0, B
        thread_units(H, size, rank, &j0, &j1)
        nb0 = j0 // 16
        nb1 = (j1 + 15) // 16
    M = b1 - b0
    if M <= 0 or j1 <= j0:  # nothing to compute, but the unit split's barriers to keep
        for _ in range(T if not op.by_rows else 0):
            fr_barrier_wait(bar, size)
        return
    hq = <uint8_t*> malloc(M * Hp)
    hs = <float*> malloc(M * sizeof(float))
    for t in range(T):
        # gx = W_ih x + bias for the next tc steps, this thread's gate columns of its rows
        # (only it reads them): a ring of tc steps instead of all T (at T = 100, B = 64,
        # H = 512 that was 52 MB of fresh pages per call)
        if t % op.tc == 0:
            steps = min(op.tc, T - t)
            for s in range(steps if op.by_rows else 1):
                for g in range(NG):
                    fr_qgemm(ISA, M if op.by_rows else steps * B, g * (Hp // 16) + nb0,
                             g * (Hp // 16) + nb1, Iq, op.xq + ((t + s) * B + b0) * op.Ip,
                             op.Ip, op.xs + (t + s) * B + b0, op.w_ih, op.cs_ih, op.sw_ih,
                             op.bias, op.gx + (s * B + b0) * W, W, 0)
        h_prev = op.h0 if t == 0 else op.y + (t - 1) * B * H
        fr_quantize_rows(M, H, h_prev + b0 * H, H, Hp, hq, hs)
        for g in range(NG):
            fr_qgemm(ISA, M, g * (Hp // 16) + nb0, g * (Hp // 16) + nb1, Kq, hq, Hp, hs,
                     op.w_hh, op.cs_hh, op.sw_hh, NULL, op.gh + b0 * W, W, 0)
        for b in range(b0, b1):  # the gate pass on this thread's units (_qgates.h)
            ax = op.gx + ((t % op.tc) * B + b) * W
            ah = op.gh + b * W
            h = op.y + (t * B + b) * H
            if op.cell == CELL_LSTM:
                fr_qlstm_row(ax, ah, op.c + b * H, h, j0, j1, Hp)
            elif op.cell == CELL_GRU:
                fr_qgru_row(ax, ah, op.b_hn, h_prev + b * H, h, j0, j1, Hp)
            else:
                fr_qrnn_row(ax, ah, h, j0, j1, op.cell == CELL_RNN_RELU)
        if not op.by_rows:
            fr_barrier_wait(bar, size)
    free(hq)
    free(hs)


def forward(const uint8_t[:, ::1] xq,     # IN    (T * B, Ip) from quantize_rows
            const float[::1] xs,           # IN    (T * B,)
            const int8_t[::1] w_ih,        # IN    packed (NG * Hp, Ip)
            const int32_t[::1] cs_ih,      # IN    (NG * Hp,)
            const float[::1] sw_ih,        # IN    (NG * Hp,)
            const float[::1] bias,         # IN    (NG * Hp,)
            float[:, :, ::1] gx,           # OUT   (ring_steps(T, B), B, NG * Hp) workspace
            const int8_t[::1] w_hh,        # IN    packed (NG * Hp, Hp)
            const int32_t[::1] cs_hh,      # IN    (NG * Hp,)
            const float[::1] sw_hh,        # IN    (NG * Hp,)
            b_hn,                          # IN    (Hp,) float32, GRU only, else None
            const float[:, ::1] h0,        # IN    (B, H)
            c,                             # INOUT (B, H) float32: c0 in, c_n out (LSTM); None
            float[:, :, ::1] y,            # OUT   (T, B, H)
            int cell,                      # 0 RNN tanh, 1 RNN relu, 2 LSTM, 3 GRU
            int n_threads):
    """A quantized layer over T >= 1 steps: the input GEMM of all steps, then the recurrence."""
    cdef QOps o
    cdef float[:, ::1] cv
    cdef const float[::1] bv
    cdef Py_ssize_t T = y.shape[0], B = y.shape[1], H = y.shape[2]
    cdef Py_ssize_t NG = 4 if cell == CELL_LSTM else (3 if cell == CELL_GRU else 1)
    cdef Py_ssize_t Hp = (H + 15) // 16 * 16
    if (gx.shape[0] != ring_steps(T, B) or gx.shape[1] != B or gx.shape[2] != NG * Hp
            or cs_hh.shape[0] != NG * Hp or cs_ih.shape[0] != NG * Hp
            or xq.shape[0] != T * B or xq.shape[1] % 4 != 0 or bias.shape[0] != NG * Hp):
        raise ValueError("quant.forward: operands of inconsistent shapes")
    # one 64-byte line more, to start the rows on a line: threads write their own 16-unit
    # column runs of each row, and a run that straddled two lines would share one
    gh = bytearray(B * NG * Hp * sizeof(float) + 64)
    cdef float[::1] ghv = memoryview(gh).cast("B").cast("f")
    o.T, o.B, o.H, o.Hp, o.NG, o.Ip, o.cell = T, B, H, Hp, NG, xq.shape[1], cell
    o.tc = ring_steps(T, B)
    o.xq = &xq[0, 0]
    o.xs = &xs[0]
    o.w_ih = &w_ih[0]
    o.cs_ih = &cs_ih[0]
    o.sw_ih = &sw_ih[0]
    o.bias = &bias[0]
    o.gx = &gx[0, 0, 0]
    o.w_hh = &w_hh[0]
    o.cs_hh = &cs_hh[0]
    o.sw_hh = &sw_hh[0]
    o.b_hn = NULL
    o.c0 = NULL
    o.c = NULL
    if b_hn is not None:
        bv = b_hn
        o.b_hn = &bv[0]
    if c is not None:
        cv = c
        o.c = &cv[0, 0]
    o.h0 = &h0[0, 0]
    o.gh = <float*> line_start(<char*> &ghv[0])
    o.y = &y[0, 0, 0]
    with nogil:
        n_threads = team(B, H, NG, o.Ip, n_threads, &o.by_rows)
        run_threads(_loop_part, &o, n_threads)


# --- the streaming step (fastrnn.quantization.QuantizedRNNBase.step) ------------------------------
# forward() of one step of B = 1 costs more around the kernel than in it: fourteen typed
# memoryviews (about 0.15 us each), a bytearray cast to a memoryview, and quantize_rows' own
# call. step() takes a layer's fixed operands in one StepLayer and the call's arrays as raw
# buffers, quantizes x and runs the same loop (_loop_part, T = 1) with malloc'd scratch.

from cpython.buffer cimport (PyBUF_C_CONTIGUOUS, PyBUF_WRITABLE, PyBuffer_Release,
                             PyObject_GetBuffer)


cdef char* _raw(Py_buffer* v, object a, Py_ssize_t nbytes, Py_ssize_t elem,
                bint writable) except NULL:
    """The data of ``a`` (released by the caller with PyBuffer_Release(v)), refused unless it is
    a C-contiguous buffer of elements of ``elem`` bytes holding at least ``nbytes`` bytes."""
    PyObject_GetBuffer(a, v, PyBUF_C_CONTIGUOUS | (PyBUF_WRITABLE if writable else 0))
    if v.itemsize != elem or v.len < nbytes or v.buf == NULL:
        raise ValueError(f"quant.step: an operand of {v.len} bytes of {v.itemsize}-byte "
                         f"elements, expected {nbytes} bytes of {elem}-byte elements")
    return <char*> v.buf


cdef inline Py_ssize_t _line(Py_ssize_t nbytes) noexcept nogil:
    """nbytes rounded up to whole 64-byte lines."""
    return (nbytes + 63) // 64 * 64


cdef class StepLayer:
    """One quantized layer's fixed operands of step(), as forward() takes them: w_ih and w_hh
    packed (NG * Hp outputs by Ip and Hp inputs), their column sums and scales, ``bias`` and
    the GRU's ``b_hn`` (None otherwise); ``n_in`` the input size I, ``H`` the hidden size.
    Holds references to the arrays, not copies."""

    cdef object refs
    cdef QOps base
    cdef Py_ssize_t n_in

    def __init__(self, w_ih, cs_ih, sw_ih, bias, w_hh, cs_hh, sw_hh, b_hn, Py_ssize_t n_in,
                 Py_ssize_t H, Py_ssize_t Ip, int cell):
        cdef Py_buffer v
        cdef Py_ssize_t NG = 4 if cell == CELL_LSTM else (3 if cell == CELL_GRU else 1)
        cdef Py_ssize_t Hp = (H + 15) // 16 * 16, W = NG * Hp
        if n_in < 1 or H < 1 or Ip < n_in or Ip % 4 != 0 or (cell == CELL_GRU) != (
                b_hn is not None):
            raise ValueError("StepLayer: inconsistent sizes")
        memset(&self.base, 0, sizeof(QOps))
        self.refs = (w_ih, cs_ih, sw_ih, bias, w_hh, cs_hh, sw_hh, b_hn)
        self.n_in = n_in
        self.base.H, self.base.Hp, self.base.NG, self.base.Ip, self.base.cell = H, Hp, NG, Ip, cell
        self.base.w_ih = <const int8_t*> _raw(&v, w_ih, W * Ip, 1, False)
        PyBuffer_Release(&v)
        self.base.cs_ih = <const int32_t*> _raw(&v, cs_ih, W * 4, 4, False)
        PyBuffer_Release(&v)
        self.base.sw_ih = <const float*> _raw(&v, sw_ih, W * 4, 4, False)
        PyBuffer_Release(&v)
        self.base.bias = <const float*> _raw(&v, bias, W * 4, 4, False)
        PyBuffer_Release(&v)
        self.base.w_hh = <const int8_t*> _raw(&v, w_hh, W * Hp, 1, False)
        PyBuffer_Release(&v)
        self.base.cs_hh = <const int32_t*> _raw(&v, cs_hh, W * 4, 4, False)
        PyBuffer_Release(&v)
        self.base.sw_hh = <const float*> _raw(&v, sw_hh, W * 4, 4, False)
        PyBuffer_Release(&v)
        if b_hn is not None:
            self.base.b_hn = <const float*> _raw(&v, b_hn, Hp * 4, 4, False)
            PyBuffer_Release(&v)


def step(StepLayer s,
         x,                  # IN    (B, I) float32, C-contiguous
         h0,                 # IN    (L, B, H) float32: the layer's h_{t-1} is h0[layer]
         c,                  # INOUT (L, B, H) float32: c[layer] updated in place (LSTM); None
         y,                  # OUT   (B, H) float32
         Py_ssize_t B, Py_ssize_t layer, int n_threads):
    """forward(quantize_rows(x), ..., h0[layer], c[layer], y) of one step (T = 1), bitwise,
    taking its arrays as raw buffers; B >= 1. The arrays are checked for element size,
    C-contiguity and length only (fastrnn.quantization validates them)."""
    cdef QOps o = s.base
    cdef Py_ssize_t H = o.H, W = o.NG * o.Hp, off = layer * B * o.H * 4
    cdef Py_buffer vx, vh, vc, vy
    cdef char* scratch = NULL
    cdef char* base
    cdef Py_ssize_t a, b, g
    cdef const float* xp
    if B < 1 or layer < 0 or (o.cell == CELL_LSTM) != (c is not None):
        raise ValueError("quant.step needs B >= 1, layer >= 0 and c exactly for the LSTM")
    memset(&vx, 0, sizeof(Py_buffer))
    vh = vc = vy = vx
    try:
        xp = <const float*> _raw(&vx, x, B * s.n_in * 4, 4, False)
        o.h0 = <const float*> (_raw(&vh, h0, off + B * H * 4, 4, False) + off)
        if c is not None:
            o.c = <float*> (_raw(&vc, c, off + B * H * 4, 4, True) + off)
        o.y = <float*> _raw(&vy, y, B * H * 4, 4, True)
        # xq (B, Ip) u8, xs (B,), gx (1, B, W) and gh (B, W) float32, each on a 64-byte line
        a, b, g = _line(B * o.Ip), _line(B * 4), _line(B * W * 4)
        scratch = <char*> malloc(a + b + 2 * g + 64)
        if scratch == NULL:
            raise MemoryError()
        base = line_start(scratch)
        o.xq = <const uint8_t*> base
        o.xs = <const float*> (base + a)
        o.gx = <float*> (base + a + b)
        o.gh = <float*> (base + a + b + g)
        o.T, o.B, o.tc = 1, B, 1
        with nogil:
            fr_quantize_rows(B, s.n_in, xp, s.n_in, o.Ip, <uint8_t*> o.xq, <float*> o.xs)
            n_threads = team(B, H, o.NG, o.Ip, n_threads, &o.by_rows)
            run_threads(_loop_part, &o, n_threads)
    finally:
        free(scratch)
        PyBuffer_Release(&vx)
        PyBuffer_Release(&vh)
        PyBuffer_Release(&vc)
        PyBuffer_Release(&vy)
