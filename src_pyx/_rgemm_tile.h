/* One micro-kernel of _rgemm.h, instantiated once per (instruction set, element type, rows):
 * the including file defines FR_TILE (the name), FR_TARGET, FR_T, FR_VBYTES, FR_BCAST and FR_MR
 * (1, 2, 4, 6 or 8); FR_TILE and FR_MR are undefined at the end.
 *
 * C[:FR_MR, :w] (+)= A[:FR_MR, :k] @ P, where A[r, kk] = a[r * rs + kk * ks] and P is k rows of
 * two vectors, row kk at p + kk * ldp (a packed panel: ldp = 2 vectors; or a matrix read in place).
 * A panel of w <= one vector of columns (the last, zero-padded panel of H = 200's 200 columns)
 * reads and multiplies only the first vector of each row: the same sums, in half the time.
 * The accumulators are named variables, not an array: GCC keeps an array of vectors in memory. */
__attribute__((target(FR_TARGET))) static void FR_TILE(ptrdiff_t k, const FR_T *a, ptrdiff_t rs,
                                                       ptrdiff_t ks, const FR_T *p, ptrdiff_t ldp,
                                                       FR_T *c, ptrdiff_t ldc, int w, int add)
{
    typedef FR_T vec __attribute__((vector_size(FR_VBYTES)));
    typedef FR_T uvec __attribute__((vector_size(FR_VBYTES), aligned(sizeof(FR_T))));
    enum { L = FR_VBYTES / sizeof(FR_T) };
    FR_T tile[FR_MR * 2 * L] __attribute__((aligned(FR_VBYTES)));
    ptrdiff_t kk;
    int r, j;

#if FR_MR == 8
#define FR_EACH(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7)
#elif FR_MR == 6
#define FR_EACH(X) X(0) X(1) X(2) X(3) X(4) X(5)
#elif FR_MR == 4
#define FR_EACH(X) X(0) X(1) X(2) X(3)
#elif FR_MR == 2
#define FR_EACH(X) X(0) X(1)
#else
#define FR_EACH(X) X(0)
#endif
#define FR_DECLARE(r) vec lo##r = {0}, hi##r = {0}; const FR_T *a##r = a + r * rs;
#define FR_FMA(r) { vec t = (vec) FR_BCAST(a##r + kk * ks); lo##r += t * b0; hi##r += t * b1; }
#define FR_FMA_LO(r) { vec t = (vec) FR_BCAST(a##r + kk * ks); lo##r += t * b0; }
#define FR_SPILL(r) *(vec *) (tile + r * 2 * L) = lo##r; *(vec *) (tile + r * 2 * L + L) = hi##r;

    FR_EACH(FR_DECLARE)
    if (w <= L) {  /* at most one vector of columns (a narrow last panel): half the work */
        for (kk = 0; kk < k; kk++) {
            const vec b0 = *(const uvec *) (p + kk * ldp);
            FR_EACH(FR_FMA_LO)
        }
    } else {
        for (kk = 0; kk < k; kk++) {
            const vec b0 = *(const uvec *) (p + kk * ldp);
            const vec b1 = *(const uvec *) (p + kk * ldp + L);
            FR_EACH(FR_FMA)
        }
    }
    if (w == 2 * L && add) {
#define FR_ADD(r) *(uvec *) (c + r * ldc) += lo##r; *(uvec *) (c + r * ldc + L) += hi##r;
        FR_EACH(FR_ADD)
#undef FR_ADD
    } else if (w == 2 * L) {
#define FR_STORE(r) *(uvec *) (c + r * ldc) = lo##r; *(uvec *) (c + r * ldc + L) = hi##r;
        FR_EACH(FR_STORE)
#undef FR_STORE
    } else {  /* a partial panel: through a tile on the stack */
        FR_EACH(FR_SPILL)
        for (r = 0; r < FR_MR; r++)
            for (j = 0; j < w; j++)
                c[r * ldc + j] = (add ? c[r * ldc + j] : 0) + tile[r * 2 * L + j];
    }
#undef FR_DECLARE
#undef FR_FMA
#undef FR_FMA_LO
#undef FR_SPILL
#undef FR_EACH
}

#undef FR_TILE
#undef FR_MR
