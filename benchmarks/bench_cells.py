"""Forward and forward + backward of every cell on the standard shapes, for fastrnn, the NumPy
reference and PyTorch (same weights, same inputs, same thread count).

    pytest benchmarks/bench_cells.py --benchmark-autosave      # save a baseline
    pytest benchmarks/bench_cells.py --benchmark-compare       # compare with the last save
    pytest benchmarks/bench_cells.py -k "medium and not numpy" --benchmark-group-by=param:case

Tests are grouped by (cell, configuration, mode) so that pytest-benchmark's table shows the
implementations of one problem together. ``python -m fastrnn.bench`` prints the same numbers
with ratios and GFLOP/s.
"""

from __future__ import annotations

import numpy as np
import pytest

from fastrnn.bench import CELLS, CONFIGS, MODES, flops, implementations, make_problem

IMPLS = ("fastrnn", "numpy", "torch")
# The NumPy reference on the large shapes takes seconds per call: opt in with --run-slow.
SLOW = {("numpy", "large"), ("numpy", "longseq")}


def _params():
    for cell in CELLS:
        for config in CONFIGS:
            for mode in MODES:
                for impl in IMPLS:
                    marks = [pytest.mark.slow] if (impl, config) in SLOW else []
                    yield pytest.param(
                        cell, config, mode, impl, id=f"{cell}-{config}-{mode}-{impl}", marks=marks
                    )


_problems: dict = {}


def _fn(cell, config, mode, impl, dtype=np.float32):
    key = (cell, config, np.dtype(dtype).name)
    if key not in _problems:
        _problems[key] = make_problem(cell, CONFIGS[config], dtype)
    fns = implementations(_problems[key], (impl,))
    if impl not in fns:
        pytest.skip(f"{impl} is not installed")
    return fns[impl][mode]


@pytest.mark.parametrize(("cell", "config", "mode", "impl"), _params())
def test_cell(benchmark, cell, config, mode, impl, threads):
    fn = _fn(cell, config, mode, impl)
    benchmark.group = f"{cell} {config} {mode} float32 ({threads} threads)"
    benchmark.extra_info.update(
        {"gflop": flops(cell, CONFIGS[config], mode) / 1e9, "threads": threads, "impl": impl}
    )
    benchmark(fn)


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("impl", ["fastrnn", "torch"])
def test_cell_float64_medium(benchmark, cell, impl, threads):
    fn = _fn(cell, "medium", "fwdbwd", impl, np.float64)
    benchmark.group = f"{cell} medium fwdbwd float64 ({threads} threads)"
    benchmark(fn)
