"""A short demonstration: every cell, forward and BPTT, Cython kernels against the NumPy reference.

Run with ``python -m fastrnn.demo``. It checks that both paths agree, then prints the time of a
training step (forward + full backward) for each cell and the speed-up of the kernels.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

from fastrnn import functional, get_num_threads, reference
from fastrnn.cells import CELLS, Cell

# OpenBLAS worker threads spin for a while after a call before they sleep; on a small machine
# the reference's spinning BLAS threads would otherwise take a core from the kernels' threads.
SETTLE = 0.2


def _step(module, cell: Cell, x, weights, dy) -> Callable[[], tuple]:
    """A closure running one forward + backward of ``cell`` with ``module``'s functions."""
    fwd = getattr(module, f"{cell.name}_forward")
    bwd = getattr(module, f"{cell.name}_backward")
    states = [None] * len(cell.states)

    def run():
        y, *_, cache = fwd(x, *states, *weights)
        return y, bwd(cache, dy)

    return run


def _best_of(fn: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fastrnn.demo", description=__doc__)
    ap.add_argument("--T", type=int, default=100, help="sequence length (default 100)")
    ap.add_argument("--B", type=int, default=16, help="batch size (default 16)")
    ap.add_argument("--I", type=int, default=64, help="input size (default 64)")
    ap.add_argument("--H", type=int, default=128, help="hidden size (default 128)")
    ap.add_argument("--repeat", type=int, default=5, help="timed repetitions (default 5)")
    args = ap.parse_args(argv)
    T, B, I, H = args.T, args.B, args.I, args.H
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    dy = rng.standard_normal((T, B, H)).astype(np.float32)
    print(
        f"fastrnn demo: float32, T={T} B={B} I={I} H={H}, forward + BPTT, "
        f"{get_num_threads()} thread(s), best of {args.repeat}"
    )
    print(
        f"{'cell':<12}{'NumPy ref (ms)':>16}{'Cython (ms)':>14}{'speed-up':>10}{'max rel diff':>14}"
    )
    for cell in CELLS.values():
        G, label = cell.G, cell.torch_mode(cell.option_defaults())  # RNN_TANH, LSTM, GRU
        k = 1 / np.sqrt(H)
        weights = [
            rng.uniform(-k, k, shape).astype(np.float32)
            for shape in ((G * H, I), (G * H, H), (G * H,), (G * H,))
        ]
        fast = _step(functional, cell, x, weights, dy)
        ref = _step(reference, cell, x, weights, dy)
        (y_f, g_f), (y_r, g_r) = fast(), ref()
        diff = max(
            float(np.abs(a - b).max() / (np.abs(b).max() + 1e-30))
            for a, b in zip((y_f, *g_f), (y_r, *g_r), strict=True)
            if a is not None
        )
        t_ref = _best_of(ref, args.repeat)
        time.sleep(SETTLE)  # let numpy's BLAS threads, spinning after the reference, sleep
        t_fast = _best_of(fast, args.repeat)
        time.sleep(SETTLE)
        print(
            f"{label:<12}{1e3 * t_ref:>16.2f}{1e3 * t_fast:>14.2f}{t_ref / t_fast:>9.1f}x"
            f"{diff:>14.1e}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
