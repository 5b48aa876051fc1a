/* The one-row micro-kernel of _rgemm.h (a GEMV: one step of a batch of 1), instantiated once
 * per (instruction set, element type): the including file defines FR_ROW (the name), FR_TARGET,
 * FR_T, FR_VBYTES and FR_BCAST; FR_ROW is undefined at the end.
 *
 * c[:4 * nr] (+)= a[:k] @ [P0 P1 P2 P3], four full panels of two vectors each, panel j's row kk
 * at p + j * ps + kk * ldp (ps: elements from one panel to the next).
 *
 * Why: a one-row tile of one panel has two accumulators, so its loop waits on the latency of
 * the multiply-add (4 cycles on current x86) at every kk while the loads sit idle. Four panels
 * give eight independent chains, enough to cover that latency. Each element of c is still one
 * multiply-add chain over k in increasing order, written as the tile of _rgemm_tile.h writes
 * it, so the results are bitwise those of four calls of that tile. */
__attribute__((target(FR_TARGET))) static void FR_ROW(ptrdiff_t k, const FR_T *a, ptrdiff_t ks,
                                                      const FR_T *p, ptrdiff_t ps,
                                                      ptrdiff_t ldp, FR_T *c, int add)
{
    typedef FR_T vec __attribute__((vector_size(FR_VBYTES)));
    typedef FR_T uvec __attribute__((vector_size(FR_VBYTES), aligned(sizeof(FR_T))));
    enum { L = FR_VBYTES / sizeof(FR_T) };
    const FR_T *p0 = p, *p1 = p + ps, *p2 = p + 2 * ps, *p3 = p + 3 * ps;
    vec lo0 = {0}, hi0 = {0}, lo1 = {0}, hi1 = {0}, lo2 = {0}, hi2 = {0}, lo3 = {0}, hi3 = {0};
    ptrdiff_t kk;

    for (kk = 0; kk < k; kk++) {
        const vec t = (vec) FR_BCAST(a + kk * ks);
        const ptrdiff_t o = kk * ldp;
        lo0 += t * *(const uvec *) (p0 + o);
        hi0 += t * *(const uvec *) (p0 + o + L);
        lo1 += t * *(const uvec *) (p1 + o);
        hi1 += t * *(const uvec *) (p1 + o + L);
        lo2 += t * *(const uvec *) (p2 + o);
        hi2 += t * *(const uvec *) (p2 + o + L);
        lo3 += t * *(const uvec *) (p3 + o);
        hi3 += t * *(const uvec *) (p3 + o + L);
    }
    if (add) {
        *(uvec *) (c) += lo0;
        *(uvec *) (c + L) += hi0;
        *(uvec *) (c + 2 * L) += lo1;
        *(uvec *) (c + 3 * L) += hi1;
        *(uvec *) (c + 4 * L) += lo2;
        *(uvec *) (c + 5 * L) += hi2;
        *(uvec *) (c + 6 * L) += lo3;
        *(uvec *) (c + 7 * L) += hi3;
    } else {
        *(uvec *) (c) = lo0;
        *(uvec *) (c + L) = hi0;
        *(uvec *) (c + 2 * L) = lo1;
        *(uvec *) (c + 3 * L) = hi1;
        *(uvec *) (c + 4 * L) = lo2;
        *(uvec *) (c + 5 * L) = hi2;
        *(uvec *) (c + 6 * L) = lo3;
        *(uvec *) (c + 7 * L) = hi3;
    }
}

#undef FR_ROW
