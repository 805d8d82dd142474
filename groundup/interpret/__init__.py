"""Look inside a trained model: the logit lens, direct logit attribution, ablation, patching, causal tracing.

Every tool works through hook points (``groundup.nn.hooks``) on any language model with the GPT's
hook names (``GPT``, ``AttnOnlyLM``, ``DeepStackLM``; a ``FastGPT`` converts with
``model.as_class(GPT)``), runs it in eval mode without gradients, and removes its hooks when it
returns, also when it raises.

    from groundup.interpret import logit_lens, direct_logit_attribution, ablate, head_scores
    lens = logit_lens(model, ids, targets)              # lens.top_ids (L+1, T, k), lens.loss (L+1, T)
    dla = direct_logit_attribution(model, ids, position=-1, token=a, other=b)
    dla.top(3)                                          # [("L1H2", 3.1), ...]; values.sum() ~= total
    ablate(model, ids, targets, "L0H1").delta           # rise in loss with head 1 of layer 0 zeroed
    head_scores(model, ids)["induction"]                # (L, H)

References: nostalgebraist 2020 (logit lens); Elhage et al. 2021 (residual stream, circuits);
Olsson et al. 2022 (induction heads); Meng et al. 2022 (causal tracing); Wang et al. 2022 and
Heimersheim & Nanda 2024 (activation patching).
"""

from groundup.interpret._access import token_losses
from groundup.interpret.ablation import Ablation, ablate, ablation_hooks, ablation_table, all_parts, parse_part
from groundup.interpret.attribution import Attribution, direct_logit_attribution
from groundup.interpret.heads import (
    attention_patterns,
    duplicate_token_mask,
    first_token_mask,
    head_scores,
    induction_mask,
    previous_token_mask,
    score_heads,
)
from groundup.interpret.logit_lens import LogitLens, lens_log_probs, lens_losses, logit_lens
from groundup.interpret.patching import (
    CausalTrace,
    Patching,
    activation_patching,
    answer_prob_metric,
    causal_trace,
    logit_diff_metric,
    normalise,
    patch_heads,
    patch_residual,
    run_patched,
)

__all__ = [
    "LogitLens", "logit_lens", "lens_log_probs", "lens_losses",
    "Attribution", "direct_logit_attribution",
    "Ablation", "ablate", "ablation_table", "ablation_hooks", "all_parts", "parse_part",
    "Patching", "CausalTrace", "activation_patching", "patch_residual", "patch_heads", "run_patched",
    "logit_diff_metric", "answer_prob_metric", "normalise", "causal_trace",
    "head_scores", "attention_patterns", "score_heads", "previous_token_mask", "duplicate_token_mask",
    "induction_mask", "first_token_mask", "token_losses",
]
