"""Helpers for training on long sequences: truncated backpropagation through time (TBPTT).

A long sequence (a text, a sensor log) is too long for one backward pass: the cache of a forward
grows with its length, and gradients through thousands of steps are not useful anyway. TBPTT cuts
the sequence into consecutive chunks, carries the hidden state from one chunk to the next, and
backpropagates within each chunk only.

In fastrnn states are plain NumPy arrays, so there is nothing to *detach*: each forward starts a
new graph at its initial state, and a backward called without state gradients stops at the chunk's
first step. The pattern is therefore::

    data = batchify(stream, batch_size)          # (N, B): B contiguous pieces of the stream
    inputs, targets = data[:-1], data[1:]        # next-token prediction
    state = None                                 # zeros for the first chunk
    for x, y in zip(tbptt_chunks(inputs, 64), tbptt_chunks(targets, 64), strict=True):
        out, state = lstm(embed(x), state)       # starts where the previous chunk ended
        loss = criterion(head(out), y)
        dout = head.backward(criterion.backward())
        embed.backward(lstm.backward(dout)[0])   # no (dh_n, dc_n): the gradient is cut here
        optimizer.step(); optimizer.zero_grad()

The forward outputs are exactly those of one forward over the whole sequence, and the gradients
of a chunk are those of the whole sequence truncated at the chunk's first step
(``tests/test_utils.py`` checks both). Reset ``state = None`` wherever the data really restart
(a new epoch, a new document).
"""

from __future__ import annotations

import numbers
from collections.abc import Iterator
from typing import Any

import numpy as np

__all__ = ["batchify", "tbptt_chunks"]


def _check_positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def batchify(data: Any, batch_size: int, *, batch_first: bool = False) -> np.ndarray:
    """Cut one long sequence into ``batch_size`` contiguous sequences side by side.

    Column ``b`` of the result is ``data[b * n : (b + 1) * n]`` with ``n = len(data) //
    batch_size``; the last ``len(data) % batch_size`` items are dropped. Stepping through the
    result in time therefore continues every column's own piece of the stream, which is what
    carrying the hidden state from one chunk to the next (TBPTT) needs.

    Parameters
    ----------
    data : array_like of shape (N, ...)
        The sequence, time first: token ids of shape (N,) or features of shape (N, F).
    batch_size : int
        Number of sequences B, >= 1 and <= N.
    batch_first : bool, default=False
        Return (B, n, ...) instead of the time-major (n, B, ...).

    Returns
    -------
    ndarray of shape (n, B, ...) or (B, n, ...), same dtype as ``data``
        A view of ``data`` when ``data`` is an ndarray (not contiguous when time-major; every
        fastrnn function accepts any memory layout).

    Raises
    ------
    ValueError
        If ``data`` is 0-d or shorter than ``batch_size``.

    Examples
    --------
    >>> batchify(np.arange(10), 3)
    array([[0, 3, 6],
           [1, 4, 7],
           [2, 5, 8]])
    """
    batch_size = _check_positive_int(batch_size, "batch_size")
    arr = np.asarray(data)
    if arr.ndim == 0:
        raise ValueError("data must have at least one dimension (time), got a scalar")
    n = arr.shape[0] // batch_size
    if n == 0:
        raise ValueError(
            f"data has {arr.shape[0]} items, fewer than batch_size={batch_size}: every sequence "
            "would be empty"
        )
    by_batch = arr[: n * batch_size].reshape(batch_size, n, *arr.shape[1:])
    return by_batch if batch_first else np.swapaxes(by_batch, 0, 1)


def tbptt_chunks(
    x: Any, chunk_len: int, batch_first: bool = False, *, drop_last: bool = False
) -> Iterator[np.ndarray]:
    """Iterate over consecutive chunks of a batch of sequences along its time axis, as views.

    Feed them in order to a recurrent layer, passing each chunk's final state as the next one's
    initial state, and backpropagate each chunk on its own: that is truncated BPTT (see the module
    docstring for the full pattern).

    Parameters
    ----------
    x : array_like of shape (T, B, ...), or (B, T, ...) with ``batch_first``
        Inputs, targets or any array whose time axis is to be cut (for example token ids of
        shape (T, B) from :func:`batchify`).
    chunk_len : int
        Number of time steps per chunk, >= 1.
    batch_first : bool, default=False
        Whether the time axis is axis 1 instead of axis 0.
    drop_last : bool, default=False
        Skip the last chunk when it is shorter than ``chunk_len`` (all chunks then have the same
        shape). By default it is yielded.

    Returns
    -------
    iterator of ndarray of shape (t, B, ...) or (B, t, ...), 1 <= t <= chunk_len
        ``x[s : s + chunk_len]`` (``x[:, s : s + chunk_len]`` with ``batch_first``) for
        ``s = 0, chunk_len, 2 * chunk_len, ...``; views of ``x`` when it is an ndarray.

    Raises
    ------
    ValueError
        If ``x`` has no time axis (0-d, or 1-d with ``batch_first``).

    Examples
    --------
    >>> [c.shape for c in tbptt_chunks(np.zeros((10, 4, 3)), 4)]
    [(4, 4, 3), (4, 4, 3), (2, 4, 3)]
    """
    chunk_len = _check_positive_int(chunk_len, "chunk_len")
    arr = np.asarray(x)
    axis = 1 if batch_first else 0
    if arr.ndim <= axis:
        layout = "(B, T, ...)" if batch_first else "(T, ...)"
        raise ValueError(f"x must have shape {layout}, got {arr.shape}")
    # Checked above, not in the generator, so that bad arguments fail at the call.
    return _chunks(arr, chunk_len, axis, drop_last)


def _chunks(arr: np.ndarray, chunk_len: int, axis: int, drop_last: bool) -> Iterator[np.ndarray]:
    T = arr.shape[axis]
    stop = T - T % chunk_len if drop_last else T
    for s in range(0, stop, chunk_len):
        yield arr[:, s : s + chunk_len] if axis == 1 else arr[s : s + chunk_len]
