"""One seed for a whole program: :func:`manual_seed` and the generators of the modules.

Every module that draws random numbers (the initialisation of :class:`~fastrnn.Linear`,
:class:`~fastrnn.Embedding` and the recurrent layers, the dropout masks of :class:`~fastrnn.Dropout`
and of the recurrent layers) takes ``seed=``. When it is None, the module asks this module for a
generator: after ``manual_seed(s)`` the k-th such module gets the k-th child of
``numpy.random.SeedSequence(s)`` (:meth:`~numpy.random.SeedSequence.spawn`), so the same script
builds the same bits run after run; before any ``manual_seed`` it gets fresh OS entropy, as
``np.random.default_rng()`` does. An explicit ``seed=`` wins and takes no child, so giving one
module a seed does not change the others.
"""

from __future__ import annotations

import numbers
import threading
from typing import Any

import numpy as np

__all__ = ["get_rng_state", "initial_seed", "manual_seed", "set_rng_state"]

_lock = threading.Lock()
_seed_seq: np.random.SeedSequence | None = None


def _check_seed(seed: Any, name: str = "seed") -> int:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise TypeError(f"{name} must be an int >= 0, got {seed!r}")
    return int(seed)


def manual_seed(seed: int) -> None:
    """Seed every module built after this call that is given no ``seed=`` of its own.

    The k-th module built after ``manual_seed(seed)`` (in program order, counting only modules
    that draw random numbers and have ``seed=None``) gets a generator from the k-th child of
    ``numpy.random.SeedSequence(seed)``: its initial weights and its dropout masks are then the
    same in every run of the same program, on any machine. Calling it again restarts the
    sequence.

    Parameters
    ----------
    seed : int
        A non-negative integer (any size).

    Raises
    ------
    TypeError
        If ``seed`` is not an int >= 0.

    Examples
    --------
    >>> import fastrnn
    >>> fastrnn.manual_seed(0)
    >>> a = fastrnn.Linear(3, 2).weight.data
    >>> fastrnn.manual_seed(0)
    >>> bool((fastrnn.Linear(3, 2).weight.data == a).all())
    True
    """
    global _seed_seq
    s = np.random.SeedSequence(_check_seed(seed))
    with _lock:
        _seed_seq = s


def initial_seed() -> int | None:
    """Return the seed of the last :func:`manual_seed` call, or None if there was none."""
    with _lock:
        return None if _seed_seq is None else int(_seed_seq.entropy)


def get_rng_state() -> dict[str, int] | None:
    """Return where the :func:`manual_seed` sequence stands (None when not seeded).

    Returns
    -------
    dict or None
        ``{"seed": int, "n_children_spawned": int}``: the seed and how many modules have drawn
        from it. :func:`set_rng_state` restores it; checkpoints save it.
    """
    with _lock:
        if _seed_seq is None:
            return None
        return {"seed": int(_seed_seq.entropy), "n_children_spawned": _seed_seq.n_children_spawned}


def set_rng_state(state: dict[str, int] | None) -> None:
    """Restore a state returned by :func:`get_rng_state` (None: back to unseeded).

    Raises
    ------
    TypeError
        If ``state`` is not None or a dict of two ints >= 0 named as :func:`get_rng_state`'s.
    """
    global _seed_seq
    if state is None:
        s = None
    else:
        if not isinstance(state, dict) or set(state) != {"seed", "n_children_spawned"}:
            raise TypeError(
                "state must be None or a dict with the keys 'seed' and 'n_children_spawned' "
                f"(what get_rng_state() returns), got {state!r}"
            )
        s = np.random.SeedSequence(
            _check_seed(state["seed"], "state['seed']"),
            n_children_spawned=_check_seed(
                state["n_children_spawned"], "state['n_children_spawned']"
            ),
        )
    with _lock:
        _seed_seq = s


def module_generator(seed: Any) -> np.random.Generator:
    """The generator of a module built with ``seed`` (None: the next child, see above).

    Raises
    ------
    TypeError
        If ``seed`` is not None, an int >= 0 or a ``numpy.random.Generator``.
    """
    if seed is None:
        with _lock:
            child = None if _seed_seq is None else _seed_seq.spawn(1)[0]
        return np.random.default_rng(child)
    if isinstance(seed, bool):
        raise TypeError(f"seed must be None, an int >= 0 or a numpy.random.Generator, got {seed!r}")
    try:
        return np.random.default_rng(seed)
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"seed must be None, an int >= 0 or a numpy.random.Generator, got {seed!r}"
        ) from exc
