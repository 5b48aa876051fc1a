"""Optimizers, learning-rate schedulers and gradient clipping (PyTorch's rules and names)."""

from fastrnn.optim import lr_scheduler
from fastrnn.optim.adagrad import Adagrad
from fastrnn.optim.adam import Adam, AdamW
from fastrnn.optim.clip import clip_grad_norm_, clip_grad_value_
from fastrnn.optim.optimizer import MissingGradientWarning, Optimizer
from fastrnn.optim.rmsprop import RMSprop
from fastrnn.optim.sgd import SGD

__all__ = [
    "SGD",
    "Adagrad",
    "Adam",
    "AdamW",
    "MissingGradientWarning",
    "Optimizer",
    "RMSprop",
    "clip_grad_norm_",
    "clip_grad_value_",
    "lr_scheduler",
]
