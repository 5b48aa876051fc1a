# Helpers shared by the cell kernels, header-only.

from cython cimport floating
from libc.string cimport memcpy, memset


cdef inline Py_ssize_t last_step(const int* batch_sizes, Py_ssize_t T, Py_ssize_t b) noexcept nogil:
    """The last step t at which row b is active (rows are sorted by decreasing length)."""
    cdef Py_ssize_t t = T - 1
    while t > 0 and batch_sizes[t] <= b:
        t -= 1
    return t


cdef inline void zero_rows(floating* a, Py_ssize_t first, Py_ssize_t last,
                           Py_ssize_t width) noexcept nogil:
    """a[first:last, :] = 0 for a row-major matrix of the given width."""
    if last > first:
        memset(a + first * width, 0, (last - first) * width * sizeof(floating))


cdef inline void col_sum(const floating* a, Py_ssize_t rows, Py_ssize_t cols,
                         floating* out) noexcept nogil:
    """out[j] = sum_i a[i, j]"""
    cdef Py_ssize_t i, j
    for j in range(cols):
        out[j] = 0
    for i in range(rows):
        for j in range(cols):
            out[j] += a[i * cols + j]


# The gate loops vectorize 16 units at a time, then 8; the last 1-7 units of a row's slice ran
# in scalar code, which for the sigmoids and tanhs costs as much per unit as a whole vector:
# an LSTM forward at H = 12 took 2.7x the time of one at H = 16, at H = 100 1.7x that at 96.
# The row functions run their last m % LANES units on copies padded to LANES units instead
# (tail_in, the loop on LANES units, tail_out): the same arithmetic, in vector code.
cdef enum:
    LANES = 16


cdef inline void tail_in(floating* buf, const floating* src, Py_ssize_t r, int blocks,
                         Py_ssize_t stride) noexcept nogil:
    """buf[k * LANES + [0, r)] = src[k * stride + [0, r)] for k < blocks; the other lanes 0."""
    cdef int k
    memset(buf, 0, blocks * LANES * sizeof(floating))
    for k in range(blocks):
        memcpy(buf + k * LANES, src + k * stride, r * sizeof(floating))


cdef inline void tail_out(floating* dst, const floating* buf, Py_ssize_t r, int blocks,
                          Py_ssize_t stride) noexcept nogil:
    """dst[k * stride + [0, r)] = buf[k * LANES + [0, r)] for k < blocks."""
    cdef int k
    for k in range(blocks):
        memcpy(dst + k * stride, buf + k * LANES, r * sizeof(floating))


cdef inline char* line_start(char* p) noexcept nogil:
    """p rounded up to a 64-byte cache line (allocate 64 bytes more). The kernels' threads
    write runs of 16 units of each row of the gates and states: from a line boundary, never
    the same line (fastrnn._workspace.empty does the same for the arrays it makes)."""
    return p + (64 - <size_t> p % 64) % 64
