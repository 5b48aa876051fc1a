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
* :mod:`fastrnn.utils` -- truncated BPTT over long sequences (``batchify``, ``tbptt_chunks``);
* :mod:`fastrnn.cells` -- the cell registry: each cell's gates, states, options and
  parameters, described once;
* :func:`manual_seed` -- one seed for every module built after it (initialisation, dropout);
* :func:`set_num_threads` / :func:`get_num_threads` -- threads used by the kernels;
* :func:`set_isa` / :func:`get_isa` / :func:`available_isas` -- which compiled kernels run
  (AVX-512, AVX2 or BLAS), also chosen by the ``FASTRNN_ISA`` environment variable.

Optional modules, imported by name only (never by ``import fastrnn`` nor listed in
``__all__``, so that ``from fastrnn import *`` imports no optional dependency):
:mod:`fastrnn.torch` (torch), :mod:`fastrnn.distributed` (mpi4py), :mod:`fastrnn.onnx`
(onnx: export to ONNX's RNN/LSTM/GRU operators), :mod:`fastrnn.bench`, :mod:`fastrnn.demo`.
"""

# OMP_WAIT_POLICY is left to the user and to the OpenMP runtime's default (libgomp: idle
# threads spin a while after a region, then sleep). The kernels' per-step synchronisation is
# their own spin-then-yield barrier (src_pyx/_parallel.h), so the policy only decides what the
# team does between kernel calls. fastrnn used to set PASSIVE before loading libgomp; but PyTorch
# shares that one runtime in a process whichever of the two loads it (same soname), and on the
# quiet 2-core dev box PASSIVE made torch's own 2-thread LSTM/GRU/RNN 1.7-2.9x slower (LSTM
# T=100 B=32 H=256 forward + backward: 29.2 ms ACTIVE, 50.3 ms PASSIVE) and fastrnn's shortest
# steps slower too (RNN medium forward median 5.0 ms, 1.5 ms with spinning threads). A machine
# shared with other busy processes may still want OMP_WAIT_POLICY=PASSIVE: set it yourself.

# _isa applies FASTRNN_ISA at import
from fastrnn import (  # noqa: E402,F401
    _isa,
    cells,
    checkpoint,
    functional,
    nn,
    optim,
    quantization,
    reference,
    stack,
    utils,
)
from fastrnn._isa import available_isas, get_isa, set_isa  # noqa: E402
from fastrnn._random import get_rng_state, initial_seed, manual_seed, set_rng_state  # noqa: E402
from fastrnn._threads import get_num_threads, set_num_threads  # noqa: E402
from fastrnn._workspace import empty_cache  # noqa: E402
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
from fastrnn.quantization import quantize_dynamic  # noqa: E402

__version__ = "0.1.0"

__all__ = [
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
    "RMSprop",
    "RNN",
    "SGD",
    "Sequential",
    "available_isas",
    "cells",
    "checkpoint",
    "clip_grad_norm_",
    "clip_grad_value_",
    "empty_cache",
    "functional",
    "get_isa",
    "get_num_threads",
    "get_rng_state",
    "initial_seed",
    "load_checkpoint",
    "manual_seed",
    "nn",
    "optim",
    "quantization",
    "quantize_dynamic",
    "reference",
    "save_checkpoint",
    "set_isa",
    "set_num_threads",
    "set_rng_state",
    "stack",
    "utils",
    "__version__",
]
