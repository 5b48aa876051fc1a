"""The machine's multiply-add roof: the rate at which its cores retire fused multiply-adds.

The benchmarks' first yardstick is a GEMM through SciPy's BLAS (``fastrnn.bench.gemm_peak``),
which the kernels' own micro-kernels and oneDNN's exceed: a share of it says little about how
far from the machine's limit a kernel runs. This probe measures that limit: each thread runs
twelve independent chains ``a = a * m + c`` in the widest vectors its CPU takes (AVX-512: 16
floats, AVX2: 8, else SSE: 4), enough chains to keep every multiply-add pipe busy through each
one's latency and few enough to stay in registers. No GEMM, however well written, beats it.
"""

from cython.parallel cimport prange
from openmp cimport omp_get_wtime

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>

    /* One thread's loop of `iters` rounds of 12 multiply-adds a[i] = MAC(a[i], m, c) on
     * vectors VT of ET; SET1 broadcasts an ET. Returns the accumulators' sum, so that the loop
     * is not optimized away (a * 0.9999 + 1e-4 tends to 1: no overflow, no subnormals). */
    #define FR_PEAK_LOOP(NAME, TARGET, VT, ET, SET1, MAC)                                 \
        TARGET static double NAME(int64_t iters)                                         \
        {                                                                                \
            VT a[12];                                                                    \
            const VT m = SET1((ET) 0.9999), c = SET1((ET) 1e-4);                         \
            for (int i = 0; i < 12; i++)                                                 \
                a[i] = SET1((ET) (0.001 * i));                                           \
            for (int64_t k = 0; k < iters; k++) {                                        \
                _Pragma("GCC unroll 12")                                                 \
                for (int i = 0; i < 12; i++)                                             \
                    a[i] = MAC(a[i], m, c);                                              \
            }                                                                            \
            double s = 0.0;                                                              \
            for (int i = 0; i < 12; i++) {                                               \
                ET out[sizeof(VT) / sizeof(ET)];                                         \
                memcpy(out, &a[i], sizeof out);                                          \
                for (size_t l = 0; l < sizeof(VT) / sizeof(ET); l++)                     \
                    s += (double) out[l];                                                \
            }                                                                            \
            return s;                                                                    \
        }

    #if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 8
    #include <immintrin.h>
    #define FR_PEAK_X86 1
    #define FR_T512 __attribute__((target("avx512f")))
    #define FR_T256 __attribute__((target("avx2,fma")))
    FR_PEAK_LOOP(fr_peak_f512, FR_T512, __m512, float, _mm512_set1_ps, _mm512_fmadd_ps)
    FR_PEAK_LOOP(fr_peak_d512, FR_T512, __m512d, double, _mm512_set1_pd, _mm512_fmadd_pd)
    FR_PEAK_LOOP(fr_peak_f256, FR_T256, __m256, float, _mm256_set1_ps, _mm256_fmadd_ps)
    FR_PEAK_LOOP(fr_peak_d256, FR_T256, __m256d, double, _mm256_set1_pd, _mm256_fmadd_pd)
    #else
    #define FR_PEAK_X86 0
    #endif
    /* Elsewhere 16-byte vectors of GCC's vector extensions: a multiply and an add (a fused
     * multiply-add where the build's target has one and the compiler contracts them). */
    typedef float fr_pf4 __attribute__((vector_size(16)));
    typedef double fr_pd2 __attribute__((vector_size(16)));
    #define FR_PEAK_SPLAT_F(x) ((fr_pf4) {x, x, x, x})
    #define FR_PEAK_SPLAT_D(x) ((fr_pd2) {x, x})
    #define FR_PEAK_MAC(a, m, c) ((a) * (m) + (c))
    FR_PEAK_LOOP(fr_peak_f128, , fr_pf4, float, FR_PEAK_SPLAT_F, FR_PEAK_MAC)
    FR_PEAK_LOOP(fr_peak_d128, , fr_pd2, double, FR_PEAK_SPLAT_D, FR_PEAK_MAC)

    /* The widest the CPU runs: 64, 32 or 16 bytes. */
    static int fr_peak_width(void)
    {
    #if FR_PEAK_X86
        __builtin_cpu_init();
        if (__builtin_cpu_supports("avx512f"))
            return 64;
        if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
            return 32;
    #endif
        return 16;
    }

    static double fr_peak_run(int width, int f64, int64_t iters)
    {
    #if FR_PEAK_X86
        if (width == 64)
            return f64 ? fr_peak_d512(iters) : fr_peak_f512(iters);
        if (width == 32)
            return f64 ? fr_peak_d256(iters) : fr_peak_f256(iters);
    #endif
        return f64 ? fr_peak_d128(iters) : fr_peak_f128(iters);
    }
    """
    int fr_peak_width() nogil
    double fr_peak_run(int width, int f64, long long iters) nogil


def vector_bytes():
    """Bytes per vector the probe runs on this CPU: 64 (AVX-512), 32 (AVX2 + FMA) or 16."""
    return fr_peak_width()


def fma_rate(int n_threads, bint float64=False, long long iters=1_000_000):
    """GFLOP/s of ``n_threads`` threads each running ``iters`` rounds of 12 vector multiply-adds
    (2 FLOPs a lane), in float32 or float64: one sample, wall time of the whole team."""
    if n_threads < 1:
        raise ValueError(f"n_threads must be >= 1, got {n_threads}")
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    cdef int width = fr_peak_width()
    cdef int lanes = width // (8 if float64 else 4)
    cdef double t0, t1, sink = 0.0
    cdef int _k
    with nogil:
        t0 = omp_get_wtime()
        # one iteration a thread
        for _k in prange(n_threads, num_threads=n_threads, schedule="static", chunksize=1):
            sink += fr_peak_run(width, float64, iters)
        t1 = omp_get_wtime()
    if sink != sink:  # never: keeps the sum, and so the loops, alive
        raise RuntimeError("fma_rate: the probe's accumulators went NaN")
    return n_threads * iters * 12.0 * lanes * 2.0 / (t1 - t0) / 1e9
