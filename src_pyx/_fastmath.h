/* Branch-free float32 exp, sigmoid and tanh that the C compiler can vectorize.
 *
 * libm's expf/tanhf are scalar calls; inside the per-step gate loops they cost more than the
 * recurrent GEMM. These are plain arithmetic (no calls, no tables), so gcc -O3 turns the gate
 * loops into SIMD code. Accuracy: a few ulp of float32 over the whole range; NaN propagates.
 *
 * exp(x) = 2^n * exp(r), n = round(x / ln 2), r = x - n ln 2 in [-ln2/2, ln2/2], exp(r) by a
 * degree-6 Taylor polynomial (remainder < 2e-8 relative on that interval).
 */
#ifndef FASTRNN_FASTMATH_H
#define FASTRNN_FASTMATH_H

#include <stdint.h>

static inline float fr_expf(float x)
{
    const float hi = 88.3762626647949f, lo = -87.3365447505531f;
    const float log2e = 1.44269504088896341f;
    const float ln2_hi = 0.693359375f, ln2_lo = -2.12194440e-4f;
    const float shifter = 12582912.0f; /* 1.5 * 2^23: adding it rounds to an integer */
    float t, n, r, p;
    union { uint32_t u; float f; } pow2n; /* a union, not memcpy: keeps the loop vectorizable */
    x = x > hi ? hi : x;
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
    /* 2^n from the exponent bits; n is in [-126, 127] after the clamp */
    pow2n.u = (uint32_t) ((int32_t) n + 127) << 23;
    return p * pow2n.f;
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

#endif
