"""Building blocks: parameters, modules, feed-forward layers (losses to come)."""

from fastrnn.nn.blocks import Dropout, Embedding, Linear, Sequential
from fastrnn.nn.module import Module, Parameter

__all__ = [
    "Dropout",
    "Embedding",
    "Linear",
    "Module",
    "Parameter",
    "Sequential",
]
