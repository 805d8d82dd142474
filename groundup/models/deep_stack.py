"""DeepStackLM: a GPT-style character model whose residual connections and layer norms can be switched off.

    idx (B, T) -> wte(idx) + wpe(pos) -> n_layer x Block -> ln_f -> lm_head -> logits (B, T, V)
    Block, residual=True:   x = x + attn(ln_1(x));  x = x + mlp(ln_2(x))      (pre-norm, GPT-2)
    Block, residual=False:  x = attn(ln_1(x));      x = mlp(ln_2(x))          (a plain deep stack)
    norm=False:             ln_1, ln_2 and ln_f are Identity

It exists to measure the claim "residual connections and layer norm make deep stacks trainable":
train the four (residual, norm) variants of the same stack on the same batches and compare the
loss curves, and look at ``layer_grad_norms()`` after a backward to see how much gradient reaches
each depth. With the residual path, the gradient of the loss with respect to block i's input is
the identity plus a correction, so every block gets a gradient of similar size. Without it, both
the signal going up and the gradient coming down pass through every block, a product of
Jacobians whose size depends on the weights: at this initialisation a plain stack shrinks the
signal at each block until logits and gradients are ~0 (no learning at all), and with layer norm
(which rescales the signal) the gradients are large and uneven instead.

The attention and MLP sub-layers are the readable GPT's own classes (``groundup.models.gpt``), with
their hook points; every step is an engine op and the backward is autograd's, so the two switches
are visible as the two ``if`` expressions in ``Block.forward``.
Parameter names follow ``GPT`` (``wte.weight``, ``wpe.weight``, ``blocks.0.attn.qkv.weight``,
``blocks.0.mlp.fc.weight``, ``ln_f.weight``, ``lm_head.weight``); the embedding and the head are not
tied, and the initialisation is nanoGPT's for every variant (N(0, 0.02), residual projections
N(0, 0.02 / sqrt(2 n_layer)), biases 0, LayerNorm weight 1).

References:
    He, Zhang, Ren, Sun 2016, "Deep Residual Learning for Image Recognition" (residual connections).
    Ba, Kiros, Hinton 2016, "Layer Normalization".
    Xiong et al. 2020, "On Layer Normalization in the Transformer Architecture" (pre-LN).
    Karpathy, nanoGPT model.py (layout and initialisation): https://github.com/karpathy/nanoGPT
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from groundup.backend import array_module, to_numpy
from groundup.models.gpt import MLP, CausalSelfAttention
from groundup.models.shared import check_token_ids, gpt_init_, next_token_loss
from groundup.nn.containers import ModuleList
from groundup.nn.hooks import HookedModule, HookPoint
from groundup.nn.layers import Embedding, Identity, LayerNorm, Linear
from groundup.nn.module import Module
from groundup.tensor import Tensor

__all__ = ["DeepStackConfig", "DeepStackLM"]


@dataclass(frozen=True)
class DeepStackConfig:
    """Size of the stack and the two switches under study.

    Attributes:
        vocab_size: V, number of token ids (65 for Tiny Shakespeare's characters).
        block_size: T_max, the context length.
        n_layer: depth, the number of blocks.
        n_head: heads per attention layer (n_embd must be divisible by it).
        n_embd: C, the width of the residual stream.
        residual: each sub-layer adds to its input (``x + f(ln(x))``) instead of replacing it (``f(ln(x))``).
        norm: a LayerNorm before each sub-layer and before the head (pre-norm); False makes them Identity.
        bias: biases in the Linear and LayerNorm layers.
        causal: each position attends only to itself and earlier positions.
    """

    vocab_size: int
    block_size: int = 64
    n_layer: int = 8
    n_head: int = 4
    n_embd: int = 64
    residual: bool = True
    norm: bool = True
    bias: bool = False
    causal: bool = True

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ValueError(f"DeepStackConfig.{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"DeepStackConfig: n_embd={self.n_embd} must be divisible by n_head={self.n_head}")
        for name in ("residual", "norm", "bias", "causal"):
            value = getattr(self, name)
            if not isinstance(value, (bool, np.bool_)):
                raise ValueError(f"DeepStackConfig.{name} must be a bool, got {value!r}")


# ----------------------------------------------------------------------------- layers
def _norm(cfg: DeepStackConfig) -> Module:
    return LayerNorm(cfg.n_embd, bias=cfg.bias) if cfg.norm else Identity()


class Block(Module):
    """Attention then MLP, each ``x = x + f(ln(x))`` (residual) or ``x = f(ln(x))``. x (B, T, C) -> (B, T, C).

    The attention and MLP are the GPT's own (``groundup.models.gpt``), with its hook points.
    """

    def __init__(self, cfg: DeepStackConfig):
        super().__init__()
        self.residual = cfg.residual
        self.ln_1 = _norm(cfg)
        self.attn = CausalSelfAttention(cfg.n_embd, cfg.n_head, bias=cfg.bias, causal=cfg.causal)
        self.ln_2 = _norm(cfg)
        self.mlp = MLP(cfg.n_embd, bias=cfg.bias)
        self.hook_resid_pre, self.hook_resid_mid, self.hook_resid_post = HookPoint(), HookPoint(), HookPoint()
        self.hook_attn_out, self.hook_mlp_out = HookPoint(), HookPoint()

    def forward(self, x: Tensor) -> Tensor:
        x = self.hook_resid_pre(x)
        h = self.hook_attn_out(self.attn(self.ln_1(x)))
        x = self.hook_resid_mid(x + h if self.residual else h)
        h = self.hook_mlp_out(self.mlp(self.ln_2(x)))
        return self.hook_resid_post(x + h if self.residual else h)


# ----------------------------------------------------------------------------- the model
class DeepStackLM(HookedModule):
    """Character language model. ``model(idx)`` -> logits (B, T, V); ``model.loss(idx, targets)`` -> scalar.

    Submodules: ``wte`` Embedding(V, C), ``wpe`` Embedding(block_size, C), ``blocks`` n_layer x Block,
    ``ln_f`` LayerNorm(C) (Identity when ``norm=False``), ``lm_head`` Linear(C, V, bias=False). Hook
    points as GPT's: ``hook_embed``, ``hook_pos_embed``, ``blocks.{i}.hook_resid_pre|mid|post``,
    ``blocks.{i}.attn.hook_pattern`` …, ``ln_f.hook_normalized``.
    """

    def __init__(self, cfg: DeepStackConfig):
        super().__init__()
        if not isinstance(cfg, DeepStackConfig):
            raise TypeError(f"DeepStackLM needs a DeepStackConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        self.wte = Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = Embedding(cfg.block_size, cfg.n_embd)
        self.blocks = ModuleList([Block(cfg) for _ in range(cfg.n_layer)])
        self.ln_f = _norm(cfg)
        self.ln_f.hook_normalized = HookPoint()
        self.lm_head = Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.hook_embed, self.hook_pos_embed = HookPoint(), HookPoint()
        self._init_weights()

    def _init_weights(self) -> None:
        """nanoGPT: weights N(0, 0.02), biases 0, residual projections N(0, 0.02 / sqrt(2 n_layer)).

        NOTE: the small projections are GPT-2's choice for a residual stack (n_layer * 2 branches add
        up); the variants without a residual keep them too, so that only the switch differs.
        """
        gpt_init_(self, self.cfg.n_layer)

    def _check_ids(self, ids: Any, what: str) -> Any:
        """The raw (B, T) integer array of ``ids``, after checking dtype, shape, length and range."""
        return check_token_ids(ids, "DeepStackLM", what, self.cfg.block_size, self.cfg.vocab_size)

    def forward(self, idx: Any) -> Tensor:
        """Next-token logits.

        Args:
            idx: (B, T) integer token ids (Tensor or array), T <= block_size, each in 0..vocab_size-1.
        Returns:
            (B, T, V) logits.
        """
        data = self._check_ids(idx, "idx")
        T = data.shape[1]
        xp = array_module(self.wte.weight.data)
        x = self.hook_embed(self.wte(Tensor(xp.asarray(data))))                  # (B, T, C)
        x = x + self.hook_pos_embed(self.wpe(Tensor(xp.arange(T))))              # (B, T, C) + (T, C)
        for block in self.blocks:
            x = block(x)                                                          # (B, T, C)
        return self.lm_head(self.ln_f.hook_normalized(self.ln_f(x)))             # (B, T, V)

    def loss(self, idx: Any, targets: Any) -> Tensor:
        """Mean next-token cross-entropy over all B * T positions.

        Args:
            idx: (B, T) input ids.
            targets: (B, T) next-token ids.
        Returns:
            a scalar Tensor.
        """
        return next_token_loss("DeepStackLM", self(idx), targets)                   # logits (B, T, V)

    def layer_grad_norms(self) -> list[float]:
        """The L2 norm of each block's gradient (all its parameters together), block 0 first.

        Call after ``loss(...).backward()``: plotted against depth, these show how much of the
        loss's gradient reaches each block with and without the residual path.
        """
        norms = []
        for i, block in enumerate(self.blocks):
            total = 0.0
            for name, p in block.named_parameters():
                if p.grad is None:
                    raise RuntimeError(f"DeepStackLM.layer_grad_norms: blocks.{i}.{name} has no gradient; "
                                       f"call loss(idx, targets).backward() first")
                g = to_numpy(p.grad.data).astype(np.float64)
                total += float(np.sum(g * g))
            norms.append(math.sqrt(total))
        return norms
