"""fastrnn/optim/lr_scheduler.py: learning-rate schedulers against torch.optim.lr_scheduler."""

import math

import numpy as np
import pytest

from fastrnn.nn import Parameter
from fastrnn.optim import SGD, lr_scheduler

LRS = [0.1, 0.05]


def _pair(name, kwargs):
    """Our and torch's SGD (two groups) with the same scheduler."""
    torch = pytest.importorskip("torch")
    opt = SGD([{"params": [Parameter(np.zeros(2))], "lr": lr} for lr in LRS])
    topt = torch.optim.SGD(
        [{"params": [torch.zeros(2, requires_grad=True)], "lr": lr} for lr in LRS]
    )
    return (
        opt,
        getattr(lr_scheduler, name)(opt, **kwargs),
        topt,
        getattr(torch.optim.lr_scheduler, name)(topt, **kwargs),
    )


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("StepLR", {"step_size": 3}),
        ("StepLR", {"step_size": 1, "gamma": 0.7}),
        ("ExponentialLR", {"gamma": 0.9}),
        ("CosineAnnealingLR", {"T_max": 10}),
        ("CosineAnnealingLR", {"T_max": 7, "eta_min": 0.01}),
    ],
)
def test_epoch_schedulers_match_torch(name, kwargs):
    opt, sched, topt, tsched = _pair(name, kwargs)
    assert sched.get_last_lr() == pytest.approx(tsched.get_last_lr(), rel=1e-12)
    for _ in range(35):  # several cosine periods, through the trough branch
        opt.step()
        topt.step()
        sched.step()
        tsched.step()
        np.testing.assert_allclose(sched.get_last_lr(), tsched.get_last_lr(), rtol=1e-12)
        assert [g["lr"] for g in opt.param_groups] == sched.get_last_lr()


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"mode": "max", "patience": 2},
        {"patience": 1, "cooldown": 2, "factor": 0.5},
        {"threshold_mode": "abs", "threshold": 0.05, "patience": 0},
        {"mode": "max", "threshold_mode": "abs", "patience": 1, "min_lr": [0.02, 0.001]},
        {"patience": 0, "min_lr": 0.04, "factor": 0.5},
    ],
)
def test_reduce_on_plateau_matches_torch(kwargs):
    opt, sched, topt, tsched = _pair("ReduceLROnPlateau", kwargs)
    rng = np.random.default_rng(0)
    metric = 1.0
    for epoch in range(60):
        metric += rng.choice([-0.1, -0.01, 0.0, 0.02]) if epoch % 10 < 5 else 0.0
        sched.step(metric)
        tsched.step(metric)
        np.testing.assert_allclose(sched.get_last_lr(), tsched.get_last_lr(), rtol=1e-12)
    assert sched.get_last_lr() != LRS or kwargs == {}


def test_state_dict_resume():
    def make():
        opt = SGD([Parameter(np.zeros(1))], lr=1.0)
        return opt, lr_scheduler.CosineAnnealingLR(opt, T_max=5)

    opt, sched = make()
    lrs = []
    for _ in range(12):
        sched.step()
        lrs.append(sched.get_last_lr()[0])
    opt2, sched2 = make()
    for _ in range(4):
        sched2.step()
    o_state, s_state = opt2.state_dict(), sched2.state_dict()
    opt3, sched3 = make()
    opt3.load_state_dict(o_state)
    sched3.load_state_dict(s_state)
    for i in range(4, 12):
        sched3.step()
        assert sched3.get_last_lr()[0] == lrs[i]
    with pytest.raises(ValueError, match="missing"):
        sched3.load_state_dict({"last_epoch": 3})

    opt, plateau = SGD([Parameter(np.zeros(1))], lr=1.0), None
    plateau = lr_scheduler.ReduceLROnPlateau(opt, patience=0)
    plateau.step(1.0)
    state = plateau.state_dict()
    assert state["best"] == 1.0 and "optimizer" not in state


def test_scheduler_argument_errors():
    opt = SGD([Parameter(np.zeros(1))], lr=1.0)
    with pytest.raises(TypeError, match="optimizer must be a fastrnn Optimizer"):
        lr_scheduler.StepLR(object(), 2)
    with pytest.raises(ValueError, match="step_size must be >= 1"):
        lr_scheduler.StepLR(opt, 0)
    with pytest.raises(ValueError, match="T_max must be >= 1"):
        lr_scheduler.CosineAnnealingLR(opt, 0)
    with pytest.raises(ValueError, match="gamma must be >= 0"):
        lr_scheduler.ExponentialLR(opt, -0.5)
    with pytest.raises(ValueError, match="factor must be < 1.0"):
        lr_scheduler.ReduceLROnPlateau(opt, factor=1.0)
    with pytest.raises(ValueError, match="mode must be 'min' or 'max'"):
        lr_scheduler.ReduceLROnPlateau(opt, mode="up")
    with pytest.raises(ValueError, match="min_lr must have 1 entries"):
        lr_scheduler.ReduceLROnPlateau(opt, min_lr=[0.1, 0.2])
    fresh = SGD([Parameter(np.zeros(1))], lr=1.0)
    with pytest.raises(ValueError, match="has no 'initial_lr'"):
        lr_scheduler.StepLR(fresh, 2, last_epoch=3)
    assert math.isclose(lr_scheduler.StepLR(opt, 2, last_epoch=-1).get_last_lr()[0], 1.0)
