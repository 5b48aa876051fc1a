# Activations and their derivatives, header-only. Derivatives are written in terms of the
# activation's *output* y, which is what the forward pass stores.
#
# Constants are cast to `floating`: Cython writes a bare `1` beside a float as the C double
# `1.0`, and `y * (1.0 - y)` then runs in double in every float32 gate pass (a conversion to
# double and back per element, and vectors of half the width).

from cython cimport floating

cdef extern from "_fastmath.h" nogil:
    # Vectorizable float32 versions (see _fastmath.h for their accuracy).
    float fr_sigmoidf(float a)
    float fr_tanhf(float a)
    # and float64 (within 2e-15 relative of libm)
    double fr_sigmoid(double a)
    double fr_tanh(double a)


cdef inline floating sigmoid(floating a) noexcept nogil:
    """1 / (1 + exp(-a))"""
    if floating is float:
        return fr_sigmoidf(a)
    else:
        return fr_sigmoid(a)


cdef inline floating tanh_(floating a) noexcept nogil:
    """tanh(a) in the precision of a"""
    if floating is float:
        return fr_tanhf(a)
    else:
        return fr_tanh(a)


cdef inline floating relu(floating a) noexcept nogil:
    """max(a, 0), NaN kept (as numpy.maximum and torch.relu): a NaN must never become 0"""
    return 0 if a <= 0 else a


cdef inline floating dsigmoid(floating y) noexcept nogil:
    """sigmoid'(a) = y (1 - y)"""
    return y * (<floating> 1 - y)


cdef inline floating dtanh(floating y) noexcept nogil:
    """tanh'(a) = 1 - y^2"""
    return <floating> 1 - y * y


cdef inline floating drelu(floating y) noexcept nogil:
    """relu'(a) = 1 if y > 0 else 0"""
    return 1 if y > 0 else 0
