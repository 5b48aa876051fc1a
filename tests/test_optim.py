"""fastrnn/optim: optimizers against torch.optim, state dicts, validation and in-place behaviour."""

import tracemalloc
import warnings

import numpy as np
import pytest

import fastrnn.optim as optim
from fastrnn.nn import Parameter

SHAPES = [(5, 3), (4,), (2, 2, 2)]

CONFIGS = [
    ("SGD", {"lr": 0.1}),
    ("SGD", {"lr": 0.05, "momentum": 0.9}),
    ("SGD", {"lr": 0.05, "momentum": 0.9, "dampening": 0.5}),
    ("SGD", {"lr": 0.05, "momentum": 0.9, "nesterov": True}),
    ("SGD", {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01}),
    ("SGD", {"lr": 0.1, "weight_decay": 0.1, "maximize": True}),
    ("SGD", {"lr": 0.1, "maximize": True}),
    ("SGD", {"momentum": 0.5, "dampening": 0.2, "weight_decay": 0.05, "maximize": True}),
    ("Adam", {}),
    ("Adam", {"lr": 0.01, "weight_decay": 0.1}),
    ("Adam", {"lr": 0.01, "amsgrad": True}),
    ("Adam", {"lr": 0.01, "amsgrad": True, "weight_decay": 0.1, "maximize": True}),
    ("Adam", {"lr": 0.02, "betas": (0.8, 0.9), "eps": 1e-6}),
    ("Adam", {"lr": 0.01, "weight_decay": 0.1, "decoupled_weight_decay": True}),
    ("AdamW", {"lr": 0.01}),
    ("AdamW", {"lr": 0.01, "weight_decay": 0.5, "amsgrad": True}),
    ("AdamW", {"lr": 0.01, "weight_decay": 0.0, "maximize": True}),
    ("RMSprop", {}),
    ("RMSprop", {"alpha": 0.9, "eps": 1e-6}),
    ("RMSprop", {"centered": True}),
    ("RMSprop", {"momentum": 0.9}),
    ("RMSprop", {"momentum": 0.5, "centered": True, "weight_decay": 0.1}),
    ("RMSprop", {"maximize": True, "weight_decay": 0.1}),
    ("Adagrad", {}),
    ("Adagrad", {"lr": 0.1, "lr_decay": 0.01}),
    ("Adagrad", {"weight_decay": 0.1, "initial_accumulator_value": 0.1}),
    ("Adagrad", {"eps": 1e-5, "maximize": True}),
]


def _ids(config):
    name, kw = config
    return name + "-" + ",".join(f"{k}={v}" for k, v in kw.items())


def _run(name, kwargs, steps, rng, dtype=np.float64, groups=None):
    """Step ours and torch's optimizer on the same gradients; return both parameter lists."""
    torch = pytest.importorskip("torch")
    init = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    ours = [Parameter(a.copy()) for a in init]
    theirs = [torch.tensor(a.copy(), requires_grad=True) for a in init]
    if groups is None:
        opt = getattr(optim, name)(ours, **kwargs)
        topt = getattr(torch.optim, name)(theirs, foreach=False, **kwargs)
    else:  # groups: list of (indices, overrides)
        opt = getattr(optim, name)(
            [{"params": [ours[i] for i in idx], **over} for idx, over in groups], **kwargs
        )
        topt = getattr(torch.optim, name)(
            [{"params": [theirs[i] for i in idx], **over} for idx, over in groups],
            foreach=False,
            **kwargs,
        )
    for step in range(steps):
        for i, (p, t) in enumerate(zip(ours, theirs, strict=True)):
            if i == 1 and step % 3 == 0:  # a parameter that sometimes has no gradient
                p.grad, t.grad = None, None
                continue
            g = rng.standard_normal(p.shape).astype(dtype)
            p.grad, t.grad = g, torch.tensor(g)
        grads = [None if p.grad is None else p.grad.copy() for p in ours]
        opt.step()
        topt.step()
        for p, g in zip(ours, grads, strict=True):  # the update never writes into grad
            if g is not None:
                np.testing.assert_array_equal(p.grad, g)
    return ours, theirs, opt


@pytest.mark.parametrize("config", CONFIGS, ids=_ids)
def test_matches_torch_float64(config):
    name, kwargs = config
    ours, theirs, _ = _run(name, kwargs, 100, np.random.default_rng(0))
    for p, t in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(p.data, t.detach().numpy(), rtol=1e-6, atol=1e-12)
        assert p.data.dtype == np.float64


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW", "RMSprop", "Adagrad"])
def test_matches_torch_float32(name):
    kwargs = {"lr": 0.01, "momentum": 0.9} if name in ("SGD", "RMSprop") else {"lr": 0.01}
    ours, theirs, opt = _run(name, kwargs, 30, np.random.default_rng(1), dtype=np.float32)
    for p, t in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(p.data, t.detach().numpy(), rtol=1e-5, atol=1e-6)
        assert p.data.dtype == np.float32
    assert all(
        v.dtype == np.float32 for s in opt.state.values() for v in s.values() if hasattr(v, "dtype")
    )


def test_param_groups_match_torch():
    groups = [([0, 2], {"lr": 0.01, "momentum": 0.5}), ([1], {"weight_decay": 0.1})]
    ours, theirs, opt = _run("SGD", {"lr": 0.1}, 50, np.random.default_rng(2), groups=groups)
    for p, t in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(p.data, t.detach().numpy(), rtol=1e-6, atol=1e-12)
    assert opt.param_groups[0]["lr"] == 0.01 and opt.param_groups[1]["lr"] == 0.1
    assert opt.param_groups[1]["momentum"] == 0.0


@pytest.mark.parametrize(
    "config",
    [c for c in CONFIGS if c[0] != "SGD" or "momentum" in c[1]],
    ids=_ids,
)
def test_state_dict_resume_is_bit_identical(config):
    name, kwargs = config
    rng = np.random.default_rng(3)
    init = [rng.standard_normal(s) for s in SHAPES]
    grads = [[rng.standard_normal(s) for s in SHAPES] for _ in range(20)]

    def steps(params, opt, gs):
        for g_step in gs:
            for p, g in zip(params, g_step, strict=True):
                p.grad = g
            opt.step()

    a = [Parameter(x.copy()) for x in init]
    opt_a = getattr(optim, name)(a, **kwargs)
    steps(a, opt_a, grads)

    b = [Parameter(x.copy()) for x in init]
    opt_b = getattr(optim, name)(b, **kwargs)
    steps(b, opt_b, grads[:10])
    saved = opt_b.state_dict()
    c = [Parameter(p.data.copy()) for p in b]
    steps(b, opt_b, grads[10:11])  # the saved copy must not follow later steps
    opt_c = getattr(optim, name)(c, **kwargs)
    opt_c.load_state_dict(saved)
    steps(c, opt_c, grads[10:])
    for pa, pc in zip(a, c, strict=True):
        np.testing.assert_array_equal(pa.data, pc.data)


def test_state_dict_layout():
    p, q = Parameter(np.zeros((2, 3))), Parameter(np.zeros(4))
    opt = optim.Adam([{"params": [p]}, {"params": [q], "lr": 0.1}], amsgrad=True)
    p.grad = np.ones((2, 3))
    opt.step()
    sd = opt.state_dict()
    assert list(sd["state"]) == [0]  # q has no state yet
    assert set(sd["state"][0]) == {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"}
    assert sd["state"][0]["step"] == 1 and sd["state"][0]["exp_avg"].shape == (2, 3)
    assert sd["param_groups"][0]["params"] == [0] and sd["param_groups"][1]["params"] == [1]
    assert sd["param_groups"][1]["lr"] == 0.1 and sd["param_groups"][0]["betas"] == (0.9, 0.999)


def test_load_state_dict_refuses_mismatches_and_changes_nothing():
    p = Parameter(np.zeros(3))
    adam = optim.Adam([p], lr=0.5)
    p.grad = np.ones(3)
    adam.step()
    sgd = optim.SGD([Parameter(np.zeros(3))], momentum=0.9)
    with pytest.raises(ValueError, match="another optimizer than SGD"):
        sgd.load_state_dict(adam.state_dict())
    before = adam.state_dict()
    bad = adam.state_dict()
    bad["state"][0]["exp_avg"] = np.zeros(4)
    bad["param_groups"][0]["lr"] = 0.01
    with pytest.raises(ValueError, match=r"'exp_avg' of parameter 0 has shape \(4,\)"):
        adam.load_state_dict(bad)
    assert adam.param_groups[0]["lr"] == 0.5  # untouched
    np.testing.assert_array_equal(adam.state[p]["exp_avg"], before["state"][0]["exp_avg"])
    two = optim.Adam([{"params": [p]}, {"params": [Parameter(np.zeros(1))]}])
    with pytest.raises(ValueError, match="state_dict has 1 parameter groups, the optimizer has 2"):
        two.load_state_dict(adam.state_dict())
    amsgrad = adam.state_dict()
    amsgrad["param_groups"][0]["amsgrad"] = True
    with pytest.raises(ValueError, match="expects"):
        adam.load_state_dict(amsgrad)
    negative = adam.state_dict()
    negative["param_groups"][0]["lr"] = -1.0
    with pytest.raises(ValueError, match="parameter group 0 of state_dict: lr must be"):
        adam.load_state_dict(negative)
    with pytest.raises(ValueError, match="'state' and 'param_groups'"):
        adam.load_state_dict({"state": {}})


@pytest.mark.parametrize(
    ("cls", "kwargs", "match"),
    [
        (optim.SGD, {"lr": -0.1}, "lr must be in"),
        (optim.SGD, {"lr": float("nan")}, "lr must be in"),
        (optim.SGD, {"momentum": -0.9}, "momentum must be in"),
        (optim.SGD, {"weight_decay": -1}, "weight_decay must be in"),
        (optim.SGD, {"dampening": 1.5}, "dampening must be in"),
        (optim.SGD, {"nesterov": True}, "nesterov=True requires momentum > 0"),
        (optim.SGD, {"nesterov": True, "momentum": 0.9, "dampening": 0.1}, "dampening = 0"),
        (optim.Adam, {"betas": (1.0, 0.999)}, r"betas\[0\] must be in \[0.0, 1.0\)"),
        (optim.Adam, {"betas": (0.9, -0.1)}, r"betas\[1\] must be in"),
        (optim.Adam, {"eps": -1e-8}, "eps must be in"),
        (optim.AdamW, {"weight_decay": -0.01}, "weight_decay must be in"),
        (optim.RMSprop, {"alpha": 1.5}, r"alpha must be in \[0.0, 1.0\]"),
        (optim.RMSprop, {"momentum": -1}, "momentum must be in"),
        (optim.Adagrad, {"lr_decay": -1}, "lr_decay must be in"),
        (optim.Adagrad, {"initial_accumulator_value": -1}, "initial_accumulator_value must be"),
    ],
)
def test_hyperparameter_validation(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls([Parameter(np.zeros(2))], **kwargs)
    with pytest.raises(ValueError, match=match):  # group overrides are checked too
        cls([{"params": [Parameter(np.zeros(2))], **kwargs}])


def test_params_argument_errors():
    p = Parameter(np.zeros(2))
    with pytest.raises(TypeError, match="iterable of Parameters"):
        optim.SGD(p)
    with pytest.raises(ValueError, match="empty parameter list"):
        optim.SGD([])
    with pytest.raises(TypeError, match=r"params\[1\] must be a Parameter"):
        optim.SGD([p, np.zeros(2)])
    with pytest.raises(ValueError, match="appears more than once"):
        optim.SGD([p, p])
    with pytest.raises(ValueError, match="appears more than once"):
        optim.SGD([{"params": [p]}, {"params": [p]}])
    with pytest.raises(TypeError, match="betas must be a tuple of 2 floats"):
        optim.Adam([p], betas=0.9)
    with pytest.raises(TypeError, match="amsgrad must be a bool"):
        optim.Adam([p], amsgrad="yes")
    with pytest.raises(TypeError, match="lr must be a real number"):
        optim.Adam([p], lr="0.1")
    opt = optim.SGD([p], lr=0.1)
    p.grad = np.zeros(3)
    with pytest.raises(ValueError, match=r"gradient of shape \(3,\)"):
        opt.step()


def test_skips_missing_grads_zero_grad_and_closure():
    p, q = Parameter(np.ones(3)), Parameter(np.ones(2))
    opt = optim.Adam([p, q], lr=0.1)
    p.grad = np.ones(3)
    assert opt.step(lambda: 1.5) == 1.5
    assert q not in opt.state and np.all(q.data == 1) and np.all(p.data < 1)
    opt.zero_grad(set_to_none=False)
    assert np.all(p.grad == 0) and q.grad is None
    opt.zero_grad()
    assert p.grad is None
    assert "Parameter Group 0" in repr(opt)


def test_odd_gradients_take_the_fallback_path():
    """A non-contiguous or other-dtype gradient gives the same update as a plain one."""
    rng = np.random.default_rng(4)
    g = rng.standard_normal((3, 4))
    results = []
    for grad in (g, np.asfortranarray(g), g.astype(np.float32).astype(np.float64)):
        p = Parameter(np.zeros((3, 4)))
        opt = optim.SGD([p], lr=0.1, momentum=0.9, weight_decay=0.1, maximize=True)
        for _ in range(3):
            p.grad = grad
            opt.step()
        results.append(p.data.copy())
    np.testing.assert_allclose(results[1], results[0], rtol=1e-15)
    np.testing.assert_allclose(results[2], results[0], rtol=1e-6)


def test_options_switched_on_mid_run():
    p = Parameter(np.zeros(4))
    opt = optim.RMSprop([p])
    p.grad = np.ones(4)
    opt.step()
    opt.param_groups[0].update(momentum=0.9, centered=True)
    opt.step()
    assert {"momentum_buffer", "grad_avg"} <= set(opt.state[p])
    assert np.isfinite(p.data).all()


@pytest.mark.parametrize("name", ["SGD", "Adam", "RMSprop", "Adagrad"])
def test_step_allocates_no_parameter_sized_temporaries(name):
    n = 250_000  # 2 MB of float64
    p = Parameter(np.zeros(n))
    p.grad = np.random.default_rng(5).standard_normal(n)
    kwargs = {
        "SGD": {"momentum": 0.9, "weight_decay": 0.1, "maximize": True},
        "Adam": {"weight_decay": 0.1, "amsgrad": True},
        "RMSprop": {"momentum": 0.9, "weight_decay": 0.1, "centered": True},
        "Adagrad": {"weight_decay": 0.1, "lr_decay": 0.1},
    }[name]
    opt = getattr(optim, name)([p], **kwargs)
    opt.step()  # first step allocates state and the workspace
    tracemalloc.start()
    try:
        for _ in range(3):
            opt.step()
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        _ = p.data * 2.0  # the probe sees NumPy's allocations
        _, probe = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert probe >= p.data.nbytes
    assert peak < p.data.nbytes // 8, f"{name}.step allocated {peak} bytes"


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW", "RMSprop", "Adagrad"])
def test_names_and_defaults_match_torch(name):
    import inspect

    torch = pytest.importorskip("torch")
    ours = getattr(optim, name)([Parameter(np.zeros(1))]).defaults
    sig = inspect.signature(getattr(torch.optim, name).__init__).parameters
    for k, v in ours.items():
        if k == "decoupled_weight_decay" and name == "AdamW":
            assert v is True
            continue
        assert k in sig, k
        assert v == sig[k].default, (k, v, sig[k].default)


# -- a parameter whose forward ran but whose gradient was never written -------------------------
from fastrnn.nn import LSTM, CrossEntropyLoss, Embedding, Linear, Module  # noqa: E402
from fastrnn.utils import tbptt_chunks  # noqa: E402


class _Tagger(Module):
    """Embedding -> LSTM -> Linear; ``forget`` names children its backward leaves out."""

    def __init__(self, forget=()):
        super().__init__()
        self.emb = Embedding(9, 4, seed=0)
        self.lstm = LSTM(4, 6, seed=1)
        self.head = Linear(6, 3, seed=2)
        self.forget = set(forget)

    def forward(self, x, state=None):
        out, state = self.lstm(self.emb(x), state)
        return self.head(out), state

    def backward(self, dlogits):
        dout = self.head.backward(dlogits)
        if "lstm" in self.forget:
            return
        dx, _ = self.lstm.backward(dout)
        if "emb" not in self.forget:
            self.emb.backward(dx)


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 9, (7, 2)), rng.integers(0, 3, (7, 2))


def _train_step(model, opt, batch, loss_fn=None):
    loss_fn = loss_fn or CrossEntropyLoss()
    logits, _ = model(batch[0])
    loss_fn(logits, batch[1])
    model.backward(loss_fn.backward())
    opt.step()
    opt.zero_grad()


@pytest.mark.parametrize("set_to_none", [True, False])
def test_step_warns_about_a_forgotten_child(set_to_none):
    model = _Tagger(forget={"lstm"})
    opt = optim.Adam(model.parameters(), lr=0.01)
    before = model.lstm.weight_hh_l0.data.copy()
    if not set_to_none:  # stale zero gradients: the step would still apply momentum
        for p in model.parameters():
            p.grad = np.zeros_like(p.data)
        opt.step()
        opt.zero_grad(set_to_none=False)
    with pytest.warns(optim.MissingGradientWarning, match=r"5 parameter\(s\).*LSTM\.weight_ih_l0"):
        _train_step(model, opt, _batch())
    if set_to_none:
        np.testing.assert_array_equal(model.lstm.weight_hh_l0.data, before)  # what it warns of
    model.forget = {"emb"}
    with pytest.warns(optim.MissingGradientWarning, match=r"1 parameter\(s\).*Embedding\.weight"):
        _train_step(model, opt, _batch())


def test_legitimate_loops_never_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error", optim.MissingGradientWarning)
        # a complete backward, several steps
        model = _Tagger()
        opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        for i in range(3):
            _train_step(model, opt, _batch(i))
        # gradient accumulation: two forward/backward pairs, one step
        loss_fn = CrossEntropyLoss()
        for i in range(2):
            logits, _ = model(_batch(i)[0])
            loss_fn(logits, _batch(i)[1])
            model.backward(loss_fn.backward())
        # ... and a training-mode forward after the backward (e.g. logging), before the step
        model(_batch(5)[0])
        opt.step()
        opt.zero_grad()
        # truncated BPTT: state carried across chunks, one step per chunk
        data = np.random.default_rng(1).integers(0, 9, (41, 2))
        state = None
        for x, y in zip(tbptt_chunks(data[:-1], 8), tbptt_chunks(data[1:] % 3, 8), strict=True):
            logits, state = model(x, state)
            loss_fn(logits, y)
            model.backward(loss_fn.backward())
            opt.step()
            opt.zero_grad()
        # an eval-mode forward before the step is not a pending backward
        model.eval()
        model(_batch()[0])
        model.train()
        _train_step(model, opt, _batch())
        # a step with no forward at all
        opt.step()


@pytest.mark.parametrize("how", ["requires_grad", "not_in_optimizer", "eval"])
def test_frozen_encoder_never_warns(how):
    model = _Tagger(forget={"lstm"} if how != "requires_grad" else ())
    frozen = [model.emb, model.lstm]
    if how == "requires_grad":
        for m in frozen:
            m.requires_grad_(False)
    params = model.parameters() if how != "not_in_optimizer" else model.head.parameters()
    opt = optim.Adam(params, lr=0.01)
    before = [p.data.copy() for m in frozen for p in m.parameters()]
    with warnings.catch_warnings():
        warnings.simplefilter("error", optim.MissingGradientWarning)
        for i in range(3):
            if how == "eval":
                for m in frozen:
                    m.eval()
            _train_step(model, opt, _batch(i))
    after = [p.data for m in frozen for p in m.parameters()]
    for a, b in zip(before, after, strict=True):
        np.testing.assert_array_equal(a, b)
    if how == "requires_grad":  # the backward ran through them but wrote nothing
        assert all(p.grad is None for m in frozen for p in m.parameters())
        assert "requires_grad=False" in repr(model.lstm.weight_ih_l0)


def test_user_parameters_written_in_place_never_warn():
    """A user module's own parameters are never marked: its backward may write them any way."""

    class Scale(Module):
        def __init__(self):
            super().__init__()
            self.s = Parameter(np.ones(3, dtype=np.float32))

        def forward(self, x):
            self.x = x
            return x * self.s.data

        def backward(self, dout):
            np.add(self.s.grad, (dout * self.x).sum(axis=0), out=self.s.grad)
            return dout * self.s.data

    m = Scale()
    opt = optim.SGD(m.parameters(), lr=0.1)
    m.s.grad = np.zeros(3, dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error", optim.MissingGradientWarning)
        for _ in range(2):
            m(np.ones((2, 3), dtype=np.float32))
            m.backward(np.ones((2, 3), dtype=np.float32))
            opt.step()
            opt.zero_grad(set_to_none=False)
    assert not np.array_equal(m.s.data, np.ones(3))
