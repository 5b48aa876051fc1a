/* The row sums of layer normalization (_layernorm.pxd), float32 and float64.
 *
 * Each sum goes in 16 lanes (lane u adds the terms k = u mod 16), then the lanes are added in
 * order 0..15, then the n mod 16 last terms: the same arithmetic whatever the vector width the
 * compiler targets, and one fixed order for a row whatever the thread count. The lanes are one
 * GCC vector variable, not an array: GCC keeps an array in memory and the loop then waits on a
 * store and a load per term (measured: row_dot2 as a Cython array of lanes took 60% of the
 * layer-norm LSTM's backward gate pass). */
#ifndef FR_LAYERNORM_H
#define FR_LAYERNORM_H

#include <stddef.h>
#include <string.h>

#define FR_LN_DEFINE(T, SUF)                                                                     \
    typedef T fr_lanes_##SUF __attribute__((vector_size(16 * sizeof(T))));                      \
                                                                                                 \
    static inline fr_lanes_##SUF fr_load_##SUF(const T *p)                                       \
    {                                                                                            \
        fr_lanes_##SUF v;                                                                        \
        memcpy(&v, p, sizeof(v));                                                                \
        return v;                                                                                \
    }                                                                                            \
                                                                                                 \
    static inline T fr_fold_##SUF(fr_lanes_##SUF acc)                                            \
    {                                                                                            \
        T s = 0;                                                                                 \
        int u;                                                                                   \
        for (u = 0; u < 16; u++)                                                                 \
            s += acc[u];                                                                         \
        return s;                                                                                \
    }                                                                                            \
                                                                                                 \
    /* sum_k v[k] */                                                                             \
    static inline T fr_row_sum_##SUF(const T *v, ptrdiff_t n)                                    \
    {                                                                                            \
        fr_lanes_##SUF acc = {0};                                                                \
        ptrdiff_t k = 0;                                                                         \
        T s;                                                                                     \
        for (; k + 16 <= n; k += 16)                                                             \
            acc += fr_load_##SUF(v + k);                                                         \
        s = fr_fold_##SUF(acc);                                                                  \
        for (; k < n; k++)                                                                       \
            s += v[k];                                                                           \
        return s;                                                                                \
    }                                                                                            \
                                                                                                 \
    /* sum_k (v[k] - mean)^2 */                                                                  \
    static inline T fr_row_sq_dev_##SUF(const T *v, ptrdiff_t n, T mean)                         \
    {                                                                                            \
        fr_lanes_##SUF acc = {0}, d;                                                             \
        ptrdiff_t k = 0;                                                                         \
        T s, e;                                                                                  \
        for (; k + 16 <= n; k += 16) {                                                           \
            d = fr_load_##SUF(v + k) - mean;                                                     \
            acc += d * d;                                                                        \
        }                                                                                        \
        s = fr_fold_##SUF(acc);                                                                  \
        for (; k < n; k++) {                                                                     \
            e = v[k] - mean;                                                                     \
            s += e * e;                                                                          \
        }                                                                                        \
        return s;                                                                                \
    }                                                                                            \
                                                                                                 \
    /* s1 = sum_k a[k] g[k],  s2 = sum_k a[k] g[k] h[k] */                                       \
    static inline void fr_row_dot2_##SUF(const T *a, const T *g, const T *h, ptrdiff_t n,       \
                                         T *s1, T *s2)                                           \
    {                                                                                            \
        fr_lanes_##SUF acc1 = {0}, acc2 = {0}, p;                                                \
        ptrdiff_t k = 0;                                                                         \
        T t1, t2, q;                                                                             \
        for (; k + 16 <= n; k += 16) {                                                           \
            p = fr_load_##SUF(a + k) * fr_load_##SUF(g + k);                                     \
            acc1 += p;                                                                           \
            acc2 += p * fr_load_##SUF(h + k);                                                    \
        }                                                                                        \
        t1 = fr_fold_##SUF(acc1);                                                                \
        t2 = fr_fold_##SUF(acc2);                                                                \
        for (; k < n; k++) {                                                                     \
            q = a[k] * g[k];                                                                     \
            t1 += q;                                                                             \
            t2 += q * h[k];                                                                      \
        }                                                                                        \
        *s1 = t1;                                                                                \
        *s2 = t2;                                                                                \
    }

FR_LN_DEFINE(float, f)
FR_LN_DEFINE(double, d)

#undef FR_LN_DEFINE

#endif
