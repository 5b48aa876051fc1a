"""Variable-length batch vs the same batch padded to T: forward + backward, Cython backend.

The kernels sort rows by length and shrink the active batch at every step, so with lengths
uniform in [1, T] about half of the padded batch's rows are real. The recurrence, the hoisted
input projection and the dx/dW/db GEMMs after the backward's loop all run over the active rows
of each step only (src_pyx/_blocks.pxd, row_run), so the FLOP count bounds the ratio at about
the fill (printed); what remains above it is the per-step overhead of T steps and, for lengths
in no particular order, the row sort's gathers of x, y, dy and dx in fastrnn/functional.py
(``--sorted`` passes the same lengths in decreasing order, which needs none). Both runs are
timed in alternation (fair under load); the best of several rounds is reported.

    python benchmarks/bench_lengths.py                 # T=200 B=32 I=64 H=128 float32
    OPENBLAS_NUM_THREADS=1 python benchmarks/bench_lengths.py --threads 1
    python benchmarks/bench_lengths.py --bidirectional --layers 2
    python benchmarks/bench_lengths.py --cell gru      # or rnn (tanh)
    python benchmarks/bench_lengths.py --sorted        # no row permutation
    python benchmarks/bench_lengths.py --cell rnn --permutations   # NumPy's vs the team's
    pytest benchmarks/bench_lengths.py                 # pytest-benchmark
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import pytest

import fastrnn

CELLS = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN"}


def setup(
    T=200, B=32, I=64, H=128, layers=1, bidirectional=False, dtype=np.float32, seed=0, cell="lstm"
):
    """A layer of ``cell``, an input batch, its upstream gradient and lengths uniform in [1, T]."""
    rng = np.random.default_rng(seed)
    lstm = getattr(fastrnn, CELLS[cell])(
        I, H, num_layers=layers, bidirectional=bidirectional, dtype=dtype, seed=seed
    )
    x = rng.standard_normal((T, B, I)).astype(dtype)
    dout = rng.standard_normal((T, B, (2 if bidirectional else 1) * H)).astype(dtype)
    lengths = rng.integers(1, T + 1, size=B)
    return lstm, x, dout, lengths


def step(lstm, x, dout, lengths):
    """One forward + backward (parameter grads accumulate; irrelevant to the timing)."""
    lstm(x, lengths=lengths)
    lstm.backward(dout)


def time_pair(a, b, rounds: int = 10, calls: int = 3) -> tuple[tuple[float, float], ...]:
    """Best (wall, process CPU) seconds per call of ``a`` and of ``b``, timed in alternation.

    CPU time counts only this process's work, so it stays meaningful on a loaded machine where
    wall time does not (it sums every thread, and BLAS threads that spin while waiting add to it:
    compare like with like, or run with one thread).
    """
    for _ in range(2):
        a()
        b()
    best = [[math.inf, math.inf], [math.inf, math.inf]]
    for _ in range(rounds):
        for i, fn in enumerate((a, b)):
            w0, c0 = time.perf_counter(), time.process_time()
            for _ in range(calls):
                fn()
            best[i][0] = min(best[i][0], (time.perf_counter() - w0) / calls)
            best[i][1] = min(best[i][1], (time.process_time() - c0) / calls)
    return tuple(map(tuple, best))


def compare_permutations(layer, x, dout, lengths, rounds: int) -> None:
    """Print the best wall time of a variable-length forward + backward with the row
    permutations by NumPy's take and with them split over the kernels' team."""
    from fastrnn import functional

    split_min = functional._ROWS_SPLIT_MIN

    def with_min(value):
        def call():
            functional._ROWS_SPLIT_MIN = value
            try:
                step(layer, x, dout, lengths)
            finally:
                functional._ROWS_SPLIT_MIN = split_min

        return call

    (w_np, _), (w_team, _) = time_pair(with_min(1 << 62), with_min(split_min), rounds=rounds)
    print(
        f"variable lengths, {fastrnn.get_num_threads()} threads, permutations by NumPy "
        f"{1e3 * w_np:.2f} ms, on the team {1e3 * w_team:.2f} ms ({w_np / w_team:.2f}x)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-T", type=int, default=200)
    ap.add_argument("-B", type=int, default=32)
    ap.add_argument("-I", type=int, default=64)
    ap.add_argument("-H", type=int, default=128)
    ap.add_argument("--cell", choices=sorted(CELLS), default="lstm")
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--bidirectional", action="store_true")
    ap.add_argument("--float64", action="store_true")
    ap.add_argument(
        "--sorted", action="store_true", help="lengths in decreasing order (no row permutation)"
    )
    ap.add_argument(
        "--permutations",
        action="store_true",
        help="instead: the variable-length batch with its row permutations by NumPy (one "
        "thread) against on the kernels' team (functional._rows_team), alternating",
    )
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--threads", type=int, default=None, help="kernel threads (default: all)")
    args = ap.parse_args()
    fastrnn.set_num_threads(args.threads)
    dtype = np.float64 if args.float64 else np.float32
    lstm, x, dout, lengths = setup(
        args.T, args.B, args.I, args.H, args.layers, args.bidirectional, dtype, cell=args.cell
    )
    if args.sorted:
        lengths = np.sort(lengths)[::-1].copy()
    if args.permutations:
        compare_permutations(lstm, x, dout, lengths, args.rounds)
        return
    full = np.full(args.B, args.T)
    (w_var, c_var), (w_pad, c_pad) = time_pair(
        lambda: step(lstm, x, dout, lengths),
        lambda: step(lstm, x, dout, full),
        rounds=args.rounds,
    )
    frac = lengths.sum() / (args.T * args.B)
    print(
        f"{CELLS[args.cell]} T={args.T} B={args.B} I={args.I} H={args.H} layers={args.layers} "
        f"bidirectional={args.bidirectional} {np.dtype(dtype).name}, forward+backward, "
        f"{fastrnn.get_num_threads()} kernel threads"
    )
    order = "decreasing" if args.sorted else "random"
    print(f"lengths uniform in [1, T], {order} order: {frac:.1%} of the padded steps are real")
    print(f"{'':18s} {'wall ms':>9s} {'CPU ms':>9s}")
    print(f"{'variable lengths':18s} {1e3 * w_var:9.2f} {1e3 * c_var:9.2f}")
    print(f"{'padded to T':18s} {1e3 * w_pad:9.2f} {1e3 * c_pad:9.2f}")
    print(f"{'ratio':18s} {w_var / w_pad:9.2f} {c_var / c_pad:9.2f}")


@pytest.mark.parametrize("mode", ["lengths", "padded"])
def test_lstm_lengths_vs_padded(benchmark, mode):
    lstm, x, dout, lengths = setup()
    if mode == "padded":
        lengths = np.full(x.shape[1], x.shape[0])
    benchmark(step, lstm, x, dout, lengths)


if __name__ == "__main__":
    main()
