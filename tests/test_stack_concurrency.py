"""fastrnn/stack.py: the two directions of a bidirectional layer run at once, with the same bits.

With ``fastrnn.get_num_threads() >= 2`` the stack runs direction 1 of each bidirectional layer
on a worker thread while the calling thread runs direction 0, each kernel call capped at its
share of the threads (``fastrnn._threads._thread_limit``). Checked here:

* outputs, final states and every gradient are bitwise equal to the forced one-after-the-other
  path (``stack._CONCURRENT_DIRECTIONS = False``), for every cell, 1 and 2 layers, with and
  without lengths, float32 and float64; the shapes are large enough that the sequential path
  runs 2 kernel threads where the concurrent one runs 1 per direction;
* the two directions really run on two Python threads, each capped at 1 of 2 threads;
* an exception in either direction (forward or backward) reaches the caller, and the caps of
  both threads are lifted afterwards;
* bidirectional layers called from two Python threads at once give their one-by-one results.
"""

import threading

import numpy as np
import pytest

import fastrnn
from fastrnn import _threads, functional, stack
from fastrnn.stack import StackConfig, default_init, stack_backward, stack_forward

# B * G * H * H >= 2 * 65536 for every cell, so the sequential path runs 2 threads per call.
T, B, I, H = 6, 32, 8, 64

CONFIGS = {
    "rnn": {"cell": "rnn"},
    "lstm": {"cell": "lstm"},
    "lstm_proj": {"cell": "lstm", "proj_size": 16},
    "gru": {"cell": "gru"},
    "gru_reset_before": {"cell": "gru", "reset_after": False},
}


@pytest.fixture(autouse=True)
def two_threads(monkeypatch):
    """Two kernel threads, and the directions at once whatever their size (the size rule is
    tested on its own below)."""
    monkeypatch.setattr(stack, "_CONCURRENT_DIRECTIONS", True)
    before = fastrnn.get_num_threads()
    fastrnn.set_num_threads(2)
    yield
    fastrnn.set_num_threads(before)


def _sequential(monkeypatch):
    monkeypatch.setattr(stack, "_CONCURRENT_DIRECTIONS", False)


def _problem(cfg, dtype, seed=0, lengths=None):
    rng = np.random.default_rng(seed)
    shapes = cfg.state_shapes(B)
    h_shape, c_shape = shapes["h"], shapes.get("c")
    x = rng.standard_normal((T, B, I)).astype(dtype)
    h0 = rng.standard_normal(h_shape).astype(dtype)
    c0 = None if c_shape is None else rng.standard_normal(c_shape).astype(dtype)
    w = default_init(cfg, dtype, rng)
    up = (
        rng.standard_normal((T, B, 2 * cfg.output_size)).astype(dtype),
        rng.standard_normal(h_shape).astype(dtype),
        None if c_shape is None else rng.standard_normal(c_shape).astype(dtype),
    )
    return (x, h0, c0, w), up, lengths


def _run(cfg, problem, seed=1):
    (x, h0, c0, w), (dy, dh_n, dc_n), lengths = problem
    gen = np.random.default_rng(seed)
    y, h_n, c_n, cache = stack_forward(cfg, x, h0, c0, w, lengths=lengths, generator=gen)
    g = stack_backward(cache, dy, dh_n, dc_n)
    return {"y": y, "h_n": h_n, "c_n": c_n, "dx": g.dx, "dh0": g.dh0, "dc0": g.dc0, **g.weights}


def _assert_bitwise(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if a[k] is None:
            assert b[k] is None, k
        else:
            assert a[k].dtype == b[k].dtype, k
            assert np.array_equal(a[k], b[k]), f"{k} differs"


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("name", CONFIGS)
def test_concurrent_is_bitwise_sequential(monkeypatch, name, num_layers, with_lengths, dtype):
    cfg = StackConfig(
        input_size=I,
        hidden_size=H,
        num_layers=num_layers,
        bidirectional=True,
        dropout=0.25,  # seeded: the same masks on both paths
        **CONFIGS[name],
    )
    lengths = np.random.default_rng(5).integers(1, T + 1, B) if with_lengths else None
    problem = _problem(cfg, dtype, lengths=lengths)
    concurrent = _run(cfg, problem)
    _sequential(monkeypatch)
    _assert_bitwise(concurrent, _run(cfg, problem))


def _spy(monkeypatch, name, seen):
    """Record (thread name, get_num_threads()) of every call of functional.<name>."""
    original = getattr(functional, name)

    def spy(*args, **kw):
        seen.append((threading.current_thread().name, fastrnn.get_num_threads()))
        return original(*args, **kw)

    monkeypatch.setattr(functional, name, spy)


def test_directions_run_on_two_threads_with_their_share(monkeypatch):
    cfg = StackConfig("lstm", I, H, bidirectional=True)
    seen_f, seen_b = [], []
    _spy(monkeypatch, "lstm_forward", seen_f)
    _spy(monkeypatch, "lstm_backward", seen_b)
    _run(cfg, _problem(cfg, np.float32))
    for seen in (seen_f, seen_b):
        names = sorted(name.startswith("fastrnn-bidir") for name, _ in seen)
        assert names == [False, True]
        assert [n for _, n in seen] == [1, 1]
    assert fastrnn.get_num_threads() == 2

    seen_f.clear()
    fastrnn.set_num_threads(1)  # one thread allowed: one after the other on this thread
    _run(cfg, _problem(cfg, np.float32))
    assert [name for name, _ in seen_f] == [threading.current_thread().name] * 2


def test_small_layers_run_one_direction_after_the_other(monkeypatch):
    """The default rule: at once only from _MIN_WORK_CONCURRENT multiply-adds per direction."""
    monkeypatch.setattr(stack, "_CONCURRENT_DIRECTIONS", None)
    seen = []
    _spy(monkeypatch, "lstm_forward", seen)
    for steps, at_once in ((2, False), (20, True)):  # 2 * 32 * 256 * 72 < 2**22 < 10 times it
        cfg = StackConfig("lstm", I, H, bidirectional=True)
        assert (steps * B * 4 * H * (I + H) >= stack._MIN_WORK_CONCURRENT) == at_once
        seen.clear()
        x = np.zeros((steps, B, I), np.float32)
        stack_forward(cfg, x, None, None, default_init(cfg, np.float32, np.random.default_rng()))
        in_worker = [name.startswith("fastrnn-bidir") for name, _ in seen]
        assert sorted(in_worker) == ([False, True] if at_once else [False, False])


def test_odd_thread_counts_split(monkeypatch):
    cfg = StackConfig("gru", I, H, bidirectional=True)
    seen = []
    _spy(monkeypatch, "gru_forward", seen)
    fastrnn.set_num_threads(3)
    x, h0, _, w = _problem(cfg, np.float64)[0]
    stack_forward(cfg, x, h0, None, w)
    assert sorted(n for _, n in seen) == [1, 2]  # n // 2 here, n - n // 2 on the worker


def _worker_state():
    """get_num_threads() and whether a cap is set, as seen from the worker thread."""
    f = stack._direction_worker().submit(
        lambda: (fastrnn.get_num_threads(), _threads._in_thread_limit())
    )
    return f.result()


def _assert_caps_lifted():
    assert fastrnn.get_num_threads() == 2
    assert not _threads._in_thread_limit()
    assert _worker_state() == (2, False)


def test_bad_reverse_weight_raises_from_the_worker():
    cfg = StackConfig("lstm", I, H, bidirectional=True)
    (x, h0, c0, w), _, _ = _problem(cfg, np.float64)
    w["weight_ih_l0_reverse"] = w["weight_ih_l0_reverse"].astype(complex)  # refused
    with pytest.raises((TypeError, ValueError), match="complex"):
        stack_forward(cfg, x, h0, c0, w)
    _assert_caps_lifted()


class Boom(RuntimeError):
    pass


@pytest.mark.parametrize("where", ["forward", "backward"])
@pytest.mark.parametrize("failing", ["reverse", "forward", "both"])
def test_exceptions_propagate_and_caps_are_lifted(monkeypatch, where, failing):
    cfg = StackConfig("gru", I, H, num_layers=2, bidirectional=True)
    problem = _problem(cfg, np.float32)
    name = f"gru_{where}"
    original = getattr(functional, name)

    def failing_call(*args, **kw):
        in_worker = threading.current_thread().name.startswith("fastrnn-bidir")
        if failing == "both" or in_worker == (failing == "reverse"):
            raise Boom("worker" if in_worker else "caller")
        return original(*args, **kw)

    monkeypatch.setattr(functional, name, failing_call)
    # with both failing, direction 0's (the caller's) exception is the one raised
    expected = "worker" if failing == "reverse" else "caller"
    with pytest.raises(Boom, match=expected):
        _run(cfg, problem)
    _assert_caps_lifted()


def test_thread_limit_nests_and_restores():
    assert not _threads._in_thread_limit()
    with _threads._thread_limit(1):
        assert fastrnn.get_num_threads() == 1
        with _threads._thread_limit(5):
            assert fastrnn.get_num_threads() == 1
        assert fastrnn.get_num_threads() == 1
        with pytest.raises(Boom), _threads._thread_limit(1):
            raise Boom
        assert _threads._in_thread_limit()
    assert fastrnn.get_num_threads() == 2
    with pytest.raises(ValueError, match="positive"):
        with _threads._thread_limit(0):
            pass


def test_layers_from_two_python_threads(monkeypatch):
    """Two threads, each driving its own bidirectional LSTM and GRU, several times at once."""
    dtype = np.float32
    rng = np.random.default_rng(3)
    xs = [rng.standard_normal((T, B, I)).astype(dtype) for _ in range(2)]
    douts = [rng.standard_normal((T, B, 2 * H)).astype(dtype) for _ in range(2)]

    def job(k):
        out = []
        for cls in (fastrnn.LSTM, fastrnn.GRU):
            layer = cls(I, H, num_layers=2, bidirectional=True, dtype=dtype, seed=k)
            for _ in range(3):
                layer.zero_grad()
                y, _ = layer(xs[k])
                dx, _ = layer.backward(douts[k])
                out.append((y, dx, [p.grad for _, p in layer.named_parameters()]))
        return out

    got = [None, None]
    errors = []
    barrier = threading.Barrier(2)

    def thread(k):
        try:
            barrier.wait()
            got[k] = job(k)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=thread, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors

    _sequential(monkeypatch)
    fastrnn.set_num_threads(1)
    for k in range(2):
        for (y, dx, gw), (y_ref, dx_ref, gw_ref) in zip(got[k], job(k), strict=True):
            assert np.array_equal(y, y_ref)
            assert np.array_equal(dx, dx_ref)
            for a, b in zip(gw, gw_ref, strict=True):
                assert np.array_equal(a, b)
