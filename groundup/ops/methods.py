"""Tensor's methods with torch's names: ``Tensor`` inherits them from ``TensorMethods`` below.

Each method is one line that calls an op function of this file (``x * y`` -> ``mul(x, y)``).
An op function does the Python-side work that the Functions should not see: it turns numbers
into constant tensors, applies torch's dtype promotion, parses torch's argument forms
(``reshape(2, 3)`` or ``reshape((2, 3))``), then calls one Function's ``apply``. The Functions
themselves (forward + backward over raw arrays) are in ``elementwise``, ``reduce``, ``movement``
and ``linalg``; ``groundup/ops/__init__.py`` is their catalogue. The shape, indexing and dtype op
functions (``reshape``, ``getitem``, ``to``, ...) are in ``shaping.py``.

This file imports nothing from ``tensor.py`` (which imports it), so an isinstance check reads
``is_tensor(value)`` (``shaping.py``): every Tensor is a ``TensorMethods``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from groundup import backend
from groundup.function import wrap_dim
from groundup.ops import elementwise as E
from groundup.ops import linalg
from groundup.ops import reduce as R
from groundup.ops.shaping import (  # noqa: F401 - shapes, indexing and dtype ops, re-exported for Tensor
    TensorBase,
    cast,
    chunk,
    constant,
    expand,
    flatten,
    gather,
    getitem,
    is_tensor,
    permute,
    raw_index,
    repeat,
    reshape,
    split,
    squeeze,
    to,
    transpose,
    tril,
    triu,
    unsqueeze,
    view,
)

if TYPE_CHECKING:
    from groundup.tensor import Tensor

Operand = Any  # a Tensor, a Python number or an array: the other side of a binary op


def as_tensor_like(value: Any, like: Tensor) -> Tensor:
    """Wrap a Python number or array as a constant on ``like``'s device, with torch's promotion:
    a Python float keeps a float tensor's dtype; an int or bool keeps an integer tensor's dtype."""
    if is_tensor(value):
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
        return constant(xp.asarray(value, dtype=dtype), like)
    arr = xp.asarray(value)
    if arr.dtype == np.float64 and not isinstance(value, np.ndarray):
        arr = arr.astype(backend.DEFAULT_FLOAT)
    return constant(arr, like)


def _promote(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """torch's rule for mixed kinds: an integer/bool tensor takes the float tensor's dtype."""
    ka, kb = a.dtype.kind, b.dtype.kind
    if ka == kb or (ka != "f" and kb != "f"):
        # a 0-d tensor does not widen a tensor with dims of its own kind (torch's rule; the cast is
        # recorded, so a 0-d tensor that requires grad gets its gradient in its own dtype)
        if a.dtype != b.dtype and a.ndim == 0 and b.ndim > 0 and ka == kb:
            a = a.type(b.dtype)
        elif a.dtype != b.dtype and b.ndim == 0 and a.ndim > 0 and ka == kb:
            b = b.type(a.dtype)
        return a, b
    if ka == "f":
        return a, b.type(a.dtype)
    return a.type(b.dtype), b


def _binary(fn: type, a: Operand, b: Operand) -> Tensor:
    """Make both sides tensors of one dtype, then apply ``fn``; name both shapes on a mismatch."""
    if not isinstance(a, TensorMethods):    # is_tensor(a), inlined: this runs for every binary op
        a = as_tensor_like(a, b)
    elif not isinstance(b, TensorMethods):
        b = as_tensor_like(b, a)
    if a.dtype != b.dtype:
        a, b = _promote(a, b)
    try:
        return fn.apply(a, b)
    except ValueError as e:
        if "broadcast" in str(e):
            raise RuntimeError(f"{fn.__name__.lower()}: shapes {a.shape} and {b.shape} do not broadcast") from None
        raise


# ------------------------------------------------------------------ arithmetic
def add(a: Operand, b: Operand, alpha: float = 1.0) -> Tensor:
    return _binary(E.Add, a, b if alpha == 1.0 else b * alpha)


def sub(a: Operand, b: Operand) -> Tensor:
    return _binary(E.Sub, a, b)


def mul(a: Operand, b: Operand) -> Tensor:
    return _binary(E.Mul, a, b)


def div(a: Operand, b: Operand) -> Tensor:
    if is_tensor(a) and a.dtype.kind != "f" and (not is_tensor(b) or b.dtype.kind != "f"):
        a = a.type(backend.DEFAULT_FLOAT)  # true division of integers gives floats, as in torch
    elif not is_tensor(a) and is_tensor(b) and b.dtype.kind != "f":
        b = b.type(backend.DEFAULT_FLOAT)
    return _binary(E.Div, a, b)


def pow(a: Operand, b: Operand) -> Tensor:
    if is_tensor(a) and isinstance(b, float) and a.dtype.kind != "f":
        a = a.type(backend.DEFAULT_FLOAT)  # int ** float is float32 in torch, not NumPy's float64
    elif is_tensor(a) and a.dtype.kind == "b" and isinstance(b, int) and not isinstance(b, bool):
        a = a.type(backend.int64)          # bool ** int is int64 in torch (NumPy: x * x stays bool for 2)
    if is_tensor(a) and isinstance(b, (int, float)) and not isinstance(b, bool):
        return E.PowScalar.apply(a, exponent=b)
    return _binary(E.Pow, a, b)


def rpow(a: Tensor, b: Operand) -> Tensor:
    """``b ** a`` (Python calls ``a.__rpow__(b)``)."""
    return _binary(E.Pow, b, a)


def matmul(a: Tensor, b: Operand) -> Tensor:
    if not is_tensor(b):
        b = as_tensor_like(b, a)
    if a.dtype != b.dtype:
        a, b = _promote(a, b)
    return linalg.MatMul.apply(a, b)


def maximum(a: Operand, b: Operand) -> Tensor:
    return _binary(E.Maximum, a, b)


def minimum(a: Operand, b: Operand) -> Tensor:
    return _binary(E.Minimum, a, b)


def where(cond: Any, a: Operand, b: Operand) -> Tensor:
    """``cond ? a : b`` elementwise; ``a`` and ``b`` may be numbers."""
    ref = a if is_tensor(a) else b
    if not is_tensor(ref):
        raise TypeError("where: at least one of the two values must be a Tensor")
    a, b = as_tensor_like(a, ref), as_tensor_like(b, ref)
    if a.dtype != b.dtype:
        a, b = _promote(a, b)
    c = cond.data if is_tensor(cond) else cond
    return E.Where.apply(a, b, cond=c.astype(bool, copy=False))


def clamp(x: Tensor, min: float | None = None, max: float | None = None) -> Tensor:
    if min is None and max is None:
        raise RuntimeError("clamp: at least one of min and max must be given (as torch)")
    if x.dtype.kind != "f" and (isinstance(min, float) or isinstance(max, float)):
        x = x.type(backend.DEFAULT_FLOAT)  # an integer tensor with a float bound is float32, as in torch
    if is_tensor(min) or is_tensor(max):
        # tensor bounds broadcast and get gradients as in torch: x where min <= x <= max, a bound where it wins
        out = x if min is None else where(x < min, min, x)
        return out if max is None else where(out > max, max, out)
    return E.Clamp.apply(x, min=min, max=max)


def _unary(fn: type, x: Tensor) -> Tensor:
    """Apply a unary maths Function; an integer tensor is first cast to float32, as in torch."""
    if x.dtype.kind != "f":
        x = x.type(backend.DEFAULT_FLOAT)
    return fn.apply(x)


def _raw(value: Operand) -> Any:
    """A tensor's array, or the value itself."""
    return value.data if is_tensor(value) else value


def _compare(op: str, a: Tensor, b: Operand) -> Tensor:
    """A comparison of the raw arrays: a boolean tensor outside the graph."""
    try:
        return constant(getattr(a.data, op)(_raw(b)), a)
    except ValueError as err:
        if "broadcast" not in str(err):
            raise
        other = tuple(b.shape) if is_tensor(b) else backend.array_module(a.data).shape(b)
        raise RuntimeError(f"comparison ({op.strip('_')}): shapes {a.shape} and {other} do not broadcast") from None


# ------------------------------------------------------------------ reductions
def sum_(x: Tensor, dim: Any = None, keepdim: bool = False, dtype: Any = None) -> Tensor:
    if dtype is not None:
        x = x.type(dtype)
    if x.dtype.kind in "biu" and dtype is None:               # torch sums bool and integers as int64
        x = x.type(backend.int64)
    return R.Sum.apply(x, dim=dim, keepdim=keepdim)


def mean(x: Tensor, dim: Any = None, keepdim: bool = False) -> Tensor:
    if x.dtype.kind != "f":
        raise RuntimeError(f"mean(): expected a floating point tensor, got dtype {x.dtype}")
    return R.Mean.apply(x, dim=dim, keepdim=keepdim)


class MinMaxResult(tuple):
    """(values, indices), also readable as ``.values`` and ``.indices`` like torch's result."""

    @property
    def values(self) -> Tensor:
        return self[0]

    @property
    def indices(self) -> Tensor:
        return self[1]


def max_or_min(x: Tensor, dim: Any = None, keepdim: bool = False, mode: str = "max") -> Any:
    """Over all dims: a 0-d tensor. Over ``dim``: (values, indices), as torch returns.
    ``x.max(other_tensor)`` is the elementwise ``maximum``, as in torch."""
    if is_tensor(dim):
        return maximum(x, dim) if mode == "max" else minimum(x, dim)
    values = R.MaxMin.apply(x, dim=dim, keepdim=keepdim, mode=mode)
    if dim is None:
        return values
    indices = argmax(x, dim, keepdim) if mode == "max" else argmin(x, dim, keepdim)
    return MinMaxResult((values, indices))


def amax(x: Tensor, dim: Any = None, keepdim: bool = False) -> Tensor:
    # NOTE: a tuple dim makes MaxMin share the gradient between ties, as torch's amax does.
    dim = dim if dim is None else ((dim,) if isinstance(dim, int) else tuple(dim))
    return R.MaxMin.apply(x, dim=dim, keepdim=keepdim, mode="max")


def _correction(op: str, x: Tensor, dim: Any, unbiased: Any, correction: float | None) -> tuple[Any, float]:
    """torch's forms of var / std: ``(dim, unbiased, keepdim)`` positionally, ``correction=`` by keyword
    only, and ``x.var(False)`` (a bool alone is ``unbiased``); returns (dim, correction)."""
    if x.dtype.kind != "f":
        raise RuntimeError(f"{op}(): expected a floating point tensor, got dtype {x.dtype} (as torch; x.float() first)")
    if isinstance(dim, bool):
        if unbiased is not None:
            raise TypeError(f"{op}: dim must be an int, a tuple of ints or None, got {dim!r}")
        dim, unbiased = None, dim
    if unbiased is not None and not isinstance(unbiased, bool):
        raise TypeError(f"{op}: unbiased (the second positional argument, as in torch) must be a bool, "
                        f"got {unbiased!r}; pass keepdim= and correction= by keyword")
    if unbiased is not None and correction is not None:
        raise TypeError(f"{op}: give unbiased or correction, not both")
    if correction is None:
        correction = 0 if unbiased is False else 1
    return dim, correction


def var(x: Tensor, dim: Any = None, unbiased: bool | None = None, keepdim: bool = False, *,
        correction: float | None = None) -> Tensor:
    """Variance over ``dim`` with torch's signature: ``x.var(dim, unbiased, keepdim)`` or
    ``x.var(dim, keepdim=..., correction=...)`` (Bessel's correction, 1 by default)."""
    dim, correction = _correction("var", x, dim, unbiased, correction)
    return R.Var.apply(x, dim=dim, keepdim=keepdim, correction=correction)


def std(x: Tensor, dim: Any = None, unbiased: bool | None = None, keepdim: bool = False, *,
        correction: float | None = None) -> Tensor:
    """Standard deviation, the square root of ``var`` (same signature; its gradient is 0 where it is 0,
    as torch's)."""
    dim, correction = _correction("std", x, dim, unbiased, correction)
    return R.Var.apply(x, dim=dim, keepdim=keepdim, correction=correction, root=True)


def logsumexp(x: Tensor, dim: Any = None, keepdim: bool = False) -> Tensor:
    if x.dtype.kind != "f":
        x = x.type(backend.DEFAULT_FLOAT)  # an integer tensor gives float32, as in torch (NumPy: float64)
    return R.LogSumExp.apply(x, dim=dim, keepdim=keepdim)


def _arg_reduce(x: Tensor, dim: int | None, keepdim: bool, mode: str) -> Tensor:
    """argmax / argmin as int64 indices, outside the graph (over all dims: the flat index)."""
    xp = backend.array_module(x.data)
    if dim is None:
        flat = xp.asarray(getattr(x.data, mode)(), dtype=backend.int64)
        return constant(flat.reshape((1,) * x.ndim) if keepdim else flat, x)
    if x.ndim == 0:                                 # torch (and NumPy) take dim 0 / -1 of a 0-d tensor; CuPy not
        wrap_dim(dim, 0, mode)
        return constant(xp.zeros((), dtype=backend.int64), x)
    return constant(getattr(xp, mode)(x.data, axis=dim, keepdims=keepdim).astype(backend.int64), x)


def argmax(x: Tensor, dim: int | None = None, keepdim: bool = False) -> Tensor:
    return _arg_reduce(x, dim, keepdim, "argmax")


def argmin(x: Tensor, dim: int | None = None, keepdim: bool = False) -> Tensor:
    return _arg_reduce(x, dim, keepdim, "argmin")


def masked_fill(x: Tensor, mask: Any, value: float) -> Tensor:
    m = mask.data if is_tensor(mask) else backend.array_module(x.data).asarray(mask)
    if m.dtype != bool:
        raise TypeError(f"masked_fill: mask must be boolean, got dtype {m.dtype}")
    try:
        np.broadcast_shapes(m.shape, x.shape)
    except ValueError:
        raise RuntimeError(f"masked_fill: mask shape {tuple(m.shape)} does not broadcast to {x.shape}") from None
    if is_tensor(value):
        if value.ndim != 0:
            raise RuntimeError(f"masked_fill: value must be a number or a 0-d tensor (as torch), got shape "
                               f"{value.shape}")
        if value.requires_grad:        # torch differentiates the value too: the sum of the gradient where masked
            return where(m, value.type(x.dtype) if x.dtype.kind == "f" else value, x)
        value = value.item()
    return E.MaskedFill.apply(x, mask=m, value=float(value) if x.dtype.kind == "f" else value)


def _softmax_input(op: str, x: Tensor, dim: int, dtype: Any) -> tuple[Tensor, int]:
    """The input cast to ``dtype`` (torch's argument) and ``dim`` wrapped; integers are refused, as torch."""
    if dtype is not None:
        x = x.type(dtype)
    if x.dtype.kind != "f":
        raise RuntimeError(f"{op}: expected a floating point tensor, got dtype {x.dtype}; pass dtype= or call "
                           f"x.float() first (as torch)")
    return x, wrap_dim(dim, x.ndim, op)


def softmax(x: Tensor, dim: int = -1, dtype: Any = None) -> Tensor:
    """exp(x) / sum(exp(x)) over ``dim``; ``dtype`` casts the input first, as torch. NOTE: a slice that is
    all -inf (every key masked) gives zeros, where torch gives NaN: a fully masked query then contributes
    nothing instead of poisoning every later sum with NaN."""
    from groundup.ops.fused import Softmax

    x, dim = _softmax_input("softmax", x, dim, dtype)
    if x.ndim == 0:                                     # one element: softmax 1, as torch
        return softmax(x.reshape(1), 0).reshape(())
    if x.data.size == 0:                                # nothing to normalise: an empty result, as torch
        return E.Clone.apply(x)
    return Softmax.apply(x, dim=dim)


def log_softmax(x: Tensor, dim: int = -1, dtype: Any = None) -> Tensor:
    """log(softmax(x)) over ``dim``, computed stably; ``dtype`` casts the input first, as torch."""
    from groundup.ops.fused import LogSoftmax

    x, dim = _softmax_input("log_softmax", x, dim, dtype)
    if x.ndim == 0:
        return log_softmax(x.reshape(1), 0).reshape(())
    if x.data.size == 0:
        return E.Clone.apply(x)
    return LogSoftmax.apply(x, dim=dim)


class TensorMethods(TensorBase):
    """The methods of ``Tensor`` that run an op, by torch's names. ``Tensor`` inherits this class.

    >>> import groundup as gu
    >>> x = gu.tensor([1.0, 2.0, 3.0], requires_grad=True)
    >>> (x * x).sum().backward()
    >>> x.grad
    tensor([2., 4., 6.])
    """

    __slots__ = ()

    # --- arithmetic (Python's operators call these; numbers become constants)
    def __add__(self, other: Operand) -> Tensor: return add(self, other)
    def __radd__(self, other: Operand) -> Tensor: return add(other, self)
    def add(self, other: Operand, alpha: float = 1.0) -> Tensor: return add(self, other, alpha)
    def __sub__(self, other: Operand) -> Tensor: return sub(self, other)
    def __rsub__(self, other: Operand) -> Tensor: return sub(other, self)
    def sub(self, other: Operand) -> Tensor: return sub(self, other)
    def __mul__(self, other: Operand) -> Tensor: return mul(self, other)
    def __rmul__(self, other: Operand) -> Tensor: return mul(other, self)
    def mul(self, other: Operand) -> Tensor: return mul(self, other)
    def __truediv__(self, other: Operand) -> Tensor: return div(self, other)
    def __rtruediv__(self, other: Operand) -> Tensor: return div(other, self)
    def div(self, other: Operand) -> Tensor: return div(self, other)
    def __pow__(self, exponent: Operand) -> Tensor: return pow(self, exponent)
    def __rpow__(self, base: Operand) -> Tensor: return rpow(self, base)
    def pow(self, exponent: Operand) -> Tensor: return pow(self, exponent)
    def __matmul__(self, other: Operand) -> Tensor: return matmul(self, other)
    def __rmatmul__(self, other: Operand) -> Tensor: return matmul(as_tensor_like(other, self), self)
    def matmul(self, other: Operand) -> Tensor: return matmul(self, other)
    def __neg__(self) -> Tensor: return E.Neg.apply(self)
    def neg(self) -> Tensor: return E.Neg.apply(self)
    def maximum(self, other: Operand) -> Tensor: return maximum(self, other)
    def minimum(self, other: Operand) -> Tensor: return minimum(self, other)

    def clamp(self, min: float | None = None, max: float | None = None) -> Tensor:
        """Limit values to [min, max]; ``x.clamp(min=0)`` is relu. ``clip`` is the same method.

        >>> import groundup as gu
        >>> gu.tensor([-2.0, 0.5, 3.0]).clamp(-1, 1)
        tensor([-1. ,  0.5,  1. ])
        """
        return clamp(self, min, max)

    clip = clamp

    # --- unary maths (an integer tensor is cast to float32 first)
    def exp(self) -> Tensor: return _unary(E.Exp, self)
    def log(self) -> Tensor: return _unary(E.Log, self)
    def sqrt(self) -> Tensor: return _unary(E.Sqrt, self)
    def rsqrt(self) -> Tensor: return _unary(E.Rsqrt, self)
    def tanh(self) -> Tensor: return _unary(E.Tanh, self)
    def sigmoid(self) -> Tensor: return _unary(E.Sigmoid, self)
    def relu(self) -> Tensor: return E.Relu.apply(self)
    def abs(self) -> Tensor: return E.Abs.apply(self)
    def softmax(self, dim: int = -1, dtype: Any = None) -> Tensor: return softmax(self, dim, dtype)
    def log_softmax(self, dim: int = -1, dtype: Any = None) -> Tensor: return log_softmax(self, dim, dtype)

    # --- comparisons and logic: boolean tensors outside the graph
    def __lt__(self, other: Operand) -> Tensor: return _compare("__lt__", self, other)
    def __le__(self, other: Operand) -> Tensor: return _compare("__le__", self, other)
    def __gt__(self, other: Operand) -> Tensor: return _compare("__gt__", self, other)
    def __ge__(self, other: Operand) -> Tensor: return _compare("__ge__", self, other)
    def __eq__(self, other: Operand) -> Tensor: return _compare("__eq__", self, other)  # type: ignore[override]
    def __ne__(self, other: Operand) -> Tensor: return _compare("__ne__", self, other)  # type: ignore[override]
    def __hash__(self) -> int: return id(self)  # by identity (``==`` is elementwise), so tensors can key dicts
    def lt(self, other: Operand) -> Tensor: return _compare("__lt__", self, other)
    def le(self, other: Operand) -> Tensor: return _compare("__le__", self, other)
    def gt(self, other: Operand) -> Tensor: return _compare("__gt__", self, other)
    def ge(self, other: Operand) -> Tensor: return _compare("__ge__", self, other)
    def eq(self, other: Operand) -> Tensor: return _compare("__eq__", self, other)
    def ne(self, other: Operand) -> Tensor: return _compare("__ne__", self, other)
    def __invert__(self) -> Tensor: return constant(~self.data, self)
    def __and__(self, other: Operand) -> Tensor: return constant(self.data & _raw(other), self)
    def __or__(self, other: Operand) -> Tensor: return constant(self.data | _raw(other), self)

    # --- reductions (``dim`` None = every dim; ``keepdim`` keeps them as size 1)
    def sum(self, dim: Any = None, keepdim: bool = False, dtype: Any = None) -> Tensor:
        """Sum over ``dim`` (an int, a tuple, or None for all). Integers sum as int64, as in torch.

        >>> import groundup as gu
        >>> gu.tensor([[1.0, 2.0], [3.0, 4.0]]).sum(dim=0)
        tensor([4., 6.])
        """
        return sum_(self, dim, keepdim, dtype)

    def mean(self, dim: Any = None, keepdim: bool = False) -> Tensor: return mean(self, dim, keepdim)

    def max(self, dim: Any = None, keepdim: bool = False) -> Any:
        """Over all dims a 0-d tensor; over ``dim`` a (values, indices) pair, as in torch.

        >>> import groundup as gu
        >>> gu.tensor([[1.0, 5.0], [7.0, 2.0]]).max(dim=1).indices
        tensor([1, 0])
        """
        return max_or_min(self, dim, keepdim, "max")

    def min(self, dim: Any = None, keepdim: bool = False) -> Any: return max_or_min(self, dim, keepdim, "min")
    def amax(self, dim: Any = None, keepdim: bool = False) -> Tensor: return amax(self, dim, keepdim)
    def var(self, dim: Any = None, unbiased: bool | None = None, keepdim: bool = False, *,
            correction: float | None = None) -> Tensor: return var(self, dim, unbiased, keepdim, correction=correction)
    def std(self, dim: Any = None, unbiased: bool | None = None, keepdim: bool = False, *,
            correction: float | None = None) -> Tensor: return std(self, dim, unbiased, keepdim, correction=correction)
    def logsumexp(self, dim: Any = None, keepdim: bool = False) -> Tensor: return logsumexp(self, dim, keepdim)
    def argmax(self, dim: int | None = None, keepdim: bool = False) -> Tensor: return argmax(self, dim, keepdim)
    def argmin(self, dim: int | None = None, keepdim: bool = False) -> Tensor: return argmin(self, dim, keepdim)

    # --- shapes (``x.reshape(2, 3)`` or ``x.reshape((2, 3))``) and indexing
    def reshape(self, *shape: Any) -> Tensor:
        """The same elements in a new shape; one dim may be -1.

        >>> import groundup as gu
        >>> gu.arange(6).reshape(2, -1).shape
        (2, 3)
        """
        return reshape(self, *shape)

    def view(self, *shape: Any) -> Tensor: return view(self, *shape)
    def view_as(self, other: Tensor) -> Tensor: return reshape(self, other.shape)
    def flatten(self, start_dim: int = 0, end_dim: int = -1) -> Tensor: return flatten(self, start_dim, end_dim)
    def permute(self, *dims: Any) -> Tensor: return permute(self, *dims)
    def transpose(self, dim0: int, dim1: int) -> Tensor: return transpose(self, dim0, dim1)
    def squeeze(self, dim: Any = None) -> Tensor: return squeeze(self, dim)
    def unsqueeze(self, dim: int) -> Tensor: return unsqueeze(self, dim)
    def expand(self, *shape: Any) -> Tensor: return expand(self, *shape)
    def expand_as(self, other: Tensor) -> Tensor: return expand(self, other.shape)
    def repeat(self, *repeats: Any) -> Tensor: return repeat(self, *repeats)
    def split(self, split_size_or_sections: int | list[int], dim: int = 0) -> tuple[Tensor, ...]:
        return split(self, split_size_or_sections, dim)
    def chunk(self, chunks: int, dim: int = 0) -> tuple[Tensor, ...]: return chunk(self, chunks, dim)
    def contiguous(self) -> Tensor:
        """Itself when its memory is laid out row-major, else a row-major copy in the graph (as torch: a
        write into the copy must not reach the tensor it was made from)."""
        return self if self.data.flags.c_contiguous else E.Clone.apply(self)
    def __getitem__(self, index: Any) -> Tensor: return getitem(self, index)
    def masked_fill(self, mask: Any, value: float) -> Tensor: return masked_fill(self, mask, value)
    def tril(self, diagonal: int = 0) -> Tensor: return tril(self, diagonal)
    def triu(self, diagonal: int = 0) -> Tensor: return triu(self, diagonal)
    def gather(self, dim: int, index: Any) -> Tensor: return gather(self, dim, index)

    @property
    def T(self) -> Tensor:
        """Reverse all dimensions (``x.permute(*reversed(range(x.ndim)))``)."""
        return permute(self, *reversed(range(self.ndim)))

    @property
    def mT(self) -> Tensor:
        """Transpose the last two dimensions."""
        return transpose(self, -2, -1)

    # --- dtype and device (differentiable: the gradient is cast or moved back)
    def to(self, device_or_dtype: Any = None, dtype: Any = None) -> Tensor:
        """``x.to("cuda")``, ``x.to("cpu")``, ``x.to(gu.float64)`` or ``x.to("cuda", gu.float64)``."""
        return to(self, device_or_dtype, dtype)

    def cpu(self) -> Tensor: return to(self, "cpu")
    def cuda(self) -> Tensor: return to(self, "cuda")
    def type(self, dtype: Any) -> Tensor: return cast(self, dtype)
    def float(self) -> Tensor: return cast(self, backend.float32)
    def double(self) -> Tensor: return cast(self, backend.float64)
    def long(self) -> Tensor: return cast(self, backend.int64)
    def int(self) -> Tensor: return cast(self, backend.int32)
    def bool(self) -> Tensor: return cast(self, backend.bool_)
    def half(self) -> Tensor: return cast(self, backend.float16)
    def clone(self) -> Tensor: return E.Clone.apply(self)

    # --- in-place ops: not recorded in the graph; ``_bump_version`` refuses them on graph tensors
    # and lets the engine catch an array changed after a Function saved it.
    def __setitem__(self, index: Any, value: Any) -> None:
        from groundup.tensor import is_grad_enabled

        if is_tensor(value) and value.requires_grad and is_grad_enabled():
            # NOTE: writing into a tensor is not recorded in the graph, so the value's gradient would be
            # lost (torch records it); refuse rather than give a silently wrong gradient.
            raise RuntimeError("t[index] = value: the value requires grad, and writing into a tensor is not "
                               "recorded by autograd; build the result out of place instead (gu.stack, gu.cat, "
                               "gu.where or masked_fill), or write under gu.no_grad() if no gradient is wanted")
        self._bump_version()
        self.data[raw_index(index)] = value.data if is_tensor(value) else value

    def copy_(self, src: Any) -> Tensor:
        self._bump_version()
        self.data[...] = src.data if is_tensor(src) else src
        return self

    def fill_(self, value: float) -> Tensor:
        self._bump_version()
        self.data.fill(value)
        return self

    def zero_(self) -> Tensor:
        return self.fill_(0)

    def add_(self, other: Any, alpha: float = 1.0) -> Tensor:
        self._bump_version()
        other = other.data if is_tensor(other) else other
        self.data += other * alpha if alpha != 1.0 else other
        return self

    def sub_(self, other: Any) -> Tensor:
        return self.add_(other, alpha=-1.0)

    def mul_(self, other: Any) -> Tensor:
        self._bump_version()
        self.data *= other.data if is_tensor(other) else other
        return self

    def div_(self, other: Any) -> Tensor:
        self._bump_version()
        self.data /= other.data if is_tensor(other) else other
        return self

    def clamp_(self, min: float | None = None, max: float | None = None) -> Tensor:
        self._bump_version()
        backend.array_module(self.data).clip(self.data, min, max, out=self.data)
        return self

    def masked_fill_(self, mask: Any, value: float) -> Tensor:
        self._bump_version()
        mask = mask.data if is_tensor(mask) else mask
        self.data[...] = backend.array_module(self.data).where(mask, value, self.data)
        return self

    def normal_(self, mean: float = 0.0, std: float = 1.0) -> Tensor:
        from groundup import random

        self._bump_version()
        self.data[...] = random.normal_array(self.shape, mean, std, self.dtype, self.device)
        return self

    def uniform_(self, low: float = 0.0, high: float = 1.0) -> Tensor:
        from groundup import random

        self._bump_version()
        self.data[...] = random.uniform_array(self.shape, low, high, self.dtype, self.device)
        return self
