"""Multi-head attention from packed in-projections to merged heads, as one graph node.

    q, k, v = columns [0, E), [E, 2E), [2E, 3E) of the in-projection's output(s)
    q_h, k_h, v_h = head h's D = E / H columns, seen as (N, H, L, D) without copying
    attn_h = softmax(q_h k_h^T * scale + bias),  out = [attn_h v_h for h] merged to (N, L, E)

The packed inputs are what ``nn.MultiheadAttention`` computes with torch's in_proj_weight layout:
one (N, L, 3E) array for self-attention, (N, L, E) queries and (N, S, 2E) keys|values for
cross-attention, or three arrays. Written with Tensor ops the split and merge are about ten
movement nodes (a chunk, reshapes, transposes) around one ``ops.attention.ScaledDotProductAttention``,
and their backwards allocate a zero-filled packed gradient per chunk and add them up. Here the
matrix products read the heads through strided views and write dq, dk, dv and the output
straight into their packed places. The maths is SDPA's (see ``ops/attention.py``):

    dv = attn^T g;  dattn = g v^T;  dscores = attn * (dattn - rowsum(dattn * attn));
    dq = dscores k * scale;  dk = dscores^T q * scale

NOTE: the softmax first tries ``kernels.softmax_unshifted_`` (no row maxima: a reduction over a
short axis costs several exps in NumPy) and falls back to the shifted ``softmax_`` when an exp
could overflow or a row could underflow; the row sums of the backward are matrix-vector products.
The products q k^T and g v^T read k^T and v^T from contiguous copies (the scale folded into k's):
OpenBLAS multiplies these small per-head matrices about 2x slower through a transposed view. The
backward's row sums use rowsum(dattn * attn) = rowsum(g * out) per head (FlashAttention's identity;
it holds with dropout too, out being the dropped weights times v), D-long rows instead of S-long.
"""

from __future__ import annotations

import math
from typing import Any

from groundup.backend import array_module
from groundup.function import Function
from groundup.ops import kernels as K

__all__ = ["PackedAttention"]


class PackedAttention(Function):
    """Attention output (N, L, E) from packed projections.

    Inputs: ``qkv`` (N, L, 3E); or ``q`` (N, L, E) and ``kv`` (N, S, 2E); or ``q``, ``k``, ``v``.
    Options: ``num_heads`` H (E divisible by it); ``mask`` (SDPA's semantics: bool True = may
    attend, float = added), broadcastable to (N, H, L, S); ``is_causal``; ``scale`` (default
    1/sqrt(D)); ``dropout_p`` and ``rng`` (dropout on the attention weights, drawn as SDPA draws).
    NOTE: a query row whose keys are all masked gets zero output (torch returns NaN there).
    """

    def forward(self, *packed, num_heads: int, mask: Any = None, is_causal: bool = False,
                scale: float | None = None, dropout_p: float = 0.0, rng: Any = None):
        if not 1 <= len(packed) <= 3 or any(a.ndim != 3 for a in packed):
            raise RuntimeError(f"PackedAttention: needs 1 to 3 arrays of shape (N, L, C), got "
                               f"{[tuple(a.shape) for a in packed]}")
        cols = [a.shape[-1] for a in packed]
        width = cols[0] // 3 if len(packed) == 1 else cols[0]
        expected = [3 * width] if len(packed) == 1 else [width, 2 * width] if len(packed) == 2 else [width] * 3
        if cols != expected or width % num_heads or len({a.shape[0] for a in packed}) > 1 \
                or len({a.shape[1] for a in packed[1:]}) > 1:
            raise RuntimeError(f"PackedAttention: inputs {[tuple(a.shape) for a in packed]} do not hold q, k, v "
                               f"of one batch and one width E divisible by {num_heads} heads")
        xp = array_module(packed[0])
        # where q, k and v live: (input index, first column)
        self.slots = [(0, 0), (0, width), (0, 2 * width)] if len(packed) == 1 else \
            [(0, 0), (1, 0), (1, width)] if len(packed) == 2 else [(0, 0), (1, 0), (2, 0)]
        self.num_heads, self.width = num_heads, width
        q, k, v = (self._heads(packed[i], col) for i, col in self.slots)         # (N, H, L|S, D) views
        n, _, q_len, d = q.shape
        self.scale = scale = 1.0 / math.sqrt(d) if scale is None else scale
        bias = K.attention_bias(mask, is_causal, q_len, k.shape[2], q.dtype, xp)
        k_t = xp.empty((n, num_heads, d, k.shape[2]), dtype=k.dtype)           # (N, H, D, S): see NOTE
        xp.multiply(k.swapaxes(-1, -2), scale, out=k_t)                       # k^T * scale

        def scores() -> Any:
            s = q @ k_t                                                        # (N, H, L, S) = q k^T * scale
            if bias is not None:
                s += bias
            return s

        attn = scores()
        if not K.softmax_unshifted_(attn):
            attn = K.softmax_(scores())                                        # rows with no key: zeros
        self.keep = K.dropout_mask(rng, attn.shape, dropout_p, q.dtype, xp) if dropout_p > 0 else None
        out = xp.empty((n, q_len, width), dtype=q.dtype)                      # (N, L, E)
        xp.matmul(attn * self.keep if self.keep is not None else attn, v, out=self._heads(out, 0))
        self.save_for_backward(*packed, attn, out)    # the inputs too: the engine then catches in-place edits
        return out

    def _heads(self, a: Any, col: int) -> Any:
        """Columns [col, col + E) of a contiguous (N, L, C) array as (N, H, L, D), a view."""
        n, length, c = a.shape
        d = self.width // self.num_heads
        first = col // d
        return a.reshape(n, length, c // d, d)[:, :, first:first + self.num_heads].transpose(0, 2, 1, 3)

    def backward(self, gz):
        *packed, attn, out = self.saved
        xp = array_module(gz)
        q, k, v = (self._heads(packed[i], col) for i, col in self.slots)         # (N, H, L|S, D)
        g = self._heads(gz, 0)                                                  # (N, H, L, D) view
        grads = [xp.empty(a.shape, dtype=gz.dtype) if need else None
                 for a, need in zip(packed, self.needs_input_grad)]
        gq, gk, gv = (self._heads(grads[i], col) if grads[i] is not None else None for i, col in self.slots)
        if gv is not None:
            dropped = attn * self.keep if self.keep is not None else attn
            xp.matmul(dropped.swapaxes(-1, -2), g, out=gv)                      # (N, H, S, D)
        if gq is None and gk is None:
            return tuple(grads)
        gattn = g @ xp.ascontiguousarray(v.swapaxes(-1, -2))                   # (N, H, L, D) @ (N, H, D, S)
        if self.keep is not None:
            gattn *= self.keep
        # rowsum(dattn * attn) = rowsum(g * out_h): a D-long dot per row instead of an S-long one
        n, q_len, width = gz.shape
        d = width // self.num_heads
        rows = (gz * out).reshape(-1, d) @ xp.ones(d, dtype=gz.dtype)          # (N L H,)
        gattn -= rows.reshape(n, q_len, self.num_heads).transpose(0, 2, 1)[..., None]   # (N, H, L, 1)
        gattn *= attn                                                           # d(scores + bias)
        gattn *= self.scale                                                     # d(q k^T)
        if gq is not None:
            xp.matmul(gattn, k, out=gq)                                         # (N, H, L, D)
        if gk is not None:
            xp.matmul(gattn.swapaxes(-1, -2), q, out=gk)                        # (N, H, S, D)
        return tuple(grads)
