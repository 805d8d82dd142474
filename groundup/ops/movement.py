"""Movement Functions: reshape, permute, expand, repeat, cat, indexing, gather, tril/triu, device.

These move or select elements without arithmetic; each backward routes the gradient back to
where the element came from (indexing scatter-adds, so repeated indices accumulate).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from groundup.backend import array_module, to_device
from groundup.function import Function, unbroadcast, wrap_dim


class Reshape(Function):
    """The same elements in a new shape; the gradient is reshaped back."""

    def forward(self, x, shape: tuple[int, ...] = ()):
        self.in_shape = x.shape
        try:
            return x.reshape(shape)
        except ValueError:
            raise RuntimeError(f"reshape: shape {tuple(shape)} is invalid for an input of shape "
                               f"{tuple(x.shape)} ({x.size} elements)") from None

    def backward(self, gz):
        return gz.reshape(self.in_shape)


class Permute(Function):
    """Reorder the axes; the gradient goes through the inverse permutation."""

    def forward(self, x, dims: tuple[int, ...] = ()):
        if sorted(d % max(x.ndim, 1) for d in dims) != list(range(x.ndim)):
            raise RuntimeError(f"permute: dims {tuple(dims)} is not a permutation of the "
                               f"{x.ndim} dimensions of shape {tuple(x.shape)}")
        self.dims = tuple(d % x.ndim for d in dims)
        return x.transpose(self.dims)

    def backward(self, gz):
        inverse = [0] * len(self.dims)
        for i, d in enumerate(self.dims):
            inverse[d] = i
        return gz.transpose(inverse)


class Expand(Function):
    """Broadcast to a bigger shape without copying; the gradient is summed back (unbroadcast)."""

    def forward(self, x, shape: tuple[int, ...] = ()):
        xp = array_module(x)
        self.in_shape = x.shape
        lead = len(shape) - x.ndim
        if lead < 0:
            raise RuntimeError(f"expand: target shape {tuple(shape)} has fewer dims than {tuple(x.shape)}")
        if -1 in shape[:lead]:
            raise RuntimeError(f"expand: size -1 is not allowed in a new leading dim (shape {tuple(x.shape)} to "
                               f"{tuple(shape)}); -1 keeps an existing dim's size")
        target = tuple(x.shape[i - lead] if s == -1 else s for i, s in enumerate(shape))
        for i, n in enumerate(x.shape):
            if n != 1 and n != target[lead + i]:
                raise RuntimeError(f"expand: cannot expand shape {tuple(x.shape)} to {tuple(shape)}")
        return xp.broadcast_to(x, target)

    def backward(self, gz):
        return unbroadcast(gz, self.in_shape)


class Repeat(Function):
    """torch's ``repeat``: tile the tensor ``repeats`` times along each dimension."""

    def forward(self, x, repeats: tuple[int, ...] = ()):
        xp = array_module(x)
        if len(repeats) < x.ndim:
            raise RuntimeError(f"repeat: {len(repeats)} repeats for a tensor with {x.ndim} dims")
        self.in_shape = (1,) * (len(repeats) - x.ndim) + tuple(x.shape)
        self.orig_shape, self.repeats = x.shape, tuple(repeats)
        return xp.tile(x.reshape(self.in_shape), self.repeats)

    def backward(self, gz):
        split = []
        for r, n in zip(self.repeats, self.in_shape):
            split += [r, n]
        g = gz.reshape(split).sum(axis=tuple(range(0, len(split), 2)))
        return g.reshape(self.orig_shape)


class Cat(Function):
    """Concatenate along ``dim``; each input gets its slice of the gradient."""

    def forward(self, *xs, dim: int = 0):
        xp = array_module(*xs)
        ref = xs[0]
        if ref.ndim == 0:
            raise RuntimeError("cat: zero-dimensional tensors cannot be concatenated (stack them instead)")
        d = wrap_dim(dim, ref.ndim, "cat")
        for x in xs[1:]:
            if x.ndim != ref.ndim or any(a != b for i, (a, b) in enumerate(zip(x.shape, ref.shape)) if i != d):
                shapes = ", ".join(str(tuple(t.shape)) for t in xs)
                raise RuntimeError(f"cat: shapes must match except in dim {dim}, got {shapes}")
        self.dim, self.sizes = d, [x.shape[d] for x in xs]
        return xp.concatenate(xs, axis=d)

    def backward(self, gz):
        grads, start = [], 0
        for size in self.sizes:
            index = [slice(None)] * gz.ndim
            index[self.dim] = slice(start, start + size)
            grads.append(gz[tuple(index)])
            start += size
        return tuple(grads)


def _is_basic(index: Any) -> bool:
    """True when ``index`` uses only ints, slices, None and Ellipsis (no repeats possible)."""
    items = index if isinstance(index, tuple) else (index,)
    return all(i is None or i is Ellipsis or isinstance(i, (int, slice)) for i in items)


def _on_device_of(x: Any, index: Any) -> Any:
    """``index`` with its NumPy arrays moved to the GPU when ``x`` lives there (CuPy's add.at and
    where need the index on the device; its getitem would copy it there anyway)."""
    xp = array_module(x)
    if xp is np:
        return index
    if isinstance(index, tuple):
        return tuple(xp.asarray(i) if isinstance(i, np.ndarray) else i for i in index)
    return xp.asarray(index) if isinstance(index, np.ndarray) else index


def _distinct_rows(index: Any, rows: int, xp: Any) -> bool:
    """True when ``index`` is one boolean mask, or one integer array whose entries name distinct rows
    of an axis of ``rows`` (negative ones counted from the end): then x[index] never repeats an element
    and its backward may assign instead of scatter-adding (``np.add.at`` is ~20x slower)."""
    if not hasattr(index, "dtype") or not hasattr(index, "ravel") or index.ndim == 0:
        return False
    if index.dtype == bool:
        return True
    if index.dtype.kind not in "iu" or index.size > rows:
        return False
    if index.size == 0:
        return True
    flat = index.ravel()
    flat = xp.where(flat < 0, flat + rows, flat)
    if int(flat.min()) < 0 or int(flat.max()) >= rows:
        return False                                                    # out of range: forward raised already
    return int(xp.bincount(flat, minlength=rows).max()) <= 1


class GetItem(Function):
    """x[index] for ints, slices, None, Ellipsis, integer arrays and boolean masks."""

    def forward(self, x, index: Any = None):
        index = _on_device_of(x, index)
        self.index, self.in_shape, self.dtype = index, x.shape, x.dtype
        try:
            return x[index]
        except IndexError as e:
            raise IndexError(f"index {index!r} is invalid for a tensor of shape {tuple(x.shape)}: {e}") from None

    def backward(self, gz):
        xp = array_module(gz)
        grad = xp.zeros(self.in_shape, dtype=gz.dtype)
        if _is_basic(self.index) or _distinct_rows(self.index, self.in_shape[0] if self.in_shape else 0, xp):
            grad[self.index] = gz                                       # no element picked twice
        else:
            xp.add.at(grad, self.index, gz)  # repeated indices accumulate
        return grad


class Gather(Function):
    """out[i][j] = x[i][index[i][j]] along ``dim`` (torch.gather)."""

    def forward(self, x, index: Any = None, dim: int = 0):
        xp = array_module(x)
        d = wrap_dim(dim, x.ndim, "gather")
        if index.dtype.kind not in "iu":
            raise RuntimeError(f"gather: index must hold integers, got dtype {index.dtype}")
        if index.ndim != x.ndim or any(i > n for k, (i, n) in enumerate(zip(index.shape, x.shape)) if k != d):
            raise RuntimeError(f"gather: index {tuple(index.shape)} must have the input's {x.ndim} dims and be "
                               f"no larger than the input {tuple(x.shape)} outside dim {d}")
        if index.size and (int(index.min()) < 0 or int(index.max()) >= x.shape[d]):
            bad = int(index.min()) if int(index.min()) < 0 else int(index.max())
            raise IndexError(f"gather: index {bad} is out of range for dim {d} of size {x.shape[d]}")
        # NOTE: torch takes index's own shape (no broadcasting): the input is cut to it outside dim
        window = tuple(slice(None) if k == d else slice(0, i) for k, i in enumerate(index.shape))
        index = _on_device_of(x, index)
        self.index, self.dim, self.in_shape = index, d, x.shape
        return xp.take_along_axis(x[window], index, axis=d)

    def backward(self, gz):
        xp = array_module(gz)
        grad = xp.zeros(self.in_shape, dtype=gz.dtype)
        idx = list(xp.ix_(*[xp.arange(n) for n in self.index.shape]))         # open grids (CuPy: no sparse=)
        idx[self.dim] = self.index
        xp.add.at(grad, tuple(idx), gz)
        return grad


class Triangle(Function):
    """tril / triu: keep the lower (or upper) triangle of the last two dims."""

    def forward(self, x, diagonal: int = 0, upper: bool = False):
        xp = array_module(x)
        if x.ndim < 2:   # NumPy would make a (n, n) matrix of a vector; torch refuses
            raise RuntimeError(f"{'triu' if upper else 'tril'}: the input needs at least 2 dims, got shape "
                               f"{tuple(x.shape)}")
        self.diagonal, self.upper = diagonal, upper
        return xp.triu(x, diagonal) if upper else xp.tril(x, diagonal)

    def backward(self, gz):
        xp = array_module(gz)
        return xp.triu(gz, self.diagonal) if self.upper else xp.tril(gz, self.diagonal)


class ToDevice(Function):
    """Move between NumPy (cpu) and CuPy (cuda); the gradient moves back."""

    def forward(self, x, device: str = "cpu"):
        self.src = "cuda" if type(x).__module__.startswith("cupy") else "cpu"
        return to_device(x, device)

    def backward(self, gz):
        return to_device(gz, self.src)
