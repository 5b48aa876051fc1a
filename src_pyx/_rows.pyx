"""Batch-row permutations of time-major arrays, on the kernels' OpenMP team.

A batch with ``lengths`` in any order runs the kernels on its rows sorted by length
(fastrnn.functional._Schedule): x and dy are gathered into that order and y and dx put back.
NumPy's ``take`` does that on the calling thread alone, while the second core waits; at T=200
B=32 (an RNN with H=128, whose steps run on one thread) the permutations took 0.67 ms of a 3.9
ms forward + backward. These split the time steps over ``n_threads`` threads of the same OpenMP
runtime as the kernels. Arrays are seen as bytes: a (T, B, F) array of any dtype is a (T, B,
F * itemsize) array of uint8, and a row is one memcpy.
"""

from cython.parallel cimport parallel, prange, threadid
from libc.string cimport memcpy


cdef int _check_index(const Py_ssize_t[::1] index, Py_ssize_t rows) except -1:
    cdef Py_ssize_t b
    for b in range(index.shape[0]):
        if index[b] < 0 or index[b] >= rows:
            raise ValueError(f"index[{b}] = {index[b]} is not a row of the {rows} rows")
    return 0


def gather_rows(const unsigned char[:, :, ::1] src not None,   # IN   (T, Bs, R)
                const Py_ssize_t[::1] index not None,           # IN   (B,) rows of src
                unsigned char[:, :, ::1] out not None,          # OUT  (T, B, R)
                int n_threads):
    """out[t, b] = src[t, index[b]] for every step t: ``np.take(src, index, axis=1, out=out)``,
    the steps shared by ``n_threads`` threads."""
    cdef Py_ssize_t T = src.shape[0], B = index.shape[0], R = src.shape[2], t, b
    if out.shape[0] != T or out.shape[1] != B or out.shape[2] != R:
        raise ValueError(f"out has shape {(out.shape[0], out.shape[1], out.shape[2])}, "
                         f"expected {(T, B, R)}")
    _check_index(index, src.shape[1])
    if T == 0 or B == 0 or R == 0:
        return
    with nogil:
        for t in prange(T, num_threads=max(1, n_threads), schedule="static"):
            for b in range(B):
                memcpy(&out[t, b, 0], &src[t, index[b], 0], R)


def permute_rows(unsigned char[:, :, ::1] a not None,   # INOUT (T, B, R)
                 const Py_ssize_t[::1] index not None,   # IN    (B,) a permutation of B
                 unsigned char[:, ::1] scratch not None,  # -     (n_threads, B * R)
                 int n_threads):
    """a[t] = a[t, index] in place for every step t (each thread copies a step's rows to its
    row of ``scratch`` first), the steps shared by ``n_threads`` threads."""
    cdef Py_ssize_t T = a.shape[0], B = a.shape[1], R = a.shape[2], t, b
    cdef int n = max(1, n_threads), k = 0
    if index.shape[0] != B:
        raise ValueError(f"index has {index.shape[0]} rows, expected {B}")
    if scratch.shape[0] < n or scratch.shape[1] < B * R:
        raise ValueError(f"scratch must be at least ({n}, {B * R})")
    _check_index(index, B)
    if T == 0 or B == 0 or R == 0:
        return
    with nogil, parallel(num_threads=n):
        k = threadid()
        for t in prange(T, schedule="static"):
            memcpy(&scratch[k, 0], &a[t, 0, 0], B * R)
            for b in range(B):
                memcpy(&a[t, b, 0], &scratch[k, index[b] * R], R)
