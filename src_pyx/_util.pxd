# Helpers shared by the cell kernels, header-only.

from cython cimport floating
from libc.string cimport memset


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
