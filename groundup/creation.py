"""Tensor creation with torch's names: zeros, ones, full, arange, randn, rand, randint, *_like,
one_hot, cat, stack, where.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from groundup import backend, random
from groundup.backend import as_dtype, to_device
from groundup.function import wrap_dim
from groundup.ops import movement
from groundup.tensor import Tensor


def _shape(size: tuple) -> tuple[int, ...]:
    if len(size) == 1 and isinstance(size[0], (tuple, list)):
        return tuple(int(s) for s in size[0])
    return tuple(int(s) for s in size)


def _make(array: np.ndarray, device: Any, requires_grad: bool) -> Tensor:
    return Tensor(to_device(array, device or "cpu"), requires_grad=requires_grad)


def zeros(*size: Any, dtype: Any = None, device: Any = None, requires_grad: bool = False) -> Tensor:
    """A tensor of zeros. ``zeros(2, 3)`` or ``zeros((2, 3))``."""
    return _make(np.zeros(_shape(size), as_dtype(dtype or backend.DEFAULT_FLOAT)), device, requires_grad)


def ones(*size: Any, dtype: Any = None, device: Any = None, requires_grad: bool = False) -> Tensor:
    """A tensor of ones."""
    return _make(np.ones(_shape(size), as_dtype(dtype or backend.DEFAULT_FLOAT)), device, requires_grad)


def full(size: Sequence[int], fill_value: Any, dtype: Any = None, device: Any = None,
         requires_grad: bool = False) -> Tensor:
    """A tensor filled with ``fill_value`` (dtype inferred from it, as torch does)."""
    if dtype is None:
        dtype = backend.bool_ if isinstance(fill_value, bool) else (
            backend.int64 if isinstance(fill_value, int) else backend.DEFAULT_FLOAT)
    return _make(np.full(tuple(size), fill_value, as_dtype(dtype)), device, requires_grad)


def arange(start: float, end: float | None = None, step: float = 1, dtype: Any = None,
           device: Any = None) -> Tensor:
    """Values from ``start`` to ``end`` (exclusive); int64 for integer arguments, else float32."""
    if end is None:
        start, end = 0, start
    if dtype is None:
        integral = all(isinstance(v, int) for v in (start, end, step))
        dtype = backend.int64 if integral else backend.DEFAULT_FLOAT
    return _make(np.arange(start, end, step).astype(as_dtype(dtype)), device, False)


def randn(*size: Any, dtype: Any = None, device: Any = None, requires_grad: bool = False) -> Tensor:
    """Standard normal samples from the global generator (``gu.manual_seed``)."""
    values = random.normal_array(_shape(size), 0.0, 1.0, as_dtype(dtype or backend.DEFAULT_FLOAT), "cpu")
    return _make(values, device, requires_grad)


def rand(*size: Any, dtype: Any = None, device: Any = None, requires_grad: bool = False) -> Tensor:
    """Uniform samples in [0, 1)."""
    values = random.uniform_array(_shape(size), 0.0, 1.0, as_dtype(dtype or backend.DEFAULT_FLOAT), "cpu")
    return _make(values, device, requires_grad)


def randint(low: int, high: Any = None, size: Sequence[int] = (), dtype: Any = None,
            device: Any = None) -> Tensor:
    """Integers in [low, high): ``randint(low, high, size)``, or torch's ``randint(high, size)``."""
    if isinstance(high, tuple | list):                     # randint(high, size)
        low, high, size = 0, low, high
    elif high is None:
        low, high = 0, low
    if high <= low:
        raise ValueError(f"randint: high ({high}) must be greater than low ({low})")
    values = random.generator().integers(low, high, size=tuple(size))
    return _make(np.asarray(values, dtype=as_dtype(dtype or backend.int64)), device, False)


def randperm(n: int, device: Any = None) -> Tensor:
    """A random permutation of 0..n-1."""
    return _make(random.generator().permutation(n).astype(np.int64), device, False)


def _like(fn: Any):
    def like(x: Tensor, dtype: Any = None, device: Any = None, requires_grad: bool = False) -> Tensor:
        return fn(x.shape, dtype=dtype or x.dtype, device=device or x.device, requires_grad=requires_grad)

    like.__name__ = fn.__name__ + "_like"
    like.__doc__ = f"``{fn.__name__}`` with the shape (and by default dtype and device) of ``x``."
    return like


zeros_like = _like(zeros)
ones_like = _like(ones)
randn_like = _like(randn)
rand_like = _like(rand)


def full_like(x: Tensor, fill_value: Any, dtype: Any = None, device: Any = None) -> Tensor:
    return full(x.shape, fill_value, dtype=dtype or x.dtype, device=device or x.device)


def empty(*size: Any, dtype: Any = None, device: Any = None) -> Tensor:
    return zeros(*size, dtype=dtype, device=device)


def eye(n: int, m: int | None = None, dtype: Any = None, device: Any = None) -> Tensor:
    return _make(np.eye(n, m, dtype=as_dtype(dtype or backend.DEFAULT_FLOAT)), device, False)


def cat(tensors: Sequence[Tensor], dim: int = 0) -> Tensor:
    """Concatenate along an existing dimension."""
    tensors = list(tensors)
    if not tensors:
        raise RuntimeError("cat: expected a non-empty list of tensors")
    dtypes = {t.dtype for t in tensors}
    if len(dtypes) > 1:
        target = np.result_type(*dtypes)
        tensors = [t.type(target) for t in tensors]
    return movement.Cat.apply(*tensors, dim=dim)


def stack(tensors: Sequence[Tensor], dim: int = 0) -> Tensor:
    """Stack along a new dimension."""
    tensors = list(tensors)
    if not tensors:
        raise RuntimeError("stack: expected a non-empty list of tensors")
    shapes = {t.shape for t in tensors}
    if len(shapes) > 1:
        raise RuntimeError(f"stack: every tensor must have the same shape, got {sorted(shapes)}")
    dim = wrap_dim(dim, tensors[0].ndim, "stack", new_axis=True)
    return cat([t.unsqueeze(dim) for t in tensors], dim=dim)


def one_hot(x: Tensor, num_classes: int = -1) -> Tensor:
    """int64 one-hot encoding (torch.nn.functional.one_hot)."""
    xp = backend.array_module(x.data)
    if x.dtype.kind not in "iu":
        raise TypeError(f"one_hot: expected an integer tensor, got dtype {x.dtype}")
    n = int(x.data.max()) + 1 if num_classes < 0 else num_classes
    if x.data.size and (int(x.data.min()) < 0 or int(x.data.max()) >= n):
        raise RuntimeError(f"one_hot: class values must be in [0, {n})")
    return Tensor._make((x.data[..., None] == xp.arange(n)).astype(backend.int64), False, None)
