"""Export trained :mod:`fastrnn.nn` models to ONNX, for inference runtimes.

:func:`export` writes a model as the standard ONNX ``RNN``, ``LSTM`` and ``GRU`` operators (one
per layer of a stack), plus ``Gather`` for an :class:`~fastrnn.nn.Embedding` and ``MatMul`` /
``Add`` for a :class:`~fastrnn.nn.Linear`, so that ONNX Runtime or any other ONNX engine runs
it without fastrnn. Needs the optional extra: ``pip install "fastrnn[onnx]"`` (``onnx``, and
``onnxruntime`` to run the result); ``import fastrnn`` never imports this module.

What can be exported:

* a recurrent layer (:class:`fastrnn.RNN`, :class:`fastrnn.LSTM`, :class:`fastrnn.GRU`): any
  number of layers, bidirectional, with or without biases, ``batch_first`` or not, float32 or
  float64; ``lengths`` becomes ONNX's ``sequence_lens``;
* a chain of blocks: an :class:`~fastrnn.nn.Sequential`, or a list of blocks, applied in order,
  where each recurrent layer passes on its output ``out`` (not its final states) and
  :class:`~fastrnn.nn.Dropout` is the identity (inference). This is also how a model of your own
  is exported: list the blocks its ``forward`` applies, ``export([model.embed, model.lstm,
  model.head], path)``, when its forward is that chain. A forward that does something else
  (takes ``h_n[-1]``, adds two branches) has no generic translation: :func:`export` refuses a
  custom :class:`~fastrnn.nn.Module` rather than guess.

Each cell's translation is a row of a table keyed by the registry's cells
(:data:`fastrnn.cells.CELLS`): the operator, ONNX's gate order (PyTorch's LSTM ``i, f, g, o``
is ONNX's ``i, o, f, c``; GRU ``r, z, n`` is ``z, r, h``) and a rule per option. An option
without a rule is exported only at its default value; ``proj_size`` (ONNX's ``LSTM`` has no
projection) is refused, ``reset_after=False`` is ``linear_before_reset=0`` and the ReLU RNN is
``activations=["Relu"]``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

try:
    import onnx
    from onnx import TensorProto, helper, numpy_helper
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "fastrnn.onnx needs the onnx package: pip install 'fastrnn[onnx]' (or pip install onnx)"
    ) from e

from fastrnn import cells
from fastrnn.nn import Dropout, Embedding, Linear, Module, Sequential
from fastrnn.nn.rnn import RNNBase

__all__ = ["DEFAULT_OPSET", "ExportError", "OnnxCell", "ONNX_CELLS", "export"]

#: The ONNX opset :func:`export` writes by default (ONNX Runtime 1.14 and later run it).
DEFAULT_OPSET = 17
#: The oldest opset :func:`export` writes (the operators it uses last changed meaning in 14).
MIN_OPSET = 14


class ExportError(ValueError):
    """A model, block or option that the ONNX operators cannot express."""


@dataclass(frozen=True)
class OnnxCell:
    """How one cell of :data:`fastrnn.cells.CELLS` is written as an ONNX operator.

    Attributes
    ----------
    op : str
        The ONNX operator (``"RNN"``, ``"LSTM"``, ``"GRU"``).
    gates : tuple of str
        ONNX's gate order, in the registry's gate names (:attr:`fastrnn.cells.Cell.gates`):
        the rows of each weight and bias are permuted from the registry's order to this one.
    rules : mapping of str to callable
        Per option, ``value -> dict`` of the operator attributes that express it.
    refused : mapping of str to str
        Options that ONNX cannot express away from their default, with the reason.
    ignored : tuple of str
        Options that change training only (nothing to write for inference).

    An option in none of these is exported only at its default value.
    inputs : mapping of str to (str, tuple of int)
        Further operator inputs taken from a parameter, when the layer has it: ONNX input name
        -> (the registry's parameter name, the order of its rows in ONNX).
    """

    op: str
    gates: tuple[str, ...]
    rules: Mapping[str, Callable[[Any], dict[str, Any]]] = field(default_factory=dict)
    refused: Mapping[str, str] = field(default_factory=dict)
    ignored: tuple[str, ...] = ()
    inputs: Mapping[str, tuple[str, tuple[int, ...]]] = field(default_factory=dict)


def _rnn_activation(value: str) -> dict[str, Any]:
    return {"activations": [value.capitalize()]}  # "Tanh" / "Relu"; doubled when bidirectional


def _gru_reset(value: bool) -> dict[str, Any]:
    # ONNX's GRU: linear_before_reset=1 is r * (R_h h + Rb_h) (PyTorch's, reset after the
    # matmul); 0 is R_h (r * h) + Rb_h (Cho et al.), fastrnn's reset_after=False.
    return {"linear_before_reset": 1 if value else 0}


_ZONEOUT = (
    "zoneout keeps each unit's previous value with probability p in training and uses the "
    "expectation (1 - p) * new + p * old in eval, which the ONNX operators cannot express"
)
_LAYER_NORM = (
    "layer_norm normalises the gate pre-activations inside the step: no ONNX operator does"
)

#: The ONNX translation of every cell of the registry, keyed by the :class:`fastrnn.cells.Cell`.
ONNX_CELLS: Mapping[cells.Cell, OnnxCell] = {
    cells.RNN: OnnxCell(
        "RNN",
        ("h",),
        rules={"nonlinearity": _rnn_activation},
        refused={"zoneout": _ZONEOUT},
        ignored=("recurrent_dropout",),
    ),
    cells.LSTM: OnnxCell(
        "LSTM",
        ("i", "o", "f", "g"),
        rules={"peephole": lambda value: {}},  # written as the P input (below)
        refused={
            "proj_size": "the ONNX LSTM operator has no output projection (W_hr)",
            "layer_norm": _LAYER_NORM,
            "zoneout": _ZONEOUT,
            "return_cell_states": "the ONNX LSTM operator returns only the last cell state",
        },
        ignored=("recurrent_dropout",),
        # fastrnn's weight_peephole rows are i, f, o; ONNX's P is i, o, f
        inputs={"P": ("weight_peephole", (0, 2, 1))},
    ),
    cells.GRU: OnnxCell(
        "GRU",
        ("z", "r", "n"),
        rules={"reset_after": _gru_reset},
        refused={"layer_norm": _LAYER_NORM, "zoneout": _ZONEOUT},
        ignored=("recurrent_dropout",),
    ),
}

_DTYPES = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float64): TensorProto.DOUBLE}
# The parameters every operator takes as W, R and B.
_CORE_PARAMS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


class _Graph:
    """Nodes, initializers, inputs and outputs being built, with unique names."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self._used: set[str] = set()

    def name(self, stem: str) -> str:
        name, k = stem, 1
        while name in self._used:
            name, k = f"{stem}_{k}", k + 1
        self._used.add(name)
        return name

    def const(self, stem: str, value: np.ndarray) -> str:
        name = self.name(stem)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def node(self, op: str, inputs: Sequence[str], stem: str, n_out: int = 1, **attrs: Any):
        outs = [self.name(f"{stem}_{k}" if n_out > 1 else stem) for k in range(n_out)]
        self.nodes.append(helper.make_node(op, list(inputs), outs, name=self.name(op), **attrs))
        return outs[0] if n_out == 1 else outs


def _blocks(model: Any) -> list[tuple[str, Module]]:
    """The chain of blocks with their names (``"0"``, ``"encoder"``, ...), Sequentials flattened."""
    if isinstance(model, Sequential):
        items = list(model._modules.items())
    elif isinstance(model, list | tuple):
        items = [(str(i), m) for i, m in enumerate(model)]
    else:
        items = [("", model)]
    out: list[tuple[str, Module]] = []
    for name, m in items:
        if isinstance(m, Sequential | list | tuple):
            out += [(f"{name}.{n}" if name else n, b) for n, b in _blocks(m)]
        elif isinstance(m, RNNBase | Linear | Embedding | Dropout):
            out.append((name, m))
        elif isinstance(m, Module):
            raise ExportError(
                f"cannot export {type(m).__name__}{f' (block {name!r})' if name else ''}: "
                "fastrnn.onnx.export writes RNN, LSTM, GRU, Linear, Embedding and Dropout "
                "blocks, alone, in a Sequential or in a list applied in order. For a model of "
                "your own whose forward is such a chain, list its blocks: "
                "export([model.embed, model.lstm, model.head], path); a forward that does "
                "anything else has no generic ONNX translation"
            )
        else:
            raise TypeError(
                f"model must be a fastrnn.nn Module, a Sequential or a list of blocks; got "
                f"{type(m).__name__}"
            )
    if not out:
        raise ExportError("model has no blocks to export")
    return out


def _check_cell(layer: RNNBase) -> OnnxCell:
    """The cell's row of :data:`ONNX_CELLS`, or ExportError."""
    spec = layer._config.spec
    if spec not in ONNX_CELLS:
        raise ExportError(f"{spec.title}: no ONNX translation for the cell {spec.name!r}")
    return ONNX_CELLS[spec]


def _cell_attributes(layer: RNNBase, row: OnnxCell, where: str) -> dict[str, Any]:
    cfg = layer._config
    spec = cfg.spec
    defaults = spec.option_defaults()
    attrs: dict[str, Any] = {}
    for name, value in cfg.options.items():
        if name in row.rules:
            attrs.update(row.rules[name](value))
        elif name in row.ignored or value == defaults[name]:
            continue
        else:
            why = row.refused.get(name, f"the ONNX {row.op} operator has no equivalent")
            raise ExportError(
                f"cannot export {where}{spec.title} with {name}={value!r}: {why} (export "
                f"takes {name} only at its default, {defaults[name]!r})"
            )
    mapped = set(_CORE_PARAMS) | {p for p, _ in row.inputs.values()}
    for p in cfg.params():
        if p.name not in mapped:
            raise ExportError(
                f"cannot export {where}{spec.title}: its parameter {p.name} has no place in "
                f"the ONNX {row.op} operator"
            )
    return attrs


def _gate_rows(spec: cells.Cell, row: OnnxCell, H: int) -> np.ndarray:
    """Row indices that reorder a (G*H, ...) weight from the registry's gates to ONNX's."""
    order = [spec.gates.index(g) for g in row.gates]
    return np.concatenate([np.arange(k * H, (k + 1) * H) for k in order])


def _recurrent(
    g: _Graph,
    layer: RNNBase,
    x: str,
    x_dtype: np.dtype,
    lengths: str | None,
    states: Mapping[str, str] | None,
    prefix: str,
) -> tuple[str, dict[str, str]]:
    """Write every layer of a recurrent block; returns its output and final states."""
    cfg = layer._config
    spec = cfg.spec
    where = f"block {prefix.rstrip('.')!r}: " if prefix else ""
    row = _check_cell(layer)
    attrs = _cell_attributes(layer, row, where)
    D, H, L = cfg.num_directions, cfg.hidden_size, cfg.num_layers
    dt = layer.dtype
    if "activations" in attrs:
        attrs["activations"] = attrs["activations"] * D
    attrs["hidden_size"] = H
    attrs["direction"] = "bidirectional" if D == 2 else "forward"
    rows = _gate_rows(spec, row, H)
    weights = {n: layer._parameters[n].data for n in layer._flat_weights_names}
    if x_dtype != dt:
        x = g.node("Cast", [x], f"{prefix}x_cast", to=_DTYPES[dt])
    # (B, T, I) -> (T, B, I): the operators are time-major (ONNX Runtime does not run layout=1)
    if layer.batch_first:
        x = g.node("Transpose", [x], f"{prefix}x_time_major", perm=[1, 0, 2])
    finals: dict[str, list[str]] = {s: [] for s in spec.states}
    for k in range(L):
        sfx = [f"_l{k}", f"_l{k}_reverse"][:D]
        W = np.stack([weights[f"weight_ih{s}"][rows] for s in sfx])
        R = np.stack([weights[f"weight_hh{s}"][rows] for s in sfx])
        ins = [x, g.const(f"{prefix}W_l{k}", W), g.const(f"{prefix}R_l{k}", R)]
        if cfg.bias:
            B = np.stack(
                [
                    np.concatenate([weights[f"bias_ih{s}"][rows], weights[f"bias_hh{s}"][rows]])
                    for s in sfx
                ]
            )
            ins.append(g.const(f"{prefix}B_l{k}", B))
        else:
            ins.append("")
        ins.append(lengths or "")
        for s in spec.states:  # initial_h (initial_c): rows k*D .. k*D+D of (L*D, B, size)
            if states is None:
                ins.append("")
            else:
                starts = g.const(f"{prefix}{s}0_l{k}_start", np.array([k * D], np.int64))
                ends = g.const(f"{prefix}{s}0_l{k}_end", np.array([(k + 1) * D], np.int64))
                axes = g.const(f"{prefix}{s}0_l{k}_axes", np.array([0], np.int64))
                ins.append(g.node("Slice", [states[s], starts, ends, axes], f"{prefix}{s}0_l{k}"))
        for onnx_name, (pname, order) in row.inputs.items():
            if pname + sfx[0] in weights:
                P = np.stack([np.concatenate([weights[pname + s][j] for j in order]) for s in sfx])
                ins.append(g.const(f"{prefix}{onnx_name}_l{k}", P))
            else:
                ins.append("")
        while ins and ins[-1] == "":
            ins.pop()
        # outputs Y (T, D, B, H), Y_h (D, B, H) [, Y_c (D, B, H)]
        outs = g.node(row.op, ins, f"{prefix}{row.op.lower()}_l{k}", n_out=1 + len(spec.states),
                      **attrs)  # fmt: skip
        for s, name in zip(spec.states, outs[1:], strict=True):
            finals[s].append(name)
        # Y (T, D, B, H) -> (T, B, D, H) -> (T, B, D*H): the next layer's input
        y = g.node("Transpose", [outs[0]], f"{prefix}y_l{k}_tbdh", perm=[0, 2, 1, 3])
        shape = g.const(f"{prefix}y_l{k}_shape", np.array([0, 0, -1], np.int64))
        x = g.node("Reshape", [y, shape], f"{prefix}y_l{k}")
    if layer.batch_first:
        x = g.node("Transpose", [x], f"{prefix}y_batch_first", perm=[1, 0, 2])
    out_states = {}
    for s, names in finals.items():
        out_states[s] = (
            names[0] if L == 1 else g.node("Concat", names, f"{prefix}{s}_n_concat", axis=0)
        )
    return x, out_states


def export(
    model: Module | Sequence[Module],
    path: str | os.PathLike[str] | None,
    *,
    lengths: bool = False,
    initial_state: bool = False,
    opset_version: int = DEFAULT_OPSET,
) -> onnx.ModelProto:
    """Write a model as ONNX ``RNN``/``LSTM``/``GRU`` operators (and ``Gather``, ``MatMul``).

    The graph computes the model's eval-mode forward (no dropout) with its current weights.
    Its inputs and outputs:

    * ``x`` (first input): the first block's input, in the first recurrent layer's layout,
      ``(T, B, input_size)`` or ``(B, T, input_size)`` with ``batch_first``; int64 indices of
      shape ``(T, B)`` (``(B, T)``) when the first block is an :class:`~fastrnn.nn.Embedding`.
      T and B are dynamic.
    * ``lengths`` (with ``lengths=True``): int32 of shape ``(B,)``, each in ``[1, T]``: the
      ``lengths=`` of every recurrent layer (ONNX's ``sequence_lens``).
    * ``h0`` (and ``c0`` for an LSTM) (with ``initial_state=True``): the initial states of
      each recurrent block, of shape ``(L*D, B, H)`` as its forward takes them; without it
      they are zeros.
    * ``y`` (first output): the last block's output, in the layout fastrnn returns it (a
      recurrent layer's ``out`` in its own layout).
    * ``h_n`` (and ``c_n``) of each recurrent block, ``(L*D, B, H)``.

    With several recurrent blocks, their state inputs and outputs are named after the block
    (``"1.h0"``, ``"1.h_n"``, ...).

    Parameters
    ----------
    model : Module or sequence of Module
        A recurrent layer, a :class:`~fastrnn.nn.Linear`, an :class:`~fastrnn.nn.Embedding`,
        a :class:`~fastrnn.nn.Sequential` of such blocks (and :class:`~fastrnn.nn.Dropout`,
        the identity), or a list of them applied in order; each recurrent layer passes its
        ``out`` on. It must contain a recurrent layer.
    path : str, os.PathLike or None
        Where to write the ``.onnx`` file; None writes nothing (use the returned model).
    lengths : bool, default=False
        Add the ``lengths`` input (variable-length batches).
    initial_state : bool, default=False
        Add the initial-state inputs.
    opset_version : int, default=17
        The ONNX opset, 14 or later.

    Returns
    -------
    onnx.ModelProto
        The checked model (also written to ``path``).

    Raises
    ------
    ExportError
        (A ``ValueError``.) For a block or an option that ONNX cannot express, naming it and
        why: a custom ``Module``, an LSTM with ``proj_size``, layer norm or zoneout, an
        Embedding that is not the first block.
    TypeError
        When ``model`` is not a fastrnn module or a list of them.

    Examples
    --------
    >>> import fastrnn, fastrnn.onnx
    >>> lstm = fastrnn.LSTM(8, 16, num_layers=2, batch_first=True, seed=0)
    >>> proto = fastrnn.onnx.export(lstm, None, lengths=True)
    >>> [i.name for i in proto.graph.input], [o.name for o in proto.graph.output]
    (['x', 'lengths'], ['y', 'h_n', 'c_n'])
    """
    if isinstance(opset_version, bool) or not isinstance(opset_version, int):
        raise TypeError(f"opset_version must be an int, got {type(opset_version).__name__}")
    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset_version <= newest:
        raise ValueError(
            f"opset_version must be in [{MIN_OPSET}, {newest}] (this onnx package's newest), "
            f"got {opset_version}"
        )
    blocks = _blocks(model)
    recurrent = [(n, b) for n, b in blocks if isinstance(b, RNNBase)]
    if not recurrent:
        raise ExportError(
            "model has no recurrent layer (RNN, LSTM or GRU): fastrnn.onnx.export writes "
            "recurrent models"
        )
    for i, (name, b) in enumerate(blocks):
        if isinstance(b, Embedding) and i > 0:
            raise ExportError(
                f"block {name!r}: an Embedding takes integer indices, so it can only be the "
                "first block"
            )
    first_rnn = recurrent[0][1]
    multi = len(recurrent) > 1
    g = _Graph()

    # graph input x
    first = next(b for _, b in blocks if not isinstance(b, Dropout))
    time_batch = ["B", "T"] if first_rnn.batch_first else ["T", "B"]
    x = g.name("x")
    x_dtype: np.dtype | None
    if isinstance(first, Embedding):
        g.inputs.append(helper.make_tensor_value_info(x, TensorProto.INT64, time_batch))
        x_dtype = None
    else:
        if isinstance(first, Linear):
            x_dtype, width = first.weight.data.dtype, first.in_features
        else:
            x_dtype, width = first.dtype, first.input_size
        g.inputs.append(helper.make_tensor_value_info(x, _DTYPES[x_dtype], [*time_batch, width]))
    lengths_name = None
    if lengths:
        lengths_name = g.name("lengths")
        g.inputs.append(helper.make_tensor_value_info(lengths_name, TensorProto.INT32, ["B"]))

    final_outputs: list[tuple[str, np.dtype, list[Any]]] = []
    cur, cur_dtype = x, x_dtype
    for name, b in blocks:
        prefix = f"{name}." if multi else ""
        if isinstance(b, Dropout):
            continue
        if isinstance(b, Embedding):
            w = g.const(f"{name or 'embedding'}.weight", b.weight.data)
            cur = g.node("Gather", [w, cur], f"{name or 'embedding'}.out", axis=0)
            cur_dtype, width = b.weight.data.dtype, b.embedding_dim
        elif isinstance(b, Linear):
            dt = b.weight.data.dtype
            if cur_dtype != dt:
                cur = g.node("Cast", [cur], f"{name or 'linear'}.x_cast", to=_DTYPES[dt])
            wt = g.const(f"{name or 'linear'}.weight_t", b.weight.data.T)
            cur = g.node("MatMul", [cur, wt], f"{name or 'linear'}.matmul")
            if b.bias is not None:
                bias = g.const(f"{name or 'linear'}.bias", b.bias.data)
                cur = g.node("Add", [cur, bias], f"{name or 'linear'}.out")
            cur_dtype, width = dt, b.out_features
        else:
            states = None
            state_names = {s: f"{prefix}{s}0" for s in b._config.spec.states}
            shapes = b._config.state_shapes(1)
            if initial_state:
                states = {}
                for s, sname in state_names.items():
                    states[s] = g.name(sname)
                    L_D, _, size = shapes[s]
                    g.inputs.append(
                        helper.make_tensor_value_info(states[s], _DTYPES[b.dtype], [L_D, "B", size])
                    )
            cur, finals = _recurrent(g, b, cur, cur_dtype, lengths_name, states, prefix)
            cur_dtype = b.dtype
            width = b._config.num_directions * b._config.output_size
            for s, tensor in finals.items():
                L_D, _, size = shapes[s]
                final_outputs.append((tensor, f"{prefix}{s}_n", b.dtype, [L_D, "B", size]))

    # every block keeps the two leading axes in place and changes the last one
    y = g.node("Identity", [cur], "y")
    g.outputs.append(
        helper.make_tensor_value_info(y, _DTYPES[np.dtype(cur_dtype)], [*time_batch, width])
    )
    for tensor, out_name, dt, shape in final_outputs:
        out = g.node("Identity", [tensor], out_name)
        g.outputs.append(helper.make_tensor_value_info(out, _DTYPES[dt], shape))

    graph = helper.make_graph(g.nodes, "fastrnn", g.inputs, g.outputs, g.initializers)
    proto = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset_version)],
        producer_name="fastrnn",
        producer_version=_version(),
    )
    # The oldest IR version that has this opset, not the onnx package's newest: runtimes
    # older than the package can then read the file.
    proto.ir_version = helper.find_min_ir_version_for(list(proto.opset_import))
    onnx.checker.check_model(proto, full_check=True)
    if path is not None:
        onnx.save(proto, os.fspath(path))
    return proto


def _version() -> str:
    import fastrnn

    return fastrnn.__version__
