"""fastrnn/functional.py and _common.Cache: no leak, inference keeps nothing, cache size known.

Memory: no leak over many calls, inference keeps nothing, the training cache's size is known.

* RSS (resident set size, from /proc/self/statm) is read after a warm-up and after 10,000
  rounds of training forward + backward + inference forward of each cell on small shapes; it may
  not grow by more than ``RSS_TOLERANCE``, less than one array leaked per round would add.
* Reference counts of the operands are unchanged after the calls (a leaked memoryview
  acquisition in a kernel would hold one), and the outputs and cache are freed by reference
  counting alone as soon as the caller drops them (no cycles for the garbage collector).
* ``cache.nbytes`` of a training forward equals the formula that README.md documents.
"""

import dataclasses
import gc
import os
import sys
import weakref

import numpy as np
import pytest
from conftest import CELL_SPECS, make_case

from fastrnn._kernels import _build

# 1 MiB over 10,000 rounds: < 105 bytes a round, less than one leaked ndarray (its header alone
# is 112 bytes; the smallest array of a round, a (4, 32) float32 state, adds 512 bytes of data).
RSS_TOLERANCE = 1 << 20

pytestmark = pytest.mark.skipif(
    not os.path.exists("/proc/self/statm"), reason="RSS is read from /proc/self/statm (Linux)"
)
# AddressSanitizer keeps freed memory in quarantine: RSS grows by design in that build.
needs_plain_malloc = pytest.mark.skipif(
    _build.CONFIG["asan"], reason="ASan's quarantine grows RSS by design"
)


def _rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _case(spec, dtype=np.float32):
    rng = np.random.default_rng(0)
    # unsorted lengths: the reordering path allocates and frees the most
    return make_case(spec, rng, 5, 4, 8, 32, dtype, lengths=np.array([2, 5, 4, 5]))


def _one_round(spec, backend, case):
    fwd = spec.forward_case(backend, case)
    spec.backward_case(backend, fwd.cache, case)
    assert spec.forward_case(backend, case, training=False).cache is None


@pytest.mark.slow
@needs_plain_malloc
@pytest.mark.parametrize("spec", CELL_SPECS, ids=lambda s: s.cell)  # relu: tanh's code path
@pytest.mark.parametrize("backend,rounds", [("cython", 10_000), ("numpy", 500)])
def test_rss_does_not_grow(spec, backend, rounds):
    """``rounds`` x (training forward + backward + inference forward) of one cell."""
    case = _case(spec)
    for _ in range(300):  # warm-up: allocator pools, lazily imported modules
        _one_round(spec, backend, case)
    gc.collect()
    before = _rss()
    for _ in range(rounds):
        _one_round(spec, backend, case)
    gc.collect()
    drift = _rss() - before
    print(f"RSS drift over {rounds} {spec.name} {backend} rounds: {drift / 1024:.0f} KiB")
    assert drift < RSS_TOLERANCE, f"RSS grew by {drift / 1024:.0f} KiB over {rounds} rounds"


@pytest.mark.parametrize("backend", ["cython", "numpy"])
def test_calls_hold_no_reference_to_their_operands(spec, backend):
    case = _case(spec)
    names = ("x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh", "lengths", "dy", "dh_n", "dc_n")
    arrays = [getattr(case, n) for n in names if getattr(case, n) is not None]
    before = [sys.getrefcount(a) for a in arrays]
    for _ in range(100):
        fwd = spec.forward_case(backend, case)
        spec.backward_case(backend, fwd.cache, case)
        spec.forward_case(backend, case, training=False)
    del fwd
    assert [sys.getrefcount(a) for a in arrays] == before


def _arrays_of(obj):
    """Every ndarray inside nested dicts, lists, tuples and dataclasses (a Cache's record)."""
    if isinstance(obj, np.ndarray):
        return [obj]
    if dataclasses.is_dataclass(obj):
        obj = vars(obj)
    items = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (list, tuple)) else ()
    return [a for v in items for a in _arrays_of(v)]


@pytest.mark.parametrize("backend", ["cython", "numpy"])
def test_results_are_freed_without_the_garbage_collector(spec, backend):
    case = _case(spec)
    gc.disable()
    try:
        fwd = spec.forward_case(backend, case)
        operands = [a for a in _arrays_of(vars(case)) if a is not None]
        own = [
            a
            for a in _arrays_of(fwd.cache.saved)
            if not any(np.shares_memory(a, o) for o in operands)
        ]
        assert len(own) >= 2
        refs = [weakref.ref(a) for a in own] + [weakref.ref(fwd.y)]
        grads = spec.backward_case(backend, fwd.cache, case)
        refs.append(weakref.ref(grads.dw_hh))
        infer = spec.forward_case(backend, case, training=False)
        refs.append(weakref.ref(infer.y))
        del fwd, grads, infer, own, operands
        assert all(r() is None for r in refs)
    finally:
        gc.enable()


def _expected_nbytes(spec, T, B, D, H, itemsize):
    """README's formula for a functional (Cython) training forward, batch sorted or no lengths."""
    G = spec.G * H
    saved = {"rnn": 1, "lstm": 6, "gru": 5}[spec.cell] * H  # per (t, b): y; +gates +c; +gates +n
    states = 2 if spec.has_c else 1
    operands = T * B * D + states * B * H + G * (D + H + 2)
    return itemsize * (T * B * saved + operands)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_cache_nbytes_matches_the_documented_formula(spec, dtype):
    T, B, D, H = 7, 3, 5, 6
    rng = np.random.default_rng(1)
    case = make_case(spec, rng, T, B, D, H, dtype)
    cache = spec.forward_case("cython", case).cache
    want = _expected_nbytes(spec, T, B, D, H, np.dtype(dtype).itemsize)
    assert cache.nbytes == want
    # the reference keeps per-step tuples; nbytes walks them
    ref = spec.forward_case("numpy", case).cache
    assert ref.nbytes > T * B * H * np.dtype(dtype).itemsize
