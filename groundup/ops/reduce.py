"""Reductions over dimensions: sum, mean, max/min, var, logsumexp.

``dim`` is None (all dimensions), an int or a tuple of ints; ``keepdim`` keeps the reduced
dimensions as size 1, as in torch. Backward re-expands the gradient over the reduced dimensions.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from groundup.backend import array_module
from groundup.function import Function


def normalize_dims(dim: Any, ndim: int, op: str = "reduce") -> tuple[int, ...]:
    """``dim`` as a sorted tuple of non-negative axes; None, and an empty tuple or list (torch's rule),
    mean every axis. A dim given twice is an error, as in torch."""
    dims = () if dim is None else (dim,) if isinstance(dim, int) else tuple(dim)
    if not dims:
        return tuple(range(ndim))
    out = []
    for d in dims:
        if not -max(ndim, 1) <= d < max(ndim, 1):
            raise IndexError(f"{op}: dim {d} is out of range for a tensor with {ndim} dimensions")
        if d % max(ndim, 1) in out:
            raise RuntimeError(f"{op}: dim {d} appears more than once in dims {dims}")
        out.append(d % max(ndim, 1))
    if ndim == 0:  # torch accepts dim 0 / -1 on a 0-d tensor: there is nothing to reduce
        return ()
    return tuple(sorted(out))


def _expand_back(g: Any, in_shape: tuple[int, ...], axes: tuple[int, ...], keepdim: bool) -> Any:
    """Reshape a reduced gradient so that it broadcasts against the input."""
    if not keepdim:
        shape = list(in_shape)
        for a in axes:
            shape[a] = 1
        g = g.reshape(shape) if in_shape else g
    return g


class Sum(Function):
    """Sum over ``dim``; the backward broadcasts the gradient back over the summed dims."""

    def forward(self, x, dim: Any = None, keepdim: bool = False):
        self.axes = normalize_dims(dim, x.ndim, "sum")
        self.keepdim, self.in_shape = keepdim, x.shape
        return x.sum(axis=self.axes, keepdims=keepdim) if x.ndim else x.copy()

    def backward(self, gz):
        xp = array_module(gz)
        g = _expand_back(gz, self.in_shape, self.axes, self.keepdim)
        return xp.broadcast_to(g, self.in_shape).copy() if g.shape != self.in_shape else g


class Mean(Function):
    """Mean over ``dim``: the gradient is spread evenly, 1 / count each."""

    def forward(self, x, dim: Any = None, keepdim: bool = False):
        self.axes = normalize_dims(dim, x.ndim, "mean")
        self.keepdim, self.in_shape = keepdim, x.shape
        self.count = 1
        for a in self.axes:
            self.count *= x.shape[a] if x.ndim else 1
        return x.mean(axis=self.axes, keepdims=keepdim) if x.ndim else x.copy()

    def backward(self, gz):
        xp = array_module(gz)
        g = _expand_back(gz, self.in_shape, self.axes, self.keepdim) / self.count
        return xp.broadcast_to(g, self.in_shape).astype(gz.dtype)


class MaxMin(Function):
    """max or min over ``dim``. NOTE: over all dims, ties share the gradient equally (as torch's
    ``max()``); over one dim, the gradient goes to the index that ``argmax`` reports."""

    def forward(self, x, dim: Any = None, keepdim: bool = False, mode: str = "max"):
        xp = array_module(x)
        self.axes = normalize_dims(dim, x.ndim, mode)
        if x.size == 0 and (x.ndim == 0 or any(x.shape[a] == 0 for a in self.axes) or not self.axes):
            # a reduction over a size-0 dim has no value; over other dims of an empty tensor it is empty (torch)
            raise RuntimeError(f"{mode}(): cannot reduce over a dim of size 0 (tensor of shape {tuple(x.shape)}, "
                               f"dim {dim})")
        self.keepdim, self.in_shape, self.dim, self.mode = keepdim, x.shape, dim, mode
        reduce = xp.max if mode == "max" else xp.min
        out = reduce(x, axis=self.axes, keepdims=True) if x.ndim else x.copy()
        self.share_ties = dim is None or isinstance(dim, (tuple, list)) or x.ndim == 0
        if self.share_ties:
            self.save_for_backward(x, out)
        else:
            arg = xp.argmax if mode == "max" else xp.argmin
            self.index = xp.expand_dims(arg(x, axis=self.axes[0]), self.axes[0])
            self.save_for_backward()
        return out if keepdim else out.reshape([n for i, n in enumerate(x.shape) if i not in self.axes])

    def backward(self, gz):
        xp = array_module(gz)
        g = _expand_back(gz, self.in_shape, self.axes, self.keepdim)
        if self.share_ties:
            x, out = self.saved
            hits = x == out
            count = hits.sum(axis=self.axes, keepdims=True)
            return xp.where(hits, g / count, 0).astype(gz.dtype)
        grad = xp.zeros(self.in_shape, dtype=gz.dtype)
        xp.put_along_axis(grad, self.index, g, axis=self.axes[0])
        return grad


class Var(Function):
    """Variance with Bessel's ``correction`` (torch's default 1); ``root=True`` gives the standard
    deviation in the same node. NOTE: where the deviation is 0 its gradient is 0, as torch's (the
    composite sqrt(var) gives 0 * inf = nan there)."""

    def forward(self, x, dim: Any = None, keepdim: bool = False, correction: float = 1, root: bool = False):
        xp = array_module(x)
        self.axes = normalize_dims(dim, x.ndim, "var")
        count = 1
        for a in self.axes:
            count *= x.shape[a]
        self.denom = max(count - correction, 0)
        with np.errstate(divide="ignore", invalid="ignore"):   # an empty dim's mean is nan, as torch
            centered = x - (x.mean(axis=self.axes, keepdims=True) if count else x.sum(axis=self.axes, keepdims=True))
        self.keepdim, self.in_shape = keepdim, x.shape
        with np.errstate(divide="ignore", invalid="ignore"):   # no degrees of freedom left: inf or nan, as torch
            out = (centered * centered).sum(axis=self.axes, keepdims=keepdim) / self.denom
        if root:
            out = xp.sqrt(out)
        self.save_for_backward(centered, out if root else None)
        return out

    def backward(self, gz):
        centered, std = self.saved
        if std is not None:                                  # d std = d var / (2 std), and 0 where std is 0
            xp = array_module(gz)
            gz = xp.where(std == 0, 0, gz / xp.where(std == 0, 1, 2 * std))
        g = _expand_back(gz, self.in_shape, self.axes, self.keepdim)
        with np.errstate(divide="ignore", invalid="ignore"):
            scale = float(np.float64(2.0) / self.denom)      # inf when no degrees of freedom are left
            return (g * centered * scale).astype(gz.dtype)


class LogSumExp(Function):
    """log(sum(exp(x))) over ``dim``, shifted by the max; the gradient is softmax(x)."""

    def forward(self, x, dim: Any = None, keepdim: bool = False):
        xp = array_module(x)
        self.axes = normalize_dims(dim, x.ndim, "logsumexp")
        self.keepdim, self.in_shape = keepdim, x.shape
        if x.size == 0:                          # an empty sum of exps: log 0 = -inf (torch), or an empty result
            out = xp.full([1 if i in self.axes else n for i, n in enumerate(x.shape)], -np.inf, dtype=x.dtype)
            self.save_for_backward(xp.zeros_like(x))
            return out if keepdim else out.reshape([n for i, n in enumerate(x.shape) if i not in self.axes])
        shift = xp.max(x, axis=self.axes, keepdims=True)
        shift = xp.where(xp.isfinite(shift), shift, 0)
        e = xp.exp(x - shift)
        total = e.sum(axis=self.axes, keepdims=True)
        out = xp.log(total) + shift
        self.save_for_backward(e / total)
        return out if keepdim else out.reshape([n for i, n in enumerate(x.shape) if i not in self.axes])

    def backward(self, gz):
        (softmax,) = self.saved
        return _expand_back(gz, self.in_shape, self.axes, self.keepdim) * softmax
