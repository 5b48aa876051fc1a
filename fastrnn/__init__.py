"""fastrnn: fast CPU recurrent networks with Cython kernels for the forward pass and full BPTT.

Public entry points:

* :class:`RNN`, :class:`LSTM`, :class:`GRU` -- multi-layer, bidirectional layers with PyTorch's
  API, parameter names and numbers;
* :mod:`fastrnn.functional` -- the stable kernel-level API (one forward/backward pair per cell);
* :mod:`fastrnn.stack` -- multi-layer / bidirectional orchestration over the functional API;
* :mod:`fastrnn.reference` -- the same API in plain NumPy (the oracle and the baseline);
* :mod:`fastrnn.torch` -- ``torch.nn.RNN/LSTM/GRU`` on fastrnn's kernels and ``patch(model)``
  (needs torch, which ``import fastrnn`` never imports);
* :mod:`fastrnn.nn`, :mod:`fastrnn.optim`, :mod:`fastrnn.checkpoint` -- modules, losses,
  optimizers, clipping and checkpoints for training;
* :func:`set_num_threads` / :func:`get_num_threads` -- threads used by the kernels.
"""

import os

# OpenMP worker threads that spin after each parallel region steal the CPU from BLAS threads
# (and, under a CPU quota, burn it): with one region per time step that costs more than the
# parallelism gains. Sleep instead, unless the user chose a policy. Must run before the kernels
# load libgomp, which reads it once.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from fastrnn import nn, optim  # noqa: E402
from fastrnn._threads import get_num_threads, set_num_threads  # noqa: E402
from fastrnn.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from fastrnn.nn import (  # noqa: E402
    GRU,
    LSTM,
    RNN,
    CrossEntropyLoss,
    Dropout,
    Embedding,
    Linear,
    Module,
    MSELoss,
    Parameter,
    Sequential,
)
from fastrnn.optim import (  # noqa: E402
    SGD,
    Adagrad,
    Adam,
    AdamW,
    RMSprop,
    clip_grad_norm_,
    clip_grad_value_,
)

__version__ = "0.1.0"

__all__ = [
    "SGD",
    "Adagrad",
    "Adam",
    "AdamW",
    "CrossEntropyLoss",
    "Dropout",
    "Embedding",
    "GRU",
    "LSTM",
    "Linear",
    "MSELoss",
    "Module",
    "Parameter",
    "RNN",
    "RMSprop",
    "Sequential",
    "__version__",
    "clip_grad_norm_",
    "clip_grad_value_",
    "get_num_threads",
    "load_checkpoint",
    "nn",
    "optim",
    "save_checkpoint",
    "set_num_threads",
]
