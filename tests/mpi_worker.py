"""The program each MPI rank runs for tests/test_distributed.py (``mpiexec -n N python ...``).

``python tests/mpi_worker.py MODE OUTDIR``; rank 0 writes its results to ``OUTDIR/MODE-N.npz``
(N the world size), the test process compares them. Modes:

* ``train``: for each cell and dtype, a few steps of Adam with gradient clipping, data-parallel
  over the ranks on a global batch sharded unevenly, and the same steps in one process on the
  whole batch (rank 0, no MPI): both sets of weights are saved. At world size 2 it also writes a
  checkpoint after ``SAVE_AT`` steps of the LSTM model (``OUTDIR/ckpt.npz``).
* ``resume``: loads ``OUTDIR/ckpt.npz`` and trains to ``TOTAL`` steps; rank 0 saves the weights
  and those of ``TOTAL`` uninterrupted single-process steps.
* ``fail``: rank 1 raises at the third step, the others keep training.
* ``hang``: rank 1 stops calling backward (sleeps); the others time out.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

import fastrnn
from fastrnn import distributed as dist
from fastrnn.nn import CrossEntropyLoss, Embedding, Linear, Module
from fastrnn.optim import Adam, clip_grad_norm_

V, E, H, T = 11, 6, 8, 9  # vocabulary, embedding, hidden size, steps per sequence
BATCH = 7  # global batch: shards of 4+3 on 2 ranks, 3+2+2 on 3
STEPS = 4
SAVE_AT, TOTAL = 3, 5
CELLS = {
    "lstm": dict(num_layers=2),
    "gru": dict(num_layers=2, bidirectional=True),
    "rnn": dict(num_layers=2, nonlinearity="relu"),
}


class Net(Module):
    """Embedding -> 2-layer recurrent stack -> Linear, time-major token ids in, logits out."""

    def __init__(self, cell: str, dtype: type) -> None:
        super().__init__()
        kw = CELLS[cell]
        cls = {"lstm": fastrnn.LSTM, "gru": fastrnn.GRU, "rnn": fastrnn.RNN}[cell]
        self.embed = Embedding(V, E, dtype=dtype, seed=1)
        self.rnn = cls(E, H, dtype=dtype, seed=2, **kw)
        d = 2 if kw.get("bidirectional") else 1
        self.head = Linear(d * H, V, dtype=dtype, seed=3)

    def forward(self, ids):
        out, _ = self.rnn(self.embed(ids))
        return self.head(out)

    def backward(self, dlogits):
        dx, _ = self.rnn.backward(self.head.backward(dlogits))
        self.embed.backward(dx)


def batch(step: int) -> np.ndarray:
    """The global batch of ``step``: token ids (T + 1, BATCH), the same on every rank."""
    return np.random.default_rng(100 + step).integers(V, size=(T + 1, BATCH))


def train_steps(model, opt, steps: range, comm=None) -> list[float]:
    """Train ``model`` on ``batch(s)`` for s in steps: its shard when ``comm`` is given."""
    crit = CrossEntropyLoss()
    norms = []
    for s in steps:
        ids = batch(s)
        if comm is not None:
            ids = dist.shard(ids, axis=1, comm=comm)
        x, y = ids[:-1], ids[1:]
        crit(model(x), y)
        if comm is not None:
            model.backward(crit.backward(), num_samples=y.size)
        else:
            model.backward(crit.backward())
        # max_norm below the gradients' norm, so that clipping changes every step
        norms.append(clip_grad_norm_(model.parameters(), 0.05))
        opt.step()
        opt.zero_grad()
    return norms


def weights(model) -> dict[str, np.ndarray]:
    m = model.module if isinstance(model, dist.DistributedDataParallel) else model
    return {k: p.data.copy() for k, p in m.named_parameters()}


def main() -> None:
    mode, outdir = sys.argv[1], Path(sys.argv[2])
    comm = dist.init()
    rank, size = comm.Get_rank(), comm.Get_size()
    fastrnn.set_num_threads(1)
    out: dict[str, np.ndarray] = {}
    if mode == "train":
        out["local_world_size"] = np.array(dist.local_world_size(comm))
        for cell in CELLS:
            for dtype in (np.float64, np.float32):
                tag = f"{cell}/{np.dtype(dtype).name}"
                net = Net(cell, dtype)
                if rank != 0:  # different weights: the broadcast from rank 0 must fix them
                    for p in net.parameters():
                        p.data += 1.0
                model = dist.DistributedDataParallel(net, comm, bucket_cap_mb=0.002)
                opt = Adam(model.parameters(), lr=0.01)
                norms = train_steps(model, opt, range(STEPS), comm)
                if rank == 0:
                    ref = Net(cell, dtype)
                    ref_opt = Adam(ref.parameters(), lr=0.01)
                    ref_norms = train_steps(ref, ref_opt, range(STEPS))
                    out[f"{tag}/norms"] = np.array(norms)
                    out[f"{tag}/ref_norms"] = np.array(ref_norms)
                    for k, v in weights(model).items():
                        out[f"{tag}/dist/{k}"] = v
                    for k, v in weights(ref).items():
                        out[f"{tag}/ref/{k}"] = v
                    for k, v in model.stats.items():
                        out[f"{tag}/stats/{k}"] = np.array(v)
                # every rank ends with the same weights
                mine = np.concatenate([v.ravel() for v in weights(model).values()])
                first = comm.bcast(mine, root=0)
                same = comm.allreduce(int(np.array_equal(mine, first)))
                if rank == 0:
                    out[f"{tag}/ranks_equal"] = np.array(same == size)
        if size == 2:
            model = dist.DistributedDataParallel(Net("lstm", np.float64), comm)
            opt = Adam(model.parameters(), lr=0.01)
            train_steps(model, opt, range(SAVE_AT), comm)
            dist.save_checkpoint(outdir / "ckpt.npz", model, opt, comm=comm, step=SAVE_AT)
    elif mode == "resume":
        model = dist.DistributedDataParallel(Net("lstm", np.float64), comm)
        model.module.head.weight.data[...] = 0.0  # overwritten by the checkpoint
        opt = Adam(model.parameters(), lr=0.01)
        extra = dist.load_checkpoint(outdir / "ckpt.npz", model, opt, comm=comm)
        train_steps(model, opt, range(int(extra["step"]), TOTAL), comm)
        if rank == 0:
            ref = Net("lstm", np.float64)
            train_steps(ref, Adam(ref.parameters(), lr=0.01), range(TOTAL))
            for k, v in weights(model).items():
                out[f"dist/{k}"] = v
            for k, v in weights(ref).items():
                out[f"ref/{k}"] = v
    elif mode in ("fail", "hang"):
        timeout = 3.0 if mode == "hang" else None
        model = dist.DistributedDataParallel(Net("lstm", np.float32), comm, timeout=timeout)
        opt = Adam(model.parameters(), lr=0.01)
        for s in range(10**6):
            if rank == 1 and s == 2:
                if mode == "fail":
                    raise ValueError("simulated failure in the training step")
                time.sleep(3600)
            train_steps(model, opt, range(s, s + 1), comm)
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    if rank == 0 and out:
        np.savez(outdir / f"{mode}-{size}.npz", **out)


if __name__ == "__main__":
    main()
