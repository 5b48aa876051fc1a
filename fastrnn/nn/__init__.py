"""Building blocks: parameters, modules, feed-forward and recurrent layers, attention,
encoder-decoder models, and losses."""

from fastrnn.nn.attention import Attention, AttentionMemory
from fastrnn.nn.blocks import Dropout, Embedding, Linear, Sequential
from fastrnn.nn.losses import CrossEntropyLoss, MSELoss, cross_entropy, mse_loss
from fastrnn.nn.module import Module, Parameter
from fastrnn.nn.rnn import GRU, LSTM, RNN
from fastrnn.nn.seq2seq import AttentionDecoder, Encoder, Seq2Seq

__all__ = [
    "Attention",
    "AttentionDecoder",
    "AttentionMemory",
    "CrossEntropyLoss",
    "Dropout",
    "Embedding",
    "Encoder",
    "GRU",
    "LSTM",
    "Linear",
    "MSELoss",
    "Module",
    "Parameter",
    "RNN",
    "Seq2Seq",
    "Sequential",
    "cross_entropy",
    "mse_loss",
]
