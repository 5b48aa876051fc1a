"""The stable C API (fastrnn/capi/{rnn,lstm,gru}.pxd) from another Cython extension.

Compiles ``tests/cimport_ext/use_fastrnn.pyx`` -- a stand-in for another project's extension that
``cimport``s the kernels -- with Cython and setuptools in a temporary directory, the include path
pointing at the fastrnn package under test (in place or installed), then checks its results
against :mod:`fastrnn.functional`: forward outputs, every gradient, inference forwards, optional
operands, variable lengths (``batch_sizes``) and the error codes.
"""

import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap

import numpy as np
import pytest
from conftest import TOL

import fastrnn
from fastrnn import functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
# the directory that holds the fastrnn package, as another project's build would use it
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(fastrnn.__file__)))
T, B, I, H = 5, 3, 4, 6
G = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "gru": 3}

SETUP = textwrap.dedent(
    """
    from Cython.Build import cythonize
    from setuptools import Extension, setup

    setup(
        ext_modules=cythonize(
            [Extension("use_fastrnn", ["use_fastrnn.pyx"])],
            include_path=[{root!r}],
            compiler_directives={{"language_level": 3, "boundscheck": False}},
        )
    )
    """
)

# Compiling the extension takes 10-20 s: the inner loop (-m "not slow") skips this file.
pytestmark = pytest.mark.slow


def _compiler() -> str | None:
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    return shutil.which(cc.split()[0])


@pytest.fixture(scope="module")
def ext(tmp_path_factory):
    """The compiled consumer extension, imported."""
    if _compiler() is None:
        pytest.skip("no C compiler to build a consumer extension with")
    tmp = tmp_path_factory.mktemp("cimport_ext")
    shutil.copy(os.path.join(HERE, "cimport_ext", "use_fastrnn.pyx"), tmp)
    (tmp / "setup.py").write_text(SETUP.format(root=ROOT))
    proc = subprocess.run(
        [sys.executable, "setup.py", "build_ext", "--inplace"],
        cwd=tmp,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    so = tmp / ("use_fastrnn" + sysconfig.get_config_var("EXT_SUFFIX"))
    spec = importlib.util.spec_from_file_location("use_fastrnn", so)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_pxd_files_are_package_data():
    """The .pxd files sit in the package (so an install ships them, see pyproject.toml)."""
    kernels = os.path.dirname(fastrnn._kernels.__file__)
    for cell in ("rnn", "lstm", "gru"):
        assert os.path.isfile(os.path.join(kernels, f"{cell}.pxd"))
        module = importlib.import_module(f"fastrnn._kernels.{cell}")
        names = {f"{cell}_{what}" for what in ("reserve_size", "workspace_size")}
        names |= {f"{cell}_{d}_{t}" for d in ("forward", "backward") for t in ("f32", "f64")}
        assert names <= set(module.__pyx_capi__)


def _case(cell, dtype, optional, seed=0):
    rng = np.random.default_rng(seed)

    def n(*shape):
        return rng.standard_normal(shape).astype(dtype)

    g = G[cell] * H
    w = {"w_ih": n(g, I) * 0.5, "w_hh": n(g, H) * 0.5}
    w.update(b_ih=None, b_hh=None) if optional else w.update(b_ih=n(g), b_hh=n(g))
    states = {"h0": None if optional else n(B, H)}
    if cell == "lstm":
        states["c0"] = None if optional else n(B, H)
    return n(T, B, I), states, w, n(T, B, H), {k: n(B, H) for k in states}


def _flat(a):
    return None if a is None else np.ascontiguousarray(a).ravel()


@pytest.mark.parametrize("optional", [False, True], ids=["given", "null_states_biases"])
@pytest.mark.parametrize("lengths", [None, [5, 3, 1]], ids=["full", "lengths"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cell", list(G))
def test_matches_functional(ext, cell, dtype, lengths, optional):
    x, states, w, dy, dstates = _case(cell, dtype, optional)
    kind = cell.split("_")[0]
    relu = cell == "rnn_relu"
    kw = {"nonlinearity": "relu" if relu else "tanh"} if kind == "rnn" else {}
    fwd, bwd = getattr(F, f"{kind}_forward"), getattr(F, f"{kind}_backward")
    out = fwd(x, *states.values(), *w.values(), lengths=lengths, **kw)
    want_grads = bwd(out[-1], dy, *dstates.values())

    bs = None
    if lengths is not None:  # rows sorted by decreasing length: PyTorch's batch_sizes
        bs = (np.asarray(lengths)[None, :] > np.arange(T)[:, None]).sum(1).astype(np.intc)
    n_reserve, n_work = ext.sizes(kind, T, B, I, H)
    reserve, work = np.empty(n_reserve, dtype), np.full(n_work, np.nan, dtype)
    y, h_n, c_n = np.empty((T, B, H), dtype), np.empty((B, H), dtype), np.empty((B, H), dtype)
    flat_w = [_flat(a) for a in w.values()]
    h0, c0 = _flat(states["h0"]), _flat(states.get("c0"))
    args = (kind, T, B, I, H, _flat(x), h0, c0, *flat_w, bs)
    rc = ext.forward(*args, y.ravel(), h_n.ravel(), c_n.ravel(), reserve, work, relu, 2)
    assert rc == 0
    tol = TOL[dtype]
    np.testing.assert_allclose(y, out[0], **tol, err_msg="y")
    np.testing.assert_allclose(h_n, out[1], **tol, err_msg="h_n")
    if kind == "lstm":
        np.testing.assert_allclose(c_n, out[2], **tol, err_msg="c_n")

    # an inference forward keeps nothing and gives the same numbers
    y2, h2, c2 = np.empty_like(y), np.empty_like(h_n), np.empty_like(c_n)
    assert ext.forward(*args, y2.ravel(), h2.ravel(), c2.ravel(), None, work, relu, 1) == 0
    np.testing.assert_array_equal(y2, y)
    np.testing.assert_array_equal(h2, h_n)

    g = {k: np.full(np.shape(v), np.nan, dtype) for k, v in want_grads._asdict().items()}
    g["dc0"] = g.get("dc0", np.empty((B, H), dtype))
    dh_n, dc_n = _flat(dstates["h0"]), _flat(dstates.get("c0"))
    rc = ext.backward(
        kind, T, B, I, H, _flat(x), h0, c0, *flat_w[:2], bs, y.ravel(), reserve,
        dy.ravel(), dh_n, dc_n, g["dx"].ravel(), g["dh0"].ravel(), g["dc0"].ravel(),
        g["dw_ih"].ravel(), g["dw_hh"].ravel(),
        None if optional else g["db_ih"], None if optional else g["db_hh"], work, relu, 2,
    )  # fmt: skip
    assert rc == 0
    for name, want in want_grads._asdict().items():
        if want is not None:
            np.testing.assert_allclose(g[name], want, **tol, err_msg=name)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_error_codes_write_nothing(ext, cell):
    dtype = np.float64
    x, _, w, _, _ = _case("rnn_tanh" if cell == "rnn" else cell, dtype, True)
    n_reserve, n_work = ext.sizes(cell, T, B, I, H)
    reserve, work = np.empty(n_reserve, dtype), np.empty(n_work, dtype)
    y, h_n, c_n = np.zeros((T, B, H)), np.zeros((B, H)), np.zeros((B, H))
    flat_w = [_flat(w["w_ih"]), _flat(w["w_hh"]), None, None]

    def call(T_=T, H_=H, bs=None, w_ih=flat_w[0], threads=1):
        outs = (y.ravel(), h_n.ravel(), c_n.ravel(), reserve, work)
        ws = (w_ih, *flat_w[1:])
        return ext.forward(cell, T_, B, I, H_, _flat(x), None, None, *ws, bs, *outs, False, threads)

    assert call(H_=0) == -1
    assert call(threads=0) == -1
    assert call(w_ih=None) == -1
    increasing = np.array([2, 3, 3, 1, 1], np.intc)
    assert call(bs=increasing) == -2
    assert call(bs=np.array([3, 3, 2, 0, 0], np.intc)) == -2  # a row of length 0
    assert call(bs=np.array([2, 2, 2, 1, 1], np.intc)) == -2  # batch_sizes[0] != B
    assert not y.any() and not h_n.any()
    # T == 0: the final state is the initial state (zeros here)
    h_n[:] = 1
    assert call(T_=0) == 0
    assert not h_n.any()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cell", list(G))
def test_calls_stay_inside_the_sizes_they_report(ext, cell, dtype):
    """reserve and workspace of exactly <cell>_reserve_size / _workspace_size elements suffice:
    guard elements past their ends survive a training forward, an inference forward and a
    backward (each cell's _layout is the one place that sizes and offsets come from)."""
    x, states, w, dy, dstates = _case(cell, dtype, False, seed=3)
    kind = cell.split("_")[0]
    relu = cell == "rnn_relu"
    guard, pad = dtype(-7.25), 64
    n_reserve, n_work = ext.sizes(kind, T, B, I, H)
    reserve_buf = np.full(n_reserve + pad, guard, dtype)
    work_buf = np.full(n_work + pad, guard, dtype)
    reserve, work = reserve_buf[:n_reserve], work_buf[:n_work]
    y, h_n, c_n = np.empty((T, B, H), dtype), np.empty((B, H), dtype), np.empty((B, H), dtype)
    flat_w = [_flat(a) for a in w.values()]
    h0, c0 = _flat(states["h0"]), _flat(states.get("c0"))
    bs = np.array([3, 3, 2, 2, 1], np.intc)
    args = (kind, T, B, I, H, _flat(x), h0, c0, *flat_w, bs)
    outs = (y.ravel(), h_n.ravel(), c_n.ravel())
    assert ext.forward(*args, *outs, reserve if n_reserve else None, work, relu, 2) == 0
    grads = [np.empty(s, dtype) for s in ((T, B, I), (B, H), (B, H), w["w_ih"].shape)]
    grads += [np.empty(w["w_hh"].shape, dtype), np.empty(G[cell] * H, dtype)]
    grads.append(np.empty(G[cell] * H, dtype))
    rc = ext.backward(
        kind, T, B, I, H, _flat(x), h0, c0, *flat_w[:2], bs, y.ravel(),
        reserve if n_reserve else None, dy.ravel(), _flat(dstates["h0"]),
        _flat(dstates.get("c0")), *[g.ravel() for g in grads], work, relu, 2,
    )  # fmt: skip
    assert rc == 0
    assert ext.forward(*args, *outs, None, work, relu, 2) == 0  # inference: workspace only
    assert (reserve_buf[n_reserve:] == guard).all(), "the reserve overflowed"
    assert (work_buf[n_work:] == guard).all(), "the workspace overflowed"
