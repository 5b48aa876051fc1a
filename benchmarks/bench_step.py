"""The streaming step's cost per call: CPU time of ``layer.step`` in a stream, float32 and int8.

Each call passes back the state the previous call returned, as a stream does. Time is the
calling thread's CPU time (``time.thread_time``) by default, which a loaded machine disturbs much
less than wall time; a stream's steps (each within ``functional._BURST_S`` of the last) of a
layer wide enough run on 2 threads (README, "Inference: streaming steps and int8"), whose time
only ``--clock wall`` shows: ``--threads 1`` for the one-thread kernel's CPU time, ``--clock
wall`` for what a stream takes. Prints the median and minimum of ``--repeats`` samples per
layer, in microseconds. To compare two builds, run it with each on ``PYTHONPATH`` in
alternation:

    PYTHONPATH=. python benchmarks/bench_step.py
    PYTHONPATH=. python benchmarks/bench_step.py --sizes 256 --cells lstm --clock wall
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

import fastrnn


def stream(layer, x):
    """A function that advances ``layer`` by one step of ``x``, carrying its state."""
    box = [layer.step(x)[1]]

    def step():
        box[0] = layer.step(x, box[0])[1]

    return step


def sample(fn, clock, calls: int, repeats: int) -> list[float]:
    """``repeats`` samples of the mean time of ``calls`` calls of ``fn``, in microseconds."""
    out = []
    for _ in range(repeats):
        t0 = clock()
        for _ in range(calls):
            fn()
        out.append((clock() - t0) / calls * 1e6)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--cells", default="lstm,gru,rnn")
    ap.add_argument("--sizes", default="16,256", help="I = H of each layer, comma-separated")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--clock", choices=["thread", "wall"], default="thread")
    args = ap.parse_args(argv)
    fastrnn.set_num_threads(args.threads)
    clock = time.thread_time if args.clock == "thread" else time.perf_counter
    print(
        f"bench_step: {fastrnn.__file__}, {args.threads} threads, B = {args.batch}, "
        f"{args.clock} time, us per step (median / min)"
    )
    rng = np.random.default_rng(0)
    for cell in args.cells.split(","):
        cls = {"lstm": fastrnn.LSTM, "gru": fastrnn.GRU, "rnn": fastrnn.RNN}[cell]
        for size in map(int, args.sizes.split(",")):
            f32 = cls(size, size, seed=0).eval()
            q = fastrnn.quantize_dynamic(f32, int8="always")
            x = rng.standard_normal((args.batch, size)).astype(np.float32)
            row = []
            for name, layer in (("float32", f32), ("int8", q)):
                times = sample(stream(layer, x), clock, args.calls, args.repeats)
                row.append(f"{name} {statistics.median(times):7.2f} / {min(times):7.2f}")
            print(f"  {cell} {size:4d}   " + "   ".join(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
