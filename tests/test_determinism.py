"""fastrnn/functional.py (the kernels) and reference.py: the same inputs give the same bits.

Determinism: same inputs and weights give the same bits, call after call and run after run.

What is guaranteed (README, "Determinism"), for one build on one machine:

* repeated calls, in one process or in fresh processes, give bitwise-identical outputs and
  gradients, whatever the memory addresses and alignment of the operands;
* ``fastrnn.set_num_threads`` changes no bit (tests/test_threads.py: the gate passes split the
  batch rows, never a sum);
* the caller's BLAS thread count changes no bit: each kernel call runs scipy's BLAS on one
  thread and restores the caller's count afterwards (fastrnn/_threads.py), checked here.
"""

import hashlib
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import SPECS, assert_forward_close, assert_grads_close, make_case

from fastrnn import _isa, _threads

# (T, B, I, H): a tiny case, and one large enough for threaded BLAS and the OpenMP gate pass.
SHAPES = [(5, 3, 4, 6), (8, 64, 32, 128)]
SEED = 2024


def _cases():
    for spec in SPECS:
        for dtype in (np.float32, np.float64):
            for k, shape in enumerate(SHAPES):
                rng = np.random.default_rng([SEED, k])
                lengths = "random" if k == 0 else None
                yield (
                    f"{spec.name}-{np.dtype(dtype).name}-{k}",
                    spec,
                    make_case(spec, rng, *shape, dtype, lengths=lengths),
                )


def _digest(spec, backend, case):
    fwd = spec.forward_case(backend, case)
    grads = spec.backward_case(backend, fwd.cache, case)
    h = hashlib.sha256()
    for a in (*fwd[:3], *grads):
        if a is not None:
            h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _all_digests():
    return {
        f"{name}-{backend}": _digest(spec, backend, case)
        for name, spec, case in _cases()
        for backend in ("cython", "numpy")
        if backend == "cython" or name.endswith("-0")  # the reference on the small cases only
    }


def _misaligned(a):
    """A C-contiguous copy of ``a`` that starts one element past an allocation's start."""
    buf = np.empty(a.size + 1, a.dtype)
    out = buf[1:].reshape(a.shape)
    out[...] = a
    return out


def test_repeated_calls_are_bitwise_identical():
    for name, spec, case in _cases():
        first = _digest(spec, "cython", case)
        fresh = case.map_arrays(np.copy)  # new buffers at new addresses
        assert _digest(spec, "cython", fresh) == first, name
        assert _digest(spec, "cython", case.map_arrays(_misaligned)) == first, name


_CHILD = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, {tests!r})
    import test_determinism
    print(json.dumps(test_determinism._all_digests()))
    """
)


@pytest.mark.slow
def test_fresh_processes_give_the_same_bits():
    here = _all_digests()
    tests = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(tests)
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD.format(tests=tests)],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    there = json.loads(proc.stdout.strip().splitlines()[-1])
    assert there == here


@pytest.mark.parametrize("isa", ["blas", "packed"])
def test_blas_thread_count_changes_no_bit(monkeypatch, isa):
    """The caller's BLAS thread count (1, 2 or 4) changes no bit. Under ``set_isa("blas")``,
    where the kernels call scipy's BLAS at every step, each kernel call sets it to one thread
    while it runs (``fastrnn._threads.blas_single_thread``) and restores the caller's count
    afterwards: the spy on the setter shows the switch, so this fails if such a call ever runs
    the caller's threaded BLAS. With the packed micro-kernels (the ISA the CPU picked), which
    call no BLAS, no call pays for the switch."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    if not _threads.blas_info()["controlled"]:
        pytest.skip("the BLAS behind scipy is not OpenBLAS: its thread count is not controlled")
    before = _isa.get_isa()
    if isa == "packed" and before == "blas":
        pytest.skip("this CPU has no packed micro-kernels")
    calls = []
    real_set = _threads._blas.set

    def spy(n):
        calls.append(n)
        real_set(n)

    monkeypatch.setattr(_threads._blas, "set", spy)
    try:
        if isa == "blas":
            _isa.set_isa("blas")
        for name, spec, case in _cases():
            results = []
            for n in (1, 2, 4):
                with threadpoolctl.threadpool_limits(limits=n, user_api="blas"):
                    assert _threads.blas_info()["num_threads"] == n
                    calls.clear()
                    fwd = spec.forward_case("cython", case)
                    grads = spec.backward_case("cython", fwd.cache, case)
                    # one switch to 1 and one restore per call when the caller runs n > 1
                    switched = isa == "blas" and n > 1
                    assert calls == ([1, n, 1, n] if switched else []), (name, n, calls)
                    assert _threads.blas_info()["num_threads"] == n, name
                results.append((fwd, grads))
            (f1, g1), *others = results
            for fwd, grads in others:
                assert_forward_close(spec, fwd, f1, rtol=0, atol=0)
                assert_grads_close(spec, grads, g1, rtol=0, atol=0)
    finally:
        _isa.set_isa(before)
