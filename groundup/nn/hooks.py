"""Hook points: named places in a model where a learner can read or replace an activation.

A ``HookPoint`` is an identity module placed on an activation (``x = self.hook_resid_mid(x)``).
Its name is its module path, as in TransformerLens: ``blocks.0.attn.hook_pattern``. Hooks are
never persistent: they live only inside a ``with model.hooks({...}):`` block, which removes them
on exit, also when the block raises.

    with model.hooks({"blocks.*.attn.hook_pattern": lambda act, hook: print(hook.name, act.shape)}):
        model(idx)
    logits, cache = model.run_with_cache(idx)              # every activation, by name
    cache["blocks.1.attn.hook_pattern"]                    # (B, H, T, T)

A hook is ``fn(activation, hook) -> Tensor | None``: returning ``None`` leaves the activation as it
is; returning a Tensor replaces it (same shape), and gradients flow through the replacement.

References: Nanda & Bloom, TransformerLens (hook points named by module path).
"""

from __future__ import annotations

import contextlib
import difflib
import fnmatch
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from groundup.backend import array_module
from groundup.nn.module import Module
from groundup.tensor import Tensor, no_grad

__all__ = ["HookPoint", "HookedModule", "ActivationCache", "HookFn"]

HookFn = Callable[[Tensor, "HookPoint"], "Tensor | None"]


class HookPoint(Module):
    """Identity on its input, plus the hooks registered on it (in registration order)."""

    def __init__(self) -> None:
        super().__init__()
        self.name = ""                 # set by HookedModule.hook_points() to the module path
        self._fns: list[HookFn] = []

    @property
    def active(self) -> bool:
        """Whether any hook is registered here now (a model may compute more only when one is)."""
        return bool(self._fns)

    def forward(self, x: Tensor) -> Tensor:
        for fn in self._fns:
            out = fn(x, self)
            if out is not None:
                if not isinstance(out, Tensor):
                    raise TypeError(f"hook on {self.name!r} returned {type(out).__name__}; return a Tensor or None")
                if tuple(out.shape) != tuple(x.shape):
                    raise ValueError(f"hook on {self.name!r} returned shape {tuple(out.shape)}, "
                                     f"expected {tuple(x.shape)}")
                x = out
        return x

    def extra_repr(self) -> str:
        return self.name


class ActivationCache(Mapping[str, Tensor]):
    """The activations ``run_with_cache`` recorded: name -> Tensor (detached), in forward order."""

    def __init__(self, activations: dict[str, Tensor], model: Module):
        self._acts = activations
        self.model = model

    def __getitem__(self, name: str) -> Tensor:
        if name not in self._acts:
            raise KeyError(f"no activation {name!r} in the cache; recorded: {list(self._acts)[:8]}"
                           f"{' …' if len(self._acts) > 8 else ''}")
        return self._acts[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._acts)

    def __len__(self) -> int:
        return len(self._acts)

    def __repr__(self) -> str:
        return f"ActivationCache({len(self)} activations: {', '.join(list(self)[:4])}{', …' if len(self) > 4 else ''})"

    def _n_layer(self) -> int:
        """The model's number of blocks (counted in the cache for a model without a ``blocks`` list)."""
        blocks = getattr(self.model, "blocks", None)
        n = 0
        while (n < len(blocks)) if blocks is not None else f"blocks.{n}.hook_resid_post" in self._acts:
            n += 1
        missing = [name for name in ["blocks.0.hook_resid_pre"] + [f"blocks.{i}.hook_resid_post" for i in range(n)]
                   if name not in self._acts]
        if n == 0 or missing:           # a stream recorded up to some block only is not the final one
            raise KeyError(f"the cache lacks the residual stream {missing[:3]}{' …' if len(missing) > 3 else ''}; "
                           "record it with run_with_cache(idx) (all names) or names='blocks.*.hook_resid_*'")
        return n

    def accumulated_resid(self) -> tuple[Tensor, list[str]]:
        """The residual stream before the first block and after each block, stacked.

        Returns:
            ``(stack, labels)``: stack (L + 1, B, T, C); labels ``['embed', 'blocks.0', …]``, where
            'embed' is ``blocks.0.hook_resid_pre`` (token + position embeddings) and 'blocks.i' is
            ``blocks.i.hook_resid_post``. The last entry is what the final norm and unembedding read.
        """
        n = self._n_layer()
        acts = [self._acts["blocks.0.hook_resid_pre"]] + [self._acts[f"blocks.{i}.hook_resid_post"] for i in range(n)]
        xp = array_module(acts[0].data)
        return Tensor(xp.stack([a.data for a in acts])), ["embed"] + [f"blocks.{i}" for i in range(n)]  # (L+1, B, T, C)

    def decompose_resid(self) -> tuple[Tensor, list[str]]:
        """The final residual stream split into what wrote it: the embeddings, each head, each MLP.

        In a model whose blocks add to the residual stream (pre-norm, residual connections), the
        stream after the last block is exactly the sum of these parts (Elhage et al. 2021):
        'embed' (``blocks.0.hook_resid_pre``), 'L{l}H{h}' (``blocks.l.attn.hook_result[:, :, h]``),
        'L{l}attn_bias' (the output projection's bias, only when it has one) and 'L{l}MLP'
        (``blocks.l.hook_mlp_out``, its bias included). Needs ``hook_result`` and, for a model with
        MLPs, ``hook_mlp_out`` in the cache (a KeyError names what is missing).

        Returns:
            ``(stack, labels)``: stack (n_parts, B, T, C), labels as above, in layer order.
        """
        n = self._n_layer()
        blocks = getattr(self.model, "blocks", None)
        parts, labels = [self._acts["blocks.0.hook_resid_pre"].data], ["embed"]
        for layer in range(n):
            block = blocks[layer] if blocks is not None else None
            if block is not None and (not getattr(block, "pre_norm", True) or not getattr(block, "residual", True)):
                raise ValueError(f"decompose_resid: block {layer} does not add to the residual stream "
                                 "(post-norm or no residual connection), so the stream is not a sum of parts")
            result = self[f"blocks.{layer}.attn.hook_result"].data                       # (B, T, H, C)
            for head in range(result.shape[2]):
                parts.append(result[:, :, head])                                          # (B, T, C)
                labels.append(f"L{layer}H{head}")
            bias = getattr(getattr(getattr(block, "attn", None), "proj", None), "bias", None)
            if bias is not None:
                parts.append(array_module(result).broadcast_to(bias.data, result[:, :, 0].shape))  # (B, T, C)
                labels.append(f"L{layer}attn_bias")
            has_mlp = hasattr(block, "mlp") if block is not None else f"blocks.{layer}.hook_mlp_out" in self._acts
            if has_mlp:                 # a model's MLP must be in the cache, else the parts miss it
                parts.append(self[f"blocks.{layer}.hook_mlp_out"].data)                  # (B, T, C)
                labels.append(f"L{layer}MLP")
        xp = array_module(parts[0])
        return Tensor(xp.stack([xp.asarray(p, dtype=parts[0].dtype) for p in parts])), labels  # (n_parts, B, T, C)


class HookedModule(Module):
    """A Module whose ``HookPoint`` children can be hooked by name (GPT, AttnOnlyLM, DeepStackLM, …)."""

    def hook_points(self) -> dict[str, HookPoint]:
        """Every hook point by module path, in definition order."""
        points = {}
        for name, module in self.named_modules():
            if isinstance(module, HookPoint):
                module.name = name
                points[name] = module
        return points

    def _match(self, pattern: str, points: Mapping[str, HookPoint]) -> list[str]:
        names = [n for n in points if n == pattern or fnmatch.fnmatchcase(n, pattern)]
        if not names:
            close = difflib.get_close_matches(pattern, list(points), n=3, cutoff=0.75)
            kinds = list(dict.fromkeys(re.sub(r"\.\d+\.", ".{i}.", n) for n in points))  # one per layer pattern
            layers = sorted({int(m) for n in points for m in re.findall(r"\.(\d+)\.", n)})
            raise KeyError(f"{type(self).__name__}: no hook point matches {pattern!r}"
                           f"{f' (did you mean {close}?)' if close else ''}; its hook points are {kinds}"
                           f"{f' with i in 0..{layers[-1]}' if layers else ''}")
        return names

    @contextlib.contextmanager
    def hooks(self, fns: Mapping[str, HookFn]) -> Iterator[HookedModule]:
        """Register ``{name_or_glob: fn}`` for the duration of the block; always removed on exit."""
        points = self.hook_points()
        added: list[tuple[HookPoint, HookFn]] = []
        try:
            for pattern, fn in fns.items():
                if not callable(fn):
                    raise TypeError(f"hook for {pattern!r} must be callable, got {type(fn).__name__}")
                for name in self._match(pattern, points):
                    points[name]._fns.append(fn)
                    added.append((points[name], fn))
            yield self
        finally:
            for point, fn in added:
                point._fns.remove(fn)

    def run_with_cache(self, *args: Any, names: str | list[str] | Callable[[str], bool] | None = None,
                       **kwargs: Any) -> tuple[Tensor, ActivationCache]:
        """Run ``self(*args, **kwargs)`` without gradients, recording activations.

        ``names``: None records all; a name or glob, or a list of them (an empty list records none);
        or a function of a hook point's name that says whether to record it (TransformerLens's
        ``names_filter``), e.g. ``lambda n: n.endswith("hook_pattern")``.
        """
        points = self.hook_points()
        if callable(names):
            wanted = [n for n in points if names(n)]
        else:
            patterns = ["*"] if names is None else [names] if isinstance(names, str) else list(names)
            wanted = list(dict.fromkeys(n for p in patterns for n in self._match(p, points)))
        acts: dict[str, Tensor] = {}

        def record(act: Tensor, hook: HookPoint) -> None:
            acts[hook.name] = act.detach()

        with no_grad(), self.hooks({name: record for name in wanted}):
            out = self(*args, **kwargs)
        return out, ActivationCache(acts, self)
