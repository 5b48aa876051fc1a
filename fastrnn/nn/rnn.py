r"""Recurrent layers with PyTorch's API: :class:`RNN`, :class:`LSTM` and :class:`GRU`.

Each layer owns its parameters (named as PyTorch names them, so a ``state_dict`` moves between
the two) and delegates the work to :func:`fastrnn.stack.stack_forward` /
:func:`fastrnn.stack.stack_backward`, which run the Cython kernels (``backend="cython"``) or the
NumPy reference (``backend="numpy"``) layer by layer and direction by direction.

``forward`` in training mode keeps what ``backward`` needs; ``backward`` consumes it (one backward
per forward, as in an autograd graph) and accumulates every parameter's gradient into
``Parameter.grad``. Forwards in eval mode keep nothing.
"""

from __future__ import annotations

import operator
import time
import warnings
from typing import Any

import numpy as np

from fastrnn import _isa
from fastrnn import functional as _functional
from fastrnn._kernels import _stream
from fastrnn._random import module_generator
from fastrnn.cells import GRU as _GRU
from fastrnn.cells import LSTM as _LSTM
from fastrnn.cells import RNN as _RNN
from fastrnn.cells import Cell
from fastrnn.functional import _step_biases, _step_forward, _step_kernel
from fastrnn.nn._checks import as_real_array, check_float_dtype
from fastrnn.nn.blocks import _no_cache_error
from fastrnn.nn.module import Module, Parameter
from fastrnn.stack import StackConfig, _noise, default_init, stack_backward, stack_forward

__all__ = ["GRU", "LSTM", "RNN", "RNNBase"]


_version = operator.attrgetter("_version")


def _isa_code() -> int:
    """The float kernels' instruction set in use (a Stream refuses calls once it changes)."""
    return _isa._current


class _PackCache(dict):
    """suffix -> (w_ih Parameter, w_hh Parameter, their versions, packs dict): the kernels'
    packed weights of each layer and direction, and ``step_ops``, the operands of
    :meth:`RNNBase.step`'s direct path. Copies and pickles start empty (the packed buffers are
    the kernels' own objects, re-made on the next forward)."""

    step_ops: tuple | None = None
    # the C fast path of one-step calls on step_ops' operands (_make_stream), made at the second
    # direct step of a stream: the one that starts from the h that the first returned
    stream: Any = None
    stream_from: np.ndarray | None = None

    def __reduce__(self):
        return (_PackCache, ())


#: What forward returns as the final state (and backward as the initial-state gradient):
#: one array, or a tuple (h, c) for LSTM.
State = np.ndarray | tuple[np.ndarray, np.ndarray]


class RNNBase(Module):
    """What :class:`RNN`, :class:`LSTM` and :class:`GRU` share; not used directly.

    Parameters
    ----------
    mode : str or fastrnn.cells.Cell
        The cell, a name of :data:`fastrnn.cells.CELLS`; the other parameters are described by
        the sub-classes.
    **options
        The cell's own options (:attr:`fastrnn.cells.Cell.options`), each also an attribute of
        the layer.
    """

    _marks_parameter_use = True  # backward writes every parameter's gradient

    def __init__(
        self,
        mode: str | Cell,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        *,
        dtype: Any = np.float32,
        backend: str = "cython",
        seed: int | np.random.Generator | None = None,
        **options: Any,
    ) -> None:
        super().__init__()
        cfg = StackConfig(
            mode,
            input_size,
            hidden_size,
            num_layers,
            bias,
            bidirectional,
            dropout,
            backend,
            **options,
        )
        dt = check_float_dtype(dtype)
        if cfg.dropout > 0 and cfg.num_layers == 1:
            warnings.warn(
                "dropout is applied after every recurrent layer but the last, so a non-zero "
                f"dropout expects num_layers > 1, got dropout={cfg.dropout} and num_layers=1",
                UserWarning,
                stacklevel=3,
            )
        self._config = cfg
        # PyTorch's names: "RNN_TANH", "RNN_RELU", "LSTM", "GRU"
        self.mode = cfg.spec.torch_mode(cfg.options)
        self.input_size = cfg.input_size
        self.hidden_size = cfg.hidden_size
        self.num_layers = cfg.num_layers
        self.bias = cfg.bias
        self.batch_first = bool(batch_first)
        self.dropout = cfg.dropout
        self.bidirectional = cfg.bidirectional
        self.proj_size = cfg.output_size if cfg.output_size != cfg.hidden_size else 0
        for name, value in cfg.options.items():
            setattr(self, name, value)
        self.backend = cfg.backend
        rng = module_generator(seed)  # seed=None: the next fastrnn.manual_seed child
        # One loop over PyTorch's names fixes the registration order (hence named_parameters()
        # and state_dict() order) and the order of the draws.
        self._flat_weights_names = cfg.weight_names()
        for name, value in default_init(cfg, dt, rng).items():
            setattr(self, name, Parameter(value))
        groups = cfg.num_layers * cfg.num_directions  # same number of weights in each
        n = len(self._flat_weights_names) // groups
        self._all_weights = [self._flat_weights_names[i * n : (i + 1) * n] for i in range(groups)]
        #: Draws the dropout masks; save ``generator.bit_generator.state`` to resume exactly.
        self.generator = rng.spawn(1)[0]
        self._cache: tuple[Any, ...] | None = None

    # -- PyTorch compatibility ---------------------------------------------------------------
    @property
    def dtype(self) -> np.dtype:
        """The dtype of the parameters and of the outputs."""
        return self._parameters[self._flat_weights_names[0]].data.dtype

    @property
    def _flat_weights(self) -> list[np.ndarray]:
        """The parameter arrays in ``_flat_weights_names`` order."""
        return [self._parameters[n].data for n in self._flat_weights_names]

    @property
    def all_weights(self) -> list[list[Parameter]]:
        """Parameters grouped per layer and direction, as ``torch.nn.RNNBase.all_weights``."""
        return [[self._parameters[n] for n in names] for names in self._all_weights]

    @property
    def cache_nbytes(self) -> int:
        """Bytes that the pending training-mode forward keeps for :meth:`backward` (0 if none).

        Each array counted once, the layer's own weights included; README.md ("Memory of a
        training forward") gives the per-layer formula.
        """
        return 0 if self._cache is None else self._cache[0].nbytes

    def flatten_parameters(self) -> None:
        """Drop the weights packed for the kernels: the next forward re-packs them.

        In eval mode the layer packs its weights once and re-packs them only when they change
        through fastrnn (``p.data = new``, an optimizer step, ``load_state_dict``, a checkpoint
        load); training-mode forwards pack per call. Call this after writing into a
        parameter's ``data`` in place by hand, before the next eval-mode call. (PyTorch's name;
        code written for PyTorch that calls it keeps working.)
        """
        self.__dict__["_packed"] = _PackCache()

    def _weight_packs(self) -> dict[str, dict] | None:
        """The ``packs`` dict of each layer and direction, emptied where a weight changed.

        Used by eval-mode forwards and steps only: training code edits weights in place more
        often (initialisation, finite differences), and its weights change at every step."""
        if self.backend != "cython":
            return None
        cache = self.__dict__.get("_packed")
        if cache is None:
            cache = self.__dict__["_packed"] = _PackCache()
        out = {}
        for names in self._all_weights:
            sfx = names[0][len("weight_ih") :]
            w_ih, w_hh = self._parameters["weight_ih" + sfx], self._parameters["weight_hh" + sfx]
            entry = cache.get(sfx)
            if (
                entry is None
                or entry[0] is not w_ih
                or entry[1] is not w_hh
                or entry[2] != (w_ih._version, w_hh._version)
            ):
                entry = cache[sfx] = (w_ih, w_hh, (w_ih._version, w_hh._version), {})
            out[sfx] = entry[3]
        return out

    # -- forward / backward --------------------------------------------------------------------
    def _state_shape(self, batch: int | None, which: str) -> tuple[int, ...]:
        shape = self._config.state_shapes(1 if batch is None else batch)[which]
        return shape if batch is not None else (shape[0], shape[2])

    def _as_state(self, a: Any, name: str, which: str, batch: int | None) -> np.ndarray | None:
        """Validate one state (h or c) and return it as (L*D, B, size) in the layer's dtype."""
        if a is None:
            return None
        arr = as_real_array(a, name, self.dtype)
        expected = self._state_shape(batch, which)
        if arr.shape != expected:
            what = (
                "unbatched input: (num_layers * num_directions, size)"
                if batch is None
                else "(num_layers * num_directions, batch, size)"
            )
            raise ValueError(f"{name} must have shape {what} = {expected}, got {arr.shape}")
        return arr[:, None, :] if batch is None else arr

    def _split_state(self, state: Any, name: str) -> tuple[Any, Any]:
        """(h, c) from the ``state`` argument of forward/backward (c is None but for LSTM)."""
        states = self._config.spec.states
        if len(states) == 1:
            if isinstance(state, tuple):
                raise TypeError(f"{type(self).__name__} takes one array as {name}, got a tuple")
            return state, None
        if state is None:
            return None, None
        if not isinstance(state, tuple | list) or len(state) != len(states):
            raise TypeError(
                f"{type(self).__name__} takes {name} as a tuple ({', '.join(states)}) of "
                f"{len(states)} arrays (or None)"
            )
        return state[0], state[1]

    def forward(self, x: Any, hx: Any = None, *, lengths: Any = None) -> tuple[np.ndarray, State]:
        """Run every layer over a batch of sequences.

        Shapes use L = num_layers, D = 2 if bidirectional else 1, H = hidden_size,
        R = proj_size or hidden_size (the size of h), and the layer's dtype (float32 or float64);
        inputs of another real dtype are converted to it.

        Parameters
        ----------
        x : array_like of shape (T, B, input_size), or (B, T, input_size) with batch_first
            An unbatched sequence of shape (T, input_size) is accepted too; then every state
            below drops its B axis, as in PyTorch.
        hx : array_like of shape (L*D, B, R), a tuple ``(h0, c0)`` for LSTM, or None
            Initial states (never batch-first); ``c0`` has shape (L*D, B, H). None (or a None
            member of the LSTM tuple) means zeros.
        lengths : array_like of int, shape (B,), optional
            Length of each sequence of a padded batch, in [1, T], any order: PyTorch's
            ``pack_padded_sequence(..., enforce_sorted=False)`` semantics. Outputs past a
            sequence's end are zero, its final states are those at its own last step, and the
            reverse direction starts there.

        Returns
        -------
        out : ndarray of shape (T, B, D*R), or (B, T, D*R) with batch_first
            Last layer's hidden state at every step, both directions concatenated.
        h_n : ndarray of shape (L*D, B, R)
            Final hidden state of every layer and direction (index ``layer * D + direction``);
            for LSTM the first member of the tuple ``(h_n, c_n)``, with ``c_n`` (L*D, B, H).
        cell_states : ndarray of shape (T, B, D*H), or (B, T, D*H) with batch_first
            Only for an LSTM built with ``return_cell_states=True`` (a third result): the last
            layer's cell state c_t at every step, directions concatenated as in ``out``, zero
            past each sequence's end.

        Raises
        ------
        ValueError
            When a shape or ``lengths`` is invalid (naming the argument).
        """
        dt = self.dtype
        x = as_real_array(x, "x", dt)
        if x.ndim not in (2, 3):
            raise ValueError(
                "x must be 3-D (T, B, input_size), (B, T, input_size) with batch_first, or 2-D "
                f"(T, input_size) for one unbatched sequence; got shape {x.shape}"
            )
        if x.shape[-1] != self.input_size:
            raise ValueError(
                f"x must have input_size={self.input_size} features in its last axis, "
                f"got shape {x.shape}"
            )
        unbatched = x.ndim == 2
        if unbatched:
            if lengths is not None:
                raise ValueError("lengths needs a batched (3-D) input; got a 2-D (unbatched) x")
            xt = x[:, None, :]
        else:
            xt = x.transpose(1, 0, 2) if self.batch_first else x
        batch = None if unbatched else xt.shape[1]
        h0, c0 = self._split_state(hx, "hx")
        h0 = self._as_state(h0, "h0", "h", batch)
        c0 = self._as_state(c0, "c0", "c", batch)
        y, h_n, c_n, *cs, cache = stack_forward(
            self._config,
            xt,
            h0,
            c0,
            {n: self._parameters[n].data for n in self._flat_weights_names},
            lengths=lengths,
            training=self.training,
            generator=self.generator,
            packs=None if self.training else self._weight_packs(),
        )
        self._cache = (cache, y.shape, unbatched) if self.training else None
        y, *cs = (self._from_time_major(a, unbatched) for a in (y, *cs))
        if unbatched:
            h_n = h_n[:, 0]
            c_n = None if c_n is None else c_n[:, 0]
        return (y, h_n if c_n is None else (h_n, c_n), *cs)

    def _from_time_major(self, a: np.ndarray, unbatched: bool) -> np.ndarray:
        """A (T, B, F) result in the caller's layout: (T, F) unbatched, (B, T, F) batch-first."""
        if unbatched:
            return a[:, 0]
        return np.ascontiguousarray(a.transpose(1, 0, 2)) if self.batch_first else a

    def _to_time_major(self, name: str, g: Any, width: int) -> np.ndarray | None:
        """A gradient of a (T, B, width) result, validated in the caller's layout, time-major."""
        if g is None:
            return None
        cache, y_shape, unbatched = self._cache
        T, B = y_shape[0], y_shape[1]
        g = as_real_array(g, name, self.dtype)
        want = (T, width) if unbatched else (B, T, width) if self.batch_first else (T, B, width)
        if g.shape != want:
            raise ValueError(f"{name} must have the forward output's shape {want}, got {g.shape}")
        if unbatched:
            return g[:, None, :]
        return g.transpose(1, 0, 2) if self.batch_first else g

    def backward(
        self, dout: Any, dstate: Any = None, dcell_states: Any = None
    ) -> tuple[np.ndarray, State]:
        """Backpropagate through the last training-mode forward.

        Accumulates the gradient of every parameter into its ``.grad`` and returns the gradients
        of the inputs. Each forward supports one backward. Shapes are those of :meth:`forward`.

        Parameters
        ----------
        dout : array_like of shape (T, B, D*R), (B, T, D*R) with batch_first, or None
            Gradient with respect to ``out`` (same shape, unbatched included); None for zeros.
        dstate : array_like of shape (L*D, B, R), a tuple ``(dh_n, dc_n)`` for LSTM, or None
            Gradient with respect to the final states; None (or a None member) for zeros.
        dcell_states : array_like of shape (T, B, D*H), (B, T, D*H) with batch_first, or None
            LSTM with ``return_cell_states=True``: gradient with respect to ``cell_states``.

        Returns
        -------
        dx : ndarray of the shape of ``x``, dtype of the layer
        dh0 : ndarray of shape (L*D, B, R)
            For LSTM the first member of the tuple ``(dh0, dc0)``, ``dc0`` (L*D, B, H).

        Raises
        ------
        RuntimeError
            When no training-mode forward precedes it (or its result was already used).
        """
        if self._cache is None:
            raise _no_cache_error(self)
        cache, y_shape, unbatched = self._cache
        batch = None if unbatched else y_shape[1]
        dout = self._to_time_major("dout", dout, y_shape[2])
        D = self._config.num_directions
        dcs = self._to_time_major("dcell_states", dcell_states, D * self.hidden_size)
        if dcs is not None and not self._config.options.get("return_cell_states"):
            raise ValueError(
                "dcell_states is the gradient of the cell states, which only a layer built "
                "with return_cell_states=True returns"
            )
        dh, dc = self._split_state(dstate, "dstate")
        dh = self._as_state(dh, "dh_n", "h", batch)
        dc = self._as_state(dc, "dc_n", "c", batch)
        self._cache = None

        def accumulate(layer: int, grads: dict[str, np.ndarray]) -> None:
            # Layer by layer, from the top one down: a parameter's hooks (the all-reduce of
            # fastrnn.distributed) run while the layers below are still backpropagating.
            for name, grad in grads.items():
                self._parameters[name].accumulate_grad(grad)

        g = stack_backward(cache, dout, dh, dc, dcs, on_layer_grads=accumulate)
        dx, dh0, dc0 = g.dx, g.dh0, g.dc0
        dx = self._from_time_major(dx, unbatched)
        if unbatched:
            dh0 = dh0[:, 0]
            dc0 = None if dc0 is None else dc0[:, 0]
        return dx, dh0 if dc0 is None else (dh0, dc0)

    # -- streaming -----------------------------------------------------------------------------
    def step(self, x: Any, state: Any = None) -> tuple[np.ndarray, State]:
        """Advance every layer by one time step (or a short chunk of steps), for streaming.

        Feeding a sequence through ``step`` piece by piece, each call given the state the
        previous one returned, gives the outputs and final state of one :meth:`forward` over
        the whole sequence, bit for bit. ``step`` is inference: it applies no dropout and keeps
        nothing for :meth:`backward`, in training mode too: zoneout acts as in eval (its
        expectation) and recurrent dropout not at all. It skips what a step does not need
        (``lengths``, the direction split, the stack's re-validation of every weight), so a
        call with B = 1 costs little more than its arithmetic.

        Parameters
        ----------
        x : array_like of shape (B, input_size), or a chunk (K, B, input_size)
            One step of a batch of streams, or K steps, time-major ((B, K, input_size) with
            ``batch_first``). Converted to the layer's dtype.
        state : array_like of shape (L, B, R), a tuple ``(h, c)`` for LSTM, or None
            The state the previous call returned (``h``: (L, B, R), ``c``: (L, B, H)); None
            (or a None member of the LSTM tuple) for zeros, the start of the streams.

        Returns
        -------
        y : ndarray of shape (B, R), or (K, B, R) for a chunk ((B, K, R) with batch_first)
            The last layer's output at the step(s).
        state : ndarray of shape (L, B, R), or a tuple ``(h, c)`` for LSTM
            The state after the last step; pass it to the next call.

        Raises
        ------
        ValueError
            For a bidirectional layer (its reverse direction starts from the end of the
            sequence, which a stream has not seen), or when a shape is wrong (naming it).
        """
        cache = self.__dict__.get("_packed")
        stream = None if cache is None else cache.stream
        if stream is not None and not self.training:  # a stream's next step, in C; None where
            out = stream(x, state)  # anything differs from the call it was made after
            if out is not None:
                return out
        if self.bidirectional:
            raise ValueError(
                f"{type(self).__name__}.step needs a unidirectional layer: the reverse direction "
                "of a bidirectional layer reads each sequence from its end, which a stream has "
                "not seen yet; call forward on whole sequences instead"
            )
        dt = self.dtype
        if type(x) is not np.ndarray or x.dtype != dt:
            x = as_real_array(x, "x", dt)
        if x.ndim == 2:
            xt = x[None]
        elif x.ndim == 3:
            xt = x.transpose(1, 0, 2) if self.batch_first else x
        else:
            raise ValueError(
                "x must be 2-D (B, input_size) for one step or 3-D (K, B, input_size) for a "
                f"chunk ((B, K, input_size) with batch_first); got shape {x.shape}"
            )
        if x.shape[-1] != self.input_size:
            raise ValueError(
                f"x must have input_size={self.input_size} features in its last axis, "
                f"got shape {x.shape}"
            )
        batch = xt.shape[1]
        h0, c0 = self._split_state(state, "state")
        plan = self.__dict__.get("_step_plan")
        if plan is None:  # what does not change from call to call
            cfg = self._config
            args = [(p.arg, p.name) for p in cfg.params()]
            # eval's options: the expectation of zoneout, no recurrent dropout mask; the cell
            # states of return_cell_states are not a step's output (c is in the state)
            options = {
                **{
                    k: v
                    for k, v in cfg.spec.functional_options(cfg.options).items()
                    if k != "return_cell_states"
                },
                **_noise(cfg, 0, 0, False, None, np.dtype(dt)),
            }
            plan = self.__dict__["_step_plan"] = (
                cfg.spec.functions(cfg.backend)[0],
                options,
                [[(a, f"{n}_l{k}") for a, n in args] for k in range(cfg.num_layers)],
                {w: cfg.state_width(w) for w in cfg.spec.states},
                # the kernels straight from here (_step_direct) when nothing but the four
                # weights and the non-linearity is in play; else the functional forward
                cfg.backend == "cython"
                and all(a in ("w_ih", "w_hh", "b_ih", "b_hh") for a, _ in args)
                and set(options) <= {"nonlinearity", "reset_after"}
                and options.get("reset_after", True),
                options.get("nonlinearity") == "relu",
            )
        fwd, options, layer_args, widths, direct, relu = plan
        init = []
        for given, which in zip((h0, c0), widths, strict=False):
            want = (self.num_layers, batch, widths[which])
            if (
                type(given) is np.ndarray
                and given.dtype == dt
                and given.shape == want
                and given.flags.c_contiguous
            ):
                init.append(given)  # the previous call's state: nothing to check or convert
            else:
                given = self._as_state(given, which, which, batch)
                init.append(None if given is None else np.ascontiguousarray(given))
        if direct and not self.training and batch > 0 and xt.shape[0] > 0:
            ops = self._step_operands()
            if ops is not None:
                y, state = self._step_direct(x, xt, init, ops, relu, dt)
                if x.ndim == 2 and type(x) is np.ndarray:  # the fast path above, for the next
                    cache = self.__dict__["_packed"]  # steps of this stream
                    if cache.stream is not None and cache.stream.matches(x):
                        cache.stream.follow(state)
                    elif cache.stream_from is not None and cache.stream_from is init[0]:
                        # the second step of a stream (its kernels may pack the weights for
                        # another team: not for a one-off step after each weight change)
                        cache.stream = self._make_stream(x, state, ops, relu)
                    cache.stream_from = state if type(state) is np.ndarray else state[0]
                return y, state
        inp = xt
        finals: list[list[np.ndarray]] = [[] for _ in init]
        packs = None if self.training else self._weight_packs()
        params = self._parameters
        for layer, names in enumerate(layer_args):
            kw = {a: params[n].data for a, n in names}
            if packs is not None:
                kw["packs"] = packs[f"_l{layer}"]
            states = [None if s is None else s[layer] for s in init]
            inp, *outs, _ = fwd(inp, *states, training=False, **kw, **options)
            for f, s in zip(finals, outs, strict=True):
                f.append(s)
        h_n, *others = (np.stack(f) for f in finals)
        return self._step_result(x, inp), h_n if not others else (h_n, others[0])

    def _step_result(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """The last layer's (K, B, R) output of a step in the shape of ``x``'s call."""
        if x.ndim == 2:
            return y[0]
        return np.ascontiguousarray(y.transpose(1, 0, 2)) if self.batch_first else y

    def _step_operands(self) -> list[tuple] | None:
        """Per layer ``(w_ih, w_hh, bias, b_hn, packs, kernels)`` for
        :func:`fastrnn.functional._step_forward`, kept with the packed weights until a
        parameter changes (object or version) or :meth:`flatten_parameters`; None when a
        weight is not a C-contiguous array of the layer's dtype (the functional path converts
        it)."""
        params = self._parameters
        cache = self.__dict__.get("_packed")
        cached = None if cache is None else cache.step_ops
        if cached is not None:  # the parameters it was made from, unchanged?
            present, current, versions, ops = cached
            if (
                len(params) == len(current)
                and tuple(map(params.get, present)) == current
                and tuple(map(_version, current)) == versions
            ):
                return ops
        packs = self._weight_packs()
        cell, dt, H = self._config.spec, np.dtype(self.dtype), self.hidden_size
        names = [
            [f"{n}_l{k}" for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
            for k in range(self.num_layers)
        ]
        ops = []
        for k, layer in enumerate(names):
            w_ih, w_hh, b_ih, b_hh = (
                None if params.get(n) is None else params[n].data for n in layer
            )
            for a in (w_ih, w_hh, b_ih, b_hh):
                if a is not None and (
                    type(a) is not np.ndarray or a.dtype != dt or not a.flags.c_contiguous
                ):
                    return None
            bias, b_hn = _step_biases(cell, b_ih, b_hh, H, w_hh.shape[0], dt)
            ops.append((w_ih, w_hh, bias, b_hn, packs[f"_l{k}"], {}))
        # every parameter (a layer's are its weights and biases), compared by object and
        # version at each call
        present = tuple(params)
        current = tuple(params.values())
        versions = tuple(map(_version, current))
        self.__dict__["_packed"].step_ops = (present, current, versions, ops)  # dropped with
        return ops  # the packs

    def _make_stream(self, x: np.ndarray, state: State, ops: list[tuple], relu: bool) -> Any:
        """The :class:`fastrnn._kernels._stream.Stream` of one-step calls like the direct one
        that took ``x`` and returned ``state``: each layer's kernels for the team
        :func:`~fastrnn.functional._step_team` gives a call that finds the worker asleep and
        one that finds it awake (the same where the policy does not depend on it). None where
        the kernels call BLAS (``set_isa("blas")``): those calls keep the general path, which
        holds scipy's BLAS to one thread around them."""
        cell = self._config.spec
        code = 1 if cell is _LSTM else 2 if cell is _GRU else 0 if cell is _RNN else None
        if code is None or not x.flags.c_contiguous or any(op[4] is None for op in ops):
            return None
        if _isa.get_isa() == "blas":  # kernels that call BLAS run under _blas_guard, in Python
            return None
        F, B = _functional, x.shape[0]
        awake = {F._LAST_END: time.perf_counter()}  # as a call that follows its previous one
        cold, warm = [], []
        for op in ops:
            G, H = op[1].shape
            I = op[0].shape[1]
            module, kernel = _step_kernel(cell, op, F._step_team(B, G, H, I, 1, None), False)
            cold.append(kernel)
            warm.append(_step_kernel(cell, op, F._step_team(B, G, H, I, 1, awake), False)[1])
        same = all(a is b for a, b in zip(cold, warm, strict=True))
        return _stream.Stream(
            code,
            module.step,
            self._parameters,
            tuple(self._parameters.items()),
            tuple(cold),
            tuple(warm),
            tuple(op[4] for op in ops),
            F._LAST_END,
            -1.0 if same else F._BURST_S,
            x,
            state,
            relu,
            _isa_code,
        )

    def _step_direct(
        self,
        x: np.ndarray,
        xt: np.ndarray,
        init: list,
        ops: list[tuple],
        relu: bool,
        dt: np.dtype,
    ) -> tuple[np.ndarray, State]:
        """:meth:`step` of an eval-mode layer with plain cells: each layer's kernel called
        directly (``functional._step_forward``) on the weights packed once, the final states
        written in place into the returned arrays. ``x`` is the call's input, ``xt`` its
        (K, B, I) time-major view; ``init`` the C-contiguous (L, B, H) states or None;
        ``relu`` the RNN's non-linearity. Returns (y in the shape of ``x``'s call, state)."""
        cell = self._config.spec
        L, T, B, H = self.num_layers, xt.shape[0], xt.shape[1], self.hidden_size
        lstm = cell is _LSTM
        h0 = init[0]
        if h0 is None:
            h0 = np.zeros((L, B, H), dt)
        c0 = None
        if lstm:
            c0 = init[1]
            if c0 is None:
                c0 = np.zeros((L, B, H), dt)
        h_n = np.empty((L, B, H), dt)
        c_n = np.empty((L, B, H), dt) if lstm else None
        # the kernels take raw buffers: a 2-D x of one step is (1, B, I) as it is, and each
        # layer's y is allocated in the shape the call returns
        inp = x if x.ndim == 2 and x.flags.c_contiguous else np.ascontiguousarray(xt)
        shape = (B, H) if x.ndim == 2 else (T, B, H)
        for k in range(L):
            y = np.empty(shape, dt)
            _step_forward(cell, inp, h0, c0, ops[k], y, h_n, c_n, k, T, B, relu)
            inp = y
        if x.ndim == 3 and self.batch_first:
            inp = np.ascontiguousarray(inp.transpose(1, 0, 2))
        return inp, h_n if c_n is None else (h_n, c_n)

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        defaults = self._config.spec.option_defaults()
        for name, value in self._config.options.items():  # where PyTorch puts proj_size
            if value != defaults[name]:
                s += f", {name}={value!r}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if not self.bias:
            s += ", bias=False"
        if self.batch_first:
            s += ", batch_first=True"
        if self.dropout:
            s += f", dropout={self.dropout}"
        if self.bidirectional:
            s += ", bidirectional=True"
        if self.dtype != np.float32:
            s += f", dtype={self.dtype}"
        if self.backend != "cython":
            s += f", backend={self.backend!r}"
        return s


class RNN(RNNBase):
    r"""Multi-layer Elman RNN with a tanh or ReLU non-linearity (``torch.nn.RNN``).

    For each element of the input sequence, each layer computes

    .. math::
        h_t = \tanh(W_{ih} x_t + b_{ih} + W_{hh} h_{t-1} + b_{hh})

    (or :math:`\text{relu}`), where :math:`x_t` is the input at time t for the first layer and
    the (dropped-out) output of the previous layer otherwise.

    Parameters
    ----------
    input_size : int
        Features of the input ``x``.
    hidden_size : int
        Features of the hidden state ``h``.
    num_layers : int, default=1
        Stacked recurrent layers.
    nonlinearity : {"tanh", "relu"}, default="tanh"
    bias : bool, default=True
        Whether to learn ``b_ih`` and ``b_hh``.
    batch_first : bool, default=False
        Inputs and outputs are (B, T, feature) instead of (T, B, feature); states are not.
    dropout : float, default=0.0
        Probability of zeroing each output element of every layer but the last, in training
        mode (inverted dropout; masks drawn from :attr:`generator`).
    bidirectional : bool, default=False
    recurrent_dropout : float, default=0.0
        Variational dropout on :math:`h_{t-1}` where it enters :math:`W_{hh}` (Gal &
        Ghahramani): one mask per sequence, layer and direction, the same at every step;
        training only.
    zoneout : float, default=0.0
        Zoneout (Krueger et al.): in training each unit of :math:`h_t` keeps its previous value
        with probability ``p``, one draw per step; in eval
        :math:`h_t = p h_{t-1} + (1 - p) \tilde h_t`, the expectation.
    dtype : {np.float32, np.float64}, default=np.float32
    backend : {"cython", "numpy"}, default="cython"
        The Cython kernels (:mod:`fastrnn.functional`) or the NumPy reference.
    seed : int, numpy.random.Generator or None, default=None
        Seeds the initialisation and, after it, the dropout generator. None: the next child
        of :func:`fastrnn.manual_seed`'s sequence if it was called, else OS entropy.

    Attributes
    ----------
    weight_ih_l{k} : Parameter of shape (hidden_size, input_size) for k = 0, else
        (hidden_size, D * hidden_size).
    weight_hh_l{k} : Parameter of shape (hidden_size, hidden_size)
    bias_ih_l{k}, bias_hh_l{k} : Parameter of shape (hidden_size,)
        The reverse direction's parameters end in ``_reverse``. Every weight and bias is
        initialised from :math:`\mathcal{U}(-k, k)`, :math:`k = 1/\sqrt{\text{hidden\_size}}`,
        as PyTorch does.
    generator : numpy.random.Generator
        Draws the dropout masks.

    See :meth:`RNNBase.forward` and :meth:`RNNBase.backward` for the call.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        nonlinearity: str = "tanh",
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        *,
        recurrent_dropout: float = 0.0,
        zoneout: float = 0.0,
        dtype: Any = np.float32,
        backend: str = "cython",
        seed: int | np.random.Generator | None = None,
    ) -> None:
        super().__init__(
            _RNN,
            input_size,
            hidden_size,
            num_layers,
            bias,
            batch_first,
            dropout,
            bidirectional,
            nonlinearity=nonlinearity,
            recurrent_dropout=recurrent_dropout,
            zoneout=zoneout,
            dtype=dtype,
            backend=backend,
            seed=seed,
        )


class LSTM(RNNBase):
    r"""Multi-layer long short-term memory RNN (``torch.nn.LSTM``), optional projection.

    Each layer computes, with gates in PyTorch's order i, f, g, o,

    .. math::
        \begin{array}{ll}
        i_t = \sigma(W_{ii} x_t + b_{ii} + W_{hi} h_{t-1} + b_{hi}) \\
        f_t = \sigma(W_{if} x_t + b_{if} + W_{hf} h_{t-1} + b_{hf}) \\
        g_t = \tanh(W_{ig} x_t + b_{ig} + W_{hg} h_{t-1} + b_{hg}) \\
        o_t = \sigma(W_{io} x_t + b_{io} + W_{ho} h_{t-1} + b_{ho}) \\
        c_t = f_t \odot c_{t-1} + i_t \odot g_t \\
        h_t = o_t \odot \tanh(c_t)
        \end{array}

    With ``proj_size > 0`` the hidden state is projected, :math:`h_t = W_{hr}(o_t \odot
    \tanh(c_t))`, so ``h`` and the outputs have ``proj_size`` features and :math:`W_{hh}` has
    ``proj_size`` columns.

    Parameters
    ----------
    input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional
        As in :class:`RNN`.
    proj_size : int, default=0
        If > 0 (and < hidden_size), project the hidden state to this size.
    peephole : bool, default=False
        Peephole connections (Gers & Schmidhuber): :math:`i_t` and :math:`f_t` add
        :math:`p_i \odot c_{t-1}` and :math:`p_f \odot c_{t-1}` to their pre-activations,
        :math:`o_t` adds :math:`p_o \odot c_t`, with one ``weight_peephole_l{k}`` per layer and
        direction.
    layer_norm : bool, default=False
        Layer normalization (Ba, Kiros & Hinton 2016) of the input and recurrent
        pre-activations and of :math:`c_t` before its tanh:

        .. math::
            \begin{array}{ll}
            a_t = \mathrm{LN}(W_{ih} x_t; \gamma_{ih}) + \mathrm{LN}(W_{hh} h_{t-1};
            \gamma_{hh}) + b_{ih} + b_{hh} \\
            h_t = o_t \odot \tanh(\mathrm{LN}(c_t; \gamma_c, \beta_c))
            \end{array}

        with :math:`\mathrm{LN}(v; \gamma, \beta) = \gamma \odot (v - \mu(v)) /
        \sqrt{\sigma^2(v) + 10^{-5}} + \beta` over each row's features (4H or H), the gates
        and :math:`c_t` as above. Adds the gains ``ln_weight_ih_l{k}``, ``ln_weight_hh_l{k}``
        (4H,), ``ln_weight_c_l{k}`` (H,), initialised to ones, and the bias ``ln_bias_c_l{k}``
        (H,), zeros. Not combined with peephole, recurrent dropout, zoneout or cell states.
    recurrent_dropout : float, default=0.0
        Variational dropout on :math:`h_{t-1}` where it enters :math:`W_{hh}` (Gal &
        Ghahramani): one mask per sequence, layer and direction, the same at every step;
        training only.
    zoneout : float or (float, float), default=0.0
        Zoneout (Krueger et al.): in training each unit of :math:`h_t` (and :math:`c_t`) keeps
        its previous value with probability ``p_h`` (``p_c``), one draw per step; in eval
        :math:`h_t = p_h h_{t-1} + (1 - p_h) \tilde h_t`, the expectation. A pair gives
        ``(p_h, p_c)``.
    return_cell_states : bool, default=False
        The forward also returns the last layer's cell state at every step (see
        :meth:`RNNBase.forward`) and the backward takes its gradient, ``dcell_states``.
    dtype, backend, seed
        As in :class:`RNN`.

    Attributes
    ----------
    weight_ih_l{k} : Parameter of shape (4*hidden_size, input_size) for k = 0, else
        (4*hidden_size, D * R), rows W_ii | W_if | W_ig | W_io; R = proj_size or hidden_size.
    weight_hh_l{k} : Parameter of shape (4*hidden_size, R), rows W_hi | W_hf | W_hg | W_ho
    bias_ih_l{k}, bias_hh_l{k} : Parameter of shape (4*hidden_size,)
    weight_hr_l{k} : Parameter of shape (proj_size, hidden_size), only with proj_size > 0
    weight_peephole_l{k} : Parameter of shape (3, hidden_size), only with peephole
        Rows p_i | p_f | p_o.
        The reverse direction's parameters end in ``_reverse``. All initialised from
        :math:`\mathcal{U}(-k, k)`, :math:`k = 1/\sqrt{\text{hidden\_size}}`.
    generator : numpy.random.Generator
        Draws the dropout masks.

    Notes
    -----
    ``out, (h_n, c_n) = lstm(x, (h0, c0))`` and ``dx, (dh0, dc0) = lstm.backward(dout,
    (dh_n, dc_n))``; see :meth:`RNNBase.forward` and :meth:`RNNBase.backward`.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        *,
        peephole: bool = False,
        layer_norm: bool = False,
        recurrent_dropout: float = 0.0,
        zoneout: float | tuple[float, float] = 0.0,
        return_cell_states: bool = False,
        dtype: Any = np.float32,
        backend: str = "cython",
        seed: int | np.random.Generator | None = None,
    ) -> None:
        super().__init__(
            _LSTM,
            input_size,
            hidden_size,
            num_layers,
            bias,
            batch_first,
            dropout,
            bidirectional,
            proj_size=proj_size,
            peephole=peephole,
            layer_norm=layer_norm,
            recurrent_dropout=recurrent_dropout,
            zoneout=zoneout,
            return_cell_states=return_cell_states,
            dtype=dtype,
            backend=backend,
            seed=seed,
        )


class GRU(RNNBase):
    r"""Multi-layer gated recurrent unit RNN (``torch.nn.GRU``), optional reset-before variant.

    Each layer computes, with gates in PyTorch's order r, z, n,

    .. math::
        \begin{array}{ll}
        r_t = \sigma(W_{ir} x_t + b_{ir} + W_{hr} h_{t-1} + b_{hr}) \\
        z_t = \sigma(W_{iz} x_t + b_{iz} + W_{hz} h_{t-1} + b_{hz}) \\
        n_t = \tanh(W_{in} x_t + b_{in} + r_t \odot (W_{hn} h_{t-1} + b_{hn})) \\
        h_t = (1 - z_t) \odot n_t + z_t \odot h_{t-1}
        \end{array}

    The reset gate multiplies :math:`W_{hn} h_{t-1} + b_{hn}`, *after* the hidden matmul, as in
    PyTorch and cuDNN. With ``reset_after=False`` it is applied before it, as in Cho et al.
    (2014) and Keras' ``reset_after=False``:
    :math:`n_t = \tanh(W_{in} x_t + b_{in} + W_{hn}(r_t \odot h_{t-1}) + b_{hn})`. The parameters
    have the same names and shapes either way (PyTorch has no such option).

    Parameters
    ----------
    input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional
        As in :class:`RNN`.
    reset_after : bool, default=True
        Where the reset gate is applied (see above).
    layer_norm : bool, default=False
        Layer normalization (Ba, Kiros & Hinton 2016) of the input and recurrent
        pre-activations: :math:`g_i = \mathrm{LN}(W_{ih} x_t; \gamma_{ih}) + b_{ih}`,
        :math:`g_h = \mathrm{LN}(W_{hh} h_{t-1}; \gamma_{hh}) + b_{hh}`, then the gates above
        from :math:`g_i` and :math:`g_h`, where :math:`\mathrm{LN}(v; \gamma) = \gamma \odot
        (v - \mu(v)) / \sqrt{\sigma^2(v) + 10^{-5}}` over each row's 3H features. Adds the
        gains ``ln_weight_ih_l{k}`` and ``ln_weight_hh_l{k}`` (3H,), initialised to ones
        (``reset_after=True`` only; not combined with recurrent dropout or zoneout).
    recurrent_dropout, zoneout
        As in :class:`RNN` (``reset_after=True`` only); the update :math:`z_t \odot h_{t-1}`
        uses the undropped state.
    dtype, backend, seed
        As in :class:`RNN`.

    Attributes
    ----------
    weight_ih_l{k} : Parameter of shape (3*hidden_size, input_size) for k = 0, else
        (3*hidden_size, D * hidden_size), rows W_ir | W_iz | W_in.
    weight_hh_l{k} : Parameter of shape (3*hidden_size, hidden_size), rows W_hr | W_hz | W_hn
    bias_ih_l{k}, bias_hh_l{k} : Parameter of shape (3*hidden_size,)
        The reverse direction's parameters end in ``_reverse``. All initialised from
        :math:`\mathcal{U}(-k, k)`, :math:`k = 1/\sqrt{\text{hidden\_size}}`.
    generator : numpy.random.Generator
        Draws the dropout masks.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        *,
        reset_after: bool = True,
        layer_norm: bool = False,
        recurrent_dropout: float = 0.0,
        zoneout: float = 0.0,
        dtype: Any = np.float32,
        backend: str = "cython",
        seed: int | np.random.Generator | None = None,
    ) -> None:
        super().__init__(
            _GRU,
            input_size,
            hidden_size,
            num_layers,
            bias,
            batch_first,
            dropout,
            bidirectional,
            reset_after=reset_after,
            layer_norm=layer_norm,
            recurrent_dropout=recurrent_dropout,
            zoneout=zoneout,
            dtype=dtype,
            backend=backend,
            seed=seed,
        )
