"""Each ``--variants`` variant's forward + backward in process CPU time, with its page faults.

``python -m fastrnn.bench --variants`` times wall clock, which a loaded machine (this project's
2-core development machine, shared by several jobs) turns into noise, and which hides why a
variant is slow. This script runs the same calls (:func:`fastrnn.bench.variants.variants` and
its training forward + backward), interleaved round by round in one process as the bench does,
but measures each call in CPU time of the whole process (every thread; a 2-thread call whose
threads wait at barriers while another job holds the core counts that wait too, so compare
2-thread rows against the same variant's, not across variants with and without barriers) and
counts its minor page faults (``getrusage``). A call that faults thousands of pages is paying
the kernel to map and clear fresh memory, as the layer-normalized cells did before the kept
buffers of :mod:`fastrnn._workspace`.

    python benchmarks/bench_page_faults.py                      # lstm, gru; medium; 1 thread
    python benchmarks/bench_page_faults.py --cells lstm --threads 2 --rounds 15

Run it in a few fresh processes: whether the heap's top is given back depends on the layout of
the process.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time

import numpy as np

import fastrnn
from fastrnn.bench import parse_config
from fastrnn.bench.variants import _calls, variants
from fastrnn.cells import CELLS


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cells", default="lstm,gru", help="comma-separated cells (default lstm,gru)")
    p.add_argument("--config", default="medium", help="a bench config or TxBxIxH")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=9, help="timed calls per variant")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    args = p.parse_args(argv)
    fastrnn.set_num_threads(args.threads)
    shape = parse_config(args.config)
    print(f"{args.config} {args.dtype}, {args.threads} thread(s), median of {args.rounds} rounds")
    for name in args.cells.split(","):
        cell = CELLS[name]
        found = variants(cell, shape[3])
        fns = {v: _calls(cell, o, shape, np.dtype(args.dtype))["fwdbwd"] for v, o in found.items()}
        for fn in fns.values():  # warm up: packing, the kept buffers
            fn()
        cpu: dict[str, list[float]] = {v: [] for v in fns}
        faults: dict[str, list[int]] = {v: [] for v in fns}
        for _ in range(args.rounds):
            for v, fn in fns.items():
                f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                c0 = time.process_time()
                fn()
                cpu[v].append(time.process_time() - c0)
                faults[v].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
        base = statistics.median(cpu[name])
        for v in fns:
            med = statistics.median(cpu[v])
            print(
                f"{v:24s} cpu median {med * 1e3:7.2f} ms  min {min(cpu[v]) * 1e3:7.2f} ms  "
                f"x plain {med / base:5.2f}  page faults/call {statistics.median(faults[v]):6.0f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
