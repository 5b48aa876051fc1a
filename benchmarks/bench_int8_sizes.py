"""Where int8 pays: float32 / int8 time of eval forwards and B = 1 steps over hidden sizes.

``fastrnn.quantize_dynamic(model)`` (``int8="auto"``) keeps a layer float32 below the hidden
size from which its cell measured faster in int8 (``fastrnn.quantization._INT8_MIN_HIDDEN``):
this script measures that. For each cell and I = H, it times the float32 layer and its
``int8="always"`` copy in alternation: a forward of T = 32 steps at B = 64 and at B = 1, and
one step at B = 1 in a stream, and prints the medians and the float32 / int8 ratio (> 1: int8
is faster).

    python benchmarks/bench_int8_sizes.py
    python benchmarks/bench_int8_sizes.py --cells rnn --sizes 32,64,128 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

import fastrnn
import fastrnn.quantization


def _times(fn, calls: int) -> list[float]:
    out = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--cells", default="lstm,gru,rnn")
    ap.add_argument("--sizes", default="16,32,64,128,256", help="I = H, comma-separated")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=7, help="alternations of the two layers")
    ap.add_argument("--calls", type=int, default=20, help="timed calls per round and layer")
    args = ap.parse_args(argv)
    fastrnn.set_num_threads(args.threads)
    print(
        f"bench_int8_sizes: {args.threads} threads, int8 GEMMs "
        f"{fastrnn.quantization.get_quantized_isa()}, median us per call"
    )
    rng = np.random.default_rng(0)
    for cell in args.cells.split(","):
        cls = {"lstm": fastrnn.LSTM, "gru": fastrnn.GRU, "rnn": fastrnn.RNN}[cell]
        for size in map(int, args.sizes.split(",")):
            f32 = cls(size, size, seed=0).eval()
            q = fastrnn.quantize_dynamic(f32, int8="always")
            for T, B in ((32, 64), (32, 1), (1, 1)):
                x = rng.standard_normal((T, B, size)).astype(np.float32)
                if T == 1:  # a stream's step (2-D x)
                    fns = [lambda m=m, x=x[0]: m.step(x) for m in (f32, q)]
                else:
                    fns = [lambda m=m, x=x: m(x) for m in (f32, q)]
                times: list[list[float]] = [[], []]
                for fn in fns:
                    fn()
                for _ in range(args.rounds):
                    for k, fn in enumerate(fns):
                        times[k] += _times(fn, args.calls)
                a, b = (statistics.median(t) * 1e6 for t in times)
                what = "step" if T == 1 else f"T={T}"
                print(
                    f"  {cell} H={size:4d} {what:5s} B={B:2d}: float32 {a:9.1f}  int8 {b:9.1f}"
                    f"  float32/int8 {a / b:5.2f}x",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
