"""``nn.utils``: gradient clipping, and eval mode for a block of code."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from groundup.backend import array_module
from groundup.nn.module import Module
from groundup.tensor import Tensor

__all__ = ["clip_grad_norm_", "clip_grad_value_", "eval_mode"]


def clip_grad_norm_(parameters: Iterable[Tensor] | Tensor, max_norm: float, norm_type: float = 2.0,
                    error_if_nonfinite: bool = False) -> float:
    """Scale all gradients together so that their joint norm is at most ``max_norm`` (in place).

    Returns:
        the total norm before clipping (as torch does).
    """
    params = [parameters] if isinstance(parameters, Tensor) else list(parameters)
    grads = [p.grad.data for p in params if p.grad is not None]
    if not grads:
        return 0.0
    xp = array_module(grads[0])
    if norm_type == math.inf:
        total = max(float(xp.abs(g).max()) for g in grads)
    elif norm_type == 2.0:  # a dot product per gradient: no temporaries
        total = math.sqrt(sum(float(xp.vdot(g.ravel(), g.ravel())) for g in grads))
    else:
        total = float(sum(float((xp.abs(g) ** norm_type).sum()) for g in grads) ** (1.0 / norm_type))
    if error_if_nonfinite and not math.isfinite(total):
        raise RuntimeError(f"clip_grad_norm_: the total gradient norm is {total}")
    coef = max_norm / (total + 1e-6)
    if coef < 1.0:
        for g in grads:
            g *= coef
    return total


def clip_grad_value_(parameters: Iterable[Tensor] | Tensor, clip_value: float) -> None:
    """Clamp every gradient element to [-clip_value, clip_value] (in place)."""
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
