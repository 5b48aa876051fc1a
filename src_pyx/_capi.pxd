# Helpers of the stable C API (the tier-4 functions at the end of rnn.pyx, lstm.pyx, gru.pyx,
# declared for other extensions in fastrnn/capi/{rnn,lstm,gru}.pxd), header-only. The
# calls themselves are written once, in _capi.pxi, which each cell includes.
#
# The C API takes raw pointers from code that has no Python layer in front of it, so it checks
# what is cheap to check (sizes, required pointers, batch_sizes) and fills in the optional
# operands (NULL states and biases are zeros, NULL batch_sizes is "every row has length T") in
# the caller's workspace. Return codes: 0 success, ERR_ARG, ERR_BATCH_SIZES.

from cython cimport floating
from libc.string cimport memcpy, memset

cdef struct Layout:
    # Where a cell's C API keeps things, in elements of the call's dtype: each cell computes
    # one in its _layout(T, B, I, H), the only place its offsets and sizes are written, and its
    # *_workspace_size, *_reserve_size, forward and backward all read it.
    Py_ssize_t G        # gate width (columns of w_ih, rows of the bias)
    # workspace: [batch_sizes (T ints) | vec | states | scratch | big]
    Py_ssize_t vec      # the folded biases (forward) or the bias gradients (backward)
    Py_ssize_t vec_hh   # the gradient of b_hh (== vec when it equals that of b_ih)
    Py_ssize_t states   # zeros standing in for NULL initial states
    Py_ssize_t scratch  # per-step scratch of the time loop
    Py_ssize_t big      # an inference forward's gate ring (and state), or the gate gradients
    Py_ssize_t work     # workspace size
    # reserve: [gates (T*B*G) | keep]
    Py_ssize_t keep     # the second array a training forward keeps for the backward
    Py_ssize_t reserve  # reserve size


cdef enum:
    ERR_ARG = -1          # a size out of range or a required pointer that is NULL
    ERR_BATCH_SIZES = -2  # batch_sizes not non-increasing in [1, B] with batch_sizes[0] == B


cdef inline int check_sizes(Py_ssize_t T, Py_ssize_t B, Py_ssize_t I, Py_ssize_t H,
                            int n_threads) noexcept nogil:
    """0 when T, B >= 0, I, H >= 1, B fits an int and n_threads >= 1, else ERR_ARG."""
    if T < 0 or B < 0 or I < 1 or H < 1 or B > 2147483647 or n_threads < 1:
        return ERR_ARG
    return 0


cdef inline int schedule(const int* batch_sizes, Py_ssize_t T, Py_ssize_t B, void* slot,
                         const int** out) noexcept nogil:
    """out[0] := batch_sizes once checked, or (NULL) T copies of B written at slot."""
    cdef Py_ssize_t t
    cdef int* own
    if batch_sizes == NULL:
        own = <int*> slot
        for t in range(T):
            own[t] = <int> B
        out[0] = own
        return 0
    if T > 0 and batch_sizes[0] != B:
        return ERR_BATCH_SIZES
    for t in range(T):
        if batch_sizes[t] < 1 or (t > 0 and batch_sizes[t] > batch_sizes[t - 1]):
            return ERR_BATCH_SIZES
    out[0] = batch_sizes
    return 0


cdef inline const floating* or_zeros(const floating* a, floating* slot,
                                     Py_ssize_t n) noexcept nogil:
    """a, or n zeros written at slot when a is NULL."""
    if a != NULL:
        return a
    memset(slot, 0, n * sizeof(floating))
    return slot


cdef inline void copy_or_zero(floating* dst, const floating* src, Py_ssize_t n) noexcept nogil:
    """dst[:n] := src[:n], or zeros when src is NULL."""
    if src == NULL:
        memset(dst, 0, n * sizeof(floating))
    else:
        memcpy(dst, src, n * sizeof(floating))


cdef inline void copy_if(floating* dst, const floating* src, Py_ssize_t n) noexcept nogil:
    """dst[:n] := src[:n] unless dst is NULL (an output the caller does not want)."""
    if dst != NULL:
        memcpy(dst, src, n * sizeof(floating))


cdef inline Py_ssize_t int_slots(Py_ssize_t T) noexcept nogil:
    """Workspace elements (of float or double) that hold T ints."""
    return T
