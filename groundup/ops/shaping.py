"""Tensor's shape, indexing and dtype ops: the op functions behind ``x.reshape``, ``x[i]``, ``x.to``.

Like the rest of ``methods.py`` (which imports these and gives ``Tensor`` its methods), each op function
parses torch's argument forms (``reshape(2, 3)`` or ``reshape((2, 3))``, negative dims, torch's reading
of list and uint8 indices) and calls one Function of ``movement`` or ``elementwise``.

``TensorBase`` is the root of Tensor's classes, so that ``is_tensor`` needs neither ``tensor.py`` nor
``methods.py`` (both import this file).
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import numpy as np

from groundup import backend
from groundup.backend import as_dtype, normalize_device
from groundup.function import wrap_dim
from groundup.ops import elementwise as E
from groundup.ops import movement as M

if TYPE_CHECKING:
    from groundup.tensor import Tensor


class TensorBase:
    """The root of ``Tensor``'s classes (``TensorMethods`` inherits it): what ``is_tensor`` checks."""

    __slots__ = ()


def is_tensor(value: Any) -> bool:
    """True for a ``Tensor`` (the only class that inherits ``TensorBase``)."""
    return isinstance(value, TensorBase)


def constant(array: Any, like: Tensor) -> Tensor:
    """A tensor outside the graph holding ``array`` (no checks: the fast internal constructor)."""
    return type(like)._make(array, False, None)


def _as_tuple(index: list) -> bool:
    """torch's rule for a list index: it is a tuple of indices (``x[[[0, 1], [2, 3]]]`` is ``x[[0, 1], [2, 3]]``)
    when it is short and holds a sequence, a slice, None, Ellipsis or a tensor; else one index array."""
    return len(index) < 32 and any(isinstance(i, (list, tuple, slice, np.ndarray)) or i is None or i is Ellipsis
                                   or is_tensor(i) for i in index)


def _raw_item(item: Any) -> Any:
    """One entry of an index as NumPy reads it with torch's meaning: a tensor becomes its array, a uint8
    array a boolean mask (torch reads it so), an empty list an empty integer array; a slice's step must be
    positive, as in torch (NumPy would reverse)."""
    if is_tensor(item):
        item = item.data
    elif isinstance(item, list):
        item = np.asarray(item, dtype=np.int64) if not item else np.asarray(item)
    elif isinstance(item, slice):
        if item.step is not None and item.step < 0:
            raise ValueError(f"index {item}: step must be greater than zero (torch has no negative steps)")
        return item
    if getattr(item, "dtype", None) == np.uint8 and getattr(item, "ndim", 0) > 0:
        item = item.astype(bool)
    return item


def raw_index(index: Any) -> Any:
    """Replace Tensors inside an index by their arrays, with torch's reading of lists and uint8 masks."""
    if isinstance(index, list) and _as_tuple(index):
        warnings.warn("indexing with a list that holds lists, slices or None reads it as a tuple of indices, "
                      "as torch does (and deprecates: torch will read it as one index tensor); write "
                      "x[tuple(seq)] to keep this meaning", UserWarning, stacklevel=3)
        index = tuple(index)
    if isinstance(index, tuple):
        return tuple(_raw_item(i) for i in index)
    return _raw_item(index)


# ------------------------------------------------------------------ shapes and indexing
def _shape_args(shape: tuple) -> tuple[int, ...]:
    """torch accepts ``f(2, 3)`` and ``f((2, 3))``."""
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        return tuple(shape[0])
    return tuple(int(s) for s in shape)


def reshape(x: Tensor, *shape: Any) -> Tensor:
    shape = _shape_args(shape)
    if shape == x.shape:
        return x
    return M.Reshape.apply(x, shape=shape)


def view(x: Tensor, *shape: Any) -> Tensor:
    if len(shape) == 1 and not isinstance(shape[0], (int, tuple, list)):
        # x.view(dtype): the same bytes read as another dtype (torch's rule), outside the graph
        dtype = as_dtype(shape[0])
        if dtype.itemsize != x.dtype.itemsize and (x.ndim == 0 or not x.data.flags.c_contiguous):
            raise RuntimeError(f"view: cannot view a {x.dtype} tensor of shape {x.shape} as {dtype} (a different "
                               f"element size needs a contiguous tensor with at least one dim)")
        try:
            return constant(x.data.view(dtype), x)
        except ValueError as err:
            raise RuntimeError(f"view: cannot view shape {x.shape} of {x.dtype} as {dtype}: {err}") from None
    return reshape(x, *shape)


def flatten(x: Tensor, start_dim: int = 0, end_dim: int = -1) -> Tensor:
    if x.ndim == 0:
        return reshape(x, 1)
    start, end = wrap_dim(start_dim, x.ndim, "flatten"), wrap_dim(end_dim, x.ndim, "flatten")
    if start > end:
        raise RuntimeError(f"flatten: start_dim {start_dim} comes after end_dim {end_dim}")
    size = 1
    for n in x.shape[start:end + 1]:
        size *= n
    return reshape(x, x.shape[:start] + (size,) + x.shape[end + 1:])  # (..., prod(start..end), ...)


def permute(x: Tensor, *dims: Any) -> Tensor:
    return M.Permute.apply(x, dims=_shape_args(dims))


def transpose(x: Tensor, dim0: int, dim1: int) -> Tensor:
    dims = list(range(x.ndim))
    dim0, dim1 = wrap_dim(dim0, x.ndim, "transpose"), wrap_dim(dim1, x.ndim, "transpose")
    if x.ndim == 0:
        return x
    dims[dim0], dims[dim1] = dims[dim1], dims[dim0]
    return M.Permute.apply(x, dims=tuple(dims))


def squeeze(x: Tensor, dim: Any = None) -> Tensor:
    if dim is None:
        return reshape(x, tuple(n for n in x.shape if n != 1))
    dims = {wrap_dim(d, x.ndim, "squeeze") for d in ((dim,) if isinstance(dim, int) else dim)}
    return reshape(x, tuple(n for i, n in enumerate(x.shape) if not (i in dims and n == 1)))


def unsqueeze(x: Tensor, dim: int) -> Tensor:
    dim = wrap_dim(dim, x.ndim, "unsqueeze", new_axis=True)
    return reshape(x, x.shape[:dim] + (1,) + x.shape[dim:])  # a new axis of size 1 at dim


def expand(x: Tensor, *shape: Any) -> Tensor:
    return M.Expand.apply(x, shape=_shape_args(shape))


def repeat(x: Tensor, *repeats: Any) -> Tensor:
    return M.Repeat.apply(x, repeats=_shape_args(repeats))


def split(x: Tensor, split_size_or_sections: int | list[int], dim: int = 0) -> tuple[Tensor, ...]:
    """Split into chunks of ``split_size`` (an int) or of the given sizes (a list), like torch."""
    dim = wrap_dim(dim, x.ndim, "split")
    n = x.shape[dim]
    if isinstance(split_size_or_sections, int):
        if split_size_or_sections < 1 and not (split_size_or_sections == 0 and n == 0):
            raise RuntimeError(f"split: split_size must be a positive int, got {split_size_or_sections}")
        sizes = [split_size_or_sections] * (n // split_size_or_sections)
        if n % split_size_or_sections:
            sizes.append(n % split_size_or_sections)
    else:
        sizes = list(split_size_or_sections)
        if sum(sizes) != n:
            raise RuntimeError(f"split: sizes {sizes} do not sum to dim {dim}'s size {n}")
    out, start = [], 0
    for size in sizes:
        index = (slice(None),) * dim + (slice(start, start + size),)
        out.append(x[index])
        start += size
    return tuple(out)


def chunk(x: Tensor, chunks: int, dim: int = 0) -> tuple[Tensor, ...]:
    if not isinstance(chunks, int) or chunks < 1:
        raise RuntimeError(f"chunk: chunks must be a positive int, got {chunks!r}")
    n = x.shape[wrap_dim(dim, x.ndim, "chunk")]
    size = -(-n // chunks)
    return split(x, size, dim)


def getitem(x: Tensor, index: Any) -> Tensor:
    raw = raw_index(index)
    if isinstance(raw, np.ndarray) and raw.dtype == bool and raw.shape != x.shape[: raw.ndim]:
        raise IndexError(f"boolean mask of shape {raw.shape} does not match tensor shape {x.shape}")
    return M.GetItem.apply(x, index=raw)


def tril(x: Tensor, diagonal: int = 0) -> Tensor:
    return M.Triangle.apply(x, diagonal=diagonal, upper=False)


def triu(x: Tensor, diagonal: int = 0) -> Tensor:
    return M.Triangle.apply(x, diagonal=diagonal, upper=True)


def gather(x: Tensor, dim: int, index: Any) -> Tensor:
    idx = index.data if is_tensor(index) else backend.array_module(x.data).asarray(index)
    return M.Gather.apply(x, index=idx, dim=wrap_dim(dim, x.ndim, "gather"))


# ------------------------------------------------------------------ dtype and device
def to(x: Tensor, device_or_dtype: Any = None, dtype: Any = None) -> Tensor:
    """``x.to("cuda")``, ``x.to("cpu")``, ``x.to(gu.float64)`` or ``x.to("cuda", gu.float64)``."""
    out = x
    if device_or_dtype is not None:
        try:
            device = normalize_device(device_or_dtype)
        except ValueError:
            dtype, device = device_or_dtype, None
        if device is not None and device != x.device:
            out = M.ToDevice.apply(out, device=device)
    if dtype is not None and as_dtype(dtype) != out.dtype:
        out = out.type(dtype)
    return out


def cast(x: Tensor, dtype: Any) -> Tensor:
    dtype = as_dtype(dtype)
    if dtype == x.dtype:
        return x
    return E.Cast.apply(x, dtype=dtype)
