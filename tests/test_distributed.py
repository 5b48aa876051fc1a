"""fastrnn.distributed (MPI) and DDP through fastrnn.torch, in processes this test starts.

The multi-process tests launch ``mpiexec -n N python tests/mpi_worker.py ...`` (or two Python
processes for torch.distributed) with a time limit: on timeout the whole process group is
killed and the test fails with the output so far. They skip when mpi4py or ``mpiexec`` is
missing, unless ``FASTRNN_REQUIRE_MPI=1`` (set by .ci/run), where they fail instead.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import fastrnn
from fastrnn import distributed as dist
from fastrnn.nn import Embedding, Linear
from fastrnn.stack import StackConfig, default_init, stack_backward, stack_forward

# Each test starts MPI or torch.distributed processes: the inner loop (-m "not slow") skips them.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
CELLS = ("lstm", "gru", "rnn")
DTYPES = ("float64", "float32")
TOL = {"float64": 1e-10, "float32": 1e-5}


def _mpiexec() -> str | None:
    """The mpiexec beside this Python (the mpich wheel's), else the first on PATH."""
    local = Path(sys.executable).parent / "mpiexec"
    return str(local) if local.exists() else shutil.which("mpiexec")


def _require(ok: bool, why: str) -> None:
    if not ok:
        if os.environ.get("FASTRNN_REQUIRE_MPI") == "1":
            pytest.fail(f"FASTRNN_REQUIRE_MPI=1 but {why}")
        pytest.skip(why)


def _need_mpi() -> str:
    _require(importlib.util.find_spec("mpi4py") is not None, "mpi4py is not installed")
    exe = _mpiexec()
    _require(exe is not None, "no mpiexec found (pip install 'fastrnn[mpi]')")
    return exe


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["OMP_NUM_THREADS"] = "1"  # N ranks share 2 cores
    env["OPENBLAS_NUM_THREADS"] = "1"
    return env


def _run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    """Run ``cmd`` in its own process group; kill the group when ``timeout`` passes."""
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"{' '.join(cmd)} did not finish within {timeout} s; output:\n{out}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, None)


def _mpirun(n: int, mode: str, outdir: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    exe = _need_mpi()
    cmd = [exe, "-n", str(n), sys.executable, str(TESTS / "mpi_worker.py"), mode, str(outdir)]
    return _run(cmd, timeout)


def _ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, f"{' '.join(result.args)} failed:\n{result.stdout}"


# -- runs shared by several tests -------------------------------------------------------------
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Outputs of the MPI runs, launched on first use (world size 2 first: it saves the
    checkpoint that the resume runs read)."""
    outdir = tmp_path_factory.mktemp("mpi")
    done: dict[tuple[str, int], dict] = {}

    def get(mode: str, n: int) -> dict:
        if (mode, n) not in done:
            if mode == "resume":
                get("train", 2)
            _ok(_mpirun(n, mode, outdir))
            with np.load(outdir / f"{mode}-{n}.npz") as f:
                done[mode, n] = dict(f)
        return done[mode, n]

    return get


def _max_diff(d: dict, prefix: str, a: str, b: str) -> tuple[float, int]:
    keys = [k for k in d if k.startswith(f"{prefix}{a}/")]
    diffs = [np.abs(d[k] - d[k.replace(f"{prefix}{a}/", f"{prefix}{b}/", 1)]).max() for k in keys]
    return float(max(diffs)), len(keys)


# -- MPI: data parallel equals one process on the whole batch -------------------------------------
@pytest.mark.parametrize("world_size", [2, 3])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cell", CELLS)
def test_mpi_matches_single_process(runs, world_size, cell, dtype):
    """Adam + clip_grad_norm_ over uneven shards (7 sequences on 2 or 3 ranks), started from
    different weights on each rank: the weights after 4 steps are those of one process
    training on the concatenated batch, and identical on every rank."""
    d = runs("train", world_size)
    tag = f"{cell}/{dtype}/"
    diff, n = _max_diff(d, tag, "dist", "ref")
    assert n >= 5  # embedding, recurrent weights, head
    assert diff <= TOL[dtype], f"{cell} {dtype} on {world_size} ranks: max |diff| {diff}"
    assert bool(d[tag + "ranks_equal"])
    # the clipping saw the global norm of the averaged gradient, and clipped every step
    np.testing.assert_allclose(d[tag + "norms"], d[tag + "ref_norms"], rtol=1e-4)
    assert (d[tag + "norms"] > 0.05).all()


def test_mpi_overlap_and_stats(runs):
    """Buckets start during the backward (before the last gradient arrives)."""
    d = runs("train", 2)
    assert d["local_world_size"] == 2  # both ranks on this machine
    for cell in CELLS:
        tag = f"{cell}/float64/stats/"
        n_params = sum(1 for k in d if k.startswith(f"{cell}/float64/dist/"))
        assert d[tag + "buckets"] >= 2
        assert d[tag + "buckets_started_early"] == d[tag + "buckets"]
        want = sum(d[k].nbytes for k in d if k.startswith(f"{cell}/float64/dist/"))
        assert d[tag + "bytes"] == want, n_params
        assert 0 <= d[tag + "wait_seconds"] <= d[tag + "comm_seconds"]


@pytest.mark.parametrize("world_size", [1, 3])
def test_mpi_resume_on_another_world_size(runs, world_size):
    """A checkpoint written by rank 0 at world size 2 resumes at world size 1 and 3: the
    weights after the remaining steps equal those of an uninterrupted single-process run."""
    d = runs("resume", world_size)
    diff, n = _max_diff(d, "", "dist", "ref")
    assert n >= 5 and diff <= 1e-10, diff


def _timed_failure(mode: str, n: int, tmp_path: Path) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.monotonic()
    result = _mpirun(n, mode, tmp_path, timeout=60)
    return result, time.monotonic() - t0


def test_mpi_failing_rank_stops_all(tmp_path):
    """Rank 1 raises at its third step while ranks 0 and 2 wait in the all-reduce: the job
    exits non-zero within 30 s and the output names rank 1."""
    result, seconds = _timed_failure("fail", 3, tmp_path)
    assert result.returncode != 0, result.stdout
    assert seconds < 30, seconds
    assert "fastrnn.distributed: rank 1 of 3" in result.stdout, result.stdout
    assert "simulated failure" in result.stdout


def test_mpi_hung_rank_times_out(tmp_path):
    """Rank 1 stops calling backward: with timeout=3 the others raise TimeoutError naming
    themselves, and the job ends non-zero within 30 s."""
    result, seconds = _timed_failure("hang", 2, tmp_path)
    assert result.returncode != 0, result.stdout
    assert seconds < 30, seconds
    assert "TimeoutError" in result.stdout and "rank 0 of 2 waited" in result.stdout


def test_char_lm_example_distributed_matches_single_process():
    """``mpiexec -n 2 python examples/char_lm.py --distributed`` reports the losses of the
    single-process run (the same steps on the same global batch)."""
    exe = _need_mpi()
    args = [str(ROOT / "examples" / "char_lm.py"), "--quick", "--steps", "4"]
    single = _run([sys.executable, *args], timeout=120)
    multi = _run([exe, "-n", "2", sys.executable, *args, "--distributed"], timeout=120)
    _ok(single)
    _ok(multi)

    def losses(out: str) -> list[str]:
        return [ln for ln in out.splitlines() if ln.startswith(("train loss", "val loss"))]

    assert len(losses(single.stdout)) == 2
    assert losses(multi.stdout) == losses(single.stdout), multi.stdout
    assert "distributed 2 ranks x 1 threads" in multi.stdout
    assert multi.stdout.count("== char_lm") == 1  # rank 0 prints the summary


# -- torch.distributed: DDP over gloo with patched modules ---------------------------------------
def test_torch_ddp_patched_matches_unpatched(tmp_path):
    """A model whose LSTM/GRU/RNN run on fastrnn, trained under torch's DistributedDataParallel
    (gloo, 2 processes, equal shards), ends with the weights of the unpatched model trained in
    one process on the whole batch."""
    if importlib.util.find_spec("torch") is None:
        pytest.skip("torch is not installed")
    # a rendezvous file, not a TCP port picked here and bound later by the workers, which
    # another process could take in between
    init = (tmp_path / "rendezvous").as_uri()
    worker = str(TESTS / "torch_ddp_worker.py")
    procs = [
        subprocess.Popen(
            [sys.executable, worker, str(rank), "2", init, str(tmp_path)],
            cwd=ROOT,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        for rank in range(2)
    ]
    outputs = []
    deadline = time.monotonic() + 180
    try:
        for p in procs:
            out, _ = p.communicate(timeout=max(deadline - time.monotonic(), 1))
            outputs.append(out)
    except subprocess.TimeoutExpired:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
        pytest.fail("the torch.distributed workers did not finish within 180 s")
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == 0, out
    with np.load(tmp_path / "torch-ddp.npz") as f:
        d = dict(f)
    for cell in CELLS:
        for dtype in DTYPES:
            diff, n = _max_diff(d, f"{cell}/{dtype}/", "ddp", "ref")
            assert n >= 5 and diff <= TOL[dtype], f"{cell} {dtype}: max |diff| {diff}"


# -- in one process: hooks, sharding, seeding ---------------------------------------------------
def test_import_fastrnn_never_imports_distributed_or_mpi4py():
    code = (
        "import sys, fastrnn; "
        "assert 'fastrnn.distributed' not in sys.modules, 'fastrnn.distributed'; "
        "assert 'mpi4py' not in sys.modules, 'mpi4py'; "
        "import fastrnn.distributed; assert 'mpi4py' not in sys.modules, 'mpi4py (lazy)'"
    )
    result = _run([sys.executable, "-c", code], timeout=60)
    assert result.returncode == 0, result.stdout


def test_post_accumulate_grad_hooks_fire_layer_by_layer():
    """The recurrent layers hand over each layer's gradients as soon as they are final, top
    layer first; Linear and Embedding call the hooks too; remove() unregisters."""
    rng = np.random.default_rng(0)
    lstm = fastrnn.LSTM(4, 5, num_layers=3, bidirectional=True, seed=0)
    head, embed = Linear(10, 3, seed=1), Embedding(7, 4, seed=2)
    names = {id(p): n for m in (lstm, head, embed) for n, p in m.named_parameters()}
    seen: list[str] = []
    handles = [
        p.register_post_accumulate_grad_hook(lambda p: seen.append(names[id(p)]))
        for m in (lstm, head, embed)
        for p in m.parameters()
    ]
    ids = rng.integers(7, size=(6, 2))
    out = head(lstm(embed(ids))[0])
    embed.backward(lstm.backward(head.backward(np.ones_like(out)))[0])
    layers = [int(n.split("_l")[1][0]) for n in seen if "_l" in n]
    assert seen[:2] == ["weight", "bias"] and seen[-1] == "weight"
    assert layers == sorted(layers, reverse=True) and set(layers) == {0, 1, 2}
    assert len(seen) == 2 + len(list(lstm.parameters())) + 1
    for h in handles:
        h.remove()
        h.remove()  # idempotent
    seen.clear()
    out = head(lstm(embed(ids))[0])
    embed.backward(lstm.backward(head.backward(np.ones_like(out)))[0])
    assert seen == []
    with pytest.raises(TypeError, match="hook must be callable"):
        head.weight.register_post_accumulate_grad_hook(3)


def test_stack_backward_on_layer_grads_matches_result():
    cfg = StackConfig("gru", 3, 4, num_layers=2, bidirectional=True)
    w = default_init(cfg, np.float64, np.random.default_rng(0))
    x = np.random.default_rng(1).standard_normal((5, 2, 3))
    y, _, _, cache = stack_forward(cfg, x, None, None, w)
    calls: list[tuple[int, dict]] = []
    g = stack_backward(cache, np.ones_like(y), on_layer_grads=lambda k, d: calls.append((k, d)))
    assert [k for k, _ in calls] == [1, 0]
    merged = {**calls[1][1], **calls[0][1]}
    assert set(merged) == set(g.weights)
    assert all(n.split("_l")[1][0] == str(k) for k, d in calls for n in d)
    for n, v in g.weights.items():
        np.testing.assert_array_equal(merged[n], v)


class _FakeComm:
    """Rank and size only: what the sharding helpers ask of a communicator."""

    def __init__(self, rank: int, size: int) -> None:
        self.rank, self.size = rank, size

    def Get_rank(self) -> int:  # noqa: N802 - mpi4py's name
        return self.rank

    def Get_size(self) -> int:  # noqa: N802
        return self.size


@pytest.mark.parametrize("n", [0, 1, 5, 7, 12])
@pytest.mark.parametrize("size", [1, 2, 3, 5])
def test_shards_cover_everything_once(n, size):
    parts = [shard_range(n, r, size) for r in range(size)]
    assert np.concatenate(parts).tolist() == list(range(n))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    x = np.arange(4 * n).reshape(4, n)
    cols = [dist.shard(x, axis=1, comm=_FakeComm(r, size)) for r in range(size)]
    np.testing.assert_array_equal(np.concatenate(cols, axis=1), x)
    for shuffle in (False, True):
        idx = [
            dist.shard_indices(n, shuffle=shuffle, seed=3, epoch=1, comm=_FakeComm(r, size))
            for r in range(size)
        ]
        assert sorted(np.concatenate(idx).tolist()) == list(range(n))


def shard_range(n: int, rank: int, size: int) -> np.ndarray:
    return np.arange(n)[dist.shard_slice(n, rank, size)]


def test_batchify_shards_are_the_global_columns():
    ids = np.arange(103)
    full = fastrnn.utils.batchify(ids, 8)
    for size in (1, 2, 3):
        parts = [dist.batchify(ids, 8, comm=_FakeComm(r, size)) for r in range(size)]
        np.testing.assert_array_equal(np.concatenate(parts, axis=1), full)
        bf = [dist.batchify(ids, 8, batch_first=True, comm=_FakeComm(r, size)) for r in range(size)]
        np.testing.assert_array_equal(np.concatenate(bf, axis=0), full.T)
    e1 = dist.shard_indices(10, shuffle=True, seed=0, epoch=1, comm=_FakeComm(0, 1))
    e2 = dist.shard_indices(10, shuffle=True, seed=0, epoch=2, comm=_FakeComm(0, 1))
    assert not np.array_equal(e1, e2)


def test_seed_generators_differ_by_rank_and_repeat():
    def masks(rank: int) -> list[np.ndarray]:
        model = fastrnn.nn.Sequential(fastrnn.Dropout(0.5), fastrnn.Dropout(0.5))
        dist.seed_generators(model, 7, comm=_FakeComm(rank, 2))
        x = np.ones((4, 6))
        return [m(x) for m in model]

    a, b, again = masks(0), masks(1), masks(0)
    assert not np.array_equal(a[0], b[0])  # ranks draw different masks
    assert not np.array_equal(a[0], a[1])  # modules too
    for u, v in zip(a, again, strict=True):
        np.testing.assert_array_equal(u, v)  # and a rerun repeats


def test_bad_arguments_name_them():
    with pytest.raises(ValueError, match="world_size"):
        dist.shard_slice(3, 0, 0)
    with pytest.raises(ValueError, match="rank"):
        dist.shard_slice(3, 2, 2)
    with pytest.raises(ValueError, match="n must be"):
        dist.shard_slice(-1, 0, 1)
    with pytest.raises(TypeError, match="n must be an int"):
        dist.shard_slice(2.0, 0, 1)
    with pytest.raises(ValueError, match="axis"):
        dist.shard(np.zeros((2, 3)), axis=2, comm=_FakeComm(0, 1))
    with pytest.raises(TypeError, match="module must be a fastrnn Module"):
        dist.DistributedDataParallel(object())
    with pytest.raises(ValueError, match="bucket_cap_mb"):
        dist.DistributedDataParallel(Linear(2, 2), bucket_cap_mb=0)
    with pytest.raises(ValueError, match="timeout"):
        dist.DistributedDataParallel(Linear(2, 2), timeout=-1)
