"""Convolution and pooling layers with torch.nn's names, arguments, parameters and default init.

Conv2d, MaxPool2d and AvgPool2d are thin Modules over ``F.conv2d``, ``F.max_pool2d`` and
``F.avg_pool2d`` (im2col + one GEMM, batched over channel groups, in ``groundup.ops.conv``).
Reference: https://cs231n.github.io/convolutional-networks/
"""

from __future__ import annotations

import math
from typing import Any

from groundup import creation
from groundup import functional as F
from groundup.nn import init
from groundup.nn.module import Module, Parameter
from groundup.tensor import Tensor

__all__ = ["Conv2d", "MaxPool2d", "AvgPool2d"]

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


def _pair(value: Any, name: str) -> tuple[int, int]:
    """An int or a pair of ints -> a pair of ints (torch's ``_pair``)."""
    if isinstance(value, int):
        return (value, value)
    pair = tuple(int(v) for v in value)
    if len(pair) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    return pair  # type: ignore[return-value]


class Conv2d(Module):
    """2-D convolution (cross-correlation, as torch).   x: (N, C_in, H, W) -> (N, C_out, H_out, W_out)

    An unbatched (C_in, H, W) input gives (C_out, H_out, W_out), as in torch.

    H_out = (H + 2 * padding - dilation * (kernel_size - 1) - 1) // stride + 1 (same for W).

    Args:
        in_channels, out_channels: C_in and C_out; both must be divisible by ``groups``.
        kernel_size, stride, padding, dilation: an int or an (h, w) pair; ``padding`` may also be
            ``'valid'`` (no padding) or ``'same'`` (output size = input size; needs stride 1).
        groups: split the channels into this many independent convolutions.
        bias: learn a bias of shape (C_out,).
        padding_mode: what the padding holds: ``'zeros'`` (the default), or the input's
            ``'reflect'``, ``'replicate'`` or ``'circular'`` continuation (``F.pad``'s modes).

    Parameters: ``weight`` (C_out, C_in // groups, kh, kw) and ``bias`` (C_out,), both initialised
    as torch does: kaiming_uniform_(a=sqrt(5)), i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in)), with
    fan_in = C_in // groups * kh * kw.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Any, stride: Any = 1, padding: Any = 0,
                 dilation: Any = 1, groups: int = 1, bias: bool = True, padding_mode: str = "zeros",
                 dtype: Any = None):
        super().__init__()
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"Conv2d: padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
        self.padding_mode = padding_mode
        if groups <= 0 or in_channels % groups or out_channels % groups:
            raise ValueError(f"Conv2d: in_channels ({in_channels}) and out_channels ({out_channels}) must be "
                             f"divisible by groups ({groups})")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.stride = _pair(stride, "stride")
        self.dilation = _pair(dilation, "dilation")
        if isinstance(padding, str):
            if padding not in ("valid", "same"):
                raise ValueError(f"Conv2d: padding must be a number, a pair, 'valid' or 'same', got {padding!r}")
            if padding == "same" and self.stride != (1, 1):
                raise ValueError("Conv2d: padding='same' is not supported for strided convolutions (as torch)")
            self.padding: Any = padding
        else:
            self.padding = _pair(padding, "padding")
        self.weight = Parameter(creation.empty(out_channels, in_channels // groups, *self.kernel_size, dtype=dtype))
        self.bias = Parameter(creation.empty(out_channels, dtype=dtype)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """torch's default: kaiming_uniform_(a=sqrt(5)) for weight, U(-1/sqrt(fan_in), ...) for bias."""
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.weight.shape[1] * self.kernel_size[0] * self.kernel_size[1]
            bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
            init.uniform_(self.bias, -bound, bound)

    def _same_padding(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """'same' padding: total d * (k - 1) per dim, the extra odd pixel on the right/bottom (as torch)."""
        total = [d * (k - 1) for d, k in zip(self.dilation, self.kernel_size)]
        left = [t // 2 for t in total]
        if all(t % 2 == 0 for t in total) and self.padding_mode == "zeros":
            return x, (left[0], left[1])
        pads = (left[1], total[1] - left[1], left[0], total[0] - left[0])  # (w_left, w_right, h_top, h_bottom)
        return self._pad(x, pads), (0, 0)

    def _pad(self, x: Tensor, pads: tuple[int, int, int, int]) -> Tensor:
        """x padded by (w_left, w_right, h_top, h_bottom) with ``padding_mode``."""
        return F.pad(x, pads) if self.padding_mode == "zeros" else F.pad(x, pads, mode=self.padding_mode)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim not in (3, 4) or x.shape[-3] != self.in_channels:
            raise RuntimeError(f"Conv2d: expected input (N, {self.in_channels}, H, W) or unbatched "
                               f"({self.in_channels}, H, W), got shape {x.shape}")
        if self.padding == "same":
            x, padding = self._same_padding(x)
        else:
            padding = (0, 0) if self.padding == "valid" else self.padding
            if self.padding_mode != "zeros" and padding != (0, 0):       # torch: pad first, then convolve
                x, padding = self._pad(x, (padding[1], padding[1], padding[0], padding[0])), (0, 0)
        # groups > 1: one convolution per channel group, batched into one GEMM by F.conv2d
        return F.conv2d(x, self.weight, self.bias, stride=self.stride, padding=padding, dilation=self.dilation,
                        groups=self.groups)

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode}"   # unquoted, as torch prints it
        return s


class MaxPool2d(Module):
    """Max over sliding windows.   x: (N, C, H, W) -> (N, C, H_out, W_out), or unbatched (C, H, W)

    Args:
        kernel_size: window size, an int or an (h, w) pair.
        stride: window step; None means ``kernel_size`` (non-overlapping windows).
        padding: implicit -inf padding on each side, at most half the kernel.
        dilation: spacing between the elements of a window.
    """

    def __init__(self, kernel_size: Any, stride: Any = None, padding: Any = 0, dilation: Any = 1):
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride if stride is not None else kernel_size
        self.padding, self.dilation = padding, dilation

    def forward(self, x: Tensor) -> Tensor:
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding, self.dilation)

    def extra_repr(self) -> str:
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"dilation={self.dilation}, ceil_mode=False")   # torch's text; ceil_mode=True is not supported


class AvgPool2d(Module):
    """Mean over sliding windows (zero padding counts toward the mean, torch's default).

    x: (N, C, H, W) -> (N, C, H_out, W_out), or unbatched (C, H, W). Arguments as ``MaxPool2d`` (no dilation).
    """

    def __init__(self, kernel_size: Any, stride: Any = None, padding: Any = 0):
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride if stride is not None else kernel_size
        self.padding = padding

    def forward(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(x, self.kernel_size, self.stride, self.padding)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"
