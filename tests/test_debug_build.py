"""setup.py's debug build (fastrnn._kernels._build): which build is this, do its checks fire?

``fastrnn._kernels._build.CONFIG`` is read from the C preprocessor of the build itself. The debug
CI step (.ci/debug-build) builds with ``FASTRNN_DEBUG_CYTHON=1 FASTRNN_SANITIZE=address`` in a
copy of the tree and sets ``FASTRNN_EXPECT_BUILD=cython_debug,asan`` and
``FASTRNN_EXPECT_ROOT``: then these tests fail unless that build is the one imported, and show
that its checks catch a kernel fed inconsistent shapes (which fastrnn.functional never does).
In an ordinary build the checks that need the debug build are skipped.
"""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fastrnn
from fastrnn._kernels import _build
from fastrnn._kernels import lstm as _lstm

EXPECT = [f for f in os.environ.get("FASTRNN_EXPECT_BUILD", "").split(",") if f]


def test_config_is_complete():
    assert set(_build.CONFIG) == {"cython_debug", "asan", "openmp", "optimized"}
    assert all(isinstance(v, bool) for v in _build.CONFIG.values())


@pytest.mark.skipif(not EXPECT, reason="FASTRNN_EXPECT_BUILD not set (only the debug CI step)")
def test_the_expected_build_is_imported():
    for flag in EXPECT:
        assert _build.CONFIG[flag], f"expected a {flag} build, got {_build.CONFIG}"
    root = os.environ.get("FASTRNN_EXPECT_ROOT")
    if root:
        here = os.path.realpath(fastrnn.__file__)
        assert here.startswith(os.path.realpath(root) + os.sep), here


@pytest.mark.skipif(not _build.CONFIG["cython_debug"], reason="needs FASTRNN_DEBUG_CYTHON=1")
def test_bounds_checks_are_on_in_the_kernels():
    """The kernel entry points index their memoryviews; with bounds checks an empty one raises."""
    e = np.zeros((0, 1, 1))
    z = np.zeros((1, 1))
    with pytest.raises(IndexError, match="Out of bounds"):
        _lstm.forward(
            e,
            z,
            z,
            np.zeros((4, 1)),
            np.zeros((4, 1)),
            np.zeros(4),
            np.zeros(0, np.intc),
            np.zeros((0, 1, 4)),
            np.zeros((0, 1, 1)),
            np.zeros((0, 1, 1)),
            z.copy(),
            z.copy(),
            True,
            1,
        )


_OVERFLOW = textwrap.dedent(
    """
    import numpy as np
    from fastrnn._kernels import lstm
    T, B, I, H = 2, 8, 4, 64
    x, h0 = np.ones((T, B, I)), np.ones((B, H))
    c0 = np.ones((B // 2, H))  # half the rows the gate pass will read
    w_ih, w_hh, bias = np.ones((4 * H, I)), np.ones((4 * H, H)), np.zeros(4 * H)
    gates, y, cs = np.empty((T, B, 4 * H)), np.empty((T, B, H)), np.empty((T, B, H))
    h_n, c_n = np.empty((B, H)), np.empty((B, H))
    lstm.forward(x, h0, c0, w_ih, w_hh, bias, np.full(T, B, np.intc), gates, y, cs, h_n, c_n,
                 True, 1)
    print("no error")
    """
)


@pytest.mark.skipif(not _build.CONFIG["asan"], reason="needs FASTRNN_SANITIZE=address")
def test_address_sanitizer_catches_a_kernel_reading_out_of_bounds():
    """Call a kernel directly with a c0 of B/2 rows: its gate pass reads past the end."""
    env = dict(os.environ)
    env["ASAN_OPTIONS"] = "detect_leaks=0:allocator_may_return_null=1"  # report to stderr
    root = os.path.dirname(os.path.dirname(os.path.realpath(fastrnn.__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-c", _OVERFLOW], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "AddressSanitizer: heap-buffer-overflow" in proc.stderr, proc.stderr[-3000:]
