"""fastrnn: fast CPU recurrent networks with Cython kernels for the forward pass and full BPTT.

Public entry points:

* :mod:`fastrnn.functional` -- the stable kernel-level API (one forward/backward pair per cell);
* :mod:`fastrnn.reference` -- the same API in plain NumPy (the oracle and the baseline);
* :func:`set_num_threads` / :func:`get_num_threads` -- threads used by the kernels.
"""

import os

# OpenMP worker threads that spin after each parallel region steal the CPU from BLAS threads
# (and, under a CPU quota, burn it): with one region per time step that costs more than the
# parallelism gains. Sleep instead, unless the user chose a policy. Must run before the kernels
# load libgomp, which reads it once.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from fastrnn._threads import get_num_threads, set_num_threads  # noqa: E402

__version__ = "0.1.0"

__all__ = ["__version__", "get_num_threads", "set_num_threads"]
