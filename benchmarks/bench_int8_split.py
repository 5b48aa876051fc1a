"""How two threads share an int8 forward: by batch rows or by hidden units, on a team forced to n.

``fastrnn._kernels.quant.plan`` splits a call's batch rows over the threads where each gets 4
rows or more and the packed weights are small (no barrier per step, each thread quantizes only
its rows of h), else the hidden units (a barrier per step). This script times the int8 forward
of each configuration (T, B, I, H) with ``fastrnn.quantization._team`` patched to give every
call ``--threads`` threads, in both splits (``quant._set_rows_weight_bytes``: 0 forces the unit
split), alternating, and prints the medians and minimums of ``--rounds`` samples of 0.05 s.
Both splits give the same bits (checked here too). Run against a build without the row split
(``PYTHONPATH=<other tree>``), it times the unit split only.

    python benchmarks/bench_int8_split.py
    python benchmarks/bench_int8_split.py --cells lstm --configs 1000x16x64x128 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

import fastrnn
import fastrnn.quantization
from fastrnn._kernels import quant
from fastrnn.bench import parse_config


def _sample(fn, seconds: float) -> float:
    fn()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn()
        n += 1
    return (time.perf_counter() - t0) / n


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--cells", default="lstm,gru,rnn")
    ap.add_argument("--configs", default="medium,longseq", help="bench names or TxBxIxH")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=10)
    args = ap.parse_args(argv)
    fastrnn.quantization._team = lambda *a: args.threads  # every call gets the team
    has_rows = hasattr(quant, "_set_rows_weight_bytes")
    default = quant._set_rows_weight_bytes(0) if has_rows else 0
    splits = {"units": 0, "rows": 1 << 40} if has_rows else {"units": 0}
    print(f"bench_int8_split: {args.threads} threads forced, ms per forward (median / min)")
    rng = np.random.default_rng(0)
    try:
        for cell in args.cells.split(","):
            cls = {"lstm": fastrnn.LSTM, "gru": fastrnn.GRU, "rnn": fastrnn.RNN}[cell]
            for name in args.configs.split(","):
                T, B, I, H = parse_config(name)
                q = fastrnn.quantize_dynamic(cls(I, H, seed=0).eval(), int8="always")
                x = rng.standard_normal((T, B, I)).astype(np.float32)
                outs, times = {}, {k: [] for k in splits}
                for k, v in splits.items():
                    if has_rows:
                        quant._set_rows_weight_bytes(v)
                    outs[k] = q(x)[0]
                if len(outs) == 2 and not np.array_equal(outs["units"], outs["rows"]):
                    raise AssertionError(f"{cell} {name}: the two splits' bits differ")
                for _ in range(args.rounds):
                    for k, v in splits.items():
                        if has_rows:
                            quant._set_rows_weight_bytes(v)
                        times[k].append(_sample(lambda q=q, x=x: q(x), 0.05) * 1e3)
                row = "  ".join(
                    f"{k} {statistics.median(t):7.3f} / {min(t):7.3f}" for k, t in times.items()
                )
                if len(times) == 2:
                    ratio = statistics.median(times["units"]) / statistics.median(times["rows"])
                    row += f"  units/rows {ratio:.2f}x"
                if has_rows:
                    quant._set_rows_weight_bytes(default)
                    row += f"  (plan: {quant.plan(B, H, q._code, I, args.threads)[1]})"
                print(f"  {cell} {name:14s} {row}", flush=True)
    finally:
        if has_rows:
            quant._set_rows_weight_bytes(default)
    return 0


if __name__ == "__main__":
    sys.exit(main())
