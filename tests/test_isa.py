"""The instruction-set paths of the kernels (fastrnn._isa, src_pyx/_rgemm.h).

Each path this CPU runs -- the AVX-512 and AVX2 micro-kernels with their compiled variants of
the gate loops, and the portable BLAS path -- must agree with the NumPy reference on shapes that
exercise every tile and panel edge: batch sizes that are not a multiple of the 8 / 6 / 4 / 2-row
tiles, hidden sizes that leave partial 16 / 32-column panels, variable lengths (the active batch
shrinks step by step), one and two threads.
"""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import SPECS, TOL, assert_forward_close, assert_grads_close, make_case

import fastrnn
from fastrnn import _isa

ISAS = _isa.available_isas()
# (T, B, I, H): rows 13 = 8 + 4 + 1 (6 + 6 + 1), columns 37 (partial panels), a single unit, a
# hidden size cut into several blocks per thread (200 = 4 blocks of 64, 64, 64, 8).
SHAPES = [(6, 13, 5, 37), (4, 1, 3, 1), (5, 9, 16, 200), (3, 20, 8, 64)]
# float32 sums over up to H + G terms here: looser than conftest's tiny-shape tolerance.
TOLS = {np.float32: {"rtol": 2e-4, "atol": 2e-5}, np.float64: TOL[np.float64]}


@pytest.fixture
def restore_isa():
    before = _isa.get_isa()
    yield
    _isa.set_isa(before)


def _run(spec, backend, case):
    fwd = spec.forward_case(backend, case)
    return fwd, spec.backward_case(backend, fwd.cache, case)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_every_isa_matches_the_reference(isa, spec, dtype, restore_isa):
    _isa.set_isa(isa)
    threads = fastrnn.get_num_threads()
    try:
        for k, shape in enumerate(SHAPES):
            rng = np.random.default_rng([7, k])
            case = make_case(spec, rng, *shape, dtype, lengths="random" if k % 2 else None)
            want_fwd, want_grads = _run(spec, "numpy", case)
            for n in (1, 2):
                fastrnn.set_num_threads(n)
                fwd, grads = _run(spec, "cython", case)
                assert_forward_close(spec, fwd, want_fwd, **TOLS[dtype])
                assert_grads_close(spec, grads, want_grads, **TOLS[dtype])
    finally:
        fastrnn.set_num_threads(threads)


@pytest.mark.skipif(len(ISAS) < 3, reason="needs a CPU with AVX-512")
@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_the_two_micro_kernels_give_the_same_bits(spec, restore_isa):
    """Both compute each element as one FMA chain over k in order: same bits, any tile."""
    _isa.set_isa("blas")  # the portable modules, whose micro-kernel choice is set below
    case = make_case(spec, np.random.default_rng(3), 5, 13, 6, 100, np.float32, lengths="random")
    digests = []
    for code in (1, 2):
        for module in vars(_isa.KERNELS).values():
            module._set_isa(code)
        fwd, grads = _run(spec, "cython", case)
        digests.append([np.asarray(a).tobytes() for a in (*fwd[:3], *grads) if a is not None])
    assert digests[0] == digests[1]


def test_set_isa_validates(restore_isa):
    with pytest.raises(ValueError, match="isa must be one of"):
        _isa.set_isa("sse")
    with pytest.raises(ValueError, match="isa must be one of"):
        _isa.set_isa(2)
    _isa.set_isa("auto")
    assert _isa.get_isa() == ISAS[-1]


def test_set_isa_refuses_what_the_cpu_lacks(restore_isa, monkeypatch):
    monkeypatch.setattr(_isa, "_BEST", 0)
    with pytest.raises(ValueError, match="not supported by this CPU"):
        _isa.set_isa("avx2")


def test_set_isa_swaps_the_modules(restore_isa):
    _isa.set_isa("blas")
    assert _isa.KERNELS.lstm.__name__ == "fastrnn._kernels.lstm"
    for isa in _isa.compiled_variants():
        _isa.set_isa(isa)
        assert _isa.KERNELS.gru.__name__ == f"fastrnn._kernels.gru_{isa}"


def _child_isa(value):
    code = "import warnings; warnings.simplefilter('error')\n"
    code += "import fastrnn._isa as i; print(i.get_isa())"
    env = dict(os.environ, FASTRNN_ISA=value)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)


def test_environment_variable_picks_the_isa():
    done = _child_isa("blas")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "blas"


def test_bad_environment_variable_warns():
    done = _child_isa("altivec")
    assert done.returncode != 0
    assert "FASTRNN_ISA ignored" in done.stderr and "isa must be one of" in done.stderr


def test_the_packed_weights_do_not_leak():
    """Each kernel call packs W_hh into buffers that it frees (RSS stays flat)."""
    code = textwrap.dedent(
        """
        import resource, numpy as np, fastrnn
        from fastrnn import functional as F
        rng = np.random.default_rng(0)
        x = rng.standard_normal((3, 4, 8)).astype(np.float32)
        w_ih = rng.standard_normal((1024, 8)).astype(np.float32)
        w_hh = rng.standard_normal((1024, 256)).astype(np.float32)
        def rss():
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        for i in range(2200):
            if i == 200:
                before = rss()
            out = F.lstm_forward(x, None, None, w_ih, w_hh, training=True)
            F.lstm_backward(out[-1], np.ones((3, 4, 256), np.float32))
        print(rss() - before)
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    # 2000 calls leaking 1 MiB (the packed W_hh) each would show ~2 GB; allow allocator noise
    assert int(done.stdout) < 8 * 1024  # KiB
