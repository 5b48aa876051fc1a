"""Which compiled kernels run: the instruction set of the per-step GEMMs and of the gate loops.

Two things depend on the CPU's vector instructions:

* the per-step recurrent GEMMs: each thread packs its columns of ``W_hh`` once per call and
  multiplies them at every step with register-blocked micro-kernels compiled for AVX-512 and for
  AVX2+FMA (``src_pyx/_rgemm.h``); ``"blas"`` calls scipy's BLAS at every step instead;
* everything else in the kernels (gate activations, copies): setup.py compiles each cell's
  kernels a second and a third time for the x86-64-v4 (AVX-512) and x86-64-v3 (AVX2) levels, as
  modules ``fastrnn._kernels.<cell>_avx512`` / ``<cell>_avx2``, beside the portable
  ``fastrnn._kernels.<cell>``.

At import the best instruction set the CPU runs is picked for both. The environment variable
``FASTRNN_ISA`` (``auto``, ``avx512``, ``avx2`` or ``blas``) chooses another at import, for
debugging or for measuring one path against another; :func:`set_isa` does the same at run time.
``"blas"`` runs the portable modules with BLAS at every step: the path of CPUs without AVX2.
Every choice gives the same results within rounding (float32 ~1e-6 relative).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import types
import warnings

from fastrnn.cells import CELLS


def _missing_kernels_error(missing: list[str]) -> ImportError:
    """What to run when a source checkout's extensions are not built (or were built for another
    Python): otherwise the error would be "cannot import name 'gru' from 'fastrnn._kernels'"."""
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_kernels")
    root = os.path.dirname(os.path.dirname(here))
    checkout = os.path.isfile(os.path.join(root, "setup.py"))
    fix = (
        f"This is a source checkout: build them in place with `cd {root} && python setup.py "
        "build_ext --inplace` (again after editing a .pyx), or install fastrnn with "
        "`pip install .` and import it from outside the checkout."
        if checkout
        else "Reinstall fastrnn (`pip install --force-reinstall fastrnn`)."
    )
    return ImportError(
        f"fastrnn's compiled kernels ({', '.join(missing)}) are not built in {here} for this "
        f"Python ({sys.implementation.cache_tag}). {fix}",
        name="fastrnn._kernels",
    )


_KERNEL_NAMES = list(dict.fromkeys(c.kernel for c in CELLS.values()))
# and the other extensions that `import fastrnn` loads (a tree built before one was added has
# the cells' but not it)
_SUPPORT_NAMES = ["attention", "_memory", "_rows", "_stream"]
_missing = [
    k
    for k in _KERNEL_NAMES + _SUPPORT_NAMES
    if importlib.util.find_spec(f"fastrnn._kernels.{k}") is None
]
if _missing:
    raise _missing_kernels_error(_missing)
_PORTABLE = {k: importlib.import_module(f"fastrnn._kernels.{k}") for k in _KERNEL_NAMES}

__all__ = ["KERNELS", "available_isas", "get_isa", "set_isa"]

_CODES = {"blas": 0, "avx2": 1, "avx512": 2}
_NAMES = {code: name for name, code in _CODES.items()}
#: The best instruction set of the GEMM micro-kernels this CPU runs (0 when none).
_ANY = next(iter(_PORTABLE.values()))
_BEST = _ANY._best_isa()
#: The x86-64 level of this CPU, which the compiled variants need (AVX-512: 4, AVX2: 3).
_LEVELS = {"avx512": 4, "avx2": 3}
_LEVEL = _ANY._cpu_level()


_variants: dict[str, dict[str, types.ModuleType] | None] = {}


def _variant(isa: str) -> dict[str, types.ModuleType] | None:
    """The cells' modules compiled for ``isa``, imported on first use; None when this build has
    none or the CPU cannot run them (a module compiled for x86-64-v4 may use any of its
    instructions anywhere, so it is never imported on a lesser CPU)."""
    if isa not in _variants:
        modules = None
        if _LEVELS.get(isa, 99) <= _LEVEL:
            try:
                modules = {
                    kernel: importlib.import_module(f"fastrnn._kernels.{kernel}_{isa}")
                    for kernel in _PORTABLE
                }
            except ImportError:
                pass
        _variants[isa] = modules
    return _variants[isa]


#: The modules in use, one attribute per cell (``KERNELS.lstm.forward(...)``); set_isa swaps them.
KERNELS = types.SimpleNamespace(**_PORTABLE)
_current = 0


def available_isas() -> list[str]:
    """The instruction sets this CPU runs, from ``"blas"`` (always) to the best."""
    return [_NAMES[code] for code in range(_BEST + 1)]


def get_isa() -> str:
    """The instruction set in use: ``"avx512"``, ``"avx2"`` or ``"blas"``."""
    return _NAMES[_current]


def compiled_variants() -> list[str]:
    """The instruction sets whose gate loops this build compiled and this CPU runs."""
    return [isa for isa in _LEVELS if _variant(isa) is not None]


def set_isa(isa: str) -> None:
    """Run the kernels compiled for ``isa``.

    Parameters
    ----------
    isa : {"auto", "avx512", "avx2", "blas"}
        ``"auto"`` picks the best the CPU runs. Without a compiled variant for ``isa`` (a build
        with ``FASTRNN_VARIANTS=none``), the portable modules run with ``isa``'s GEMM
        micro-kernels.

    Raises
    ------
    ValueError
        If ``isa`` is not one of the names above, or the CPU does not run it.
    """
    global _current
    if not isinstance(isa, str) or (isa != "auto" and isa not in _CODES):
        raise ValueError(f"isa must be one of 'auto', 'avx512', 'avx2', 'blas'; got {isa!r}")
    code = _BEST if isa == "auto" else _CODES[isa]
    if code > _BEST:
        raise ValueError(
            f"isa={isa!r} is not supported by this CPU (available: {available_isas()})"
        )
    modules = _variant(_NAMES[code]) or _PORTABLE
    for cell, module in modules.items():
        module._set_isa(code)
        setattr(KERNELS, cell, module)
    _current = code


def _from_environment() -> None:
    value = os.environ.get("FASTRNN_ISA", "auto").strip().lower() or "auto"
    try:
        set_isa(value)
    except ValueError as err:
        warnings.warn(f"FASTRNN_ISA ignored: {err}", RuntimeWarning, stacklevel=2)
        set_isa("auto")


_from_environment()
