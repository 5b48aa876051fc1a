"""fastrnn: fast CPU recurrent networks with Cython kernels for the forward pass and full BPTT."""

__version__ = "0.1.0"
