"""Building blocks: parameters, modules, and (as they arrive) layers and losses."""

from fastrnn.nn.module import Module, Parameter

__all__ = ["Module", "Parameter"]
