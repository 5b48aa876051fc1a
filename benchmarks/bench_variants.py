"""Time the kernel variants off the plain cells' path against the plain cells: LSTM with a
projection (``w_hr``, PyTorch's ``proj_size``), GRU with ``reset_after=False``, and the
layer-normalized LSTM and GRU (``layer_norm=True``).

    python benchmarks/bench_variants.py                    # 2 threads, float32
    python benchmarks/bench_variants.py --threads 1 --repeat 20
    python benchmarks/bench_variants.py --only lstm lstm_layer_norm

Prints, for each variant, the median and best of ``--repeat`` timings (ms) of a training forward
and of a training forward + backward, after one warm-up call, and the ratio of the medians to
the plain cell's (``x plain``). The variants are timed interleaved (one call of each per round),
so a change in the machine's load reaches them all alike. Builds cannot be interleaved in one
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
#: The first variant of each cell must be its plain form: the ratios are to it.
VARIANTS = {
    "lstm": ("lstm", lambda args: {}),
    "lstm_proj": ("lstm", lambda args: {"proj_size": args.P}),
    "lstm_layer_norm": ("lstm", lambda args: {"layer_norm": True}),
    "gru": ("gru", lambda args: {}),
    "gru_reset_before": ("gru", lambda args: {"reset_after": False}),
    "gru_layer_norm": ("gru", lambda args: {"layer_norm": True}),
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


def _time_interleaved(fns, repeat):
    """{key: (median, best)} in ms of each fn of ``fns``, one call of each per round."""
    for fn in fns.values():
        fn()  # warm-up: first-touch of the buffers, thread pool start
    out = {k: [] for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            out[k].append((time.perf_counter() - t0) * 1e3)
    return {k: (statistics.median(v), min(v)) for k, v in out.items()}


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
    ap.add_argument("--only", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    args = ap.parse_args(argv)
    fastrnn.set_num_threads(args.threads)
    dtype = np.dtype(args.dtype).type
    print(
        f"fastrnn {os.path.dirname(fastrnn.__file__)}  threads={args.threads}  {args.dtype}  "
        f"T={args.T} B={args.B} I={args.I} H={args.H} P={args.P}  "
        f"load={os.getloadavg()[0]:.2f}"
    )
    fns, plain = {}, {}
    for name in args.only:
        cell, options = VARIANTS[name]
        cfg = StackConfig(cell, args.I, args.H, **options(args))
        a = _inputs(cfg, args.T, args.B, dtype)
        plain.setdefault(cell, name)
        for what, fn in (("fwd", _forward), ("fwd+bwd", _forward_backward)):
            fns[name, what] = functools.partial(fn, cfg, a)
    times = _time_interleaved(fns, args.repeat)
    for (name, what), (med, best) in times.items():
        base = times[plain[VARIANTS[name][0]], what][0]
        print(
            f"{name:18s} {what:8s} median {med:8.2f} ms  best {best:8.2f} ms  "
            f"{med / base:5.2f} x plain"
        )


if __name__ == "__main__":
    main()
