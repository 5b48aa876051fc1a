"""fastrnn/checkpoint.py: round trip, bit-identical resume, atomic writes, damaged files."""

import json
import os

import numpy as np
import pytest

import fastrnn
import fastrnn.checkpoint as ckpt
from fastrnn.checkpoint import load_checkpoint, save_checkpoint
from fastrnn.nn import LSTM, CrossEntropyLoss, Dropout, Embedding, Linear, Module, Sequential
from fastrnn.optim import SGD, Adam, clip_grad_norm_
from fastrnn.optim.lr_scheduler import ExponentialLR, ReduceLROnPlateau, StepLR

V, D, C = 12, 6, 5


def _model(seed):
    return Sequential(
        Embedding(V, D, padding_idx=0, seed=seed),
        Dropout(0.3, seed=seed),
        Linear(D, C, seed=seed + 1),
    )


def _batches(n):
    rng = np.random.default_rng(42)
    return [(rng.integers(0, V, (4, 3)), rng.integers(0, C, (4, 3))) for _ in range(n)]


def _train(model, opt, sched, batches):
    loss_fn = CrossEntropyLoss()
    for x, y in batches:
        opt.zero_grad()
        loss_fn(model(x), y)
        model.backward(loss_fn.backward())
        clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()


def _setup(seed):
    model = _model(seed)
    opt = Adam(model.parameters(), lr=0.05, amsgrad=True)
    return model, opt, StepLR(opt, step_size=3, gamma=0.5)


def test_resume_from_checkpoint_is_bit_identical(tmp_path):
    """Model, Dropout generator, optimizer and scheduler all restored by the checkpoint alone."""
    batches = _batches(10)
    model_ref, opt_ref, sched_ref = _setup(0)
    _train(model_ref, opt_ref, sched_ref, batches)  # the uninterrupted run

    model, opt, sched = _setup(0)
    _train(model, opt, sched, batches[:4])
    path = tmp_path / "run.ckpt"
    save_checkpoint(path, model, opt, scheduler=sched, step=4)
    _train(model, opt, sched, batches[4:5])  # later steps must not leak into the file

    model2, opt2, sched2 = _setup(123)  # different initial weights and rng
    extra = load_checkpoint(path, model2, opt2, scheduler=sched2)
    assert extra == {"step": 4}
    _train(model2, opt2, sched2, batches[4:])

    for (n, p), (_, q) in zip(model_ref.named_parameters(), model2.named_parameters(), strict=True):
        np.testing.assert_array_equal(p.data, q.data, err_msg=n)
    assert opt2.param_groups[0]["lr"] == opt_ref.param_groups[0]["lr"]
    assert sched2.state_dict() == sched_ref.state_dict()


class _LM(Module):
    """Embedding -> 2-layer LSTM with dropout -> Dropout -> Linear: every kind of generator."""

    def __init__(self, seed):
        super().__init__()
        self.emb = Embedding(V, D, seed=seed)
        self.lstm = LSTM(D, 8, num_layers=2, dropout=0.4, seed=seed)
        self.drop = Dropout(0.2, seed=None if seed is None else seed + 7)
        self.head = Linear(8, C, seed=seed)

    def forward(self, x):
        out, _ = self.lstm(self.emb(x))
        return self.head(self.drop(out))

    def backward(self, dlogits):
        dx, _ = self.lstm.backward(self.drop.backward(self.head.backward(dlogits)))
        self.emb.backward(dx)


@pytest.mark.parametrize("manual", [False, True])
def test_resume_with_recurrent_dropout_and_manual_seed(tmp_path, manual):
    """Every generator of every module is saved, the LSTM's inter-layer dropout included; with
    manual_seed the modules built after the resume also continue the same sequence."""
    state = fastrnn.get_rng_state()
    try:
        batches = _batches(8)

        def run(n_before, path=None, resume=None):
            if manual:
                fastrnn.manual_seed(3)
            seed = None if manual else 0
            model = _LM(seed)
            opt = Adam(model.parameters(), lr=0.02)
            sched = ReduceLROnPlateau(opt, factor=0.5, patience=0)
            if resume is not None:
                load_checkpoint(resume, model, opt, scheduler=sched)
            loss_fn = CrossEntropyLoss()
            losses = []
            for i, (x, y) in enumerate(batches[n_before:]):
                opt.zero_grad()
                losses.append(loss_fn(model(x), y))
                model.backward(loss_fn.backward())
                opt.step()
                sched.step(losses[-1])
                if path is not None and i == 2:
                    save_checkpoint(path, model, opt, scheduler=sched)
            late = Dropout(0.5)  # built after the checkpoint: manual_seed sequence continues
            return losses, model, late.generator.random(3)

        ref_losses, ref_model, ref_late = run(0, path=tmp_path / "c.ckpt")
        if manual:
            fastrnn.manual_seed(99)  # resumed process starts elsewhere; the file restores it
        losses, model, late = run(3, resume=tmp_path / "c.ckpt")
        assert [float(v) for v in losses] == [float(v) for v in ref_losses[3:]]
        for (n, p), (_, q) in zip(
            ref_model.named_parameters(), model.named_parameters(), strict=True
        ):
            np.testing.assert_array_equal(p.data, q.data, err_msg=n)
        if manual:
            np.testing.assert_array_equal(late, ref_late)
    finally:
        fastrnn.set_rng_state(state)


def test_generator_and_scheduler_mismatch(tmp_path):
    model, opt, sched = _setup(0)
    path = tmp_path / "g.ckpt"
    save_checkpoint(path, model, opt, scheduler=sched)
    no_dropout = Sequential(Embedding(V, D), _Identity(), Linear(D, C))
    with pytest.raises(ValueError, match=r"generators of modules the model does not have: \['1'\]"):
        load_checkpoint(path, no_dropout)
    m2, o2, _ = _setup(1)
    before = m2.state_dict()
    with pytest.raises(ValueError, match="holds StepLR state, not ExponentialLR"):
        load_checkpoint(path, m2, o2, scheduler=ExponentialLR(o2, 0.9))
    with pytest.raises(TypeError, match="scheduler must be a fastrnn"):
        save_checkpoint(path, m2, o2, scheduler=sched.state_dict())
    for k, v in m2.state_dict().items():  # nothing was loaded
        np.testing.assert_array_equal(v, before[k])
    no_sched = tmp_path / "n.ckpt"
    save_checkpoint(no_sched, model, opt)
    with pytest.raises(ValueError, match="holds no scheduler state"):
        load_checkpoint(no_sched, m2, o2, scheduler=StepLR(o2, 2))


class _Identity(Module):
    def forward(self, x):
        return x

    def backward(self, dout):
        return dout


def test_version_1_files_still_load(tmp_path):
    """A file without the scheduler and rng entries (format version 1) loads its parameters."""
    model = Linear(3, 2, seed=0)
    path = tmp_path / "v1.ckpt"
    save_checkpoint(path, model, epoch=2)
    with np.load(path, allow_pickle=False) as z:
        arrays = dict(z)
    meta = json.loads(str(arrays["__fastrnn_checkpoint__"][()]))
    meta["version"] = 1
    del meta["scheduler"], meta["rng"]
    arrays["__fastrnn_checkpoint__"] = np.array(json.dumps(meta))
    np.savez(path, **arrays)
    other = Linear(3, 2, seed=1)
    assert load_checkpoint(path, other) == {"epoch": 2}
    np.testing.assert_array_equal(other.weight.data, model.weight.data)


def test_round_trip_of_values_and_types(tmp_path):
    model = Linear(3, 2, dtype=np.float64, seed=0)
    extra = {
        "epoch": 7,
        "loss": 0.125,
        "best": float("inf"),
        "name": "run-1",
        "flag": True,
        "nothing": None,
        "pair": (1, 2.5),
        "history": [0.5, 0.25],
        "by_int": {1: "a", 2: [np.arange(3)]},
        "scalar": np.float32(1.5),
        "big": 2**100,
        "table": np.arange(6, dtype=np.int16).reshape(2, 3),
    }
    path = tmp_path / "a.npz"
    save_checkpoint(path, model, **extra)
    other = Linear(3, 2, dtype=np.float64, seed=1)
    got = load_checkpoint(path, other)
    for name, p in model.named_parameters():
        np.testing.assert_array_equal(dict(other.named_parameters())[name].data, p.data)
    assert got.keys() == extra.keys()
    for k in ("epoch", "loss", "best", "name", "flag", "nothing", "pair", "history", "big"):
        assert got[k] == extra[k] and type(got[k]) is type(extra[k])
    assert list(got["by_int"]) == [1, 2]
    np.testing.assert_array_equal(got["by_int"][2][0], np.arange(3))
    assert got["scalar"].dtype == np.float32 and got["scalar"] == 1.5
    assert got["table"].dtype == np.int16
    # a plain np.load sees the parameters by name
    with np.load(path, allow_pickle=False) as z:
        np.testing.assert_array_equal(z["model/weight"], model.weight.data)


def test_failed_write_leaves_the_old_file_intact(tmp_path, monkeypatch):
    model = Linear(3, 2, seed=0)
    path = tmp_path / "model.ckpt"
    save_checkpoint(path, model, epoch=1)
    old_bytes = path.read_bytes()

    def crash_midway(f, *args, **kwargs):
        f.write(b"PK\x03\x04 partial archive")
        raise OSError("No space left on device")

    model.weight.data += 1
    monkeypatch.setattr(np, "savez", crash_midway)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(path, model, epoch=2)
    monkeypatch.undo()

    def fail_fsync(fd):
        raise OSError("I/O error")

    monkeypatch.setattr(os, "fsync", fail_fsync)
    with pytest.raises(OSError, match="I/O error"):
        save_checkpoint(path, model, epoch=3)
    monkeypatch.undo()

    assert path.read_bytes() == old_bytes
    assert os.listdir(tmp_path) == ["model.ckpt"]  # no temporary files left behind
    assert load_checkpoint(path, Linear(3, 2))["epoch"] == 1
    save_checkpoint(path, model, epoch=4)  # and a good write replaces it
    assert load_checkpoint(path, Linear(3, 2))["epoch"] == 4


def test_unstorable_extra_writes_nothing(tmp_path):
    path = tmp_path / "x.ckpt"
    with pytest.raises(TypeError, match="extra/callback: cannot store a function"):
        save_checkpoint(path, Linear(2, 2), callback=lambda: None)
    with pytest.raises(TypeError, match="cannot be stored without pickle"):
        save_checkpoint(path, Linear(2, 2), objs=np.array([object()]))
    assert not path.exists() and os.listdir(tmp_path) == []
    with pytest.raises(TypeError, match="model must be a fastrnn Module"):
        save_checkpoint(path, {"w": np.ones(2)})


@pytest.mark.parametrize("keep", [0, 10, 0.5, -30])
def test_truncated_file(tmp_path, keep):
    model, opt, _ = _setup(0)
    path = tmp_path / "t.ckpt"
    save_checkpoint(path, model, opt)
    data = path.read_bytes()
    n = int(len(data) * keep) if isinstance(keep, float) else keep % len(data)
    path.write_bytes(data[:n])
    before = model.state_dict()
    with pytest.raises(ValueError, match=rf"{path.name}: not a fastrnn checkpoint"):
        load_checkpoint(path, model, opt)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


def test_corrupt_bytes_are_detected(tmp_path):
    model = Linear(20, 20, seed=0)
    path = tmp_path / "c.ckpt"
    save_checkpoint(path, model)
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0xFF  # inside the weight's data; the zip CRC catches it
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"c\.ckpt: (corrupt checkpoint|not a fastrnn)"):
        load_checkpoint(path, model)


def test_foreign_and_non_npz_files(tmp_path):
    model = Linear(3, 2)
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, weight=np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"foreign\.npz: not a fastrnn checkpoint: no '__fastrnn"):
        load_checkpoint(foreign, model)
    npy = tmp_path / "single.npy"
    np.save(npy, np.ones(3))
    with pytest.raises(ValueError, match="single .npy array"):
        load_checkpoint(npy, model)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ValueError, match=r"notes\.txt: not a fastrnn checkpoint"):
        load_checkpoint(text, model)
    marker = tmp_path / "marker.npz"
    np.savez(marker, __fastrnn_checkpoint__=np.array(json.dumps({"format": "other"})))
    with pytest.raises(ValueError, match="does not name the format"):
        load_checkpoint(marker, model)
    newer = tmp_path / "newer.npz"
    meta = {"format": ckpt.FORMAT, "version": ckpt.VERSION + 1}
    np.savez(newer, __fastrnn_checkpoint__=np.array(json.dumps(meta)))
    with pytest.raises(ValueError, match="newer than this fastrnn reads"):
        load_checkpoint(newer, model)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.ckpt", model)


def test_mismatched_model_or_optimizer(tmp_path):
    model, opt, _ = _setup(0)
    path = tmp_path / "m.ckpt"
    save_checkpoint(path, model, opt)

    wider = Sequential(Embedding(V, D + 1), Dropout(0.3), Linear(D + 1, C))
    with pytest.raises(ValueError, match=r"0\.weight: shape \(12, 6\) in the file, \(12, 7\)"):
        load_checkpoint(path, wider)
    shorter = Sequential(Embedding(V, D), Dropout(0.3))
    with pytest.raises(ValueError, match=r"parameters the model does not have: \['2\.weight'"):
        load_checkpoint(path, shorter)

    fresh = _model(5)
    before = fresh.state_dict()
    sgd = SGD(fresh.parameters(), momentum=0.9)
    with pytest.raises(ValueError, match="holds Adam state, not SGD"):
        load_checkpoint(path, fresh, sgd)
    adam_one_group = Adam([p for p in fresh.parameters()][:1])
    with pytest.raises(ValueError, match="optimizer state does not match"):
        load_checkpoint(path, fresh, adam_one_group)
    for k, v in fresh.state_dict().items():  # nothing was loaded
        np.testing.assert_array_equal(v, before[k])

    no_opt = tmp_path / "no_opt.ckpt"
    save_checkpoint(no_opt, model)
    with pytest.raises(ValueError, match="holds no optimizer state"):
        load_checkpoint(no_opt, _model(0), Adam(_model(0).parameters()))


def test_read_extra_without_a_model(tmp_path):
    import fastrnn
    from fastrnn.checkpoint import read_extra

    path = tmp_path / "c.npz"
    fastrnn.save_checkpoint(path, fastrnn.nn.Linear(2, 3, seed=0), sizes={"h": 4}, chars="ab")
    assert read_extra(path) == {"sizes": {"h": 4}, "chars": "ab"}
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a fastrnn checkpoint"):
        read_extra(tmp_path / "bad.npz")


# -------------------------------------------------------------------------------------------------
# damaged checkpoints: pickled, malformed and missing entries, path errors
# -------------------------------------------------------------------------------------------------
@pytest.fixture
def saved_checkpoint(tmp_path):
    model = Linear(3, 2, seed=0)
    path = tmp_path / "good.ckpt"
    save_checkpoint(path, model, epoch=1)
    with np.load(path, allow_pickle=False) as z:
        entries = {k: z[k] for k in z.files}
    return model, tmp_path, entries


def _tamper(entries, **changes):
    out = dict(entries)
    meta = json.loads(str(out["__fastrnn_checkpoint__"]))
    for k, v in changes.items():
        if k == "meta":
            v(meta)
        else:
            out[k] = v
    out["__fastrnn_checkpoint__"] = np.array(json.dumps(meta))
    return out


CHECKPOINT_BAD = [
    # (id, entries -> entries, message pattern); none may unpickle or load anything
    (
        "pickled_object_entry",
        lambda e: {**e, "model/weight": np.array([None] * 6, dtype=object).reshape(2, 3)},
        r"entry 'model/weight' cannot be read",
    ),
    (
        "marker_not_json",
        lambda e: {**e, "__fastrnn_checkpoint__": np.array("{not json")},
        r"not a fastrnn checkpoint",
    ),
    (
        "marker_not_a_string",
        lambda e: {**e, "__fastrnn_checkpoint__": np.arange(3)},
        r"is not a string",
    ),
    (
        "marker_without_model",
        lambda e: _tamper(e, meta=lambda m: m.pop("model")),
        r"malformed metadata",
    ),
    (
        "dangling_array_reference",
        lambda e: _tamper(e, meta=lambda m: m.update(extra={"__array__": "missing"})),
        r"malformed metadata",
    ),
    (
        "complex_parameter",
        lambda e: {**e, "model/weight": e["model/weight"].astype(np.complex128)},
        r"weight: dtype complex128 .* not a real number type",
    ),
    (
        "missing_parameter",
        lambda e: {k: v for k, v in e.items() if k != "model/bias"},
        r"malformed metadata|bias",
    ),
]


@pytest.mark.parametrize(
    "damage,pattern", [(f, p) for _, f, p in CHECKPOINT_BAD], ids=[i for i, _, _ in CHECKPOINT_BAD]
)
def test_damaged_checkpoint_is_refused_and_model_untouched(saved_checkpoint, damage, pattern):
    _, tmp_path, entries = saved_checkpoint
    path = tmp_path / "bad.ckpt"
    with open(path, "wb") as f:
        np.savez(f, allow_pickle=True, **damage(entries))
    model = Linear(3, 2, seed=1)
    before = {k: v.copy() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=pattern):
        load_checkpoint(path, model)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


def test_checkpoint_path_errors(saved_checkpoint):
    model, tmp_path, _ = saved_checkpoint
    with pytest.raises(IsADirectoryError):
        load_checkpoint(tmp_path, model)
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.ckpt: not a fastrnn checkpoint"):
        load_checkpoint(empty, model)
