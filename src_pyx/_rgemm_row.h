/* The one-row micro-kernel of _rgemm.h (a GEMV: one step of a batch of 1), instantiated once
 * per (instruction set, element type): the including file defines FR_ROW (the name), FR_TARGET,
 * FR_T, FR_VBYTES and FR_BCAST; FR_ROW is undefined at the end.
 *
 * c_j[:nr] (+)= a[:k] @ P_j for np (1 to 4) full panels of two vectors each: panel j's row kk at
 * p + j * ps + kk * ldp (ps: elements from one panel to the next), its result at c + j * cs.
 * The panels of one call are consecutive columns of one matrix (cs = nr) or the same columns
 * of the gate blocks of a cell's weights (ps: a gate block's packed size, cs: H).
 *
 * Why: a one-row tile of one panel has two accumulators, so its loop waits on the latency of
 * the multiply-add (4 cycles on current x86) at every kk while the loads sit idle. Four panels
 * give eight independent chains, enough to cover that latency. Each element of c is still one
 * multiply-add chain over k in increasing order, written as the tile of _rgemm_tile.h writes
 * it, so the results are bitwise those of np calls of that tile. */
__attribute__((target(FR_TARGET))) static void FR_ROW(ptrdiff_t k, const FR_T *a, ptrdiff_t ks,
                                                      const FR_T *p, ptrdiff_t ps,
                                                      ptrdiff_t ldp, FR_T *c, ptrdiff_t cs,
                                                      int np, int add)
{
    typedef FR_T vec __attribute__((vector_size(FR_VBYTES)));
    typedef FR_T uvec __attribute__((vector_size(FR_VBYTES), aligned(sizeof(FR_T))));
    enum { L = FR_VBYTES / sizeof(FR_T) };
    const FR_T *p0 = p, *p1 = p + ps, *p2 = p + 2 * ps, *p3 = p + 3 * ps;
    FR_T *c0 = c, *c1 = c + cs, *c2 = c + 2 * cs, *c3 = c + 3 * cs;
    vec lo0 = {0}, hi0 = {0}, lo1 = {0}, hi1 = {0}, lo2 = {0}, hi2 = {0}, lo3 = {0}, hi3 = {0};
    ptrdiff_t kk;

    /* one loop per panel count (np is fixed per call: the branches are predicted) */
#define FR_ROW_LOOP(N)                                                                         \
    for (kk = 0; kk < k; kk++) {                                                               \
        const vec t = (vec) FR_BCAST(a + kk * ks);                                             \
        const ptrdiff_t o = kk * ldp;                                                          \
        lo0 += t * *(const uvec *) (p0 + o);                                                   \
        hi0 += t * *(const uvec *) (p0 + o + L);                                               \
        if (N > 1) {                                                                           \
            lo1 += t * *(const uvec *) (p1 + o);                                               \
            hi1 += t * *(const uvec *) (p1 + o + L);                                           \
        }                                                                                      \
        if (N > 2) {                                                                           \
            lo2 += t * *(const uvec *) (p2 + o);                                               \
            hi2 += t * *(const uvec *) (p2 + o + L);                                           \
        }                                                                                      \
        if (N > 3) {                                                                           \
            lo3 += t * *(const uvec *) (p3 + o);                                               \
            hi3 += t * *(const uvec *) (p3 + o + L);                                           \
        }                                                                                      \
    }
    if (np >= 4)
        FR_ROW_LOOP(4)
    else if (np == 3)
        FR_ROW_LOOP(3)
    else if (np == 2)
        FR_ROW_LOOP(2)
    else
        FR_ROW_LOOP(1)
#undef FR_ROW_LOOP
#define FR_ROW_OUT(OP)                                                                         \
    {                                                                                          \
        *(uvec *) (c0) OP lo0;                                                                 \
        *(uvec *) (c0 + L) OP hi0;                                                             \
        if (np > 1) {                                                                          \
            *(uvec *) (c1) OP lo1;                                                             \
            *(uvec *) (c1 + L) OP hi1;                                                         \
        }                                                                                      \
        if (np > 2) {                                                                          \
            *(uvec *) (c2) OP lo2;                                                             \
            *(uvec *) (c2 + L) OP hi2;                                                         \
        }                                                                                      \
        if (np > 3) {                                                                          \
            *(uvec *) (c3) OP lo3;                                                             \
            *(uvec *) (c3 + L) OP hi3;                                                         \
        }                                                                                      \
    }
    if (add)
        FR_ROW_OUT(+=)
    else
        FR_ROW_OUT(=)
#undef FR_ROW_OUT
}

#undef FR_ROW
