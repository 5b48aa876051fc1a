"""How many threads a kernel call should take: the team rule against fixed teams of 1 and n.

``fastrnn.functional._team`` gives a call fewer threads than :func:`fastrnn.get_num_threads`
when a step's recurrent work is too small to split: each step ends at a barrier, and on a
machine whose vCPUs are shared (a cloud VM, this project's 2-core development machine) a thread
that waits there for the other vCPU to wake costs more than the split saves, and what a user gets
is the median, not the minimum. This script times every cell and bench configuration at
``--threads`` with three teams, interleaved in one process (:func:`fastrnn.bench.time_interleaved`):

* ``rule``: ``_team`` as shipped (threshold ``_MIN_WORK_PER_THREAD`` multiply-adds of the
  recurrent GEMM per thread and step); an inference forward (``fwd``) goes by ``_step_rows``
  (its batch rows split, where its weights are small) or else ``_step_team``, both of which
  split a call that follows the layer's last within ``_BURST_S``, as here;
* ``all``: every call on ``--threads`` threads (where the hidden size allows it);
* ``one``: every call on one thread.

It prints the median and minimum of each, and median / minimum (the spread the rule is meant
to keep under 1.3 on 2 threads):

    python benchmarks/bench_team.py                       # medium, longseq; 2 threads
    python benchmarks/bench_team.py --configs small,medium,large,longseq --repeats 9
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

import fastrnn
from fastrnn import functional
from fastrnn.bench import CELLS, implementations, make_problem, parse_config, time_interleaved

#: Thresholds that make ``_team`` give every call all its threads (where H allows) or one.
TEAMS = {"rule": None, "all": 0, "one": 1 << 62}
#: The thresholds of ``_team``, ``_step_team`` and ``_step_rows`` (an inference forward's rules)
#: that TEAMS sets.
THRESHOLDS = (
    "_MIN_WORK_PER_THREAD",
    "_MIN_STEP_WORK_PER_THREAD",
    "_MIN_STEP_WEIGHTS_PER_THREAD",
    "_MIN_ROWS_CALL_WORK",
)


def with_threshold(fn, threshold):
    """``fn`` run with ``functional._MIN_WORK_PER_THREAD`` and the thresholds of an inference
    forward's rules (``_step_team``, ``_step_rows``) set to ``threshold`` (None: as is)."""

    def call():
        if threshold is None:
            return fn()
        before = [getattr(functional, n) for n in THRESHOLDS]
        for n in THRESHOLDS:
            setattr(functional, n, max(threshold, 1))
        try:
            return fn()
        finally:
            for n, v in zip(THRESHOLDS, before, strict=True):
                setattr(functional, n, v)

    return call


def rule_threads(prep, mode: str) -> int:
    """The threads the shipped rule gives a call in a loop: ``_team`` for a training call,
    ``_step_rows`` or else ``_step_team`` (the layer's previous call just ended) for an
    inference forward."""
    if mode != "fwd":
        return functional._team(prep)
    G, H = prep.w_hh.shape
    args = (prep.B, G, H, prep.w_ih.shape[1], prep.T, {functional._LAST_END: time.perf_counter()})
    return functional._step_rows(*args, prep.w_hh.itemsize) or functional._step_team(*args)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", default=",".join(CELLS))
    ap.add_argument("--configs", default="medium,longseq")
    ap.add_argument("--modes", default="fwd,fwdbwd")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--min-time", type=float, default=0.1)
    ap.add_argument("--settle", type=float, default=0.1)
    args = ap.parse_args(argv)
    fastrnn.set_num_threads(args.threads)
    print(
        f"{args.threads} threads; _MIN_WORK_PER_THREAD = {functional._MIN_WORK_PER_THREAD}; "
        f"load average {' '.join(f'{v:.1f}' for v in os.getloadavg())} at start; "
        f"ms per call, {args.repeats} interleaved samples of >= {args.min_time} s"
    )
    head = f"{'cell':5s} {'config':8s} {'mode':6s} {'team':5s} {'thr':>3s}"
    print(f"{head} {'median ms':>10s} {'min ms':>9s} {'med/min':>8s}")
    for cell in args.cells.split(","):
        for config in args.configs.split(","):
            p = make_problem(cell, parse_config(config), np.float32)
            fns = implementations(p, ("fastrnn",))["fastrnn"]
            prep = functional.prepare(CELLS[cell], p.x, None, None, p.w_ih, p.w_hh, p.b_ih, p.b_hh)
            for mode in args.modes.split(","):
                variants = {k: with_threshold(fns[mode], t) for k, t in TEAMS.items()}
                times = time_interleaved(variants, args.repeats, args.min_time, args.settle)
                for k, ts in times.items():
                    thr = (
                        rule_threads(prep, mode)
                        if TEAMS[k] is None
                        else (1 if TEAMS[k] else min(args.threads, max(1, prep.H // 16)))
                    )
                    med, lo = 1e3 * statistics.median(ts), 1e3 * min(ts)
                    print(
                        f"{cell:5s} {config:8s} {mode:6s} {k:5s} {thr:3d} {med:10.3f} "
                        f"{lo:9.3f} {med / lo:8.2f}"
                    )
                sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
