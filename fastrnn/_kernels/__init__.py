"""Compiled Cython kernels (built from ``src_pyx/``): one extension module per cell."""

import importlib.util
import os
import sys

# A source checkout whose extensions are not built (or were built for another Python) would
# otherwise fail later with "cannot import name 'gru' from 'fastrnn._kernels'": say what is wrong
# and what to run.
_CELLS = ("rnn", "lstm", "gru")
_missing = [m for m in _CELLS if importlib.util.find_spec(f"{__name__}.{m}") is None]
if _missing:
    _here = os.path.dirname(os.path.abspath(__file__))
    _root = os.path.dirname(os.path.dirname(_here))
    _checkout = os.path.isfile(os.path.join(_root, "setup.py"))
    raise ImportError(
        f"fastrnn's compiled kernels ({', '.join(_missing)}) are not built in {_here} for this "
        f"Python ({sys.implementation.cache_tag}). "
        + (
            f"This is a source checkout: build them in place with `cd {_root} && python setup.py "
            "build_ext --inplace` (again after editing a .pyx), or install fastrnn with "
            "`pip install .` and import it from outside the checkout."
            if _checkout
            else "Reinstall fastrnn (`pip install --force-reinstall fastrnn`)."
        ),
        name=__name__,
    )
