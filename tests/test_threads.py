"""fastrnn/_threads.py: set_num_threads, and multi-threaded kernels give the one-thread bits.

Thread count: the multi-threaded gate passes give the same numbers as one thread.

The kernels split each step's GEMM and gate pass over hidden-unit blocks among their threads
(src_pyx/_blocks.pxd) once a step is large enough (``_team`` in fastrnn/functional.py); the
shapes here are large enough to take that path, so the parallel code is compared with the
serial one and with the NumPy reference.
"""

import numpy as np
import pytest
from conftest import SPECS, TOL, assert_forward_close, assert_grads_close, make_case

import fastrnn


@pytest.fixture
def restore_threads():
    before = fastrnn.get_num_threads()
    yield
    fastrnn.set_num_threads(before)


@pytest.mark.slow
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
def test_thread_count_does_not_change_results(spec, with_lengths, restore_threads, rng):
    T, B, D, H = 4, 40, 3, 256  # 4 unit blocks, enough work per step: up to 4 threads
    lengths = "random" if with_lengths else None
    case = make_case(spec, rng, T, B, D, H, np.float64, lengths=lengths)
    results = []
    for n in (1, 2, 3):
        fastrnn.set_num_threads(n)
        fwd = spec.forward_case("cython", case)
        results.append((fwd, spec.backward_case("cython", fwd.cache, case)))
    ref = spec.forward_case("numpy", case)
    ref_grads = spec.backward_case("numpy", ref.cache, case)
    for fwd, grads in results:
        # Blocks have fixed shapes whatever the thread count (_parallel.pxd): bitwise equal.
        assert_forward_close(spec, fwd, results[0][0], rtol=0, atol=0)
        assert_grads_close(spec, grads, results[0][1], rtol=0, atol=0)
        assert_forward_close(spec, fwd, ref, **TOL[np.float64])
        assert_grads_close(spec, grads, ref_grads, **TOL[np.float64])


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True])
def test_set_num_threads_refuses_bad_values(bad, restore_threads):
    with pytest.raises(ValueError, match="n must be a positive int"):
        fastrnn.set_num_threads(bad)


def test_set_num_threads_none_restores_default(restore_threads):
    fastrnn.set_num_threads(1)
    assert fastrnn.get_num_threads() == 1
    fastrnn.set_num_threads(None)
    assert fastrnn.get_num_threads() >= 1
