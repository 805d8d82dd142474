"""FastBERT: the readable ``BERT``'s twin for training, its encoder blocks run as one fused op.

Same parameters, same ``state_dict`` keys (and Hugging Face key map), same maths as
``groundup.models.bert.BERT`` (tested equal in float64, padding and dropout included); a checkpoint
loads into either class, and ``model.as_class(BERT)`` gives the readable one back. Hooks and
interpretability use ``BERT`` (``FastBERT`` refuses hooks rather than skip them).

What is fused: the blocks, through the GPT twin's ``TransformerStack`` (``groundup/models/gpt_fast.py``)
with BERT's options: no causal mask, the padding mask, post-norm (or pre-norm), LayerNorm eps 1e-12
and the exact GELU. BERT keeps query, key and value as three Linear layers (Hugging Face's layout,
and LoRA wraps query and value alone), so each call joins their weights into the stack's (3C, C)
qkv layout; the join is an ordinary op, so the three get their gradients. The embeddings, the MLM
head and the classifier are the readable model's own code. A LoRA-wrapped attention runs the
readable blocks.
"""

from __future__ import annotations

from typing import Any

from groundup import random
from groundup.backend import array_module
from groundup.creation import cat
from groundup.models.bert import BERT
from groundup.models.gpt_fast import TransformerStack
from groundup.models.shared import as_twin
from groundup.nn.layers import Linear
from groundup.tensor import Tensor

__all__ = ["FastBERT"]


class FastBERT(BERT):
    """``BERT`` whose ``encode`` (the blocks) is one fused op: the readable model's numbers, faster."""

    splits_work = True                      # its stack splits the batch (see ``FastGPT.splits_work``)

    def hooks(self, fns: Any):  # type: ignore[override]
        raise TypeError("FastBERT runs fused kernels and has no hook points; use the readable twin: "
                        "model.as_class(BERT)")

    def run_with_cache(self, *args: Any, **kwargs: Any):  # type: ignore[override]
        self.hooks({})

    def as_class(self, cls: type[BERT]) -> BERT:
        """This model as a ``BERT`` or ``FastBERT`` (twins with the same parameters), weights copied."""
        return as_twin(self, cls)

    def encode(self, x: Tensor, key_mask: Any = None) -> Tensor:
        """Every block at once: x (B, T, C), key_mask (B, 1, 1, T) bool or None -> (B, T, C)."""
        cfg = self.cfg
        params: list[Tensor] = []
        for block in self.blocks:
            a, m = block.attn, block.mlp
            if any(type(layer) is not Linear for layer in (a.query, a.key, a.value)):
                return super().encode(x, key_mask)                              # e.g. LoRA on query, value
            params += [block.ln_1.weight, block.ln_1.bias,
                       cat([a.query.weight, a.key.weight, a.value.weight], dim=0),   # (3C, C)
                       cat([a.query.bias, a.key.bias, a.value.bias], dim=0),         # (3C,)
                       a.proj.weight, a.proj.bias, block.ln_2.weight, block.ln_2.bias,
                       m.fc.weight, m.fc.bias, m.proj.weight, m.proj.bias]
        B, T, _ = x.shape
        mask = None if key_mask is None else array_module(x.data).broadcast_to(key_mask, (B, 1, T, T))
        p = cfg.dropout if self.training else 0.0
        return TransformerStack.apply(
            x, *params, n_head=cfg.n_head, causal=False, pre_norm=cfg.norm == "pre", eps=cfg.layer_norm_eps,
            mask=mask, dropout_p=p, rng=random.generator() if p > 0 else None, has_bias=True,
            activation="erf" if cfg.activation == "gelu" else "tanh")          # (B, T, C)
