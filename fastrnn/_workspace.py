"""Large kernel arrays from buffers kept between calls (one set per Python thread).

A training forward and its backward allocate tens of MB of arrays at medium sizes (the saved
activations, the gate gradients) and free them when the backward is done. glibc hands the top of
a heap that large back to the system once it is freed, and then the next call gets fresh pages:
the kernel maps and clears each one (~1 ms per 10 MB, up to a third of a layer-normalized GRU's
time at T=100 B=32 H=256), or not, depending on where the heap's last live object happens to
sit, so the same script ran in one of two speeds. ``empty`` instead carves its array out of a
buffer this thread keeps: a buffer is lent again only when nothing refers to it any more (no
array, view or slice of it is alive: CPython's reference count says so), so an array the caller
keeps is never overwritten.

At most ``KEEP`` bytes of buffers are kept per thread (a buffer that would not fit first drops
free buffers of other sizes); past that, and for arrays under ``MIN`` bytes (which the allocator
serves from its free lists anyway), ``empty`` is ``np.empty`` (started on a cache line from
``ALIGN_MIN`` bytes on).
``release()`` drops the calling thread's buffers; :func:`fastrnn.empty_cache`
drops the free buffers of every thread.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import weakref

import numpy as np

from fastrnn._kernels._memory import line_offset as _line_offset

__all__ = ["KEEP", "MIN", "empty", "empty_cache", "kept_nbytes", "release"]

MIN = 1 << 20
KEEP = 1 << 30
# Arrays of at least ALIGN_MIN bytes start on a LINE-byte cache line. The kernels' threads write
# runs of 16 hidden units (64 bytes of float32) of each row of y, the gates and their gradients:
# from a line boundary two threads never write the same line, but NumPy's (malloc's) arrays start
# 16 bytes past one, and then every run boundary of every row is a line both threads write. On
# the 2-core machine that made an int8 LSTM forward at T=1000 B=16 H=128 run 13.4 ms on 2 threads
# against 10.6 ms on one, and 7.5 ms once its rows started on a line.
LINE = 64
ALIGN_MIN = 1 << 12
_local = threading.local()
# every thread's list of buffers (a thread's list goes with the thread), for empty_cache; the
# lock keeps empty_cache from emptying a list while its thread scans it
_lists: weakref.WeakSet = weakref.WeakSet()
_lock = threading.Lock()


def _after_fork() -> None:
    # a fork while another thread held the lock would leave the child's copy locked for good
    global _lock
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


class _Buffers(list):
    """A thread's kept buffers (a list subclass, so that _lists can refer to it weakly; by
    identity, as two threads' lists are never the same)."""

    __eq__ = object.__eq__
    __hash__ = object.__hash__


def _free_count() -> int:
    """What ``sys.getrefcount(bufs[i])`` gives for a buffer only the list refers to (2 where
    the call's argument counts, as up to CPython 3.13), measured the way ``_free`` asks; 0
    without ``sys.getrefcount`` (then no buffer is ever lent again)."""
    if not hasattr(sys, "getrefcount"):
        return 0
    bufs = [np.empty(1, np.uint8)]
    return sys.getrefcount(bufs[0])


_FREE = _free_count()


def _free(bufs: list[np.ndarray], i: int) -> bool:
    """Whether nothing but the list refers to bufs[i] (no array, view or slice of it alive)."""
    return sys.getrefcount(bufs[i]) == _FREE


def _buffers() -> list[np.ndarray]:
    bufs = getattr(_local, "bufs", None)
    if bufs is None:
        bufs = _local.bufs = _Buffers()
        with _lock:
            _lists.add(bufs)
    return bufs


def empty(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """An uninitialized C-contiguous array, as ``np.empty(shape, dtype)``.

    Parameters
    ----------
    shape : int or tuple of int
    dtype : numpy dtype

    Returns
    -------
    ndarray of shape ``shape``
        A view of a kept buffer that nothing else refers to when its size is at least ``MIN``
        bytes, else a fresh array.
    """
    dtype = np.dtype(dtype)
    n = (math.prod(shape) if isinstance(shape, tuple) else shape) * dtype.itemsize
    if n < MIN or not _FREE:
        if n < ALIGN_MIN:
            return np.empty(shape, dtype)
        return _line_view(np.empty(n + LINE, np.uint8), n, dtype, shape)
    need = n + LINE  # room to start on a line
    bufs = _buffers()
    with _lock:
        best = -1
        for i in range(len(bufs)):
            if need <= bufs[i].nbytes <= 2 * need and _free(bufs, i):
                if best < 0 or bufs[i].nbytes < bufs[best].nbytes:
                    best = i
        if best >= 0:
            buf = bufs[best]
        else:
            # make room: drop free buffers (of other sizes) while the new one would not fit
            for i in range(len(bufs) - 1, -1, -1):
                if kept_nbytes() + need <= KEEP:
                    break
                if _free(bufs, i):
                    del bufs[i]
            buf = np.empty(need, np.uint8)
            if kept_nbytes() + need <= KEEP:
                bufs.append(buf)
    return _line_view(buf, n, dtype, shape)


def _line_view(buf: np.ndarray, n: int, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    """The first n bytes of ``buf`` (n + LINE long) from its first cache-line boundary on, as
    an array of ``shape`` (n bytes of ``dtype``) whose base is ``buf``."""
    return np.ndarray(shape, dtype, buf, _line_offset(buf, LINE))


def kept_nbytes() -> int:
    """Bytes of the buffers the calling thread keeps (lent or free)."""
    return sum(b.nbytes for b in _buffers())


def release() -> None:
    """Drop the calling thread's buffers (arrays lent from them stay valid)."""
    bufs = _buffers()
    with _lock:
        bufs.clear()


def empty_cache() -> int:
    """Give back the memory fastrnn keeps between calls for its kernels' large arrays.

    Each thread that runs the kernels keeps the buffers its calls' arrays of 1 MiB or more came
    from (saved activations, gate gradients, outputs; up to 1 GiB per thread), so that the next
    call reuses their pages instead of faulting fresh ones in. After training, or before a
    phase that needs the memory elsewhere, this drops every thread's free buffers (the calling
    thread's and, for instance, the bidirectional layers' worker's). The next call allocates
    again. As PyTorch's ``torch.cuda.empty_cache``, it changes no result.

    Returns
    -------
    int
        Bytes still kept: buffers that arrays, views or slices alive somewhere (a cache
        awaiting its backward, an output the caller holds) still refer to. They are the memory
        of those arrays anyway and are dropped by a later call once free.
    """
    kept = 0
    with _lock:
        for bufs in list(_lists):
            for i in range(len(bufs) - 1, -1, -1):
                if _free(bufs, i):
                    del bufs[i]
            kept += sum(b.nbytes for b in bufs)
    return kept
