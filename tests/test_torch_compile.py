"""``torch.compile`` of patched models: fastrnn's kernels as torch.library custom operators.

Graph breaks are counted with ``torch._dynamo.explain``; outputs and gradients of models compiled
with ``backend="aot_eager"`` (Dynamo + AOTAutograd, the path Inductor takes, without compiling
C++) are compared with the same patched model run eagerly; one small model goes through Inductor
(marked slow). The operators themselves are checked by ``torch.library.opcheck``.
"""

from __future__ import annotations

import shutil

import pytest

torch = pytest.importorskip("torch")

import fastrnn.torch as ft  # noqa: E402
from fastrnn import _torch_ops  # noqa: E402

pytestmark = pytest.mark.skipif(
    not _torch_ops.SUPPORTED, reason="this torch has no torch.library.custom_op"
)

pack = torch.nn.utils.rnn.pack_padded_sequence
CLASSES = {"LSTM": torch.nn.LSTM, "GRU": torch.nn.GRU, "RNN": torch.nn.RNN}


@pytest.fixture(autouse=True)
def _dynamo():
    """Dynamo allowed to trace RNN modules (README: the one switch to set), reset after."""
    torch._dynamo.reset()
    with torch._dynamo.config.patch(allow_rnn=True):
        yield
    torch._dynamo.reset()


class Head(torch.nn.Module):
    """A recurrent module, then a Linear on its output and a sum with its final state."""

    def __init__(self, rnn: torch.nn.Module):
        super().__init__()
        self.rnn = rnn
        width = getattr(rnn, "proj_size", 0) or rnn.hidden_size
        self.head = torch.nn.Linear(width * (2 if rnn.bidirectional else 1), 3)

    def forward(self, x, hx=None):
        y, h = self.rnn(x, hx)
        h = h[0] if isinstance(h, tuple) else h
        data = y.data if isinstance(y, torch.nn.utils.rnn.PackedSequence) else y
        return self.head(data).tanh().sum() + h.square().sum()


def _model(kind: str, dtype=torch.float64, **kw) -> Head:
    torch.manual_seed(0)
    return ft.patch(Head(CLASSES[kind](4, 6, **kw)).to(dtype))


def _x(shape, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(*shape, dtype=dtype, generator=torch.Generator().manual_seed(1))


def _grads(model, make_args, fn) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``fn(*args)`` of fresh arguments, then the gradients of the loss and of the leaves."""
    model.zero_grad(set_to_none=True)
    args, leaves = make_args()
    loss = fn(*args)
    loss.backward()
    got = [t.grad.clone() for t in leaves] + [p.grad.clone() for p in model.parameters()]
    return loss.detach(), got


def _compare(model, make_args, backend="aot_eager", tol=1e-12):
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    loss_c, grads_c = _grads(model, make_args, compiled)
    loss_e, grads_e = _grads(model, make_args, model)  # eager: fastrnn's autograd.Function
    torch.testing.assert_close(loss_c, loss_e, rtol=tol, atol=tol)
    assert len(grads_c) == len(grads_e)
    for gc, ge in zip(grads_c, grads_e, strict=True):
        torch.testing.assert_close(gc, ge, rtol=tol, atol=tol)


def _packed_args(batch_first=False, sorted_=False, states=None):
    def make():
        lengths = torch.tensor([5, 4, 2] if sorted_ else [3, 5, 2])
        x = _x((3, 5, 4) if batch_first else (5, 3, 4)).requires_grad_()
        seq = pack(x, lengths, batch_first=batch_first, enforce_sorted=sorted_)
        return ((seq,) if states is None else (seq, states())), [x]

    return make


@pytest.mark.parametrize("kind", list(CLASSES))
@pytest.mark.parametrize("packed", [False, True], ids=["tensor", "packed"])
def test_no_graph_break(kind, packed):
    model = _model(kind, num_layers=2)
    x = _x((5, 3, 4))
    arg = pack(x, torch.tensor([3, 5, 2]), enforce_sorted=False) if packed else x
    explained = torch._dynamo.explain(model)(arg)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1
    # the graph calls fastrnn's operators, not torch's RNN
    code = explained.graphs[0].code
    assert f"fastrnn.stack_v{_torch_ops.VERSION}" in code and "_VF" not in code


@pytest.mark.parametrize("kind", list(CLASSES))
@pytest.mark.parametrize(
    "options",
    [
        {"num_layers": 2},
        {"bidirectional": True, "batch_first": True},
        {"num_layers": 2, "bidirectional": True, "bias": False},
    ],
    ids=["2layers", "bidir-batch_first", "2layers-bidir-nobias"],
)
def test_compiled_matches_eager(kind, options):
    model = _model(kind, **options)
    shape = (3, 5, 4) if options.get("batch_first") else (5, 3, 4)

    def make():
        x = _x(shape).requires_grad_()
        return (x,), [x]

    _compare(model, make)


@pytest.mark.parametrize("kind", list(CLASSES))
@pytest.mark.parametrize("sorted_", [False, True], ids=["unsorted", "sorted"])
def test_compiled_packed_matches_eager(kind, sorted_):
    _compare(_model(kind, num_layers=2), _packed_args(sorted_=sorted_))


@pytest.mark.parametrize("kind", list(CLASSES))
def test_compiled_states_and_unbatched(kind):
    lstm = kind == "LSTM"
    model = _model(kind, num_layers=2, bidirectional=True)

    def states(batch=(3,)):
        h = _x((4, *batch, 6)).requires_grad_()
        c = _x((4, *batch, 6)).requires_grad_()
        return ((h, c) if lstm else h), ([h, c] if lstm else [h])

    def make_batched():
        x = _x((5, 3, 4)).requires_grad_()
        hx, leaves = states()
        return (x, hx), [x, *leaves]

    def make_unbatched():
        x = _x((5, 4)).requires_grad_()
        hx, leaves = states(())
        return (x, hx), [x, *leaves]

    _compare(model, make_batched)
    _compare(model, make_unbatched)

    def make_packed():
        hx, leaves = states()
        x = _x((5, 3, 4)).requires_grad_()
        return (pack(x, torch.tensor([3, 5, 2]), enforce_sorted=False), hx), [x, *leaves]

    _compare(model, make_packed)


def test_compiled_lstm_proj_size_float32():
    model = _model("LSTM", dtype=torch.float32, num_layers=2, proj_size=3)

    def make():
        x = _x((5, 3, 4), torch.float32).requires_grad_()
        return (x,), [x]

    _compare(model, make, tol=1e-6)


def test_compiled_new_lengths_and_batch():
    """Another T or B: Dynamo recompiles once with symbolic sizes, which the fakes take."""
    model = _model("LSTM", num_layers=2)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    for shape in [(5, 3, 4), (7, 3, 4), (9, 2, 4), (4, 6, 4)]:
        x = _x(shape)
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-12, atol=1e-12)


def test_compiled_weights_computed_in_the_graph():
    """Weights that are intermediates of the graph (``functional_call`` of scaled parameters),
    with Inductor's min-cut partitioner (which may recompute what the backward needs)."""
    model = ft.patch(torch.nn.LSTM(4, 6, num_layers=2).double())
    params = dict(model.named_parameters())

    def f(x):
        w = {k: v * 2.0 for k, v in params.items()}
        y, _ = torch.func.functional_call(model, w, (x,))
        return (y.relu() * 3).sum()

    compiled = torch.compile(f, backend="aot_eager_decomp_partition", fullgraph=True)
    results = []
    for fn in (compiled, f):
        x = _x((5, 3, 4)).requires_grad_()
        model.zero_grad(set_to_none=True)
        fn(x).backward()
        results.append([x.grad, *(p.grad for p in params.values())])
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_compiled_no_grad_and_eval():
    model = _model("GRU", num_layers=2, dropout=0.5)
    x = _x((5, 3, 4))
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-12, atol=1e-12)
    # the inference graph keeps no workspace: nothing is left registered for a backward
    assert len(_torch_ops._LIVE) == 0


def test_compiled_dropout_trains():
    """Training-mode dropout: masks drawn from a seed the graph makes; a backward runs."""
    model = _model("LSTM", num_layers=3, dropout=0.5)
    x = _x((5, 3, 4)).requires_grad_()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    loss = compiled(x)
    loss.backward()
    model.eval()
    assert not torch.allclose(loss.detach(), model(x).detach())
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    assert torch.isfinite(x.grad).all()


def test_workspace_freed_with_the_graph():
    model = _model("LSTM")
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    loss = compiled(_x((5, 3, 4)))
    assert len(_torch_ops._LIVE) == 1  # the forward's cache, until the backward
    loss.backward()
    del loss
    assert len(_torch_ops._LIVE) == 0


def test_fallbacks_stay_torch_under_compile():
    """What eager fastrnn.torch leaves to torch (bfloat16 here), a compiled one does too."""
    model = _model("GRU", dtype=torch.bfloat16)
    x = _x((5, 3, 4), torch.bfloat16)
    explained = torch._dynamo.explain(model)(x)
    assert explained.graph_break_count == 0
    assert "fastrnn" not in explained.graphs[0].code
    got = torch.compile(model, backend="eager", fullgraph=True)(x)
    torch.testing.assert_close(got, ft.unpatch(model)(x))


def test_cells_under_compile_are_torch():
    """Cells compile as torch's (Inductor fuses a step's few ops): no break either."""
    cell = ft.patch(torch.nn.LSTMCell(4, 6).double())
    explained = torch._dynamo.explain(cell)(_x((3, 4)))
    assert explained.graph_break_count == 0


def test_double_backward_through_a_compiled_graph_is_torchs_error():
    """Second order through a compiled graph: AOTAutograd refuses it (README says so)."""
    model = ft.patch(torch.nn.GRU(4, 5).double())
    x = _x((3, 2, 4)).requires_grad_()
    y, _ = torch.compile(model, backend="aot_eager", fullgraph=True)(x)
    (g,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        g.sum().backward()


def test_without_allow_rnn_dynamo_refuses():
    """The README's one required switch: without it Dynamo rejects any nn.RNNBase."""
    model = _model("RNN")
    with torch._dynamo.config.patch(allow_rnn=False):
        compiled = torch.compile(model, backend="eager", fullgraph=True)
        with pytest.raises(Exception, match="allow_rnn"):
            compiled(_x((5, 3, 4)))


def _op_args(kind, packed=False, keep=True):
    m = CLASSES[kind](4, 6, num_layers=2, bidirectional=True).double()
    weights = [w.detach().requires_grad_() for w in m._flat_weights]
    x = _x((5, 3, 4)).requires_grad_()
    packing = [None, None, None]
    if packed:
        seq = pack(x.detach(), torch.tensor([3, 5, 2]), enforce_sorted=False)
        x = seq.data.clone().requires_grad_()
        packing = [seq.batch_sizes, seq.sorted_indices, seq.unsorted_indices]
    h0 = _x((4, 3, 6)).requires_grad_()
    c0 = _x((4, 3, 6)).requires_grad_() if kind == "LSTM" else None
    config = [m.mode, 4, 6, 2, True, True, 0.0, 0, keep]
    return (x, h0, c0, weights, *packing, None, *config)


@pytest.mark.parametrize("kind", list(CLASSES))
@pytest.mark.parametrize("packed", [False, True], ids=["tensor", "packed"])
def test_opcheck(kind, packed):
    """Schema, fake implementation, autograd registration and AOT dispatch of the operator."""
    args = _op_args(kind, packed)
    tests = ("test_schema", "test_autograd_registration", "test_faketensor")
    torch.library.opcheck(_torch_ops.stack_op._opoverload, args, test_utils=tests)


def test_backward_recomputes_when_memory_was_not_kept():
    """A backward that receives other tensors than the forward's (AOTAutograd recomputed them)
    recomputes the forward from those, and gives the same gradients."""
    args = _op_args("LSTM")
    x, h0, c0, weights = args[:4]
    y, h_n, c_n, handle = _torch_ops.stack_op(*args)
    dy, dh_n, dc_n = torch.ones_like(y), torch.ones_like(h_n), torch.ones_like(c_n)
    op = _torch_ops.backward_op
    kept = op(handle, dy, dh_n, dc_n, x, h0, c0, y, weights)
    before = _torch_ops._COUNTS["recomputed_forwards"]
    copies = [w.detach().clone() for w in weights]
    again = op(handle, dy, dh_n, dc_n, x, h0, c0, y.clone(), copies)
    assert _torch_ops._COUNTS["recomputed_forwards"] == before + 1
    for a, b in zip(kept, again, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_backward_without_workspace_raises():
    args = _op_args("GRU", keep=False)
    y, h_n, _, handle = _torch_ops.stack_op(*args)
    x, h0, _, weights = args[:4]
    with pytest.raises(RuntimeError, match="workspace is empty"):
        _torch_ops.backward_op(
            handle, torch.ones_like(y), torch.ones_like(h_n), None, x, h0, None, y, weights
        )


class _WordLM(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(50, 8)
        self.rnn = torch.nn.LSTM(8, 8, num_layers=2)
        self.head = torch.nn.Linear(8, 50)

    def forward(self, ids):
        return self.head(self.rnn(self.emb(ids))[0])


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("g++") is None and shutil.which("c++") is None,
    reason="Inductor compiles C++: no C++ compiler on the PATH (.ci/wheel runs it with one)",
)
def test_inductor_word_lm():
    """One small Inductor compile (about 10-30 s on 2 cores): the benchmark's model."""
    torch.manual_seed(0)
    model = ft.patch(_WordLM())
    ids = torch.randint(0, 50, (7, 3), generator=torch.Generator().manual_seed(2))
    target = torch.randint(0, 50, (7, 3), generator=torch.Generator().manual_seed(3))

    def loss_of(fn):
        logits = fn(ids)
        return torch.nn.functional.cross_entropy(logits.reshape(-1, 50), target.ravel())

    compiled = torch.compile(model, fullgraph=True)
    recomputed = _torch_ops._COUNTS["recomputed_forwards"]
    results = []
    for fn in (compiled, compiled, model):  # twice compiled: the second reuses the graph
        model.zero_grad(set_to_none=True)
        loss = loss_of(fn)
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    for loss, grads in results[:2]:
        torch.testing.assert_close(loss, results[2][0], rtol=1e-5, atol=1e-6)
        for a, b in zip(grads, results[2][1], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # the graph kept what the caches read: no backward had to compute its forward again
    assert _torch_ops._COUNTS["recomputed_forwards"] == recomputed
