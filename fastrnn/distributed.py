"""Data-parallel training over MPI (``mpi4py``): one process per rank, launched by ``mpiexec`` or
``srun``.

Needs the optional extra ``pip install "fastrnn[mpi]"`` (mpi4py and an MPI runtime from PyPI);
``import fastrnn`` never imports this module or mpi4py, and importing it does not initialise MPI
either: MPI starts at the first call that needs a communicator.

The pattern (``examples/char_lm.py --distributed`` is the complete program)::

    from fastrnn import distributed as dist

    dist.init()                                   # a rank that raises stops every rank
    model = dist.DistributedDataParallel(model)   # same weights on every rank (rank 0's)
    opt = fastrnn.Adam(model.parameters())
    data = dist.batchify(token_ids, 32)           # this rank's columns of the global batch
    for x, y in zip(tbptt_chunks(data[:-1], 64), tbptt_chunks(data[1:], 64)):
        logits, state = model(x, state)
        loss = criterion(logits, y)
        model.backward(criterion.backward(), num_samples=y.size)  # grads averaged on all ranks
        clip_grad_norm_(model.parameters(), 1.0)  # the global norm: every rank has the average
        opt.step(); opt.zero_grad()
    dist.save_checkpoint("ckpt.npz", model, opt)  # rank 0 writes; resumes on any world size

Every rank holds the whole model and optimizer state and computes the gradient of its shard of
the batch; :class:`DistributedDataParallel` averages the gradients with MPI all-reduces, started
bucket by bucket while the backward of the lower layers is still running, so that the
optimizer step sees on every rank the gradient of the whole batch, and the weights stay
identical without further communication.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import traceback
from collections.abc import Iterator
from typing import Any

import numpy as np

from fastrnn import checkpoint as _checkpoint
from fastrnn import utils as _utils
from fastrnn.nn.module import Module, Parameter
from fastrnn.optim.optimizer import Optimizer

__all__ = [
    "DistributedDataParallel",
    "batchify",
    "broadcast_object",
    "get_rank",
    "get_world_size",
    "init",
    "local_world_size",
    "load_checkpoint",
    "save_checkpoint",
    "seed_generators",
    "shard",
    "shard_indices",
    "shard_slice",
]


def _mpi() -> Any:
    try:
        from mpi4py import MPI
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "fastrnn.distributed needs mpi4py and an MPI runtime: pip install 'fastrnn[mpi]' "
            "(mpi4py plus the mpich wheel), or mpi4py built against your cluster's MPI"
        ) from e
    return MPI


def _comm(comm: Any = None) -> Any:
    """``comm``, or ``MPI.COMM_WORLD`` when None."""
    return _mpi().COMM_WORLD if comm is None else comm


def get_rank(comm: Any = None) -> int:
    """This process's rank in ``comm`` (default ``MPI.COMM_WORLD``)."""
    return int(_comm(comm).Get_rank())


def get_world_size(comm: Any = None) -> int:
    """The number of ranks in ``comm`` (default ``MPI.COMM_WORLD``)."""
    return int(_comm(comm).Get_size())


def local_world_size(comm: Any = None) -> int:
    """The number of ranks of ``comm`` on this machine (sharing its cores and memory).

    Divide the cores by it to choose each rank's kernel threads
    (:func:`fastrnn.set_num_threads`): ranks that each use every core oversubscribe them.
    """
    MPI = _mpi()
    local = _comm(comm).Split_type(MPI.COMM_TYPE_SHARED)
    try:
        return int(local.Get_size())
    finally:
        local.Free()


def _rank_size(comm: Any) -> tuple[int, int]:
    c = _comm(comm)
    return int(c.Get_rank()), int(c.Get_size())


# -- a failing rank stops every rank ---------------------------------------------------------
_installed_comm: Any = None
# How long a failing rank waits, after printing why, before it aborts the job.
_ABORT_GRACE_SECONDS = 0.5


def _abort_excepthook(exc_type: type, exc: BaseException, tb: Any) -> None:
    comm = _installed_comm
    try:
        rank, size = int(comm.Get_rank()), int(comm.Get_size())
    except Exception:  # pragma: no cover - MPI already gone
        rank, size = -1, -1
    text = "".join(traceback.format_exception(exc_type, exc, tb))
    sys.stderr.write(
        f"{text}fastrnn.distributed: rank {rank} of {size} (pid {os.getpid()}) raised "
        f"{exc_type.__name__}: {exc}; aborting all {size} ranks\n"
    )
    sys.stderr.flush()
    if size > 1:
        # MPI_Abort races the launcher's forwarding of this rank's stderr: seen in CI, mpiexec
        # (hydra) killed the job before the message above reached its output. A short pause
        # lets the launcher forward it first.
        time.sleep(_ABORT_GRACE_SECONDS)
        comm.Abort(1)  # the launcher (mpiexec, srun) kills every rank of the job
    sys.__excepthook__(exc_type, exc, tb)  # pragma: no cover - single rank


def init(comm: Any = None) -> Any:
    """Initialise MPI and make an uncaught exception on any rank stop every rank.

    Installs a :data:`sys.excepthook` that prints the traceback and
    ``fastrnn.distributed: rank R of N (pid P) raised ...`` to stderr, then calls
    ``comm.Abort(1)``: the launcher (``mpiexec``, ``srun``) then kills the other ranks within
    seconds, instead of leaving them blocked in an all-reduce until the job's time limit.
    Call it first thing in a training script; :class:`DistributedDataParallel` calls it too.

    Parameters
    ----------
    comm : mpi4py.MPI.Comm, optional
        Default ``MPI.COMM_WORLD``.

    Returns
    -------
    mpi4py.MPI.Comm
        The communicator.
    """
    global _installed_comm
    comm = _comm(comm)
    _installed_comm = comm
    sys.excepthook = _abort_excepthook
    return comm


def broadcast_object(obj: Any, root: int = 0, comm: Any = None) -> Any:
    """``obj`` of rank ``root`` on every rank (pickled; for small values such as a decision).

    Use it for whatever must be the same on every rank but is computed from something that is
    not, such as the time elapsed: a time budget checked on each rank's own clock would stop
    the ranks at different steps and leave the others waiting in an all-reduce.
    """
    return _comm(comm).bcast(obj, root=root)


# -- sharding ----------------------------------------------------------------------------------
def shard_slice(n: int, rank: int, world_size: int) -> slice:
    """The contiguous part of ``range(n)`` that ``rank`` of ``world_size`` owns.

    ``np.array_split``'s rule: the first ``n % world_size`` ranks own one item more, so the
    parts differ by at most one and, concatenated in rank order, give ``range(n)``.

    Raises
    ------
    ValueError
        If ``world_size < 1``, ``rank`` is not in ``[0, world_size)`` or ``n < 0``.
    """
    for name, v in (("n", n), ("rank", rank), ("world_size", world_size)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    q, r = divmod(int(n), int(world_size))
    start = rank * q + min(rank, r)
    return slice(start, start + q + (rank < r))


def shard(x: Any, axis: int = 0, comm: Any = None) -> np.ndarray:
    """This rank's contiguous part of ``x`` along ``axis`` (a view; see :func:`shard_slice`).

    For an array of sequences ``(N, T, F)`` use ``axis=0``; for a time-major batch
    ``(T, B, ...)`` use ``axis=1``. Parts may differ by one item: pass ``num_samples`` to
    :meth:`DistributedDataParallel.backward` so that the average weights each rank by its
    share.
    """
    arr = np.asarray(x)
    if arr.ndim == 0:
        raise ValueError("x must have at least one dimension, got a scalar")
    if not -arr.ndim <= axis < arr.ndim:
        raise ValueError(f"axis {axis} is out of range for x of shape {arr.shape}")
    rank, size = _rank_size(comm)
    index = [slice(None)] * arr.ndim
    index[axis] = shard_slice(arr.shape[axis], rank, size)
    return arr[tuple(index)]


def batchify(data: Any, batch_size: int, *, batch_first: bool = False, comm: Any = None):
    """This rank's streams of :func:`fastrnn.utils.batchify` ``(data, batch_size)``.

    ``batch_size`` is the global number of streams: rank ``r`` gets the columns
    ``shard_slice(batch_size, r, world_size)`` of the single-process result, so the ranks
    together read exactly what one process would, for any world size (which is what lets a
    run resume from a checkpoint on another number of ranks). Chunk the result with
    :func:`fastrnn.utils.tbptt_chunks` as usual.

    Returns
    -------
    ndarray of shape (n, b, ...) or (b, n, ...) with ``batch_first``
        ``b`` of this rank's streams (a view); ``b`` may be 0 when ``batch_size`` is smaller
        than the world size.
    """
    full = _utils.batchify(data, batch_size, batch_first=batch_first)
    return shard(full, axis=0 if batch_first else 1, comm=comm)


def shard_indices(
    n: int, *, shuffle: bool = False, seed: int = 0, epoch: int = 0, comm: Any = None
) -> np.ndarray:
    """This rank's indices of a data set of ``n`` items for one epoch (a distributed sampler).

    With ``shuffle``, every rank draws the same permutation of ``range(n)`` from ``(seed,
    epoch)`` and takes its contiguous part (:func:`shard_slice`): the ranks together cover
    each item exactly once per epoch, in an order that changes with ``epoch``. Without it,
    rank ``r`` gets ``range(n)[shard_slice(n, r, world_size)]``.
    """
    rank, size = _rank_size(comm)
    order = np.arange(n)
    if shuffle:
        order = np.random.default_rng([int(seed), int(epoch)]).permutation(n)
    return order[shard_slice(n, rank, size)]


def seed_generators(model: Module, seed: int, comm: Any = None) -> None:
    """Reseed every random generator of ``model`` (dropout masks) from ``(seed, rank, k)``.

    Each module's ``generator`` attribute (the recurrent layers' inter-layer dropout and
    :class:`fastrnn.Dropout`) becomes ``np.random.default_rng([seed, rank, k])``, ``k`` its
    position in :meth:`~fastrnn.nn.Module.modules`: the masks differ between ranks (each rank
    drops different units of its own samples, as one process would over the whole batch) and
    between modules, and a run with the same seed and world size repeats exactly.
    """
    rank, _ = _rank_size(comm)
    m = model.module if isinstance(model, DistributedDataParallel) else model
    for k, mod in enumerate(m.modules()):
        if isinstance(getattr(mod, "generator", None), np.random.Generator):
            object.__setattr__(mod, "generator", np.random.default_rng([int(seed), rank, k]))


# -- checkpoints --------------------------------------------------------------------------------
def _unwrap(model: Any) -> Any:
    return model.module if isinstance(model, DistributedDataParallel) else model


def save_checkpoint(
    path: Any, model: Module, optimizer: Optimizer | None = None, *, comm: Any = None, **extra: Any
) -> None:
    """:func:`fastrnn.save_checkpoint` on rank 0 only, then every rank returns together.

    The file is the single-process one (a :class:`DistributedDataParallel` is unwrapped, so the
    parameter names carry no ``module.`` prefix), written atomically. The model and optimizer
    state are the same on every rank, so the file resumes on any number of ranks, one
    included (:func:`load_checkpoint`, or :func:`fastrnn.load_checkpoint` without MPI).

    Raises
    ------
    RuntimeError
        On every rank, naming rank 0's error, when rank 0 failed to write the file.
    """
    c = _comm(comm)
    error = None
    if c.Get_rank() == 0:
        try:
            _checkpoint.save_checkpoint(path, _unwrap(model), optimizer, **extra)
        except Exception as e:
            error = f"{type(e).__name__}: {e}"
    error = c.bcast(error, root=0)
    if error is not None:
        raise RuntimeError(f"save_checkpoint: rank 0 could not write {os.fspath(path)}: {error}")


def load_checkpoint(
    path: Any, model: Module, optimizer: Optimizer | None = None, *, comm: Any = None
) -> dict[str, Any]:
    """:func:`fastrnn.load_checkpoint` on every rank (the file must be readable by all).

    Returns the saved extra values. The ranks synchronise before reading, so a file that rank 0
    has just written is complete.
    """
    c = _comm(comm)
    c.Barrier()
    return _checkpoint.load_checkpoint(path, _unwrap(model), optimizer)


# -- data-parallel wrapper ----------------------------------------------------------------------
class _Bucket:
    """Parameters whose gradients are all-reduced together, through one flat buffer."""

    __slots__ = ("buffer", "index", "params", "request", "sizes")

    def __init__(self, index: int, params: list[Parameter]) -> None:
        self.index = index
        self.params = params
        self.sizes = [p.data.size for p in params]
        self.buffer = np.empty(sum(self.sizes), dtype=params[0].data.dtype)
        self.request: Any = None


class DistributedDataParallel(Module):
    """Data parallelism for any :mod:`fastrnn.nn` model, over MPI (torch's name and contract).

    Calling the wrapper runs ``module``'s forward. Its :meth:`backward` runs ``module``'s
    backward and leaves every parameter's ``grad`` averaged over the ranks, in place: each rank
    then holds the gradient of the whole (global) batch, and identical optimizer steps keep the
    weights identical. The gradients are all-reduced in buckets of about ``bucket_cap_mb``,
    each started (``MPI.Iallreduce``) as soon as the backward has made all of its gradients
    final: the top layers of a network finish first, so their reduction runs while the lower
    layers still backpropagate.

    Parameters
    ----------
    module : Module
        The model: its ``backward`` must accumulate into its parameters' ``grad`` (every
        :mod:`fastrnn.nn` module does, and calls the parameters' post-accumulate hooks, which
        is what starts the buckets early; a parameter written without hooks is reduced at the
        end of the backward).
    comm : mpi4py.MPI.Comm, optional
        Default ``MPI.COMM_WORLD``.
    bucket_cap_mb : float, default=1.0
        Bucket size in MiB; smaller buckets start sooner but cost more messages.
    broadcast_parameters : bool, default=True
        Copy rank 0's parameters to every rank now, so that all start from the same weights.
    abort_on_error : bool, default=True
        Call :func:`init`: an uncaught exception on any rank stops every rank.
    timeout : float, optional
        Seconds to wait for the all-reduces at the end of a backward before raising
        ``TimeoutError`` naming this rank (another rank hangs or stopped calling backward);
        None waits forever (a rank that dies makes the launcher stop the job anyway).

    Attributes
    ----------
    module : Module
    comm : mpi4py.MPI.Comm
    rank, world_size : int
    stats : dict
        Of the last synchronised backward: ``bytes`` all-reduced by this rank, ``buckets``,
        ``buckets_started_early`` (during the module's backward), ``backward_seconds`` (the
        module's backward, bucket starts included), ``comm_seconds`` (packing, starting,
        waiting and unpacking: the time spent on communication outside the module's backward
        compute) and ``wait_seconds`` (the part spent waiting for the network after the
        backward).

    Notes
    -----
    As in torch, the wrapper's ``named_parameters`` and ``state_dict`` names carry a
    ``module.`` prefix; :func:`save_checkpoint` saves the unwrapped module, so its files are
    the single-process ones.

    Every rank must call :meth:`backward` the same number of times (collectives are matched in
    order). Buckets are laid out after the first backward, in the order rank 0 saw the
    gradients arrive; that backward reduces everything at its end. If a parameter receives a
    gradient after its bucket has started (a model whose graph changes between steps), the
    backward raises ``RuntimeError``; wrap such steps in :meth:`no_sync` and call a last
    backward outside it.
    """

    def __init__(
        self,
        module: Module,
        comm: Any = None,
        *,
        bucket_cap_mb: float = 1.0,
        broadcast_parameters: bool = True,
        abort_on_error: bool = True,
        timeout: float | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(module, Module):
            raise TypeError(f"module must be a fastrnn Module, got {type(module).__name__}")
        if isinstance(module, DistributedDataParallel):
            raise TypeError("module is already a DistributedDataParallel")
        if not (isinstance(bucket_cap_mb, (int, float)) and bucket_cap_mb > 0):
            raise ValueError(f"bucket_cap_mb must be a positive number, got {bucket_cap_mb!r}")
        if timeout is not None and not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds or None, got {timeout}")
        self.module = module
        c = init(comm) if abort_on_error else _comm(comm)
        object.__setattr__(self, "comm", c)
        object.__setattr__(self, "rank", int(c.Get_rank()))
        object.__setattr__(self, "world_size", int(c.Get_size()))
        object.__setattr__(self, "_cap", int(bucket_cap_mb * 2**20))
        object.__setattr__(self, "_timeout", timeout)
        params = list(module.parameters())
        object.__setattr__(self, "_params", params)
        self._check_same_model(params)
        if broadcast_parameters and self.world_size > 1:
            for p in params:
                c.Bcast(p.data, root=0)
                p._bump_version()
        object.__setattr__(self, "_buckets", None)  # laid out after the first backward
        object.__setattr__(self, "_sync", True)
        object.__setattr__(self, "stats", {})

    # -- set-up ------------------------------------------------------------------------------------
    def _check_same_model(self, params: list[Parameter]) -> None:
        sig = [(n, p.data.shape, p.data.dtype.str) for n, p in self.module.named_parameters()]
        sigs = self.comm.allgather(sig)
        for r, s in enumerate(sigs):
            if s != sigs[0]:
                diff = next(
                    (a, b) for a, b in zip(s + [None], sigs[0] + [None], strict=False) if a != b
                )
                raise ValueError(
                    f"DistributedDataParallel: the model of rank {r} differs from rank 0's "
                    f"(first difference: rank {r} has {diff[0]}, rank 0 has {diff[1]})"
                )

    def _layout(self, order: list[int], breaks: set[int]) -> list[_Bucket]:
        """Buckets over the parameters in ``order`` (indices): a new one at ``_cap`` bytes, at a
        change of dtype, and before each parameter in ``breaks``."""
        buckets: list[_Bucket] = []
        cur: list[Parameter] = []
        size = 0
        for i in order:
            p = self._params[i]
            if cur and (
                i in breaks or p.data.dtype != cur[0].data.dtype or size + p.data.nbytes > self._cap
            ):
                buckets.append(_Bucket(len(buckets), cur))
                cur, size = [], 0
            cur.append(p)
            size += p.data.nbytes
        if cur:
            buckets.append(_Bucket(len(buckets), cur))
        return buckets

    # -- forward / backward ------------------------------------------------------------------------
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """``module(*args, **kwargs)``."""
        return self.module(*args, **kwargs)

    @contextlib.contextmanager
    def no_sync(self) -> Iterator[None]:
        """Backwards inside accumulate local gradients only (gradient accumulation).

        The next backward outside the block averages the sum of everything accumulated.
        """
        old = self._sync
        object.__setattr__(self, "_sync", False)
        try:
            yield
        finally:
            object.__setattr__(self, "_sync", old)

    def backward(self, *args: Any, num_samples: float | None = None, **kwargs: Any) -> Any:
        """``module.backward(*args, **kwargs)``, then average the gradients over the ranks.

        Parameters
        ----------
        *args, **kwargs
            Passed to ``module.backward``.
        num_samples : float, optional
            The number of samples (loss terms) of this rank's shard when the loss is a mean
            over it. The average is then weighted by each rank's share, ``sum_r n_r g_r /
            sum_r n_r``: exactly the gradient of the mean over the global batch, also when the
            shards differ in size. None: the plain mean over the ranks (equal shards).

        Returns
        -------
        Whatever ``module.backward`` returns.
        """
        if not self._sync or self.world_size == 1:
            return self.module.backward(*args, **kwargs)
        if num_samples is None:
            n = None
        else:
            n = float(num_samples)
            if not (np.isfinite(n) and n >= 0):
                raise ValueError(f"num_samples must be a finite number >= 0, got {num_samples!r}")
        return self._synced_backward(n, args, kwargs)

    def _synced_backward(self, n: float | None, args: tuple, kwargs: dict) -> Any:
        MPI = _mpi()
        # Each rank sends n_r * g_r and divides the sum by N = sum_r n_r (the world size when
        # n is None); N is reduced alongside the gradients, without a blocking call.
        weight = 1.0 if n is None else n
        total = np.array([self.world_size if n is None else n], dtype=np.float64)
        total_request = None
        if n is not None:
            total_request = self.comm.Iallreduce(MPI.IN_PLACE, total, op=MPI.SUM)
        params = self._params
        first = self._buckets is None
        state = {"launched": 0, "early": 0, "comm": 0.0}
        arrivals: list[tuple[int, float]] = []
        index = {id(p): i for i, p in enumerate(params)}
        counts = [0] * len(params)
        if not first:
            bucket_of = self._bucket_of
            remaining = [len(b.params) for b in self._buckets]
            expected = self._expected

        def launch(b: _Bucket) -> None:
            t0 = time.perf_counter()
            off = 0
            for p, size in zip(b.params, b.sizes, strict=True):
                dst = b.buffer[off : off + size]
                if p.grad is None:
                    dst.fill(0)
                elif weight == 1.0:
                    dst[...] = p.grad.reshape(-1)
                else:
                    np.multiply(p.grad.reshape(-1), weight, out=dst)
                off += size
            b.request = self.comm.Iallreduce(MPI.IN_PLACE, b.buffer, op=MPI.SUM)
            state["launched"] += 1
            state["comm"] += time.perf_counter() - t0

        def hook(p: Parameter) -> None:
            i = index[id(p)]
            counts[i] += 1
            if first:
                arrivals.append((i, time.perf_counter()))
                return
            bi = bucket_of[i]
            if bi < state["launched"]:
                raise RuntimeError(
                    f"DistributedDataParallel (rank {self.rank}): a parameter of bucket {bi} "
                    "received a gradient after its all-reduce had started (it was used more "
                    "often than in the first backward); use no_sync() for such steps"
                )
            if counts[i] == expected[i]:
                remaining[bi] -= 1
            # Start buckets strictly in order (every rank must issue the same sequence).
            while state["launched"] < len(self._buckets) and remaining[state["launched"]] == 0:
                launch(self._buckets[state["launched"]])
                state["early"] += 1
            pending = [b.request for b in self._buckets[: state["launched"]]]
            if pending:
                MPI.Request.Testall(pending)  # let MPI progress the started reductions

        handles = [p.register_post_accumulate_grad_hook(hook) for p in params]
        t0 = time.perf_counter()
        try:
            result = self.module.backward(*args, **kwargs)
        finally:
            for h in handles:
                h.remove()
        t_backward = time.perf_counter() - t0

        if first:
            # The order rank 0 saw the gradients become final (their last arrival), then the
            # rest; a bucket also ends where the backward computed for a while (more than 5%
            # of it) before the next gradient came (between two layers, for instance), so that
            # it starts then. Broadcast: every rank must lay out the same buckets.
            last = {i: (k, t) for k, (i, t) in enumerate(arrivals)}
            seen = sorted(last, key=lambda i: last[i][0])
            breaks = {
                b
                for a, b in zip(seen, seen[1:], strict=False)
                if last[b][1] - last[a][1] > 0.05 * t_backward
            }
            order = seen + [i for i in range(len(params)) if i not in last]
            order, breaks, expected_counts = self.comm.bcast((order, breaks, counts), root=0)
            buckets = self._layout(order, breaks)
            bucket_of = [0] * len(params)
            for b in buckets:
                for p in b.params:
                    bucket_of[index[id(p)]] = b.index
            object.__setattr__(self, "_buckets", buckets)
            object.__setattr__(self, "_bucket_of", bucket_of)
            # A parameter never announced by a hook is only complete at the end.
            object.__setattr__(self, "_expected", [c if c > 0 else -1 for c in expected_counts])

        t1 = time.perf_counter()
        buckets = self._buckets
        early = state["early"]
        for b in buckets[state["launched"] :]:
            launch(b)
        t_wait = time.perf_counter()
        self._wait([b.request for b in buckets] + ([total_request] if total_request else []))
        t_wait = time.perf_counter() - t_wait
        if not total[0] > 0:
            raise ValueError("num_samples is 0 on every rank: no gradient to average")
        scale = 1.0 / float(total[0])
        nbytes = 0
        for b in buckets:
            b.request = None
            off = 0
            for p, size in zip(b.params, b.sizes, strict=True):
                src = b.buffer[off : off + size].reshape(p.data.shape)
                if p.grad is None:
                    p.grad = np.empty_like(p.data)
                np.multiply(src, scale, out=p.grad)
                off += size
            nbytes += b.buffer.nbytes
        t_end = time.perf_counter()
        self.stats.clear()
        self.stats.update(
            bytes=nbytes,
            buckets=len(buckets),
            buckets_started_early=early,
            backward_seconds=t_backward,
            # the starts made during the backward (packing, Iallreduce) and everything after
            # it: the remaining starts, the wait and the unpacking
            comm_seconds=state["comm"] + (t_end - t1),
            wait_seconds=t_wait,
        )
        return result

    def _wait(self, requests: list[Any]) -> None:
        """Wait for ``requests``, polling, so that a ``timeout`` can name this rank."""
        MPI = _mpi()
        if self._timeout is None:
            MPI.Request.Waitall(requests)
            return
        deadline = time.monotonic() + self._timeout
        pause = 0.0
        while not MPI.Request.Testall(requests):
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"DistributedDataParallel: rank {self.rank} of {self.world_size} waited "
                    f"more than {self._timeout} s for the gradient all-reduce; another rank "
                    "is stuck or stopped calling backward"
                )
            time.sleep(pause)
            pause = min(2 * pause + 1e-5, 1e-3)

    def extra_repr(self) -> str:
        return f"world_size={self.world_size}"
