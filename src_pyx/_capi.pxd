# Helpers of the stable C API (the tier-4 functions at the end of rnn.pyx, lstm.pyx, gru.pyx,
# declared for other extensions in fastrnn/_kernels/{rnn,lstm,gru}.pxd), header-only.
#
# The C API takes raw pointers from code that has no Python layer in front of it, so it checks
# what is cheap to check (sizes, required pointers, batch_sizes) and fills in the optional
# operands (NULL states and biases are zeros, NULL batch_sizes is "every row has length T") in
# the caller's workspace. Return codes: 0 success, ERR_ARG, ERR_BATCH_SIZES.

from cython cimport floating
from libc.string cimport memcpy, memset

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
