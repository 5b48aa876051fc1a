"""fastrnn.nn.Seq2Seq: teacher forcing against the same model written in PyTorch, finite
differences, and greedy / beam-search decoding against exhaustive search."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from conftest import numeric_grad

from fastrnn.cells import CELLS
from fastrnn.nn import AttentionDecoder, Seq2Seq

TOL = {np.float32: 1e-5, np.float64: 1e-10}
S, B, T = 6, 4, 5
SRC_V, TGT_V = 9, 7
LENGTHS = np.array([6, 2, 4, 1])


def batch(seed: int = 0):
    rng = np.random.default_rng(seed)
    src = rng.integers(0, SRC_V, (S, B))
    tgt_in = rng.integers(0, TGT_V, (T, B))
    return src, tgt_in, rng


def torch_model(model: Seq2Seq, src, lengths, tgt_in):
    """The same equations in torch, with ``model``'s weights: returns (logits, params)."""
    torch = pytest.importorskip("torch")
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    dec, enc = model.decoder, model.encoder
    params = {n: torch.tensor(p.data, requires_grad=True) for n, p in model.named_parameters()}
    cell = enc.cell
    td = params["decoder.out.weight"].dtype
    # encoder: torch.nn.LSTM/GRU over a packed batch, with our weights
    spec = CELLS[cell]
    rnn_cls = getattr(torch.nn, spec.title)
    rnn = rnn_cls(enc.rnn.input_size, enc.rnn.hidden_size, bidirectional=True, dtype=td)
    weights = {
        n[len("encoder.rnn.") :]: t for n, t in params.items() if n.startswith("encoder.rnn.")
    }
    x = params["encoder.embedding.weight"][torch.as_tensor(src)]
    packed = pack_padded_sequence(x, torch.as_tensor(lengths), enforce_sorted=False)
    out, state = torch.func.functional_call(rnn, weights, (packed,))
    h_n = state[0] if len(spec.states) > 1 else state
    memory, _ = pad_packed_sequence(out, total_length=S)
    final = torch.cat([h_n[0], h_n[1]], dim=1)
    mb = memory.transpose(0, 1)  # (B, S, K)
    keep = torch.arange(S)[None, :] < torch.as_tensor(lengths)[:, None]
    P = lambda n: params[f"decoder.{n}"]  # noqa: E731
    h = torch.tanh(final @ P("bridge.weight").T + P("bridge.bias"))
    c = torch.zeros_like(h)
    feed = torch.zeros_like(h)
    logits = []
    for t in range(tgt_in.shape[0]):
        xt = torch.cat([P("embedding.weight")[torch.as_tensor(tgt_in[t])], feed], dim=1)
        # torch.lstm_cell, torch.gru_cell, torch.rnn_tanh_cell
        step = getattr(torch, f"{spec.torch_mode(spec.option_defaults()).lower()}_cell")
        weights = [P(f"rnn.{n}_l0") for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
        if len(spec.states) > 1:
            h, c = step(xt, (h, c), *weights)
        else:
            h = step(xt, h, *weights)
        kind = None if dec.attention is None else dec.attention.kind
        if kind is None:
            u = h
        else:
            if kind == "dot":
                e = (mb @ h[:, :, None])[:, :, 0]
            elif kind == "general":
                e = (mb @ (h @ P("attention.weight").T)[:, :, None])[:, :, 0]
            else:
                keys = mb @ P("attention.w_key").T + P("attention.bias")
                z = torch.tanh(keys + (h @ P("attention.w_query").T)[:, None, :])
                e = z @ P("attention.v")
            a = torch.softmax(e.masked_fill(~keep, float("-inf")), dim=1)
            ctx = (a[:, None, :] @ mb)[:, 0]
            u = torch.cat([ctx, h], dim=1)
        feed = torch.tanh(u @ P("combine.weight").T + P("combine.bias"))
        logits.append(feed @ P("out.weight").T + P("out.bias"))
    return torch.stack(logits), params


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "cell,attention",
    [
        ("lstm", "general"),
        ("lstm", "dot"),
        ("lstm", "additive"),
        ("gru", "general"),
        ("rnn", "general"),
        ("lstm", None),
    ],
)
def test_teacher_forcing_matches_torch(cell, attention, dtype):
    torch = pytest.importorskip("torch")
    src, tgt_in, rng = batch()
    model = Seq2Seq(
        SRC_V,
        TGT_V,
        embed_size=5,
        hidden_size=8,
        attention=attention,
        cell=cell,
        dtype=dtype,
        seed=1,
    )
    logits = model(src, LENGTHS, tgt_in)
    g = rng.standard_normal(logits.shape).astype(dtype)
    model.backward(g)
    tlogits, tparams = torch_model(model, src, LENGTHS, tgt_in)
    (tlogits * torch.tensor(g)).sum().backward()
    tol = TOL[dtype]
    np.testing.assert_allclose(logits, tlogits.detach().numpy(), rtol=tol, atol=tol)
    for name, p in model.named_parameters():
        tg = tparams[name].grad
        want = np.zeros_like(p.data) if tg is None else tg.numpy()
        np.testing.assert_allclose(p.grad, want, rtol=tol, atol=tol, err_msg=name)


@pytest.mark.parametrize("attention", ["general", "additive"])
def test_finite_differences(attention):
    """Centred differences in float64 on entries of every parameter (numpy and cython paths)."""
    src, tgt_in, rng = batch(1)
    G = rng.standard_normal((T, B, TGT_V))
    for backend in ("cython", "numpy"):
        model = Seq2Seq(
            SRC_V,
            TGT_V,
            embed_size=3,
            hidden_size=4,
            attention=attention,
            dtype=np.float64,
            backend=backend,
            seed=2,
        )
        model.backward(G) if model(src, LENGTHS, tgt_in) is not None else None
        pick = np.random.default_rng(3)

        def loss() -> float:
            return float((model(src, LENGTHS, tgt_in) * G).sum())  # noqa: B023 (called at once)

        for name, p in model.named_parameters():
            picks = [tuple(pick.integers(0, n) for n in p.shape) for _ in range(3)]
            nums = numeric_grad(loss, p.data, indices=picks)
            for i, num in zip(picks, nums, strict=True):
                assert p.grad[i] == pytest.approx(num, rel=1e-5, abs=1e-8), (backend, name, i)
        model._cache = None


def sequence_logprob(model: Seq2Seq, src, lengths, seq, bos, eos, b):
    """log p(seq + [eos] | src[b]) by teacher forcing (or of seq alone when it has no eos)."""
    toks = list(seq)
    tgt_in = np.array([[bos] + toks], dtype=np.intp).T
    model.eval()
    logits = model(src[:, b : b + 1], lengths[b : b + 1], tgt_in)
    model.train()
    x = logits[:, 0].astype(np.float64)
    logp = x - x.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    targets = toks + [eos]
    return sum(logp[t, targets[t]] for t in range(len(targets)))


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_beam_search_finds_the_exhaustive_optimum(alpha):
    """With a beam wide enough to keep every prefix, beam search is exhaustive search."""
    V, max_len, bos, eos = 3, 3, 0, 1
    src, _, _ = batch(2)
    model = Seq2Seq(SRC_V, V, embed_size=4, hidden_size=6, dtype=np.float64, seed=4)
    hyps, scores = model.beam_search(
        src, LENGTHS, bos=bos, eos=eos, max_len=max_len, beam_width=V**max_len, length_penalty=alpha
    )
    for b in range(B):
        best, best_seq = -np.inf, None
        for n in range(max_len):  # n tokens, then eos
            for seq in itertools.product([t for t in range(V) if t != eos], repeat=n):
                s = sequence_logprob(model, src, LENGTHS, seq, bos, eos, b) / (n + 1) ** alpha
                if s > best:
                    best, best_seq = s, seq
        # max_len tokens without eos are also hypotheses (cut at max_len); score them too
        for seq in itertools.product([t for t in range(V) if t != eos], repeat=max_len):
            lp = sequence_logprob(model, src, LENGTHS, seq[:-1], bos, seq[-1], b)
            s = lp / max_len**alpha
            if s > best:
                best, best_seq = s, seq
        assert list(hyps[b]) == list(best_seq), b
        assert scores[b] == pytest.approx(best, rel=1e-9)


@pytest.mark.parametrize("cell,attention", [("lstm", "general"), ("gru", "dot"), ("gru", None)])
def test_greedy_is_beam_search_of_width_one(cell, attention):
    src, _, _ = batch(3)
    model = Seq2Seq(
        SRC_V, TGT_V, embed_size=4, hidden_size=6, cell=cell, attention=attention, seed=5
    )
    g, w = model.greedy(src, LENGTHS, bos=0, eos=1, max_len=8)
    h, _ = model.beam_search(src, LENGTHS, bos=0, eos=1, max_len=8, beam_width=1)
    assert [list(x) for x in g] == [list(x) for x in h]
    if attention is None:
        assert w is None
        return
    assert w.shape[1:] == (B, S)
    pad = np.arange(S)[None, :] >= LENGTHS[:, None]
    assert (w[:, pad] == 0).all()


def test_decoding_matches_teacher_forcing_on_its_own_output():
    """Greedy's tokens fed back by teacher forcing give the same logits' argmax."""
    src, _, _ = batch(4)
    model = Seq2Seq(SRC_V, TGT_V, embed_size=4, hidden_size=6, seed=6, attention="additive")
    hyps, _ = model.greedy(src, LENGTHS, bos=0, eos=1, max_len=6)
    for b in range(B):
        seq = list(hyps[b])
        model.eval()
        logits = model(src[:, b : b + 1], LENGTHS[b : b + 1], np.array([[0] + seq]).T)
        model.train()
        got = list(logits[:, 0].argmax(1))
        assert got[: len(seq)] == seq
        if len(seq) < 6:
            assert got[len(seq)] == 1


def test_bad_arguments_are_refused():
    model = Seq2Seq(SRC_V, TGT_V, embed_size=4, hidden_size=6, seed=0)
    src, tgt_in, _ = batch()
    with pytest.raises(ValueError, match="hidden_size must be even"):
        Seq2Seq(SRC_V, TGT_V, hidden_size=7)
    with pytest.raises(ValueError, match="attention must be one of"):
        AttentionDecoder(TGT_V, 4, 6, 6, attention="luong")
    with pytest.raises(ValueError, match="cell must be"):
        Seq2Seq(SRC_V, TGT_V, cell="elman")
    with pytest.raises(ValueError, match="src must hold token ids"):
        model(src + SRC_V, LENGTHS, tgt_in)
    with pytest.raises(ValueError, match="tgt_in must hold token ids"):
        model(src, LENGTHS, tgt_in - TGT_V)
    with pytest.raises(TypeError, match="tgt_in must be an integer"):
        model(src, LENGTHS, tgt_in.astype(float))
    with pytest.raises(ValueError, match="bos must be in"):
        model.greedy(src, LENGTHS, bos=TGT_V, eos=1, max_len=3)
    with pytest.raises(ValueError, match="beam_width must be"):
        model.beam_search(src, LENGTHS, bos=0, eos=1, max_len=3, beam_width=0)
    with pytest.raises(ValueError, match="length_penalty"):
        model.beam_search(src, LENGTHS, bos=0, eos=1, max_len=3, length_penalty=-1)
    with pytest.raises(RuntimeError, match="without a training-mode forward"):
        model.backward(np.zeros((T, B, TGT_V)))
    logits = model(src, LENGTHS, tgt_in)
    with pytest.raises(ValueError, match="dlogits must have shape"):
        model.backward(logits[:, :2])
