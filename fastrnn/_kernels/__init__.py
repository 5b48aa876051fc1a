"""Compiled Cython kernels (built from ``src_pyx/``): one extension module per cell (and its
AVX2 / AVX-512 builds), ``attention`` (the dot and general scores of :class:`fastrnn.nn.Attention`),
``quant`` (the int8 layers of :func:`fastrnn.quantize_dynamic`), ``_rows`` (the batch-row
permutations of variable-length batches) and ``_peak`` (the multiply-add roof the benchmarks
measure kernels against)."""
