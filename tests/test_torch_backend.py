"""fastrnn.torch: drop-in torch.nn.RNN/LSTM/GRU on fastrnn's kernels, and patch()/unpatch().

Oracles: ``torch.autograd.gradcheck`` in float64 and torch's own modules with the same weights,
over every option fastrnn supports (cell x layers x direction x bias x batch_first x projection x
packed/padded input x given/omitted initial states), plus a real char-level training loop that
must give torch's loss curve.
"""

import copy
import itertools
import os
import subprocess
import sys
import zlib

import numpy as np
import pytest
from conftest import TOL

torch = pytest.importorskip("torch")
from torch.func import functional_call  # noqa: E402
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence  # noqa: E402

import fastrnn.torch as ft  # noqa: E402

# torch's own notice that its oneDNN path lacks projections: not about fastrnn
pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported")

T, B, I, H, P = 4, 3, 2, 3, 2
LENGTHS = [2, 4, 1]  # unsorted, one full, one of length 1
DTYPES = {np.float32: torch.float32, np.float64: torch.float64}
DATA = os.path.join(os.path.dirname(__file__), "data", "tinyshakespeare_excerpt.txt")

# name -> (torch class, fastrnn class, constructor kwargs)
CELLS = {
    "rnn_tanh": (torch.nn.RNN, ft.RNN, {"nonlinearity": "tanh"}),
    "rnn_relu": (torch.nn.RNN, ft.RNN, {"nonlinearity": "relu"}),
    "gru": (torch.nn.GRU, ft.GRU, {}),
    "lstm": (torch.nn.LSTM, ft.LSTM, {}),
    "lstm_proj": (torch.nn.LSTM, ft.LSTM, {"proj_size": P}),
}
# (cell, layers, bidirectional, bias, batch_first, packed input, initial states given)
GRID = list(
    itertools.product(CELLS, (1, 2), (False, True), (True, False), (False, True), *[(0, 1)] * 2)
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny shapes: threads only add contention (severe on a loaded 2-core CI machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _id(case):
    cell, layers, bi, bias, bf, packed, states = case
    return "-".join(
        [cell, f"L{layers}", "bi" if bi else "uni", "bias" if bias else "nobias"]
        + (["batch_first"] if bf else [])
        + (["packed"] if packed else [])
        + (["h0"] if states else [])
    )


def _pair(cell, dtype=torch.float64, **kw):
    """torch's module and fastrnn's with the same weights (torch's default init)."""
    tcls, fcls, ckw = CELLS[cell]
    torch.manual_seed(zlib.crc32(repr((cell, sorted(kw.items()))).encode()))
    tm = tcls(I, H, dtype=dtype, **ckw, **kw)
    fm = fcls(I, H, dtype=dtype, **ckw, **kw)
    fm.load_state_dict(tm.state_dict())
    return tm, fm


def _tensors(m, gen, batched=True):
    """Input and initial states for ``m`` (float64 or float32 like its weights)."""
    dtype = m.weight_ih_l0.dtype
    LD = m.num_layers * (2 if m.bidirectional else 1)
    R = m.proj_size or m.hidden_size

    def n(*shape):
        shape = shape if batched else tuple(s for i, s in enumerate(shape) if i != 1)
        return torch.randn(*shape, generator=gen, dtype=dtype).requires_grad_()

    x = n(B, T, I) if m.batch_first else n(T, B, I)
    states = (n(LD, B, R), n(LD, B, H)) if m.mode == "LSTM" else (n(LD, B, R),)
    return x, states


def _call(m, x, states, packed, params=None):
    """``m(input, hx)`` with the input packed or not; returns the outputs as a flat tuple."""
    inp = x
    if packed:
        inp = pack_padded_sequence(x, torch.tensor(LENGTHS), m.batch_first, enforce_sorted=False)
    hx = None if not states else (tuple(states) if m.mode == "LSTM" else states[0])
    if params is None:
        out, s = m(inp, hx)
    else:
        out, s = functional_call(m, params, (inp, hx))
    if packed:
        assert isinstance(out, PackedSequence)
        out = out.data
    return (out, *s) if m.mode == "LSTM" else (out, s)


def _forward_backward(m, x, states, packed):
    """Outputs and every gradient of a random weighted sum of the outputs."""
    for t in (x, *states, *m.parameters()):
        t.grad = None
    outs = _call(m, x, states, packed)
    gen = torch.Generator().manual_seed(7)
    loss = sum((o * torch.randn(o.shape, generator=gen, dtype=o.dtype)).sum() for o in outs)
    loss.backward()
    grads = {"x": x.grad, **{f"state{i}": s.grad for i, s in enumerate(states)}}
    grads.update({n: p.grad for n, p in m.named_parameters()})
    return [o.detach() for o in outs], grads


def _assert_close(got, want, name, dtype):
    tol = TOL[np.float64 if dtype == torch.float64 else np.float32]
    assert got.dtype == want.dtype, name
    np.testing.assert_allclose(got.numpy(), want.numpy(), err_msg=name, **tol)


# -- identity with torch's modules -----------------------------------------------------------------
def test_import_fastrnn_does_not_import_torch():
    code = "import sys, fastrnn, fastrnn.functional, fastrnn.stack; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.slow
def test_import_without_torch_says_how_to_install():
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "try:\n    import fastrnn.torch\nexcept ImportError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install torch" in out.stdout


@pytest.mark.parametrize("cell", CELLS)
def test_same_module_as_torch(cell):
    """Constructor, parameters, state_dict keys and repr are torch's own."""
    tm, fm = _pair(cell, num_layers=2, bidirectional=True, batch_first=True, dropout=0.25)
    assert isinstance(fm, type(tm))
    assert repr(fm) == repr(tm)
    assert list(fm.state_dict()) == list(tm.state_dict())
    assert [n for n, _ in fm.named_parameters()] == fm._flat_weights_names
    for a, b in zip(fm.parameters(), tm.parameters(), strict=True):
        assert torch.equal(a, b)
    fm.flatten_parameters()  # torch's, a no-op on the CPU


def test_positional_constructor_arguments_are_torch_ones():
    # torch.nn.RNN(input_size, hidden_size, num_layers, nonlinearity, bias, batch_first, ...)
    m = ft.RNN(2, 3, 2, "relu", False, True)
    assert (m.num_layers, m.nonlinearity, m.bias, m.batch_first) == (2, "relu", False, True)


# -- torch's numbers -------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=["float32", "float64"])
@pytest.mark.parametrize("case", GRID, ids=[_id(c) for c in GRID])
def test_matches_torch(case, dtype):
    cell, layers, bi, bias, bf, packed, with_states = case
    tm, fm = _pair(cell, dtype, num_layers=layers, bidirectional=bi, bias=bias, batch_first=bf)
    gen = torch.Generator().manual_seed(zlib.crc32(_id(case).encode()))
    x, states = _tensors(tm, gen)
    states = states if with_states else ()
    want, want_grads = _forward_backward(tm, x, states, packed)
    got, grads = _forward_backward(fm, x, states, packed)
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        _assert_close(a, b, f"output {i}", dtype)
    assert list(grads) == list(want_grads)
    for name, g in want_grads.items():
        _assert_close(grads[name], g, f"grad of {name}", dtype)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("bf", [False, True], ids=["time_major", "batch_first"])
def test_unbatched_input_matches_torch(cell, bf):
    tm, fm = _pair(cell, num_layers=2, bidirectional=True, batch_first=bf)
    x, states = _tensors(tm, torch.Generator().manual_seed(1), batched=False)
    assert x.dim() == 2
    for st in (states, ()):
        want, want_grads = _forward_backward(tm, x, st, False)
        got, grads = _forward_backward(fm, x, st, False)
        for a, b in zip(got, want, strict=True):
            _assert_close(a, b, "output", torch.float64)
        for name, g in want_grads.items():
            _assert_close(grads[name], g, name, torch.float64)


@pytest.mark.parametrize("cell", CELLS)
def test_no_grad_and_eval_match_torch(cell):
    """Inference (no autograd graph) and eval mode (no dropout) give torch's outputs."""
    tm, fm = _pair(cell, num_layers=2, bidirectional=True, dropout=0.5)
    tm.eval(), fm.eval()
    x, states = _tensors(tm, torch.Generator().manual_seed(2))
    for packed in (False, True):
        with torch.no_grad():
            want, got = _call(tm, x, states, packed), _call(fm, x, states, packed)
        for a, b in zip(got, want, strict=True):
            assert a.grad_fn is None
            _assert_close(a, b, "output", torch.float64)
        # eval mode with autograd: no dropout, gradients flow
        want, want_grads = _forward_backward(tm, x, states, packed)
        got, grads = _forward_backward(fm, x, states, packed)
        for name, g in want_grads.items():
            _assert_close(grads[name], g, name, torch.float64)


@pytest.mark.parametrize("cell", CELLS)
def test_dropout_one_matches_torch(cell):
    """dropout=1 zeroes every inner layer's output in both: a deterministic training-mode check."""
    tm, fm = _pair(cell, num_layers=3, bidirectional=True, dropout=1.0)
    x, states = _tensors(tm, torch.Generator().manual_seed(3))
    want, want_grads = _forward_backward(tm, x, states, True)
    got, grads = _forward_backward(fm, x, states, True)
    for a, b in zip(got, want, strict=True):
        _assert_close(a, b, "output", torch.float64)
    for name, g in want_grads.items():
        _assert_close(grads[name], g, name, torch.float64)


def test_dropout_follows_torch_manual_seed():
    tm, fm = _pair("lstm", num_layers=2, dropout=0.5)
    x, _ = _tensors(tm, torch.Generator().manual_seed(4))
    torch.manual_seed(0)
    a = fm(x)[0]
    b = fm(x)[0]
    torch.manual_seed(0)
    c = fm(x)[0]
    assert not torch.equal(a, b)  # fresh masks on every call
    assert torch.equal(a, c)  # drawn from torch's generator
    with torch.no_grad():  # training mode without autograd still applies dropout
        torch.manual_seed(0)
        assert torch.equal(fm(x)[0], a)
    fm.eval()
    assert torch.allclose(fm(x)[0], tm.eval()(x)[0], rtol=1e-12, atol=1e-12)


# -- gradcheck -------------------------------------------------------------------------------------
def _gradcheck(m, case_packed, with_states, fast_mode, seed=0, reseed=None):
    """gradcheck of the module's outputs with respect to its input, states and weights."""
    x, states = _tensors(m, torch.Generator().manual_seed(seed))
    states = states if with_states else ()
    names = [n for n, _ in m.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in m.parameters()]

    def fn(x, *rest):
        if reseed is not None:
            torch.manual_seed(reseed)  # the same dropout masks on every call
        st, ps = rest[: len(states)], rest[len(states) :]
        return _call(m, x, st, case_packed, dict(zip(names, ps, strict=True)))

    assert torch.autograd.gradcheck(fn, (x, *states, *params), fast_mode=fast_mode)


@pytest.mark.slow
@pytest.mark.parametrize("case", GRID, ids=[_id(c) for c in GRID])
def test_gradcheck_every_option(case):
    """Fast-mode gradcheck (random projections of the Jacobian) on every combination."""
    cell, layers, bi, bias, bf, packed, with_states = case
    _, fm = _pair(cell, num_layers=layers, bidirectional=bi, bias=bias, batch_first=bf)
    _gradcheck(fm, packed, with_states, fast_mode=True, seed=zlib.crc32(_id(case).encode()))


@pytest.mark.slow
@pytest.mark.parametrize("everything", [True, False], ids=["all_options", "no_options"])
@pytest.mark.parametrize("cell", CELLS)
def test_gradcheck_full_jacobian(cell, everything):
    """Element-by-element gradcheck at both corners of the grid (every option on, every one off)."""
    kw = {"num_layers": 2, "bidirectional": True, "batch_first": True}
    _, fm = _pair(cell, **kw) if everything else _pair(cell, bias=False)
    _gradcheck(fm, everything, everything, fast_mode=False)


@pytest.mark.parametrize("cell", ["gru", "lstm_proj"])
def test_gradcheck_with_dropout(cell):
    """Training-mode dropout: the backward masks the gradient with the forward's mask."""
    _, fm = _pair(cell, num_layers=3, bidirectional=True, dropout=0.4)
    _gradcheck(fm, True, True, fast_mode=True, reseed=5)


# -- autograd behaviour ----------------------------------------------------------------------------
def test_runs_on_fastrnn_and_falls_back_for_the_rest():
    tm, fm = _pair("lstm")
    x, _ = _tensors(tm, torch.Generator().manual_seed(5))
    out, _ = fm(x)
    assert type(out.grad_fn).__name__ == "_StackFunctionBackward"
    # float16/bfloat16 and other devices: torch's own implementation, torch's numbers
    for dtype in (torch.bfloat16, torch.float16):
        tm16 = copy.deepcopy(tm).to(dtype)
        fm16 = copy.deepcopy(fm).to(dtype)
        assert torch.equal(fm16(x.detach().to(dtype))[0], tm16(x.detach().to(dtype))[0])
    meta = copy.deepcopy(fm).to("meta")
    out, (h, c) = meta(torch.empty(T, B, I, dtype=torch.float64, device="meta"))
    assert out.device.type == "meta" and out.shape == (T, B, H)
    # mixed dtypes: torch's error
    with pytest.raises((RuntimeError, ValueError)):
        fm(x.detach().float())


def test_torch_errors_for_bad_arguments():
    tm, fm = _pair("gru")
    x, (h,) = _tensors(tm, torch.Generator().manual_seed(6))
    for args in [(x[0, 0],), (x, h[0]), (x, h[:, :2])]:
        with pytest.raises((RuntimeError, ValueError)) as want:
            tm(*args)
        with pytest.raises(type(want.value)) as got:
            fm(*args)
        assert str(got.value) == str(want.value)


def test_retain_graph_and_two_backwards():
    tm, fm = _pair("gru", num_layers=2)
    x, _ = _tensors(fm, torch.Generator().manual_seed(8))
    out, h = fm(x)
    out.sum().backward(retain_graph=True)
    g1 = x.grad.clone()
    out.sum().backward()
    torch.testing.assert_close(x.grad, 2 * g1)
    with pytest.raises(RuntimeError):
        out.sum().backward()  # the graph is freed, as torch's is


@pytest.mark.parametrize("what", ["input", "h0", "weight", "output"])
def test_in_place_modification_is_detected(what):
    """The backward reads memory shared with these tensors; torch's version check guards it.

    As it does for torch's own float32 CPU modules (its float64 path does not save the output).
    """
    tm, fm = _pair("lstm", torch.float32)
    for m in (tm, fm):
        x, (h, c) = _tensors(m, torch.Generator().manual_seed(9))
        out, _ = m(x, (h, c))
        loss = out.sum()
        with torch.no_grad():
            {"input": x, "h0": h, "weight": m.weight_hh_l0, "output": out}[what].add_(1)
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            loss.backward()


def test_non_contiguous_inputs():
    tm, fm = _pair("lstm", num_layers=2, bidirectional=True)
    gen = torch.Generator().manual_seed(10)
    x = torch.randn(I, B, 2 * T, generator=gen, dtype=torch.float64)[:, :, ::2].permute(2, 1, 0)
    h = torch.randn(B, 4, 2 * H, generator=gen, dtype=torch.float64)[..., ::2].transpose(0, 1)
    c = torch.randn(4, B, H, generator=gen, dtype=torch.float64)
    assert not x.is_contiguous() and not h.is_contiguous()
    for a, b in zip(_call(fm, x, (h, c), False), _call(tm, x, (h, c), False), strict=True):
        _assert_close(a.detach(), b.detach(), "output", torch.float64)


# -- patch -----------------------------------------------------------------------------------------
class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = torch.nn.LSTM(I, H, batch_first=True)
        self.blocks = torch.nn.ModuleList([torch.nn.GRU(H, H), torch.nn.RNN(H, H)])
        self.head = torch.nn.Linear(H, 1)

    def forward(self, x):
        y, _ = self.lstm(x)
        y = y.transpose(0, 1)
        for block in self.blocks:
            y, _ = block(y)
        return self.head(y).sum()


class MyLSTM(torch.nn.LSTM):
    """A user subclass (may override forward): left alone by patch()."""


def test_patch_keeps_parameters_and_optimizer():
    torch.manual_seed(0)
    model = Net().double()
    ref = copy.deepcopy(model)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    ref_opt = torch.optim.Adam(ref.parameters(), lr=0.1)
    params = {n: p for n, p in model.named_parameters()}
    keys = list(model.state_dict())
    assert ft.patch(model) is model
    assert type(model.lstm) is ft.LSTM
    assert [type(b) for b in model.blocks] == [ft.GRU, ft.RNN]
    assert all(params[n] is p for n, p in model.named_parameters())
    assert list(model.state_dict()) == keys
    x = torch.randn(B, T, I, dtype=torch.float64)
    for _ in range(3):
        for m, o in ((model, opt), (ref, ref_opt)):
            o.zero_grad()
            m(x).backward()
            o.step()
    for (n, p), q in zip(model.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12, msg=n)
    assert ft.unpatch(model) is model
    assert type(model.lstm) is torch.nn.LSTM
    assert [type(b) for b in model.blocks] == [torch.nn.GRU, torch.nn.RNN]


def test_patched_context_restores_only_what_it_patched():
    model = torch.nn.Sequential(torch.nn.LSTM(I, H), MyLSTM(I, H))
    model.append(ft.GRU(I, H))  # fastrnn's already: stays so
    with ft.patched(model) as m:
        assert m is model
        assert [type(x) for x in model] == [ft.LSTM, MyLSTM, ft.GRU]
    assert [type(x) for x in model] == [torch.nn.LSTM, MyLSTM, ft.GRU]
    bare = torch.nn.GRU(I, H)  # a module that is itself an RNN
    assert type(ft.patch(bare)) is ft.GRU
    assert type(ft.unpatch(bare)) is torch.nn.GRU


def test_patch_reports_what_it_swapped(caplog):
    model = torch.nn.Sequential(torch.nn.LSTM(I, H), MyLSTM(I, H), torch.nn.GRUCell(I, H))
    with caplog.at_level("INFO", logger="fastrnn.torch"):
        ft.patch(model)
    assert ft.fastrnn_modules(model) == {"0": "LSTM", "2": "GRUCell"}
    text = caplog.text
    assert "0 (LSTM)" in text and "2 (GRUCell)" in text
    assert "left alone" in text and "1 (MyLSTM)" in text
    ft.unpatch(model)
    assert ft.fastrnn_modules(model) == {}


def test_patch_warns_when_nothing_to_swap():
    with pytest.warns(UserWarning, match="nothing to patch in Sequential"):
        ft.patch(torch.nn.Sequential(torch.nn.Linear(2, 2)))
    with pytest.warns(UserWarning, match=r"left alone: \(model\) \(MyLSTM\)"):
        ft.patch(MyLSTM(I, H))
    cell = torch.nn.LSTMCell(I, H)
    with pytest.warns(UserWarning, match=r"left alone: \(model\) \(LSTMCell\), cells=False"):
        ft.patch(cell, cells=False)
    assert type(cell) is torch.nn.LSTMCell
    with ft.patched(cell) as c:
        assert type(c) is ft.LSTMCell
    assert type(cell) is torch.nn.LSTMCell
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        ft.patch({"lstm": torch.nn.LSTM(I, H)})
    done = ft.patch(torch.nn.LSTM(I, H))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ft.patch(done)  # already patched: nothing new, no warning


# -- a real training loop --------------------------------------------------------------------------
class CharLM(torch.nn.Module):
    def __init__(self, vocab, emb, hidden):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, emb)
        self.rnn = torch.nn.LSTM(emb, hidden, batch_first=True)
        self.head = torch.nn.Linear(hidden, vocab)

    def forward(self, x):
        y, _ = self.rnn(self.emb(x))
        return self.head(y)


def _train(model, batches, steps):
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for xb, yb in itertools.islice(batches, steps):
        opt.zero_grad()
        logits = model(xb)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), yb.ravel())
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return np.array(losses)


def _char_batches(batch, seq, seed):
    with open(DATA, encoding="utf-8") as f:
        text = f.read()
    vocab = sorted(set(text))
    ids = torch.tensor([vocab.index(ch) for ch in text])
    gen = torch.Generator().manual_seed(seed)
    while True:
        starts = torch.randint(0, len(ids) - seq - 1, (batch,), generator=gen)
        win = torch.stack([ids[s : s + seq + 1] for s in starts.tolist()])
        yield win[:, :-1], win[:, 1:]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_training_loop_gives_torch_loss_curve(dtype):
    """Embedding + LSTM + Linear, char-level Tiny Shakespeare, Adam: 50 steps, same losses."""
    torch.manual_seed(0)
    model = CharLM(54, 16, 32).to(dtype)
    patched = ft.patch(copy.deepcopy(model))
    want = _train(model, _char_batches(8, 32, seed=1), 50)
    got = _train(patched, _char_batches(8, 32, seed=1), 50)
    assert want[-1] < want[0] - 0.5  # it does learn
    # the layers' tolerances (measured: 8e-8 relative in float32, 1.5e-16 in float64)
    tol = TOL[np.float32 if dtype == torch.float32 else np.float64]
    np.testing.assert_allclose(got, want, rtol=tol["rtol"], atol=0)
