"""Validation, caches and gradient containers shared by the Cython and NumPy paths.

Both :mod:`fastrnn.functional` and :mod:`fastrnn.reference` call :func:`prepare` so that they accept
and refuse exactly the same inputs with the same messages.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Callable
from types import MappingProxyType
from typing import Any, NamedTuple

import numpy as np

from fastrnn.cells import LSTM, Cell, GRUGrads, LSTMGrads, RNNGrads, Sizes

__all__ = [
    "as_array",
    "check_exact_integers",
    "nbytes_of",
    "Cache",
    "GRUGrads",
    "LSTMGrads",
    "LSTMProjGrads",
    "Prepared",
    "RNNGrads",
    "as_grad",
    "cell_states_grad",
    "check_cache",
    "prepare",
]


class LSTMProjGrads(NamedTuple):
    """Gradients returned by ``lstm_backward`` for a forward with a projection (``w_hr``).

    The fields of :class:`LSTMGrads`, in the same order, then ``dw_hr``.
    """

    dx: np.ndarray
    dh0: np.ndarray
    dc0: np.ndarray
    dw_ih: np.ndarray
    dw_hh: np.ndarray
    db_ih: np.ndarray | None
    db_hh: np.ndarray | None
    dw_hr: np.ndarray


_GRADS_TYPES: dict[tuple[Cell, tuple[str, ...]], type] = {(LSTM, ("dw_hr",)): LSTMProjGrads}


def grads_of(cell: Cell, fields: list[Any], extra: dict[str, Any]) -> tuple:
    """The backward's result: the cell's :attr:`~fastrnn.cells.Cell.grads` fields, then the
    gradients in ``extra`` that are not None (those of the optional parameters the forward
    had: ``dw_hr``, ``dw_peephole``, ``dln_ih``, ...), as one NamedTuple type per combination."""
    names = tuple(k for k, v in extra.items() if v is not None)
    if not names:
        return cell.grads(*fields)
    key = (cell, names)
    if key not in _GRADS_TYPES:
        base = cell.grads
        _GRADS_TYPES[key] = NamedTuple(  # type: ignore[misc]
            f"{base.__name__}_{'_'.join(n[1:] for n in names)}",
            [(f, np.ndarray) for f in (*base._fields, *names)],
        )
    return _GRADS_TYPES[key](*fields, *(extra[n] for n in names))


def nbytes_of(*objs: Any) -> int:
    """Bytes of the arrays inside ``objs`` (nested dicts, lists, tuples and dataclasses), each
    counted once."""
    seen: set[int] = set()
    total = 0
    stack = list(objs)
    while stack:
        v = stack.pop()
        if isinstance(v, np.ndarray):
            if id(v) not in seen:
                seen.add(id(v))
                total += v.nbytes
        elif isinstance(v, (tuple, list)):  # NamedTuples (Prepared) included
            stack.extend(v)
        elif isinstance(v, dict):
            stack.extend(v.values())
        elif dataclasses.is_dataclass(v) and not isinstance(v, type):
            stack.extend(getattr(v, f.name) for f in dataclasses.fields(v))
    return total


class Cache:
    """What a training forward keeps for its backward.

    Opaque to users: pass it to the matching ``*_backward`` of the same module. ``cell`` and
    ``backend`` let the backward refuse a cache that another cell or backend produced, and
    ``nbytes`` reports the memory it holds.

    Attributes
    ----------
    backend : {"cython", "numpy"}
    cell : fastrnn.cells.Cell
    prepared : Prepared
        The forward's validated operands.
    options : mapping
        Every keyword option of the forward that the backward depends on (``reverse`` and the
        cell's functional options, e.g. ``nonlinearity``, ``reset_after``).
    saved : dataclass or None
        The backend's typed record of the forward (None when T == 0 or B == 0: nothing ran).
    """

    __slots__ = ("backend", "cell", "options", "prepared", "saved")

    def __init__(
        self,
        backend: str,
        cell: Cell,
        prepared: Prepared,
        options: dict[str, Any],
        saved: Any = None,
    ) -> None:
        self.backend = backend
        self.cell = cell
        self.prepared = prepared
        self.options = options
        self.saved = saved

    @property
    def dtype(self) -> np.dtype:
        return self.prepared.dtype

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(T, B, I, H)."""
        p = self.prepared
        return (p.T, p.B, p.I, p.H)

    @property
    def empty(self) -> bool:
        """True when the forward had nothing to compute (T == 0 or B == 0)."""
        return self.saved is None

    @property
    def nbytes(self) -> int:
        """Bytes of the arrays this cache keeps alive, each counted once.

        Counts the saved activations and the forward's operands (input, initial states, weights
        and biases, which are the caller's own arrays when they were already C-contiguous in the
        computation dtype), walking nested tuples and lists (the reference keeps per-step
        tuples). README.md ("Memory of a training forward") gives it per cell.
        """
        return nbytes_of(self.prepared, self.saved)

    def __repr__(self) -> str:
        T, B, I, H = self.shape
        return (
            f"Cache(cell={self.cell.name!r}, backend={self.backend!r}, T={T}, B={B}, I={I}, H={H}, "
            f"dtype={np.dtype(self.dtype).name}, nbytes={self.nbytes})"
        )


def as_array(name: str, a: Any) -> np.ndarray:
    """``np.asarray(a)``, refusing masked arrays and naming the argument for ragged sequences."""
    if type(a) is np.ndarray:  # not a subclass (masked arrays are one)
        return a
    if isinstance(a, np.ma.MaskedArray):  # np.asarray would drop the mask silently
        raise TypeError(
            f"{name} is a masked array, whose mask fastrnn would ignore; pass "
            f"{name}.filled(value) (and lengths= for padded sequences)"
        )
    try:
        return np.asarray(a)
    except ValueError as exc:
        raise ValueError(
            f"{name} must be an array or a nested sequence of one shape: {exc}"
        ) from exc


def _float_dtype_of(name: str, a: Any) -> np.dtype | None:
    """The float dtype an argument asks for (None for integers), refusing unsupported kinds."""
    # ndarrays answer directly; anything else (lists, torch tensors, ...) as np.asarray reads it
    dt = a.dtype if isinstance(a, (np.ndarray, np.generic)) else as_array(name, a).dtype
    if dt is _F32 or dt is _F64:  # the common case, without the checks below
        return dt
    if dt.kind == "f":
        if dt.itemsize > 8:
            raise TypeError(
                f"{name} has dtype {dt}, which cannot be converted to float64 without "
                "losing precision; pass float32 or float64"
            )
        return np.dtype(np.float64) if dt.itemsize == 8 else np.dtype(np.float32)
    if dt.kind in "iu":
        return None
    raise TypeError(
        f"{name} must be a real floating-point array (float32 or float64; float16 and "
        f"integers are converted), got dtype {dt}"
    )


_F32, _F64 = np.dtype(np.float32), np.dtype(np.float64)

#: Largest integer magnitude below which every integer is exact in each computation dtype.
_EXACT_INT = {np.dtype(np.float32): 2**24, np.dtype(np.float64): 2**53}


def check_exact_integers(name: str, arr: np.ndarray, dtype: np.dtype) -> None:
    """ValueError naming ``arr`` if it is an integer array that ``dtype`` cannot hold exactly."""
    if arr.dtype.kind in "iu" and arr.size:
        lo, hi, limit = int(arr.min()), int(arr.max()), _EXACT_INT[np.dtype(dtype)]
        if lo < -limit or hi > limit:
            raise ValueError(
                f"{name} holds integers up to {max(-lo, hi)} in magnitude, which {dtype} cannot "
                f"represent exactly (integers are converted only when |value| <= 2**"
                f"{limit.bit_length() - 1}); convert it yourself if rounding is acceptable"
            )


def _convert(name: str, arr: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``arr`` as a C-contiguous array of ``dtype``; integers only when the conversion is exact."""
    if type(arr) is np.ndarray and arr.dtype is dtype and arr.flags.c_contiguous:
        return arr  # already what the kernels take (the common case: no copy, no checks)
    check_exact_integers(name, arr, dtype)
    try:
        return np.ascontiguousarray(arr, dtype=dtype)
    except MemoryError as exc:
        raise MemoryError(
            f"{name}: cannot allocate a C-contiguous {dtype} copy of shape {arr.shape} ({exc})"
        ) from exc


def _to_array(name: str, a: Any, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    arr = a if type(a) is np.ndarray else as_array(name, a)
    if arr.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {arr.shape}")
    return _convert(name, arr, dtype)


def _check_finite(name: str, arr: np.ndarray | None) -> None:
    """ValueError naming ``arr`` if it holds a NaN or an infinity (two passes, no temporary)."""
    if arr is None or arr.size == 0:
        return
    if not (np.isfinite(arr.min()) and np.isfinite(arr.max())):
        where = tuple(int(i) for i in np.argwhere(~np.isfinite(arr))[0])
        raise ValueError(
            f"{name} must be finite (check_finite=True), but {name}[{', '.join(map(str, where))}]"
            f" = {arr[where]}"
        )


# BLAS (scipy.linalg.cython_blas) takes 32-bit ints for every GEMM dimension and leading
# dimension; the kernels pass T*B, G*H, I and H. Larger values must be refused here, not
# truncated there.
BLAS_INT_MAX = 2**31 - 1


def _check_blas_limits(T: int, B: int, I: int, H: int, G: int, R: int) -> None:
    if max(T * B, G * H, I, R) <= BLAS_INT_MAX:  # every call but the refused ones
        return
    for value, what in (
        (T * B, f"x has T * B = {T} * {B} = {T * B} rows (the input GEMM's row count)"),
        (G * H, f"w_hh has {G} * hidden_size = {G * H} rows"),
        (I, f"x has input_size {I}"),
        (R, f"w_hr has proj_size {R}"),
    ):
        if value > BLAS_INT_MAX:
            raise ValueError(
                f"{what}, more than the 32-bit BLAS limit {BLAS_INT_MAX}; split the batch or "
                "the sequence into smaller calls"
            )


class Prepared(NamedTuple):
    """Validated, C-contiguous operands of one forward call."""

    x: np.ndarray
    h0: np.ndarray
    c0: np.ndarray | None
    w_ih: np.ndarray
    w_hh: np.ndarray
    b_ih: np.ndarray | None
    b_hh: np.ndarray | None
    lengths: np.ndarray | None  # int64 (B,), or None when every sequence has length T
    dtype: np.dtype
    T: int
    B: int
    I: int
    H: int
    # LSTM projection (P, H), or None. With it h0/y/h_n have P = w_hr.shape[0] columns and
    # w_hh is (4H, P); H stays the cell size.
    w_hr: np.ndarray | None = None
    # The cell's optional operands (peephole and layer-norm weights, recurrent-dropout and
    # zoneout masks), by functional keyword: arrays in the computation dtype, or a float where
    # the operand takes one (zoneout in eval). Absent keys were not given.
    extras: dict[str, Any] | None = None

    def extra(self, name: str) -> Any:
        """The optional operand ``name``, or None when it was not given."""
        return None if self.extras is None else self.extras.get(name)


class Extra(NamedTuple):
    """How :func:`prepare` checks one optional operand of a cell.

    ``weight``: a parameter, which decides the computation dtype like the other weights (masks
    do not: they are converted to it). ``unit``: a number in [0, 1] may stand for the whole
    array, and an array's values must lie in [0, 1] (zoneout).
    """

    value: Any
    # sizes, or "T", "B", "H", "R" (width of h); or a registry Param's shape function
    shape: tuple[int | str, ...] | Callable[[Sizes], tuple[int, ...]]
    weight: bool = True
    unit: bool = False


_NO_OPTIONS = MappingProxyType({})  # the Param shapes of extras read no option


def _prepare_extra(name: str, e: Extra, dtype: np.dtype, sizes: dict[str, int]) -> Any:
    if callable(e.shape):
        dims = Sizes(sizes["G"], sizes["H"], sizes["R"], sizes["I"], _NO_OPTIONS)
        e = e._replace(shape=tuple(e.shape(dims)))
    else:
        e = e._replace(shape=tuple(sizes[d] if isinstance(d, str) else d for d in e.shape))
    if e.unit and not isinstance(e.value, np.ndarray) and np.ndim(e.value) == 0:
        v = e.value
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not 0 <= v <= 1:
            raise ValueError(f"{name} must be a number in [0, 1] or an array of shape "
                             f"{e.shape}, got {v!r}")  # fmt: skip
        return float(v)
    _float_dtype_of(name, e.value)
    arr = _to_array(name, e.value, dtype, e.shape)
    if e.unit and arr.size and not (arr.min() >= 0 and arr.max() <= 1):
        raise ValueError(f"{name} must hold values in [0, 1] (1: keep the previous value)")
    return arr


def _shape_of(name: str, a: Any, ndim: int, what: str, G: int = 0) -> tuple[int, ...]:
    """``a``'s shape, which must have ``ndim`` axes; ``what`` (formatted with ``G`` only when
    an error is raised, to keep the common case cheap) names the shape expected."""
    if type(a) is np.ndarray and a.ndim == ndim:
        return a.shape
    what = what.format(G=G)
    if a is None:
        raise TypeError(f"{name} is required, got None")
    try:
        shape = np.shape(a)
    except ValueError as exc:  # ragged nested sequences
        raise ValueError(f"{name} must be a {ndim}-D array of shape {what}: {exc}") from exc
    if len(shape) != ndim:
        raise ValueError(f"{name} must be a {ndim}-D array of shape {what}, got shape {shape}")
    return shape


def check_lengths(lengths: Any, T: int, B: int) -> np.ndarray | None:
    """Validate ``lengths``: integers (B,) in [1, T]. Returns None when all equal T."""
    if lengths is None:
        return None
    arr = as_array("lengths", lengths)
    if arr.dtype.kind not in "iu":
        if arr.dtype.kind == "f" and arr.size and np.all(arr == np.round(arr)):
            raise TypeError(
                f"lengths must be an integer array, got dtype {arr.dtype} "
                "(convert with lengths.astype(int))"
            )
        raise TypeError(f"lengths must be an integer array of shape ({B},), got dtype {arr.dtype}")
    if arr.shape != (B,):
        raise ValueError(
            f"lengths must have shape ({B},) (one length per batch entry), got shape {arr.shape}"
        )
    if B and (arr.min() < 1 or arr.max() > T):
        raise ValueError(f"lengths must lie in [1, T={T}], got min {arr.min()} and max {arr.max()}")
    arr = arr.astype(np.int64)
    if B and arr.min() == T:
        return None
    return arr


def prepare(
    cell: Cell,
    x: Any,
    h0: Any,
    c0: Any,
    w_ih: Any,
    w_hh: Any,
    b_ih: Any,
    b_hh: Any,
    lengths: Any = None,
    w_hr: Any = None,
    check_finite: bool = False,
    extras: dict[str, Extra] | None = None,
) -> Prepared:
    """Validate the operands of a ``<cell>_forward`` call and make them C-contiguous.

    The computation runs in float64 when any floating-point operand (input, state, weight or bias)
    is float64, otherwise in float32. float16 arrays are converted; integer arrays are converted
    when every value is exact in the computation dtype (else ``ValueError``); complex, boolean,
    object, string and extended-precision arrays are refused with ``TypeError``. Sizes that the
    32-bit BLAS cannot take are refused with ``ValueError`` before anything is allocated. With
    ``check_finite``, a NaN or infinity in any operand raises ``ValueError`` naming it.

    ``w_hr`` (LSTM only) is a projection of shape (P, H): then ``w_hh`` is (4H, P) and ``h0`` is
    (B, P), while ``c0`` stays (B, H). ``extras`` are the cell's optional operands (None values
    are dropped), checked as :class:`Extra` says.
    """
    G = cell.G
    T, B, I = _shape_of("x", x, 3, "(T, B, input_size)")
    GH, I_w = _shape_of("w_ih", w_ih, 2, "({G} * hidden_size, input_size)", G)
    if w_hr is None:
        GH2, H = _shape_of("w_hh", w_hh, 2, "({G} * hidden_size, hidden_size)", G)
        if H < 1:
            raise ValueError(f"w_hh must have hidden_size >= 1 columns, got shape {(GH2, H)}")
        if GH2 != G * H:
            raise ValueError(
                f"w_hh must have shape ({G} * hidden_size, hidden_size) = ({G * H}, {H}) "
                f"for {cell.title}, got {(GH2, H)}"
            )
        R = H  # width of the recurrent state h
    else:
        if not any(p.arg == "w_hr" for p in cell.params):
            raise ValueError(f"w_hr (a projection) is only supported for LSTM, not {cell.title}")
        R, H = _shape_of("w_hr", w_hr, 2, "(proj_size, hidden_size)")
        if R < 1 or H < 1:
            raise ValueError(
                f"w_hr must have shape (proj_size >= 1, hidden_size >= 1), got {(R, H)}"
            )
        w_hh_shape = _shape_of("w_hh", w_hh, 2, "({G} * hidden_size, proj_size)", G)
        if w_hh_shape != (G * H, R):
            raise ValueError(
                f"w_hh must have shape ({G} * hidden_size, proj_size) = ({G * H}, {R}) with a "
                f"projection (hidden_size={H}, proj_size={R} taken from w_hr), got {w_hh_shape}"
            )
    if GH != G * H:
        raise ValueError(
            f"w_ih must have {G * H} rows ({G} * hidden_size, hidden_size={H} taken "
            f"from w_hh), got shape {(GH, I_w)}"
        )
    if I_w != I:
        raise ValueError(
            f"w_ih has {I_w} columns but x has input_size {I} (x.shape[2]); they must match"
        )
    if I < 1:
        raise ValueError(f"x must have input_size >= 1, got shape {(T, B, I)}")
    if (b_ih is None) != (b_hh is None):
        raise ValueError("pass both b_ih and b_hh, or neither (bias-free cell)")
    _check_blas_limits(T, B, I, H, G, R)

    extras = {k: e for k, e in extras.items() if e.value is not None} if extras else {}
    operands = [("x", x), ("w_ih", w_ih), ("w_hh", w_hh), ("h0", h0), ("c0", c0), ("b_ih", b_ih),
                ("b_hh", b_hh), ("w_hr", w_hr)]  # fmt: skip
    operands += [(k, e.value) for k, e in extras.items() if e.weight]
    dtype = _F32
    for name, a in operands:
        if a is None:
            continue
        dt = a.dtype if type(a) is np.ndarray else None
        if dt is _F64 or (dt is not _F32 and _float_dtype_of(name, a) is _F64):
            dtype = _F64

    xa = _convert("x", as_array("x", x), dtype)
    w_ih_a = _convert("w_ih", as_array("w_ih", w_ih), dtype)
    w_hh_a = _convert("w_hh", as_array("w_hh", w_hh), dtype)
    h0a = np.zeros((B, R), dtype) if h0 is None else _to_array("h0", h0, dtype, (B, R))
    c0a = None
    if "c" in cell.states:
        c0a = np.zeros((B, H), dtype) if c0 is None else _to_array("c0", c0, dtype, (B, H))
    b_ih_a = None if b_ih is None else _to_array("b_ih", b_ih, dtype, (G * H,))
    b_hh_a = None if b_hh is None else _to_array("b_hh", b_hh, dtype, (G * H,))
    w_hr_a = None if w_hr is None else _convert("w_hr", as_array("w_hr", w_hr), dtype)
    lens = None if lengths is None else check_lengths(lengths, T, B)
    extra_a = None
    if extras:
        sizes = {"T": T, "B": B, "H": H, "R": R, "G": G, "I": I}
        extra_a = {k: _prepare_extra(k, e, dtype, sizes) for k, e in extras.items()}
    if check_finite:
        for name, a in (("x", xa), ("h0", h0a), ("c0", c0a), ("w_ih", w_ih_a), ("w_hh", w_hh_a),
                        ("b_ih", b_ih_a), ("b_hh", b_hh_a), ("w_hr", w_hr_a)):  # fmt: skip
            _check_finite(name, a)
        for name, a in (extra_a or {}).items():
            if isinstance(a, np.ndarray):
                _check_finite(name, a)
    return Prepared(xa, h0a, c0a, w_ih_a, w_hh_a, b_ih_a, b_hh_a, lens, dtype, T, B, I, H, w_hr_a,
                    extra_a)  # fmt: skip


#: The functional keywords of the parameters :func:`prepare` checks itself.
_CORE_ARGS = ("w_ih", "w_hh", "b_ih", "b_hh", "w_hr")

#: By cell, the functional keywords of its optional parameters (``cell.params`` beyond
#: :data:`_CORE_ARGS`), filled by :func:`cell_extras` on first use.
_OPTIONAL_ARGS: dict[Cell, frozenset[str]] = {}


def cell_extras(
    cell: Cell,
    w_hr: Any = None,
    *,
    recurrent_mask: Any = None,
    zoneout_h: Any = None,
    zoneout_c: Any = None,
    reset_after: bool = True,
    **weights: Any,
) -> dict[str, Extra]:
    """The optional operands of a forward, as :func:`prepare` checks them.

    ``weights`` are the cell's optional parameters by their functional keyword (``w_peephole``,
    ``ln_ih``, ...): the registry's :class:`~fastrnn.cells.Param` entries beyond the four that
    every cell has and the projection, with the shapes the registry gives them. Refuses, naming
    both, a combination the kernels do not run: any of these with a projection (``w_hr``) or
    with ``reset_after=False``; and the parameters of one option given in part.
    """
    if recurrent_mask is None and zoneout_h is None and zoneout_c is None:
        # the common call (no option): nothing to check beyond the keywords, and prepare()
        # would drop every entry (value None) anyway; building them cost 8 of a T = 1 call's
        # ~20 microseconds
        known = _OPTIONAL_ARGS.get(cell)
        if known is None:
            known = _OPTIONAL_ARGS[cell] = frozenset(
                p.arg for p in cell.params if p.arg not in _CORE_ARGS
            )
        if weights.keys() <= known and all(v is None for v in weights.values()):
            return {}
    optional = [p for p in cell.params if p.arg not in _CORE_ARGS]
    unknown = sorted(set(weights) - {p.arg for p in optional})
    if unknown:
        raise TypeError(f"{cell.name}_forward got an unexpected keyword argument {unknown[0]!r}")
    given = {p.arg: weights.get(p.arg) for p in optional}
    given.update(recurrent_mask=recurrent_mask, zoneout_h=zoneout_h, zoneout_c=zoneout_c)
    present = [k for k, v in given.items() if v is not None]
    if present and w_hr is not None:
        raise ValueError(f"{present[0]} cannot be combined with w_hr (a projection)")
    if present and not reset_after:
        raise ValueError(f"{present[0]} cannot be combined with reset_after=False")
    if zoneout_c is not None and "c" not in cell.states:
        raise ValueError(f"zoneout_c is only for a cell with a cell state, not {cell.title}")
    by_option: dict[str | None, list[str]] = {}
    for p in optional:
        by_option.setdefault(p.option, []).append(p.arg)
    for option, names in by_option.items():
        part = [k for k in names if given[k] is not None]
        if part and len(part) != len(names):
            missing = [k for k in names if given[k] is None]
            raise ValueError(
                f"{option} needs all of {', '.join(names)}; got {', '.join(part)} "
                f"without {', '.join(missing)}"
            )
    extras = {p.arg: Extra(given[p.arg], p.shape) for p in optional}
    extras["recurrent_mask"] = Extra(recurrent_mask, ("B", "R"), weight=False)
    extras["zoneout_h"] = Extra(zoneout_h, ("T", "B", "R"), weight=False, unit=True)
    extras["zoneout_c"] = Extra(zoneout_c, ("T", "B", "H"), weight=False, unit=True)
    return extras


def check_cache(cache: Any, backend: str, cell: Cell) -> Cache:
    """Refuse a missing cache, or one produced by another cell or backend."""
    fn = f"{cell.name}_backward"
    if cache is None:
        raise TypeError(
            f"{fn} needs the cache of a training forward; got None (was the forward "
            "called with training=False?)"
        )
    if not isinstance(cache, Cache):
        raise TypeError(
            f"{fn}: cache must be the Cache returned by {cell.name}_forward, got "
            f"{type(cache).__name__}"
        )
    if cache.cell is not cell:
        raise ValueError(
            f"{fn}: cache comes from {cache.cell.name}_forward, not {cell.name}_forward"
        )
    if cache.backend != backend:
        raise ValueError(
            f"{fn}: cache comes from the {cache.backend!r} backend; pass it to "
            f"fastrnn.{'reference' if cache.backend == 'numpy' else 'functional'}."
            f"{fn} instead"
        )
    return cache


def cell_states_grad(cache: Cache, dcs: Any) -> np.ndarray | None:
    """The validated gradient ``dcs`` of an LSTM's cell states (None means zeros); refused
    unless the forward ran with ``return_cell_states``."""
    if dcs is None:
        return None
    if not cache.options.get("return_cell_states"):
        raise ValueError(
            "dcs is the gradient of the cell states, which only a forward with "
            "return_cell_states=True returns"
        )
    p = cache.prepared
    return as_grad("dcs", dcs, (p.T, p.B, p.H), p.dtype)


def as_grad(name: str, g: Any, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray | None:
    """Validate an upstream gradient (None means zeros) and make it C-contiguous."""
    if g is None:
        return None
    _float_dtype_of(name, g)
    return _to_array(name, g, dtype, shape)
