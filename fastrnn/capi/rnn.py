"""Runtime side of ``fastrnn/capi/rnn.pxd``: the C functions of ``fastrnn._kernels.rnn``."""

from fastrnn._kernels.rnn import __pyx_capi__  # noqa: F401  (read by Cython's cimport)
