"""How many threads the kernels' elementwise passes use."""

from __future__ import annotations

import os

__all__ = ["get_num_threads", "set_num_threads"]


def _default_threads() -> int:
    env = os.environ.get("OMP_NUM_THREADS", "")
    first = env.split(",")[0].strip()
    if first.isdigit() and int(first) > 0:
        return int(first)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


_num_threads = _default_threads()


def get_num_threads() -> int:
    """Return the number of threads the kernels use (default: ``OMP_NUM_THREADS`` or all CPUs)."""
    return _num_threads


def set_num_threads(n: int | None) -> None:
    """Set the number of threads the kernels use.

    Parameters
    ----------
    n : int or None
        A positive count, or None for the default (``OMP_NUM_THREADS``, else every CPU this
        process may run on).
    """
    global _num_threads
    if n is None:
        _num_threads = _default_threads()
        return
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int or None, got {n!r}")
    _num_threads = n
