"""fastrnn/torch.py: pickles of patched models name torch's classes, load without fastrnn."""

import copy
import io
import os
import pickle
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

import fastrnn.torch as ft  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TORCH_CLASSES = [
    torch.nn.LSTM,
    torch.nn.GRU,
    torch.nn.RNN,
    torch.nn.LSTMCell,
    torch.nn.GRUCell,
    torch.nn.RNNCell,
    torch.nn.ModuleDict,
    torch.nn.Linear,
]


def _model():
    torch.manual_seed(0)
    return torch.nn.ModuleDict(
        {
            "lstm": torch.nn.LSTM(3, 4, num_layers=2, bidirectional=True, proj_size=2),
            "gru": torch.nn.GRU(3, 4, batch_first=True),
            "rnn": torch.nn.RNN(3, 4, nonlinearity="relu"),
            "lstm_cell": torch.nn.LSTMCell(3, 4),
            "gru_cell": torch.nn.GRUCell(3, 4, bias=False),
            "rnn_cell": torch.nn.RNNCell(3, 4),
            "head": torch.nn.Linear(4, 1),
        }
    ).double()


def _outputs(model):
    x = torch.randn(5, 2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return [
        model["lstm"](x)[0],
        model["gru"](x)[0],
        model["rnn"](x)[0],
        model["lstm_cell"](x[0])[1],
        model["gru_cell"](x[0]),
        model["rnn_cell"](x[0]),
    ]


def _saved(model):
    buf = io.BytesIO()
    torch.save(model, buf)
    return buf.getvalue()


def test_saved_file_is_torch_own():
    """The file of a patched model is byte for byte the file of the unpatched one."""
    model = _model()
    plain = _saved(model)
    ft.patch(model)
    assert set(ft.fastrnn_modules(model)) == {
        "lstm",
        "gru",
        "rnn",
        "lstm_cell",
        "gru_cell",
        "rnn_cell",
    }
    patched = _saved(model)
    assert patched == plain
    assert b"fastrnn" not in patched
    # plain pickle too, at every protocol
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        data = pickle.dumps(model, protocol=protocol)
        assert b"fastrnn" not in data
        assert type(pickle.loads(data)["lstm"]) is torch.nn.LSTM


@pytest.mark.slow
def test_loads_without_fastrnn_as_torch_modules(tmp_path):
    model = ft.patch(_model())
    want = [o.detach() for o in _outputs(model)]
    path = tmp_path / "model.pt"
    torch.save(model, path)
    torch.save(want, tmp_path / "want.pt")
    code = f"""
import sys
sys.modules["fastrnn"] = None  # fastrnn not installed
import torch
want = torch.load({str(tmp_path / "want.pt")!r})
with torch.serialization.safe_globals([{
        ", ".join(f"torch.nn.{c.__name__}" for c in TORCH_CLASSES)
    }]):
    model = torch.load({str(path)!r})  # weights_only=True, torch's default
assert type(model["lstm"]) is torch.nn.LSTM and type(model["rnn_cell"]) is torch.nn.RNNCell
x = torch.randn(5, 2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
got = [model["lstm"](x)[0], model["gru"](x)[0], model["rnn"](x)[0], model["lstm_cell"](x[0])[1],
       model["gru_cell"](x[0]), model["rnn_cell"](x[0])]
for a, b in zip(got, want):
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert out.stdout.strip() == "ok", out.stderr


def test_load_patches_again(tmp_path):
    model = ft.patch(_model())
    want = _outputs(model)
    torch.save(model, tmp_path / "m.pt")
    loaded = ft.load(tmp_path / "m.pt", weights_only=False)
    assert type(loaded["lstm"]) is ft.LSTM and type(loaded["gru_cell"]) is ft.GRUCell
    for a, b in zip(_outputs(loaded), want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    with pytest.raises(TypeError, match="not a torch.nn.Module"):
        ft.load(tmp_path / "sd.pt")


def test_copies_stay_patched():
    model = ft.patch(_model())
    for clone in (copy.deepcopy(model), copy.copy(model["lstm"])):
        lstm = clone["lstm"] if isinstance(clone, torch.nn.ModuleDict) else clone
        assert type(lstm) is ft.LSTM
    deep = copy.deepcopy(model)
    assert deep["lstm"].weight_ih_l0 is not model["lstm"].weight_ih_l0
    assert deep["lstm"]._flat_weights[0] is deep["lstm"].weight_ih_l0
    for a, b in zip(_outputs(deep), _outputs(model), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    shallow = copy.copy(model["gru"])
    assert shallow.weight_ih_l0 is model["gru"].weight_ih_l0
