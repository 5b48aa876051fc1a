/* One VNNI tile of _qgemm.h, instantiated per shape: the including file defines FR_QTILE (the
 * name), FR_QMR (rows: 1 or 4) and FR_QNR (blocks of 16 outputs: 1 or 4); all three are
 * undefined at the end.
 *
 * c[i, n + 16 j + l] (+)= epilogue(sum_kq a[i, 4 kq : 4 kq + 4] . p_j[kq, l, :]) for the
 * FR_QMR rows of a (lda apart) and the FR_QNR packed blocks from p (Kq * 64 bytes apart). The
 * accumulators are named variables, not an array: GCC keeps an array of vectors in memory, and
 * every vpdpbusd then waits on a load and a store of its accumulator. */
FR_QT static void FR_QTILE(Py_ssize_t Kq, const uint8_t *a, Py_ssize_t lda, const int8_t *p,
                           const float *sa, const int32_t *colsum, const float *sw,
                           const float *bias, float *c, Py_ssize_t ldc, Py_ssize_t n, int add)
{
#if FR_QMR == 4
#define FR_QROWS(X) X(0) X(1) X(2) X(3)
#define FR_QEACH_ROW(X, j) X(0, j) X(1, j) X(2, j) X(3, j)
#else
#define FR_QROWS(X) X(0)
#define FR_QEACH_ROW(X, j) X(0, j)
#endif
#if FR_QNR == 4
#define FR_QCOLS(X) X(0) X(1) X(2) X(3)
#define FR_QEACH(X) FR_QEACH_ROW(X, 0) FR_QEACH_ROW(X, 1) FR_QEACH_ROW(X, 2) FR_QEACH_ROW(X, 3)
#else
#define FR_QCOLS(X) X(0)
#define FR_QEACH(X) FR_QEACH_ROW(X, 0)
#endif
#define FR_QDECLARE(i, j) __m512i acc##i##j = _mm512_setzero_si512();
#define FR_QLOAD(j)                                                                            \
    const __m512i w##j = _mm512_loadu_si512((const void *) (p + (j * Kq + kq) * 64));
#define FR_QBCAST(i)                                                                           \
    int32_t a4##i;                                                                             \
    memcpy(&a4##i, a + i * lda + 4 * kq, 4);                                                   \
    const __m512i av##i = _mm512_set1_epi32(a4##i);
#define FR_QDOT(i, j) acc##i##j = _mm512_dpbusd_epi32(acc##i##j, av##i, w##j);
#define FR_QSTORE(i, j)                                                                        \
    fr_qstore16(acc##i##j, n + 16 * j, sa[i], colsum, sw, bias, c + i * ldc + n + 16 * j, add);

    FR_QEACH(FR_QDECLARE)
    for (Py_ssize_t kq = 0; kq < Kq; kq++) {
        FR_QCOLS(FR_QLOAD)
        FR_QROWS(FR_QBCAST)
        FR_QEACH(FR_QDOT)
    }
    FR_QEACH(FR_QSTORE)

#undef FR_QROWS
#undef FR_QEACH_ROW
#undef FR_QCOLS
#undef FR_QEACH
#undef FR_QDECLARE
#undef FR_QLOAD
#undef FR_QBCAST
#undef FR_QDOT
#undef FR_QSTORE
}

#undef FR_QTILE
#undef FR_QMR
#undef FR_QNR
