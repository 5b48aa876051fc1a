"""fastrnn/functional.py and reference.py called from several Python threads at once.

Concurrency: calls from several Python threads give exactly their single-thread results.

The functional API keeps no state between calls except the process-wide thread count
(``fastrnn.set_num_threads``): each call validates its operands, allocates its own outputs and
workspaces and runs its kernel without the GIL. So:

* different calls (any cells, shapes, dtypes) from several threads at once are bitwise equal to
  the same calls made one by one, whatever OpenMP and BLAS do inside each of them;
* one cache may be passed to several concurrent backwards (the backward only reads it);
* changing the thread count while other threads compute changes no result (the gate passes
  are bitwise independent of the thread count, tests/test_threads.py);
* the kernels really release the GIL: a Python thread keeps running while a long kernel call
  runs in another (the speed-up itself is measured by benchmarks/bench_threads.py).
"""

import contextlib
import threading
import time

import numpy as np
import pytest
from conftest import SPECS, assert_forward_close, assert_grads_close, make_case

import fastrnn

N_THREADS = 4


def _blas_threads(n):
    """Limit BLAS to n threads (threadpoolctl, a test dependency); None leaves it as it is."""
    if n is None:
        return contextlib.nullcontext()
    threadpoolctl = pytest.importorskip("threadpoolctl")
    return threadpoolctl.threadpool_limits(limits=n, user_api="blas")


@pytest.fixture
def restore_threads():
    before = fastrnn.get_num_threads()
    yield
    fastrnn.set_num_threads(before)


def _jobs():
    """Mixed cells, dtypes, shapes and lengths; some large enough for the OpenMP gate pass."""
    rng = np.random.default_rng(7)
    jobs = []
    for i, spec in enumerate(SPECS):
        for dtype in (np.float32, np.float64):
            # B * G * H >= 8192 (PAR_MIN) in the odd rows: the OpenMP gate pass runs
            T, B, D, H = (5, 32, 8, 256) if i % 2 else (9, 5, 3, 7)
            lengths = "random" if dtype == np.float64 else None
            jobs.append((spec, make_case(spec, rng, T, B, D, H, dtype, lengths=lengths)))
    return jobs


def _run(spec, case):
    fwd = spec.forward_case("cython", case)
    return fwd, spec.backward_case("cython", fwd.cache, case)


def _in_threads(n, target):
    """Run ``target(k)`` in n threads released together; re-raise the first error."""
    barrier = threading.Barrier(n)
    errors = []

    def body(k):
        try:
            barrier.wait()
            target(k)
        except BaseException as exc:  # noqa: BLE001 - reported in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


@pytest.mark.parametrize(
    "kernel_threads,blas_threads,n_threads,rounds",
    [(1, 1, N_THREADS, 3), (2, 1, N_THREADS, 3), (2, None, 2, 1)],
    ids=["omp1-blas1", "omp2-blas1", "omp2-blas_default"],
)
def test_concurrent_calls_equal_serial_calls(
    kernel_threads, blas_threads, n_threads, rounds, restore_threads
):
    # The last case leaves BLAS multi-threaded: correct, but with 2 Python threads on 2 cores
    # it oversubscribes badly (README, "Thread safety"), so it runs fewer calls.
    fastrnn.set_num_threads(kernel_threads)
    jobs = _jobs()
    expected = [_run(spec, case) for spec, case in jobs]
    results = [[None] * len(jobs) for _ in range(n_threads)]

    def work(k):
        order = np.random.default_rng(k).permutation(len(jobs))
        for _ in range(rounds):
            for j in order:
                results[k][j] = _run(*jobs[j])

    with _blas_threads(blas_threads):
        _in_threads(n_threads, work)
    for k in range(n_threads):
        for j, (spec, _) in enumerate(jobs):
            fwd, grads = results[k][j]
            assert_forward_close(spec, fwd, expected[j][0], rtol=0, atol=0)
            assert_grads_close(spec, grads, expected[j][1], rtol=0, atol=0)


def test_one_cache_many_concurrent_backwards(spec):
    rng = np.random.default_rng(3)
    case = make_case(spec, rng, 8, 6, 5, 16, np.float64, lengths="random")
    fwd = spec.forward_case("cython", case)
    expected = spec.backward_case("cython", fwd.cache, case)
    results = [None] * N_THREADS

    def work(k):
        for _ in range(5):
            results[k] = spec.backward_case("cython", fwd.cache, case)

    _in_threads(N_THREADS, work)
    for grads in results:
        assert_grads_close(spec, grads, expected, rtol=0, atol=0)
    # and the cache still gives the same answer afterwards
    assert_grads_close(
        spec, spec.backward_case("cython", fwd.cache, case), expected, rtol=0, atol=0
    )


def test_changing_the_thread_count_during_calls_changes_no_result(restore_threads):
    jobs = _jobs()
    expected = [_run(spec, case) for spec, case in jobs]
    stop = threading.Event()
    results = [[] for _ in range(N_THREADS - 1)]

    def work(k):
        if k == N_THREADS - 1:  # the meddler
            n = 0
            while not stop.is_set():
                fastrnn.set_num_threads(1 + n % 3)
                n += 1
                time.sleep(0.0005)
            return
        for _ in range(2):
            for j in range(len(jobs)):
                results[k].append((j, _run(*jobs[j])))
        if k == 0:
            stop.set()

    with _blas_threads(1):
        _in_threads(N_THREADS, work)
    for per_thread in results:
        for j, (fwd, grads) in per_thread:
            spec = jobs[j][0]
            assert_forward_close(spec, fwd, expected[j][0], rtol=0, atol=0)
            assert_grads_close(spec, grads, expected[j][1], rtol=0, atol=0)


def test_kernels_release_the_gil(restore_threads):
    """While one thread is inside long LSTM backwards, a pure-Python loop in another thread
    keeps running: it records timestamps in the middle of the calls, which it could not do if
    the kernel held the GIL. (A count, not a timing: robust on a loaded machine.)"""
    fastrnn.set_num_threads(1)
    rng = np.random.default_rng(0)
    spec = next(s for s in SPECS if s.cell == "lstm")
    case = make_case(spec, rng, 200, 32, 64, 128, np.float32)
    windows = []
    done = threading.Event()
    with _blas_threads(1):
        fwd = spec.forward_case("cython", case)

        def kernel():
            for _ in range(4):
                t0 = time.perf_counter()
                spec.backward_case("cython", fwd.cache, case)
                windows.append((t0, time.perf_counter()))
            done.set()

        worker = threading.Thread(target=kernel)
        stamps = []
        worker.start()
        while not done.is_set():
            stamps.append(time.perf_counter())
        worker.join()
    stamps = np.array(stamps)
    inside = []
    for t0, t1 in windows:  # the middle 80% of each call is kernel time (validation is ~1 ms)
        lo, hi = t0 + 0.1 * (t1 - t0), t1 - 0.1 * (t1 - t0)
        inside.append(int(np.searchsorted(stamps, hi) - np.searchsorted(stamps, lo)))
    durations = [f"{(t1 - t0) * 1e3:.0f} ms" for t0, t1 in windows]
    assert sum(n > 0 for n in inside) >= len(windows) // 2, (
        f"no Python progress inside kernel calls of {durations}: {inside} (GIL held?)"
    )
