"""Stochastic gradient descent with momentum, dampening, Nesterov momentum and weight decay.

Exactly ``torch.optim.SGD`` (its single-tensor path), per parameter ``p`` with gradient ``g``:

    g = g + weight_decay * p                               (if weight_decay != 0)
    buf = g  (first step)  |  buf = momentum * buf + (1 - dampening) * g
    g = g + momentum * buf  (nesterov)  |  g = buf          (if momentum != 0)
    p = p - lr * g

Reference: Sutskever et al. 2013, "On the importance of initialization and momentum in deep
learning" (the momentum form PyTorch uses, where lr multiplies the whole buffer).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from groundup.backend import array_module
from groundup.optim.optimizer import Optimizer, ParamsT
from groundup.tensor import no_grad

__all__ = ["SGD"]


class SGD(Optimizer):
    """SGD with optional momentum (torch semantics and state: ``state[p]['momentum_buffer']``).

    Args:
        params: Tensors or parameter-group dicts.
        lr: learning rate (default 1e-3, as torch).
        momentum: momentum factor (0 = plain SGD).
        dampening: dampening of the momentum's gradient term.
        weight_decay: L2 penalty added to the gradient.
        nesterov: Nesterov momentum (needs momentum > 0 and dampening == 0).
    """

    def __init__(self, params: ParamsT, lr: float = 1e-3, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False):
        if not 0.0 <= lr:  # NaN too
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 <= momentum:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov)
        super().__init__(params, defaults)

    @no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One SGD update of every parameter that has a gradient; ``closure`` and the result as ``Optimizer.step``."""
        loss, _ = self._begin_step(closure)
        with np.errstate(under="ignore"):  # tiny gradients underflowing to 0 are not an error
            for group in self.param_groups:
                lr, momentum, dampening = group["lr"], group["momentum"], group["dampening"]
                weight_decay, nesterov = group["weight_decay"], group["nesterov"]
                for p in group["params"]:
                    if p.grad is None:
                        continue
                    self._update(p, p.grad.data, lr, momentum, dampening, weight_decay, nesterov)
        return loss

    def _update(self, p: Any, grad: Any, lr: float, momentum: float, dampening: float, weight_decay: float,
                nesterov: bool) -> None:
        xp = array_module(p.data)
        if weight_decay != 0:
            decayed = self._scratch_like(grad, slot=0)
            xp.multiply(p.data, weight_decay, out=decayed)
            decayed += grad
            grad = decayed                                    # g + wd * p, leaving p.grad untouched
        if momentum != 0:
            state = self.state.setdefault(p, {})
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = grad.copy()
                state["momentum_buffer"] = buf
            else:
                buf *= momentum
                if dampening == 0:
                    buf += grad
                else:
                    damped = self._scratch_like(grad, slot=1)
                    xp.multiply(grad, 1 - dampening, out=damped)
                    buf += damped
            if nesterov:
                look_ahead = self._scratch_like(grad, slot=1)
                xp.multiply(buf, momentum, out=look_ahead)
                look_ahead += grad                            # g + momentum * buf
                grad = look_ahead
            else:
                grad = buf
        step = self._scratch_like(grad, slot=2)
        xp.multiply(grad, lr, out=step)
        p.data -= step
