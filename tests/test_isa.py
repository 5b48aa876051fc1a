"""The instruction-set paths of the kernels (fastrnn._isa, src_pyx/_rgemm.h).

Each path this CPU runs -- the AVX-512 and AVX2 micro-kernels with their compiled variants of
the gate loops, and the portable BLAS path -- must agree with the NumPy reference on shapes that
exercise every tile and panel edge: batch sizes that are not a multiple of the 8 / 6 / 4 / 2-row
tiles, hidden sizes that leave partial 16 / 32-column panels, variable lengths (the active batch
shrinks step by step), one and two threads. And ``import fastrnn`` from a source tree whose
kernels are not built fails with _isa's message saying what to run.
"""

import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import (
    SPECS,
    TOL,
    assert_forward_close,
    assert_grads_close,
    backend_module,
    make_case,
    needs_source_tree,
)

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


@pytest.mark.slow
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


@pytest.mark.slow
def test_environment_variable_picks_the_isa():
    done = _child_isa("blas")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "blas"


@pytest.mark.slow
def test_bad_environment_variable_warns():
    done = _child_isa("altivec")
    assert done.returncode != 0
    assert "FASTRNN_ISA ignored" in done.stderr and "isa must be one of" in done.stderr


@pytest.mark.slow
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


# -- the kernel variants: LSTM with a projection, GRU with reset_after=False ---------------------
# (T, B, I, H, P): the odd shapes above with a projection size P that leaves partial panels too;
# H = 200 is 4 unit blocks and P = 75 two (each thread owns hidden units and projection columns);
# P = 17 is one block, so with two threads one of them owns no projection column.
VARIANT_SHAPES = [(6, 13, 5, 37, 21), (4, 1, 3, 2, 1), (5, 9, 16, 200, 75), (3, 20, 8, 130, 17)]
VARIANTS = ["lstm_proj", "gru_reset_before"]


def _variant_case(variant, rng, T, B, I, H, P, dtype, lengths):
    k = 1 / np.sqrt(H)
    G, R = (4 * H, P) if variant == "lstm_proj" else (3 * H, H)

    def u(*s):
        return rng.uniform(-k, k, s).astype(dtype)

    def n(*s):
        return rng.standard_normal(s).astype(dtype)

    a = {
        "x": n(T, B, I),
        "h0": n(B, R),
        "c0": n(B, H),
        "w_ih": u(G, I),
        "w_hh": u(G, R),
        "b_ih": u(G),
        "b_hh": u(G),
        "w_hr": u(P, H),
        "dy": n(T, B, R),
        "dh_n": n(B, R),
        "dc_n": n(B, H),
        "lengths": rng.integers(1, T + 1, B) if lengths else None,
    }
    if lengths:
        a["lengths"][rng.integers(B)] = T
    return a


def _variant_run(variant, backend, a):
    """Forward outputs and every gradient, as one list of arrays."""
    F = backend_module(backend)
    w = (a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"])
    if variant == "lstm_proj":
        *fwd, cache = F.lstm_forward(
            a["x"], a["h0"], a["c0"], *w, w_hr=a["w_hr"], lengths=a["lengths"]
        )
        grads = F.lstm_backward(cache, a["dy"], a["dh_n"], a["dc_n"])
    else:
        *fwd, cache = F.gru_forward(a["x"], a["h0"], *w, reset_after=False, lengths=a["lengths"])
        grads = F.gru_backward(cache, a["dy"], a["dh_n"])
    return [np.asarray(v) for v in (*fwd, *grads) if v is not None]


@pytest.mark.slow
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_every_isa_matches_the_reference_on_the_variants(isa, variant, dtype, restore_isa):
    _isa.set_isa(isa)
    threads = fastrnn.get_num_threads()
    try:
        for k, shape in enumerate(VARIANT_SHAPES):
            a = _variant_case(variant, np.random.default_rng([8, k]), *shape, dtype, k % 2)
            want = _variant_run(variant, "numpy", a)
            for n in (1, 2):
                fastrnn.set_num_threads(n)
                got = _variant_run(variant, "cython", a)
                assert len(got) == len(want)
                for i, (u, v) in enumerate(zip(got, want, strict=True)):
                    assert u.dtype == dtype
                    np.testing.assert_allclose(u, v, err_msg=f"{shape} #{i}", **TOLS[dtype])
    finally:
        fastrnn.set_num_threads(threads)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_the_variants_give_the_same_bits_on_one_and_two_threads(isa, variant, restore_isa):
    """Fixed blocks over H and over P, whatever the team size: bitwise equal results."""
    _isa.set_isa(isa)
    threads = fastrnn.get_num_threads()
    try:
        for k, shape in enumerate(VARIANT_SHAPES[2:]):
            a = _variant_case(variant, np.random.default_rng([9, k]), *shape, np.float32, k)
            digests = []
            for n in (1, 2):
                fastrnn.set_num_threads(n)
                digests.append([v.tobytes() for v in _variant_run(variant, "cython", a)])
            assert digests[0] == digests[1], shape
    finally:
        fastrnn.set_num_threads(threads)


@pytest.mark.skipif(len(ISAS) < 3, reason="needs a CPU with AVX-512")
@pytest.mark.parametrize("variant", VARIANTS)
def test_the_two_micro_kernels_give_the_same_bits_on_the_variants(variant, restore_isa):
    _isa.set_isa("blas")
    a = _variant_case(variant, np.random.default_rng(4), 5, 13, 6, 100, 37, np.float32, True)
    digests = []
    for code in (1, 2):
        for module in vars(_isa.KERNELS).values():
            module._set_isa(code)
        digests.append([v.tobytes() for v in _variant_run(variant, "cython", a)])
    assert digests[0] == digests[1]


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_inference_ring_matches_training_forward(isa, spec, restore_isa):
    """An inference forward keeps the projected gates of only a few steps (a ring refilled
    every steps_per_chunk(B) = 256 // B steps); its outputs must be the training forward's, bit
    for bit, when the ring wraps several times."""
    _isa.set_isa(isa)
    for k, (T, B) in enumerate([(11, 64), (7, 100), (9, 300)]):
        case = make_case(
            spec,
            np.random.default_rng([11, k]),
            T,
            B,
            5,
            40,
            np.float32,
            lengths="random" if k == 1 else None,
        )
        train = spec.forward_case("cython", case, training=True)
        infer = spec.forward_case("cython", case, training=False)
        for name in spec.output_names():
            np.testing.assert_array_equal(getattr(infer, name), getattr(train, name), name)


# -------------------------------------------------------------------------------------------------
# import fastrnn from a source tree whose kernels are not built: a clear error (_isa's message)
# -------------------------------------------------------------------------------------------------
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
@needs_source_tree
def test_unbuilt_checkout_says_what_to_run(tmp_path):
    """A copy of the Python sources without the compiled extensions, imported from its root."""
    shutil.copytree(
        os.path.join(ROOT, "fastrnn"),
        tmp_path / "fastrnn",
        ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__"),
    )
    shutil.copy(os.path.join(ROOT, "setup.py"), tmp_path / "setup.py")
    out = subprocess.run(
        [sys.executable, "-c", "import fastrnn"], cwd=tmp_path, capture_output=True, text=True
    )
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith(
        "ImportError: fastrnn's compiled kernels (rnn, lstm, gru, attention, _memory, _rows, "
        "_stream) are not built"
    )
    assert "python setup.py build_ext --inplace" in last
    assert str(tmp_path) in last


@pytest.mark.slow
@needs_source_tree
def test_a_tree_built_before_an_extension_was_added_says_what_to_run(tmp_path):
    """A built copy of the sources lacking one extension (as an in-place build from before that
    extension existed, after a pull): the same message, naming the missing one."""
    import fastrnn._kernels._memory as memory

    shutil.copytree(
        os.path.join(ROOT, "fastrnn"),
        tmp_path / "fastrnn",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    shutil.copy(os.path.join(ROOT, "setup.py"), tmp_path / "setup.py")
    built = os.path.basename(memory.__file__)
    target = tmp_path / "fastrnn" / "_kernels" / built
    if not target.exists():
        pytest.skip("the extensions are not in the source tree (an installed build)")
    target.unlink()
    out = subprocess.run(
        [sys.executable, "-c", "import fastrnn"], cwd=tmp_path, capture_output=True, text=True
    )
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: fastrnn's compiled kernels (_memory) are not built")


@pytest.mark.slow
@needs_source_tree
def test_built_tree_imports():
    out = subprocess.run(
        [sys.executable, "-c", "import fastrnn._kernels.lstm, fastrnn; print(fastrnn.__file__)"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == os.path.join(ROOT, "fastrnn", "__init__.py")


@pytest.mark.parametrize("isa", [i for i in ISAS if i != "blas"])
@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_one_row_gemms_match_the_reference(isa, spec, dtype, restore_isa):
    """B = 1 runs every recurrent GEMM on the one-row micro-kernel (_rgemm_row.h: four full
    panels at a time, the rest panel by panel): H = 150 leaves 4 full panels and a partial one
    of float32 AVX-512 (32 columns), several groups of 4 and a partial panel elsewhere."""
    _isa.set_isa(isa)
    case = make_case(spec, np.random.default_rng(11), 4, 1, 150, 150, dtype)
    want_fwd, want_grads = _run(spec, "numpy", case)
    fwd, grads = _run(spec, "cython", case)
    assert_forward_close(spec, fwd, want_fwd, **TOLS[dtype])
    assert_grads_close(spec, grads, want_grads, **TOLS[dtype])


@pytest.mark.parametrize("isa", [i for i in ISAS if i != "blas"])
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("H", [16, 40, 64, 150])
def test_one_row_is_bitwise_a_row_of_a_batch(isa, cell, dtype, H, restore_isa):
    """A batch of 1 multiplies one row by up to four panels at once, across the gate blocks
    when a gate has fewer than four (_rgemm.h: fr_rgemv_gates_*); a batch of 2 takes the
    two-row tile. Each element is the same multiply-add chain either way, so row 0 of the
    outputs and of dx, dh0 is the same bits (H = 64: two full panels per gate of float32
    AVX-512; 40, 150: a partial panel; 16: only a partial one)."""
    _isa.set_isa(isa)
    rng = np.random.default_rng(3)
    T, I, G = 5, 24, {"rnn": 1, "lstm": 4, "gru": 3}[cell]
    x = rng.standard_normal((T, 2, I)).astype(dtype)
    dy = rng.standard_normal((T, 2, H)).astype(dtype)
    w = [rng.uniform(-0.3, 0.3, s).astype(dtype) for s in ((G * H, I), (G * H, H), (G * H,))]
    fwd = getattr(fastrnn.functional, f"{cell}_forward")
    bwd = getattr(fastrnn.functional, f"{cell}_backward")
    states = (None, None) if cell == "lstm" else (None,)
    out = {}
    for B in (1, 2):
        for training in (False, True):
            res = fwd(np.ascontiguousarray(x[:, :B]), *states, w[0], w[1], w[2], w[2],
                      training=training)  # fmt: skip
            out[B, training] = [r[..., :1, :] if r.ndim == 3 else r[:1] for r in res[:2]]
        grads = bwd(res[-1], np.ascontiguousarray(dy[:, :B]))
        out[B, "grad"] = [grads.dx[:, :1], grads.dh0[:1]]
    for key in ((False,), (True,), ("grad",)):
        for a, b in zip(out[(1, *key)], out[(2, *key)], strict=True):
            np.testing.assert_array_equal(a, b)
