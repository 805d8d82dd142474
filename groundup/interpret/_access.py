"""Small duck-typed accessors shared by the interpretability tools.

The tools work on any ``HookedModule`` language model with the GPT's hook names (GPT,
AttnOnlyLM, DeepStackLM): a ``blocks`` list whose blocks have ``hook_resid_pre|post`` and an
``attn`` with ``n_head`` and ``hook_z|result|pattern``, a final norm ``ln_f`` and an unembedding
(``lm_head`` or ``unembed``). Nothing here names a model class.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from groundup.backend import array_module, to_numpy
from groundup.nn.hooks import HookedModule
from groundup.nn.module import Module
from groundup.nn.utils import eval_mode as nn_eval_mode
from groundup.ops.methods import where
from groundup.tensor import Tensor, no_grad

IGNORE_INDEX = -100           # a target that counts for nothing, as in cross_entropy

__all__ = ["check_model", "final_norm", "unembedding", "n_layer", "n_head", "has_mlp", "eval_mode",
           "as_ids", "as_int", "apply_head", "token_losses", "log_softmax", "numpy_of", "replace_at"]


def check_model(model: Any, tool: str) -> HookedModule:
    """``model`` itself, after checking it has hook points and blocks (else a TypeError naming the tool)."""
    if not isinstance(model, HookedModule):
        raise TypeError(f"{tool}: needs a model with hook points (a HookedModule such as GPT; convert a "
                        f"FastGPT with model.as_class(GPT)), got {type(model).__name__}")
    if not hasattr(model, "blocks"):
        raise TypeError(f"{tool}: {type(model).__name__} has no 'blocks' list")
    return model


def final_norm(model: Module) -> Module:
    """The norm before the unembedding (``ln_f``; an Identity when the model has none)."""
    norm = getattr(model, "ln_f", None)
    if norm is None:
        raise TypeError(f"{type(model).__name__} has no final norm 'ln_f'")
    return norm


def unembedding(model: Module) -> Module:
    """The Linear from the residual stream to the logits (``lm_head`` or ``unembed``)."""
    for name in ("lm_head", "unembed"):
        head = getattr(model, name, None)
        if head is not None:
            return head
    raise TypeError(f"{type(model).__name__} has no unembedding ('lm_head' or 'unembed')")


def n_layer(model: Module) -> int:
    return len(model.blocks)


def n_head(model: Module, layer: int = 0) -> int:
    return int(model.blocks[layer].attn.n_head)


def has_mlp(model: Module, layer: int) -> bool:
    return hasattr(model.blocks[layer], "mlp")


@contextlib.contextmanager
def eval_mode(model: Module) -> Iterator[Module]:
    """Eval mode (no dropout) and no gradients inside; each submodule's mode found is restored on exit."""
    with nn_eval_mode(model), no_grad():
        yield model


def as_int(value: Any, what: str, tool: str) -> int:
    """``value`` as a Python int (an int, a NumPy integer or a 0-d integer array); else a TypeError
    naming the tool and the argument (a float position or token id would index wrongly or fail in NumPy)."""
    scalar = isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "iu"
    if isinstance(value, bool) or not (isinstance(value, (int, np.integer)) or scalar):
        raise TypeError(f"{tool}: {what} must be an integer, got {value!r}")
    return int(value)


def as_ids(idx: Any, tool: str, one: bool = False) -> np.ndarray:
    """Token ids as a (B, T) int64 NumPy array, B, T >= 1; ``one``: exactly one sequence ((T,) or (1, T))."""
    ids = to_numpy(idx.data if isinstance(idx, Tensor) else np.asarray(idx))
    if ids.ndim == 1:
        ids = ids[None]                                                          # (1, T)
    if ids.ndim != 2 or ids.dtype.kind not in "iu":
        raise ValueError(f"{tool}: token ids must be integers of shape (B, T) or (T,), got {ids.dtype} {ids.shape}")
    if one and ids.shape[0] != 1:
        raise ValueError(f"{tool}: give one sequence, (T,) or (1, T); got a batch of {ids.shape[0]}")
    if ids.size == 0:
        raise ValueError(f"{tool}: the token ids are empty, shape {ids.shape}; give at least one token")
    return ids.astype(np.int64)


def numpy_of(x: Any) -> np.ndarray:
    return to_numpy(x.data if isinstance(x, Tensor) else x)


def apply_head(model: Module, resid: Tensor) -> Tensor:
    """Logits from a residual stream: the model's final norm, then its unembedding. (*, C) -> (*, V)."""
    return unembedding(model)(final_norm(model)(resid))


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Log-probabilities in float64 over the last axis."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def token_losses(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Cross-entropy per position, float64, NaN where the target is -100 (ignored). (..., V), (...) -> (...)."""
    targets = np.asarray(targets)
    V = logits.shape[-1]
    if targets.dtype.kind not in "iu":
        raise TypeError(f"targets must hold integer token ids (-100 = ignored), got dtype {targets.dtype}")
    ignored = targets == IGNORE_INDEX
    bad = ~ignored & ((targets < 0) | (targets >= V))
    if bad.any():
        raise IndexError(f"target {int(targets[bad][0])} is outside the vocabulary 0..{V - 1} "
                         f"(and is not {IGNORE_INDEX}, which means ignored)")
    logp = log_softmax(logits)
    safe = np.where(ignored, 0, targets)
    loss = -np.take_along_axis(logp, safe[..., None], axis=-1)[..., 0]
    return np.where(ignored, np.nan, loss)


def replace_at(act: Tensor, index: tuple[Any, ...], value: Any) -> Tensor:
    """``act`` with ``act[index] = value`` (for hooks that patch or ablate a slice).

    Differentiable: outside ``index`` the gradient flows to ``act`` as through the identity, so a
    backward pass under ablation hooks reaches every part that was not ablated.
    """
    xp = array_module(act.data)
    chosen = xp.zeros(act.shape, dtype=bool)
    chosen[index] = True
    filled = xp.zeros(act.shape, dtype=act.dtype)
    filled[index] = xp.asarray(value, dtype=act.dtype) if not np.isscalar(value) else value
    return where(chosen, Tensor(filled), act)
