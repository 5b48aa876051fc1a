"""One attentive decoder step, forward + backward: fastrnn against the same equations in torch.

The step is :class:`fastrnn.nn.AttentionDecoder`'s (Luong attention with input feeding, see
``fastrnn/nn/seq2seq.py``), for B sequences, hidden size H, a memory of S positions of K = H
features with a random length per row, embedding size E and V output tokens::

    x = [E y_prev; feed];  h, c = LSTM(x, (h, c));  a = masked softmax(score(h, m));
    ctx = a m;  feed = tanh(W_c [ctx; h] + b_c);  logits = W_o feed + b_o

then the backward of ``sum(logits * G)`` for a fixed random G to every parameter, the previous
states and the memory. fastrnn runs ``attention.prepare`` (a copy of the memory and, for
``additive``, its keys), ``decoder.forward`` with one target step and ``decoder.backward``;
torch runs the same equations eagerly (``torch.lstm_cell``, ``bmm``, ``masked_fill``, softmax)
under autograd, gradients set to None before each step. Their steps alternate (fair under
load); the median and the best of the rounds are reported, with fastrnn's time split into its
parts.

    python benchmarks/bench_attention.py                       # B=32, H=256, S=50, 2 threads
    python benchmarks/bench_attention.py --threads 1 --kind additive
    pytest benchmarks/bench_attention.py                       # pytest-benchmark

torch is imported before fastrnn, and this script sets ``OMP_WAIT_POLICY`` to PASSIVE (unless
the environment chose a policy) before either loads the OpenMP runtime they share, so that its
figures stay comparable with the README's (measured that way, on a machine shared with other
jobs); ``OMP_WAIT_POLICY=ACTIVE`` in the environment times spinning threads instead. The header
prints the policy.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before any OpenMP runtime loads

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402  (before fastrnn: see the docstring)

import fastrnn  # noqa: E402
from fastrnn._threads import blas_threads  # noqa: E402
from fastrnn.nn import AttentionDecoder  # noqa: E402


def setup(B=32, H=256, S=50, E=64, V=100, kind="general", seed=0):
    """The fastrnn decoder, its torch twin and the inputs of one step."""
    rng = np.random.default_rng(seed)
    dec = AttentionDecoder(V, E, H, H, attention=kind, seed=seed)
    memory = rng.standard_normal((S, B, H)).astype(np.float32)
    lengths = rng.integers(S // 2, S + 1, B)
    y = rng.integers(0, V, (1, B))
    g = rng.standard_normal((1, B, V)).astype(np.float32)
    return dec, memory, lengths, y, g


def fastrnn_step(dec, memory, lengths, y, g) -> None:
    mem = dec.attention.prepare(memory, lengths)
    dec.forward(y, mem)
    dec.backward(g)
    dec.zero_grad()


class TorchStep:
    """The same step in torch eager, with the fastrnn decoder's weights."""

    def __init__(self, dec, memory, lengths, y, g) -> None:
        self.p = {n: torch.tensor(p.data, requires_grad=True) for n, p in dec.named_parameters()}
        self.kind = dec.attention.kind
        self.memory = torch.tensor(memory, requires_grad=True)
        S, B, _ = memory.shape
        self.keep = torch.arange(S)[None, :] < torch.as_tensor(lengths)[:, None]
        self.y = torch.as_tensor(y[0])
        self.g = torch.tensor(g[0])
        H = dec.hidden_size
        self.h0 = torch.zeros(B, H, requires_grad=True)
        self.c0 = torch.zeros(B, H, requires_grad=True)
        self.feed0 = torch.zeros(B, H, requires_grad=True)

    def __call__(self) -> None:
        p = self.p
        for t in (*p.values(), self.memory, self.h0, self.c0, self.feed0):
            t.grad = None
        x = torch.cat([p["embedding.weight"][self.y], self.feed0], dim=1)
        h, _ = torch.lstm_cell(
            x,
            (self.h0, self.c0),
            p["rnn.weight_ih_l0"],
            p["rnn.weight_hh_l0"],
            p["rnn.bias_ih_l0"],
            p["rnn.bias_hh_l0"],
        )
        mb = self.memory.transpose(0, 1)  # (B, S, K)
        if self.kind == "dot":
            e = torch.bmm(mb, h[:, :, None])[:, :, 0]
        elif self.kind == "general":
            e = torch.bmm(mb, (h @ p["attention.weight"].T)[:, :, None])[:, :, 0]
        else:
            keys = mb @ p["attention.w_key"].T + p["attention.bias"]
            z = torch.tanh(keys + (h @ p["attention.w_query"].T)[:, None, :])
            e = z @ p["attention.v"]
        a = torch.softmax(e.masked_fill(~self.keep, float("-inf")), dim=1)
        ctx = torch.bmm(a[:, None, :], mb)[:, 0]
        feed = torch.tanh(torch.cat([ctx, h], 1) @ p["combine.weight"].T + p["combine.bias"])
        logits = feed @ p["out.weight"].T + p["out.bias"]
        (logits * self.g).sum().backward()


def check_same_gradients(dec, memory, lengths, y, g, step: TorchStep) -> float:
    """Largest relative difference of the parameter gradients (a sanity check of the twin)."""
    mem = dec.attention.prepare(memory, lengths)
    dec.forward(y, mem)
    dec.backward(g)
    step()
    worst = 0.0
    for n, p in dec.named_parameters():
        tg = step.p[n].grad.numpy()
        worst = max(worst, float(np.abs(p.grad - tg).max() / (np.abs(tg).max() + 1e-30)))
    dec.zero_grad()
    return worst


def parts(dec, memory, lengths, y, g, calls: int) -> dict[str, float]:
    """Best ms of the pieces of fastrnn's step: the LSTM step and the attention, each fwd+bwd."""
    F = fastrnn.functional
    B = memory.shape[1]
    H = dec.hidden_size
    x = np.random.default_rng(1).standard_normal((1, B, dec.rnn.input_size)).astype(np.float32)
    w = [
        getattr(dec.rnn, n).data
        for n in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")
    ]
    hq = np.random.default_rng(2).standard_normal((B, H)).astype(np.float32)
    dctx = np.ones((B, H), np.float32)

    def lstm() -> None:
        yv, _, _, cache = F.lstm_forward(x, None, None, *w)
        F.lstm_backward(cache, yv)

    def attention() -> None:
        mem = dec.attention.prepare(memory, lengths)
        _, _, cache = dec.attention.step(hq, mem, training=True)
        dec.attention.step_backward(cache, mem, dctx)
        dec.attention.memory_backward(mem)

    out = {}
    for name, fn in (("lstm step", lstm), ("attention", attention)):
        best = float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            best = min(best, (time.perf_counter() - t0) / calls)
        out[name] = 1e3 * best
    dec.zero_grad()
    return out


def time_pair(a, b, rounds: int, calls: int) -> tuple[list[float], list[float]]:
    """Seconds per call of ``a`` and ``b``, alternating rounds of ``calls`` calls."""
    ta, tb = [], []
    for _ in range(rounds):
        for fn, acc in ((a, ta), (b, tb)):
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            acc.append((time.perf_counter() - t0) / calls)
    return ta, tb


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-B", type=int, default=32)
    ap.add_argument("-H", type=int, default=256)
    ap.add_argument("-S", type=int, default=50)
    ap.add_argument("-E", type=int, default=64, help="embedding size")
    ap.add_argument("-V", type=int, default=100, help="output vocabulary")
    ap.add_argument("--kind", choices=["general", "dot", "additive"], default="general")
    ap.add_argument("--threads", type=int, default=2, help="fastrnn's and torch's threads")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--calls", type=int, default=20, help="steps per timed round")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    fastrnn.set_num_threads(args.threads)
    dec, memory, lengths, y, g = setup(args.B, args.H, args.S, args.E, args.V, args.kind)
    step = TorchStep(dec, memory, lengths, y, g)
    diff = check_same_gradients(dec, memory, lengths, y, g, step)
    with blas_threads(args.threads, "numpy"):
        for _ in range(5):  # warm up both
            fastrnn_step(dec, memory, lengths, y, g)
            step()
        tf, tt = time_pair(
            lambda: fastrnn_step(dec, memory, lengths, y, g), step, args.rounds, args.calls
        )
        split = parts(dec, memory, lengths, y, g, args.calls)
    res = {
        "fastrnn_ms": (1e3 * statistics.median(tf), 1e3 * min(tf)),
        "torch_ms": (1e3 * statistics.median(tt), 1e3 * min(tt)),
        "parts_ms": split,
        "max_rel_grad_diff": diff,
    }
    print(
        f"attentive decoder step, fwd+bwd: B={args.B} H={args.H} S={args.S} E={args.E} "
        f"V={args.V} kind={args.kind}, float32, {args.threads} thread(s), torch {torch.__version__}"
        f", OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}, load average "
        + " ".join(f"{v:.1f}" for v in os.getloadavg())
    )
    print(f"gradients agree with torch's to {diff:.1e} (relative, max over parameters)")
    print(f"{'':10} {'median ms':>10} {'best ms':>10}")
    for name, (med, best) in (("fastrnn", res["fastrnn_ms"]), ("torch", res["torch_ms"])):
        print(f"{name:10} {med:10.3f} {best:10.3f}")
    speed = (
        res["torch_ms"][0] / res["fastrnn_ms"][0],
        res["torch_ms"][1] / res["fastrnn_ms"][1],
    )
    print(f"torch time / fastrnn time: {speed[0]:.2f}x median, {speed[1]:.2f}x best")
    print(
        "fastrnn's parts (best ms): "
        + ", ".join(f"{k} {v:.3f}" for k, v in split.items())
        + " (the rest: input/output layers, embedding, Python)"
    )
    # GEMM flops, forward + backward = 3x forward: the LSTM cell (input and recurrent products),
    # the attention (general: W_a; every kind: scores and context), combine and out.
    B, H, S, E, V = args.B, args.H, args.S, args.E, args.V
    lstm = 3 * 2 * B * (E + H + H) * 4 * H
    att = 3 * (2 * B * H * H * (args.kind == "general") + 2 * 2 * B * S * H)
    rest = 3 * (2 * B * 2 * H * H + 2 * B * H * V)
    print(
        f"GEMM work: {(lstm + att + rest) / 1e6:.0f} MFLOP per step (LSTM cell {lstm / 1e6:.0f}, "
        f"attention {att / 1e6:.0f}, combine + out {rest / 1e6:.0f})"
    )
    res["speedup"] = speed
    return res


@pytest.mark.parametrize("impl", ["fastrnn", "torch"])
def test_decoder_step(benchmark, impl):
    dec, memory, lengths, y, g = setup()
    fn = (
        (lambda: fastrnn_step(dec, memory, lengths, y, g))
        if impl == "fastrnn"
        else TorchStep(dec, memory, lengths, y, g)
    )
    benchmark(fn)


if __name__ == "__main__":
    main()
