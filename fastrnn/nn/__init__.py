"""Building blocks: parameters, modules, feed-forward layers and losses."""

from fastrnn.nn.blocks import Dropout, Embedding, Linear, Sequential
from fastrnn.nn.losses import CrossEntropyLoss, MSELoss, cross_entropy, mse_loss
from fastrnn.nn.module import Module, Parameter

__all__ = [
    "CrossEntropyLoss",
    "Dropout",
    "Embedding",
    "Linear",
    "MSELoss",
    "Module",
    "Parameter",
    "Sequential",
    "cross_entropy",
    "mse_loss",
]
