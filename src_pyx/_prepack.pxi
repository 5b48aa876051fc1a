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
