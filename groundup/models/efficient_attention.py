"""Causal attention four ways: full, sliding-window, linear and memory-efficient exact attention.

Every function takes q, k, v of shape (B, H, T, D) (Tensors, or arrays that are turned into
Tensors) and returns the causal attention output (B, H, T, D) as a groundup Tensor. All four are
written with engine Tensor ops only, so they are differentiable; the blocked ones are meant for
measuring time and memory under ``gu.no_grad()`` (with gradients on, autograd keeps every block's
intermediates and the memory saving is gone).

- ``full_attention``: softmax(q k^T / sqrt(D) + causal mask) v, materialising the T x T scores:
  time and memory O(T^2).
- ``sliding_window_attention``: position i attends to positions i - window + 1 .. i only (the
  local band of Longformer / Mistral); computed one block of ``window`` queries at a time against
  at most 2 * window keys, so time and memory are O(T * window).
- ``linear_attention``: Katharopoulos et al. 2020, "Transformers are RNNs", https://arxiv.org/abs/2006.16236:
  softmax(q.k) is replaced by phi(q).phi(k) with phi(x) = elu(x) + 1, so causal attention becomes
  out_i = phi(q_i) S_i / (phi(q_i) . z_i) with running sums S_i = sum_{j<=i} phi(k_j) v_j^T and
  z_i = sum_{j<=i} phi(k_j). The cumulative sums are carried from block to block (inside a block the
  same sums are a lower-triangular product), so time and memory are O(T).
- ``chunked_attention``: exact softmax attention with memory O(T): queries in chunks, each chunk
  streaming over key chunks with an online softmax (running max m, running normaliser l, running
  output), as in Rabe & Staats 2021, "Self-attention Does Not Need O(n^2) Memory",
  https://arxiv.org/abs/2112.05682, and FlashAttention (Dao et al. 2022, https://arxiv.org/abs/2205.14135).
  Time stays O(T^2); only the memory changes. Outputs equal ``full_attention`` to float rounding.
"""

from __future__ import annotations

import math
from typing import Any

import groundup as gu
from groundup.tensor import Tensor

__all__ = ["full_attention", "sliding_window_attention", "linear_attention", "chunked_attention", "elu_feature_map"]


def _as_qkv(name: str, q: Any, k: Any, v: Any) -> tuple[Tensor, Tensor, Tensor]:
    """Tensors of q, k, v, checked to be (B, H, T, D) with the same shape."""
    q, k, v = (x if isinstance(x, Tensor) else gu.tensor(x) for x in (q, k, v))
    if q.ndim != 4:
        raise ValueError(f"{name}: expected q, k, v of shape (B, H, T, D), got q of shape {tuple(q.shape)}")
    if tuple(k.shape) != tuple(q.shape) or tuple(v.shape) != tuple(q.shape):
        raise ValueError(f"{name}: q, k and v must have the same shape (B, H, T, D), got {tuple(q.shape)}, "
                         f"{tuple(k.shape)} and {tuple(v.shape)}")
    return q, k, v


def _positive_int(name: str, what: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: {what} must be a positive integer, got {value!r}")
    return value


def full_attention(q: Any, k: Any, v: Any) -> Tensor:
    """Causal softmax attention that materialises the T x T score matrix.

    Args:
        q, k, v: (B, H, T, D).
    Returns:
        (B, H, T, D): out_i = sum_{j <= i} softmax_j(q_i . k_j / sqrt(D)) v_j.
    """
    q, k, v = _as_qkv("full_attention", q, k, v)
    T, D = q.shape[-2], q.shape[-1]
    scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(D))                 # (B, H, T, T)
    future = gu.ones(T, T, dtype=gu.bool, device=q.device).triu(1)           # (T, T): True above the diagonal
    weights = scores.masked_fill(future, float("-inf")).softmax(dim=-1)       # (B, H, T, T)
    return weights @ v                                                        # (B, H, T, D)


def sliding_window_attention(q: Any, k: Any, v: Any, window: int) -> Tensor:
    """Causal attention in which position i sees only the last ``window`` positions, i - window + 1 .. i.

    The queries go in blocks of ``window``; block [s, e) needs only keys [s - window + 1, e), so each
    block costs O(window^2) and the whole call O(T * window) in time and memory.

    Args:
        q, k, v: (B, H, T, D).
        window: positive int; ``window >= T`` gives full causal attention.
    Returns:
        (B, H, T, D).
    """
    q, k, v = _as_qkv("sliding_window_attention", q, k, v)
    window = _positive_int("sliding_window_attention", "window", window)
    T, D = q.shape[-2], q.shape[-1]
    scale = 1.0 / math.sqrt(D)
    outputs = []
    for start in range(0, T, window):
        end = min(start + window, T)
        key_start = max(0, start - window + 1)
        scores = (q[:, :, start:end] @ k[:, :, key_start:end].transpose(-2, -1)) * scale   # (B, H, n, m)
        rows = gu.arange(start, end, device=q.device).reshape(-1, 1)          # (n, 1) query positions
        cols = gu.arange(key_start, end, device=q.device).reshape(1, -1)      # (1, m) key positions
        outside = (cols > rows) | (cols <= rows - window)                     # (n, m): future or too far back
        weights = scores.masked_fill(outside, float("-inf")).softmax(dim=-1)  # (B, H, n, m)
        outputs.append(weights @ v[:, :, key_start:end])                      # (B, H, n, D)
    return gu.cat(outputs, dim=2)                                             # (B, H, T, D)


def elu_feature_map(x: Tensor) -> Tensor:
    """phi(x) = elu(x) + 1 (positive everywhere), written as relu(x) + exp(min(x, 0))."""
    return x.relu() + x.clamp(max=0.0).exp()


def linear_attention(q: Any, k: Any, v: Any, chunk: int = 64) -> Tensor:
    """Causal linear attention (Katharopoulos et al. 2020) with phi(x) = elu(x) + 1, O(T) time and memory.

    out_i = phi(q_i)^T S_i / (phi(q_i) . z_i), with S_i = sum_{j<=i} phi(k_j) v_j^T (D x D) and
    z_i = sum_{j<=i} phi(k_j). The sums up to the start of each block of ``chunk`` positions are
    carried as a state (an RNN's hidden state: this is why the paper calls transformers RNNs);
    inside a block the remaining terms are the lower-triangular product (phi(Q) phi(K)^T masked) V.
    ``chunk`` changes only the speed, not the result.

    Args:
        q, k, v: (B, H, T, D).
        chunk: positive int, positions per block.
    Returns:
        (B, H, T, D).
    """
    q, k, v = _as_qkv("linear_attention", q, k, v)
    chunk = _positive_int("linear_attention", "chunk", chunk)
    B, H, T, D = q.shape
    fq, fk = elu_feature_map(q), elu_feature_map(k)                           # (B, H, T, D) each, > 0
    state = gu.zeros(B, H, D, D, dtype=q.dtype, device=q.device)              # S: sum of phi(k_j) v_j^T so far
    normaliser = gu.zeros(B, H, 1, D, dtype=q.dtype, device=q.device)         # z^T: sum of phi(k_j) so far
    outputs = []
    for start in range(0, T, chunk):
        end = min(start + chunk, T)
        qb, kb, vb = fq[:, :, start:end], fk[:, :, start:end], v[:, :, start:end]  # (B, H, n, D) each
        local = (qb @ kb.transpose(-2, -1)).tril()                            # (B, H, n, n): j <= i in the block
        numerator = qb @ state + local @ vb                                   # (B, H, n, D)
        denominator = (qb * normaliser).sum(dim=-1, keepdim=True) + local.sum(dim=-1, keepdim=True)  # (B, H, n, 1)
        outputs.append(numerator / denominator)
        state = state + kb.transpose(-2, -1) @ vb                             # (B, H, D, D)
        normaliser = normaliser + kb.sum(dim=2, keepdim=True)                 # (B, H, 1, D)
    return gu.cat(outputs, dim=2)                                             # (B, H, T, D)


def chunked_attention(q: Any, k: Any, v: Any, chunk: int = 128) -> Tensor:
    """Exact causal softmax attention with memory linear in T: an online softmax over key chunks.

    For each chunk of queries, the key chunks up to the diagonal are read one at a time, keeping
    a running max m, a running normaliser l = sum exp(s - m) and a running output acc =
    sum exp(s - m) v. When a new chunk raises the max to m', the old sums are rescaled by
    exp(m - m') (the FlashAttention / Rabe-Staats trick). Only chunk x chunk scores ever exist.

    Args:
        q, k, v: (B, H, T, D).
        chunk: positive int, queries (and keys) per block.
    Returns:
        (B, H, T, D), equal to ``full_attention(q, k, v)`` up to float rounding.
    """
    q, k, v = _as_qkv("chunked_attention", q, k, v)
    chunk = _positive_int("chunked_attention", "chunk", chunk)
    T, D = q.shape[-2], q.shape[-1]
    scale = 1.0 / math.sqrt(D)
    outputs = []
    for q_start in range(0, T, chunk):
        q_end = min(q_start + chunk, T)
        qb = q[:, :, q_start:q_end] * scale                                   # (B, H, n, D)
        running_max = running_sum = acc = None
        for k_start in range(0, q_end, chunk):                                # key chunks up to the diagonal
            k_end = min(k_start + chunk, q_end)
            scores = qb @ k[:, :, k_start:k_end].transpose(-2, -1)            # (B, H, n, m)
            if k_end > q_start:                                               # the diagonal chunk: mask the future
                rows = gu.arange(q_start, q_end, device=q.device).reshape(-1, 1)   # (n, 1)
                cols = gu.arange(k_start, k_end, device=q.device).reshape(1, -1)   # (1, m)
                scores = scores.masked_fill(cols > rows, float("-inf"))
            chunk_max = scores.amax(dim=-1, keepdim=True).detach()           # (B, H, n, 1); a shift only
            new_max = chunk_max if running_max is None else running_max.maximum(chunk_max)
            weights = (scores - new_max).exp()                                # (B, H, n, m)
            values = weights @ v[:, :, k_start:k_end]                         # (B, H, n, D)
            if running_max is None:
                running_sum, acc = weights.sum(dim=-1, keepdim=True), values
            else:
                rescale = (running_max - new_max).exp()                       # (B, H, n, 1), <= 1
                running_sum = running_sum * rescale + weights.sum(dim=-1, keepdim=True)
                acc = acc * rescale + values
            running_max = new_max
        outputs.append(acc / running_sum)                                     # (B, H, n, D)
    return gu.cat(outputs, dim=2)                                             # (B, H, T, D)
