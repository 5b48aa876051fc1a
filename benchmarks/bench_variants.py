"""Time the kernel variants off the plain cells' path against the plain cells: LSTM with a
projection (``w_hr``, PyTorch's ``proj_size``), GRU with ``reset_after=False``, and the
options of issue 11 (RNN and GRU recurrent dropout and zoneout, ...).

    python benchmarks/bench_variants.py                    # 2 threads, float32
    python benchmarks/bench_variants.py --threads 1 --repeat 20
    python benchmarks/bench_variants.py --only gru         # the variants whose name starts so

Prints, for each variant, the median and best of ``--repeat`` timings (ms) of a training forward
and of a training forward + backward (masks drawn from a seeded generator, as a layer does),
after one warm-up call, and the ratio of its median to its plain cell's. The variants are
interleaved: each repeat runs every variant once, so a load change on a shared machine falls on
all of them alike. Builds cannot be interleaved in one process: to compare two builds, run this
script alternately against each (A B A B ...) and compare the medians; note the load average
printed first.
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

#: The variants timed: (cell, options); sizes from the command line (P: proj_size). A variant
#: named after a cell alone is that cell's plain path, the yardstick of the others.
VARIANTS = {
    "rnn": ("rnn", lambda args: {}),
    "rnn_recurrent_dropout": ("rnn", lambda args: {"recurrent_dropout": 0.25}),
    "rnn_zoneout": ("rnn", lambda args: {"zoneout": 0.1}),
    "rnn_rdrop_zoneout": ("rnn", lambda args: {"recurrent_dropout": 0.25, "zoneout": 0.1}),
    "lstm": ("lstm", lambda args: {}),
    "lstm_proj": ("lstm", lambda args: {"proj_size": args.P}),
    "gru": ("gru", lambda args: {}),
    "gru_reset_before": ("gru", lambda args: {"reset_after": False}),
    "gru_recurrent_dropout": ("gru", lambda args: {"recurrent_dropout": 0.25}),
    "gru_zoneout": ("gru", lambda args: {"zoneout": 0.1}),
    "gru_rdrop_zoneout": ("gru", lambda args: {"recurrent_dropout": 0.25, "zoneout": 0.1}),
}


def _inputs(cfg, T, B, dtype, seed=0):
    rng = np.random.default_rng(seed)
    w = default_init(cfg, dtype, rng)
    x = rng.standard_normal((T, B, cfg.input_size)).astype(dtype)
    dy = rng.standard_normal((T, B, cfg.output_size)).astype(dtype)
    return {"x": x, "w": w, "dy": dy}


def _forward(cfg, a):
    return stack_forward(cfg, a["x"], weights=a["w"], generator=a["gen"])[-1]


def _forward_backward(cfg, a):
    return stack_backward(_forward(cfg, a), a["dy"])


def _once(fn):
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


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
    ap.add_argument("--only", default="", help="time only the variants starting with this")
    args = ap.parse_args(argv)
    fastrnn.set_num_threads(args.threads)
    dtype = np.dtype(args.dtype).type
    print(
        f"fastrnn {os.path.dirname(fastrnn.__file__)}  threads={args.threads}  {args.dtype}  "
        f"T={args.T} B={args.B} I={args.I} H={args.H} P={args.P}  "
        f"load={os.getloadavg()[0]:.2f}"
    )
    runs = {}  # (name, what) -> (callable, timings)
    for name, (cell, options) in VARIANTS.items():
        if not name.startswith(args.only):
            continue
        cfg = StackConfig(cell, args.I, args.H, **options(args))
        a = {**_inputs(cfg, args.T, args.B, dtype), "gen": np.random.default_rng(1)}
        for what, fn in (("fwd", _forward), ("fwd+bwd", _forward_backward)):
            call = functools.partial(fn, cfg, a)
            call()  # warm-up: first-touch of the buffers, thread pool start
            runs[name, what] = (call, [])
    for _ in range(args.repeat):
        for call, times in runs.values():
            times.append(_once(call))
    medians = {key: statistics.median(times) for key, (_, times) in runs.items()}
    for (name, what), (_, times) in runs.items():
        plain = (VARIANTS[name][0], what)
        ratio = (
            f"  x{medians[name, what] / medians[plain]:.2f} of {plain[0]}"
            if plain in medians
            else ""
        )
        print(
            f"{name:22s} {what:8s} median {medians[name, what]:8.2f} ms  "
            f"best {min(times):8.2f} ms{ratio}"
        )


if __name__ == "__main__":
    main()
