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
from fastrnn.stack import StackConfig, default_init, stack_backward, stack_forward

#: The variants timed: (cell, options); sizes from the command line (P: proj_size).
VARIANTS = {
    "lstm_proj": ("lstm", lambda args: {"proj_size": args.P}),
    "gru_reset_before": ("gru", lambda args: {"reset_after": False}),
}


def _inputs(cfg, T, B, dtype, seed=0):
    rng = np.random.default_rng(seed)
    w = default_init(cfg, dtype, rng)
    x = rng.standard_normal((T, B, cfg.input_size)).astype(dtype)
    dy = rng.standard_normal((T, B, cfg.output_size)).astype(dtype)
    return {"x": x, "w": w, "dy": dy}


def _forward(cfg, a):
    return stack_forward(cfg, a["x"], weights=a["w"])[-1]


def _forward_backward(cfg, a):
    return stack_backward(_forward(cfg, a), a["dy"])


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
    for name, (cell, options) in VARIANTS.items():
        cfg = StackConfig(cell, args.I, args.H, **options(args))
        a = _inputs(cfg, args.T, args.B, dtype)
        for what, fn in (("fwd", _forward), ("fwd+bwd", _forward_backward)):
            med, best = _time(functools.partial(fn, cfg, a), args.repeat)
            print(f"{name:18s} {what:8s} median {med:8.2f} ms  best {best:8.2f} ms")


if __name__ == "__main__":
    main()
