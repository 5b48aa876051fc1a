"""Build the Cython kernels.

``setup.py`` is the single source of truth for how the extensions are compiled:

* ``FASTRNN_NATIVE=1`` adds ``-march=native`` (off by default so wheels run on any x86-64).
* ``FASTRNN_DEBUG_CYTHON=1`` turns on bounds and wraparound checks (and drops ``-O3``).
* ``FASTRNN_SANITIZE=address`` (any ``-fsanitize=`` value) compiles and links the kernels with
  that sanitizer; run Python with ``LD_PRELOAD=$(gcc -print-file-name=libasan.so)`` and
  ``ASAN_OPTIONS=detect_leaks=0`` (.ci/debug-build does).
* ``FASTRNN_NO_OPENMP=1`` builds without OpenMP; so does a compiler that fails the probe.
* ``FASTRNN_BUILD_JOBS``: how many extensions compile at once (default: the CPUs this process may
  use); ``build_ext -j N`` on the command line overrides it.
* ``FASTRNN_VARIANTS``: the cell kernels are also compiled for newer x86-64 levels, as modules
  ``fastrnn._kernels.<cell>_<isa>`` that ``fastrnn._isa`` picks at import when the CPU runs them
  (the gate loops and copies then use the wider vectors). Default ``avx512,avx2`` on x86-64
  (none in debug builds); ``none`` builds only the portable modules.

Optimized builds carry no debug information (``-g0`` after Python's own ``-g``): a third less
compile time, and modules a quarter of the size. An in-place build (``build_ext --inplace``) or
an editable install (``pip install -e .``) reuses each extension already built in the source
tree when its C source and every header it includes are unchanged and the compile and link
commands are the same (``build/stamps/``, see ``BuildExt``); so the README's second command
compiles nothing after the first, and an edited ``.pyx``, ``.pxd`` or ``.h`` rebuilds the
modules that use it.
"""

import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import textwrap
import warnings

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

DEBUG = os.environ.get("FASTRNN_DEBUG_CYTHON", "0") == "1"
NATIVE = os.environ.get("FASTRNN_NATIVE", "0") == "1"
SANITIZE = os.environ.get("FASTRNN_SANITIZE", "")

_OMP_PROBE = textwrap.dedent(
    """
    #include <omp.h>
    #include <stdio.h>
    int main(void) {
        int n = 0;
        #pragma omp parallel reduction(+:n)
        n += 1;
        printf("%d\\n", n);
        return n > 0 ? 0 : 1;
    }
    """
)


def _openmp_flags():
    """Return (compile, link) flags for OpenMP after compiling and running a probe."""
    if os.environ.get("FASTRNN_NO_OPENMP", "0") == "1":
        return [], []
    if sys.platform == "win32":
        return ["/openmp"], []
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    flags = ["-fopenmp"]
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.c")
        exe = os.path.join(tmp, "probe")
        with open(src, "w") as f:
            f.write(_OMP_PROBE)
        try:
            subprocess.run(cc.split() + flags + [src, "-o", exe], check=True, capture_output=True)
            subprocess.run([exe], check=True, capture_output=True)
        except (OSError, subprocess.CalledProcessError):
            warnings.warn(
                "fastrnn: the compiler failed the OpenMP probe; building without OpenMP "
                "(the elementwise gate passes will run on one thread).",
                stacklevel=1,
            )
            return [], []
    return flags, flags


def _supported(flags):
    """The subset of ``flags`` the C compiler accepts (each tried on an empty file)."""
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    ok = []
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "empty.c")
        with open(src, "w") as f:
            f.write("int fastrnn_probe(void) { return 0; }\n")
        for flag in flags:
            try:
                subprocess.run(
                    cc.split()
                    + ["-Werror", "-c", src, "-o", os.path.join(tmp, "e.o")]
                    + flag.split(),
                    check=True,
                    capture_output=True,
                )
                ok.extend(flag.split())
            except (OSError, subprocess.CalledProcessError):
                pass
    return ok


# Let the gate loops vectorize: no FP traps to preserve in if-converted selects, and enough
# runtime alias checks for loops that touch several arrays (gcc gives up after 10 by default).
VECTORIZE = [
    "-fno-trapping-math",
    "-fno-math-errno",
    "--param vect-max-version-for-alias-checks=64",
]

omp_compile, omp_link = _openmp_flags()
# -g0: Python's CFLAGS hold -g; the kernels' debug information tripled the objects' size and cost
# a third of the compile time (the debug build below keeps it).
compile_args = (["-O0", "-g"] if DEBUG else ["-O3", "-g0"]) + omp_compile
if sys.platform != "win32":
    compile_args += _supported(VECTORIZE)
if NATIVE:
    compile_args.append("-march=native")
link_args = list(omp_link)
if SANITIZE:
    compile_args += [f"-fsanitize={SANITIZE}", "-fno-omit-frame-pointer"]
    link_args += [f"-fsanitize={SANITIZE}"]
# Recorded in fastrnn._kernels._build.CONFIG, so that a test can tell which build it runs.
build_macros = [("FASTRNN_CYTHON_DEBUG", "1" if DEBUG else "0")]

directives = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "initializedcheck": DEBUG,
    "nonecheck": False,
    "cdivision": True,
    "embedsignature": True,
}


def _extension(name, source, extra_args=()):
    return Extension(
        f"fastrnn._kernels.{name}",
        [source],
        extra_compile_args=compile_args + list(extra_args),
        include_dirs=["src_pyx"],
        extra_link_args=link_args,
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION"), *build_macros],
    )


# Instruction-set variants of the cell kernels: the same .pyx, included by a generated one-line
# module, compiled for an x86-64 micro-architecture level (the names match fastrnn._isa's).
VARIANT_FLAGS = {
    "avx512": ["-march=x86-64-v4", "-mtune=generic"],
    "avx2": ["-march=x86-64-v3", "-mtune=generic"],
}


def _kernel_modules():
    """The cells' kernel modules, read from the cell registry (fastrnn/cells.py imports only the
    standard library, so it loads before anything is built)."""
    spec = importlib.util.spec_from_file_location("_fastrnn_cells", "fastrnn/cells.py")
    cells = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = cells  # dataclasses look their module up while building
    spec.loader.exec_module(cells)
    return list(dict.fromkeys(cell.kernel for cell in cells.CELLS.values()))


CELLS = _kernel_modules()


def _variants():
    """[(isa, flags)] to build: FASTRNN_VARIANTS, or all that the compiler takes."""
    default = "none" if (DEBUG or SANITIZE or sys.platform == "win32") else "avx512,avx2"
    wanted = os.environ.get("FASTRNN_VARIANTS", default).strip().lower()
    if wanted in ("", "none"):
        return []
    out = []
    for isa in wanted.split(","):
        isa = isa.strip()
        if isa not in VARIANT_FLAGS:
            raise SystemExit(
                f"FASTRNN_VARIANTS: unknown variant {isa!r} (use {', '.join(VARIANT_FLAGS)})"
            )
        flags = VARIANT_FLAGS[isa]
        if _supported([" ".join(flags)]) == flags:
            out.append((isa, flags))
        else:
            warnings.warn(
                f"fastrnn: the compiler does not take {flags}; no {isa} kernels", stacklevel=1
            )
    return out


def _variant_source(cell, isa):
    """build/variants/<cell>_<isa>.pyx: the module fastrnn._kernels.<cell>_<isa>."""
    os.makedirs(os.path.join("build", "variants"), exist_ok=True)
    path = os.path.join("build", "variants", f"{cell}_{isa}.pyx")
    text = f'# Generated by setup.py: {cell}.pyx compiled for {isa}.\ninclude "{cell}.pyx"\n'
    if os.path.exists(path):
        with open(path) as f:
            if f.read() == text:
                return path  # unchanged: no rebuild
    with open(path, "w") as f:
        f.write(text)
    return path


modules = CELLS + ["attention", "_blas_check", "_build", "_memory", "_peak", "_rows", "_stream"]
extensions = [_extension(name, f"src_pyx/{name}.pyx") for name in modules]
# int8 inference (fastrnn.quantization): no FMA contraction, so that its three integer paths
# round their float epilogues alike
extensions.append(_extension("quant", "src_pyx/quant.pyx", ["-ffp-contract=off"]))
for isa, flags in _variants():
    extensions += [
        # -Wno-unused-function: the C API (exported by the portable modules only) is unused here
        _extension(f"{cell}_{isa}", _variant_source(cell, isa), [*flags, "-Wno-unused-function"])
        for cell in CELLS
    ]


def _jobs():
    """Parallel compile jobs: FASTRNN_BUILD_JOBS, or the CPUs this process may run on."""
    value = os.environ.get("FASTRNN_BUILD_JOBS", "")
    if value:
        try:
            jobs = int(value)
        except ValueError:
            jobs = 0
        if jobs < 1:
            raise SystemExit(f"FASTRNN_BUILD_JOBS must be a positive integer, got {value!r}")
        return jobs
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


JOBS = _jobs()

_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)


def _with_included_headers(ext):
    """Add to ``ext.depends`` the headers that its headers ``#include`` (Cython lists the ones
    named by ``cdef extern from``, not those: _rgemm.h includes _rgemm_tile.h)."""
    todo, seen = list(ext.depends), set(ext.depends)
    while todo:
        header = todo.pop()
        if not os.path.isfile(header):
            continue
        with open(header) as f:
            for name in _INCLUDE.findall(f.read()):
                path = os.path.join(os.path.dirname(header), name)
                if os.path.isfile(path) and path not in seen:
                    seen.add(path)
                    todo.append(path)
    ext.depends = sorted(seen)
    return ext


def _sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


class BuildExt(build_ext):
    """setuptools' build_ext that reuses the extensions of an in-place build.

    setuptools builds an editable install's extensions in a new temporary directory each time,
    then copies them into the source tree, so every ``pip install -e .`` compiled everything
    again. Here, when the build is in place (``--inplace`` or editable), an extension is copied
    from the source tree instead of compiled when its stamp (``build/stamps/<file>.json``)
    matches: the same compile and link commands, the same content of its C source and of every
    header it depends on, and the in-place file the one that build wrote. Contents, not times:
    each isolated build environment installs SciPy anew, so its ``cython_blas.pxd`` is always
    newer than everything (``_keep_unchanged_c`` then keeps Cython from rewriting the C).
    """

    def run(self):
        self._in_place = bool(self.inplace or getattr(self, "editable_mode", False))
        self._stamps = {}
        super().run()
        if self._in_place:  # the in-place files now exist: record how they were built
            os.makedirs(os.path.join("build", "stamps"), exist_ok=True)
            for name, stamp in self._stamps.items():
                stamp["output"] = _sha256(self._inplace_path(name))
                with open(self._stamp_path(name), "w") as f:
                    json.dump(stamp, f, indent=1)

    def build_extensions(self):
        # the largest first, so that the last job to finish is a short one
        self.extensions.sort(key=lambda e: -sum(os.path.getsize(s) for s in e.sources))
        super().build_extensions()

    def build_extension(self, ext):
        if not self._in_place:
            super().build_extension(ext)
            return
        target = self.get_ext_fullpath(ext.name)  # under build_lib while build_ext runs
        here = self._inplace_path(ext)
        stamp = self._stamp(ext)
        if self._up_to_date(ext, here, stamp):
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copy2(here, target)
            self.announce(f"fastrnn: {here} is up to date, not compiled", level=logging.INFO)
            return
        if os.path.exists(target):  # built from other sources or flags: never reuse it
            os.remove(target)
        super().build_extension(ext)
        self._stamps[ext.name] = stamp

    def _inplace_path(self, ext):
        if isinstance(ext, str):
            ext = next(e for e in self.extensions if e.name == ext)
        fullname = self.get_ext_fullname(ext.name)
        package = ".".join(fullname.split(".")[:-1])
        package_dir = self.get_finalized_command("build_py").get_package_dir(package)
        return os.path.join(package_dir, os.path.basename(self.get_ext_filename(fullname)))

    def _stamp_path(self, ext):
        name = os.path.basename(self._inplace_path(ext))
        return os.path.join("build", "stamps", name + ".json")

    def _stamp(self, ext):
        """Everything that makes the compiled file what it is (the output's hash comes later)."""
        return {
            "compile": list(getattr(self.compiler, "compiler_so", [])) + ext.extra_compile_args,
            "link": list(getattr(self.compiler, "linker_so", [])) + ext.extra_link_args,
            "macros": [list(m) for m in ext.define_macros],
            "include_dirs": list(ext.include_dirs) + list(self.include_dirs or []),
            "inputs": {path: _sha256(path) for path in [*ext.sources, *ext.depends]},
        }

    def _up_to_date(self, ext, path, stamp):
        if not os.path.exists(path) or not os.path.exists(self._stamp_path(ext)):
            return False
        with open(self._stamp_path(ext)) as f:
            try:
                old = json.load(f)
            except ValueError:
                return False
        return old.pop("output", None) == _sha256(path) and old == stamp


CYTHON_BUILD_DIR = "build/cython-debug" if DEBUG else "build/cython"
# "." finds fastrnn/_kernels/<cell>.pxd: the C API of module fastrnn._kernels.<cell>
CYTHON_INCLUDE = ["src_pyx", "."]


def _input_key(path):
    """A dependency's name that does not change with the build environment: its path in the
    tree, or from site-packages (SciPy's .pxd, in a new isolated environment each build)."""
    rel = os.path.relpath(path)
    if not rel.startswith(os.pardir):
        return rel
    return path.replace(os.sep, "/").rpartition("/site-packages/")[2]


def _keep_unchanged_c(exts):
    """Let Cython keep the C of each module whose inputs have the same content as when it was
    written (``<module>.c.inputs.json``); return the records to write once cythonize is done.

    Cython regenerates a module whose dependencies are newer than its C, and pip's isolated
    build installs SciPy anew each time, so ``cython_blas.pxd`` was always newer: every
    ``pip install -e .`` spent a minute re-cythonizing eleven modules into the same C. A module
    whose record matches gets its C's time set to now, which Cython reads as up to date."""
    from Cython import __version__ as cython_version
    from Cython.Build.Dependencies import create_dependency_tree
    from Cython.Compiler.Main import Context
    from Cython.Compiler.Options import CompilationOptions

    # the tree that cythonize below reuses (Cython keeps one per process)
    tree = create_dependency_tree(
        Context.from_options(CompilationOptions(include_path=CYTHON_INCLUDE))
    )
    records = {}
    for ext in exts:
        (pyx,) = ext.sources
        c_file = os.path.join(CYTHON_BUILD_DIR, os.path.splitext(pyx)[0] + ".c")
        try:
            inputs = {_input_key(p): _sha256(p) for p in sorted(tree.all_dependencies(pyx))}
        except OSError:
            continue
        record = {"cython": cython_version, "directives": directives, "inputs": inputs}
        records[c_file] = record
        try:
            with open(c_file + ".inputs.json") as f:
                unchanged = json.load(f) == record
        except (OSError, ValueError):
            unchanged = False
        if unchanged and os.path.exists(c_file):
            os.utime(c_file)
    return records


_c_records = _keep_unchanged_c(extensions)
ext_modules = cythonize(
    extensions,
    include_path=CYTHON_INCLUDE,
    # The C that Cython writes depends on the directives: keep the debug build's apart.
    build_dir=CYTHON_BUILD_DIR,
    compiler_directives=directives,
    nthreads=JOBS if JOBS > 1 and sys.platform == "linux" else 0,  # fork, not spawn
)
for _c_file, _record in _c_records.items():
    if os.path.exists(_c_file):
        with open(_c_file + ".inputs.json", "w") as f:
            json.dump(_record, f, indent=1)

setup(
    # compile the extensions in parallel (pip and PEP 517 builds pass no -j)
    options={"build_ext": {"parallel": JOBS}},
    cmdclass={"build_ext": BuildExt},
    ext_modules=[_with_included_headers(ext) for ext in ext_modules],
)
