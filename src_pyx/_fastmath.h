/* Branch-free exp, sigmoid and tanh (float32 and float64) that the C compiler can vectorize.
 *
 * libm's expf/tanhf are scalar calls; inside the per-step gate loops they cost more than the
 * recurrent GEMM. These are plain arithmetic (no calls, no tables), so gcc -O3 turns the gate
 * loops into SIMD code. Accuracy: a few ulp of float32 over the whole range; NaN propagates.
 *
 * exp(x) = 2^n * exp(r), n = round(x / ln 2), r = x - n ln 2 in [-ln2/2, ln2/2], exp(r) by a
 * degree-6 Taylor polynomial (remainder < 2e-8 relative on that interval). Outside the range of
 * normal numbers the result saturates as IEEE exp does: 0 below it (so sigmoid(-inf) is exactly 0
 * and 0 * inf stays NaN, as in NumPy), +inf above it. n is read from the bits of the rounding
 * shifter rather than converted from a float, so a NaN input is never cast to an integer (which
 * C leaves undefined); it propagates through the polynomial instead.
 */
#ifndef FASTRNN_FASTMATH_H
#define FASTRNN_FASTMATH_H

#include <math.h>
#include <stdint.h>

static inline float fr_expf(float x0)
{
    const float hi = 88.3762626647949f, lo = -87.3365447505531f;
    const float log2e = 1.44269504088896341f;
    const float ln2_hi = 0.693359375f, ln2_lo = -2.12194440e-4f;
    const float shifter = 12582912.0f; /* 1.5 * 2^23: adding it rounds to an integer */
    float x, t, n, r, p, e;
    /* unions, not memcpy: they keep the loop vectorizable */
    union { int32_t i; float f; } tb, pow2n;
    x = x0 > hi ? hi : x0;
    x = x < lo ? lo : x;
    t = x * log2e + shifter;
    n = t - shifter;
    r = x - n * ln2_hi;
    r = r - n * ln2_lo;
    p = 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    /* the low mantissa bits of t hold n: bits(t) - bits(shifter) = n, in [-126, 127] */
    tb.f = t;
    pow2n.i = (tb.i - 0x4B400000 + 127) << 23;
    e = p * pow2n.f;
    e = x0 < lo ? 0.0f : e;
    return x0 > hi ? (float) INFINITY : e;
}

static inline float fr_sigmoidf(float x)
{
    return 1.0f / (1.0f + fr_expf(-x));
}

/* tanh: an odd polynomial near 0 (where 1 - 2/(e^2x + 1) would cancel), else the exp form. */
static inline float fr_tanhf(float x)
{
    float ax = x < 0 ? -x : x;
    float z = x * x;
    float small = ((((-5.70498872745e-3f * z + 2.06390887954e-2f) * z - 5.37397155531e-2f) * z
                    + 1.33314422036e-1f) * z - 3.33332819422e-1f) * z * x + x;
    float big = 1.0f - 2.0f / (fr_expf(2.0f * ax) + 1.0f);
    big = x < 0 ? -big : big;
    return ax < 0.625f ? small : big;
}

/* float64: the same scheme, within 2e-15 relative of libm (exp 1 ulp; tanh worst near 0.1), so
 * that the float64 gate loops vectorize too (libm's exp/tanh are scalar calls). exp(r) by its
 * degree-13 Taylor polynomial on |r| <= ln2/2 (remainder < 5e-18 relative); 2^n is built from
 * the integer bits of the rounding shifter, so that no double -> int64 conversion (not
 * vectorizable before AVX-512) is needed. */
static inline double fr_exp(double x0)
{
    const double hi = 709.0, lo = -708.0;
    const double log2e = 1.4426950408889634074;
    const double ln2_hi = 6.93147180369123816490e-01, ln2_lo = 1.90821492927058770002e-10;
    const double shifter = 6755399441055744.0; /* 1.5 * 2^52 */
    double x, t, n, r, p, e;
    union { int64_t i; double d; } tb, pow2n;
    x = x0 > hi ? hi : x0;
    x = x < lo ? lo : x;
    t = x * log2e + shifter;
    n = t - shifter;
    r = x - n * ln2_hi;
    r = r - n * ln2_lo;
    p = 1.0 / 6227020800.0;
    p = p * r + 1.0 / 479001600.0;
    p = p * r + 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    /* the low mantissa bits of t hold n: bits(t) - bits(shifter) = n for |n| < 2^51 */
    tb.d = t;
    pow2n.i = (tb.i - (int64_t) 0x4338000000000000LL + 1023) << 52;
    e = p * pow2n.d;
    e = x0 < lo ? 0.0 : e;
    return x0 > hi ? INFINITY : e;
}

static inline double fr_sigmoid(double x)
{
    return 1.0 / (1.0 + fr_exp(-x));
}

/* tanh: its odd Taylor series for |x| < 0.1 (where 1 - 2/(e^2x + 1) would cancel; next term
 * < 2e-17 relative), else the exp form (relative error < 1e-15 for |x| >= 0.1). */
static inline double fr_tanh(double x)
{
    double ax = x < 0 ? -x : x;
    double z = x * x;
    double small = ((((((21844.0 / 6081075.0) * z - 1382.0 / 155925.0) * z + 62.0 / 2835.0) * z
                      - 17.0 / 315.0) * z + 2.0 / 15.0) * z - 1.0 / 3.0) * z * x + x;
    double big = 1.0 - 2.0 / (fr_exp(2.0 * ax) + 1.0);
    big = x < 0 ? -big : big;
    return ax < 0.1 ? small : big;
}

#endif
