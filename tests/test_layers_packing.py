"""Weights packed once: layers reuse their kernels' packed weights between calls and never
compute with stale ones after a change through fastrnn."""

from __future__ import annotations

import numpy as np
import pytest

import fastrnn
from fastrnn import functional as F
from fastrnn.optim import SGD, Adam

CLASSES = [fastrnn.RNN, fastrnn.LSTM, fastrnn.GRU]


def _fresh(layer, x):
    """The forward of a new layer with a copy of ``layer``'s weights (nothing packed yet)."""
    other = type(layer)(layer.input_size, layer.hidden_size, num_layers=layer.num_layers, seed=99)
    other.load_state_dict({k: v.copy() for k, v in layer.state_dict().items()})
    return other.eval()(x)[0]


def _packed_objects(layer):
    """The packed weights in the layer's packs dicts (which also keep their last call's end)."""
    return [
        obj
        for entry in layer._packed.values()
        for key, obj in entry[3].items()
        if key != F._LAST_END
    ]


def _x(seed=0, I=6):
    return np.random.default_rng(seed).standard_normal((5, 3, I)).astype(np.float32)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_packed_once_and_reused(cls):
    layer = cls(6, 32, num_layers=2, seed=0).eval()
    x = _x()
    y1 = layer(x)[0]
    first = _packed_objects(layer)
    assert len(first) == 2  # one per layer
    y2 = layer(x)[0]
    assert [id(o) for o in _packed_objects(layer)] == [id(o) for o in first]  # not re-packed
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_array_equal(y1, _fresh(layer, x))
    layer.step(x[0])  # the step shares them
    assert [id(o) for o in _packed_objects(layer)] == [id(o) for o in first]


def test_functional_packs_give_the_same_bits():
    rng = np.random.default_rng(1)
    H, I = 24, 7
    w_ih = rng.standard_normal((4 * H, I)).astype(np.float32)
    w_hh = rng.standard_normal((4 * H, H)).astype(np.float32)
    x = rng.standard_normal((6, 2, I)).astype(np.float32)
    packs: dict = {}
    a = F.lstm_forward(x, None, None, w_ih, w_hh, training=False, packs=packs)[0]
    assert len(packs) == 2 and F._LAST_END in packs  # the packed weights and the call's end
    b = F.lstm_forward(x, None, None, w_ih, w_hh, training=False, packs=packs)[0]
    c = F.lstm_forward(x, None, None, w_ih, w_hh, training=False)[0]
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)


def _change_by_optimizer(layer, x):
    layer.train()
    y, _ = layer(x)
    layer.backward(np.ones_like(y))
    Adam(layer.parameters(), lr=0.1).step()
    layer.eval()


def _change_by_sgd(layer, x):
    layer.train()
    y, _ = layer(x)
    layer.backward(np.ones_like(y))
    SGD(layer.parameters(), lr=0.5).step()
    layer.eval()


def _change_by_load_state_dict(layer, x):
    layer.load_state_dict({k: v * 0.5 for k, v in layer.state_dict().items()})


def _change_by_assignment(layer, x):
    for p in layer.parameters():
        p.data = p.data[::-1].copy()


def _change_in_place_then_flatten(layer, x):
    for p in layer.parameters():
        p.data *= -1.0
    layer.flatten_parameters()


@pytest.mark.parametrize(
    "change",
    [
        _change_by_optimizer,
        _change_by_sgd,
        _change_by_load_state_dict,
        _change_by_assignment,
        _change_in_place_then_flatten,
    ],
    ids=lambda f: f.__name__[len("_change_by_") :] if "by" in f.__name__ else "flatten",
)
@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_never_stale(cls, change):
    layer = cls(6, 32, num_layers=2, seed=0).eval()
    x = _x()
    before = layer(x)[0]
    layer.step(x[0])
    change(layer, x)
    after = layer(x)[0]
    assert not np.array_equal(before, after)
    np.testing.assert_array_equal(after, _fresh(layer, x))
    y, _ = layer.step(x)
    np.testing.assert_array_equal(y, after)


def test_never_stale_after_a_checkpoint_load(tmp_path):
    layer = fastrnn.LSTM(6, 32, seed=0).eval()
    x = _x()
    other = fastrnn.LSTM(6, 32, seed=5).eval()
    fastrnn.save_checkpoint(tmp_path / "c.npz", other)
    layer(x)  # packs layer's own weights
    fastrnn.load_checkpoint(tmp_path / "c.npz", layer)
    np.testing.assert_array_equal(layer(x)[0], other(x)[0])


def test_in_place_edit_then_flatten_parameters():
    """The documented contract: after an in-place write by hand, flatten_parameters() (until
    then a forward may mix the packed old weights with the new ones read in place)."""
    layer = fastrnn.GRU(6, 32, seed=0).eval()
    x = _x()
    before = layer(x)[0]
    layer.weight_hh_l0.data *= 0.0
    layer.flatten_parameters()
    assert not np.array_equal(layer(x)[0], before)
    np.testing.assert_array_equal(layer(x)[0], _fresh(layer, x))


def test_copies_and_pickles_start_without_packed_weights():
    import copy
    import pickle

    layer = fastrnn.LSTM(6, 32, seed=0).eval()
    x = _x()
    y = layer(x)[0]
    for other in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
        assert not other._packed
        np.testing.assert_array_equal(other(x)[0], y)


def test_fastrnn_torch_never_stale():
    torch = pytest.importorskip("torch")
    import fastrnn.torch as ft

    torch.manual_seed(0)
    ref = torch.nn.LSTM(6, 32, num_layers=2).eval()
    model = ft.patch(torch.nn.Sequential(torch.nn.LSTM(6, 32, num_layers=2))).eval()
    model[0].load_state_dict(ref.state_dict())
    x = torch.from_numpy(_x())

    def check():
        with torch.no_grad():
            got = model(x)[0]
            want = ref(x)[0]
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)

    check()
    check()  # packed weights reused
    # an optimizer step on both (version counters move)
    for m in (model[0], ref):
        opt = torch.optim.SGD(m.parameters(), lr=0.5)
        m(x)[0].sum().backward()
        opt.step()
    check()
    # load_state_dict and an in-place write through the tensor
    with torch.no_grad():
        for p, q in zip(model[0].parameters(), ref.parameters(), strict=True):
            p.mul_(-1.0)
            q.mul_(-1.0)
    check()
    new = {k: v * 0.5 for k, v in ref.state_dict().items()}
    ref.load_state_dict(new)
    model[0].load_state_dict(new)
    check()
    # through .data torch counts nothing: clear_packed() is the documented remedy
    for p, q in zip(model[0].parameters(), ref.parameters(), strict=True):
        p.data.mul_(2.0)
        q.data.mul_(2.0)
    ft.clear_packed()
    check()


def test_training_mode_packs_per_call():
    """Training code edits weights in place (finite differences): no packed copy is kept."""
    layer = fastrnn.LSTM(6, 32, seed=0)  # training mode
    x = _x()
    before = layer(x)[0]
    layer.weight_ih_l0.data[0, 0] += 1.0
    after = layer(x)[0]
    assert not np.array_equal(before, after)
    assert not layer.__dict__.get("_packed")


# the cell features of issue 11 beside prepacked weights: the plain kernels' feature options
# (peephole, recurrent dropout, zoneout) take the packed weights; the layer-normalized loops
# ignore ``packs`` and pack per call, so they can never read stale panels
FEATURES = [
    ("lstm", {"w_peephole": (3, None)}),
    ("lstm", {"recurrent_mask": (None, None)}),
    ("lstm", {"zoneout_h": 0.25, "zoneout_c": 0.5}),
    ("gru", {"recurrent_mask": (None, None)}),
    ("gru", {"zoneout_h": 0.3}),
    ("rnn", {"recurrent_mask": (None, None)}),
    ("rnn", {"zoneout_h": 0.3}),
]


def _feature_call(cell, features, rng, H=24, I=7, B=2, T=6):
    G = {"rnn": 1, "lstm": 4, "gru": 3}[cell]
    w_ih = rng.standard_normal((G * H, I)).astype(np.float32) * 0.3
    w_hh = rng.standard_normal((G * H, H)).astype(np.float32) * 0.3
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    kw = {}
    for name, value in features.items():
        if name == "recurrent_mask":  # an inverted-dropout mask, 0 or 2
            value = (rng.random((B, H)) >= 0.5).astype(np.float32) * 2
        elif isinstance(value, tuple):
            value = rng.standard_normal((value[0], H)).astype(np.float32)
        kw[name] = value
    fwd = getattr(F, f"{cell}_forward")
    states = (None, None) if cell == "lstm" else (None,)

    def run(packs=None):
        return fwd(x, *states, w_ih, w_hh, training=False, packs=packs, **kw)[0]

    return run, w_ih, w_hh


@pytest.mark.parametrize(("cell", "features"), FEATURES, ids=lambda v: str(v))
def test_feature_options_with_packs_give_the_same_bits(cell, features):
    run, _, w_hh = _feature_call(cell, features, np.random.default_rng(2))
    packs: dict = {}
    a = run(packs)
    assert len(packs) == 1  # these paths take the prepacked weights
    np.testing.assert_array_equal(a, run(packs))
    np.testing.assert_array_equal(a, run())
    w_hh *= 0.5  # changed in place, the dict emptied as documented: packed afresh
    packs.clear()
    b = run(packs)
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(b, run())


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_layer_norm_ignores_packs_and_is_never_stale(cell):
    rng = np.random.default_rng(3)
    H = 24
    G = 4 if cell == "lstm" else 3
    ln = {"ln_ih": rng.random(G * H).astype(np.float32) + 0.5}
    ln["ln_hh"] = rng.random(G * H).astype(np.float32) + 0.5
    if cell == "lstm":
        ln["ln_c"] = rng.random(H).astype(np.float32) + 0.5
        ln["ln_c_bias"] = rng.standard_normal(H).astype(np.float32)
    run, w_ih, w_hh = _feature_call(cell, ln, rng, H=H)
    packs: dict = {}
    a = run(packs)
    assert packs == {}  # the layer-norm loops pack per call
    np.testing.assert_array_equal(a, run())
    # changed in place without emptying the dict: still the new weights, nothing was kept
    w_hh *= -1.0
    w_ih *= 0.5
    b = run(packs)
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(b, run())


@pytest.mark.parametrize(
    ("cls", "options"),
    [
        (fastrnn.LSTM, {"peephole": True}),
        (fastrnn.LSTM, {"layer_norm": True}),
        (fastrnn.LSTM, {"zoneout": 0.3, "recurrent_dropout": 0.2}),
        (fastrnn.GRU, {"layer_norm": True}),
        (fastrnn.GRU, {"zoneout": 0.3}),
        (fastrnn.RNN, {"zoneout": 0.3}),
    ],
    ids=lambda v: getattr(v, "__name__", str(v)),
)
def test_feature_layers_never_stale(cls, options):
    layer = cls(6, 32, num_layers=2, seed=0, **options).eval()
    x = _x()
    before = layer(x)[0]
    np.testing.assert_array_equal(layer(x)[0], before)  # reused (or re-packed) the same bits
    _change_by_optimizer(layer, x)  # a training forward and backward with the features, Adam
    after = layer(x)[0]
    assert not np.array_equal(before, after)
    fresh = cls(6, 32, num_layers=2, seed=99, **options)
    fresh.load_state_dict({k: v.copy() for k, v in layer.state_dict().items()})
    np.testing.assert_array_equal(after, fresh.eval()(x)[0])
