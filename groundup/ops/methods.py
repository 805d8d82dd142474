"""Tensor methods with torch's names, built on the primitive Functions.

``tensor.py`` binds every entry of ``TENSOR_METHODS`` onto ``Tensor``; keeping them here keeps the
engine file about the graph alone.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from groundup import backend
from groundup.ops import elementwise as E
from groundup.ops import linalg
from groundup.ops import movement as M
from groundup.ops import reduce as R
from groundup.tensor import Tensor, _raw_index


def as_tensor_like(value: Any, like: Tensor) -> Tensor:
    """Wrap a Python number or array as a constant on ``like``'s device, with torch's promotion:
    a Python float keeps a float tensor's dtype; an int or bool keeps an integer tensor's dtype."""
    if isinstance(value, Tensor):
        return value
    xp = backend.array_module(like.data)
    if isinstance(value, (bool, int, float)):
        kind = like.dtype.kind
        if kind == "f":
            dtype = like.dtype
        elif isinstance(value, float):
            dtype = backend.DEFAULT_FLOAT
        elif isinstance(value, bool) and kind == "b":
            dtype = like.dtype
        else:
            dtype = like.dtype if kind in "iu" else backend.int64
        return Tensor._make(xp.asarray(value, dtype=dtype), False, None)
    arr = xp.asarray(value.data if isinstance(value, Tensor) else value)
    if arr.dtype == np.float64 and not isinstance(value, np.ndarray):
        arr = arr.astype(backend.DEFAULT_FLOAT)
    return Tensor._make(arr, False, None)


def _promote(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """torch's rule for mixed kinds: an integer/bool tensor takes the float tensor's dtype."""
    ka, kb = a.dtype.kind, b.dtype.kind
    if ka == kb or (ka != "f" and kb != "f"):
        if a.dtype != b.dtype and a.ndim == 0 and not a.requires_grad and ka == kb:
            a = a.type(b.dtype)  # a 0-d constant does not widen a tensor (torch's "wrapped number")
        elif a.dtype != b.dtype and b.ndim == 0 and not b.requires_grad and ka == kb:
            b = b.type(a.dtype)
        return a, b
    if ka == "f":
        return a, b.type(a.dtype)
    return a.type(b.dtype), b


def _binary(fn: type, a: Any, b: Any) -> Tensor:
    if not isinstance(a, Tensor):
        a = as_tensor_like(a, b)
    elif not isinstance(b, Tensor):
        b = as_tensor_like(b, a)
    if a.dtype != b.dtype:
        a, b = _promote(a, b)
    try:
        return fn.apply(a, b)
    except ValueError as e:
        if "broadcast" in str(e):
            raise RuntimeError(f"{fn.__name__.lower()}: shapes {a.shape} and {b.shape} do not broadcast") from None
        raise


def add(a, b, alpha: float = 1.0):
    return _binary(E.Add, a, b if alpha == 1.0 else b * alpha)


def sub(a, b):
    return _binary(E.Sub, a, b)


def mul(a, b):
    return _binary(E.Mul, a, b)


def div(a, b):
    if isinstance(a, Tensor) and a.dtype.kind != "f" and (not isinstance(b, Tensor) or b.dtype.kind != "f"):
        a = a.type(backend.DEFAULT_FLOAT)  # true division of integers gives floats, as in torch
    elif not isinstance(a, Tensor) and isinstance(b, Tensor) and b.dtype.kind != "f":
        b = b.type(backend.DEFAULT_FLOAT)
    return _binary(E.Div, a, b)


def pow(a, b):
    if isinstance(a, Tensor) and isinstance(b, float) and a.dtype.kind != "f":
        a = a.type(backend.DEFAULT_FLOAT)  # int ** float is float32 in torch, not NumPy's float64
    if isinstance(a, Tensor) and isinstance(b, (int, float)) and not isinstance(b, bool):
        return E.PowScalar.apply(a, exponent=b)
    return _binary(E.Pow, a, b)


def rpow(a, b):
    return _binary(E.Pow, b, a)


def matmul(a, b):
    if not isinstance(b, Tensor):
        b = as_tensor_like(b, a)
    if a.dtype != b.dtype:
        a, b = _promote(a, b)
    return linalg.MatMul.apply(a, b)


def _compare(op: str):
    def compare(a, b):
        other = b.data if isinstance(b, Tensor) else b
        return Tensor._make(getattr(a.data, op)(other), False, None)

    compare.__name__ = op.strip("_")
    return compare


def maximum(a, b):
    return _binary(E.Maximum, a, b)


def minimum(a, b):
    return _binary(E.Minimum, a, b)


def where(cond, a, b):
    """``cond ? a : b`` elementwise; ``a`` and ``b`` may be numbers."""
    ref = a if isinstance(a, Tensor) else b
    if not isinstance(ref, Tensor):
        raise TypeError("where: at least one of the two values must be a Tensor")
    a, b = as_tensor_like(a, ref), as_tensor_like(b, ref)
    if a.dtype != b.dtype:
        a, b = _promote(a, b)
    c = cond.data if isinstance(cond, Tensor) else cond
    return E.Where.apply(a, b, cond=c.astype(bool, copy=False))


def clamp(x, min=None, max=None):
    return E.Clamp.apply(x, min=min, max=max)


# ------------------------------------------------------------------ reductions
def sum_(x, dim=None, keepdim=False, dtype=None):
    if dtype is not None:
        x = x.type(dtype)
    if x.dtype.kind in "bi" and dtype is None:
        x = x.type(backend.int64)
    return R.Sum.apply(x, dim=dim, keepdim=keepdim)


def mean(x, dim=None, keepdim=False):
    if x.dtype.kind != "f":
        raise RuntimeError(f"mean(): expected a floating point tensor, got dtype {x.dtype}")
    return R.Mean.apply(x, dim=dim, keepdim=keepdim)


def _max_or_min(mode: str):
    def reduce(x, dim=None, keepdim=False):
        """Over all dims: a 0-d tensor. Over ``dim``: (values, indices), as torch returns."""
        if isinstance(dim, Tensor):
            return maximum(x, dim) if mode == "max" else minimum(x, dim)
        values = R.MaxMin.apply(x, dim=dim, keepdim=keepdim, mode=mode)
        if dim is None:
            return values
        indices = argmax(x, dim, keepdim) if mode == "max" else argmin(x, dim, keepdim)
        return MinMaxResult((values, indices))

    reduce.__name__ = mode
    return reduce


class MinMaxResult(tuple):
    """(values, indices), also readable as ``.values`` and ``.indices`` like torch's result."""

    @property
    def values(self) -> Tensor:
        return self[0]

    @property
    def indices(self) -> Tensor:
        return self[1]


def amax(x, dim=None, keepdim=False):
    # NOTE: a tuple dim makes MaxMin share the gradient between ties, as torch's amax does.
    dim = dim if dim is None else ((dim,) if isinstance(dim, int) else tuple(dim))
    return R.MaxMin.apply(x, dim=dim, keepdim=keepdim, mode="max")


def var(x, dim=None, keepdim=False, correction=1, unbiased=None):
    if unbiased is not None:
        correction = 1 if unbiased else 0
    return R.Var.apply(x, dim=dim, keepdim=keepdim, correction=correction)


def std(x, dim=None, keepdim=False, correction=1, unbiased=None):
    return var(x, dim, keepdim, correction, unbiased).sqrt()


def logsumexp(x, dim=None, keepdim=False):
    return R.LogSumExp.apply(x, dim=dim, keepdim=keepdim)


def argmax(x, dim=None, keepdim=False):
    xp = backend.array_module(x.data)
    if dim is None:
        flat = xp.asarray(x.data.argmax(), dtype=backend.int64)
        return Tensor._make(flat.reshape((1,) * x.ndim) if keepdim else flat, False, None)
    return Tensor._make(xp.argmax(x.data, axis=dim, keepdims=keepdim).astype(backend.int64), False, None)


def argmin(x, dim=None, keepdim=False):
    xp = backend.array_module(x.data)
    if dim is None:
        flat = xp.asarray(x.data.argmin(), dtype=backend.int64)
        return Tensor._make(flat.reshape((1,) * x.ndim) if keepdim else flat, False, None)
    return Tensor._make(xp.argmin(x.data, axis=dim, keepdims=keepdim).astype(backend.int64), False, None)


# ------------------------------------------------------------------ shapes
def _shape_args(shape: tuple) -> tuple[int, ...]:
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        return tuple(shape[0])
    return tuple(int(s) for s in shape)


def reshape(x, *shape):
    shape = _shape_args(shape)
    if shape == x.shape:
        return x
    return M.Reshape.apply(x, shape=shape)


def view(x, *shape):
    if len(shape) == 1 and not isinstance(shape[0], (int, tuple, list)):
        return x.type(shape[0])
    return reshape(x, *shape)


def flatten(x, start_dim=0, end_dim=-1):
    if x.ndim == 0:
        return reshape(x, 1)
    start, end = start_dim % x.ndim, end_dim % x.ndim
    size = 1
    for n in x.shape[start:end + 1]:
        size *= n
    return reshape(x, x.shape[:start] + (size,) + x.shape[end + 1:])


def permute(x, *dims):
    return M.Permute.apply(x, dims=_shape_args(dims))


def transpose(x, dim0, dim1):
    dims = list(range(x.ndim))
    dims[dim0], dims[dim1] = dims[dim1], dims[dim0]
    return M.Permute.apply(x, dims=tuple(dims))


def squeeze(x, dim=None):
    if dim is None:
        return reshape(x, tuple(n for n in x.shape if n != 1))
    dims = {d % max(x.ndim, 1) for d in ((dim,) if isinstance(dim, int) else dim)}
    return reshape(x, tuple(n for i, n in enumerate(x.shape) if not (i in dims and n == 1)))


def unsqueeze(x, dim):
    dim = dim % (x.ndim + 1)
    return reshape(x, x.shape[:dim] + (1,) + x.shape[dim:])


def expand(x, *shape):
    shape = _shape_args(shape)
    return M.Expand.apply(x, shape=shape)


def expand_as(x, other):
    return expand(x, other.shape)


def repeat(x, *repeats):
    return M.Repeat.apply(x, repeats=_shape_args(repeats))


def split(x, split_size_or_sections, dim=0):
    """Split into chunks of ``split_size`` (an int) or of the given sizes (a list), like torch."""
    n = x.shape[dim]
    if isinstance(split_size_or_sections, int):
        sizes = [split_size_or_sections] * (n // split_size_or_sections)
        if n % split_size_or_sections:
            sizes.append(n % split_size_or_sections)
    else:
        sizes = list(split_size_or_sections)
        if sum(sizes) != n:
            raise RuntimeError(f"split: sizes {sizes} do not sum to dim {dim}'s size {n}")
    out, start = [], 0
    dim = dim % x.ndim
    for size in sizes:
        index = (slice(None),) * dim + (slice(start, start + size),)
        out.append(x[index])
        start += size
    return tuple(out)


def chunk(x, chunks, dim=0):
    n = x.shape[dim]
    size = -(-n // chunks)
    return split(x, size, dim)


def getitem(x, index):
    raw = _raw_index(index)
    if isinstance(raw, np.ndarray) and raw.dtype == bool and raw.shape != x.shape[: raw.ndim]:
        raise IndexError(f"boolean mask of shape {raw.shape} does not match tensor shape {x.shape}")
    return M.GetItem.apply(x, index=raw)


def masked_fill(x, mask, value):
    m = mask.data if isinstance(mask, Tensor) else mask
    if m.dtype != bool:
        raise TypeError(f"masked_fill: mask must be boolean, got dtype {m.dtype}")
    try:
        np.broadcast_shapes(m.shape, x.shape)
    except ValueError:
        raise RuntimeError(f"masked_fill: mask shape {tuple(m.shape)} does not broadcast to {x.shape}") from None
    return E.MaskedFill.apply(x, mask=m, value=float(value) if x.dtype.kind == "f" else value)


def tril(x, diagonal=0):
    return M.Triangle.apply(x, diagonal=diagonal, upper=False)


def triu(x, diagonal=0):
    return M.Triangle.apply(x, diagonal=diagonal, upper=True)


def gather(x, dim, index):
    idx = index.data if isinstance(index, Tensor) else index
    return M.Gather.apply(x, index=idx, dim=dim)


def _unary(fn: type):
    def op(x):
        if x.dtype.kind != "f":
            x = x.type(backend.DEFAULT_FLOAT)
        return fn.apply(x)

    op.__name__ = fn.__name__.lower()
    return op


def softmax(x, dim=-1):
    from groundup.ops.fused import Softmax

    return Softmax.apply(x, dim=dim)


def log_softmax(x, dim=-1):
    from groundup.ops.fused import LogSoftmax

    return LogSoftmax.apply(x, dim=dim)


def _neg(x):
    return E.Neg.apply(x)


def _relu(x):
    return E.Relu.apply(x)


def _abs(x):
    return E.Abs.apply(x)


TENSOR_METHODS: dict[str, Any] = {
    "__add__": add, "__radd__": lambda a, b: add(b, a), "add": add,
    "__sub__": sub, "__rsub__": lambda a, b: sub(b, a), "sub": sub,
    "__mul__": mul, "__rmul__": lambda a, b: mul(b, a), "mul": mul,
    "__truediv__": div, "__rtruediv__": lambda a, b: div(b, a), "div": div,
    "__pow__": pow, "__rpow__": rpow, "pow": pow,
    "__matmul__": matmul, "__rmatmul__": lambda a, b: matmul(as_tensor_like(b, a), a), "matmul": matmul,
    "__neg__": _neg, "neg": _neg,
    "__getitem__": getitem,
    "__lt__": _compare("__lt__"), "__le__": _compare("__le__"), "__gt__": _compare("__gt__"),
    "__ge__": _compare("__ge__"), "__eq__": _compare("__eq__"), "__ne__": _compare("__ne__"),
    "__invert__": lambda x: Tensor._make(~x.data, False, None),
    "__and__": lambda a, b: Tensor._make(a.data & (b.data if isinstance(b, Tensor) else b), False, None),
    "__or__": lambda a, b: Tensor._make(a.data | (b.data if isinstance(b, Tensor) else b), False, None),
    "eq": _compare("__eq__"), "ne": _compare("__ne__"), "lt": _compare("__lt__"),
    "le": _compare("__le__"), "gt": _compare("__gt__"), "ge": _compare("__ge__"),
    "exp": _unary(E.Exp), "log": _unary(E.Log), "sqrt": _unary(E.Sqrt), "rsqrt": _unary(E.Rsqrt),
    "tanh": _unary(E.Tanh), "sigmoid": _unary(E.Sigmoid), "relu": _relu, "abs": _abs,
    "clamp": clamp, "clip": clamp, "maximum": maximum, "minimum": minimum,
    "sum": sum_, "mean": mean, "max": _max_or_min("max"), "min": _max_or_min("min"), "amax": amax,
    "var": var, "std": std, "logsumexp": logsumexp, "argmax": argmax, "argmin": argmin,
    "reshape": reshape, "view": view, "flatten": flatten, "permute": permute, "transpose": transpose,
    "squeeze": squeeze, "unsqueeze": unsqueeze, "expand": expand, "expand_as": expand_as,
    "repeat": repeat, "split": split, "chunk": chunk, "view_as": lambda x, o: reshape(x, o.shape),
    "masked_fill": masked_fill, "tril": tril, "triu": triu, "gather": gather,
    "softmax": softmax, "log_softmax": log_softmax,
    "contiguous": lambda x: x,
}
