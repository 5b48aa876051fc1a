"""One rank of the torch.distributed test (tests/test_distributed.py): DDP over gloo, on the CPU,
of a model whose recurrent modules are patched by ``fastrnn.torch``.

``python tests/torch_ddp_worker.py RANK WORLD_SIZE INIT_METHOD OUTDIR`` (INIT_METHOD: torch's,
e.g. ``file:///tmp/x/rendezvous``). For each cell and dtype, every
rank trains the patched model wrapped in ``torch.nn.parallel.DistributedDataParallel`` on its
equal shard of the global batch (Adam, ``clip_grad_norm_``); rank 0 also trains the unpatched
model (torch's own kernels) on the whole batch in one process and writes both sets of weights to
``OUTDIR/torch-ddp.npz``.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np
import torch  # before fastrnn: see fastrnn.torch's notes on OpenMP
import torch.distributed as tdist
from torch.nn.parallel import DistributedDataParallel

import fastrnn
import fastrnn.torch

V, E, H, T = 11, 6, 8, 9
BATCH, STEPS = 6, 4
CELLS = {
    "lstm": (torch.nn.LSTM, dict(num_layers=2)),
    "gru": (torch.nn.GRU, dict(num_layers=2, bidirectional=True)),
    "rnn": (torch.nn.RNN, dict(num_layers=2, nonlinearity="relu")),
}


class Net(torch.nn.Module):
    def __init__(self, cell: str) -> None:
        super().__init__()
        cls, kw = CELLS[cell]
        self.embed = torch.nn.Embedding(V, E)
        self.rnn = cls(E, H, **kw)
        self.head = torch.nn.Linear((2 if kw.get("bidirectional") else 1) * H, V)

    def forward(self, ids):
        out, _ = self.rnn(self.embed(ids))
        return self.head(out)


def train(model, ids_of_step, params) -> None:
    opt = torch.optim.Adam(params, lr=0.01)
    for s in range(STEPS):
        ids = ids_of_step(s)
        logits = model(ids[:-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, V), ids[1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 0.05)
        opt.step()
        opt.zero_grad()


def main() -> None:
    rank, world, init, outdir = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], Path(sys.argv[4])
    torch.set_num_threads(1)
    fastrnn.set_num_threads(1)
    tdist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    per = BATCH // world

    def global_batch(s: int) -> torch.Tensor:
        return torch.from_numpy(np.random.default_rng(100 + s).integers(V, size=(T + 1, BATCH)))

    out = {}
    for cell in CELLS:
        for dtype in (torch.float32, torch.float64):
            torch.manual_seed(0)
            base = Net(cell).to(dtype)
            ref = copy.deepcopy(base)  # torch's own kernels, one process, whole batch
            model = fastrnn.torch.patch(copy.deepcopy(base))
            assert isinstance(model.rnn, fastrnn.torch._FastRNNBase)
            ddp = DistributedDataParallel(model)
            train(
                ddp,
                lambda s: global_batch(s)[:, rank * per : (rank + 1) * per],
                list(ddp.parameters()),
            )
            if rank == 0:
                train(ref, global_batch, list(ref.parameters()))
                tag = f"{cell}/{str(dtype).split('.')[-1]}"
                for k, v in model.state_dict().items():
                    out[f"{tag}/ddp/{k}"] = v.detach().numpy().copy()
                for k, v in ref.state_dict().items():
                    out[f"{tag}/ref/{k}"] = v.detach().numpy().copy()
    if rank == 0:
        np.savez(outdir / "torch-ddp.npz", **out)
    # Every rank reaches this point before any tears gloo down: a rank that destroyed its group
    # while rank 0 still trained its reference model aborted ("terminate called without an
    # active exception") in a CI run.
    tdist.barrier()
    tdist.destroy_process_group()


if __name__ == "__main__":
    main()
