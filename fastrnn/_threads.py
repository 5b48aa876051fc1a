"""How many threads the kernels use, and the BLAS they call.

The kernels run each time loop in one OpenMP parallel region of :func:`get_num_threads` threads
(fewer for shapes too small to split) and call single-threaded BLAS inside it, each thread on
its own slice of hidden units. So the number of threads fastrnn keeps busy is exactly
:func:`get_num_threads`: no BLAS threads on top of the OpenMP ones.

SciPy's bundled OpenBLAS (which ``scipy.linalg.cython_blas`` calls) has one process-wide thread
count. :func:`blas_single_thread` sets it to 1 while a kernel runs and restores it afterwards
(reference-counted, so concurrent kernel calls from several Python threads are safe), and
:func:`blas_threads` sets it to any count for code that times the BLAS itself (the benchmark's
GEMM peak). The library is found through ctypes; with a BLAS that is not OpenBLAS these are
no-ops and :func:`blas_info` says so.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading
from collections.abc import Iterator

__all__ = [
    "blas_info",
    "blas_single_thread",
    "blas_threads",
    "get_num_threads",
    "set_num_threads",
]


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
    """Set the number of threads the kernels use, BLAS included.

    Each kernel call runs at most ``n`` threads: its OpenMP team, each thread calling
    single-threaded BLAS on its share of the work (so there is no oversubscription by BLAS
    threads). Small shapes use fewer threads than ``n`` when splitting them costs more than it
    saves.

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


# --- the thread count of scipy's BLAS ------------------------------------------------------------
_SETTERS = ("scipy_openblas_set_num_threads", "openblas_set_num_threads")
_GETTERS = ("scipy_openblas_get_num_threads", "openblas_get_num_threads")
_CONFIG = ("scipy_openblas_get_config", "openblas_get_config")


class _Blas:
    """ctypes handles on the set/get-threads functions of the BLAS scipy's cython_blas calls."""

    def __init__(self) -> None:
        self.set = self.get = None
        self.config = "unknown BLAS (thread count not controlled)"
        try:
            import scipy.linalg.cython_blas as cb

            # dlsym on the extension's own handle searches the libraries it depends on: this
            # finds the BLAS it is linked to, whatever its file name.
            lib = ctypes.CDLL(cb.__file__)
        except (ImportError, OSError):  # pragma: no cover - scipy is a dependency
            return
        for s_name, g_name, c_name in zip(_SETTERS, _GETTERS, _CONFIG, strict=True):
            try:
                setter, getter = getattr(lib, s_name), getattr(lib, g_name)
            except AttributeError:
                continue
            setter.argtypes, setter.restype = [ctypes.c_int], None
            getter.argtypes, getter.restype = [], ctypes.c_int
            self.set, self.get = setter, getter
            try:
                cfg = getattr(lib, c_name)
                cfg.restype = ctypes.c_char_p
                self.config = cfg().decode(errors="replace")
            except AttributeError:
                self.config = s_name.replace("_set_num_threads", "")
            return


_blas = _Blas()
_lock = threading.Lock()
_depth = 0
_saved = 1


def blas_info() -> dict:
    """The BLAS behind the kernels and its current thread count (None when not controllable)."""
    return {
        "config": _blas.config,
        "controlled": _blas.set is not None,
        "num_threads": None if _blas.get is None else int(_blas.get()),
    }


@contextlib.contextmanager
def blas_single_thread() -> Iterator[None]:
    """Run the body with scipy's BLAS on one thread (the kernels' own threads split the work)."""
    global _depth, _saved
    if _blas.set is None:
        yield
        return
    with _lock:
        if _depth == 0:
            _saved = _blas.get()
            if _saved != 1:
                _blas.set(1)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _saved != 1:
                _blas.set(_saved)


@contextlib.contextmanager
def blas_threads(n: int) -> Iterator[None]:
    """Run the body with scipy's BLAS on ``n`` threads (to time the BLAS itself)."""
    if _blas.set is None:
        yield
        return
    with _lock:
        before = _blas.get()
        _blas.set(n)
    try:
        yield
    finally:
        with _lock:
            _blas.set(before)
