"""The kernels' GEMM wrapper, through its test-only twin ``gemm_check``.

Shaped like scikit-learn's ``sklearn/utils/tests/test_cython_blas.py``: parametrize dtype and the
transposition of each operand, compare with ``alpha * op(A) @ op(B) + beta * C``. The wrapper is
row-major by contract (it calls column-major BLAS with the operands swapped), so every operand is a
C-contiguous array in its stored shape: ``A`` is (m, k), or (k, m) when transposed.
"""

import numpy as np
import pytest
from fastrnn._kernels._blas_check import gemm_check

RTOL = {np.float32: 1e-5, np.float64: 1e-12}


def _no_op(a):
    return a


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize(
    "opA, transA", [(_no_op, False), (np.transpose, True)], ids=["NoTransA", "TransA"]
)
@pytest.mark.parametrize(
    "opB, transB", [(_no_op, False), (np.transpose, True)], ids=["NoTransB", "TransB"]
)
@pytest.mark.parametrize("m,k,n", [(30, 10, 20), (1, 1, 1), (1, 7, 3), (5, 1, 4), (6, 3, 1)])
@pytest.mark.parametrize("alpha,beta", [(2.5, -0.5), (1.0, 0.0), (1.0, 1.0), (0.0, 2.0)])
def test_gemm(dtype, opA, transA, opB, transB, m, k, n, alpha, beta):
    rng = np.random.default_rng([m, k, n])
    A = np.ascontiguousarray(opA(rng.random((m, k)).astype(dtype)))
    B = np.ascontiguousarray(opB(rng.random((k, n)).astype(dtype)))
    C = rng.random((m, n)).astype(dtype)
    A0, B0 = A.copy(), B.copy()
    expected = alpha * opA(A).astype(np.float64) @ opB(B).astype(np.float64) + beta * C

    gemm_check(transA, transB, alpha, A, B, beta, C)

    np.testing.assert_allclose(C, expected, rtol=RTOL[dtype], atol=RTOL[dtype])
    np.testing.assert_array_equal(A, A0)
    np.testing.assert_array_equal(B, B0)


def test_gemm_beta_zero_ignores_nan_in_c():
    """BLAS semantics: with beta == 0, C is overwritten and its old content (even NaN) ignored."""
    A = np.ones((2, 3))
    B = np.ones((3, 4))
    C = np.full((2, 4), np.nan)
    gemm_check(False, False, 1.0, A, B, 0.0, C)
    np.testing.assert_array_equal(C, np.full((2, 4), 3.0))


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_gemm_rejects_mismatched_shapes(dtype):
    A = np.ones((2, 3), dtype)
    B = np.ones((4, 5), dtype)
    C = np.zeros((2, 5), dtype)
    with pytest.raises(ValueError):
        gemm_check(False, False, 1.0, A, B, 0.0, C)
