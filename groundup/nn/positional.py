"""Positional information for attention: sinusoidal and learned absolute encodings, rotary embeddings.

- SinusoidalPositionalEncoding: a fixed table added to the input (Vaswani et al. 2017, section 3.5):
      pe[t, 2i] = sin(t / 10000^(2i / C)),   pe[t, 2i + 1] = cos(t / 10000^(2i / C))
- LearnedPositionalEncoding: a trained (max_len, C) table added to the input (GPT-2's ``wpe``).
- RotaryEmbedding (RoPE): rotates query and key features by an angle proportional to the position,
  so q_m . k_n depends on m - n only (Su et al. 2021, "RoFormer", https://arxiv.org/abs/2104.09864).
  Convention: GPT-NeoX / Hugging Face "rotate_half" — feature i is paired with feature i + D/2 (the
  two halves of the head), not with its neighbour 2i + 1 as in the paper and Meta's LLaMA code:
      out[..., i]       = x[..., i] cos(t w_i) - x[..., i + D/2] sin(t w_i)
      out[..., i + D/2] = x[..., i + D/2] cos(t w_i) + x[..., i] sin(t w_i),   w_i = base^(-2i / D)
  Both conventions are the same maths up to a fixed permutation of the head's features.

Reference: Vaswani et al. 2017, "Attention Is All You Need" (https://arxiv.org/abs/1706.03762).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from groundup import backend, creation
from groundup.backend import DEFAULT_FLOAT, as_dtype
from groundup.nn import init
from groundup.nn.module import Module, Parameter
from groundup.tensor import Tensor

__all__ = ["SinusoidalPositionalEncoding", "LearnedPositionalEncoding", "RotaryEmbedding"]


def _check_span(name: str, offset: int, length: int, max_len: int) -> None:
    if offset < 0 or offset + length > max_len:
        raise ValueError(f"{name}: positions {offset}..{offset + length - 1} are outside 0..{max_len - 1} "
                         f"(max_len={max_len}); build it with a larger max_len")


class SinusoidalPositionalEncoding(Module):
    """Adds the fixed sinusoidal table ``pe`` (a buffer, not a parameter) to the input.

    Args:
        d_model: feature width C (odd widths work: the last column is a sine).
        max_len: number of positions in the table.
        dtype: float dtype of the table (computed in float64, then cast).
        persistent: keep ``pe`` in ``state_dict`` (torch's habit); False leaves it out, since it
            follows from the arguments.
    """

    def __init__(self, d_model: int, max_len: int = 5000, dtype: Any = None, persistent: bool = True):
        super().__init__()
        if d_model <= 0 or max_len <= 0:
            raise ValueError(f"SinusoidalPositionalEncoding: d_model and max_len must be > 0, got {d_model}, "
                             f"{max_len}")
        self.d_model, self.max_len = d_model, max_len
        position = np.arange(max_len, dtype=np.float64)[:, None]                    # (max_len, 1)
        inv_freq = np.exp(np.arange(0, d_model, 2) * (-math.log(10000.0) / d_model))  # (ceil(C/2),)
        pe = np.zeros((max_len, d_model))
        pe[:, 0::2] = np.sin(position * inv_freq)                                   # (max_len, ceil(C/2))
        pe[:, 1::2] = np.cos(position * inv_freq[: d_model // 2])                   # (max_len, floor(C/2))
        self.register_buffer("pe", Tensor(pe.astype(as_dtype(dtype) if dtype is not None else DEFAULT_FLOAT)),
                             persistent=persistent)

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        """x (..., T, C) -> x + pe[offset : offset + T], same shape (e.g. (B, T, C) batch-first).

        ``offset`` is the position of the first step (for incremental decoding).
        """
        t = x.shape[-2]
        if x.shape[-1] != self.d_model:
            raise ValueError(f"SinusoidalPositionalEncoding: expected {self.d_model} features, got shape {x.shape}")
        _check_span("SinusoidalPositionalEncoding", offset, t, self.max_len)
        table = self.pe.data[offset:offset + t]                                      # (T, C)
        return x + Tensor(table.astype(x.dtype, copy=False))

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, max_len={self.max_len}"


class LearnedPositionalEncoding(Module):
    """Adds rows of a learned (max_len, d_model) table ``weight`` to the input (an Embedding table
    indexed by position; initialised N(0, 1) as nn.Embedding).

    Args:
        max_len: number of positions.
        d_model: feature width C.
    """

    def __init__(self, max_len: int, d_model: int, dtype: Any = None):
        super().__init__()
        if d_model <= 0 or max_len <= 0:
            raise ValueError(f"LearnedPositionalEncoding: max_len and d_model must be > 0, got {max_len}, "
                             f"{d_model}")
        self.max_len, self.d_model = max_len, d_model
        self.weight = Parameter(creation.empty(max_len, d_model, dtype=dtype))
        init.normal_(self.weight)

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        """x (..., T, C) -> x + weight[offset : offset + T], same shape (e.g. (B, T, C) batch-first)."""
        t = x.shape[-2]
        if x.shape[-1] != self.d_model:
            raise ValueError(f"LearnedPositionalEncoding: expected {self.d_model} features, got shape {x.shape}")
        _check_span("LearnedPositionalEncoding", offset, t, self.max_len)
        return x + self.weight[offset:offset + t]                                     # (..., T, C)

    def extra_repr(self) -> str:
        return f"max_len={self.max_len}, d_model={self.d_model}"


class RotaryEmbedding(Module):
    """Rotary position embedding (RoPE), GPT-NeoX half-split convention (see the module docstring).

    Args:
        head_dim: D, the per-head feature width (even).
        max_len: number of positions in the cos/sin tables.
        base: the wavelength base; pair i turns by angle ``t * base^(-2i/D)`` at position t.
        dtype: float dtype of the tables (computed in float64, then cast).

    Buffers (not saved in state_dict: they follow from the arguments): ``cos_cached``, ``sin_cached``,
    each (max_len, D) = [cos(t w), cos(t w)] / [sin(t w), sin(t w)] for the two halves.
    """

    def __init__(self, head_dim: int, max_len: int = 2048, base: float = 10000.0, dtype: Any = None):
        super().__init__()
        if head_dim <= 0 or head_dim % 2:
            raise ValueError(f"RotaryEmbedding: head_dim must be a positive even number, got {head_dim}")
        if max_len <= 0:
            raise ValueError(f"RotaryEmbedding: max_len must be > 0, got {max_len}")
        self.head_dim, self.max_len, self.base = head_dim, max_len, base
        inv_freq = base ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)   # (D/2,)
        angles = np.arange(max_len, dtype=np.float64)[:, None] * inv_freq[None, :]   # (max_len, D/2)
        angles = np.concatenate([angles, angles], axis=-1)                           # (max_len, D)
        dt = as_dtype(dtype) if dtype is not None else DEFAULT_FLOAT
        self.register_buffer("cos_cached", Tensor(np.cos(angles).astype(dt)), persistent=False)
        self.register_buffer("sin_cached", Tensor(np.sin(angles).astype(dt)), persistent=False)

    def rotate(self, x: Tensor, offset: int = 0, positions: Any = None) -> Tensor:
        """Rotate the features of ``x`` by its positions.

        Args:
            x: (B, H, T, D) queries or keys (any (..., T, D) works).
            offset: position of the first step (used when ``positions`` is None): step j is at
                position offset + j (for decoding with a cache).
            positions: optional integer positions, (T,) or (B, T) (the latter for (B, H, T, D) input).
        Returns:
            (B, H, T, D), same shape and dtype as ``x``; each feature pair keeps its norm.
        """
        t, d = x.shape[-2], x.shape[-1]
        if d != self.head_dim:
            raise ValueError(f"RotaryEmbedding: expected head_dim {self.head_dim} as the last dim, got shape "
                             f"{x.shape}")
        if positions is None:
            _check_span("RotaryEmbedding", offset, t, self.max_len)
            cos = self.cos_cached.data[offset:offset + t]                             # (T, D)
            sin = self.sin_cached.data[offset:offset + t]                             # (T, D)
        else:
            pos = positions.data if isinstance(positions, Tensor) else np.asarray(positions)
            pos = backend.to_numpy(pos)
            if pos.dtype.kind not in "iu" or pos.ndim not in (1, 2) or pos.shape[-1] != t:
                raise ValueError(f"RotaryEmbedding: positions must be integers of shape (T,) or (B, T) with "
                                 f"T={t}, got {pos.dtype} {pos.shape}")
            if pos.size and (pos.min() < 0 or pos.max() >= self.max_len):
                raise ValueError(f"RotaryEmbedding: positions must be in 0..{self.max_len - 1}, got "
                                 f"{pos.min()}..{pos.max()}")
            pos = backend.to_device(pos, self.cos_cached.device)
            cos, sin = self.cos_cached.data[pos], self.sin_cached.data[pos]           # (T, D) or (B, T, D)
            if pos.ndim == 2:
                if x.ndim != 4 or x.shape[0] != pos.shape[0]:
                    raise ValueError(f"RotaryEmbedding: (B, T) positions {pos.shape} need x of shape (B, H, T, D),"
                                     f" got {x.shape}")
                cos, sin = cos[:, None], sin[:, None]                                 # (B, 1, T, D)
        cos = Tensor(cos.astype(x.dtype, copy=False))
        sin = Tensor(sin.astype(x.dtype, copy=False))
        half = d // 2
        rotated = creation.cat([-x[..., half:], x[..., :half]], dim=-1)                # (..., T, D)
        return x * cos + rotated * sin

    def forward(self, q: Tensor, k: Tensor, offset: int = 0, positions: Any = None) -> tuple[Tensor, Tensor]:
        """Rotate queries and keys: q (B, H, T, D), k (B, H, T, D) -> (q_rot, k_rot), same shapes."""
        return self.rotate(q, offset, positions), self.rotate(k, offset, positions)

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, max_len={self.max_len}, base={self.base}"
