/* The kernels' GEMMs: C[:m, :n] (+)= A[:m, :k] @ B[:k, :n] on register-blocked micro-kernels.
 *
 * Every time step multiplies the new hidden state (or gate gradient) by the same weight block.
 * A BLAS call re-packs that block on every step (14-22% of an LSTM step's cycles in the
 * profile); here each thread packs its block of W_hh (or W_ih) once per call, into panels of NR
 * columns stored k-major (panel[k * NR + c], zero-padded to NR), and the micro-kernels read the
 * panels straight from cache at every step. A is read in place, by rows (a row stride and a
 * k stride, so the transpose of a row-major matrix is read in place too). B may be read in place
 * as well (a row stride instead of panels); the weight gradients dG^T @ X, a few hundred rows of
 * the reduction at a time, copy both operands instead (_blocks.pxd: weight_grad_ld).
 *
 * The micro-kernels are compiled for AVX-512 and AVX2+FMA with target attributes and picked at
 * run time (fr_rgemm_pick), so a build for generic x86-64 still gets the wide kernels. On other
 * CPUs and compilers the kernels' BLAS path runs instead (fr_rgemm_pick returns 0).
 *
 * Each element of C is one fused multiply-add chain over each block of k (FR_KC_BYTES when k is
 * over FR_KC_MIN_BYTES, else all of k: fixed by k alone), the blocks added in increasing order,
 * whichever micro-kernel, tile position or thread computes it: results do not depend on the ISA
 * picked or on the thread count.
 */
#ifndef FASTRNN_RGEMM_H
#define FASTRNN_RGEMM_H

#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#if defined(__linux__)
#include <sys/mman.h>
#endif

/* Instruction sets of the micro-kernels; FR_ISA_NONE means "use BLAS". */
enum { FR_ISA_NONE = 0, FR_ISA_AVX2 = 1, FR_ISA_AVX512 = 2 };

#if (defined(__x86_64__) || defined(_M_X64)) && defined(__GNUC__) && !defined(__clang__) \
    && __GNUC__ >= 8
#define FR_HAVE_KERNELS 1
#else
#define FR_HAVE_KERNELS 0
#endif

/* The best instruction set of the micro-kernels this CPU runs, capped by `cap` (FR_ISA_*; -1:
 * no cap). */
static inline int fr_rgemm_pick(int cap)
{
#if FR_HAVE_KERNELS
    int best = FR_ISA_NONE;
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        best = FR_ISA_AVX2;
    if (__builtin_cpu_supports("avx512f"))
        best = FR_ISA_AVX512;
    return (cap >= 0 && cap < best) ? cap : best;
#else
    (void) cap;
    return FR_ISA_NONE;
#endif
}

/* The x86-64 micro-architecture level of this CPU (4: AVX-512, 3: AVX2, 0: lower, another
 * architecture, or a compiler that cannot tell): the variants of the kernels compiled with
 * -march=x86-64-v4 / -v3 run only at that level or above. */
static inline int fr_cpu_level(void)
{
#if FR_HAVE_KERNELS && __GNUC__ >= 12
    __builtin_cpu_init();
    if (__builtin_cpu_supports("x86-64-v4"))
        return 4;
    if (__builtin_cpu_supports("x86-64-v3"))
        return 3;
#endif
    return 0;
}

/* Panel width (columns) of the packed B for an instruction set and element size. */
static inline int fr_rgemm_nr(int isa, size_t elem)
{
    int lanes = (isa == FR_ISA_AVX512 ? 64 : 32) / (int) elem;
    return 2 * lanes;
}

/* Elements of a packed B of k rows and n columns. */
static inline size_t fr_rgemm_packed_size(int isa, size_t elem, ptrdiff_t k, ptrdiff_t n)
{
    ptrdiff_t nr = fr_rgemm_nr(isa, elem);
    return (size_t) (k * ((n + nr - 1) / nr) * nr);
}

/* Buffers of at least this many bytes are aligned to it and asked for transparent huge pages. */
#define FR_HUGE_BYTES ((size_t) 2 << 20)

/* An aligned buffer for packed panels (NULL when out of memory; free with free()).
 *
 * A call's packed weights are allocated and freed per call, 8 MB per thread and matrix at
 * H = 1024. glibc serves the worker threads' ones from a heap of their own arena that it unmaps
 * when they are freed, so every call of the kernel faults them in again, 4 KB at a time: the
 * second thread of DeepBench's H1024 B32 T25 LSTM took 3 ms to pack W_hh where the first, whose
 * main-arena memory is kept, took 0.5, and the first waited for it at the next barrier. Where
 * the system gives transparent huge pages on request (madvise mode), buffers of 2 MB or more
 * ask for them: one fault per 2 MB. */
static inline void *fr_rgemm_alloc(size_t bytes)
{
    void *p = NULL;
#if FR_HAVE_KERNELS
    const size_t align = bytes >= FR_HUGE_BYTES ? FR_HUGE_BYTES : 64;
    if (posix_memalign(&p, align, bytes ? bytes : 64) != 0)
        return NULL;
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (bytes >= FR_HUGE_BYTES)
        (void) madvise(p, bytes & ~(FR_HUGE_BYTES - 1), MADV_HUGEPAGE);
#endif
#else
    (void) bytes;
#endif
    return p;
}

/* Packing. B[k, c] is b[k * ldb + c] ("n": B is stored as is) or b[c * ldb + k] ("t": the
 * operand is the transpose of a row-major matrix, as W_hh^T in the forward step).
 *
 * A kernel call packs each weight matrix it multiplies (about 4 MB per matrix at H = 512), so
 * packing must run at close to memory speed or it shows in the profile: "n" copies B's rows as
 * they are stored; "t" moves 4 x 4 blocks (4 of W's rows by 4 of its columns) at a time, reading
 * 4 rows contiguously and writing 4 adjacent columns of 4 panel rows, with SSE shuffles for
 * float. (Copying one column of a panel per pass over a row of W, as before, wrote every element
 * to another cache line: 0.56 ms for H = 512's W_hh^T, now 0.17 ms.) */
#if defined(__SSE2__)
#include <xmmintrin.h>
/* panel rows kk..kk+3, columns c..c+3 := rows r[0..3] of W, columns kk..kk+3 */
#define FR_TR4_float(P, NR, R0, R1, R2, R3)                                                    \
    {                                                                                          \
        __m128 x0 = _mm_loadu_ps(R0), x1 = _mm_loadu_ps(R1);                                   \
        __m128 x2 = _mm_loadu_ps(R2), x3 = _mm_loadu_ps(R3);                                   \
        _MM_TRANSPOSE4_PS(x0, x1, x2, x3);                                                     \
        _mm_storeu_ps((P), x0);                                                                \
        _mm_storeu_ps((P) + (NR), x1);                                                         \
        _mm_storeu_ps((P) + 2 * (NR), x2);                                                     \
        _mm_storeu_ps((P) + 3 * (NR), x3);                                                     \
    }
#else
#define FR_TR4_float(P, NR, R0, R1, R2, R3) FR_TR4_ANY(P, NR, R0, R1, R2, R3)
#endif
#define FR_TR4_ANY(P, NR, R0, R1, R2, R3)                                                      \
    {                                                                                          \
        int i_;                                                                                \
        for (i_ = 0; i_ < 4; i_++) {                                                           \
            (P)[i_ * (NR)] = (R0)[i_];                                                         \
            (P)[i_ * (NR) + 1] = (R1)[i_];                                                     \
            (P)[i_ * (NR) + 2] = (R2)[i_];                                                     \
            (P)[i_ * (NR) + 3] = (R3)[i_];                                                     \
        }                                                                                      \
    }
#define FR_TR4_double FR_TR4_ANY

/* The panel of w <= nr of W's rows (from b) in 8 x 8 blocks with AVX shuffles (below, when the
 * micro-kernels are compiled); 0: not handled, the caller packs it in 4 x 4 blocks. */
static inline int fr_pack_t8_s(int isa, ptrdiff_t k, ptrdiff_t w, const float *b, ptrdiff_t ldb,
                               float *panel, ptrdiff_t nr);
static inline int fr_pack_t4_d(int isa, ptrdiff_t k, ptrdiff_t w, const double *b,
                               ptrdiff_t ldb, double *panel, ptrdiff_t nr);
#define FR_PACK_T8_float fr_pack_t8_s
#define FR_PACK_T8_double fr_pack_t4_d

#define FR_DEFINE_PACK(NAME, T)                                                               \
    static inline void NAME(int isa, int trans, ptrdiff_t k, ptrdiff_t n, const T *b,          \
                            ptrdiff_t ldb, T *p)                                               \
    {                                                                                          \
        const ptrdiff_t nr = fr_rgemm_nr(isa, sizeof(T));                                      \
        ptrdiff_t q, kk, c;                                                                    \
        if (!trans) { /* rows of w elements, contiguous on both sides */                      \
            for (q = 0; q < n; q += nr) {                                                      \
                const ptrdiff_t w = n - q < nr ? n - q : nr;                                   \
                for (kk = 0; kk < k; kk++) {                                                   \
                    T *dst = p + q * k + kk * nr;                                              \
                    for (c = 0; c < w; c++)                                                    \
                        dst[c] = b[kk * ldb + q + c];                                          \
                    for (; c < nr; c++)                                                        \
                        dst[c] = 0;                                                            \
                }                                                                              \
            }                                                                                  \
            return;                                                                            \
        }                                                                                      \
        for (q = 0; q < n; q += nr) {                                                          \
            const ptrdiff_t w = n - q < nr ? n - q : nr, w4 = w & ~(ptrdiff_t) 3;              \
            const ptrdiff_t k4 = k & ~(ptrdiff_t) 3;                                           \
            T *panel = p + q * k;                                                              \
            if (FR_PACK_T8_##T(isa, k, w, b + q * ldb, ldb, panel, nr))                       \
                continue;                                                                      \
            for (c = 0; c < w4; c += 4) { /* 4 of W's rows at a time */                        \
                const T *r0 = b + (q + c) * ldb, *r1 = r0 + ldb, *r2 = r1 + ldb;               \
                const T *r3 = r2 + ldb;                                                        \
                for (kk = 0; kk < k4; kk += 4)                                                 \
                    FR_TR4_##T(panel + kk * nr + c, nr, r0 + kk, r1 + kk, r2 + kk, r3 + kk)    \
                for (; kk < k; kk++) {                                                         \
                    panel[kk * nr + c] = r0[kk];                                               \
                    panel[kk * nr + c + 1] = r1[kk];                                           \
                    panel[kk * nr + c + 2] = r2[kk];                                           \
                    panel[kk * nr + c + 3] = r3[kk];                                           \
                }                                                                              \
            }                                                                                  \
            for (; c < w; c++)                                                                 \
                for (kk = 0; kk < k; kk++)                                                     \
                    panel[kk * nr + c] = b[(q + c) * ldb + kk];                                \
            for (kk = 0; kk < k; kk++) /* zero padding of a partial panel */                   \
                for (c = w; c < nr; c++)                                                       \
                    panel[kk * nr + c] = 0;                                                    \
        }                                                                                      \
    }

FR_DEFINE_PACK(fr_pack_s, float)
FR_DEFINE_PACK(fr_pack_d, double)

/* A transposed copy: dst[j * ldd + i] := src[i * lds + j] for i < rows, j < cols, and dst[j *
 * ldd + i] := 0 for rows <= i < ldd. The weight gradients dG^T @ X read their A operand as
 * the transpose of a block of dG whose rows are G = 4H floats apart: in place, every row of a
 * tile's k lay at that stride, 16 KB at H = 1024, all in the same few sets of L1 and L2, so
 * they came from L3 at every tile; the copy lays each row of A out contiguously. (It is the
 * "t" packing of one panel ldd columns wide.) */
#define FR_DEFINE_TRANSPOSE(NAME, T)                                                          \
    static inline void NAME(int isa, ptrdiff_t rows, ptrdiff_t cols, const T *src,             \
                            ptrdiff_t lds, T *dst, ptrdiff_t ldd)                              \
    {                                                                                          \
        ptrdiff_t i, j;                                                                        \
        if (FR_PACK_T8_##T(isa, cols, rows, src, lds, dst, ldd))                               \
            return;                                                                            \
        for (j = 0; j < cols; j++) {                                                           \
            for (i = 0; i < rows; i++)                                                         \
                dst[j * ldd + i] = src[i * lds + j];                                           \
            for (; i < ldd; i++)                                                               \
                dst[j * ldd + i] = 0;                                                          \
        }                                                                                      \
    }

FR_DEFINE_TRANSPOSE(fr_transpose_s, float)
FR_DEFINE_TRANSPOSE(fr_transpose_d, double)

#if FR_HAVE_KERNELS

#include <immintrin.h>

/* panel rows kk..kk+7, columns c..c+7 := W's rows r..r+7, columns kk..kk+7 (AVX: 24 shuffles
 * per 64 elements, against 32 for four SSE 4 x 4 blocks, and half the loads and stores) */
__attribute__((target("avx2"))) static void fr_pack_t8_avx2(ptrdiff_t k, ptrdiff_t w,
                                                             const float *b, ptrdiff_t ldb,
                                                             float *panel, ptrdiff_t nr)
{
    const ptrdiff_t w8 = w & ~(ptrdiff_t) 7, k8 = k & ~(ptrdiff_t) 7;
    ptrdiff_t c, kk;
    int i;
    for (c = 0; c < w8; c += 8) {
        const float *r = b + c * ldb;
        for (kk = 0; kk < k8; kk += 8) {
            __m256 x0 = _mm256_loadu_ps(r + kk), x1 = _mm256_loadu_ps(r + ldb + kk);
            __m256 x2 = _mm256_loadu_ps(r + 2 * ldb + kk), x3 = _mm256_loadu_ps(r + 3 * ldb + kk);
            __m256 x4 = _mm256_loadu_ps(r + 4 * ldb + kk), x5 = _mm256_loadu_ps(r + 5 * ldb + kk);
            __m256 x6 = _mm256_loadu_ps(r + 6 * ldb + kk), x7 = _mm256_loadu_ps(r + 7 * ldb + kk);
            __m256 t0 = _mm256_unpacklo_ps(x0, x1), t1 = _mm256_unpackhi_ps(x0, x1);
            __m256 t2 = _mm256_unpacklo_ps(x2, x3), t3 = _mm256_unpackhi_ps(x2, x3);
            __m256 t4 = _mm256_unpacklo_ps(x4, x5), t5 = _mm256_unpackhi_ps(x4, x5);
            __m256 t6 = _mm256_unpacklo_ps(x6, x7), t7 = _mm256_unpackhi_ps(x6, x7);
            __m256 u0 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0));
            __m256 u1 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2));
            __m256 u2 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0));
            __m256 u3 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2));
            __m256 u4 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(1, 0, 1, 0));
            __m256 u5 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(3, 2, 3, 2));
            __m256 u6 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(1, 0, 1, 0));
            __m256 u7 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(3, 2, 3, 2));
            float *d = panel + kk * nr + c;
            _mm256_storeu_ps(d, _mm256_permute2f128_ps(u0, u4, 0x20));
            _mm256_storeu_ps(d + nr, _mm256_permute2f128_ps(u1, u5, 0x20));
            _mm256_storeu_ps(d + 2 * nr, _mm256_permute2f128_ps(u2, u6, 0x20));
            _mm256_storeu_ps(d + 3 * nr, _mm256_permute2f128_ps(u3, u7, 0x20));
            _mm256_storeu_ps(d + 4 * nr, _mm256_permute2f128_ps(u0, u4, 0x31));
            _mm256_storeu_ps(d + 5 * nr, _mm256_permute2f128_ps(u1, u5, 0x31));
            _mm256_storeu_ps(d + 6 * nr, _mm256_permute2f128_ps(u2, u6, 0x31));
            _mm256_storeu_ps(d + 7 * nr, _mm256_permute2f128_ps(u3, u7, 0x31));
        }
        for (; kk < k; kk++)
            for (i = 0; i < 8; i++)
                panel[kk * nr + c + i] = r[i * ldb + kk];
    }
    for (; c < w; c++)
        for (kk = 0; kk < k; kk++)
            panel[kk * nr + c] = b[c * ldb + kk];
    for (kk = 0; kk < k; kk++) /* zero padding of a partial panel */
        for (c = w; c < nr; c++)
            panel[kk * nr + c] = 0;
}

static inline int fr_pack_t8_s(int isa, ptrdiff_t k, ptrdiff_t w, const float *b, ptrdiff_t ldb,
                               float *panel, ptrdiff_t nr)
{
    if (isa == FR_ISA_NONE)
        return 0;
    fr_pack_t8_avx2(k, w, b, ldb, panel, nr);
    return 1;
}

/* The same for float64 in 4 x 4 blocks of AVX vectors (the generic path moves them one
 * element at a time). */
__attribute__((target("avx2"))) static void fr_pack_t4d_avx2(ptrdiff_t k, ptrdiff_t w,
                                                              const double *b, ptrdiff_t ldb,
                                                              double *panel, ptrdiff_t nr)
{
    const ptrdiff_t w4 = w & ~(ptrdiff_t) 3, k4 = k & ~(ptrdiff_t) 3;
    ptrdiff_t c, kk;
    int i;
    for (c = 0; c < w4; c += 4) {
        const double *r = b + c * ldb;
        for (kk = 0; kk < k4; kk += 4) {
            __m256d x0 = _mm256_loadu_pd(r + kk), x1 = _mm256_loadu_pd(r + ldb + kk);
            __m256d x2 = _mm256_loadu_pd(r + 2 * ldb + kk);
            __m256d x3 = _mm256_loadu_pd(r + 3 * ldb + kk);
            __m256d t0 = _mm256_unpacklo_pd(x0, x1), t1 = _mm256_unpackhi_pd(x0, x1);
            __m256d t2 = _mm256_unpacklo_pd(x2, x3), t3 = _mm256_unpackhi_pd(x2, x3);
            double *d = panel + kk * nr + c;
            _mm256_storeu_pd(d, _mm256_permute2f128_pd(t0, t2, 0x20));
            _mm256_storeu_pd(d + nr, _mm256_permute2f128_pd(t1, t3, 0x20));
            _mm256_storeu_pd(d + 2 * nr, _mm256_permute2f128_pd(t0, t2, 0x31));
            _mm256_storeu_pd(d + 3 * nr, _mm256_permute2f128_pd(t1, t3, 0x31));
        }
        for (; kk < k; kk++)
            for (i = 0; i < 4; i++)
                panel[kk * nr + c + i] = r[i * ldb + kk];
    }
    for (; c < w; c++)
        for (kk = 0; kk < k; kk++)
            panel[kk * nr + c] = b[c * ldb + kk];
    for (kk = 0; kk < k; kk++) /* zero padding of a partial panel */
        for (c = w; c < nr; c++)
            panel[kk * nr + c] = 0;
}

static inline int fr_pack_t4_d(int isa, ptrdiff_t k, ptrdiff_t w, const double *b,
                               ptrdiff_t ldb, double *panel, ptrdiff_t nr)
{
    if (isa == FR_ISA_NONE)
        return 0;
    fr_pack_t4d_avx2(k, w, b, ldb, panel, nr);
    return 1;
}

/* Broadcasts of one element from memory (one load, no shuffle). */
__attribute__((target("avx512f"))) static inline __m512 fr_bcast_s512(const float *x)
{
    return _mm512_set1_ps(*x);
}
__attribute__((target("avx2,fma"))) static inline __m256 fr_bcast_s256(const float *x)
{
    return _mm256_broadcast_ss(x);
}
__attribute__((target("avx512f"))) static inline __m512d fr_bcast_d512(const double *x)
{
    return _mm512_set1_pd(*x);
}
__attribute__((target("avx2,fma"))) static inline __m256d fr_bcast_d256(const double *x)
{
    return _mm256_broadcast_sd(x);
}

/* The micro-kernels: _rgemm_tile.h instantiated for each instruction set, element type and
 * row count (8/4/2/1 rows with AVX-512, 6/4/2/1 with AVX2; two vectors of columns each), and
 * _rgemm_row.h's one row times four panels for each instruction set and element type. */

#define FR_TARGET "avx512f"
#define FR_VBYTES 64
#define FR_T float
#define FR_BCAST fr_bcast_s512
#define FR_MR 8
#define FR_TILE fr_tile_s512_8
#include "_rgemm_tile.h"
#define FR_MR 4
#define FR_TILE fr_tile_s512_4
#include "_rgemm_tile.h"
#define FR_MR 2
#define FR_TILE fr_tile_s512_2
#include "_rgemm_tile.h"
#define FR_MR 1
#define FR_TILE fr_tile_s512_1
#include "_rgemm_tile.h"
#define FR_ROW fr_row_s512
#include "_rgemm_row.h"
#undef FR_T
#undef FR_BCAST
#define FR_T double
#define FR_BCAST fr_bcast_d512
#define FR_MR 8
#define FR_TILE fr_tile_d512_8
#include "_rgemm_tile.h"
#define FR_MR 4
#define FR_TILE fr_tile_d512_4
#include "_rgemm_tile.h"
#define FR_MR 2
#define FR_TILE fr_tile_d512_2
#include "_rgemm_tile.h"
#define FR_MR 1
#define FR_TILE fr_tile_d512_1
#include "_rgemm_tile.h"
#define FR_ROW fr_row_d512
#include "_rgemm_row.h"
#undef FR_T
#undef FR_BCAST
#undef FR_TARGET
#undef FR_VBYTES

#define FR_TARGET "avx2,fma"
#define FR_VBYTES 32
#define FR_T float
#define FR_BCAST fr_bcast_s256
#define FR_MR 6
#define FR_TILE fr_tile_s256_6
#include "_rgemm_tile.h"
#define FR_MR 4
#define FR_TILE fr_tile_s256_4
#include "_rgemm_tile.h"
#define FR_MR 2
#define FR_TILE fr_tile_s256_2
#include "_rgemm_tile.h"
#define FR_MR 1
#define FR_TILE fr_tile_s256_1
#include "_rgemm_tile.h"
#define FR_ROW fr_row_s256
#include "_rgemm_row.h"
#undef FR_T
#undef FR_BCAST
#define FR_T double
#define FR_BCAST fr_bcast_d256
#define FR_MR 6
#define FR_TILE fr_tile_d256_6
#include "_rgemm_tile.h"
#define FR_MR 4
#define FR_TILE fr_tile_d256_4
#include "_rgemm_tile.h"
#define FR_MR 2
#define FR_TILE fr_tile_d256_2
#include "_rgemm_tile.h"
#define FR_MR 1
#define FR_TILE fr_tile_d256_1
#include "_rgemm_tile.h"
#define FR_ROW fr_row_d256
#include "_rgemm_row.h"
#undef FR_T
#undef FR_BCAST
#undef FR_TARGET
#undef FR_VBYTES

/* Rows of A per pass over the panels of B: a chunk of A stays in L2 while the panels stream. */
#define FR_CHUNK_BYTES (256 * 1024)
/* The reduction goes in blocks of this many bytes of a row of A (512 floats): each panel's
 * block of rows (64 KB) then stays in L2 while every row tile of the chunk reads it, and a chunk
 * holds 128 rows of A. Without blocks, a panel of k = 8192 rows (1 MB: the backward step of a
 * 2048-unit LSTM, dh = da W_hh) no longer fitted beside the rows of A and came from L3 or memory
 * once per tile of 8 rows, and a chunk of the input projection (k = 2048) held 24 rows, so the
 * 64 MB of W_ih streamed from memory 11 times per 256 rows. (2048 floats measured a little
 * slower on DeepBench's H = 2048 LSTM; a 2048^3 product ran at 74 GFLOP/s unblocked, 139 with
 * 512-float blocks, on one Zen 5 core whose peak here is ~265 at 512^3.) */
#define FR_KC_BYTES (2 * 1024)
/* ... when a row of A is longer than this (1024 floats): shorter reductions, whose panels fit
 * in L2 anyway, stay one chain (blocks of 512 cost 2-3% at k = 1024, the char-LM's backward). */
#define FR_KC_MIN_BYTES (4 * 1024)

/* The reduction's block of k for elements of `elem` bytes: fixed by k alone, so that every
 * product that computes an element of C (the driver's tiles and rows, fr_rgemv_gates_*) adds
 * the same blocks in the same order. */
static inline ptrdiff_t fr_rgemm_kc(ptrdiff_t k, size_t elem)
{
    if (k * (ptrdiff_t) elem > FR_KC_MIN_BYTES)
        return FR_KC_BYTES / (ptrdiff_t) elem;
    return k > 0 ? k : 1;
}

/* The driver: C[:m, :n] (+)= A[:m, :k] @ B[:k, :n] with A[i, kk] = a[i * rs + kk * ks] (rs = lda,
 * ks = 1 for a row-major A; rs = 1, ks = lda for the transpose of one) and B packed by
 * fr_pack_* (ldb = 0) or read in place, B[kk, j] = b[kk * ldb + j] (ldb > 0: then n must be a
 * multiple of fr_rgemm_nr, as the panels are not padded). Rows of A go in chunks of about
 * FR_CHUNK_BYTES of a block of k (all m rows when they fit); per chunk, every panel of B, block
 * of k after block of k (FR_KC_BYTES), times the chunk's rows in tiles of 8 (6), 4, 2 and 1
 * rows; or, when the chunk's rows over all of k exceed FR_CHUNK_BYTES, block of k after block
 * of k, every panel. (Panel first, 120 rows of dx = dG @ W_ih at G = 4096 were read over all
 * of k, 1.9 MB, from L3 for every panel; block of k first, that block's 240 KB of them stay in
 * L2 for every panel. A few rows, as an inference step's, keep the panel order, which reads
 * each panel straight through.) A single row (m == 1: a step of a batch of 1) takes up to four full panels at a time
 * (_rgemm_row.h), a partial last panel through the tile. Each block of k is one multiply-add
 * chain per element of C, added to C in increasing order of k (the first one stored, unless
 * `add`): the blocks depend on k alone, so the bits do not depend on m, on the tile or on the
 * columns a call covers. */
#define FR_DEFINE_GEMM(NAME, T, W)                                                            \
    static inline void NAME(int isa, ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const T *a,        \
                            ptrdiff_t rs, ptrdiff_t ks, const T *b, ptrdiff_t ldb, T *c,       \
                            ptrdiff_t ldc, int add)                                            \
    {                                                                                          \
        const int nr = fr_rgemm_nr(isa, sizeof(T)), big = isa == FR_ISA_AVX512 ? 8 : 6;        \
        const ptrdiff_t kc = fr_rgemm_kc(k, sizeof(T));                                       \
        const ptrdiff_t kb = k < kc ? k : kc;                                                  \
        const ptrdiff_t fit = FR_CHUNK_BYTES / ((kb > 0 ? kb : 1) * (ptrdiff_t) sizeof(T));    \
        const ptrdiff_t chunk = fit >= m ? (m > 0 ? m : 1) : fit / 24 * 24 > 24 ? fit / 24 * 24 \
                                                                                : 24;          \
        const ptrdiff_t ldp = ldb ? ldb : nr;                                                  \
        ptrdiff_t i0, i, k0, q0 = 0;                                                           \
        if (m == 1) /* a GEMV: up to four full panels per pass, 8 independent accumulators */ \
            for (; q0 + nr <= n; q0 += 4 * nr) {                                               \
                const T *pq = ldb ? b + q0 : b + q0 * k;                                       \
                const ptrdiff_t ps = ldb ? nr : nr * k, full = (n - q0) / nr;                  \
                const int np = full < 4 ? (int) full : 4;                                      \
                for (k0 = 0; k0 == 0 || k0 < k; k0 += kc) {                                    \
                    const ptrdiff_t kn = k - k0 < kc ? k - k0 : kc;                            \
                    if (isa == FR_ISA_AVX512)                                                  \
                        fr_row_##W##512(kn, a + k0 * ks, ks, pq + k0 * ldp, ps, ldp, c + q0,   \
                                        nr, np, add || k0 > 0);                                \
                    else                                                                       \
                        fr_row_##W##256(kn, a + k0 * ks, ks, pq + k0 * ldp, ps, ldp, c + q0,   \
                                        nr, np, add || k0 > 0);                                \
                }                                                                              \
                if (np < 4) {                                                                  \
                    q0 += np * nr;                                                             \
                    break;                                                                     \
                }                                                                              \
            }                                                                                  \
        for (i0 = 0; i0 < m; i0 += chunk) {                                                    \
            const ptrdiff_t i1 = m - i0 < chunk ? m : i0 + chunk;                              \
            /* (block of k, panel) pairs: blocks outer when the chunk's rows over all of k */  \
            /* would not stay in L2 from one panel to the next, else panels outer */           \
            const ptrdiff_t nk = k > kc ? (k + kc - 1) / kc : 1, np = (n - q0 + nr - 1) / nr;  \
            const int kfirst = (i1 - i0) * k * (ptrdiff_t) sizeof(T) > FR_CHUNK_BYTES;         \
            ptrdiff_t s;                                                                       \
            for (s = 0; s < nk * np; s++) {                                                    \
                {                                                                              \
                    const ptrdiff_t q = q0 + (kfirst ? s % np : s / nk) * nr;                  \
                    const ptrdiff_t k0 = (kfirst ? s / np : s % nk) * kc;                      \
                    const ptrdiff_t kn = k - k0 < kc ? k - k0 : kc;                            \
                    const int addk = add || k0 > 0;                                            \
                    const int w = (int) (n - q < nr ? n - q : nr);                             \
                    const T *pq = (ldb ? b + q : b + q * k) + k0 * ldp;                        \
                    for (i = i0; i < i1;) {                                                    \
                        const ptrdiff_t rest = i1 - i;                                         \
                        const T *ai = a + i * rs + k0 * ks;                                    \
                        T *ci = c + i * ldc + q;                                               \
                        int rows = rest >= big ? big : rest >= 4 ? 4 : rest >= 2 ? 2 : 1;      \
                        if (isa == FR_ISA_AVX512) {                                            \
                            if (rows == 8)                                                     \
                                fr_tile_##W##512_8(kn, ai, rs, ks, pq, ldp, ci, ldc, w, addk); \
                            else if (rows == 4)                                                \
                                fr_tile_##W##512_4(kn, ai, rs, ks, pq, ldp, ci, ldc, w, addk); \
                            else if (rows == 2)                                                \
                                fr_tile_##W##512_2(kn, ai, rs, ks, pq, ldp, ci, ldc, w, addk); \
                            else                                                               \
                                fr_tile_##W##512_1(kn, ai, rs, ks, pq, ldp, ci, ldc, w, addk); \
                        } else {                                                               \
                            if (rows == 6)                                                     \
                                fr_tile_##W##256_6(kn, ai, rs, ks, pq, ldp, ci, ldc, w, addk); \
                            else if (rows == 4)                                                \
                                fr_tile_##W##256_4(kn, ai, rs, ks, pq, ldp, ci, ldc, w, addk); \
                            else if (rows == 2)                                                \
                                fr_tile_##W##256_2(kn, ai, rs, ks, pq, ldp, ci, ldc, w, addk); \
                            else                                                               \
                                fr_tile_##W##256_1(kn, ai, rs, ks, pq, ldp, ci, ldc, w, addk); \
                        }                                                                      \
                        i += rows;                                                             \
                    }                                                                          \
                }                                                                              \
            }                                                                                  \
        }                                                                                      \
    }

FR_DEFINE_GEMM(fr_rgemm_s, float, s)
FR_DEFINE_GEMM(fr_rgemm_d, double, d)

/* One row times the same w columns of n_gates packed gate blocks: c[g * gs + j] (+)= a[:k] @
 * P_g[:, j] for j < w, where P_g (gate g's block, k rows, packed by fr_pack_*) starts at p +
 * g * seg. A step of a batch of 1 whose thread owns fewer than four panels of each gate (H / 32
 * units or fewer per thread, float, AVX-512) would otherwise multiply one or two panels at a
 * time, waiting on the multiply-add's latency; here the same panel of up to four gates goes in
 * one pass of _rgemm_row.h. Bitwise fr_rgemm_* of each gate block. */
#define FR_DEFINE_GATES(NAME, GEMM, T, W)                                                     \
    static inline void NAME(int isa, int n_gates, ptrdiff_t w, ptrdiff_t k, const T *a,       \
                            const T *p, ptrdiff_t seg, T *c, ptrdiff_t gs, int add)            \
    {                                                                                          \
        const int nr = fr_rgemm_nr(isa, sizeof(T));                                            \
        const ptrdiff_t full = w - w % nr;                                                     \
        const ptrdiff_t kc = fr_rgemm_kc(k, sizeof(T));                                       \
        ptrdiff_t q, k0;                                                                       \
        int g0, g;                                                                             \
        for (q = 0; q < full; q += nr)                                                         \
            for (g0 = 0; g0 < n_gates; g0 += 4) {                                              \
                const int np = n_gates - g0 < 4 ? n_gates - g0 : 4;                            \
                const T *pq = p + g0 * seg + q * k;                                            \
                for (k0 = 0; k0 == 0 || k0 < k; k0 += kc) { /* the driver's blocks of k */     \
                    const ptrdiff_t kn = k - k0 < kc ? k - k0 : kc;                            \
                    if (isa == FR_ISA_AVX512)                                                  \
                        fr_row_##W##512(kn, a + k0, 1, pq + k0 * nr, seg, nr,                  \
                                        c + g0 * gs + q, gs, np, add || k0 > 0);               \
                    else                                                                       \
                        fr_row_##W##256(kn, a + k0, 1, pq + k0 * nr, seg, nr,                  \
                                        c + g0 * gs + q, gs, np, add || k0 > 0);               \
                }                                                                              \
            }                                                                                  \
        if (full < w)                                                                          \
            for (g = 0; g < n_gates; g++)                                                      \
                GEMM(isa, 1, w - full, k, a, k, 1, p + g * seg + full * k, 0,                  \
                     c + g * gs + full, gs, add);                                              \
    }

FR_DEFINE_GATES(fr_rgemv_gates_s, fr_rgemm_s, float, s)
FR_DEFINE_GATES(fr_rgemv_gates_d, fr_rgemm_d, double, d)

#else /* no micro-kernels: fr_rgemm_pick returns FR_ISA_NONE and these are never called */

static inline int fr_pack_t8_s(int isa, ptrdiff_t k, ptrdiff_t w, const float *b, ptrdiff_t ldb,
                               float *panel, ptrdiff_t nr)
{
    (void) isa; (void) k; (void) w; (void) b; (void) ldb; (void) panel; (void) nr;
    return 0;
}

static inline int fr_pack_t4_d(int isa, ptrdiff_t k, ptrdiff_t w, const double *b,
                               ptrdiff_t ldb, double *panel, ptrdiff_t nr)
{
    (void) isa; (void) k; (void) w; (void) b; (void) ldb; (void) panel; (void) nr;
    return 0;
}

static inline void fr_rgemm_s(int isa, ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const float *a,
                              ptrdiff_t rs, ptrdiff_t ks, const float *b, ptrdiff_t ldb, float *c,
                              ptrdiff_t ldc, int add)
{
    (void) isa; (void) m; (void) n; (void) k; (void) a; (void) rs; (void) ks; (void) b;
    (void) ldb; (void) c; (void) ldc; (void) add;
}

static inline void fr_rgemm_d(int isa, ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const double *a,
                              ptrdiff_t rs, ptrdiff_t ks, const double *b, ptrdiff_t ldb,
                              double *c, ptrdiff_t ldc, int add)
{
    (void) isa; (void) m; (void) n; (void) k; (void) a; (void) rs; (void) ks; (void) b;
    (void) ldb; (void) c; (void) ldc; (void) add;
}

static inline void fr_rgemv_gates_s(int isa, int n_gates, ptrdiff_t w, ptrdiff_t k,
                                    const float *a, const float *p, ptrdiff_t seg, float *c,
                                    ptrdiff_t gs, int add)
{
    (void) isa; (void) n_gates; (void) w; (void) k; (void) a; (void) p; (void) seg; (void) c;
    (void) gs; (void) add;
}

static inline void fr_rgemv_gates_d(int isa, int n_gates, ptrdiff_t w, ptrdiff_t k,
                                    const double *a, const double *p, ptrdiff_t seg, double *c,
                                    ptrdiff_t gs, int add)
{
    (void) isa; (void) n_gates; (void) w; (void) k; (void) a; (void) p; (void) seg; (void) c;
    (void) gs; (void) add;
}

#endif

#endif
