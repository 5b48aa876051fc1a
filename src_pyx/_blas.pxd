# Row-major GEMM over scipy's BLAS, header-only (every function is inline).
#
# BLAS is column-major; a row-major C = op(A) @ op(B) is the column-major C^T = op(B)^T @ op(A)^T,
# so the wrapper swaps the operands and m/n (the a.dot(b) = b.T.dot(a.T).T identity).

from cython cimport floating
from scipy.linalg.cython_blas cimport sgemm, dgemm

# scipy.linalg.cython_blas takes 32-bit Fortran integers. If scipy switches its Cython BLAS to
# ILP64, this typedef is the one line to change.
ctypedef int blas_int


cdef inline void gemm(bint trans_a, bint trans_b, blas_int m, blas_int n, blas_int k,
                      floating alpha, const floating* a, blas_int lda,
                      const floating* b, blas_int ldb, floating beta,
                      floating* c, blas_int ldc) noexcept nogil:
    """C := alpha * op(A) @ op(B) + beta * C, row-major, C is m x n and op(A) is m x k."""
    cdef char ta = b'T' if trans_a else b'N'
    cdef char tb = b'T' if trans_b else b'N'
    if m <= 0 or n <= 0 or k <= 0:
        return  # callers never pass empty products (Python handles zero-size inputs)
    if floating is float:
        sgemm(&tb, &ta, &n, &m, &k, &alpha, <float*> b, &ldb, <float*> a, &lda,
              &beta, c, &ldc)
    else:
        dgemm(&tb, &ta, &n, &m, &k, &alpha, <double*> b, &ldb, <double*> a, &lda,
              &beta, c, &ldc)


# Gate-block GEMM. Hidden units [j0, j1) own columns g*H + [j0, j1) of every gate block g of the
# (rows, n_gates * H) gate matrices, and rows g*H + [j0, j1) of the (n_gates * H, k) weights.
# One call per gate block, or a single call when [j0, j1) is all of H.
cdef inline void gemm_gates_nt(blas_int m, Py_ssize_t H, Py_ssize_t j0, Py_ssize_t j1,
                               int n_gates, blas_int k, const floating* a, blas_int lda,
                               const floating* w, floating beta, floating* c,
                               blas_int ldc) noexcept nogil:
    """C[:, blk] := A @ W[blk, :]^T + beta * C[:, blk] for the blocks blk = g*H + [j0, j1)."""
    cdef int g
    if j1 - j0 == H:
        gemm(False, True, m, n_gates * H, k, <floating> 1, a, lda, w, k, beta, c, ldc)
        return
    for g in range(n_gates):
        gemm(False, True, m, j1 - j0, k, <floating> 1, a, lda, w + (g * H + j0) * k, k, beta,
             c + g * H + j0, ldc)
