"""The logit lens: read the residual stream after each layer as if it were the last.

Each layer's residual stream goes through the model's own final layer norm and unembedding,
``logits_l = unembed(ln_f(resid_l))``: the prediction the model would make if it stopped after
layer l. The last row is the model's own prediction exactly; how fast the rows before it approach
it shows the prediction forming layer by layer.

    lens = logit_lens(model, idx, targets)        # one sequence (T,) or (1, T)
    lens.names                                    # ['embed', 'blocks.0', ...]
    lens.top_ids[-1, t]                           # the model's top-k next tokens at position t
    lens.loss.mean(axis=1)                        # (L + 1,) the lens loss per layer

References: nostalgebraist 2020, "interpreting GPT: the logit lens",
https://www.lesswrong.com/posts/AcKRB8wDpdaN6v6ru/interpreting-gpt-the-logit-lens;
Belrose et al. 2023, "Eliciting Latent Predictions with the Tuned Lens" (KL to the final layer).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from groundup.interpret._access import apply_head, as_ids, check_model, eval_mode, log_softmax, numpy_of, token_losses
from groundup.nn.module import Module

__all__ = ["LogitLens", "logit_lens", "lens_log_probs", "lens_losses"]


@dataclass
class LogitLens:
    """The logit lens of one sequence.

    Attributes:
        names: the rows: 'embed' (before the first block), then 'blocks.0', 'blocks.1', ….
        top_ids: (L + 1, T, k) the k most likely next tokens per row and position.
        top_probs: (L + 1, T, k) their probabilities.
        loss: (L + 1, T) cross-entropy of the target under each row (NaN where the target is -100),
            or None without targets.
        kl_to_final: (L + 1, T) KL(final || row) in nats: 0 in the last row.
    """

    names: list[str]
    top_ids: np.ndarray
    top_probs: np.ndarray
    loss: np.ndarray | None
    kl_to_final: np.ndarray


def lens_log_probs(model: Module, idx: Any) -> tuple[np.ndarray, list[str]]:
    """Log-probabilities (L + 1, B, T, V) of every row of the lens, float64, and the row names."""
    check_model(model, "logit_lens")
    ids = as_ids(idx, "logit_lens")
    with eval_mode(model):
        _, cache = model.run_with_cache(ids, names=["blocks.0.hook_resid_pre", "blocks.*.hook_resid_post"])
        resid, names = cache.accumulated_resid()                              # (L+1, B, T, C)
        logits = numpy_of(apply_head(model, resid))                           # (L+1, B, T, V)
    return log_softmax(logits), names


def lens_losses(model: Module, idx: Any, targets: Any) -> np.ndarray:
    """Mean lens loss per row (L + 1,) over a batch idx (B, T), targets (B, T) (-100 ignored)."""
    ids, tgt = as_ids(idx, "lens_losses"), as_ids(targets, "lens_losses")
    if tgt.shape != ids.shape:
        raise ValueError(f"lens_losses: targets {tgt.shape} must match idx {ids.shape}")
    logp, _ = lens_log_probs(model, ids)
    loss = token_losses(logp, tgt[None])                                      # (L+1, B, T)
    return np.nanmean(loss.reshape(len(loss), -1), axis=1)                    # (L+1,)


def logit_lens(model: Module, idx: Any, targets: Any = None, k: int = 5) -> LogitLens:
    """The logit lens of one sequence: every layer's residual stream through ln_f and the unembedding.

    Args:
        model: a hooked language model (GPT, AttnOnlyLM, DeepStackLM), run in eval mode.
        idx: (T,) or (1, T) token ids.
        targets: (T,) or (1, T) next-token ids (-100: ignore), or None.
        k: how many top tokens to keep per row and position.
    Returns:
        a ``LogitLens``.
    """
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"logit_lens: k must be a positive integer, got {k!r}")
    logp, names = lens_log_probs(model, as_ids(idx, "logit_lens", one=True))
    logp = logp[:, 0]                                                         # (L+1, T, V)
    k = min(k, logp.shape[-1])
    top = np.argsort(-logp, axis=-1, kind="stable")[..., :k]                 # (L+1, T, k)
    top_probs = np.exp(np.take_along_axis(logp, top, axis=-1))                # (L+1, T, k)
    final = logp[-1]                                                          # (T, V)
    kl = (np.exp(final) * (final - logp)).sum(axis=-1)                        # (L+1, T)
    loss = None
    if targets is not None:
        t = as_ids(targets, "logit_lens", one=True)[0]                        # (T,)
        if t.shape != logp.shape[1:2]:
            raise ValueError(f"logit_lens: targets {t.shape} must match idx ({logp.shape[1]},)")
        loss = token_losses(logp, np.broadcast_to(t, logp.shape[:2]))         # (L+1, T)
    return LogitLens(names, top.astype(np.int64), top_probs, loss, np.maximum(kl, 0.0))
