"""Checkpoints: everything a training run needs to resume bit for bit, in one ``.npz`` file.

A checkpoint holds a model's parameters, the state of every random generator of its modules
(their ``generator`` attributes: the dropout masks of :class:`~fastrnn.nn.Dropout` and of the
recurrent layers) and of :func:`fastrnn.manual_seed`'s sequence, an optimizer's state, a
learning-rate scheduler's state and extra values.

Layout of the archive (readable with ``np.load(path, allow_pickle=False)``):

* ``__fastrnn_checkpoint__``: a JSON string with the format marker and version, the parameter
  names, the optimizer's class, the structure of the optimizer's and the scheduler's state, the
  generator states and the extra values (numbers, strings, lists, dicts; arrays appear as
  references to entries of the archive);
* ``model/<name>``: one array per parameter;
* ``optimizer/...``, ``scheduler/...``, ``rng/...`` and ``extra/...``: the arrays of those
  states and of the extras.

Files are written atomically: to a temporary file in the same directory, flushed and fsync-ed,
then renamed over the target with :func:`os.replace`, so a crash leaves either the old file or
the new one. Loading never unpickles and checks everything before changing the model or the
optimizer.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Mapping
from typing import Any

import numpy as np

from fastrnn._random import get_rng_state, set_rng_state
from fastrnn.nn.module import Module
from fastrnn.optim.lr_scheduler import LRScheduler
from fastrnn.optim.optimizer import Optimizer

__all__ = ["load_checkpoint", "read_extra", "save_checkpoint"]

FORMAT = "fastrnn-checkpoint"
#: Version 2 added the scheduler and the generator states; version 1 files still load.
VERSION = 2
_META_KEY = "__fastrnn_checkpoint__"

PathLike = str | os.PathLike


# -- encoding of nested values ------------------------------------------------------------------
def _store(arr: np.ndarray, key: str, arrays: dict[str, np.ndarray]) -> str:
    if arr.dtype.kind not in "biufcSU":
        raise TypeError(f"{key}: an array of dtype {arr.dtype} cannot be stored without pickle")
    name, n = key, 1
    while name in arrays:
        name, n = f"{key}~{n}", n + 1
    arrays[name] = arr
    return name


def _encode(obj: Any, key: str, arrays: dict[str, np.ndarray]) -> Any:
    """A JSON-able description of ``obj``, its arrays moved into ``arrays``."""
    if isinstance(obj, np.ndarray):
        return {"__array__": _store(obj, key, arrays)}
    if isinstance(obj, np.generic):  # NumPy scalar: keep its dtype
        return {"__array__": _store(np.asarray(obj), key, arrays), "scalar": True}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, f"{key}/{i}", arrays) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, f"{key}/{i}", arrays) for i, v in enumerate(obj)]
    if isinstance(obj, Mapping):
        items = []
        for k, v in obj.items():
            if isinstance(k, bool) or not isinstance(k, (str, int)):
                raise TypeError(f"{key}: dict keys must be str or int, got {k!r}")
            items.append([k, _encode(v, f"{key}/{k}", arrays)])
        return {"__dict__": items}
    raise TypeError(
        f"{key}: cannot store a {type(obj).__name__} in a checkpoint (only arrays, numbers, "
        "strings, None, and lists, tuples and dicts of them)"
    )


def _decode(obj: Any, arrays: Mapping[str, np.ndarray]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, arrays) for v in obj]
    if isinstance(obj, dict):
        if "__array__" in obj:
            arr = arrays[obj["__array__"]]
            return arr[()] if obj.get("scalar") else arr
        if "__tuple__" in obj:
            return tuple(_decode(v, arrays) for v in obj["__tuple__"])
        if "__dict__" in obj:
            return {k: _decode(v, arrays) for k, v in obj["__dict__"]}
        raise ValueError(f"unknown entry {sorted(obj)}")
    return obj


# -- writing ------------------------------------------------------------------------------------
def _fsync_directory(directory: str) -> None:
    """Make the rename durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_savez(path: str, arrays: dict[str, np.ndarray]) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(
        directory, f".{os.path.basename(path)}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    )
    # O_EXCL: never follow or reuse an existing name; mode 0o666 lets the umask apply as usual.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, allow_pickle=False, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_directory(directory)


def _generators(model: Module) -> dict[str, np.random.Generator]:
    """The ``generator`` of every module of ``model`` that has one, by module name."""
    return {
        name: m.generator
        for name, m in model.named_modules()
        if isinstance(getattr(m, "generator", None), np.random.Generator)
    }


def _buffers(model: Module) -> dict[str, tuple[Module, str, np.ndarray]]:
    """The non-parameter arrays of the model's quantized modules (``_buffers``: int8 weights
    and their scales, see :mod:`fastrnn.quantization`) by dotted name."""
    out = {}
    for prefix, m in model.named_modules():
        for k, arr in (getattr(m, "_buffers", None) or {}).items():
            out[f"{prefix}.{k}" if prefix else k] = (m, k, arr)
    return out


def _check_scheduler(scheduler: Any) -> LRScheduler | None:
    if scheduler is not None and not isinstance(scheduler, LRScheduler):
        raise TypeError(
            "scheduler must be a fastrnn.optim.lr_scheduler.LRScheduler (or None), got "
            f"{type(scheduler).__name__}; to store another value, give it another name"
        )
    return scheduler


def save_checkpoint(
    path: PathLike,
    model: Module,
    optimizer: Optimizer | None = None,
    *,
    scheduler: LRScheduler | None = None,
    **extra: Any,
) -> None:
    """Save everything a run needs to resume bit for bit to one file.

    Saved: ``model``'s parameters; the state of every module's ``generator`` (the dropout
    masks of :class:`~fastrnn.nn.Dropout` and of the recurrent layers) and of
    :func:`fastrnn.manual_seed`'s sequence; ``optimizer``'s state (step counts, moments,
    hyper-parameters); ``scheduler``'s state; the ``extra`` values. Not saved: the model's
    structure (build the same model before loading) and random generators of your own, such
    as a data shuffler's (pass ``rng=gen.bit_generator.state`` as an extra).

    Parameters
    ----------
    path : str or os.PathLike
        Target file, written as given (no ``.npz`` suffix is added). An existing file is
        replaced atomically: a crash mid-write leaves it intact.
    model : Module
        Its :meth:`~fastrnn.nn.Module.named_parameters` are saved.
    optimizer : Optimizer, optional
        Its :meth:`~fastrnn.optim.Optimizer.state_dict` is saved, so that training resumes
        bit-identically.
    scheduler : LRScheduler, optional
        Its ``state_dict()`` is saved (epoch counter, base rates, plateau statistics).
    **extra
        Values returned by :func:`load_checkpoint`: arrays, NumPy scalars, Python numbers,
        strings, None, and lists, tuples and dicts (str or int keys) of these; for example
        ``epoch=3``, ``step=1200`` or ``rng=data_rng.bit_generator.state``. Types round-trip
        exactly.

    Raises
    ------
    TypeError
        If ``model``, ``optimizer`` or ``scheduler`` has the wrong type, or an extra value
        cannot be stored without pickle (nothing is written then).
    """
    if not isinstance(model, Module):
        raise TypeError(f"model must be a fastrnn Module, got {type(model).__name__}")
    if optimizer is not None and not isinstance(optimizer, Optimizer):
        raise TypeError(f"optimizer must be a fastrnn Optimizer, got {type(optimizer).__name__}")
    _check_scheduler(scheduler)
    path = os.fspath(path)
    arrays: dict[str, np.ndarray] = {}
    names = []
    for name, p in model.named_parameters():
        arrays[f"model/{name}"] = p.data
        names.append(name)
    buffers = _buffers(model)
    for name, (_, _, arr) in buffers.items():
        arrays[f"buffers/{name}"] = arr
    meta: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "model": {
            "class": type(model).__name__,
            "parameters": names,
            **({"buffers": list(buffers)} if buffers else {}),
        },
        "optimizer": None,
        "scheduler": None,
        "rng": {
            "modules": _encode(
                {k: g.bit_generator.state for k, g in _generators(model).items()}, "rng", arrays
            ),
            "manual_seed": get_rng_state(),
        },
        "extra": _encode(extra, "extra", arrays),
    }
    if scheduler is not None:
        meta["scheduler"] = {
            "class": type(scheduler).__name__,
            "state": _encode(scheduler.state_dict(), "scheduler", arrays),
        }
    if optimizer is not None:
        meta["optimizer"] = {
            "class": type(optimizer).__name__,
            "state": _encode(optimizer.state_dict(), "optimizer", arrays),
        }
    arrays[_META_KEY] = np.array(json.dumps(meta))
    _atomic_savez(path, arrays)


# -- reading ------------------------------------------------------------------------------------
def _read(path: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The metadata and arrays of a checkpoint; ValueError for anything else."""
    try:
        npz = np.load(path, allow_pickle=False)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except Exception as exc:  # zipfile, npy-header and EOF errors of a damaged or foreign file
        raise ValueError(
            f"{path}: not a fastrnn checkpoint: cannot be read as an .npz archive "
            f"({type(exc).__name__}: {exc})"
        ) from exc
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise ValueError(f"{path}: not a fastrnn checkpoint: it holds a single .npy array")
    with npz:
        if _META_KEY not in npz.files:
            shown = ", ".join(npz.files[:5]) + (", ..." if len(npz.files) > 5 else "")
            raise ValueError(
                f"{path}: not a fastrnn checkpoint: no '{_META_KEY}' entry (entries: {shown})"
            )
        arrays = {}
        for key in npz.files:
            try:
                arrays[key] = npz[key]
            except Exception as exc:
                raise ValueError(
                    f"{path}: corrupt checkpoint: entry '{key}' cannot be read "
                    f"({type(exc).__name__}: {exc})"
                ) from exc
    raw = arrays.pop(_META_KEY)
    try:
        if raw.dtype.kind != "U" or raw.ndim != 0:
            raise ValueError(f"'{_META_KEY}' is not a string")
        meta = json.loads(str(raw[()]))
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise ValueError(f"the marker does not name the format '{FORMAT}'")
    except ValueError as exc:
        raise ValueError(f"{path}: not a fastrnn checkpoint: {exc}") from exc
    version = meta.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ValueError(f"{path}: corrupt checkpoint: bad format version {version!r}")
    if version > VERSION:
        raise ValueError(
            f"{path}: checkpoint format version {version} is newer than this fastrnn reads "
            f"(version {VERSION}); upgrade fastrnn"
        )
    return meta, arrays


def _check_model(path: str, model: Module, saved: dict[str, np.ndarray]) -> None:
    params = dict(model.named_parameters())
    problems = []
    missing = [k for k in params if k not in saved]
    unexpected = [k for k in saved if k not in params]
    if missing:
        problems.append(f"parameters missing from the file: {missing}")
    if unexpected:
        problems.append(f"parameters the model does not have: {unexpected}")
    for k in params.keys() & saved.keys():
        arr = saved[k]
        if arr.shape != params[k].data.shape:
            problems.append(
                f"{k}: shape {arr.shape} in the file, {params[k].data.shape} in the model"
            )
        elif arr.dtype.kind not in "fiu":
            problems.append(f"{k}: dtype {arr.dtype} in the file is not a real number type")
    if problems:
        raise ValueError(
            f"{path}: checkpoint does not match {type(model).__name__}: " + "; ".join(problems)
        )


def _check_generators(
    path: str, model: Module, saved: dict[str, Any]
) -> list[tuple[np.random.Generator, Any]]:
    """Pair each saved generator state with the model's generator, checking every state."""
    gens = _generators(model)
    missing = sorted(k for k in gens if k not in saved)
    unexpected = sorted(k for k in saved if k not in gens)
    problems = []
    if missing:
        problems.append(f"modules with a generator missing from the file: {missing}")
    if unexpected:
        problems.append(f"generators of modules the model does not have: {unexpected}")
    pairs = []
    for k in sorted(gens.keys() & saved.keys()):
        trial = type(gens[k].bit_generator)()  # try the state on a scratch bit generator first
        try:
            trial.state = saved[k]
        except (TypeError, ValueError, KeyError) as exc:
            problems.append(f"generator of module {k!r}: {exc}")
        else:
            pairs.append((gens[k], saved[k]))
    if problems:
        raise ValueError(
            f"{path}: checkpoint does not match {type(model).__name__}: " + "; ".join(problems)
        )
    return pairs


def load_checkpoint(
    path: PathLike,
    model: Module,
    optimizer: Optimizer | None = None,
    *,
    scheduler: LRScheduler | None = None,
) -> dict[str, Any]:
    """Load a file written by :func:`save_checkpoint` into ``model`` (and the others).

    Restores the parameters, every module generator's state, :func:`fastrnn.manual_seed`'s
    sequence (when it was seeded at save time), and the optimizer's and scheduler's states when
    they are given: after it, training continues with exactly the bits of an uninterrupted run.
    Everything is checked before anything is loaded: on error, nothing has changed.

    Parameters
    ----------
    path : str or os.PathLike
    model : Module
        Must have the saved parameter names and shapes (values are cast to its dtypes).
    optimizer : Optimizer, optional
        Must be of the saved class, over the same parameter groups; its state and
        hyper-parameters (learning rates included) are restored.
    scheduler : LRScheduler, optional
        Must be of the saved class, built over ``optimizer``; its state is restored.

    Returns
    -------
    dict
        The ``extra`` values given to :func:`save_checkpoint`.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        Naming the file and the problem, if it is truncated, corrupt, not a fastrnn checkpoint,
        of a newer format version, or does not match ``model`` or ``optimizer``.
    """
    path = os.fspath(path)
    meta, arrays = _read(path)
    try:
        names = list(meta["model"]["parameters"])
        saved = {name: arrays[f"model/{name}"] for name in names}
        saved_buffers = {n: arrays[f"buffers/{n}"] for n in meta["model"].get("buffers", [])}
        extra = _decode(meta["extra"], arrays)
        opt_meta = meta["optimizer"]
        opt_state = None if opt_meta is None else _decode(opt_meta["state"], arrays)
        sched_meta = meta.get("scheduler")  # version 1 files have no scheduler or rng entries
        sched_state = None if sched_meta is None else _decode(sched_meta["state"], arrays)
        rng_meta = meta.get("rng")
        rng_modules = None if rng_meta is None else _decode(rng_meta["modules"], arrays)
        seed_state = None if rng_meta is None else rng_meta["manual_seed"]
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: corrupt checkpoint: malformed metadata ({exc!r})") from exc
    _check_model(path, model, saved)
    buffers = _buffers(model)
    if set(buffers) != set(saved_buffers):
        raise ValueError(
            f"{path}: checkpoint does not match {type(model).__name__}: quantized arrays "
            f"missing from the file: {sorted(set(buffers) - set(saved_buffers))}; not in the "
            f"model: {sorted(set(saved_buffers) - set(buffers))} (load a quantized checkpoint "
            "into the result of fastrnn.quantize_dynamic on a model of the same structure)"
        )
    for name, (_, _, arr) in buffers.items():
        got = saved_buffers[name]
        if got.shape != arr.shape or got.dtype != arr.dtype:
            raise ValueError(
                f"{path}: {name}: {got.dtype} {got.shape} in the file, {arr.dtype} {arr.shape} "
                "in the model"
            )
    _check_scheduler(scheduler)
    if scheduler is not None:
        if sched_meta is None:
            raise ValueError(f"{path}: the checkpoint holds no scheduler state")
        if sched_meta.get("class") != type(scheduler).__name__:
            raise ValueError(
                f"{path}: the checkpoint holds {sched_meta.get('class')} state, not "
                f"{type(scheduler).__name__}"
            )
        expected, got = set(scheduler.state_dict()), set(sched_state)
        if expected != got:
            raise ValueError(
                f"{path}: scheduler state does not match: missing {sorted(expected - got)}, "
                f"unexpected {sorted(got - expected)}"
            )
    generators = [] if rng_modules is None else _check_generators(path, model, rng_modules)
    if optimizer is not None:
        if opt_meta is None:
            raise ValueError(f"{path}: the checkpoint holds no optimizer state")
        if opt_meta.get("class") != type(optimizer).__name__:
            raise ValueError(
                f"{path}: the checkpoint holds {opt_meta.get('class')} state, not "
                f"{type(optimizer).__name__}"
            )
        try:
            optimizer.load_state_dict(opt_state)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: optimizer state does not match: {exc}") from exc
    if scheduler is not None:
        scheduler.load_state_dict(sched_state)
    for gen, state in generators:
        gen.bit_generator.state = state
    if seed_state is not None:
        set_rng_state(seed_state)
    model.load_state_dict(saved)
    by_module: dict[int, tuple[Module, dict[str, np.ndarray]]] = {}
    for name, (m, k, _) in buffers.items():
        by_module.setdefault(id(m), (m, {}))[1][k] = saved_buffers[name]
    for m, values in by_module.values():
        m._set_buffers(values)  # re-packs the quantized weights
    return extra


def read_extra(path: PathLike) -> dict[str, Any]:
    """The ``extra`` values of a checkpoint, without loading it into a model.

    For what must be known before the model is built: the sizes it was saved with, its
    vocabulary. Checks the file as :func:`load_checkpoint` does (``ValueError`` for a file
    that is not a fastrnn checkpoint).

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    dict
        The keyword arguments ``save_checkpoint`` was given as ``**extra``.
    """
    meta, arrays = _read(os.fspath(path))
    extra = _decode(meta.get("extra", {"__dict__": []}), arrays)
    return dict(extra) if isinstance(extra, dict) else {}
