"""int8 dynamic quantization for inference: :func:`quantize_dynamic` (PyTorch's name).

A quantized layer keeps each weight matrix as int8 with one float32 scale per output channel
(a row of ``W``: ``w ~ scale[n] * q[n, k]``, ``scale = max|W[n]| / 127``), packed once for the
integer GEMMs (``src_pyx/_qgemm.h``). At each call it quantizes the activations on the fly,
one scale per row (each step's ``x_t`` and ``h_{t-1}`` of each sequence), runs the GEMMs in
integers (AVX-512 VNNI's ``vpdpbusd`` where the CPU has it, AVX-VNNI's 256-bit one where it
has only that, portable C elsewhere: the same integers, the same float32 epilogue, so the
three agree bit for bit), and keeps the biases and the gate math in float32. Outputs are
float32.

Inference only: a quantized module has no parameters to train (an optimizer built over the
model does not see it) and its ``backward`` raises ``RuntimeError``; ``train()`` only sets the
flag (so that code which switches a model between modes keeps working), and the forward is the
same in either mode (no dropout). Its int8 weights, scales and biases are saved and loaded by
:mod:`fastrnn.checkpoint` like parameters (about 4x smaller than float32 on disk and in
memory).

What is quantized: :class:`~fastrnn.RNN` (tanh, relu), :class:`~fastrnn.LSTM` and
:class:`~fastrnn.GRU` (PyTorch's reset-after GRU), and :class:`~fastrnn.nn.Linear`. Layers the
integer kernels do not cover (an LSTM with ``proj_size``, ``peephole`` or
``return_cell_states``, a reset-before GRU, layer norm, zoneout, the NumPy backend) keep
their float32 weights and run the float32 kernels; their ``repr`` says ``float32`` and why.

``FASTRNN_QUANT_ISA=c`` (or :func:`set_quantized_isa`) forces the portable path,
``FASTRNN_QUANT_ISA=avxvnni`` the 256-bit one.

The portable path is plain C: 2.7-14x slower than the float32 kernels at B = 64 on the
development machine (``FASTRNN_QUANT_ISA=c python benchmarks/bench_int8_sizes.py``), so with
``quantize_dynamic``'s default ``int8="auto"`` a layer whose calls would take it (a CPU
with neither AVX-512 VNNI nor AVX-VNNI, or ``set_quantized_isa("c")``) keeps its int8 weights
and checkpoint but runs the float32 kernels on the dequantized weights (``scale[n] * q[n, k]``,
exactly as stored) with float32 activations, and says so in its ``repr`` (``quantized`` is then
False); ``int8="always"`` runs the integer kernels on any path. The choice is made at each
call, by the path in use then.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from fastrnn import _workspace as _ws
from fastrnn import functional as _functional
from fastrnn._kernels import _stream
from fastrnn._threads import get_num_threads
from fastrnn.cells import GRU, LSTM, RNN
from fastrnn.functional import _LAST_END, _step_team, _team_awake
from fastrnn.nn.blocks import Linear
from fastrnn.nn.module import Module
from fastrnn.nn.rnn import RNNBase

__all__ = [
    "QuantizedLinear",
    "QuantizedRNNBase",
    "get_quantized_isa",
    "quantize_dynamic",
    "set_quantized_isa",
]


def _kernels():
    from fastrnn._kernels import quant

    global _quant
    _quant = quant
    return quant


_quant = None  # the kernels module, once _kernels() imported it (every layer call reads it)


_ISAS = {"vnni": 1, "avxvnni": 2, "c": 0}


def set_quantized_isa(isa: str) -> None:
    """Choose the integer GEMMs: ``"vnni"`` (AVX-512 VNNI), ``"avxvnni"`` (AVX-VNNI, 256-bit)
    or ``"c"`` (portable). All three compute the same integers and the same float32 results;
    the default is the first this CPU runs (or ``FASTRNN_QUANT_ISA``'s).

    Raises
    ------
    ValueError
        For another name, or a path this CPU does not run.
    """
    _check_isa(isa)
    _ensure_isa()  # FASTRNN_QUANT_ISA first, so that this call has the last word
    _kernels()._set_isa(_ISAS[isa])


def get_quantized_isa() -> str:
    """``"vnni"``, ``"avxvnni"`` or ``"c"``: the integer GEMMs in use (``FASTRNN_QUANT_ISA``
    applied: before, a process that set it read the CPU's default here until its first
    quantized call)."""
    _ensure_isa()
    return {v: k for k, v in _ISAS.items()}[_kernels()._get_isa()]


def _check_isa(isa: str) -> None:
    q = _kernels()
    if isa not in _ISAS:
        raise ValueError(f"isa must be 'vnni', 'avxvnni' or 'c', got {isa!r}")
    if isa == "vnni" and not q.vnni_available():
        raise ValueError("isa='vnni' needs a CPU with AVX-512 VNNI; this one has none")
    if isa == "avxvnni" and not q.avxvnni_available():
        raise ValueError("isa='avxvnni' needs a CPU with AVX-VNNI; this one has none")


def _init_isa() -> None:
    env = os.environ.get("FASTRNN_QUANT_ISA", "").strip().lower()
    if env:
        try:
            _check_isa(env)
        except ValueError as e:
            raise ValueError(f"FASTRNN_QUANT_ISA={env!r}: {e}") from None
        _kernels()._set_isa(_ISAS[env])


_init_isa_done = False


def _ensure_isa() -> None:
    global _init_isa_done
    if not _init_isa_done:
        _init_isa()
        _init_isa_done = True


def _round16(n: int) -> int:
    return (n + 15) // 16 * 16


def _quantize_weight(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int8 rows and their float32 scales: ``w ~ scale[:, None] * q``."""
    w = np.asarray(w, np.float64)
    amax = np.abs(w).max(axis=1) if w.shape[1] else np.zeros(w.shape[0])
    scale = np.where(amax > 0, amax / 127.0, 1.0)
    q = np.clip(np.rint(w / scale[:, None]), -127, 127).astype(np.int8)
    return q, scale.astype(np.float32)


class _Packed:
    """One int8 weight (N, K) packed for the kernels, N padded to Np (per-gate with ``gates``)."""

    __slots__ = ("K", "Kp", "N", "Np", "colsum", "data", "scale")

    def __init__(self, q: np.ndarray, scale: np.ndarray, gates: int = 1, pad_k: int | None = None):
        N, K = q.shape
        H = N // gates
        Hp = _round16(H)
        Kp = pad_k if pad_k is not None else (K + 3) // 4 * 4
        # each gate's H rows padded to Hp (zeros), K padded to Kp (zeros)
        qp = np.zeros((gates * Hp, Kp), np.int8)
        sp = np.zeros(gates * Hp, np.float32)
        for g in range(gates):
            qp[g * Hp : g * Hp + H, :K] = q[g * H : (g + 1) * H]
            sp[g * Hp : g * Hp + H] = scale[g * H : (g + 1) * H]
        self.N, self.K, self.Np, self.Kp = N, K, gates * Hp, Kp
        self.data = np.empty(self.Np * Kp, np.int8)
        self.colsum = np.empty(self.Np, np.int32)
        _kernels().pack(qp, self.data, self.colsum)
        self.scale = sp

    def matmul(self, x: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
        """``(M, K)`` float32 rows -> ``(M, Np)`` float32: x quantized per row, then the GEMM."""
        q = _kernels()
        M = x.shape[0]
        xq = np.empty((M, self.Kp), np.uint8)
        xs = np.empty(M, np.float32)
        q.quantize_rows(np.ascontiguousarray(x, np.float32), xq, xs)
        out = np.empty((M, self.Np), np.float32)
        q.gemm(xq, xs, self.data, self.colsum, self.scale, bias, out)
        return out


def _pad_gates(v: np.ndarray, gates: int) -> np.ndarray:
    H = v.shape[0] // gates
    Hp = _round16(H)
    out = np.zeros(gates * Hp, np.float32)
    for g in range(gates):
        out[g * Hp : g * Hp + H] = v[g * H : (g + 1) * H]
    return out


# What a layer's repr says when int8="auto" runs it in float32 for want of the VNNI path.
_SLOW_PATH = (
    "int8 weights, float32 kernels: the integer GEMMs would run the portable path (no VNNI on "
    "this CPU, or set_quantized_isa('c')), measured 2.7-14x slower than float32 at B = 64"
)


def _dequantize(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """The float32 weight an int8 one stands for: ``scale[:, None] * q``."""
    return (scale[:, None] * q.astype(np.float32)).astype(np.float32)


class _QuantizedModule(Module):
    """What the quantized modules share: int8 state as ``_buffers``, saved by checkpoints."""

    def __init__(self, int8: str = "always") -> None:
        super().__init__()
        object.__setattr__(self, "_buffers", {})
        self._auto = int8 == "auto"

    def _slow_path(self) -> bool:
        """Whether this call runs float32 kernels on the dequantized weights: int8="auto" and
        the integer GEMMs on the portable path (module docstring)."""
        # (a module pickled before int8="auto" was recorded runs the integer kernels, as then)
        return self.__dict__.get("_auto", False) and (_quant or _kernels())._get_isa() == 0

    def _dequantized(self, make: Callable[[], Any], packed: Any) -> Any:
        """``make()`` (the float32 stand-in of :meth:`_slow_path` calls), kept while ``packed``
        (what :meth:`_repack` made last: a checkpoint load re-makes it) is the same object:
        not state, so copies and pickles re-make it."""
        cache = self.__dict__.get("_deq")
        if cache and cache[0] is packed:
            return cache[1]
        made = make()
        self.__dict__["_deq"] = _Transient([packed, made])
        return made

    def named_buffers(self, prefix: str = ""):
        for name, arr in self._buffers.items():
            yield prefix + name, arr

    def _set_buffers(self, arrays: dict[str, np.ndarray]) -> None:
        self._buffers.update(arrays)
        self._repack()

    def _repack(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def backward(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(
            f"{type(self).__name__} is a quantized module, for inference only: it has no "
            "backward. Train the float32 model and quantize it afterwards."
        )


class QuantizedLinear(_QuantizedModule):
    """:class:`~fastrnn.nn.Linear` with an int8 weight (per-output-channel scales).

    Built by :func:`quantize_dynamic`; ``y = x W^T + b`` with x quantized per row.
    """

    def __init__(self, linear: Linear, int8: str = "always") -> None:
        super().__init__(int8)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        q, s = _quantize_weight(linear.weight.data)
        buffers = {"weight_int8": q, "weight_scale": s}
        if linear.bias is not None:
            buffers["bias"] = linear.bias.data.astype(np.float32)
        self._set_buffers(buffers)
        self.training = False

    def _repack(self) -> None:
        b = self._buffers
        self._packed = _Packed(b["weight_int8"], b["weight_scale"])
        bias = b.get("bias")
        self._bias = None
        if bias is not None:
            self._bias = np.zeros(self._packed.Np, np.float32)
            self._bias[: self.out_features] = bias

    def forward(self, x: Any) -> np.ndarray:
        """``x`` (..., in_features) -> float32 (..., out_features)."""
        _ensure_isa()
        x = np.asarray(x, dtype=np.float32)
        if x.ndim == 0 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"x must have shape (..., in_features={self.in_features}), got {x.shape}"
            )
        lead = x.shape[:-1]
        if self._slow_path():
            w, b = self._dequantized(self._float_operands, self._packed)
            y = x.reshape(-1, self.in_features) @ w.T
            if b is not None:
                y += b
            return y.reshape(*lead, self.out_features)
        y = self._packed.matmul(x.reshape(-1, self.in_features), self._bias)
        return np.ascontiguousarray(y[:, : self.out_features]).reshape(*lead, self.out_features)

    def _float_operands(self) -> tuple[np.ndarray, np.ndarray | None]:
        b = self._buffers
        return _dequantize(b["weight_int8"], b["weight_scale"]), b.get("bias")

    @property
    def quantized(self) -> bool:
        """Whether calls run the int8 kernels now (else float32: see ``repr``)."""
        return not self._slow_path()

    def extra_repr(self) -> str:
        s = f"in_features={self.in_features}, out_features={self.out_features}"
        return s + (f", {_SLOW_PATH}" if self._slow_path() else ", int8")


# The int8 kernels run a layer only from these hidden sizes up (``quantize_dynamic(model,
# int8="auto")``); smaller ones stay float32 and say so in their repr. The int8 GEMMs save
# weight bytes and multiply-adds, but each step also quantizes h (two passes over B * H) and
# converts every output back: work that a small H does not pay back, least of all for the
# Elman cell's single gate block. Measured with ``python benchmarks/bench_int8_sizes.py``
# (float32 time / int8 time, I = H, the quiet 2-core development machine, medians), once the
# int8 kernels split a call's rows where they can and merged the gate math's divisions (see
# _team and src_pyx/_qgates.h), and the float32 eval forwards split their rows too
# (functional._step_rows):
#   B = 64, T = 32, 2 threads, H = 8 / 16 / 32 / 48 / 64 / 128 / 256: LSTM 2.26x, 0.82x,
#     1.07-1.11x, 1.27-1.29x, 1.55x, 1.83x, 2.13x; GRU 2.60x, 0.82x, 0.90-0.98x, 1.02-1.03x,
#     1.36x, 1.63x, 1.96x; RNN (8 up, no 48) 0.57x, 0.51x, 0.76x, 1.04x, 1.19x, 1.63x.
#   The same on 1 thread: LSTM 2.64x, 0.86x, 1.11x, -, 1.62x, 1.89x, 2.12x; GRU 2.61x, 1.02x,
#     1.14x, -, 1.46x, 1.79x, 2.04x; RNN 0.56x, 0.45x, 0.71x, 1.05x, 1.32x, 1.80x.
#   At H = 8 (measured before the float32 gate loops ran their last units in vector code,
#   src_pyx/_util.pxd: tail_in) int8 read 2.26-2.64x; after, 1.37-1.41x for both cells.
#   B = 1: every cell and size faster in int8, 1.98-2.62x at T = 32 and 1.19-1.57x a step.
# (Before the float32 row split these were 8, 8 and 64; before the int8 one, 64 for all three;
# before the int8 kernels' rows started on a cache line, 128, 128 and 512.)
_INT8_MIN_HIDDEN = {GRU: 48, LSTM: 32, RNN: 64}


class _Int8Cell(NamedTuple):
    """What the integer kernels run of one registry cell."""

    code: Callable[[dict[str, Any]], int]  # the kernels' cell code, from the layer's options
    takes: tuple[str, ...]  # options they compute away from the default (recurrent dropout
    # acts in training only, so an eval-mode int8 layer is the same function without it)


_INT8_CELLS = {
    RNN: _Int8Cell(
        lambda o: 0 if o["nonlinearity"] == "tanh" else 1, ("nonlinearity", "recurrent_dropout")
    ),  # fmt: skip
    LSTM: _Int8Cell(lambda o: 2, ("recurrent_dropout",)),
    GRU: _Int8Cell(lambda o: 3, ("recurrent_dropout",)),
}


def _cell_code(layer: RNNBase) -> tuple[int | None, str]:
    """The integer kernels' code of ``layer``'s cell, or None and why they cannot run it: an
    option set that they do not compute (never int8 math that silently leaves it out)."""
    cfg = layer._config
    if cfg.backend != "cython":
        return None, "the numpy backend"
    entry = _INT8_CELLS.get(cfg.spec)
    if entry is None:
        return None, f"{cfg.spec.title} is not quantized"
    for option in cfg.spec.options:
        value = cfg.options[option.name]
        if option.name not in entry.takes and value != option.default:
            return None, f"{option.name}={value!r} is not quantized"
    return entry.code(cfg.options), ""


# Where the int8 kernels split a call's batch rows over the team (quant.plan: each thread gets
# 4 rows or more and the packed weights take at most 512 KB), the threads never meet between
# steps, so a call too short for the float32 step rule still gains from an awake worker: in a
# loop of calls (2 threads, the 2-core development machine, best of 5 x 200 calls, the team
# forced) an RNN with B = 16, I = 64, H = 128 took 23 / 19 us (1 / 2 threads) at T = 4
# (2**20.6 multiply-adds), 36 / 26 at T = 8 and 109 / 66 at T = 32; an LSTM with B = 8,
# I = H = 64 21 / 18 us at T = 4 (2**20) and 79 / 56 at T = 32. Waking a sleeping worker
# costs as much as ever (it still joins the call's end): after 0.1 s idle the RNN above at
# T = 1000 took 3.4 ms on one thread and 8.3 on two. The bound is the float32 row split's,
# functional._MIN_ROWS_CALL_WORK (2**20).


def _quant_isa() -> int:
    """The integer GEMMs' path in use (a Stream refuses calls once it changes)."""
    return (_quant or _kernels())._get_isa()


def _team(B: int, G: int, H: int, I: int, T: int, history: dict, code: int) -> int:
    """Threads for an int8 layer call of T steps of B rows (gate width G, input size I, the
    kernels' cell ``code``), with ``history``, this layer's own record of its last call's end
    (a loop of calls shares a spinning team; a call after a pause, or the next layer of one
    model call, does not wake it). A call whose rows the kernels split (above) takes the team
    when it is awake (``functional._team_awake``) and the call has
    ``functional._MIN_ROWS_CALL_WORK`` multiply-adds; any other, the float32 step rule
    (``functional._step_team``). The int8 kernels' threads write 16-unit runs of rows that
    start on a cache line (``_workspace.LINE``); before they did, two threads shared a line at
    each run boundary, and a forward at T = 1000, B = 16, H = 128 took 13.4 ms on 2 threads
    against 10.6 ms on one (7.5 ms on 2 after; 4.8 ms once the rows were split, with the
    cheaper gate math)."""
    n = get_num_threads()
    if n > 1 and B >= 8:  # quant.plan splits rows only where each thread gets 4 or more
        size, split = (_quant or _kernels()).plan(B, H, code, I, n)
        if split == "rows":
            work = T * B * G * (I + H)
            wake = work >= _functional._MIN_ROWS_CALL_WORK and _team_awake(work, history)
            return size if wake else 1
    return _step_team(B, G, H, I, T, history)


class _Transient(list):
    """A list of what a layer re-makes on demand (the step kernels' objects, call histories):
    copies and pickles start empty."""

    def __reduce__(self):
        return (_Transient, ())


class QuantizedRNNBase(_QuantizedModule):
    """An RNN/LSTM/GRU with int8 weights, built by :func:`quantize_dynamic`.

    ``forward(x, hx)`` and ``step(x, state)`` as the float layer's (:meth:`fastrnn.RNN.forward`,
    :meth:`fastrnn.RNN.step`) but for ``lengths``; outputs are float32.
    """

    def __init__(self, layer: RNNBase, int8: str = "always") -> None:
        super().__init__(int8)
        code, why = _cell_code(layer)
        least = _INT8_MIN_HIDDEN.get(layer._config.spec, 0)
        if code is not None and int8 == "auto" and layer.hidden_size < least:
            why = f"hidden_size={layer.hidden_size} < {least}: int8 measured slower for this cell"
            code = None
        self._float = None
        self._code = code
        self._why = why
        self._cls = type(layer).__name__
        self.batch_first = layer.batch_first
        self.input_size, self.hidden_size = layer.input_size, layer.hidden_size
        self.num_layers, self.bidirectional = layer.num_layers, layer.bidirectional
        self._config = layer._config
        self.training = False
        if code is None:  # float32 kernels, float32 weights (a copy, in eval mode)
            self._float = copy.deepcopy(layer).eval()
            self._float.requires_grad_(False)
            return
        buffers: dict[str, np.ndarray] = {}
        for name in layer._flat_weights_names:
            w = layer._parameters[name].data
            if name.startswith("weight_"):
                q, s = _quantize_weight(w)
                buffers[name + "_int8"] = q
                buffers[name + "_scale"] = s
            else:
                buffers[name] = w.astype(np.float32)
        self._set_buffers(buffers)

    def _repack(self) -> None:
        cfg, b = self._config, self._buffers
        G = cfg.spec.G
        self._layers = []
        for layer in range(cfg.num_layers):
            dirs = []
            for d in range(cfg.num_directions):
                sfx = f"_l{layer}" + ("_reverse" if d else "")
                H = cfg.hidden_size
                Hp = _round16(H)
                w_ih = _Packed(b["weight_ih" + sfx + "_int8"], b["weight_ih" + sfx + "_scale"], G)
                w_hh = _Packed(
                    b["weight_hh" + sfx + "_int8"], b["weight_hh" + sfx + "_scale"], G, pad_k=Hp
                )
                if cfg.bias:
                    b_ih, b_hh = b["bias_ih" + sfx], b["bias_hh" + sfx]
                else:
                    b_ih = b_hh = np.zeros(G * H, np.float32)
                b_hn = None
                if self._code == 3:  # GRU: b_hn stays inside r * (W_hn h + b_hn)
                    bx = b_ih.copy()
                    bx[: 2 * H] += b_hh[: 2 * H]
                    b_hn = np.zeros(Hp, np.float32)
                    b_hn[:H] = b_hh[2 * H :]
                else:
                    bx = b_ih + b_hh
                dirs.append((w_ih, w_hh, _pad_gates(bx, G), b_hn))
            self._layers.append(dirs)

    @property
    def quantized(self) -> bool:
        """Whether this layer's calls run the int8 kernels now (else float32, see ``repr``)."""
        return self._float is None and not self._slow_path()

    def _float_layer(self) -> RNNBase:
        """The float32 layer of :meth:`_slow_path` calls: this one's configuration, its
        weights dequantized, its biases as stored, in eval mode."""
        cfg, b = self._config, self._buffers
        layer = RNNBase(
            cfg.spec, cfg.input_size, cfg.hidden_size, cfg.num_layers, cfg.bias,
            self.batch_first, 0.0, cfg.bidirectional, **cfg.options,
        )  # fmt: skip
        for name in layer._flat_weights_names:
            p = layer._parameters[name]
            if name.startswith("weight_"):
                p.data = _dequantize(b[name + "_int8"], b[name + "_scale"])
            else:
                p.data = b[name].astype(np.float32)
        layer.requires_grad_(False)
        return layer.eval()

    def _run(self, x: np.ndarray, h0: np.ndarray, c0: np.ndarray | None):
        """x (T, B, I) float32 contiguous; h0, c0 (L*D, B, H) -> y, h_n, c_n."""
        q = _quant or _kernels()
        cfg = self._config
        T, B, _ = x.shape
        H, D = cfg.hidden_size, cfg.num_directions
        G, ends = cfg.spec.G * H, self._call_ends()
        # final states written in place: h_n[idx] = y[-1]; c_n starts as c0, updated by the kernel
        h_n = np.empty((len(self._layers) * D, B, H), np.float32)
        c_n = None
        if c0 is not None:  # the kernel updates it in place, rows on a line (_workspace.LINE)
            c_n = _ws.empty(c0.shape, np.float32)
            c_n[...] = c0
        inp = x
        for layer, dirs in enumerate(self._layers):
            outs = []
            for d, (w_ih, w_hh, bx, b_hn) in enumerate(dirs):
                idx = layer * D + d
                xin = np.ascontiguousarray(inp[::-1] if d else inp).reshape(T * B, -1)
                xq = np.empty((T * B, w_ih.Kp), np.uint8)
                xs = np.empty(T * B, np.float32)
                q.quantize_rows(xin, xq, xs)
                gx = _ws.empty((q.ring_steps(T, B), B, w_ih.Np), np.float32)
                y = _ws.empty((T, B, H), np.float32)
                c = None if c_n is None else c_n[idx]
                q.forward(
                    xq,
                    xs,
                    w_ih.data,
                    w_ih.colsum,
                    w_ih.scale,
                    bx,
                    gx,
                    w_hh.data,
                    w_hh.colsum,
                    w_hh.scale,
                    b_hn,
                    np.ascontiguousarray(h0[idx]),
                    c,
                    y,
                    self._code,
                    _team(B, G, H, xin.shape[1], T, ends[idx], self._code),
                )
                ends[idx][_LAST_END] = time.perf_counter()
                h_n[idx] = y[-1]
                outs.append(y[::-1] if d else y)
            inp = outs[0] if D == 1 else np.concatenate(outs, axis=2)
        return inp, h_n, c_n

    def _states(self, hx: Any, B: int) -> tuple[np.ndarray, np.ndarray | None]:
        cfg = self._config
        LD = cfg.num_layers * cfg.num_directions
        lstm = len(cfg.spec.states) == 2
        h, c = (hx if hx is not None else (None, None)) if lstm else (hx, None)
        out = []
        for name, a in (("h", h), ("c", c))[: 2 if lstm else 1]:
            if a is None:
                out.append(np.zeros((LD, B, cfg.hidden_size), np.float32))
                continue
            a = np.asarray(a, np.float32)
            if a.shape != (LD, B, cfg.hidden_size):
                raise ValueError(
                    f"{name} must have shape (num_layers * num_directions, batch, size) = "
                    f"{(LD, B, cfg.hidden_size)}, got {a.shape}"
                )
            out.append(a)
        return out[0], (out[1] if lstm else None)

    def forward(self, x: Any, hx: Any = None, *, lengths: Any = None):
        """As the float layer's forward, in float32 with int8 weights (no ``lengths``)."""
        if self._float is not None:
            return self._float(x, hx, lengths=lengths)
        if lengths is not None:
            raise ValueError("a quantized layer does not take lengths; run the float layer")
        _ensure_isa()
        if self._slow_path():
            return self._dequantized(self._float_layer, self._layers)(x, hx)
        x = np.asarray(x, np.float32)
        if x.ndim != 3 or x.shape[-1] != self.input_size:
            raise ValueError(
                f"x must have shape (T, B, input_size={self.input_size}) "
                f"((B, T, input_size) with batch_first), got {x.shape}"
            )
        xt = x.transpose(1, 0, 2) if self.batch_first else x
        T, B = xt.shape[:2]
        h0, c0 = self._states(hx, B)
        if T == 0 or B == 0:
            y = np.zeros((T, B, self.hidden_size * self._config.num_directions), np.float32)
            h_n, c_n = h0.copy(), None if c0 is None else c0.copy()
        else:
            y, h_n, c_n = self._run(np.ascontiguousarray(xt), h0, c0)
        if self.batch_first:
            y = np.ascontiguousarray(y.transpose(1, 0, 2))
        return y, h_n if c_n is None else (h_n, c_n)

    def step(self, x: Any, state: Any = None):
        """One step (B, I) or a chunk (K, B, I) from ``state``: see :meth:`fastrnn.RNN.step`."""
        cache = self.__dict__.get("_step_cache")
        if cache and cache[2] is not None and cache[0] is self._layers:
            out = cache[2](x, state)  # a stream's next step, in C (fastrnn._kernels._stream)
            if out is not None:
                return out
        if self._float is not None:
            return self._float.step(x, state)
        if self.bidirectional:
            raise ValueError(f"{self._cls}.step needs a unidirectional layer")
        _ensure_isa()
        if self._slow_path():
            return self._dequantized(self._float_layer, self._layers).step(x, state)
        x = np.asarray(x, np.float32)
        if x.ndim == 2 and x.shape[0] > 0 and x.shape[1] == self.input_size:
            x = np.ascontiguousarray(x)
            y, state = self._step_one(x, state)
            self._follow(x, state)
            return y, state
        if x.ndim == 2:
            y, s = self.forward(x[:, None] if self.batch_first else x[None], state)
            return (y[:, 0] if self.batch_first else y[0]), s
        return self.forward(x, state)

    def _step_one(self, x: np.ndarray, state: Any):
        """:meth:`step` of one time step, x (B, I) float32 contiguous with B >= 1: the kernels'
        ``step`` on each layer's :meth:`_step_layers` entry, the same loop and bits as
        :meth:`_run` with T = 1. Each layer's output goes straight into h_n[layer] (the last
        layer's into the returned y, copied there)."""
        q = _quant or _kernels()
        B = x.shape[0]
        h0, c_n = self._states(state, B)
        L, H = len(self._layers), self.hidden_size
        h_n = np.empty((L, B, H), np.float32)
        h0 = np.ascontiguousarray(h0)
        if c_n is not None:  # c0, updated in place by the kernels
            c_n = np.array(c_n, np.float32, order="C")
        G, ends = self._config.spec.G * H, self._call_ends()
        inp = x
        for layer, kernel in enumerate(self._step_layers()):
            y = np.empty((B, H), np.float32) if layer == L - 1 else h_n[layer]
            n = _team(B, G, H, inp.shape[1], 1, ends[layer], self._code)
            q.step(kernel, inp, h0, c_n, y, B, layer, n)
            ends[layer][_LAST_END] = time.perf_counter()
            inp = y
        h_n[L - 1] = inp
        return inp, h_n if c_n is None else (h_n, c_n)

    def _follow(self, x: np.ndarray, state: Any) -> None:
        """Point the stream of one-step calls (made here on first use, or again for another
        ``x`` layout or thread count) at ``state``, returned by :meth:`_step_one` for ``x``."""
        cache = self._step_cache_of()
        stream = cache[2]
        if stream is not None and stream.matches(x):
            stream.follow(state)
            return
        G, H, I = self._config.spec.G * self.hidden_size, self.hidden_size, x.shape[1]
        ends, B = self._call_ends(), x.shape[0]
        awake = {_LAST_END: time.perf_counter()}
        cold, warm = [], []
        for layer in range(self.num_layers):
            n_in = I if layer == 0 else H
            cold.append(_team(B, G, H, n_in, 1, {}, self._code))
            warm.append(_team(B, G, H, n_in, 1, awake, self._code))
        same = cold == warm
        cell = self._config.spec
        code = 1 if cell is LSTM else 2 if cell is GRU else 0
        cache[2] = _stream.Stream(
            code,
            (_quant or _kernels()).step,
            {},
            (),
            tuple(cold),
            tuple(warm),
            tuple(ends[: self.num_layers]),
            _LAST_END,
            -1.0 if same else _functional._BURST_S,
            x,
            state,
            False,
            _quant_isa,
            tuple(cache[1]),
        )

    def _call_ends(self) -> list[dict]:
        """Per layer and direction, a dict keeping its last call's end for :func:`_team`."""
        ends = self.__dict__.get("_ends")
        if not ends:
            ends = self.__dict__["_ends"] = _Transient(
                {} for _ in range(self.num_layers * self._config.num_directions)
            )
        return ends

    def _step_layers(self) -> list:
        """The kernels' ``StepLayer`` of each layer (its packed int8 weights, scales and
        biases), made once per :meth:`_repack`."""
        return self._step_cache_of()[1]

    def _step_cache_of(self) -> list:
        """``[self._layers, step layers, stream or None]``, re-made after each :meth:`_repack`
        (a checkpoint load), when the first entry is no longer ``self._layers``."""
        cache = self.__dict__.get("_step_cache")
        if cache and cache[0] is self._layers:
            return cache
        q = _quant or _kernels()
        kernels = []
        for layer, ((w_ih, w_hh, bx, b_hn),) in enumerate(self._layers):
            n_in = self.input_size if layer == 0 else self.hidden_size
            args = (w_ih.data, w_ih.colsum, w_ih.scale, bx, w_hh.data, w_hh.colsum)
            kernels.append(
                q.StepLayer(*args, w_hh.scale, b_hn, n_in, self.hidden_size, w_ih.Kp, self._code)
            )
        cache = self.__dict__["_step_cache"] = _Transient([self._layers, kernels, None])
        return cache

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if self.bidirectional:
            s += ", bidirectional=True"
        if self._float is not None:
            return s + f", float32 ({self._why})"
        return s + (f", {_SLOW_PATH}" if self._slow_path() else ", int8")

    def __repr__(self) -> str:
        return f"Quantized{self._cls}({self.extra_repr()})"


def quantize_dynamic(model: Module, *, inplace: bool = False, int8: str = "auto") -> Module:
    """A copy of ``model`` whose recurrent and Linear layers run on int8 weights.

    PyTorch's ``torch.ao.quantization.quantize_dynamic`` for fastrnn models: every
    :class:`~fastrnn.RNN`, :class:`~fastrnn.LSTM`, :class:`~fastrnn.GRU` and
    :class:`~fastrnn.nn.Linear` (``model`` itself or any descendant) is replaced by a
    quantized module (module docstring); other modules are kept (copied).

    Parameters
    ----------
    model : Module
    inplace : bool, default=False
        Replace the layers in ``model`` itself instead of a copy.
    int8 : {"auto", "always"}, default="auto"
        ``"auto"``: recurrent layers too small to gain keep float32 weights and kernels,
        where int8 measured slower: hidden sizes below 32 (LSTM), 48 (GRU) and 64 (Elman
        RNN) (their repr says so; ``quantized`` is False). And where the integer GEMMs
        would run the portable path (a CPU with neither AVX-512 VNNI nor AVX-VNNI, or
        ``set_quantized_isa("c")``), 2.7-14x slower than float32, the quantized layers keep
        their int8 weights but each call runs the float32 kernels on the dequantized
        weights (their repr says so; ``quantized`` is False while that path is in use).
        ``"always"``: every layer the int8 kernels cover runs int8, on either path.

    Returns
    -------
    Module
        In eval mode, for inference only. Save and load it with
        :func:`fastrnn.save_checkpoint` / :func:`fastrnn.load_checkpoint` (load into the
        result of ``quantize_dynamic`` on a model of the same structure).
    """
    if not isinstance(model, Module):
        raise TypeError(f"model must be a fastrnn Module, got {type(model).__name__}")
    if int8 not in ("auto", "always"):
        raise ValueError(f"int8 must be 'auto' or 'always', got {int8!r}")
    _ensure_isa()
    if not inplace:
        model = copy.deepcopy(model)
    converted = _convert(model, int8)
    if converted is not None:
        return converted
    model.eval()
    return model


def _convert(m: Module, int8: str) -> Module | None:
    if isinstance(m, RNNBase):
        return QuantizedRNNBase(m, int8)
    if isinstance(m, Linear):
        return QuantizedLinear(m, int8)
    for name, child in list(m._modules.items()):
        new = _convert(child, int8)
        if new is not None:
            setattr(m, name, new)
    return None
