"""Normalisation layers with torch.nn's names, arguments, parameters, buffers and semantics.

RMSNorm (Zhang & Sennrich 2019, https://arxiv.org/abs/1910.07467) and BatchNorm1d/2d (Ioffe &
Szegedy 2015, https://arxiv.org/abs/1502.03167). Batch norm is composed from Tensor ops, so its
gradient (including the terms through the batch mean and variance) comes from autograd.

Batch norm in training mode normalises with the batch's *biased* variance and folds the batch's
*unbiased* variance into ``running_var``, as torch does; in eval mode it uses the running
statistics. The buffers ``running_mean``, ``running_var`` and ``num_batches_tracked`` appear in
``state_dict`` under torch's keys, so torch checkpoints load unchanged.
"""

from __future__ import annotations

from typing import Any

from groundup import backend, creation
from groundup import functional as F
from groundup.nn.module import Module, Parameter
from groundup.tensor import Tensor

__all__ = ["RMSNorm", "BatchNorm1d", "BatchNorm2d"]


class RMSNorm(Module):
    """y = x / sqrt(mean(x^2 over the trailing dims) + eps) * weight.   x: (*, *normalized_shape)

    Args:
        normalized_shape: the trailing dims to normalise over (an int or a tuple).
        eps: added to the mean square; None means the input dtype's machine epsilon (torch's default).
        elementwise_affine: learn a ``weight`` of shape ``normalized_shape`` (initialised to ones).
    """

    def __init__(self, normalized_shape: Any, eps: float | None = None, elementwise_affine: bool = True,
                 dtype: Any = None):
        super().__init__()
        shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
        self.normalized_shape, self.eps, self.elementwise_affine = shape, eps, elementwise_affine
        self.weight = Parameter(creation.ones(shape, dtype=dtype)) if elementwise_affine else None

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[x.ndim - len(self.normalized_shape):] != self.normalized_shape:
            raise RuntimeError(f"RMSNorm: normalized_shape {self.normalized_shape} does not match the "
                               f"input's trailing dims {x.shape}")
        return F.rms_norm(x, self.normalized_shape, self.weight, self.eps)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"


class _BatchNorm(Module):
    """Shared body of BatchNorm1d/2d: statistics over every dim except the channel dim 1."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, dtype: Any = None, *, bias: bool = True):
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        if affine:
            self.weight = Parameter(creation.ones(num_features, dtype=dtype))
            if bias:
                self.bias = Parameter(creation.zeros(num_features, dtype=dtype))
            else:
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", creation.zeros(num_features, dtype=dtype))
            self.register_buffer("running_var", creation.ones(num_features, dtype=dtype))
            self.register_buffer("num_batches_tracked", creation.zeros((), dtype=backend.int64))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)

    def _check_input_dim(self, x: Tensor) -> None:  # overridden by each subclass
        raise TypeError(f"{type(self).__name__} is abstract: use BatchNorm1d or BatchNorm2d")

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            self.running_mean.data[...] = 0
            self.running_var.data[...] = 1
            self.num_batches_tracked.data[...] = 0

    def forward(self, x: Tensor) -> Tensor:
        """x: (N, C, *) -> (N, C, *), normalised per channel C."""
        self._check_input_dim(x)
        F._refuse_mixed_dtypes(type(self).__name__, x, {"weight": self.weight, "bias": self.bias,
                                                        "running_mean": self.running_mean,
                                                        "running_var": self.running_var}, half_with_float32=True)
        if x.shape[1] != self.num_features:
            raise RuntimeError(f"{type(self).__name__}: expected {self.num_features} channels in dim 1, "
                               f"got input of shape {x.shape}")
        dims = (0,) + tuple(range(2, x.ndim))                 # every dim but the channels
        channel_shape = (1, self.num_features) + (1,) * (x.ndim - 2)  # (1, C, 1, ...) broadcasts over x
        use_batch_stats = self.training or self.running_mean is None
        if use_batch_stats:
            count = x.numel() // self.num_features
            if count <= 1:
                raise ValueError(f"{type(self).__name__}: expected more than 1 value per channel when "
                                 f"training, got input of shape {x.shape}")
            mean = x.mean(dim=dims, keepdim=True)             # (1, C, 1, ...)
            var = x.var(dim=dims, keepdim=True, correction=0)  # biased, as used for normalising
            if self.training and self.track_running_stats:
                self._update_running_stats(mean, var, count)
        else:
            mean = self.running_mean.reshape(channel_shape)
            var = self.running_var.reshape(channel_shape)
        out = (x - mean) * (var + self.eps).rsqrt()
        if self.weight is not None:
            out = out * self.weight.reshape(channel_shape)
        if self.bias is not None:
            out = out + self.bias.reshape(channel_shape)
        return out if out.dtype == x.dtype else out.to(x.dtype)  # float16 input stays float16, as torch

    def _update_running_stats(self, mean: Tensor, var: Tensor, count: int) -> None:
        """running = (1 - m) * running + m * batch, with the *unbiased* batch variance (as torch).

        ``momentum=None`` gives a cumulative average: m = 1 / num_batches_tracked.
        """
        self.num_batches_tracked.data[...] += 1
        m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked.item())
        batch_mean = mean.data.reshape(self.num_features)
        batch_var = var.data.reshape(self.num_features) * (count / (count - 1))  # Bessel's correction
        running_mean, running_var = self.running_mean.data, self.running_var.data
        running_mean[...] = (1 - m) * running_mean + m * batch_mean.astype(running_mean.dtype, copy=False)
        running_var[...] = (1 - m) * running_var + m * batch_var.astype(running_var.dtype, copy=False)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"bias={self.bias is not None}, track_running_stats={self.track_running_stats}")


class BatchNorm1d(_BatchNorm):
    """Batch norm over (N, C) or (N, C, L) inputs, per channel C.

    Args:
        num_features: C.
        eps: added to the variance.
        momentum: weight of the new batch in the running statistics (None: cumulative average).
        affine: learn ``weight`` (ones) and ``bias`` (zeros) of shape (C,).
        track_running_stats: keep ``running_mean``/``running_var`` for eval; if False, eval also
            uses batch statistics.
        bias: (keyword-only) with ``affine``, also learn ``bias``; False keeps only ``weight``.
    """

    def _check_input_dim(self, x: Tensor) -> None:
        if x.ndim not in (2, 3):
            raise ValueError(f"BatchNorm1d: expected 2D (N, C) or 3D (N, C, L) input, got {x.ndim}D input "
                             f"of shape {x.shape}")


class BatchNorm2d(_BatchNorm):
    """Batch norm over (N, C, H, W) inputs, per channel C. Arguments as ``BatchNorm1d``."""

    def _check_input_dim(self, x: Tensor) -> None:
        if x.ndim != 4:
            raise ValueError(f"BatchNorm2d: expected 4D (N, C, H, W) input, got {x.ndim}D input of shape {x.shape}")
