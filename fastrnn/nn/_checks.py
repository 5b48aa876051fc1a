"""Argument checks shared by the building blocks and losses (policy lives in Python)."""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from fastrnn._common import as_array, check_exact_integers

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def check_float_dtype(dtype: Any, name: str = "dtype") -> np.dtype:
    """Return ``np.dtype(dtype)`` if it is float32 or float64, else raise TypeError."""
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise TypeError(f"{name} must be float32 or float64, got {dtype!r}") from exc
    if dt not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got {dt}")
    return dt


def check_positive_int(value: Any, name: str) -> int:
    """Return ``value`` as an int if it is an integer >= 1, else raise TypeError/ValueError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def as_real_array(x: Any, name: str, dtype: np.dtype) -> np.ndarray:
    """Convert a real numeric array-like to ``dtype``; refuse bool, complex and non-numeric input.

    Values are converted (as the layers do), never reinterpreted: an integer or float array of
    another precision is cast with ``astype``; integers only when ``dtype`` holds them exactly
    (else ValueError). Masked arrays (whose mask would be dropped) raise TypeError, ragged
    nested sequences ValueError, naming ``name`` (the rules of :mod:`fastrnn.functional`).
    """
    arr = as_array(name, x)
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
    check_exact_integers(name, arr, dtype)
    return arr if arr.dtype == dtype else arr.astype(dtype)


def as_float_array(x: Any, name: str) -> np.ndarray:
    """Return ``x`` as a float32 or float64 array; refuse every other dtype with TypeError."""
    arr = np.asarray(x)
    if arr.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a float32 or float64 array, got dtype {arr.dtype}")
    return arr


def as_index_array(x: Any, name: str) -> np.ndarray:
    """Return ``x`` as an integer array; refuse floats and bools (indices are never rounded)."""
    arr = np.asarray(x)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must be an integer array, got dtype {arr.dtype}")
    return arr


def check_reduction(reduction: Any) -> str:
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    return reduction
