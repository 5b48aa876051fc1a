"""fastrnn.stack: finite differences through whole multi-layer bidirectional stacks, and its API.

The loss is ``<y, dy> + <h_n, dh_n> (+ <c_n, dc_n>)``, so its gradient is what
``stack_backward(cache, dy, dh_n, dc_n)`` returns; central differences in float64 check every
input, initial state and weight of a 2-layer bidirectional stack with variable lengths, on both
backends, including the LSTM projection, GRU ``reset_after=False``, layer normalization and (with
a re-seeded generator, so that every forward draws the same masks) dropout.
"""

import numpy as np
import pytest
from conftest import FD_TOL, assert_close, numeric_grad

from fastrnn.stack import StackConfig, default_init, stack_backward, stack_forward

T, B, I, H = 3, 3, 2, 2
LENGTHS = np.array([2, 3, 1])

CONFIGS = {
    "rnn_tanh": {"cell": "rnn"},
    "rnn_relu": {"cell": "rnn", "nonlinearity": "relu"},
    "lstm": {"cell": "lstm"},
    "lstm_proj": {"cell": "lstm", "proj_size": 1},
    "gru": {"cell": "gru"},
    "gru_reset_before": {"cell": "gru", "reset_after": False},
    "lstm_layer_norm": {"cell": "lstm", "layer_norm": True},
    "gru_layer_norm": {"cell": "gru", "layer_norm": True},
}


def _config(name, backend, **kw):
    return StackConfig(
        input_size=I,
        hidden_size=H,
        num_layers=2,
        bidirectional=True,
        backend=backend,
        **{**CONFIGS[name], **kw},
    )


def _problem(cfg, rng):
    """Inputs (x, h0, c0, weights) and upstream gradients (dy, dh_n, dc_n), float64."""
    shapes = cfg.state_shapes(B)
    h_shape, c_shape = shapes["h"], shapes.get("c")
    inputs = {"x": rng.standard_normal((T, B, I)), "h0": rng.standard_normal(h_shape)}
    up = {
        "dy": rng.standard_normal((T, B, cfg.num_directions * cfg.output_size)),
        "dh_n": rng.standard_normal(h_shape),
    }
    if c_shape is not None:
        inputs["c0"] = rng.standard_normal(c_shape)
        up["dc_n"] = rng.standard_normal(c_shape)
    inputs.update(default_init(cfg, np.float64, rng))
    return inputs, up


def _forward(cfg, inputs, seed=None, training=False):
    w = {k: v for k, v in inputs.items() if k not in ("x", "h0", "c0")}
    gen = None if seed is None else np.random.default_rng(seed)
    return stack_forward(
        cfg,
        inputs["x"],
        inputs["h0"],
        inputs.get("c0"),
        w,
        lengths=LENGTHS,
        training=training,
        generator=gen,
    )


def _loss(cfg, inputs, up, seed=None):
    y, h_n, c_n, _ = _forward(cfg, inputs, seed, training=seed is not None)
    loss = np.sum(y * up["dy"]) + np.sum(h_n * up["dh_n"])
    return loss + (np.sum(c_n * up["dc_n"]) if c_n is not None else 0.0)


def _check_fd(cfg, seed=None):
    inputs, up = _problem(cfg, np.random.default_rng(0))
    _, _, _, cache = _forward(cfg, inputs, seed, training=True)
    g = stack_backward(cache, up["dy"], up["dh_n"], up.get("dc_n"))
    got = {"x": g.dx, "h0": g.dh0, "c0": g.dc0, **g.weights}
    assert list(g.weights) == cfg.weight_names()
    for name, base in inputs.items():
        num = numeric_grad(lambda: _loss(cfg, inputs, up, seed), base)
        assert_close(got[name], num, name, **FD_TOL)


@pytest.mark.parametrize("name", CONFIGS)
def test_stack_gradients_match_finite_differences(name, backend):
    _check_fd(_config(name, backend))


@pytest.mark.parametrize("name", ["lstm_proj", "gru_reset_before"])
def test_stack_gradients_with_dropout_match_finite_differences(name, backend):
    """Backward applies the forward's masks: FD of forwards that all draw the same masks."""
    _check_fd(_config(name, backend, dropout=0.3), seed=123)


def test_stack_without_bias_and_with_three_layers(backend):
    cfg = StackConfig("lstm", I, H, num_layers=3, bias=False, proj_size=1, backend=backend)
    inputs, up = _problem(cfg, np.random.default_rng(1))
    y, h_n, c_n, _ = _forward(cfg, inputs)
    assert y.shape == (T, B, 1) and h_n.shape == (3, B, 1) and c_n.shape == (3, B, H)
    assert "bias_ih_l0" not in cfg.weight_names()


def test_weights_may_be_a_sequence_in_flat_order():
    cfg = _config("gru", "cython")
    inputs, _ = _problem(cfg, np.random.default_rng(2))
    by_name = _forward(cfg, inputs)
    w = [inputs[n] for n in cfg.weight_names()]
    by_order = stack_forward(
        cfg, inputs["x"], inputs["h0"], None, w, lengths=LENGTHS, training=False
    )
    for u, v in zip(by_name[:2], by_order[:2], strict=True):
        assert_close(u, v, "y", rtol=0, atol=0)


def test_weight_errors_list_every_problem():
    cfg = _config("lstm", "cython")
    inputs, _ = _problem(cfg, np.random.default_rng(3))
    w = {k: v for k, v in inputs.items() if k not in ("x", "h0", "c0")}
    del w["weight_hh_l1"]
    w["bias_ih_l0"] = np.zeros(3)
    w["weight_xx"] = np.zeros(3)
    with pytest.raises(ValueError) as err:
        stack_forward(cfg, inputs["x"], None, None, w)
    msg = str(err.value)
    assert "missing weights: ['weight_hh_l1']" in msg
    assert "unexpected weights: ['weight_xx']" in msg
    assert "bias_ih_l0: expected shape (8,), got (3,)" in msg
    with pytest.raises(ValueError, match="sequence of 16 arrays"):
        stack_forward(cfg, inputs["x"], None, None, [np.zeros(1)])


def test_stack_backward_refuses_a_missing_cache():
    with pytest.raises(TypeError, match="training stack_forward"):
        stack_backward(None, None)


def test_stack_dtype_follows_the_functional_rule():
    cfg = _config("rnn_tanh", "cython")
    inputs, _ = _problem(cfg, np.random.default_rng(4))
    f32 = {k: v.astype(np.float32) for k, v in inputs.items()}
    y, h_n, _, cache = _forward(cfg, f32, training=True)
    assert y.dtype == h_n.dtype == np.float32
    g = stack_backward(cache, None)
    assert g.dx.dtype == g.dh0.dtype == np.float32
    assert not g.dx.any() and not g.dh0.any()  # no upstream gradient at all
    # float32 vs float64 on the same O(1) problem: 6e-8 roundoff per operation over 2 layers of
    # 3 steps stays far below 1e-5
    y64, _, _, _ = _forward(cfg, inputs)
    assert_close(y, y64, "y", rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"cell": "elman"}, "cell must be"),
        ({"proj_size": 1, "cell": "gru"}, "proj_size is only supported for LSTM"),
        ({"nonlinearity": "gelu"}, "nonlinearity"),
        # combinations the layer-norm kernels do not run: refused naming both options
        ({"cell": "lstm", "layer_norm": True, "peephole": True}, "layer_norm=True .* peephole"),
        ({"cell": "lstm", "layer_norm": True, "zoneout": 0.1}, "layer_norm=True .* zoneout"),
        (
            {"cell": "lstm", "layer_norm": True, "return_cell_states": True},
            "layer_norm=True .* return_cell_states",
        ),
        (
            {"cell": "gru", "layer_norm": True, "recurrent_dropout": 0.2},
            "layer_norm=True .* recurrent_dropout",
        ),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        StackConfig(**{"cell": "rnn", "input_size": 2, "hidden_size": 3, **kwargs})


@pytest.mark.parametrize("p", [0.0, 0.05, 0.5, 0.9])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_zoneout_masks_keep_units_with_probability_p(p, dtype):
    """The training masks of zoneout: 0/1 in the layer's dtype, the shape asked (also when
    T*B*width is not a multiple of 4), a fraction of ones within 4 standard errors of p."""
    from fastrnn.stack import _bernoulli

    shape = (37, 11, 13)
    z = _bernoulli(np.random.default_rng(5), shape, p, np.dtype(dtype))
    assert z.shape == shape and z.dtype == dtype
    assert set(np.unique(z)) <= {0.0, 1.0}
    n = z.size
    assert abs(z.mean() - p) <= 4 * np.sqrt(p * (1 - p) / n) + 1e-12
    again = _bernoulli(np.random.default_rng(5), shape, p, np.dtype(dtype))
    np.testing.assert_array_equal(z, again)
