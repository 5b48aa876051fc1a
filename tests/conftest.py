"""Shared helpers for the functional-API tests.

One table, ``SPECS``, describes every cell variant (RNN tanh, RNN relu, LSTM, GRU) in a uniform
way, so that each property (finite differences, Cython vs reference, strides, step-by-step, lengths,
PyTorch parity, validation) is written once and parametrized over cells and backends.

The table is read from the cell registry (``fastrnn.cells``): a variant added there is tested
here. Backends are named as the layers name them (DESIGN.md): ``"cython"`` is
``fastrnn.functional`` and ``"numpy"`` is ``fastrnn.reference``. Importing the registry imports
fastrnn, so an unbuilt tree fails at collection with fastrnn's message saying what to run.

``numeric_grad`` is the one central-difference helper of the whole suite (the functional API,
the stack, the nn blocks, attention, seq2seq and the losses all use it).

Sizes follow the kernels' legend T, B, H, G, except that the input size is called ``D`` in code
(ruff's E741 rejects the name ``I``).
"""

from __future__ import annotations

import importlib
import os
import sysconfig
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import numpy as np
import pytest

import fastrnn
from fastrnn.cells import BACKENDS as _BACKEND_MODULES
from fastrnn.cells import CELLS

#: ``FASTRNN_TEST_INSTALLED=1`` (set by .ci/wheel): this suite runs from a copy of tests/ against
#: fastrnn installed from the wheel, with no source tree beside it. The few tests that need the
#: source tree (``needs_source_tree``) then skip, saying so; everything else runs.
INSTALLED = os.environ.get("FASTRNN_TEST_INSTALLED", "0") == "1"
needs_source_tree = pytest.mark.skipif(
    INSTALLED, reason="needs fastrnn's source tree; this run tests the installed wheel"
)
if INSTALLED:
    _site = {os.path.realpath(sysconfig.get_paths()[k]) for k in ("purelib", "platlib")}
    _here = os.path.realpath(os.path.dirname(os.path.dirname(fastrnn.__file__)))
    if _here not in _site:
        raise pytest.UsageError(
            f"FASTRNN_TEST_INSTALLED=1 but fastrnn was imported from {fastrnn.__file__}, not "
            f"from site-packages ({', '.join(sorted(_site))}): run pytest from a directory "
            "without the checkout's fastrnn/"
        )

BACKENDS = tuple(_BACKEND_MODULES)
DTYPES = (np.float32, np.float64)

# Tolerances for comparing two implementations computing in the same dtype (Cython vs reference,
# fastrnn vs PyTorch). float64: both paths are exact up to summation order, so only a few ulps per
# operation, amplified by at most T steps on the tiny shapes used here. float32: unit roundoff
# 6e-8; values and gradients are O(1)..O(10) and accumulate over at most ~7 steps, which stays well
# under 1e-5.
TOL = {
    np.float32: {"rtol": 1e-5, "atol": 1e-5},
    np.float64: {"rtol": 1e-10, "atol": 1e-12},
}

# Tolerance for central differences in float64 (eps=1e-6): truncation error ~eps**2 ~ 1e-12 and
# roundoff ~1e-16 * |loss| / eps ~ 1e-9, so 1e-7 absolute is a comfortable but still strict bound.
FD_EPS = 1e-6
FD_TOL = {"rtol": 1e-6, "atol": 1e-7}


def backend_module(backend: str):
    """Return ``fastrnn.functional`` for ``"cython"`` and ``fastrnn.reference`` for ``"numpy"``."""
    return importlib.import_module(_BACKEND_MODULES[backend])


class Forward(NamedTuple):
    """Uniform forward result: ``c_n`` is None for the cells without a cell state."""

    y: np.ndarray
    h_n: np.ndarray
    c_n: np.ndarray | None
    cache: Any


@dataclass(frozen=True)
class CellSpec:
    """One cell variant of the functional API.

    Attributes
    ----------
    name : str
        Test id (``rnn_tanh``, ``rnn_relu``, ``lstm``, ``gru``).
    cell : str
        Function-name prefix in the functional modules (``rnn``, ``lstm``, ``gru``).
    G : int
        Number of gates: the weights have ``G * H`` rows.
    has_c : bool
        Whether the cell carries a cell state (LSTM): ``c0`` / ``c_n`` / ``dc_n`` / ``dc0``.
    kwargs : dict
        Extra keyword arguments of the forward call (``nonlinearity`` for the Elman RNN).
    """

    name: str
    cell: str
    G: int
    has_c: bool = False
    kwargs: dict = field(default_factory=dict)

    # -- raw functions -------------------------------------------------------------------------
    def forward_fn(self, backend: str):
        return getattr(backend_module(backend), f"{self.cell}_forward")

    def backward_fn(self, backend: str):
        return getattr(backend_module(backend), f"{self.cell}_backward")

    # -- uniform calls -------------------------------------------------------------------------
    def forward(self, backend, x, h0, c0, w_ih, w_hh, b_ih=None, b_hh=None, **kw) -> Forward:
        """Call ``<cell>_forward`` with the cell's own signature; return a ``Forward``."""
        fn = self.forward_fn(backend)
        kw = {**self.kwargs, **kw}
        if self.has_c:
            y, h_n, c_n, cache = fn(x, h0, c0, w_ih, w_hh, b_ih, b_hh, **kw)
        else:
            y, h_n, cache = fn(x, h0, w_ih, w_hh, b_ih, b_hh, **kw)
            c_n = None
        return Forward(y, h_n, c_n, cache)

    def backward(self, backend, cache, dy, dh_n=None, dc_n=None):
        fn = self.backward_fn(backend)
        if self.has_c:
            return fn(cache, dy, dh_n, dc_n)
        return fn(cache, dy, dh_n)

    def forward_case(self, backend: str, case: Case, **kw) -> Forward:
        return self.forward(
            backend,
            case.x,
            case.h0,
            case.c0,
            case.w_ih,
            case.w_hh,
            case.b_ih,
            case.b_hh,
            lengths=case.lengths,
            **kw,
        )

    def backward_case(self, backend: str, cache, case: Case):
        return self.backward(backend, cache, case.dy, case.dh_n, case.dc_n)

    # -- names ---------------------------------------------------------------------------------
    def input_names(self, bias: bool = True) -> tuple[str, ...]:
        """Differentiable inputs, in the order of the grads' fields."""
        names = ["x", "h0"] + (["c0"] if self.has_c else []) + ["w_ih", "w_hh"]
        if bias:
            names += ["b_ih", "b_hh"]
        return tuple(names)

    def grad_names(self) -> tuple[str, ...]:
        """Every field of the backward result (bias grads are None for a bias-free call)."""
        return tuple("d" + n for n in self.input_names(bias=True))

    def output_names(self) -> tuple[str, ...]:
        return ("y", "h_n", "c_n") if self.has_c else ("y", "h_n")

    def upstream_names(self) -> tuple[str, ...]:
        return ("dy", "dh_n", "dc_n") if self.has_c else ("dy", "dh_n")

    def torch_module(self, torch, D, H, bias, dtype):
        """The 1-layer ``torch.nn`` module of this cell."""
        tdtype = torch.float64 if dtype == np.float64 else torch.float32
        cls = getattr(torch.nn, CELLS[self.cell].title)
        return cls(D, H, num_layers=1, bias=bias, dtype=tdtype, **self.kwargs)


# Every variant of every cell in the registry (fastrnn/cells.py), as a CellSpec.
SPECS = tuple(
    CellSpec(variant, cell.name, cell.G, has_c="c" in cell.states, kwargs=dict(options))
    for cell in CELLS.values()
    for variant, options in cell.variants.items()
)
SPEC_BY_NAME = {s.name: s for s in SPECS}
# One spec per cell kind, its first variant (the cache of rnn_tanh and rnn_relu belong to the
# same cell).
CELL_SPECS = tuple(next(s for s in SPECS if s.cell == name) for name in CELLS)


@dataclass
class Case:
    """Every array of one forward + backward call: inputs, weights and upstream gradients."""

    x: np.ndarray
    h0: np.ndarray | None
    c0: np.ndarray | None
    w_ih: np.ndarray
    w_hh: np.ndarray
    b_ih: np.ndarray | None
    b_hh: np.ndarray | None
    lengths: np.ndarray | None
    dy: np.ndarray | None
    dh_n: np.ndarray | None
    dc_n: np.ndarray | None

    def replace(self, **kw) -> Case:
        return replace(self, **kw)

    def astype(self, dtype) -> Case:
        """A copy with every float array converted (``lengths`` kept)."""
        kw = {}
        for name in ("x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh", "dy", "dh_n", "dc_n"):
            a = getattr(self, name)
            kw[name] = None if a is None else a.astype(dtype)
        return self.replace(**kw)

    def map_arrays(self, fn, names=None) -> Case:
        """Apply ``fn`` to each non-None array among ``names`` (default: all, lengths included)."""
        names = names or (
            "x",
            "h0",
            "c0",
            "w_ih",
            "w_hh",
            "b_ih",
            "b_hh",
            "lengths",
            "dy",
            "dh_n",
            "dc_n",
        )
        return self.replace(
            **{n: None if getattr(self, n) is None else fn(getattr(self, n)) for n in names}
        )


def awake_team(monkeypatch) -> None:
    """Make fastrnn.functional's thread rules (``_step_team``, ``_rows_team``) see libgomp's
    default policy and a burst as long as the test: every call after the first finds the team
    awake, however slow the machine."""
    from fastrnn import functional

    monkeypatch.setattr(functional, "_TEAM_SPINS", False)
    monkeypatch.setattr(functional, "_TEAM_SLEEPS", False)
    monkeypatch.setattr(functional, "_BURST_S", 60.0)


def record_calls(monkeypatch, module, name: str) -> list:
    """Wrap ``module.name`` so that each call's result is appended to the returned list."""
    seen: list = []
    real = getattr(module, name)

    def wrapper(*args):
        seen.append(real(*args))
        return seen[-1]

    monkeypatch.setattr(module, name, wrapper)
    return seen


def make_weights(rng, G, D, H, dtype=np.float64, bias=True):
    """PyTorch's default init: every weight and bias ~ U(-1/sqrt(H), 1/sqrt(H))."""
    k = 1.0 / np.sqrt(H)

    def u(*shape):
        return rng.uniform(-k, k, size=shape).astype(dtype)

    w_ih, w_hh = u(G * H, D), u(G * H, H)
    b_ih, b_hh = (u(G * H), u(G * H)) if bias else (None, None)
    return w_ih, w_hh, b_ih, b_hh


def make_lengths(rng, T, B, *, full=True):
    """Random lengths in [1, T], in no particular order; with ``full`` one of them equals T."""
    lengths = rng.integers(1, T + 1, size=B)
    if full and B > 0:
        lengths[rng.integers(B)] = T
    return lengths.astype(np.int64)


def make_case(
    spec: CellSpec,
    rng,
    T,
    B,
    D,
    H,
    dtype=np.float64,
    *,
    bias=True,
    lengths=None,
    states=True,
    upstream=True,
) -> Case:
    """Random inputs for ``spec``. ``lengths``: None, an array, or ``"random"``."""
    w_ih, w_hh, b_ih, b_hh = make_weights(rng, spec.G, D, H, dtype, bias)

    def n(*shape, scale=1.0):
        return (scale * rng.standard_normal(shape)).astype(dtype)

    if isinstance(lengths, str):
        lengths = make_lengths(rng, T, B)
    return Case(
        x=n(T, B, D),
        h0=n(B, H, scale=0.5) if states else None,
        c0=n(B, H) if (states and spec.has_c) else None,
        w_ih=w_ih,
        w_hh=w_hh,
        b_ih=b_ih,
        b_hh=b_hh,
        lengths=lengths,
        dy=n(T, B, H) if upstream else None,
        dh_n=n(B, H) if upstream else None,
        dc_n=n(B, H) if (upstream and spec.has_c) else None,
    )


def make_layer_norm(spec: CellSpec, rng, H, dtype=np.float64) -> dict:
    """Layer-norm operands of ``spec`` (LSTM or GRU) as functional keywords: gains near 1 (and,
    for the LSTM's cell, a bias near 0), so that a wrong gain or bias shows in every output."""
    G = spec.G * H
    ln = {
        "ln_ih": 1 + 0.2 * rng.standard_normal(G),
        "ln_hh": 1 + 0.2 * rng.standard_normal(G),
    }
    if spec.has_c:
        ln["ln_c"] = 1 + 0.2 * rng.standard_normal(H)
        ln["ln_c_bias"] = 0.2 * rng.standard_normal(H)
    return {k: v.astype(dtype) for k, v in ln.items()}


def extra_numerical_grads(
    spec: CellSpec, backend: str, case: Case, extra: dict, eps=FD_EPS, **kw
) -> dict:
    """Central differences of ``weighted_loss`` w.r.t. every input of ``case`` and every array
    of ``extra`` (keyword operands such as layer-norm gains), keyed as the grads' fields."""

    def loss(c, e):
        return weighted_loss(spec.forward_case(backend, c, training=False, **e, **kw), case)

    grads = {}
    names = [(n, False) for n in spec.input_names(bias=case.b_ih is not None)]
    names += [(n, True) for n in extra]
    for name, is_extra in names:
        base = extra[name] if is_extra else getattr(case, name)
        g = np.zeros_like(base, dtype=np.float64)
        for idx in np.ndindex(base.shape):
            vals = []
            for sign in (1.0, -1.0):
                a = base.copy()
                a[idx] += sign * eps
                if is_extra:
                    vals.append(loss(case, {**extra, name: a}))
                else:
                    vals.append(loss(case.replace(**{name: a}), extra))
            g[idx] = (vals[0] - vals[1]) / (2 * eps)
        grads["d" + name] = g
    return grads


# --- layer normalization (LSTM and GRU; tests in test_lstm.py and test_gru.py) ----------------
# (T, B, D, H, lengths, reverse, bias): B = 1, H not a multiple of 16, lengths, reverse, no bias,
# and one size with more than one block of units.
LN_CASES = {
    "plain": (4, 3, 2, 5, None, False, True),
    "lengths_reverse": (5, 4, 3, 7, "random", True, True),
    "lengths": (6, 4, 3, 18, "random", False, True),
    "b1_nobias": (3, 1, 2, 20, None, False, False),
    "wide": (7, 5, 6, 70, "random", False, True),
}

# float64: TOL. float32: the float32 kernels against the float64 reference. A layer norm's
# backward subtracts row means from terms of the same size (dv = rstd (dvhat - mean(dvhat) -
# vhat mean(dvhat vhat))), so float32 gradients lose digits to cancellation: the reference's
# own float32 gradients differ from its float64 ones by up to ~4e-5 (relative to 1 + |g|) on
# these sizes, more than TOL's 1e-5, and the kernels' by no more.
LN_TOL = {np.float64: TOL[np.float64], np.float32: {"rtol": 1e-4, "atol": 1e-4}}


def check_layer_norm_matches_reference(spec: CellSpec, sizes, dtype, rng) -> None:
    """The Cython layer-norm forward and backward against the reference (float64 on the same
    values); the inference forward against the training forward, bit for bit."""
    T, B, D, H, lengths, reverse, bias = sizes
    case = make_case(spec, rng, T, B, D, H, dtype, bias=bias, lengths=lengths)
    ln = make_layer_norm(spec, rng, H, dtype)
    case64 = case.astype(np.float64)
    ln64 = {k: v.astype(np.float64) for k, v in ln.items()}
    ref = spec.forward_case("numpy", case64, reverse=reverse, **ln64)
    got = spec.forward_case("cython", case, reverse=reverse, **ln)
    assert_forward_close(spec, got, ref, **LN_TOL[dtype])
    g_ref = spec.backward_case("numpy", ref.cache, case64)
    g_got = spec.backward_case("cython", got.cache, case)
    assert g_got._fields == g_ref._fields
    for name in g_ref._fields:
        assert_close(getattr(g_got, name), getattr(g_ref, name), name, **LN_TOL[dtype])
    inf = spec.forward_case("cython", case, reverse=reverse, training=False, **ln)
    assert inf.cache is None
    for name in spec.output_names():
        np.testing.assert_array_equal(getattr(inf, name), getattr(got, name), err_msg=name)


def check_layer_norm_finite_differences(spec: CellSpec, reverse: bool, rng) -> None:
    """Every gradient of the Cython layer-norm cell against float64 central differences."""
    case = make_case(spec, rng, 4, 3, 2, 5, lengths=np.array([4, 2, 3]))
    ln = make_layer_norm(spec, rng, 5)
    fwd = spec.forward_case("cython", case, reverse=reverse, **ln)
    grads = spec.backward_case("cython", fwd.cache, case)
    num = extra_numerical_grads(spec, "cython", case, ln, reverse=reverse)
    assert set(num) == set(grads._fields)
    for name, g in num.items():
        assert_close(getattr(grads, name), g, name, **FD_TOL)


def check_layer_norm_threads_bitwise(spec: CellSpec, rng, isa: str) -> None:
    """One or two threads (batch rows and hidden units shared differently) give the same bits,
    on the instruction set ``isa`` (``"blas"``: every GEMM through BLAS)."""
    from fastrnn import _isa

    case = make_case(spec, rng, 9, 19, 8, 136, np.float32, lengths="random")
    ln = make_layer_norm(spec, rng, 136, np.float32)
    before, isa_before = fastrnn.get_num_threads(), _isa.get_isa()
    out = []
    try:
        _isa.set_isa(isa)
        for n in (1, 2):
            fastrnn.set_num_threads(n)
            fwd = spec.forward_case("cython", case, **ln)
            out.append((fwd, spec.backward_case("cython", fwd.cache, case)))
    finally:
        fastrnn.set_num_threads(before)
        _isa.set_isa(isa_before)
    (f1, g1), (f2, g2) = out
    for name in spec.output_names():
        np.testing.assert_array_equal(getattr(f1, name), getattr(f2, name), err_msg=name)
    for name in g1._fields:
        np.testing.assert_array_equal(getattr(g1, name), getattr(g2, name), err_msg=name)


def check_layer_norm_empty(spec: CellSpec, rng) -> None:
    """T == 0: the initial states pass through and every layer-norm gradient is zero."""
    case = make_case(spec, rng, 0, 2, 3, 4)
    ln = make_layer_norm(spec, rng, 4)
    fwd = spec.forward_case("cython", case, **ln)
    np.testing.assert_array_equal(fwd.h_n, case.h0)
    g = spec.backward_case("cython", fwd.cache, case)
    for name, v in ln.items():
        np.testing.assert_array_equal(getattr(g, "d" + name), np.zeros_like(v))


def weighted_loss(fwd: Forward, case: Case) -> float:
    """``sum(y*dy) + sum(h_n*dh_n) (+ sum(c_n*dc_n))``: its gradient is backward(dy, dh_n, dc_n)."""
    loss = np.sum(fwd.y * case.dy) + np.sum(fwd.h_n * case.dh_n)
    if fwd.c_n is not None:
        loss += np.sum(fwd.c_n * case.dc_n)
    return float(loss)


def numeric_grad(f, a: np.ndarray, eps: float = FD_EPS, indices=None) -> np.ndarray:
    """Central differences ``(f(a + eps) - f(a - eps)) / (2 eps)``, one entry of ``a`` at a time.

    Parameters
    ----------
    f : callable
        ``f() -> float``, reading ``a`` (directly or through a parameter, layer or case that
        holds it).
    a : ndarray
        The array differentiated against. Each entry is perturbed in place and restored, so
        ``a`` holds its original values when this returns (and if ``f`` raises).
    eps : float
        The step.
    indices : iterable of tuple of int, optional
        The entries to differentiate against (default: every entry of ``a``).

    Returns
    -------
    ndarray of dtype float64
        Of ``a.shape`` when ``indices`` is None, else of shape ``(len(indices),)`` in their order.
    """
    if indices is None:
        out = np.zeros(a.shape, dtype=np.float64)
        indices = list(np.ndindex(a.shape))
        keys = indices
    else:
        indices = [tuple(i) for i in indices]
        out = np.zeros(len(indices), dtype=np.float64)
        keys = range(len(indices))
    for key, idx in zip(keys, indices, strict=True):
        old = a[idx]
        try:
            a[idx] = old + eps
            f_plus = f()
            a[idx] = old - eps
            f_minus = f()
        finally:
            a[idx] = old
        out[key] = (f_plus - f_minus) / (2 * eps)
    return out


def numerical_grads(spec: CellSpec, backend: str, case: Case, eps=FD_EPS) -> dict:
    """Central differences of ``weighted_loss`` w.r.t. every differentiable input of ``case``."""

    def loss() -> float:
        return weighted_loss(spec.forward_case(backend, case, training=False), case)

    names = spec.input_names(bias=case.b_ih is not None)
    return {"d" + n: numeric_grad(loss, getattr(case, n), eps) for n in names}


def assert_close(actual, desired, name, **tol):
    """``assert_allclose`` that also checks shape and tolerates matching Nones."""
    if desired is None:
        assert actual is None, f"{name}: expected None, got {type(actual).__name__}"
        return
    assert actual is not None, f"{name}: got None"
    actual = np.asarray(actual)
    assert actual.shape == np.shape(desired), f"{name}: shape {actual.shape} != {np.shape(desired)}"
    np.testing.assert_allclose(actual, desired, err_msg=name, **tol)


def assert_forward_close(spec: CellSpec, a: Forward, b: Forward, **tol):
    for name in spec.output_names():
        assert_close(getattr(a, name), getattr(b, name), name, **tol)


def assert_grads_close(spec: CellSpec, a, b, **tol):
    """Compare two backward results field by field (``b`` may be a NamedTuple or a dict)."""
    for name in spec.grad_names():
        desired = b[name] if isinstance(b, dict) else getattr(b, name)
        assert_close(getattr(a, name), desired, name, **tol)


# -- fixtures (session-scoped so that hypothesis tests can use them) -------------------------------
@pytest.fixture(params=SPECS, ids=[s.name for s in SPECS], scope="session")
def spec(request) -> CellSpec:
    return request.param


@pytest.fixture(params=BACKENDS, scope="session")
def backend(request) -> str:
    return request.param


@pytest.fixture(params=DTYPES, ids=["float32", "float64"], scope="session")
def dtype(request):
    return request.param


@pytest.fixture
def rng():
    return np.random.default_rng(12345)
