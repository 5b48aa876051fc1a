"""Bad input to every functional forward/backward raises an error that names the argument.

Shapes and lengths raise ``ValueError``; unsupported dtypes raise ``TypeError``; a missing or
foreign cache raises either. Every message must name the offending argument (matched as a whole
word). Where two arguments disagree and either may be blamed (say ``w_ih`` has more columns than
``x`` has features), the pattern accepts both names and nothing else.
"""

import numpy as np
import pytest
from conftest import BACKENDS, CELL_SPECS, SPECS, make_case

T, B, D, H = 3, 2, 3, 4


def _case(spec, rng, **kw):
    return make_case(spec, rng, T, B, D, H, np.float64, **kw)


def _word(*names):
    return r"\b(" + "|".join(names) + r")\b"


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
