"""``bench_torch_patch.py`` under the conditions PyTorch users actually run: every import order,
``OMP_WAIT_POLICY`` unset or PASSIVE, 1 and 2 threads, each in a fresh process.

torch and fastrnn share one OpenMP runtime in a process (the ``libgomp.so.1`` of whichever is
imported first), which reads ``OMP_WAIT_POLICY`` once, when it is loaded; neither library sets
it (fastrnn set PASSIVE before loading its kernels until this release). What a user measures
depends on the environment and, with two different runtimes, on the import order; only a fresh
process shows it. For each combination this starts one

    python -c "import <first>; import <second>; runpy.run_path('bench_torch_patch.py')" ARGS

with ``OMP_WAIT_POLICY`` removed from or set in the environment, and collects the training-step
times (best, median, CPU) of torch and of the patched model that the script prints:

    python benchmarks/bench_torch_conditions.py     # 2 orders x 2 policies x 1 and 2 threads
    python benchmarks/bench_torch_conditions.py --threads 2 --rounds 9 -- -H 128
    python benchmarks/bench_torch_conditions.py --baseline /other/checkout   # before/after

With ``--baseline DIR`` each combination also runs with ``PYTHONPATH=DIR`` (another checkout of
fastrnn, built in place), just before this checkout's run, so both see the same load.
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "bench_torch_patch.py")
# fastrnn.torch imports torch itself, so "fastrnn first" loads fastrnn's kernels (and its
# OpenMP runtime) first only through fastrnn.functional:
PRELUDE = {
    "torch first": "import torch, fastrnn.functional, fastrnn.torch",
    "fastrnn first": "import fastrnn.functional; import torch, fastrnn.torch",
}
ROW = re.compile(r"^(torch|fastrnn\.patch)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s*$")


def run_one(
    order: str, policy: str | None, threads: int, rounds: int, extra: list[str], path: str
) -> dict:
    """One fresh process with fastrnn from ``path``; returns ``{"torch": (best, median, cpu),
    "patched": (...)}`` in ms."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (path, env.get("PYTHONPATH", "")) if p)
    env.pop("OMP_WAIT_POLICY", None)
    if policy is not None:
        env["OMP_WAIT_POLICY"] = policy
    code = f"{PRELUDE[order]}; import runpy; runpy.run_path({SCRIPT!r}, run_name='__main__')"
    cmd = [sys.executable, "-c", code, "--threads", str(threads), "--rounds", str(rounds), *extra]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    rows = {}
    for line in out.splitlines():
        m = ROW.match(line.strip())
        if m:
            key = "torch" if m.group(1) == "torch" else "patched"
            rows[key] = tuple(float(v) for v in m.groups()[1:])
    if set(rows) != {"torch", "patched"}:
        raise RuntimeError(f"unexpected output of {SCRIPT}:\n{out}")
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    ap.add_argument("--orders", default=",".join(PRELUDE), help="torch first,fastrnn first")
    ap.add_argument("--policies", default="unset,PASSIVE", help="unset and/or values to set")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--baseline", metavar="DIR", help="also run another checkout, alternating")
    ap.add_argument("extra", nargs="*", help="after --: more arguments for bench_torch_patch.py")
    args = ap.parse_args(argv)
    threads = [int(t) for t in args.threads.split(",")]
    orders = args.orders.split(",")
    policies = [None if p == "unset" else p for p in args.policies.split(",")]
    print(
        f"bench_torch_patch.py {' '.join(args.extra)} in fresh processes, {args.rounds} "
        f"alternating rounds each; load average {' '.join(f'{v:.1f}' for v in os.getloadavg())}"
    )
    print(
        "| threads | import order | OMP_WAIT_POLICY | fastrnn | torch ms (median/best) | "
        "patched ms (median/best) | speed-up (median/best) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    root = os.path.dirname(HERE)
    checkouts = {"this": root}
    if args.baseline:
        checkouts = {"baseline": os.path.abspath(args.baseline), **checkouts}
    for n, order, policy in itertools.product(threads, orders, policies):
        for name, path in checkouts.items():
            r = run_one(order, policy, n, args.rounds, args.extra, path)
            (tb, tm, _), (pb, pm, _) = r["torch"], r["patched"]
            print(
                f"| {n} | {order} | {policy or 'unset'} | {name} | {tm:.2f}/{tb:.2f} | "
                f"{pm:.2f}/{pb:.2f} | {tm / pm:.2f}x/{tb / pb:.2f}x |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
