# Layer normalization (Ba, Kiros & Hinton 2016) for the cell kernels, header-only.
#
# LN(v; gain, bias) = gain * vhat + bias,  vhat = (v - mean(v)) * rstd,  rstd = 1 / sqrt(var(v) + eps)
# over the n features of one row, as fastrnn.reference._layer_norm computes it (two passes: the
# mean, then the mean of the squared deviations). Row sums accumulate in double whatever the
# element type, so a float32 row of a thousand features loses no more than its own rounding.
# A row is always summed by one thread in one order: results do not depend on the team size.

from cython cimport floating
from libc.math cimport sqrt

from _parallel cimport share
from _blocks cimport wide_block, wide_share


# Row sums go in LANES independent partial sums (summed in a fixed order at the end): the C
# compiler vectorizes them, where one accumulator would be a chain of dependent additions
# (it may not reorder floating-point sums by itself).
cdef enum:
    LANES = 8


cdef inline double row_sum(const floating* v, Py_ssize_t n) noexcept nogil:
    """sum_k v[k], in double."""
    cdef double acc[LANES]
    cdef Py_ssize_t k, u, n8 = n - n % LANES
    cdef double s = 0
    for u in range(LANES):
        acc[u] = 0
    for k in range(0, n8, 8):  # LANES
        for u in range(LANES):
            acc[u] += v[k + u]
    for k in range(n8, n):
        s += v[k]
    for u in range(LANES):
        s += acc[u]
    return s


cdef inline double row_sq_dev(const floating* v, Py_ssize_t n, double mean) noexcept nogil:
    """sum_k (v[k] - mean)^2, in double."""
    cdef double acc[LANES]
    cdef Py_ssize_t k, u, n8 = n - n % LANES
    cdef double s = 0, d
    for u in range(LANES):
        acc[u] = 0
    for k in range(0, n8, 8):  # LANES
        for u in range(LANES):
            d = v[k + u] - mean
            acc[u] += d * d
    for k in range(n8, n):
        d = v[k] - mean
        s += d * d
    for u in range(LANES):
        s += acc[u]
    return s


cdef inline void row_dot2(const floating* a, const floating* g, const floating* h, Py_ssize_t n,
                          double* s1, double* s2) noexcept nogil:
    """s1 = sum_k a[k] g[k],  s2 = sum_k a[k] g[k] h[k], in double."""
    cdef double acc1[LANES]
    cdef double acc2[LANES]
    cdef Py_ssize_t k, u, n8 = n - n % LANES
    cdef double t1 = 0, t2 = 0, p
    for u in range(LANES):
        acc1[u] = 0
        acc2[u] = 0
    for k in range(0, n8, 8):  # LANES
        for u in range(LANES):
            p = <double> a[k + u] * g[k + u]
            acc1[u] += p
            acc2[u] += p * h[k + u]
    for k in range(n8, n):
        p = <double> a[k] * g[k]
        t1 += p
        t2 += p * h[k]
    for u in range(LANES):
        t1 += acc1[u]
        t2 += acc2[u]
    s1[0] = t1
    s2[0] = t2


cdef inline floating ln_normalize(const floating* v, floating* vhat, Py_ssize_t n,
                                  double eps) noexcept nogil:
    """vhat = (v - mean(v)) * rstd over n entries (vhat may be v); returns rstd."""
    cdef Py_ssize_t k
    cdef double mean = row_sum(v, n) / n
    cdef floating mu = <floating> mean
    cdef floating rstd = <floating> (1.0 / sqrt(row_sq_dev(v, n, mean) / n + eps))
    for k in range(n):
        vhat[k] = (v[k] - mu) * rstd
    return rstd


cdef inline void ln_backward(const floating* dout, const floating* gain, const floating* vhat,
                             floating rstd, floating* dv, Py_ssize_t n) noexcept nogil:
    """dv = rstd * (dvhat - mean(dvhat) - vhat * mean(dvhat * vhat)),  dvhat = dout * gain.

    dv may be dout (in place)."""
    cdef Py_ssize_t k
    cdef double s1, s2
    cdef floating m1, m2
    row_dot2(dout, gain, vhat, n, &s1, &s2)
    m1 = <floating> (s1 / n)
    m2 = <floating> (s2 / n)
    for k in range(n):
        dv[k] = rstd * (dout[k] * gain[k] - m1 - vhat[k] * m2)


cdef inline void ln_backward_rows(Py_ssize_t T, Py_ssize_t B, const int* batch_sizes,
                                  Py_ssize_t G, const floating* dout, const floating* gain,
                                  const floating* vhat, const floating* rstd,
                                  Py_ssize_t rstd_stride, floating* dv, int size,
                                  int rank) noexcept nogil:
    """ln_backward of every row (t, b) of (T, B, G) arrays, rank's share of the T*B rows; rows
    past step t's batch size get dv = 0. rstd[(t * B + b) * rstd_stride] is the row's rstd."""
    cdef Py_ssize_t lo, hi, r, k
    share(T * B, size, rank, &lo, &hi)
    for r in range(lo, hi):
        if r % B < batch_sizes[r // B]:
            ln_backward(dout + r * G, gain, vhat + r * G, rstd[r * rstd_stride], dv + r * G, G)
        else:
            for k in range(G):
                dv[r * G + k] = 0


cdef inline void gain_grad(Py_ssize_t T, Py_ssize_t B, const int* batch_sizes, Py_ssize_t H,
                           int n_gates, const floating* dg, const floating* vhat,
                           floating* out, int size, int rank) noexcept nogil:
    """out[c] = sum over the active rows (t, b < batch_sizes[t]) of dg[t, b, c] * vhat[t, b, c],
    over rank's wide blocks of columns (each column summed in one fixed order); dg and vhat are
    (T, B, n_gates * H). Inactive rows are skipped, not multiplied: their vhat is never written."""
    cdef Py_ssize_t G = n_gates * H
    cdef Py_ssize_t lo, hi, blk, c0, c1, t, b, c, o
    wide_share(H, n_gates, size, rank, &lo, &hi)
    for blk in range(lo, hi):
        wide_block(H, n_gates, blk, &c0, &c1)
        for c in range(c0, c1):
            out[c] = 0
        for t in range(T):
            for b in range(batch_sizes[t]):
                o = (t * B + b) * G
                for c in range(c0, c1):
                    out[c] += dg[o + c] * vhat[o + c]
