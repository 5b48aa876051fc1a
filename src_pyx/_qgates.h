/* The float32 work of the int8 kernels (src_pyx/quant.pyx) besides the GEMMs: quantizing a row
 * of activations and the gate math of one row, compiled for AVX-512, AVX2 and the baseline.
 *
 * quant.pyx is built once for the baseline x86-64 (no variants as the cell kernels have), so its
 * loops ran 4 floats wide with a libm call per rounding, and the gate pass cost more than the
 * integer GEMMs (a forward of B = 16, H = 64 took twice the float32 kernels' time). Here each
 * function is cloned per instruction set (GCC's target_clones: the loader picks the best the
 * CPU runs) and the rounding is a plain nearbyintf that the wide clones compile to one
 * instruction. The arithmetic is the same in every clone (quant.pyx is compiled with
 * -ffp-contract=off, _fastmath.h has no libm calls, and fr_qexpm1f's explicit fused
 * multiply-adds are one instruction in the AVX-512 and AVX2 clones and a call of libm's
 * correctly rounded fmaf in the baseline one), so the results are the same bits whichever
 * clone runs, and the same on every integer GEMM path (_qgemm.h).
 *
 * Gate blocks of a row are Hp apart (the int8 layout, H padded to 16); ax = W_ih x + bias,
 * ah = W_hh h_{t-1}, both (NG * Hp) floats; units [j0, j1).
 */
#ifndef FASTRNN_QGATES_H
#define FASTRNN_QGATES_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "_fastmath.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 8
#define FR_QCLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define FR_QCLONES
#endif

typedef float fr_qv16 __attribute__((vector_size(64)));
typedef int32_t fr_qi16 __attribute__((vector_size(64)));

/* Quantize M rows of K floats (row stride lda) to u8 rows of Kp bytes (padding: 128, i.e.
 * zero), with per-row scales s[m] = max|a[m]| / 127 (1 for a zero row). */
FR_QCLONES static void fr_quantize_rows(Py_ssize_t M, Py_ssize_t K, const float *a,
                                        Py_ssize_t lda, Py_ssize_t Kp, uint8_t *q, float *s)
{
    for (Py_ssize_t m = 0; m < M; m++) {
        const float *row = a + m * lda;
        uint8_t *out = q + m * Kp;
        /* max |a| in 16 lanes (GCC vector extensions: one AVX-512 register, two AVX2 or four
         * SSE ones), then over the lanes: a max is exact in any order (|a| >= +0, and a NaN
         * loses every comparison, as in a running max), so this is the row's running max */
        fr_qv16 part = {0.0f};
        float amax = 0.0f;
        Py_ssize_t k0 = 0;
        for (; k0 + 16 <= K; k0 += 16) {
            fr_qv16 v;
            memcpy(&v, row + k0, sizeof v);
            v = (fr_qv16) ((fr_qi16) v & 0x7fffffff);
            fr_qi16 more = (fr_qi16) (v > part);
            part = (fr_qv16) (((fr_qi16) v & more) | ((fr_qi16) part & ~more));
        }
        for (int l = 0; l < 16; l++)
            amax = part[l] > amax ? part[l] : amax;
        for (; k0 < K; k0++) {
            float v = fabsf(row[k0]);
            amax = v > amax ? v : amax;
        }
        float scale = amax > 0.0f ? amax / 127.0f : 1.0f;
        float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
        for (Py_ssize_t k = 0; k < K; k++) {
            float v = nearbyintf(row[k] * inv);
            v = v > 127.0f ? 127.0f : (v < -127.0f ? -127.0f : v);
            out[k] = (uint8_t) ((int) v + 128);
        }
        for (Py_ssize_t k = K; k < Kp; k++)
            out[k] = 128;
        s[m] = scale;
    }
}

/* The gate math below is cheaper than the float32 kernels' (_fastmath.h): every activation
 * comes from one m(x) = e^x - 1 of an argument clamped to [-40, 40] (fr_qclamp: -a for
 * sigmoid(a), -2b for tanh(b)), and the divisions of a cell are merged:
 *   sigmoid(a) = 1 / (2 + m(-a)), tanh(b) = -m(-2b) / (2 + m(-2b)),
 *   sigmoid(a) tanh(b) = -m(-2b) / ((2 + m(-a)) (2 + m(-2b))): one division,
 * both factors at most 1 + e^40, the product far from overflow. m is accurate relative to
 * itself near 0, where 1 - e^-2b would cancel (an error of 1e-7 absolute there flips the
 * rounding of small quantized values of h at the next step). The clamps saturate exactly in
 * float32 (1 / (1 + e^-40) rounds to 1) and keep NaN (a comparison with NaN is false).
 * The LSTM's gates cost 5 m and 3 divisions a unit where the float path's cost 5 exp, two
 * tanh polynomials beside them and 5 divisions, and took 38% of an int8 forward at T = 1000,
 * B = 16, H = 128. */
#define FR_QCLAMP 40.0f

static inline float fr_qclamp(float x)
{
    x = x > FR_QCLAMP ? FR_QCLAMP : x;
    return x < -FR_QCLAMP ? -FR_QCLAMP : x;
}

/* e^x - 1 for x in [-40, 40] (valid to +-87; NaN propagates): _fastmath.h's reduction
 * x = n ln2 + r, |r| <= ln2 / 2, then e^r - 1 = r q(r) (q a degree-5 minimax fit: relative
 * error 1.1e-8, 1.3e-7 evaluated in float32) and e^x - 1 = 2^n (e^r - 1) + (2^n - 1), which is
 * r q(r) itself when n = 0. Each Horner step is one fused multiply-add (fmaf: rounded once,
 * the same in every clone), which halves the polynomial's chain of dependent operations (int8
 * forwards 5-8% faster at medium and longseq: CHANGELOG). */
static inline float fr_qexpm1f(float x)
{
    const float log2e = 1.44269504088896341f;
    const float ln2_hi = 0.693359375f, ln2_lo = -2.12194440e-4f;
    const float shifter = 12582912.0f; /* 1.5 * 2^23: adding it rounds to an integer */
    union { int32_t i; float f; } tb, pow2n;
    float t = __builtin_fmaf(x, log2e, shifter);
    float n = t - shifter;
    float r = __builtin_fmaf(-n, ln2_hi, x);
    r = __builtin_fmaf(-n, ln2_lo, r);
    float q = 1.388887293e-03f;
    q = __builtin_fmaf(q, r, 8.369068615e-03f);
    q = __builtin_fmaf(q, r, 4.166713730e-02f);
    q = __builtin_fmaf(q, r, 1.666650623e-01f);
    q = __builtin_fmaf(q, r, 4.999999702e-01f);
    q = __builtin_fmaf(q, r, 1.0f);
    tb.f = t;
    pow2n.i = (tb.i - 0x4B400000 + 127) << 23; /* 2^n, n in [-58, 58] */
    return __builtin_fmaf(pow2n.f, r * q, pow2n.f - 1.0f);
}

/* LSTM: i, f, o = sigmoid, g = tanh of ax + ah; c = f c + i g (in place); h = o tanh(c). */
FR_QCLONES static void fr_qlstm_row(const float *restrict ax, const float *restrict ah,
                                    float *restrict c, float *restrict h, Py_ssize_t j0,
                                    Py_ssize_t j1, Py_ssize_t Hp)
{
    for (Py_ssize_t j = j0; j < j1; j++) {
        float mi = fr_qexpm1f(-fr_qclamp(ax[j] + ah[j]));
        float mf = fr_qexpm1f(-fr_qclamp(ax[Hp + j] + ah[Hp + j]));
        float mg = fr_qexpm1f(-fr_qclamp(2.0f * (ax[2 * Hp + j] + ah[2 * Hp + j])));
        float mo = fr_qexpm1f(-fr_qclamp(ax[3 * Hp + j] + ah[3 * Hp + j]));
        float cj = c[j] / (2.0f + mf) - mg / ((2.0f + mi) * (2.0f + mg));
        float mc = fr_qexpm1f(-fr_qclamp(2.0f * cj));
        c[j] = cj;
        h[j] = -mc / ((2.0f + mo) * (2.0f + mc));
    }
}

/* GRU (reset after): r, z = sigmoid(ax + ah); n = tanh(ax_n + r (ah_n + b_hn));
 * h = (1 - z) n + z h_prev with one division for both: with mz = m(-z') and mn = m(-2n') for
 * the arguments z' and n' of z and n, 1 - z = (1 + mz) / (2 + mz) and z = 1 / (2 + mz), so over
 * d = (2 + mz)(2 + mn), (1 - z) n = -(1 + mz) mn / d and z = (2 + mn) / d. */
FR_QCLONES static void fr_qgru_row(const float *restrict ax, const float *restrict ah,
                                   const float *restrict b_hn, const float *restrict hp,
                                   float *restrict h, Py_ssize_t j0, Py_ssize_t j1, Py_ssize_t Hp)
{
    for (Py_ssize_t j = j0; j < j1; j++) {
        float r_ = 1.0f / (2.0f + fr_qexpm1f(-fr_qclamp(ax[j] + ah[j])));
        float mz = fr_qexpm1f(-fr_qclamp(ax[Hp + j] + ah[Hp + j]));
        float a = ax[2 * Hp + j] + r_ * (ah[2 * Hp + j] + b_hn[j]);
        float mn = fr_qexpm1f(-fr_qclamp(2.0f * a));
        float inv = 1.0f / ((2.0f + mz) * (2.0f + mn));
        float z_ = (2.0f + mn) * inv; /* at most 1: z h_prev overflows only where h_prev does */
        h[j] = -(1.0f + mz) * mn * inv + z_ * hp[j];
    }
}

/* Elman RNN: h = tanh(ax + ah), or max(ax + ah, 0) with relu. The float kernels' tanh: one
 * activation a unit costs little beside the GEMMs, and fr_tanhf rounds correctly 92% of the
 * time on [-3, 3] against 66% for -m(-2b) / (2 + m(-2b)), whose extra rounding flips of h
 * showed as 5e-3 differences from the float64 oracle of the tests. */
FR_QCLONES static void fr_qrnn_row(const float *restrict ax, const float *restrict ah,
                                   float *restrict h, Py_ssize_t j0, Py_ssize_t j1, int relu)
{
    if (relu)
        for (Py_ssize_t j = j0; j < j1; j++) {
            float v = ax[j] + ah[j];
            h[j] = 0.0f > v ? 0.0f : v; /* NaN stays NaN, as the float kernels' relu */
        }
    else
        for (Py_ssize_t j = j0; j < j1; j++)
            h[j] = fr_tanhf(ax[j] + ah[j]);
}

#endif
