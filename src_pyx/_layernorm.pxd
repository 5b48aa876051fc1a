# Layer normalization (Ba, Kiros & Hinton 2016) for the cell kernels, header-only.
#
# LN(v; gain, bias) = gain * vhat + bias,  vhat = (v - mean(v)) * rstd,
# rstd = 1 / sqrt(var(v) + eps)
# over the n features of one row, as fastrnn.reference._layer_norm computes it (two passes: the
# mean, then the mean of the squared deviations). A row is always summed by one thread in one
# order, and so is each column of the gain gradients (col_grads): results do not depend on the
# team size.

from cython cimport floating
from libc.math cimport sqrt


# Row sums go in LANES independent partial sums of the element type, added in a fixed order at
# the end: the C compiler vectorizes them, where one accumulator would be a chain of dependent
# additions (it may not reorder floating-point sums by itself). Each lane adds n / LANES terms,
# about what NumPy's pairwise sum of a row adds in sequence.
cdef enum:
    LANES = 16


cdef inline floating row_sum(const floating* v, Py_ssize_t n) noexcept nogil:
    """sum_k v[k]"""
    cdef floating acc[LANES]
    cdef Py_ssize_t k, u, nl = n - n % LANES
    cdef floating s = 0
    for u in range(LANES):
        acc[u] = 0
    for k in range(0, nl, 16):  # LANES
        for u in range(LANES):
            acc[u] += v[k + u]
    for u in range(LANES):
        s += acc[u]
    for k in range(nl, n):
        s += v[k]
    return s


cdef inline floating row_sq_dev(const floating* v, Py_ssize_t n, floating mean) noexcept nogil:
    """sum_k (v[k] - mean)^2"""
    cdef floating acc[LANES]
    cdef Py_ssize_t k, u, nl = n - n % LANES
    cdef floating s = 0, d
    for u in range(LANES):
        acc[u] = 0
    for k in range(0, nl, 16):  # LANES
        for u in range(LANES):
            d = v[k + u] - mean
            acc[u] += d * d
    for u in range(LANES):
        s += acc[u]
    for k in range(nl, n):
        d = v[k] - mean
        s += d * d
    return s


cdef inline void row_dot2(const floating* a, const floating* g, const floating* h, Py_ssize_t n,
                          floating* s1, floating* s2) noexcept nogil:
    """s1 = sum_k a[k] g[k],  s2 = sum_k a[k] g[k] h[k]"""
    cdef floating acc1[LANES]
    cdef floating acc2[LANES]
    cdef Py_ssize_t k, u, nl = n - n % LANES
    cdef floating t1 = 0, t2 = 0, p
    for u in range(LANES):
        acc1[u] = 0
        acc2[u] = 0
    for k in range(0, nl, 16):  # LANES
        for u in range(LANES):
            p = a[k + u] * g[k + u]
            acc1[u] += p
            acc2[u] += p * h[k + u]
    for u in range(LANES):
        t1 += acc1[u]
        t2 += acc2[u]
    for k in range(nl, n):
        p = a[k] * g[k]
        t1 += p
        t2 += p * h[k]
    s1[0] = t1
    s2[0] = t2


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


cdef inline void col_grads(Py_ssize_t n, Py_ssize_t H, Py_ssize_t j0, Py_ssize_t j1,
                           int n_gates, const floating* dg, const floating* vhat,
                           floating* db, floating* dgain) noexcept nogil:
    """For the gate columns c = g*H + [j0, j1) of one step's n rows (dg and vhat are (n, G),
    G = n_gates * H): dgain[c] += sum_b dg[b, c] vhat[b, c], and db[c] += sum_b dg[b, c] unless
    db is NULL. Called by the thread that owns units [j0, j1) at every step, from the last step
    to the first: each column is summed by one thread in one order, whatever the team size."""
    cdef Py_ssize_t G = n_gates * H, m = j1 - j0
    cdef Py_ssize_t b, k, o
    cdef int g
    for b in range(n):
        for g in range(n_gates):
            o = b * G + g * H + j0
            if db != NULL:
                for k in range(m):
                    db[g * H + j0 + k] += dg[o + k]
            for k in range(m):
                dgain[g * H + j0 + k] += dg[o + k] * vhat[o + k]


cdef inline void zero_cols(Py_ssize_t H, Py_ssize_t j0, Py_ssize_t j1, int n_gates,
                           floating* v) noexcept nogil:
    """v[g*H + [j0, j1)] = 0 for every gate g."""
    cdef Py_ssize_t k
    cdef int g
    for g in range(n_gates):
        for k in range(g * H + j0, g * H + j1):
            v[k] = 0
