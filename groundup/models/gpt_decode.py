"""Generation for ``GPT`` / ``FastGPT``: sampling one token from logits, and an incremental decoder
with a per-layer key/value cache written over raw arrays (the kernels of ``groundup.ops.kernels``).

The KV cache. While the sequence fits the context (``block_size``), each new token's keys and values
are appended to a per-layer cache and only the new token runs through the model; this gives the
same logits as recomputing everything (up to float rounding), hence the same tokens for one seed.
Past the context the window slides, and what the cache does depends on the positions:
  * ``learned`` / ``sinusoidal`` (absolute positions): once the window moves, every cached entry was
    computed at a position it no longer has, so all of them are stale. The exact behaviour, and what
    the decoder does, is to recompute the last ``block_size`` tokens for every further token; with
    and without the cache the tokens are then the same.
  * ``rotary`` / ``none`` (positions enter only as relative offsets, or not at all): the cache keeps
    its last ``block_size`` entries (a ring buffer). Each new token attends to itself and the
    ``block_size - 1`` tokens before it, through keys and values computed when those tokens were
    generated (with their longer context in the layers above the first). That is exactly
    sliding-window attention with window ``block_size`` over the whole sequence; it is *not* the
    same as recomputing the last ``block_size`` tokens from scratch, which ``use_cache=False`` does.

This file reads the GPT's parameters by their paths (``blocks.{i}.attn.qkv.weight`` …): it is kernel
code that belongs to the model, beside it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from groundup import random
from groundup.backend import array_module, to_numpy
from groundup.nn.positional import RotaryEmbedding
from groundup.nn.utils import eval_mode
from groundup.ops import kernels as K
from groundup.parallel import blas_threads
from groundup.tensor import Tensor, no_grad

__all__ = ["generate", "sample_next", "KVDecoder"]


def _check_sampling(model: Any, prompt: np.ndarray, max_new_tokens: int, temperature: float,
                    top_k: int | None, top_p: float | None) -> None:
    name = type(model).__name__
    if prompt.ndim != 2 or prompt.shape[1] < 1:
        raise ValueError(f"{name}.generate: the prompt must be (B, T0) with T0 >= 1 tokens, got {prompt.shape}")
    if prompt.dtype.kind not in "iu":
        raise TypeError(f"{name}.generate: the prompt must hold integer token ids, got dtype {prompt.dtype}")
    if (prompt < 0).any() or (prompt >= model.cfg.vocab_size).any():
        raise IndexError(f"{name}.generate: the prompt has token ids outside 0..{model.cfg.vocab_size - 1}")
    if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 0:
        raise ValueError(f"{name}.generate: max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    if not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"{name}.generate: temperature must be a finite number >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"{name}.generate: top_k must be >= 1, got {top_k}")
    if top_p is not None and not (math.isfinite(top_p) and 0.0 < top_p <= 1.0):
        raise ValueError(f"{name}.generate: top_p must be in (0, 1], got {top_p}")


def generate(model: Any, idx: Any, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
             top_p: float | None = None, seed: int | None = None, use_cache: bool = True) -> Tensor:
    """``model.generate``: sample after the prompt idx (B, T0) -> (B, T0 + max_new_tokens), in eval mode."""
    cfg = model.cfg
    prompt = to_numpy(idx.data if isinstance(idx, Tensor) else np.asarray(idx))
    prompt = prompt[None, :] if prompt.ndim == 1 else prompt
    _check_sampling(model, prompt, max_new_tokens, temperature, top_k, top_p)
    if use_cache and any(point.active for point in model.hook_points().values()):
        raise ValueError(f"{type(model).__name__}.generate: hooks are registered, and the KV cache would skip "
                         f"them; pass use_cache=False so every token runs through the hooked model")
    rng = np.random.default_rng(seed) if seed is not None else random.generator()
    tokens = prompt.astype(np.int64)
    with eval_mode(model), no_grad():
        decoder = KVDecoder(model, tokens.shape[0], tokens.shape[1] + max_new_tokens) if use_cache else None
        for step in range(max_new_tokens):
            if decoder is not None:
                logits = decoder.next_logits(tokens, step == 0)
            else:
                logits = to_numpy(model(tokens[:, -cfg.block_size:]).data[:, -1, :])  # (B, V)
            nxt = sample_next(logits, temperature, top_k, top_p, rng)      # (B,)
            tokens = np.concatenate([tokens, nxt[:, None]], axis=1)        # (B, T + 1)
    return Tensor(tokens)


def sample_next(logits: np.ndarray, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, rng: np.random.Generator | None = None) -> np.ndarray:
    """Draw one token per row from logits (B, V) -> (B,) int64, using exactly one uniform per row.

    Inverse-CDF sampling with one ``rng.random`` draw per row, so two logit arrays that agree up to
    rounding give the same tokens for the same generator state.
    """
    logits = np.asarray(logits, dtype=np.float64)
    if temperature == 0:
        return logits.argmax(axis=-1).astype(np.int64)
    rng = rng if rng is not None else random.generator()
    with np.errstate(over="ignore"):   # <= 0, so a tiny temperature sends the others to -inf, not inf - inf
        z = (logits - logits.max(axis=-1, keepdims=True)) / temperature
    if top_k is not None and top_k < z.shape[-1]:
        kth = np.sort(z, axis=-1)[:, -top_k][:, None]                           # (B, 1)
        z = np.where(z < kth, -np.inf, z)
    z = z - z.max(axis=-1, keepdims=True)
    probs = np.exp(z)
    probs /= probs.sum(axis=-1, keepdims=True)
    if top_p is not None and top_p < 1.0:
        order = np.argsort(-probs, axis=-1, kind="stable")                      # (B, V) most likely first
        sorted_p = np.take_along_axis(probs, order, axis=-1)
        before = np.cumsum(sorted_p, axis=-1) - sorted_p                        # mass of the more likely tokens
        drop_sorted = before >= top_p                                           # the first token always stays
        drop = np.zeros_like(drop_sorted)
        np.put_along_axis(drop, order, drop_sorted, axis=-1)
        probs = np.where(drop, 0.0, probs)
        probs /= probs.sum(axis=-1, keepdims=True)
    cdf = np.cumsum(probs, axis=-1)                                             # (B, V)
    u = rng.random(probs.shape[0]) * cdf[:, -1]                                 # (B,)
    choice = (cdf <= u[:, None]).sum(axis=-1)
    return np.minimum(choice, probs.shape[-1] - 1).astype(np.int64)


class KVDecoder:
    """Incremental inference over raw arrays with a per-layer key/value cache (see the module docstring).

    The cache holds ``block_size`` slots per layer, (B, H, block_size, D) for keys and values; the
    token at position p lives in slot p % block_size (a ring buffer: attention does not care about
    the order of its keys).
    """

    def __init__(self, model: Any, batch: int, total_len: int):
        cfg = model.cfg
        self.cfg = cfg
        self.xp = xp = array_module(model.wte.weight.data)
        dtype = self.dtype = model.wte.weight.dtype
        shape = (cfg.n_layer, batch, cfg.n_head, cfg.block_size, cfg.head_dim)
        self.keys, self.values = xp.zeros(shape, dtype=dtype), xp.zeros(shape, dtype=dtype)
        self.params = [{name: p.data for name, p in block.named_parameters()} for block in model.blocks]
        self.wte, self.head = model.wte.weight.data, model.lm_head.weight.data
        self.ln_f = (model.ln_f.weight.data, model.ln_f.bias.data if model.ln_f.bias is not None else None)
        self.eps = model.ln_f.eps
        self.absolute = cfg.pos_encoding in ("learned", "sinusoidal")
        self.position_table = (model.wpe.weight.data if cfg.pos_encoding == "learned" else
                               model.wpe_table.pe.data.astype(dtype) if cfg.pos_encoding == "sinusoidal" else None)
        if cfg.pos_encoding == "rotary":          # the model's tables cover block_size; the ring buffer goes further
            rotary = RotaryEmbedding(cfg.head_dim, max(total_len, cfg.block_size), dtype=np.float64)
            self.cos = xp.asarray(rotary.cos_cached.data.astype(dtype))
            self.sin = xp.asarray(rotary.sin_cached.data.astype(dtype))
        self.length = 0        # position of the next token to run (tokens already in the cache)

    def next_logits(self, tokens: np.ndarray, first: bool) -> np.ndarray:
        """Logits (B, V) for the token after ``tokens`` (B, L): prefill, one cached step or a recompute."""
        if first or (self.absolute and tokens.shape[1] > self.cfg.block_size):
            self.length = 0
            with blas_threads():                    # one Python thread: let BLAS use its own threads
                return self._run(tokens[:, -self.cfg.block_size:], 0)
        return self._run(tokens[:, -1:], self.length)

    def _run(self, window: np.ndarray, pos0: int) -> np.ndarray:
        """Run T new tokens at positions pos0.. through every layer, caching their keys and values.

        T > 1 only for a prefill (pos0 = 0, empty cache): causal attention among the T tokens. T = 1:
        the new token attends to every valid slot (all of them hold its past). Only the last
        position's logits are wanted, so the last layer runs its queries and MLP on that row alone.
        """
        xp, cfg = self.xp, self.cfg
        B, T = window.shape
        S, H, D, C = cfg.block_size, cfg.n_head, cfg.head_dim, cfg.n_embd
        x = self.wte[xp.asarray(window)]                                        # (B, T, C)
        if self.position_table is not None:
            x = x + self.position_table[pos0:pos0 + T]
        x = x.reshape(B * T, C)                                                 # (B*T, C)
        n_valid = min(pos0 + T, S)
        rope = (self.cos[pos0:pos0 + T], self.sin[pos0:pos0 + T]) if cfg.pos_encoding == "rotary" else None
        pre = cfg.norm == "pre"
        bias = K.attention_bias(None, cfg.causal, T, T, x.dtype, xp) if T > 1 else None   # (T, T) or None
        for layer, p in enumerate(self.params):
            h = K.layer_norm(x, p["ln_1.weight"], p.get("ln_1.bias"), self.eps)[0] if pre else x
            qkv = K.linear(h, p["attn.qkv.weight"], p.get("attn.qkv.bias"))     # (B*T, 3C)
            qkv = qkv.reshape(B, T, 3, H, D).transpose(2, 0, 3, 1, 4)           # (3, B, H, T, D)
            q, k, v = qkv[0], qkv[1], qkv[2]
            if rope is not None:
                q, k = K.apply_rotary(q, *rope), K.apply_rotary(k, *rope)
            keys, values = self.keys[layer], self.values[layer]                 # (B, H, S, D)
            if T == 1:
                keys[:, :, pos0 % S], values[:, :, pos0 % S] = k[:, :, 0], v[:, :, 0]
                k, v = keys[:, :, :n_valid], values[:, :, :n_valid]             # (B, H, S', D)
            else:
                keys[:, :, :T], values[:, :, :T] = k, v
            if layer == len(self.params) - 1 and T > 1:                         # only the last query matters
                q = q[:, :, -1:]                                                # (B, H, 1, D)
                bias = bias[-1:] if bias is not None else None
                x = x.reshape(B, T, C)[:, -1]                                   # (B, C)
            att = q @ k.transpose(0, 1, 3, 2)                                   # (B, H, T', S')
            att *= 1.0 / math.sqrt(D)
            if bias is not None:
                att += bias
            y = K.softmax_(att) @ v                                             # (B, H, T', D)
            y = y.transpose(0, 2, 1, 3).reshape(-1, C)                          # (B*T', C)
            a = K.linear(y, p["attn.proj.weight"], p.get("attn.proj.bias"))
            a += x
            if pre:
                r1 = a
                h2 = K.layer_norm(r1, p["ln_2.weight"], p.get("ln_2.bias"), self.eps)[0]
            else:
                r1 = h2 = K.layer_norm(a, p["ln_1.weight"], p.get("ln_1.bias"), self.eps)[0]
            f = K.linear(h2, p["mlp.fc.weight"], p.get("mlp.fc.bias"))          # (B*T', 4C)
            m = K.linear(K.gelu_tanh(f), p["mlp.proj.weight"], p.get("mlp.proj.bias"))
            m += r1
            x = m if pre else K.layer_norm(m, p["ln_2.weight"], p.get("ln_2.bias"), self.eps)[0]
        self.length = pos0 + T
        last = x.reshape(B, -1, C)[:, -1]                                       # (B, C)
        last = K.layer_norm(last, self.ln_f[0], self.ln_f[1], self.eps)[0]
        return to_numpy(last @ self.head.T)                                     # (B, V)
