"""Cumulative sums and products, the product reduction, and the reductions built on them.

Three Functions with a backward of their own, each a composition of primitives that would cost
more or get torch's gradient wrong:

- ``Cumsum``: the composite is ``x @ triu(ones(n, n))`` (an n x n matrix); the backward of a
  running sum is the running sum of the gradient taken from the end.
- ``Cumprod`` and ``Prod``: the composite is a chain of n multiplies. The closed form of their
  gradient, ``sum(g * out) / x``, divides by zero where the input has a zero; both follow torch
  there (the product of the other elements, exactly).

The op functions below (``cumsum``, ``cumprod``, ``prod``, ``diff``, ``norm``) parse torch's
arguments and dtypes; ``ordering.py`` makes them Tensor methods. References: torch's
``cumprod_backward`` and ``prod_backward`` (aten/src/ATen/native/ReduceOps.cpp,
tools/autograd/FunctionsManual.cpp).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from groundup import backend
from groundup.backend import array_module
from groundup.function import Function, wrap_dim
from groundup.ops import movement as M
from groundup.ops import reduce as R
from groundup.ops.methods import amax, masked_fill, sum_, where
from groundup.ops.shaping import constant, is_tensor

if TYPE_CHECKING:
    from groundup.tensor import Tensor


def _reverse_cumsum(a: Any, axis: int) -> Any:
    """The running sum from the end: out[k] = sum of a[j] for j >= k along ``axis``."""
    xp = array_module(a)
    return xp.flip(xp.cumsum(xp.flip(a, axis), axis=axis), axis)


class Cumsum(Function):
    """out[k] = x[0] + ... + x[k] along ``dim``; the gradient is the running sum of g from the end."""

    def forward(self, x, dim: int = 0):
        xp = array_module(x)
        self.axis = wrap_dim(dim, x.ndim, "cumsum") if x.ndim else None
        return xp.cumsum(x, axis=self.axis) if x.ndim else x.copy()

    def backward(self, gz):
        return _reverse_cumsum(gz, self.axis) if self.axis is not None else gz


class Cumprod(Function):
    """out[k] = x[0] * ... * x[k] along ``dim``.

    NOTE: with no zero, dx[k] = sum_{j >= k} g[j] out[j] / x[k]. Past the first zero z of a slice every
    out[j] is 0, so that sum still holds for k < z; dx[z] = sum_{j >= z} g[j] prod_{i <= j, i != z} x[i]
    (a running product with x[z] read as 1); dx[k] = 0 for k > z, since out[j] keeps the factor x[z] = 0.
    This is torch's gradient, which ``sum(g * out) / x`` would make nan.
    """

    def forward(self, x, dim: int = 0):
        xp = array_module(x)
        self.axis = wrap_dim(dim, x.ndim, "cumprod") if x.ndim else None
        out = xp.cumprod(x, axis=self.axis) if x.ndim else x.copy()
        self.save_for_backward(x, out)
        return out

    def backward(self, gz):
        x, out = self.saved
        if self.axis is None:
            return gz
        xp, axis = array_module(gz), self.axis
        zero = x == 0
        seen = xp.cumsum(zero, axis=axis)                      # how many zeros up to and including k
        before = seen == 0                                     # no zero yet: x[k] != 0
        tail = _reverse_cumsum(gz * out, axis)
        grad = xp.where(before, tail / xp.where(before, x, 1), 0)
        if zero.any():
            first = zero & (seen == 1)                         # the first zero of its slice
            skipped = xp.cumprod(xp.where(first, 1, x), axis=axis)   # the running product without x[z]
            at_zero = xp.where(before, 0, gz * skipped).sum(axis=axis, keepdims=True)
            grad = xp.where(first, at_zero, grad)
        return grad.astype(gz.dtype, copy=False)


class Prod(Function):
    """The product over ``dim`` (an int) or over every element (None).

    NOTE: the gradient of element k is the product of the others: out / x[k] when the slice has no
    zero; at the one zero of a slice with exactly one, the product of the nonzero elements; 0 elsewhere
    (two zeros make every such product 0). torch's rule; out / x would be nan at a zero.
    """

    def forward(self, x, dim: int | None = None, keepdim: bool = False):
        xp = array_module(x)
        self.axes = R.normalize_dims(dim, x.ndim, "prod")
        out = xp.prod(x, axis=self.axes, keepdims=True) if x.ndim else x.copy()
        self.save_for_backward(x, out)
        return out if keepdim else out.reshape([n for i, n in enumerate(x.shape) if i not in self.axes])

    def backward(self, gz):
        x, out = self.saved
        xp = array_module(gz)
        g = gz.reshape(out.shape)                              # keepdim shape: broadcasts against x
        zero = x == 0
        if not zero.any():
            return (g * out / x).astype(gz.dtype, copy=False)
        count = zero.sum(axis=self.axes, keepdims=True) if x.ndim else zero
        others = xp.prod(xp.where(zero, 1, x), axis=self.axes, keepdims=True) if x.ndim else xp.ones_like(x)
        grad = xp.where(count == 0, out / xp.where(zero, 1, x), xp.where(zero & (count == 1), others, 0))
        return (g * grad).astype(gz.dtype, copy=False)


# ------------------------------------------------------------------ op functions
def _accumulate_dtype(x: Tensor, dtype: Any) -> Tensor:
    """torch's dtype for sums and products: ``dtype`` if given; bool and integers as int64."""
    if dtype is not None:
        return x.type(dtype)
    return x.type(backend.int64) if x.dtype.kind in "biu" else x


def cumsum(x: Tensor, dim: int, *, dtype: Any = None) -> Tensor:
    """The running sum along ``dim``: out[k] = x[0] + ... + x[k].

    >>> import groundup as gu
    >>> gu.tensor([1, 2, 3]).cumsum(0)
    tensor([1, 3, 6])
    """
    return Cumsum.apply(_accumulate_dtype(x, dtype), dim=dim)


def cumprod(x: Tensor, dim: int, *, dtype: Any = None) -> Tensor:
    """The running product along ``dim``, with torch's gradient where the input has zeros."""
    return Cumprod.apply(_accumulate_dtype(x, dtype), dim=dim)


def prod(x: Tensor, dim: int | None = None, keepdim: bool = False, *, dtype: Any = None) -> Tensor:
    """The product over ``dim`` (one int, as torch) or over every element (None)."""
    if dim is not None and (not isinstance(dim, int) or isinstance(dim, bool)):
        raise TypeError(f"prod: dim must be an int or None (torch takes one dim), got {dim!r}")
    if dim is not None:
        wrap_dim(dim, x.ndim, "prod")
    return Prod.apply(_accumulate_dtype(x, dtype), dim=dim, keepdim=keepdim)


def _slice_along(x: Tensor, dim: int, start: int, stop: int) -> Tensor:
    """x[..., start:stop, ...] with the slice on ``dim`` (a view, one GetItem)."""
    return M.GetItem.apply(x, index=(slice(None),) * dim + (slice(start, stop),))


def diff(x: Tensor, n: int = 1, dim: int = -1, prepend: Tensor | None = None,
         append: Tensor | None = None) -> Tensor:
    """The n-th forward difference along ``dim``: out[k] = x[k + 1] - x[k], ``n`` times; ``prepend`` and
    ``append`` are joined to ``x`` along ``dim`` first (torch's arguments). Booleans give ``x[k + 1] != x[k]``.

    >>> import groundup as gu
    >>> gu.tensor([1, 4, 9, 16]).diff()
    tensor([3, 5, 7])
    """
    if x.ndim == 0:
        raise RuntimeError("diff: the input must have at least one dimension (got a 0-d tensor)")
    if not isinstance(n, int) or n < 0:
        raise RuntimeError(f"diff: order n must be a non-negative int, got {n!r}")
    d = wrap_dim(dim, x.ndim, "diff")
    parts = [p for p in (prepend, x, append) if p is not None]
    for p in parts:
        if not is_tensor(p) or p.ndim != x.ndim:
            raise RuntimeError(f"diff: prepend and append must be tensors with the input's {x.ndim} dims")
    if len(parts) > 1:
        x = M.Cat.apply(*parts, dim=d)
    for _ in range(n):
        length = x.shape[d]
        later, earlier = _slice_along(x, d, 1, length), _slice_along(x, d, 0, max(length - 1, 0))
        x = constant(later.data != earlier.data, x) if x.dtype.kind == "b" else later - earlier
    return x


def _safe_root(total: Tensor, p: float) -> Tensor:
    """total ** (1 / p), with gradient 0 where total is 0 (torch's norm there; the plain root gives nan)."""
    zero = total.data == 0
    safe = where(zero, 1.0, total)                            # no gradient reaches total where it is 0
    root = safe.sqrt() if p == 2 else safe ** (1.0 / p)
    return where(zero, 0.0, root)


def norm(x: Tensor, p: float | str = "fro", dim: Any = None, keepdim: bool = False, dtype: Any = None) -> Tensor:
    """The vector p-norm over ``dim`` (None: every element): (sum |x| ** p) ** (1 / p); ``"fro"`` is p = 2,
    ``inf`` the largest |x| and ``-inf`` the smallest, 0 the count of nonzeros. The gradient at a zero norm
    is 0, as torch's.

    >>> import groundup as gu
    >>> gu.tensor([3.0, 4.0]).norm()
    tensor(5.)
    """
    if dtype is not None:
        x = x.type(dtype)
    if x.dtype.kind != "f":
        raise RuntimeError(f"norm: expected a floating point tensor, got dtype {x.dtype} (as torch; x.float() first)")
    if p == "fro":
        p = 2
    if isinstance(p, str) or not isinstance(p, (int, float)) or isinstance(p, bool):
        raise ValueError(f"norm: p must be a number or 'fro', got {p!r} (the nuclear norm is not supported)")
    dims = None if dim is None else ((dim,) if isinstance(dim, int) else tuple(dim))
    if dims is not None:
        dims = tuple(wrap_dim(d, x.ndim, "norm") for d in dims) if x.ndim else ()
    if p == math.inf:
        return amax(x.abs(), dims, keepdim)                   # ties share the gradient, as torch
    if p == -math.inf:
        return R.MaxMin.apply(x.abs(), dim=dims, keepdim=keepdim, mode="min")
    if p == 0:                      # the count of nonzeros; its gradient is 0 everywhere, as torch's
        no_slope = masked_fill(x, array_module(x.data).ones(x.shape, dtype=bool), 0.0)   # zeros in the graph
        return sum_(no_slope + constant((x.data != 0).astype(x.dtype), x), dims, keepdim)
    if p == 1:
        return sum_(x.abs(), dims, keepdim)
    total = sum_(x * x if p == 2 else x.abs() ** p, dims, keepdim)
    return _safe_root(total, p)
