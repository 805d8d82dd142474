"""GPTConfig: the architecture of a GPT (``groundup.models.gpt``) and its named presets.

    GPTConfig.preset("baby")        # nanoGPT's CPU Shakespeare model with rotary positions
    GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=65)

Saved with every checkpoint as config.json (``to_dict`` / ``from_dict``); invalid values fail here,
with the field's name, before a model is built.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

__all__ = ["GPTConfig"]


@dataclass(frozen=True)
class GPTConfig:
    """Architecture of a GPT. Defaults: GPT-2's choices (learned positions, biases) at the ``baby``
    preset's size on Tiny Shakespeare's 65 characters. ``GPTConfig.preset(name)`` gives the presets.

    Args:
        vocab_size: V, number of token ids.   block_size: T_max, the context length.
        n_layer, n_head, n_embd: depth, heads per layer, width C (C divisible by n_head).
        dropout: probability on the embeddings, attention weights and both residual branches.
        bias: biases in the Linear and LayerNorm layers (GPT-2: True).
        pos_encoding: 'learned' (GPT-2), 'sinusoidal' (fixed), 'rotary' (RoPE on q and k) or 'none'.
        norm: 'pre' (GPT-2: LayerNorm before each sub-layer) or 'post' (the original transformer).
        tie_weights: lm_head.weight is wte.weight.
        causal: each position attends only to itself and earlier positions (a language model).
    """

    vocab_size: int = 65
    block_size: int = 64
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = True
    pos_encoding: str = "learned"
    norm: str = "pre"
    tie_weights: bool = True
    causal: bool = True

    # nanoGPT's Shakespeare sizes with bias=False (its train.py default) and rotary positions instead
    # of its learned table (BENCHMARKS.md: lower val loss at the same speed); pos_encoding="learned"
    # gives nanoGPT's model exactly.
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "baby": dict(n_layer=4, n_head=4, n_embd=128, block_size=64, dropout=0.0, bias=False,
                     pos_encoding="rotary"),            # nanoGPT's CPU config: 795,904 parameters at V=65
        "small": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, dropout=0.2, bias=False,
                      pos_encoding="rotary"),           # nanoGPT's GPU config: 10.7M parameters
    }

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ValueError(f"GPTConfig.{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"GPTConfig: n_embd={self.n_embd} must be divisible by n_head={self.n_head}")
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig.dropout must be a number in [0, 1), got {self.dropout!r}")
        choices = {"pos_encoding": ("learned", "sinusoidal", "rotary", "none"), "norm": ("pre", "post")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"GPTConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.pos_encoding == "rotary" and self.head_dim % 2:
            raise ValueError(f"GPTConfig: rotary positions need an even head dim, got n_embd/n_head = {self.head_dim}")
        if self.pos_encoding == "sinusoidal" and self.n_embd % 2:
            raise ValueError(f"GPTConfig: sinusoidal positions need an even n_embd, got {self.n_embd}")
        for name in ("bias", "tie_weights", "causal"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"GPTConfig.{name} must be a bool, got {getattr(self, name)!r}")

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> GPTConfig:
        """A named configuration (``'baby'``, ``'small'``) with any fields overridden.

        >>> GPTConfig.preset("baby", vocab_size=100).n_embd
        128
        """
        if name not in cls.PRESETS:
            raise ValueError(f"unknown GPT preset {name!r}; choose one of {sorted(cls.PRESETS)}")
        return cls(**{**cls.PRESETS[name], **overrides})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> GPTConfig:
        """Rebuild from ``to_dict()`` output (e.g. a checkpoint's config.json); unknown keys are an error."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - fields)
        if unknown:
            raise ValueError(f"GPTConfig: unknown fields {unknown}; known: {sorted(fields)}")
        return cls(**values)

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head
