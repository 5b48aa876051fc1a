"""Time fastrnn against the NumPy reference and PyTorch on identical inputs.

``python -m fastrnn.bench --help`` is the command-line front end (:mod:`fastrnn.bench.__main__`);
the pieces are importable for other scripts and for ``benchmarks/``:

* :data:`CONFIGS` -- the standard shapes (T, B, I, H);
* :data:`DEEPBENCH`, :func:`deepbench_problems`, :func:`run_deepbench` -- DeepBench's problems;
* :func:`make_problem` -- inputs, weights and a dense upstream gradient for one cell and shape;
* :func:`implementations` -- one zero-argument callable per implementation and mode, all on the
  same arrays (PyTorch gets a copy of the same weights): fastrnn, the NumPy reference, the plain
  NumPy loop of :mod:`fastrnn.bench.plain_numpy` and torch;
* :func:`gemm_peak` -- GEMM throughput of scipy's BLAS (the one the kernels call) at a thread
  count, the first yardstick for the kernels' GFLOP/s;
* :func:`fma_roof` -- the machine's multiply-add rate at a thread count, the limit no GEMM beats
  (each row's ``roof_share``: how close an implementation runs to it);
* :func:`run` -- everything above, interleaved, into a list of result rows;
* :func:`format_table`, :func:`summarize`, :func:`write_json`, :func:`write_plot`.

FLOPs count only the GEMMs, as DESIGN.md's "know the limit" does: a forward is
``2 T B (I + H) G H`` (G = 1, 4, 3 for RNN, LSTM, GRU), and forward + backward is 3 times that.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from fastrnn.cells import CELLS as _CELLS

__all__ = [
    "CELLS",
    "CONFIGS",
    "DEEPBENCH",
    "DEEPBENCH_MAX_STEPS",
    "deepbench_problems",
    "run_deepbench",
    "summarize",
    "MODES",
    "Problem",
    "Result",
    "flops",
    "fma_roof",
    "format_table",
    "gemm_peak",
    "implementations",
    "make_problem",
    "run",
    "torch_or_none",
    "write_json",
    "write_plot",
]

#: Standard shapes, time-major: (T, B, I, H).
CONFIGS = {
    "small": (50, 1, 32, 64),
    "medium": (100, 32, 128, 256),
    "large": (100, 64, 512, 512),
    "longseq": (1000, 16, 64, 128),
}
#: A subset of DeepBench's RNN problems (baidu-research/DeepBench, ``code/kernels/rnn_problems.h``:
#: hidden size, batch, steps, cell; the input size equals the hidden size), as
#: ``(cell, H, B, T)``. "training" problems are timed forward + backward, "inference" ones as an
#: inference forward. The subset keeps every cell and the shapes the issue tracker quotes, and
#: leaves out the largest (H = 2560 to 4096), which would take minutes per call on 2 cores;
#: T is capped at run time (:data:`DEEPBENCH_MAX_STEPS`).
DEEPBENCH = {
    "training": (
        ("rnn", 1760, 16, 50),
        ("rnn", 1760, 64, 50),
        ("lstm", 512, 16, 25),
        ("lstm", 512, 64, 25),
        ("lstm", 1024, 32, 25),
        ("lstm", 2048, 32, 25),
        ("lstm", 1536, 8, 50),
        ("lstm", 256, 16, 150),
        ("gru", 512, 32, 1),
        ("gru", 1024, 32, 1500),
        ("gru", 1536, 32, 187),
    ),
    "inference": (
        ("lstm", 512, 1, 25),
        ("lstm", 512, 4, 25),
        ("lstm", 1024, 1, 25),
        ("lstm", 1536, 2, 50),
        ("lstm", 256, 1, 150),
        ("gru", 512, 1, 1),
        ("gru", 512, 4, 1),
        ("gru", 1024, 1, 1500),
        ("gru", 2048, 2, 187),
        ("rnn", 32, 1, 672),
        ("rnn", 64, 1, 96),
    ),
}
#: Steps beyond which a DeepBench problem is cut (the per-step cost does not change with T; the
#: time of the longest GRU problems, 1500 steps, would).
DEEPBENCH_MAX_STEPS = 50
#: The cells timed, from the registry (:data:`fastrnn.cells.CELLS`).
CELLS = _CELLS
#: "fwd": an inference forward; "fwdbwd": a training forward plus BPTT with a dense dy.
MODES = ("fwd", "fwdbwd")
#: "numpy" is fastrnn.reference (the readable oracle); "np-plain" is
#: :class:`fastrnn.bench.plain_numpy.PlainNumpy` (what a careful NumPy programmer writes for speed).
IMPLS = ("fastrnn", "numpy", "np-plain", "torch")


def torch_or_none():
    """The torch module, or None when it is not installed."""
    try:
        import torch
    except ImportError:
        return None
    return torch


def parse_config(name: str) -> tuple[int, int, int, int]:
    """A name from :data:`CONFIGS` or an explicit ``TxBxIxH``."""
    if name in CONFIGS:
        return CONFIGS[name]
    parts = name.lower().split("x")
    if len(parts) != 4 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ValueError(
            f"unknown configuration {name!r}: use one of {', '.join(CONFIGS)} or TxBxIxH"
        )
    return tuple(int(p) for p in parts)  # type: ignore[return-value]


def flops(cell: str, shape: tuple[int, int, int, int], mode: str) -> float:
    """GEMM flops of one call: forward 2 T B (I + H) G H, forward + backward 3 times that."""
    T, B, I, H = shape
    fwd = 2.0 * T * B * (I + H) * CELLS[cell].G * H
    return fwd if mode == "fwd" else 3.0 * fwd


@dataclass
class Problem:
    """Every array of one benchmark problem (weights shaped as PyTorch's)."""

    cell: str
    shape: tuple[int, int, int, int]
    dtype: np.dtype
    x: np.ndarray
    w_ih: np.ndarray
    w_hh: np.ndarray
    b_ih: np.ndarray
    b_hh: np.ndarray
    dy: np.ndarray


def make_problem(cell: str, shape, dtype=np.float32, seed: int = 0) -> Problem:
    """Random inputs, PyTorch-initialised weights and a dense upstream gradient."""
    T, B, I, H = shape
    G = CELLS[cell].G * H
    rng = np.random.default_rng(seed)
    k = 1.0 / np.sqrt(H)

    def u(*s):
        return rng.uniform(-k, k, s).astype(dtype)

    x = rng.standard_normal((T, B, I)).astype(dtype)
    dy = rng.standard_normal((T, B, H)).astype(dtype)
    return Problem(cell, tuple(shape), np.dtype(dtype), x, u(G, I), u(G, H), u(G), u(G), dy)


def _functional_pair(mod, p: Problem) -> dict[str, Callable[[], object]]:
    """fwd / fwdbwd closures over fastrnn.functional or fastrnn.reference.

    The inference forward passes a ``packs`` dict kept beside the weights, as an eval-mode
    layer (``fastrnn.LSTM(...).eval()``) does and as torch's module keeps its weights: the
    kernels' packed copy of ``w_ih`` and ``w_hh`` is made on the first call and reused (the
    reference ignores it). A one-step call (DeepBench's T = 1 problems) would otherwise time
    the packing of every weight, which no serving loop pays per call."""
    cell = CELLS[p.cell]
    fwd = getattr(mod, f"{cell.name}_forward")
    bwd = getattr(mod, f"{cell.name}_backward")
    args = (p.x, *(None for _ in cell.states), p.w_ih, p.w_hh, p.b_ih, p.b_hh)
    packs: dict = {}

    def forward():
        return fwd(*args, training=False, packs=packs)

    def forward_backward():
        cache = fwd(*args, training=True)[-1]
        return bwd(cache, p.dy)

    return {"fwd": forward, "fwdbwd": forward_backward}


def _plain_numpy_pair(p: Problem) -> dict[str, Callable[[], object]]:
    """fwd / fwdbwd closures over :class:`~fastrnn.bench.plain_numpy.PlainNumpy` (buffers
    allocated once, here)."""
    from fastrnn.bench.plain_numpy import PlainNumpy

    m = PlainNumpy(p.cell, p.x, p.w_ih, p.w_hh, p.b_ih, p.b_hh)

    def forward():
        return m.forward(training=False)

    def forward_backward():
        m.forward(training=True)
        return m.backward(p.dy)

    return {"fwd": forward, "fwdbwd": forward_backward}


def _torch_pair(torch, p: Problem) -> dict[str, Callable[[], object]]:
    """fwd / fwdbwd closures over torch.nn.RNN/LSTM/GRU holding the same weights."""
    T, B, I, H = p.shape
    tdtype = torch.float64 if p.dtype == np.float64 else torch.float32
    cls = getattr(torch.nn, CELLS[p.cell].title)
    mod = cls(I, H, num_layers=1, dtype=tdtype)
    with torch.no_grad():
        mod.weight_ih_l0.copy_(torch.from_numpy(p.w_ih))
        mod.weight_hh_l0.copy_(torch.from_numpy(p.w_hh))
        mod.bias_ih_l0.copy_(torch.from_numpy(p.b_ih))
        mod.bias_hh_l0.copy_(torch.from_numpy(p.b_hh))
    x = torch.from_numpy(p.x.copy())
    xg = x.clone().requires_grad_(True)
    dy = torch.from_numpy(p.dy)

    def forward():
        with torch.no_grad():
            return mod(x)[0]

    def forward_backward():
        mod.zero_grad(set_to_none=True)
        xg.grad = None
        out = mod(xg)[0]
        out.backward(dy)
        return xg.grad

    return {"fwd": forward, "fwdbwd": forward_backward}


def implementations(p: Problem, impls: Sequence[str] = IMPLS) -> dict[str, dict[str, Callable]]:
    """``{impl: {mode: fn}}`` for the requested implementations that are available."""
    out: dict[str, dict[str, Callable]] = {}
    for name in impls:
        if name == "fastrnn":
            from fastrnn import functional

            out[name] = _functional_pair(functional, p)
        elif name == "numpy":
            from fastrnn import reference

            out[name] = _functional_pair(reference, p)
        elif name == "np-plain":
            out[name] = _plain_numpy_pair(p)
        elif name == "torch":
            torch = torch_or_none()
            if torch is not None:
                out[name] = _torch_pair(torch, p)
        else:
            raise ValueError(f"unknown implementation {name!r}: use {', '.join(IMPLS)}")
    return out


@dataclass
class Result:
    """One timed (cell, configuration, mode, threads, implementation)."""

    cell: str
    config: str
    shape: tuple[int, int, int, int]
    mode: str
    dtype: str
    threads: int
    impl: str
    median_ms: float
    min_ms: float
    samples: int
    gflops: float  # achieved, from the median time
    ratio: float | None = None  # this implementation's median time / fastrnn's
    gemm_share: float | None = None  # gflops / measured GEMM peak at this thread count
    roof_gflops: float | None = None  # the multiply-add roof at this thread count (fma_roof)
    roof_share: float | None = None  # gflops / roof_gflops


def _calls_per_sample(fn: Callable, min_time: float) -> int:
    """Calls per timed sample so that one sample lasts about ``min_time`` seconds (the first
    call doubles as the warm-up: allocations, thread pools, caches)."""
    t0 = time.perf_counter()
    fn()
    dt = time.perf_counter() - t0
    if dt < min_time:  # a second, warm measurement for the fast ones
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
    return max(1, min(1000, int(min_time / max(dt, 1e-7))))


#: Pause before each sample, in seconds. OpenBLAS worker threads (numpy's pool, torch's, scipy's)
#: spin for a while after a call returns before they sleep; on a 2-core machine the previous
#: implementation's spinning threads otherwise take a core from the next one. Measured here:
#: fastrnn's 2-thread LSTM forward (T=100, B=32, I=128, H=256) took 57 ms right after the NumPy
#: reference's samples and 24 ms on its own.
SETTLE = 0.2


#: Seconds of untimed calls before each sample of calls that are microseconds long (the
#: streaming step's table). After the pause that separates samples, this VM's second vCPU comes
#: back slowly: a stream of 2-thread LSTM steps (I = H = 256, B = 1) ran 17-33 us per step in
#: its first blocks of 200 and 14-15 us from 20 ms on (an ad hoc loop; the bench's step table
#: read 29-30 us with a one-call warm-up where `benchmarks/bench_step.py --clock wall` read 14).
#: A serving loop runs at the steady rate; each function of the table gets the same warm-up.
STEADY = 0.02


def time_interleaved(
    fns: dict[str, Callable],
    repeats: int,
    min_time: float,
    settle: float = SETTLE,
    warm: float = 0.0,
) -> dict[str, list[float]]:
    """Seconds per call of each function, sampled in turn (A B C A B C ...) so that machine
    noise falls on all of them alike, with a pause of ``settle`` seconds before each sample so
    that thread pools spinning after the previous one have gone to sleep, then calls for
    ``warm`` seconds (at least one) before the timed ones: what a loop of calls runs at once
    it is under way (:data:`STEADY`)."""
    counts = {k: _calls_per_sample(fn, min_time) for k, fn in fns.items()}
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            n = counts[k]
            if settle > 0:
                time.sleep(settle)
            t0 = time.perf_counter()
            fn()  # warm again after the pause (first-touch of sleeping threads' stacks)
            while time.perf_counter() - t0 < warm:
                fn()
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            times[k].append((time.perf_counter() - t0) / n)
    return times


def gemm_peak(dtype=np.float32, threads: int = 1, n: int = 1024, repeats: int = 5) -> float:
    """GFLOP/s of an n x n x n GEMM through scipy's BLAS (OpenBLAS, the kernels' fallback and the
    yardstick of the report: the kernels' own micro-kernels can exceed it) on ``threads``."""
    from scipy.linalg import blas

    from fastrnn._threads import blas_threads

    gemm = blas.sgemm if np.dtype(dtype) == np.float32 else blas.dgemm
    rng = np.random.default_rng(0)
    a = np.asfortranarray(rng.standard_normal((n, n)).astype(dtype))
    b = np.asfortranarray(rng.standard_normal((n, n)).astype(dtype))
    c = np.zeros((n, n), dtype=dtype, order="F")
    best = float("inf")
    with blas_threads(threads):
        gemm(1.0, a, b, 0.0, c, overwrite_c=True)
        for _ in range(repeats):
            t0 = time.perf_counter()
            gemm(1.0, a, b, 0.0, c, overwrite_c=True)
            best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best / 1e9


def fma_roof(dtype=np.float32, threads: int = 1, repeats: int = 5, sample_s: float = 0.02) -> float:
    """GFLOP/s of the machine's multiply-add units on ``threads`` threads: the best of
    ``repeats`` samples of at least ``sample_s`` seconds of ``fastrnn._kernels._peak.fma_rate``
    (every thread runs 12 independent chains of fused multiply-adds in the widest vectors the CPU
    takes). No GEMM exceeds it; a kernel's share of it is how close to the machine's float
    limit it runs. The best sample, because a busy neighbour can only slow a sample down.

    Each call of the probe starts a parallel region, which on a VM may wait milliseconds for a
    parked vCPU (or for a BLAS pool still spinning on it) at every call: the samples grow until
    doubling them no longer raises the rate by 5% (a wait a tenth of a sample or less), for
    4 seconds at most."""
    from fastrnn._kernels import _peak

    f64 = np.dtype(dtype) == np.float64
    flop = threads * 12 * (_peak.vector_bytes() // (8 if f64 else 4)) * 2  # per round
    iters, best, start = 1 << 12, 0.0, time.perf_counter()
    while True:
        rate = _peak.fma_rate(threads, f64, iters)
        settled = iters * flop / (rate * 1e9) >= sample_s and rate < 1.05 * best
        best = max(best, rate)
        if settled or time.perf_counter() - start > 4.0:
            break
        iters *= 2
    return max(best, *(_peak.fma_rate(threads, f64, iters) for _ in range(repeats)))


def run(
    cells: Sequence[str] = tuple(CELLS),
    configs: Sequence[str] = tuple(CONFIGS),
    modes: Sequence[str] = MODES,
    impls: Sequence[str] = IMPLS,
    dtype=np.float32,
    threads: Sequence[int] = (1,),
    repeats: int = 7,
    min_time: float = 0.1,
    gemm_n: int = 1024,
    progress: Callable[[str], None] | None = None,
    settle: float = SETTLE,
) -> tuple[list[Result], dict[int, float]]:
    """Time every (cell, config, mode, thread count) for every implementation, interleaved.

    Returns the rows and the measured GEMM peak (GFLOP/s) at each thread count.
    """
    import fastrnn
    from fastrnn._threads import blas_threads

    torch = torch_or_none() if "torch" in impls else None
    peaks: dict[int, float] = {}
    rows: list[Result] = []
    before = fastrnn.get_num_threads()
    torch_before = None if torch is None else torch.get_num_threads()
    try:
        for n_threads in threads:
            fastrnn.set_num_threads(n_threads)
            if torch is not None:
                torch.set_num_threads(n_threads)
            roof = fma_roof(dtype, n_threads)  # first: OpenBLAS's pool spins after a GEMM
            peaks[n_threads] = gemm_peak(dtype, n_threads, gemm_n)
            for cell in cells:
                for config in configs:
                    shape = parse_config(config)
                    p = make_problem(cell, shape, dtype)
                    fns = implementations(p, impls)
                    for mode in modes:
                        if progress:
                            progress(f"{cell} {config} {mode} threads={n_threads}")
                        # the NumPy reference runs on numpy's BLAS: same thread count
                        with blas_threads(n_threads, "numpy"):
                            times = time_interleaved(
                                {k: v[mode] for k, v in fns.items()}, repeats, min_time, settle
                            )
                        rows.extend(
                            _rows(cell, config, shape, mode, p.dtype, n_threads, times,
                                  peaks[n_threads], roof)
                        )  # fmt: skip
    finally:
        fastrnn.set_num_threads(before)
        if torch is not None:
            torch.set_num_threads(torch_before)
    return rows, peaks


def deepbench_problems(
    sets: Sequence[str] = tuple(DEEPBENCH), max_steps: int = DEEPBENCH_MAX_STEPS
) -> list[tuple[str, str, tuple[int, int, int, int], str]]:
    """``(cell, name, (T, B, I, H), mode)`` of each DeepBench problem in ``sets``, T capped at
    ``max_steps`` (0: no cap). Names read ``<set>:H<h>B<b>T<t>``, with DeepBench's own T."""
    out = []
    for set_name in sets:
        if set_name not in DEEPBENCH:
            raise ValueError(
                f"unknown DeepBench set {set_name!r}: use {', '.join(DEEPBENCH)} or all"
            )
        mode = "fwdbwd" if set_name == "training" else "fwd"
        for cell, H, B, T in DEEPBENCH[set_name]:
            steps = min(T, max_steps) if max_steps > 0 else T
            name = f"{set_name[:5]}:H{H}B{B}T{T}"
            out.append((cell, name, (steps, B, H, H), mode))
    return out


def run_deepbench(
    sets: Sequence[str] = tuple(DEEPBENCH),
    impls: Sequence[str] = ("fastrnn", "torch"),
    dtype=np.float32,
    threads: Sequence[int] = (1,),
    repeats: int = 5,
    min_time: float = 0.1,
    gemm_n: int = 1024,
    max_steps: int = DEEPBENCH_MAX_STEPS,
    progress: Callable[[str], None] | None = None,
    settle: float = SETTLE,
) -> tuple[list[Result], dict[int, float]]:
    """:func:`run` over DeepBench's problems (:func:`deepbench_problems`): training ones forward +
    backward, inference ones as an inference forward. Rows' ``config`` is the problem's name."""
    import fastrnn
    from fastrnn._threads import blas_threads

    torch = torch_or_none() if "torch" in impls else None
    peaks: dict[int, float] = {}
    rows: list[Result] = []
    before = fastrnn.get_num_threads()
    torch_before = None if torch is None else torch.get_num_threads()
    try:
        for n_threads in threads:
            fastrnn.set_num_threads(n_threads)
            if torch is not None:
                torch.set_num_threads(n_threads)
            roof = fma_roof(dtype, n_threads)  # first: OpenBLAS's pool spins after a GEMM
            peaks[n_threads] = gemm_peak(dtype, n_threads, gemm_n)
            for cell, name, shape, mode in deepbench_problems(sets, max_steps):
                if progress:
                    progress(f"{cell} {name} {mode} T={shape[0]} threads={n_threads}")
                p = make_problem(cell, shape, dtype)
                fns = implementations(p, impls)
                with blas_threads(n_threads, "numpy"):
                    times = time_interleaved(
                        {k: v[mode] for k, v in fns.items()}, repeats, min_time, settle
                    )
                rows.extend(_rows(cell, name, shape, mode, p.dtype, n_threads, times,
                                  peaks[n_threads], roof))  # fmt: skip
    finally:
        fastrnn.set_num_threads(before)
        if torch is not None:
            torch.set_num_threads(torch_before)
    return rows, peaks


def summarize(rows: Sequence[Result]) -> str:
    """Per group of rows (DeepBench set, or mode) and thread count, each implementation's
    geometric mean and smallest ``x fastrnn`` (its median time / fastrnn's)."""
    groups: dict[tuple[str, int, str], list[float]] = {}
    for r in rows:
        if r.impl == "fastrnn" or r.ratio is None:
            continue
        group = r.config.split(":")[0] if ":" in r.config else r.mode
        groups.setdefault((group, r.threads, r.impl), []).append(r.ratio)
    lines = ["# x fastrnn per group: geometric mean (smallest) over its rows"]
    for (group, n, impl), ratios in groups.items():
        gmean = float(np.exp(np.mean(np.log(ratios))))
        lines.append(
            f"# {group:8s} {n} thread{'s' if n > 1 else ' '} {impl:8s} {gmean:6.2f}x "
            f"({min(ratios):.2f}x) over {len(ratios)} problems"
        )
    return "\n".join(lines)


def _rows(cell, config, shape, mode, dtype, n_threads, times, peak, roof=None) -> list[Result]:
    f = flops(cell, shape, mode)
    out = []
    for impl, ts in times.items():
        med = statistics.median(ts)
        out.append(
            Result(
                cell, config, shape, mode, dtype.name, n_threads, impl, 1e3 * med,
                1e3 * min(ts), len(ts), f / med / 1e9,
            )
        )  # fmt: skip
    ref = next((r for r in out if r.impl == "fastrnn"), None)
    for r in out:
        r.gemm_share = r.gflops / peak if peak > 0 else None
        if roof:
            r.roof_gflops, r.roof_share = roof, r.gflops / roof
        if ref is not None:
            r.ratio = r.median_ms / ref.median_ms
    return out


def environment(peaks: dict[int, float], dtype) -> dict:
    """What a reader needs to interpret the numbers."""
    import fastrnn
    from fastrnn._isa import get_isa
    from fastrnn._threads import blas_info

    torch = torch_or_none()
    return {
        "fastrnn": fastrnn.__version__,
        "numpy": np.__version__,
        "torch": None if torch is None else torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu": _cpu_name(),
        "cpus_available": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else None,
        "blas": blas_info()["config"],
        "kernels": get_isa(),
        "dtype": np.dtype(dtype).name,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(unset: libgomp default)"),
        "gemm_peak_gflops": {str(k): round(v, 2) for k, v in peaks.items()},
    }


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def format_table(rows: Sequence[Result], peaks: dict[int, float], env: dict | None = None) -> str:
    """A plain-text table: median/min ms, time relative to fastrnn, GFLOP/s, share of the GEMM
    peak and of the multiply-add roof (where the rows carry one)."""
    lines = []
    if env:
        lines.append(
            f"# {env['cpu']} | kernels {env.get('kernels', '?')} | {env['blas']} | "
            f"dtype {env['dtype']} | "
            f"OMP_WAIT_POLICY={env['omp_wait_policy']} | torch {env['torch']}"
        )
    for n, peak in peaks.items():
        lines.append(f"# GEMM peak ({n} thread{'s' if n > 1 else ''}): {peak:.1f} GFLOP/s")
    roofs = {r.threads: r.roof_gflops for r in rows if r.roof_gflops}
    for n, roof in roofs.items():
        lines.append(
            f"# multiply-add roof ({n} thread{'s' if n > 1 else ''}): {roof:.1f} GFLOP/s "
            "(fma_roof: no GEMM exceeds it)"
        )
    lines.append("# x fastrnn = median time / fastrnn's median time (> 1: fastrnn is faster)")
    w = max([8, *(len(r.config) for r in rows)])
    head = (
        f"{'cell':5s} {'config':{w}s} {'mode':6s} {'thr':>3s} {'impl':8s} {'median ms':>10s} "
        f"{'min ms':>10s} {'x fastrnn':>9s} {'GFLOP/s':>8s} {'% GEMM':>7s} {'% roof':>7s}"
    )
    lines.append(head)
    lines.append("-" * len(head))
    for r in rows:
        ratio = "" if r.ratio is None else f"{r.ratio:.2f}"
        share = "" if r.gemm_share is None else f"{100 * r.gemm_share:.0f}%"
        roof = "" if r.roof_share is None else f"{100 * r.roof_share:.0f}%"
        lines.append(
            f"{r.cell:5s} {r.config:{w}s} {r.mode:6s} {r.threads:3d} {r.impl:8s} "
            f"{r.median_ms:10.3f} {r.min_ms:10.3f} {ratio:>9s} {r.gflops:8.1f} {share:>7s} "
            f"{roof:>7s}"
        )
    return "\n".join(lines)


def write_json(path: str, rows: Sequence[Result], peaks: dict[int, float], env: dict) -> None:
    with open(path, "w") as f:
        json.dump({"environment": env, "results": [asdict(r) for r in rows]}, f, indent=2)
        f.write("\n")


def write_plot(path: str, rows: Sequence[Result]) -> None:
    """Bar chart of each implementation's speed relative to fastrnn (needs matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = []
    for r in rows:
        key = (r.cell, r.config, r.mode, r.threads)
        if key not in groups:
            groups.append(key)
    impls = [i for i in IMPLS if any(r.impl == i for r in rows)]
    width = 0.8 / max(1, len(impls))
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(groups) + 2), 4.5))
    for k, impl in enumerate(impls):
        xs, ys = [], []
        for g, key in enumerate(groups):
            r = next((r for r in rows if (r.cell, r.config, r.mode, r.threads) == key
                      and r.impl == impl), None)  # fmt: skip
            if r is not None and r.ratio is not None:
                xs.append(g + (k - (len(impls) - 1) / 2) * width)
                ys.append(1.0 / r.ratio)
        ax.bar(xs, ys, width, label=impl)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([f"{c} {cf}\n{m} {t}t" for c, cf, m, t in groups], fontsize=7, rotation=90)
    ax.set_yscale("log")
    ax.set_ylabel("speed relative to fastrnn (higher is faster)")
    ax.axhline(1.0, color="k", lw=0.5)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
