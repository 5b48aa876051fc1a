"""Time the two kernel variants off the plain cells' path: LSTM with a projection (``w_hr``,
PyTorch's ``proj_size``) and GRU with ``reset_after=False``.

    python benchmarks/bench_variants.py                    # 2 threads, float32
    python benchmarks/bench_variants.py --threads 1 --repeat 20

Prints, for each variant, the median and best of ``--repeat`` timings (ms) of a training forward
and of a training forward + backward, after one warm-up call. Builds cannot be interleaved in one
process: to compare two builds, run this script alternately against each (A B A B ...) and
compare the medians; on a shared machine, note the load average printed first.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import time

import numpy as np

import fastrnn
from fastrnn import functional as F


def _inputs(cell, T, B, I, H, P, dtype, seed=0):
    rng = np.random.default_rng(seed)
    k = 1 / np.sqrt(H)

    def u(*s):
        return rng.uniform(-k, k, s).astype(dtype)

    G = 4 * H if cell == "lstm_proj" else 3 * H
    R = P if cell == "lstm_proj" else H
    a = {
        "x": rng.standard_normal((T, B, I)).astype(dtype),
        "w_ih": u(G, I),
        "w_hh": u(G, R),
        "b_ih": u(G),
        "b_hh": u(G),
        "dy": rng.standard_normal((T, B, R)).astype(dtype),
    }
    if cell == "lstm_proj":
        a["w_hr"] = u(P, H)
    return a


def _forward(cell, a):
    if cell == "lstm_proj":
        *_, cache = F.lstm_forward(
            a["x"], None, None, a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"], w_hr=a["w_hr"]
        )
    else:
        *_, cache = F.gru_forward(
            a["x"], None, a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"], reset_after=False
        )
    return cache


def _forward_backward(cell, a):
    cache = _forward(cell, a)
    if cell == "lstm_proj":
        return F.lstm_backward(cache, a["dy"])
    return F.gru_backward(cache, a["dy"])


def _time(fn, repeat):
    fn()  # warm-up: first-touch of the buffers, thread pool start
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(out), min(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--T", type=int, default=100)
    ap.add_argument("--B", type=int, default=32)
    ap.add_argument("--I", type=int, default=128)
    ap.add_argument("--H", type=int, default=256)
    ap.add_argument("--P", type=int, default=128)
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    args = ap.parse_args(argv)
    fastrnn.set_num_threads(args.threads)
    dtype = np.dtype(args.dtype).type
    print(
        f"fastrnn {os.path.dirname(fastrnn.__file__)}  threads={args.threads}  {args.dtype}  "
        f"T={args.T} B={args.B} I={args.I} H={args.H} P={args.P}  "
        f"load={os.getloadavg()[0]:.2f}"
    )
    for cell in ("lstm_proj", "gru_reset_before"):
        a = _inputs(cell, args.T, args.B, args.I, args.H, args.P, dtype)
        for what, fn in (("fwd", _forward), ("fwd+bwd", _forward_backward)):
            med, best = _time(functools.partial(fn, cell, a), args.repeat)
            print(f"{cell:18s} {what:8s} median {med:8.2f} ms  best {best:8.2f} ms")


if __name__ == "__main__":
    main()
