"""torch's pointwise ops as op functions and Tensor methods: ``Tensor`` inherits ``PointwiseMethods``.

Trigonometry, log1p / expm1, erf, rounding, sign, the nan / inf tests, any / all, atan2, hypot,
logaddexp, lerp, addcmul / addcdiv, floor division and remainders (``//``, ``%``). As in
``methods.py``, an op function does the Python-side work (numbers to constants, torch's dtype
rules, argument checks naming the op) and calls one Function of ``pointwise.py``, or composes
existing ops where that is exact (square, reciprocal, frac, hypot, logaddexp, lerp, addcmul, addcdiv).

dtype rules (torch's): maths on an integer tensor gives float32; rounding and sign keep an
integer tensor as it is; ``//``, ``%`` and ``fmod`` on integers stay integers and refuse a zero
divisor; bool results (isnan, any, ...) and integer results are outside the graph.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from groundup import backend
from groundup.function import wrap_dim
from groundup.ops import pointwise as P
from groundup.ops.methods import Operand, _promote, _unary, as_tensor_like, div, maximum, pow, where
from groundup.ops.shaping import TensorBase, constant, is_tensor

if TYPE_CHECKING:
    from groundup.tensor import Tensor


# ----------------------------------------------------------------------------- argument checks
def _tensor(op: str, x: Any) -> Tensor:
    if not is_tensor(x):
        raise TypeError(f"{op}: expected a Tensor, got {type(x).__name__}")
    return x


def _pair(op: str, a: Operand, b: Operand) -> tuple[Tensor, Tensor]:
    """Both operands as tensors of one dtype (torch's promotion) whose shapes broadcast."""
    if not is_tensor(a) and not is_tensor(b):
        raise TypeError(f"{op}: expected at least one Tensor, got {type(a).__name__} and {type(b).__name__}")
    a = as_tensor_like(a, b) if not is_tensor(a) else a
    b = as_tensor_like(b, a) if not is_tensor(b) else b
    if a.dtype != b.dtype:
        a, b = _promote(a, b)
    try:
        np.broadcast_shapes(a.shape, b.shape)
    except ValueError:
        raise RuntimeError(f"{op}: shapes {a.shape} and {b.shape} do not broadcast") from None
    return a, b


def _require_float(op: str, *tensors: Tensor) -> None:
    for t in tensors:
        if t.dtype.kind != "f":
            raise RuntimeError(f"{op}: expected floating point tensors, got dtype {t.dtype} (as torch; call "
                               f".float() first)")


# ----------------------------------------------------------------------------- unary maths (ints -> float32)
def sin(x: Tensor) -> Tensor: return _unary(P.Sin, _tensor("sin", x))
def cos(x: Tensor) -> Tensor: return _unary(P.Cos, _tensor("cos", x))
def tan(x: Tensor) -> Tensor: return _unary(P.Tan, _tensor("tan", x))
def asin(x: Tensor) -> Tensor: return _unary(P.Asin, _tensor("asin", x))
def acos(x: Tensor) -> Tensor: return _unary(P.Acos, _tensor("acos", x))
def atan(x: Tensor) -> Tensor: return _unary(P.Atan, _tensor("atan", x))
def sinh(x: Tensor) -> Tensor: return _unary(P.Sinh, _tensor("sinh", x))
def cosh(x: Tensor) -> Tensor: return _unary(P.Cosh, _tensor("cosh", x))
def log1p(x: Tensor) -> Tensor: return _unary(P.Log1p, _tensor("log1p", x))
def expm1(x: Tensor) -> Tensor: return _unary(P.Expm1, _tensor("expm1", x))
def erf(x: Tensor) -> Tensor: return _unary(P.Erf, _tensor("erf", x))


def square(x: Tensor) -> Tensor:
    """x * x as one PowScalar node; integers stay integers, bool becomes int64 (as torch)."""
    return pow(_tensor("square", x), 2)


def reciprocal(x: Tensor) -> Tensor:
    """1 / x as one PowScalar node; an integer tensor gives float32 (as torch)."""
    x = _tensor("reciprocal", x)
    return pow(x if x.dtype.kind == "f" else x.type(backend.DEFAULT_FLOAT), -1)


# ----------------------------------------------------------------------------- rounding and sign (zero gradient)
def _step(mode: str, x: Tensor, decimals: int = 0) -> Tensor:
    x = _tensor(mode, x)
    if x.dtype.kind == "f":
        return P.PiecewiseConstant.apply(x, mode=mode, decimals=decimals)
    xp = backend.array_module(x.data)
    if mode == "sign" and x.dtype.kind != "b":
        return constant(xp.sign(x.data), x)
    if mode == "round" and decimals < 0:
        return constant(xp.round(x.data, decimals), x)
    return constant(x.data.copy(), x)                           # an integer is already whole: itself, as torch


def floor(x: Tensor) -> Tensor: return _step("floor", x)
def ceil(x: Tensor) -> Tensor: return _step("ceil", x)
def trunc(x: Tensor) -> Tensor: return _step("trunc", x)
def sign(x: Tensor) -> Tensor: return _step("sign", x)


def round_(x: Tensor, decimals: int = 0) -> Tensor:
    """Round half to even (as torch and NumPy) to ``decimals`` places; the gradient is 0."""
    if not isinstance(decimals, int | np.integer) or isinstance(decimals, bool):
        raise TypeError(f"round: decimals must be an int, got {type(decimals).__name__}")
    return _step("round", x, int(decimals))


def frac(x: Tensor) -> Tensor:
    """x - trunc(x), with the sign of x; the gradient is 1 (trunc's is 0)."""
    x = _tensor("frac", x)
    if x.dtype.kind != "f":
        raise RuntimeError(f"frac: not defined for dtype {x.dtype} (as torch); call .float() first")
    return x - trunc(x)


# ----------------------------------------------------------------------------- tests and logic (bool, no graph)
def _test(op: str, x: Tensor) -> Tensor:
    x = _tensor(op, x)
    return constant(getattr(backend.array_module(x.data), op)(x.data), x)


def isnan(x: Tensor) -> Tensor: return _test("isnan", x)
def isinf(x: Tensor) -> Tensor: return _test("isinf", x)
def isfinite(x: Tensor) -> Tensor: return _test("isfinite", x)


def _any_or_all(op: str, x: Tensor, dim: Any, keepdim: bool) -> Tensor:
    x = _tensor(op, x)
    axes = None
    if dim is not None:
        dims = dim if isinstance(dim, tuple | list) else (dim,)
        axes = tuple(wrap_dim(d, x.ndim, op) for d in dims)
        if len(set(axes)) != len(axes):
            raise RuntimeError(f"{op}: dim {dim} names a dimension twice")
        axes = tuple(a for a in axes if a < x.ndim)             # a 0-d tensor's dim 0 reduces nothing
    out = getattr(backend.array_module(x.data), op)(x.data, axis=axes, keepdims=keepdim)
    return constant(out.astype(backend.bool_, copy=False), x)


def any_(x: Tensor, dim: Any = None, keepdim: bool = False) -> Tensor:
    """True where any element over ``dim`` (an int, a tuple, or None for all) is nonzero."""
    return _any_or_all("any", x, dim, keepdim)


def all_(x: Tensor, dim: Any = None, keepdim: bool = False) -> Tensor:
    """True where every element over ``dim`` (an int, a tuple, or None for all) is nonzero."""
    return _any_or_all("all", x, dim, keepdim)


# ----------------------------------------------------------------------------- binary maths
def atan2(input: Operand, other: Operand) -> Tensor:
    """The angle of the point (other, input), i.e. atan(input / other) in the right quadrant."""
    y, x = _pair("atan2", input, other)
    if y.dtype.kind != "f":
        y, x = y.type(backend.DEFAULT_FLOAT), x.type(backend.DEFAULT_FLOAT)
    return P.Atan2.apply(y, x)


def hypot(input: Operand, other: Operand) -> Tensor:
    """sqrt(input^2 + other^2), scaled by a constant s = max(|input|, |other|) so that the squares cannot
    overflow: s * sqrt((input / s)^2 + (other / s)^2). With s a constant the gradient is exact,
    input / hypot; at (0, 0) it is nan, as torch's."""
    a, b = _pair("hypot", input, other)
    _require_float("hypot", a, b)
    xp = backend.array_module(a.data)
    scale = xp.maximum(xp.abs(a.data), xp.abs(b.data))
    scale = xp.where((scale == 0) | ~xp.isfinite(scale), xp.ones((), dtype=scale.dtype), scale)
    scale = constant(scale, a)                                  # |a / scale| <= 1: no overflow, even for subnormals
    return (square(a / scale) + square(b / scale)).sqrt() * scale


def logaddexp(input: Operand, other: Operand) -> Tensor:
    """log(e^a + e^b), stably: max(a, b) + log1p(e^-|a - b|). The gradient is sigmoid(a - b) for a
    (the tie rule of maximum and abs's 0 at 0 give 1/2 each at a == b, the true value)."""
    a, b = _pair("logaddexp", input, other)
    _require_float("logaddexp", a, b)
    xp = backend.array_module(a.data)
    apart = a, b
    if bool(xp.isinf(a.data).any()) and bool(xp.isinf(b.data).any()):
        # NOTE: a == b == +-inf would make a - b = nan; where they are equal, |a - b| is 0 and so is its
        # gradient (abs's rule at 0), so compare zeros there instead (torch gives +-inf too)
        same = a.data == b.data
        apart = where(same, 0.0, a), where(same, 0.0, b)
    return maximum(a, b) + log1p((-(apart[0] - apart[1]).abs()).exp())


def lerp(input: Tensor, end: Operand, weight: Operand) -> Tensor:
    """input + weight * (end - input); ``weight`` a number or a tensor (all broadcast)."""
    start, end = _pair("lerp", _tensor("lerp", input), end)
    _require_float("lerp", start, end)
    if is_tensor(weight):
        _require_float("lerp", weight)
        _pair("lerp", start, weight)
    elif not isinstance(weight, int | float) or isinstance(weight, bool):
        raise TypeError(f"lerp: weight must be a number or a Tensor, got {type(weight).__name__}")
    return start + weight * (end - start)


def addcmul(input: Tensor, tensor1: Operand, tensor2: Operand, *, value: float = 1) -> Tensor:
    """input + value * tensor1 * tensor2 (all broadcast)."""
    left, right = _pair("addcmul", tensor1, tensor2)
    term = left * right
    _pair("addcmul", _tensor("addcmul", input), term)
    return input + (term if value == 1 else term * value)


def addcdiv(input: Tensor, tensor1: Operand, tensor2: Operand, *, value: float = 1) -> Tensor:
    """input + value * tensor1 / tensor2 (all broadcast); integer tensor1 and tensor2 are refused, as torch."""
    numerator, denominator = _pair("addcdiv", tensor1, tensor2)
    if numerator.dtype.kind != "f":
        raise RuntimeError("addcdiv: integer tensor1 / tensor2 is not supported (as torch); pass float tensors")
    term = div(numerator, denominator)
    _pair("addcdiv", _tensor("addcdiv", input), term)
    return input + (term if value == 1 else term * value)


# ----------------------------------------------------------------------------- floor division and remainders
def _divide(op: str, a: Operand, b: Operand, kernel: str) -> Tensor:
    """Integers: xp's kernel on the raw arrays (outside the graph, the dtype kept); floats: a Function."""
    a, b = _pair(op, a, b)
    if a.dtype.kind == "f":
        if kernel == "floor_divide":
            return P.FloorDivide.apply(a, b)
        return P.Remainder.apply(a, b, mode=kernel)
    P.check_int_divisor(op, b.data)
    return constant(getattr(backend.array_module(a.data), kernel)(a.data, b.data), a)


def floor_divide(input: Operand, other: Operand) -> Tensor:
    """floor(input / other) (``//``); integers stay integers. No gradient: torch has none (see FloorDivide)."""
    return _divide("floor_divide", input, other, "floor_divide")


def remainder(input: Operand, other: Operand) -> Tensor:
    """input - other * floor(input / other) (``%``), with the sign of ``other``, as Python's %."""
    return _divide("remainder", input, other, "remainder")


def fmod(input: Operand, other: Operand) -> Tensor:
    """input - other * trunc(input / other), with the sign of ``input``, as C's fmod."""
    return _divide("fmod", input, other, "fmod")


class PointwiseMethods(TensorBase):
    """The pointwise methods of ``Tensor``, by torch's names (``Tensor`` inherits this class).

    >>> import groundup as gu
    >>> gu.tensor([7, -7]) // 2, gu.tensor([7, -7]) % 3
    (tensor([ 3, -4]), tensor([1, 2]))
    """

    __slots__ = ()

    # --- unary maths (an integer tensor is cast to float32 first)
    def sin(self) -> Tensor: return sin(self)
    def cos(self) -> Tensor: return cos(self)
    def tan(self) -> Tensor: return tan(self)
    def asin(self) -> Tensor: return asin(self)
    def acos(self) -> Tensor: return acos(self)
    def atan(self) -> Tensor: return atan(self)
    def sinh(self) -> Tensor: return sinh(self)
    def cosh(self) -> Tensor: return cosh(self)
    def log1p(self) -> Tensor: return log1p(self)
    def expm1(self) -> Tensor: return expm1(self)
    def erf(self) -> Tensor: return erf(self)
    def square(self) -> Tensor: return square(self)
    def reciprocal(self) -> Tensor: return reciprocal(self)

    # --- rounding and sign: zero gradient for floats; an integer tensor is returned as it is
    def floor(self) -> Tensor: return floor(self)
    def ceil(self) -> Tensor: return ceil(self)
    def round(self, decimals: int = 0) -> Tensor:
        """Round half to even to ``decimals`` places; the gradient is 0 (torch's rule).

        >>> import groundup as gu
        >>> gu.tensor([0.5, 1.5, 2.25]).round(), gu.tensor([2.25]).round(decimals=1)
        (tensor([0., 2., 2.]), tensor([2.2]))
        """
        return round_(self, decimals)

    def trunc(self) -> Tensor: return trunc(self)
    def frac(self) -> Tensor: return frac(self)
    def sign(self) -> Tensor: return sign(self)

    # --- tests and logic: boolean tensors outside the graph
    def isnan(self) -> Tensor: return isnan(self)
    def isinf(self) -> Tensor: return isinf(self)
    def isfinite(self) -> Tensor: return isfinite(self)
    def any(self, dim: Any = None, keepdim: bool = False) -> Tensor:
        """True where any element over ``dim`` (an int, a tuple, or None for all) is nonzero.

        >>> import groundup as gu
        >>> gu.tensor([[0.0, 1.0], [0.0, 0.0]]).any(dim=1)
        tensor([ True, False], dtype=bool)
        """
        return any_(self, dim, keepdim)

    def all(self, dim: Any = None, keepdim: bool = False) -> Tensor: return all_(self, dim, keepdim)

    # --- binary maths (numbers become constants; shapes broadcast)
    def atan2(self, other: Operand) -> Tensor:
        """The angle of the point (other, self) in (-pi, pi]: ``y.atan2(x)``, as torch.

        >>> import groundup as gu
        >>> gu.tensor([1.0, -1.0]).atan2(gu.tensor([-1.0, 0.0])) / 3.141592653589793
        tensor([ 0.75, -0.5 ])
        """
        return atan2(self, other)

    def hypot(self, other: Operand) -> Tensor: return hypot(self, other)
    def logaddexp(self, other: Operand) -> Tensor: return logaddexp(self, other)
    def lerp(self, end: Operand, weight: Operand) -> Tensor: return lerp(self, end, weight)
    def addcmul(self, tensor1: Operand, tensor2: Operand, *, value: float = 1) -> Tensor:
        return addcmul(self, tensor1, tensor2, value=value)
    def addcdiv(self, tensor1: Operand, tensor2: Operand, *, value: float = 1) -> Tensor:
        return addcdiv(self, tensor1, tensor2, value=value)

    # --- floor division and remainders (``//`` and ``%`` call these)
    def floor_divide(self, other: Operand) -> Tensor: return floor_divide(self, other)
    def __floordiv__(self, other: Operand) -> Tensor: return floor_divide(self, other)
    def __rfloordiv__(self, other: Operand) -> Tensor: return floor_divide(other, self)
    def remainder(self, other: Operand) -> Tensor: return remainder(self, other)
    def __mod__(self, other: Operand) -> Tensor: return remainder(self, other)
    def __rmod__(self, other: Operand) -> Tensor: return remainder(other, self)
    def fmod(self, other: Operand) -> Tensor: return fmod(self, other)
