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
serves from its free lists anyway), ``empty`` is ``np.empty``.
``release()`` drops the calling thread's buffers.
"""

from __future__ import annotations

import math
import sys
import threading

import numpy as np

__all__ = ["KEEP", "MIN", "empty", "kept_nbytes", "release"]

MIN = 1 << 20
KEEP = 1 << 28
_local = threading.local()


def _buffers() -> list[np.ndarray]:
    bufs = getattr(_local, "bufs", None)
    if bufs is None:
        bufs = _local.bufs = []
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
    if n < MIN:
        return np.empty(shape, dtype)
    bufs = _buffers()
    best = -1
    for i in range(len(bufs)):
        # 2 references: the list's and getrefcount's argument; a live view adds one
        if sys.getrefcount(bufs[i]) == 2 and n <= bufs[i].nbytes <= 2 * n:
            if best < 0 or bufs[i].nbytes < bufs[best].nbytes:
                best = i
    if best >= 0:
        buf = bufs[best]
    else:
        # make room: drop free buffers (of other sizes) while the new one would not fit
        for i in range(len(bufs) - 1, -1, -1):
            if kept_nbytes() + n <= KEEP:
                break
            if sys.getrefcount(bufs[i]) == 2:
                del bufs[i]
        buf = np.empty(n, np.uint8)
        if kept_nbytes() + n <= KEEP:
            bufs.append(buf)
    return buf[:n].view(dtype).reshape(shape)


def kept_nbytes() -> int:
    """Bytes of the buffers the calling thread keeps (lent or free)."""
    return sum(b.nbytes for b in _buffers())


def release() -> None:
    """Drop the calling thread's buffers (arrays lent from them stay valid)."""
    _local.bufs = []
