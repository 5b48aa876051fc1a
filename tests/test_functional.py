"""Properties of the functional API, for every cell and both backends.

``fastrnn.functional`` (Cython) and ``fastrnn.reference`` (NumPy) expose the same six functions;
every test here is parametrized over the cell variants of ``conftest.SPECS`` (RNN tanh/relu, LSTM,
GRU) and, where it applies, over the backend and dtype. The oracles are those of STYLE.md point 9:

* central finite differences in float64 of every gradient (both backends);
* the NumPy reference (Cython vs reference on a grid of small shapes, and fuzzed with hypothesis);
* step-by-step vs whole-sequence equivalence, and per-sequence vs variable-length batch;
* PyTorch lives in ``test_functional_torch.py``.
"""

import numpy as np
import pytest
from conftest import (
    DTYPES,
    FD_TOL,
    SPECS,
    TOL,
    assert_close,
    assert_forward_close,
    assert_grads_close,
    make_case,
    numerical_grads,
)
from hypothesis import given, settings
from hypothesis import strategies as st

# -------------------------------------------------------------------------------------------------
# (a) finite differences: every gradient, both backends, with/without bias and lengths
# -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
def test_gradients_match_finite_differences(spec, backend, bias, with_lengths, rng):
    T, B, D, H = 3, 3, 2, 2
    lengths = np.array([3, 1, 2]) if with_lengths else None
    case = make_case(spec, rng, T, B, D, H, np.float64, bias=bias, lengths=lengths)
    fwd = spec.forward_case(backend, case)
    grads = spec.backward_case(backend, fwd.cache, case)
    expected = numerical_grads(spec, backend, case)
    if not bias:
        expected["db_ih"] = expected["db_hh"] = None
    assert_grads_close(spec, grads, expected, **FD_TOL)


def test_gradients_match_finite_differences_default_states(spec, backend, rng):
    """h0 = c0 = None: the forward runs from zeros and dh0 (dc0) still come back."""
    case = make_case(spec, rng, 2, 2, 2, 3, np.float64)
    zeros = case.replace(h0=np.zeros((2, 3)), c0=np.zeros((2, 3)) if spec.has_c else None)
    fwd = spec.forward_case(backend, case.replace(h0=None, c0=None))
    grads = spec.backward_case(backend, fwd.cache, case)
    assert_grads_close(spec, grads, numerical_grads(spec, backend, zeros), **FD_TOL)


# -------------------------------------------------------------------------------------------------
# (b) Cython vs reference on a grid of small shapes
# -------------------------------------------------------------------------------------------------

# D is the input size (I in the kernels' legend; ruff E741 rejects the name I).
GRID = [(T, B, D, H) for T in (1, 3, 7) for B in (1, 2, 5) for D in (1, 3) for H in (1, 4, 7)]


def _check_cython_vs_reference(spec, case, dtype):
    tol = TOL[dtype]
    f_cy = spec.forward_case("cython", case)
    f_np = spec.forward_case("numpy", case)
    for name in spec.output_names():
        assert getattr(f_cy, name).dtype == dtype, name
        assert getattr(f_np, name).dtype == dtype, name
    assert_forward_close(spec, f_cy, f_np, **tol)
    g_cy = spec.backward_case("cython", f_cy.cache, case)
    g_np = spec.backward_case("numpy", f_np.cache, case)
    for name in spec.grad_names():
        g = getattr(g_cy, name)
        if g is not None:
            assert g.dtype == dtype, name
    assert_grads_close(spec, g_cy, g_np, **tol)


@pytest.mark.parametrize("variant", ["bias", "nobias", "lengths"])
@pytest.mark.parametrize("T,B,D,H", GRID, ids=[f"T{T}B{B}I{D}H{H}" for T, B, D, H in GRID])
def test_cython_matches_reference(spec, dtype, T, B, D, H, variant):
    rng = np.random.default_rng([T, B, D, H])
    lengths = "random" if variant == "lengths" else None
    case = make_case(spec, rng, T, B, D, H, dtype, bias=variant != "nobias", lengths=lengths)
    _check_cython_vs_reference(spec, case, dtype)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("H", [17, 23, 37, 100])
def test_gate_pass_tails_match_reference(spec, dtype, H, threads):
    """Hidden sizes past a multiple of 16: the gate passes run their last H % 16 units (of the
    last thread's slice) on padded copies; forward and backward as the reference's, with and
    without lengths, on 1 and 2 threads."""
    import fastrnn

    before = fastrnn.get_num_threads()
    try:
        fastrnn.set_num_threads(threads)
        for lengths in (None, "random"):
            rng = np.random.default_rng([H, threads])
            case = make_case(spec, rng, 4, 3, 5, H, dtype, lengths=lengths)
            _check_cython_vs_reference(spec, case, dtype)
    finally:
        fastrnn.set_num_threads(before)


# -------------------------------------------------------------------------------------------------
# (c) fuzzing shapes, lengths, optional arguments
# -------------------------------------------------------------------------------------------------


@st.composite
def _fuzz_cases(draw, spec):
    T = draw(st.integers(1, 6))
    B = draw(st.integers(1, 5))
    D = draw(st.integers(1, 5))
    H = draw(st.integers(1, 6))
    dtype = draw(st.sampled_from(DTYPES))
    bias = draw(st.booleans())
    lengths = draw(st.none() | st.lists(st.integers(1, T), min_size=B, max_size=B))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    case = make_case(
        spec,
        rng,
        T,
        B,
        D,
        H,
        dtype,
        bias=bias,
        lengths=None if lengths is None else np.array(lengths, dtype=np.int64),
    )
    if draw(st.booleans()):
        case = case.replace(h0=None, c0=None)
    if draw(st.booleans()):
        case = case.replace(dy=None)
    if draw(st.booleans()):
        case = case.replace(dh_n=None, dc_n=None)
    return case, dtype


@pytest.mark.parametrize("spec_name", [s.name for s in SPECS])
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_fuzz_cython_matches_reference(spec_name, data):
    spec = next(s for s in SPECS if s.name == spec_name)
    case, dtype = data.draw(_fuzz_cases(spec))
    _check_cython_vs_reference(spec, case, dtype)


# -------------------------------------------------------------------------------------------------
# (d) memory layouts: Fortran order, strides, negative strides, read-only buffers
# -------------------------------------------------------------------------------------------------


def _relayout(a, layout):
    """Same values as ``a`` in another memory layout."""
    if layout == "fortran":
        return np.asfortranarray(a)
    if layout == "strided":
        # Every other element of a larger buffer whose gaps hold garbage (NaN / -7), so that
        # reading past a stride shows up in the result.
        fill = -7 if a.dtype.kind in "iu" else np.nan
        big = np.full(tuple(2 * s for s in a.shape), fill, dtype=a.dtype)
        view = big[tuple(slice(None, None, 2) for _ in a.shape)]
        view[...] = a
        return view
    if layout == "negative":
        return np.flip(np.flip(a).copy())
    if layout == "readonly":
        b = a.copy()
        b.flags.writeable = False
        return b
    raise AssertionError(layout)


@pytest.mark.parametrize("layout", ["fortran", "strided", "negative", "readonly"])
def test_layouts_match_contiguous(spec, backend, dtype, layout, rng):
    case = make_case(spec, rng, 4, 3, 3, 5, dtype, lengths=np.array([2, 4, 1]))
    odd = case.map_arrays(lambda a: _relayout(a, layout))
    if layout in ("strided", "negative"):
        assert not odd.x.flags.c_contiguous and not odd.w_ih.flags.c_contiguous
    elif layout == "fortran":
        assert not odd.x.flags.c_contiguous and odd.x.flags.f_contiguous
    tol = TOL[dtype]
    f_ref = spec.forward_case(backend, case)
    f_odd = spec.forward_case(backend, odd)
    assert_forward_close(spec, f_odd, f_ref, **tol)
    g_ref = spec.backward_case(backend, f_ref.cache, case)
    g_odd = spec.backward_case(backend, f_odd.cache, odd)
    assert_grads_close(spec, g_odd, g_ref, **tol)


# -------------------------------------------------------------------------------------------------
# (e) step-by-step (T calls of length 1 carrying the state) equals the whole sequence
# -------------------------------------------------------------------------------------------------


def test_step_by_step_matches_sequence(spec, backend, dtype, rng):
    T, B, D, H = 5, 3, 2, 4
    case = make_case(spec, rng, T, B, D, H, dtype)
    full = spec.forward_case(backend, case)
    g_full = spec.backward_case(backend, full.cache, case)

    h, c = case.h0, case.c0
    ys, caches = [], []
    for t in range(T):
        f = spec.forward(
            backend, case.x[t : t + 1], h, c, case.w_ih, case.w_hh, case.b_ih, case.b_hh
        )
        ys.append(f.y)
        caches.append(f.cache)
        h, c = f.h_n, f.c_n
    tol = TOL[dtype]
    assert_close(np.concatenate(ys), full.y, "y", **tol)
    assert_close(h, full.h_n, "h_n", **tol)
    if spec.has_c:
        assert_close(c, full.c_n, "c_n", **tol)

    # BPTT by hand: the state gradient flows from step t+1's dh0 (dc0) into step t's dh_n (dc_n).
    dh, dc = case.dh_n, case.dc_n
    dx = np.empty_like(case.x)
    sums = dict.fromkeys(("dw_ih", "dw_hh", "db_ih", "db_hh"), 0.0)
    for t in reversed(range(T)):
        g = spec.backward(backend, caches[t], case.dy[t : t + 1], dh, dc)
        dx[t] = g.dx[0]
        dh = g.dh0
        dc = g.dc0 if spec.has_c else None
        for name in sums:
            sums[name] = sums[name] + getattr(g, name)
    expected = {"dx": dx, "dh0": dh, **sums}
    if spec.has_c:
        expected["dc0"] = dc
    assert_grads_close(spec, g_full, expected, **tol)


# -------------------------------------------------------------------------------------------------
# (f) lengths: each sequence alone equals its slice of the variable-length batch
# -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "lengths",
    [[3, 1, 5, 2], [5, 5, 5, 5], [1, 1, 1, 1], [2, 5, 5, 1]],
    ids=["mixed", "full", "ones", "unsorted"],
)
def test_lengths_match_individual_sequences(spec, backend, dtype, lengths, rng):
    T, B, D, H = 5, 4, 3, 4
    lengths = np.array(lengths)
    case = make_case(spec, rng, T, B, D, H, dtype, lengths=lengths)
    fwd = spec.forward_case(backend, case)
    grads = spec.backward_case(backend, fwd.cache, case)
    tol = TOL[dtype]
    sums = dict.fromkeys(("dw_ih", "dw_hh", "db_ih", "db_hh"), 0.0)

    def row(a, b):
        return None if a is None else np.ascontiguousarray(a[b : b + 1])

    for b, L in enumerate(lengths):
        one = case.replace(
            x=np.ascontiguousarray(case.x[:L, b : b + 1]),
            h0=row(case.h0, b),
            c0=row(case.c0, b),
            lengths=None,
            dy=np.ascontiguousarray(case.dy[:L, b : b + 1]),
            dh_n=row(case.dh_n, b),
            dc_n=row(case.dc_n, b),
        )
        f1 = spec.forward_case(backend, one)
        g1 = spec.backward_case(backend, f1.cache, one)
        assert_close(fwd.y[:L, b], f1.y[:, 0], f"y[:{L}, {b}]", **tol)
        np.testing.assert_array_equal(fwd.y[L:, b], 0, err_msg=f"padded y[{L}:, {b}]")
        assert_close(fwd.h_n[b], f1.h_n[0], f"h_n[{b}]", **tol)
        assert_close(grads.dx[:L, b], g1.dx[:, 0], f"dx[:{L}, {b}]", **tol)
        np.testing.assert_array_equal(grads.dx[L:, b], 0, err_msg=f"padded dx[{L}:, {b}]")
        assert_close(grads.dh0[b], g1.dh0[0], f"dh0[{b}]", **tol)
        if spec.has_c:
            assert_close(fwd.c_n[b], f1.c_n[0], f"c_n[{b}]", **tol)
            assert_close(grads.dc0[b], g1.dc0[0], f"dc0[{b}]", **tol)
        for name in sums:
            sums[name] = sums[name] + getattr(g1, name)
    for name, total in sums.items():
        assert_close(getattr(grads, name), total, name, **tol)


def test_full_lengths_equal_no_lengths(spec, backend, dtype, rng):
    T, B = 4, 3
    case = make_case(spec, rng, T, B, 2, 3, dtype)
    f0 = spec.forward_case(backend, case)
    g0 = spec.backward_case(backend, f0.cache, case)
    for lengths in (np.full(B, T, dtype=np.int64), np.full(B, T, dtype=np.int32)):
        with_l = case.replace(lengths=lengths)
        f1 = spec.forward_case(backend, with_l)
        assert_forward_close(spec, f1, f0, **TOL[dtype])
        assert_grads_close(spec, spec.backward_case(backend, f1.cache, with_l), g0, **TOL[dtype])


def test_lengths_int32_equals_int64(spec, backend, rng):
    case = make_case(spec, rng, 4, 3, 2, 3, lengths=np.array([2, 4, 1], dtype=np.int64))
    f64 = spec.forward_case(backend, case)
    case32 = case.replace(lengths=case.lengths.astype(np.int32))
    f32 = spec.forward_case(backend, case32)
    assert_forward_close(spec, f32, f64, rtol=0, atol=0)
    assert_grads_close(
        spec,
        spec.backward_case(backend, f32.cache, case32),
        spec.backward_case(backend, f64.cache, case),
        rtol=0,
        atol=0,
    )


# -------------------------------------------------------------------------------------------------
# (h) inference mode
# -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lengths", [None, [3, 1]], ids=["full", "lengths"])
def test_training_false_returns_no_cache_and_same_outputs(spec, backend, dtype, lengths, rng):
    case = make_case(
        spec, rng, 3, 2, 3, 4, dtype, lengths=None if lengths is None else np.array(lengths)
    )
    train = spec.forward_case(backend, case, training=True)
    infer = spec.forward_case(backend, case, training=False)
    assert train.cache is not None
    assert infer.cache is None
    for name in spec.output_names():
        np.testing.assert_array_equal(getattr(infer, name), getattr(train, name), err_msg=name)


# -------------------------------------------------------------------------------------------------
# Defaults, result types, dtype policy, zero sizes, purity
# -------------------------------------------------------------------------------------------------


def test_grads_namedtuple_fields_and_shapes(spec, backend, rng):
    case = make_case(spec, rng, 3, 2, 3, 4)
    fwd = spec.forward_case(backend, case)
    assert fwd.y.shape == (3, 2, 4)
    assert fwd.h_n.shape == (2, 4)
    if spec.has_c:
        assert fwd.c_n.shape == (2, 4)
    grads = spec.backward_case(backend, fwd.cache, case)
    assert isinstance(grads, tuple)
    assert grads._fields == spec.grad_names()
    for name in spec.grad_names():
        assert getattr(grads, name).shape == getattr(case, name[1:]).shape, name


def test_none_states_and_upstream_grads_mean_zeros(spec, backend, dtype, rng):
    T, B, H = 3, 2, 4
    case = make_case(spec, rng, T, B, 3, H, dtype)
    z = np.zeros((B, H), dtype=dtype)
    explicit = case.replace(h0=z, c0=z if spec.has_c else None)
    f_none = spec.forward_case(backend, case.replace(h0=None, c0=None))
    f_zero = spec.forward_case(backend, explicit)
    assert_forward_close(spec, f_none, f_zero, rtol=0, atol=0)
    for cut in ({"dy": None}, {"dh_n": None, "dc_n": None}):
        zeros = {
            k: (None if getattr(case, k) is None else np.zeros_like(getattr(case, k))) for k in cut
        }
        g_none = spec.backward_case(backend, f_zero.cache, case.replace(**cut))
        g_zero = spec.backward_case(backend, f_zero.cache, case.replace(**zeros))
        assert_grads_close(spec, g_none, g_zero, rtol=0, atol=0)


def test_bias_free_equals_zero_bias(spec, backend, dtype, rng):
    case = make_case(spec, rng, 3, 2, 3, 4, dtype, bias=False)
    G4 = case.w_ih.shape[0]
    zb = case.replace(b_ih=np.zeros(G4, dtype=dtype), b_hh=np.zeros(G4, dtype=dtype))
    f_nob = spec.forward_case(backend, case)
    f_zb = spec.forward_case(backend, zb)
    assert_forward_close(spec, f_nob, f_zb, **TOL[dtype])
    g_nob = spec.backward_case(backend, f_nob.cache, case)
    g_zb = spec.backward_case(backend, f_zb.cache, zb)
    assert g_nob.db_ih is None and g_nob.db_hh is None
    assert g_zb.db_ih is not None and g_zb.db_hh is not None
    for name in spec.grad_names()[:-2]:
        assert_close(getattr(g_nob, name), getattr(g_zb, name), name, **TOL[dtype])


def test_mixed_precision_computes_in_float64(spec, backend, rng):
    """Any float64 array among x and the weights makes the whole computation float64."""
    case = make_case(spec, rng, 3, 2, 3, 4, np.float64)
    x32 = case.x.astype(np.float32)
    w32 = case.w_ih.astype(np.float32)
    for mixed, exact in (
        (case.replace(x=x32), case.replace(x=x32.astype(np.float64))),
        (case.replace(w_ih=w32), case.replace(w_ih=w32.astype(np.float64))),
    ):
        got = spec.forward_case(backend, mixed)
        for name in spec.output_names():
            assert getattr(got, name).dtype == np.float64, name
        # float32 values are exact in float64, so this is the all-float64 result.
        assert_forward_close(spec, got, spec.forward_case(backend, exact), **TOL[np.float64])


@pytest.mark.parametrize("kind", ["float16", "int"])
def test_float16_and_int_inputs_are_converted_to_float32(spec, backend, kind, rng):
    case = make_case(spec, rng, 3, 2, 3, 4, np.float32)
    if kind == "float16":
        odd = case.astype(np.float16)
        as32 = odd.astype(np.float32)
    else:
        x_int = rng.integers(-2, 3, size=case.x.shape)
        odd = case.replace(x=x_int)
        as32 = case.replace(x=x_int.astype(np.float32))
    got = spec.forward_case(backend, odd)
    want = spec.forward_case(backend, as32)
    for name in spec.output_names():
        assert getattr(got, name).dtype == np.float32, name
    assert_forward_close(spec, got, want, **TOL[np.float32])


@pytest.mark.parametrize("T,B", [(0, 3), (4, 0), (0, 0)])
def test_zero_size(spec, backend, dtype, T, B, rng):
    D, H = 3, 2
    case = make_case(spec, rng, T, B, D, H, dtype)
    fwd = spec.forward_case(backend, case)
    assert fwd.y.shape == (T, B, H)
    assert_close(fwd.h_n, case.h0 if T == 0 else np.zeros((0, H)), "h_n", rtol=0, atol=0)
    if spec.has_c:
        assert_close(fwd.c_n, case.c0 if T == 0 else np.zeros((0, H)), "c_n", rtol=0, atol=0)
    f_none = spec.forward_case(backend, case.replace(h0=None, c0=None))
    assert f_none.y.shape == (T, B, H)
    np.testing.assert_array_equal(f_none.h_n, np.zeros((B, H)))

    grads = spec.backward_case(backend, fwd.cache, case)
    assert grads.dx.shape == (T, B, D)
    # No step: the state gradients pass straight through and nothing reaches the weights.
    assert_close(grads.dh0, case.dh_n if T == 0 else np.zeros((0, H)), "dh0", rtol=0, atol=0)
    if spec.has_c:
        assert_close(grads.dc0, case.dc_n if T == 0 else np.zeros((0, H)), "dc0", rtol=0, atol=0)
    for name in ("dw_ih", "dw_hh", "db_ih", "db_hh"):
        assert_close(
            getattr(grads, name), np.zeros_like(getattr(case, name[1:])), name, rtol=0, atol=0
        )


def test_inputs_not_mutated_and_backward_repeatable(spec, backend, rng):
    case = make_case(spec, rng, 4, 3, 2, 3, lengths=np.array([4, 2, 3]))
    before = case.map_arrays(np.copy)
    fwd = spec.forward_case(backend, case)
    g1 = spec.backward_case(backend, fwd.cache, case)
    g2 = spec.backward_case(backend, fwd.cache, case)
    assert_grads_close(spec, g2, g1, rtol=0, atol=0)
    for name in ("x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh", "lengths", "dy", "dh_n", "dc_n"):
        if getattr(case, name) is not None:
            np.testing.assert_array_equal(getattr(case, name), getattr(before, name), err_msg=name)
