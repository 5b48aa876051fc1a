"""fastrnn/nn/rnn.py (the RNN/LSTM/GRU layers) against torch.nn.RNN/LSTM/GRU: PyTorch parity.

The same ``state_dict`` (torch's, loaded into fastrnn as torch tensors) on a grid of every cell x
{1, 3} layers x {uni, bi}directional x {bias, no bias} x {time-major, batch_first} x {no
projection, projection} (LSTM) x {full, variable lengths} x {float32, float64}. Compared: outputs,
final states, dx, initial-state gradients and every parameter's gradient. Variable lengths run
torch on ``pack_padded_sequence(enforce_sorted=False)``.
"""

import zlib

import numpy as np
import pytest
from conftest import TOL, assert_close

import fastrnn

torch = pytest.importorskip("torch")
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence  # noqa: E402

# torch's own notice that its oneDNN path lacks projections: not about fastrnn
pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported")

T, B, I, H, P = 5, 4, 3, 5, 3
LENGTHS = np.array([3, 5, 1, 4])  # unsorted, one full, one of length 1

# (fastrnn class, torch class, constructor kwargs, has a cell state)
CELLS = {
    "rnn_tanh": (fastrnn.RNN, "RNN", {"nonlinearity": "tanh"}),
    "rnn_relu": (fastrnn.RNN, "RNN", {"nonlinearity": "relu"}),
    "gru": (fastrnn.GRU, "GRU", {}),
    "lstm": (fastrnn.LSTM, "LSTM", {}),
    "lstm_proj": (fastrnn.LSTM, "LSTM", {"proj_size": P}),
}


def _pair(cell, dtype, seed=0, backend="cython", **kw):
    """A torch module with its default init and a fastrnn layer loaded with its state_dict."""
    cls, tname, ckw = CELLS[cell]
    kw = {**ckw, **kw}
    torch.manual_seed(seed)
    tdtype = torch.float64 if dtype == np.float64 else torch.float32
    tm = getattr(torch.nn, tname)(I, H, dtype=tdtype, **kw)
    m = cls(I, H, dtype=dtype, backend=backend, **kw)
    assert list(m.state_dict()) == list(tm.state_dict())  # same names, same order
    m.load_state_dict(tm.state_dict())  # torch tensors accepted as they are
    return m, tm


def _run(m, tm, x, state, dout, dstate, lengths):
    """Forward + backward in torch (loss = <out, dout> + <states, dstates>) and in fastrnn."""
    lstm = isinstance(state, tuple)
    bf = tm.batch_first
    xt = torch.tensor(x, requires_grad=True)
    st = tuple(torch.tensor(s, requires_grad=True) for s in (state if lstm else (state,)))
    hx = st if lstm else st[0]
    if lengths is None:
        out, s_n = tm(xt, hx)
    else:
        packed = pack_padded_sequence(xt, torch.as_tensor(lengths), bf, enforce_sorted=False)
        out, s_n = tm(packed, hx)
        out, _ = pad_packed_sequence(out, batch_first=bf, total_length=x.shape[1 if bf else 0])
    s_n = s_n if lstm else (s_n,)
    loss = (out * torch.tensor(dout)).sum()
    for s, d in zip(s_n, dstate if lstm else (dstate,), strict=True):
        loss = loss + (s * torch.tensor(d)).sum()
    loss.backward()
    want = {
        "out": out.detach().numpy(),
        "h_n": s_n[0].detach().numpy(),
        "dx": xt.grad.numpy(),
        "dh0": st[0].grad.numpy(),
    }
    if lstm:
        want.update(c_n=s_n[1].detach().numpy(), dc0=st[1].grad.numpy())
    params = {n: p.grad.numpy() for n, p in tm.named_parameters()}

    y, s = m(x, state, lengths=lengths)
    dx, ds = m.backward(dout, dstate)
    got = {"out": y, "dx": dx}
    if lstm:
        got.update(h_n=s[0], c_n=s[1], dh0=ds[0], dc0=ds[1])
    else:
        got.update(h_n=s, dh0=ds)
    return got, want, {n: p.grad for n, p in m.named_parameters()}, params


def _inputs(m, rng, dtype, batch_first, batched=True):
    LD = m.num_layers * (2 if m.bidirectional else 1)
    R = m.proj_size or m.hidden_size
    out = LD // m.num_layers * R

    def n(*shape):
        shape = shape if batched else tuple(s for i, s in enumerate(shape) if i != 1)
        return rng.standard_normal(shape).astype(dtype)

    x = n(T, B, I)
    dout = n(T, B, out)
    if batch_first and batched:
        x, dout = x.transpose(1, 0, 2).copy(), dout.transpose(1, 0, 2).copy()
    h0, dh = n(LD, B, R), n(LD, B, R)
    if m.mode == "LSTM":
        return x, (h0, n(LD, B, H)), dout, (dh, n(LD, B, H))
    return x, h0, dout, dh


GRID = [
    (cell, layers, bi, bias, bf, lens)
    for cell in CELLS
    for layers in (1, 3)
    for bi in (False, True)
    for bias in (True, False)
    for bf in (False, True)
    for lens in (False, True)
]


def _id(c):
    cell, layers, bi, bias, bf, lens = c
    return "-".join(
        [cell, f"L{layers}", "bi" if bi else "uni", "bias" if bias else "nobias"]
        + (["batch_first"] if bf else [])
        + (["lengths"] if lens else [])
    )


@pytest.mark.parametrize("cell,layers,bi,bias,bf,lens", GRID, ids=[_id(c) for c in GRID])
def test_layer_matches_torch(cell, layers, bi, bias, bf, lens, dtype):
    m, tm = _pair(cell, dtype, num_layers=layers, bidirectional=bi, bias=bias, batch_first=bf)
    rng = np.random.default_rng(zlib.crc32(_id((cell, layers, bi, bias, bf, lens)).encode()))
    x, state, dout, dstate = _inputs(m, rng, dtype, bf)
    got, want, grads, want_grads = _run(m, tm, x, state, dout, dstate, LENGTHS if lens else None)
    tol = TOL[dtype]
    for name, value in want.items():
        assert got[name].dtype == dtype, name
        assert_close(got[name], value, name, **tol)
    assert list(grads) == list(want_grads)
    for name, value in want_grads.items():
        assert_close(grads[name], value, name, **tol)


@pytest.mark.parametrize("cell", CELLS)
def test_numpy_backend_matches_torch(cell):
    """The reference backend through the same layer code (3 layers, bi, lengths, float64)."""
    m, tm = _pair(cell, np.float64, backend="numpy", num_layers=3, bidirectional=True)
    x, state, dout, dstate = _inputs(m, np.random.default_rng(3), np.float64, False)
    got, want, grads, want_grads = _run(m, tm, x, state, dout, dstate, LENGTHS)
    for name, value in {**want, **want_grads}.items():
        assert_close({**got, **grads}[name], value, name, **TOL[np.float64])


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("bf", [False, True], ids=["time_major", "batch_first"])
def test_unbatched_input_matches_torch(cell, bf, dtype):
    m, tm = _pair(cell, dtype, num_layers=2, bidirectional=True, batch_first=bf)
    x, state, dout, dstate = _inputs(m, np.random.default_rng(5), dtype, bf, batched=False)
    assert x.ndim == 2
    got, want, grads, want_grads = _run(m, tm, x, state, dout, dstate, None)
    for name, value in {**want, **want_grads}.items():
        assert_close({**got, **grads}[name], value, name, **TOL[dtype])


@pytest.mark.parametrize("cell", CELLS)
def test_default_states_and_no_upstream_state_grad(cell):
    """Omitted states are zeros; backward with dstate=None is a zero state gradient."""
    m, tm = _pair(cell, np.float64, num_layers=2, bidirectional=True)
    x, state, dout, dstate = _inputs(m, np.random.default_rng(6), np.float64, False)
    xt = torch.tensor(x, requires_grad=True)
    out, _ = tm(xt)
    (out * torch.tensor(dout)).sum().backward()
    y, _ = m(x)
    dx, _ = m.backward(dout)
    assert_close(y, out.detach().numpy(), "out", **TOL[np.float64])
    assert_close(dx, xt.grad.numpy(), "dx", **TOL[np.float64])
    for (name, p), tp in zip(m.named_parameters(), tm.parameters(), strict=True):
        assert_close(p.grad, tp.grad.numpy(), name, **TOL[np.float64])


@pytest.mark.parametrize("cell", CELLS)
def test_state_dict_exports_to_torch(cell):
    """fastrnn's (seeded, PyTorch-style) init loaded into torch gives torch the same numbers."""
    cls, tname, kw = CELLS[cell]
    m = cls(I, H, num_layers=2, bidirectional=True, dtype=np.float64, seed=1, **kw)
    tm = getattr(torch.nn, tname)(I, H, num_layers=2, bidirectional=True, dtype=torch.float64, **kw)
    tm.load_state_dict({k: torch.from_numpy(v) for k, v in m.state_dict().items()})
    x = np.random.default_rng(2).standard_normal((T, B, I))
    m.eval()
    y, _ = m(x)
    with torch.no_grad():
        out, _ = tm(torch.from_numpy(x))
    assert_close(y, out.numpy(), "out", **TOL[np.float64])
