"""Runtime side of ``fastrnn/capi/gru.pxd``: the C functions of ``fastrnn._kernels.gru``."""

from fastrnn._kernels.gru import __pyx_capi__  # noqa: F401  (read by Cython's cimport)
