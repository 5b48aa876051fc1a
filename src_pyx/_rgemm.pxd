# The recurrent GEMM with weights packed once per kernel call (see _rgemm.h).

from libc.stddef cimport ptrdiff_t


cdef extern from "_rgemm.h" nogil:
    enum:
        FR_ISA_NONE
        FR_ISA_AVX2
        FR_ISA_AVX512
    int fr_rgemm_pick(int cap)
    int fr_cpu_level()
    size_t fr_rgemm_packed_size(int isa, size_t elem, ptrdiff_t k, ptrdiff_t n)
    void* fr_rgemm_alloc(size_t nbytes)
    void fr_pack_s(int isa, int trans, ptrdiff_t k, ptrdiff_t n, const float* b, ptrdiff_t ldb,
                   float* p)
    void fr_pack_d(int isa, int trans, ptrdiff_t k, ptrdiff_t n, const double* b,
                   ptrdiff_t ldb, double* p)
    void fr_transpose_s(int isa, ptrdiff_t rows, ptrdiff_t cols, const float* src,
                        ptrdiff_t lds, float* dst, ptrdiff_t ldd)
    void fr_transpose_d(int isa, ptrdiff_t rows, ptrdiff_t cols, const double* src,
                        ptrdiff_t lds, double* dst, ptrdiff_t ldd)
    int fr_rgemm_nr(int isa, size_t elem)
    void fr_rgemm_s(int isa, ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const float* a,
                    ptrdiff_t rs, ptrdiff_t ks, const float* b, ptrdiff_t ldb, float* c,
                    ptrdiff_t ldc, int add)
    void fr_rgemm_d(int isa, ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const double* a,
                    ptrdiff_t rs, ptrdiff_t ks, const double* b, ptrdiff_t ldb, double* c,
                    ptrdiff_t ldc, int add)
    void fr_rgemv_gates_s(int isa, int n_gates, ptrdiff_t w, ptrdiff_t k, const float* a,
                          const float* p, ptrdiff_t seg, float* c, ptrdiff_t gs, int add)
    void fr_rgemv_gates_d(int isa, int n_gates, ptrdiff_t w, ptrdiff_t k, const double* a,
                          const double* p, ptrdiff_t seg, double* c, ptrdiff_t gs, int add)
