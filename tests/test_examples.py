"""Smoke tests of the scripts in examples/: each main() runs end to end with tiny sizes.

They check that the examples still run against the library and return and print a sensible
summary; the full-size results (accuracy, validation loss) are what the examples themselves
report. All of them together take a few seconds.
"""

from __future__ import annotations

import importlib
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture
def example(monkeypatch):
    """Import an example as the script would see it (examples/ first on sys.path)."""
    monkeypatch.syspath_prepend(str(EXAMPLES))

    def load(name: str):
        return importlib.import_module(name)

    return load


def test_progress_bar_writes_lines_when_not_a_terminal(example):
    bar_mod = example("_progress")
    out = io.StringIO()
    bar = bar_mod.ProgressBar(20, desc="demo", unit=" steps", stream=out)
    for _ in range(20):
        bar.update(loss=0.5, phase="x")
    bar.close()
    lines = out.getvalue().splitlines()
    assert 2 <= len(lines) <= 12  # about one line per tenth, not one per update
    assert lines[-1].startswith("demo [" + "#" * 30 + "] 100%  20/20 steps")
    assert "loss=0.5" in lines[-1] and "phase=x" in lines[-1]


def test_char_lm(example, capsys):
    summary = example("char_lm").main(["--quick", "--steps", "3", "--sample-len", "20"])
    assert summary["steps"] == 3
    # Three Adam steps from a uniform-ish start: still near log(vocab size), but finite.
    assert 0 < summary["val_loss"] < 2 * math.log(100)
    assert summary["sample"].startswith("ROMEO:\n") and len(summary["sample"]) == 7 + 20
    out = capsys.readouterr()
    assert "val loss" in out.out and "nats/char" in out.out
    assert "char_lm [" in out.err  # the progress bar


def test_char_lm_stops_at_its_time_budget(example):
    summary = example("char_lm").main(["--quick", "--max-seconds", "0.5", "--sample-len", "5"])
    assert summary["steps"] >= 1
    assert summary["seconds"] < 10  # the budget plus one step and a small evaluation


def test_forecast(example, capsys):
    forecast = example("forecast")
    summary = forecast.main(["--quick", "--epochs", "2"])
    names = list(summary["results"])
    assert names[0].startswith("naive") and names[1] == "linear regression"
    assert names[2].startswith("GRU")
    for r in summary["results"].values():
        assert np.isfinite([r["price_rmse"], r["return_mse"], r["r2"]]).all()
    assert "price RMSE" in capsys.readouterr().out
    # Seeded: a second run gives the same numbers.
    assert forecast.main(["--quick", "--epochs", "2"])["results"] == summary["results"]


def test_forecast_data_follow_the_documented_model(example):
    rng = np.random.default_rng(0)
    m = example("forecast").make_market(3000, rng)
    assert (m["news"] >= 0).all() and (m["price"] > 0).all() and (m["index"] > 0).all()
    # The price's own lag enters with -0.15: the lag-1 autocorrelation of returns is negative.
    r = m["r"][1:]
    assert np.corrcoef(r[1:], r[:-1])[0, 1] < 0


@pytest.mark.slow
def test_digits(example, capsys):
    pytest.importorskip("sklearn")
    summary = example("digits").main(["--quick", "--epochs", "1"])
    assert summary["n_train"] + summary["n_test"] == 300
    assert 0.0 <= summary["test_accuracy"] <= 1.0
    assert 0.0 <= summary["test_accuracy_int8"] <= 1.0
    assert "int8 weights" in capsys.readouterr().out


@pytest.mark.slow
def test_seed_claims(example, tmp_path, capsys):
    summary = example("seed_claims").main(
        ["--quick", "--steps", "3", "--plot", str(tmp_path / "claims.png")]
    )
    assert set(summary["a"]["final"]) == {"RNN", "LSTM", "GRU"}
    assert set(summary["b"]) == {"no clip", "clip"}
    # (d): the gradient at t = T is the unit vector itself.
    for norms in summary["d"]["norms"].values():
        assert norms[-1] == pytest.approx(1.0, rel=1e-5)
    assert set(summary["e"]["token"]) == {"attention", "no attention"}
    for name in summary["e"]["token"]:
        assert len(summary["e"]["token"][name]) == len(summary["e"]["lengths"]) == 2
        assert all(0 <= v <= 1 for v in summary["e"]["token"][name] + summary["e"]["exact"][name])
    out = capsys.readouterr().out
    for part in ("(a)", "(b)", "(c)", "(d)", "(e)"):
        assert part in out
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert summary["plot"] is None
    else:
        assert Path(summary["plot"]).stat().st_size > 0


@pytest.mark.slow
def test_dates(example, tmp_path, capsys):
    dates = example("dates")
    out = tmp_path / "dates.json"
    summary = dates.main(["--quick", "--json", str(out), "--plot", str(tmp_path / "att.png")])
    assert 0.0 <= summary["greedy_exact_match"] <= 1.0
    assert 0.0 <= summary["beam_exact_match"] <= 1.0
    assert summary["steps"] == 5 and summary["n_test"] == 20
    written = json.loads(out.read_text())
    assert {"greedy_exact_match", "beam_exact_match", "train_seconds"} <= set(written)
    assert written["greedy_exact_match"] == summary["greedy_exact_match"]
    assert "exact     greedy" in capsys.readouterr().out
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert summary["plot"] is None
    else:
        assert Path(summary["plot"]).stat().st_size > 0


def test_dates_data_are_the_same_date_in_every_format(example):
    import datetime

    dates = example("dates")
    d = datetime.date(2026, 11, 29)
    texts = [dates._fmt(d, k) for k in range(dates.N_FORMATS)]
    assert texts[:4] == ["29 November 2026", "11/29/26", "Nov 29, 2026", "November 29, 2026"]
    assert "Sunday, November 29, 2026" in texts
    # two-digit years: 50-99 are 19xx, 00-49 are 20xx, and every day of the range round-trips
    for o in range(dates.FIRST.toordinal(), dates.LAST.toordinal() + 1, 97):
        day = datetime.date.fromordinal(o)
        us = dates._fmt(day, 1)
        yy = int(us[-2:])
        assert (1900 if yy >= 50 else 2000) + yy == day.year
    rng = np.random.default_rng(0)
    train, test = dates.split_days(rng)
    assert not set(train) & set(test) and len(test) == len(train) // 9
    src, lengths, texts, tgt_in, tgt_out, iso = dates.make_batch(test, rng, 8)
    assert (tgt_in[0] == dates.BOS).all() and (tgt_out[-1] == dates.EOS).all()
    for b in range(8):
        assert dates.decode_text(tgt_out[:-1, b]) == iso[b]
        assert "".join(dates.SRC_CHARS[i - 1] for i in src[: lengths[b], b]) == texts[b]


def test_seed_claims_reversal_task(example):
    sc = example("seed_claims")
    rng = np.random.default_rng(0)
    src, lengths, tgt_in, tgt_out = sc.reversal_batch(rng, 6, 2, 7)
    assert (tgt_in[0] == sc.BOS_E).all()
    for b in range(6):
        n = lengths[b]
        assert list(tgt_out[:n, b]) == list(src[:n, b][::-1])
        assert tgt_out[n, b] == sc.EOS_E and (tgt_out[n + 1 :, b] == -100).all()
        assert list(tgt_in[1 : n + 1, b]) == list(tgt_out[:n, b])


def test_generate_streams_what_char_lm_samples(example, tmp_path, capsys):
    """generate.py's LSTM.step loop samples the text char_lm.py's whole-forward loop samples."""
    char_lm = example("char_lm")
    path = tmp_path / "model.npz"
    char_lm.main(["--quick", "--steps", "3", "--sample-len", "1", "--save", str(path)])
    gen = example("generate")
    summary = gen.main(["--checkpoint", str(path), "--length", "40", "--seed", "5"])
    assert len(summary["text"]) == len("ROMEO:\n") + 40
    assert summary["ms_per_char"] > 0
    model, chars, extra = gen.load_model(path)
    assert extra["quick"] is True
    expected = char_lm.sample(model, chars, "ROMEO:\n", 40, 0.8, np.random.default_rng(5))
    assert summary["text"] == expected
    assert "ms/char" in capsys.readouterr().out


def test_generate_trains_a_quick_model_without_a_checkpoint(example):
    summary = example("generate").main(["--length", "5", "--train-steps", "1", "--evaluate"])
    assert len(summary["text"]) == len("ROMEO:\n") + 5
    assert abs(summary["val_loss_int8"] - summary["val_loss_float32"]) < 0.03
