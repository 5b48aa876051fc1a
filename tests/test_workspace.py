"""fastrnn._workspace: kept buffers are lent again only when nothing refers to them."""

import threading

import numpy as np
import pytest
from conftest import SPEC_BY_NAME, make_case, make_layer_norm

from fastrnn import _workspace as ws


@pytest.fixture(autouse=True)
def fresh_buffers():
    ws.release()
    yield
    ws.release()


def test_small_arrays_are_plain_numpy():
    a = ws.empty((4, 5), np.float32)
    assert a.shape == (4, 5) and a.dtype == np.float32 and a.flags.c_contiguous
    assert ws.kept_nbytes() == 0


@pytest.mark.parametrize("nbytes", [ws.ALIGN_MIN, ws.ALIGN_MIN + 4 * 37, ws.MIN, 3 * ws.MIN + 12])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_arrays_from_align_min_bytes_start_on_a_cache_line(nbytes, dtype):
    """The kernels' threads write 64-byte runs of each row: from a line, never the same line.
    Every array of at least ALIGN_MIN bytes starts on one, fresh or lent again."""
    n = nbytes // np.dtype(dtype).itemsize
    for _ in range(3):  # a fresh buffer, then the same lent again
        a = ws.empty((n,), dtype)
        assert a.ctypes.data % ws.LINE == 0 and a.shape == (n,) and a.dtype == dtype
        a[:] = 1  # writable to its last element
        del a
    small = [ws.empty((ws.ALIGN_MIN // 8 - 1,), np.float64) for _ in range(8)]
    assert all(s.base is None for s in small)  # under ALIGN_MIN: plain np.empty


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_freed_buffer_is_lent_again(dtype):
    shape = (3, ws.MIN // 8 + 7)
    a = ws.empty(shape, dtype)
    assert a.shape == shape and a.dtype == dtype and a.flags.c_contiguous and a.flags.writeable
    address = a.ctypes.data
    del a
    b = ws.empty(shape, dtype)
    assert b.ctypes.data == address
    assert ws.kept_nbytes() == b.nbytes + ws.LINE  # room to start on a line


def test_a_buffer_with_a_live_view_is_not_lent():
    n = ws.MIN // 4
    a = ws.empty((n,), np.float32)
    view = a[10:20]  # the caller keeps only a slice
    del a
    view[:] = 7.0
    b = ws.empty((n,), np.float32)
    b[:] = 0.0
    np.testing.assert_array_equal(view, 7.0)
    assert ws.kept_nbytes() == 2 * (n * 4 + ws.LINE)


def test_only_a_close_size_is_lent():
    n = ws.MIN // 4
    a = ws.empty((4 * n,), np.float32)
    address = a.ctypes.data
    del a
    b = ws.empty((n,), np.float32)  # a quarter of the free buffer: not lent, a new one
    assert b.ctypes.data != address


def test_at_most_keep_bytes_are_kept(monkeypatch):
    monkeypatch.setattr(ws, "KEEP", 3 * (ws.MIN + ws.LINE))
    held = [ws.empty((ws.MIN,), np.uint8) for _ in range(5)]
    assert ws.kept_nbytes() == 3 * (ws.MIN + ws.LINE)
    del held
    big = ws.empty((2 * ws.MIN + 5,), np.uint8)  # drops free buffers to make room
    assert ws.kept_nbytes() <= ws.KEEP
    assert big.nbytes + ws.LINE in {b.nbytes for b in ws._buffers()}


def test_threads_keep_their_own_buffers():
    a = ws.empty((ws.MIN,), np.uint8)
    seen = []

    def other():
        seen.append(ws.kept_nbytes())
        ws.empty((ws.MIN,), np.uint8)
        seen.append(ws.kept_nbytes())

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert seen == [0, ws.MIN + ws.LINE]
    assert ws.kept_nbytes() == a.nbytes + ws.LINE


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_layer_norm_caches_alive_at_once_keep_their_values(cell):
    """Two training forwards whose arrays are large enough to come from the kept buffers, both
    caches alive, then their backwards in the other order: each gives the bits it gives alone."""
    spec = SPEC_BY_NAME[cell]
    rng = np.random.default_rng(0)
    T, B, I, H = 60, 16, 8, 128  # (T, B, G) float32 arrays of 1.4 MB or more
    cases = [make_case(spec, rng, T, B, I, H, np.float32) for _ in range(2)]
    ln = make_layer_norm(spec, rng, H, np.float32)

    def run(case):
        fwd = spec.forward_case("cython", case, **ln)
        return fwd, spec.backward_case("cython", fwd.cache, case)

    alone = [run(case) for case in cases]
    f0 = spec.forward_case("cython", cases[0], **ln)
    f1 = spec.forward_case("cython", cases[1], **ln)
    assert ws.kept_nbytes() > 0
    g1 = spec.backward_case("cython", f1.cache, cases[1])
    g0 = spec.backward_case("cython", f0.cache, cases[0])
    for (fa, ga), fb, gb in zip(alone, (f0, f1), (g0, g1), strict=True):
        np.testing.assert_array_equal(fa.y, fb.y)
        for name in ga._fields:
            np.testing.assert_array_equal(getattr(ga, name), getattr(gb, name), err_msg=name)


def test_empty_cache_drops_every_threads_free_buffers():
    """fastrnn.empty_cache: the free buffers of every thread go (this one's and another's), a
    buffer an array still refers to stays (and its values with it)."""
    import fastrnn

    kept = ws.empty((ws.MIN,), np.uint8)
    kept[:] = 3
    ws.empty((2 * ws.MIN,), np.uint8)  # freed at once
    lists = []

    def other():
        ws.empty((ws.MIN,), np.uint8)
        lists.append(ws._buffers())

    t = threading.Thread(target=other)
    t.start()
    t.join()
    one = ws.MIN + ws.LINE  # a kept buffer: the array and room to start it on a line
    assert ws.kept_nbytes() == 3 * ws.MIN + 2 * ws.LINE and sum(b.nbytes for b in lists[0]) == one
    assert fastrnn.empty_cache() == one  # the buffer `kept` lives in
    assert ws.kept_nbytes() == one and len(lists[0]) == 0
    np.testing.assert_array_equal(kept, 3)
    del kept
    assert fastrnn.empty_cache() == 0 and ws.kept_nbytes() == 0


def test_release_on_a_thread_that_kept_nothing_yet():
    seen = []
    t = threading.Thread(target=lambda: seen.append((ws.release(), ws.kept_nbytes())))
    t.start()
    t.join(timeout=10)
    assert not t.is_alive() and seen == [(None, 0)]


def test_line_offset_is_the_distance_to_the_next_line():
    from fastrnn._kernels._memory import line_offset

    buf = np.empty(4096 + 64, np.uint8)
    for start in range(0, 80, 7):
        view = buf[start:]
        want = -view.ctypes.data % 64
        assert line_offset(view, 64) == want
        assert line_offset(memoryview(view), 64) == want
        assert line_offset(view, 1) == 0
    for bad in (0, -64, 48):
        with pytest.raises(ValueError, match="power of two"):
            line_offset(buf, bad)
    with pytest.raises(TypeError):
        line_offset(object(), 64)


@pytest.mark.parametrize("shape", [(1024,), (4, 8, 40), 1500])
def test_aligned_arrays_start_on_a_line_and_keep_their_buffer(shape):
    a = ws.empty(shape, np.float32)
    assert a.ctypes.data % ws.LINE == 0 and a.flags.c_contiguous and a.flags.writeable
    assert a.shape == (shape if isinstance(shape, tuple) else (shape,))
    base = a.base
    a[...] = 1.5
    assert base.dtype == np.uint8 and np.shares_memory(a, base)
