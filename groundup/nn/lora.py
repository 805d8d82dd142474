"""LoRA: low-rank adaptation of a frozen Linear layer.

    y = x W^T + b + (alpha / r) * x A^T B^T          W (out, in) frozen; A (r, in), B (out, r) trained

Fine-tuning changes a pretrained weight by some delta W; Hu et al. observe that the delta needed
has low "intrinsic rank", so they learn it as a product B A of rank r << min(in, out) and leave W
frozen. Only A and B train: r (in + out) numbers per layer instead of in * out. B starts at zero,
so before the first step the layer computes exactly the pretrained one. After training,
``merge()`` folds the update into the weight (W += (alpha / r) B A), so inference costs nothing
extra; ``unmerge()`` takes it out again.

``LoRALinear`` is a ``Linear`` (same ``weight`` and ``bias`` names, so a model's state_dict keys
do not change; ``lora_A`` and ``lora_B`` are added beside them). ``LoRALinear.from_linear(layer)``
wraps an existing layer, sharing its Parameters; ``apply_lora(model, ("query", "value"), r=4)``
swaps every Linear of those names in a model and ``mark_only_lora_as_trainable`` freezes the rest.

    layer = LoRALinear.from_linear(model.blocks[0].attn.query, r=4, alpha=8)
    replaced = apply_lora(model, targets=("query", "value"), r=4)   # ['blocks.0.attn.query', ...]
    mark_only_lora_as_trainable(model, also=("classifier.",))

Reference: Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models",
https://arxiv.org/abs/2106.09685 (Section 4.1: the update, the scaling alpha / r, B = 0 at the start;
the paper draws A Gaussian, its loralib code Kaiming-uniform, as here).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from groundup import creation
from groundup import functional as F
from groundup.nn import init
from groundup.nn.layers import Linear
from groundup.nn.module import Module, Parameter
from groundup.tensor import Tensor, no_grad

__all__ = ["LoRALinear", "apply_lora", "mark_only_lora_as_trainable"]


class LoRALinear(Linear):
    """A Linear layer plus a trainable low-rank update.   x: (*, in_features) -> (*, out_features)

    Args:
        in_features, out_features, bias, dtype: as ``Linear``.
        r: the rank of the update (>= 1).
        alpha: the update is scaled by ``alpha / r`` (default alpha = r: scale 1).

    ``weight`` and ``bias`` are frozen (requires_grad False); ``lora_A`` (r, in_features) starts
    as Kaiming-uniform noise and ``lora_B`` (out_features, r) as zeros.
    """

    def __init__(self, in_features: int, out_features: int, r: int = 4, alpha: float | None = None,
                 bias: bool = True, dtype: Any = None):
        super().__init__(in_features, out_features, bias=bias, dtype=dtype)
        if not isinstance(r, int) or isinstance(r, bool) or r < 1:
            raise ValueError(f"LoRALinear: r must be a positive integer, got {r!r}")
        self.r = r
        self.alpha = float(r if alpha is None else alpha)
        self.scaling = self.alpha / r
        self.merged = False
        self.lora_A = Parameter(creation.empty(r, in_features, dtype=self.weight.dtype))
        self.lora_B = Parameter(creation.zeros(out_features, r, dtype=self.weight.dtype))
        init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))          # what torch's Linear uses for its weight
        self.weight.requires_grad = False
        if self.bias is not None:
            self.bias.requires_grad = False

    @classmethod
    def from_linear(cls, layer: Linear, r: int = 4, alpha: float | None = None) -> LoRALinear:
        """A LoRALinear over ``layer``'s own weight and bias Parameters (shared, frozen)."""
        if not isinstance(layer, Linear) or isinstance(layer, LoRALinear):
            raise TypeError(f"LoRALinear.from_linear needs a plain Linear, got {type(layer).__name__}")
        out = cls(layer.in_features, layer.out_features, r=r, alpha=alpha, bias=layer.bias is not None,
                  dtype=layer.weight.dtype)
        out.weight = layer.weight
        out.bias = layer.bias
        out.weight.requires_grad = False
        if out.bias is not None:
            out.bias.requires_grad = False
        return out.to(layer.weight.device)

    def delta_weight(self) -> Tensor:
        """The update (alpha / r) B A, shape (out_features, in_features)."""
        return (self.lora_B @ self.lora_A) * self.scaling                        # (out, r) @ (r, in) -> (out, in)

    def forward(self, x: Tensor) -> Tensor:
        y = F.linear(x, self.weight, self.bias)                                  # (*, out)
        if self.merged:
            return y                                                             # the update is inside weight
        return y + (x @ self.lora_A.T @ self.lora_B.T) * self.scaling            # (*, in) -> (*, r) -> (*, out)

    def merge(self) -> None:
        """Fold the update into ``weight`` (W += (alpha / r) B A); forward then costs one matmul."""
        if not self.merged:
            with no_grad():
                self.weight.data = self.weight.data + self.delta_weight().data
            self.merged = True

    def unmerge(self) -> None:
        """Take the update out of ``weight`` again (W -= (alpha / r) B A), up to float rounding."""
        if self.merged:
            with no_grad():
                self.weight.data = self.weight.data - self.delta_weight().data
            self.merged = False

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, r={self.r}, alpha={self.alpha:g}, merged={self.merged}"


def apply_lora(model: Module, targets: Iterable[str] = ("query", "value"), r: int = 4,
               alpha: float | None = None) -> list[str]:
    """Replace, in place, every ``Linear`` child whose attribute name is in ``targets`` by a LoRALinear.

    Returns:
        the module paths replaced (``["blocks.0.attn.query", "blocks.0.attn.value", ...]``).
    """
    wanted = set(targets)
    replaced = []
    for path, module in list(model.named_modules()):
        for name, child in list(module.named_children()):
            if name in wanted and isinstance(child, Linear) and not isinstance(child, LoRALinear):
                setattr(module, name, LoRALinear.from_linear(child, r=r, alpha=alpha))
                replaced.append(f"{path}.{name}" if path else name)
    if not replaced:
        raise ValueError(f"apply_lora: no Linear layer named one of {sorted(wanted)} in {type(model).__name__}")
    return replaced


def mark_only_lora_as_trainable(model: Module, also: Iterable[str] = ()) -> int:
    """Freeze every parameter except the LoRA factors and those whose name starts with a prefix in ``also``.

    Returns:
        the number of trainable scalars left.
    """
    prefixes = tuple(also)
    trainable = 0
    for name, p in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        p.requires_grad = leaf in ("lora_A", "lora_B") or (bool(prefixes) and name.startswith(prefixes))
        trainable += p.numel() if p.requires_grad else 0
    return trainable
