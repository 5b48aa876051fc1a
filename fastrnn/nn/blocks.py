"""Feed-forward building blocks: Linear, Embedding, Dropout and Sequential.

Each block is a :class:`~fastrnn.nn.Module` with ``forward(x)`` and ``backward(dout)``. A forward
in training mode keeps what its backward needs; the backward consumes it (one backward per
forward, as in an autograd graph) and accumulates parameter gradients into ``Parameter.grad``.
Forwards in eval mode keep nothing.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator
from typing import Any

import numpy as np
import scipy.sparse

from fastrnn._random import module_generator
from fastrnn.nn._checks import (
    as_float_array,
    as_index_array,
    as_real_array,
    check_float_dtype,
    check_positive_int,
)
from fastrnn.nn.module import Module, Parameter

__all__ = ["Dropout", "Embedding", "Linear", "Sequential"]


def _accumulate(p: Parameter, g: np.ndarray) -> None:
    """``p.grad += g`` for a freshly computed ``g`` (adopted without a copy on first use)."""
    if not p.requires_grad:
        return
    if p.grad is None:
        p.grad = np.ascontiguousarray(g, dtype=p.data.dtype)
    else:
        p.grad += g
    p._grad_accumulated()


def _no_cache_error(module: Module) -> RuntimeError:
    return RuntimeError(
        f"{type(module).__name__}.backward() called without a training-mode forward() before it "
        "(call forward() in training mode first; each forward supports one backward)"
    )


class Linear(Module):
    r"""Affine map over the last axis, :math:`y = x W^T + b`.

    Parameters
    ----------
    in_features : int
        Size of the last axis of the input.
    out_features : int
        Size of the last axis of the output.
    bias : bool, default=True
        Whether to learn an additive bias.
    dtype : {np.float32, np.float64}, default=np.float32
        Dtype of the parameters and of the outputs; inputs are converted to it.
    seed : int, numpy.random.Generator or None, default=None
        Seed for the initialisation. None: the next child of :func:`fastrnn.manual_seed`'s
        sequence if it was called, else OS entropy.

    Attributes
    ----------
    weight : Parameter of shape (out_features, in_features)
        Initialised from :math:`\mathcal{U}(-k, k)`, :math:`k = 1/\sqrt{\text{in\_features}}`,
        as PyTorch does.
    bias : Parameter of shape (out_features,) or None
        Initialised from the same distribution.
    """

    _marks_parameter_use = True

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        dtype: Any = np.float32,
        seed: int | np.random.Generator | None = None,
    ) -> None:
        super().__init__()
        self.in_features = check_positive_int(in_features, "in_features")
        self.out_features = check_positive_int(out_features, "out_features")
        dt = check_float_dtype(dtype)
        rng = module_generator(seed)
        k = 1.0 / math.sqrt(self.in_features)
        w = rng.uniform(-k, k, (self.out_features, self.in_features))
        self.weight = Parameter(w.astype(dt))
        self.bias = Parameter(rng.uniform(-k, k, self.out_features).astype(dt)) if bias else None
        self._cache: tuple[np.ndarray, tuple[int, ...]] | None = None

    def forward(self, x: Any) -> np.ndarray:
        """Apply the layer.

        Parameters
        ----------
        x : array-like of shape (..., in_features)
            Real numeric input; converted to the layer's dtype.

        Returns
        -------
        y : ndarray of shape (..., out_features), dtype of the layer
        """
        dt = self.weight.data.dtype
        x = as_real_array(x, "x", dt)
        if x.ndim == 0 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"x must have shape (..., in_features={self.in_features}), got {x.shape}"
            )
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        y = x2 @ self.weight.data.T
        if self.bias is not None:
            y += self.bias.data
        self._cache = (x2, lead) if self.training else None
        return y.reshape(*lead, self.out_features)

    def backward(self, dout: Any) -> np.ndarray:
        """Accumulate ``weight.grad`` (and ``bias.grad``) and return the input gradient.

        Parameters
        ----------
        dout : array-like of shape (..., out_features)
            Gradient of the loss with respect to the last forward's output.

        Returns
        -------
        dx : ndarray of shape (..., in_features), dtype of the layer
        """
        if self._cache is None:
            raise _no_cache_error(self)
        x2, lead = self._cache
        dout = as_real_array(dout, "dout", self.weight.data.dtype)
        if dout.shape != (*lead, self.out_features):
            raise ValueError(
                f"dout must have the forward output's shape {(*lead, self.out_features)}, "
                f"got {dout.shape}"
            )
        self._cache = None
        d2 = dout.reshape(-1, self.out_features)
        # y = x W^T + b  =>  dW = dy^T x,  db = sum_rows dy,  dx = dy W
        _accumulate(self.weight, d2.T @ x2)
        if self.bias is not None:
            _accumulate(self.bias, d2.sum(axis=0))
        return (d2 @ self.weight.data).reshape(*lead, self.in_features)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, dtype={self.weight.data.dtype}"
        )


class Embedding(Module):
    r"""Lookup table mapping integer indices to learned vectors.

    Parameters
    ----------
    num_embeddings : int
        Size of the vocabulary.
    embedding_dim : int
        Size of each vector.
    padding_idx : int or None, default=None
        Row whose vector is initialised to zeros and never receives a gradient. Negative values
        count from the end, as in PyTorch.
    dtype : {np.float32, np.float64}, default=np.float32
    seed : int, numpy.random.Generator or None, default=None
        Seed for the initialisation. None: as for :class:`Linear`.

    Attributes
    ----------
    weight : Parameter of shape (num_embeddings, embedding_dim)
        Initialised from :math:`\mathcal{N}(0, 1)`, as PyTorch does.
    """

    _marks_parameter_use = True

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        padding_idx: int | None = None,
        dtype: Any = np.float32,
        seed: int | np.random.Generator | None = None,
    ) -> None:
        super().__init__()
        self.num_embeddings = check_positive_int(num_embeddings, "num_embeddings")
        self.embedding_dim = check_positive_int(embedding_dim, "embedding_dim")
        if padding_idx is not None:
            if isinstance(padding_idx, bool) or not isinstance(padding_idx, numbers.Integral):
                raise TypeError(f"padding_idx must be an int or None, got {padding_idx!r}")
            if not -self.num_embeddings <= padding_idx < self.num_embeddings:
                raise ValueError(
                    f"padding_idx must be within [-num_embeddings, num_embeddings) = "
                    f"[{-self.num_embeddings}, {self.num_embeddings}), got {padding_idx}"
                )
            padding_idx = int(padding_idx) % self.num_embeddings
        self.padding_idx = padding_idx
        dt = check_float_dtype(dtype)
        rng = module_generator(seed)
        w = rng.standard_normal((self.num_embeddings, self.embedding_dim)).astype(dt)
        if padding_idx is not None:
            w[padding_idx] = 0
        self.weight = Parameter(w)
        self._cache: np.ndarray | None = None

    def forward(self, indices: Any) -> np.ndarray:
        """Look up the vectors of ``indices``.

        Parameters
        ----------
        indices : array-like of int, any shape
            Values in ``[0, num_embeddings)``.

        Returns
        -------
        out : ndarray of shape indices.shape + (embedding_dim,), dtype of the layer
        """
        idx = as_index_array(indices, "indices")
        if idx.size and (idx.min() < 0 or idx.max() >= self.num_embeddings):
            raise ValueError(
                f"indices must be in [0, num_embeddings={self.num_embeddings}), got values in "
                f"[{idx.min()}, {idx.max()}]"
            )
        self._cache = idx if self.training else None
        return np.take(self.weight.data, idx, axis=0)

    def backward(self, dout: Any) -> None:
        """Accumulate the gradient into ``weight.grad``; indices have no gradient.

        Rows hit several times get the sum of their gradients; the ``padding_idx`` row gets none.

        Parameters
        ----------
        dout : array-like of shape indices.shape + (embedding_dim,)

        Returns
        -------
        None
        """
        idx = self._cache
        if idx is None:
            raise _no_cache_error(self)
        dt = self.weight.data.dtype
        dout = as_real_array(dout, "dout", dt)
        expected = (*idx.shape, self.embedding_dim)
        if dout.shape != expected:
            raise ValueError(f"dout must have shape {expected}, got {dout.shape}")
        self._cache = None
        if not self.weight.requires_grad:
            return None
        flat = idx.reshape(-1)
        d2 = dout.reshape(-1, self.embedding_dim)
        if self.padding_idx is not None:
            keep = flat != self.padding_idx
            flat, d2 = flat[keep], d2[keep]
        if self.weight.grad is None:
            self.weight.grad = np.zeros_like(self.weight.data)
        self.weight._grad_written = True  # written in place below
        if flat.size == 0:
            self.weight._grad_accumulated()
            return None
        # Scatter-add of the rows of dout: the sum over repeated indices is a sparse (U, N)
        # one-hot matrix times dout, several times faster than np.add.at for typical batches.
        rows, inverse = np.unique(flat, return_inverse=True)
        onehot = scipy.sparse.csr_array(
            (np.ones(flat.size, dtype=dt), (inverse.reshape(-1), np.arange(flat.size))),
            shape=(rows.size, flat.size),
        )
        self.weight.grad[rows] += onehot @ d2
        self.weight._grad_accumulated()
        return None

    def extra_repr(self) -> str:
        pad = "" if self.padding_idx is None else f", padding_idx={self.padding_idx}"
        return f"{self.num_embeddings}, {self.embedding_dim}{pad}"


class Dropout(Module):
    r"""Inverted dropout: zero each element with probability ``p`` and scale the rest.

    In training mode :math:`y = x \odot m / (1 - p)` with :math:`m_i \sim \text{Bernoulli}(1-p)`,
    so that :math:`\mathbb{E}[y] = x`; in eval mode :math:`y = x`. With ``p = 1`` the output is
    zero.

    Parameters
    ----------
    p : float, default=0.5
        Probability of zeroing an element, in ``[0, 1]``.
    seed : int, numpy.random.Generator or None, default=None
        Seed of the generator that draws the masks. None: as for :class:`Linear`.

    Attributes
    ----------
    generator : numpy.random.Generator
        Draws the masks; save ``generator.bit_generator.state`` to resume a run exactly.
    """

    def __init__(self, p: float = 0.5, seed: int | np.random.Generator | None = None) -> None:
        super().__init__()
        if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be a probability in [0, 1], got {p!r}")
        self.p = float(p)
        self.generator = module_generator(seed)
        self._cache: tuple[np.ndarray | None, float] | None = None

    def forward(self, x: Any) -> np.ndarray:
        """Apply dropout.

        Parameters
        ----------
        x : array-like of any shape, dtype=float32 or float64

        Returns
        -------
        y : ndarray, same shape and dtype as ``x`` (``x`` itself in eval mode or with ``p=0``)
        """
        x = as_float_array(x, "x")
        if not self.training:
            self._cache = None
            return x
        if self.p == 0.0:
            self._cache = (None, 1.0)
            return x
        keep = self.generator.random(x.shape, dtype=x.dtype) >= self.p
        scale = 0.0 if self.p == 1.0 else 1.0 / (1.0 - self.p)
        self._cache = (keep, scale)
        y = np.multiply(x, scale, dtype=x.dtype)
        y *= keep
        return y

    def backward(self, dout: Any) -> np.ndarray:
        """Return ``dout`` masked and scaled as the last forward's input was.

        Parameters
        ----------
        dout : array-like, same shape as the forward input, dtype=float32 or float64

        Returns
        -------
        dx : ndarray, same shape and dtype as ``dout``
        """
        if self._cache is None:
            raise _no_cache_error(self)
        keep, scale = self._cache
        dout = as_float_array(dout, "dout")
        if keep is not None and dout.shape != keep.shape:
            raise ValueError(f"dout must have shape {keep.shape}, got {dout.shape}")
        self._cache = None
        if keep is None:
            return dout
        dx = np.multiply(dout, scale, dtype=dout.dtype)
        dx *= keep
        return dx

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Sequential(Module):
    """Modules applied in order; ``backward`` runs them in reverse.

    Parameters
    ----------
    *modules : Module
        Registered under the names ``"0"``, ``"1"``, ... (so parameter names are ``"0.weight"``
        and so on, as in PyTorch).
    """

    def __init__(self, *modules: Module) -> None:
        super().__init__()
        for m in modules:
            self.append(m)

    def append(self, module: Module) -> Sequential:
        """Add ``module`` at the end and return ``self``."""
        if not isinstance(module, Module):
            raise TypeError(f"Sequential takes Module instances, got {type(module).__name__}")
        setattr(self, str(len(self._modules)), module)
        return self

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())

    def __getitem__(self, index: int) -> Module:
        mods = list(self._modules.values())
        return mods[index]

    def forward(self, x: Any) -> Any:
        """Feed ``x`` through every module in order and return the last output."""
        for m in self._modules.values():
            x = m(x)
        return x

    def backward(self, dout: Any) -> Any:
        """Run every module's backward in reverse order and return the first module's result.

        Only the first module may return ``None`` (an :class:`Embedding`, whose integer input has
        no gradient).
        """
        mods = list(self._modules.values())
        for i in range(len(mods) - 1, -1, -1):
            dout = mods[i].backward(dout)
            if dout is None and i > 0:
                raise RuntimeError(
                    f"Sequential.backward: module {i} ({type(mods[i]).__name__}) returned no "
                    "input gradient, so the modules before it cannot be reached"
                )
        return dout
