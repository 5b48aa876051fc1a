"""Build the Cython kernels.

``setup.py`` is the single source of truth for how the extensions are compiled:

* ``FASTRNN_NATIVE=1`` adds ``-march=native`` (off by default so wheels run on any x86-64).
* ``FASTRNN_DEBUG_CYTHON=1`` turns on bounds and wraparound checks (and drops ``-O3``).
* ``FASTRNN_SANITIZE=address`` (any ``-fsanitize=`` value) compiles and links the kernels with
  that sanitizer; run Python with ``LD_PRELOAD=$(gcc -print-file-name=libasan.so)`` and
  ``ASAN_OPTIONS=detect_leaks=0`` (.ci/debug-build does).
* ``FASTRNN_NO_OPENMP=1`` builds without OpenMP; so does a compiler that fails the probe.
"""

import os
import subprocess
import sys
import sysconfig
import tempfile
import textwrap
import warnings

from Cython.Build import cythonize
from setuptools import Extension, setup

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
compile_args = (["-O0", "-g"] if DEBUG else ["-O3"]) + omp_compile
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

modules = ["rnn", "lstm", "gru", "_blas_check", "_build"]
extensions = [
    Extension(
        f"fastrnn._kernels.{name}",
        [f"src_pyx/{name}.pyx"],
        extra_compile_args=compile_args,
        include_dirs=["src_pyx"],
        extra_link_args=link_args,
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION"), *build_macros],
    )
    for name in modules
]

setup(
    ext_modules=cythonize(
        extensions,
        # "." finds fastrnn/_kernels/<cell>.pxd: the C API of module fastrnn._kernels.<cell>
        include_path=["src_pyx", "."],
        # The C that Cython writes depends on the directives: keep the debug build's apart.
        build_dir="build/cython-debug" if DEBUG else "build/cython",
        compiler_directives=directives,
    ),
)
