"""Time per optimizer step for one 1M-element parameter: fastrnn vs a naive NumPy update.

The naive versions are the textbook expressions (``m = b1 * m + (1 - b1) * g`` ...), which
allocate a temporary per operation; fastrnn's work in place on preallocated buffers.

    python benchmarks/bench_optim.py            # prints a table
    pytest benchmarks/bench_optim.py            # pytest-benchmark
"""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

import fastrnn.optim as optim
from fastrnn.nn import Parameter

N = 1_000_000
KWARGS = {
    "SGD": {"lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4},
    "Adam": {"lr": 1e-3},
    "AdamW": {"lr": 1e-3},
    "RMSprop": {"lr": 1e-2},
    "Adagrad": {"lr": 1e-2},
}


def naive_step(name: str, kw: dict, p: np.ndarray, g: np.ndarray, st: dict) -> np.ndarray:
    """One step written the obvious way; returns the new parameter array."""
    st["t"] = t = st.get("t", 0) + 1
    if name == "SGD":
        d = g + kw["weight_decay"] * p
        st["b"] = d if t == 1 else kw["momentum"] * st["b"] + d
        return p - kw["lr"] * st["b"]
    if name in ("Adam", "AdamW"):
        b1, b2, lr = 0.9, 0.999, kw["lr"]
        if name == "AdamW":
            p = p * (1 - lr * 1e-2)
        st["m"] = b1 * st.get("m", 0.0) + (1 - b1) * g
        st["v"] = b2 * st.get("v", 0.0) + (1 - b2) * g * g
        denom = np.sqrt(st["v"]) / math.sqrt(1 - b2**t) + 1e-8
        return p - lr / (1 - b1**t) * st["m"] / denom
    if name == "RMSprop":
        st["v"] = 0.99 * st.get("v", 0.0) + 0.01 * g * g
        return p - kw["lr"] * g / (np.sqrt(st["v"]) + 1e-8)
    if name == "Adagrad":
        st["s"] = st.get("s", 0.0) + g * g
        return p - kw["lr"] * g / (np.sqrt(st["s"]) + 1e-10)
    raise ValueError(name)


def _setup(name: str, dtype: type):
    rng = np.random.default_rng(0)
    p = Parameter(rng.standard_normal(N).astype(dtype))
    p.grad = rng.standard_normal(N).astype(dtype)
    opt = getattr(optim, name)([p], **KWARGS[name])
    opt.step()  # allocate state and workspace outside the timing
    return p, opt


def _time_pair(a, b, rounds: int = 15, calls: int = 10) -> tuple[float, float]:
    """Best seconds per call of ``a`` and of ``b``, timed in alternation (fair under load)."""
    for _ in range(3):
        a()
        b()
    best = [math.inf, math.inf]
    for _ in range(rounds):
        for i, fn in enumerate((a, b)):
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            best[i] = min(best[i], (time.perf_counter() - t0) / calls)
    return best[0], best[1]


def main() -> None:
    print(f"one parameter of {N:,} elements; ms per step (best of 15 runs of 10 steps)")
    print(f"{'optimizer':10s} {'dtype':8s} {'fastrnn':>9s} {'naive':>9s} {'speed-up':>9s}")
    for dtype in (np.float32, np.float64):
        for name in KWARGS:
            p, opt = _setup(name, dtype)
            state: dict = {}
            box = [p.data.copy()]

            def naive(name=name, state=state, box=box, g=p.grad):
                box[0] = naive_step(name, KWARGS[name], box[0], g, state)

            ours, ref = (1e3 * t for t in _time_pair(opt.step, naive))
            dt = np.dtype(dtype).name
            print(f"{name:10s} {dt:8s} {ours:9.3f} {ref:9.3f} {ref / ours:8.2f}x")


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name", list(KWARGS))
def test_step_fastrnn(benchmark, name, dtype):
    _, opt = _setup(name, dtype)
    benchmark(opt.step)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name", list(KWARGS))
def test_step_naive(benchmark, name, dtype):
    p, _ = _setup(name, dtype)
    state: dict = {}
    box = [p.data.copy()]

    def naive():
        box[0] = naive_step(name, KWARGS[name], box[0], p.grad, state)

    benchmark(naive)


if __name__ == "__main__":
    main()
