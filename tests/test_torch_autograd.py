"""fastrnn.torch under every autograd mode, compared with torch's own modules (float64: 1e-10).

Second order (create_graph=True), forward-mode AD, torch.func transforms, and the audit of every
way a tensor can reach the patched forward: each case runs on torch's module and on the patched
one with the same weights and must give the same numbers (or the same error).
"""

import itertools
import zlib

import pytest

torch = pytest.importorskip("torch")
import torch.autograd.forward_ad as fwAD  # noqa: E402
from torch.func import functional_call  # noqa: E402
from torch.nn.utils.rnn import pack_padded_sequence  # noqa: E402

import fastrnn.torch as ft  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported")

T, B, I, H, P = 3, 2, 2, 3, 2
LENGTHS = [2, 3]
TOL = {"rtol": 1e-10, "atol": 1e-10}
CELLS = {
    "rnn_tanh": (torch.nn.RNN, {"nonlinearity": "tanh"}),
    "rnn_relu": (torch.nn.RNN, {"nonlinearity": "relu"}),
    "gru": (torch.nn.GRU, {}),
    "lstm": (torch.nn.LSTM, {}),
    "lstm_proj": (torch.nn.LSTM, {"proj_size": P}),
}
# (layers, bidirectional, bias, batch_first, packed, states given): every option on and off
OPTIONS = [
    (1, False, True, False, False, True),
    (2, True, False, True, True, True),
    (2, True, True, False, True, False),
    (1, False, False, True, False, False),
]
GRID = list(itertools.product(CELLS, OPTIONS))


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _id(case):
    cell, (layers, bi, bias, bf, packed, states) = case
    flags = [f"L{layers}", "bi" if bi else "uni", "bias" if bias else "nobias"]
    flags += ["batch_first"] * bf + ["packed"] * packed + ["h0"] * states
    return "-".join([cell, *flags])


def _pair(cell, **kw):
    """torch's module and a patched copy with the same weights (float64)."""
    cls, ckw = CELLS[cell]
    torch.manual_seed(zlib.crc32(repr((cell, sorted(kw.items()))).encode()))
    tm = cls(I, H, dtype=torch.float64, **ckw, **kw)
    fm = ft.patch(cls(I, H, dtype=torch.float64, **ckw, **kw))
    fm.load_state_dict(tm.state_dict())
    return tm, fm


def _data(m, seed=0, grad=True):
    gen = torch.Generator().manual_seed(seed)
    LD = m.num_layers * (2 if m.bidirectional else 1)
    R = m.proj_size or m.hidden_size

    def n(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).requires_grad_(grad)

    x = n(B, T, I) if m.batch_first else n(T, B, I)
    states = (n(LD, B, R), n(LD, B, H)) if m.mode == "LSTM" else (n(LD, B, R),)
    return x, states


def _call(m, x, states, packed=False, params=None):
    """The outputs of ``m`` as a flat tuple (packed data for a packed input)."""
    inp = x
    if packed:
        inp = pack_padded_sequence(x, torch.tensor(LENGTHS), m.batch_first, enforce_sorted=False)
    hx = None if not states else (tuple(states) if m.mode == "LSTM" else states[0])
    out, s = m(inp, hx) if params is None else functional_call(m, params, (inp, hx))
    out = out.data if packed else out
    return (out, *s) if m.mode == "LSTM" else (out, s)


def _close(got, want, what=""):
    if isinstance(want, tuple | list):
        assert len(got) == len(want), what
        for i, (a, b) in enumerate(zip(got, want, strict=True)):
            _close(a, b, f"{what}[{i}]")
    elif want is None:
        assert got is None, what
    else:
        assert isinstance(got, torch.Tensor), what
        torch.testing.assert_close(got, want, **TOL, msg=what)


def _is_fastrnn(out):
    """Whether fastrnn's autograd node is in the graph of ``out`` (a few nodes up at most)."""
    nodes = [out.grad_fn]
    for _ in range(4):
        if any(type(n).__name__ == "_StackFunctionBackward" for n in nodes):
            return True
        nodes = [f for n in nodes if n is not None for f, _ in n.next_functions]
    return False


# -- second order ----------------------------------------------------------------------------------
def test_gradient_penalty_matches_torch():
    """The issue's example: a constant incoming gradient, create_graph, then the penalty."""
    tm, fm = _pair("lstm", num_layers=2)
    norms = []
    for m in (tm, fm):
        x = torch.randn(5, 2, I, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        x.requires_grad_()
        out, _ = m(x)
        (dx,) = torch.autograd.grad(out.sum(), x, create_graph=True)
        loss = out.sum() + (dx**2).sum()
        loss.backward()
        norms.append(m.weight_ih_l0.grad.norm())
        assert m is tm or _is_fastrnn(out)
    _close(norms[1], norms[0])
    _close(list(fm.parameters()), list(tm.parameters()))
    grads = [[p.grad for p in m.parameters()] for m in (tm, fm)]
    _close(grads[1], grads[0], "parameter grads with the penalty")


def _gradgrad_fn(m, states, packed, reseed=None):
    names = [n for n, _ in m.named_parameters()]

    def fn(x, *rest):
        if reseed is not None:
            torch.manual_seed(reseed)
        st, ps = rest[: len(states)], rest[len(states) :]
        return _call(m, x, st, packed, dict(zip(names, ps, strict=True)))

    return fn


@pytest.mark.slow
@pytest.mark.parametrize("case", GRID, ids=[_id(c) for c in GRID])
def test_gradgradcheck_every_option(case):
    cell, (layers, bi, bias, bf, packed, with_states) = case
    _, fm = _pair(cell, num_layers=layers, bidirectional=bi, bias=bias, batch_first=bf)
    x, states = _data(fm, seed=zlib.crc32(_id(case).encode()))
    states = states if with_states else ()
    params = [p.detach().clone().requires_grad_() for p in fm.parameters()]
    fn = _gradgrad_fn(fm, states, packed)
    assert _is_fastrnn(fn(x, *states, *params)[0])
    assert torch.autograd.gradgradcheck(fn, (x, *states, *params), fast_mode=True)


@pytest.mark.slow
@pytest.mark.parametrize("cell", ["gru", "lstm_proj"])
def test_gradgradcheck_with_dropout(cell):
    """The recomputation applies the forward's own dropout masks."""
    _, fm = _pair(cell, num_layers=3, bidirectional=True, dropout=0.4)
    x, states = _data(fm, seed=3)
    params = [p.detach().clone().requires_grad_() for p in fm.parameters()]
    fn = _gradgrad_fn(fm, states, True, reseed=5)
    assert torch.autograd.gradgradcheck(fn, (x, *states, *params), fast_mode=True)


@pytest.mark.parametrize("cell", CELLS)
def test_second_order_matches_torch(cell):
    """Hessian-vector products of every input and weight, grad_outputs that require grad too."""
    tm, fm = _pair(cell, num_layers=2, bidirectional=True)
    results = []
    for m in (tm, fm):
        x, states = _data(m, seed=4)
        outs = _call(m, x, states, packed=True)
        gen = torch.Generator().manual_seed(5)
        vs = [torch.randn(o.shape, generator=gen, dtype=o.dtype, requires_grad=True) for o in outs]
        wrt = [x, *states, *m.parameters()]
        firsts = torch.autograd.grad(outs, wrt, vs, create_graph=True)
        second = sum((g * torch.randn(g.shape, generator=gen, dtype=g.dtype)).sum() for g in firsts)
        results.append([g.detach() for g in firsts] + list(torch.autograd.grad(second, wrt + vs)))
    _close(results[1], results[0])


# -- forward mode and torch.func -------------------------------------------------------------------
@pytest.mark.parametrize("cell", CELLS)
def test_forward_ad_dual_tensors_match_torch(cell):
    tm, fm = _pair(cell, num_layers=2, bidirectional=True, batch_first=True)
    got = []
    for m in (tm, fm):
        x, states = _data(m, seed=6, grad=False)
        gen = torch.Generator().manual_seed(7)
        params = {n: p.detach() for n, p in m.named_parameters()}
        with fwAD.dual_level():
            dual = [
                fwAD.make_dual(t, torch.randn(t.shape, generator=gen, dtype=t.dtype))
                for t in (x, *states)
            ]
            dparams = {
                n: fwAD.make_dual(p, torch.randn(p.shape, generator=gen, dtype=p.dtype))
                for n, p in params.items()
            }
            outs = _call(m, dual[0], dual[1:], params=dparams)
            got.append([t for o in outs for t in fwAD.unpack_dual(o)])
    _close(got[1], got[0])


@pytest.mark.parametrize("cell", CELLS)
def test_torch_func_transforms_match_torch(cell):
    """jvp, grad, vjp, jacrev, jacfwd and hessian over the parameters with functional_call."""
    tm, fm = _pair(cell, num_layers=2, bidirectional=True)
    got = []
    for m in (tm, fm):
        x, states = _data(m, seed=8, grad=False)
        params = {n: p.detach() for n, p in m.named_parameters()}
        tangent = {n: torch.ones_like(p) for n, p in params.items()}

        def f(p, x=x, states=states, m=m):
            return _call(m, x, states, params=p)

        def loss(p, f=f):
            return sum(o.square().sum() for o in f(p))

        res = list(torch.func.jvp(f, (params,), (tangent,)))
        res.append(torch.func.grad(loss)(params))
        outs, pullback = torch.func.vjp(f, params)
        res.append(pullback(tuple(torch.ones_like(o) for o in outs)))
        res.append(torch.func.jacrev(f)(params))
        res.append(torch.func.jacfwd(f)(params))
        res.append(
            torch.func.hessian(loss)(
                {"weight_hh_l0": params["weight_hh_l0"]}
                | {k: v for k, v in params.items() if k != "weight_hh_l0"}
            )
        )
        got.append(res)

    def flat(r):
        if isinstance(r, dict):
            return [t for k in sorted(r) for t in flat(r[k])]
        if isinstance(r, tuple | list):
            return [t for v in r for t in flat(v)]
        return [r]

    _close(flat(got[1]), flat(got[0]))


@pytest.mark.slow
@pytest.mark.parametrize("cell", ["lstm_proj", "gru"])
def test_gradcheck_forward_ad_and_batched_grad(cell):
    """gradcheck's forward-mode, batched (vmap) and double-backward checks, all at once."""
    _, fm = _pair(cell, num_layers=2, bidirectional=True)
    x, states = _data(fm, seed=11)
    params = [p.detach().clone().requires_grad_() for p in fm.parameters()]
    fn = _gradgrad_fn(fm, states, False)
    inputs = (x, *states, *params)
    assert torch.autograd.gradcheck(
        fn, inputs, check_forward_ad=True, check_batched_grad=True, fast_mode=True
    )
    assert torch.autograd.gradgradcheck(fn, inputs, check_fwd_over_rev=True, fast_mode=True)


# -- the audit: every way a tensor reaches the forward ---------------------------------------------
def _run_case(m, what):
    """Outputs and gradients of one scenario on module ``m``."""
    x, states = _data(m, seed=9)
    gen = torch.Generator().manual_seed(10)

    def weighted(outs):
        return sum((o * torch.randn(o.shape, generator=gen, dtype=o.dtype)).sum() for o in outs)

    params = list(m.parameters())
    leaves = [x, *states, *params]
    if what == "weights_only":
        x.requires_grad_(False), [s.requires_grad_(False) for s in states]
    elif what == "inputs_only":
        [p.requires_grad_(False) for p in params]
        [s.requires_grad_(False) for s in states]
    elif what == "states_only":
        x.requires_grad_(False), [p.requires_grad_(False) for p in params]
    elif what == "none":
        [t.requires_grad_(False) for t in leaves]
    if what in ("weights_only", "inputs_only", "states_only", "none"):
        outs = _call(m, x, states)
        if what != "none":
            weighted(outs).backward()
        res = [o.detach() for o in outs] + [t.grad for t in leaves]
        [p.requires_grad_(True) for p in params]
        return res
    if what == "no_grad":
        with torch.no_grad():
            return list(_call(m, x, states))
    if what == "inference_mode":
        with torch.inference_mode():
            return list(_call(m, x.detach(), [s.detach() for s in states]))
    if what == "inference_tensor_outside":
        with torch.inference_mode():
            xi = torch.randn(x.shape, generator=gen, dtype=x.dtype)
        try:
            return list(_call(m, xi, ()))
        except RuntimeError as e:
            return [str(e)]
    if what in ("view_params", "nonleaf_params"):
        names = [n for n, _ in m.named_parameters()]
        base = torch.randn(sum(p.numel() for p in params) * 2, generator=gen, dtype=x.dtype)
        base.requires_grad_()
        if what == "view_params":  # strided views of one buffer
            flat = base[::2]
        else:  # computed from a leaf: a non-leaf parameter
            flat = (base[: base.numel() // 2] * 0.5).tanh()
        chunks, k = {}, 0
        for n, p in zip(names, params, strict=True):
            chunks[n] = (
                flat[k : k + p.numel()].view(p.shape)
                if what == "nonleaf_params"
                else (
                    flat[k : k + p.numel()].as_strided(
                        p.shape, (p.shape[-1], 1) if p.dim() == 2 else (1,)
                    )
                )
            )
            k += p.numel()
        if what == "view_params":
            chunks = {
                n: flat.as_strided(p.shape, p.stride(), 2 * off)
                for (n, p), off in zip(
                    m.named_parameters(),
                    itertools.accumulate([0] + [p.numel() for p in params]),
                    strict=False,
                )
            }
        outs = _call(m, x, states, params=chunks)
        weighted(outs).backward()
        return [o.detach() for o in outs] + [base.grad, x.grad]
    if what == "param_hooks":
        handles = [p.register_hook(lambda g, i=i: g * (i + 2)) for i, p in enumerate(params)]
        outs = _call(m, x, states)
        outs[0].register_hook(lambda g: g.flip(0))
        weighted(outs).backward()
        [h.remove() for h in handles]
        return [t.grad for t in leaves]
    if what == "retain_graph":
        outs = _call(m, x, states)
        loss = weighted(outs)
        loss.backward(retain_graph=True)
        first = [t.grad.clone() for t in leaves]
        loss.backward()
        return first + [t.grad for t in leaves]
    if what == "shared_module":  # one module, two branches of one graph
        x2 = (x * 2 + 1).detach().requires_grad_()
        a, b = _call(m, x, states), _call(m, x2, ())
        (weighted(a) * weighted(b)).backward()
        return [t.grad for t in leaves] + [x2.grad]
    if what == "accumulate":  # two forwards, then two backwards into the same .grad
        l1 = weighted(_call(m, x, states))
        l2 = weighted(_call(m, x.flip(0), ()))
        l1.backward()
        l2.backward()
        return [t.grad for t in leaves]
    if what == "grad_subset":  # torch.autograd.grad of the input only, weights requiring grad
        outs = _call(m, x, states)
        return list(torch.autograd.grad(weighted(outs), [x, states[-1]]))
    if what == "checkpoint":
        from torch.utils.checkpoint import checkpoint

        outs = checkpoint(lambda x, *s: _call(m, x, s), x, *states, use_reentrant=False)
        weighted(outs).backward()
        return [t.grad for t in leaves]
    if what == "flop_counter":
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            outs = _call(m, x, states)
            weighted(outs).backward()
        return [t.grad for t in leaves] + [torch.tensor(float(counter.get_total_flops()))]
    if what == "tensor_subclass":

        class Logged(torch.Tensor):
            seen = []

            @classmethod
            def __torch_function__(cls, func, types, args=(), kwargs=None):
                cls.seen.append(func)
                return super().__torch_function__(func, types, args, kwargs or {})

        outs = _call(m, x.as_subclass(Logged), states)
        weighted(outs).backward()
        return [t.grad for t in leaves] + [torch.tensor(float(bool(Logged.seen)))]
    if what == "jacobian_vectorized":  # batched incoming gradients (is_grads_batched=True)
        xs = x.detach()
        jac = torch.autograd.functional.jacobian(
            lambda xs: _call(m, xs, states)[-1], xs, vectorize=True
        )
        hess = torch.autograd.functional.hessian(
            lambda xs: _call(m, xs, states)[0].square().sum(), xs, vectorize=True
        )
        return [jac, hess]
    if what == "forward_ad_level_without_duals":
        with fwAD.dual_level():
            outs = _call(m, x, states)
        weighted(outs).backward()
        return [t.grad for t in leaves]
    raise AssertionError(what)


AUDIT = [
    "weights_only",
    "inputs_only",
    "states_only",
    "none",
    "no_grad",
    "inference_mode",
    "inference_tensor_outside",
    "view_params",
    "nonleaf_params",
    "param_hooks",
    "retain_graph",
    "shared_module",
    "accumulate",
    "grad_subset",
    "checkpoint",
    "flop_counter",
    "tensor_subclass",
    "forward_ad_level_without_duals",
    "jacobian_vectorized",
]


@pytest.mark.parametrize("what", AUDIT)
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_relu", "lstm_proj"])
def test_audit_matches_torch(cell, what):
    tm, fm = _pair(cell, num_layers=2, bidirectional=True)
    want = _run_case(tm, what)
    got = _run_case(fm, what)
    if what == "inference_tensor_outside":
        assert got == want  # both succeed with the same outputs, or both raise torch's error
        return
    _close(got, want, what)


def test_fastrnn_computes_the_plain_cases():
    """The audit is not vacuous: the plain cases do run on fastrnn's node."""
    _, fm = _pair("lstm")
    x, states = _data(fm)
    assert _is_fastrnn(_call(fm, x, states)[0])
    with torch.no_grad():
        assert _call(fm, x, states)[0].grad_fn is None
    names = [n for n, _ in fm.named_parameters()]
    nonleaf = {n: p * 1.0 for n, p in zip(names, fm.parameters(), strict=True)}
    assert _is_fastrnn(_call(fm, x, states, params=nonleaf)[0])
