"""GPT: a decoder-only transformer language model, read top to bottom (nanoGPT's layout).

    idx (B, T) -> wte(idx) [+ wpe(pos) | + sinusoid(pos)] -> dropout -> n_layer x Block -> ln_f -> lm_head
    Block (pre-norm):  x = x + attn(ln_1(x));  x = x + mlp(ln_2(x))

The blocks run as one fused op with a hand-derived backward (``groundup.ops.transformer``:
``TransformerBlock`` over the stack, then ``LMHeadLoss`` for ln_f + lm_head + cross-entropy in
``loss``); ``Block.forward_unfused`` composes the same maths from engine ops and is what the fused
op is tested against (with finite differences, PyTorch and a picoGPT-style NumPy forward).
Parameter names follow nanoGPT/GPT-2 so state_dict keys read ``wte.weight``,
``blocks.0.attn.qkv.weight``, ``blocks.0.mlp.fc.weight``, ``ln_f.weight``, ``lm_head.weight``
(the same Parameter as ``wte.weight`` when ``tie_weights``).

Generation with a KV cache. While the sequence fits the context (``block_size``), each new token's
keys and values are appended to a per-layer cache and only the new token is run through the model;
this gives the same logits as recomputing everything (up to float rounding), hence the same tokens
for the same seed. Past the context the window slides, and what the cache does depends on the
positions:
  * ``learned`` / ``sinusoidal`` (absolute positions): once the window moves, every cached entry
    was computed at a position it no longer has, so all of them are stale. The exact behaviour, and
    what ``generate`` does, is to fall back to recomputing the last ``block_size`` tokens for every
    further token. ``use_cache=True`` and ``False`` then still give the same tokens.
  * ``rotary`` / ``none`` (positions enter only as relative offsets, or not at all): the cache is
    cropped to its last ``block_size`` entries (a ring buffer) and kept. Each new token attends to
    itself and the ``block_size - 1`` tokens before it, through keys and values computed when those
    tokens were generated (with their longer context in the layers above the first). This is exactly
    sliding-window attention with window ``block_size`` over the whole sequence; it is *not* the same
    as recomputing the last ``block_size`` tokens from scratch, which ``use_cache=False`` does.

References: Radford et al. 2019 (GPT-2), Karpathy's nanoGPT (model.py, init) and picoGPT, Su et al.
2021 (rotary), Vaswani et al. 2017 (sinusoidal positions, post-norm).
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from groundup import creation, random
from groundup import functional as F
from groundup.backend import array_module, to_numpy
from groundup.models.shared import check_token_ids, gpt_init_
from groundup.nn.layers import Embedding, LayerNorm, Linear
from groundup.nn.module import Module, ModuleList
from groundup.ops import transformer as fused
from groundup.tensor import Tensor, no_grad

__all__ = ["GPT", "GPTConfig", "Block", "CausalSelfAttention", "MLP"]

POS_ENCODINGS = ("learned", "sinusoidal", "rotary", "none")
NORMS = ("pre", "post")


@dataclass(frozen=True)
class GPTConfig:
    """Architecture of a GPT. Defaults: GPT-2's choices (learned positions, biases) at the ``baby``
    preset's size on Tiny Shakespeare's 65 characters. Use ``GPTConfig.preset(name)`` for the presets.

    Args:
        vocab_size: V, number of token ids.
        block_size: T_max, the context length.
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

    # The sizes are nanoGPT's Shakespeare configs; bias=False is nanoGPT's train.py default, which both
    # use. Positions are rotary rather than nanoGPT's learned table: on Tiny Shakespeare after 2000
    # baby iterations that lowers val loss by 0.11 (mean of seeds 1337, 1, 2: 1.786 against 1.894;
    # BENCHMARKS.md). ``pos_encoding="learned"`` gives nanoGPT's model exactly.
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        # nanoGPT's CPU Shakespeare config (README "I only have a macbook"): 795,904 parameters at V=65
        # (804,096 with learned positions, nanoGPT's count).
        "baby": dict(n_layer=4, n_head=4, n_embd=128, block_size=64, dropout=0.0, bias=False,
                     pos_encoding="rotary"),
        # nanoGPT's GPU Shakespeare config (config/train_shakespeare_char.py): 10.7M parameters.
        "small": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, dropout=0.2, bias=False,
                      pos_encoding="rotary"),
    }

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ValueError(f"GPTConfig.{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"GPTConfig: n_embd={self.n_embd} must be divisible by n_head={self.n_head}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig.dropout must be in [0, 1), got {self.dropout}")
        if self.pos_encoding not in POS_ENCODINGS:
            raise ValueError(f"GPTConfig.pos_encoding must be one of {POS_ENCODINGS}, got {self.pos_encoding!r}")
        if self.pos_encoding == "rotary" and (self.n_embd // self.n_head) % 2:
            raise ValueError(f"GPTConfig: rotary positions need an even head dim, got "
                             f"n_embd/n_head = {self.n_embd // self.n_head}")
        if self.pos_encoding == "sinusoidal" and self.n_embd % 2:
            raise ValueError(f"GPTConfig: sinusoidal positions need an even n_embd, got {self.n_embd}")
        if self.norm not in NORMS:
            raise ValueError(f"GPTConfig.norm must be one of {NORMS}, got {self.norm!r}")
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


# ----------------------------------------------------------------------------- layers
class CausalSelfAttention(Module):
    """Multi-head self-attention's weights: ``qkv`` (C -> 3C, q|k|v stacked) and ``proj`` (C -> C)."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.qkv = Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.proj = Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)


class MLP(Module):
    """The position-wise feed-forward net's weights: ``fc`` (C -> 4C), GELU (tanh), ``proj`` (4C -> C)."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.fc = Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.proj = Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)


class Block(Module):
    """One transformer block. x (B, T, C) -> (B, T, C)."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.ln_1 = LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def block_parameters(self) -> list[Tensor]:
        """The parameters in the fused op's order (``groundup.ops.transformer.PARAM_NAMES``)."""
        attn, mlp = self.attn, self.mlp
        params = [self.ln_1.weight, self.ln_1.bias, attn.qkv.weight, attn.qkv.bias, attn.proj.weight,
                  attn.proj.bias, self.ln_2.weight, self.ln_2.bias, mlp.fc.weight, mlp.fc.bias, mlp.proj.weight,
                  mlp.proj.bias]                                       # PARAM_NAMES order
        return params if self.cfg.bias else params[0::2]

    def forward(self, x: Tensor, causal: bool = True, key_mask: Any = None,
                rope: tuple[Any, Any] | None = None) -> Tensor:
        """x (B, T, C); key_mask (B, T) bool array (True = real token) or None; rope (cos, sin) (T, D) arrays."""
        p = self.cfg.dropout if self.training else 0.0
        return fused.TransformerBlock.apply(
            x, *self.block_parameters(), n_head=self.cfg.n_head, causal=causal, norm=self.cfg.norm,
            eps=self.ln_1.eps, rope=rope, key_mask=key_mask, dropout_p=p,
            rng=random.generator() if p > 0 else None, has_bias=self.cfg.bias)

    def attention_weights(self, x: Tensor, causal: bool = True, key_mask: Any = None,
                          rope: tuple[Any, Any] | None = None) -> Tensor:
        """The softmax weights of this block's heads for input x (B, T, C): (B, H, T, T), no dropout."""
        cfg = self.cfg
        B, T, C = x.shape
        H, D = cfg.n_head, cfg.head_dim
        h = self.ln_1(x) if cfg.norm == "pre" else x
        qkv = self.attn.qkv(h).reshape(B, T, 3, H, D)                            # (B, T, 3, H, D)
        q, k = qkv[:, :, 0].transpose(1, 2), qkv[:, :, 1].transpose(1, 2)       # each (B, H, T, D)
        if rope is not None:
            q, k = _rotary_tensor(q, *rope), _rotary_tensor(k, *rope)
        scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(D))              # (B, H, T, S)
        xp = array_module(x.data)
        allowed = xp.ones((B, 1, T, T), dtype=bool)                             # (B, 1, T, S)
        if key_mask is not None:
            allowed = allowed & xp.asarray(key_mask)[:, None, None, :]
        if causal:
            allowed = allowed & xp.tril(xp.ones((T, T), dtype=bool))
        weights = scores.masked_fill(Tensor(~allowed), float("-inf")).softmax(dim=-1)   # (B, H, T, S)
        return weights.masked_fill(Tensor(~allowed.any(axis=-1, keepdims=True)), 0.0)  # rows with no key: 0

    def forward_unfused(self, x: Tensor, causal: bool = True, key_mask: Any = None,
                        rope: tuple[Any, Any] | None = None) -> Tensor:
        """The same block composed from engine ops (autograd does the backward). Slower; a test oracle."""
        cfg = self.cfg
        B, T, C = x.shape
        H, D = cfg.n_head, cfg.head_dim
        p = cfg.dropout if self.training else 0.0

        def attention(h: Tensor) -> Tensor:
            qkv = self.attn.qkv(h).reshape(B, T, 3, H, D)                        # (B, T, 3, H, D)
            q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))          # each (B, H, T, D)
            if rope is not None:
                q, k = _rotary_tensor(q, *rope), _rotary_tensor(k, *rope)
            mask = None
            if key_mask is not None:
                xp = array_module(x.data)
                allowed = xp.broadcast_to(xp.asarray(key_mask)[:, None, None, :], (B, 1, T, T))  # (B, 1, T, S)
                if causal:
                    allowed = allowed & xp.tril(xp.ones((T, T), dtype=bool))
                mask = Tensor(allowed)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and mask is None,
                                               dropout_p=p)                     # (B, H, T, D)
            y = y.transpose(1, 2).reshape(B, T, C)                              # (B, T, C)
            return F.dropout(self.attn.proj(y), p, self.training)

        def mlp(h: Tensor) -> Tensor:
            return F.dropout(self.mlp.proj(F.gelu(self.mlp.fc(h), approximate="tanh")), p, self.training)

        if cfg.norm == "pre":
            x = x + attention(self.ln_1(x))
            return x + mlp(self.ln_2(x))
        x = self.ln_1(x + attention(x))
        return self.ln_2(x + mlp(x))


def _rotary_tensor(x: Tensor, cos: Any, sin: Any) -> Tensor:
    """x cos + rotate_half(x) sin on Tensors, rotate_half([x1, x2]) = [-x2, x1]."""
    half = x.shape[-1] // 2
    rotated = creation.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * Tensor(cos) + rotated * Tensor(sin)


# ----------------------------------------------------------------------------- the model
class GPT(Module):
    """A GPT language model. ``model(idx)`` -> logits (B, T, V); ``model.loss(idx, targets)`` -> scalar."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        if not isinstance(cfg, GPTConfig):
            raise TypeError(f"GPT needs a GPTConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        self.wte = Embedding(cfg.vocab_size, cfg.n_embd)
        if cfg.pos_encoding == "learned":
            self.wpe = Embedding(cfg.block_size, cfg.n_embd)
        self.blocks = ModuleList([Block(cfg) for _ in range(cfg.n_layer)])
        self.ln_f = LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.lm_head = Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_weights:
            self.lm_head.weight = self.wte.weight
        self._tables: dict[Any, Any] = {}
        self._init_weights()

    @property
    def config(self) -> GPTConfig:
        return self.cfg

    def _init_weights(self) -> None:
        """nanoGPT: weights N(0, 0.02), biases 0, residual projections N(0, 0.02 / sqrt(2 n_layer))."""
        gpt_init_(self, self.cfg.n_layer)

    def num_parameters(self, non_embedding: bool = False) -> int:
        """Learnable scalars; ``non_embedding`` leaves out the position table (nanoGPT's count)."""
        n = super().num_parameters()
        if non_embedding and self.cfg.pos_encoding == "learned":
            n -= self.wpe.weight.numel()
        return n

    # ------------------------------------------------------------------ helpers
    def _check_idx(self, idx: Any, what: str = "idx") -> Any:
        """Return the raw int array of idx (B, T) after checking dtype, shape, length and id range."""
        return check_token_ids(idx, "GPT", what, self.cfg.block_size, self.cfg.vocab_size, allow_empty=True)

    def _position_table(self, kind: str, positions: np.ndarray, xp: Any) -> Any:
        """Cached sinusoid (T, C) or rotary (cos, sin) (T, D) tables for positions 0..T-1."""
        key = (kind, len(positions), xp.__name__)
        if key not in self._tables:
            dtype = self.wte.weight.dtype
            if kind == "sinusoidal":
                self._tables[key] = xp.asarray(fused.sinusoidal_table(len(positions), self.cfg.n_embd, dtype))
            else:
                self._tables[key] = fused.rotary_tables(positions, self.cfg.head_dim, dtype=dtype, xp=xp)
        return self._tables[key]

    # ------------------------------------------------------------------ forward
    def forward(self, idx: Any, attention_mask: Any = None, causal: bool | None = None) -> Tensor:
        """Logits for every position.

        Args:
            idx: (B, T) integer token ids, T <= block_size, each in 0..vocab_size-1.
            attention_mask: optional (B, T) bool/0-1 array or Tensor, True (1) at real tokens and
                False (0) at padding; padded positions are never attended to.
            causal: override ``cfg.causal`` for this call (False: every position sees every other).
        Returns:
            (B, T, V) logits.
        """
        return self.lm_head(self.ln_f(self.features(idx, attention_mask, causal)))   # (B, T, V)

    def features(self, idx: Any, attention_mask: Any = None, causal: bool | None = None) -> Tensor:
        """The last block's output (B, T, C), before ``ln_f`` and ``lm_head``; arguments as ``forward``."""
        cfg = self.cfg
        x, key_mask, rope, causal = self._embed(idx, attention_mask, causal)    # (B, T, C)
        # All the blocks as one fused op (each thread takes its slice of the batch through every
        # block); the same as ``for block in self.blocks: x = block(x, ...)``.
        params = [p for block in self.blocks for p in block.block_parameters()]
        p = cfg.dropout if self.training else 0.0
        return fused.TransformerBlock.apply(
            x, *params, n_head=cfg.n_head, causal=causal, norm=cfg.norm, eps=self.blocks[0].ln_1.eps, rope=rope,
            key_mask=key_mask, dropout_p=p, rng=random.generator() if p > 0 else None, has_bias=cfg.bias)  # (B, T, C)

    def attention_maps(self, idx: Any, attention_mask: Any = None, causal: bool | None = None) -> np.ndarray:
        """Every head's attention weights, (n_layer, B, H, T, T) as a NumPy array; arguments as ``forward``.

        ``maps[l, b, h, t]`` is how head h of layer l at position t spreads its attention over the
        positions (each row sums to 1; masked positions get exactly 0). Computed in eval mode with
        the engine's unfused block, without gradients.
        """
        was_training = self.training
        self.eval()
        try:
            with no_grad():
                x, key_mask, rope, causal = self._embed(idx, attention_mask, causal)  # (B, T, C)
                maps = []
                for block in self.blocks:
                    maps.append(to_numpy(block.attention_weights(x, causal, key_mask, rope)))  # (B, H, T, T)
                    x = block.forward_unfused(x, causal, key_mask, rope)
        finally:
            self.train(was_training)
        return np.stack(maps)                                                   # (L, B, H, T, T)

    def _embed(self, idx: Any, attention_mask: Any, causal: bool | None) -> tuple[Tensor, Any, Any, bool]:
        """Token (+ position) embeddings (B, T, C), the key mask, the rotary tables and the causal flag."""
        cfg = self.cfg
        data = self._check_idx(idx)
        B, T = data.shape
        causal = cfg.causal if causal is None else causal
        xp = array_module(self.wte.weight.data)
        key_mask = None
        if attention_mask is not None:
            mask = attention_mask.data if isinstance(attention_mask, Tensor) else attention_mask
            key_mask = xp.asarray(mask).astype(bool)
            if tuple(key_mask.shape) != (B, T):
                raise ValueError(f"GPT: attention_mask must have the shape of idx {(B, T)}, "
                                 f"got {tuple(key_mask.shape)}")
        tokens = Tensor(xp.asarray(data))
        x = self.wte(tokens)                                                    # (B, T, C)
        rope = None
        if cfg.pos_encoding == "learned":
            x = x + self.wpe(Tensor(xp.arange(T)))                             # (B, T, C) + (T, C)
        elif cfg.pos_encoding == "sinusoidal":
            x = x + Tensor(self._position_table("sinusoidal", np.arange(T), xp))
        elif cfg.pos_encoding == "rotary":
            rope = self._position_table("rotary", np.arange(T), xp)
        x = F.dropout(x, cfg.dropout, self.training)
        return x, key_mask, rope, causal

    def loss(self, idx: Any, targets: Any, attention_mask: Any = None) -> Tensor:
        """Mean next-token cross-entropy; targets (B, T) ids, -100 = ignore (e.g. padding).

        Equal to ``F.cross_entropy(self(idx).reshape(-1, V), targets.reshape(-1))``, computed by one
        fused op (``ln_f``, ``lm_head`` and the loss, split over threads like the blocks).
        """
        x = self.features(idx, attention_mask=attention_mask)                  # (B, T, C)
        t = targets.data if isinstance(targets, Tensor) else np.asarray(targets)
        if tuple(t.shape) != tuple(x.shape[:2]):
            raise ValueError(f"GPT.loss: targets {tuple(t.shape)} must match idx {tuple(x.shape[:2])}")
        if t.dtype.kind not in "iu":
            raise TypeError(f"GPT.loss: targets must be integer token ids, got dtype {t.dtype}")
        xp = array_module(x.data)
        ln = [self.ln_f.weight] + ([self.ln_f.bias] if self.ln_f.bias is not None else [])
        return fused.LMHeadLoss.apply(x, *ln, self.lm_head.weight, targets=xp.asarray(t), eps=self.ln_f.eps,
                                      has_bias=self.ln_f.bias is not None)

    # ------------------------------------------------------------------ generation
    def generate(self, idx: Any, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, seed: int | None = None, use_cache: bool = True) -> Tensor:
        """Sample ``max_new_tokens`` tokens after the prompt ``idx`` (B, T0) -> (B, T0 + max_new_tokens).

        Args:
            temperature: divides the logits; 0 picks the most likely token (greedy).
            top_k: keep only the k most likely tokens (ties with the k-th kept).
            top_p: keep the smallest set of most likely tokens whose probability reaches p (nucleus).
            seed: seed of a private generator (same seed -> same tokens); None uses gu.manual_seed's.
            use_cache: keep per-layer keys/values (see the module docstring for what happens past
                the context); False runs the whole (cropped) window through the model for each token.
        """
        cfg = self.cfg
        prompt = idx.data if isinstance(idx, Tensor) else np.asarray(idx)
        if prompt.ndim == 1:
            prompt = prompt[None, :]
        if prompt.shape[1] < 1:
            raise ValueError("GPT.generate: the prompt must hold at least one token")
        self._check_idx(prompt[:, -cfg.block_size:], "the prompt")
        if (prompt < 0).any() or (prompt >= cfg.vocab_size).any():
            raise IndexError(f"GPT.generate: the prompt has token ids outside 0..{cfg.vocab_size - 1}")
        if max_new_tokens < 0:
            raise ValueError(f"GPT.generate: max_new_tokens must be >= 0, got {max_new_tokens}")
        if temperature < 0:
            raise ValueError(f"GPT.generate: temperature must be >= 0, got {temperature}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"GPT.generate: top_k must be >= 1, got {top_k}")
        if top_p is not None and not 0.0 < top_p <= 1.0:
            raise ValueError(f"GPT.generate: top_p must be in (0, 1], got {top_p}")
        rng = np.random.default_rng(seed) if seed is not None else random.generator()
        tokens = to_numpy(prompt).astype(np.int64)
        was_training = self.training
        self.eval()
        try:
            with no_grad():
                decoder = _KVDecoder(self, tokens.shape[0], tokens.shape[1] + max_new_tokens) if use_cache else None
                for step in range(max_new_tokens):
                    if decoder is not None:
                        logits = decoder.next_logits(tokens, step == 0)
                    else:
                        logits = to_numpy(self(tokens[:, -cfg.block_size:]).data[:, -1, :])
                    nxt = sample_next(logits, temperature, top_k, top_p, rng)  # (B,)
                    tokens = np.concatenate([tokens, nxt[:, None]], axis=1)    # (B, T + 1)
        finally:
            self.train(was_training)
        return Tensor(tokens)

    # ------------------------------------------------------------------ checkpoints
    def save(self, directory: str | os.PathLike) -> None:
        """Write ``model.safetensors`` + ``config.json`` into ``directory`` (groundup.train checkpoint)."""
        from groundup.train import save_checkpoint

        save_checkpoint(directory, self, config=self.cfg)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> GPT:
        """Rebuild a model saved by ``save`` (or by ``groundup train gpt``)."""
        from groundup.train import load_checkpoint

        if not Path(directory).is_dir():
            raise FileNotFoundError(f"GPT.load: no checkpoint directory {directory}")
        state, config, _ = load_checkpoint(directory)
        if isinstance(config, dict) and "model" in config and isinstance(config["model"], dict):
            config = config["model"]
        model = cls(GPTConfig.from_dict(dict(config)))
        model.load_state_dict(state)
        return model


# ----------------------------------------------------------------------------- sampling
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
    z = logits / temperature
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


# ----------------------------------------------------------------------------- KV cache
class _KVDecoder:
    """Incremental inference over raw arrays with a per-layer key/value cache (see the module docstring).

    The cache holds ``block_size`` slots per layer, (B, H, block_size, D) for keys and values; the
    token at position p lives in slot p % block_size (a ring buffer: attention does not care about
    the order of its keys).
    """

    def __init__(self, model: GPT, batch: int, total_len: int):
        cfg = model.cfg
        self.model, self.cfg = model, cfg
        self.xp = xp = array_module(model.wte.weight.data)
        dtype = model.wte.weight.dtype
        shape = (cfg.n_layer, batch, cfg.n_head, cfg.block_size, cfg.head_dim)
        self.keys = xp.zeros(shape, dtype=dtype)
        self.values = xp.zeros(shape, dtype=dtype)
        self.params = [{n: (p.data if p is not None else None) for n, p in _named(block)} for block in model.blocks]
        self.wte = model.wte.weight.data
        self.wpe = model.wpe.weight.data if cfg.pos_encoding == "learned" else None
        self.head = model.lm_head.weight.data
        self.ln_f = (model.ln_f.weight.data, model.ln_f.bias.data if model.ln_f.bias is not None else None)
        self.eps = model.ln_f.eps
        self.absolute = cfg.pos_encoding in ("learned", "sinusoidal")
        if cfg.pos_encoding == "sinusoidal":
            self.sinusoid = xp.asarray(fused.sinusoidal_table(cfg.block_size, cfg.n_embd, dtype))
        if cfg.pos_encoding == "rotary":
            self.cos, self.sin = fused.rotary_tables(np.arange(max(total_len, cfg.block_size)), cfg.head_dim,
                                                     dtype=dtype, xp=xp)
        self.length = 0        # position of the next token to run (tokens already in the cache)
        self.start = 0         # absolute position of cache slot 0's first use (0 unless re-prefilled)

    def next_logits(self, tokens: np.ndarray, first: bool) -> np.ndarray:
        """Logits (B, V) for the token after ``tokens`` (B, L): prefill, one cached step or a recompute."""
        cfg = self.cfg
        L = tokens.shape[1]
        if first or (self.absolute and L > cfg.block_size):
            window = tokens[:, -cfg.block_size:]
            self.length = 0
            with fused.all_blas_threads():                  # one Python thread: let BLAS use its threads
                return self._run(window, 0)
        return self._run(tokens[:, -1:], self.length)

    def _embed(self, window: np.ndarray, pos0: int) -> Any:
        xp, cfg = self.xp, self.cfg
        T = window.shape[1]
        x = self.wte[xp.asarray(window)]                                        # (B, T, C)
        if cfg.pos_encoding == "learned":
            x = x + self.wpe[pos0:pos0 + T]
        elif cfg.pos_encoding == "sinusoidal":
            x = x + self.sinusoid[pos0:pos0 + T]
        return x

    def _run(self, window: np.ndarray, pos0: int) -> np.ndarray:
        """Run T new tokens at positions pos0.. through every layer, caching their keys and values.

        T > 1 only for a prefill (pos0 = 0, empty cache): causal attention among the T tokens. T = 1:
        the new token attends to every valid slot (all of them hold its past). Only the last
        position's logits are wanted, so the last layer runs its queries and MLP on that row alone.
        """
        xp, cfg = self.xp, self.cfg
        B, T = window.shape
        S = cfg.block_size
        H, D, C = cfg.n_head, cfg.head_dim, cfg.n_embd
        x = self._embed(window, pos0).reshape(B * T, C)                         # (B*T, C)
        n_valid = min(pos0 + T, S)
        rope = (self.cos[pos0:pos0 + T], self.sin[pos0:pos0 + T]) if cfg.pos_encoding == "rotary" else None
        pre = cfg.norm == "pre"
        scale = 1.0 / math.sqrt(D)
        bias = fused._attention_bias(None, cfg.causal, T, T, x.dtype, xp) if T > 1 else None  # (T, T) or None
        last_layer = len(self.params) - 1
        for layer, p in enumerate(self.params):
            h = fused._layer_norm(x, p["ln_1.weight"], p["ln_1.bias"], self.eps)[0] if pre else x
            qkv = fused._linear(h, p["attn.qkv.weight"], p["attn.qkv.bias"])    # (B*T, 3C)
            qkv = qkv.reshape(B, T, 3, H, D).transpose(2, 0, 3, 1, 4)           # (3, B, H, T, D)
            q, k, v = qkv[0], qkv[1], qkv[2]
            if rope is not None:
                q, k = fused._apply_rotary(q, *rope), fused._apply_rotary(k, *rope)
            keys, values = self.keys[layer], self.values[layer]                 # (B, H, S, D)
            if T == 1:
                keys[:, :, pos0 % S] = k[:, :, 0]
                values[:, :, pos0 % S] = v[:, :, 0]
                k, v = keys[:, :, :n_valid], values[:, :, :n_valid]             # (B, H, S', D)
            else:
                keys[:, :, :T] = k
                values[:, :, :T] = v
            if layer == last_layer and T > 1:                                   # only the last query matters
                q = q[:, :, -1:]                                                # (B, H, 1, D)
                bias = bias[-1:] if bias is not None else None
                x = x.reshape(B, T, C)[:, -1]                                   # (B, C)
            att = q @ k.transpose(0, 1, 3, 2)                                   # (B, H, T', S')
            att *= scale
            if bias is not None:
                att += bias
            att = fused._softmax_rows(att, False)
            y = att @ v                                                         # (B, H, T', D)
            y = y.transpose(0, 2, 1, 3).reshape(-1, C)                          # (B*T', C)
            a = fused._linear(y, p["attn.proj.weight"], p["attn.proj.bias"])
            a += x
            if pre:
                r1 = a
                h2 = fused._layer_norm(r1, p["ln_2.weight"], p["ln_2.bias"], self.eps)[0]
            else:
                r1 = h2 = fused._layer_norm(a, p["ln_1.weight"], p["ln_1.bias"], self.eps)[0]
            f = fused._linear(h2, p["mlp.fc.weight"], p["mlp.fc.bias"])          # (B*T', 4C)
            m = fused._linear(fused._gelu(f), p["mlp.proj.weight"], p["mlp.proj.bias"])
            m += r1
            x = m if pre else fused._layer_norm(m, p["ln_2.weight"], p["ln_2.bias"], self.eps)[0]
        self.length = pos0 + T
        last = x.reshape(B, -1, C)[:, -1]                                       # (B, C)
        last = fused._layer_norm(last, self.ln_f[0], self.ln_f[1], self.eps)[0]
        return to_numpy(last @ self.head.T)                                     # (B, V)


def _named(block: Block) -> list[tuple[str, Any]]:
    named = dict(block.named_parameters())
    return [(n, named.get(n)) for n in fused.PARAM_NAMES]
