# prepack(): a cell's forward weights packed once (see _prepack.pxd), included at the end of
# rnn.pyx, lstm.pyx and gru.pyx, whose ISA it reads.

from libc.stdlib cimport calloc, free

from _blocks cimport pack_nt, pack_nt_k, release, thread_units_isa
from _prepack cimport Prepacked


cdef struct _PackOps:
    Py_ssize_t H, K  # K: input size (the C name I is complex.h's)
    int n_gates, isa
    const void* w_ih
    const void* w_hh
    Prepacked* pp


cdef void _pack_part(const void* ops, fr_barrier* bar, int size, int rank,
                     floating* tag) noexcept nogil:
    cdef const _PackOps* op = <const _PackOps*> ops
    cdef Py_ssize_t j0, j1
    thread_units_isa(op.H, size, rank, op.isa, &j0, &j1)
    pack_nt(&op.pp.hh[rank], op.isa, op.H, j0, j1, op.n_gates, <const floating*> op.w_hh)
    pack_nt_k(&op.pp.ih[rank], op.isa, op.H, op.K, j0, j1, op.n_gates,
              <const floating*> op.w_ih)
    if rank == 0:
        op.pp.size = size


cdef class PackedWeights:
    """W_ih and W_hh of one layer and direction in the forward's packed layout, for a team of
    ``n_threads``; pass as the forward's ``prepacked``. Holds its own copy: it does not see
    later changes of the arrays it was packed from."""

    cdef Prepacked pp

    def __dealloc__(self):
        cdef int r
        if self.pp.hh != NULL:
            for r in range(self.pp.capacity):
                release(&self.pp.hh[r])
                release(&self.pp.ih[r])
        free(self.pp.hh)
        free(self.pp.ih)


def prepack(const floating[:, ::1] w_ih,   # IN  (G, I)
            const floating[:, ::1] w_hh,   # IN  (G, H)
            int n_gates,
            int n_threads):
    """Pack w_ih and w_hh as a forward of this module with ``n_threads`` threads would."""
    cdef PackedWeights out = PackedWeights()
    cdef _PackOps o
    cdef Py_ssize_t H = w_hh.shape[1]
    out.pp.isa = ISA
    out.pp.elem = sizeof(floating)
    out.pp.capacity = max(1, n_threads)
    out.pp.hh = <Packed*> calloc(out.pp.capacity, sizeof(Packed))
    out.pp.ih = <Packed*> calloc(out.pp.capacity, sizeof(Packed))
    if out.pp.hh == NULL or out.pp.ih == NULL:
        raise MemoryError()
    o.H = H
    o.K = w_ih.shape[1]
    o.n_gates = n_gates
    o.isa = ISA
    o.w_ih = &w_ih[0, 0]
    o.w_hh = &w_hh[0, 0]
    o.pp = &out.pp
    with nogil:
        run_team(_pack_part[floating], &o, H, out.pp.capacity)
    return out


# --- the streaming step's entry point (step(), written per cell after this include) -------------
# RNNBase.step of a plain cell on B = 1 is dominated by what surrounds the arithmetic when that
# goes through forward(): its twelve typed memoryviews cost about 0.15 us each to acquire (2 us
# of a 30 us step at I = H = 256, more than half of a step at H = 16). step() takes the layer's
# fixed operands in one StepKernel and the six per-call arrays as raw buffers (about 0.03 us
# each), and allocates its scratch (gate ring, batch sizes) with malloc: reentrant, as forward.

from cpython.buffer cimport (PyBUF_C_CONTIGUOUS, PyBUF_WRITABLE, PyBuffer_Release,
                             PyObject_GetBuffer)
from libc.stdlib cimport malloc


cdef char* _acquire(Py_buffer* v, object a, Py_ssize_t nbytes, Py_ssize_t elem,
                    bint writable) except NULL:
    """The data of ``a`` (released by the caller with PyBuffer_Release(v)), refused unless it is
    a C-contiguous buffer of elements of ``elem`` bytes holding at least ``nbytes`` bytes."""
    PyObject_GetBuffer(a, v, PyBUF_C_CONTIGUOUS | (PyBUF_WRITABLE if writable else 0))
    if v.itemsize != elem or v.len < nbytes or v.buf == NULL:
        raise ValueError(f"step: an operand of {v.len} bytes of {v.itemsize}-byte elements, "
                         f"expected {nbytes} bytes of {elem}-byte elements")
    return <char*> v.buf


cdef class StepKernel:
    """One layer's fixed operands of step(): w_ih (G, I), w_hh (G, H), the summed bias (G,)
    and the GRU's b_hn (H,) (None otherwise), C-contiguous arrays of one float dtype, and
    ``prepacked``, prepack(w_ih, w_hh, G // H, n_threads) of them, or None: then each step()
    packs its own, as forward() without ``prepacked`` does. With ``rows``, ``prepacked`` is
    a team of one's and each call of T > 1 steps splits its batch rows over n_threads
    threads (_prepack.pxd: rows_fit; a call that cannot runs on one thread), with the same
    bits. Holds references to the arrays, not copies: whoever changes them makes a new
    StepKernel (fastrnn's layers key it on the parameters' versions)."""

    cdef object refs
    cdef const void* w_ih
    cdef const void* w_hh
    cdef const void* bias
    cdef const void* b_hn
    cdef PackedWeights prepacked
    cdef Py_ssize_t K, H, G, elem  # K: input size (I is complex.h's)
    cdef readonly int n_threads
    cdef readonly bint rows  # split the batch rows over the team (_prepack.pxd: rows_fit)

    def __init__(self, w_ih, w_hh, bias, b_hn, PackedWeights prepacked, int n_threads,
                 bint rows=False):
        cdef Py_buffer v
        cdef Py_ssize_t e = w_hh.itemsize
        self.G, self.H = w_hh.shape
        self.K = w_ih.shape[1]
        self.elem = e
        if (e not in (4, 8) or w_ih.shape[0] != self.G or n_threads < 1
                or (prepacked is not None and prepacked.pp.elem != <size_t> e)):
            raise ValueError("StepKernel: w_ih, w_hh and prepacked disagree")
        self.refs = (w_ih, w_hh, bias, b_hn)
        self.w_ih = _acquire(&v, w_ih, self.G * self.K * e, e, False)
        PyBuffer_Release(&v)
        self.w_hh = _acquire(&v, w_hh, self.G * self.H * e, e, False)
        PyBuffer_Release(&v)
        self.bias = _acquire(&v, bias, self.G * e, e, False)
        PyBuffer_Release(&v)
        if b_hn is not None:
            self.b_hn = _acquire(&v, b_hn, self.H * e, e, False)
            PyBuffer_Release(&v)
        self.prepacked = prepacked
        self.n_threads = n_threads
        self.rows = rows


cdef inline void _run_step(const void* ops, const void* prepacked, bint rows, int n_threads,
                           Py_ssize_t H, Py_ssize_t T, Py_ssize_t e) noexcept nogil:
    """step()'s kernel call on its ops struct: the row split where its StepKernel asks for it
    and the panels allow (_prepack.pxd: rows_fit), else the unit split (on one thread where
    rows were asked: the panels are then a team of one's). e: the element size."""
    if rows and rows_fit(prepacked, ISA, e, T):
        if e == sizeof(float):
            run_threads(_forward_rows_part[float], ops, n_threads)
        else:
            run_threads(_forward_rows_part[double], ops, n_threads)
    elif e == sizeof(float):
        run_team(_forward_part[float], ops, H, 1 if rows else n_threads)
    else:
        run_team(_forward_part[double], ops, H, 1 if rows else n_threads)


cdef int* _full_sizes(Py_ssize_t T, Py_ssize_t B) except NULL:
    """malloc'd batch_sizes of T steps of B rows (free it)."""
    cdef int* out = <int*> malloc(max(T, 1) * sizeof(int))
    cdef Py_ssize_t t
    if out == NULL:
        raise MemoryError()
    for t in range(T):
        out[t] = <int> B
    return out
