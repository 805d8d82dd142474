"""TorchGPT: a plain ``torch.nn.Module`` twin of groundup's GPT, with the same ``state_dict``.

Same layout as ``groundup.models.gpt.GPT`` (nanoGPT's): token embeddings + learned positions, fixed
sinusoidal positions, rotary positions on q and k (rotate-half form, base 10000) or none; pre-norm
(or post-norm) blocks with a stacked ``qkv`` projection, GELU (tanh), tied ``lm_head``, so
``TorchGPT(cfg).load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})``
copies a groundup model with no renaming or transposes. Attention is explicit (q k^T, mask, softmax,
@ v) by default, or ``F.scaled_dot_product_attention`` with ``sdpa=True``.

The key map is the identity: ``wte.weight``, ``wpe.weight`` (learned positions only),
``blocks.{i}.ln_1.*``, ``blocks.{i}.attn.qkv.*`` (q|k|v stacked, (3C, C)), ``blocks.{i}.attn.proj.*``,
``blocks.{i}.ln_2.*``, ``blocks.{i}.mlp.fc.*``, ``blocks.{i}.mlp.proj.*``, ``ln_f.*``, ``lm_head.weight``.
The sinusoid table is a non-persistent buffer, so it is not in the ``state_dict`` (as in groundup).

``generate`` samples with the same inverse-CDF rule and random stream as groundup's
``sample_next`` (one uniform per row from a NumPy generator), with or without a KV cache, and keeps
groundup's cache rules past the context: recompute the window for absolute (learned, sinusoidal)
positions, keep the last ``block_size`` cached keys and values (sliding-window attention) for rotary
or no positions.

This file imports only torch and NumPy (not groundup), so ``groundup export RUN_DIR --to torch OUT``
copies it next to the weights: ``from torch_gpt import load; model = load(OUT)`` then works anywhere
torch and safetensors are installed. torch is imported at module import: ``groundup.interop`` imports
this module only when it is asked for.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["TorchGPT", "make_config", "rotary_tables", "apply_rotary", "load"]


def make_config(cfg: Any) -> dict[str, Any]:
    """A plain dict of the fields the reference reads, from a GPTConfig or a dict."""
    fields = ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "dropout", "bias", "pos_encoding",
              "norm", "tie_weights", "causal")
    if isinstance(cfg, dict):
        return {k: cfg[k] for k in fields if k in cfg}
    return {k: getattr(cfg, k) for k in fields}


def rotary_tables(length: int, head_dim: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin (length, D) for positions 0..length-1: pairs (i, i + D/2) turn by p * base^(-2i/D)."""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)   # (D/2,)
    angles = torch.arange(length, dtype=torch.float64)[:, None] * inv_freq[None, :]      # (T, D/2)
    angles = torch.cat([angles, angles], dim=1)                                          # (T, D)
    return angles.cos().float(), angles.sin().float()


def sinusoidal_table(length: int, dim: int) -> torch.Tensor:
    """Vaswani et al.'s fixed positions (length, dim): sin on even dims, cos on odd dims (float32)."""
    pos = torch.arange(length, dtype=torch.float64)[:, None]                          # (T, 1)
    inv_freq = 10000.0 ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)       # (C/2,)
    table = torch.zeros(length, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(pos * inv_freq)
    table[:, 1::2] = torch.cos(pos * inv_freq[: dim // 2])
    return table.float()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, H, T, D) rotated by the tables' rows (T, D): x cos + rotate_half(x) sin."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)                        # (B, H, T, D)
    return x * cos + rotated * sin


class Attention(nn.Module):
    def __init__(self, c: dict[str, Any], sdpa: bool):
        super().__init__()
        self.n_head, self.sdpa, self.p, self.window = c["n_head"], sdpa, c["dropout"], c["block_size"]
        self.qkv = nn.Linear(c["n_embd"], 3 * c["n_embd"], bias=c["bias"])
        self.proj = nn.Linear(c["n_embd"], c["n_embd"], bias=c["bias"])
        self.drop = nn.Dropout(c["dropout"])
        T = c["block_size"]
        self.register_buffer("mask", torch.tril(torch.ones(T, T, dtype=torch.bool)), persistent=False)

    def forward(self, x: torch.Tensor, causal: bool, cache: list | None = None,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        B, T, C = x.shape
        H = self.n_head
        q, k, v = self.qkv(x).split(C, dim=2)
        q = q.view(B, T, H, C // H).transpose(1, 2)                   # (B, H, T, D)
        k = k.view(B, T, H, C // H).transpose(1, 2)                   # (B, H, T, D)
        v = v.view(B, T, H, C // H).transpose(1, 2)                   # (B, H, T, D)
        if rope is not None:
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        if cache is not None:
            if cache:
                k = torch.cat([cache[0], k], dim=2)[:, :, -self.window:]   # (B, H, S, D), S <= block_size
                v = torch.cat([cache[1], v], dim=2)[:, :, -self.window:]
            cache[:] = [k, v]
        S = k.shape[2]
        if self.sdpa:
            mask = self.mask[S - T:S, :S] if causal and T > 1 else None
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                               dropout_p=self.p if self.training else 0.0)
        else:
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.shape[-1]))   # (B, H, T, S)
            if causal:
                att = att.masked_fill(~self.mask[S - T:S, :S], float("-inf"))
            att = self.drop(F.softmax(att, dim=-1))
            y = att @ v                                               # (B, H, T, D)
        y = y.transpose(1, 2).contiguous().view(B, T, C)              # (B, T, C)
        return self.drop(self.proj(y))


class MLP(nn.Module):
    def __init__(self, c: dict[str, Any]):
        super().__init__()
        self.fc = nn.Linear(c["n_embd"], 4 * c["n_embd"], bias=c["bias"])
        self.proj = nn.Linear(4 * c["n_embd"], c["n_embd"], bias=c["bias"])
        self.drop = nn.Dropout(c["dropout"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(F.gelu(self.fc(x), approximate="tanh")))


class Block(nn.Module):
    def __init__(self, c: dict[str, Any], sdpa: bool):
        super().__init__()
        self.pre = c["norm"] == "pre"
        self.ln_1 = nn.LayerNorm(c["n_embd"], bias=c["bias"])
        self.attn = Attention(c, sdpa)
        self.ln_2 = nn.LayerNorm(c["n_embd"], bias=c["bias"])
        self.mlp = MLP(c)

    def forward(self, x: torch.Tensor, causal: bool, cache: list | None = None,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        if self.pre:
            x = x + self.attn(self.ln_1(x), causal, cache, rope)
            return x + self.mlp(self.ln_2(x))
        x = self.ln_1(x + self.attn(x, causal, cache, rope))
        return self.ln_2(x + self.mlp(x))


class TorchGPT(nn.Module):
    """The reference model. ``forward(idx)`` -> logits (B, T, V); ``loss(idx, targets)``."""

    def __init__(self, cfg: Any, sdpa: bool = False):
        super().__init__()
        c = make_config(cfg)
        if c["pos_encoding"] not in ("learned", "sinusoidal", "rotary", "none"):
            raise ValueError(f"TorchGPT supports pos_encoding 'learned', 'sinusoidal', 'rotary' or 'none', "
                             f"got {c['pos_encoding']!r}")
        self.c = c
        self.rope: tuple[torch.Tensor, torch.Tensor] | None = None   # tables, grown on demand
        self.wte = nn.Embedding(c["vocab_size"], c["n_embd"])
        if c["pos_encoding"] == "learned":
            self.wpe = nn.Embedding(c["block_size"], c["n_embd"])
        if c["pos_encoding"] == "sinusoidal":
            self.register_buffer("sinusoid", sinusoidal_table(c["block_size"], c["n_embd"]), persistent=False)
        self.drop = nn.Dropout(c["dropout"])
        self.blocks = nn.ModuleList([Block(c, sdpa) for _ in range(c["n_layer"])])
        self.ln_f = nn.LayerNorm(c["n_embd"], bias=c["bias"])
        self.lm_head = nn.Linear(c["n_embd"], c["vocab_size"], bias=False)
        if c["tie_weights"]:
            self.lm_head.weight = self.wte.weight
        self.apply(self._init)
        for name, p in self.named_parameters():
            if name.endswith(("attn.proj.weight", "mlp.proj.weight")):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * c["n_layer"]))

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, 0.0, 0.02)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)

    def forward(self, idx: torch.Tensor, caches: list | None = None, pos0: int = 0) -> torch.Tensor:
        B, T = idx.shape
        x = self.wte(idx)                                             # (B, T, C)
        rope = None
        if self.c["pos_encoding"] == "learned":
            x = x + self.wpe(torch.arange(pos0, pos0 + T, device=idx.device))
        elif self.c["pos_encoding"] == "sinusoidal":
            x = x + self.sinusoid[pos0:pos0 + T]
        elif self.c["pos_encoding"] == "rotary":
            if self.rope is None or self.rope[0].shape[0] < pos0 + T or self.rope[0].device != idx.device:
                tables = rotary_tables(max(pos0 + T, self.c["block_size"]), self.c["n_embd"] // self.c["n_head"])
                self.rope = (tables[0].to(idx.device), tables[1].to(idx.device))     # on the model's device
            rope = (self.rope[0][pos0:pos0 + T], self.rope[1][pos0:pos0 + T])
        x = self.drop(x)
        for i, block in enumerate(self.blocks):
            x = block(x, self.c["causal"], None if caches is None else caches[i], rope)
        return self.lm_head(self.ln_f(x))                             # (B, T, V)

    def loss(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = self(idx)
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, seed: int = 0, use_cache: bool = True,
                 temperature: float = 1.0) -> torch.Tensor:
        """Sample like groundup's ``GPT.generate`` (inverse CDF, one NumPy uniform per row per token).

        With the cache, a token past the context falls back to recomputing the window for absolute
        positions and keeps the last ``block_size`` cached entries otherwise, as groundup does.
        """
        rng = np.random.default_rng(seed)
        T_max = self.c["block_size"]
        slides = self.c["pos_encoding"] not in ("learned", "sinusoidal")
        caches = None
        for step in range(max_new_tokens):
            L = idx.shape[1]
            if use_cache and step > 0 and (L <= T_max or slides):
                logits = self(idx[:, -1:], caches, pos0=L - 1)
            else:
                caches = [[] for _ in self.blocks] if use_cache else None
                logits = self(idx[:, -T_max:], caches)
            probs = F.softmax(logits[:, -1, :].double() / temperature, dim=-1)
            cdf = torch.cumsum(probs, dim=-1)
            u = torch.from_numpy(rng.random(idx.shape[0])).to(cdf.device) * cdf[:, -1]
            nxt = (cdf <= u[:, None]).sum(dim=-1).clamp(max=probs.shape[-1] - 1)
            idx = torch.cat([idx, nxt[:, None]], dim=1)
        return idx


def load(directory: str, sdpa: bool = False) -> TorchGPT:
    """A TorchGPT from a directory holding ``config.json`` (a GPTConfig as JSON) and ``model.safetensors``.

    Works on a groundup run directory and on the output of ``groundup export RUN_DIR --to torch``.
    """
    import json
    from pathlib import Path

    from safetensors.torch import load_file

    folder = Path(directory)
    config = json.loads((folder / "config.json").read_text())
    if isinstance(config.get("model"), dict):        # a run.json-style {"model": {...}} record
        config = config["model"]
    model = TorchGPT(config, sdpa=sdpa)
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    return model
