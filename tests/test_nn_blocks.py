"""fastrnn/nn/blocks.py: Linear, Embedding, Dropout, Sequential (FD, PyTorch, statistics)."""

import numpy as np
import pytest
from conftest import numeric_grad

from fastrnn.nn import Dropout, Embedding, Linear, Module, Parameter, Sequential

RTOL = {np.float32: 1e-5, np.float64: 1e-10}


# -- Linear ------------------------------------------------------------------------------------
def test_linear_init_matches_pytorch_distribution():
    lin = Linear(16, 1000, seed=0)
    k = 1 / np.sqrt(16)
    assert lin.weight.shape == (1000, 16) and lin.bias.shape == (1000,)
    assert lin.weight.dtype == np.float32
    assert np.abs(lin.weight.data).max() <= k and np.abs(lin.bias.data).max() <= k
    # U(-k, k) has standard deviation k / sqrt(3)
    assert abs(lin.weight.data.std() - k / np.sqrt(3)) < 0.01 * k
    np.testing.assert_array_equal(Linear(16, 1000, seed=0).weight.data, lin.weight.data)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("lead", [(5,), (3, 4), ()])
def test_linear_gradients_finite_differences(bias, lead):
    rng = np.random.default_rng(1)
    lin = Linear(4, 3, bias=bias, dtype=np.float64, seed=2)
    x = rng.standard_normal((*lead, 4))
    dout = rng.standard_normal((*lead, 3))

    def loss():
        return float(np.sum(lin.eval()(x) * dout))

    lin.train()
    y = lin(x)
    assert y.shape == (*lead, 3)
    dx = lin.backward(dout)
    np.testing.assert_allclose(dx, numeric_grad(loss, x), rtol=1e-6, atol=1e-8)
    w_grad = numeric_grad(loss, lin.weight.data)
    np.testing.assert_allclose(lin.weight.grad, w_grad, rtol=1e-6, atol=1e-8)
    if bias:
        b_grad = numeric_grad(loss, lin.bias.data)
        np.testing.assert_allclose(lin.bias.grad, b_grad, rtol=1e-6, atol=1e-8)
    else:
        assert lin.bias is None and [n for n, _ in lin.named_parameters()] == ["weight"]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_linear_matches_pytorch(dtype):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    lin = Linear(6, 5, dtype=dtype, seed=4)
    tlin = torch.nn.Linear(6, 5, dtype=getattr(torch, np.dtype(dtype).name))
    tlin.load_state_dict({k: torch.from_numpy(v) for k, v in lin.state_dict().items()})
    x = rng.standard_normal((2, 3, 6)).astype(dtype)
    dout = rng.standard_normal((2, 3, 5)).astype(dtype)
    xt = torch.tensor(x, requires_grad=True)
    yt = tlin(xt)
    yt.backward(torch.from_numpy(dout))
    y = lin(x)
    dx = lin.backward(dout)
    rtol = RTOL[dtype]
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=rtol, atol=rtol)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=rtol, atol=rtol)
    np.testing.assert_allclose(lin.weight.grad, tlin.weight.grad.numpy(), rtol=rtol, atol=rtol)
    np.testing.assert_allclose(lin.bias.grad, tlin.bias.grad.numpy(), rtol=rtol, atol=rtol)
    assert y.dtype == dx.dtype == lin.weight.grad.dtype == dtype


def test_linear_gradients_accumulate_and_input_is_converted():
    lin = Linear(3, 2, dtype=np.float64, seed=0)
    x = np.arange(6).reshape(2, 3)  # int input is converted, not misread
    y = lin(x)
    assert y.dtype == np.float64
    np.testing.assert_allclose(y, x @ lin.weight.data.T + lin.bias.data)
    lin.backward(np.ones((2, 2)))
    first = lin.weight.grad.copy()
    lin(x)
    lin.backward(np.ones((2, 2)))
    np.testing.assert_allclose(lin.weight.grad, 2 * first)


def test_linear_errors():
    lin = Linear(3, 2)
    with pytest.raises(RuntimeError, match="without a training-mode forward"):
        lin.backward(np.ones((1, 2), np.float32))
    with pytest.raises(ValueError, match="in_features=3"):
        lin(np.ones((4, 5), np.float32))
    with pytest.raises(ValueError, match="in_features=3"):
        lin(np.float32(1.0))
    with pytest.raises(TypeError, match="x must be a real numeric array"):
        lin(np.ones((4, 3), np.complex64))
    with pytest.raises(TypeError, match="x must be a real numeric array"):
        lin(np.ones((4, 3), bool))
    lin(np.ones((4, 3), np.float32))
    with pytest.raises(ValueError, match="dout must have the forward output's shape"):
        lin.backward(np.ones((2, 2), np.float32))
    lin.backward(np.ones((4, 2), np.float32))
    with pytest.raises(RuntimeError, match="each forward supports one backward"):
        lin.backward(np.ones((4, 2), np.float32))
    lin.eval()(np.ones((4, 3), np.float32))
    with pytest.raises(RuntimeError, match="training-mode forward"):
        lin.backward(np.ones((4, 2), np.float32))
    with pytest.raises(TypeError, match="dtype must be float32 or float64"):
        Linear(3, 2, dtype=np.int32)
    with pytest.raises(ValueError, match="in_features must be >= 1"):
        Linear(0, 2)
    with pytest.raises(TypeError, match="out_features must be an int"):
        Linear(3, 2.0)


# -- Embedding ---------------------------------------------------------------------------------
def test_embedding_init_and_lookup():
    emb = Embedding(1000, 32, padding_idx=-1, seed=0)
    assert emb.padding_idx == 999
    w = emb.weight.data
    assert w.shape == (1000, 32) and w.dtype == np.float32
    assert not w[999].any()
    assert abs(w[:999].mean()) < 0.02 and abs(w[:999].std() - 1) < 0.02
    idx = np.array([[1, 2, 3], [3, 999, 0]])
    np.testing.assert_array_equal(emb(idx), w[idx])


@pytest.mark.parametrize("padding_idx", [None, 2])
def test_embedding_gradient_finite_differences(padding_idx):
    rng = np.random.default_rng(5)
    emb = Embedding(6, 3, padding_idx=padding_idx, dtype=np.float64, seed=0)
    idx = np.array([[0, 2, 2], [5, 0, 2], [2, 0, 1]])  # repeated rows, padding row hit
    dout = rng.standard_normal((3, 3, 3))

    def loss():
        return float(np.sum(emb.eval()(idx) * dout))

    emb.train()(idx)
    assert emb.backward(dout) is None
    expected = numeric_grad(loss, emb.weight.data)
    if padding_idx is not None:
        expected[padding_idx] = 0
    np.testing.assert_allclose(emb.weight.grad, expected, rtol=1e-6, atol=1e-8)
    assert not emb.weight.grad[3:5].any()  # rows never looked up


def test_embedding_matches_pytorch_and_add_at():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(6)
    emb = Embedding(50, 8, padding_idx=0, seed=1)
    temb = torch.nn.Embedding(50, 8, padding_idx=0)
    temb.load_state_dict({"weight": torch.from_numpy(emb.weight.data)})
    idx = rng.integers(0, 50, (7, 11))
    dout = rng.standard_normal((7, 11, 8)).astype(np.float32)
    out = emb(idx)
    emb.backward(dout)
    tout = temb(torch.from_numpy(idx))
    tout.backward(torch.from_numpy(dout))
    np.testing.assert_array_equal(out, tout.detach().numpy())
    np.testing.assert_allclose(emb.weight.grad, temb.weight.grad.numpy(), rtol=1e-5, atol=1e-5)
    ref = np.zeros((50, 8), np.float64)
    keep = idx.reshape(-1) != 0
    np.add.at(ref, idx.reshape(-1)[keep], dout.reshape(-1, 8)[keep])
    np.testing.assert_allclose(emb.weight.grad, ref, rtol=1e-5, atol=1e-5)


def test_embedding_errors():
    emb = Embedding(10, 4)
    with pytest.raises(TypeError, match="indices must be an integer array"):
        emb(np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match=r"indices must be in \[0, num_embeddings=10\)"):
        emb(np.array([1, 10]))
    with pytest.raises(ValueError, match="indices must be in"):
        emb(np.array([-1, 3]))
    with pytest.raises(RuntimeError, match="training-mode forward"):
        emb.backward(np.ones((2, 4), np.float32))
    emb(np.array([1, 2]))
    with pytest.raises(ValueError, match=r"dout must have shape \(2, 4\)"):
        emb.backward(np.ones((2, 5), np.float32))
    with pytest.raises(ValueError, match="padding_idx must be within"):
        Embedding(10, 4, padding_idx=10)
    with pytest.raises(TypeError, match="padding_idx must be an int"):
        Embedding(10, 4, padding_idx=1.5)


# -- Dropout -----------------------------------------------------------------------------------
@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_dropout_statistics(p):
    drop = Dropout(p, seed=0)
    x = np.ones((400, 500), np.float32)
    y = drop(x)
    kept = y != 0
    assert abs(kept.mean() - (1 - p)) < 0.01
    np.testing.assert_allclose(y[kept], 1 / (1 - p), rtol=1e-6)
    assert abs(y.mean() - 1) < 0.03  # inverted dropout preserves the expectation
    dout = np.full_like(x, 2.0)
    dx = drop.backward(dout)
    np.testing.assert_array_equal(dx != 0, kept)  # same mask as the forward
    np.testing.assert_allclose(dx[kept], 2 / (1 - p), rtol=1e-6)


def test_dropout_eval_identity_seed_and_edge_probabilities():
    x = np.random.default_rng(0).standard_normal((8, 9))
    drop = Dropout(0.5, seed=3).eval()
    assert drop(x) is x
    with pytest.raises(RuntimeError, match="training-mode forward"):
        drop.backward(x)
    a, b = Dropout(0.5, seed=3)(x), Dropout(0.5, seed=3)(x)
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.float64 and Dropout(0.3)(x.astype(np.float32)).dtype == np.float32
    d0 = Dropout(0.0)
    np.testing.assert_array_equal(d0(x), x)
    np.testing.assert_array_equal(d0.backward(x), x)
    d1 = Dropout(1.0)
    assert not d1(x).any() and not d1.backward(x).any()
    for bad in (-0.1, 1.5, float("nan"), "0.5"):
        with pytest.raises(ValueError, match="p must be a probability"):
            Dropout(bad)
    with pytest.raises(TypeError, match="x must be a float32 or float64 array"):
        Dropout(0.5)(np.ones(3, np.int64))


# -- Sequential and Module -----------------------------------------------------------------------
def test_sequential_chain_matches_pytorch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    model = Sequential(
        Embedding(20, 6, dtype=np.float64, seed=0),
        Linear(6, 5, dtype=np.float64, seed=1),
        Dropout(0.0),
        Linear(5, 4, dtype=np.float64, seed=2),
    )
    assert len(model) == 4 and isinstance(model[-1], Linear)
    names = [n for n, _ in model.named_parameters()]
    assert names == ["0.weight", "1.weight", "1.bias", "3.weight", "3.bias"]
    tmodel = torch.nn.Sequential(
        torch.nn.Embedding(20, 6),
        torch.nn.Linear(6, 5),
        torch.nn.Dropout(0.0),
        torch.nn.Linear(5, 4),
    ).double()
    tmodel.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})
    idx = rng.integers(0, 20, (3, 2))
    dout = rng.standard_normal((3, 2, 4))
    y = model(idx)
    assert model.backward(dout) is None
    ty = tmodel(torch.from_numpy(idx))
    ty.backward(torch.from_numpy(dout))
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-12)
    tparams = dict(tmodel.named_parameters())
    for name, p in model.named_parameters():
        np.testing.assert_allclose(p.grad, tparams[name].grad.numpy(), rtol=1e-10, atol=1e-12)


def test_sequential_backward_returns_input_grad_and_refuses_gaps():
    model = Sequential(Linear(3, 4, seed=0), Linear(4, 2, seed=1))
    x = np.ones((5, 3), np.float32)
    model(x)
    assert model.backward(np.ones((5, 2), np.float32)).shape == (5, 3)

    class Stop(Module):
        def forward(self, x):
            return x

        def backward(self, dout):
            return None

    gap = Sequential(Linear(3, 4), Stop())
    gap(x)
    with pytest.raises(RuntimeError, match=r"module 1 \(Stop\) returned no input gradient"):
        gap.backward(np.ones((5, 4), np.float32))
    with pytest.raises(TypeError, match="Sequential takes Module instances"):
        Sequential(Linear(3, 4), np.ones(3))


def test_shared_parameters_are_listed_once():
    emb = Embedding(10, 4, seed=0)
    out = Linear(4, 10, bias=False, seed=1)
    out.weight = emb.weight  # weight tying
    model = Sequential(emb, out)
    assert [n for n, _ in model.named_parameters()] == ["0.weight"]
    assert len(list(model.named_parameters(remove_duplicate=False))) == 2
    assert list(model.state_dict()) == ["0.weight"]


def test_module_train_eval_propagates():
    model = Sequential(Linear(2, 2), Dropout(0.5))
    model.eval()
    assert not any(m.training for m in model.modules())
    model.train()
    assert all(m.training for m in model.modules())
    assert isinstance(model, Module) and isinstance(model[0].weight, Parameter)
