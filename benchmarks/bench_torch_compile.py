"""``torch.compile`` of a patched model against the same model run eagerly (patched and not).

The model is PyTorch's word_language_model example: Embedding(V, H) -> LSTM / GRU / RNN_TANH
(H, H, layers) -> Linear(H, V), time-major, T=35, B=20, H=200, 2 layers by default, float32. One
step is the forward, the cross-entropy and the backward (the gradients of every parameter). Three
copies of the model start from the same weights:

* ``torch``: torch's modules, eager;
* ``fastrnn``: ``fastrnn.torch.patch``-ed, eager (the kernels inside a ``torch.autograd.Function``);
* ``compiled``: the patched model through ``torch.compile(model, fullgraph=True)`` (Inductor):
  the kernels as the custom operators of ``fastrnn._torch_ops``, the rest compiled by Inductor.

The cross-entropy is outside the compiled model, as in a training loop that compiles the model
only. Their steps are timed in alternation (fair under load); the medians and the minimums of
the rounds' wall and CPU times (the process's, every thread) are reported, with the compiled
copy's first call (the compilation, from Inductor's on-disk cache when the same graph was
compiled before: set ``TORCHINDUCTOR_CACHE_DIR`` to an empty folder for a cold one) and the
number of graphs Dynamo made. Before timing, the compiled step's loss and gradients are checked
against the eager patched step's.

    python benchmarks/bench_torch_compile.py                       # LSTM, GRU and RNN_TANH
    python benchmarks/bench_torch_compile.py --cell lstm --rounds 25 --threads 1
    python benchmarks/bench_torch_compile.py --torch-compile       # also torch's modules compiled
    python benchmarks/bench_torch_compile.py --rest   # also Embedding -> Linear alone (no RNN)

torch is imported before fastrnn, as users do; the two share one OpenMP runtime in the process,
which reads ``OMP_WAIT_POLICY`` (neither library sets it) when torch loads it.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch  # before fastrnn (first-party imports come last): see the docstring

import fastrnn
import fastrnn.functional  # loads the kernels, and so SciPy's BLAS, before threads are capped
import fastrnn.torch

CELLS = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}


class WordLM(torch.nn.Module):
    """Embedding -> recurrent stack -> Linear, time-major (PyTorch's word_language_model)."""

    def __init__(self, cell: str, vocab: int, hidden: int, layers: int, dropout: float = 0.0):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, hidden)
        self.rnn = CELLS[cell](hidden, hidden, num_layers=layers, dropout=dropout)
        self.head = torch.nn.Linear(hidden, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.rnn(self.emb(x))
        return self.head(y)


class Rest(torch.nn.Module):
    """The model without its recurrent stack: Embedding -> Linear, what Inductor compiles."""

    def __init__(self, lm: WordLM):
        super().__init__()
        self.emb, self.head = copy.deepcopy(lm.emb), copy.deepcopy(lm.head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.emb(x))


def step(model, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Forward, cross-entropy and backward; returns the loss."""
    for p in model.parameters():
        p.grad = None
    logits = model(x)
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.ravel())
    loss.backward()
    return loss.detach()


def setup(cell: str, T: int, B: int, H: int, layers: int, vocab: int, seed: int = 0):
    """The torch model, a patched copy, and one batch of token ids and next-token targets."""
    torch.manual_seed(seed)
    plain = WordLM(cell, vocab, H, layers)
    fast = fastrnn.torch.patch(copy.deepcopy(plain))
    ids = torch.randint(0, vocab, (T + 1, B))
    return plain, fast, ids[:-1].contiguous(), ids[1:].contiguous()


def time_all(fns: dict, rounds: int) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall and CPU seconds of each function per round, alternated within each round.

    The CPU time (of the whole process, every thread) is the work done; on a loaded machine
    it moves less than the wall time, which also counts the waits for a core.
    """
    for fn in fns.values():  # warm up (allocations, packed weights, OpenMP teams)
        fn()
        fn()
    wall: dict[str, list[float]] = {name: [] for name in fns}
    cpu: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    return wall, cpu


def run_case(cell: str, args: argparse.Namespace) -> None:
    plain, fast, x, target = setup(cell, args.T, args.B, args.H, args.layers, args.vocab)
    fns = {}
    if args.rest:  # compiled first, so that its graph is not counted as the model's
        rest = Rest(plain)
        rest_compiled = torch.compile(rest, fullgraph=True)
        step(rest_compiled, x, target)
        fns["rest eager"] = lambda: step(rest, x, target)
        fns["rest compiled"] = lambda: step(rest_compiled, x, target)
    if args.torch_compile:  # also before the counters, as the rest
        torch_compiled = torch.compile(plain, fullgraph=True)
        t0 = time.perf_counter()
        step(torch_compiled, x, target)
        torch_compile_s = time.perf_counter() - t0
        fns["torch compiled"] = lambda: step(torch_compiled, x, target)
    compiled = torch.compile(fast, fullgraph=True)
    torch._dynamo.utils.counters.clear()
    t0 = time.perf_counter()
    loss_c = step(compiled, x, target)
    compile_s = time.perf_counter() - t0
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    grads_c = [p.grad.clone() for p in fast.parameters()]
    loss_f = step(fast, x, target)
    worst = max(
        (a - p.grad).abs().max().item() for a, p in zip(grads_c, fast.parameters(), strict=True)
    )
    fns = {
        "torch": lambda: step(plain, x, target),
        "fastrnn": lambda: step(fast, x, target),
        "compiled": lambda: step(compiled, x, target),
        **fns,
    }
    wall, cpu = time_all(fns, args.rounds)
    after = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    print(
        f"\n{cell.upper()} T={args.T} B={args.B} H={args.H} layers={args.layers} vocab="
        f"{args.vocab}: first compiled step {compile_s:.1f} s ({graphs} graph(s), "
        f"{after - graphs} recompiled while timing); compiled vs eager patched: loss "
        f"{abs(loss_c - loss_f).item():.1e}, gradients {worst:.1e} (max abs difference)"
    )
    if args.torch_compile:
        print(f"  torch's modules compiled: first step {torch_compile_s:.1f} s")
    print(
        f"  {'step':16s} {'wall ms (median/min)':>21s} {'speed-up':>12s} "
        f"{'CPU ms (median/min)':>20s} {'speed-up':>12s}   (speed-up: vs fastrnn eager)"
    )
    ref = {
        k: (statistics.median(v["fastrnn"]), min(v["fastrnn"])) for k, v in ((0, wall), (1, cpu))
    }
    for name in fns:
        cols = []
        for k, v in ((0, wall), (1, cpu)):
            med, best = statistics.median(v[name]), min(v[name])
            cols.append(f"{1e3 * med:10.2f}/{1e3 * best:<10.2f}")
            cols.append(f"{ref[k][0] / med:.2f}x/{ref[k][1] / best:.2f}x")
        print(f"  {name:16s} {cols[0]:>21s} {cols[1]:>12s} {cols[2]:>20s} {cols[3]:>12s}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cell", choices=[*CELLS, "all"], default="all")
    ap.add_argument("-T", type=int, default=35)
    ap.add_argument("-B", type=int, default=20)
    ap.add_argument("-H", type=int, default=200, help="embedding and hidden size")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2, help="torch, fastrnn and BLAS threads")
    ap.add_argument(
        "--torch-compile", action="store_true", help="also time torch's own modules compiled"
    )
    ap.add_argument(
        "--rest",
        action="store_true",
        help="also time the model without its recurrent stack (Embedding -> Linear), eager and "
        "compiled: what Inductor does to the rest of the model",
    )
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
    # Dynamo refuses every nn.RNNBase subclass unless allowed (patched modules are subclasses)
    torch._dynamo.config.allow_rnn = True
    print(
        f"forward + cross-entropy + backward, float32; torch {torch.__version__}, "
        f"{args.threads} threads, {blas}; {args.rounds} alternating rounds"
    )
    for cell in CELLS if args.cell == "all" else [args.cell]:
        run_case(cell, args)


if __name__ == "__main__":
    main()
