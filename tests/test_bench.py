"""fastrnn/bench: ``python -m fastrnn.bench`` on tiny shapes, a few milliseconds of timing."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from fastrnn import bench
from fastrnn.bench.__main__ import main
from fastrnn.cells import CELLS

TINY = ["--configs", "6x2x4x16,3x1x3x8", "--repeats", "2", "--min-time", "0.0005"]
TINY += ["--gemm-n", "64", "--threads", "1", "-q"]


@pytest.mark.slow
def test_report_table_and_json(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main([*TINY, "--quick", "--impls", "fastrnn,numpy", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "GEMM peak (1 thread)" in table
    assert "x fastrnn" in table and "% GEMM" in table and "% roof" in table
    assert "multiply-add roof (1 thread)" in table
    data = json.loads(out.read_text())
    env, rows = data["environment"], data["results"]
    assert env["dtype"] == "float32" and "1" in env["gemm_peak_gflops"]
    assert "omp_wait_policy" in env and env["blas"]
    # 3 cells x 2 shapes x 2 modes x 2 implementations, each a line of the table
    assert len(rows) == 3 * 2 * 2 * 2
    for r in rows:
        assert r["impl"] in ("fastrnn", "numpy")
        assert 0 < r["min_ms"] <= r["median_ms"]
        assert r["gflops"] > 0 and r["gemm_share"] > 0
        assert r["roof_share"] == pytest.approx(r["gflops"] / r["roof_gflops"])
        expected = bench.flops(r["cell"], tuple(r["shape"]), r["mode"]) / r["median_ms"] / 1e6
        assert r["gflops"] == pytest.approx(expected)
        line = f"{r['cell']:5s} {r['config']:8s} {r['mode']:6s}"
        assert line in table
        if r["impl"] == "fastrnn":
            assert r["ratio"] == 1.0


def test_flops_formula():
    # forward 2 T B (I + H) G H; forward + backward three times that
    assert bench.flops("lstm", (10, 2, 3, 5), "fwd") == 2 * 10 * 2 * (3 + 5) * 4 * 5
    assert bench.flops("gru", (10, 2, 3, 5), "fwdbwd") == 3 * 2 * 10 * 2 * (3 + 5) * 3 * 5


def test_fma_roof_bounds_the_blas_gemm():
    """The roof counts 2 FLOPs per lane of each vector multiply-add: a lane width counted too
    small, or chains too few to fill the pipes, would put a real GEMM above it (OpenBLAS
    reaches 50-90% of it where it has kernels for the CPU); one counted too large, or a loop
    the compiler shortened, would put it above what any core retires (at most 4 vector
    multiply-adds a cycle at 6 GHz)."""
    from fastrnn._kernels import _peak

    for dtype in (np.float32, np.float64):
        lanes = _peak.vector_bytes() // np.dtype(dtype).itemsize
        roof = bench.fma_roof(dtype, threads=1, repeats=5, sample_s=0.01)
        gemm = bench.gemm_peak(dtype, threads=1, n=512)
        assert gemm < 1.25 * roof < 1.25 * lanes * 2 * 4 * 6.0, (dtype, gemm, roof)


def test_fma_roof_outgrows_a_slow_start(monkeypatch):
    """A VM may make every parallel region wait for a parked vCPU: with 2 ms of that per call
    (the probe's rate below), the roof still comes out within 10% of the rate of the work."""
    from fastrnn._kernels import _peak

    true_rate, wait = 100.0, 2e-3  # GFLOP/s, seconds per call

    def slow(n_threads, float64=False, iters=1_000_000):
        work = n_threads * iters * 12 * (_peak.vector_bytes() // (8 if float64 else 4)) * 2
        return work / (work / (true_rate * 1e9) + wait) / 1e9

    monkeypatch.setattr(_peak, "fma_rate", slow)
    assert 0.9 * true_rate <= bench.fma_roof(np.float32, threads=2) < true_rate


def test_fma_rate_arguments():
    from fastrnn._kernels import _peak

    assert _peak.vector_bytes() in (16, 32, 64)
    with pytest.raises(ValueError, match="n_threads"):
        _peak.fma_rate(0)
    with pytest.raises(ValueError, match="iters"):
        _peak.fma_rate(1, False, 0)
    assert _peak.fma_rate(2, True, 1_000) > 0


def test_implementations_agree_on_the_same_inputs():
    p = bench.make_problem("gru", (4, 2, 3, 16), np.float64)
    fns = bench.implementations(p, ("fastrnn", "numpy", "torch"))
    ys = {k: np.asarray(v["fwd"]()[0] if k != "torch" else v["fwd"]()) for k, v in fns.items()}
    for y in ys.values():
        np.testing.assert_allclose(y, ys["numpy"], rtol=1e-10, atol=1e-12)


@pytest.mark.slow
def test_plot(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    png = tmp_path / "p.png"
    assert main([*TINY, "--cells", "rnn", "--impls", "fastrnn,numpy", "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    assert main([*TINY, "--plot", str(tmp_path / "p.png")]) == 2
    assert "needs matplotlib" in capsys.readouterr().err


@pytest.mark.parametrize(
    "bad", [["--configs", "huge"], ["--cells", "lstm,xyz"], ["--threads", "0"]]
)
def test_bad_arguments(bad):
    with pytest.raises(SystemExit):
        main(bad)


def test_inference_mode_runs(capsys):
    from fastrnn.bench.__main__ import main

    argv = ["--inference", "--cells", "lstm,gru", "--configs", "4x2x8x16", "--repeats", "1"]
    assert main([*argv, "--min-time", "0.001", "--no-torch"]) == 0
    out = capsys.readouterr().out
    assert "fastrnn-int8" in out and "lstm 4x2x8x16" in out and "Streaming step" in out


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("T", [1, 5])
def test_plain_numpy_matches_the_reference(cell, T):
    from fastrnn import reference
    from fastrnn.bench.plain_numpy import PlainNumpy

    p = bench.make_problem(cell, (T, 3, 4, 6), np.float64, seed=T)
    fwd, bwd = bench.CELLS[cell].functions("numpy")
    states = (None,) * len(bench.CELLS[cell].states)
    out = fwd(p.x, *states, p.w_ih, p.w_hh, p.b_ih, p.b_hh)
    ref = bwd(out[-1], p.dy)
    m = PlainNumpy(cell, p.x, p.w_ih, p.w_hh, p.b_ih, p.b_hh)
    for _ in range(2):  # buffers reused: a second call gives the same numbers
        np.testing.assert_allclose(m.forward(training=True), out[0], rtol=1e-12, atol=1e-13)
        grads = m.backward(p.dy)
        for got, want in zip(
            grads, (ref.dx, ref.dw_ih, ref.dw_hh, ref.db_ih, ref.db_hh), strict=True
        ):
            np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-12)
    assert reference.BACKEND == "numpy"


def test_deepbench_problems_cap_steps_and_keep_deepbench_names():
    probs = bench.deepbench_problems(("training", "inference"), max_steps=30)
    assert len(probs) == len(bench.DEEPBENCH["training"]) + len(bench.DEEPBENCH["inference"])
    for (cell, name, (T, B, I, H), mode), (c, h, b, t) in zip(
        probs, bench.DEEPBENCH["training"] + bench.DEEPBENCH["inference"], strict=True
    ):
        assert (cell, I, H, B, T) == (c, h, h, b, min(t, 30))
        assert name.endswith(f"H{h}B{b}T{t}")
        assert mode == ("fwdbwd" if name.startswith("train") else "fwd")
    uncapped = bench.deepbench_problems(("inference",), max_steps=0)
    assert max(s[2][0] for s in uncapped) == 1500
    with pytest.raises(ValueError, match="unknown DeepBench set"):
        bench.deepbench_problems(("serving",))


def test_deepbench_cli_runs_every_problem_of_a_set(capsys, monkeypatch):
    # shrink the set so that the smoke test takes milliseconds
    monkeypatch.setitem(bench.DEEPBENCH, "inference", (("gru", 16, 1, 3), ("rnn", 8, 2, 80)))
    argv = ["--deepbench", "inference", "--deepbench-steps", "4", "--repeats", "2"]
    argv += ["--min-time", "0.0005", "--settle", "0", "--gemm-n", "64", "--threads", "1", "-q"]
    assert main([*argv, "--impls", "fastrnn,np-plain"]) == 0
    out = capsys.readouterr().out
    assert "infer:H16B1T3" in out and "infer:H8B2T80" in out
    assert "# infer    1 thread  np-plain" in out and "over 2 problems" in out


def test_summarize_geometric_mean():
    rows = [
        bench.Result(
            "lstm", "train:a", (1, 1, 1, 1), "fwdbwd", "float32", 2, "torch", 2, 2, 1, 1, ratio=r
        )  # fmt: skip
        for r in (1.0, 4.0)
    ]
    assert "torch      2.00x (1.00x) over 2 problems" in bench.summarize(rows)


def test_variants_come_from_the_registry():
    """Every option with an example is timed alone; "+all" is a combination the cell takes."""
    from fastrnn.bench.variants import variants

    for cell in CELLS.values():
        found = variants(cell, 16)
        assert next(iter(found)) == cell.name and found[cell.name] == {}
        for o in cell.options:
            assert found[f"{cell.name}+{o.name}"] == {o.name: o.example_for(16)}
        combined = found[f"{cell.name}+all"]
        assert len(combined) >= 2
        cell.check_options(combined)  # raises if the cell refused the combination
    lstm = variants(CELLS["lstm"], 16)["lstm+all"]
    assert set(lstm) == {"peephole", "recurrent_dropout", "zoneout", "return_cell_states"}


def test_variants_mode_runs(capsys):
    from fastrnn.bench.__main__ import main

    argv = ["--variants", "--cells", "lstm,gru", "--configs", "4x2x8x16", "--repeats", "1"]
    assert main([*argv, "--min-time", "0.001", "--settle", "0", "-q"]) == 0
    out = capsys.readouterr().out
    for name in ("lstm+peephole", "lstm+layer_norm", "lstm+all", "gru+zoneout", "gru+all"):
        assert name in out
    assert "lstm: proj_size=8" in out


@pytest.mark.parametrize("bad", [["--cells", "elman"], ["--configs", "huge"], ["--threads", "0"]])
def test_variants_mode_bad_arguments(bad, capsys):
    from fastrnn.bench.__main__ import main

    with pytest.raises(SystemExit):
        main(["--variants", *bad])
    assert "--" in capsys.readouterr().err
