"""Sphinx configuration of fastrnn's documentation site.

Build it with ``pip install -e ".[docs]"`` and ``sphinx-build -W -b html docs docs/_build/html``
(CI does, warnings as errors). Sphinx rather than MkDocs because it is what NumPy, SciPy,
scikit-learn and PyTorch use: its numpydoc extension renders the numpydoc docstrings that every
public function here has, autodoc builds the API reference from them, and intersphinx links the
types in them to NumPy's and SciPy's own documentation. The Markdown pages (the README, the
tutorial and docs/*.md) are read by myst-parser as they are.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path

# The fastrnn that Python imports is documented: install it first (pip install -e ".[docs]"
# and pip install torch, for the page of fastrnn.torch), with its compiled kernels.
import fastrnn

HERE = Path(__file__).resolve().parent

project = "fastrnn"
author = "the fastrnn developers"
copyright = "the fastrnn developers"  # noqa: A001
release = version = fastrnn.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "numpydoc",
    "myst_parser",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]
html_theme = "alabaster"
html_static_path = ["_static"]
html_title = f"fastrnn {release}"

myst_heading_anchors = 3  # README's "see "Layers"" links and the tables of contents
myst_enable_extensions = ["dollarmath"]

autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "none"  # the numpydoc "Parameters" sections say the types
numpydoc_show_class_members = False  # autodoc's :members: lists them once
numpydoc_xref_param_type = True
numpydoc_xref_aliases = {
    "ndarray": "numpy.ndarray",
    "array_like": ":term:`numpy:array_like`",
    "array-like": ":term:`numpy:array_like`",
    "Generator": "numpy.random.Generator",
}
numpydoc_xref_ignore = {"of", "or", "shape", "optional", "default", "dtype", "None", "int",
                        "float", "bool", "str", "tuple", "list", "dict", "callable", "and", "to",
                        "type", "mapping", "sequence", "object", "function"}  # fmt: skip

# Intersphinx: the projects' own inventories when the network is there, else the small local
# ones written below (the names the docstrings use), so that an offline build (CI's machine
# has no network) links the same names and prints no warning.
INVENTORIES = HERE / "_build" / "inventories"
PYTHON = "https://docs.python.org/3/"
NUMPY = "https://numpy.org/doc/stable/"
SCIPY = "https://docs.scipy.org/doc/scipy/"
intersphinx_mapping = {
    "python": (PYTHON, (None, str(INVENTORIES / "python.inv"))),
    "numpy": (NUMPY, (None, str(INVENTORIES / "numpy.inv"))),
    "scipy": (SCIPY, (None, str(INVENTORIES / "scipy.inv"))),
}
intersphinx_timeout = 5
if os.environ.get("FASTRNN_DOCS_OFFLINE"):  # skip the attempt to reach the network
    intersphinx_mapping = {k: (u, str(INVENTORIES / f"{k}.inv")) for k, (u, _) in
                           intersphinx_mapping.items()}  # fmt: skip

# (name, domain:role, uri relative to the project's root[, the label's title]); the names
# that the docstrings use, numpydoc's links for "bool", "iterable", "sequence" and "scalar"
# included.
_OFFLINE = {
    "python": [
        ("bltin-boolean-values", "std:label", "library/stdtypes.html#$", "Boolean Values"),
        ("iterable", "std:term", "glossary.html#term-iterable"),
        ("sequence", "std:term", "glossary.html#term-sequence"),
    ],
    "numpy": [
        ("numpy.ndarray", "py:class", "reference/generated/numpy.ndarray.html#$"),
        ("numpy.dtype", "py:class", "reference/generated/numpy.dtype.html#$"),
        ("numpy.float32", "py:attribute", "reference/arrays.scalars.html#$"),
        ("numpy.float64", "py:attribute", "reference/arrays.scalars.html#$"),
        ("numpy.random.Generator", "py:class", "reference/random/generator.html#$"),
        ("numpy.random.default_rng", "py:function", "reference/random/generator.html#$"),
        (
            "numpy.random.SeedSequence",
            "py:class",
            "reference/random/bit_generators/generated/numpy.random.SeedSequence.html#$",
        ),
        ("numpy.asarray", "py:function", "reference/generated/numpy.asarray.html#$"),
        ("numpy.load", "py:function", "reference/generated/numpy.load.html#$"),
        ("array_like", "std:term", "glossary.html#term-array_like"),
        ("arrays.scalars", "std:label", "reference/arrays.scalars.html#arrays-scalars", "Scalars"),
    ],
    "scipy": [
        ("scipy.linalg.cython_blas", "py:module", "reference/linalg.cython_blas.html#module-$"),
        ("scipy.sparse", "py:module", "reference/sparse.html#module-$"),
    ],
}


def _write_inventory(path: Path, project: str, entries: list[tuple[str, ...]]) -> None:
    """A Sphinx objects.inv (format 2) holding ``entries``."""
    body = "".join(
        f"{e[0]} {e[1]} {-1 if e[1] == 'std:label' else 1} {e[2]} {e[3] if len(e) > 3 else '-'}\n"
        for e in entries
    )
    head = (
        "# Sphinx inventory version 2\n"
        f"# Project: {project}\n# Version: stable\n"
        "# The remainder of this file is compressed using zlib.\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(head.encode() + zlib.compress(body.encode()))


for _name, _entries in _OFFLINE.items():
    _write_inventory(INVENTORIES / f"{_name}.inv", _name, _entries)
