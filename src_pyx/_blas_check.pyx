"""Test-only twin of the GEMM wrapper in _blas.pxd (tests/test_blas.py)."""

from cython cimport floating

from _blas cimport gemm


def gemm_check(bint trans_a, bint trans_b, double alpha, const floating[:, ::1] a,
               const floating[:, ::1] b, double beta, floating[:, ::1] c):
    """c := alpha * op(a) @ op(b) + beta * c, in place, through the kernels' gemm wrapper.

    Parameters
    ----------
    trans_a, trans_b : bool
        Use a.T (b.T) instead of a (b).
    alpha, beta : float
    a : ndarray of shape (m, k), or (k, m) when trans_a; C-contiguous float32 or float64
    b : ndarray of shape (k, n), or (n, k) when trans_b; same dtype
    c : ndarray of shape (m, n); same dtype, updated in place
    """
    cdef int m = c.shape[0], n = c.shape[1]
    cdef int k = a.shape[0] if trans_a else a.shape[1]
    cdef int kb = b.shape[1] if trans_b else b.shape[0]
    cdef int ma = a.shape[1] if trans_a else a.shape[0]
    cdef int nb = b.shape[0] if trans_b else b.shape[1]
    if k != kb or m != ma or n != nb:
        raise ValueError(f"gemm_check: shapes a ({a.shape[0]}, {a.shape[1]}), "
                         f"b ({b.shape[0]}, {b.shape[1]}) and c ({m}, {n}) do not fit for "
                         f"trans_a={trans_a}, trans_b={trans_b}")
    if m == 0 or n == 0 or k == 0:
        raise ValueError("gemm_check: empty products are not supported")
    with nogil:
        gemm(trans_a, trans_b, m, n, k, <floating> alpha, &a[0, 0], a.shape[1], &b[0, 0],
             b.shape[1], <floating> beta, &c[0, 0], n)
