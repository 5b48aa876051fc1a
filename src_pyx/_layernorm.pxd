# Layer normalization (Ba, Kiros & Hinton 2016) for the cell kernels, header-only.
#
# LN(v; gain, bias) = gain * vhat + bias,  vhat = (v - mean(v)) * rstd,
# rstd = 1 / sqrt(var(v) + eps)
# over the n features of one row, as fastrnn.reference._layer_norm computes it (two passes: the
# mean, then the mean of the squared deviations). A row is always summed by one thread in one
# order, and so is each entry of the bias and gain gradients (block_sums): results do not depend
# on the team size.

from cython cimport floating
from libc.math cimport sqrt

from _blocks cimport Packed
from _parallel cimport share


# The layer-norm loops cut the batch rows among threads (lstm.pyx says why), in whole blocks of
# ROW_BLOCK rows.
cdef enum:
    ROW_BLOCK = 8


cdef inline void share_rows(Py_ssize_t B, int size, int rank, Py_ssize_t* b0,
                            Py_ssize_t* b1) noexcept nogil:
    """[b0, b1): rank's batch rows, whole blocks of ROW_BLOCK rows."""
    cdef Py_ssize_t lo, hi
    share((B + ROW_BLOCK - 1) // ROW_BLOCK, size, rank, &lo, &hi)
    b0[0] = min(lo * ROW_BLOCK, B)
    b1[0] = min(hi * ROW_BLOCK, B)


cdef inline Py_ssize_t run_end(Py_ssize_t r, Py_ssize_t e, const Packed* pk) noexcept nogil:
    """Where the GEMM call over rows [r, e) that starts at r ends: at e on the micro-kernels (an
    output row is the same sum in the same order whatever rows share the call), else at the end
    of r's block, so that BLAS sees the same call shapes whatever the team size."""
    if pk.data != NULL:
        return e
    return min(e, (r // ROW_BLOCK + 1) * ROW_BLOCK)


cdef extern from "_layernorm.h" nogil:
    # Row sums in 16 lanes (see _layernorm.h): vectorized, one fixed order per row.
    float fr_row_sum_f(const float* v, Py_ssize_t n)
    double fr_row_sum_d(const double* v, Py_ssize_t n)
    float fr_row_sq_dev_f(const float* v, Py_ssize_t n, float mean)
    double fr_row_sq_dev_d(const double* v, Py_ssize_t n, double mean)
    void fr_row_dot2_f(const float* a, const float* g, const float* h, Py_ssize_t n, float* s1,
                       float* s2)
    void fr_row_dot2_d(const double* a, const double* g, const double* h, Py_ssize_t n,
                       double* s1, double* s2)


cdef inline floating row_sum(const floating* v, Py_ssize_t n) noexcept nogil:
    """sum_k v[k]"""
    if floating is float:
        return fr_row_sum_f(v, n)
    else:
        return fr_row_sum_d(v, n)


cdef inline floating row_sq_dev(const floating* v, Py_ssize_t n, floating mean) noexcept nogil:
    """sum_k (v[k] - mean)^2"""
    if floating is float:
        return fr_row_sq_dev_f(v, n, mean)
    else:
        return fr_row_sq_dev_d(v, n, mean)


cdef inline void row_dot2(const floating* a, const floating* g, const floating* h, Py_ssize_t n,
                          floating* s1, floating* s2) noexcept nogil:
    """s1 = sum_k a[k] g[k],  s2 = sum_k a[k] g[k] h[k]"""
    if floating is float:
        fr_row_dot2_f(a, g, h, n, s1, s2)
    else:
        fr_row_dot2_d(a, g, h, n, s1, s2)


cdef inline floating ln_normalize(const floating* v, floating* vhat, Py_ssize_t n,
                                  double eps) noexcept nogil:
    """vhat = (v - mean(v)) * rstd over n entries (vhat may be v); returns rstd."""
    cdef Py_ssize_t k
    cdef floating mu = row_sum(v, n) / n
    cdef floating rstd = <floating> (1.0 / sqrt(row_sq_dev(v, n, mu) / n + eps))
    for k in range(n):
        vhat[k] = (v[k] - mu) * rstd
    return rstd


cdef inline void ln_backward(const floating* dout, const floating* gain, const floating* vhat,
                             floating rstd, floating* dv, Py_ssize_t n) noexcept nogil:
    """dv = rstd * (dvhat - mean(dvhat) - vhat * mean(dvhat * vhat)),  dvhat = dout * gain.

    dv may be dout (in place)."""
    cdef Py_ssize_t k
    cdef floating s1, s2, m1, m2
    row_dot2(dout, gain, vhat, n, &s1, &s2)
    m1 = s1 / n
    m2 = s2 / n
    for k in range(n):
        dv[k] = rstd * (dout[k] * gain[k] - m1 - vhat[k] * m2)


cdef inline void row_grads(const floating* dg, const floating* v1, const floating* v2,
                           floating* db, floating* dgain1, floating* dgain2,
                           Py_ssize_t n) noexcept nogil:
    """One row's terms of a bias and two gain gradients: db[k] += dg[k], dgain1[k] += dg[k]
    v1[k], and (unless v2 is NULL) dgain2[k] += dg[k] v2[k], k < n."""
    cdef Py_ssize_t k
    if v2 == NULL:
        for k in range(n):
            db[k] += dg[k]
            dgain1[k] += dg[k] * v1[k]
    else:
        for k in range(n):
            db[k] += dg[k]
            dgain1[k] += dg[k] * v1[k]
            dgain2[k] += dg[k] * v2[k]


# The bias and gain gradients sum over every step and row. The backward loops add a row's terms
# where its gate gradients are computed (still in cache, and the (T, B, G) gate gradients need
# not be kept for a pass after the loop), into sums of its block of ROW_BLOCK rows: a block is
# always one thread's (share_rows) and adds its rows in one order (steps from the last, rows
# ascending), then block_sums adds the blocks in order. The bits do not depend on the team size.
cdef inline Py_ssize_t n_row_blocks(Py_ssize_t B) noexcept nogil:
    """How many blocks of ROW_BLOCK rows B rows make."""
    return (B + ROW_BLOCK - 1) // ROW_BLOCK


cdef inline void block_sums(const floating* acc, Py_ssize_t stride, Py_ssize_t n_blocks,
                            Py_ssize_t off, Py_ssize_t n, floating* out, int size,
                            int rank) noexcept nogil:
    """out[k] = sum_blk acc[blk * stride + off + k], blocks in order, for rank's share of
    k < n (each k is one thread's; a barrier must separate the blocks' sums from this)."""
    cdef Py_ssize_t k, k0, k1, blk
    cdef floating s
    share(n, size, rank, &k0, &k1)
    for k in range(k0, k1):
        s = 0
        for blk in range(n_blocks):
            s += acc[blk * stride + off + k]
        out[k] = s
