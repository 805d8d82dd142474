"""Head detectors: score every attention head by where it looks.

Each detector is a mask (B, T, T) over (query, key) pairs; a head's score is the attention mass it
puts on the mask, averaged over the queries that have at least one such key. Scores are in [0, 1];
a head that attends uniformly over a causal row scores about (keys in the mask) / (t + 1).

    previous_token   key = query - 1                        (a layer-0 head of an induction circuit)
    duplicate_token  an earlier key holding the same token as the query
    induction        the key right *after* an earlier occurrence of the query's token (Olsson et al.)
    first_token      key = 0 (a "resting" head that parks its attention on the first token)

These say where a head looks, not what it does: ablation and patching measure that
(``groundup.interpret.ablation``, ``groundup.interpret.patching``).

References: Elhage et al. 2021, "A Mathematical Framework for Transformer Circuits"; Olsson et al.
2022, "In-context Learning and Induction Heads", https://arxiv.org/abs/2209.11895; Nanda's
TransformerLens head detector (the detector names).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from groundup.interpret._access import as_ids, check_model, eval_mode, n_layer, numpy_of
from groundup.nn.module import Module

__all__ = ["head_scores", "attention_patterns", "score_heads", "previous_token_mask", "duplicate_token_mask",
           "induction_mask", "first_token_mask", "DETECTORS"]


def previous_token_mask(ids: np.ndarray) -> np.ndarray:
    """(B, T, T) bool: key = query - 1."""
    B, T = ids.shape
    return np.broadcast_to(np.eye(T, k=-1, dtype=bool), (B, T, T)).copy()


def duplicate_token_mask(ids: np.ndarray) -> np.ndarray:
    """(B, T, T) bool: an earlier key (key < query) holding the query's token."""
    T = ids.shape[1]
    same = ids[:, :, None] == ids[:, None, :]                                  # (B, T, T) [query, key]
    return same & np.tril(np.ones((T, T), dtype=bool), k=-1)


def induction_mask(ids: np.ndarray) -> np.ndarray:
    """(B, T, T) bool: key j with ids[j - 1] == ids[query], 1 <= j < query (the token after an earlier copy)."""
    B, T = ids.shape
    mask = np.zeros((B, T, T), dtype=bool)
    mask[:, :, 1:] = ids[:, :, None] == ids[:, None, :-1]                     # key j <-> token at j - 1
    return mask & np.tril(np.ones((T, T), dtype=bool), k=-1)


def first_token_mask(ids: np.ndarray) -> np.ndarray:
    """(B, T, T) bool: key = 0, for queries t >= 1."""
    B, T = ids.shape
    mask = np.zeros((B, T, T), dtype=bool)
    mask[:, 1:, 0] = True
    return mask


DETECTORS = {"previous_token": previous_token_mask, "duplicate_token": duplicate_token_mask,
             "induction": induction_mask, "first_token": first_token_mask}


def score_heads(patterns: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(L, H): attention mass on ``mask``, averaged over the queries with a key in it (NaN if none has).

    Args:
        patterns: (L, B, H, T, T) attention weights [layer, batch, head, query, key].
        mask: (B, T, T) bool [batch, query, key].
    """
    has = mask.any(axis=-1)                                                    # (B, T) queries counted
    if not has.any():
        return np.full(patterns.shape[:1] + patterns.shape[2:3], np.nan)
    mass = (patterns * mask[None, :, None]).sum(axis=-1)                       # (L, B, H, T)
    return (mass * has[None, :, None]).sum(axis=(1, 3)) / has.sum()            # (L, H)


def attention_patterns(model: Module, idx: Any) -> np.ndarray:
    """Every head's attention weights (L, B, H, T, T), in eval mode, from ``blocks.{l}.attn.hook_pattern``."""
    check_model(model, "head_scores")
    with eval_mode(model):
        _, cache = model.run_with_cache(as_ids(idx, "head_scores"), names="blocks.*.attn.hook_pattern")
    return np.stack([numpy_of(cache[f"blocks.{i}.attn.hook_pattern"]) for i in range(n_layer(model))])


def head_scores(model: Module, idx: Any) -> dict[str, np.ndarray]:
    """Every head's detector scores on idx (B, T): ``{'previous_token': (L, H), 'duplicate_token': …,
    'induction': …, 'first_token': …}`` (NaN where the input has no query the detector can count)."""
    ids = as_ids(idx, "head_scores")
    patterns = attention_patterns(model, ids).astype(np.float64)              # (L, B, H, T, T)
    return {name: score_heads(patterns, make(ids)) for name, make in DETECTORS.items()}
