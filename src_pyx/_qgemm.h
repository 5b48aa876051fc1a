/* int8 GEMMs of the quantized (inference-only) kernels, src_pyx/quant.pyx.
 *
 * C[m, n] (+)= bias[n] + (sa[m] * sw[n]) * sum_k (a[m, k] - 128) * w[n, k]
 *
 * a is u8 (an activation row quantized per row, symmetric, shifted by 128 so that it is
 * unsigned: vpdpbusd multiplies unsigned by signed bytes), w is s8 (a weight quantized per
 * output channel, symmetric). The shift is taken back with the column sums of w:
 * sum_k (a - 128) w = sum_k a w - 128 colsum[n].
 *
 * Packed layout of w (N outputs, K inputs): K is padded with zeros to Kp = 4 * Kq, N to a
 * multiple of 16; block nb of 16 outputs holds, for each group kq of 4 inputs, 16 x 4 bytes:
 * p[((nb * Kq + kq) * 16 + lane) * 4 + r] = w[16 nb + lane, 4 kq + r]. One 64-byte load is
 * then the right operand of one vpdpbusd (16 lanes, 4 products each), and the left one is 4
 * bytes of a broadcast.
 *
 * Three paths give the same integers (the sums are exact in int32: |sum| <= 255 * 127 * K),
 * and the same float epilogue, in the same order: the AVX-512 VNNI one (vpdpbusd on 512 bits)
 * where the CPU has it and fr_qgemm_vnni_ok() says so, the AVX-VNNI one (vpdpbusd on 256 bits,
 * the same packed layout) where fr_qgemm_avxvnni_ok() does, the portable C one everywhere
 * else.
 * The module is compiled with -ffp-contract=off so neither epilogue is fused differently.
 */
#ifndef FASTRNN_QGEMM_H
#define FASTRNN_QGEMM_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define FR_HAVE_VNNI_CODE 1
#else
#define FR_HAVE_VNNI_CODE 0
#endif

static inline int fr_qgemm_vnni_ok(void)
{
#if FR_HAVE_VNNI_CODE
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vnni");
#else
    return 0;
#endif
}

/* AVX-VNNI: vpdpbusd on 256-bit vectors, without AVX-512 (Intel's client cores from Alder Lake,
 * the E-cores, AMD from Zen 5). GCC knows the target from version 11. */
#if FR_HAVE_VNNI_CODE && (defined(__clang__) || __GNUC__ >= 11)
#define FR_HAVE_AVXVNNI_CODE 1
#else
#define FR_HAVE_AVXVNNI_CODE 0
#endif

static inline int fr_qgemm_avxvnni_ok(void)
{
#if FR_HAVE_AVXVNNI_CODE
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("avxvnni");
#else
    return 0;
#endif
}

/* Pack w (N, K) row-major s8 as described above into p (Np * Kp bytes, Np = 16 ceil(N/16))
 * and write colsum[n] (Np ints, 0 for padding). */
static inline void fr_qpack(Py_ssize_t N, Py_ssize_t K, const int8_t *w, int8_t *p,
                            int32_t *colsum)
{
    Py_ssize_t Kq = (K + 3) / 4, NB = (N + 15) / 16;
    memset(p, 0, (size_t) (NB * 16 * Kq * 4));
    for (Py_ssize_t n = 0; n < NB * 16; n++) {
        int32_t sum = 0;
        for (Py_ssize_t k = 0; k < K && n < N; k++) {
            int8_t v = w[n * K + k];
            sum += v;
            p[(((n / 16) * Kq + k / 4) * 16 + n % 16) * 4 + k % 4] = v;
        }
        colsum[n] = sum;
    }
}

static inline float fr_qepilogue(int32_t acc, int32_t colsum, float sa, float sw,
                                 const float *bias, Py_ssize_t n, float old, int add)
{
    float v = (sa * sw) * (float) (acc - 128 * colsum);
    if (bias != NULL)
        v = v + bias[n];
    return add ? old + v : v;
}

/* Blocks [nb0, nb1) of 16 outputs, rows [0, M). */
static inline void fr_qgemm_c(Py_ssize_t M, Py_ssize_t nb0, Py_ssize_t nb1, Py_ssize_t Kq,
                              const uint8_t *a, Py_ssize_t lda, const float *sa, const int8_t *p,
                              const int32_t *colsum, const float *sw, const float *bias,
                              float *c, Py_ssize_t ldc, int add)
{
    int32_t acc[16];
    for (Py_ssize_t m = 0; m < M; m++) {
        const uint8_t *ar = a + m * lda;
        for (Py_ssize_t nb = nb0; nb < nb1; nb++) {
            const int8_t *pb = p + nb * Kq * 64;
            for (int l = 0; l < 16; l++)
                acc[l] = 0;
            for (Py_ssize_t kq = 0; kq < Kq; kq++) {
                const uint8_t *a4 = ar + 4 * kq;
                const int8_t *w4 = pb + kq * 64;
                for (int l = 0; l < 16; l++)
                    acc[l] += (int32_t) a4[0] * w4[4 * l] + (int32_t) a4[1] * w4[4 * l + 1] +
                              (int32_t) a4[2] * w4[4 * l + 2] + (int32_t) a4[3] * w4[4 * l + 3];
            }
            for (int l = 0; l < 16; l++) {
                Py_ssize_t n = nb * 16 + l;
                float *cp = c + m * ldc + n;
                *cp = fr_qepilogue(acc[l], colsum[n], sa[m], sw[n], bias, n, *cp, add);
            }
        }
    }
}

#if FR_HAVE_VNNI_CODE
#define FR_QT __attribute__((target("avx512f,avx512bw,avx512vnni")))

FR_QT static inline void fr_qstore16(__m512i acc, Py_ssize_t n, float sa, const int32_t *colsum,
                                     const float *sw, const float *bias, float *c, int add)
{
    __m512i cs = _mm512_slli_epi32(_mm512_loadu_si512((const void *) (colsum + n)), 7);
    __m512 v = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc, cs));
    v = _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(sa), _mm512_loadu_ps(sw + n)), v);
    if (bias != NULL)
        v = _mm512_add_ps(v, _mm512_loadu_ps(bias + n));
    if (add)
        v = _mm512_add_ps(_mm512_loadu_ps(c), v);
    _mm512_storeu_ps(c, v);
}

/* Up to 4 rows by up to 4 blocks of 16 outputs (_qgemm_tile.h): each 64-byte load of w feeds
 * MR vpdpbusd, and the tile stores its own results through fr_qstore16. */
#define FR_QTILE fr_qtile_4x4
#define FR_QMR 4
#define FR_QNR 4
#include "_qgemm_tile.h"
#define FR_QTILE fr_qtile_1x4
#define FR_QMR 1
#define FR_QNR 4
#include "_qgemm_tile.h"
#define FR_QTILE fr_qtile_4x1
#define FR_QMR 4
#define FR_QNR 1
#include "_qgemm_tile.h"
#define FR_QTILE fr_qtile_1x1
#define FR_QMR 1
#define FR_QNR 1
#include "_qgemm_tile.h"

FR_QT static void fr_qgemm_vnni(Py_ssize_t M, Py_ssize_t nb0, Py_ssize_t nb1, Py_ssize_t Kq,
                                const uint8_t *a, Py_ssize_t lda, const float *sa,
                                const int8_t *p, const int32_t *colsum, const float *sw,
                                const float *bias, float *c, Py_ssize_t ldc, int add)
{
    Py_ssize_t m0 = 0;
    while (m0 < M) {
        int mr = M - m0 >= 4 ? 4 : 1;
        const uint8_t *am = a + m0 * lda;
        float *cm = c + m0 * ldc;
        Py_ssize_t nb = nb0;
        for (; nb + 4 <= nb1; nb += 4) {
            if (mr == 4)
                fr_qtile_4x4(Kq, am, lda, p + nb * Kq * 64, sa + m0, colsum, sw, bias, cm, ldc,
                             nb * 16, add);
            else
                fr_qtile_1x4(Kq, am, lda, p + nb * Kq * 64, sa + m0, colsum, sw, bias, cm, ldc,
                             nb * 16, add);
        }
        for (; nb < nb1; nb++) {
            if (mr == 4)
                fr_qtile_4x1(Kq, am, lda, p + nb * Kq * 64, sa + m0, colsum, sw, bias, cm, ldc,
                             nb * 16, add);
            else
                fr_qtile_1x1(Kq, am, lda, p + nb * Kq * 64, sa + m0, colsum, sw, bias, cm, ldc,
                             nb * 16, add);
        }
        m0 += mr;
    }
}
#endif

#if FR_HAVE_AVXVNNI_CODE
#define FR_QT256 __attribute__((target("avx2,avxvnni")))

/* fr_qstore16's epilogue on 8 outputs, the same operations in the same order. */
FR_QT256 static inline void fr_qstore8(__m256i acc, Py_ssize_t n, float sa,
                                       const int32_t *colsum, const float *sw,
                                       const float *bias, float *c, int add)
{
    __m256i cs = _mm256_slli_epi32(_mm256_loadu_si256((const __m256i *) (colsum + n)), 7);
    __m256 v = _mm256_cvtepi32_ps(_mm256_sub_epi32(acc, cs));
    v = _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(sa), _mm256_loadu_ps(sw + n)), v);
    if (bias != NULL)
        v = _mm256_add_ps(v, _mm256_loadu_ps(bias + n));
    if (add)
        v = _mm256_add_ps(_mm256_loadu_ps(c), v);
    _mm256_storeu_ps(c, v);
}

#define FR_QTILE256 fr_qtile256_4
#define FR_QMR 4
#include "_qgemm_tile256.h"
#define FR_QTILE256 fr_qtile256_1
#define FR_QMR 1
#include "_qgemm_tile256.h"

FR_QT256 static void fr_qgemm_avxvnni(Py_ssize_t M, Py_ssize_t nb0, Py_ssize_t nb1,
                                      Py_ssize_t Kq, const uint8_t *a, Py_ssize_t lda,
                                      const float *sa, const int8_t *p, const int32_t *colsum,
                                      const float *sw, const float *bias, float *c,
                                      Py_ssize_t ldc, int add)
{
    Py_ssize_t m0 = 0;
    while (m0 < M) {
        int mr = M - m0 >= 4 ? 4 : 1;
        const uint8_t *am = a + m0 * lda;
        float *cm = c + m0 * ldc;
        for (Py_ssize_t nb = nb0; nb < nb1; nb++) {
            if (mr == 4)
                fr_qtile256_4(Kq, am, lda, p + nb * Kq * 64, sa + m0, colsum, sw, bias, cm, ldc,
                              nb * 16, add);
            else
                fr_qtile256_1(Kq, am, lda, p + nb * Kq * 64, sa + m0, colsum, sw, bias, cm, ldc,
                              nb * 16, add);
        }
        m0 += mr;
    }
}
#endif

/* The path isa selects (1: AVX-512 VNNI, 2: AVX-VNNI, 0: portable C); the caller checks
 * fr_qgemm_vnni_ok() / fr_qgemm_avxvnni_ok(). */
static inline void fr_qgemm(int isa, Py_ssize_t M, Py_ssize_t nb0, Py_ssize_t nb1,
                            Py_ssize_t Kq, const uint8_t *a, Py_ssize_t lda, const float *sa,
                            const int8_t *p, const int32_t *colsum, const float *sw,
                            const float *bias, float *c, Py_ssize_t ldc, int add)
{
#if FR_HAVE_VNNI_CODE
    if (isa == 1) {
        fr_qgemm_vnni(M, nb0, nb1, Kq, a, lda, sa, p, colsum, sw, bias, c, ldc, add);
        return;
    }
#endif
#if FR_HAVE_AVXVNNI_CODE
    if (isa == 2) {
        fr_qgemm_avxvnni(M, nb0, nb1, Kq, a, lda, sa, p, colsum, sw, bias, c, ldc, add);
        return;
    }
#endif
    fr_qgemm_c(M, nb0, nb1, Kq, a, lda, sa, p, colsum, sw, bias, c, ldc, add);
}

#endif
