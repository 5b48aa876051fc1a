"""Runtime side of ``fastrnn/capi/lstm.pxd``: the C functions of ``fastrnn._kernels.lstm``."""

from fastrnn._kernels.lstm import __pyx_capi__  # noqa: F401  (read by Cython's cimport)
