# Team helpers for the kernels' persistent parallel regions, header-only (see _parallel.h).
#
# A kernel's time loop runs in one OpenMP region of `size` threads; thread `rank` takes its share
# of fixed blocks of work (see _blocks.pxd) and synchronises once per step with fr_barrier_wait.
# run_team opens that region for every kernel: the kernel is a `part` function, called once per
# thread per kernel call with the cell's operand struct (_ops.pxd).

from cython.parallel cimport parallel

cdef extern from "_parallel.h" nogil:
    ctypedef struct fr_barrier:
        pass
    void fr_barrier_init(fr_barrier* b)
    void fr_barrier_wait(fr_barrier* b, int n)
    int fr_team_size()
    int fr_team_rank()


# Work is cut into blocks whose shapes depend on the problem only, never on the thread count, and
# threads take whole blocks. Every BLAS call then has the same shape and operands whatever the
# team size, so results are bitwise identical for 1, 2 or n threads (OpenBLAS picks kernels by
# call shape, and a row computed in calls of different shapes can round differently).

cdef inline Py_ssize_t unit_blocks(Py_ssize_t H) noexcept nogil:
    """How many blocks of hidden units the recurrent GEMMs are cut into (about 64 units each)."""
    return max(1, (H + 63) // 64)


cdef inline void block_span(Py_ssize_t H, Py_ssize_t n_blocks, Py_ssize_t first,
                            Py_ssize_t last, Py_ssize_t* j0, Py_ssize_t* j1) noexcept nogil:
    """[j0, j1): the units of blocks [first, last) when H units are cut into n_blocks blocks of
    a multiple of 16 units (a 64-byte line of floats: threads never share a line of a row)."""
    cdef Py_ssize_t width = ((H + n_blocks - 1) // n_blocks + 15) // 16 * 16
    j0[0] = min(first * width, H)
    j1[0] = min(last * width, H)


cdef inline void share(Py_ssize_t n, int size, int rank, Py_ssize_t* lo,
                       Py_ssize_t* hi) noexcept nogil:
    """[lo, hi): rank's contiguous share of n blocks."""
    lo[0] = n * rank // size
    hi[0] = n * (rank + 1) // size


cdef inline void batch_share(Py_ssize_t B, int size, int rank, Py_ssize_t* b0,
                             Py_ssize_t* b1) noexcept nogil:
    """[b0, b1): rank's contiguous share of B batch rows, in runs of 4 (a GEMM tile's height)
    where B allows, for kernels whose threads split rows instead of units."""
    share((B + 3) // 4, size, rank, b0, b1)
    b0[0] = min(4 * b0[0], B)
    b1[0] = min(4 * b1[0], B)


# A kernel's share of work for thread `rank` of `size`: ops is the cell's operand struct
# (_ops.pxd); tag is always NULL and only selects the element type (Cython specializes a fused
# function on its arguments, and the struct's pointers are void*, see _ops.pxd).
ctypedef void (*part_f32)(const void* ops, fr_barrier* bar, int size, int rank,
                          float* tag) noexcept nogil
ctypedef void (*part_f64)(const void* ops, fr_barrier* bar, int size, int rank,
                          double* tag) noexcept nogil
ctypedef fused part_fn:
    part_f32
    part_f64


cdef inline void run_team(part_fn part, const void* ops, Py_ssize_t H,
                          int n_threads) noexcept nogil:
    """Run part(ops, ...) on each thread of one parallel region of at most n_threads threads
    (no more than H's unit blocks), sharing one step barrier. One indirect call per thread per
    kernel call: the time loop and the gate math inside part are direct code."""
    run_threads(part, ops, min(n_threads, unit_blocks(H)))


cdef inline void run_threads(part_fn part, const void* ops, int n_threads) noexcept nogil:
    """run_team with the team's size already chosen (at most n_threads). A team of one runs on
    the calling thread without opening a parallel region (libgomp's fork and join of a team
    of one cost about as much as a small step's arithmetic)."""
    cdef fr_barrier bar
    cdef int size, rank
    fr_barrier_init(&bar)
    if n_threads <= 1:
        part(ops, &bar, 1, 0, NULL)
        return
    with parallel(num_threads=n_threads):
        size = fr_team_size()
        rank = fr_team_rank()
        part(ops, &bar, size, rank, NULL)
