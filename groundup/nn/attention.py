"""Multi-head attention with torch.nn.MultiheadAttention's arguments, masks and state_dict keys.

    q, k, v = split(x @ in_proj_weight.T + in_proj_bias)      one packed (3E, E) projection
    head_h  = softmax(q_h k_h^T / sqrt(D) + mask) v_h          for each of H heads of size D = E / H
    out     = concat(head_1..head_H) @ out_proj.weight.T + out_proj.bias

Masks follow torch's MultiheadAttention (NOT F.scaled_dot_product_attention): a boolean mask is
True where attention is NOT allowed; a float mask is added to the scores. Both are turned into one
additive bias (0 or -inf, or the float values) before the softmax. Masks are constants: no
gradient flows into a float mask.

References: Vaswani et al. 2017, "Attention Is All You Need" (https://arxiv.org/abs/1706.03762);
torch.nn.MultiheadAttention and torch.nn.functional.multi_head_attention_forward.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from groundup import backend, creation, random
from groundup import functional as F
from groundup.nn import init
from groundup.nn.layers import Linear
from groundup.nn.module import Module, Parameter
from groundup.ops.packed_attention import PackedAttention
from groundup.tensor import Tensor

__all__ = ["MultiheadAttention"]


def canonical_mask(mask: Any, name: str, dtype: Any, device: str) -> Any:
    """A torch-style mask (boolean True = blocked, or float = added) as a raw float bias array, or None.

    Args:
        mask: None, a boolean or floating Tensor / array.
        name: the argument's name, for error messages.
        dtype: the float dtype of the scores.
        device: where the scores live (``"cpu"`` or ``"cuda"``).
    Returns:
        A raw ``xp`` array of ``dtype`` with 0 where attention is allowed and -inf where it is not
        (or the given float values), same shape as ``mask``.
    """
    if mask is None:
        return None
    raw = mask.data if isinstance(mask, Tensor) else mask
    if type(raw).__module__ == "torch":
        raw = raw.detach().cpu().numpy()
    if not type(raw).__module__.startswith("cupy"):
        raw = np.asarray(raw)
    raw = backend.to_device(raw, device)
    xp = backend.array_module(raw)
    if raw.dtype == np.bool_:
        return xp.where(raw, -xp.inf, 0.0).astype(dtype)
    if raw.dtype.kind == "f":
        return raw.astype(dtype, copy=False)
    raise TypeError(f"only bool and floating types of {name} are supported, got dtype {raw.dtype}")


class MultiheadAttention(Module):
    """Multi-head attention (torch.nn.MultiheadAttention with ``kdim = vdim = embed_dim``).

    Args:
        embed_dim: model width E (query, key and value all have E features).
        num_heads: H; each head has ``head_dim = E // H`` features.
        dropout: dropout probability on the attention weights (training mode only).
        bias: add ``in_proj_bias`` and ``out_proj.bias``.
        add_bias_kv, add_zero_attn: kept for torch's positional order; only False is supported.
        kdim, vdim: key/value widths; only None or ``embed_dim`` is supported.
        batch_first: inputs are (N, L, E) instead of (L, N, E).
        device, dtype: where and in which float dtype to create the parameters.

    Parameters (torch's names): ``in_proj_weight`` (3E, E) = [W_q; W_k; W_v], ``in_proj_bias`` (3E,),
    ``out_proj.weight`` (E, E), ``out_proj.bias`` (E,).
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 add_bias_kv: bool = False, add_zero_attn: bool = False, kdim: int | None = None,
                 vdim: int | None = None, batch_first: bool = False, device: Any = None, dtype: Any = None):
        super().__init__()
        if embed_dim <= 0 or num_heads <= 0:
            raise ValueError(f"MultiheadAttention: embed_dim and num_heads must be > 0, got {embed_dim} and "
                             f"{num_heads}")
        if embed_dim % num_heads != 0:
            raise ValueError(f"MultiheadAttention: embed_dim ({embed_dim}) must be divisible by num_heads "
                             f"({num_heads})")
        if (kdim is not None and kdim != embed_dim) or (vdim is not None and vdim != embed_dim):
            raise ValueError(f"MultiheadAttention: kdim={kdim}, vdim={vdim} differ from embed_dim={embed_dim}; "
                             "only kdim = vdim = embed_dim (one packed in_proj_weight) is supported")
        if add_bias_kv or add_zero_attn:
            raise ValueError("MultiheadAttention: add_bias_kv and add_zero_attn are not supported (use False)")
        if not 0.0 <= dropout <= 1.0:
            raise ValueError(f"MultiheadAttention: dropout must be in [0, 1], got {dropout}")
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.kdim = self.vdim = embed_dim
        self._qkv_same_embed_dim = True
        self.head_dim = embed_dim // num_heads
        self.dropout = dropout  # a float, as in torch (not a Dropout module)
        self.batch_first = batch_first
        self.in_proj_weight = Parameter(creation.empty(3 * embed_dim, embed_dim, dtype=dtype))
        if bias:
            self.in_proj_bias = Parameter(creation.empty(3 * embed_dim, dtype=dtype))
        else:
            self.register_parameter("in_proj_bias", None)
        self.out_proj = Linear(embed_dim, embed_dim, bias=bias, dtype=dtype)
        self._reset_parameters()
        if device is not None:
            self.to(device)

    def _reset_parameters(self) -> None:
        """torch's init: xavier_uniform_ on the packed (3E, E) weight, zero biases; out_proj.weight keeps
        Linear's default U(-1/sqrt(E), 1/sqrt(E))."""
        init.xavier_uniform_(self.in_proj_weight)
        if self.in_proj_bias is not None:
            init.zeros_(self.in_proj_bias)
        if self.out_proj.bias is not None:
            init.zeros_(self.out_proj.bias)

    def extra_repr(self) -> str:
        return (f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, dropout={self.dropout}, "
                f"batch_first={self.batch_first}")

    # ------------------------------------------------------------ forward
    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Any = None,
                need_weights: bool = True, attn_mask: Any = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[Tensor, Tensor | None]:
        """Attend from ``query`` to ``key``/``value``.

        Args:
            query: (L, N, E), or (N, L, E) with batch_first, or unbatched (L, E).
            key, value: (S, N, E), or (N, S, E) with batch_first, or unbatched (S, E).
            key_padding_mask: (N, S) or unbatched (S,); bool True = ignore that key, float = added.
            need_weights: also return the attention weights (the explicit softmax path, written with
                Tensor ops); otherwise run the same maths as one node (``ops.packed_attention``: the
                head split, scaled dot-product attention and head merge) and return None.
            attn_mask: (L, S) or (N * num_heads, L, S) (unbatched: (num_heads, L, S));
                bool True = NOT allowed, float = added to the scores.
            average_attn_weights: average the returned weights over heads.
            is_causal: a hint that ``attn_mask`` is the causal mask (torch: ``attn_mask`` is required).
                Without a key_padding_mask and with need_weights=False the mask is replaced by the
                causal mask, exactly as torch does; otherwise ``attn_mask`` is used.
        Returns:
            attn_output: same layout as ``query``: (L, N, E) / (N, L, E) / (L, E).
            attn_weights: None, or (N, L, S) averaged / (N, H, L, S) per head; unbatched (L, S) / (H, L, S).
                These are the weights after dropout, as torch returns them.

        NOTE: a query whose keys are all masked gets NaN in torch; here both paths give it zero
        weights and zero attention values, so its output is the output projection's bias (softmax
        over an all -inf row is zeros).
        """
        batched = self._check_shapes(query, key, value, key_padding_mask, attn_mask)
        same_qkv, same_kv = query is key and key is value, key is value
        if not batched:                                         # work batch-first with N = 1
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
        elif not self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)  # (N, L, E)
        n, q_len, e = query.shape
        k_len = key.shape[1]
        if key.shape != value.shape:
            raise RuntimeError(f"MultiheadAttention: key shape {key.shape} does not match value shape "
                               f"{value.shape}")
        if key.shape[0] != n:
            raise RuntimeError(f"MultiheadAttention: query has batch size {n} but key has {key.shape[0]}")
        bias, causal = self._merged_bias(key_padding_mask, attn_mask, is_causal, need_weights, batched, n, q_len,
                                         k_len, query.dtype, query.device)
        dropout_p = self.dropout if self.training else 0.0
        packed = self._packed_in_projection(query, key, value, same_qkv, same_kv)  # (N, L, 3E) | q, kv | q, k, v

        weights = None
        if need_weights:                                                       # the readable reference
            q, k, v = _unpack(packed)                                          # (N, L, E), (N, S, E), (N, S, E)
            h, d = self.num_heads, self.head_dim
            q = q.reshape(n, q_len, h, d).transpose(1, 2)                      # (N, H, L, D)
            k = k.reshape(n, k_len, h, d).transpose(1, 2)                      # (N, H, S, D)
            v = v.reshape(n, k_len, h, d).transpose(1, 2)                      # (N, H, S, D)
            scores = (q * (1.0 / math.sqrt(d))) @ k.transpose(-2, -1)          # (N, H, L, S)
            if bias is not None:
                scores = scores + Tensor(bias)
            weights = F.softmax(scores, dim=-1)                                # (N, H, L, S)
            weights = F.dropout(weights, dropout_p, training=dropout_p > 0)
            out = weights @ v                                                  # (N, H, L, D)
            out = out.transpose(1, 2).reshape(n, q_len, e)                     # (N, L, E)
            if average_attn_weights:
                weights = weights.mean(dim=1)                                  # (N, L, S)
        else:                                                                  # the same maths as one node
            rng = random.generator() if dropout_p > 0 else None
            out = PackedAttention.apply(*packed, num_heads=self.num_heads, mask=bias, is_causal=causal,
                                        dropout_p=dropout_p, rng=rng)         # (N, L, E)
        out = self.out_proj(out)                                               # (N, L, E)

        if not batched:
            out = out.squeeze(0)                                               # (L, E)
            weights = weights.squeeze(0) if weights is not None else None      # (L, S) or (H, L, S)
        elif not self.batch_first:
            out = out.transpose(0, 1)                                          # (L, N, E)
        return out, weights

    # ------------------------------------------------------------ helpers
    def _packed_in_projection(self, query: Tensor, key: Tensor, value: Tensor, same_qkv: bool,
                              same_kv: bool) -> tuple[Tensor, ...]:
        """The in-projection with one GEMM for self-attention and one for key/value when they are the
        same tensor (as torch): (qkv,) (N, L, 3E); or (q, kv) (N, L, E), (N, S, 2E); or (q, k, v)."""
        w, b, e = self.in_proj_weight, self.in_proj_bias, self.embed_dim
        if same_qkv:
            return (F.linear(query, w, b),)                                    # (N, L, 3E)
        q = F.linear(query, w[:e], b[:e] if b is not None else None)            # (N, L, E)
        if same_kv:
            return q, F.linear(key, w[e:], b[e:] if b is not None else None)    # (N, L, E), (N, S, 2E)
        k = F.linear(key, w[e:2 * e], b[e:2 * e] if b is not None else None)   # (N, S, E)
        v = F.linear(value, w[2 * e:], b[2 * e:] if b is not None else None)   # (N, S, E)
        return q, k, v

    def _merged_bias(self, key_padding_mask: Any, attn_mask: Any, is_causal: bool, need_weights: bool,
                     batched: bool, n: int, q_len: int, k_len: int, dtype: Any,
                     device: str) -> tuple[Any, bool]:
        """One additive bias broadcastable to (N, H, L, S) from both masks (torch's merge) or None, and
        whether the causal mask is to be applied instead (torch's is_causal fast path)."""
        h = self.num_heads
        padding = canonical_mask(key_padding_mask, "key_padding_mask", dtype, device)
        if padding is not None:
            padding = padding.reshape(n, 1, 1, k_len)                          # (N, 1, 1, S)
        if is_causal and attn_mask is None:
            raise RuntimeError("MultiheadAttention: is_causal=True is a hint and needs attn_mask too (torch's "
                               "rule); pass attn_mask=generate_square_subsequent_mask(L)")
        if is_causal and padding is None and not need_weights:
            return None, True      # torch: the hint wins and attn_mask is not even read (assumed causal)
        bias = canonical_mask(attn_mask, "attn_mask", dtype, device)
        if bias is not None:
            if bias.ndim == 2:
                if bias.shape != (q_len, k_len):
                    raise RuntimeError(f"MultiheadAttention: the 2D attn_mask has shape {tuple(bias.shape)}, "
                                       f"but should be {(q_len, k_len)}")
                bias = bias[None, None]                                        # (1, 1, L, S)
            else:
                want = (n * h, q_len, k_len) if batched else (h, q_len, k_len)
                if bias.shape != want:
                    raise RuntimeError(f"MultiheadAttention: the 3D attn_mask has shape {tuple(bias.shape)}, "
                                       f"but should be {want}")
                bias = bias.reshape(n, h, q_len, k_len)                        # (N, H, L, S)
        if padding is None:
            return bias, False
        return (padding if bias is None else bias + padding), False

    def _check_shapes(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Any,
                      attn_mask: Any) -> bool:
        """torch's _mha_shape_check, with the expected shapes in the message. Returns: batched?"""
        qd = query.ndim
        if qd not in (2, 3):
            raise RuntimeError(f"MultiheadAttention: query should be unbatched 2D or batched 3D, got shape "
                               f"{query.shape}")
        if key.ndim != qd or value.ndim != qd:
            raise RuntimeError(f"MultiheadAttention: for a {qd}D query, key and value must be {qd}D too, got "
                               f"key {key.shape} and value {value.shape}")
        if query.shape[-1] != self.embed_dim or key.shape[-1] != self.embed_dim:
            raise RuntimeError(f"MultiheadAttention: expected {self.embed_dim} features, got query {query.shape} "
                               f"and key {key.shape}")
        if key_padding_mask is not None:
            if qd == 3:
                n, s = (key.shape[0], key.shape[1]) if self.batch_first else (key.shape[1], key.shape[0])
                want = (n, s)
            else:
                want = (key.shape[0],)
            if _shape(key_padding_mask) != want:
                raise RuntimeError(f"MultiheadAttention: key_padding_mask has shape {_shape(key_padding_mask)}, "
                                   f"expected {want} ({'(N, S)' if qd == 3 else '(S,)'})")
        if attn_mask is not None and len(_shape(attn_mask)) not in (2, 3):
            raise RuntimeError(f"MultiheadAttention: attn_mask must be 2D (L, S) or 3D (N*num_heads, L, S), "
                               f"got shape {_shape(attn_mask)}")
        return qd == 3


def _unpack(packed: tuple[Tensor, ...]) -> tuple[Tensor, Tensor, Tensor]:
    """q, k, v from ``_packed_in_projection``'s output."""
    if len(packed) == 1:
        q, k, v = packed[0].chunk(3, dim=-1)                                   # 3 x (N, L, E)
        return q, k, v
    if len(packed) == 2:
        k, v = packed[1].chunk(2, dim=-1)                                      # 2 x (N, S, E)
        return packed[0], k, v
    return packed


def _shape(mask: Any) -> tuple[int, ...]:
    """The shape of a Tensor, array or torch tensor mask."""
    return tuple(mask.shape) if hasattr(mask, "shape") else np.shape(mask)
