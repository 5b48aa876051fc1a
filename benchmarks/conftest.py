"""pytest-benchmark suite (not part of the default ``python -m pytest`` run: testpaths = tests).

    pytest benchmarks/                                   # every bench_*.py
    pytest benchmarks/bench_cells.py --benchmark-autosave
    pytest benchmarks/bench_cells.py --benchmark-compare  # against the last saved run
    pytest benchmarks/bench_cells.py -k "lstm and medium and fwdbwd" --threads 2

``--threads N`` sets fastrnn's and torch's thread count (default: fastrnn.get_num_threads());
``--run-slow`` adds the NumPy reference on the large shapes (seconds per call).
"""

from __future__ import annotations

import pytest

# Import torch (when installed) before fastrnn's kernels so that both share one OpenMP runtime
# with the same wait policy, as ``python -m fastrnn.bench`` does.
try:
    import torch  # noqa: F401
except ImportError:  # pragma: no cover - torch is optional
    torch = None


def pytest_addoption(parser):
    parser.addoption("--threads", type=int, default=None, help="threads for fastrnn and torch")
    parser.addoption(
        "--run-slow", action="store_true", help="also run benchmarks marked slow (seconds each)"
    )


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow benchmark: pass --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def pytest_configure(config):
    # collect bench_*.py here (the files do not follow the tests' test_*.py pattern)
    config.addinivalue_line("python_files", "bench_*.py")


@pytest.fixture(scope="session", autouse=True)
def threads(request):
    import fastrnn

    n = request.config.getoption("--threads") or fastrnn.get_num_threads()
    before = fastrnn.get_num_threads()
    fastrnn.set_num_threads(n)
    if torch is not None:
        torch_before = torch.get_num_threads()
        torch.set_num_threads(n)
    yield n
    fastrnn.set_num_threads(before)
    if torch is not None:
        torch.set_num_threads(torch_before)
