"""fastrnn.quantization: int8 layers against a NumPy oracle of the same integer math, the
VNNI and portable paths against each other, checkpoints, and the inference-only contract."""

from __future__ import annotations

import time

import numpy as np
import pytest

import fastrnn
from fastrnn._kernels import quant
from fastrnn.quantization import (
    QuantizedLinear,
    QuantizedRNNBase,
    get_quantized_isa,
    quantize_dynamic,
    set_quantized_isa,
)

ISAS = (
    ["c"]
    + (["vnni"] if quant.vnni_available() else [])
    + (["avxvnni"] if quant.avxvnni_available() else [])
)
CELLS = [
    (fastrnn.RNN, {"nonlinearity": "tanh"}),
    (fastrnn.RNN, {"nonlinearity": "relu"}),
    (fastrnn.LSTM, {}),
    (fastrnn.GRU, {}),
]


@pytest.fixture(params=ISAS)
def isa(request):
    before = get_quantized_isa()
    set_quantized_isa(request.param)
    yield request.param
    set_quantized_isa(before)


# --- a NumPy oracle of the quantized arithmetic ---------------------------------------------------
def _q_weight(w):
    amax = np.abs(w.astype(np.float64)).max(axis=1)
    s = np.where(amax > 0, amax / 127.0, 1.0)
    return np.clip(np.rint(w / s[:, None]), -127, 127).astype(np.int64), s.astype(np.float32)


def _q_matmul(x, w):
    """x (M, K) float32 quantized per row, times int8 w^T (per-row scales), in float32."""
    qw, sw = _q_weight(w)
    amax = np.abs(x).max(axis=1).astype(np.float32)
    sa = np.where(amax > 0, amax / np.float32(127), np.float32(1))
    inv = np.where(amax > 0, np.float32(127) / np.where(amax > 0, amax, 1), 0).astype(np.float32)
    qa = np.clip(np.rint(x * inv[:, None]), -127, 127).astype(np.int64)
    return (sa[:, None] * sw[None, :]).astype(np.float32) * (qa @ qw.T).astype(np.float32)


def _sig(a):
    return 1 / (1 + np.exp(-a))


def _oracle(layer, x, h0, c0):
    """The quantized layer's math in NumPy (float64 gate math), one direction per layer."""
    cfg = layer._config
    p = {n: layer._parameters[n].data for n in layer._flat_weights_names}
    H, name = cfg.hidden_size, cfg.spec.name
    inp = x
    for k in range(cfg.num_layers):
        sfx = f"_l{k}"
        w_ih, w_hh = p["weight_ih" + sfx], p["weight_hh" + sfx]
        b_ih, b_hh = p["bias_ih" + sfx], p["bias_hh" + sfx]
        T, B, _ = inp.shape
        gx = _q_matmul(inp.reshape(T * B, -1), w_ih).reshape(T, B, -1) + b_ih
        h, c = h0[k], None if c0 is None else c0[k]
        ys = []
        for t in range(T):
            gh = _q_matmul(h, w_hh)
            if name == "lstm":
                a = gx[t] + b_hh + gh
                i, f, g, o = (
                    _sig(a[:, :H]),
                    _sig(a[:, H : 2 * H]),
                    np.tanh(a[:, 2 * H : 3 * H]),
                    _sig(a[:, 3 * H :]),
                )
                c = f * c + i * g
                h = o * np.tanh(c)
            elif name == "gru":
                r = _sig(gx[t][:, :H] + b_hh[:H] + gh[:, :H])
                z = _sig(gx[t][:, H : 2 * H] + b_hh[H : 2 * H] + gh[:, H : 2 * H])
                n = np.tanh(gx[t][:, 2 * H :] + r * (gh[:, 2 * H :] + b_hh[2 * H :]))
                h = (1 - z) * n + z * h
            else:
                a = gx[t] + b_hh + gh
                h = np.tanh(a) if cfg.options["nonlinearity"] == "tanh" else np.maximum(a, 0)
            h = h.astype(np.float32)
            ys.append(h)
        inp = np.stack(ys)
    return inp


@pytest.mark.parametrize(("cls", "options"), CELLS, ids=["rnn_tanh", "rnn_relu", "lstm", "gru"])
def test_quantized_layer_matches_the_integer_oracle_and_float32(cls, options, isa):
    rng = np.random.default_rng(0)
    layer = cls(20, 40, num_layers=2, seed=1, **options).eval()
    x = rng.standard_normal((6, 3, 20)).astype(np.float32)
    h0 = (0.5 * rng.standard_normal((2, 3, 40))).astype(np.float32)
    c0 = (0.5 * rng.standard_normal((2, 3, 40))).astype(np.float32) if cls is fastrnn.LSTM else None
    q = quantize_dynamic(layer, int8="always")
    assert isinstance(q, QuantizedRNNBase) and q.quantized and "int8" in repr(q)
    y, _ = q(x, h0 if c0 is None else (h0, c0))
    assert y.dtype == np.float32
    # the oracle rounds x * (127 / amax) the same way, so the only differences are the float
    # order of the gate math (float64 there): a few ulps, amplified by an occasional rounding
    # flip of a quantized h in later steps
    np.testing.assert_allclose(y, _oracle(layer, x, h0, c0), atol=2e-3)
    y32, _ = layer(x, h0 if c0 is None else (h0, c0))
    assert np.abs(y - y32).max() < 0.03 * max(1.0, np.abs(y32).max())


@pytest.mark.skipif(len(ISAS) < 2, reason="this CPU has neither AVX-512 VNNI nor AVX-VNNI")
@pytest.mark.parametrize(("cls", "options"), CELLS, ids=["rnn_tanh", "rnn_relu", "lstm", "gru"])
@pytest.mark.parametrize("B", [1, 5, 8])
def test_vnni_and_portable_paths_agree_bit_for_bit(cls, options, B):
    """Every integer path this CPU runs (AVX-512 VNNI, AVX-VNNI, C), forward and step: the
    same integers and the same float32 epilogue, so the same bits (B = 5: a tile of 4 rows
    and one of 1; B = 8: two of 4)."""
    rng = np.random.default_rng(2)
    q = quantize_dynamic(
        cls(37, 70, num_layers=2, bidirectional=True, seed=3, **options), int8="always"
    )
    stream = quantize_dynamic(cls(37, 70, num_layers=2, seed=3, **options), int8="always")
    x = rng.standard_normal((9, B, 37)).astype(np.float32)
    before = get_quantized_isa()
    out = {}
    try:
        for isa in ISAS:
            set_quantized_isa(isa)
            out[isa] = q(x)[0], stream.step(x[0])[0]
    finally:
        set_quantized_isa(before)
    for isa in ISAS[1:]:
        np.testing.assert_array_equal(out[isa][0], out["c"][0])
        np.testing.assert_array_equal(out[isa][1], out["c"][1])


def test_linear(isa):
    rng = np.random.default_rng(4)
    lin = fastrnn.nn.Linear(33, 21, seed=0)
    q = quantize_dynamic(lin, int8="always")
    assert isinstance(q, QuantizedLinear)
    x = rng.standard_normal((4, 5, 33)).astype(np.float32)
    y = q(x)
    assert y.shape == (4, 5, 21)
    expected = _q_matmul(x.reshape(20, 33), lin.weight.data) + lin.bias.data
    np.testing.assert_allclose(y.reshape(20, 21), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="in_features=33"):
        q(np.zeros((2, 3), np.float32))


@pytest.mark.parametrize("cls", [fastrnn.LSTM, fastrnn.GRU, fastrnn.RNN])
def test_step_equals_forward(cls):
    rng = np.random.default_rng(5)
    q = quantize_dynamic(cls(8, 24, num_layers=2, seed=0), int8="always")
    x = rng.standard_normal((5, 2, 8)).astype(np.float32)
    y_full, s_full = q(x)
    s, ys = None, []
    for t in range(5):
        y, s = q.step(x[t], s)
        ys.append(y)
    np.testing.assert_array_equal(np.stack(ys), y_full)
    for a, b in zip(
        s if isinstance(s, tuple) else (s,),
        s_full if isinstance(s, tuple) else (s_full,),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)


def test_bidirectional_and_batch_first():
    rng = np.random.default_rng(6)
    layer = fastrnn.GRU(6, 16, bidirectional=True, batch_first=True, seed=0).eval()
    q = quantize_dynamic(layer, int8="always")
    x = rng.standard_normal((3, 7, 6)).astype(np.float32)
    y, h = q(x)
    y32, h32 = layer(x)
    assert y.shape == y32.shape and h.shape == h32.shape
    assert np.abs(y - y32).max() < 0.03
    assert np.abs(h - h32).max() < 0.03


@pytest.mark.parametrize(
    ("layer", "why"),
    [
        (fastrnn.LSTM(4, 8, proj_size=3, seed=0), "proj_size"),
        (fastrnn.GRU(4, 8, reset_after=False, seed=0), "reset_after=False"),
        (fastrnn.LSTM(4, 8, backend="numpy", seed=0), "numpy"),
        # issue 11's cell features: never int8 math that silently leaves the feature out
        (fastrnn.LSTM(4, 8, peephole=True, seed=0), "peephole"),
        (fastrnn.LSTM(4, 8, layer_norm=True, seed=0), "layer_norm"),
        (fastrnn.GRU(4, 8, layer_norm=True, seed=0), "layer_norm"),
        (fastrnn.LSTM(4, 8, zoneout=(0.2, 0.0), seed=0), "zoneout"),
        (fastrnn.GRU(4, 8, zoneout=0.2, seed=0), "zoneout"),
        (fastrnn.RNN(4, 8, zoneout=0.2, seed=0), "zoneout"),
        (fastrnn.LSTM(4, 8, return_cell_states=True, seed=0), "return_cell_states"),
    ],
)
def test_uncovered_variants_run_float32_and_say_so(layer, why):
    q = quantize_dynamic(layer, int8="always")
    assert not q.quantized and "float32" in repr(q) and why in repr(q)
    x = np.random.default_rng(7).standard_normal((3, 2, 4)).astype(np.float32)
    np.testing.assert_array_equal(q(x)[0], layer.eval()(x)[0])


def test_recurrent_dropout_alone_is_quantized():
    # recurrent dropout acts in training only: the eval-mode function is the plain cell's
    layer = fastrnn.LSTM(4, 8, recurrent_dropout=0.3, seed=0).eval()
    plain = fastrnn.LSTM(4, 8, seed=0).eval()
    x = np.random.default_rng(8).standard_normal((3, 2, 4)).astype(np.float32)
    q = quantize_dynamic(layer, int8="always")
    assert q.quantized
    np.testing.assert_array_equal(q(x)[0], quantize_dynamic(plain, int8="always")(x)[0])


def test_inference_only():
    q = quantize_dynamic(fastrnn.LSTM(4, 8, seed=0), int8="always")
    with pytest.raises(RuntimeError, match="inference only"):
        q.backward(np.zeros((1, 1, 8), np.float32))
    q.train()  # only the flag: the forward is the same, the backward still raises
    with pytest.raises(RuntimeError, match="inference only"):
        q.backward(np.zeros((1, 1, 8), np.float32))
    assert list(q.parameters()) == []
    with pytest.raises(ValueError, match="lengths"):
        q(np.zeros((2, 1, 4), np.float32), lengths=[1])


def test_original_model_untouched_and_nested_modules():
    model = fastrnn.nn.Sequential(fastrnn.nn.Linear(4, 6, seed=0), fastrnn.nn.Linear(6, 2, seed=1))
    q = quantize_dynamic(model, int8="always")
    assert all(isinstance(m, QuantizedLinear) for m in q.children())
    assert all(isinstance(m, fastrnn.nn.Linear) for m in model.children())


def test_checkpoint_round_trip_and_size(tmp_path):
    rng = np.random.default_rng(8)
    model = fastrnn.nn.Sequential(fastrnn.LSTM(64, 128, num_layers=2, seed=0))
    q = quantize_dynamic(model, int8="always")
    path = tmp_path / "q.npz"
    fastrnn.save_checkpoint(path, q)
    other = quantize_dynamic(
        fastrnn.nn.Sequential(fastrnn.LSTM(64, 128, num_layers=2, seed=9)), int8="always"
    )
    x = rng.standard_normal((4, 2, 64)).astype(np.float32)
    assert not np.array_equal(other(x)[0], q(x)[0])
    fastrnn.load_checkpoint(path, other)
    np.testing.assert_array_equal(other(x)[0], q(x)[0])
    # 4x smaller: int8 weights and one float32 scale per row (biases stay float32)
    f32 = sum(p.data.nbytes for p in model.parameters())
    i8 = sum(a.nbytes for m in q.modules() for a in getattr(m, "_buffers", {}).values())
    assert f32 / i8 > 3.5
    fpath = tmp_path / "f.npz"
    fastrnn.save_checkpoint(fpath, model)
    assert fpath.stat().st_size / path.stat().st_size > 3.5
    # a float model cannot take a quantized checkpoint, nor the reverse
    with pytest.raises(ValueError, match="does not match"):
        fastrnn.load_checkpoint(path, model)
    with pytest.raises(ValueError):
        fastrnn.load_checkpoint(fpath, other)


@pytest.mark.parametrize(("value", "expected"), [("c", "c"), (" C ", "c"), ("bogus", None)])
def test_isa_from_the_environment(value, expected):
    """FASTRNN_QUANT_ISA applies before anything reads the path (the benches print it first),
    and a bad value names the variable."""
    import os
    import subprocess
    import sys

    code = (
        "import fastrnn.quantization as Q\n"
        "try:\n    print(Q.get_quantized_isa())\n"
        "except ValueError as e:\n    print('error:', e)\n"
    )
    env = {**os.environ, "FASTRNN_QUANT_ISA": value}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    ).stdout.strip()
    if expected is None:
        assert out.startswith("error: FASTRNN_QUANT_ISA='bogus': isa must be"), out
    else:
        assert out == expected


def test_isa_choice_is_checked():
    with pytest.raises(ValueError, match="'vnni', 'avxvnni' or 'c'"):
        set_quantized_isa("avx2")
    if not quant.vnni_available():
        with pytest.raises(ValueError, match="AVX-512 VNNI"):
            set_quantized_isa("vnni")
    if not quant.avxvnni_available():
        with pytest.raises(ValueError, match="AVX-VNNI"):
            set_quantized_isa("avxvnni")


@pytest.mark.parametrize("cls", [fastrnn.RNN, fastrnn.LSTM, fastrnn.GRU])
def test_auto_keeps_float32_below_the_measured_hidden_size(cls):
    """int8="auto" (the default) runs float32 where int8 measured slower, and says so."""
    from fastrnn.cells import CELLS
    from fastrnn.quantization import _INT8_MIN_HIDDEN

    least = _INT8_MIN_HIDDEN[next(c for c in CELLS.values() if c.title == cls.__name__)]
    rng = np.random.default_rng(4)
    x = rng.standard_normal((5, 3, 6)).astype(np.float32)
    small = cls(6, least - 1, seed=0).eval()
    q = quantize_dynamic(small)
    assert not q.quantized
    assert f"float32 (hidden_size={least - 1} < {least}" in repr(q)
    np.testing.assert_array_equal(q(x)[0], small(x)[0])  # the float32 kernels, same weights
    np.testing.assert_array_equal(q.step(x[0])[0], small.step(x[0])[0])
    assert quantize_dynamic(small, int8="always").quantized
    big = quantize_dynamic(cls(6, least, seed=0))
    fast = get_quantized_isa() != "c"  # else auto runs float32 (the next test)
    assert big.quantized == fast and ("int8)" in repr(big)) == fast


@pytest.mark.parametrize(("cls", "options"), CELLS, ids=["rnn_tanh", "rnn_relu", "lstm", "gru"])
def test_auto_runs_float32_kernels_where_the_integer_gemms_are_the_portable_path(cls, options):
    """The portable int8 GEMMs are plain C, several times slower than the float32 kernels:
    int8="auto" then runs the float32 layer of the dequantized weights (same checkpoint, same
    bits as that layer built by hand), forward and step, and says so; "always" keeps the
    integer kernels; the VNNI path (where there is one) the int8 kernels again."""
    rng = np.random.default_rng(31)
    layer = cls(12, 64, num_layers=2, seed=6, **options).eval()
    x = rng.standard_normal((7, 3, 12)).astype(np.float32)
    q, always = quantize_dynamic(layer), quantize_dynamic(layer, int8="always")
    by_hand = cls(12, 64, num_layers=2, seed=0, **options).eval()
    for name, p in by_hand._parameters.items():
        w = layer._parameters[name].data
        if name.startswith("weight_"):
            qw, sw = _q_weight(w)
            w = sw[:, None] * qw.astype(np.float32)
        p.data = np.asarray(w, np.float32)
    before = get_quantized_isa()
    try:
        set_quantized_isa("c")
        assert not q.quantized and always.quantized
        assert "float32 kernels" in repr(q) and "portable path" in repr(q)
        y, state = q(x)
        ref_y, ref_state = by_hand(x)
        np.testing.assert_array_equal(y, ref_y)
        for a, b in zip(np.atleast_1d(state) if cls is not fastrnn.LSTM else state,
                        np.atleast_1d(ref_state) if cls is not fastrnn.LSTM else ref_state,
                        strict=True):  # fmt: skip
            np.testing.assert_array_equal(a, b)
        s, ys = None, []
        for t in range(len(x)):
            yt, s = q.step(x[t], s)
            ys.append(yt)
        np.testing.assert_array_equal(np.stack(ys), y)
        y_int8 = always(x)[0]
        assert not np.array_equal(y_int8, y)  # the integer kernels quantize x and h too
        if "vnni" in ISAS:
            set_quantized_isa("vnni")
            assert q.quantized and repr(q).endswith(", int8)")
            np.testing.assert_array_equal(q(x)[0], y_int8)  # the two paths' bits
    finally:
        set_quantized_isa(before)


def test_auto_linear_runs_float32_on_the_portable_path_and_reloads(tmp_path):
    """A Linear layer too; and a checkpoint loaded into a layer that ran its float32
    stand-in before re-makes it from the loaded weights (no stale weights)."""
    from fastrnn.nn.blocks import Linear

    rng = np.random.default_rng(32)
    x = rng.standard_normal((5, 20)).astype(np.float32)
    lin = Linear(20, 9)
    q = quantize_dynamic(lin)
    qw, sw = _q_weight(lin.weight.data)
    expected = x @ (sw[:, None] * qw.astype(np.float32)).T + lin.bias.data
    model = fastrnn.nn.Sequential(fastrnn.GRU(20, 48, seed=1), fastrnn.nn.Linear(48, 3))
    other = fastrnn.nn.Sequential(fastrnn.GRU(20, 48, seed=2), fastrnn.nn.Linear(48, 3))
    qm, qo = quantize_dynamic(model), quantize_dynamic(other)
    path = tmp_path / "q.ckpt"
    fastrnn.save_checkpoint(path, qm)
    xs = rng.standard_normal((4, 2, 20)).astype(np.float32)
    before = get_quantized_isa()
    try:
        set_quantized_isa("c")
        assert not q.quantized and "float32 kernels" in repr(q)
        np.testing.assert_allclose(q(x), expected, rtol=1e-6, atol=1e-6)
        mine = qm[1](qm[0](xs)[0])
        assert not np.array_equal(qo[1](qo[0](xs)[0]), mine)  # its float32 stand-ins made
        fastrnn.load_checkpoint(path, qo)
        np.testing.assert_array_equal(qo[1](qo[0](xs)[0]), mine)
    finally:
        set_quantized_isa(before)


def test_int8_policy_is_checked():
    with pytest.raises(ValueError, match="int8 must be 'auto' or 'always'"):
        quantize_dynamic(fastrnn.LSTM(4, 8, seed=0), int8="never")


@pytest.mark.parametrize(("cls", "options"), CELLS, ids=["rnn_tanh", "rnn_relu", "lstm", "gru"])
def test_long_sequences_project_the_input_in_chunks_with_the_same_bits(cls, options, isa):
    """The int8 loop projects ring_steps(T, B) steps of x at a time (256 // B = 28 here, so the
    ring wraps, the last chunk partial): the same bits as short calls chained by their state."""
    rng = np.random.default_rng(9)
    q = quantize_dynamic(cls(12, 40, num_layers=2, seed=2, **options), int8="always")
    x = rng.standard_normal((65, 9, 12)).astype(np.float32)
    y, state = q(x)
    ys, s = [], None
    for a, b in [(0, 20), (20, 40), (40, 65)]:
        yk, s = q(x[a:b], s)
        ys.append(yk)
    np.testing.assert_array_equal(np.concatenate(ys), y)
    for u, v in zip(
        state if isinstance(state, tuple) else (state,),
        s if isinstance(s, tuple) else (s,),
        strict=True,
    ):
        np.testing.assert_array_equal(u, v)


def test_step_keeps_its_kernels_until_a_checkpoint_load_and_copies(tmp_path, isa):
    """The int8 step keeps each layer's StepLayer (quant.step's operands) until the layer is
    re-packed (a checkpoint load); copies and pickles of a stepped model step alike."""
    import copy
    import pickle

    rng = np.random.default_rng(12)
    q = quantize_dynamic(fastrnn.LSTM(40, 128, num_layers=2, seed=0), int8="always")
    other = quantize_dynamic(fastrnn.LSTM(40, 128, num_layers=2, seed=4), int8="always")
    x = rng.standard_normal((3, 40)).astype(np.float32)
    y, s = q.step(x)
    y2, _ = q.step(x, s)
    np.testing.assert_array_equal(np.stack([y, y2]), q(np.stack([x, x]))[0])
    for twin in (copy.deepcopy(q), pickle.loads(pickle.dumps(q))):
        np.testing.assert_array_equal(twin.step(x, s)[0], y2)
    path = tmp_path / "other.npz"
    fastrnn.save_checkpoint(path, other)
    fastrnn.load_checkpoint(path, q)
    np.testing.assert_array_equal(q.step(x)[0], other.step(x)[0])


def test_quant_step_refuses_short_buffers():
    q = quantize_dynamic(fastrnn.GRU(8, 128, seed=0), int8="always")
    x = np.zeros((1, 8), np.float32)
    q.step(x)
    kernel = q._step_layers()[0]
    h = np.zeros((1, 1, 128), np.float32)
    with pytest.raises(ValueError, match="expected 512 bytes"):
        quant.step(kernel, x, h, None, np.empty((1, 127), np.float32), 1, 0, 1)
    with pytest.raises(ValueError, match="4-byte elements"):
        quant.step(kernel, x.astype(np.float64), h, None, np.empty((1, 128), np.float32), 1, 0, 1)
    with pytest.raises(ValueError, match="c exactly for the LSTM"):
        quant.step(kernel, x, h, h.copy(), np.empty((1, 128), np.float32), 1, 0, 1)


@pytest.mark.parametrize("cls, kw", CELLS, ids=lambda v: getattr(v, "__name__", str(v)))
def test_int8_calls_in_a_loop_split_over_two_threads_with_the_same_bits(cls, kw, isa, monkeypatch):
    """An int8 layer keeps its own history of calls (per layer): under libgomp's default policy
    its first call runs on one thread, a call within _BURST_S of the same layer's previous on
    two (each writes its 16-unit runs of rows that start on a cache line), with the same bits;
    copies and pickles start without history."""
    import copy
    import pickle

    from conftest import awake_team, record_calls

    from fastrnn import quantization as Q

    awake_team(monkeypatch)
    teams = record_calls(monkeypatch, Q, "_team")
    rng = np.random.default_rng(12)
    q = quantize_dynamic(cls(384, 384, num_layers=2, seed=1, **kw).eval(), int8="always")
    x = rng.standard_normal((3, 2, 384)).astype(np.float32)
    before = fastrnn.get_num_threads()
    try:
        fastrnn.set_num_threads(2)
        y1, s1 = q(x)  # each layer's first call: no history, one thread
        y2, s2 = q(x)  # within the burst: two
        state, ys, stream_teams = None, [], []
        for t in range(3):
            y, state = q.step(x[t], state)
            ys.append(y)
            if t == 0:  # then the stream (the next steps' C path) asks for its teams
                assert teams[6:] == [1, 2, 1, 2]  # cold, warm of each layer
                del teams[6:]
            else:
                stream_teams.append(q._step_cache[2].team)
    finally:
        fastrnn.set_num_threads(before)
    assert teams == [1, 1] + [2] * 4
    assert stream_teams == [2, 2]
    np.testing.assert_array_equal(y2, y1)
    np.testing.assert_array_equal(np.stack(ys), y1)
    for s in (s2, state):
        np.testing.assert_array_equal(np.asarray(s), np.asarray(s1))
    for other in (copy.deepcopy(q), pickle.loads(pickle.dumps(q))):
        assert not other.__dict__.get("_ends")
        np.testing.assert_array_equal(other(x)[0], y1)


@pytest.mark.parametrize("cls, kw", CELLS, ids=lambda v: getattr(v, "__name__", str(v)))
def test_two_threads_split_rows_or_units_with_the_one_thread_bits(cls, kw, isa, monkeypatch):
    """Where each thread gets 4 rows or more and the packed weights are small, the threads
    split the batch rows (every unit of its own rows, no barrier per step); else the units.
    Both give the one-thread bits, at even and uneven shares of rows, forward and step, and
    the oracle's numbers."""
    from fastrnn import quantization as Q

    rng = np.random.default_rng(21)
    layer = cls(24, 136, num_layers=2, seed=5, **kw).eval()
    q = quantize_dynamic(layer, int8="always")
    code = q._code
    threads = {"n": 1}
    monkeypatch.setattr(Q, "_team", lambda *a: threads["n"])
    before = quant._set_rows_weight_bytes(1 << 20)
    try:
        for B, split in ((5, "units"), (8, "rows"), (13, "rows")):
            assert quant.plan(B, 136, code, 24, 2) == (2, split)
            x = rng.standard_normal((7, B, 24)).astype(np.float32)
            threads["n"] = 1
            y1, s1 = q(x)
            step1 = q.step(x[0])
            threads["n"] = 2
            for weight_bytes in (1 << 20, 0):  # rows where they may be, then units only
                quant._set_rows_weight_bytes(weight_bytes)
                y2, s2 = q(x)
                np.testing.assert_array_equal(y2, y1)
                np.testing.assert_array_equal(np.asarray(s2), np.asarray(s1))
                np.testing.assert_array_equal(q.step(x[0])[0], step1[0])
            quant._set_rows_weight_bytes(1 << 20)
            h0 = np.zeros((2, B, 136), np.float32)
            np.testing.assert_allclose(
                y1, _oracle(layer, x, h0, h0 if cls is fastrnn.LSTM else None), atol=2e-3
            )
        quant._set_rows_weight_bytes(0)
        assert quant.plan(13, 136, code, 24, 2) == (2, "units")
    finally:
        quant._set_rows_weight_bytes(before)


def test_team_rule_of_row_split_calls(monkeypatch):
    """A call whose rows the kernels split takes the team when it is awake (the layer's
    previous call just ended) and has 2**20 multiply-adds or more; asleep, only past the
    float32 rule's 2**30. Weights over 512 KB packed keep the unit split (and its rule)."""
    from fastrnn import functional as F
    from fastrnn import quantization as Q

    monkeypatch.setattr(F, "_TEAM_SPINS", False)
    monkeypatch.setattr(F, "_TEAM_SLEEPS", False)
    monkeypatch.setattr(F, "_BURST_S", 1.0)  # "just ended" even on a loaded machine
    rnn, lstm = 0, 2
    assert quant.plan(64, 256, lstm, 128, 2) == (2, "rows")  # 384 KB packed
    assert quant.plan(64, 512, lstm, 512, 2) == (2, "units")  # 2 MB
    assert quant.plan(7, 256, lstm, 128, 2) == (2, "units")  # fewer than 4 rows per thread
    assert quant.plan(64, 256, lstm, 128, 1) == (1, "units")
    before = fastrnn.get_num_threads()
    try:
        fastrnn.set_num_threads(2)
        asleep: dict = {}

        def awake():  # the layer's previous call ended just now
            return {F._LAST_END: time.perf_counter()}

        G, H, I = 128, 128, 64
        assert Q._team(16, G, H, I, 1000, asleep, rnn) == 1  # 2**28.6 multiply-adds
        assert Q._team(16, G, H, I, 1000, awake(), rnn) == 2
        assert Q._team(16, G, H, I, 4, awake(), rnn) == 2  # 2**20.6
        assert Q._team(16, G, H, I, 2, awake(), rnn) == 1  # 2**19.6
        assert Q._team(16, 4 * 256, 256, 128, 3000, asleep, lstm) == 2  # 2**31.8
        # 4 rows: the unit split's float32 step rule (B * G * H = 2**18, too small a step)
        assert Q._team(4, G, H, I, 1000, awake(), rnn) == 1
    finally:
        fastrnn.set_num_threads(before)


@pytest.mark.parametrize("cls, kw", CELLS, ids=lambda v: getattr(v, "__name__", str(v)))
def test_the_int8_stream_answers_as_the_general_path_or_refuses(cls, kw, isa, tmp_path):
    """After a one-step call a quantized layer keeps a Stream (the C path of the next steps):
    from the state it returned or any other float32 one of the right shape it gives the bits
    of the general path; another x layout, integer path or thread count, or a checkpoint load
    (new int8 weights), and it is not used."""
    rng = np.random.default_rng(22)
    q = quantize_dynamic(cls(6, 20, num_layers=2, seed=5, **kw).eval(), int8="always")
    x = rng.standard_normal((3, 6)).astype(np.float32)
    _, s0 = q.step(x)
    stream = q._step_cache[2]
    assert stream is not None and stream.matches(x)
    shapes = (2, 3, 20)
    other = rng.standard_normal(shapes).astype(np.float32)
    for state in (s0, (other, other + 1) if cls is fastrnn.LSTM else other):
        y, s1 = stream(x, state)
        y_ref, s_ref = q._step_one(x, state)
        np.testing.assert_array_equal(y, y_ref)
        np.testing.assert_array_equal(np.asarray(s1), np.asarray(s_ref))
        # the general path's full forward too
        np.testing.assert_array_equal(y, q(x[None], state)[0][0])
    s1 = stream(x, s0)[1]
    for args in ((x.astype(np.float64), s1), (x[:2], s1), (x, None)):
        assert stream(*args) is None
    before = fastrnn.get_num_threads()
    try:
        fastrnn.set_num_threads(1 if before > 1 else 2)
        assert stream(x, s1) is None
    finally:
        fastrnn.set_num_threads(before)
    others = [i for i in ISAS if i != isa]
    if others:
        set_quantized_isa(others[0])
        try:
            assert stream(x, s1) is None
        finally:
            set_quantized_isa(isa)
    assert stream(x, s1) is not None
    fastrnn.save_checkpoint(tmp_path / "q.npz", q)
    fastrnn.load_checkpoint(tmp_path / "q.npz", q)  # re-makes the int8 layers
    y, _ = q.step(x, s1)  # not through the old stream
    assert q._step_cache[2] is not stream
    np.testing.assert_array_equal(y, q(x[None], s1)[0][0])
