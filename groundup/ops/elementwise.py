"""Elementwise Functions: arithmetic with broadcasting, unary maths, clamp, where, casts.

Each op is a forward and a backward over raw arrays of one array module ``xp``; broadcasting's
adjoint lives in one place, ``unbroadcast``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from groundup.backend import array_module
from groundup.function import Function, unbroadcast


class Add(Function):
    """z = x + y."""

    def forward(self, x, y):
        self.shapes = x.shape, y.shape
        return x + y

    def backward(self, gz):
        sx, sy = self.shapes
        return (unbroadcast(gz, sx) if self.needs_input_grad[0] else None,
                unbroadcast(gz, sy) if self.needs_input_grad[1] else None)


class Sub(Function):
    """z = x - y."""

    def forward(self, x, y):
        self.shapes = x.shape, y.shape
        return x - y

    def backward(self, gz):
        sx, sy = self.shapes
        return (unbroadcast(gz, sx) if self.needs_input_grad[0] else None,
                unbroadcast(-gz, sy) if self.needs_input_grad[1] else None)


class Mul(Function):
    """z = x * y."""

    def forward(self, x, y):
        self.save_for_backward(x, y)
        return x * y

    def backward(self, gz):
        x, y = self.saved
        gx = unbroadcast(gz * y, x.shape) if self.needs_input_grad[0] else None
        gy = unbroadcast(gz * x, y.shape) if self.needs_input_grad[1] else None
        return gx, gy


class Div(Function):
    """z = x / y."""

    def forward(self, x, y):
        self.save_for_backward(x, y)
        return x / y

    def backward(self, gz):
        x, y = self.saved
        gx = unbroadcast(gz / y, x.shape) if self.needs_input_grad[0] else None
        gy = unbroadcast(-gz * x / (y * y), y.shape) if self.needs_input_grad[1] else None
        return gx, gy


class Pow(Function):
    """z = x ** y (both tensors). NOTE: dz/dy = z * log(x) is taken as 0 where x == 0."""

    def forward(self, x, y):
        out = x**y
        self.save_for_backward(x, y, out)
        return out

    def backward(self, gz):
        x, y, out = self.saved
        xp = array_module(x)
        gx = None
        if self.needs_input_grad[0]:
            with np.errstate(divide="ignore", invalid="ignore"):
                slope = xp.where(y == 0, 0, y * x ** (y - 1))              # d x^0 / dx = 0, also at x = 0 (torch)
            gx = unbroadcast(gz * slope.astype(gz.dtype, copy=False), x.shape)
        gy = None
        if self.needs_input_grad[1]:
            safe = xp.where(x > 0, x, 1)
            gy = unbroadcast(gz * out * xp.log(safe), y.shape)
        return gx, gy


class PowScalar(Function):
    """z = x ** exponent for a Python number exponent."""

    def forward(self, x, exponent: float):
        self.save_for_backward(x)
        self.exponent = exponent
        if exponent == 2:
            return x * x
        return x**exponent

    def backward(self, gz):
        (x,) = self.saved
        e = self.exponent
        if e == 2:
            return gz * 2 * x
        if e == 0:
            return gz * 0                                                  # d x^0 / dx = 0, also at x = 0 (torch)
        return gz * e * x ** (e - 1)


class Neg(Function):
    """z = -x."""

    def forward(self, x):
        return -x

    def backward(self, gz):
        return -gz


class Exp(Function):
    """z = e ** x; saves z, since dz/dx = z."""

    def forward(self, x):
        out = array_module(x).exp(x)
        self.save_for_backward(out)
        return out

    def backward(self, gz):
        (out,) = self.saved
        return gz * out


class Log(Function):
    """z = log x (natural log); dz/dx = 1 / x."""

    def forward(self, x):
        self.save_for_backward(x)
        return array_module(x).log(x)

    def backward(self, gz):
        (x,) = self.saved
        return gz / x


class Sqrt(Function):
    """z = sqrt(x); saves z, since dz/dx = 1 / (2 z)."""

    def forward(self, x):
        out = array_module(x).sqrt(x)
        self.save_for_backward(out)
        return out

    def backward(self, gz):
        (out,) = self.saved
        return gz / (2 * out)


class Rsqrt(Function):
    """z = 1 / sqrt(x); saves z, since dz/dx = -z^3 / 2."""

    def forward(self, x):
        out = 1 / array_module(x).sqrt(x)
        self.save_for_backward(out)
        return out

    def backward(self, gz):
        (out,) = self.saved
        return gz * (-0.5) * out * out * out


class Tanh(Function):
    """z = tanh(x); saves z, since dz/dx = 1 - z^2."""

    def forward(self, x):
        out = array_module(x).tanh(x)
        self.save_for_backward(out)
        return out

    def backward(self, gz):
        (out,) = self.saved
        return gz * (1 - out * out)


class Sigmoid(Function):
    """z = 1 / (1 + e^-x); saves z, since dz/dx = z (1 - z)."""

    def forward(self, x):
        xp = array_module(x)
        # NOTE: 0.5 * (1 + tanh(x / 2)) is sigmoid without overflow for large |x|.
        out = 0.5 * (1 + xp.tanh(0.5 * x))
        self.save_for_backward(out)
        return out

    def backward(self, gz):
        (out,) = self.saved
        return gz * out * (1 - out)


class Relu(Function):
    """NOTE: the subgradient at 0 is taken as 0, as in torch."""

    def forward(self, x):
        out = array_module(x).maximum(x, 0)
        self.save_for_backward(out)
        return out

    def backward(self, gz):
        (out,) = self.saved
        return gz * (out > 0)


class Abs(Function):
    """NOTE: the subgradient at 0 is 0 (sign(0) = 0), as in torch."""

    def forward(self, x):
        self.save_for_backward(x)
        return array_module(x).abs(x)

    def backward(self, gz):
        (x,) = self.saved
        return gz * array_module(x).sign(x)


class Clamp(Function):
    """NOTE: the gradient passes where min <= x <= max (inclusive at the bounds), as in torch."""

    def forward(self, x, min: float | None = None, max: float | None = None):
        self.save_for_backward(x)
        self.bounds = min, max
        return array_module(x).clip(x, min, max)

    def backward(self, gz):
        (x,) = self.saved
        low, high = self.bounds
        mask = True
        if low is not None:
            mask = mask & (x >= low)
        if high is not None:
            mask = mask & (x <= high)
        return gz * mask


class Maximum(Function):
    """NOTE: at ties the gradient is split equally between x and y, as in torch."""

    def forward(self, x, y):
        self.save_for_backward(x, y)
        return array_module(x).maximum(x, y)

    def backward(self, gz):
        x, y = self.saved
        wx = ((x > y) + 0.5 * (x == y)).astype(gz.dtype, copy=False)
        return (unbroadcast(gz * wx, x.shape) if self.needs_input_grad[0] else None,
                unbroadcast(gz * (1 - wx), y.shape) if self.needs_input_grad[1] else None)


class Minimum(Function):
    """NOTE: at ties the gradient is split equally between x and y, as in torch."""

    def forward(self, x, y):
        self.save_for_backward(x, y)
        return array_module(x).minimum(x, y)

    def backward(self, gz):
        x, y = self.saved
        wx = ((x < y) + 0.5 * (x == y)).astype(gz.dtype, copy=False)
        return (unbroadcast(gz * wx, x.shape) if self.needs_input_grad[0] else None,
                unbroadcast(gz * (1 - wx), y.shape) if self.needs_input_grad[1] else None)


class Where(Function):
    """z = cond ? x : y (cond is a raw boolean array option, never differentiated)."""

    def forward(self, x, y, cond: Any = None):
        self.cond = cond
        self.shapes = x.shape, y.shape
        return array_module(x).where(cond, x, y)

    def backward(self, gz):
        xp = array_module(gz)
        sx, sy = self.shapes
        zero = xp.zeros((), dtype=gz.dtype)
        gx = unbroadcast(xp.where(self.cond, gz, zero), sx) if self.needs_input_grad[0] else None
        gy = unbroadcast(xp.where(self.cond, zero, gz), sy) if self.needs_input_grad[1] else None
        return gx, gy


class MaskedFill(Function):
    """z = x with ``value`` where ``mask`` (a raw boolean array broadcastable to x) is True."""

    def forward(self, x, mask: Any = None, value: float = 0.0):
        xp = array_module(x)
        self.mask, self.in_shape = mask, x.shape
        return xp.where(mask, xp.asarray(value, dtype=x.dtype), x)

    def backward(self, gz):
        xp = array_module(gz)
        # a mask of more dims or larger sizes than x broadcasts the output up, as in torch: sum back to x
        return unbroadcast(xp.where(self.mask, xp.zeros((), dtype=gz.dtype), gz), self.in_shape)


class Cast(Function):
    """Change dtype; the gradient is cast back to the input's dtype."""

    def forward(self, x, dtype: Any = None):
        self.in_dtype = x.dtype
        return x.astype(dtype)

    def backward(self, gz):
        return gz.astype(self.in_dtype)


class Clone(Function):
    """z = a copy of x that stays in the graph (torch's ``clone``)."""

    def forward(self, x):
        return x.copy()

    def backward(self, gz):
        return gz
