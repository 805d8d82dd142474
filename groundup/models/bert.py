"""BERT: a bidirectional transformer encoder, pretrained by masked-language modelling, read top to bottom.

    idx (B, T) -> wte(idx) + wpe(pos) [+ wse(segment)] -> ln_embd -> dropout -> n_layer x Block -> x (B, T, C)
    Block, post-norm (BERT):     x = ln_1(x + attn(x));   x = ln_2(x + mlp(x))
    Block, pre-norm (option):    x = x + attn(ln_1(x));   x = x + mlp(ln_2(x));   ln_f at the end
    mlm_head:    x -> dense -> gelu -> ln -> decoder (weight tied to wte) -> logits (B, T, V)
    classifier:  x[:, 0] ([CLS]) -> pooler (dense + tanh) -> dropout -> classifier -> logits (B, num_labels)

Unlike a GPT, every position attends to every other (no causal mask); only padding is masked
out, through ``attention_mask`` (B, T), True (1) at real tokens. The attention is written out
(scores, mask, softmax, weighted sum) so that every step has a hook point named by its module
path, as in TransformerLens; while no hook is on q, k, v, the pattern or z, the same maths runs
as one node from the projections to the merged heads (``ops.packed_attention``, tested equal):

    hook_embed                          (B, T, C)   the embeddings entering block 0
    blocks.{i}.hook_resid_pre           (B, T, C)   the block's input
    blocks.{i}.attn.hook_q|k|v          (B, H, T, D)
    blocks.{i}.attn.hook_pattern        (B, H, T, T) softmax weights (0 on padded keys)
    blocks.{i}.attn.hook_z              (B, H, T, D) pattern @ v, per head
    blocks.{i}.attn.hook_result         (B, T, C)   the attention's output after ``proj``
    blocks.{i}.hook_resid_mid           (B, T, C)   after the attention sub-layer
    blocks.{i}.mlp.hook_pre|post        (B, T, 4C)  before / after the activation
    blocks.{i}.hook_resid_post          (B, T, C)   the block's output

Hugging Face parity. ``hf_config(cfg)`` builds a ``transformers.BertConfig`` and ``to_hf_state_dict``
renames our weights to Hugging Face's keys (``HF_KEY_MAP`` below), so a ``BertForMaskedLM`` or a
``BertForSequenceClassification`` built locally (random weights, no download) gives our logits
once it has loaded them (tests/test_models_bert.py, to 1e-5 in float32). transformers is imported
only inside ``hf_config``.

References:
    Devlin et al. 2019, "BERT: Pre-training of Deep Bidirectional Transformers for Language
        Understanding", https://arxiv.org/abs/1810.04805
    Vaswani et al. 2017 (post-norm blocks); Xiong et al. 2020 (pre-norm), https://arxiv.org/abs/2002.04745
    Hugging Face transformers, models/bert/modeling_bert.py (key names and layout)
    Nanda & Bloom, TransformerLens (hook points named by module path)
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from groundup import functional as F
from groundup import random
from groundup.backend import array_module, to_numpy
from groundup.creation import cat
from groundup.models.shared import as_twin, check_token_ids, load_saved
from groundup.nn import init
from groundup.nn.containers import ModuleList
from groundup.nn.hooks import HookedModule, HookPoint
from groundup.nn.layers import Dropout, Embedding, Identity, LayerNorm, Linear
from groundup.nn.module import Module
from groundup.ops.packed_attention import PackedAttention
from groundup.tensor import Tensor

__all__ = ["BERTConfig", "BERT", "Block", "SelfAttention", "MLP", "MLMHead", "HF_KEY_MAP", "hf_config",
           "to_hf_state_dict"]

NORMS = ("post", "pre")
ACTIVATIONS = {"gelu": "none", "gelu_tanh": "tanh"}          # our name -> F.gelu's ``approximate``
HF_ACTIVATIONS = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh"}


@dataclass(frozen=True)
class BERTConfig:
    """Architecture of a BERT encoder. Defaults: BERT's choices (post-norm, exact GELU, eps 1e-12,
    dropout 0.1, two segments) at a size that trains on a laptop CPU.

    Args:
        vocab_size: V, number of token ids (special tokens included).
        block_size: T_max, the longest input (``max_position_embeddings``).
        n_layer, n_head, n_embd: depth, heads per layer, width C (C divisible by n_head).
        n_inner: hidden width of the MLP; None means 4 * n_embd.
        type_vocab_size: number of segments (sentence A / B); 0 means no segment embedding.
        num_labels: outputs of the sequence-classification head.
        dropout: on the embeddings, both residual branches, the attention weights and before the classifier.
        norm: 'post' (BERT) or 'pre' (LayerNorm before each sub-layer, plus ``ln_f``).
        activation: 'gelu' (exact, BERT) or 'gelu_tanh' (GPT-2's approximation).
        layer_norm_eps: LayerNorm epsilon (BERT: 1e-12).
    """

    vocab_size: int
    block_size: int = 128
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 128
    n_inner: int | None = None
    type_vocab_size: int = 2
    num_labels: int = 2
    dropout: float = 0.1
    norm: str = "post"
    activation: str = "gelu"
    layer_norm_eps: float = 1e-12

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "num_labels"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ValueError(f"BERTConfig.{name} must be a positive integer, got {value!r}")
        if self.n_inner is not None and (not isinstance(self.n_inner, (int, np.integer)) or self.n_inner < 1):
            raise ValueError(f"BERTConfig.n_inner must be None or a positive integer, got {self.n_inner!r}")
        if not isinstance(self.type_vocab_size, (int, np.integer)) or self.type_vocab_size < 0:
            raise ValueError(f"BERTConfig.type_vocab_size must be an integer >= 0, got {self.type_vocab_size!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"BERTConfig: n_embd={self.n_embd} must be divisible by n_head={self.n_head}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"BERTConfig.dropout must be in [0, 1), got {self.dropout}")
        if self.norm not in NORMS:
            raise ValueError(f"BERTConfig.norm must be one of {NORMS}, got {self.norm!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"BERTConfig.activation must be one of {tuple(ACTIVATIONS)}, got {self.activation!r}")
        if not self.layer_norm_eps > 0:
            raise ValueError(f"BERTConfig.layer_norm_eps must be > 0, got {self.layer_norm_eps}")

    @property
    def head_dim(self) -> int:
        """D = n_embd // n_head."""
        return self.n_embd // self.n_head

    @property
    def inner(self) -> int:
        """The MLP's hidden width (``n_inner`` or 4 * n_embd)."""
        return self.n_inner if self.n_inner is not None else 4 * self.n_embd

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------- layers
class SelfAttention(Module):
    """Bidirectional multi-head self-attention: ``query``, ``key``, ``value`` (C -> C each) and ``proj``.

    The three projections are separate Linear layers (as in BERT), so LoRA can wrap q and v alone.
    """

    def __init__(self, cfg: BERTConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.query = Linear(cfg.n_embd, cfg.n_embd)
        self.key = Linear(cfg.n_embd, cfg.n_embd)
        self.value = Linear(cfg.n_embd, cfg.n_embd)
        self.proj = Linear(cfg.n_embd, cfg.n_embd)
        self.attn_dropout = Dropout(cfg.dropout)
        self.hook_q, self.hook_k, self.hook_v = HookPoint(), HookPoint(), HookPoint()
        self.hook_pattern, self.hook_z, self.hook_result = HookPoint(), HookPoint(), HookPoint()

    def forward(self, x: Tensor, key_mask: Any = None) -> Tensor:
        """x (B, T, C); key_mask (B, 1, 1, T) bool array (True = may be attended to) or None -> (B, T, C)."""
        B, T, C = x.shape
        H, D = self.n_head, C // self.n_head
        if not any(h.active for h in (self.hook_q, self.hook_k, self.hook_v, self.hook_pattern, self.hook_z)):
            return self.hook_result(self.proj(self._fused(x, key_mask)))        # the same maths in one node
        q = self.hook_q(self.query(x).reshape(B, T, H, D).transpose(1, 2))      # (B, H, T, D)
        k = self.hook_k(self.key(x).reshape(B, T, H, D).transpose(1, 2))        # (B, H, T, D)
        v = self.hook_v(self.value(x).reshape(B, T, H, D).transpose(1, 2))      # (B, H, T, D)
        scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(D))               # (B, H, T, T)
        if key_mask is not None:
            scores = scores.masked_fill(~key_mask, float("-inf"))               # padded keys get weight 0
        pattern = self.hook_pattern(F.softmax(scores, dim=-1))                  # (B, H, T, T) rows sum to 1
        z = self.hook_z(self.attn_dropout(pattern) @ v)                         # (B, H, T, D)
        y = z.transpose(1, 2).reshape(B, T, C)                                  # (B, T, C) heads side by side
        return self.hook_result(self.proj(y))                                   # (B, T, C)

    def _fused(self, x: Tensor, key_mask: Any) -> Tensor:
        """The projections and the attention above, heads merged, as few graph nodes: (B, T, C).

        Plain Linear layers make q | k | v in one GEMM (their weights side by side); others (e.g.
        LoRA-wrapped) are called one by one. ``PackedAttention`` reads the heads through strided
        views and draws the attention dropout as the written-out path does.
        """
        if type(self.query) is type(self.key) is type(self.value) is Linear:
            weight = cat([self.query.weight, self.key.weight, self.value.weight])   # (3C, C)
            bias = cat([self.query.bias, self.key.bias, self.value.bias])           # (3C,)
            packed: tuple[Tensor, ...] = (F.linear(x, weight, bias),)               # (B, T, 3C) q | k | v
        else:
            packed = (self.query(x), self.key(x), self.value(x))                    # each (B, T, C)
        p = self.attn_dropout.p if self.training else 0.0
        return PackedAttention.apply(*packed, num_heads=self.n_head, mask=key_mask, dropout_p=p,
                                     rng=random.generator() if p > 0 else None)     # (B, T, C)


class MLP(Module):
    """Position-wise feed-forward net: ``fc`` (C -> n_inner), GELU, ``proj`` (n_inner -> C)."""

    def __init__(self, cfg: BERTConfig):
        super().__init__()
        self.fc = Linear(cfg.n_embd, cfg.inner)
        self.proj = Linear(cfg.inner, cfg.n_embd)
        self.approximate = ACTIVATIONS[cfg.activation]
        self.hook_pre, self.hook_post = HookPoint(), HookPoint()

    def forward(self, x: Tensor) -> Tensor:
        h = self.hook_pre(self.fc(x))                                           # (B, T, 4C)
        h = self.hook_post(F.gelu(h, approximate=self.approximate))             # (B, T, 4C)
        return self.proj(h)                                                     # (B, T, C)


class Block(Module):
    """One encoder block, post-norm (BERT) or pre-norm. x (B, T, C) -> (B, T, C)."""

    def __init__(self, cfg: BERTConfig):
        super().__init__()
        self.pre_norm = cfg.norm == "pre"
        self.attn = SelfAttention(cfg)
        self.ln_1 = LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps)
        self.mlp = MLP(cfg)
        self.ln_2 = LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps)
        self.dropout = Dropout(cfg.dropout)
        self.hook_resid_pre, self.hook_resid_mid, self.hook_resid_post = HookPoint(), HookPoint(), HookPoint()

    def forward(self, x: Tensor, key_mask: Any = None) -> Tensor:
        x = self.hook_resid_pre(x)
        if self.pre_norm:
            x = self.hook_resid_mid(x + self.dropout(self.attn(self.ln_1(x), key_mask)))
            return self.hook_resid_post(x + self.dropout(self.mlp(self.ln_2(x))))
        x = self.hook_resid_mid(self.ln_1(x + self.dropout(self.attn(x, key_mask))))
        return self.hook_resid_post(self.ln_2(x + self.dropout(self.mlp(x))))


class MLMHead(Module):
    """Masked-LM head: ``dense`` (C -> C), GELU, ``ln``, ``decoder`` (C -> V, weight tied to ``wte``)."""

    def __init__(self, cfg: BERTConfig):
        super().__init__()
        self.dense = Linear(cfg.n_embd, cfg.n_embd)
        self.ln = LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps)
        self.decoder = Linear(cfg.n_embd, cfg.vocab_size)
        self.approximate = ACTIVATIONS[cfg.activation]

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.ln(F.gelu(self.dense(x), approximate=self.approximate)))   # (*, V)


# ----------------------------------------------------------------------------- the model
class BERT(HookedModule):
    """A BERT encoder with an MLM head and a [CLS] classification head.

    ``model(idx)`` -> MLM logits (B, T, V); ``model.classify(idx)`` -> (B, num_labels);
    ``model.loss(idx, labels)`` -> MLM loss; ``model.features(idx)`` -> (B, T, C).
    Every method takes ``attention_mask`` (B, T) (True / 1 at real tokens; None: all real) and
    ``token_type_ids`` (B, T) segment ids (None: all 0).
    """

    def __init__(self, cfg: BERTConfig):
        super().__init__()
        if not isinstance(cfg, BERTConfig):
            raise TypeError(f"BERT needs a BERTConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        self.wte = Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = Embedding(cfg.block_size, cfg.n_embd)
        self.wse = Embedding(cfg.type_vocab_size, cfg.n_embd) if cfg.type_vocab_size else None
        self.ln_embd = LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps)
        self.dropout = Dropout(cfg.dropout)
        self.hook_embed = HookPoint()
        self.blocks = ModuleList([Block(cfg) for _ in range(cfg.n_layer)])
        self.ln_f = LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps) if cfg.norm == "pre" else Identity()
        self.mlm_head = MLMHead(cfg)
        self.mlm_head.decoder.weight = self.wte.weight                          # tied, as in BERT
        self.pooler = Linear(cfg.n_embd, cfg.n_embd)
        self.classifier = Linear(cfg.n_embd, cfg.num_labels)
        self._init_weights()

    @property
    def config(self) -> BERTConfig:
        return self.cfg

    def _init_weights(self) -> None:
        """BERT's initialisation: every weight N(0, 0.02), biases 0, LayerNorm gains 1 and shifts 0."""
        norms = {id(p) for m in self.modules() if isinstance(m, LayerNorm) for p in m.parameters()}
        for name, p in self.named_parameters():
            if id(p) in norms:
                continue
            if name.endswith(".bias"):
                init.zeros_(p)
            else:
                init.normal_(p, 0.0, 0.02)

    def reset_classifier(self, num_labels: int | None = None) -> None:
        """A fresh classification head (``classifier``: N(0, 0.02), bias 0), optionally with a new label count."""
        n = self.cfg.num_labels if num_labels is None else num_labels
        self.classifier = Linear(self.cfg.n_embd, n, dtype=self.wte.weight.dtype).to(self.wte.weight.device)
        init.normal_(self.classifier.weight, 0.0, 0.02)
        init.zeros_(self.classifier.bias)

    # ------------------------------------------------------------------ forward
    def features(self, idx: Any, attention_mask: Any = None, token_type_ids: Any = None) -> Tensor:
        """The encoder's output (B, T, C) for token ids ``idx`` (B, T), T <= block_size."""
        x, key_mask = self.embed(idx, attention_mask, token_type_ids)          # (B, T, C)
        return self.ln_f(self.encode(x, key_mask))                              # (B, T, C)

    def embed(self, idx: Any, attention_mask: Any = None, token_type_ids: Any = None) -> tuple[Tensor, Any]:
        """The blocks' input (B, T, C): token + position (+ segment) embeddings, ``ln_embd``, dropout;
        and the key mask (B, 1, 1, T) bool or None for ``encode``."""
        cfg = self.cfg
        data = check_token_ids(idx, "BERT", "idx", cfg.block_size, cfg.vocab_size)
        B, T = data.shape
        xp = array_module(self.wte.weight.data)
        x = self.wte(Tensor(xp.asarray(data))) + self.wpe(Tensor(xp.arange(T)))   # (B, T, C) + (T, C)
        if self.wse is not None:
            segments = xp.zeros((B, T), dtype=np.int64) if token_type_ids is None else xp.asarray(
                check_token_ids(token_type_ids, "BERT", "token_type_ids", cfg.block_size, cfg.type_vocab_size))
            x = x + self.wse(Tensor(segments))                                  # (B, T, C)
        x = self.hook_embed(self.dropout(self.ln_embd(x)))                      # (B, T, C)
        return x, self._key_mask(attention_mask, B, T, xp)

    def encode(self, x: Tensor, key_mask: Any = None) -> Tensor:
        """The blocks: x (B, T, C) and key_mask (B, 1, 1, T) bool or None -> (B, T, C)."""
        for block in self.blocks:
            x = block(x, key_mask)                                              # (B, T, C)
        return x

    def forward(self, idx: Any, attention_mask: Any = None, token_type_ids: Any = None) -> Tensor:
        """Masked-LM logits (B, T, V) at every position."""
        return self.mlm_head(self.features(idx, attention_mask, token_type_ids))   # (B, T, V)

    def pooled(self, idx: Any, attention_mask: Any = None, token_type_ids: Any = None) -> Tensor:
        """tanh(pooler(x[:, 0])): the [CLS] position's summary of the sequence, (B, C)."""
        x = self.features(idx, attention_mask, token_type_ids)                  # (B, T, C)
        return self.pooler(x[:, 0]).tanh()                                      # (B, C)

    def classify(self, idx: Any, attention_mask: Any = None, token_type_ids: Any = None) -> Tensor:
        """Sequence-classification logits (B, num_labels), read from the [CLS] position (index 0)."""
        return self.classifier(self.dropout(self.pooled(idx, attention_mask, token_type_ids)))   # (B, num_labels)

    def loss(self, idx: Any, labels: Any, attention_mask: Any = None, token_type_ids: Any = None) -> Tensor:
        """Masked-LM cross-entropy, averaged over the positions whose label is not -100.

        Only those positions go through the MLM head (the same loss as ``F.cross_entropy(self(idx)
        .reshape(-1, V), labels.reshape(-1), ignore_index=-100)``, with less work).

        Args:
            idx: (B, T) input ids (with [MASK] / random / kept tokens at the chosen positions).
            labels: (B, T) the original ids at the chosen positions, -100 elsewhere.
        """
        target = _mlm_labels(labels)
        x = self.features(idx, attention_mask, token_type_ids)                  # (B, T, C)
        B, T, C = x.shape
        flat = _check_mlm_labels(target, B, T)                                  # chosen positions found on the host
        chosen = np.nonzero(flat != -100)[0]
        xp = array_module(x.data)
        logits = self.mlm_head(x.reshape(B * T, C)[xp.asarray(chosen)])         # (N, V)
        return F.cross_entropy(logits, xp.asarray(flat[chosen]))

    # ----------------------------------------------------------------- saving, loading, the twin
    def save(self, directory: str | os.PathLike) -> None:
        """Write ``model.safetensors`` + ``config.json`` into ``directory`` (a groundup.train checkpoint;
        it replaces one there, a Trainer's optimizer state and step included)."""
        from groundup.train import save_checkpoint

        save_checkpoint(directory, self, config=self.cfg)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> BERT:
        """Rebuild a model saved by ``save`` (or a Trainer), as this class (BERT or FastBERT); config.json
        is read first, so the weights are checked against it before any tensor is read."""
        return load_saved(cls, BERTConfig, directory)

    def as_class(self, cls: type[BERT]) -> BERT:
        """This model as a ``BERT`` or ``FastBERT`` (twins with the same parameters), weights copied."""
        return as_twin(self, cls)

    def classification_loss(self, idx: Any, labels: Any, attention_mask: Any = None,
                            token_type_ids: Any = None) -> Tensor:
        """Mean cross-entropy of ``classify`` against integer class labels (B,)."""
        target = labels.data if isinstance(labels, Tensor) else np.asarray(labels)
        logits = self.classify(idx, attention_mask, token_type_ids)             # (B, num_labels)
        if tuple(target.shape) != (logits.shape[0],):
            raise ValueError(f"BERT.classification_loss: labels of shape {tuple(target.shape)}, "
                             f"expected ({logits.shape[0]},)")
        return F.cross_entropy(logits, array_module(logits.data).asarray(target))

    def _key_mask(self, attention_mask: Any, B: int, T: int, xp: Any) -> Any:
        """(B, 1, 1, T) bool (True at real tokens) from a (B, T) mask, or None."""
        if attention_mask is None:
            return None
        mask = attention_mask.data if isinstance(attention_mask, Tensor) else attention_mask
        mask = xp.asarray(mask).astype(bool)
        if tuple(mask.shape) != (B, T):
            raise ValueError(f"BERT: attention_mask must have the shape of idx {(B, T)}, got {tuple(mask.shape)}")
        return mask[:, None, None, :]                                           # (B, 1, 1, T)


def _mlm_labels(labels: Any) -> np.ndarray:
    """``BERT.loss``'s labels as a host array of integer ids, or a TypeError."""
    target = to_numpy(labels.data) if isinstance(labels, Tensor) else np.asarray(labels)
    if target.dtype.kind not in "iu":
        raise TypeError(f"BERT.loss: labels must be integer token ids, got dtype {target.dtype}")
    return target


def _check_mlm_labels(target: np.ndarray, B: int, T: int) -> np.ndarray:
    """The labels (B, T) flattened to (B*T,), or a ValueError naming the mismatch or the missing labels."""
    if tuple(target.shape) != (B, T):
        raise ValueError(f"BERT.loss: labels of shape {tuple(target.shape)} do not match idx of shape {(B, T)}")
    flat = target.reshape(B * T)
    if not (flat != -100).any():
        raise ValueError("BERT.loss: no position has a label (all labels are -100)")
    return flat


# ----------------------------------------------------------------------------- Hugging Face
# Our parameter name -> Hugging Face's (BertForMaskedLM / BertForSequenceClassification); {i} = layer.
HF_KEY_MAP: dict[str, str] = {
    "wte.weight": "bert.embeddings.word_embeddings.weight",
    "wpe.weight": "bert.embeddings.position_embeddings.weight",
    "wse.weight": "bert.embeddings.token_type_embeddings.weight",
    "ln_embd.weight": "bert.embeddings.LayerNorm.weight",
    "ln_embd.bias": "bert.embeddings.LayerNorm.bias",
    "blocks.{i}.attn.query.weight": "bert.encoder.layer.{i}.attention.self.query.weight",
    "blocks.{i}.attn.query.bias": "bert.encoder.layer.{i}.attention.self.query.bias",
    "blocks.{i}.attn.key.weight": "bert.encoder.layer.{i}.attention.self.key.weight",
    "blocks.{i}.attn.key.bias": "bert.encoder.layer.{i}.attention.self.key.bias",
    "blocks.{i}.attn.value.weight": "bert.encoder.layer.{i}.attention.self.value.weight",
    "blocks.{i}.attn.value.bias": "bert.encoder.layer.{i}.attention.self.value.bias",
    "blocks.{i}.attn.proj.weight": "bert.encoder.layer.{i}.attention.output.dense.weight",
    "blocks.{i}.attn.proj.bias": "bert.encoder.layer.{i}.attention.output.dense.bias",
    "blocks.{i}.ln_1.weight": "bert.encoder.layer.{i}.attention.output.LayerNorm.weight",
    "blocks.{i}.ln_1.bias": "bert.encoder.layer.{i}.attention.output.LayerNorm.bias",
    "blocks.{i}.mlp.fc.weight": "bert.encoder.layer.{i}.intermediate.dense.weight",
    "blocks.{i}.mlp.fc.bias": "bert.encoder.layer.{i}.intermediate.dense.bias",
    "blocks.{i}.mlp.proj.weight": "bert.encoder.layer.{i}.output.dense.weight",
    "blocks.{i}.mlp.proj.bias": "bert.encoder.layer.{i}.output.dense.bias",
    "blocks.{i}.ln_2.weight": "bert.encoder.layer.{i}.output.LayerNorm.weight",
    "blocks.{i}.ln_2.bias": "bert.encoder.layer.{i}.output.LayerNorm.bias",
    # BertForMaskedLM only (the decoder's weight is wte.weight, tied):
    "mlm_head.dense.weight": "cls.predictions.transform.dense.weight",
    "mlm_head.dense.bias": "cls.predictions.transform.dense.bias",
    "mlm_head.ln.weight": "cls.predictions.transform.LayerNorm.weight",
    "mlm_head.ln.bias": "cls.predictions.transform.LayerNorm.bias",
    "mlm_head.decoder.weight": "cls.predictions.decoder.weight",
    "mlm_head.decoder.bias": "cls.predictions.bias",
    # BertForSequenceClassification only:
    "pooler.weight": "bert.pooler.dense.weight",
    "pooler.bias": "bert.pooler.dense.bias",
    "classifier.weight": "classifier.weight",
    "classifier.bias": "classifier.bias",
}
_HEAD_KEYS = {"mlm": ("mlm_head.",), "classifier": ("pooler.", "classifier.")}


def _hf_name(name: str) -> str:
    """Our parameter name -> Hugging Face's, through ``HF_KEY_MAP`` (the layer index made generic)."""
    parts = name.split(".")
    if parts[0] == "blocks":
        return HF_KEY_MAP[".".join(["blocks", "{i}", *parts[2:]])].replace("{i}", parts[1])
    return HF_KEY_MAP[name]


def to_hf_state_dict(model: BERT, head: str = "mlm") -> dict[str, np.ndarray]:
    """Our weights under Hugging Face's keys, for ``BertForMaskedLM`` (head='mlm') or
    ``BertForSequenceClassification`` (head='classifier'), ready for ``load_state_dict(..., strict=False)``.

    Pre-norm models have no Hugging Face counterpart; a model without segments gets one zero segment row.
    """
    if head not in _HEAD_KEYS:
        raise ValueError(f"to_hf_state_dict: head must be 'mlm' or 'classifier', got {head!r}")
    if model.cfg.norm != "post":
        raise ValueError("to_hf_state_dict: Hugging Face's BERT is post-norm; this model is pre-norm")
    skip = tuple(p for h, prefixes in _HEAD_KEYS.items() if h != head for p in prefixes)
    out = {_hf_name(name): value for name, value in model.state_dict().items() if not name.startswith(skip)}
    if model.wse is None:
        out[HF_KEY_MAP["wse.weight"]] = np.zeros((1, model.cfg.n_embd), dtype=model.wte.weight.dtype)
    if head == "mlm":
        out["cls.predictions.decoder.bias"] = out["cls.predictions.bias"]
    return out


def hf_config(cfg: BERTConfig) -> Any:
    """The ``transformers.BertConfig`` of the same architecture (imports transformers; nothing is downloaded)."""
    from transformers import BertConfig

    return BertConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.n_embd, num_hidden_layers=cfg.n_layer,
                      num_attention_heads=cfg.n_head, intermediate_size=cfg.inner,
                      hidden_act=HF_ACTIVATIONS[cfg.activation], hidden_dropout_prob=cfg.dropout,
                      attention_probs_dropout_prob=cfg.dropout, max_position_embeddings=cfg.block_size,
                      type_vocab_size=max(cfg.type_vocab_size, 1), layer_norm_eps=cfg.layer_norm_eps,
                      num_labels=cfg.num_labels, tie_word_embeddings=True,
                      pad_token_id=None)   # our embedding has no padding_idx: the [PAD] row trains like any other
