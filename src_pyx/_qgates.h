/* The float32 work of the int8 kernels (src_pyx/quant.pyx) besides the GEMMs: quantizing a row
 * of activations and the gate math of one row, compiled for AVX-512, AVX2 and the baseline.
 *
 * quant.pyx is built once for the baseline x86-64 (no variants as the cell kernels have), so its
 * loops ran 4 floats wide with a libm call per rounding, and the gate pass cost more than the
 * integer GEMMs (a forward of B = 16, H = 64 took twice the float32 kernels' time). Here each
 * function is cloned per instruction set (GCC's target_clones: the loader picks the best the
 * CPU runs) and the rounding is a plain nearbyintf that the wide clones compile to one
 * instruction. The arithmetic is the same in every clone (quant.pyx is compiled with
 * -ffp-contract=off, and _fastmath.h has no libm calls), so the results are the same bits
 * whichever clone runs, and the same on the VNNI and portable GEMM paths.
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

/* LSTM: i, f, o = sigmoid, g = tanh of ax + ah; c = f c + i g (in place); h = o tanh(c). */
FR_QCLONES static void fr_qlstm_row(const float *restrict ax, const float *restrict ah,
                                    float *restrict c, float *restrict h, Py_ssize_t j0,
                                    Py_ssize_t j1, Py_ssize_t Hp)
{
    for (Py_ssize_t j = j0; j < j1; j++) {
        float i_ = fr_sigmoidf(ax[j] + ah[j]);
        float f_ = fr_sigmoidf(ax[Hp + j] + ah[Hp + j]);
        float g_ = fr_tanhf(ax[2 * Hp + j] + ah[2 * Hp + j]);
        float o_ = fr_sigmoidf(ax[3 * Hp + j] + ah[3 * Hp + j]);
        float cj = f_ * c[j] + i_ * g_;
        c[j] = cj;
        h[j] = o_ * fr_tanhf(cj);
    }
}

/* GRU (reset after): r, z = sigmoid(ax + ah); n = tanh(ax_n + r (ah_n + b_hn));
 * h = (1 - z) n + z h_prev. */
FR_QCLONES static void fr_qgru_row(const float *restrict ax, const float *restrict ah,
                                   const float *restrict b_hn, const float *restrict hp,
                                   float *restrict h, Py_ssize_t j0, Py_ssize_t j1, Py_ssize_t Hp)
{
    for (Py_ssize_t j = j0; j < j1; j++) {
        float r_ = fr_sigmoidf(ax[j] + ah[j]);
        float z_ = fr_sigmoidf(ax[Hp + j] + ah[Hp + j]);
        float n_ = fr_tanhf(ax[2 * Hp + j] + r_ * (ah[2 * Hp + j] + b_hn[j]));
        h[j] = (1 - z_) * n_ + z_ * hp[j];
    }
}

/* Elman RNN: h = tanh(ax + ah), or max(ax + ah, 0) with relu. */
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
