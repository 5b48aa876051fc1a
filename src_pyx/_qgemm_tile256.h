/* One AVX-VNNI tile of _qgemm.h (256-bit vpdpbusd), instantiated per height: the including
 * file defines FR_QTILE256 (the name) and FR_QMR (rows: 1 or 4); both are undefined at the end.
 *
 * c[i, n + l] (+)= epilogue(sum_kq a[i, 4 kq : 4 kq + 4] . p[kq, l, :]) for l < 16, the FR_QMR
 * rows of a (lda apart) and one packed block of 16 outputs, read as two 32-byte halves (lanes
 * 0-7 and 8-15: the AVX-512 path's layout, so the same packed weights serve both). One block
 * a tile: 4 rows x 2 halves of accumulators, 2 of weights and 4 broadcasts fill 14 of AVX2's
 * 16 vector registers. The accumulators are named variables (see _qgemm_tile.h). */
FR_QT256 static void FR_QTILE256(Py_ssize_t Kq, const uint8_t *a, Py_ssize_t lda,
                                 const int8_t *p, const float *sa, const int32_t *colsum,
                                 const float *sw, const float *bias, float *c, Py_ssize_t ldc,
                                 Py_ssize_t n, int add)
{
#if FR_QMR == 4
#define FR_QROWS(X) X(0) X(1) X(2) X(3)
#else
#define FR_QROWS(X) X(0)
#endif
#define FR_QDECLARE(i)                                                                         \
    __m256i lo##i = _mm256_setzero_si256();                                                    \
    __m256i hi##i = _mm256_setzero_si256();
#define FR_QDOT(i)                                                                             \
    {                                                                                          \
        int32_t a4;                                                                            \
        memcpy(&a4, a + i * lda + 4 * kq, 4);                                                  \
        const __m256i av = _mm256_set1_epi32(a4);                                              \
        lo##i = _mm256_dpbusd_avx_epi32(lo##i, av, wlo);                                       \
        hi##i = _mm256_dpbusd_avx_epi32(hi##i, av, whi);                                       \
    }
#define FR_QSTORE(i)                                                                           \
    fr_qstore8(lo##i, n, sa[i], colsum, sw, bias, c + i * ldc + n, add);                       \
    fr_qstore8(hi##i, n + 8, sa[i], colsum, sw, bias, c + i * ldc + n + 8, add);

    FR_QROWS(FR_QDECLARE)
    for (Py_ssize_t kq = 0; kq < Kq; kq++) {
        const __m256i wlo = _mm256_loadu_si256((const __m256i *) (p + kq * 64));
        const __m256i whi = _mm256_loadu_si256((const __m256i *) (p + kq * 64 + 32));
        FR_QROWS(FR_QDOT)
    }
    FR_QROWS(FR_QSTORE)

#undef FR_QROWS
#undef FR_QDECLARE
#undef FR_QDOT
#undef FR_QSTORE
}

#undef FR_QTILE256
#undef FR_QMR
