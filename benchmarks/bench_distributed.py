"""Data-parallel training throughput of the char-LM model: 1 process vs MPI ranks.

The model and data are those of ``examples/char_lm.py`` (Embedding(65, 32) -> LSTM(32, 256) ->
Linear(256, 65), float32, 32 streams x 64 characters of Tiny Shakespeare per step, Adam,
``clip_grad_norm_``). One step is forward, cross-entropy, backward (with the gradient all-reduce
when distributed), clipping and ``opt.step()``: what a training loop pays.

    python benchmarks/bench_distributed.py               # the comparison below, 3 rounds
    python benchmarks/bench_distributed.py --rounds 5 --steps 40
    python benchmarks/bench_distributed.py --sweep       # 1 thread, batch 32, 16, ..., 1

The driver runs these configurations one after the other, round after round (fair when the
machine's load changes), each a fresh process or ``mpiexec`` job:

* ``1x2``: one process, 2 kernel threads;
* ``2x1``: ``mpiexec -n 2``, 1 kernel thread per rank, each rank 16 of the 32 streams;
* ``1x1``: one process, 1 thread, the whole batch, and ``1x1 b16``: half the batch (what one
  rank of ``2x1`` computes), which give the compute side of the scaling model.

It prints, per configuration, sequences (of 64 characters) per second from the median and the
best step time over all rounds, and for ``2x1`` the share of the step time spent in
communication (``DistributedDataParallel.stats['comm_seconds']``: packing, starting and waiting
for the all-reduces, unpacking), the part of it spent waiting after the backward, and the bytes
all-reduced per step and rank. ``--worker`` runs one configuration (what the driver launches).
``--sweep`` times one process on one thread at per-rank batches 32 down to 1: how a rank's
compute shrinks as more ranks share a fixed global batch (strong scaling).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))


def worker(args: argparse.Namespace) -> None:
    from char_lm import DATA, CharLM, load_text

    import fastrnn
    from fastrnn.nn import CrossEntropyLoss
    from fastrnn.optim import Adam, clip_grad_norm_
    from fastrnn.utils import batchify

    fastrnn.set_num_threads(args.threads)
    comm, rank, world = None, 0, 1
    if args.distributed:
        from fastrnn import distributed

        comm = distributed.init()
        rank, world = comm.Get_rank(), comm.Get_size()
    ids, chars = load_text(DATA, quick=False)
    rng = np.random.default_rng(0)
    model = CharLM(len(chars), 32, 256, 1, rng)
    net = model if comm is None else distributed.DistributedDataParallel(model, comm)
    params = list(model.parameters())
    opt = Adam(params, lr=2e-3)
    crit = CrossEntropyLoss()
    data = batchify(ids, args.batch)
    if comm is not None:
        data = distributed.shard(data, axis=1, comm=comm)
    T = 64
    times, comm_s, wait_s = [], [], []
    state = None
    for step in range(args.warmup + args.steps):
        x, y = data[step * T : (step + 1) * T], data[step * T + 1 : (step + 1) * T + 1]
        if comm is not None:
            comm.Barrier()  # start every step together: the time is the slowest rank's
        t0 = time.perf_counter()
        logits, state = net(x, state)
        crit(logits, y)
        if comm is None:
            model.backward(crit.backward())
        else:
            net.backward(crit.backward(), num_samples=y.size)
        clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad()
        dt = time.perf_counter() - t0
        if step >= args.warmup:
            times.append(dt)
            if comm is not None:
                comm_s.append(net.stats["comm_seconds"])
                wait_s.append(net.stats["wait_seconds"])
    result = {
        "steps": times,
        "batch": args.batch,
        "ranks": world,
        "threads": fastrnn.get_num_threads(),
    }
    if comm is not None:
        # every rank's step times: a step lasts as long as its slowest rank
        result["steps"] = np.max(comm.allgather(np.array(times)), axis=0).tolist()
        result["comm_share"] = float(np.sum(comm_s) / np.sum(times))
        result["wait_share"] = float(np.sum(wait_s) / np.sum(times))
        result["bytes"] = net.stats["bytes"]
        result["buckets"] = net.stats["buckets"]
        # the all-reduce alone, same bytes, ranks synchronised first: the transport's cost
        # without the skew between ranks that the wait inside a step also absorbs
        from mpi4py import MPI

        buf = np.ones(net.stats["bytes"] // 4, dtype=np.float32)
        alone = []
        for _ in range(20):
            comm.Barrier()
            t0 = time.perf_counter()
            comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
            alone.append(time.perf_counter() - t0)
        result["allreduce_alone"] = float(np.median(comm.allgather(np.median(alone))))
    if rank == 0:
        print("RESULT " + json.dumps(result), flush=True)


CONFIGS = {
    "1x2": dict(ranks=1, threads=2, batch=32),
    "2x1": dict(ranks=2, threads=1, batch=32),
    "1x1": dict(ranks=1, threads=1, batch=32),
    "1x1 b16": dict(ranks=1, threads=1, batch=16),
}


def driver(args: argparse.Namespace) -> None:
    mpiexec = Path(sys.executable).parent / "mpiexec"
    mpiexec = str(mpiexec) if mpiexec.exists() else shutil.which("mpiexec")
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    runs: dict[str, list[dict]] = {k: [] for k in CONFIGS}
    for r in range(args.rounds):
        for name, c in CONFIGS.items():
            cmd = [sys.executable, __file__, "--worker", "--threads", str(c["threads"])]
            cmd += ["--batch", str(c["batch"]), "--steps", str(args.steps)]
            if c["ranks"] > 1:
                if mpiexec is None:
                    raise SystemExit("mpiexec not found: pip install 'fastrnn[mpi]'")
                cmd = [mpiexec, "-n", str(c["ranks"]), *cmd, "--distributed"]
            env["OMP_NUM_THREADS"] = str(c["threads"])
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
            line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
            if out.returncode != 0 or not line:
                raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stdout}\n{out.stderr}")
            runs[name].append(json.loads(line[0][7:]))
            print(f"round {r + 1}/{args.rounds} {name} done", file=sys.stderr)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"char-LM training step, float32, 64 characters per sequence; load average {load:.1f}")
    print(
        "| ranks x threads | batch | step median (ms) | step best (ms) | "
        "sequences/s (median) | sequences/s (best) | communication share | wait share | "
        "bytes all-reduced per step | the all-reduce alone (ms) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, rs in runs.items():
        steps = [s for r in rs for s in r["steps"]]
        med, best = statistics.median(steps), min(steps)
        b = rs[0]["batch"]
        row = [name, str(b), f"{1e3 * med:.1f}", f"{1e3 * best:.1f}", f"{b / med:.0f}"]
        row.append(f"{b / best:.0f}")
        if "comm_share" in rs[0]:
            share = statistics.median(r["comm_share"] for r in rs)
            wait = statistics.median(r["wait_share"] for r in rs)
            alone = statistics.median(r["allreduce_alone"] for r in rs)
            row += [f"{100 * share:.1f}%", f"{100 * wait:.1f}%", f"{rs[0]['bytes']:,}"]
            row.append(f"{1e3 * alone:.2f}")
        else:
            row += ["", "", "", ""]
        print("| " + " | ".join(row) + " |")


def sweep(args: argparse.Namespace) -> None:
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    print("| batch per rank | step median (ms) | step best (ms) | ms per sequence (best) |")
    print("|---|---|---|---|")
    for b in (32, 16, 8, 4, 2, 1):
        steps = []
        for _ in range(args.rounds):
            cmd = [sys.executable, __file__, "--worker", "--threads", "1", "--batch", str(b)]
            cmd += ["--steps", str(args.steps)]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
            line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
            if out.returncode != 0 or not line:
                raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stdout}\n{out.stderr}")
            steps += json.loads(line[0][7:])["steps"]
        med, best = statistics.median(steps), min(steps)
        print(f"| {b} | {1e3 * med:.1f} | {1e3 * best:.1f} | {1e3 * best / b:.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3, help="rounds of all configurations")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per run")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    ap.add_argument("--worker", action="store_true", help="run one configuration")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--distributed", action="store_true")
    ap.add_argument("--sweep", action="store_true", help="1 thread, batch 32 down to 1")
    args = ap.parse_args()
    if args.worker:
        worker(args)
    elif args.sweep:
        sweep(args)
    else:
        driver(args)


if __name__ == "__main__":
    main()
