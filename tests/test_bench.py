"""Smoke test of ``python -m fastrnn.bench``: tiny shapes, a few milliseconds of timing."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from fastrnn import bench
from fastrnn.bench.__main__ import main

TINY = ["--configs", "6x2x4x16,3x1x3x8", "--repeats", "2", "--min-time", "0.0005"]
TINY += ["--gemm-n", "64", "--threads", "1", "-q"]


def test_report_table_and_json(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main([*TINY, "--quick", "--impls", "fastrnn,numpy", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "GEMM peak (1 thread)" in table
    assert "x fastrnn" in table and "% GEMM" in table
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


def test_implementations_agree_on_the_same_inputs():
    p = bench.make_problem("gru", (4, 2, 3, 16), np.float64)
    fns = bench.implementations(p, ("fastrnn", "numpy", "torch"))
    ys = {k: np.asarray(v["fwd"]()[0] if k != "torch" else v["fwd"]()) for k, v in fns.items()}
    for y in ys.values():
        np.testing.assert_allclose(y, ys["numpy"], rtol=1e-10, atol=1e-12)


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
