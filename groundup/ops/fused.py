"""Fused ops with hand-derived backward: softmax, log-softmax, cross-entropy, NLL, BCE with
logits, layer norm, GELU, linear and embedding.

Each of these could be composed from primitives; fusing them earns its place by being faster
(fewer temporaries, 2-D GEMMs) and numerically safer (log-sum-exp shifts). Each is checked
against finite differences and PyTorch in the tests.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from groundup.backend import array_module
from groundup.function import Function
from groundup.ops import kernels as K


def _softmax(x: Any, axis: int) -> Any:
    """NOTE: a row that is all -inf (every entry masked) gives zeros, where torch gives NaN."""
    return K.softmax_(x.copy(), axis)


NARROW_ROWS = 64   # rows of at most this many classes take their maximum from a transposed copy


def _log_softmax(x: Any, axis: int) -> Any:
    """log softmax(x) along ``axis``, shifted by each row's maximum.

    NOTE: for 2-D (N, C) rows along the last axis, NumPy's max over a short axis is slow: with C = 28
    (the names vocabulary), N = 704, 66 us against 12 us for the max over axis 0 of a transposed copy;
    the row sums are a GEMV with ones (23 against 5 us). Measured on 2 cores, 2026-12-02.
    """
    xp = array_module(x)
    rows = x.ndim == 2 and axis in (1, -1)
    if rows and x.shape[1] <= NARROW_ROWS:
        shift = xp.ascontiguousarray(x.T).max(axis=0)[:, None]    # (C, N) -> (N, 1)
    else:
        shift = x.max(axis=axis, keepdims=True)
    z = x - xp.where(xp.isfinite(shift), shift, 0)
    e = xp.exp(z)
    total = K.row_sums(e) if rows else e.sum(axis=axis, keepdims=True)
    return z - xp.log(total)


class Softmax(Function):
    def forward(self, x, dim: int = -1):
        out = _softmax(x, dim)
        self.dim = dim
        self.save_for_backward(out)
        return out

    def backward(self, gz):
        (y,) = self.saved
        return K.softmax_backward(y, gz, self.dim)


class LogSoftmax(Function):
    def forward(self, x, dim: int = -1):
        out = _log_softmax(x, dim)
        self.dim = dim
        self.save_for_backward(out)
        return out

    def backward(self, gz):
        (y,) = self.saved
        return gz - array_module(y).exp(y) * gz.sum(axis=self.dim, keepdims=True)


def _classes_last(x: Any) -> Any:
    """(N, C, d1, ...) -> (N * d1 * ..., C); (N, C) and (C,) pass through as 2-D."""
    if x.ndim == 1:
        return x[None, :]
    if x.ndim == 2:
        return x
    return x.reshape(x.shape[0], x.shape[1], -1).transpose(0, 2, 1).reshape(-1, x.shape[1])  # (N*d, C)


def _classes_back(g2: Any, shape: tuple[int, ...]) -> Any:
    """Inverse of ``_classes_last`` for a gradient."""
    if len(shape) <= 2:
        return g2.reshape(shape)
    n, c = shape[0], shape[1]
    return g2.reshape(n, -1, c).transpose(0, 2, 1).reshape(shape)  # (N, C, d1, ...)


def _check_index_target(x_shape: tuple[int, ...], target: Any, op: str) -> None:
    """Class indices must have the input's shape without the class dim C: (N, d1, ...) for
    (N, C, d1, ...), () for (C,); a target that only has as many elements would pair them wrongly."""
    want = tuple(x_shape[:1]) + tuple(x_shape[2:]) if len(x_shape) > 1 else ()
    if tuple(target.shape) != want:
        raise ValueError(f"{op}: class-index target has shape {tuple(target.shape)}, expected {want} for input "
                         f"{tuple(x_shape)} (the input's shape without the class dim 1)")


def _reduce(losses: Any, reduction: str, denom: Any, op: str) -> Any:
    if reduction == "none":
        return losses
    if reduction == "sum":
        return losses.sum()
    if reduction == "mean":
        with np.errstate(invalid="ignore", divide="ignore"):   # every target ignored: 0 / 0 = nan, as torch
            return losses.sum() / denom
    raise ValueError(f"{op}: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


class CrossEntropy(Function):
    """Softmax cross-entropy from logits (torch's ``F.cross_entropy``).

    ``target`` is class indices (int, shape (N,) or (N, d1, ...)) or class probabilities (float,
    the input's shape). The loss for row i is -sum_j q_ij log p_ij with the (smoothed, weighted)
    target distribution q; its gradient is p_ij * sum_j q_ij - q_ij.
    """

    def forward(self, x, target: Any = None, weight: Any = None, ignore_index: int = -100,
                reduction: str = "mean", label_smoothing: float = 0.0):
        xp = array_module(x)
        logits = _classes_last(x)                                  # (N, C)
        n, c = logits.shape
        logp = _log_softmax(logits, 1)                             # (N, C)
        eps = label_smoothing
        if target.dtype.kind == "f":
            if target.shape != x.shape:
                raise ValueError(f"cross_entropy: probability target shape {tuple(target.shape)} "
                                 f"must equal the input's {tuple(x.shape)}")
            q = _classes_last(target)
            if eps:
                q = q * (1 - eps) + eps / c
            if weight is not None:
                q = q * weight
            denom = n
            valid = None
        else:
            _check_index_target(x.shape, target, "cross_entropy")
            t = target.reshape(-1)
            valid = t != ignore_index
            safe_t = xp.where(valid, t, 0)
            if ((safe_t < 0) | (safe_t >= c)).any():
                bad = int(safe_t[(safe_t < 0) | (safe_t >= c)][0])
                raise IndexError(f"cross_entropy: target {bad} is out of range for {c} classes")
            w_t = weight[safe_t] if weight is not None else xp.ones(n, dtype=x.dtype)
            w_t = w_t * valid
            if eps == 0 and weight is None:
                q = None
            else:
                q = xp.zeros((n, c), dtype=x.dtype)
                if eps:
                    q += (eps / c) * (weight if weight is not None else 1) * valid[:, None]
                q[xp.arange(n), safe_t] += (1 - eps) * w_t
            denom = w_t.sum()
        if q is None:
            rows = xp.arange(n)
            losses = -logp[rows, safe_t] * valid
        else:
            losses = -(q * logp).sum(axis=1)
        out_shape = (x.shape[0],) + tuple(x.shape[2:]) if x.ndim > 1 else ()
        out = _reduce(losses.reshape(out_shape), reduction, denom, "cross_entropy")
        self.save_for_backward(logp)
        self.ctx_data = (q, safe_t if target.dtype.kind != "f" else None, valid, denom, reduction, x.shape)
        return out.astype(x.dtype, copy=False)

    def backward(self, gz):
        (logp,) = self.saved
        q, t, valid, denom, reduction, shape = self.ctx_data
        xp = array_module(logp)
        n = logp.shape[0]
        g = xp.exp(logp)                                           # softmax p, (N, C)
        if q is None:
            g[xp.arange(n), t] -= 1
            g *= valid[:, None]
        else:
            g *= q.sum(axis=1, keepdims=True)
            g -= q
        if reduction == "mean":
            with np.errstate(invalid="ignore", divide="ignore"):
                g *= gz / denom
            # ignored rows are 0 already (times valid) unless every row is ignored (0 / 0 = nan): then
            # exactly 0, as torch; the check is skipped on NumPy when denom != 0 (a pass less per step)
            if valid is not None and (xp is not np or not denom):
                g = xp.where(valid[:, None], g, 0)
        elif reduction == "sum":
            g *= gz
        else:
            g *= gz.reshape(-1)[:, None]
        return _classes_back(g.astype(logp.dtype, copy=False), shape)


class NLLLoss(Function):
    """Negative log-likelihood of log-probabilities (torch's ``F.nll_loss``)."""

    def forward(self, x, target: Any = None, weight: Any = None, ignore_index: int = -100,
                reduction: str = "mean"):
        xp = array_module(x)
        logp = _classes_last(x)
        n, c = logp.shape
        _check_index_target(x.shape, target, "nll_loss")
        t = target.reshape(-1)
        valid = t != ignore_index
        safe_t = xp.where(valid, t, 0)
        if ((safe_t < 0) | (safe_t >= c)).any():
            raise IndexError(f"nll_loss: a target is out of range for {c} classes")
        w_t = (weight[safe_t] if weight is not None else xp.ones(n, dtype=x.dtype)) * valid
        losses = -logp[xp.arange(n), safe_t] * w_t
        out_shape = (x.shape[0],) + tuple(x.shape[2:]) if x.ndim > 1 else ()
        denom = w_t.sum()
        self.ctx_data = (safe_t, valid, w_t, denom, reduction, x.shape, n, c)
        return _reduce(losses.reshape(out_shape), reduction, denom, "nll_loss").astype(x.dtype, copy=False)

    def backward(self, gz):
        t, valid, w_t, denom, reduction, shape, n, c = self.ctx_data
        xp = array_module(gz)
        g = xp.zeros((n, c), dtype=gz.dtype)
        with np.errstate(invalid="ignore", divide="ignore"):
            scale = gz / denom if reduction == "mean" else (gz if reduction == "sum" else gz.reshape(-1))
            g[xp.arange(n), t] = xp.where(valid, -w_t * scale, 0)   # ignored targets: exactly 0 (even 0 / 0)
        return _classes_back(g, shape)


class BCEWithLogits(Function):
    """Binary cross-entropy on logits, stable for any |x| (torch's form with pos_weight)."""

    def forward(self, x, target: Any = None, weight: Any = None, pos_weight: Any = None,
                reduction: str = "mean"):
        xp = array_module(x)
        y = target
        big_l = 1 + (pos_weight - 1) * y if pos_weight is not None else 1
        softplus_neg = xp.log1p(xp.exp(-xp.abs(x))) + xp.maximum(-x, 0)   # log(1 + e^-x)
        losses = (1 - y) * x + big_l * softplus_neg
        if weight is not None:
            losses = losses * weight
        self.save_for_backward(x)
        self.ctx_data = (y, big_l, weight, reduction, losses.shape)
        return _reduce(losses, reduction, losses.size, "binary_cross_entropy_with_logits").astype(x.dtype)

    def backward(self, gz):
        (x,) = self.saved
        y, big_l, weight, reduction, shape = self.ctx_data
        xp = array_module(x)
        sig = 0.5 * (1 + xp.tanh(0.5 * x))
        g = (1 - y) + big_l * (sig - 1)
        if weight is not None:
            g = g * weight
        if reduction == "mean":
            g = g * (gz / g.size)
        else:
            g = g * gz
        from groundup.function import unbroadcast

        return unbroadcast(g, x.shape).astype(x.dtype, copy=False)


class LayerNorm(Function):
    """y = (x - mean) / sqrt(var + eps) * weight + bias over the last ``n`` dims (biased var).

    Rows of the normalised dims flattened to (N, C) run through ``kernels.layer_norm``.
    """

    def forward(self, x, *params, n: int = 1, eps: float = 1e-5, has_weight: bool = True):
        weight = params[0] if has_weight and params else None
        bias = params[1] if len(params) > 1 else (params[0] if params and not has_weight else None)
        width = math.prod(x.shape[x.ndim - n:])
        x2 = x.reshape(-1, width)                                  # (N, C)
        y, xhat, rstd = K.layer_norm(x2, None if weight is None else weight.reshape(-1),
                                     None if bias is None else bias.reshape(-1), eps)
        self.save_for_backward(xhat, rstd, weight)
        self.has_bias, self.shape, self.norm_shape = bias is not None, x.shape, x.shape[x.ndim - n:]
        self.bias_dtype = bias.dtype if bias is not None else None
        return y.reshape(x.shape)

    def backward(self, gz):
        xhat, rstd, weight = self.saved
        dx, dw, db = K.layer_norm_backward(gz.reshape(xhat.shape), xhat, rstd,
                                           None if weight is None else weight.reshape(-1), self.has_bias)
        grads = [dx.reshape(self.shape).astype(xhat.dtype, copy=False)]           # each in its input's dtype
        if weight is not None:
            grads.append(dw.reshape(weight.shape).astype(weight.dtype, copy=False)
                         if self.needs_input_grad[1] else None)
        if self.has_bias:
            grads.append(db.reshape(self.norm_shape).astype(self.bias_dtype, copy=False))
        return tuple(grads)


_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


class GELU(Function):
    """GELU: x * Phi(x) exactly (``kernels.gelu_erf_with_slope``), or GPT-2's tanh approximation
    (``kernels.gelu_tanh_with_slope``). Either kernel also gives the slope, so the backward is one multiply."""

    def forward(self, x, approximate: str = "none"):
        if approximate not in ("none", "tanh"):
            raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
        kernel = K.gelu_tanh_with_slope if approximate == "tanh" else K.gelu_erf_with_slope
        y, slope = kernel(x)
        self.save_for_backward(slope)
        return y

    def backward(self, gz):
        (slope,) = self.saved
        return gz * slope


class Linear(Function):
    """y = x @ weight.T + bias, as one 2-D GEMM over all leading dims."""

    def forward(self, x, weight, *bias):
        if x.shape[-1] != weight.shape[1]:
            raise RuntimeError(f"linear: input {tuple(x.shape)} has {x.shape[-1]} features, "
                               f"weight {tuple(weight.shape)} expects {weight.shape[1]}")
        if x.dtype.kind != "f" and weight.dtype.kind == "f":  # torch refuses too (no silent float64)
            raise RuntimeError(f"linear: input dtype {x.dtype} is not floating point, weight is {weight.dtype}; "
                               f"convert the input first (x.float())")
        if x.dtype != weight.dtype:                         # torch: "mat1 and mat2 must have the same dtype"
            raise RuntimeError(f"linear: input dtype {x.dtype} differs from the weight's {weight.dtype}; convert "
                               f"one of them first (x.to(weight.dtype) or module.to(dtype))")
        x2 = x.reshape(math.prod(x.shape[:-1]), x.shape[-1])       # (N, in); N explicit: -1 is ambiguous at size 0
        y = K.linear(x2, weight, bias[0] if bias else None)        # (N, out)
        self.save_for_backward(x2, weight)
        self.in_shape = x.shape
        return y.reshape(*x.shape[:-1], weight.shape[0])           # (*, out)

    def backward(self, gz):
        x2, weight = self.saved
        g2 = gz.reshape(x2.shape[0], weight.shape[0])              # (N, out)
        gx = (g2 @ weight).reshape(self.in_shape) if self.needs_input_grad[0] else None
        gw = K.matmul_tn(g2, x2) if self.needs_input_grad[1] else None   # (out, in) = g2^T x2
        if len(self.needs_input_grad) == 3:
            return gx, gw, K.column_sums(g2) if self.needs_input_grad[2] else None
        return gx, gw


class Embedding(Function):
    """out = weight[idx]; the weight gradient sums rows of the output gradient per index."""

    def forward(self, weight, idx: Any = None, padding_idx: int | None = None):
        num = weight.shape[0]
        K.check_rows(idx, num, "embedding", "embeddings")
        self.idx, self.padding_idx, self.shape = idx, padding_idx, weight.shape
        return weight[idx]

    def backward(self, gz):
        num, dim = self.shape
        grad = K.embedding_grad(self.idx.reshape(-1), gz.reshape(self.idx.size, dim), num)   # (V, C)
        if self.padding_idx is not None:
            grad[self.padding_idx] = 0
        return grad
