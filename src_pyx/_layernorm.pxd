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
