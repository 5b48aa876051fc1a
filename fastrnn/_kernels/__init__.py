"""Compiled Cython kernels (built from ``src_pyx/``): one extension module per cell, and
``attention`` (the dot and general scores of :class:`fastrnn.nn.Attention`)."""
