"""fastrnn/_common.py: the validation of every functional forward and backward (both backends).

Every refused input is a Python exception that names the argument (matched as a whole word):
shapes and lengths raise ``ValueError``, unsupported dtypes ``TypeError``, a missing or foreign
cache either; where two arguments disagree and either may be blamed (say ``w_ih`` has more
columns than ``x`` has features), the pattern accepts both names and nothing else. Covered:

* ranks, mismatched sizes, complex/bool/object dtypes, bad ``lengths`` and bad caches;
* dtypes that are refused (strings, datetimes, extended precision, ragged lists, None) and the
  integer rule (converted only when every value is exact in the computation dtype);
* zero-size dimensions that have no answer (input_size or hidden_size 0, ``lengths`` with T=0);
* sizes the 32-bit BLAS cannot take (refused before any allocation) and allocations that cannot
  succeed (``MemoryError`` naming the operand, never a crash);
* ``check_finite=True`` (``ValueError`` naming the operand) and, without it, NaN and infinities
  that propagate exactly as in the reference and never vanish;
* zero-stride (broadcast) and read-only operands, which must work;
* a cache handed to the other backend's backward;
* a differential fuzz: for random shapes, dtypes, layouts and lengths, valid or not, the Cython
  path and the reference raise the same exception with the same message or agree numerically.

Damaged checkpoint files are refused in tests/test_checkpoint.py.
"""

import warnings

import numpy as np
import pytest
from conftest import (
    BACKENDS,
    CELL_SPECS,
    SPECS,
    TOL,
    assert_forward_close,
    assert_grads_close,
    make_case,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastrnn._common import BLAS_INT_MAX

T, B, D, H = 3, 2, 3, 4


def _case(spec, rng, dtype=np.float64, **kw):
    return make_case(spec, rng, T, B, D, H, dtype, **kw)


def _word(*names):
    return r"\b(" + "|".join(names) + r")\b"


def _huge(shape, dtype=np.float32):
    """A read-only, zero-stride array of any shape that takes no memory."""
    return np.broadcast_to(np.zeros((), dtype), shape)


def _operands(spec):
    names = ["x", "h0", "w_ih", "w_hh", "b_ih", "b_hh"]
    return names[:2] + (["c0"] if spec.has_c else []) + names[2:]


# -------------------------------------------------------------------------------------------------
# ranks, sizes, dtypes, lengths and caches
# -------------------------------------------------------------------------------------------------
def _z(*shape, dtype=np.float64):
    return np.zeros(shape, dtype=dtype)


# (id, cells it applies to or None for all, function (spec, case) -> case, exception, pattern)
FORWARD_BAD = [
    # -- ranks
    ("x_2d", None, lambda s, c: c.replace(x=c.x[0]), ValueError, _word("x")),
    ("x_4d", None, lambda s, c: c.replace(x=c.x[None]), ValueError, _word("x")),
    ("x_1d", None, lambda s, c: c.replace(x=c.x.ravel()), ValueError, _word("x")),
    ("w_ih_1d", None, lambda s, c: c.replace(w_ih=c.w_ih.ravel()), ValueError, _word("w_ih")),
    ("w_ih_3d", None, lambda s, c: c.replace(w_ih=c.w_ih[None]), ValueError, _word("w_ih")),
    ("w_hh_1d", None, lambda s, c: c.replace(w_hh=c.w_hh.ravel()), ValueError, _word("w_hh")),
    ("w_hh_3d", None, lambda s, c: c.replace(w_hh=c.w_hh[None]), ValueError, _word("w_hh")),
    ("b_ih_2d", None, lambda s, c: c.replace(b_ih=c.b_ih[None]), ValueError, _word("b_ih")),
    ("b_hh_2d", None, lambda s, c: c.replace(b_hh=c.b_hh[None]), ValueError, _word("b_hh")),
    ("h0_1d", None, lambda s, c: c.replace(h0=c.h0[0]), ValueError, _word("h0")),
    ("h0_4d", None, lambda s, c: c.replace(h0=c.h0[None, None]), ValueError, _word("h0")),
    ("c0_1d", ("lstm",), lambda s, c: c.replace(c0=c.c0[0]), ValueError, _word("c0")),
    # -- mismatched sizes
    (
        "x_input_size",
        None,
        lambda s, c: c.replace(x=_z(T, B, D + 1)),
        ValueError,
        _word("x", "w_ih"),
    ),
    (
        "w_ih_cols",
        None,
        lambda s, c: c.replace(w_ih=_z(s.G * H, D + 2)),
        ValueError,
        _word("x", "w_ih"),
    ),
    (
        "w_ih_rows",
        None,
        lambda s, c: c.replace(w_ih=_z(s.G * H + 1, D)),
        ValueError,
        _word("w_ih", "w_hh"),
    ),
    (
        "w_ih_rows_other_H",
        None,
        lambda s, c: c.replace(w_ih=_z(s.G * (H + 1), D)),
        ValueError,
        _word("w_ih", "w_hh"),
    ),
    (
        "w_hh_cols",
        None,
        lambda s, c: c.replace(w_hh=_z(s.G * H, H + 1)),
        ValueError,
        _word("w_ih", "w_hh"),
    ),
    (
        "w_hh_rows",
        None,
        lambda s, c: c.replace(w_hh=_z(s.G * H + 1, H)),
        ValueError,
        _word("w_ih", "w_hh"),
    ),
    (
        "w_hh_square_wrong_G",
        ("lstm", "gru"),
        lambda s, c: c.replace(w_ih=_z(H, D), w_hh=_z(H, H)),
        ValueError,
        _word("w_ih", "w_hh"),
    ),
    ("b_ih_len", None, lambda s, c: c.replace(b_ih=_z(s.G * H + 1)), ValueError, _word("b_ih")),
    ("b_hh_len", None, lambda s, c: c.replace(b_hh=_z(s.G * H - 1)), ValueError, _word("b_hh")),
    ("h0_batch", None, lambda s, c: c.replace(h0=_z(B + 1, H)), ValueError, _word("h0")),
    ("h0_hidden", None, lambda s, c: c.replace(h0=_z(B, H + 1)), ValueError, _word("h0")),
    ("h0_transposed", None, lambda s, c: c.replace(h0=_z(H, B)), ValueError, _word("h0")),
    ("c0_batch", ("lstm",), lambda s, c: c.replace(c0=_z(B + 1, H)), ValueError, _word("c0")),
    ("c0_hidden", ("lstm",), lambda s, c: c.replace(c0=_z(B, H - 1)), ValueError, _word("c0")),
    # -- dtypes
    ("x_complex", None, lambda s, c: c.replace(x=c.x.astype(np.complex128)), TypeError, _word("x")),
    ("x_bool", None, lambda s, c: c.replace(x=c.x > 0), TypeError, _word("x")),
    ("x_object", None, lambda s, c: c.replace(x=c.x.astype(object)), TypeError, _word("x")),
    (
        "w_ih_complex",
        None,
        lambda s, c: c.replace(w_ih=c.w_ih.astype(np.complex64)),
        TypeError,
        _word("w_ih"),
    ),
    ("w_hh_bool", None, lambda s, c: c.replace(w_hh=c.w_hh > 0), TypeError, _word("w_hh")),
    (
        "b_ih_complex",
        None,
        lambda s, c: c.replace(b_ih=c.b_ih.astype(np.complex128)),
        TypeError,
        _word("b_ih"),
    ),
    (
        "b_hh_object",
        None,
        lambda s, c: c.replace(b_hh=c.b_hh.astype(object)),
        TypeError,
        _word("b_hh"),
    ),
    (
        "h0_complex",
        None,
        lambda s, c: c.replace(h0=c.h0.astype(np.complex128)),
        TypeError,
        _word("h0"),
    ),
    ("h0_bool", None, lambda s, c: c.replace(h0=c.h0 > 0), TypeError, _word("h0")),
    (
        "c0_complex",
        ("lstm",),
        lambda s, c: c.replace(c0=c.c0.astype(np.complex128)),
        TypeError,
        _word("c0"),
    ),
]

BAD_LENGTHS = [
    ("zero", np.array([0, 2])),
    ("negative", np.array([-1, 2])),
    ("too_long", np.array([T + 1, 2])),
    ("too_many", np.array([1, 2, 3])),
    ("too_few", np.array([2])),
    ("2d", np.array([[1], [2]])),
    ("scalar", np.array(2)),
    ("float", np.array([1.5, 2.0])),
    ("float_integral", np.array([1.0, 2.0])),
    ("complex", np.array([1 + 0j, 2 + 0j])),
]


def _forward_params():
    for spec in SPECS:
        for name, cells, fn, exc, pattern in FORWARD_BAD:
            if cells is None or spec.cell in cells:
                yield pytest.param(spec, fn, exc, pattern, id=f"{spec.name}-{name}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("spec,bad,exc,pattern", list(_forward_params()))
def test_forward_rejects_bad_input(spec, backend, bad, exc, pattern, rng):
    case = bad(spec, _case(spec, rng))
    with pytest.raises(exc, match=pattern):
        spec.forward_case(backend, case)


@pytest.mark.parametrize("lengths", [v for _, v in BAD_LENGTHS], ids=[k for k, _ in BAD_LENGTHS])
def test_forward_rejects_bad_lengths(spec, backend, lengths, rng):
    case = _case(spec, rng).replace(lengths=lengths)
    with pytest.raises((ValueError, TypeError), match=_word("lengths")):
        spec.forward_case(backend, case)


@pytest.mark.parametrize("nonlinearity", ["sigmoid", "Tanh", "", None])
def test_rnn_rejects_bad_nonlinearity(backend, nonlinearity, rng):
    spec = SPECS[0]
    with pytest.raises(ValueError, match=_word("nonlinearity")):
        spec.forward_case(backend, _case(spec, rng), nonlinearity=nonlinearity)


# -- backward -------------------------------------------------------------------------------------


def test_backward_rejects_none_cache(spec, backend, rng):
    case = _case(spec, rng)
    fwd = spec.forward_case(backend, case, training=False)
    assert fwd.cache is None
    with pytest.raises((TypeError, ValueError), match=_word("cache")):
        spec.backward_case(backend, None, case)


@pytest.mark.parametrize("junk", [{}, (), "cache", 0], ids=["dict", "tuple", "str", "int"])
def test_backward_rejects_non_cache(spec, backend, junk, rng):
    with pytest.raises((TypeError, ValueError), match=_word("cache")):
        spec.backward_case(backend, junk, _case(spec, rng))


@pytest.mark.parametrize(
    "producer,consumer",
    [(p, c) for p in CELL_SPECS for c in CELL_SPECS if p is not c],
    ids=[
        f"{p.cell}_cache-to-{c.cell}_backward" for p in CELL_SPECS for c in CELL_SPECS if p is not c
    ],
)
def test_backward_rejects_cache_of_another_cell(producer, consumer, backend, rng):
    case = _case(producer, rng)
    cache = producer.forward_case(backend, case).cache
    upstream = _case(consumer, rng)
    with pytest.raises((TypeError, ValueError), match=_word("cache")):
        consumer.backward_case(backend, cache, upstream)


def _backward_bad():
    yield "dy_shape_H", lambda c: c.replace(dy=_z(T, B, H + 1)), ValueError, "dy"
    yield "dy_shape_T", lambda c: c.replace(dy=_z(T + 1, B, H)), ValueError, "dy"
    yield "dy_shape_B", lambda c: c.replace(dy=_z(T, B + 1, H)), ValueError, "dy"
    yield "dy_2d", lambda c: c.replace(dy=_z(T * B, H)), ValueError, "dy"
    yield "dy_complex", lambda c: c.replace(dy=c.dy.astype(np.complex128)), TypeError, "dy"
    yield "dy_bool", lambda c: c.replace(dy=c.dy > 0), TypeError, "dy"
    yield "dh_n_shape", lambda c: c.replace(dh_n=_z(B, H + 1)), ValueError, "dh_n"
    yield "dh_n_3d", lambda c: c.replace(dh_n=c.dh_n[None]), ValueError, "dh_n"
    yield "dh_n_complex", lambda c: c.replace(dh_n=c.dh_n.astype(np.complex64)), TypeError, "dh_n"


def _backward_params():
    for spec in SPECS:
        for name, fn, exc, arg in _backward_bad():
            yield pytest.param(spec, fn, exc, arg, id=f"{spec.name}-{name}")
    lstm = next(s for s in SPECS if s.has_c)
    for name, fn, exc in [
        ("dc_n_shape", lambda c: c.replace(dc_n=_z(B + 1, H)), ValueError),
        ("dc_n_1d", lambda c: c.replace(dc_n=c.dc_n[0]), ValueError),
        ("dc_n_complex", lambda c: c.replace(dc_n=c.dc_n.astype(np.complex128)), TypeError),
    ]:
        yield pytest.param(lstm, fn, exc, "dc_n", id=f"lstm-{name}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("spec,bad,exc,arg", list(_backward_params()))
def test_backward_rejects_bad_upstream_grads(spec, backend, bad, exc, arg, rng):
    case = _case(spec, rng)
    cache = spec.forward_case(backend, case).cache
    with pytest.raises(exc, match=_word(arg)):
        spec.backward_case(backend, cache, bad(case))


# -------------------------------------------------------------------------------------------------
# refused operands: (id, cells or None, case -> case, exception, argument names)
# -------------------------------------------------------------------------------------------------
def _set(name, fn):
    return lambda s, c: c.replace(**{name: fn(s, getattr(c, name))})


FORWARD_REFUSED = [
    # -- missing or not an array
    ("x_none", None, _set("x", lambda s, a: None), TypeError, ("x",)),
    ("w_ih_none", None, _set("w_ih", lambda s, a: None), TypeError, ("w_ih",)),
    ("w_hh_none", None, _set("w_hh", lambda s, a: None), TypeError, ("w_hh",)),
    ("x_scalar", None, _set("x", lambda s, a: 1.0), ValueError, ("x",)),
    ("x_ragged", None, _set("x", lambda s, a: [[[1.0, 2.0]], [[1.0]]]), ValueError, ("x",)),
    ("w_hh_ragged", None, _set("w_hh", lambda s, a: [[1.0], [1.0, 2.0]]), ValueError, ("w_hh",)),
    ("b_ih_only", None, _set("b_hh", lambda s, a: None), ValueError, ("b_ih", "b_hh")),
    ("b_hh_only", None, _set("b_ih", lambda s, a: None), ValueError, ("b_ih", "b_hh")),
    # -- dtypes that are never converted
    ("x_str", None, _set("x", lambda s, a: a.astype(str)), TypeError, ("x",)),
    ("x_bytes", None, _set("x", lambda s, a: a.astype("S8")), TypeError, ("x",)),
    ("x_datetime", None, _set("x", lambda s, a: a.astype("M8[s]")), TypeError, ("x",)),
    ("x_longdouble", None, _set("x", lambda s, a: a.astype(np.longdouble)), TypeError, ("x",)),
    (
        "w_ih_longdouble",
        None,
        _set("w_ih", lambda s, a: a.astype(np.longdouble)),
        TypeError,
        ("w_ih",),
    ),
    ("w_hh_object", None, _set("w_hh", lambda s, a: a.astype(object)), TypeError, ("w_hh",)),
    ("w_ih_bool", None, _set("w_ih", lambda s, a: a > 0), TypeError, ("w_ih",)),
    ("h0_timedelta", None, _set("h0", lambda s, a: a.astype("m8[s]")), TypeError, ("h0",)),
    ("h0_object", None, _set("h0", lambda s, a: a.astype(object)), TypeError, ("h0",)),
    ("b_ih_bool", None, _set("b_ih", lambda s, a: a > 0), TypeError, ("b_ih",)),
    ("b_hh_str", None, _set("b_hh", lambda s, a: a.astype(str)), TypeError, ("b_hh",)),
    ("c0_bool", ("lstm",), _set("c0", lambda s, a: a > 0), TypeError, ("c0",)),
    ("c0_object", ("lstm",), _set("c0", lambda s, a: a.astype(object)), TypeError, ("c0",)),
    # -- masked arrays: np.asarray would drop the mask silently
    ("x_masked", None, _set("x", lambda s, a: np.ma.masked_less(a, 0)), TypeError, ("x",)),
    ("h0_masked", None, _set("h0", lambda s, a: np.ma.masked_array(a)), TypeError, ("h0",)),
    # -- integers: converted only when exact in the computation dtype (float64 here)
    (
        "x_int_beyond_2_53",
        None,
        _set("x", lambda s, a: np.full(a.shape, 2**53 + 1, np.int64)),
        ValueError,
        ("x",),
    ),
    (
        "h0_uint64_max",
        None,
        _set("h0", lambda s, a: np.full(a.shape, 2**64 - 1, np.uint64)),
        ValueError,
        ("h0",),
    ),
    (
        "w_hh_int_min",
        None,
        _set("w_hh", lambda s, a: np.full(a.shape, -(2**63), np.int64)),
        ValueError,
        ("w_hh",),
    ),
    # -- zero-size dimensions with no meaningful answer
    (
        "input_size_0",
        None,
        lambda s, c: c.replace(x=np.zeros((T, B, 0)), w_ih=np.zeros((s.G * H, 0))),
        ValueError,
        ("x",),
    ),
    (
        "hidden_size_0",
        None,
        lambda s, c: c.replace(
            h0=None, c0=None, w_ih=np.zeros((0, D)), w_hh=np.zeros((0, 0)), b_ih=None, b_hh=None
        ),
        ValueError,
        ("w_hh",),
    ),
    # -- sizes beyond the 32-bit BLAS, as zero-stride views: refused before any allocation
    (
        "x_rows_beyond_blas",
        None,
        lambda s, c: c.replace(x=_huge((2**16, 2**15, D)), h0=None, c0=None, lengths=None),
        ValueError,
        ("x",),
    ),
    (
        "input_size_beyond_blas",
        None,
        lambda s, c: c.replace(x=_huge((1, B, 2**31)), w_ih=_huge((s.G * H, 2**31))),
        ValueError,
        ("x",),
    ),
    (
        "gate_rows_beyond_blas",
        None,
        lambda s, c: c.replace(  # G * H = 2**31 + G; int8 keeps the view under 2**63 bytes
            h0=None,
            c0=None,
            w_ih=_huge((s.G * (2**31 // s.G + 1), D), np.int8),
            w_hh=_huge((s.G * (2**31 // s.G + 1), 2**31 // s.G + 1), np.int8),
            b_ih=None,
            b_hh=None,
        ),
        ValueError,
        ("w_hh",),
    ),
]

BAD_LENGTHS = [
    ("bool", np.array([True, True]), TypeError),
    ("object", np.array([1, 2], dtype=object), TypeError),
    ("str", np.array(["1", "2"]), TypeError),
    ("none_entry", [1, None], TypeError),
    ("uint64_huge", np.array([2**64 - 1, 1], dtype=np.uint64), ValueError),
    ("int64_min", np.array([-(2**63), 1]), ValueError),
    ("ragged", [[1], [1, 2]], ValueError),
]


def _refused_params():
    for spec in SPECS:
        for name, cells, fn, exc, names in FORWARD_REFUSED:
            if cells is None or spec.cell in cells:
                yield pytest.param(spec, fn, exc, names, id=f"{spec.name}-{name}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("spec,bad,exc,names", list(_refused_params()))
def test_forward_refuses_unusable_operands(spec, backend, bad, exc, names, rng):
    case = bad(spec, _case(spec, rng))
    with pytest.raises(exc, match=_word(*names)):
        spec.forward_case(backend, case)


@pytest.mark.parametrize(
    "lengths,exc", [(v, e) for _, v, e in BAD_LENGTHS], ids=[k for k, _, _ in BAD_LENGTHS]
)
def test_forward_rejects_more_bad_lengths(spec, backend, lengths, exc, rng):
    with pytest.raises(exc, match=_word("lengths")):
        spec.forward_case(backend, _case(spec, rng).replace(lengths=lengths))


def test_lengths_with_no_step(spec, backend, rng):
    """T == 0 has no valid length (they lie in [1, T]); B == 0 takes an empty lengths."""
    case = make_case(spec, rng, 0, B, D, H)
    with pytest.raises(ValueError, match=_word("lengths")):
        spec.forward_case(backend, case.replace(lengths=np.array([1, 1])))
    empty = make_case(spec, rng, T, 0, D, H).replace(lengths=np.zeros(0, np.int64))
    fwd = spec.forward_case(backend, empty)
    assert fwd.y.shape == (T, 0, H)
    grads = spec.backward_case(backend, fwd.cache, empty)
    assert grads.dx.shape == (T, 0, D)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_integer_operands_convert_exactly_or_refuse(spec, backend, dtype, rng):
    limit = 2**24 if dtype == np.float32 else 2**53
    case = _case(spec, rng, dtype)
    exact = np.zeros(case.x.shape, np.int64)
    exact[0, 0, 0], exact[-1, -1, -1] = limit, -limit  # representable: converted
    got = spec.forward_case(backend, case.replace(x=exact), training=False)
    want = spec.forward_case(backend, case.replace(x=exact.astype(dtype)), training=False)
    assert_forward_close(spec, got, want, rtol=0, atol=0)
    inexact = exact.copy()
    inexact[0, 0, 0] = limit + 1
    with pytest.raises(ValueError, match=r"\bx holds integers .* cannot represent exactly"):
        spec.forward_case(backend, case.replace(x=inexact))
    # the rule applies to the upstream gradients too
    fwd = spec.forward_case(backend, case)
    dy = np.full(case.dy.shape, limit + 1, np.int64)
    with pytest.raises(ValueError, match=_word("dy")):
        spec.backward_case(backend, fwd.cache, case.replace(dy=dy))


# -------------------------------------------------------------------------------------------------
# allocations that cannot succeed: MemoryError, never a crash
# -------------------------------------------------------------------------------------------------
def test_operand_too_large_to_copy_raises_memory_error(spec, backend, rng):
    """w_hh of hidden size 2**22 as a zero-stride view: its copy needs 256 TiB (> address space)."""
    Hb = 2**22
    case = _case(spec, rng).replace(
        h0=None,
        c0=None,
        w_ih=_huge((spec.G * Hb, D)),
        w_hh=_huge((spec.G * Hb, Hb)),
        b_ih=None,
        b_hh=None,
    )
    with pytest.raises(MemoryError, match=_word("w_hh")):
        spec.forward_case(backend, case)


def _overcommit_refuses(nbytes):
    """Whether Linux refuses an allocation of ``nbytes`` up front (instead of OOM-killing later)."""
    try:
        with open("/proc/sys/vm/overcommit_memory") as f:
            mode = f.read().strip()
        with open("/proc/meminfo") as f:
            info = {ln.split(":")[0]: int(ln.split()[1]) * 1024 for ln in f}
    except OSError:
        return False
    return mode in ("0", "2") and nbytes > 2 * (info["MemTotal"] + info.get("SwapTotal", 0))


def test_workspace_too_large_raises_memory_error(spec, rng):
    """Operands of 32 MiB * G whose workspace needs 2**23 * G * 2**11 floats (>= 64 GiB)."""
    Tb, Bb, Hb = 2**13, 2**10, 2**11
    need = Tb * Bb * spec.G * Hb * 4
    if not _overcommit_refuses(need):
        pytest.skip("this kernel would overcommit the allocation and OOM-kill the process later")
    x = np.zeros((Tb, Bb, 1), np.float32)
    w_ih = np.zeros((spec.G * Hb, 1), np.float32)
    w_hh = np.zeros((spec.G * Hb, Hb), np.float32)
    with pytest.raises(MemoryError):
        spec.forward("cython", x, None, None, w_ih, w_hh)


# -------------------------------------------------------------------------------------------------
# NaN and infinities
# -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_check_finite_names_the_operand(spec, backend, value, rng):
    case = _case(spec, rng, lengths=np.array([T, 1]))
    for name in _operands(spec):
        a = getattr(case, name).copy()
        a.flat[a.size // 2] = value
        bad = case.replace(**{name: a})
        with pytest.raises(ValueError, match=rf"^{name} must be finite"):
            spec.forward_case(backend, bad, check_finite=True)
    spec.forward_case(backend, case, check_finite=True)  # finite: no error
    # padding is part of x: a NaN there is refused too
    x = case.x.copy()
    x[T - 1, 1, 0] = value
    with pytest.raises(ValueError, match=r"^x must be finite"):
        spec.forward_case(backend, case.replace(x=x), check_finite=True)


def _nonfinite_pattern(fwd, grads, spec):
    out = {n: ~np.isfinite(getattr(fwd, n)) for n in spec.output_names()}
    out.update({n: ~np.isfinite(getattr(grads, n)) for n in spec.grad_names()})
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("where", ["x", "x_padding", "h0", "w_ih", "w_hh", "b_hh"])
def test_nonfinite_values_propagate_like_the_reference(spec, dtype, value, where, rng):
    """Without check_finite, NaN/inf flow through IEEE arithmetic: the kernels give non-finite
    values exactly where the reference does (so a NaN never vanishes), finite values agree."""
    case = _case(spec, rng, dtype, lengths=np.array([T, 1]))
    name = "x" if where == "x_padding" else where
    a = getattr(case, name).copy()
    # row 1 has length 1: (T - 1, 1, 0) is padding; (1, 0, 1) is inside row 0's sequence
    idx = {"x_padding": (T - 1, 1, 0), "x": (1, 0, 1)}.get(where, (1,) * a.ndim)
    a[idx] = value
    case = case.replace(**{name: a})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = {}
        for backend in BACKENDS:
            fwd = spec.forward_case(backend, case)
            res[backend] = (fwd, spec.backward_case(backend, fwd.cache, case))
    pat_c = _nonfinite_pattern(*res["cython"], spec)
    pat_r = _nonfinite_pattern(*res["numpy"], spec)
    for key in pat_c:
        np.testing.assert_array_equal(pat_c[key], pat_r[key], err_msg=key)
    if np.isnan(value) and where != "x_padding":
        assert pat_c["h_n"].any() and pat_c["dw_hh"].any()  # a NaN never vanishes
    if where == "x_padding":  # as in a packed sequence, the padding reaches nothing
        assert not any(pat.any() for pat in pat_c.values())
    for key in pat_c:
        got = res["cython"][0 if key in spec.output_names() else 1]
        want = res["numpy"][0 if key in spec.output_names() else 1]
        ok = ~pat_c[key]
        np.testing.assert_allclose(
            getattr(got, key)[ok], getattr(want, key)[ok], err_msg=key, **TOL[dtype]
        )


# -------------------------------------------------------------------------------------------------
# operands of unusual layout that must work
# -------------------------------------------------------------------------------------------------
def test_zero_stride_and_read_only_operands_work(spec, backend, rng):
    case = _case(spec, rng, lengths=np.array([T, 1]))
    flat = case.replace(
        x=np.broadcast_to(case.x[:1], case.x.shape),  # the same step repeated, stride 0
        h0=np.broadcast_to(case.h0[:1], case.h0.shape),
        b_ih=np.broadcast_to(case.b_ih[:1], case.b_ih.shape),
        dy=np.broadcast_to(case.dy[:, :1], case.dy.shape),
    )
    dense = flat.map_arrays(np.array)
    f_flat = spec.forward_case(backend, flat)
    f_dense = spec.forward_case(backend, dense)
    assert_forward_close(spec, f_flat, f_dense, rtol=0, atol=0)
    g_flat = spec.backward_case(backend, f_flat.cache, flat)
    g_dense = spec.backward_case(backend, f_dense.cache, dense)
    assert_grads_close(spec, g_flat, g_dense, rtol=0, atol=0)


def test_nested_lists_work(spec, backend, rng):
    case = _case(spec, rng)
    as_lists = case.replace(x=case.x.tolist(), w_hh=case.w_hh.tolist(), dy=case.dy.tolist())
    f_list = spec.forward_case(backend, as_lists)
    f_arr = spec.forward_case(backend, case)
    assert_forward_close(spec, f_list, f_arr, rtol=0, atol=0)
    assert_grads_close(
        spec,
        spec.backward_case(backend, f_list.cache, as_lists),
        spec.backward_case(backend, f_arr.cache, case),
        rtol=0,
        atol=0,
    )


def test_torch_cpu_tensors_work(spec, backend, rng):
    """Anything np.asarray reads is array_like, torch CPU tensors included."""
    torch = pytest.importorskip("torch")
    case = _case(spec, rng)
    as_torch = case.replace(x=torch.from_numpy(case.x), w_ih=torch.from_numpy(case.w_ih))
    assert_forward_close(
        spec, spec.forward_case(backend, as_torch), spec.forward_case(backend, case), rtol=0, atol=0
    )


def test_masked_upstream_gradient_is_refused(spec, backend, rng):
    case = _case(spec, rng)
    fwd = spec.forward_case(backend, case)
    with pytest.raises(TypeError, match=r"^dy is a masked array"):
        spec.backward_case(backend, fwd.cache, case.replace(dy=np.ma.masked_array(case.dy)))


# -------------------------------------------------------------------------------------------------
# backward protocol
# -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("producer,consumer", [("cython", "numpy"), ("numpy", "cython")])
def test_backward_rejects_cache_of_the_other_backend(spec, producer, consumer, rng):
    case = _case(spec, rng)
    cache = spec.forward_case(producer, case).cache
    with pytest.raises(ValueError, match=r"\bcache comes from the '" + producer):
        spec.backward_case(consumer, cache, case)


def test_backward_after_zero_size_forward_is_repeatable(spec, backend, rng):
    case = make_case(spec, rng, 0, B, D, H)
    fwd = spec.forward_case(backend, case)
    g1 = spec.backward_case(backend, fwd.cache, case)
    g2 = spec.backward_case(backend, fwd.cache, case)
    assert_grads_close(spec, g2, g1, rtol=0, atol=0)
    assert spec.forward_case(backend, case, training=False).cache is None


# -------------------------------------------------------------------------------------------------
# differential fuzz: the two backends accept and refuse the same inputs, with the same message
# -------------------------------------------------------------------------------------------------
_FUZZ_DTYPES = [
    np.float32,
    np.float64,
    np.float16,
    np.int8,
    np.int64,
    np.uint16,
    np.bool_,
    np.complex64,
    object,
]


@st.composite
def _messy_cases(draw, spec):
    """Shapes, dtypes, layouts and lengths drawn independently: often invalid, sometimes not."""
    Tf = draw(st.integers(0, 4))
    Bf = draw(st.integers(0, 3))
    Df = draw(st.integers(1, 3))
    Hf = draw(st.integers(1, 3))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    base = make_case(spec, rng, Tf, Bf, Df, Hf, np.float64)

    def maybe_off(n):  # mostly right, sometimes off by one
        return n + draw(st.sampled_from([0, 0, 0, 0, 1, -1]))

    def mangle(name, a):
        if a is None or draw(st.integers(0, 3)):
            return a  # most operands stay as they are
        how = draw(st.sampled_from(["dtype", "shape", "layout", "none", "nan"]))
        if how == "dtype":
            dt = draw(st.sampled_from(_FUZZ_DTYPES))
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return (a * 3).astype(dt)
        if how == "shape":
            shape = tuple(max(0, maybe_off(n)) for n in a.shape)
            return np.zeros(shape, a.dtype)
        if how == "layout":
            return np.flip(np.asfortranarray(a)) if a.ndim else a
        if how == "nan":
            b = a.copy()
            if b.size:
                b.flat[0] = np.nan
            return b
        return None

    kw = {n: mangle(n, getattr(base, n)) for n in ("x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh")}
    n_lengths = max(0, maybe_off(Bf))
    lengths = draw(
        st.none() | st.lists(st.integers(-1, Tf + 1), min_size=n_lengths, max_size=n_lengths)
    )
    kw["lengths"] = None if lengths is None else np.array(lengths, dtype=np.int64)
    check_finite = draw(st.booleans())
    return base.replace(**kw), check_finite


def _outcome(spec, backend, case, check_finite):
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            fwd = spec.forward_case(backend, case, check_finite=check_finite)
        except (TypeError, ValueError, MemoryError) as exc:
            return ("raised", type(exc), str(exc))
        try:
            grads = spec.backward_case(backend, fwd.cache, case)
        except (TypeError, ValueError) as exc:
            return ("raised in backward", type(exc), str(exc))
    return ("ok", fwd, grads)


@pytest.mark.parametrize("spec_name", [s.name for s in SPECS])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fuzz_backends_agree_on_messy_input(spec_name, data):
    spec = next(s for s in SPECS if s.name == spec_name)
    case, check_finite = data.draw(_messy_cases(spec))
    got = _outcome(spec, "cython", case, check_finite)
    want = _outcome(spec, "numpy", case, check_finite)
    assert got[0] == want[0], (got, want)
    if got[0] != "ok":
        assert got[1:] == want[1:]
        return
    dtype = got[1].y.dtype.type
    tol = TOL[dtype]
    with np.errstate(invalid="ignore"):
        for a, b, names in (
            (got[1], want[1], spec.output_names()),
            (got[2], want[2], spec.grad_names()),
        ):
            for n in names:
                va, vb = getattr(a, n), getattr(b, n)
                if va is None or vb is None:
                    assert va is None and vb is None, n
                    continue
                np.testing.assert_array_equal(np.isfinite(va), np.isfinite(vb), err_msg=n)
                ok = np.isfinite(va)
                np.testing.assert_allclose(va[ok], vb[ok], err_msg=n, **tol)


def test_blas_limit_is_int32_max():
    assert BLAS_INT_MAX == np.iinfo(np.int32).max


def test_option_parameters_come_together(backend, rng):
    """The parameters one option brings (the registry's ``Param.option``) are given together:
    part of them raises ``ValueError`` naming the option and what is missing, with the shapes
    the registry gives them."""
    from fastrnn.cells import backend_module

    mod = backend_module(backend)
    T, B, I, H = 3, 2, 4, 5
    x = rng.standard_normal((T, B, I))
    w_ih, w_hh = rng.standard_normal((4 * H, I)), rng.standard_normal((4 * H, H))
    gains = {"ln_ih": np.ones(4 * H), "ln_hh": np.ones(4 * H), "ln_c": np.ones(H)}
    with pytest.raises(ValueError, match=r"layer_norm needs all of .* without ln_c_bias"):
        mod.lstm_forward(x, None, None, w_ih, w_hh, None, None, **gains)
    with pytest.raises(ValueError, match=r"\bw_peephole\b.*\(3, 5\)"):
        mod.lstm_forward(x, None, None, w_ih, w_hh, None, None, w_peephole=np.zeros((3, H + 1)))
    y, *_ = mod.lstm_forward(
        x, None, None, w_ih, w_hh, None, None, **gains, ln_c_bias=np.zeros(H), training=False
    )
    assert y.shape == (T, B, H)
