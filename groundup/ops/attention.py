"""Scaled dot-product attention as one fused op with a hand-derived backward.

    scores = q @ k^T * scale (+ mask),  attn = softmax(scores),  out = attn @ v

Backward: dv = attn^T @ g;  dattn = g @ v^T;  dscores = attn * (dattn - rowsum(dattn * attn));
dq = dscores @ k * scale;  dk = dscores^T @ q * scale. Reference: Vaswani et al. 2017,
"Attention Is All You Need", and torch's ``F.scaled_dot_product_attention`` (mask semantics).
"""

from __future__ import annotations

import math
from typing import Any

from groundup.backend import array_module
from groundup.function import Function


def attention_bias(mask: Any, is_causal: bool, q_len: int, k_len: int, dtype: Any, xp: Any) -> Any:
    """Turn torch-style masks into an additive bias (0 = attend, -inf = blocked), or None.

    A boolean mask is True where attention is allowed; a float mask is added to the scores.
    """
    bias = None
    if is_causal:
        # NOTE: query i sees keys 0..i (top-left aligned, torch's rule), also when q_len != k_len.
        allowed = xp.tril(xp.ones((q_len, k_len), dtype=bool))
        bias = xp.where(allowed, 0, -xp.inf).astype(dtype)
    if mask is not None:
        extra = xp.where(mask, 0, -xp.inf).astype(dtype) if mask.dtype == bool else mask.astype(dtype)
        bias = extra if bias is None else bias + extra
    return bias


class ScaledDotProductAttention(Function):
    """q (..., L, E), k (..., S, E), v (..., S, Ev) -> (..., L, Ev). NOTE: a query row whose keys
    are all masked gets zero output (torch returns NaN there)."""

    def forward(self, q, k, v, mask: Any = None, is_causal: bool = False, scale: float | None = None,
                dropout_p: float = 0.0, rng: Any = None, return_weights: bool = False):
        xp = array_module(q)
        if q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2]:
            raise RuntimeError(f"scaled_dot_product_attention: q {tuple(q.shape)}, k {tuple(k.shape)}, "
                               f"v {tuple(v.shape)} do not fit (need q/k same last dim, k/v same length)")
        scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
        scores = q @ k.swapaxes(-1, -2)                                      # (..., L, S)
        scores *= scale
        bias = attention_bias(mask, is_causal, q.shape[-2], k.shape[-2], q.dtype, xp)
        if bias is not None:
            scores += bias
        shift = scores.max(axis=-1, keepdims=True)
        shift = xp.where(xp.isfinite(shift), shift, 0)
        attn = xp.exp(scores - shift, out=scores)
        total = attn.sum(axis=-1, keepdims=True)
        attn /= xp.where(total > 0, total, 1)
        self.weights = attn if return_weights else None
        keep = None
        if dropout_p > 0:
            keep = (rng.random(attn.shape) >= dropout_p).astype(q.dtype) / (1 - dropout_p)
            if xp is not array_module(keep):
                keep = xp.asarray(keep)
            dropped = attn * keep
        else:
            dropped = attn
        self.save_for_backward(q, k, v, attn)
        self.keep, self.scale = keep, scale
        return dropped @ v                                                   # (..., L, Ev)

    def backward(self, gz):
        q, k, v, attn = self.saved
        dropped = attn * self.keep if self.keep is not None else attn
        gv = dropped.swapaxes(-1, -2) @ gz                                   # (..., S, Ev)
        gattn = gz @ v.swapaxes(-1, -2)                                      # (..., L, S)
        if self.keep is not None:
            gattn *= self.keep
        gscores = attn * (gattn - (gattn * attn).sum(axis=-1, keepdims=True))
        gscores *= self.scale
        gq = gscores @ k                                                     # (..., L, E)
        gk = gscores.swapaxes(-1, -2) @ q                                    # (..., S, E)
        return _unbatch(gq, q.shape), _unbatch(gk, k.shape), _unbatch(gv, v.shape)


def _unbatch(g: Any, shape: tuple[int, ...]) -> Any:
    from groundup.function import unbroadcast

    return unbroadcast(g, shape)
