"""torch's RNN modules with and without ``fastrnn.torch.patch`` in the shapes real programs use.

Each case times one forward and one backward through torch autograd (``out.sum().backward()``,
the gradients of the input and of every weight), float32, on the CPU; the torch module and its
patched copy (same weights) run in alternation, so a loaded machine slows both alike. The last
columns split the patched time: the part spent in :func:`fastrnn.stack.stack_forward` and
:func:`fastrnn.stack.stack_backward` (the kernels and their NumPy orchestration) and the rest,
the path between torch and the kernels (argument checks, tensor <-> array views, the autograd
node, accumulating the gradients into ``.grad``).

    python benchmarks/bench_torch_shapes.py                 # every case, 1 and 2 threads
    python benchmarks/bench_torch_shapes.py --threads 2 --rounds 30 --case lstm-wlm-200
    python benchmarks/bench_torch_shapes.py --threads 1 --clock thread   # on a busy machine

``--clock thread`` times the CPU time of the calling thread instead of the wall clock: with one
thread all the work of both implementations runs on it, so time spent waiting for a CPU that
other processes hold is not counted (1 thread only).

Cases: PyTorch's word_language_model (LSTM, T=35 B=20, 200 and 650 units, 2 layers; its GRU and
RNN_TANH variants), a T=100 B=32 128-unit LSTM, the README's char-LM (LSTM(64, 256),
T=100 B=32), and PyTorch's time_sequence_prediction (two LSTMCells of 51 units stepped in a
Python loop, B=97, 100 steps).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch  # before fastrnn: both load an OpenMP runtime (see bench_torch_patch.py)

import fastrnn
import fastrnn.functional  # noqa: F401 - loads the kernels (and SciPy's BLAS) before threads are set
import fastrnn.stack
import fastrnn.torch

# name -> (torch class, T, B, I, H, layers)
CASES = {
    "lstm-wlm-200": (torch.nn.LSTM, 35, 20, 200, 200, 2),
    "lstm-wlm-650": (torch.nn.LSTM, 35, 20, 650, 650, 2),
    "lstm-T100-128": (torch.nn.LSTM, 100, 32, 128, 128, 1),
    "gru-wlm-200": (torch.nn.GRU, 35, 20, 200, 200, 2),
    "rnn-wlm-200": (torch.nn.RNN, 35, 20, 200, 200, 2),
    "lstm-charlm-256": (torch.nn.LSTM, 100, 32, 64, 256, 1),
    # PyTorch's time_sequence_prediction: LSTMCell(1, 51) then LSTMCell(51, 51), one step at a
    # time (100 of its 999 steps), B=97
    "lstmcell-tsp-51": (torch.nn.LSTMCell, 100, 97, 1, 51, 2),
}


class _Cells(torch.nn.Module):
    """``layers`` cells of ``cls`` stacked, stepped one time step at a time (``out, None``)."""

    def __init__(self, cls, I, H, layers):
        super().__init__()
        self.cells = torch.nn.ModuleList(cls(I if k == 0 else H, H) for k in range(layers))

    def forward(self, x):
        states = [None] * len(self.cells)
        outs = []
        for xt in x:
            for k, cell in enumerate(self.cells):
                states[k] = cell(xt, states[k])
                xt = states[k][0] if isinstance(states[k], tuple) else states[k]
            outs.append(xt)
        return torch.stack(outs), None


class _Clock:
    """Wall time spent inside stack_forward / stack_backward, as fastrnn.torch calls them."""

    def __init__(self, clock=time.perf_counter) -> None:
        self.clock = clock
        self.total = 0.0
        self._saved = (fastrnn.torch.stack_forward, fastrnn.torch.stack_backward)

    def _wrap(self, fn):
        def timed(*args, **kwargs):
            t0 = self.clock()
            try:
                return fn(*args, **kwargs)
            finally:
                self.total += self.clock() - t0

        return timed

    def __enter__(self):
        fastrnn.torch.stack_forward = self._wrap(self._saved[0])
        fastrnn.torch.stack_backward = self._wrap(self._saved[1])
        return self

    def __exit__(self, *exc):
        fastrnn.torch.stack_forward, fastrnn.torch.stack_backward = self._saved


def run_case(name: str, threads: int, rounds: int, clock=time.perf_counter) -> dict[str, float]:
    cls, T, B, I, H, L = CASES[name]
    torch.set_num_threads(threads)
    fastrnn.set_num_threads(threads)
    torch.manual_seed(0)
    plain = _Cells(cls, I, H, L) if issubclass(cls, torch.nn.RNNCellBase) else cls(I, H, L)
    fast = fastrnn.torch.patch(copy.deepcopy(plain))
    x = torch.randn(T, B, I, requires_grad=True)

    def step(m):
        out, _ = m(x)
        out.sum().backward()

    for _ in range(3):
        step(plain)
        step(fast)
    times: list[list[float]] = [[], []]
    inside: list[float] = []
    for _ in range(rounds):
        for i, m in enumerate((plain, fast)):
            with _Clock(clock) as kernels:
                t0 = clock()
                step(m)
                times[i].append(clock() - t0)
            if i == 1:
                inside.append(kernels.total)
    tm, fm = statistics.median(times[0]), statistics.median(times[1])
    return {
        "torch_median": tm,
        "torch_min": min(times[0]),
        "fastrnn_median": fm,
        "fastrnn_min": min(times[1]),
        "speedup_median": tm / fm,
        "speedup_min": min(times[0]) / min(times[1]),
        "kernels_median": statistics.median(inside),
        "path_median": statistics.median(f - k for f, k in zip(times[1], inside, strict=True)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--case", nargs="+", choices=list(CASES), default=list(CASES))
    ap.add_argument(
        "--clock",
        choices=["wall", "thread"],
        default="wall",
        help="wall time, or the calling thread's CPU time (1 thread only)",
    )
    args = ap.parse_args()
    if args.clock == "thread" and args.threads != [1]:
        ap.error("--clock thread times one thread: use it with --threads 1")
    clock = time.thread_time if args.clock == "thread" else time.perf_counter
    try:  # fastrnn's GEMMs run on SciPy's BLAS, whose threads torch does not control
        from threadpoolctl import threadpool_limits
    except ImportError:
        threadpool_limits = None
    print(
        f"torch {torch.__version__}, float32, forward + backward, {args.rounds} alternating rounds,"
        f" {args.clock} clock"
    )
    head = (
        f"{'case':16s} {'thr':>3s} {'torch ms med/min':>17s} {'patched ms med/min':>19s} "
        f"{'speed-up med/min':>17s} {'kernels ms':>10s} {'path ms':>8s}"
    )
    print(head)
    for threads in args.threads:
        if threadpool_limits is not None:
            threadpool_limits(threads, user_api="blas")
        for name in args.case:
            r = run_case(name, threads, args.rounds, clock)
            print(
                f"{name:16s} {threads:3d} "
                f"{1e3 * r['torch_median']:8.2f}/{1e3 * r['torch_min']:<8.2f} "
                f"{1e3 * r['fastrnn_median']:9.2f}/{1e3 * r['fastrnn_min']:<9.2f} "
                f"{r['speedup_median']:7.2f}x/{r['speedup_min']:.2f}x{'':3s} "
                f"{1e3 * r['kernels_median']:10.2f} {1e3 * r['path_median']:8.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
