"""Matrix multiplication with torch's rules: 1-D operands, batched and broadcast batch dims."""

from __future__ import annotations

from groundup.backend import array_module
from groundup.function import Function, unbroadcast
from groundup.ops import kernels as K


class MatMul(Function):
    """z = x @ y (``torch.matmul`` semantics)."""

    def forward(self, x, y):
        if x.ndim == 0 or y.ndim == 0:
            raise RuntimeError(f"matmul: both operands need at least 1 dim, got {tuple(x.shape)} @ {tuple(y.shape)}")
        if x.shape[-1] != y.shape[-2 if y.ndim > 1 else 0]:
            raise RuntimeError(f"matmul: {tuple(x.shape)} @ {tuple(y.shape)} (inner dims differ)")
        self.save_for_backward(x, y)
        try:
            return array_module(x).matmul(x, y)
        except ValueError:
            raise RuntimeError(f"matmul: {tuple(x.shape)} @ {tuple(y.shape)} (batch dims do not broadcast)") from None

    def backward(self, gz):
        x, y = self.saved
        x2 = x[None, :] if x.ndim == 1 else x                 # (1, K) for a vector on the left
        y2 = y[:, None] if y.ndim == 1 else y                 # (K, 1) for a vector on the right
        g = gz
        if y.ndim == 1:
            g = g[..., None]                                  # restore the dropped column dim
        if x.ndim == 1:
            g = g[..., None, :]                               # restore the dropped row dim
        gx = gy = None
        if self.needs_input_grad[0]:
            gx = g @ y2.swapaxes(-1, -2)                      # (..., M, K)
            gx = unbroadcast(gx, x2.shape).reshape(x.shape)
        if self.needs_input_grad[1]:
            if y2.ndim == 2 and x2.ndim > 2:                  # shared weight: one 2-D GEMM
                k, n = y2.shape
                gy = K.matmul_tn(x2.reshape(-1, k), g.reshape(-1, n))   # (K, N): a weight gradient
            else:
                gy = x2.swapaxes(-1, -2) @ g                  # (..., K, N)
                gy = unbroadcast(gy, y2.shape)
            gy = gy.reshape(y.shape)
        return gx, gy
