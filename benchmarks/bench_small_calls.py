"""The fixed cost of one small call of ``fastrnn.functional``: T=1, B=1, H=32 by default.

At such sizes the arithmetic takes a few microseconds and what a call costs is its fixed part:
validating and converting the operands, allocating the outputs, picking the threads and entering
the kernel. Every cell's inference forward (``training=False``) and, with ``--fwdbwd``, its
training forward plus backward are timed on the same arrays (float32, already C-contiguous:
the case the fast paths serve).

``--baseline DIR`` also times the Python layer of another checkout (``DIR/fastrnn/functional.py``
and the ``_common.py`` / ``_threads.py`` / ``_workspace.py`` it imports) on this checkout's
kernels, interleaved with this one, so a change to the Python path is measured before/after in
one run:

    python benchmarks/bench_small_calls.py
    python benchmarks/bench_small_calls.py --baseline /path/to/main/checkout --fwdbwd
    python benchmarks/bench_small_calls.py -T 50 -I 32 -H 64     # the bench's `small`
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import types

import numpy as np

import fastrnn
import fastrnn.functional
from fastrnn.cells import CELLS


def load_baseline(root: str) -> types.ModuleType:
    """``functional`` of the checkout at ``root``, importing that checkout's ``_common``,
    ``_threads`` and ``_workspace`` (under private names) and this checkout's kernels and
    cells."""
    names = {}
    for mod in ("_threads", "_workspace", "_common", "functional"):
        path = os.path.join(root, "fastrnn", f"{mod}.py")
        alias = f"_baseline_{mod}"
        with open(path, encoding="utf-8") as f:
            src = f.read()
        for dep, dep_alias in names.items():
            src = src.replace(f"from fastrnn.{dep} import", f"from {dep_alias} import")
            src = src.replace(f"from fastrnn import {dep} as", f"import {dep_alias} as")
        module = types.ModuleType(alias)
        module.__file__ = path
        sys.modules[alias] = module
        exec(compile(src, path, "exec"), module.__dict__)
        names[mod] = alias
    return sys.modules[names["functional"]]


def calls(mod: types.ModuleType, cell: str, T: int, B: int, I: int, H: int, seed: int = 0):
    """``{"fwd": f, "fwdbwd": g}`` closures over ``mod``'s forward/backward of ``cell``."""
    c = CELLS[cell]
    rng = np.random.default_rng(seed)
    G = c.G * H
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    dy = rng.standard_normal((T, B, H)).astype(np.float32)
    w = [rng.uniform(-0.2, 0.2, s).astype(np.float32) for s in ((G, I), (G, H), (G,), (G,))]
    fwd = getattr(mod, f"{c.name}_forward")
    bwd = getattr(mod, f"{c.name}_backward")
    args = (x, *(None for _ in c.states), *w)

    def forward():
        return fwd(*args, training=False)

    def forward_backward():
        return bwd(fwd(*args)[-1], dy)

    return {"fwd": forward, "fwdbwd": forward_backward}


def time_interleaved(fns: dict, rounds: int, calls_per_round: int) -> dict[str, list[float]]:
    """Microseconds per call of each function, sampled in turn (A B A B ...)."""
    out: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        for _ in range(calls_per_round):
            fn()
    for _ in range(rounds):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(calls_per_round):
                fn()
            out[k].append(1e6 * (time.perf_counter() - t0) / calls_per_round)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-T", type=int, default=1)
    ap.add_argument("-B", type=int, default=1)
    ap.add_argument("-I", type=int, default=32)
    ap.add_argument("-H", type=int, default=32)
    ap.add_argument("--cells", default=",".join(CELLS))
    ap.add_argument("--fwdbwd", action="store_true", help="also time forward + backward")
    ap.add_argument("--baseline", metavar="DIR", help="checkout whose Python layer to compare")
    ap.add_argument("--threads", type=int, default=None, help="fastrnn.set_num_threads")
    ap.add_argument("--rounds", type=int, default=21)
    ap.add_argument("--calls", type=int, default=500, help="calls per timed round")
    args = ap.parse_args(argv)
    if args.threads:
        fastrnn.set_num_threads(args.threads)
    mods = {"this": fastrnn.functional}
    if args.baseline:
        mods = {"baseline": load_baseline(args.baseline), **mods}
    modes = ("fwd", "fwdbwd") if args.fwdbwd else ("fwd",)
    print(
        f"T={args.T} B={args.B} I={args.I} H={args.H} float32, {fastrnn.get_num_threads()} "
        f"thread(s); microseconds per call, median / min of {args.rounds} interleaved rounds "
        f"of {args.calls} calls"
    )
    print(f"{'cell':5s} {'mode':7s} {'impl':9s} {'median us':>10s} {'min us':>8s} {'x':>6s}")
    for cell in args.cells.split(","):
        per_mod = {k: calls(m, cell, args.T, args.B, args.I, args.H) for k, m in mods.items()}
        for mode in modes:
            fns = {k: v[mode] for k, v in per_mod.items()}
            times = time_interleaved(fns, args.rounds, args.calls)
            this = statistics.median(times["this"])
            for k, ts in times.items():
                med = statistics.median(ts)
                print(f"{cell:5s} {mode:7s} {k:9s} {med:10.1f} {min(ts):8.1f} {med / this:5.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
