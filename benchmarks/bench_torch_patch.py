"""A PyTorch training step with and without ``fastrnn.torch.patch``: char-level LSTM language model.

The model is Embedding(65, 64) -> LSTM(64, 256) -> Linear(256, 65), batch_first, trained with Adam
on windows of the Tiny Shakespeare excerpt in ``tests/data`` (B=32, T=100 by default). One step is
``zero_grad``, forward, cross-entropy, backward, ``opt.step()``: everything a training loop does,
so the ratio is what a user of ``patch`` gets, not a kernel-only number. The two models start from
the same weights; their steps are timed in alternation (fair under load) and the best and the
median of several rounds are reported.

    python benchmarks/bench_torch_patch.py                  # 2 threads, the sizes above
    python benchmarks/bench_torch_patch.py --threads 1 -H 128
    pytest benchmarks/bench_torch_patch.py                  # pytest-benchmark

torch is imported before fastrnn, as users do; the two share one OpenMP runtime in the process,
which reads ``OMP_WAIT_POLICY`` (neither library sets it) when torch loads it.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import statistics
import time

import numpy as np
import pytest
import torch  # before fastrnn (first-party imports come last): see the docstring

import fastrnn
import fastrnn.functional  # loads the kernels, and so SciPy's BLAS, before threads are capped
import fastrnn.torch

DATA = os.path.join(os.path.dirname(__file__), "..", "tests", "data", "tinyshakespeare_excerpt.txt")


class CharLM(torch.nn.Module):
    """Embedding -> LSTM -> Linear over characters."""

    def __init__(self, vocab: int = 65, emb: int = 64, hidden: int = 256, layers: int = 1):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, emb)
        self.rnn = torch.nn.LSTM(emb, hidden, num_layers=layers, batch_first=True)
        self.head = torch.nn.Linear(hidden, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.rnn(self.emb(x))
        return self.head(y)


def batch(B: int, T: int, vocab: int = 65, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """B windows of T + 1 characters of the excerpt: inputs and next-character targets."""
    with open(DATA, encoding="utf-8") as f:
        text = f.read()
    chars = sorted(set(text))
    ids = torch.tensor([chars.index(ch) % vocab for ch in text])
    starts = np.random.default_rng(seed).integers(0, len(ids) - T - 1, size=B)
    win = torch.stack([ids[s : s + T + 1] for s in starts])
    return win[:, :-1].contiguous(), win[:, 1:].contiguous()


def setup(B=32, T=100, emb=64, hidden=256, layers=1, seed=0):
    """Two identical models, one patched, each with its own Adam, and one batch."""
    torch.manual_seed(seed)
    plain = CharLM(65, emb, hidden, layers)
    fast = fastrnn.torch.patch(copy.deepcopy(plain))
    xb, yb = batch(B, T, seed=seed)
    return (
        (plain, torch.optim.Adam(plain.parameters(), lr=1e-3)),
        (fast, torch.optim.Adam(fast.parameters(), lr=1e-3)),
        xb,
        yb,
    )


def train_step(model, opt, xb, yb) -> float:
    opt.zero_grad()
    logits = model(xb)
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), yb.ravel())
    loss.backward()
    opt.step()
    return loss.item()


def time_pair(a, b, rounds: int = 15, calls: int = 2):
    """Per-call (best wall, median wall, best CPU) seconds of ``a`` and ``b``, alternated."""
    for _ in range(2):
        a()
        b()
    walls: list[list[float]] = [[], []]
    cpu = [math.inf, math.inf]
    for _ in range(rounds):
        for i, fn in enumerate((a, b)):
            w0, c0 = time.perf_counter(), time.process_time()
            for _ in range(calls):
                fn()
            walls[i].append((time.perf_counter() - w0) / calls)
            cpu[i] = min(cpu[i], (time.process_time() - c0) / calls)
    return tuple((min(w), statistics.median(w), c) for w, c in zip(walls, cpu, strict=True))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-B", type=int, default=32)
    ap.add_argument("-T", type=int, default=100)
    ap.add_argument("-E", type=int, default=64, help="embedding size (LSTM input size)")
    ap.add_argument("-H", type=int, default=256)
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2, help="torch, fastrnn and BLAS threads")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    fastrnn.set_num_threads(args.threads)
    blas = "BLAS threads: library default (pip install threadpoolctl to set them)"
    try:  # fastrnn's GEMMs run on SciPy's BLAS, whose thread pool torch does not control
        from threadpoolctl import threadpool_limits

        threadpool_limits(args.threads, user_api="blas")
        blas = f"{args.threads} BLAS threads"
    except ImportError:
        pass
    (plain, p_opt), (fast, f_opt), xb, yb = setup(args.B, args.T, args.E, args.H, args.layers)
    (pb, pm, pc), (fb, fm, fc) = time_pair(
        lambda: train_step(plain, p_opt, xb, yb),
        lambda: train_step(fast, f_opt, xb, yb),
        rounds=args.rounds,
    )
    print(
        f"Embedding(65, {args.E}) -> LSTM({args.E}, {args.H}, layers={args.layers}) -> "
        f"Linear({args.H}, 65), B={args.B} T={args.T} float32, Adam; torch {torch.__version__}, "
        f"{args.threads} threads, {blas}"
    )
    print(f"{'training step':16s} {'best ms':>9s} {'median ms':>10s} {'CPU ms':>9s}")
    print(f"{'torch':16s} {1e3 * pb:9.2f} {1e3 * pm:10.2f} {1e3 * pc:9.2f}")
    print(f"{'fastrnn.patch':16s} {1e3 * fb:9.2f} {1e3 * fm:10.2f} {1e3 * fc:9.2f}")
    print(f"{'speed-up':16s} {pb / fb:9.2f}x {pm / fm:9.2f}x {pc / fc:8.2f}x")


@pytest.mark.parametrize("backend", ["torch", "fastrnn"])
def test_training_step(benchmark, backend):
    (plain, p_opt), (fast, f_opt), xb, yb = setup()
    model, opt = (plain, p_opt) if backend == "torch" else (fast, f_opt)
    benchmark(train_step, model, opt, xb, yb)


if __name__ == "__main__":
    main()
