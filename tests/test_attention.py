"""fastrnn.nn.Attention against an independent PyTorch implementation and finite differences."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import numeric_grad

from fastrnn.nn import Attention
from fastrnn.nn.attention import masked_softmax

TOL = {np.float32: 1e-5, np.float64: 1e-10}
S, B, Q, K, A, T = 7, 4, 5, 6, 3, 3
LENGTHS = np.array([7, 3, 1, 5])


def make(kind: str, dtype, seed: int = 0) -> Attention:
    q = K if kind == "dot" else Q
    return Attention(
        q, K, kind=kind, attn_size=A if kind == "additive" else None, dtype=dtype, seed=seed
    )


def torch_attention(att: Attention, query, memory, lengths):
    """The same equations written directly in torch: returns (context, weights, leaves)."""
    torch = pytest.importorskip("torch")
    td = torch.float64 if att.dtype == np.float64 else torch.float32
    q = torch.tensor(query, dtype=td, requires_grad=True)
    m = torch.tensor(memory, dtype=td, requires_grad=True)
    params = {n: torch.tensor(p.data, requires_grad=True) for n, p in att.named_parameters()}
    qb = q.unsqueeze(1) if q.dim() == 2 else q.transpose(0, 1)  # (B, T, Q)
    mb = m.transpose(0, 1)  # (B, S, K)
    if att.kind == "dot":
        scores = qb @ mb.transpose(1, 2)
    elif att.kind == "general":
        scores = (qb @ params["weight"].T) @ mb.transpose(1, 2)
    else:
        keys = mb @ params["w_key"].T + params["bias"]  # (B, S, A)
        qp = qb @ params["w_query"].T  # (B, T, A)
        scores = torch.tanh(keys.unsqueeze(1) + qp.unsqueeze(2)) @ params["v"]
    Sm = memory.shape[0]
    if lengths is not None:
        keep = torch.arange(Sm)[None, :] < torch.as_tensor(lengths)[:, None]  # (B, S)
        scores = scores.masked_fill(~keep[:, None, :], float("-inf"))
    w = torch.softmax(scores, dim=-1)
    ctx = w @ mb
    if q.dim() == 2:
        return ctx[:, 0], w[:, 0], q, m, params
    return ctx.transpose(0, 1), w.transpose(0, 1), q, m, params


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", ["dot", "general", "additive"])
@pytest.mark.parametrize("multi", [False, True], ids=["one-query", "T-queries"])
@pytest.mark.parametrize("masked", [False, True], ids=["full", "lengths"])
def test_matches_torch(kind, dtype, multi, masked):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    att = make(kind, dtype)
    qs = (T, B, att.query_size) if multi else (B, att.query_size)
    query = rng.standard_normal(qs).astype(dtype)
    memory = rng.standard_normal((S, B, K)).astype(dtype)
    lengths = LENGTHS if masked else None
    ctx, w = att(query, memory, lengths)
    dctx = rng.standard_normal(ctx.shape).astype(dtype)
    dw = rng.standard_normal(w.shape).astype(dtype)
    dq, dm = att.backward(dctx, dw)

    tctx, tw, tq, tm, tparams = torch_attention(att, query, memory, lengths)
    (tctx * torch.tensor(dctx)).sum().add((tw * torch.tensor(dw)).sum()).backward()
    tol = TOL[dtype]
    np.testing.assert_allclose(ctx, tctx.detach().numpy(), rtol=tol, atol=tol)
    np.testing.assert_allclose(w, tw.detach().numpy(), rtol=tol, atol=tol)
    np.testing.assert_allclose(dq, tq.grad.numpy(), rtol=tol, atol=tol)
    np.testing.assert_allclose(dm, tm.grad.numpy(), rtol=tol, atol=tol)
    for name, p in att.named_parameters():
        np.testing.assert_allclose(
            p.grad, tparams[name].grad.numpy(), rtol=tol, atol=tol, err_msg=name
        )
    assert ctx.dtype == w.dtype == dq.dtype == dm.dtype == dtype
    if masked:  # padded positions: exactly zero weight and zero memory gradient
        pad = np.arange(S)[None, :] >= LENGTHS[:, None]  # (B, S)
        assert (w[..., pad] == 0).all()
        assert (dm.transpose(1, 0, 2)[pad] == 0).all()
        np.testing.assert_allclose(w.sum(axis=-1), 1, rtol=tol)


@pytest.mark.parametrize("kind", ["dot", "general", "additive"])
def test_finite_differences(kind):
    """Centred differences in float64 on the query, the memory and every parameter."""
    rng = np.random.default_rng(2)
    att = make(kind, np.float64, seed=3)
    query = rng.standard_normal((2, B, att.query_size))
    memory = rng.standard_normal((S, B, K))
    dctx = rng.standard_normal((2, B, K))
    dw = rng.standard_normal((2, B, S))

    def loss() -> float:
        ctx, w = att(query, memory, LENGTHS)
        return float((ctx * dctx).sum() + (w * dw).sum())

    att.zero_grad()
    att(query, memory, LENGTHS)
    dq, dm = att.backward(dctx, dw)
    grads = {"query": dq, "memory": dm}
    grads.update({n: p.grad.copy() for n, p in att.named_parameters()})
    arrays = {"query": query, "memory": memory}
    arrays.update({n: p.data for n, p in att.named_parameters()})
    for name, arr in arrays.items():
        num = numeric_grad(loss, arr)
        np.testing.assert_allclose(grads[name], num, rtol=1e-6, atol=1e-8, err_msg=name)


@pytest.mark.parametrize("kind", ["dot", "general", "additive"])
def test_step_api_matches_forward_and_accumulates_memory_gradient(kind):
    """prepare + several steps + memory_backward = the sum of separate forward/backward calls."""
    rng = np.random.default_rng(4)
    att = make(kind, np.float64)
    memory = rng.standard_normal((S, B, K))
    qs = rng.standard_normal((3, B, att.query_size))
    dcs = rng.standard_normal((3, B, K))
    mem = att.prepare(memory, LENGTHS)
    total_dq = []
    for t in range(3):
        ctx, w, cache = att.step(qs[t], mem, training=True)
        ctx2, w2 = Attention.forward(att, qs[t], memory, LENGTHS)
        np.testing.assert_allclose(ctx, ctx2, rtol=1e-14)
        total_dq.append(att.step_backward(cache, mem, dcs[t]))
    grads_steps = {n: p.grad.copy() for n, p in att.named_parameters() if p.grad is not None}
    dm = att.memory_backward(mem)
    att.zero_grad()
    ctx, w = att(qs, memory, LENGTHS)  # all three queries at once
    dq_all, dm_all = att.backward(dcs)
    np.testing.assert_allclose(np.stack(total_dq), dq_all, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(dm, dm_all, rtol=1e-12, atol=1e-14)
    for n in grads_steps:  # w_key and bias wait for memory_backward
        assert n in ("v", "w_query", "weight")


def test_masked_softmax_ignores_padded_values():
    scores = np.array([[1.0, 2.0, np.inf, np.nan]])
    mask = np.array([[True, True, False, False]])
    w = masked_softmax(scores, mask)
    np.testing.assert_allclose(w, [[1 / (1 + np.e), np.e / (1 + np.e), 0, 0]])
    assert (w[0, 2:] == 0).all()


@pytest.mark.parametrize("kind", ["dot", "general", "additive"])
def test_padded_memory_values_are_ignored(kind):
    """NaN and huge values at padded positions reach neither the outputs nor any gradient."""
    att = make(kind, np.float64)
    rng = np.random.default_rng(5)
    memory = rng.standard_normal((S, B, K))
    query = rng.standard_normal((B, att.query_size))
    dctx = rng.standard_normal((B, K))

    def run():
        att.zero_grad()
        ctx, w = att(query, memory, LENGTHS)
        dq, dm = att.backward(dctx, w)
        return ctx, w, dq, dm, {n: p.grad.copy() for n, p in att.named_parameters()}

    ctx, w, dq, dm, grads = run()
    memory[3:, 1] = 1e300  # row 1 has length 3: positions 3.. are padding
    memory[5:, 1] = np.nan
    ctx2, w2, dq2, dm2, grads2 = run()
    for a, b in [(ctx, ctx2), (w, w2), (dq, dq2), (dm, dm2)] + [
        (grads[n], grads2[n]) for n in grads
    ]:
        np.testing.assert_array_equal(a, b)
    assert (dm[3:, 1] == 0).all()


@pytest.mark.parametrize("kind", ["dot", "general", "additive"])
def test_prepared_memory_is_a_copy(kind):
    """Writing into the caller's memory after prepare changes neither the steps nor dmemory."""
    att = make(kind, np.float32)
    rng = np.random.default_rng(7)
    memory = rng.standard_normal((S, B, K)).astype(np.float32)
    query = rng.standard_normal((B, att.query_size)).astype(np.float32)
    dctx = rng.standard_normal((B, K)).astype(np.float32)
    results = []
    for overwrite in (False, True):
        m = memory.copy()
        mem = att.prepare(m, LENGTHS)
        if overwrite:
            m[...] = 7.0
        ctx, w, cache = att.step(query, mem, training=True)
        dq = att.step_backward(cache, mem, dctx)
        results.append((ctx, w, dq, att.memory_backward(mem)))
    for a, b in zip(*results, strict=True):
        np.testing.assert_array_equal(a, b)


def test_bad_input_is_refused_naming_the_argument():
    att = make("general", np.float32)
    mem = np.zeros((S, B, K), np.float32)
    q = np.zeros((B, Q), np.float32)
    with pytest.raises(ValueError, match="kind must be one of"):
        Attention(Q, K, kind="bilinear")
    with pytest.raises(ValueError, match="query_size == key_size"):
        Attention(Q, K, kind="dot")
    with pytest.raises(ValueError, match="attn_size is only used"):
        Attention(Q, K, kind="general", attn_size=3)
    with pytest.raises(ValueError, match="memory must have shape"):
        att(q, mem[:, :, :2])
    with pytest.raises(ValueError, match="query must have shape"):
        att(q[:2], mem)
    with pytest.raises(ValueError, match="lengths must lie in"):
        att(q, mem, [0, 1, 2, 3])
    with pytest.raises(ValueError, match="lengths must lie in"):
        att(q, mem, [8, 1, 2, 3])
    with pytest.raises(ValueError, match="lengths must have shape"):
        att(q, mem, [1, 2])
    with pytest.raises(TypeError, match="lengths must be an integer"):
        att(q, mem, [1.0, 2.0, 3.0, 4.0])
    with pytest.raises(TypeError, match="query must be a real numeric"):
        att(q.astype(complex), mem)
    with pytest.raises(RuntimeError, match="without a training-mode forward"):
        make("dot", np.float32).backward(np.zeros((B, K)))
    att(q, mem)
    with pytest.raises(ValueError, match="dcontext must have"):
        att.backward(np.zeros((B, K + 1)))
    att.eval()
    att(q, mem)
    with pytest.raises(RuntimeError, match="without a training-mode forward"):
        att.backward(np.zeros((B, K)))


def test_float32_input_to_float64_layer_is_converted():
    att = make("dot", np.float64)
    rng = np.random.default_rng(6)
    q = rng.standard_normal((B, K)).astype(np.float32)
    m = rng.standard_normal((S, B, K)).astype(np.float32)
    ctx, w = att(q, m)
    assert ctx.dtype == np.float64
    ctx2, _ = att(q.astype(np.float64), m.astype(np.float64))
    np.testing.assert_array_equal(ctx, ctx2)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("trans_a", [False, True])
def test_kernel_matmul_matches_numpy_on_every_isa(dtype, trans_a):
    """The decoder's GEMMs (fastrnn._kernels.attention.matmul): micro-kernels on whole panels of
    columns, BLAS on the rest, for every instruction set this CPU runs."""
    import fastrnn
    from fastrnn._isa import _CODES
    from fastrnn._kernels import attention as kernel

    rng = np.random.default_rng(8)
    tol = {np.float32: 2e-5, np.float64: 1e-13}[dtype]
    for m, k, n in [(32, 256, 512), (5, 7, 16), (9, 3, 37), (1, 1, 1), (3, 33, 5)]:
        a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(dtype)
        b = rng.standard_normal((k, n)).astype(dtype)
        want = (a.T if trans_a else a) @ b
        for isa in fastrnn.available_isas():
            c = np.full((m, n), np.nan, dtype)
            kernel.matmul(_CODES[isa], a, trans_a, b, c)
            np.testing.assert_allclose(c, want, rtol=tol, atol=tol * np.abs(want).max())
    c = np.full((2, 3), np.nan, dtype)
    kernel.matmul(0, np.zeros((2, 0), dtype), False, np.zeros((0, 3), dtype), c)
    assert (c == 0).all()
    with pytest.raises(ValueError, match="do not fit"):
        kernel.matmul(0, np.zeros((2, 4), dtype), trans_a, np.zeros((3, 3), dtype), c)


def test_kernels_refuse_operands_that_do_not_fit():
    """The attention kernels index without checks: their entry points check shapes and lengths."""
    from fastrnn._kernels import attention as kernel

    f = np.float32
    m, p = np.zeros((5, 2, 3), f), np.zeros((2, 1, 3), f)
    w, ctx, lens = np.zeros((2, 1, 5), f), np.zeros((2, 1, 3), f), np.array([5, 2], np.intp)
    kernel.forward(m, lens, p, w, ctx)
    with pytest.raises(ValueError, match=r"lens\[0\] = 6 is not in \[1, S=5\]"):
        kernel.forward(m, np.array([6, 2], np.intp), p, w, ctx)
    with pytest.raises(ValueError, match="lens has 1 rows"):
        kernel.forward(m, lens[:1].copy(), p, w, ctx)
    with pytest.raises(ValueError, match=r"w must have shape \(2, 1, 5\), got \(2, 1, 4\)"):
        kernel.forward(m, lens, p, np.zeros((2, 1, 4), f), ctx)
    with pytest.raises(ValueError, match="dweights must have shape"):
        kernel.backward(m, lens, w, ctx, np.zeros((2, 1, 2), f), w.copy(), ctx.copy())
    with pytest.raises(ValueError, match="right must have shape"):
        kernel.memory_grad(lens, w, np.zeros((2, 1, 4), f), m.copy())
    with pytest.raises(TypeError):
        kernel.forward(None, lens, p, w, ctx)
    att = make("general", np.float32)
    mem = att.prepare(np.zeros((S, B, K), f), LENGTHS)
    with pytest.raises(ValueError, match="no time_major memory"):
        att.step(np.zeros((B, Q), f), mem._replace(time_major=None))


def test_decoder_step_is_the_same_on_every_isa():
    """The decoder's products give the same numbers (within rounding) on every ISA."""
    import fastrnn
    from fastrnn.nn import AttentionDecoder

    rng = np.random.default_rng(9)
    dec = AttentionDecoder(11, 4, 16, K, attention="general", dtype=np.float64, seed=1)
    memory = rng.standard_normal((S, B, K))
    y = rng.integers(0, 11, (3, B))
    g = rng.standard_normal((3, B, 11))
    before = fastrnn.get_isa()
    results = []
    try:
        for isa in fastrnn.available_isas():
            fastrnn.set_isa(isa)
            dec.zero_grad()
            mem = dec.attention.prepare(memory, LENGTHS)
            logits, _ = dec(y, mem)
            dm, _ = dec.backward(g)
            results.append([logits, dm] + [p.grad.copy() for p in dec.parameters()])
    finally:
        fastrnn.set_isa(before)
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
