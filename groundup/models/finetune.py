"""Fine-tuning a pretrained model on a labelled task: sequence classifiers and what to train.

    classifier = BERTClassifier(bert)                 # reads [CLS] (position 0) through the pooler
    classifier = GPTClassifier(gpt, num_labels=8)     # reads the last real token (causal: it has seen everything)
    logits = classifier(idx, attention_mask)          # (B, num_labels)
    trainable = prepare_finetuning(classifier, "lora", r=4)   # or "full", "last"

Three ways to fine-tune (``prepare_finetuning``):
  * ``full``: every weight of the classifier trains (the body starts from the pretrained weights).
  * ``last``: only the last ``n_last`` blocks and the head train; the embeddings and the lower
    blocks stay as pretraining left them (a cheap way to keep what was learned).
  * ``lora``: the body is frozen and low-rank updates of the attention's query and value
    projections train, with the head (Hu et al. 2021; ``groundup.nn.lora``).
The masked-LM head of a BERT is never part of a classifier and never trains here.

References: Devlin et al. 2019, "BERT" (https://arxiv.org/abs/1810.04805), Section 3.2 (fine-tuning
from [CLS]); Radford et al. 2018, "Improving Language Understanding by Generative Pre-Training"
(classification from the last token of a GPT); Hu et al. 2021, "LoRA" (https://arxiv.org/abs/2106.09685);
Howard & Ruder 2018, "ULMFiT" (https://arxiv.org/abs/1801.06146) for tuning the top layers.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from groundup import functional as F
from groundup.backend import array_module, to_numpy
from groundup.models.bert import BERT
from groundup.models.gpt import GPT
from groundup.nn import init
from groundup.nn.layers import Linear
from groundup.nn.lora import apply_lora, mark_only_lora_as_trainable
from groundup.nn.module import Module
from groundup.tensor import Tensor

__all__ = ["BERTClassifier", "GPTClassifier", "prepare_finetuning", "trainable_parameters", "MODES"]

MODES = ("full", "last", "lora")


class BERTClassifier(Module):
    """A BERT used as a sequence classifier: ``bert.classify`` ([CLS] -> pooler -> classifier)."""

    def __init__(self, bert: BERT):
        super().__init__()
        self.bert = bert
        self.head_prefixes = ("bert.pooler.", "bert.classifier.")

    def forward(self, idx: Any, attention_mask: Any = None) -> Tensor:
        """idx (B, T) with [CLS] first, attention_mask (B, T) -> logits (B, num_labels)."""
        return self.bert.classify(idx, attention_mask)

    def loss(self, idx: Any, attention_mask: Any, labels: Any) -> Tensor:
        return _cross_entropy(self(idx, attention_mask), labels)

    def blocks(self) -> list[Module]:
        return list(self.bert.blocks)


class GPTClassifier(Module):
    """A GPT body with a linear head on the last real token's final hidden state (after ``ln_f``).

    Works with the readable ``GPT`` and with ``FastGPT`` (its fused ``stack``); the GPT's LM head
    is not used.
    """

    def __init__(self, gpt: GPT, num_labels: int):
        super().__init__()
        self.gpt = gpt
        self.head = Linear(gpt.cfg.n_embd, num_labels, dtype=gpt.wte.weight.dtype).to(gpt.wte.weight.device)
        init.normal_(self.head.weight, 0.0, 0.02)
        init.zeros_(self.head.bias)
        self.head_prefixes = ("head.", "gpt.ln_f.")

    def features(self, idx: Any, attention_mask: Any = None) -> Tensor:
        """The final hidden states (B, T, C) after ``ln_f``."""
        x, mask = self.gpt.embed(idx, attention_mask)                           # (B, T, C)
        if hasattr(self.gpt, "stack"):                                          # FastGPT: the fused stack
            x = self.gpt.stack(x, mask)
        else:
            for block in self.gpt.blocks:
                x = block(x, mask)                                              # (B, T, C)
        return self.gpt.ln_f(x)                                                 # (B, T, C)

    def forward(self, idx: Any, attention_mask: Any = None) -> Tensor:
        """idx (B, T) right-padded, attention_mask (B, T) -> logits (B, num_labels) at each row's last real token."""
        B, T = (idx.data if isinstance(idx, Tensor) else np.asarray(idx)).shape
        if attention_mask is None:
            last = np.full(B, T - 1)
        else:
            mask = to_numpy(attention_mask.data if isinstance(attention_mask, Tensor) else attention_mask).astype(bool)
            last = mask.sum(axis=1) - 1                                         # (B,) right padding
            if (last < 0).any():
                raise ValueError("GPTClassifier: a row of attention_mask has no real token")
        x = self.features(idx, attention_mask)                                  # (B, T, C)
        xp = array_module(x.data)
        picked = x[xp.arange(B), xp.asarray(last)]                              # (B, C)
        return self.head(picked)                                                # (B, num_labels)

    def loss(self, idx: Any, attention_mask: Any, labels: Any) -> Tensor:
        return _cross_entropy(self(idx, attention_mask), labels)

    def blocks(self) -> list[Module]:
        return list(self.gpt.blocks)


def _cross_entropy(logits: Tensor, labels: Any) -> Tensor:
    target = labels.data if isinstance(labels, Tensor) else np.asarray(labels)
    return F.cross_entropy(logits, array_module(logits.data).asarray(target))


def prepare_finetuning(classifier: BERTClassifier | GPTClassifier, mode: str, n_last: int = 1, r: int = 4,
                       alpha: float | None = None) -> int:
    """Choose what trains, in place; returns the number of trainable scalars.

    Args:
        classifier: a BERTClassifier or a GPTClassifier.
        mode: ``"full"``, ``"last"`` (the last ``n_last`` blocks and the head) or ``"lora"`` (rank ``r``
            updates of the query and value projections, plus the head). LoRA needs separate query and
            value layers, which the BERT has (the GPT's fused ``qkv`` has not).
    """
    if mode not in MODES:
        raise ValueError(f"prepare_finetuning: mode must be one of {MODES}, got {mode!r}")
    head = classifier.head_prefixes
    if mode == "lora":
        if not isinstance(classifier, BERTClassifier):
            raise ValueError("prepare_finetuning: LoRA here targets BERT's separate query and value layers")
        apply_lora(classifier, ("query", "value"), r=r, alpha=alpha)
        mark_only_lora_as_trainable(classifier, also=head)
    else:
        blocks = classifier.blocks()
        if mode == "last" and not 1 <= n_last <= len(blocks):
            raise ValueError(f"prepare_finetuning: n_last must be in 1..{len(blocks)}, got {n_last}")
        keep = {id(p) for b in blocks[len(blocks) - n_last:] for p in b.parameters()} if mode == "last" else None
        for name, p in classifier.named_parameters():
            p.requires_grad = keep is None or id(p) in keep or name.startswith(head)
    for name, p in classifier.named_parameters():          # the tied decoder weight is listed as bert.wte.weight
        if name.startswith("bert.mlm_head."):
            p.requires_grad = False
    return trainable_parameters(classifier)


def trainable_parameters(model: Module) -> int:
    """Scalars with requires_grad (each shared Parameter counted once)."""
    return int(sum(p.numel() for p in model.parameters() if p.requires_grad))
