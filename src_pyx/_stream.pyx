"""A stream's next step in C: the fast path of ``RNNBase.step`` (fastrnn/nn/rnn.py).

A stream calls ``layer.step(x, state)`` with the state the previous call returned and an ``x``
like the previous one. Python spent 5.5 of the 17 us of such a step of an LSTM with
I = H = 256 on B = 1 (2 threads; the kernel's own ``step`` took 11.8): checking that the
parameters had not changed, choosing the team, looking the kernel up, allocating the results.
A :class:`Stream` does what such a call needs, nothing else, and answers None (the caller then
takes the general path, which builds a new one) wherever anything differs from the call it was
made for: a state it cannot take as it is (None, another shape or dtype, not C-contiguous),
another ``x`` shape, dtype or strides, a parameter replaced, added, removed or bumped
(``Parameter._version``), another thread count or instruction set.

Policy stays in Python (fastrnn.functional: _step_team, _team_awake): the maker gives a Stream,
per layer, the kernel of the team for a worker that is asleep ("cold") and for one that is awake
("warm"), and the burst window; the Stream only compares the time since the layer's previous
call with that window, as _team_awake does, and records each call's end in the layer's packs
dict (under ``functional._LAST_END``), where the other paths read it.
"""

from cpython.dict cimport PyDict_GetItem, PyDict_SetItem, PyDict_Size
from cpython.float cimport PyFloat_AsDouble
from cpython.object cimport PyObject
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

import numpy as np

from fastrnn import _threads

cdef object _empty = np.empty
cdef object _ndarray = np.ndarray
cdef object _get_num_threads = _threads.get_num_threads


cdef double _now() noexcept nogil:
    """time.perf_counter() (CPython reads CLOCK_MONOTONIC on Linux)."""
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <double> ts.tv_sec + 1e-9 * <double> ts.tv_nsec


cdef bint _recent(dict packs, key, double window):
    """Whether the time under ``key`` in ``packs`` is less than ``window`` seconds ago."""
    cdef PyObject* seen = PyDict_GetItem(packs, key)
    return seen != NULL and _now() - PyFloat_AsDouble(<object> seen) < window


cdef enum:
    _RNN = 0
    _LSTM = 1
    _GRU = 2


cdef class Stream:
    """One-step calls of a layer stack on the kernels' ``step``, for a fixed input layout.

    Parameters (all from fastrnn.nn.rnn.RNNBase._make_stream)
    ----------
    cell : {0, 1, 2}
        RNN, LSTM, GRU (the step functions' arities).
    step : callable
        The cell's kernel module's ``step``.
    params : dict
        The layer's parameters dict; ``watched`` lists every entry as (name, parameter) and
        the Stream refuses a call once one is replaced, added, removed or its version moved.
    cold, warm : tuple of StepKernel, or of int with ``int8_layers``
        Per layer, the kernel for a team chosen with the worker asleep and awake (with
        ``int8_layers``, that team's size).
    packs : tuple of dict
        Per layer, its packed-weights dict, which keeps its last call's end.
    last_end_key, burst : str, float
        functional._LAST_END and the burst window (a warm call follows the layer's previous
        call by less than it; negative: never).
    x, state : ndarray, ndarray or tuple
        The call it is made after: the input whose shape, dtype and strides the next calls
        must have, and the state it returned (the next call may pass that object back
        unchecked, or any state of the layer's dtype and shape, C-contiguous).
    relu : bool
        The Elman RNN's non-linearity.
    isa : callable
        Returns the instruction-set code of the kernels in use; the Stream refuses a call once
        it differs from the one it was made with (set_isa, set_quantized_isa).
    int8_layers : tuple of quant.StepLayer, optional
        The int8 layers of fastrnn.quantization (``step`` is then ``quant.step``, whose
        arguments differ: the team's size is one, and the LSTM's c is updated in place).
    """

    cdef int cell, n_layers, n_threads, isa
    cdef readonly int team  # the threads of the last call's last layer (for tests)
    cdef object step
    cdef dict params
    cdef tuple names, objects, versions, cold, warm, packs
    cdef object last_end_key
    cdef double burst
    cdef object dtype, x_shape, x_strides, state_shape, state_strides, y_shape
    cdef object last
    cdef object relu, isa_of
    cdef tuple int8_layers
    cdef Py_ssize_t B

    def __init__(self, int cell, step, dict params, tuple watched, tuple cold, tuple warm,
                 tuple packs, str last_end_key, double burst, x, state, bint relu, isa,
                 tuple int8_layers=None):
        cdef Py_ssize_t L = len(cold)
        if (cell not in (_RNN, _LSTM, _GRU) or L < 1 or len(warm) != L or len(packs) != L
                or (int8_layers is not None and len(int8_layers) != L)):
            raise ValueError("Stream: cell must be 0, 1 or 2 and cold, warm, packs (and "
                             "int8_layers) one per layer")
        if type(x) is not _ndarray or x.ndim != 2 or not x.flags.c_contiguous:
            raise ValueError("Stream: x must be a C-contiguous 2-D ndarray (a step of B rows)")
        self.cell = cell
        self.step = step
        self.params = params
        self.names = tuple(n for n, _ in watched)
        self.objects = tuple(p for _, p in watched)
        self.versions = tuple(p._version for p in self.objects)
        self.cold, self.warm, self.packs = cold, warm, packs
        self.n_layers = <int> L
        self.last_end_key = last_end_key
        self.burst = burst
        self.dtype = x.dtype
        self.x_shape = x.shape
        self.x_strides = x.strides
        self.B = x.shape[0]
        h = state[0] if cell == _LSTM else state
        self.state_shape = h.shape
        self.state_strides = _empty(h.shape, h.dtype).strides
        self.y_shape = (self.B, h.shape[2])
        self.last = state
        self.relu = bool(relu)
        self.n_threads = _get_num_threads()
        self.isa_of = isa
        self.isa = isa()
        self.int8_layers = int8_layers

    cdef bint _unchanged(self):
        """Whether the parameters, thread count and instruction set are those it was made for."""
        cdef Py_ssize_t i, n = len(self.names)
        cdef PyObject* p
        if PyDict_Size(self.params) != n:
            return False
        for i in range(n):
            p = PyDict_GetItem(self.params, self.names[i])
            if p == NULL or <object> p is not self.objects[i]:
                return False
            if self.objects[i]._version != self.versions[i]:
                return False
        return _get_num_threads() == self.n_threads and self.isa_of() == self.isa

    cdef bint _like(self, a, shape, strides):
        """Whether ``a`` is an ndarray of the dtype, shape and (C-contiguous) strides given."""
        return (type(a) is _ndarray and (a.dtype is self.dtype or a.dtype == self.dtype)
                and a.shape == shape and a.strides == strides)

    cdef bint _state_ok(self, state):
        """Whether ``state`` is one the kernels take as it is (what RNNBase.step would not
        convert): the arrays of the layer's dtype and state shape, C-contiguous."""
        if self.cell != _LSTM:
            return self._like(state, self.state_shape, self.state_strides)
        return (type(state) is tuple and len(state) == 2
                and self._like(state[0], self.state_shape, self.state_strides)
                and self._like(state[1], self.state_shape, self.state_strides))

    def matches(self, x) -> bool:
        """Whether a call with ``x`` (and a valid state) would run here."""
        return self._like(x, self.x_shape, self.x_strides) and self._unchanged()

    def follow(self, state) -> None:
        """Take ``state``, returned by the general path, as the stream's last one."""
        self.last = state

    def __call__(self, x, state):
        """(y, state) of ``layer.step(x, state)``, or None where this Stream does not apply."""
        cdef int k
        cdef object h0, c0 = None, h_n, c_n = None, inp, y = None, kernel
        if not self._like(x, self.x_shape, self.x_strides) or not self._unchanged():
            return None
        if state is not self.last and not self._state_ok(state):
            return None
        if self.cell == _LSTM:
            h0, c0 = state
            # the int8 kernels update c in place: a copy of c0
            c_n = _empty(self.state_shape, self.dtype) if self.int8_layers is None else c0.copy()
        else:
            h0 = state
        h_n = _empty(self.state_shape, self.dtype)
        inp = x
        for k in range(self.n_layers):
            kernel = self.cold[k]
            if self.burst >= 0 and _recent(self.packs[k], self.last_end_key, self.burst):
                kernel = self.warm[k]
            if self.int8_layers is not None:  # kernel: the team's size
                self.team = kernel
                # each layer's output goes to h_n[k], the last one's to y (copied there)
                y = _empty(self.y_shape, self.dtype) if k == self.n_layers - 1 else h_n[k]
                self.step(self.int8_layers[k], inp, h0, c_n, y, self.B, k, kernel)
            else:
                self.team = kernel.n_threads
                y = _empty(self.y_shape, self.dtype)
                if self.cell == _LSTM:
                    self.step(kernel, inp, h0, c0, y, h_n, c_n, 1, self.B, k)
                elif self.cell == _GRU:
                    self.step(kernel, inp, h0, y, h_n, 1, self.B, k)
                else:
                    self.step(kernel, inp, h0, y, h_n, self.relu, 1, self.B, k)
            PyDict_SetItem(self.packs[k], self.last_end_key, _now())
            inp = y
        if self.int8_layers is not None:
            h_n[self.n_layers - 1] = y
        self.last = h_n if c_n is None else (h_n, c_n)
        return y, self.last
