"""Time the kernel variants and options against the plain cells: LSTM with a projection
(``w_hr``, PyTorch's ``proj_size``), GRU with ``reset_after=False``, and the LSTM's peephole,
recurrent dropout, zoneout and cell-state options, each alone and all together, the RNN's and
GRU's recurrent dropout and zoneout, and the layer-normalized LSTM and GRU.

    python benchmarks/bench_variants.py                    # 2 threads, float32
    python benchmarks/bench_variants.py --threads 1 --repeat 20
    python benchmarks/bench_variants.py --only lstm lstm_peephole lstm_all

Prints, for each variant, the median and best of ``--repeat`` timings (ms) of a training forward
and of a training forward + backward, after one warm-up call, and the ratio of the medians to the
plain cell's (``rnn``, ``lstm``, ``gru``). The variants run interleaved (one timing of each in turn,
``--repeat`` rounds), so a change of the machine's load reaches them all alike. Builds cannot be
interleaved in one process: to compare two builds, run this script alternately against each
(A B A B ...) and compare the medians; on a shared machine, note the load average printed first.
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

#: The variants timed: (cell, options); sizes from the command line (P: proj_size). The first
#: of each cell is its plain path, the baseline of the ratios.
VARIANTS = {
    "lstm": ("lstm", lambda args: {}),
    "lstm_proj": ("lstm", lambda args: {"proj_size": args.P}),
    "lstm_layer_norm": ("lstm", lambda args: {"layer_norm": True}),
    "lstm_peephole": ("lstm", lambda args: {"peephole": True}),
    "lstm_recurrent_dropout": ("lstm", lambda args: {"recurrent_dropout": 0.25}),
    "lstm_zoneout": ("lstm", lambda args: {"zoneout": (0.1, 0.05)}),
    "lstm_cell_states": ("lstm", lambda args: {"return_cell_states": True}),
    "lstm_all": (
        "lstm",
        lambda args: {
            "peephole": True,
            "recurrent_dropout": 0.25,
            "zoneout": (0.1, 0.05),
            "return_cell_states": True,
        },
    ),
    "rnn": ("rnn", lambda args: {}),
    "rnn_recurrent_dropout": ("rnn", lambda args: {"recurrent_dropout": 0.25}),
    "rnn_zoneout": ("rnn", lambda args: {"zoneout": 0.1}),
    "rnn_rdrop_zoneout": ("rnn", lambda args: {"recurrent_dropout": 0.25, "zoneout": 0.1}),
    "gru": ("gru", lambda args: {}),
    "gru_reset_before": ("gru", lambda args: {"reset_after": False}),
    "gru_layer_norm": ("gru", lambda args: {"layer_norm": True}),
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
    # a seeded generator: the masks of recurrent dropout and zoneout are drawn in the timing,
    # as a training step draws them
    return stack_forward(cfg, a["x"], weights=a["w"], generator=np.random.default_rng(0))[-1]


def _forward_backward(cfg, a):
    return stack_backward(_forward(cfg, a), a["dy"])


def _time_interleaved(fns, repeat):
    """{name: (median, best)} in ms of each of ``fns`` (name -> callable), timed in turn."""
    for fn in fns.values():
        fn()  # warm-up: first-touch of the buffers, thread pool start
    times = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) * 1e3)
    return {name: (statistics.median(t), min(t)) for name, t in times.items()}


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
            f"{name:22s} {what:8s} median {med:8.2f} ms  best {best:8.2f} ms  "
            f"{med / base:5.2f} x plain"
        )


if __name__ == "__main__":
    main()
