"""fastrnn.onnx.export: ONNX Runtime (float32) and onnx's reference evaluator (float64) against
fastrnn's own eval-mode forward, for every cell of the registry and its variants."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import fastrnn
from fastrnn import cells, nn
from fastrnn.nn.rnn import RNNBase

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
fonnx = pytest.importorskip("fastrnn.onnx")
from onnx.reference import ReferenceEvaluator  # noqa: E402

T, B, I, H = 7, 4, 5, 6


def _layer(cell, **kw):
    kw.setdefault("seed", 0)
    return RNNBase(cell, I, H, **kw).eval()


def _flat(result):
    """fastrnn's (out, h_n) / (out, (h_n, c_n)) as the graph's output list."""
    out, state = result
    return [out, *(state if isinstance(state, tuple) else (state,))]


def _run_ort(proto, feed):
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, feed)


def _inputs(layer, rng, batch_first, dtype=np.float32):
    shape = (B, T, I) if batch_first else (T, B, I)
    return rng.standard_normal(shape).astype(dtype)


CASES = [
    (cell, variant, dict(options))
    for cell in cells.CELLS.values()
    for variant, options in cell.variants.items()
]
if "reset_after" in cells.GRU.option_defaults():
    CASES.append((cells.GRU, "gru_reset_before", {"reset_after": False}))


@pytest.mark.parametrize("cell,variant,options", CASES, ids=[c[1] for c in CASES])
@pytest.mark.parametrize(
    "num_layers,bidirectional,batch_first,bias",
    [
        (1, False, False, True),
        (2, True, True, True),
        (2, False, False, False),
        (1, True, False, False),
    ],
)
@pytest.mark.parametrize("with_lengths", [False, True])
def test_onnxruntime_reproduces_layer(
    cell, variant, options, num_layers, bidirectional, batch_first, bias, with_lengths
):
    rng = np.random.default_rng(1)
    layer = _layer(
        cell,
        num_layers=num_layers,
        bidirectional=bidirectional,
        batch_first=batch_first,
        bias=bias,
        **options,
    )
    proto = fonnx.export(layer, None, lengths=with_lengths, initial_state=True)
    x = _inputs(layer, rng, batch_first)
    states = {
        s: rng.standard_normal(shape).astype(np.float32)
        for s, shape in layer._config.state_shapes(B).items()
    }
    lengths = np.array([T, 2, 5, 1], np.int32)
    feed = {"x": x, **{f"{s}0": v for s, v in states.items()}}
    hx = tuple(states.values()) if len(states) > 1 else states["h"]
    if with_lengths:
        feed["lengths"] = lengths
    got = _run_ort(proto, feed)
    want = _flat(layer(x, hx, lengths=lengths if with_lengths else None))
    assert [o.name for o in proto.graph.output] == ["y"] + [f"{s}_n" for s in cell.states]
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cell,variant,options", CASES, ids=[c[1] for c in CASES])
def test_float64_graph_reproduces_layer(cell, variant, options):
    # ONNX Runtime runs RNN/LSTM/GRU in float32 only; onnx's reference evaluator runs float64
    # (it ignores sequence_lens, so no lengths here).
    if options.get("nonlinearity") == "relu":
        pytest.skip("onnx's reference evaluator has no Relu activation in its RNN")
    rng = np.random.default_rng(2)
    layer = _layer(cell, num_layers=2, bidirectional=True, dtype=np.float64, **options)
    proto = fonnx.export(layer, None)
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.DOUBLE
    x = _inputs(layer, rng, False, np.float64)
    got = ReferenceEvaluator(proto).run(None, {"x": x})
    for g, w in zip(got, _flat(layer(x)), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-12)


def test_chain_embedding_lstm_linear_sequential(tmp_path):
    fastrnn.manual_seed(3)
    model = nn.Sequential(
        nn.Embedding(11, I),
        nn.LSTM(I, H, num_layers=2, batch_first=True, dropout=0.3),
        nn.Dropout(0.5),
        nn.Linear(H, 3),
    ).eval()
    path = tmp_path / "model.onnx"
    proto = fonnx.export(model, path, lengths=True)
    assert path.stat().st_size > 0
    assert onnx.load(str(path)).graph.input[0].name == "x"
    idx = np.random.default_rng(4).integers(0, 11, size=(B, T))
    lengths = np.array([3, T, 1, 6])
    got = _run_ort(proto, {"x": idx.astype(np.int64), "lengths": lengths.astype(np.int32)})
    # the chain by hand: each block's first output feeds the next
    e = model[0](idx)
    out, (h_n, c_n) = model[1](e, lengths=lengths)
    want = [model[3](out), h_n, c_n]
    assert [o.name for o in proto.graph.output] == ["y", "h_n", "c_n"]
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


def test_custom_model_by_listing_blocks():
    class Tagger(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = nn.GRU(I, H, bidirectional=True, seed=5)
            self.decoder = nn.RNN(2 * H, H, nonlinearity="relu", seed=6)
            self.head = nn.Linear(H, 2, seed=7)

        def forward(self, x):
            return self.head(self.decoder(self.encoder(x)[0])[0])

    model = Tagger().eval()
    with pytest.raises(fonnx.ExportError, match="Tagger.*list its blocks"):
        fonnx.export(model, None)
    proto = fonnx.export([model.encoder, model.decoder, model.head], None)
    names = [o.name for o in proto.graph.output]
    assert names == ["y", "0.h_n", "1.h_n"]
    x = np.random.default_rng(8).standard_normal((T, B, I)).astype(np.float32)
    got = _run_ort(proto, {"x": x})
    want = [model(x), model.encoder(x)[1], model.decoder(model.encoder(x)[0])[1]]
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


def test_mixed_dtype_chain_casts():
    model = nn.Sequential(nn.Linear(I, I, dtype=np.float64, seed=1), nn.LSTM(I, H, seed=2))
    proto = fonnx.export(model.eval(), None)
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.DOUBLE
    assert "Cast" in [n.op_type for n in proto.graph.node]
    x = np.random.default_rng(0).standard_normal((T, B, I))
    got = _run_ort(proto, {"x": x})
    out, (h_n, c_n) = model[1](model[0](x))
    np.testing.assert_allclose(got[0], out, rtol=1e-5, atol=1e-5)


def test_every_cell_and_option_has_an_onnx_decision():
    # A new cell or option must say how it is exported (or why not): this fails until it does.
    for cell in cells.CELLS.values():
        row = fonnx.ONNX_CELLS[cell]
        assert sorted(row.gates) == sorted(cell.gates)
        for option in cell.options:
            decided = (
                option.name in row.rules or option.name in row.refused or option.name in row.ignored
            )
            assert decided, f"{cell.title}.{option.name} has no ONNX rule"


# a non-default value of each option the table refuses (those the registry has today)
REFUSED_VALUES = {
    "proj_size": 3,
    "layer_norm": True,
    "zoneout": 0.1,
    "return_cell_states": True,
}


@pytest.mark.parametrize(
    "cell,option",
    [
        (cell, name)
        for cell in cells.CELLS.values()
        for name in fonnx.ONNX_CELLS[cell].refused
        if name in cell.option_defaults()
    ],
)
def test_refused_options_name_the_option(cell, option):
    layer = _layer(cell, backend="numpy", **{option: REFUSED_VALUES[option]})
    with pytest.raises(fonnx.ExportError, match=f"{cell.title} with {option}="):
        fonnx.export(layer, None)


def test_option_without_rule_exports_only_at_default(monkeypatch):
    row = fonnx.ONNX_CELLS[cells.GRU]
    monkeypatch.setitem(fonnx.ONNX_CELLS, cells.GRU, fonnx.OnnxCell("GRU", row.gates))
    fonnx.export(_layer(cells.GRU, reset_after=True), None)  # its default: fine (no rule used)
    with pytest.raises(fonnx.ExportError, match="reset_after=False.*only at its default"):
        fonnx.export(_layer(cells.GRU, reset_after=False), None)


@pytest.mark.skipif("peephole" not in cells.LSTM.option_defaults(), reason="no peephole LSTM")
def test_peephole_lstm_maps_to_P():
    layer = _layer(cells.LSTM, peephole=True, backend="numpy", num_layers=2, bidirectional=True)
    proto = fonnx.export(layer, None)
    x = np.random.default_rng(9).standard_normal((T, B, I)).astype(np.float32)
    for g, w in zip(_run_ort(proto, {"x": x}), _flat(layer(x)), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


def test_refusals_and_bad_arguments():
    lstm = nn.LSTM(I, H, seed=0)
    with pytest.raises(fonnx.ExportError, match="can only be the first block"):
        fonnx.export([lstm, nn.Embedding(3, 4)], None)
    with pytest.raises(fonnx.ExportError, match="no recurrent layer"):
        fonnx.export(nn.Linear(3, 4), None)
    with pytest.raises(fonnx.ExportError, match="MSELoss"):
        fonnx.export([lstm, nn.MSELoss()], None)
    with pytest.raises(TypeError, match="model must be"):
        fonnx.export("lstm", None)
    with pytest.raises(ValueError, match="opset_version must be in"):
        fonnx.export(lstm, None, opset_version=9)
    with pytest.raises(fonnx.ExportError, match="no blocks"):
        fonnx.export([], None)
    assert issubclass(fonnx.ExportError, ValueError)


def test_import_fastrnn_does_not_import_onnx():
    code = "import sys, fastrnn; print('onnx' in sys.modules, 'onnxruntime' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_docs_onnx_example_runs(tmp_path, monkeypatch):
    # docs/onnx.md's first code block, as written
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "onnx.md").read_text()
    code = text.split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "docs/onnx.md", "exec"), namespace)
    assert namespace["logits"].shape == (100, 8, 65)
    assert namespace["h_n"].shape == (2, 8, 64)
