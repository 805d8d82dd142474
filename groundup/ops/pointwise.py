"""Pointwise maths Functions with torch's gradients: trigonometry, log1p / expm1, erf, atan2,
rounding (zero gradient), remainder / fmod and floor division.

Each op is a forward and a backward over raw arrays of one array module ``xp`` (NumPy or CuPy),
as in ``elementwise.py``. The op functions and Tensor methods that call them (with torch's
names, dtype rules and argument checks) are in ``pointwise_methods.py``; the ops that are exact
compositions of existing ones (square, reciprocal, hypot, logaddexp, lerp, addcmul, addcdiv,
frac) are written there with no backward of their own.

Derivatives: https://github.com/pytorch/pytorch/blob/main/tools/autograd/derivatives.yaml
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from groundup.backend import array_module, erf
from groundup.function import Function, unbroadcast

_TWO_OVER_SQRT_PI = 2.0 / math.sqrt(math.pi)


# ----------------------------------------------------------------------------- trigonometry
class Sin(Function):
    """z = sin x; dz/dx = cos x."""

    def forward(self, x):
        self.save_for_backward(x)
        return array_module(x).sin(x)

    def backward(self, gz):
        (x,) = self.saved
        return gz * array_module(x).cos(x)


class Cos(Function):
    """z = cos x; dz/dx = -sin x."""

    def forward(self, x):
        self.save_for_backward(x)
        return array_module(x).cos(x)

    def backward(self, gz):
        (x,) = self.saved
        return gz * -array_module(x).sin(x)


class Tan(Function):
    """z = tan x; saves z, since dz/dx = 1 + z^2."""

    def forward(self, x):
        out = array_module(x).tan(x)
        self.save_for_backward(out)
        return out

    def backward(self, gz):
        (out,) = self.saved
        return gz * (1 + out * out)


class Asin(Function):
    """z = asin x on [-1, 1]; dz/dx = 1 / sqrt(1 - x^2) (inf at +-1, as torch)."""

    def forward(self, x):
        self.save_for_backward(x)
        return array_module(x).arcsin(x)

    def backward(self, gz):
        (x,) = self.saved
        return gz / array_module(x).sqrt(1 - x * x)


class Acos(Function):
    """z = acos x on [-1, 1]; dz/dx = -1 / sqrt(1 - x^2)."""

    def forward(self, x):
        self.save_for_backward(x)
        return array_module(x).arccos(x)

    def backward(self, gz):
        (x,) = self.saved
        return -gz / array_module(x).sqrt(1 - x * x)


class Atan(Function):
    """z = atan x; dz/dx = 1 / (1 + x^2)."""

    def forward(self, x):
        self.save_for_backward(x)
        return array_module(x).arctan(x)

    def backward(self, gz):
        (x,) = self.saved
        return gz / (1 + x * x)


class Atan2(Function):
    """z = atan2(y, x), the angle of the point (x, y) in (-pi, pi], with broadcasting.

    dz/dy = x / (x^2 + y^2), dz/dx = -y / (x^2 + y^2). NOTE: at (0, 0) both are 0 / 0 = nan, as torch.
    """

    def forward(self, y, x):
        self.save_for_backward(y, x)
        return array_module(y).arctan2(y, x)

    def backward(self, gz):
        y, x = self.saved
        with np.errstate(divide="ignore", invalid="ignore"):
            scale = gz / (x * x + y * y)
        gy = unbroadcast(scale * x, y.shape) if self.needs_input_grad[0] else None
        gx = unbroadcast(scale * -y, x.shape) if self.needs_input_grad[1] else None
        return gy, gx


class Sinh(Function):
    """z = sinh x; dz/dx = cosh x. (The composite (e^x - e^-x) / 2 loses every digit as x -> 0.)"""

    def forward(self, x):
        self.save_for_backward(x)
        return array_module(x).sinh(x)

    def backward(self, gz):
        (x,) = self.saved
        return gz * array_module(x).cosh(x)


class Cosh(Function):
    """z = cosh x; dz/dx = sinh x."""

    def forward(self, x):
        self.save_for_backward(x)
        return array_module(x).cosh(x)

    def backward(self, gz):
        (x,) = self.saved
        return gz * array_module(x).sinh(x)


# ----------------------------------------------------------------------------- logs, exps, erf
class Log1p(Function):
    """z = log(1 + x), exact for tiny |x| where 1 + x rounds; dz/dx = 1 / (1 + x)."""

    def forward(self, x):
        self.save_for_backward(x)
        return array_module(x).log1p(x)

    def backward(self, gz):
        (x,) = self.saved
        return gz / (1 + x)


class Expm1(Function):
    """z = e^x - 1, exact for tiny |x|; saves z, since dz/dx = e^x = z + 1."""

    def forward(self, x):
        out = array_module(x).expm1(x)
        self.save_for_backward(out)
        return out

    def backward(self, gz):
        (out,) = self.saved
        return gz * (out + 1)


class Erf(Function):
    """z = erf x (``backend.erf``: SciPy or CuPy); dz/dx = 2 / sqrt(pi) e^(-x^2)."""

    def forward(self, x):
        self.save_for_backward(x)
        return erf(x)

    def backward(self, gz):
        (x,) = self.saved
        with np.errstate(under="ignore"):                       # e^(-x^2) -> 0 for large |x|: right
            return gz * (_TWO_OVER_SQRT_PI * array_module(x).exp(-x * x))


# ----------------------------------------------------------------------------- piecewise constant
class PiecewiseConstant(Function):
    """floor, ceil, round (half to even, with ``decimals``), trunc, sign: steps, so the gradient is
    0 everywhere. NOTE: torch's rule also at the jumps, where the derivative does not exist."""

    def forward(self, x, mode: str = "floor", decimals: int = 0):
        xp = array_module(x)
        if mode == "round":
            return xp.round(x, decimals)
        return getattr(xp, mode)(x)                             # floor, ceil, trunc, sign

    def backward(self, gz):
        return array_module(gz).zeros_like(gz)


class Remainder(Function):
    """z = x - y * q with q = floor(x / y) (``remainder``: the sign of y, Python's %) or
    q = trunc(x / y) (``fmod``: the sign of x, C's fmod), with broadcasting.

    dz/dx = 1, dz/dy = -q (torch's rule; q is constant between jumps). The forward is xp's own
    remainder / fmod: the composite x - y * q can round to y itself or just below 0.
    """

    def forward(self, x, y, mode: str = "remainder"):
        self.save_for_backward(x, y)
        self.mode = mode
        with np.errstate(divide="ignore", invalid="ignore"):    # x % 0 is nan, as torch
            return getattr(array_module(x), mode)(x, y)

    def backward(self, gz):
        x, y = self.saved
        gx = unbroadcast(gz, x.shape) if self.needs_input_grad[0] else None
        gy = None
        if self.needs_input_grad[1]:
            xp = array_module(x)
            with np.errstate(divide="ignore", invalid="ignore"):
                quotient = (xp.floor if self.mode == "remainder" else xp.trunc)(x / y)
            gy = unbroadcast(-gz * quotient, y.shape)
        return gx, gy


class FloorDivide(Function):
    """z = floor(x / y) for float tensors, by xp's floor_divide (exact where floor(x / y) rounds).

    NOTE: torch records the node but has no derivative for it: its backward raises, and so does
    this one, rather than pass a silent zero.
    """

    def forward(self, x, y):
        with np.errstate(divide="ignore", invalid="ignore"):    # x // 0 is +-inf or nan, as torch
            return array_module(x).floor_divide(x, y)

    def backward(self, gz):
        raise RuntimeError("floor_divide: the derivative is not implemented (as in torch); for a gradient of 0 "
                           "use (x / y).floor(), or detach the operands")


def check_int_divisor(op: str, y: Any) -> None:
    """Refuse an integer division by zero with a clear error, as torch (NumPy would warn and give 0)."""
    if y.dtype.kind in "iub" and bool((y == 0).any()):
        raise ZeroDivisionError(f"{op}: integer division by zero")
