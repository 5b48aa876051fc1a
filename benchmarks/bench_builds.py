"""Time two builds of the cell kernels in one process, sample by sample in turn.

    git worktree add /tmp/base main  # then build it in place: python setup.py build_ext --inplace
    python benchmarks/bench_builds.py /tmp/base .             # A = /tmp/base, B = this tree
    python benchmarks/bench_builds.py A B --configs medium --rounds 40 --threads 1

Each build's ``fastrnn/_kernels/<cell>.*.so`` is loaded as its own module object (the portable
module, on the best micro-kernels this CPU runs; ``FASTRNN_ISA`` is not applied), and a
training forward + backward through the kernel-level functions (``forward`` / ``backward`` of
``fastrnn._kernels.<cell>``, float32) is timed for A and B alternately (A B, B A, A B, ...),
so both see the same load on a shared machine. Prints the median and best per call and B / A.
Both builds must have the kernel-level signatures this script calls (those of the commit that
added it).
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import os
import statistics
import time
from collections.abc import Callable
from types import ModuleType

import numpy as np

CONFIGS = {"small": (50, 1, 32, 64), "medium": (100, 32, 128, 256), "large": (100, 64, 512, 512)}
GATES = {"lstm": 4, "gru": 3, "rnn": 1}


def load(tree: str, cell: str) -> ModuleType:
    """The module fastrnn._kernels.<cell> of the build in ``tree``, as a fresh module object."""
    found = glob.glob(os.path.join(tree, "fastrnn", "_kernels", f"{cell}.cpython-*"))
    if not found:
        raise SystemExit(f"{tree}: no built fastrnn/_kernels/{cell} module (build it in place)")
    spec = importlib.util.spec_from_file_location(f"fastrnn._kernels.{cell}", found[0])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def step(cell: str, mod: ModuleType, shape: tuple, threads: int) -> Callable[[], None]:
    """A training forward + backward of ``mod`` on fixed float32 inputs."""
    T, B, I, H = shape
    G = GATES[cell] * H
    f = np.float32
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, I), dtype=f)
    w_ih = rng.standard_normal((G, I), dtype=f) * f(0.1)
    w_hh = rng.standard_normal((G, H), dtype=f) * f(0.1)
    h0, dh = np.zeros((B, H), f), np.zeros((B, H), f)
    bs = np.full(T, B, np.intc)
    y, h_n, dy = np.empty((T, B, H), f), np.empty((B, H), f), np.ones((T, B, H), f)
    dx, dw_ih, dw_hh = np.empty((T, B, I), f), np.empty_like(w_ih), np.empty_like(w_hh)
    bias, db, db2 = np.zeros(G, f), np.empty(G, f), np.empty(G, f)
    gates, dg, dg2 = (np.empty((T, B, G), f) for _ in range(3))
    if cell == "lstm":
        c0, dc, c_n = np.zeros((B, H), f), np.zeros((B, H), f), np.empty((B, H), f)
        cs = np.empty((T, B, H), f)

        def run() -> None:
            mod.forward(x, h0, c0, w_ih, w_hh, bias, bs, gates, y, cs, h_n, c_n, True, threads)
            mod.backward(
                x, h0, c0, w_ih, w_hh, bs, gates, y, cs, dy, dh, dc, dg, dx, dw_ih, dw_hh, db,
                threads,
            )  # fmt: skip
    elif cell == "gru":
        b_hn, hns, hw = np.zeros(H, f), np.empty((T, B, H), f), np.empty((B, G), f)

        def run() -> None:
            mod.forward(x, h0, w_ih, w_hh, bias, b_hn, bs, gates, hns, hw, y, h_n, True, threads)
            mod.backward(
                x, h0, w_ih, w_hh, bs, gates, hns, y, dy, dh, dg, dg2, dx, dw_ih, dw_hh, db, db2,
                threads,
            )  # fmt: skip
    else:
        da = np.empty((T, B, H), f)

        def run() -> None:
            mod.forward(x, h0, w_ih, w_hh, bias, bs, y, h_n, False, threads)
            mod.backward(x, h0, w_ih, w_hh, bs, y, dy, dh, da, dx, dw_ih, dw_hh, db, False, threads)

    return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("a", help="root of build A (the tree holding its fastrnn/)")
    p.add_argument("b", help="root of build B")
    p.add_argument("--cells", default="lstm,gru,rnn")
    p.add_argument("--configs", default="medium,small", help=", ".join(CONFIGS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=20, help="samples per build")
    p.add_argument("--min-time", type=float, default=0.05, help="least seconds per sample")
    args = p.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f}; {args.threads} threads, float32")
    print(f"{'config':7s} {'cell':5s} {'A median':>10s} {'B median':>10s} {'B/A':>6s}"
          f" {'A best':>10s} {'B best':>10s} {'B/A':>6s}")  # fmt: skip
    for cell in args.cells.split(","):
        mods = {"A": load(args.a, cell), "B": load(args.b, cell)}
        for name in args.configs.split(","):
            runs = {k: step(cell, m, CONFIGS[name], args.threads) for k, m in mods.items()}
            for run in runs.values():
                run()
                run()
            t0 = time.perf_counter()
            runs["A"]()
            n = max(1, int(args.min_time / (time.perf_counter() - t0)))
            times: dict[str, list[float]] = {"A": [], "B": []}
            for i in range(args.rounds):
                for k in ("A", "B") if i % 2 == 0 else ("B", "A"):
                    t0 = time.perf_counter()
                    for _ in range(n):
                        runs[k]()
                    times[k].append((time.perf_counter() - t0) / n)
            med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
            best = {k: min(v) * 1e3 for k, v in times.items()}
            ratio = {"med": med["B"] / med["A"], "best": best["B"] / best["A"]}
            print(
                f"{name:7s} {cell:5s} {med['A']:8.3f}ms {med['B']:8.3f}ms {ratio['med']:6.3f}"
                f" {best['A']:8.3f}ms {best['B']:8.3f}ms {ratio['best']:6.3f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
