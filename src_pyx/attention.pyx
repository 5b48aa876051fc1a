"""Luong attention (dot and general scores) over a time-major memory, one batch row at a time.

Legend: S memory positions, B batch rows, K features, n queries per row, L = lens[b] the real
positions of row b. The memory is (S, B, K), as a recurrent layer writes it: row b's positions
are the rows of an (S, K) matrix with leading dimension B * K, which BLAS reads in place (no
batch-major copy), and only its first L rows (padded positions are never read, so they need no
zeroing and their values, NaN included, cannot leak). Queries, weights and their gradients are
batch-major, (B, n, K) and (B, n, S). fastrnn/nn/attention.py validates, allocates and keeps the
caches; tests/test_attention.py checks these against PyTorch and finite differences.

    e = p m^T (s < L),  w = softmax(e),  ctx = w m                      (forward)
    dw = dctx m^T,  de = w (dw - sum_s w_s dw_s),  dp = de m              (backward)
    dm = w^T dctx + de^T p = left^T right, left = [w; de], right = [dctx; p]   (memory_grad)
"""

from cython cimport floating
from libc.math cimport exp, expf
from libc.string cimport memset
from scipy.linalg.cython_blas cimport dgemv, sgemv

from _blas cimport blas_int, gemm
from _rgemm cimport FR_ISA_NONE, fr_rgemm_d, fr_rgemm_nr, fr_rgemm_s


cdef inline void _gemv(bint trans, blas_int rows, blas_int cols, const floating* a,
                       blas_int lda, const floating* x, floating* y) noexcept nogil:
    """y := op(A) @ x, A row-major (rows x cols, leading dimension lda), op(A) = A^T if trans."""
    # row-major A is the column-major (cols x rows) A^T: A x is its transposed product
    cdef char t = b'N' if trans else b'T'
    cdef blas_int one = 1
    cdef floating alpha = 1, beta = 0
    if floating is float:
        sgemv(&t, &cols, &rows, &alpha, <float*> a, &lda, <float*> x, &one, &beta, y, &one)
    else:
        dgemv(&t, &cols, &rows, &alpha, <double*> a, &lda, <double*> x, &one, &beta, y, &one)


cdef inline void _times_memory_t(Py_ssize_t n, Py_ssize_t L, Py_ssize_t K, const floating* x,
                                 Py_ssize_t ldx, const floating* mb, Py_ssize_t ldm,
                                 floating* out, Py_ssize_t ldo) noexcept nogil:
    """out[:, :L] := x @ mb[:L]^T for x (n, K): one score per query and position."""
    if n == 1:
        _gemv(False, L, K, mb, ldm, x, out)
    else:
        gemm(False, True, n, L, K, <floating> 1, x, ldx, mb, ldm, <floating> 0, out, ldo)


cdef inline void _times_memory(Py_ssize_t n, Py_ssize_t L, Py_ssize_t K, const floating* x,
                               Py_ssize_t ldx, const floating* mb, Py_ssize_t ldm,
                               floating* out) noexcept nogil:
    """out := x[:, :L] @ mb[:L] for x (n, L+): a mix of the first L positions per query."""
    if n == 1:
        _gemv(True, L, K, mb, ldm, x, out)
    else:
        gemm(False, False, n, K, L, <floating> 1, x, ldx, mb, ldm, <floating> 0, out, K)


cdef void _forward(const floating* m, const Py_ssize_t* lens, const floating* p,
                   floating* w, floating* ctx, Py_ssize_t S, Py_ssize_t B, Py_ssize_t K,
                   Py_ssize_t n) noexcept nogil:
    """Scores, their softmax over the first L positions (exactly 0 after) and the contexts."""
    cdef Py_ssize_t b, i, s, L
    cdef floating* wi
    cdef floating top, total
    for b in range(B):
        L = lens[b]
        _times_memory_t(n, L, K, p + b * n * K, K, m + b * K, B * K, w + b * n * S, S)
        for i in range(n):
            # softmax(e)_s = exp(e_s - max e) / sum_r exp(e_r - max e), over s < L
            wi = w + (b * n + i) * S
            top = wi[0]
            for s in range(1, L):
                if wi[s] > top:
                    top = wi[s]
            total = 0
            for s in range(L):
                if floating is float:
                    wi[s] = expf(wi[s] - top)
                else:
                    wi[s] = exp(wi[s] - top)
                total = total + wi[s]
            for s in range(L):
                wi[s] = wi[s] / total
            if L < S:
                memset(wi + L, 0, (S - L) * sizeof(floating))
        _times_memory(n, L, K, w + b * n * S, S, m + b * K, B * K, ctx + b * n * K)


cdef void _backward(const floating* m, const Py_ssize_t* lens, const floating* w,
                    const floating* dctx, const floating* dweights, floating* de, floating* dp,
                    Py_ssize_t S, Py_ssize_t B, Py_ssize_t K, Py_ssize_t n) noexcept nogil:
    """de (the scores' gradient, 0 at padded positions) and dp (the projected queries')."""
    cdef Py_ssize_t b, i, s, L, r
    cdef floating* dei
    cdef const floating* wi
    cdef floating dot
    for b in range(B):
        L = lens[b]
        _times_memory_t(n, L, K, dctx + b * n * K, K, m + b * K, B * K, de + b * n * S, S)
        for i in range(n):
            r = (b * n + i) * S
            dei, wi = de + r, w + r
            if dweights != NULL:
                for s in range(L):
                    dei[s] = dei[s] + dweights[r + s]
            # de_s = w_s (dw_s - sum_r w_r dw_r)
            dot = 0
            for s in range(L):
                dot = dot + wi[s] * dei[s]
            for s in range(L):
                dei[s] = wi[s] * (dei[s] - dot)
            if L < S:
                memset(dei + L, 0, (S - L) * sizeof(floating))
        _times_memory(n, L, K, de + b * n * S, S, m + b * K, B * K, dp + b * n * K)


cdef void _memory_grad(const Py_ssize_t* lens, const floating* left, const floating* right,
                       floating* dm, Py_ssize_t S, Py_ssize_t B, Py_ssize_t K,
                       Py_ssize_t n) noexcept nogil:
    """dm[:L, b] := left_b[:, :L]^T @ right_b, zero at the padded positions."""
    cdef Py_ssize_t b, s, L
    for b in range(B):
        L = lens[b]
        gemm(True, False, L, K, n, <floating> 1, left + b * n * S, S, right + b * n * K, K,
             <floating> 0, dm + b * K, B * K)
        for s in range(L, S):
            memset(dm + (s * B + b) * K, 0, K * sizeof(floating))


cdef _check_lens(const Py_ssize_t[::1] lens, Py_ssize_t S, Py_ssize_t B):
    """Raise ValueError unless lens is (B,) with values in [1, S] (the kernels read rows by it)."""
    cdef Py_ssize_t b
    if lens.shape[0] != B:
        raise ValueError(f"lens has {lens.shape[0]} rows, the memory {B}")
    for b in range(B):
        if not 1 <= lens[b] <= S:
            raise ValueError(f"lens[{b}] = {lens[b]} is not in [1, S={S}]")


cdef _check_shape(str name, Py_ssize_t* got, Py_ssize_t B, Py_ssize_t n, Py_ssize_t last):
    """Raise ValueError unless an operand's shape is (B, n, last) (the kernels index unchecked)."""
    if got[0] != B or got[1] != n or got[2] != last:
        raise ValueError(f"{name} must have shape {(B, n, last)}, got {(got[0], got[1], got[2])}")


def forward(const floating[:, :, ::1] m not None,       # IN    (S, B, K)
            const Py_ssize_t[::1] lens not None,        # IN    (B,)
            const floating[:, :, ::1] p not None,       # IN    (B, n, K)
            floating[:, :, ::1] w not None,             # OUT   (B, n, S)
            floating[:, :, ::1] ctx not None):          # OUT   (B, n, K)
    """Attention weights and contexts of n projected queries per batch row.

    Parameters
    ----------
    m : ndarray of shape (S, B, K), dtype=float32 or float64
        Time-major memory; only the first ``lens[b]`` positions of row b are read.
    lens : ndarray of shape (B,), dtype=intp
        Real positions of each row, in [1, S].
    p : ndarray of shape (B, n, K), same dtype
        The queries as the score sees them: ``q`` (dot) or ``q W_a^T`` (general).
    w : ndarray of shape (B, n, S), same dtype
        Written: the weights ``softmax_{s < L}(p . m_s)``, exactly 0 at padded positions.
    ctx : ndarray of shape (B, n, K), same dtype
        Written: the contexts ``w @ m``.
    """
    cdef Py_ssize_t S = m.shape[0], B = m.shape[1], K = m.shape[2], n = p.shape[1]
    _check_lens(lens, S, B)
    _check_shape("w", w.shape, B, n, S)
    _check_shape("ctx", ctx.shape, B, n, K)
    if S == 0 or B == 0 or K == 0 or n == 0:
        return
    with nogil:
        _forward(&m[0, 0, 0], &lens[0], &p[0, 0, 0], &w[0, 0, 0], &ctx[0, 0, 0], S, B, K, n)


def backward(const floating[:, :, ::1] m not None,      # IN    (S, B, K)
             const Py_ssize_t[::1] lens not None,       # IN    (B,)
             const floating[:, :, ::1] w not None,      # IN    (B, n, S)
             const floating[:, :, ::1] dctx not None,   # IN    (B, n, K)
             const floating[:, :, ::1] dweights,        # IN (B, n, S) or None
             floating[:, :, ::1] de not None,           # OUT   (B, n, S)
             floating[:, :, ::1] dp not None):          # OUT   (B, n, K)
    """Gradients of the scores and of the projected queries of :func:`forward`.

    Parameters
    ----------
    m, lens
        As in :func:`forward`.
    w : ndarray of shape (B, n, S)
        The weights :func:`forward` wrote.
    dctx : ndarray of shape (B, n, K)
        Gradient of the contexts.
    dweights : ndarray of shape (B, n, S) or None
        Gradient of the weights (None: zero).
    de : ndarray of shape (B, n, S)
        Written: gradient of the scores, 0 at padded positions.
    dp : ndarray of shape (B, n, K)
        Written: gradient of ``p``, ``de @ m``.
    """
    cdef Py_ssize_t S = m.shape[0], B = m.shape[1], K = m.shape[2], n = w.shape[1]
    cdef const floating* dwx = NULL
    _check_lens(lens, S, B)
    _check_shape("w", w.shape, B, n, S)
    _check_shape("dctx", dctx.shape, B, n, K)
    _check_shape("de", de.shape, B, n, S)
    _check_shape("dp", dp.shape, B, n, K)
    if dweights is not None:
        _check_shape("dweights", dweights.shape, B, n, S)
    if S == 0 or B == 0 or K == 0 or n == 0:
        return
    if dweights is not None:
        dwx = &dweights[0, 0, 0]
    with nogil:
        _backward(&m[0, 0, 0], &lens[0], &w[0, 0, 0], &dctx[0, 0, 0], dwx, &de[0, 0, 0],
                  &dp[0, 0, 0], S, B, K, n)


def memory_grad(const Py_ssize_t[::1] lens not None,    # IN    (B,)
                const floating[:, :, ::1] left not None,  # IN    (B, n, S)
                const floating[:, :, ::1] right not None,  # IN   (B, n, K)
                floating[:, :, ::1] dm not None):       # OUT   (S, B, K)
    """The memory's gradient ``dm[:, b] = left_b^T @ right_b``, time-major.

    Parameters
    ----------
    lens : ndarray of shape (B,), dtype=intp
    left : ndarray of shape (B, n, S), dtype=float32 or float64
        Each step's weights and score gradients, stacked (zero at padded positions).
    right : ndarray of shape (B, n, K), same dtype
        The matching context gradients and projected queries.
    dm : ndarray of shape (S, B, K), same dtype
        Written; zero at padded positions.
    """
    cdef Py_ssize_t S = dm.shape[0], B = dm.shape[1], K = dm.shape[2], n = left.shape[1]
    _check_lens(lens, S, B)
    _check_shape("left", left.shape, B, n, S)
    _check_shape("right", right.shape, B, n, K)
    if S == 0 or B == 0 or K == 0 or n == 0:
        return
    with nogil:
        _memory_grad(&lens[0], &left[0, 0, 0], &right[0, 0, 0], &dm[0, 0, 0], S, B, K, n)


def matmul(int isa,                            # 0 BLAS, 1 AVX2, 2 AVX-512 (fastrnn._isa)
           const floating[:, ::1] a not None,           # IN    (m, k), or (k, m) with trans_a
           bint trans_a,
           const floating[:, ::1] b not None,           # IN    (k, n)
           floating[:, ::1] c not None):                # OUT   (m, n)
    """c := op(a) @ b on the kernels' GEMM micro-kernels, both operands read in place.

    The products of a decoder's backward (a gradient times a weight, a gradient's transpose
    times an input) have a row-major right operand: the micro-kernels (``_rgemm.h``) read it
    in place, panel by panel, where BLAS would first pack it. The columns past the last whole
    panel, and everything when ``isa`` is 0, go to BLAS.

    Parameters
    ----------
    isa : int
        Micro-kernels to run: 0 (none: BLAS), 1 (AVX2) or 2 (AVX-512); the caller checks that
        the CPU runs them (``fastrnn.get_isa()``).
    a : ndarray of shape (m, k), or (k, m) when ``trans_a``; C-contiguous float32 or float64
    trans_a : bool
        Use ``a.T``.
    b : ndarray of shape (k, n), same dtype, C-contiguous
    c : ndarray of shape (m, n), same dtype, C-contiguous; overwritten
    """
    cdef Py_ssize_t m = c.shape[0], n = c.shape[1], k = b.shape[0], n_main = 0
    cdef Py_ssize_t ma = a.shape[1] if trans_a else a.shape[0]
    cdef Py_ssize_t ka = a.shape[0] if trans_a else a.shape[1]
    if ma != m or ka != k or b.shape[1] != n:
        raise ValueError(f"matmul: shapes a ({a.shape[0]}, {a.shape[1]}), b ({k}, {b.shape[1]})"
                         f" and c ({m}, {n}) do not fit for trans_a={trans_a}")
    if m == 0 or n == 0:
        return
    if k == 0:
        c[:, :] = 0
        return
    cdef Py_ssize_t lda = a.shape[1]
    # A[i, kk] = a[i * rs + kk * ks]: (lda, 1) for a, (1, lda) for its transpose
    cdef Py_ssize_t rs = 1 if trans_a else lda, ks = lda if trans_a else 1
    if isa != FR_ISA_NONE:
        n_main = n - n % fr_rgemm_nr(isa, sizeof(floating))
    with nogil:
        if n_main > 0:
            if floating is float:
                fr_rgemm_s(isa, m, n_main, k, &a[0, 0], rs, ks, &b[0, 0], n, &c[0, 0], n, 0)
            else:
                fr_rgemm_d(isa, m, n_main, k, &a[0, 0], rs, ks, &b[0, 0], n, &c[0, 0], n, 0)
        if n_main < n:
            gemm(trans_a, False, m, n - n_main, k, <floating> 1, &a[0, 0], lda,
                 &b[0, n_main], n, <floating> 0, &c[0, n_main], n)
