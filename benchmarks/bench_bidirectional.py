"""Both directions of a bidirectional layer at once vs one after the other (fastrnn.stack).

One bidirectional layer, forward + backward through ``fastrnn.stack`` with a dense upstream
gradient, timed with the two directions forced to run concurrently (on two Python threads,
each kernel call capped at its share of ``--threads``; ``fastrnn.stack._CONCURRENT_DIRECTIONS =
True``, whatever the size rule says) and forced one after the other (``= False``, each call
with all the threads), interleaved
A B A B ... so that load changes hit both alike. Each sample repeats the pass enough times to
last about ``--min-ms``; the table gives the median over ``--repeat`` samples of one pass.

    python benchmarks/bench_bidirectional.py                      # LSTM and GRU, 3 shapes
    python benchmarks/bench_bidirectional.py --shapes small medium --cells gru --repeat 9

(From a git worktree whose fastrnn is not the installed one, put it first:
``PYTHONPATH=. python benchmarks/bench_bidirectional.py``; the header prints which is timed.)

``threads/dir`` is the number of kernel threads each direction's calls get on each path
(``functional._team``). ``ratio`` is sequential / concurrent: above 1 the concurrent path
wins. ``others`` is the mean number of cores other processes kept busy during the kept
samples (from /proc/stat): on a shared machine they take cores away, which hurts the
sequential path's per-step barriers more than the concurrent path; ``--max-others 0.1`` measures
a pair again (up to 4 x ``--repeat`` pairs in all) when another process got in its way.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

import fastrnn
from fastrnn import _threads, functional, stack
from fastrnn.cells import CELLS
from fastrnn.stack import StackConfig, default_init, stack_backward, stack_forward

SHAPES = {  # T, B, I, H
    "small": (50, 1, 32, 64),
    "medium": (100, 32, 128, 256),
    "large": (100, 64, 512, 512),
}


def busy_seconds():
    """(CPU seconds of the whole machine, of this process) so far; None off Linux."""
    try:
        with open("/proc/stat") as f:
            user, nice, system, _idle, _iowait, irq, softirq, steal = map(
                int, f.readline().split()[1:9]
            )
    except (OSError, ValueError):  # pragma: no cover - not Linux
        return None
    busy = (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
    return busy, time.process_time()


def make_problem(cell, T, B, I, H, dtype, seed=0):
    cfg = StackConfig(cell, I, H, bidirectional=True)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    dy = rng.standard_normal((T, B, 2 * H)).astype(dtype)
    return cfg, x, dy, default_init(cfg, dtype, rng)


def one_pass(cfg, x, dy, w):
    *_, cache = stack_forward(cfg, x, None, None, w)
    return stack_backward(cache, dy)


def sample(concurrent, n, cfg, x, dy, w):
    """Seconds per pass, over n passes, on the concurrent or the sequential path."""
    stack._CONCURRENT_DIRECTIONS = concurrent
    try:
        t0 = time.perf_counter()
        for _ in range(n):
            one_pass(cfg, x, dy, w)
        return (time.perf_counter() - t0) / n
    finally:
        stack._CONCURRENT_DIRECTIONS = None


def team(cfg, x, w, share):
    """Kernel threads of one direction's forward call with at most ``share`` threads."""
    p = functional.prepare(
        cfg.spec, x, None, None, w["weight_ih_l0"], w["weight_hh_l0"], None, None
    )
    with _threads._thread_limit(share):
        return functional._team(p)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", nargs="+", default=["lstm", "gru"], choices=list(CELLS))
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=5, help="samples per path (median taken)")
    ap.add_argument("--min-ms", type=float, default=100.0, help="least duration of a sample")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument(
        "--max-others",
        type=float,
        default=None,
        help="measure an A B pair again when other processes used more cores than this",
    )
    args = ap.parse_args(argv)

    fastrnn.set_num_threads(args.threads)
    n = args.threads
    print(
        f"bidirectional 1-layer forward+backward, {args.dtype}, fastrnn threads {n}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; median of "
        f"{args.repeat} interleaved samples\nfastrnn from {os.path.dirname(fastrnn.__file__)}"
    )
    print(
        f"{'cell':5} {'shape':7} {'T x B x I x H':>18} {'threads/dir seq|conc':>21} "
        f"{'sequential ms':>14} {'concurrent ms':>14} {'ratio':>6} {'others':>6}"
    )
    for cell in args.cells:
        for shape in args.shapes:
            T, B, I, H = SHAPES[shape]
            cfg, x, dy, w = make_problem(cell, T, B, I, H, args.dtype)
            t = sample(True, 1, cfg, x, dy, w)  # warm-up, and the size of a sample
            reps = max(1, round(args.min_ms / 1e3 / t))
            times, others, tries = {False: [], True: []}, [], 0
            while len(others) < args.repeat and tries < 4 * args.repeat:
                tries += 1
                before, t0 = busy_seconds(), time.perf_counter()
                pair = {c: sample(c, reps, cfg, x, dy, w) for c in (False, True)}
                after, wall = busy_seconds(), time.perf_counter() - t0
                other = (
                    0.0
                    if before is None
                    else (max(0.0, (after[0] - before[0]) - (after[1] - before[1])) / wall)
                )
                if args.max_others is not None and other > args.max_others:
                    continue  # another process took a core during this pair: measure it again
                others.append(other)
                for c in pair:
                    times[c].append(pair[c])
            if not others:
                print(f"{cell:5} {shape:7} no pair with other processes under --max-others")
                continue
            seq, conc = (statistics.median(times[c]) * 1e3 for c in (False, True))
            teams = (
                f"{team(cfg, x, w, n)} | {team(cfg, x, w, n // 2)}+{team(cfg, x, w, n - n // 2)}"
            )
            print(
                f"{cell:5} {shape:7} {f'{T}x{B}x{I}x{H}':>18} {teams:>21} "
                f"{seq:14.2f} {conc:14.2f} {seq / conc:6.2f} {statistics.mean(others):6.2f}"
                + ("" if len(others) == args.repeat else f"  ({len(others)} pairs)")
            )
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
