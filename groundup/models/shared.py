"""What the language models (GPT, DeepStackLM, AttnOnlyLM, BERT) share: input checks, the next-token
loss, nanoGPT's initialisation, loading a saved model and the readable <-> fused twin switch.

    data = check_token_ids(idx, "GPT", "idx", block_size=64, vocab_size=65)   # raw (B, T) int array
    loss = next_token_loss("DeepStackLM", logits, targets)                   # logits (B, T, V)
    gpt_init_(model, n_layer=4)                                              # in the model's __init__

Every error names the model, the argument and its shape, so a bad batch fails where it enters.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from groundup import functional as F
from groundup.backend import array_module
from groundup.nn import init
from groundup.nn.layers import LayerNorm
from groundup.nn.module import Module
from groundup.tensor import Tensor

__all__ = ["check_token_ids", "next_token_loss", "gpt_init_", "as_twin", "load_saved"]


def load_saved(cls: type, config_cls: type, directory: str | os.PathLike) -> Any:
    """A model of class ``cls`` rebuilt from the checkpoint in ``directory``: its config.json (a
    ``config_cls``) first, so the weights file is checked against it (names, shapes, sizes) before
    any tensor is read. The ``load`` of GPT and BERT (and so of their fused twins)."""
    from groundup.train.checkpoint import config_from_dict, load_checkpoint, read_checkpoint_config

    if not Path(directory).is_dir():
        raise FileNotFoundError(f"{cls.__name__}.load: no checkpoint directory {directory}")
    saved = read_checkpoint_config(directory)
    saved = saved["model"] if isinstance(saved.get("model"), dict) else saved
    model = cls(config_from_dict(config_cls, saved, Path(directory) / "config.json"))
    load_checkpoint(directory, model)
    return model


def as_twin(model: Any, cls: type) -> Any:
    """``model`` as class ``cls``, its twin (GPT / FastGPT, BERT / FastBERT: the same config and
    parameters): built on the model's device and dtype, weights copied, the same training mode."""
    twin = cls(model.cfg).to(model.wte.weight.device, model.wte.weight.dtype)
    twin.load_state_dict(model.state_dict())
    return twin.train(model.training)


def check_token_ids(ids: Any, owner: str, what: str, block_size: int, vocab_size: int,
                    allow_empty: bool = False) -> Any:
    """The raw (B, T) integer array of ``ids`` (a Tensor or an array) after checking it.

    Raises:
        TypeError: the ids are not integers.
        ValueError: not (B, T); T > block_size; T is 0; B is 0 (unless ``allow_empty``).
        IndexError: an id outside 0..vocab_size-1.
    """
    data = ids.data if isinstance(ids, Tensor) else np.asarray(ids)
    shape = tuple(data.shape)
    if data.dtype.kind not in "iu":
        raise TypeError(f"{owner}: {what} must hold integer token ids, got dtype {data.dtype}")
    if data.ndim != 2:
        raise ValueError(f"{owner}: {what} must have shape (B, T), got {shape}")
    if data.size == 0 and (not allow_empty or shape[1] == 0):
        raise ValueError(f"{owner}: {what} has shape {shape}; need "
                         f"{'T >= 1' if allow_empty else 'B >= 1 and T >= 1'} (a sequence of at least one token)")
    if shape[1] > block_size:
        raise ValueError(f"{owner}: {what} has shape {shape}: sequence length {shape[1]} > block_size "
                         f"{block_size} (the context); crop the input to its last {block_size} tokens")
    if data.size:
        low, high = int(data.min()), int(data.max())
        if low < 0 or high >= vocab_size:
            bad = low if low < 0 else high
            raise IndexError(f"{owner}: token id {bad} in {what} {shape} is outside the vocabulary "
                             f"0..{vocab_size - 1}")
    return data


def next_token_loss(owner: str, logits: Tensor, targets: Any) -> Tensor:
    """Mean cross-entropy of logits (B, T, V) against integer targets (B, T): a scalar Tensor."""
    target = targets.data if isinstance(targets, Tensor) else np.asarray(targets)
    if target.dtype.kind not in "iu":
        raise TypeError(f"{owner}.loss: targets must hold integer token ids, got dtype {target.dtype}")
    B, T, V = logits.shape
    if tuple(target.shape) != (B, T):
        raise ValueError(f"{owner}.loss: targets of shape {tuple(target.shape)} do not match idx of shape {(B, T)}")
    xp = array_module(logits.data)
    return F.cross_entropy(logits.reshape(B * T, V), xp.asarray(target).reshape(B * T))   # (B*T, V), (B*T,)


def gpt_init_(model: Module, n_layer: int,
              residual_projections: tuple[str, ...] = ("attn.proj.weight", "mlp.proj.weight")) -> None:
    """nanoGPT's initialisation, in place: weights N(0, 0.02), biases 0, LayerNorms left at 1 and 0, and
    the projections that write into the residual stream N(0, 0.02 / sqrt(2 n_layer)) (GPT-2: the
    2 n_layer branches add up). Parameters are drawn in ``named_parameters`` order."""
    norms = {id(p) for m in model.modules() if isinstance(m, LayerNorm) for p in m.parameters()}
    for name, p in model.named_parameters():
        if id(p) in norms:
            continue
        if name.endswith(".bias"):
            init.zeros_(p)
        elif name.endswith(residual_projections):
            init.normal_(p, 0.0, 0.02 / math.sqrt(2 * n_layer))
        else:
            init.normal_(p, 0.0, 0.02)
