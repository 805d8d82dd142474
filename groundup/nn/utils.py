"""``nn.utils``: gradient clipping, and eval mode for a block of code."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import numpy as np

from groundup.backend import array_module
from groundup.nn.module import Module
from groundup.tensor import Tensor

__all__ = ["clip_grad_norm_", "clip_grad_value_", "eval_mode"]


def _vector_norm(xp, x, norm_type: float) -> float:
    """torch's ``vector_norm`` of the flat array ``x``: max / min of ``|x|`` for +-inf, the count of
    non-zeros for 0, else ``sum(|x| ** p) ** (1 / p)`` (negative ``p`` too)."""
    if x.size == 0:
        return 0.0
    if norm_type == math.inf:
        return float(xp.abs(x).max())
    if norm_type == -math.inf:
        return float(xp.abs(x).min())
    if norm_type == 0:
        return float(xp.count_nonzero(x))
    with np.errstate(divide="ignore"):                  # |0| ** -p is inf, as in torch
        return float(xp.sum(xp.abs(x) ** norm_type) ** (1.0 / norm_type))


def clip_grad_norm_(parameters: Iterable[Tensor] | Tensor, max_norm: float, norm_type: float = 2.0,
                    error_if_nonfinite: bool = False, foreach: bool | None = None) -> float:
    """Scale all gradients together so that their joint norm is at most ``max_norm`` (in place).

    As torch: the total norm is the ``norm_type`` norm of the vector of each gradient's own
    ``norm_type`` norm (any float, ``inf`` and ``-inf`` included, or a string such as ``"inf"``);
    every gradient is multiplied by ``min(1, max_norm / (total + 1e-6))``, so a NaN total makes
    every gradient NaN. ``foreach`` is accepted for torch's signature and changes nothing.

    Returns:
        the total norm before clipping, as a Python float (torch returns a 0-d tensor).
    """
    max_norm, norm_type = float(max_norm), float(norm_type)
    params = [parameters] if isinstance(parameters, Tensor) else list(parameters)
    grads = [p.grad.data for p in params if p.grad is not None]
    if not grads:
        return 0.0
    xp = array_module(grads[0])
    if norm_type == 2.0:  # a dot product per gradient: no temporaries
        total = math.sqrt(sum(float(xp.vdot(g.ravel(), g.ravel())) for g in grads))
    else:
        per_grad = np.array([_vector_norm(xp, g.ravel(), norm_type) for g in grads])
        total = _vector_norm(np, per_grad, norm_type)
    if error_if_nonfinite and not math.isfinite(total):
        raise RuntimeError(f"clip_grad_norm_: the total norm of order {norm_type} of the gradients is {total}, "
                           f"so it cannot be clipped; error_if_nonfinite=False clips anyway")
    coef = max_norm / (total + 1e-6)
    if coef < 1.0 or math.isnan(coef):
        for g in grads:
            g *= coef
    return total


def clip_grad_value_(parameters: Iterable[Tensor] | Tensor, clip_value: float, foreach: bool | None = None) -> None:
    """Clamp every gradient element to [-clip_value, clip_value] (in place); ``foreach`` is accepted for
    torch's signature and changes nothing."""
    clip_value = float(clip_value)
    params = [parameters] if isinstance(parameters, Tensor) else list(parameters)
    for p in params:
        if p.grad is not None:
            array_module(p.grad.data).clip(p.grad.data, -clip_value, clip_value, out=p.grad.data)


@contextmanager
def eval_mode(module: Module) -> Iterator[Module]:
    """``module.eval()`` inside the block; on exit, even when the block raises, every submodule gets back
    the mode it had. A model training with one part put in eval mode (frozen dropout, say) comes back so;
    ``was_training = m.training ... m.train(was_training)`` would set that part training again.

        with eval_mode(model), no_grad():
            logits = model(idx)
    """
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, training in modes:
            object.__setattr__(m, "training", training)                        # as Module.train sets it
