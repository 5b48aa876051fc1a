"""Speed-up of independent calls from several Python threads (the kernels release the GIL).

The same fixed amount of work, ``calls`` LSTM forward + backward calls on independent inputs,
runs once on one Python thread and once split over ``threads`` Python threads. Each call runs
with ``fastrnn.set_num_threads(1)`` and, by default, one BLAS thread (threadpoolctl), so that
the Python threads are the only parallelism and nothing is oversubscribed; ``--blas-threads 0``
leaves BLAS as it is to show what oversubscription costs.

    python benchmarks/bench_threads.py                       # 2 threads, LSTM, float32
    python benchmarks/bench_threads.py --threads 2 --cell gru --hidden 256

Prints the best and median of ``--repeat`` timings of each, the speed-up (ideal: the number of
threads, when that many cores are free) and the process's CPU time over wall time (how many
cores it kept busy: near the thread count when the threads really run in parallel, near 1 if
they took turns on the GIL). The load average is printed too: on a shared machine other
processes take cores away and lower both.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import threading
import time

import numpy as np

import fastrnn
from fastrnn.cells import CELLS


def _blas_limit(n: int):
    if n <= 0:
        return contextlib.nullcontext()
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        print("threadpoolctl is not installed: BLAS threads are not limited")
        return contextlib.nullcontext()
    return threadpool_limits(limits=n, user_api="blas")


def make_jobs(cell, n, T, B, I, H, dtype, seed=0):
    G = CELLS[cell].G
    rng = np.random.default_rng(seed)
    k = 1 / np.sqrt(H)
    w = [rng.uniform(-k, k, s).astype(dtype) for s in ((G * H, I), (G * H, H), (G * H,), (G * H,))]
    return [
        (rng.standard_normal((T, B, I)).astype(dtype), rng.standard_normal((T, B, H)).astype(dtype))
        for _ in range(n)
    ], w


def one_call(cell, x, dy, w):
    fwd, bwd = CELLS[cell].functions("cython")
    *_, cache = fwd(x, *(None for _ in CELLS[cell].states), *w)
    return bwd(cache, dy)


def run(cell, jobs, w, n_threads):
    """(wall time, process CPU time) of all jobs split round-robin over n_threads threads."""
    barrier = threading.Barrier(n_threads + 1)

    def worker(k):
        barrier.wait()
        for x, dy in jobs[k::n_threads]:
            one_call(cell, x, dy, w)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(n_threads)]
    for t in threads:
        t.start()
    barrier.wait()
    t0, c0 = time.perf_counter(), time.process_time()
    for t in threads:
        t.join()
    return time.perf_counter() - t0, time.process_time() - c0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cell", default="lstm", choices=list(CELLS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calls", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--seq", type=int, default=50)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--input", type=int, default=128)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--blas-threads", type=int, default=1, help="0: leave BLAS threads as they are")
    args = ap.parse_args(argv)

    fastrnn.set_num_threads(1)
    jobs, w = make_jobs(
        args.cell, args.calls, args.seq, args.batch, args.input, args.hidden, args.dtype
    )
    print(
        f"{args.cell} T={args.seq} B={args.batch} I={args.input} H={args.hidden} {args.dtype}: "
        f"{args.calls} forward+backward calls; fastrnn threads 1, BLAS threads "
        f"{args.blas_threads or 'default'}; {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.1f}"
    )
    with _blas_limit(args.blas_threads):
        run(args.cell, jobs[:2], w, 1)  # warm-up
        times = {1: [], args.threads: []}
        for _ in range(args.repeat):  # interleaved, so that load changes hit both alike
            for n in times:
                times[n].append(run(args.cell, jobs, w, n))
    for n, runs in times.items():
        ts = [wall for wall, _ in runs]
        busy = statistics.median(cpu / wall for wall, cpu in runs)
        print(
            f"  {n} Python thread(s): best {min(ts) * 1e3:7.1f} ms, "
            f"median {statistics.median(ts) * 1e3:7.1f} ms, CPU time / wall time {busy:.2f}"
        )
    one = [wall for wall, _ in times[1]]
    many = [wall for wall, _ in times[args.threads]]
    print(
        f"  speed-up with {args.threads} threads: {min(one) / min(many):.2f}x (best), "
        f"{statistics.median(one) / statistics.median(many):.2f}x (median)"
    )


if __name__ == "__main__":
    main()
