"""Compiled Cython kernels (built from ``src_pyx/``): one extension module per cell."""
