"""What waking the team costs: one call after a pause, on a team of 2 threads and on one.

A kernel call on 2 threads opens an OpenMP region and waits at its first step's barrier for the
second thread. After a region libgomp's idle threads spin a while (about 3 ms by default), then
sleep, and a sleeping thread (on a VM: a parked vCPU) takes time to wake. This script runs an
LSTM step (T = 1, B = 1, I = H = 256, weights packed once) back to back, pauses (``--pauses``,
sleeping or busy-waiting), then times one call, on a team of 2 and of 1 in alternation; it
prints the median and 90th percentile per pause. ``fastrnn.functional._step_team`` splits a step
only when the layer's previous call ended within ``_BURST_S``, or the team spins
(``GOMP_SPINCOUNT``), or the call is long enough to pay for the wake-up.

    python benchmarks/bench_wake.py
    python benchmarks/bench_wake.py --pauses 0.1,1,10,100 --busy
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

import fastrnn
from fastrnn import functional as F


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--pauses", default="0.1,1,3,5,10,20,50,100", help="ms, comma-separated")
    ap.add_argument("--samples", type=int, default=15, help="timed calls per pause and team")
    ap.add_argument("--busy", action="store_true", help="busy-wait the pause instead of sleeping")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    T, B, H = 1, 1, 256
    x = rng.standard_normal((T, B, H)).astype(np.float32)
    w_ih, w_hh = ((rng.standard_normal((4 * H, H)) * 0.05).astype(np.float32) for _ in range(2))
    b = np.zeros(4 * H, np.float32)
    packs: dict = {}
    before = (fastrnn.get_num_threads(), F._TEAM_SPINS)

    def call():
        F.lstm_forward(x, None, None, w_ih, w_hh, b, b, training=False, packs=packs)

    def pause(seconds):
        if not args.busy:
            time.sleep(seconds)
            return
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            pass

    kind = "busy" if args.busy else "sleeping"
    print(f"bench_wake: LSTM step I = H = {H}, B = 1; us after a {kind} pause (median / p90)")
    try:
        F._TEAM_SPINS = True  # _step_team: the whole team, whatever the history
        for ms in map(float, args.pauses.split(",")):
            out = {1: [], 2: []}
            for _ in range(args.samples):
                for n in (2, 1):
                    fastrnn.set_num_threads(n)
                    for _ in range(5):
                        call()
                    pause(ms / 1e3)
                    t0 = time.perf_counter()
                    call()
                    out[n].append((time.perf_counter() - t0) * 1e6)
            cells = "   ".join(
                f"{n} thread(s) {np.median(v):7.0f} / {np.percentile(v, 90):7.0f}"
                for n, v in sorted(out.items(), reverse=True)
            )
            print(f"  pause {ms:6.1f} ms:   {cells}", flush=True)
    finally:
        fastrnn.set_num_threads(before[0])
        F._TEAM_SPINS = before[1]
    return 0


if __name__ == "__main__":
    sys.exit(main())
