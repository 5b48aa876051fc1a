"""The cells, each described once: the registry that the rest of fastrnn reads.

A :class:`Cell` says everything about one recurrent cell that is not arithmetic: its gate
blocks, its recurrent states, its options (and which of them the functional forward takes), its
parameters (PyTorch's names and shapes, when each exists, how each is initialised), the
functional forward/backward pair of each backend and the compiled kernel module behind the
Cython one. :mod:`fastrnn.stack`, the layers (:mod:`fastrnn.nn`), :mod:`fastrnn.torch`, the
bench, the demo, ``setup.py`` and the tests iterate over :data:`CELLS` or read one entry; none
of them compares a cell's name. Adding a variant of a cell is an entry here (an :class:`Option`
and the :class:`Param` it brings), its kernel rows, its reference, its tests and its docs.

This module imports nothing but the standard library, so that ``setup.py`` can read the kernel
module names from it before anything is built.

    >>> from fastrnn.cells import CELLS
    >>> [(c.name, c.G, c.states) for c in CELLS.values()]
    [('rnn', 1, ('h',)), ('lstm', 4, ('h', 'c')), ('gru', 3, ('h',))]
"""

from __future__ import annotations

import importlib
import numbers
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType, ModuleType
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from numpy import ndarray

__all__ = [
    "CELLS",
    "GRU",
    "LSTM",
    "RNN",
    "Cell",
    "GRUGrads",
    "LSTMGrads",
    "Option",
    "Param",
    "RNNGrads",
    "get_cell",
]

#: The functional module of each backend.
BACKENDS = {"cython": "fastrnn.functional", "numpy": "fastrnn.reference"}


class RNNGrads(NamedTuple):
    """Gradients returned by ``rnn_backward`` (and ``gru_backward``, as :class:`GRUGrads`)."""

    dx: ndarray
    dh0: ndarray
    dw_ih: ndarray
    dw_hh: ndarray
    db_ih: ndarray | None
    db_hh: ndarray | None


class GRUGrads(NamedTuple):
    """Gradients returned by ``gru_backward``."""

    dx: ndarray
    dh0: ndarray
    dw_ih: ndarray
    dw_hh: ndarray
    db_ih: ndarray | None
    db_hh: ndarray | None


class LSTMGrads(NamedTuple):
    """Gradients returned by ``lstm_backward``."""

    dx: ndarray
    dh0: ndarray
    dc0: ndarray
    dw_ih: ndarray
    dw_hh: ndarray
    db_ih: ndarray | None
    db_hh: ndarray | None


@dataclass(frozen=True)
class Sizes:
    """The sizes a parameter's shape is computed from (one layer, one direction)."""

    G: int  # gate blocks
    H: int  # hidden size (of the cell state, for a projected LSTM)
    R: int  # width of the recurrent state h: proj_size or hidden_size
    I: int  # input features of this layer
    options: Mapping[str, Any]


@dataclass(frozen=True)
class Param:
    """One parameter of each layer and direction.

    Parameters
    ----------
    name : str
        PyTorch's stem; the layer's parameter is ``f"{name}_l{k}"`` (+ ``"_reverse"``).
    arg : str
        The keyword of the functional forward that takes it; its gradient is the field
        ``"d" + arg`` of the backward's result.
    shape : callable
        ``Sizes -> tuple`` of ints.
    when : callable, optional
        ``(options, bias) -> bool``: whether the layer has it (default: always, or while
        ``option`` is set).
    init : {"uniform", "zeros", "ones"}
        ``"uniform"`` is PyTorch's U(-1/sqrt(H), 1/sqrt(H)).
    option : str, optional
        The cell option that brings this parameter (``"peephole"``): the layer has it while
        the option is set, and the functional forward takes every parameter of one option
        together or none of them.
    """

    name: str
    arg: str
    shape: Callable[[Sizes], tuple[int, ...]]
    when: Callable[[Mapping[str, Any], bool], bool] | None = None
    init: str = "uniform"
    option: str | None = None

    def present(self, options: Mapping[str, Any], bias: bool) -> bool:
        """Whether a layer with these (checked) ``options`` and ``bias`` has this parameter."""
        if self.option is not None:
            return bool(options[self.option])
        return True if self.when is None else self.when(options, bias)


def _with_bias(options: Mapping[str, Any], bias: bool) -> bool:
    return bias


@dataclass(frozen=True)
class Option:
    """A cell-specific constructor option.

    Parameters
    ----------
    name : str
    default : object
    check : callable
        ``(value, name) -> value``: validates (raising ``TypeError``/``ValueError`` that name
        the option) and normalises.
    functional : bool
        Whether the functional forward takes it as a keyword of the same name (an option that
        only adds a parameter, such as ``proj_size``, does not).
    doc : str
    conflicts : tuple of str
        Options of the same cell that this one cannot be combined with: setting both away from
        their defaults raises ``ValueError`` naming both.
    example : object or callable, optional
        A value that turns the option on, or ``hidden_size -> value``: what
        ``python -m fastrnn.bench --variants`` times against the plain cell.
    """

    name: str
    default: Any
    check: Callable[[Any, str], Any]
    functional: bool = False
    doc: str = ""
    conflicts: tuple[str, ...] = ()
    example: Any = None

    def example_for(self, hidden_size: int) -> Any:
        """:attr:`example` for a layer of ``hidden_size`` (None: the option has none)."""
        return self.example(hidden_size) if callable(self.example) else self.example


def _bool(value: Any, name: str) -> bool:
    if not isinstance(value, bool | numbers.Integral):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return bool(value)


def _nonnegative_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value}")
    return int(value)


def _probability(value: Any, name: str) -> float:
    """A probability in [0, 1) (1 would drop or freeze every unit)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < 1:
        raise ValueError(f"{name} must be a probability in [0, 1), got {value!r}")
    return float(value)


def _zoneout_pair(value: Any, name: str) -> tuple[float, float]:
    """LSTM zoneout: one probability for h and c, or a pair (p_h, p_c)."""
    if isinstance(value, tuple | list):
        if len(value) != 2:
            raise ValueError(f"{name} must be a probability or a pair (p_h, p_c), got {value!r}")
        return (
            _probability(value[0], f"{name}[0] (p_h)"),
            _probability(value[1], f"{name}[1] (p_c)"),
        )
    p = _probability(value, name)
    return (p, p)


def _zoneout_one(value: Any, name: str) -> tuple[float]:
    """Zoneout of a cell whose only state is h: one probability (or a 1-tuple of it)."""
    if isinstance(value, tuple | list) and len(value) == 1:
        value = value[0]
    return (_probability(value, name),)


def _nonlinearity(value: Any, name: str) -> str:
    if value not in ("tanh", "relu"):
        raise ValueError(f"{name} must be 'tanh' or 'relu', got {value!r}")
    return str(value)


def _uniform_weights(extra: tuple[Param, ...] = ()) -> tuple[Param, ...]:
    """PyTorch's four parameters of every cell, then a cell's own."""
    return (
        Param("weight_ih", "w_ih", lambda s: (s.G * s.H, s.I)),
        Param("weight_hh", "w_hh", lambda s: (s.G * s.H, s.R)),
        Param("bias_ih", "b_ih", lambda s: (s.G * s.H,), _with_bias),
        Param("bias_hh", "b_hh", lambda s: (s.G * s.H,), _with_bias),
        *extra,
    )


@dataclass(frozen=True, eq=False)  # one object per cell: equal and hashed by identity
class Cell:
    """One recurrent cell: everything but its arithmetic.

    Attributes
    ----------
    name : str
        The functional API's prefix (``f"{name}_forward"``) and the ``cell`` of a
        :class:`fastrnn.stack.StackConfig`.
    title : str
        PyTorch's class name (``torch.nn.<title>``, ``fastrnn.<title>``).
    gates : tuple of str
        The gate blocks of ``w_ih``/``w_hh`` in row order; ``G = len(gates)``.
    states : tuple of str
        Recurrent states, ``"h"`` first: the forward takes ``h0`` (``c0``) and returns
        ``h_n`` (``c_n``); the backward takes ``dh_n`` (``dc_n``) and returns ``dh0``
        (``dc0``).
    options : tuple of Option
    params : tuple of Param
        In PyTorch's ``_flat_weights_names`` order within a layer and direction.
    kernel : str
        The compiled module ``fastrnn._kernels.<kernel>``.
    grads : type
        The NamedTuple of the backward's gradients (``dx``, ``dh0`` [, ``dc0``], ``dw_ih``,
        ``dw_hh``, ``db_ih``, ``db_hh``); a forward with optional parameters returns a
        NamedTuple with their gradients as further fields.
    variants : mapping of str to mapping
        Named option presets that the tests and benchmarks iterate over.
    """

    name: str
    title: str
    gates: tuple[str, ...]
    states: tuple[str, ...]
    options: tuple[Option, ...]
    params: tuple[Param, ...]
    kernel: str
    grads: type
    variants: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"<Cell {self.name}: {self.title}, gates {''.join(self.gates)}>"

    @property
    def G(self) -> int:
        """Gate blocks: ``w_ih`` is ``(G * hidden_size, input_size)``."""
        return len(self.gates)

    def functions(self, backend: str) -> tuple[Callable[..., Any], Callable[..., Any]]:
        """``(forward, backward)`` of the functional API of ``backend`` for this cell."""
        module = backend_module(backend)
        return getattr(module, f"{self.name}_forward"), getattr(module, f"{self.name}_backward")

    def option_defaults(self) -> dict[str, Any]:
        return {o.name: o.default for o in self.options}

    def is_default(self, name: str, value: Any) -> bool:
        """Whether ``value`` of this cell's option ``name`` means its default."""
        option = next(o for o in self.options if o.name == name)
        try:
            return option.check(value, name) == option.default
        except (TypeError, ValueError):
            return False

    def check_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """Every option of this cell, validated, defaults filled in, in declaration order.

        Raises ``ValueError`` for an option of another cell (naming the cells that take it)
        unless it has that cell's default value (PyTorch's GRU takes ``proj_size=0``), and
        ``TypeError`` for a name no cell takes.
        """
        own = {o.name: o for o in self.options}
        for name in options:
            if name in own:
                continue
            takers = [c for c in CELLS.values() if any(o.name == name for o in c.options)]
            if takers and all(c.is_default(name, options[name]) for c in takers):
                continue  # another cell's option at its default (PyTorch's proj_size=0)
            if takers:
                raise ValueError(
                    f"{name} is only supported for "
                    f"{' and '.join(c.title for c in takers)}, not "
                    f"{self.title}"
                )
            known = sorted({o.name for c in CELLS.values() for o in c.options})
            raise TypeError(
                f"unknown option {name!r} for {self.title} (options of the cells: "
                f"{', '.join(known)})"
            )
        values = {
            o.name: o.check(options[o.name], o.name) if o.name in options else o.default
            for o in self.options
        }
        for o in self.options:
            for other in o.conflicts:
                if values[o.name] != o.default and values[other] != own[other].default:
                    raise ValueError(
                        f"{self.title}: {o.name}={values[o.name]!r} cannot be combined with "
                        f"{other}={values[other]!r}"
                    )
        return values

    def functional_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """The options that the functional forward takes as keywords."""
        return {o.name: options[o.name] for o in self.options if o.functional}

    def torch_mode(self, options: Mapping[str, Any]) -> str:
        """PyTorch's ``mode`` string: ``"LSTM"``, ``"GRU"``, ``"RNN_TANH"``, ``"RNN_RELU"``."""
        if "nonlinearity" in options:
            return f"{self.title}_{options['nonlinearity'].upper()}"
        return self.title


def backend_module(backend: str) -> ModuleType:
    """:mod:`fastrnn.functional` (``"cython"``) or :mod:`fastrnn.reference` (``"numpy"``)."""
    module = sys.modules.get(BACKENDS.get(backend, ""))  # every stack call asks: the import
    if module is not None:  # machinery only the first time
        return module
    if backend not in BACKENDS:
        raise ValueError(f"backend must be 'cython' or 'numpy', got {backend!r}")
    return importlib.import_module(BACKENDS[backend])


#: Options and parameters that several cells share (one object each, in every cell using it).
_RECURRENT_DROPOUT = Option(
    "recurrent_dropout",
    0.0,
    _probability,
    doc="variational dropout on h_{t-1}, one mask per sequence (Gal & Ghahramani)",
    example=0.25,
)
_ZONEOUT_H = Option(
    "zoneout",
    (0.0,),
    _zoneout_one,
    doc="probability of keeping each unit of h from the last step (Krueger et al.)",
    example=0.1,
)
_LN_GAINS = (
    Param("ln_weight_ih", "ln_ih", lambda s: (s.G * s.H,), init="ones", option="layer_norm"),
    Param("ln_weight_hh", "ln_hh", lambda s: (s.G * s.H,), init="ones", option="layer_norm"),
)


RNN = Cell(
    name="rnn",
    title="RNN",
    gates=("h",),
    states=("h",),
    options=(
        Option(
            "nonlinearity",
            "tanh",
            _nonlinearity,
            functional=True,
            doc="the activation, 'tanh' or 'relu'",
            example="relu",
        ),
        _RECURRENT_DROPOUT,
        _ZONEOUT_H,
    ),
    params=_uniform_weights(),
    kernel="rnn",
    grads=RNNGrads,
    variants=MappingProxyType(
        {
            "rnn_tanh": MappingProxyType({"nonlinearity": "tanh"}),
            "rnn_relu": MappingProxyType({"nonlinearity": "relu"}),
        }
    ),
)

_LSTM_FEATURES = ("peephole", "layer_norm", "recurrent_dropout", "zoneout", "return_cell_states")

LSTM = Cell(
    name="lstm",
    title="LSTM",
    gates=("i", "f", "g", "o"),
    states=("h", "c"),
    options=(
        Option(
            "proj_size",
            0,
            _nonnegative_int,
            conflicts=_LSTM_FEATURES,
            doc="project h to this many features (< hidden_size), 0 for none",
            example=lambda hidden_size: max(1, hidden_size // 2),
        ),
        Option(
            "peephole",
            False,
            _bool,
            doc="i and f see c_{t-1}, o sees c_t, through per-unit weights (Gers & Schmidhuber)",
            example=True,
        ),
        Option(
            "layer_norm",
            False,
            _bool,
            # the layer-norm kernels (lstm.pyx's *_ln_part) do not run these yet
            conflicts=("peephole", "recurrent_dropout", "zoneout", "return_cell_states"),
            doc="layer-normalise the input and recurrent pre-activations and the cell (Ba et al.)",
            example=True,
        ),
        _RECURRENT_DROPOUT,
        Option(
            "zoneout",
            (0.0, 0.0),
            _zoneout_pair,
            doc="probability of keeping each unit of h and c from the last step (Krueger et al.)",
            example=(0.1, 0.05),
        ),
        Option(
            "return_cell_states",
            False,
            _bool,
            functional=True,
            doc="also return the cell state c_t of every step",
            example=True,
        ),
    ),
    params=_uniform_weights(
        (
            Param("weight_hr", "w_hr", lambda s: (s.options["proj_size"], s.H), option="proj_size"),
            Param("weight_peephole", "w_peephole", lambda s: (3, s.H), option="peephole"),
            *_LN_GAINS,
            Param("ln_weight_c", "ln_c", lambda s: (s.H,), init="ones", option="layer_norm"),
            Param("ln_bias_c", "ln_c_bias", lambda s: (s.H,), init="zeros", option="layer_norm"),
        )
    ),
    kernel="lstm",
    grads=LSTMGrads,
    variants=MappingProxyType({"lstm": MappingProxyType({})}),
)

GRU = Cell(
    name="gru",
    title="GRU",
    gates=("r", "z", "n"),
    states=("h",),
    options=(
        Option(
            "reset_after",
            True,
            _bool,
            functional=True,
            conflicts=("layer_norm", "recurrent_dropout", "zoneout"),
            doc="apply the reset gate after the hidden matmul (PyTorch) or before it",
            example=False,
        ),
        Option(
            "layer_norm",
            False,
            _bool,
            # the layer-norm kernels (gru.pyx's *_ln_part) do not run these yet
            conflicts=("recurrent_dropout", "zoneout"),
            doc="layer-normalise the input and recurrent pre-activations (Ba et al.)",
            example=True,
        ),
        _RECURRENT_DROPOUT,
        _ZONEOUT_H,
    ),
    params=_uniform_weights(_LN_GAINS),
    kernel="gru",
    grads=GRUGrads,
    variants=MappingProxyType({"gru": MappingProxyType({})}),
)

#: Every cell by name, in the order the docs, the bench and the tests list them.
CELLS: Mapping[str, Cell] = MappingProxyType({c.name: c for c in (RNN, LSTM, GRU)})


def get_cell(cell: str | Cell) -> Cell:
    """The :class:`Cell` of a name (or the cell itself); ``ValueError`` naming the choices."""
    if isinstance(cell, Cell):
        return cell
    try:
        return CELLS[cell]
    except (KeyError, TypeError):
        names = ", ".join(repr(n) for n in CELLS)
        raise ValueError(f"cell must be one of {names}, got {cell!r}") from None
