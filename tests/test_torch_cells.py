"""fastrnn.torch.RNNCell / LSTMCell / GRUCell against torch's cells (float64: 1e-10)."""

import copy
import itertools
import zlib

import pytest

torch = pytest.importorskip("torch")

import fastrnn.torch as ft  # noqa: E402

B, I, H = 3, 2, 4
TOL = {"rtol": 1e-10, "atol": 1e-10}
CELLS = {
    "rnn_tanh": (torch.nn.RNNCell, ft.RNNCell, {"nonlinearity": "tanh"}),
    "rnn_relu": (torch.nn.RNNCell, ft.RNNCell, {"nonlinearity": "relu"}),
    "gru": (torch.nn.GRUCell, ft.GRUCell, {}),
    "lstm": (torch.nn.LSTMCell, ft.LSTMCell, {}),
}
# (cell, bias, batched, state given)
GRID = list(itertools.product(CELLS, (True, False), (True, False), (True, False)))


def _id(case):
    cell, bias, batched, state = case
    return "-".join(
        [
            cell,
            "bias" if bias else "nobias",
            "batched" if batched else "unbatched",
            "hx" if state else "nohx",
        ]
    )


def _pair(cell, dtype=torch.float64, bias=True):
    tcls, fcls, kw = CELLS[cell]
    torch.manual_seed(zlib.crc32(cell.encode()))
    tm = tcls(I, H, bias=bias, dtype=dtype, **kw)
    fm = ft.patch(copy.deepcopy(tm))
    assert type(fm) is fcls
    return tm, fm


def _data(m, batched, state, seed=0):
    gen = torch.Generator().manual_seed(seed)
    dtype = m.weight_ih.dtype
    lead = (B,) if batched else ()

    def n(*shape):
        return torch.randn(*lead, *shape, generator=gen, dtype=dtype).requires_grad_()

    hx = None
    if state:
        hx = (n(H), n(H)) if isinstance(m, torch.nn.LSTMCell) else n(H)
    return n(I), hx


def _flat(out):
    return list(out) if isinstance(out, tuple) else [out]


def _step(m, x, hx):
    """Three steps of the cell (feeding its state back), then a weighted sum's gradients."""
    for t in (x, *m.parameters(), *(_flat(hx) if hx is not None else [])):
        t.grad = None
    outs, state = [], hx
    for k in range(3):
        state = m(x * (k + 1), state)
        outs += _flat(state)
    gen = torch.Generator().manual_seed(1)
    sum((o * torch.randn(o.shape, generator=gen, dtype=o.dtype)).sum() for o in outs).backward()
    leaves = [x, *(_flat(hx) if hx is not None else []), *m.parameters()]
    return [o.detach() for o in outs] + [t.grad for t in leaves]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("case", GRID, ids=[_id(c) for c in GRID])
def test_matches_torch(case, dtype):
    cell, bias, batched, state = case
    tm, fm = _pair(cell, dtype, bias)
    x, hx = _data(tm, batched, state)
    want = _step(tm, x, hx)
    got = _step(fm, x, hx)
    tol = TOL if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-6}
    assert len(got) == len(want)
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        torch.testing.assert_close(a, b, **tol, msg=f"item {i}")
    out = fm(x, hx)
    node = _flat(out)[0].grad_fn
    while type(node).__name__ == "SelectBackward0":
        node = node.next_functions[0][0]
    assert type(node).__name__ == "_StackFunctionBackward"
    with torch.no_grad():
        for a, b in zip(_flat(fm(x, hx)), _flat(tm(x, hx)), strict=True):
            torch.testing.assert_close(a, b, **tol)


@pytest.mark.parametrize("cell", CELLS)
def test_gradcheck_and_gradgradcheck(cell):
    _, fm = _pair(cell)
    x, hx = _data(fm, True, True)
    names = [n for n, _ in fm.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in fm.parameters()]
    states = _flat(hx)

    def fn(x, *rest):
        st = rest[: len(states)]
        ps = dict(zip(names, rest[len(states) :], strict=True))
        hx = tuple(st) if len(st) == 2 else st[0]
        return torch.func.functional_call(fm, ps, (x, hx))

    inputs = (x, *states, *params)
    assert torch.autograd.gradcheck(fn, inputs)
    assert torch.autograd.gradgradcheck(fn, inputs, fast_mode=True)


@pytest.mark.parametrize("cell", CELLS)
def test_torch_errors_for_bad_arguments(cell):
    tm, fm = _pair(cell)
    x, hx = _data(tm, True, True)
    lstm = isinstance(tm, torch.nn.LSTMCell)
    bad = [
        (x[0, 0],),  # 0-D input
        (x[:, :1],),  # wrong input size
        (x, (hx[0][:2], hx[1]) if lstm else hx[:2]),  # wrong batch
        (x, (hx[0][0], hx[1][0]) if lstm else hx[0]),  # unbatched state, batched input
        (torch.randn(B, I, B, dtype=torch.float64),),  # 3-D input
    ]
    for args in bad:
        with pytest.raises((RuntimeError, ValueError)) as want:
            tm(*args)
        with pytest.raises(type(want.value)) as got:
            fm(*args)
        assert str(got.value) == str(want.value)


def test_unknown_nonlinearity_raises_torch_error():
    tm = torch.nn.RNNCell(I, H, nonlinearity="gelu")
    fm = ft.patch(copy.deepcopy(tm))
    x = torch.randn(B, I)
    with pytest.raises(RuntimeError) as want:
        tm(x)
    with pytest.raises(RuntimeError) as got:
        fm(x)
    assert str(got.value) == str(want.value)


def test_falls_back_for_other_dtypes():
    tm, fm = _pair("lstm")
    x = torch.randn(B, I, dtype=torch.bfloat16)
    tm16, fm16 = copy.deepcopy(tm).bfloat16(), copy.deepcopy(fm).bfloat16()
    for a, b in zip(fm16(x), tm16(x), strict=True):
        assert torch.equal(a, b)


class Sequence(torch.nn.Module):
    """PyTorch's time_sequence_prediction example model: two LSTMCells and a Linear."""

    def __init__(self):
        super().__init__()
        self.lstm1 = torch.nn.LSTMCell(1, 51)
        self.lstm2 = torch.nn.LSTMCell(51, 51)
        self.linear = torch.nn.Linear(51, 1)

    def forward(self, x, future=0):
        outputs = []
        h = c = torch.zeros(x.size(0), 51, dtype=torch.double)
        h2 = c2 = torch.zeros(x.size(0), 51, dtype=torch.double)
        for xt in x.split(1, dim=1):
            h, c = self.lstm1(xt, (h, c))
            h2, c2 = self.lstm2(h, (h2, c2))
            outputs += [self.linear(h2)]
        for _ in range(future):
            h, c = self.lstm1(outputs[-1], (h, c))
            h2, c2 = self.lstm2(h, (h2, c2))
            outputs += [self.linear(h2)]
        return torch.cat(outputs, dim=1)


def test_time_sequence_prediction_trains_as_torch():
    torch.manual_seed(0)
    t = torch.arange(40, dtype=torch.double)
    data = torch.sin((t[None, :] + torch.arange(6, dtype=torch.double)[:, None] * 4) / 5)
    x, y = data[:, :-1], data[:, 1:]
    torch.manual_seed(1)
    model = Sequence().double()
    patched = ft.patch(copy.deepcopy(model))
    assert ft.fastrnn_modules(patched) == {"lstm1": "LSTMCell", "lstm2": "LSTMCell"}
    losses = []
    for m in (model, patched):
        opt = torch.optim.Adam(m.parameters(), lr=0.01)
        curve = []
        for _ in range(8):
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(m(x), y)
            loss.backward()
            opt.step()
            curve.append(loss.detach())
        with torch.no_grad():
            curve.append(m(x[:, :10], future=5).sum())
        losses.append(torch.stack(curve))
    assert losses[0][-2] < losses[0][0]
    torch.testing.assert_close(losses[1], losses[0], **TOL)
