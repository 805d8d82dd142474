"""Ablation: knock a part of the model out and measure how much the loss rises.

A part is named as in the decomposition of the residual stream:

    'L{l}H{h}'   head h of layer l: its output z (``blocks.l.attn.hook_z[:, h]``, (B, T, D)) replaced
    'L{l}attn'   the whole attention output of layer l (``blocks.l.hook_attn_out``)
    'L{l}MLP'    the MLP output of layer l (``blocks.l.hook_mlp_out``)
    'P{t}'       the input at position t: the embeddings there (``blocks.0.hook_resid_pre[:, t]``)

Zero ablation replaces the activation by 0; mean ablation by its mean over a reference batch
(``mean_over``, default the batch itself), position by position: it removes what the part says
about *this* input while keeping what it says about every input (a zeroed part can push the next
layer far off its usual range). Zeroing a head's z is the same as zeroing its value weights or its
columns of the output projection; the tests check that against the weights themselves.

    result = ablate(model, idx, targets, "L0H1")               # Ablation: loss, clean_loss, delta
    table = ablation_table(model, idx, targets, kind="mean")   # {'L0H0': +0.02, ..., 'L1MLP': +0.9}
    with model.hooks(ablation_hooks(model, "L0H1")):           # any other measurement, ablated
        ...

References: Olsson et al. 2022 (ablating induction heads); Wang et al. 2022, "Interpretability in
the Wild" (mean ablation); Meng et al. 2022 (knocking out states); Nanda's TransformerLens docs.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from groundup.interpret._access import (
    as_ids,
    check_model,
    eval_mode,
    has_mlp,
    n_head,
    n_layer,
    numpy_of,
    replace_at,
    token_losses,
)
from groundup.nn.hooks import HookFn
from groundup.nn.module import Module

__all__ = ["Ablation", "ablate", "ablation_table", "ablation_hooks", "parse_part", "all_parts"]

_PART = re.compile(r"^(?:L(\d+)H(\d+)|L(\d+)(attn|MLP)|P(\d+))$")


@dataclass
class Ablation:
    """The loss of a model with some parts ablated, next to its clean loss.

    Attributes:
        parts: the parts ablated together.
        kind: 'zero' or 'mean'.
        loss, clean_loss: mean next-token cross-entropy with and without the ablation (nats).
        logits: (B, T, V) the ablated model's logits.
    """

    parts: list[str]
    kind: str
    loss: float
    clean_loss: float
    logits: np.ndarray

    @property
    def delta(self) -> float:
        """How much the ablation raised the loss (nats; negative: it helped)."""
        return self.loss - self.clean_loss


_POSITION_HOOK = "blocks.0.hook_resid_pre"        # where a position part ('P3') is ablated


def parse_part(model: Module, part: str) -> tuple[str, tuple[Any, ...]]:
    """(hook name, index into that activation) of a part name ('L0H1', 'L1MLP', 'L0attn', 'P3')."""
    match = _PART.match(part) if isinstance(part, str) else None
    if match is None:
        raise ValueError(f"unknown part {part!r}: use 'L{{l}}H{{h}}', 'L{{l}}attn', 'L{{l}}MLP' or 'P{{t}}'")
    head_layer, head, layer, what, position = match.groups()
    if position is not None:
        return _POSITION_HOOK, (slice(None), int(position))                     # (B, C) at position t
    layer_i = int(head_layer if head_layer is not None else layer)
    if not 0 <= layer_i < n_layer(model):
        raise ValueError(f"part {part!r}: the model has {n_layer(model)} layers")
    if head is not None:
        if not 0 <= int(head) < n_head(model, layer_i):
            raise ValueError(f"part {part!r}: layer {layer_i} has {n_head(model, layer_i)} heads")
        return f"blocks.{layer_i}.attn.hook_z", (slice(None), int(head))       # z (B, H, T, D) -> (B, T, D)
    if what == "MLP" and not has_mlp(model, layer_i):
        raise ValueError(f"part {part!r}: {type(model).__name__} has no MLP in layer {layer_i}")
    return f"blocks.{layer_i}.hook_{'mlp' if what == 'MLP' else 'attn'}_out", (Ellipsis,)


def all_parts(model: Module) -> list[str]:
    """Every head and every MLP of the model, in layer order: 'L0H0', …, 'L0MLP', 'L1H0', …."""
    parts = []
    for layer in range(n_layer(model)):
        parts += [f"L{layer}H{h}" for h in range(n_head(model, layer))]
        parts += [f"L{layer}MLP"] if has_mlp(model, layer) else []
    return parts


def ablation_hooks(model: Module, part: str | Sequence[str], kind: str = "zero", mean_over: Any = None
                   ) -> dict[str, HookFn]:
    """The hooks that ablate ``part`` (a name or several), for ``model.hooks(...)``.

    Args:
        kind: 'zero' or 'mean'.
        mean_over: (B', T) token ids whose mean activation replaces the part (kind 'mean'); they must
            be as long as the inputs the hooks will see.
    """
    check_model(model, "ablate")
    if kind not in ("zero", "mean"):
        raise ValueError(f"ablate: kind must be 'zero' or 'mean', got {kind!r}")
    parts = [part] if isinstance(part, str) else list(part)
    if not parts:
        raise ValueError("ablate: name at least one part")
    targets: dict[str, list[tuple[Any, ...]]] = {}
    for p in parts:
        name, index = parse_part(model, p)
        targets.setdefault(name, []).append(index)
    means: dict[str, np.ndarray] = {}
    if kind == "mean":
        if mean_over is None:
            raise ValueError("ablate: mean ablation needs mean_over, the token ids to average over")
        with eval_mode(model):
            _, cache = model.run_with_cache(as_ids(mean_over, "ablate"), names=list(targets))
        means = {name: numpy_of(cache[name]).mean(axis=0, keepdims=True) for name in targets}  # (1, ...)

    def make(name: str) -> HookFn:
        def hook(act: Any, point: Any) -> Any:
            for index in targets[name]:
                if name == _POSITION_HOOK and not -act.shape[1] <= index[1] < act.shape[1]:
                    raise ValueError(f"ablate: part 'P{index[1]}': the input has {act.shape[1]} positions "
                                     f"(P0..P{act.shape[1] - 1})")
                if kind == "zero":
                    act = replace_at(act, index, 0.0)
                else:
                    mean = means[name]
                    if mean.shape[1:] != tuple(act.shape[1:]):
                        raise ValueError(f"ablate: mean_over gives {name} of shape {mean.shape[1:]}, the input "
                                         f"{tuple(act.shape[1:])}: use mean_over ids as long as idx")
                    act = replace_at(act, index, np.broadcast_to(mean, act.shape)[index])
            return act
        return hook

    return {name: make(name) for name in targets}


def _mean_loss(logits: np.ndarray, targets: np.ndarray) -> float:
    return float(np.nanmean(token_losses(logits, targets)))


def ablate(model: Module, idx: Any, targets: Any, part: str | Sequence[str], kind: str = "zero",
           mean_over: Any = None) -> Ablation:
    """The model's loss on (idx, targets) with ``part`` ablated, and without.

    Args:
        model: a hooked language model.
        idx, targets: (B, T) token ids and next-token ids (-100: ignored).
        part: 'L{l}H{h}', 'L{l}attn', 'L{l}MLP', 'P{t}', or a list of them (ablated together).
        kind: 'zero' or 'mean' (the mean over ``mean_over``, default idx itself, per position).
        mean_over: (B', T) token ids for the mean.
    Returns:
        an ``Ablation`` (``.delta``: the rise in loss). The hooks are removed afterwards, also on error.
    """
    ids, tgt = as_ids(idx, "ablate"), as_ids(targets, "ablate")
    if tgt.shape != ids.shape:
        raise ValueError(f"ablate: targets {tgt.shape} must match idx {ids.shape}")
    hooks = ablation_hooks(model, part, kind, ids if mean_over is None else mean_over)
    with eval_mode(model):
        clean = numpy_of(model(ids))                                          # (B, T, V)
        with model.hooks(hooks):
            ablated = numpy_of(model(ids))                                    # (B, T, V)
    return Ablation([part] if isinstance(part, str) else list(part), kind, _mean_loss(ablated, tgt),
                    _mean_loss(clean, tgt), ablated)


def ablation_table(model: Module, idx: Any, targets: Any, parts: Sequence[str] | None = None, kind: str = "zero",
                   mean_over: Any = None) -> dict[str, float]:
    """Loss change per part, each ablated alone: ``{part: loss - clean_loss}`` (default: every head and MLP)."""
    return {p: ablate(model, idx, targets, p, kind, mean_over).delta for p in (parts or all_parts(model))}
