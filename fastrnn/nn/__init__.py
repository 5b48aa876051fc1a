"""Building blocks: parameters, modules, feed-forward and recurrent layers, and losses."""

from fastrnn.nn.attention import Attention, AttentionMemory
from fastrnn.nn.blocks import Dropout, Embedding, Linear, Sequential
from fastrnn.nn.losses import CrossEntropyLoss, MSELoss, cross_entropy, mse_loss
from fastrnn.nn.module import Module, Parameter
from fastrnn.nn.rnn import GRU, LSTM, RNN

__all__ = [
    "Attention",
    "AttentionMemory",
    "CrossEntropyLoss",
    "Dropout",
    "Embedding",
    "GRU",
    "LSTM",
    "Linear",
    "MSELoss",
    "Module",
    "Parameter",
    "RNN",
    "Sequential",
    "cross_entropy",
    "mse_loss",
]
