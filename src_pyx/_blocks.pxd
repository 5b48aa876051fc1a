# The GEMMs of the cell kernels, cut into blocks and shared among a team, header-only.
#
# Legend as in the cells: H hidden units, n_gates gate blocks of H columns (G = n_gates * H).
# Two cuts of the gate columns, both fixed by the problem (never by the thread count, see
# _parallel.pxd):
#   * narrow blocks (unit_blocks(H), ~64 units): the per-step recurrent GEMMs; a thread owns a
#     contiguous run of them, that is hidden units [j0, j1) and the gate columns g*H + [j0, j1);
#   * wide blocks (a gate block cut in ceil(4 / n_gates) pieces, so 4 to 6 blocks): the GEMMs
#     over all T*B rows (input projection, weight gradients), where each extra call re-packs
#     the shared operand, so fewer, larger calls are better.

from cython cimport floating
from libc.string cimport memcpy

from _blas cimport blas_int, gemm, gemm_gates_nt
from _parallel cimport block_span, share, unit_blocks

# Rows per block of the dx GEMM.
cdef enum:
    DX_ROWS = 256


cdef inline void thread_units(Py_ssize_t H, int size, int rank, Py_ssize_t* j0,
                              Py_ssize_t* j1) noexcept nogil:
    """[j0, j1): the hidden units of rank's narrow blocks."""
    cdef Py_ssize_t lo, hi, nb = unit_blocks(H)
    share(nb, size, rank, &lo, &hi)
    block_span(H, nb, lo, hi, j0, j1)


cdef inline void recurrent_nt(blas_int m, Py_ssize_t H, Py_ssize_t j0, Py_ssize_t j1,
                              int n_gates, const floating* h, const floating* w, floating beta,
                              floating* c, blas_int ldc) noexcept nogil:
    """C[:m, blk] := h[:m] @ W[blk]^T + beta C[:m, blk] over the narrow blocks in [j0, j1);
    h is (m, H), W is (n_gates * H, H)."""
    cdef Py_ssize_t nb = unit_blocks(H), width = (j1 - j0)
    cdef Py_ssize_t b, u0, u1
    if m <= 0 or width <= 0:
        return
    for b in range(nb):
        block_span(H, nb, b, b + 1, &u0, &u1)
        if u0 >= j0 and u1 <= j1 and u1 > u0:
            gemm_gates_nt(m, H, u0, u1, n_gates, H, h, H, w, beta, c, ldc)


cdef inline void recurrent_nn(blas_int m, Py_ssize_t H, Py_ssize_t j0, Py_ssize_t j1,
                              blas_int G, const floating* da, const floating* w, floating beta,
                              floating* dh) noexcept nogil:
    """dh[:m, blk] := da[:m] @ W[:, blk] + beta dh[:m, blk] over the narrow blocks in [j0, j1);
    da is (m, G), W is (G, H), dh is (m, H)."""
    cdef Py_ssize_t nb = unit_blocks(H)
    cdef Py_ssize_t b, u0, u1
    if m <= 0:
        return
    for b in range(nb):
        block_span(H, nb, b, b + 1, &u0, &u1)
        if u0 >= j0 and u1 <= j1 and u1 > u0:
            gemm(False, False, m, u1 - u0, G, <floating> 1, da, G, w + u0, H, beta, dh + u0, H)


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


cdef inline void input_projection(Py_ssize_t R, Py_ssize_t I, Py_ssize_t H, int n_gates,
                                  const floating* x, const floating* w_ih,
                                  const floating* bias, floating* out, int size,
                                  int rank) noexcept nogil:
    """out[r, blk] = bias[blk] + x[r] @ W_ih[blk]^T for all R rows, over rank's wide blocks;
    out is (R, n_gates * H)."""
    cdef Py_ssize_t G = n_gates * H
    cdef Py_ssize_t lo, hi, blk, c0, c1, r
    wide_share(H, n_gates, size, rank, &lo, &hi)
    for blk in range(lo, hi):
        wide_block(H, n_gates, blk, &c0, &c1)
        if c1 <= c0:
            continue
        for r in range(R):
            memcpy(out + r * G + c0, bias + c0, (c1 - c0) * sizeof(floating))
        gemm(False, True, R, c1 - c0, I, <floating> 1, x, I, w_ih + c0 * I, I, <floating> 1,
             out + c0, G)


cdef inline void weight_grad(Py_ssize_t R, Py_ssize_t N, Py_ssize_t H, int n_gates,
                             const floating* dg, const floating* x, floating beta,
                             floating* dw, int size, int rank) noexcept nogil:
    """dW[blk] := dG[:, blk]^T @ X + beta dW[blk] over rank's wide blocks; dG is (R, G), X is
    (R, N), dW is (G, N)."""
    cdef Py_ssize_t G = n_gates * H
    cdef Py_ssize_t lo, hi, blk, c0, c1
    if R <= 0:
        return
    wide_share(H, n_gates, size, rank, &lo, &hi)
    for blk in range(lo, hi):
        wide_block(H, n_gates, blk, &c0, &c1)
        if c1 > c0:
            gemm(True, False, c1 - c0, N, R, <floating> 1, dg + c0, G, x, N, beta,
                 dw + c0 * N, N)


cdef inline void bias_grad(Py_ssize_t R, Py_ssize_t H, int n_gates, const floating* dg,
                           floating* db, int size, int rank) noexcept nogil:
    """db[c] = sum_r dG[r, c] over rank's wide blocks; dG is (R, n_gates * H)."""
    cdef Py_ssize_t G = n_gates * H
    cdef Py_ssize_t lo, hi, blk, c0, c1, r, c
    wide_share(H, n_gates, size, rank, &lo, &hi)
    for blk in range(lo, hi):
        wide_block(H, n_gates, blk, &c0, &c1)
        for c in range(c0, c1):
            db[c] = 0
        for r in range(R):
            for c in range(c0, c1):
                db[c] += dg[r * G + c]


cdef inline void input_grad(Py_ssize_t R, Py_ssize_t I, Py_ssize_t G, const floating* dg,
                            const floating* w_ih, floating* dx, int size,
                            int rank) noexcept nogil:
    """dx = dG @ W_ih in blocks of DX_ROWS rows, rank's share of them; dG is (R, G)."""
    cdef Py_ssize_t lo, hi, blk, r0, r1
    share((R + DX_ROWS - 1) // DX_ROWS, size, rank, &lo, &hi)
    for blk in range(lo, hi):
        r0 = blk * DX_ROWS
        r1 = min(r0 + DX_ROWS, R)
        gemm(False, False, r1 - r0, I, G, <floating> 1, dg + r0 * G, G, w_ih, I, <floating> 0,
             dx + r0 * I, I)
