"""RNNBase.step: streaming a sequence step by step (or chunk by chunk) equals one forward."""

from __future__ import annotations

import time

import numpy as np
import pytest

import fastrnn
from fastrnn.cells import CELLS

# every cell and variant of the registry, with and without the LSTM projection
VARIANTS = (
    [(cell, dict(options)) for cell in CELLS.values() for options in cell.variants.values()]
    + [(CELLS["lstm"], {"proj_size": 3})]
    + [(CELLS["gru"], {"reset_after": False})]
)


def _layer(cell, options, dtype, num_layers, **kw):
    cls = getattr(fastrnn, cell.title)
    return cls(5, 7, num_layers=num_layers, dtype=dtype, seed=3, **options, **kw).eval()


def _random_state(layer, rng, B):
    shapes = layer._config.state_shapes(B)
    states = [rng.standard_normal(shapes[s]).astype(layer.dtype) for s in layer._config.spec.states]
    return states[0] if len(states) == 1 else tuple(states)


def _assert_state_equal(a, b):
    if isinstance(a, tuple):
        assert len(a) == len(b)
        for u, v in zip(a, b, strict=True):
            np.testing.assert_array_equal(u, v)
    else:
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("num_layers", [1, 3])
@pytest.mark.parametrize(("cell", "options"), VARIANTS, ids=lambda v: getattr(v, "name", str(v)))
def test_steps_equal_forward_bit_for_bit(cell, options, dtype, num_layers):
    rng = np.random.default_rng(0)
    layer = _layer(cell, options, dtype, num_layers)
    T, B = 9, 4
    x = rng.standard_normal((T, B, 5)).astype(dtype)
    state0 = _random_state(layer, rng, B)
    y_full, s_full = layer(x, state0)

    # one step at a time
    state, ys = state0, []
    for t in range(T):
        y, state = layer.step(x[t], state)
        assert y.shape == y_full.shape[1:] and y.dtype == dtype
        ys.append(y)
    np.testing.assert_array_equal(np.stack(ys), y_full)
    _assert_state_equal(state, s_full)

    # chunks of uneven sizes (K = 1, 3, 5)
    state, ys = state0, []
    for a, b in [(0, 1), (1, 4), (4, 9)]:
        y, state = layer.step(x[a:b], state)
        ys.append(y)
    np.testing.assert_array_equal(np.concatenate(ys), y_full)
    _assert_state_equal(state, s_full)


@pytest.mark.parametrize("cell", list(CELLS.values()), ids=lambda c: c.name)
def test_step_from_zero_state_and_batch_first(cell):
    rng = np.random.default_rng(1)
    layer = getattr(fastrnn, cell.title)(5, 7, num_layers=2, batch_first=True, seed=0)
    x = rng.standard_normal((3, 6, 5)).astype(np.float32)  # (B, T, I)
    y_full, s_full = layer.eval()(x)
    y1, s = layer.step(x[:, :2])  # a batch-first chunk
    y2, s = layer.step(x[:, 2], s)  # one step: (B, I)
    y3, s = layer.step(x[:, 3:], s)
    np.testing.assert_array_equal(np.concatenate([y1, y2[:, None], y3], axis=1), y_full)
    _assert_state_equal(s, s_full)


def test_step_in_training_mode_applies_no_dropout_and_keeps_nothing():
    layer = fastrnn.LSTM(4, 6, num_layers=2, dropout=0.5, seed=0)
    x = np.random.default_rng(2).standard_normal((5, 2, 4)).astype(np.float32)
    layer.train()
    y, _ = layer.step(x)
    assert layer._cache is None
    with pytest.raises(RuntimeError):
        layer.backward(np.ones_like(y))
    y_eval, _ = layer.eval()(x)
    np.testing.assert_array_equal(y, y_eval)


def test_step_refuses_bidirectional():
    layer = fastrnn.GRU(4, 6, bidirectional=True, seed=0)
    with pytest.raises(ValueError, match="unidirectional"):
        layer.step(np.zeros((2, 4), np.float32))


@pytest.mark.parametrize(
    ("x", "state", "match"),
    [
        (np.zeros(4), None, "x must be 2-D"),
        (np.zeros((2, 3)), None, "input_size=4"),
        (np.zeros((2, 4)), (np.zeros((2, 2, 6)), None), r"h must have shape .*\(1, 2, 6\)"),
        (np.zeros((2, 4)), (None, np.zeros((1, 3, 6))), r"c must have shape"),
    ],
)
def test_step_bad_input(x, state, match):
    layer = fastrnn.LSTM(4, 6, seed=0)
    with pytest.raises(ValueError, match=match):
        layer.step(x, state)


def test_step_state_type_is_checked():
    with pytest.raises(TypeError, match="tuple"):
        fastrnn.LSTM(4, 6, seed=0).step(np.zeros((1, 4)), np.zeros((1, 1, 6)))
    with pytest.raises(TypeError, match="one array"):
        fastrnn.GRU(4, 6, seed=0).step(np.zeros((1, 4)), (np.zeros((1, 1, 6)),))


@pytest.mark.parametrize(
    ("cls", "options"),
    [
        (fastrnn.LSTM, {"peephole": True}),
        (fastrnn.LSTM, {"layer_norm": True}),
        (fastrnn.LSTM, {"zoneout": (0.3, 0.1)}),
        (fastrnn.LSTM, {"recurrent_dropout": 0.3}),
        (fastrnn.LSTM, {"return_cell_states": True}),
        (fastrnn.GRU, {"layer_norm": True}),
        (fastrnn.GRU, {"zoneout": 0.2, "recurrent_dropout": 0.2}),
        (fastrnn.RNN, {"zoneout": 0.2, "recurrent_dropout": 0.2}),
    ],
    ids=lambda v: getattr(v, "__name__", str(v)),
)
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_steps_of_the_cell_features_equal_eval_forward(cls, options, mode):
    """step is eval's forward with every cell feature: zoneout's expectation, no recurrent
    dropout, and the cell states of return_cell_states left to the state's c."""
    rng = np.random.default_rng(4)
    layer = cls(5, 7, num_layers=2, seed=3, **options)
    x = rng.standard_normal((6, 3, 5)).astype(np.float32)
    state0 = _random_state(layer, rng, 3)
    y_full, s_full = layer.eval()(x, state0)[:2]
    if mode == "train":
        layer.train()
    state, ys = state0, []
    for t in range(6):
        y, state = layer.step(x[t], state)
        ys.append(y)
    np.testing.assert_array_equal(np.stack(ys), y_full)
    _assert_state_equal(state, s_full)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cell", list(CELLS.values()), ids=lambda c: c.name)
def test_one_stream_steps_equal_forward_bit_for_bit(cell, dtype):
    """B = 1 and H = 150: a step's input projection is one row (the one-row micro-kernel of
    _rgemm.h), the forward's a block of steps (the many-row tiles); same bits."""
    rng = np.random.default_rng(5)
    layer = getattr(fastrnn, cell.title)(150, 150, num_layers=2, dtype=dtype, seed=1).eval()
    x = rng.standard_normal((6, 1, 150)).astype(dtype)
    y_full, s_full = layer(x)
    state, ys = None, []
    for t in range(6):
        y, state = layer.step(x[t], state)
        ys.append(y)
    np.testing.assert_array_equal(np.stack(ys), y_full)
    _assert_state_equal(state, s_full)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("I", "H"), [(1100, 24), (8, 1040)])
@pytest.mark.parametrize("cell", list(CELLS.values()), ids=lambda c: c.name)
def test_long_reductions_step_equal_forward_bit_for_bit(cell, I, H, dtype):
    """Reductions past 1024 floats (512 doubles) go in blocks of k (_rgemm.h: FR_KC_BYTES) in
    every product: the one-row passes of a B = 1 step, the gate-block passes of a small H and
    the many-row tiles of the forward add the same blocks in the same order."""
    rng = np.random.default_rng(6)
    layer = getattr(fastrnn, cell.title)(I, H, dtype=dtype, seed=2).eval()
    x = rng.standard_normal((3, 1, I)).astype(dtype)
    y_full, s_full = layer(x)
    state, ys = None, []
    for t in range(3):
        y, state = layer.step(x[t], state)
        ys.append(y)
    np.testing.assert_array_equal(np.stack(ys), y_full)
    _assert_state_equal(state, s_full)


def test_step_sees_new_weights_and_biases():
    """The step keeps its kernel operands (packed weights, summed biases) between calls and
    re-makes them when a parameter changes through fastrnn, or after flatten_parameters."""
    rng = np.random.default_rng(6)
    layer = fastrnn.GRU(5, 7, num_layers=2, seed=0).eval()
    x = rng.standard_normal((2, 5)).astype(np.float32)
    before = layer.step(x)[0]
    layer.bias_hh_l1.data = layer.bias_hh_l1.data + 1  # a new array: a new version
    after = layer.step(x)[0]
    assert not np.array_equal(before, after)
    np.testing.assert_array_equal(after, layer(x[None])[0][0])
    layer.weight_ih_l0.data *= 0.5  # in place: seen after flatten_parameters
    layer.flatten_parameters()
    np.testing.assert_array_equal(layer.step(x)[0], layer(x[None])[0][0])
    assert not np.array_equal(layer.step(x)[0], after)


def test_a_stepped_layer_copies_and_pickles():
    """The step's kept operands (packed weights) stay out of copies and pickles."""
    import copy
    import pickle

    layer = fastrnn.LSTM(5, 7, seed=0).eval()
    x = np.random.default_rng(8).standard_normal((2, 5)).astype(np.float32)
    y, _ = layer.step(x)
    for other in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
        np.testing.assert_array_equal(other.step(x)[0], y)


@pytest.mark.parametrize("cell", list(CELLS.values()), ids=lambda c: c.name)
def test_steps_on_a_spinning_team_of_two_equal_one_thread(cell, monkeypatch):
    """With a team that spins between regions (GOMP_SPINCOUNT, functional._TEAM_SPINS), a
    B = 1 step of a layer this wide splits its gate columns over 2 threads: same bits as the
    one-thread step and the forward."""
    from fastrnn import functional

    rng = np.random.default_rng(9)
    layer = getattr(fastrnn, cell.title)(384, 384, num_layers=2, seed=2).eval()
    G = layer.weight_hh_l0.data.shape[0]
    x = rng.standard_normal((4, 1, 384)).astype(np.float32)
    y_full, s_full = layer(x)
    before = fastrnn.get_num_threads()
    runs = []
    try:
        for n, spins in ((1, False), (2, True)):
            fastrnn.set_num_threads(n)
            monkeypatch.setattr(functional, "_TEAM_SPINS", spins)
            assert functional._step_team(1, G, 384, 384) == n
            state, ys = None, []
            for t in range(4):
                y, state = layer.step(x[t], state)
                ys.append(y)
            runs.append((np.stack(ys), state))
    finally:
        fastrnn.set_num_threads(before)
    for ys, state in runs:
        np.testing.assert_array_equal(ys, y_full)
        _assert_state_equal(state, s_full)


def test_team_spins_reads_libgomp_environment():
    from fastrnn.functional import _team_spins

    assert not _team_spins({})
    assert not _team_spins({"OMP_WAIT_POLICY": "PASSIVE"})
    assert _team_spins({"OMP_WAIT_POLICY": "active"})
    assert _team_spins({"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "300000"})
    assert not _team_spins({"OMP_WAIT_POLICY": "ACTIVE", "GOMP_SPINCOUNT": "0"})
    assert _team_spins({"GOMP_SPINCOUNT": "infinite"})


def test_team_sleeps_reads_libgomp_environment():
    from fastrnn.functional import _team_sleeps

    assert not _team_sleeps({})  # libgomp's default: spins a while, then sleeps
    assert _team_sleeps({"OMP_WAIT_POLICY": "passive"})
    assert not _team_sleeps({"OMP_WAIT_POLICY": "ACTIVE"})
    assert _team_sleeps({"OMP_WAIT_POLICY": "ACTIVE", "GOMP_SPINCOUNT": "0"})
    assert not _team_sleeps({"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "1000"})


def test_step_team_splits_bursts_and_long_calls_only(monkeypatch):
    """Under libgomp's default policy a B = 1 step too small for _team_for's rule is split
    when the same layer's previous call ended within _BURST_S (the worker still spins), or when
    the call is long enough to pay for waking it; never under PASSIVE but for a long call."""
    import time

    from fastrnn import functional as F

    monkeypatch.setattr(F, "_TEAM_SPINS", False)
    monkeypatch.setattr(F, "_TEAM_SLEEPS", False)
    monkeypatch.setattr(F, "get_num_threads", lambda: 2)
    G, H = 1024, 256  # an LSTM, I = H = 256: 2**19 multiply-adds a step
    assert F._step_team(1, G, H, H) == 1  # no history
    assert F._step_team(1, G, H, H, 1, {}) == 1
    recent = {F._LAST_END: time.perf_counter()}
    assert F._step_team(1, G, H, H, 1, recent) == 2
    old = {F._LAST_END: time.perf_counter() - 10 * F._BURST_S}
    assert F._step_team(1, G, H, H, 1, old) == 1
    long_call = F._MIN_CALL_WORK_TO_WAKE // (G * 2 * H)
    assert F._step_team(1, G, H, H, long_call - 1) == 1
    assert F._step_team(1, G, H, H, long_call) == 2
    assert F._step_team(1, 64, 16, 16, 10**6, recent) == 1  # too small a step to split
    # B = 16, I = 64, H = 128: the RNN's step (98 KB of weights, 3.9e5 multiply-adds) is too
    # short for two threads; the LSTM's (1.6e6) is not
    assert F._step_team(16, 128, 128, 64, 1, recent) == 1
    assert F._step_team(16, 512, 128, 64, 1, recent) == 2
    assert F._step_team(16, 512, 128, 64, 1, old) == 1
    monkeypatch.setattr(F, "_TEAM_SLEEPS", True)
    assert F._step_team(1, G, H, H, 1, recent) == 1
    assert F._step_team(1, G, H, H, long_call) == 2
    monkeypatch.setattr(F, "_TEAM_SPINS", True)
    assert F._step_team(1, G, H, H) == 2


@pytest.mark.parametrize("cell", list(CELLS.values()), ids=lambda c: c.name)
def test_a_burst_of_steps_splits_with_the_same_bits(cell, monkeypatch):
    """Steps and eval forwards in a loop record their end in the layer's packs; from the second
    call on they run on 2 threads under libgomp's default policy, with the same bits: the
    forwards and the first step through ``_step_team``, the next steps in the stream's C path,
    which takes the team ``_step_team`` gives an awake worker (its ``team``). The stream is
    made at the second step of a stream."""
    from conftest import awake_team, record_calls

    from fastrnn import functional as F

    awake_team(monkeypatch)
    teams = record_calls(monkeypatch, F, "_step_team")
    blas = fastrnn.get_isa() == "blas"  # (FASTRNN_ISA=blas) then no stream
    rng = np.random.default_rng(11)
    layer = getattr(fastrnn, cell.title)(384, 384, seed=3).eval()
    x = rng.standard_normal((3, 1, 384)).astype(np.float32)
    before = fastrnn.get_num_threads()
    try:
        fastrnn.set_num_threads(2)
        y_full, s_full = layer(x)  # the first call: no history
        y_again, s_again = layer(x)  # the second, within the burst
        state, ys, stream_teams = None, [], []
        for t in range(3):
            y, state = layer.step(x[t], state)
            ys.append(y)
            if blas:  # no stream: every step through _step_team
                continue
            if t == 1:  # the stream made after the second step asks for its cold and warm teams
                assert len(teams) == 6 and teams[5] == 2
                del teams[4:]
            elif t == 2:
                stream_teams.append(layer._packed.stream.team)
    finally:
        fastrnn.set_num_threads(before)
    assert teams == ([1, 2, 2, 2, 2] if blas else [1, 2, 2, 2])
    assert stream_teams == ([] if blas else [2])
    np.testing.assert_array_equal(y_again, y_full)
    np.testing.assert_array_equal(np.stack(ys), y_full)
    _assert_state_equal(s_again, s_full)
    _assert_state_equal(state, s_full)


@pytest.mark.parametrize("cell", list(CELLS.values()), ids=lambda c: c.name)
def test_step_takes_non_contiguous_states(cell):
    rng = np.random.default_rng(10)
    layer = getattr(fastrnn, cell.title)(5, 7, num_layers=2, seed=0).eval()
    x = rng.standard_normal((3, 5)).astype(np.float32)
    state = _random_state(layer, rng, 3)
    strided = (
        tuple(np.asfortranarray(s) for s in state)
        if isinstance(state, tuple)
        else (np.asfortranarray(state))
    )
    y, s = layer.step(x, strided)
    y_ref, s_ref = layer(x[None], state)
    np.testing.assert_array_equal(y, y_ref[0])
    _assert_state_equal(s, s_ref)


def test_step_kernel_refuses_short_buffers():
    """The kernels' step entry checks each raw buffer's element size and length."""
    from fastrnn._isa import KERNELS

    layer = fastrnn.LSTM(5, 7, seed=0).eval()
    x = np.zeros((1, 5), np.float32)
    layer.step(x)
    kernel = next(iter(layer._step_operands()[0][5].values()))
    h = np.zeros((1, 1, 7), np.float32)
    y = np.empty((1, 7), np.float32)
    with pytest.raises(ValueError, match="expected 28 bytes"):
        KERNELS.lstm.step(kernel, x, h, h, np.empty((1, 6), np.float32), h.copy(), h.copy(),
                          1, 1, 0)  # fmt: skip
    with pytest.raises(ValueError, match="4-byte elements"):
        KERNELS.lstm.step(kernel, x.astype(np.float64), h, h, y, h.copy(), h.copy(), 1, 1, 0)
    with pytest.raises(ValueError, match="expected 56 bytes"):  # layer 1 of a 1-layer state
        KERNELS.lstm.step(kernel, x, h, h, y, h.copy(), h.copy(), 1, 1, 1)


@pytest.mark.parametrize("cell", list(CELLS.values()), ids=lambda c: c.name)
def test_a_stream_sees_new_weights_and_checks_its_input(cell):
    """Passing back the state the last step returned skips re-checking it (the layer keeps
    that state, the dtype and the shape of x): a parameter change, another x shape or
    training mode still take effect."""
    rng = np.random.default_rng(11)
    layer = getattr(fastrnn, cell.title)(5, 7, num_layers=2, seed=0).eval()
    x = rng.standard_normal((4, 3, 5)).astype(np.float32)
    y_full, s_full = layer(x)
    state, ys = None, []
    for t in range(4):
        y, state = layer.step(x[t], state)
        ys.append(y)
    np.testing.assert_array_equal(np.stack(ys), y_full)
    _assert_state_equal(state, s_full)
    layer.bias_ih_l1.data = layer.bias_ih_l1.data - 1  # a new version
    y, new_state = layer.step(x[0], state)
    y_ref, s_ref = layer(x[:1], state)
    np.testing.assert_array_equal(y, y_ref[0])
    _assert_state_equal(new_state, s_ref)
    with pytest.raises(ValueError, match="must have shape"):  # 2 rows, a state of 3
        layer.step(x[0, :2], new_state)
    y64, _ = layer.step(x[1].astype(np.float64), new_state)  # converted, as ever
    np.testing.assert_array_equal(y64, layer.step(x[1], new_state)[0])
    layer.train()
    y_train, _ = layer.step(x[1], new_state)
    np.testing.assert_array_equal(y_train, y64)  # a step applies no dropout in training mode


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("cell", list(CELLS.values()), ids=lambda c: c.name)
def test_eval_forwards_split_rows_with_the_one_thread_bits(cell, dtype, monkeypatch):
    """An eval forward of T > 1 steps whose weights are small and whose batch gives each of 2
    threads 4 rows or more splits its batch rows once the team is awake (no barrier per step),
    at even and uneven shares, layer after layer: the bits of one thread and of the unit
    split. A kernel without micro-kernels runs such a call on one thread."""
    from conftest import awake_team, record_calls

    from fastrnn import _isa
    from fastrnn import functional as F

    awake_team(monkeypatch)
    monkeypatch.setattr(F, "_MIN_ROWS_CALL_WORK", 0)  # sizes small enough for a unit test
    monkeypatch.setattr(F, "_ROWS_WEIGHT_BYTES", 1 << 20)
    splits = record_calls(monkeypatch, F, "_step_rows")
    rng = np.random.default_rng(13)
    layer = getattr(fastrnn, cell.title)(24, 40, num_layers=2, seed=3, dtype=dtype).eval()
    before = fastrnn.get_num_threads()

    def run(threads, weight_bytes=1 << 20):
        fastrnn.set_num_threads(threads)
        F._ROWS_WEIGHT_BYTES = weight_bytes
        layer(x)  # leaves the layers' call ends: the next call finds the team awake
        del splits[:]
        return layer(x)

    try:
        for B in (8, 13):
            x = rng.standard_normal((6, B, 24)).astype(dtype)
            y1, s1 = run(1)
            assert splits == [0, 0]
            for weight_bytes, split in ((1 << 20, [2, 2]), (0, [0, 0])):  # rows, then units
                y2, s2 = run(2, weight_bytes)
                assert splits == split
                np.testing.assert_array_equal(y2, y1)
                _assert_state_equal(s2, s1)
        # the kernels' own check: told to split rows (as if they had micro-kernels), the
        # BLAS kernels run the call on one thread, with their own one-thread bits
        isa = _isa.get_isa()
        _isa.set_isa("blas")
        try:
            y_blas, s_blas = run(1)
            monkeypatch.setattr(F, "get_isa", lambda: "avx512")
            y2, s2 = run(2)
            assert splits == [2, 2]
            np.testing.assert_array_equal(y2, y_blas)
            _assert_state_equal(s2, s_blas)
        finally:
            _isa.set_isa(isa)
    finally:
        fastrnn.set_num_threads(before)


def test_step_rows_rule(monkeypatch):
    """Rows split where each of the threads gets 4 rows or more, T > 1, the weights take at
    most 512 KB, the call has 2**20 multiply-adds or more and the team is awake."""
    from conftest import awake_team

    from fastrnn import functional as F

    awake_team(monkeypatch)
    recent = {F._LAST_END: time.perf_counter()}
    before = fastrnn.get_num_threads()
    try:
        fastrnn.set_num_threads(2)
        G, H, I = 4 * 128, 128, 64  # the longseq LSTM: 384 KB of float32 weights
        assert F._step_rows(16, G, H, I, 1000, recent, 4) == 2
        assert F._step_rows(16, G, H, I, 1000, recent, 8) == 0  # 768 KB in float64
        assert F._step_rows(7, G, H, I, 1000, recent, 4) == 0  # 3 rows a thread
        assert F._step_rows(16, G, H, I, 1, recent, 4) == 0  # one step
        assert F._step_rows(16, G, H, I, 1000, None, 4) == 0  # weights packed per call
        assert F._step_rows(8, G, H, I, 2, recent, 4) == 2  # 2**20.6 multiply-adds
        assert F._step_rows(8, 128, H, I, 4, recent, 4) == 0  # an RNN's 2**19.6
        assert F._step_rows(16, G, H, I, 100, {}, 4) == 0  # asleep, 2**27.2
        assert F._step_rows(16, G, H, I, 1000, {}, 4) == 2  # asleep, 2**30.6: worth a wake
        fastrnn.set_num_threads(1)
        assert F._step_rows(16, G, H, I, 1000, recent, 4) == 0
    finally:
        fastrnn.set_num_threads(before)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("cell", list(CELLS.values()), ids=lambda c: c.name)
def test_the_stream_answers_as_the_general_path_or_refuses(cell, dtype):
    """After a one-step call the layer keeps a Stream (fastrnn._kernels._stream, the C path of
    the next steps). From the state it returned, or any other of the layer's dtype and shape
    (a beam search's), it gives the general path's bits; wherever anything differs from the
    call it was made after it answers None and the general path runs."""
    if fastrnn.get_isa() == "blas":  # (FASTRNN_ISA=blas) no stream: checked below otherwise
        pytest.skip("no stream where the kernels call BLAS")
    rng = np.random.default_rng(21)
    layer = getattr(fastrnn, cell.title)(6, 9, num_layers=2, dtype=dtype, seed=4).eval()
    x = rng.standard_normal((3, 6)).astype(dtype)
    _, s0 = layer.step(x)
    assert layer._packed.stream is None  # made at a stream's second step, not at a one-off one
    _, s0 = layer.step(x, s0)
    stream = layer._packed.stream
    assert stream is not None and stream.matches(x)
    for state in (s0, _random_state(layer, rng, 3)):  # the last one, and another
        y, s1 = stream(x, state)
        y_ref, s_ref = layer(x[None], state)
        np.testing.assert_array_equal(y, y_ref[0])
        _assert_state_equal(s1, s_ref)
    s1 = stream(x, s0)[1]
    other = np.float32 if dtype == np.float64 else np.float64
    refused = [
        (x.astype(other), s1),  # another dtype
        (x[:2], s1),  # another batch
        (np.asfortranarray(x), s1),  # other strides
        (list(x), s1),  # not an ndarray
        (x, None),  # zeros: the general path makes them
        (x, _random_state(layer, rng, 2)),  # a state of another batch
    ]
    if isinstance(s1, tuple):
        refused += [(x, s1[:1]), (x, (s1[0], s1[1].astype(other)))]
    else:
        refused += [(x, np.asfortranarray(s1)), (x, (s1,))]
    for args in refused:
        assert stream(*args) is None
    before = fastrnn.get_num_threads()
    try:
        fastrnn.set_num_threads(1 if before > 1 else 2)
        assert stream(x, s1) is None  # another thread count
    finally:
        fastrnn.set_num_threads(before)
    assert stream(x, s1) is not None
    isa = fastrnn.get_isa()
    try:
        fastrnn.set_isa("blas")
        assert stream(x, s1) is None  # another instruction set
        # and none is made for kernels that call BLAS (the general path guards its threads)
        other_layer = getattr(fastrnn, cell.title)(6, 9, dtype=dtype, seed=4).eval()
        state = None
        for _ in range(3):
            y, state = other_layer.step(x, state)
        assert other_layer._packed.stream is None
    finally:
        fastrnn.set_isa(isa)
    layer.weight_hh_l1._bump_version()  # a parameter changed in place (optimizers say so)
    assert stream(x, s1) is None
    y, s2 = layer.step(x, s1)  # the general path, then a stream again from its second step
    y, s2 = layer.step(x, s2)
    assert layer._packed.stream is not stream and layer._packed.stream(x, s2) is not None
    stream = layer._packed.stream
    layer.bias_ih_l0 = fastrnn.nn.Parameter(layer.bias_ih_l0.data + 1)  # replaced
    assert stream(x, s2) is None
    y_new, s3 = layer.step(x, s2)
    np.testing.assert_array_equal(y_new, layer(x[None], s2)[0][0])
    assert not np.array_equal(y_new, y)
    layer.step(x, s3)
    stream = layer._packed.stream
    assert stream(x, s2) is not None
    layer.extra = fastrnn.nn.Parameter(np.zeros(1, dtype))  # one more parameter
    assert stream(x, s2) is None


def test_stream_refuses_bad_arguments():
    from fastrnn._kernels._stream import Stream

    x = np.zeros((1, 4), np.float32)
    h = np.zeros((1, 1, 4), np.float32)
    ok = dict(params={}, watched=(), cold=(None,), warm=(None,), packs=({},))
    args = ("last_end", -1.0, x, h, False, lambda: 0)
    with pytest.raises(ValueError, match="cell must be 0, 1 or 2"):
        Stream(3, print, *ok.values(), *args)
    with pytest.raises(ValueError, match="one per layer"):
        Stream(0, print, {}, (), (None,), (), ({},), *args)
    with pytest.raises(ValueError, match="C-contiguous 2-D ndarray"):
        Stream(0, print, *ok.values(), "last_end", -1.0, x[None], h, False, lambda: 0)
