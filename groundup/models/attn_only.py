"""AttnOnlyLM: an attention-only transformer, the model in which induction heads were first studied.

    idx (B, T) -> wte(idx) + wpe(pos) -> n_layer x [x = x + attn(ln(x))] -> ln_f -> unembed -> logits (B, T, V)

There are no MLPs: every block is causal multi-head self-attention added to the residual stream.
With one layer, each head can only move information from one token to another in a single hop
(its logits are bigrams and "skip-trigrams"); with two layers a head of layer 1 can form its
keys from what a head of layer 0 wrote (K-composition), which is what an induction head needs:
a layer-0 "previous-token head" writes "the token before me was A" into each position, and a
layer-1 head at a position holding A attends to the position *after* an earlier A and copies its
token. Elhage et al. show that this circuit appears in 2-layer attention-only models and cannot
be built in 1 layer; Olsson et al. show it forms in a sudden phase change during training.

The attention layers are the readable GPT's own (``groundup.models.gpt.CausalSelfAttention``), with
their hook points, so the attention weights are at hand: ``attention_maps(idx)`` reads every layer's
``hook_pattern``. Parameter names: ``wte.weight``, ``wpe.weight``, ``blocks.0.ln.weight``,
``blocks.0.attn.qkv.weight`` (q|k|v stacked, (3C, C)), ``blocks.0.attn.proj.weight``,
``ln_f.weight``, ``unembed.weight``; no biases (LayerNorm has its own). Initialisation is
nanoGPT's: N(0, 0.02), output projections N(0, 0.02 / sqrt(2 n_layer)).

References:
    Elhage et al. 2021, "A Mathematical Framework for Transformer Circuits",
        https://transformer-circuits.pub/2021/framework/index.html
    Olsson et al. 2022, "In-context Learning and Induction Heads", https://arxiv.org/abs/2209.11895
    Karpathy, nanoGPT model.py (layout and initialisation): https://github.com/karpathy/nanoGPT
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from groundup.backend import array_module, to_numpy
from groundup.models.gpt import CausalSelfAttention
from groundup.models.shared import check_token_ids, gpt_init_, next_token_loss
from groundup.nn.containers import ModuleList
from groundup.nn.hooks import HookedModule, HookPoint
from groundup.nn.layers import Embedding, Identity, LayerNorm, Linear
from groundup.nn.module import Module
from groundup.tensor import Tensor

__all__ = ["AttnOnlyConfig", "AttnOnlyLM"]

POS_ENCODINGS = ("learned", "none")


@dataclass(frozen=True)
class AttnOnlyConfig:
    """Size of an attention-only transformer.

    Attributes:
        vocab_size: V, number of token ids.
        block_size: T_max, the longest context.
        n_layer: number of attention layers (2 can form induction heads, 1 cannot).
        n_head: heads per layer (n_embd must be divisible by it).
        n_embd: C, the width of the residual stream.
        pos_encoding: ``"learned"`` (a position embedding table ``wpe``) or ``"none"``.
        norm: a LayerNorm before each attention layer and before the unembedding; False makes them Identity.
    """

    vocab_size: int
    block_size: int
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 64
    pos_encoding: str = "learned"
    norm: bool = True

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ValueError(f"AttnOnlyConfig.{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"AttnOnlyConfig: n_embd={self.n_embd} must be divisible by n_head={self.n_head}")
        if self.pos_encoding not in POS_ENCODINGS:
            raise ValueError(f"AttnOnlyConfig.pos_encoding must be one of {POS_ENCODINGS}, got {self.pos_encoding!r}")
        if not isinstance(self.norm, (bool, np.bool_)):
            raise ValueError(f"AttnOnlyConfig.norm must be a bool, got {self.norm!r}")

    @property
    def head_dim(self) -> int:
        """D = n_embd // n_head."""
        return self.n_embd // self.n_head


class AttnBlock(Module):
    """``x = x + attn(ln(x))``: one attention layer on the residual stream, no MLP. x (B, T, C) -> (B, T, C).

    The attention is the GPT's (``groundup.models.gpt.CausalSelfAttention``), with its hook points.
    """

    def __init__(self, cfg: AttnOnlyConfig):
        super().__init__()
        self.ln = LayerNorm(cfg.n_embd) if cfg.norm else Identity()
        self.attn = CausalSelfAttention(cfg.n_embd, cfg.n_head, bias=False)
        self.hook_resid_pre, self.hook_attn_out, self.hook_resid_post = HookPoint(), HookPoint(), HookPoint()

    def forward(self, x: Tensor) -> Tensor:
        x = self.hook_resid_pre(x)
        return self.hook_resid_post(x + self.hook_attn_out(self.attn(self.ln(x))))


class AttnOnlyLM(HookedModule):
    """Attention-only language model. ``model(idx)`` -> logits (B, T, V); ``model.loss(idx, targets)`` -> scalar.

    Submodules: ``wte`` Embedding(V, C), ``wpe`` Embedding(block_size, C) (absent with
    ``pos_encoding="none"``), ``blocks`` n_layer x AttnBlock, ``ln_f`` LayerNorm(C) (Identity
    when ``norm=False``), ``unembed`` Linear(C, V, bias=False). Hook points: ``hook_embed``,
    ``hook_pos_embed``, ``blocks.{i}.hook_resid_pre|post``, ``blocks.{i}.hook_attn_out``,
    ``blocks.{i}.attn.hook_q|k|v|pattern|z|result``, ``ln_f.hook_normalized``.
    """

    def __init__(self, cfg: AttnOnlyConfig):
        super().__init__()
        if not isinstance(cfg, AttnOnlyConfig):
            raise TypeError(f"AttnOnlyLM needs an AttnOnlyConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        self.wte = Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = Embedding(cfg.block_size, cfg.n_embd) if cfg.pos_encoding == "learned" else None
        self.blocks = ModuleList([AttnBlock(cfg) for _ in range(cfg.n_layer)])
        self.ln_f = LayerNorm(cfg.n_embd) if cfg.norm else Identity()
        self.ln_f.hook_normalized = HookPoint()
        self.unembed = Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.hook_embed, self.hook_pos_embed = HookPoint(), HookPoint()
        self._init_weights()

    def _init_weights(self) -> None:
        """nanoGPT: N(0, 0.02), the output projections N(0, 0.02 / sqrt(2 n_layer)); LayerNorm keeps 1 and 0."""
        gpt_init_(self, self.cfg.n_layer)

    def num_parameters(self) -> int:
        """Total number of parameters."""
        return int(sum(p.numel() for p in self.parameters()))

    def _check_ids(self, ids: Any, what: str) -> Any:
        """The raw (B, T) integer array of ``ids``, after checking dtype, shape, length and range."""
        return check_token_ids(ids, "AttnOnlyLM", what, self.cfg.block_size, self.cfg.vocab_size)

    def forward(self, idx: Any) -> Tensor:
        """Next-token logits.

        Args:
            idx: (B, T) integer token ids (Tensor or array), 1 <= T <= block_size, each in 0..vocab_size-1.
        Returns:
            (B, T, V) logits.
        """
        data = self._check_ids(idx, "idx")
        T = data.shape[1]
        xp = array_module(self.wte.weight.data)
        x = self.hook_embed(self.wte(Tensor(xp.asarray(data))))                   # (B, T, C)
        if self.wpe is not None:
            x = x + self.hook_pos_embed(self.wpe(Tensor(xp.arange(T))))           # (B, T, C) + (T, C)
        for block in self.blocks:
            x = block(x)                                                          # (B, T, C)
        return self.unembed(self.ln_f.hook_normalized(self.ln_f(x)))             # (B, T, V)

    def loss(self, idx: Any, targets: Any) -> Tensor:
        """Mean next-token cross-entropy over all B * T positions.

        Args:
            idx: (B, T) input ids.
            targets: (B, T) next-token ids.
        Returns:
            a scalar Tensor.
        """
        return next_token_loss("AttnOnlyLM", self(idx), targets)                   # logits (B, T, V)

    def attention_maps(self, idx: Any) -> np.ndarray:
        """Every head's attention weights, without building a graph.

        Args:
            idx: (B, T) integer token ids.
        Returns:
            NumPy array (L, B, H, T, T): ``maps[l, b, h, t, s]`` is how much position t attends to
            position s in head h of layer l; each row sums to 1 and is 0 for s > t.
        """
        _, cache = self.run_with_cache(idx, names="blocks.*.attn.hook_pattern")
        return np.stack([to_numpy(cache[f"blocks.{i}.attn.hook_pattern"].data)
                         for i in range(len(self.blocks))])                       # (L, B, H, T, T)
