"""Transformer encoder/decoder layers and stacks with torch.nn's arguments, forward and state_dict keys.

    post-norm (norm_first=False, the 2017 paper):  x = norm1(x + sa(x));        x = norm2(x + ff(x))
    pre-norm  (norm_first=True, Xiong et al. 2020): x = x + sa(norm1(x));        x = x + ff(norm2(x))
    ff(x) = dropout2(linear2(dropout(activation(linear1(x)))))

The decoder layer adds cross-attention to ``memory`` (``multihead_attn``, ``norm3``, ``dropout3``).
Stacks (TransformerEncoder/Decoder) hold deep copies of the layer under ``layers.{i}``, and
Transformer joins an encoder and a decoder stack, so a torch checkpoint loads unchanged. Hook points
(``groundup.nn.hooks``) on each layer: ``hook_attn_out`` (self-attention's output), the decoder's
``hook_cross_attn_out``, ``hook_mlp_out`` and ``hook_resid_post`` (the layer's output), e.g.
``transformer.decoder.layers.0.hook_cross_attn_out``.

References: Vaswani et al. 2017, "Attention Is All You Need" (https://arxiv.org/abs/1706.03762);
Xiong et al. 2020, "On Layer Normalization in the Transformer Architecture"
(https://arxiv.org/abs/2002.04745); torch.nn.modules.transformer.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np

from groundup import functional as F
from groundup.backend import DEFAULT_FLOAT, as_dtype
from groundup.nn import init
from groundup.nn.attention import MultiheadAttention, canonical_mask
from groundup.nn.containers import ModuleList
from groundup.nn.hooks import HookPoint
from groundup.nn.layers import Dropout, LayerNorm, Linear
from groundup.nn.module import Module
from groundup.tensor import Tensor

__all__ = [
    "TransformerEncoderLayer", "TransformerDecoderLayer", "TransformerEncoder", "TransformerDecoder",
    "Transformer", "generate_square_subsequent_mask",
]


def generate_square_subsequent_mask(sz: int, device: Any = None, dtype: Any = None) -> Tensor:
    """The (sz, sz) float causal mask: 0 on and below the diagonal, -inf above (key j > query i blocked).

    Same values as ``torch.nn.Transformer.generate_square_subsequent_mask``.
    """
    dt = as_dtype(dtype) if dtype is not None else DEFAULT_FLOAT
    mask = np.triu(np.full((sz, sz), -np.inf, dtype=dt), 1)          # (sz, sz)
    return Tensor(mask, device=device)


def _activation_fn(activation: str | Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    if isinstance(activation, str):
        if activation == "relu":
            return F.relu
        if activation == "gelu":
            return F.gelu
        raise ValueError(f"activation should be 'relu' or 'gelu' (or a callable), not {activation!r}")
    if not callable(activation):
        raise TypeError(f"activation must be 'relu', 'gelu' or a callable, got {type(activation).__name__}")
    return activation


def _get_clones(module: Module, n: int) -> ModuleList:
    """``n`` independent deep copies of ``module``: fresh Parameters (and buffers) holding equal values."""
    return ModuleList([copy.deepcopy(module) for _ in range(n)])


def _seq_len(x: Tensor, batch_first: bool) -> int:
    """Sequence length of (T, N, E), (N, T, E) with batch_first, or unbatched (T, E)."""
    if x.ndim == 2:
        return x.shape[0]
    return x.shape[1 if batch_first else 0]


def _detect_is_causal_mask(mask: Any, is_causal: bool | None, size: int) -> bool:
    """torch's rule: an explicit hint wins; with None, the hint is True iff ``mask`` equals the causal mask."""
    if is_causal is not None:
        return bool(is_causal)
    if mask is None:
        return False
    bias = canonical_mask(mask, "mask", np.float64, "cpu")
    if tuple(bias.shape) != (size, size):
        return False
    causal = np.triu(np.full((size, size), -np.inf), 1)
    return bool(np.array_equal(np.asarray(bias), causal))


class TransformerEncoderLayer(Module):
    """Self-attention + feed-forward block (torch.nn.TransformerEncoderLayer).

    Args:
        d_model: model width E.
        nhead: number of attention heads.
        dim_feedforward: hidden width of the feed-forward network.
        dropout: dropout probability (attention weights, residual branches, feed-forward hidden).
        activation: 'relu', 'gelu' or a callable (e.g. ``F.gelu`` or ``nn.GELU()``).
        layer_norm_eps: LayerNorm epsilon.
        batch_first: inputs are (N, T, E) instead of (T, N, E).
        norm_first: pre-norm (LayerNorm before each sublayer) instead of post-norm.
        bias: biases in the Linear and LayerNorm layers (and attention).
        device, dtype: where and in which float dtype to create the parameters.
    """

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048, dropout: float = 0.1,
                 activation: str | Callable[[Tensor], Tensor] = F.relu, layer_norm_eps: float = 1e-5,
                 batch_first: bool = False, norm_first: bool = False, bias: bool = True, device: Any = None,
                 dtype: Any = None):
        super().__init__()
        self.self_attn = MultiheadAttention(d_model, nhead, dropout=dropout, bias=bias, batch_first=batch_first,
                                            dtype=dtype)
        self.linear1 = Linear(d_model, dim_feedforward, bias=bias, dtype=dtype)
        self.dropout = Dropout(dropout)
        self.linear2 = Linear(dim_feedforward, d_model, bias=bias, dtype=dtype)
        self.norm_first = norm_first
        self.norm1 = LayerNorm(d_model, eps=layer_norm_eps, bias=bias, dtype=dtype)
        self.norm2 = LayerNorm(d_model, eps=layer_norm_eps, bias=bias, dtype=dtype)
        self.dropout1 = Dropout(dropout)
        self.dropout2 = Dropout(dropout)
        self.activation = _activation_fn(activation)
        self.hook_attn_out, self.hook_mlp_out, self.hook_resid_post = HookPoint(), HookPoint(), HookPoint()
        if device is not None:
            self.to(device)

    def forward(self, src: Tensor, src_mask: Any = None, src_key_padding_mask: Any = None,
                is_causal: bool = False) -> Tensor:
        """Args:
            src: (T, N, E), (N, T, E) with batch_first, or unbatched (T, E).
            src_mask: (T, T) or (N * nhead, T, T); bool True = NOT allowed, float = added.
            src_key_padding_mask: (N, T) (unbatched (T,)); bool True = padding.
            is_causal: hint that ``src_mask`` is the causal mask (see MultiheadAttention).
        Returns:
            same shape as ``src``.
        """
        x = src
        if self.norm_first:
            x = x + self.hook_attn_out(self._sa_block(self.norm1(x), src_mask, src_key_padding_mask, is_causal))
            x = x + self.hook_mlp_out(self._ff_block(self.norm2(x)))
        else:
            x = self.norm1(x + self.hook_attn_out(self._sa_block(x, src_mask, src_key_padding_mask, is_causal)))
            x = self.norm2(x + self.hook_mlp_out(self._ff_block(x)))
        return self.hook_resid_post(x)

    def _sa_block(self, x: Tensor, attn_mask: Any, key_padding_mask: Any, is_causal: bool) -> Tensor:
        x = self.self_attn(x, x, x, attn_mask=attn_mask, key_padding_mask=key_padding_mask, need_weights=False,
                           is_causal=is_causal)[0]
        return self.dropout1(x)

    def _ff_block(self, x: Tensor) -> Tensor:
        x = self.linear2(self.dropout(self.activation(self.linear1(x))))
        return self.dropout2(x)


class TransformerDecoderLayer(Module):
    """Self-attention + cross-attention to ``memory`` + feed-forward (torch.nn.TransformerDecoderLayer).

    Args: as TransformerEncoderLayer.
    """

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048, dropout: float = 0.1,
                 activation: str | Callable[[Tensor], Tensor] = F.relu, layer_norm_eps: float = 1e-5,
                 batch_first: bool = False, norm_first: bool = False, bias: bool = True, device: Any = None,
                 dtype: Any = None):
        super().__init__()
        self.self_attn = MultiheadAttention(d_model, nhead, dropout=dropout, bias=bias, batch_first=batch_first,
                                            dtype=dtype)
        self.multihead_attn = MultiheadAttention(d_model, nhead, dropout=dropout, bias=bias,
                                                 batch_first=batch_first, dtype=dtype)
        self.linear1 = Linear(d_model, dim_feedforward, bias=bias, dtype=dtype)
        self.dropout = Dropout(dropout)
        self.linear2 = Linear(dim_feedforward, d_model, bias=bias, dtype=dtype)
        self.norm_first = norm_first
        self.norm1 = LayerNorm(d_model, eps=layer_norm_eps, bias=bias, dtype=dtype)
        self.norm2 = LayerNorm(d_model, eps=layer_norm_eps, bias=bias, dtype=dtype)
        self.norm3 = LayerNorm(d_model, eps=layer_norm_eps, bias=bias, dtype=dtype)
        self.dropout1 = Dropout(dropout)
        self.dropout2 = Dropout(dropout)
        self.dropout3 = Dropout(dropout)
        self.activation = _activation_fn(activation)
        self.hook_attn_out, self.hook_cross_attn_out = HookPoint(), HookPoint()
        self.hook_mlp_out, self.hook_resid_post = HookPoint(), HookPoint()
        if device is not None:
            self.to(device)

    def forward(self, tgt: Tensor, memory: Tensor, tgt_mask: Any = None, memory_mask: Any = None,
                tgt_key_padding_mask: Any = None, memory_key_padding_mask: Any = None, tgt_is_causal: bool = False,
                memory_is_causal: bool = False) -> Tensor:
        """Args:
            tgt: (T, N, E), (N, T, E) with batch_first, or unbatched (T, E).
            memory: (S, N, E), (N, S, E) with batch_first, or unbatched (S, E) (the encoder output).
            tgt_mask: (T, T) or (N * nhead, T, T); memory_mask: (T, S) or (N * nhead, T, S).
            tgt_key_padding_mask: (N, T); memory_key_padding_mask: (N, S); bool True = padding.
            tgt_is_causal, memory_is_causal: hints that the masks are causal (see MultiheadAttention).
        Returns:
            same shape as ``tgt``.
        """
        x = tgt
        sa, ff = self.hook_attn_out, self.hook_mlp_out

        def cross(h: Tensor) -> Tensor:
            return self.hook_cross_attn_out(self._mha_block(h, memory, memory_mask, memory_key_padding_mask,
                                                            memory_is_causal))

        if self.norm_first:
            x = x + sa(self._sa_block(self.norm1(x), tgt_mask, tgt_key_padding_mask, tgt_is_causal))
            x = x + cross(self.norm2(x))
            x = x + ff(self._ff_block(self.norm3(x)))
        else:
            x = self.norm1(x + sa(self._sa_block(x, tgt_mask, tgt_key_padding_mask, tgt_is_causal)))
            x = self.norm2(x + cross(x))
            x = self.norm3(x + ff(self._ff_block(x)))
        return self.hook_resid_post(x)

    def _sa_block(self, x: Tensor, attn_mask: Any, key_padding_mask: Any, is_causal: bool) -> Tensor:
        x = self.self_attn(x, x, x, attn_mask=attn_mask, key_padding_mask=key_padding_mask, is_causal=is_causal,
                           need_weights=False)[0]
        return self.dropout1(x)

    def _mha_block(self, x: Tensor, mem: Tensor, attn_mask: Any, key_padding_mask: Any, is_causal: bool) -> Tensor:
        x = self.multihead_attn(x, mem, mem, attn_mask=attn_mask, key_padding_mask=key_padding_mask,
                                is_causal=is_causal, need_weights=False)[0]
        return self.dropout2(x)

    def _ff_block(self, x: Tensor) -> Tensor:
        x = self.linear2(self.dropout(self.activation(self.linear1(x))))
        return self.dropout3(x)


class TransformerEncoder(Module):
    """A stack of ``num_layers`` deep copies of ``encoder_layer`` (keys ``layers.{i}.…``), then ``norm``.

    ``enable_nested_tensor`` and ``mask_check`` are accepted for torch's signature and do nothing:
    they only select torch's nested-tensor fast path. NOTE: that path (eval mode, no grad, with a
    src_key_padding_mask) returns 0 at padded positions in torch; here padded positions always hold
    the ordinary layer output.
    """

    def __init__(self, encoder_layer: TransformerEncoderLayer, num_layers: int, norm: Module | None = None,
                 enable_nested_tensor: bool = True, mask_check: bool = True):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"TransformerEncoder: num_layers must be >= 1, got {num_layers}")
        self.layers = _get_clones(encoder_layer, num_layers)
        self.num_layers = num_layers
        self.norm = norm
        self.enable_nested_tensor, self.mask_check = enable_nested_tensor, mask_check

    def forward(self, src: Tensor, mask: Any = None, src_key_padding_mask: Any = None,
                is_causal: bool | None = None) -> Tensor:
        """Args:
            src: (T, N, E), (N, T, E) with batch_first, or unbatched (T, E).
            mask: (T, T) or (N * nhead, T, T); src_key_padding_mask: (N, T).
            is_causal: hint that ``mask`` is causal; None detects it by comparing with the causal mask.
        Returns:
            same shape as ``src``.
        """
        seq_len = _seq_len(src, self.layers[0].self_attn.batch_first)
        is_causal = _detect_is_causal_mask(mask, is_causal, seq_len)
        output = src
        for layer in self.layers:
            output = layer(output, src_mask=mask, is_causal=is_causal, src_key_padding_mask=src_key_padding_mask)
        return self.norm(output) if self.norm is not None else output


class TransformerDecoder(Module):
    """A stack of ``num_layers`` deep copies of ``decoder_layer`` (keys ``layers.{i}.…``), then ``norm``."""

    def __init__(self, decoder_layer: TransformerDecoderLayer, num_layers: int, norm: Module | None = None):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"TransformerDecoder: num_layers must be >= 1, got {num_layers}")
        self.layers = _get_clones(decoder_layer, num_layers)
        self.num_layers = num_layers
        self.norm = norm

    def forward(self, tgt: Tensor, memory: Tensor, tgt_mask: Any = None, memory_mask: Any = None,
                tgt_key_padding_mask: Any = None, memory_key_padding_mask: Any = None,
                tgt_is_causal: bool | None = None, memory_is_causal: bool = False) -> Tensor:
        """Args: as TransformerDecoderLayer.forward; ``tgt_is_causal=None`` detects a causal ``tgt_mask``.
        Returns:
            same shape as ``tgt``.
        """
        seq_len = _seq_len(tgt, self.layers[0].self_attn.batch_first)
        tgt_is_causal = _detect_is_causal_mask(tgt_mask, tgt_is_causal, seq_len)
        output = tgt
        for layer in self.layers:
            output = layer(output, memory, tgt_mask=tgt_mask, memory_mask=memory_mask,
                           tgt_key_padding_mask=tgt_key_padding_mask, memory_key_padding_mask=memory_key_padding_mask,
                           tgt_is_causal=tgt_is_causal, memory_is_causal=memory_is_causal)
        return self.norm(output) if self.norm is not None else output


class Transformer(Module):
    """Encoder-decoder Transformer (torch.nn.Transformer): ``encoder`` and ``decoder`` stacks, each ending
    in a LayerNorm (``encoder.norm``, ``decoder.norm``). Every weight matrix is re-initialised with
    xavier_uniform_, as torch does.
    """

    def __init__(self, d_model: int = 512, nhead: int = 8, num_encoder_layers: int = 6,
                 num_decoder_layers: int = 6, dim_feedforward: int = 2048, dropout: float = 0.1,
                 activation: str | Callable[[Tensor], Tensor] = F.relu, custom_encoder: Module | None = None,
                 custom_decoder: Module | None = None, layer_norm_eps: float = 1e-5, batch_first: bool = False,
                 norm_first: bool = False, bias: bool = True, device: Any = None, dtype: Any = None):
        super().__init__()
        layer_args = dict(dim_feedforward=dim_feedforward, dropout=dropout, activation=activation,
                          layer_norm_eps=layer_norm_eps, batch_first=batch_first, norm_first=norm_first, bias=bias,
                          dtype=dtype)
        if custom_encoder is not None:
            self.encoder = custom_encoder
        else:
            layer = TransformerEncoderLayer(d_model, nhead, **layer_args)
            norm = LayerNorm(d_model, eps=layer_norm_eps, bias=bias, dtype=dtype)
            self.encoder = TransformerEncoder(layer, num_encoder_layers, norm)
        if custom_decoder is not None:
            self.decoder = custom_decoder
        else:
            layer = TransformerDecoderLayer(d_model, nhead, **layer_args)
            norm = LayerNorm(d_model, eps=layer_norm_eps, bias=bias, dtype=dtype)
            self.decoder = TransformerDecoder(layer, num_decoder_layers, norm)
        for p in self.parameters():
            if p.ndim > 1:
                init.xavier_uniform_(p)
        self.d_model, self.nhead, self.batch_first = d_model, nhead, batch_first
        if device is not None:
            self.to(device)

    def forward(self, src: Tensor, tgt: Tensor, src_mask: Any = None, tgt_mask: Any = None, memory_mask: Any = None,
                src_key_padding_mask: Any = None, tgt_key_padding_mask: Any = None,
                memory_key_padding_mask: Any = None, src_is_causal: bool | None = None,
                tgt_is_causal: bool | None = None, memory_is_causal: bool = False) -> Tensor:
        """Args:
            src: (S, N, E) / (N, S, E) with batch_first / unbatched (S, E).
            tgt: (T, N, E) / (N, T, E) with batch_first / unbatched (T, E).
            masks: as TransformerEncoder.forward (src_*) and TransformerDecoder.forward (tgt_*, memory_*).
        Returns:
            same shape as ``tgt``.
        """
        batched = src.ndim == 3
        if batched and src.shape[0 if self.batch_first else 1] != tgt.shape[0 if self.batch_first else 1]:
            raise RuntimeError(f"Transformer: src {src.shape} and tgt {tgt.shape} have different batch sizes")
        if src.shape[-1] != self.d_model or tgt.shape[-1] != self.d_model:
            raise RuntimeError(f"Transformer: src {src.shape} and tgt {tgt.shape} must have {self.d_model} "
                               "features (d_model)")
        memory = self.encoder(src, mask=src_mask, src_key_padding_mask=src_key_padding_mask,
                              is_causal=src_is_causal)
        return self.decoder(tgt, memory, tgt_mask=tgt_mask, memory_mask=memory_mask,
                            tgt_key_padding_mask=tgt_key_padding_mask,
                            memory_key_padding_mask=memory_key_padding_mask, tgt_is_causal=tgt_is_causal,
                            memory_is_causal=memory_is_causal)

    @staticmethod
    def generate_square_subsequent_mask(sz: int, device: Any = None, dtype: Any = None) -> Tensor:
        """(sz, sz) float causal mask: 0 on and below the diagonal, -inf above."""
        return generate_square_subsequent_mask(sz, device=device, dtype=dtype)
