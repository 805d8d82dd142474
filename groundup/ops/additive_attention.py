"""Additive (Bahdanau) attention for one decoder step, in one graph node with a hand-derived backward.

    q       = query @ weight_q.T                         (B, A)
    hidden  = tanh(projected_keys + q[:, None, :])       (B, S, A)
    scores  = hidden @ weight_v[0], -inf where masked    (B, S)
    weights = softmax(scores)                            (B, S)
    context = sum_j weights_j keys_j                     (B, K)

Written with Tensor ops (``groundup.models.seq2seq.AdditiveAttention.forward``) this is about a dozen
nodes per decoder step; a teacher-forced decoder of U steps spends much of its time building and
walking them. Backward, with g the gradient of the context (and optionally of the weights):

    dL/dw_j       = keys_j . g_ctx (+ g_w_j)             dL/dkeys_j = w_j g_ctx
    dL/dscore_j   = w_j (dL/dw_j - sum_i w_i dL/dw_i)     (softmax; 0 at masked positions, where w = 0)
    dL/dhidden    = dL/dscore[:, :, None] * v            dL/dpre = dL/dhidden * (1 - hidden^2)
    dL/dprojected_keys = dL/dpre    dL/dq = sum_j dL/dpre_j    dL/dv = sum_{b,j} dL/dscore * hidden
    dL/dquery     = dL/dq @ weight_q                     dL/dweight_q = dL/dq.T @ query

Reference: Bahdanau et al. 2015, https://arxiv.org/abs/1409.0473 (section 3.1 and appendix A.1.2).
"""

from __future__ import annotations

from typing import Any

from groundup.backend import array_module
from groundup.function import Function

__all__ = ["AdditiveAttention"]


class AdditiveAttention(Function):
    """Context (B, K), or [context | weights] (B, K + S) with ``with_weights``, of one additive-attention step.

    Inputs: ``query`` (B, Q), ``keys`` (B, S, K) (also the values), ``projected_keys`` (B, S, A)
    (= keys @ U.T + b, computed once per sequence), ``weight_q`` (A, Q), ``weight_v`` (1, A).
    Option ``mask``: (B, S) bool array, True at the positions that may be attended to (each row
    needs one); None attends everywhere.
    """

    def forward(self, query, keys, projected_keys, weight_q, weight_v, mask: Any = None, with_weights: bool = False):
        xp = array_module(query)
        hidden = projected_keys + (query @ weight_q.T)[:, None, :]     # (B, S, A)
        xp.tanh(hidden, out=hidden)
        scores = hidden @ weight_v[0]                                   # (B, S, A) @ (A,) -> (B, S)
        if mask is not None:
            scores = xp.where(mask, scores, -xp.inf)
        scores -= scores.max(axis=-1, keepdims=True)
        weights = xp.exp(scores, out=scores)                            # (B, S); exactly 0 where masked
        weights /= weights.sum(axis=-1, keepdims=True)
        context = (weights[:, None, :] @ keys)[:, 0]                    # (B, 1, S) @ (B, S, K) -> (B, K)
        self.save_for_backward(query, keys, weight_q, weight_v, hidden, weights)
        self.with_weights = with_weights
        return xp.concatenate([context, weights], axis=-1) if with_weights else context

    def backward(self, grad):
        query, keys, weight_q, weight_v, hidden, weights = self.saved
        width = keys.shape[-1]
        g_context = grad[:, :width]                                     # (B, K)
        g_weights = (keys @ g_context[:, :, None])[..., 0]              # (B, S, K) @ (B, K, 1) -> (B, S)
        if self.with_weights:
            g_weights += grad[:, width:]
        g_scores = g_weights - (weights * g_weights).sum(axis=-1, keepdims=True)
        g_scores *= weights                                             # (B, S): softmax's backward
        g_pre = g_scores[:, :, None] * weight_v[0]                      # (B, S, A)
        g_pre *= 1 - hidden * hidden                                    # through tanh
        needs = self.needs_input_grad
        g_q = g_pre.sum(axis=1)                                         # (B, A): q was broadcast over S
        g_query = g_q @ weight_q if needs[0] else None                  # (B, Q)
        g_keys = weights[:, :, None] * g_context[:, None, :] if needs[1] else None   # (B, S, K)
        g_weight_q = g_q.T @ query if needs[3] else None                # (A, Q)
        g_weight_v = None
        if needs[4]:
            a = hidden.shape[-1]
            g_weight_v = (g_scores.reshape(1, -1) @ hidden.reshape(-1, a))   # (1, B*S) @ (B*S, A) -> (1, A)
        return g_query, g_keys, g_pre if needs[2] else None, g_weight_q, g_weight_v
