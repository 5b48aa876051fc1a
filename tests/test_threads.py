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
from fastrnn import functional
from fastrnn._common import prepare
from fastrnn.cells import CELLS


@pytest.fixture
def restore_threads():
    before = fastrnn.get_num_threads()
    yield
    fastrnn.set_num_threads(before)


@pytest.mark.slow
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
def test_thread_count_does_not_change_results(
    spec, with_lengths, restore_threads, rng, monkeypatch
):
    # every thread count really splits the step: the team rule would give the RNN only 2
    monkeypatch.setattr(functional, "_MIN_WORK_PER_THREAD", 1)
    T, B, D, H = 4, 40, 3, 256  # 4 unit blocks: up to 4 threads
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


@pytest.mark.parametrize(
    ("cell", "B", "H", "n", "expected"),
    [
        ("rnn", 16, 128, 2, 1),  # longseq RNN: 2.6e5 multiply-adds a step, too short to split
        ("lstm", 16, 128, 2, 1),  # 1.0e6: one thread's worth
        ("lstm", 32, 256, 2, 2),  # medium LSTM: 8.4e6
        ("lstm", 32, 256, 8, 8),  # ... 8 threads' worth
        ("gru", 1, 64, 2, 1),  # small
        ("lstm", 4096, 32, 4, 2),  # work for 16, but H // 16 = 2: two threads at most
    ],
)
def test_team_takes_a_thread_per_share_of_step_work(cell, B, H, n, expected, restore_threads):
    c = CELLS[cell]
    x = np.zeros((2, B, 8), np.float32)
    w_ih = np.zeros((c.G * H, 8), np.float32)
    w_hh = np.zeros((c.G * H, H), np.float32)
    fastrnn.set_num_threads(n)
    p = prepare(c, x, None, None, w_ih, w_hh, None, None)
    assert functional._team(p) == expected
