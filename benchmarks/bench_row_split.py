"""How two threads share an inference forward: by batch rows or by hidden units.

The int8 kernels (``fastrnn._kernels.quant.plan``) and the float32 layers' inference forwards
(``fastrnn.functional._step_rows``) split a call's batch rows over the threads where each gets
4 rows or more and the weights are small (no barrier per step; int8: each thread quantizes
only its rows of h), else the hidden units (a barrier per step). This script times eval
forwards of each configuration (T, B, I, H) in both splits, alternating, in loops of calls
(medians and minimums of ``--rounds`` samples of 0.05 s), and checks that both give the same
bits:

* int8 (default): the team forced to ``--threads`` for every call
  (``fastrnn.quantization._team`` patched), the unit split forced with
  ``quant._set_rows_weight_bytes(0)``;
* ``--float32``: the layer's own rules, with ``functional._ROWS_WEIGHT_BYTES = 0`` for "units"
  (then ``functional._step_team`` picks the threads, one for steps too short to split).

Run against a build without the row split (``PYTHONPATH=<other tree>``), it times the unit split
only.

    python benchmarks/bench_row_split.py
    python benchmarks/bench_row_split.py --float32 --cells lstm --configs 1000x16x64x128
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

import fastrnn
import fastrnn.quantization
from fastrnn import functional
from fastrnn._kernels import quant
from fastrnn.bench import parse_config
from fastrnn.cells import get_cell


def _sample(fn, seconds: float) -> float:
    fn()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn()
        n += 1
    return (time.perf_counter() - t0) / n


class _Int8:
    def __init__(self, threads: int) -> None:
        fastrnn.quantization._team = lambda *a: threads  # every call gets the team
        self.has_rows = hasattr(quant, "_set_rows_weight_bytes")
        self.default = quant._set_rows_weight_bytes(0) if self.has_rows else 0
        self.splits = {"units": 0, "rows": 1 << 40} if self.has_rows else {"units": 0}

    def model(self, cls, I, H):
        return fastrnn.quantize_dynamic(cls(I, H, seed=0).eval(), int8="always")

    def use(self, value: int) -> None:
        if self.has_rows:
            quant._set_rows_weight_bytes(value)

    def restore(self) -> None:
        self.use(self.default)

    def plan(self, q, B, I, H, threads) -> str:
        return quant.plan(B, H, q._code, I, threads)[1] if self.has_rows else "units"


class _Float32:
    def __init__(self, threads: int) -> None:
        fastrnn.set_num_threads(threads)
        self.has_rows = hasattr(functional, "_ROWS_WEIGHT_BYTES")
        self.default = functional._ROWS_WEIGHT_BYTES if self.has_rows else 0
        self.splits = {"units": 0, "rows": self.default} if self.has_rows else {"units": 0}

    def model(self, cls, I, H):
        return cls(I, H, seed=0).eval()

    def use(self, value: int) -> None:
        if self.has_rows:
            functional._ROWS_WEIGHT_BYTES = value

    def restore(self) -> None:
        self.use(self.default)

    def plan(self, m, B, I, H, threads) -> str:
        if not self.has_rows:
            return "units"
        G = m._config.spec.G * H
        return "rows" if G * (I + H) * 4 <= self.default and B // 4 >= 2 else "units"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--cells", default="lstm,gru,rnn")
    ap.add_argument("--configs", default="medium,longseq", help="bench names or TxBxIxH")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--float32", action="store_true", help="the float32 layers, not int8")
    args = ap.parse_args(argv)
    path = _Float32(args.threads) if args.float32 else _Int8(args.threads)
    what = "float32, the layers' rules" if args.float32 else "int8, the team forced"
    print(f"bench_row_split: {args.threads} threads, {what}, ms per forward (median / min)")
    rng = np.random.default_rng(0)
    try:
        for cell in args.cells.split(","):
            cls = getattr(fastrnn, get_cell(cell).title)  # fastrnn.LSTM, ...
            for name in args.configs.split(","):
                T, B, I, H = parse_config(name)
                m = path.model(cls, I, H)
                x = rng.standard_normal((T, B, I)).astype(np.float32)
                outs, times = {}, {k: [] for k in path.splits}
                for k, v in path.splits.items():
                    path.use(v)
                    outs[k] = m(x)[0]
                if len(outs) == 2 and not np.array_equal(outs["units"], outs["rows"]):
                    raise AssertionError(f"{cell} {name}: the two splits' bits differ")
                for _ in range(args.rounds):
                    for k, v in path.splits.items():
                        path.use(v)
                        times[k].append(_sample(lambda m=m, x=x: m(x), 0.05) * 1e3)
                row = "  ".join(
                    f"{k} {statistics.median(t):7.3f} / {min(t):7.3f}" for k, t in times.items()
                )
                if len(times) == 2:
                    ratio = statistics.median(times["units"]) / statistics.median(times["rows"])
                    row += f"  units/rows {ratio:.2f}x"
                path.restore()
                row += f"  (plan: {path.plan(m, B, I, H, args.threads)})"
                print(f"  {cell} {name:14s} {row}", flush=True)
    finally:
        path.restore()
    return 0


if __name__ == "__main__":
    sys.exit(main())
