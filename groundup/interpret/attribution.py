"""Direct logit attribution: how much each head and each MLP writes towards one token's logit.

In a model whose blocks add to the residual stream, the final stream at a position is a sum of
parts: the embeddings, each head's output, each MLP's output (``ActivationCache.decompose_resid``).
The logits are ``unembed(ln_f(stream))``. ln_f is linear except for one number per position, the
scale 1/sigma (sigma = sqrt(var(stream) + eps)); holding that scale **frozen at its value in the
clean run**, ln_f is linear and the logit (or the difference of two logits) splits exactly into one
term per part:

    part_i -> ((part_i - mean(part_i)) / sigma) * ln_f.weight . (W_U[token] - W_U[other])

plus a constant from ln_f's bias and the biases of the attention projections (the part 'bias').
The parts sum to the model's logit difference: that is what ``total`` is, read from the model's
logits, and the test checks the sum against it. This is the *direct* path only: a head whose
output is read by a later layer gets no credit here for what that layer then writes.

References: Elhage et al. 2021, "A Mathematical Framework for Transformer Circuits" (the residual
stream as a sum, direct paths); Wang et al. 2022, "Interpretability in the Wild" (IOI: direct
logit attribution to a logit difference); nostalgebraist 2020 (the logit lens).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from groundup.interpret._access import (
    as_ids,
    as_int,
    check_model,
    eval_mode,
    final_norm,
    has_mlp,
    n_layer,
    numpy_of,
    unembedding,
)
from groundup.nn.module import Module

__all__ = ["Attribution", "direct_logit_attribution"]


@dataclass
class Attribution:
    """Each part's direct contribution to ``logit[token] - logit[other]`` at one position.

    Attributes:
        labels: 'embed', 'L{l}H{h}' for each head, 'L{l}MLP' for each MLP, and 'bias' (the biases of
            ln_f, the attention projections and the unembedding) when the model has any.
        values: (n_parts,) float64, in the order of ``labels``.
        total: the logit difference read from the model's logits; ``values.sum()`` equals it.
        position, token, other: what was attributed (other None: the logit of ``token`` alone).
        scale: sigma, ln_f's normaliser at that position in the clean run (frozen; 1 without a norm).
    """

    labels: list[str]
    values: np.ndarray
    total: float
    position: int
    token: int
    other: int | None
    scale: float

    def top(self, n: int = 5) -> list[tuple[str, float]]:
        """The n parts with the largest contributions in magnitude, largest first."""
        order = np.argsort(-np.abs(self.values), kind="stable")[:n]
        return [(self.labels[i], float(self.values[i])) for i in order]


def direct_logit_attribution(model: Module, idx: Any, position: int, token: int, other: int | None = None
                             ) -> Attribution:
    """Split the logit difference of ``token`` and ``other`` at ``position`` into each part's direct share.

    Args:
        model: a hooked language model whose blocks add to the residual stream (pre-norm).
        idx: (T,) or (1, T) token ids, one sequence.
        position: the position whose next-token logits are attributed (negative counts from the end).
        token: the token id whose logit is attributed.
        other: a second token id: attribute ``logit[token] - logit[other]``; None: ``logit[token]``.
    Returns:
        an ``Attribution``; ln_f's scale is frozen at the clean run's value (module docstring).
    """
    check_model(model, "direct_logit_attribution")
    ids = as_ids(idx, "direct_logit_attribution", one=True)
    T = ids.shape[1]
    position = as_int(position, "position", "direct_logit_attribution")
    token = as_int(token, "token", "direct_logit_attribution")
    other = None if other is None else as_int(other, "other", "direct_logit_attribution")
    if not -T <= position < T:
        raise ValueError(f"direct_logit_attribution: position {position} outside a sequence of {T}")
    head = unembedding(model)
    V = head.weight.shape[0]
    for name, t in (("token", token), ("other", other)):
        if t is not None and not 0 <= int(t) < V:
            raise ValueError(f"direct_logit_attribution: {name} {t} outside the vocabulary of {V}")
    names = ["blocks.0.hook_resid_pre", "blocks.*.hook_resid_post", "blocks.*.attn.hook_result"]
    names += [f"blocks.{i}.hook_mlp_out" for i in range(n_layer(model)) if has_mlp(model, i)]
    with eval_mode(model):
        logits, cache = model.run_with_cache(ids, names=names)
    parts, labels = cache.decompose_resid()
    parts = numpy_of(parts)[:, 0, position].astype(np.float64)               # (n_parts, C)
    stream = numpy_of(cache[f"blocks.{n_layer(model) - 1}.hook_resid_post"])[0, position].astype(np.float64)  # (C,)

    norm = final_norm(model)
    C = stream.shape[0]
    weight = numpy_of(norm.weight).astype(np.float64) if getattr(norm, "weight", None) is not None else np.ones(C)
    bias = numpy_of(norm.bias).astype(np.float64) if getattr(norm, "bias", None) is not None else np.zeros(C)
    if hasattr(norm, "eps"):        # a LayerNorm: centre each part, divide by the clean stream's sigma
        parts = parts - parts.mean(axis=-1, keepdims=True)
        scale = float(np.sqrt(stream.var() + norm.eps))
    else:                           # no norm (Identity): the map is linear already
        scale = 1.0
    w_u = numpy_of(head.weight).astype(np.float64)                           # (V, C)
    direction = w_u[token] - (w_u[other] if other is not None else 0.0)        # (C,)
    b_u = numpy_of(head.bias).astype(np.float64) if getattr(head, "bias", None) is not None else None
    constant = float(bias @ direction) + (float(b_u[token] - (b_u[other] if other is not None else 0.0))
                                          if b_u is not None else 0.0)
    values = (parts / scale * weight) @ direction                             # (n_parts,)

    keep = [i for i, label in enumerate(labels) if not label.endswith("attn_bias")]
    has_bias = len(keep) < len(labels) or getattr(norm, "bias", None) is not None or b_u is not None
    out_labels = [labels[i] for i in keep] + (["bias"] if has_bias else [])
    out_values = list(values[keep]) + ([constant + values[[i for i in range(len(labels)) if i not in keep]].sum()]
                                       if has_bias else [])
    z = numpy_of(logits)[0, position].astype(np.float64)                      # (V,)
    total = float(z[token] - (z[other] if other is not None else 0.0))
    return Attribution(out_labels, np.asarray(out_values, dtype=np.float64), total, int(position), int(token),
                       None if other is None else int(other), scale)
