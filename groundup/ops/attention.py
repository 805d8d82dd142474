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
from groundup.ops import kernels as K
from groundup.ops.kernels import attention_bias


class ScaledDotProductAttention(Function):
    """q (..., L, E), k (..., S, E), v (..., S, Ev) -> (..., L, Ev). NOTE: a query row whose keys
    are all masked gets zero output (torch returns NaN there)."""

    def forward(self, q, k, v, *float_mask, mask: Any = None, is_causal: bool = False, scale: float | None = None,
                dropout_p: float = 0.0, rng: Any = None, return_weights: bool = False):
        xp = array_module(q)
        if float_mask:                                   # a float mask given as an input gets a gradient
            mask = float_mask[0]
        self.mask_shape = tuple(float_mask[0].shape) if float_mask else None
        if q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2]:
            raise RuntimeError(f"scaled_dot_product_attention: q {tuple(q.shape)}, k {tuple(k.shape)}, "
                               f"v {tuple(v.shape)} do not fit (need q/k same last dim, k/v same length)")
        scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
        scores = q @ k.swapaxes(-1, -2)                                      # (..., L, S)
        scores *= scale
        bias = attention_bias(mask, is_causal, q.shape[-2], k.shape[-2], q.dtype, xp)
        if bias is not None:
            scores += bias
        # rows with every key masked: zeros; no keys at all (S = 0) or no queries: empty, so the output is 0
        attn = K.softmax_(scores) if scores.size else scores
        self.weights = attn if return_weights else None
        keep = None
        if dropout_p > 0:
            keep = K.dropout_mask(rng, attn.shape, dropout_p, q.dtype, xp)
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
        gbias = K.softmax_backward(attn, gattn)                              # d(scores + mask)
        gmask = _unbatch(gbias, self.mask_shape) if self.mask_shape is not None else None
        gscores = gbias * self.scale                                         # d scores before scaling
        gq = gscores @ k                                                     # (..., L, E)
        gk = gscores.swapaxes(-1, -2) @ q                                    # (..., S, E)
        grads = (_unbatch(gq, q.shape), _unbatch(gk, k.shape), _unbatch(gv, v.shape))
        return grads if self.mask_shape is None else (*grads, gmask)


def _unbatch(g: Any, shape: tuple[int, ...]) -> Any:
    from groundup.function import unbroadcast

    return unbroadcast(g, shape)
