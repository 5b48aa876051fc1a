# The GEMMs of the cell kernels, cut into blocks and shared among a team, header-only.
#
# Legend as in the cells: H hidden units, n_gates gate blocks of H columns (G = n_gates * H).
# Two cuts of the gate columns, both fixed by the problem (never by the thread count, see
# _parallel.pxd):
#   * narrow blocks (unit_blocks(H), ~64 units): the per-step recurrent GEMMs and the forward's
#     input projection (project_steps); a thread owns a contiguous run of them, that is hidden
#     units [j0, j1) and the gate columns g*H + [j0, j1);
#   * wide blocks (a gate block cut in ceil(4 / n_gates) pieces, so 4 to 6 blocks): the GEMMs
#     over the rows of all T steps (weight gradients; the input projection of the projection
#     and reset-before variants), where fewer, larger calls are better.
#
# When the CPU has AVX2 or AVX-512 (_rgemm.h) every GEMM runs on the micro-kernels: each thread
# packs its columns of W_hh and W_ih once per kernel call (pack_nt for the forward's h @ W_hh^T
# and x @ W_ih^T, pack_nn for the backward's da @ W_hh), and the weight gradients copy a pass
# of X into panels and dG^T's rows contiguously (weight_grad_ld); otherwise (isa FR_ISA_NONE,
# or no memory for a packed copy) they call BLAS.

from cython cimport floating
from libc.stdlib cimport free
from libc.string cimport memcpy, memset

from _blas cimport blas_int, gemm, gemm_gates_nt
from _parallel cimport block_span, share, unit_blocks
from _rgemm cimport (FR_ISA_NONE, fr_pack_d, fr_pack_s, fr_rgemm_alloc, fr_rgemm_d, fr_rgemm_nr,
                     fr_rgemm_packed_size, fr_rgemm_s, fr_rgemv_gates_d, fr_rgemv_gates_s,
                     fr_transpose_d, fr_transpose_s)
from _util cimport zero_rows

# Rows per block of the dx GEMM; rows of the reduction per pass of the weight gradients' micro-
# kernels (a block of dG and of X stays in L2).
cdef enum:
    DX_ROWS = 256
    WG_ROWS = 256
    WG_PASSES = 4  # passes of WG_ROWS rows per packing of X (4 MB of floats at N = 1024)
    WG_COLS = 128  # columns of dG (rows of dW) per transposed copy: 136 KB of floats, in L2
    WG_LDA = WG_ROWS + 16  # the most elements between the copy's rows (_wg_lda)


cdef inline Py_ssize_t _wg_lda(Py_ssize_t kn, Py_ssize_t esize) noexcept nogil:
    """The row stride of weight_grad's transposed copy of kn rows of dG: kn elements, a line
    more where kn * esize bytes is a multiple of 256. The transpose writes a line's halves into
    8 of the copy's rows at a time; rows 1 KB apart (kn = 256 floats) fell into 4 of L1's 64
    sets, which its 12 ways could not hold, and each half-line store missed. (A line more at
    every kn cost the variable-length batches, whose runs are a few rows: each row of the copy
    is zero-padded to the stride.)"""
    return kn + (64 // esize if (kn * esize) % 256 == 0 else 0)


cdef inline void thread_units(Py_ssize_t H, int size, int rank, Py_ssize_t* j0,
                              Py_ssize_t* j1) noexcept nogil:
    """[j0, j1): the hidden units of rank's narrow blocks."""
    cdef Py_ssize_t lo, hi, nb = unit_blocks(H)
    share(nb, size, rank, &lo, &hi)
    block_span(H, nb, lo, hi, j0, j1)


cdef inline void thread_units_isa(Py_ssize_t H, int size, int rank, int isa, Py_ssize_t* j0,
                                  Py_ssize_t* j1) noexcept nogil:
    """[j0, j1): rank's hidden units in a kernel whose GEMMs run on the micro-kernels of isa.

    The micro-kernels give every element of C the same sum whatever columns a call covers
    (_rgemm.h), so their units need not follow the narrow blocks that keep BLAS's bits
    independent of the team: they go in runs of 16 (a 64-byte line of floats), as even as that
    allows. H = 200 on 2 threads: 96 and 104 units, where the blocks of 64 gave 128 and 72 (the
    slower thread's step GEMM then had 4 panels of 32 columns per gate instead of 3.5). Without
    micro-kernels (isa FR_ISA_NONE), thread_units."""
    cdef Py_ssize_t lo, hi
    if isa == FR_ISA_NONE:
        thread_units(H, size, rank, j0, j1)
        return
    share((H + 15) // 16, size, rank, &lo, &hi)
    j0[0] = min(lo * 16, H)
    j1[0] = min(hi * 16, H)


cdef struct Packed:
    # A thread's columns of W_hh, packed for the micro-kernels (data NULL: use BLAS).
    int isa
    void* data
    Py_ssize_t seg  # elements per packed gate block
    int sweep       # kept (prepacked) panels: direction of the next step_gates sweep (0, 1)


cdef inline void _pack(int isa, int trans, Py_ssize_t k, Py_ssize_t n, const floating* b,
                       Py_ssize_t ldb, floating* p) noexcept nogil:
    if floating is float:
        fr_pack_s(isa, trans, k, n, b, ldb, p)
    else:
        fr_pack_d(isa, trans, k, n, b, ldb, p)


cdef inline void _transpose(int isa, Py_ssize_t rows, Py_ssize_t cols, const floating* src,
                            Py_ssize_t lds, floating* dst, Py_ssize_t ldd) noexcept nogil:
    """dst[j * ldd + i] = src[i * lds + j] for i < rows, j < cols (zero for rows <= i < ldd)."""
    if floating is float:
        fr_transpose_s(isa, rows, cols, src, lds, dst, ldd)
    else:
        fr_transpose_d(isa, rows, cols, src, lds, dst, ldd)


cdef inline void _rgemm(int isa, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const floating* a,
                        Py_ssize_t lda, const floating* p, floating* c, Py_ssize_t ldc,
                        bint add) noexcept nogil:
    """C[:m, :n] (+)= A[:m, :k] @ P; A row-major, P packed by _pack."""
    if floating is float:
        fr_rgemm_s(isa, m, n, k, a, lda, 1, p, 0, c, ldc, add)
    else:
        fr_rgemm_d(isa, m, n, k, a, lda, 1, p, 0, c, ldc, add)


cdef inline void _rgemv_gates(int isa, int n_gates, Py_ssize_t w, Py_ssize_t k,
                              const floating* a, const floating* p, Py_ssize_t seg,
                              floating* c, Py_ssize_t gs, bint add) noexcept nogil:
    """c[g * gs + j] (+)= a[:k] @ P_g[:, j] for j < w of each packed gate block P_g = p + g *
    seg: one row times the same columns of every gate (_rgemm.h: fr_rgemv_gates_*)."""
    if floating is float:
        fr_rgemv_gates_s(isa, n_gates, w, k, a, p, seg, c, gs, add)
    else:
        fr_rgemv_gates_d(isa, n_gates, w, k, a, p, seg, c, gs, add)


cdef inline void _alloc(Packed* pk, int isa, Py_ssize_t n_blocks, Py_ssize_t k, Py_ssize_t n,
                        size_t elem) noexcept nogil:
    pk.isa = isa
    pk.data = NULL
    pk.seg = 0
    pk.sweep = 0
    if isa == FR_ISA_NONE or n <= 0 or k <= 0:
        return
    pk.seg = fr_rgemm_packed_size(isa, elem, k, n)
    pk.data = fr_rgemm_alloc(n_blocks * pk.seg * elem)


cdef inline void pack_nt(Packed* pk, int isa, Py_ssize_t H, Py_ssize_t j0, Py_ssize_t j1,
                         int n_gates, const floating* w) noexcept nogil:
    """Pack B = W[g*H + [j0, j1)]^T (H x (j1 - j0)) of every gate g; W is (n_gates * H, H)."""
    pack_nt_k(pk, isa, H, H, j0, j1, n_gates, w)


cdef inline void pack_nn(Packed* pk, int isa, Py_ssize_t H, Py_ssize_t j0, Py_ssize_t j1,
                         Py_ssize_t G, const floating* w) noexcept nogil:
    """Pack B = W[:, [j0, j1)] (G x (j1 - j0)); W is (G, H)."""
    _alloc(pk, isa, 1, G, j1 - j0, sizeof(floating))
    if pk.data != NULL:
        _pack(isa, False, G, j1 - j0, w + j0, H, <floating*> pk.data)


cdef inline void release(Packed* pk) noexcept nogil:
    free(pk.data)
    pk.data = NULL


cdef inline void recurrent_nt(blas_int m, Py_ssize_t H, Py_ssize_t j0, Py_ssize_t j1,
                              int n_gates, const floating* h, const floating* w, floating beta,
                              floating* c, blas_int ldc, const Packed* pk) noexcept nogil:
    """C[:m, blk] := h[:m] @ W[blk]^T + beta C[:m, blk] (beta 0 or 1) for the gate columns
    blk = g*H + [j0, j1); h is (m, H), W is (n_gates * H, H), pk from pack_nt or empty."""
    recurrent_nt_k(m, H, H, j0, j1, n_gates, h, w, beta, c, ldc, pk)


cdef inline void recurrent_nn(blas_int m, Py_ssize_t H, Py_ssize_t j0, Py_ssize_t j1,
                              blas_int G, const floating* da, const floating* w, floating beta,
                              floating* dh, const Packed* pk) noexcept nogil:
    """dh[:m, [j0, j1)] := da[:m] @ W[:, [j0, j1)] + beta dh[:m, [j0, j1)] (beta 0 or 1); da is
    (m, G), W is (G, H), dh is (m, H), pk from pack_nn or empty."""
    recurrent_nn_ld(m, H, j0, j1, G, da, G, w, beta, dh, pk)


# The general forms of the three above, for operands that are not (B, H) by (G, H): the forward's
# input projection (x is (rows, I)), the LSTM projection (W_hh is (G, P), and h_t = m_t W_hr^T is
# cut over the P columns of W_hr) and the reset-before GRU (its two GEMMs per step read a gate
# block of the (B, G) gradients, whose rows are G apart).
cdef inline void pack_nt_k(Packed* pk, int isa, Py_ssize_t H, Py_ssize_t K, Py_ssize_t j0,
                           Py_ssize_t j1, int n_gates, const floating* w) noexcept nogil:
    """Pack B = W[g*H + [j0, j1)]^T (K x (j1 - j0)) of every gate g; W is (n_gates * H, K)."""
    cdef int g
    _alloc(pk, isa, n_gates, K, j1 - j0, sizeof(floating))
    if pk.data != NULL:
        for g in range(n_gates):
            _pack(isa, True, K, j1 - j0, w + (g * H + j0) * K, K,
                  <floating*> pk.data + g * pk.seg)


cdef inline void recurrent_nt_k(blas_int m, Py_ssize_t H, Py_ssize_t K, Py_ssize_t j0,
                                Py_ssize_t j1, int n_gates, const floating* h,
                                const floating* w, floating beta, floating* c, blas_int ldc,
                                const Packed* pk) noexcept nogil:
    """recurrent_nt with K-wide rows: C[:m, blk] := h[:m] @ W[blk]^T + beta C[:m, blk] (beta 0
    or 1) for blk = g*H + [j0, j1); h is (m, K), W is (n_gates * H, K), pk from pack_nt_k."""
    cdef Py_ssize_t nb = unit_blocks(H), width = (j1 - j0)
    cdef Py_ssize_t b, u0, u1
    cdef int g
    if m <= 0 or width <= 0:
        return
    if pk.data != NULL:
        if m == 1 and n_gates > 1 and width < 4 * fr_rgemm_nr(pk.isa, sizeof(floating)):
            # a step of a batch of 1 with few panels per gate: the gates' panels side by side
            _rgemv_gates(pk.isa, n_gates, width, K, h, <const floating*> pk.data, pk.seg,
                         c + j0, H, beta != 0)
            return
        for g in range(n_gates):
            _rgemm(pk.isa, m, width, K, h, K, <const floating*> pk.data + g * pk.seg,
                   c + g * H + j0, ldc, beta != 0)
        return
    for b in range(nb):  # whole blocks when [j0, j1) is thread_units' (the bits then do not
        block_span(H, nb, b, b + 1, &u0, &u1)  # depend on the team), else their parts in it
        u0 = max(u0, j0)
        u1 = min(u1, j1)
        if u1 > u0:
            gemm_gates_nt(m, H, u0, u1, n_gates, K, h, K, w, beta, c, ldc)


# Rows of x per chunk of the time-step projection (project_steps): a chunk's gate rows stay in
# cache from the projection to their step.
cdef enum:
    PROJ_ROWS = 256


cdef inline Py_ssize_t steps_per_chunk(Py_ssize_t B) noexcept nogil:
    """Time steps per chunk of project_steps (also the length of an inference forward's ring of
    projected gates)."""
    return max(1, PROJ_ROWS // max(B, 1))


# Packed bytes of W_ih and W_hh from which a training forward projects all T steps at once
# (upfront_projection): about half a current server's L3.
cdef enum:
    UPFRONT_BYTES = 16 * 1024 * 1024


cdef inline bint upfront_projection(Py_ssize_t H, Py_ssize_t I, int n_gates,
                                    size_t elem) noexcept nogil:
    """Whether a training forward computes the input projection of all T steps before its time
    loop (input_projection, one wide block of W_ih packed at a time) rather than tc steps at a
    time inside it (project_steps, each thread's columns of W_ih packed for the whole call).

    The chunks keep a chunk's projected gates in cache until their steps read them, which
    pays while both packed weights fit in the L3 beside them. At H = I = 1024 (LSTM) they are
    32 MB: the chunks' passes over the packed W_ih then pushed the packed W_hh out of L3, and
    every step read it from memory again (DeepBench's H1024 B32 T25 forward: 40 ms, of which
    16 for the recurrent GEMMs alone with I = 32)."""
    return <size_t> n_gates * H * (H + I) * elem >= UPFRONT_BYTES


cdef inline void project_steps(Py_ssize_t R, Py_ssize_t I, Py_ssize_t H, Py_ssize_t j0,
                               Py_ssize_t j1, int n_gates, const floating* x,
                               const floating* w_ih, const floating* bias, floating* out,
                               const Packed* pk) noexcept nogil:
    """out[r, blk] = bias[blk] + x[r] @ W_ih[blk]^T for R rows and the thread's own gate columns
    blk = g*H + [j0, j1): the columns its steps read, so no other thread waits for them; x is
    (R, I), out is (R, n_gates * H), pk from pack_nt_k(pk, isa, H, I, j0, j1, n_gates, w_ih)."""
    cdef Py_ssize_t G = n_gates * H, m = j1 - j0, r
    cdef int g
    if R <= 0 or m <= 0:
        return
    for r in range(R):
        for g in range(n_gates):
            memcpy(out + r * G + g * H + j0, bias + g * H + j0, m * sizeof(floating))
    recurrent_nt_k(R, H, I, j0, j1, n_gates, x, w_ih, <floating> 1, out, G, pk)


cdef inline void recurrent_nn_ld(blas_int m, Py_ssize_t H, Py_ssize_t j0, Py_ssize_t j1,
                                 blas_int K, const floating* da, blas_int lda,
                                 const floating* w, floating beta, floating* dh,
                                 const Packed* pk) noexcept nogil:
    """recurrent_nn with a strided da: dh[:m, [j0, j1)] := da[:m, :K] @ W[:, [j0, j1)] + beta
    dh[:m, [j0, j1)] (beta 0 or 1); da's rows are lda apart, W is (K, H), dh is (m, H), pk from
    pack_nn(pk, isa, H, j0, j1, K, w) or empty."""
    cdef Py_ssize_t nb = unit_blocks(H)
    cdef Py_ssize_t b, u0, u1
    if m <= 0 or j1 <= j0:
        return
    if pk.data != NULL:
        _rgemm(pk.isa, m, j1 - j0, K, da, lda, <const floating*> pk.data, dh + j0, H, beta != 0)
        return
    for b in range(nb):  # as in recurrent_nt_k
        block_span(H, nb, b, b + 1, &u0, &u1)
        u0 = max(u0, j0)
        u1 = min(u1, j1)
        if u1 > u0:
            gemm(False, False, m, u1 - u0, K, <floating> 1, da, lda, w + u0, H, beta, dh + u0, H)


cdef inline Py_ssize_t _pieces(int n_gates) noexcept nogil:
    return (4 + n_gates - 1) // n_gates


cdef inline void wide_block(Py_ssize_t H, int n_gates, Py_ssize_t blk, Py_ssize_t* c0,
                            Py_ssize_t* c1) noexcept nogil:
    """Gate columns [c0, c1) of wide block blk."""
    cdef Py_ssize_t p = _pieces(n_gates)
    cdef Py_ssize_t g = blk // p, q = blk % p
    block_span(H, p, q, q + 1, c0, c1)
    c0[0] += g * H
    c1[0] += g * H


cdef inline void wide_share(Py_ssize_t H, int n_gates, int size, int rank, Py_ssize_t* lo,
                            Py_ssize_t* hi) noexcept nogil:
    """[lo, hi): rank's wide blocks."""
    share(n_gates * _pieces(n_gates), size, rank, lo, hi)


cdef inline void input_projection(Py_ssize_t T, Py_ssize_t B, const int* batch_sizes,
                                  Py_ssize_t I, Py_ssize_t H, int n_gates, const floating* x,
                                  const floating* w_ih, const floating* bias, floating* out,
                                  int size, int rank, int isa) noexcept nogil:
    """out[t, b, blk] = bias[blk] + x[t, b] @ W_ih[blk]^T for the active rows b <
    batch_sizes[t] of all T steps (row_run's runs; padding rows of out are not written), over
    rank's wide blocks; x is (T, B, I), out (T, B, n_gates * H). With a micro-kernel isa, each
    block of W_ih is packed once."""
    cdef Py_ssize_t G = n_gates * H
    cdef Py_ssize_t lo, hi, blk, c0, c1, r, t, e, rows
    cdef floating* o
    cdef Packed pk
    wide_share(H, n_gates, size, rank, &lo, &hi)
    for blk in range(lo, hi):
        wide_block(H, n_gates, blk, &c0, &c1)
        if c1 <= c0:
            continue
        _alloc(&pk, isa, 1, I, c1 - c0, sizeof(floating))
        if pk.data != NULL:
            _pack(isa, True, I, c1 - c0, w_ih + c0 * I, I, <floating*> pk.data)
        t = 0
        while t < T:
            e = row_run(batch_sizes, t, T, B, &rows)
            o = out + t * B * G
            for r in range(rows):
                memcpy(o + r * G + c0, bias + c0, (c1 - c0) * sizeof(floating))
            if pk.data != NULL:
                _rgemm(isa, rows, c1 - c0, I, x + t * B * I, I, <const floating*> pk.data,
                       o + c0, G, True)
            else:
                gemm(False, True, rows, c1 - c0, I, <floating> 1, x + t * B * I, I,
                     w_ih + c0 * I, I, <floating> 1, o + c0, G)
            t = e
        release(&pk)


cdef inline void weight_grad(Py_ssize_t R, Py_ssize_t N, Py_ssize_t H, int n_gates,
                             const floating* dg, const floating* x, floating beta,
                             floating* dw, int size, int rank, int isa) noexcept nogil:
    """dW[blk] := dG[:, blk]^T @ X + beta dW[blk] (beta 0 or 1) over rank's wide blocks; dG is
    (R, n_gates * H), X is (R, N), dW is (n_gates * H, N)."""
    weight_grad_ld(R, N, H, n_gates, dg, n_gates * H, x, beta, dw, size, rank, isa)


cdef inline void weight_grad_ld(Py_ssize_t R, Py_ssize_t N, Py_ssize_t H, int n_gates,
                                const floating* dg, Py_ssize_t ldg, const floating* x,
                                floating beta, floating* dw, int size, int rank,
                                int isa) noexcept nogil:
    """weight_grad over n_gates gate blocks of a dG whose rows are ldg apart (a wider matrix).

    With a micro-kernel isa, the reduction over the R rows goes in passes of WG_ROWS rows,
    WG_PASSES passes at a time: the thread packs those rows of X into panels (zero-padded past
    N), then for each WG_COLS columns of its blocks of dG runs the passes one after the other,
    each on a transposed copy of that pass's columns of dG whose rows are contiguous (_rgemm.h:
    fr_transpose_*). Read in place, a tile's k rows of dG lay G floats apart, which L1 and L2
    map to a few sets, and X's rows N apart; and going pass by pass over all the thread's
    columns, each pass read and wrote all of its dW (8 MB at H = I = 1024), where WG_COLS rows of
    dW now stay in cache for WG_PASSES passes. The sums are those of the operands read in place
    (each element one chain per pass, the passes in increasing order). Without one (or without
    memory for the copies), BLAS."""
    cdef Py_ssize_t lo, hi, blk, c0, c1, i0, mc, k0, k1, ke, kn, nr, lda, npad = 0
    cdef floating* xp = NULL
    cdef floating* at = NULL
    if R <= 0:
        return
    wide_share(H, n_gates, size, rank, &lo, &hi)
    if isa != FR_ISA_NONE:
        nr = fr_rgemm_nr(isa, sizeof(floating))
        npad = (N + nr - 1) // nr * nr
        xp = <floating*> fr_rgemm_alloc(min(R, <Py_ssize_t> WG_PASSES * WG_ROWS) * npad
                                        * sizeof(floating))
        at = <floating*> fr_rgemm_alloc(WG_COLS * WG_LDA * sizeof(floating))
    if xp == NULL or at == NULL:
        for blk in range(lo, hi):
            wide_block(H, n_gates, blk, &c0, &c1)
            if c1 > c0:
                gemm(True, False, c1 - c0, N, R, <floating> 1, dg + c0, ldg, x, N, beta,
                     dw + c0 * N, N)
        free(xp)
        free(at)
        return
    k1 = 0
    while k1 < R:  # WG_PASSES passes of WG_ROWS rows: [k1, ke)
        ke = min(k1 + <Py_ssize_t> WG_PASSES * WG_ROWS, R)
        k0 = k1
        while k0 < ke:  # pass [k0, k0 + kn) of X, packed at row k0 - k1 of xp
            kn = min(<Py_ssize_t> WG_ROWS, ke - k0)
            _pack(isa, False, kn, N, x + k0 * N, N, xp + (k0 - k1) * npad)
            k0 += WG_ROWS
        for blk in range(lo, hi):
            wide_block(H, n_gates, blk, &c0, &c1)
            i0 = c0
            while i0 < c1:
                mc = min(<Py_ssize_t> WG_COLS, c1 - i0)
                k0 = k1
                while k0 < ke:
                    kn = min(<Py_ssize_t> WG_ROWS, ke - k0)
                    # at[i, kk] = dG[k0 + kk, i0 + i]: rows i of A = dG[k0:k0 + kn, i0:i0 + mc]^T
                    lda = _wg_lda(kn, sizeof(floating))
                    _transpose(isa, kn, mc, dg + k0 * ldg + i0, ldg, at, lda)
                    _rgemm(isa, mc, N, kn, at, lda, xp + (k0 - k1) * npad, dw + i0 * N, N,
                           k0 > 0 or beta != 0)
                    k0 += WG_ROWS
                i0 += mc
        k1 = ke
    free(xp)
    free(at)


# --- variable-length batches ----------------------------------------------------------------
# Rows are sorted by decreasing length, so step t's active rows are the first batch_sizes[t]
# of its B (batch_sizes non-increasing, batch_sizes[0] == B). In a (T, B, .) array the active
# rows of a run of full steps and the next partial step are contiguous (row_run): the forward's
# input projection and the GEMMs after the backward's loop (dW, db, dx) go over those runs, not
# over the padding: its rows of the projected gates and of dG are never read (the plain cells
# leave them unset), and values there (a NaN in x's padding) reach no result. A batch without
# lengths is one run of T * B rows: the same calls, so the same bits, as the whole-array forms
# above.
cdef inline Py_ssize_t row_run(const int* batch_sizes, Py_ssize_t t, Py_ssize_t t1,
                               Py_ssize_t B, Py_ssize_t* rows) noexcept nogil:
    """The end e <= t1 of the run of steps [t, e) whose active rows are contiguous in a
    (T, B, .) array -- full steps, then at most one partial step -- and their count in rows."""
    cdef Py_ssize_t e = t
    while e < t1 and batch_sizes[e] == B:
        e += 1
    rows[0] = (e - t) * B
    if e < t1:
        rows[0] += batch_sizes[e]
        e += 1
    return e


cdef inline void project_active(Py_ssize_t t0, Py_ssize_t t1, Py_ssize_t B,
                                const int* batch_sizes, Py_ssize_t I, Py_ssize_t H,
                                Py_ssize_t j0, Py_ssize_t j1, int n_gates, const floating* x,
                                const floating* w_ih, const floating* bias, floating* out,
                                const Packed* pk) noexcept nogil:
    """project_steps over the active rows of steps [t0, t1): x is the (T, B, I) input, out the
    (B, n_gates * H) block of step t0 with the next steps' blocks after it. Padding rows of out
    are not written."""
    cdef Py_ssize_t t = t0, e, rows, G = n_gates * H
    while t < t1:
        e = row_run(batch_sizes, t, t1, B, &rows)
        project_steps(rows, I, H, j0, j1, n_gates, x + t * B * I, w_ih, bias,
                      out + (t - t0) * B * G, pk)
        t = e


cdef inline void project_rows(Py_ssize_t t0, Py_ssize_t t1, Py_ssize_t B, Py_ssize_t b0,
                              Py_ssize_t b1, Py_ssize_t I, Py_ssize_t H, int n_gates,
                              const floating* x, const floating* w_ih, const floating* bias,
                              floating* out, const Packed* pk) noexcept nogil:
    """project_steps over rows [b0, b1) of steps [t0, t1), every unit (pk packed for all of
    them): x is the (T, B, I) input, out the (B, n_gates * H) block of step t0 with the next
    steps' blocks after it. For loops whose threads split rows (_prepack.pxd: rows_fit)."""
    cdef Py_ssize_t t, G = n_gates * H
    for t in range(t0, t1):
        project_steps(b1 - b0, I, H, 0, H, n_gates, x + (t * B + b0) * I, w_ih, bias,
                      out + ((t - t0) * B + b0) * G, pk)


cdef inline void weight_grad_active(Py_ssize_t T, Py_ssize_t B, const int* batch_sizes,
                                    Py_ssize_t N, Py_ssize_t H, int n_gates, const floating* dg,
                                    Py_ssize_t ldg, const floating* x, floating beta,
                                    floating* dw, int size, int rank, int isa) noexcept nogil:
    """weight_grad_ld over the active rows of T steps, one call per run of row_run (each wide
    block's sums go over the runs in order): dG is (T, B, .) with rows ldg apart, X is
    (T, B, N) and step t's active rows are its first batch_sizes[t]."""
    cdef Py_ssize_t t = 0, e, rows
    while t < T:
        e = row_run(batch_sizes, t, T, B, &rows)
        weight_grad_ld(rows, N, H, n_gates, dg + t * B * ldg, ldg, x + t * B * N,
                       beta if t == 0 else <floating> 1, dw, size, rank, isa)
        t = e


cdef inline void bias_grad_active(Py_ssize_t T, Py_ssize_t B, const int* batch_sizes,
                                  Py_ssize_t H, int n_gates, const floating* dg, floating* db,
                                  int size, int rank) noexcept nogil:
    """db[c] = sum of dG[t, b, c] over the active rows b < batch_sizes[t] of T steps, over
    rank's wide blocks; dG is (T, B, n_gates * H)."""
    cdef Py_ssize_t G = n_gates * H
    cdef Py_ssize_t lo, hi, blk, c0, c1, t, r, c
    wide_share(H, n_gates, size, rank, &lo, &hi)
    for blk in range(lo, hi):
        wide_block(H, n_gates, blk, &c0, &c1)
        for c in range(c0, c1):
            db[c] = 0
        for t in range(T):
            for r in range(t * B, t * B + batch_sizes[t]):
                for c in range(c0, c1):
                    db[c] += dg[r * G + c]


# Packed bytes of W_ih from which dx = dG @ W_ih is shared by columns (dx_by_columns).
cdef enum:
    DX_COLUMN_BYTES = 8 * 1024 * 1024


cdef inline bint dx_by_columns(Py_ssize_t G, Py_ssize_t I, int isa, size_t elem,
                               int size) noexcept nogil:
    """Whether the threads share dx = dG @ W_ih by columns of dx (each packs its columns of
    W_ih and reads all of dG: input_grad_columns) rather than by rows (each packs all of W_ih).

    By rows, every thread packs its own copy of the whole W_ih: at G = 4096, I = 1024 (an LSTM
    at H = I = 1024) 16 MB each, 32 MB in all, this machine's whole L3, so the copies were
    written to memory and every chunk of rows read its copy back from there. By columns the
    copies add up to one W_ih. Taken when W_ih is that large and every thread gets at least two
    panels of columns."""
    if isa == FR_ISA_NONE or size <= 1:
        return False
    return (<size_t> G * I * elem >= DX_COLUMN_BYTES
            and (I + fr_rgemm_nr(isa, elem) - 1) // fr_rgemm_nr(isa, elem) >= 2 * size)


cdef inline void zero_padding(Py_ssize_t T, Py_ssize_t B, const int* batch_sizes, Py_ssize_t I,
                              floating* dx, int size, int rank) noexcept nogil:
    """rank's share of the T steps of a (T, B, I) dx: the padding rows of each (past
    batch_sizes[t]) set to zero."""
    cdef Py_ssize_t lo, hi, t
    share(T, size, rank, &lo, &hi)
    for t in range(lo, hi):
        zero_rows(dx + t * B * I, batch_sizes[t], B, I)


cdef inline void input_grad_columns(Py_ssize_t T, Py_ssize_t B, const int* batch_sizes,
                                    Py_ssize_t I, Py_ssize_t G, const floating* dg,
                                    const floating* w_ih, floating* dx, int size, int rank,
                                    int isa) noexcept nogil:
    """input_grad_active over rank's columns of dx, whole panels of them (dx_by_columns): each
    element the same sum as by rows (the micro-kernels' chains depend on G alone); without
    memory for the packed columns, BLAS on the same columns. dx's padding rows are set to
    zero."""
    cdef Py_ssize_t nr = fr_rgemm_nr(isa, sizeof(floating)), lo, hi, i0, i1, t, e, rows
    cdef Packed pk
    share((I + nr - 1) // nr, size, rank, &lo, &hi)
    i0 = min(lo * nr, I)
    i1 = min(hi * nr, I)
    if i1 > i0:
        _alloc(&pk, isa, 1, G, i1 - i0, sizeof(floating))
        if pk.data != NULL:
            _pack(isa, False, G, i1 - i0, w_ih + i0, I, <floating*> pk.data)
        t = 0
        while t < T:
            e = row_run(batch_sizes, t, T, B, &rows)
            if pk.data != NULL:
                _rgemm(isa, rows, i1 - i0, G, dg + t * B * G, G, <const floating*> pk.data,
                       dx + t * B * I + i0, I, False)
            else:
                gemm(False, False, rows, i1 - i0, G, <floating> 1, dg + t * B * G, G,
                     w_ih + i0, I, <floating> 0, dx + t * B * I + i0, I)
            t = e
        release(&pk)
    zero_padding(T, B, batch_sizes, I, dx, size, rank)


cdef inline void _dx_share(Py_ssize_t R, Py_ssize_t I, Py_ssize_t G, const floating* w_ih,
                           Packed* pk, int size, int rank, int isa, Py_ssize_t* lo,
                           Py_ssize_t* hi) noexcept nogil:
    """rank's rows [lo, hi) of a dx = dG @ W_ih of R rows, and pk: W_ih packed for the
    micro-kernels (when rank has rows), or empty for BLAS. The micro-kernels take runs of rows
    in multiples of 8 (the tiles' height); BLAS whole blocks of DX_ROWS, fixed by R alone."""
    _alloc(pk, isa, 1, G, I, sizeof(floating))
    if pk.data == NULL:
        share((R + DX_ROWS - 1) // DX_ROWS, size, rank, lo, hi)
        lo[0] = lo[0] * DX_ROWS
        hi[0] = min(hi[0] * DX_ROWS, R)
    else:
        share((R + 7) // 8, size, rank, lo, hi)
        lo[0] = lo[0] * 8
        hi[0] = min(hi[0] * 8, R)
        if hi[0] > lo[0]:
            _pack(isa, False, G, I, w_ih, I, <floating*> pk.data)


cdef inline void input_grad_active(Py_ssize_t T, Py_ssize_t B, const int* batch_sizes,
                                   Py_ssize_t I, Py_ssize_t G, const floating* dg,
                                   const floating* w_ih, floating* dx, int size, int rank,
                                   int isa) noexcept nogil:
    """input_grad over the active rows of T steps; dx's padding rows are set to zero.

    The threads share the active rows as input_grad shares all rows (counted in the order of
    the runs of row_run, without the padding); blocks also end where a run ends, which depends
    on batch_sizes alone, so the bits do not depend on the thread count."""
    cdef Py_ssize_t R = 0, lo, hi, r0, r1, t, e, rows, p = 0, end
    cdef Packed pk
    if dx_by_columns(G, I, isa, sizeof(floating), size):
        input_grad_columns(T, B, batch_sizes, I, G, dg, w_ih, dx, size, rank, isa)
        return
    for t in range(T):
        R += batch_sizes[t]
    _dx_share(R, I, G, w_ih, &pk, size, rank, isa, &lo, &hi)
    t = 0
    while t < T and p < hi:
        e = row_run(batch_sizes, t, T, B, &rows)
        # this run: active rows [p, p + rows), at row t * B of dG and dx
        r0 = max(lo, p)
        end = min(hi, p + rows)
        while r0 < end:
            if pk.data != NULL:
                r1 = min(r0 + DX_ROWS, end)
                _rgemm(isa, r1 - r0, I, G, dg + (t * B + r0 - p) * G, G,
                       <const floating*> pk.data, dx + (t * B + r0 - p) * I, I, False)
            else:  # whole blocks of DX_ROWS active rows, cut where the run ends
                r1 = min((r0 // DX_ROWS + 1) * DX_ROWS, end)
                gemm(False, False, r1 - r0, I, G, <floating> 1, dg + (t * B + r0 - p) * G, G,
                     w_ih, I, <floating> 0, dx + (t * B + r0 - p) * I, I)
            r0 = r1
        p += rows
        t = e
    release(&pk)
    zero_padding(T, B, batch_sizes, I, dx, size, rank)


cdef inline void input_grad(Py_ssize_t R, Py_ssize_t I, Py_ssize_t G, const floating* dg,
                            const floating* w_ih, floating* dx, int size, int rank,
                            int isa) noexcept nogil:
    """dx = dG @ W_ih, rank's share of the R rows, in blocks of at most DX_ROWS rows; dG is
    (R, G). With a micro-kernel isa, each thread packs W_ih once and takes a contiguous run of
    rows in multiples of 8 (the tiles' height), so that the threads' shares differ by 8 rows at
    most (whole blocks of DX_ROWS gave 256 and 144 of T*B = 400 rows); the bits of a row do not
    depend on the rows around it (_rgemm.h). BLAS, whose rounding may depend on a call's shape,
    gets whole blocks of DX_ROWS, fixed by R alone."""
    cdef Py_ssize_t lo, hi, r0, r1
    cdef Packed pk
    _dx_share(R, I, G, w_ih, &pk, size, rank, isa, &lo, &hi)
    r0 = lo
    while r0 < hi:
        r1 = min(r0 + DX_ROWS, hi)
        if pk.data != NULL:
            _rgemm(isa, r1 - r0, I, G, dg + r0 * G, G, <const floating*> pk.data, dx + r0 * I,
                   I, False)
        else:
            gemm(False, False, r1 - r0, I, G, <floating> 1, dg + r0 * G, G, w_ih, I,
                 <floating> 0, dx + r0 * I, I)
        r0 = r1
    release(&pk)


cdef inline void step_gates(Py_ssize_t B, Py_ssize_t I, Py_ssize_t H, Py_ssize_t j0,
                            Py_ssize_t j1, int n_gates, const floating* x, const floating* h,
                            const floating* w_ih, const floating* w_hh, const floating* bias,
                            floating* a, floating* c, bint add, const Packed* pk_ih,
                            const Packed* pk, bint backward) noexcept nogil:
    """One step (T = 1) for the thread's gate columns blk = g*H + [j0, j1), rows G apart:
    a[:B, blk] = bias[blk] + x[:B] @ W_ih[blk]^T, then c[:B, blk] (+)= h[:B] @ W_hh[blk]^T (add:
    c is a; else the GRU's separate W_hh h). Bitwise project_steps then recurrent_nt.

    A step of B = 1 reads all of W_ih and W_hh (2 MB for an LSTM with I = H = 256) for little
    arithmetic: its time is that of bringing them into the core. With both packed, the columns
    go in groups of four panels, each group's recurrent GEMM right after its projection, last
    group first when ``backward``: a caller that alternates the direction from step to step
    finds what the previous step read last (up to the L2's size) still in L2 instead of L3."""
    cdef Py_ssize_t G = n_gates * H, m = j1 - j0, width, groups, k, g, q, w, col, r
    if B <= 0 or m <= 0:
        return
    if pk_ih.data == NULL or pk.data == NULL or pk_ih.isa != pk.isa:
        project_steps(B, I, H, j0, j1, n_gates, x, w_ih, bias, a, pk_ih)
        recurrent_nt(B, H, j0, j1, n_gates, h, w_hh, <floating> (1 if add else 0), c, G, pk)
        return
    width = 4 * fr_rgemm_nr(pk.isa, sizeof(floating))
    groups = (m + width - 1) // width
    for k in range(n_gates * groups):
        g = (n_gates * groups - 1 - k if backward else k) // groups
        q = (n_gates * groups - 1 - k if backward else k) % groups * width
        w = min(width, m - q)
        col = g * H + j0 + q
        for r in range(B):
            memcpy(a + r * G + col, bias + col, w * sizeof(floating))
        _rgemm(pk.isa, B, w, I, x, I, <const floating*> pk_ih.data + g * pk_ih.seg + q * I,
               a + col, G, True)
        _rgemm(pk.isa, B, w, H, h, H, <const floating*> pk.data + g * pk.seg + q * H, c + col,
               G, add)
