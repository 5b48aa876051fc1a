"""How many threads the kernels use, and the BLAS they call.

The kernels run each time loop in one OpenMP parallel region of :func:`get_num_threads` threads
(fewer for shapes too small to split), each thread on its own slice of hidden units, and run
every GEMM on their own micro-kernels (AVX2 / AVX-512, ``src_pyx/_rgemm.h``) inside that region.
So the number of threads fastrnn keeps busy is exactly :func:`get_num_threads`.

BLAS is the fallback: on a CPU without AVX2 (or ``FASTRNN_ISA=blas``), or when a packed copy of
the weights cannot be allocated, each thread calls SciPy's BLAS on its share instead. SciPy's
bundled OpenBLAS (which ``scipy.linalg.cython_blas`` calls) has one process-wide thread count:
:func:`blas_single_thread` sets it to 1 while a kernel runs under the ``"blas"`` instruction set
(``fastrnn.functional`` skips the switch, about 1 us, where the micro-kernels run and call no
BLAS), so that no BLAS threads pile up on the OpenMP ones, and restores it afterwards
(reference-counted, so concurrent kernel calls from several Python threads are safe), and
:func:`blas_threads` sets it to any count for code that times the BLAS itself (the benchmark's
GEMM peak). The library is found through ctypes; with a BLAS that is not OpenBLAS these are
no-ops and :func:`blas_info` says so.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
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


class _Local(threading.local):
    """A per-Python-thread cap on the count above (None: no cap), set by _thread_limit: the two
    directions of a bidirectional layer run at once on two Python threads, each with its share.
    The class default makes reading an unset cap a plain attribute lookup (``getattr`` with a
    default on a bare ``threading.local`` raises and catches an AttributeError: 0.3 us of
    every call of get_num_threads, which a B = 1 step makes twice)."""

    cap: int | None = None


_local = _Local()


def get_num_threads() -> int:
    """Return the number of threads the kernels use (default: ``OMP_NUM_THREADS`` or all CPUs).

    While fastrnn runs the two directions of a bidirectional layer at once, a kernel call of
    either direction sees its share of the count (see ``fastrnn.stack``); everywhere else this
    is the value given to :func:`set_num_threads`.
    """
    cap = _local.cap
    return _num_threads if cap is None else min(_num_threads, cap)


@contextlib.contextmanager
def _thread_limit(n: int) -> Iterator[None]:
    """Cap :func:`get_num_threads` at ``n`` for the kernel calls of this Python thread only.

    Nested caps take the smaller; the previous cap is restored on exit, exception or not.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    before = _local.cap
    _local.cap = n if before is None else min(before, n)
    try:
        yield
    finally:
        _local.cap = before


def _in_thread_limit() -> bool:
    """Whether this Python thread runs under a :func:`_thread_limit`."""
    return _local.cap is not None


def set_num_threads(n: int | None) -> None:
    """Set the number of threads the kernels use, BLAS included.

    Each kernel call runs at most ``n`` threads: its OpenMP team, each thread running its
    share of every GEMM on the kernels' micro-kernels (or on single-threaded BLAS where those
    cannot run, so there is no oversubscription by BLAS threads). Small shapes use fewer
    threads than ``n`` when splitting them costs more than it saves.

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
# OpenBLAS names, plain and as the scipy-openblas wheels prefix them (with "64_" for the ILP64
# build that numpy bundles).
_PREFIXES = ("scipy_openblas", "openblas")
_SUFFIXES = ("", "64_")


class _Blas:
    """ctypes handles on the thread-count functions of the BLAS an extension module links."""

    def __init__(self, module: str) -> None:
        self.set = self.get = None
        self.config = "unknown BLAS (thread count not controlled)"
        try:
            mod = importlib.import_module(module)
            # dlsym on the extension's own handle searches the libraries it depends on: this
            # finds the BLAS it is linked to, whatever its file name.
            lib = ctypes.CDLL(mod.__file__)
        except (ImportError, OSError, TypeError):  # pragma: no cover - scipy is a dependency
            return
        for prefix in _PREFIXES:
            for suffix in _SUFFIXES:
                try:
                    setter = getattr(lib, f"{prefix}_set_num_threads{suffix}")
                    getter = getattr(lib, f"{prefix}_get_num_threads{suffix}")
                except AttributeError:
                    continue
                setter.argtypes, setter.restype = [ctypes.c_int], None
                getter.argtypes, getter.restype = [], ctypes.c_int
                self.set, self.get = setter, getter
                try:
                    cfg = getattr(lib, f"{prefix}_get_config{suffix}")
                    cfg.restype = ctypes.c_char_p
                    self.config = cfg().decode(errors="replace")
                except AttributeError:
                    self.config = prefix
                return


# The BLAS the kernels call (scipy.linalg.cython_blas).
_blas = _Blas("scipy.linalg.cython_blas")
_lock = threading.Lock()
_depth = 0
_saved = 1


def blas_info(library: str = "scipy") -> dict:
    """The BLAS behind the kernels (or numpy's) and its thread count (None if not controlled)."""
    blas = _blas if library == "scipy" else _numpy_blas()
    return {
        "config": blas.config,
        "controlled": blas.set is not None,
        "num_threads": None if blas.get is None else int(blas.get()),
    }


class _BlasSingleThread:
    """The context manager behind :func:`blas_single_thread`: a class rather than a generator
    because it wraps every kernel call, where @contextmanager's generator costs microseconds
    (a T=1 B=1 call's whole kernel time is about 5 us)."""

    __slots__ = ()

    def __enter__(self) -> None:
        global _depth, _saved
        if _blas.set is None:
            return
        with _lock:
            if _depth == 0:
                _saved = _blas.get()
                if _saved != 1:
                    _blas.set(1)
            _depth += 1

    def __exit__(self, *exc: object) -> None:
        global _depth
        if _blas.set is None:
            return
        with _lock:
            _depth -= 1
            if _depth == 0 and _saved != 1:
                _blas.set(_saved)


_BLAS_SINGLE_THREAD = _BlasSingleThread()


def blas_single_thread() -> contextlib.AbstractContextManager[None]:
    """Run the body with scipy's BLAS on one thread (the kernels' own threads split the work).

    Reference-counted: nested and concurrent uses (several Python threads) restore the count
    the outermost one found when the last one leaves."""
    return _BLAS_SINGLE_THREAD


@contextlib.contextmanager
def blas_threads(n: int, library: str = "scipy") -> Iterator[None]:
    """Run the body with scipy's (or numpy's, ``library="numpy"``) BLAS on ``n`` threads.

    For code that times the BLAS itself or NumPy code at a given thread count (the benchmark's
    GEMM peak and NumPy reference)."""
    blas = _blas if library == "scipy" else _numpy_blas()
    if blas.set is None:
        yield
        return
    with _lock:
        before = blas.get()
        blas.set(n)
    try:
        yield
    finally:
        with _lock:
            blas.set(before)


_numpy_blas_cache: list[_Blas] = []


def _numpy_blas() -> _Blas:
    if not _numpy_blas_cache:
        _numpy_blas_cache.append(_Blas("numpy._core._multiarray_umath"))
    return _numpy_blas_cache[0]
