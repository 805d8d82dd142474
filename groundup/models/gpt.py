"""GPT: a decoder-only transformer language model, read top to bottom (nanoGPT's layout).

    idx (B, T) -> wte(idx) [+ wpe(pos) | + sinusoid(pos)] -> dropout -> n_layer x Block -> ln_f -> lm_head
    Block (pre-norm):   x = x + attn(ln_1(x));   x = x + mlp(ln_2(x))
    Block (post-norm):  x = ln_1(x + attn(x));   x = ln_2(x + mlp(x))       (the original transformer)
    attn:  q, k, v = split(qkv(x));  (rotary on q, k);  softmax(q k^T / sqrt(D) + mask) v;  proj

This is the model a learner reads and looks inside: every step is an engine op with autograd's
backward, and hook points (``groundup.nn.hooks``) sit on the activations, named by module path:
``hook_embed`` (B, T, C), ``hook_pos_embed`` (T, C: the same for every sequence, learned or sinusoidal
positions only), ``blocks.{i}.hook_resid_pre|mid|post``, ``blocks.{i}.hook_attn_out``, ``blocks.{i}.hook_mlp_out``
(each B, T, C), ``blocks.{i}.attn.hook_q|k|v`` (B, H, T, D, after rotary), ``hook_pattern``
(B, H, T, T), ``hook_z`` (B, H, T, D), ``hook_result`` (B, T, H, C: each head's share of the output),
``blocks.{i}.mlp.hook_pre|post`` (B, T, 4C) and ``ln_f.hook_normalized`` (B, T, C).

``GPTConfig`` (groundup/models/gpt_config.py) holds the sizes and presets. ``FastGPT``
(groundup/models/gpt_fast.py) is the twin for training: the same parameters and state_dict keys
(``wte.weight``, ``blocks.0.attn.qkv.weight``, ``blocks.0.mlp.fc.weight``, ``ln_f.weight``,
``lm_head.weight`` — the same Parameter as ``wte.weight`` when ``tie_weights``), with the stack and
the head + loss as fused kernels; the two are tested equal in float64.

References: Radford et al. 2019 (GPT-2), Karpathy's nanoGPT (model.py, init) and picoGPT, Su et al.
2021 (rotary), Vaswani et al. 2017 (sinusoidal positions, post-norm), Nanda's TransformerLens (hooks).
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from groundup import functional as F
from groundup.backend import array_module
from groundup.models.gpt_config import GPTConfig
from groundup.models.gpt_decode import generate
from groundup.models.shared import as_twin, check_token_ids, gpt_init_, load_saved
from groundup.nn.containers import ModuleList
from groundup.nn.hooks import HookedModule, HookPoint
from groundup.nn.layers import Embedding, LayerNorm, Linear
from groundup.nn.module import Module
from groundup.nn.positional import RotaryEmbedding, SinusoidalPositionalEncoding
from groundup.nn.utils import eval_mode
from groundup.ops.kernels import causal_mask
from groundup.tensor import Tensor

__all__ = ["GPT", "GPTConfig", "Block", "CausalSelfAttention", "MLP"]


# ----------------------------------------------------------------------------- layers
class CausalSelfAttention(Module):
    """Multi-head self-attention: ``qkv`` (C -> 3C, q|k|v stacked), ``proj`` (C -> C). x (B, T, C) -> (B, T, C).

    Args:
        n_embd, n_head: width C and number of heads H (head dim D = C / H).
        bias: biases in qkv and proj.   dropout: on the attention weights and the output.
        causal: mask later positions.   rotary_len: build rotary tables for this many positions (None: no RoPE).
    """

    def __init__(self, n_embd: int, n_head: int, bias: bool = True, dropout: float = 0.0, causal: bool = True,
                 rotary_len: int | None = None):
        super().__init__()
        self.n_head, self.dropout, self.causal = n_head, dropout, causal
        self.qkv = Linear(n_embd, 3 * n_embd, bias=bias)
        self.proj = Linear(n_embd, n_embd, bias=bias)
        # float64 tables, cast to the activations' dtype per call
        self.rotary = RotaryEmbedding(n_embd // n_head, rotary_len, dtype=np.float64) if rotary_len else None
        self.hook_q, self.hook_k, self.hook_v = HookPoint(), HookPoint(), HookPoint()
        self.hook_pattern, self.hook_z, self.hook_result = HookPoint(), HookPoint(), HookPoint()

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """x (B, T, C); mask (B, 1, T, T) bool, True where a query may see a key (None: causal or all)."""
        B, T, C = x.shape
        H, D = self.n_head, C // self.n_head
        q, k, v = self.qkv(x).split(C, dim=2)                                   # each (B, T, C)
        q = q.reshape(B, T, H, D).transpose(1, 2)                               # (B, H, T, D)
        k = k.reshape(B, T, H, D).transpose(1, 2)                               # (B, H, T, D)
        v = v.reshape(B, T, H, D).transpose(1, 2)                               # (B, H, T, D)
        if self.rotary is not None:
            q, k = self.rotary(q, k)                                            # rotate by position
        q, k, v = self.hook_q(q), self.hook_k(k), self.hook_v(v)
        p = self.dropout if self.training else 0.0
        if self.hook_pattern.active:        # someone reads or edits the weights: compute them explicitly
            if mask is None and self.causal:
                mask = Tensor(causal_mask(T, T, array_module(x.data)))         # (T, T) True where j <= i
            scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(D))           # (B, H, T, T)
            if mask is not None:
                scores = scores.masked_fill(~mask.data, float("-inf"))
            att = self.hook_pattern(F.softmax(scores, dim=-1))                  # (B, H, T, T) rows sum to 1
            y = F.dropout(att, p, self.training) @ v                            # (B, H, T, D)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p,
                                               is_causal=self.causal and mask is None)  # (B, H, T, D)
        y = self.hook_z(y)                                                      # (B, H, T, D)
        if self.hook_result.active:         # each head's output through its slice of proj, then summed
            w = self.proj.weight.reshape(C, H, D).permute(1, 2, 0)              # (H, D, C)
            result = self.hook_result((y @ w).transpose(1, 2))                  # (B, T, H, C)
            out = result.sum(dim=2) + (self.proj.bias if self.proj.bias is not None else 0.0)
        else:
            out = self.proj(y.transpose(1, 2).reshape(B, T, C))                # (B, T, C) heads side by side
        return F.dropout(out, p, self.training)


class MLP(Module):
    """The position-wise feed-forward net: ``fc`` (C -> 4C), GELU (tanh), ``proj`` (4C -> C)."""

    def __init__(self, n_embd: int, bias: bool = True, dropout: float = 0.0):
        super().__init__()
        self.dropout = dropout
        self.fc = Linear(n_embd, 4 * n_embd, bias=bias)
        self.proj = Linear(4 * n_embd, n_embd, bias=bias)
        self.hook_pre, self.hook_post = HookPoint(), HookPoint()

    def forward(self, x: Tensor) -> Tensor:
        h = self.hook_pre(self.fc(x))                                           # (B, T, 4C)
        h = self.hook_post(F.gelu(h, approximate="tanh"))                       # (B, T, 4C)
        return F.dropout(self.proj(h), self.dropout, self.training)             # (B, T, C)


class Block(Module):
    """One transformer block, pre- or post-norm. x (B, T, C) -> (B, T, C)."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.pre_norm = cfg.norm == "pre"
        self.ln_1 = LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg.n_embd, cfg.n_head, cfg.bias, cfg.dropout, cfg.causal,
                                        cfg.block_size if cfg.pos_encoding == "rotary" else None)
        self.ln_2 = LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg.n_embd, cfg.bias, cfg.dropout)
        self.hook_resid_pre, self.hook_resid_mid, self.hook_resid_post = HookPoint(), HookPoint(), HookPoint()
        self.hook_attn_out, self.hook_mlp_out = HookPoint(), HookPoint()

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        x = self.hook_resid_pre(x)
        if self.pre_norm:
            x = self.hook_resid_mid(x + self.hook_attn_out(self.attn(self.ln_1(x), mask)))
            x = x + self.hook_mlp_out(self.mlp(self.ln_2(x)))
        else:
            x = self.hook_resid_mid(self.ln_1(x + self.hook_attn_out(self.attn(x, mask))))
            x = self.ln_2(x + self.hook_mlp_out(self.mlp(x)))
        return self.hook_resid_post(x)


# ----------------------------------------------------------------------------- the model
class GPT(HookedModule):
    """A GPT language model. ``model(idx)`` -> logits (B, T, V); ``model.loss(idx, targets)`` -> scalar."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        if not isinstance(cfg, GPTConfig):
            raise TypeError(f"{type(self).__name__} needs a GPTConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        self.wte = Embedding(cfg.vocab_size, cfg.n_embd)
        if cfg.pos_encoding == "learned":
            self.wpe = Embedding(cfg.block_size, cfg.n_embd)
        elif cfg.pos_encoding == "sinusoidal":       # a fixed table, not saved (it follows from the config)
            self.wpe_table = SinusoidalPositionalEncoding(cfg.n_embd, cfg.block_size, np.float64, persistent=False)
        self.blocks = ModuleList([Block(cfg) for _ in range(cfg.n_layer)])
        self.ln_f = LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.ln_f.hook_normalized = HookPoint()
        self.lm_head = Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_weights:
            self.lm_head.weight = self.wte.weight
        self.hook_embed, self.hook_pos_embed = HookPoint(), HookPoint()
        gpt_init_(self, cfg.n_layer)    # nanoGPT: N(0, 0.02), biases 0, residual projections / sqrt(2 n_layer)

    @property
    def config(self) -> GPTConfig:
        return self.cfg

    def num_parameters(self, non_embedding: bool = False) -> int:
        """Learnable scalars; ``non_embedding`` leaves out the position table (nanoGPT's count)."""
        n = super().num_parameters()
        return n - self.wpe.weight.numel() if non_embedding and self.cfg.pos_encoding == "learned" else n

    def embed(self, idx: Any, attention_mask: Any = None) -> tuple[Tensor, Tensor | None]:
        """Token (+ position) embeddings after dropout (B, T, C), and the (B, 1, T, T) attention mask or None."""
        cfg = self.cfg
        ids = check_token_ids(idx, type(self).__name__, "idx", cfg.block_size, cfg.vocab_size, allow_empty=True)
        B, T = ids.shape
        xp = array_module(self.wte.weight.data)
        x = self.hook_embed(self.wte(Tensor(xp.asarray(ids))))                  # (B, T, C)
        if cfg.pos_encoding == "learned":
            x = x + self.hook_pos_embed(self.wpe(Tensor(xp.arange(T))))         # (B, T, C) + (T, C)
        elif cfg.pos_encoding == "sinusoidal":
            x = x + self.hook_pos_embed(Tensor(self.wpe_table.pe.data[:T].astype(x.dtype)))  # (T, C)
        x = F.dropout(x, cfg.dropout, self.training)
        return x, self._attention_mask(attention_mask, B, T, xp)

    def _attention_mask(self, attention_mask: Any, B: int, T: int, xp: Any) -> Tensor | None:
        """(B, T) padding mask (True/1 = a real token) -> (B, 1, T, T) bool, with the causal mask folded in."""
        if attention_mask is None:
            return None
        keys = xp.asarray(attention_mask.data if isinstance(attention_mask, Tensor) else attention_mask).astype(bool)
        if tuple(keys.shape) != (B, T):
            raise ValueError(f"{type(self).__name__}: attention_mask must have the shape of idx {(B, T)}, "
                             f"got {tuple(keys.shape)}")
        allowed = xp.broadcast_to(keys[:, None, None, :], (B, 1, T, T))        # (B, 1, T, T)
        return Tensor(allowed & causal_mask(T, T, xp) if self.cfg.causal else allowed)

    def forward(self, idx: Any, attention_mask: Any = None) -> Tensor:
        """Logits (B, T, V) for idx (B, T) ids; attention_mask (B, T): True/1 at real tokens, 0 at padding."""
        x, mask = self.embed(idx, attention_mask)                               # (B, T, C)
        for block in self.blocks:
            x = block(x, mask)                                                  # (B, T, C)
        return self.lm_head(self.ln_f.hook_normalized(self.ln_f(x)))           # (B, T, V)

    def loss(self, idx: Any, targets: Any, attention_mask: Any = None) -> Tensor:
        """Mean next-token cross-entropy; targets (B, T) ids, -100 = ignore (e.g. padding)."""
        t = targets.data if isinstance(targets, Tensor) else np.asarray(targets)
        if t.dtype.kind not in "iu":
            raise TypeError(f"{type(self).__name__}.loss: targets must be integer token ids, got dtype {t.dtype}")
        if tuple(t.shape) != tuple(np.shape(idx.data if isinstance(idx, Tensor) else idx)):
            raise ValueError(f"{type(self).__name__}.loss: targets {tuple(t.shape)} must match idx "
                             f"{tuple(np.shape(idx.data if isinstance(idx, Tensor) else idx))}")
        logits = self(idx, attention_mask)                                      # (B, T, V)
        xp = array_module(logits.data)
        return F.cross_entropy(logits.reshape(-1, self.cfg.vocab_size), xp.asarray(t).reshape(-1))  # (B*T, V)

    def attention_maps(self, idx: Any, attention_mask: Any = None) -> np.ndarray:
        """Every head's attention weights (n_layer, B, H, T, T) as NumPy, in eval mode, from the hooks."""
        with eval_mode(self):
            _, cache = self.run_with_cache(idx, attention_mask, names="blocks.*.attn.hook_pattern")
        return np.stack([np.asarray(cache[f"blocks.{i}.attn.hook_pattern"].numpy()) for i in range(len(self.blocks))])

    def generate(self, idx: Any, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, seed: int | None = None, use_cache: bool = True) -> Tensor:
        """Sample ``max_new_tokens`` tokens after the prompt idx (B, T0) -> (B, T0 + max_new_tokens).

        temperature 0 is greedy; top_k / top_p keep the k most likely tokens / the nucleus of mass p;
        ``seed`` seeds a private generator; ``use_cache`` keeps per-layer keys and values (what that
        means past the context is in groundup/models/gpt_decode.py), False reruns the window per token.
        """
        return generate(self, idx, max_new_tokens, temperature, top_k, top_p, seed, use_cache)

    # ------------------------------------------------------------------ checkpoints
    def save(self, directory: str | os.PathLike) -> None:
        """Write ``model.safetensors`` + ``config.json`` into ``directory`` (a groundup.train checkpoint;
        it replaces one there, a Trainer's optimizer state and step included: resume from such a
        directory then has no optimizer state to load)."""
        from groundup.train import save_checkpoint

        save_checkpoint(directory, self, config=self.cfg)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> GPT:
        """Rebuild a model saved by ``save`` or ``groundup train gpt``, as this class (GPT or FastGPT).

        The model is built from config.json first, so the weights file is checked against it (names,
        shapes, sizes) before any tensor is read.
        """
        return load_saved(cls, GPTConfig, directory)

    def as_class(self, cls: type[GPT]) -> GPT:
        """This model as a ``GPT`` or ``FastGPT`` (twins with the same parameters), weights copied."""
        return as_twin(self, cls)
