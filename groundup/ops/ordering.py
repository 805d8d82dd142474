"""Ordering and rearranging ops with torch's names: sort, argsort, topk, amin, nonzero, flip, roll,
narrow, index_select, unbind, movedim, swapaxes, outer; ``OrderingMethods`` makes them (and the
cumulative ops of ``cumulative.py``) Tensor methods.

None of these needs a Function of its own. The order is computed on the raw array (indices carry
no gradient), then the values are picked with an existing op: ``GetItem`` (sort, topk, flip, narrow,
index_select, unbind), ``Cat`` of two slices (roll), ``Permute`` (movedim, swapaxes) or a broadcast
multiply (outer), so each gradient is that op's scatter, as in torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from groundup import backend
from groundup.function import wrap_dim
from groundup.ops import elementwise as E
from groundup.ops import movement as M
from groundup.ops import reduce as R
from groundup.ops.cumulative import cumprod, cumsum, diff, norm, prod
from groundup.ops.methods import MinMaxResult, mul
from groundup.ops.shaping import constant, is_tensor, permute, reshape, transpose

if TYPE_CHECKING:
    from groundup.tensor import Tensor


def _dims_arg(dims: tuple, op: str) -> tuple[int, ...]:
    """torch's forms ``f(0, 1)``, ``f((0, 1))`` and ``f([0, 1])`` as a tuple of ints."""
    if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
        dims = tuple(dims[0])
    for d in dims:
        if not isinstance(d, (int, np.integer)) or isinstance(d, bool):
            raise TypeError(f"{op}: dims must be ints, got {d!r}")
    return tuple(int(d) for d in dims)


def _along(dim: int, index: Any) -> tuple:
    """An index that applies ``index`` to axis ``dim`` and keeps every axis before it."""
    return (slice(None),) * dim + (index,)


def _take_along(x: Tensor, index: Any, dim: int) -> Tensor:
    """``take_along_axis(x, index, dim)`` as one GetItem of flat positions on the flattened x. NOTE: not
    ``Gather``: a sort or top-k picks each element at most once, and distinct flat positions let GetItem's
    backward assign the gradient instead of scatter-adding it (``np.add.at``, ~20x slower)."""
    xp = backend.array_module(x.data)
    positions = xp.take_along_axis(xp.arange(x.data.size).reshape(x.shape), index, axis=dim)  # flat index in x
    picked = M.GetItem.apply(reshape(x, -1), index=positions.reshape(-1))                    # (index.size,)
    return reshape(picked, index.shape)


# ------------------------------------------------------------------ sorting
def _stable_argsort(data: Any, axis: int, descending: bool) -> Any:
    """Indices that sort ``data`` along ``axis``; equal elements keep their order (both directions).

    NOTE: descending = sort the reversed array ascending, then reverse the result: ties then come out
    in their original order, as torch's ``stable=True`` (negating would fail for unsigned and bool)."""
    xp = backend.array_module(data)
    kind = {"kind": "stable"} if xp is np else {}              # CuPy's sort is always stable
    if not descending:
        return xp.argsort(data, axis=axis, **kind)
    order = xp.argsort(xp.flip(data, axis), axis=axis, **kind)
    return xp.flip(data.shape[axis] - 1 - order, axis)


def sort(x: Tensor, dim: int = -1, descending: bool = False, *, stable: bool = False) -> MinMaxResult:
    """(values, indices) of ``x`` sorted along ``dim``; the gradient goes back to where each value came
    from. NOTE: the sort is always stable (``stable`` is accepted for torch's signature), so ties keep
    their order in both directions.

    >>> import groundup as gu
    >>> gu.tensor([3.0, 1.0, 2.0]).sort().indices
    tensor([1, 2, 0])
    """
    if x.ndim == 0:
        wrap_dim(dim, 0, "sort")
        return MinMaxResult((E.Clone.apply(x), constant(backend.array_module(x.data).zeros((), backend.int64), x)))
    d = wrap_dim(dim, x.ndim, "sort")
    indices = _stable_argsort(x.data, d, descending).astype(backend.int64, copy=False)
    return MinMaxResult((_take_along(x, indices, d), constant(indices, x)))


def argsort(x: Tensor, dim: int = -1, descending: bool = False, *, stable: bool = False) -> Tensor:
    """The indices that sort ``x`` along ``dim`` (``sort(...).indices``, with no values computed)."""
    if x.ndim == 0:
        wrap_dim(dim, 0, "argsort")
        return constant(backend.array_module(x.data).zeros((), backend.int64), x)
    d = wrap_dim(dim, x.ndim, "argsort")
    return constant(_stable_argsort(x.data, d, descending).astype(backend.int64, copy=False), x)


def topk(x: Tensor, k: int, dim: int = -1, largest: bool = True, sorted: bool = True) -> MinMaxResult:
    """(values, indices) of the ``k`` largest (or smallest) elements along ``dim``. NOTE: they always come
    out sorted (``sorted=False`` lets torch return any order, so this order is one of them).

    >>> import groundup as gu
    >>> gu.tensor([1.0, 5.0, 3.0]).topk(2).values
    tensor([5., 3.])
    """
    size = x.shape[wrap_dim(dim, x.ndim, "topk")] if x.ndim else 1
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or not 0 <= k <= size:
        raise RuntimeError(f"topk: k ({k!r}) must be an int in [0, {size}], the size of dim {dim} of a tensor "
                           f"of shape {x.shape}")
    if x.ndim == 0:
        return sort(x, dim) if k == 1 else MinMaxResult((reshape(x, 1)[0:0].reshape(()), argsort(x)))
    d = wrap_dim(dim, x.ndim, "topk")
    order = _stable_argsort(x.data, d, descending=largest)
    indices = order[_along(d, slice(0, int(k)))].astype(backend.int64)        # (..., k, ...)
    return MinMaxResult((_take_along(x, indices, d), constant(indices, x)))


def amin(x: Tensor, dim: Any = None, keepdim: bool = False) -> Tensor:
    """The smallest value over ``dim`` (an int, a tuple, or None / () for all); ties share the gradient
    equally, as torch's ``amin``."""
    dim = None if dim is None or dim == () else ((dim,) if isinstance(dim, int) else tuple(dim))
    return R.MaxMin.apply(x, dim=dim, keepdim=keepdim, mode="min")


def nonzero(x: Tensor, *, as_tuple: bool = False) -> Tensor | tuple[Tensor, ...]:
    """The indices of the nonzero elements, one row per element, (N, ndim) int64 (outside the graph);
    ``as_tuple=True``: one 1-d index tensor per dim, ready for ``x[...]`` (a 0-d input counts as 1-d)."""
    xp = backend.array_module(x.data)
    if as_tuple:
        data = x.data.reshape(1) if x.ndim == 0 else x.data
        return tuple(constant(i.astype(backend.int64, copy=False), x) for i in xp.nonzero(data))
    return constant(xp.argwhere(x.data).astype(backend.int64, copy=False), x)


# ------------------------------------------------------------------ rearranging
def flip(x: Tensor, *dims: Any) -> Tensor:
    """Reverse the order of the elements along each of ``dims``. A copy, as torch (a reversed view
    followed by ``clone``, so writing into the result leaves ``x`` unchanged)."""
    dims = _dims_arg(dims, "flip")
    axes = [wrap_dim(d, x.ndim, "flip") for d in dims]
    if len(set(axes)) != len(axes):
        raise RuntimeError(f"flip: dim {dims} names a dimension twice")
    reversed_view = M.GetItem.apply(x, index=tuple(slice(None, None, -1) if a in axes else slice(None)
                                                   for a in range(x.ndim)))
    return E.Clone.apply(reversed_view)


def roll(x: Tensor, shifts: Any, dims: Any = None) -> Tensor:
    """Shift the elements along ``dims`` by ``shifts`` places, wrapping around: out[(i + s) % n] = x[i].
    With ``dims`` None the tensor is rolled flat and reshaped back (torch's rule)."""
    shifts = (shifts,) if isinstance(shifts, (int, np.integer)) else tuple(shifts)
    if dims is None:
        if len(shifts) != 1:
            raise RuntimeError(f"roll: {len(shifts)} shifts need as many dims (got dims=None)")
        return reshape(roll(reshape(x, -1), shifts, 0), x.shape)
    dims = (dims,) if isinstance(dims, (int, np.integer)) else tuple(dims)
    if x.ndim == 0:
        raise IndexError("roll: a 0-d tensor has no dimension to roll along (roll it with dims=None)")
    if len(shifts) != len(dims):
        raise RuntimeError(f"roll: shifts {shifts} and dims {dims} must have the same length")
    out = x
    for shift, dim in zip(shifts, dims):
        d = wrap_dim(dim, x.ndim, "roll")
        size = x.shape[d]
        if size == 0 or int(shift) % size == 0:
            continue
        cut = size - int(shift) % size                          # out = x[cut:] then x[:cut] along d
        head, tail = M.GetItem.apply(out, index=_along(d, slice(cut, None))), M.GetItem.apply(
            out, index=_along(d, slice(0, cut)))
        out = M.Cat.apply(head, tail, dim=d)
    return out if out is not x else E.Clone.apply(x)


def narrow(x: Tensor, dim: int, start: int, length: int) -> Tensor:
    """x[..., start:start + length, ...] on ``dim`` (a view, as torch); ``start`` may be negative."""
    if x.ndim == 0:
        raise RuntimeError("narrow: cannot narrow a 0-d tensor")
    d = wrap_dim(dim, x.ndim, "narrow")
    size = x.shape[d]
    if not -size <= start <= size:
        raise IndexError(f"narrow: start {start} is out of range for dim {dim} of size {size}")
    start = start % size if start < 0 else start
    if length < 0 or start + length > size:
        raise RuntimeError(f"narrow: start ({start}) + length ({length}) exceeds dim {dim} of size {size}")
    return M.GetItem.apply(x, index=_along(d, slice(start, start + length)))


def index_select(x: Tensor, dim: int, index: Any) -> Tensor:
    """The entries of ``x`` at ``index`` (a 0-d or 1-d integer tensor) along ``dim``; repeats allowed,
    and their gradients add up."""
    xp = backend.array_module(x.data)
    idx = index.data if is_tensor(index) else xp.asarray(index)
    if idx.ndim > 1:
        raise IndexError(f"index_select: index must be 0-d or 1-d, got shape {tuple(idx.shape)}")
    if idx.dtype.kind not in "iu":
        raise IndexError(f"index_select: index must hold integers, got dtype {idx.dtype}")
    d = wrap_dim(dim, x.ndim, "index_select")
    size = x.shape[d] if x.ndim else 1
    flat = idx.reshape(-1)                                      # (K,): a 0-d index keeps its dim of size 1
    if flat.size and (int(flat.min()) < 0 or int(flat.max()) >= size):
        bad = int(flat.min()) if int(flat.min()) < 0 else int(flat.max())
        raise IndexError(f"index_select: index {bad} is out of range for dim {dim} of size {size}")
    if x.ndim == 0:
        return reshape(M.GetItem.apply(reshape(x, 1), index=flat), ()) if flat.size == 1 else \
            M.GetItem.apply(reshape(x, 1), index=flat)
    return M.GetItem.apply(x, index=flat if d == 0 else _along(d, flat))    # (..., K, ...)


def unbind(x: Tensor, dim: int = 0) -> tuple[Tensor, ...]:
    """The slices of ``x`` along ``dim``, each without that dim (views, as torch)."""
    if x.ndim == 0:
        raise IndexError("unbind: a 0-d tensor has no dimension to unbind")
    d = wrap_dim(dim, x.ndim, "unbind")
    return tuple(M.GetItem.apply(x, index=_along(d, i)) for i in range(x.shape[d]))


def movedim(x: Tensor, source: Any, destination: Any) -> Tensor:
    """Move the dims ``source`` to the places ``destination``; the other dims keep their order."""
    source = (source,) if isinstance(source, (int, np.integer)) else tuple(source)
    destination = (destination,) if isinstance(destination, (int, np.integer)) else tuple(destination)
    if len(source) != len(destination):
        raise RuntimeError(f"movedim: source {source} and destination {destination} must have the same length")
    src = [wrap_dim(s, x.ndim, "movedim") for s in source]
    dst = [wrap_dim(t, x.ndim, "movedim") for t in destination]
    if len(set(src)) != len(src) or len(set(dst)) != len(dst):
        raise RuntimeError(f"movedim: source {source} and destination {destination} must not repeat a dim")
    order = [a for a in range(x.ndim) if a not in src]
    for place, axis in sorted(zip(dst, src)):
        order.insert(place, axis)
    return permute(x, *order) if x.ndim else x                 # out dim i is input dim order[i]


def swapaxes(x: Tensor, axis0: int, axis1: int) -> Tensor:
    """Exchange two dims (torch's alias of ``transpose``)."""
    return transpose(x, axis0, axis1)


def outer(x: Tensor, vec2: Tensor) -> Tensor:
    """out[i, j] = x[i] * vec2[j] for two 1-d tensors (a broadcast multiply)."""
    if x.ndim != 1 or not is_tensor(vec2) or vec2.ndim != 1:
        other = vec2.shape if is_tensor(vec2) else type(vec2).__name__
        raise RuntimeError(f"outer: both inputs must be 1-d tensors, got {x.shape} and {other}")
    return mul(reshape(x, -1, 1), reshape(vec2, 1, -1))        # (N, 1) * (1, M) -> (N, M)


class OrderingMethods:
    """Tensor methods for ordering, cumulative and rearranging ops, by torch's names."""

    __slots__ = ()

    def sort(self, dim: int = -1, descending: bool = False, *, stable: bool = False) -> MinMaxResult:
        return sort(self, dim, descending, stable=stable)

    def argsort(self, dim: int = -1, descending: bool = False, *, stable: bool = False) -> Tensor:
        return argsort(self, dim, descending, stable=stable)

    def topk(self, k: int, dim: int = -1, largest: bool = True, sorted: bool = True) -> MinMaxResult:
        return topk(self, k, dim, largest, sorted)

    def amin(self, dim: Any = None, keepdim: bool = False) -> Tensor: return amin(self, dim, keepdim)
    def nonzero(self, *, as_tuple: bool = False) -> Any: return nonzero(self, as_tuple=as_tuple)
    def cumsum(self, dim: int, *, dtype: Any = None) -> Tensor: return cumsum(self, dim, dtype=dtype)
    def cumprod(self, dim: int, *, dtype: Any = None) -> Tensor: return cumprod(self, dim, dtype=dtype)

    def prod(self, dim: int | None = None, keepdim: bool = False, *, dtype: Any = None) -> Tensor:
        return prod(self, dim, keepdim, dtype=dtype)

    def diff(self, n: int = 1, dim: int = -1, prepend: Tensor | None = None, append: Tensor | None = None) -> Tensor:
        return diff(self, n, dim, prepend, append)

    def norm(self, p: float | str = "fro", dim: Any = None, keepdim: bool = False, dtype: Any = None) -> Tensor:
        return norm(self, p, dim, keepdim, dtype)

    def flip(self, *dims: Any) -> Tensor: return flip(self, *dims)
    def roll(self, shifts: Any, dims: Any = None) -> Tensor: return roll(self, shifts, dims)
    def narrow(self, dim: int, start: int, length: int) -> Tensor: return narrow(self, dim, start, length)
    def index_select(self, dim: int, index: Any) -> Tensor: return index_select(self, dim, index)
    def unbind(self, dim: int = 0) -> tuple[Tensor, ...]: return unbind(self, dim)
    def movedim(self, source: Any, destination: Any) -> Tensor: return movedim(self, source, destination)
    def moveaxis(self, source: Any, destination: Any) -> Tensor: return movedim(self, source, destination)
    def swapaxes(self, axis0: int, axis1: int) -> Tensor: return swapaxes(self, axis0, axis1)
    def swapdims(self, dim0: int, dim1: int) -> Tensor: return swapaxes(self, dim0, dim1)
    def outer(self, vec2: Tensor) -> Tensor: return outer(self, vec2)
