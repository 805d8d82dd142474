"""Masked-language-model inputs: BERT's 15% / 80-10-10 corruption of a batch of token ids.

    inputs, labels = mask_tokens(ids, rng, mask_id=3, vocab_size=69, special_ids=(0, 1, 2, 3), random_low=4)

Each position that holds an ordinary token is chosen with probability 15%; special tokens ([PAD],
[CLS], [SEP], [MASK]) never are. A chosen position becomes [MASK] with probability 80%, a random
ordinary token with probability 10%, and stays as it is with probability 10%; its label is the
original token. Positions not chosen get the label -100, which the loss ignores. Why not always
[MASK]: [MASK] never appears when the model is fine-tuned, so BERT also asks it to predict tokens
it can see (kept) or that were swapped (random), and it cannot trust any input token blindly.
Call it once per batch, so the masks are drawn afresh every time the model sees a sequence.

Reference: Devlin et al. 2019, "BERT: Pre-training of Deep Bidirectional Transformers for Language
Understanding", https://arxiv.org/abs/1810.04805 (Section 3.1, Task #1: Masked LM; Appendix C.2).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["IGNORE_INDEX", "mask_tokens"]

IGNORE_INDEX = -100


def mask_tokens(ids: np.ndarray, rng: np.random.Generator, mask_id: int, vocab_size: int,
                special_ids: Sequence[int] = (), random_low: int = 0, mask_prob: float = 0.15,
                replace_prob: float = 0.8, random_prob: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """BERT's masked-LM corruption of a batch.

    Args:
        ids: (B, T) integer token ids.
        rng: the NumPy generator every draw comes from.
        mask_id: the [MASK] token's id.
        vocab_size: random replacements are drawn from ``random_low .. vocab_size - 1``.
        special_ids: ids that are never chosen (padding, [CLS], [SEP], [MASK]).
        random_low: the first ordinary token id (the special tokens sit below it).
        mask_prob: the chance that an ordinary position is chosen (BERT: 0.15).
        replace_prob, random_prob: of the chosen positions, the share that becomes [MASK] (0.8) and
            the share that becomes a random token (0.1); the rest (0.1) is left unchanged.
    Returns:
        (inputs, labels), both (B, T) int64: the corrupted ids, and the original id at each chosen
        position with -100 everywhere else. When no position of the batch is chosen (a tiny batch),
        one ordinary position is chosen at random, so the loss always has a target.
    """
    ids = np.asarray(ids)
    if ids.dtype.kind not in "iu" or ids.ndim != 2:
        raise ValueError(f"mask_tokens: ids must be a (B, T) integer array, got {ids.dtype} {ids.shape}")
    if not (0.0 <= mask_prob <= 1.0 and replace_prob >= 0 and random_prob >= 0 and replace_prob + random_prob <= 1):
        raise ValueError(f"mask_tokens: need 0 <= mask_prob <= 1 and replace_prob + random_prob <= 1, got "
                         f"{mask_prob}, {replace_prob}, {random_prob}")
    if not 0 <= random_low < vocab_size:
        raise ValueError(f"mask_tokens: random_low={random_low} must be in 0..vocab_size-1 ({vocab_size - 1})")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"mask_tokens: rng must be a numpy.random.Generator (np.random.default_rng(seed)), "
                        f"got {type(rng).__name__}")
    if not 0 <= mask_id < vocab_size:
        raise ValueError(f"mask_tokens: mask_id={mask_id} is not a token id of the vocabulary (0..{vocab_size - 1})")
    if ids.size == 0:
        raise ValueError(f"mask_tokens: ids of shape {ids.shape} hold no position to mask")
    if ids.min() < 0 or ids.max() >= vocab_size:
        bad = int(ids.min()) if ids.min() < 0 else int(ids.max())
        raise ValueError(f"mask_tokens: ids hold {bad}, outside the vocabulary 0..{vocab_size - 1} (vocab_size="
                         f"{vocab_size}); it would be an input no embedding has and a label no output scores")
    ids = ids.astype(np.int64)
    maskable = ~np.isin(ids, np.asarray(list(special_ids), dtype=np.int64))   # (B, T)
    if not maskable.any():
        raise ValueError("mask_tokens: every position holds a special token; nothing can be masked")
    chosen = (rng.random(ids.shape) < mask_prob) & maskable                     # (B, T)
    if not chosen.any():
        candidates = np.flatnonzero(maskable)
        chosen.flat[candidates[rng.integers(len(candidates))]] = True
    action = rng.random(ids.shape)                                              # (B, T): which corruption
    to_mask = chosen & (action < replace_prob)
    to_random = chosen & (action >= replace_prob) & (action < replace_prob + random_prob)
    inputs = ids.copy()
    inputs[to_mask] = mask_id
    inputs[to_random] = rng.integers(random_low, vocab_size, size=int(to_random.sum()))
    labels = np.where(chosen, ids, IGNORE_INDEX)                                # (B, T)
    return inputs, labels
