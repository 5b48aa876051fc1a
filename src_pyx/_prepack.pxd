# Weights packed once for the forward's micro-kernels and reused between calls, header-only.
#
# Each thread of a forward's team packs its columns of W_hh and W_ih (_blocks.pxd: pack_nt,
# pack_nt_k) at the start of every call: 2 MB for an LSTM with I = H = 256, which costs more
# than one step's arithmetic. A Prepacked holds those panels for every rank of a team of
# `size` threads, packed by the cell module's prepack() (_prepack.pxi) with the same calls;
# the forward's `prepacked` operand (NULL: pack per call) hands them to the loop, which uses
# them when they were packed for its ISA, element size and team size, and packs its own
# otherwise. Same panels, same arithmetic: the results are bitwise those of a per-call pack.

from _blocks cimport Packed
from _rgemm cimport FR_ISA_NONE


cdef struct Prepacked:
    int isa          # micro-kernels they were packed for (the module's ISA then)
    int size         # team size (0 until packed)
    size_t elem      # sizeof(float) or sizeof(double)
    int capacity     # slots in hh / ih
    Packed* hh       # [capacity] rank r's panels of W_hh
    Packed* ih       # [capacity] rank r's panels of W_ih


cdef inline bint take_prepacked(const void* p, int isa, size_t elem, int size, int rank,
                                Packed* pk, Packed* pk_ih) noexcept nogil:
    """Copy rank's panels into pk / pk_ih if p fits this call (then the caller must not
    release them); False: the caller packs its own."""
    cdef const Prepacked* pp = <const Prepacked*> p
    if pp == NULL or pp.isa != isa or pp.elem != elem or pp.size != size:
        return False
    pk[0] = pp.hh[rank]
    pk_ih[0] = pp.ih[rank]
    return True


cdef extern from *:
    """
    static inline int fr_flip(int *p) { return __atomic_fetch_xor(p, 1, __ATOMIC_RELAXED); }
    """
    int fr_flip(int* p) nogil


cdef inline bint next_sweep(const void* p, int rank) noexcept nogil:
    """The direction of rank's next step_gates sweep over the panels of p (_blocks.pxd),
    alternating from call to call (False without p): the weights the last step read last are
    the ones still in cache."""
    cdef Prepacked* pp = <Prepacked*> p
    if pp == NULL:
        return False
    return fr_flip(&pp.hh[rank].sweep) != 0


# A plain inference forward (no lengths, no extension, T > 1) may instead split its batch rows
# over its team (StepKernel(rows=True), fastrnn.functional._step_rows): each thread runs every
# unit of its own rows over all T steps, with no barrier, reading the panels of a team of one,
# which the threads share read-only. The micro-kernels give every element the same bits
# whichever rows and columns a call covers (_rgemm.h), so the results are those of one thread.
cdef inline bint rows_fit(const void* p, int isa, size_t elem, Py_ssize_t T) noexcept nogil:
    """Whether a forward of T steps can split rows with the panels of p (else it runs on one
    thread)."""
    cdef const Prepacked* pp = <const Prepacked*> p
    return (T > 1 and pp != NULL and isa != FR_ISA_NONE and pp.isa == isa and pp.elem == elem
            and pp.size == 1)


cdef inline void rows_panels(const void* p, Packed* pk, Packed* pk_ih) noexcept nogil:
    """The team of one's panels of p, which every thread of a row split reads (the caller
    checked rows_fit)."""
    cdef const Prepacked* pp = <const Prepacked*> p
    pk[0] = pp.hh[0]
    pk_ih[0] = pp.ih[0]
