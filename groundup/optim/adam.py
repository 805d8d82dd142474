"""Adam and AdamW, exactly as ``torch.optim.Adam`` / ``torch.optim.AdamW`` (single-tensor path).

Per parameter ``p`` with gradient ``g`` at step ``t`` (1, 2, ...):

    p = p * (1 - lr * weight_decay)                 AdamW: decoupled weight decay
    g = g + weight_decay * p                        Adam: L2 penalty in the gradient
    m = m + (1 - beta1) * (g - m)                   first moment (torch's lerp)
    v = beta2 * v + (1 - beta2) * g * g             second moment
    p = p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

State per parameter (torch's names): ``step`` (int), ``exp_avg`` (m), ``exp_avg_sq`` (v) and
``max_exp_avg_sq`` with ``amsgrad=True``.

NOTE on speed: each update runs in place on ``p.data`` with reused scratch buffers (no
temporaries), one parameter at a time, so each parameter's arrays stay in cache across the ~13
passes; a single flat buffer measured no faster (BENCHMARKS.md). Inside
``groundup.parallel.cpu_threads`` the parameters are shared out over the threads.

References: Kingma & Ba 2014, "Adam: A Method for Stochastic Optimization";
Loshchilov & Hutter 2017, "Decoupled Weight Decay Regularization" (AdamW).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from groundup.backend import array_module
from groundup.optim.optimizer import Optimizer, ParamsT
from groundup.parallel import num_threads, parallel_map
from groundup.tensor import Tensor, no_grad

__all__ = ["Adam", "AdamW"]


class Adam(Optimizer):
    """Adam (torch semantics). ``weight_decay`` is an L2 penalty added to the gradient.

    Args:
        params: Tensors or parameter-group dicts.
        lr: learning rate.
        betas: decay rates (beta1, beta2) of the first and second moment estimates.
        eps: added to the denominator for numerical stability.
        weight_decay: L2 penalty (Adam) or decoupled decay rate (AdamW).
        amsgrad: use the running maximum of the second moment (Reddi et al. 2018).
        decoupled_weight_decay: decay the weights directly (AdamW) instead of the gradient.
    """

    def __init__(self, params: ParamsT, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, amsgrad: bool = False, *,
                 decoupled_weight_decay: bool = False):
        if lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if eps < 0.0:
            raise ValueError(f"Invalid epsilon value: {eps}")
        if not 0.0 <= betas[0] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 0: {betas[0]}")
        if not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 1: {betas[1]}")
        if weight_decay < 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                        decoupled_weight_decay=decoupled_weight_decay)
        super().__init__(params, defaults)

    @no_grad()
    def step(self) -> None:
        """One update of every parameter that has a gradient (parameters with ``grad is None`` are skipped)."""
        todo = [(p, group) for group in self.param_groups for p in group["params"] if p.grad is not None]

        def update(items: list[tuple[Tensor, dict[str, Any]]]) -> None:
            with np.errstate(under="ignore"):  # second moments of tiny gradients underflowing to 0 are no error
                for p, group in items:
                    self._update(p, group)

        # Inside groundup.parallel.cpu_threads the parameters are shared out over the threads (each
        # update is independent of the others, so the result is the same).
        # NOTE: two threads pass the GIL around each of an update's ~13 NumPy calls, which costs more
        # than the second core gives until the arrays are large: measured on 2 cores, one thread against
        # two, 448k elements (BERT's default) 1.7 vs 2.0-2.8 ms, 796k (baby GPT) 2.3-2.5 vs 2.6-2.7 ms,
        # 1.8M 7.8 vs 4.8 ms. Below SHARE_OUT_MIN elements the calling thread does it all.
        threads = num_threads() if todo and array_module(todo[0][0].data) is np else 1
        if sum(p.data.size for p, _ in todo) < SHARE_OUT_MIN:
            threads = 1
        if threads == 1:
            update(todo)                      # NOTE: no parallel_map hand-off (or BLAS-thread toggling) at all
        else:
            parallel_map(update, _share_out(todo, threads))

    def _update(self, p: Tensor, group: dict[str, Any]) -> None:
        lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
        weight_decay, amsgrad = group["weight_decay"], group["amsgrad"]
        param, grad = p.data, p.grad.data
        xp = array_module(param)
        state = self.state.get(p)
        if not state:  # lazy initialisation, as torch
            state = {"step": 0, "exp_avg": xp.zeros_like(param), "exp_avg_sq": xp.zeros_like(param)}
            if amsgrad:
                state["max_exp_avg_sq"] = xp.zeros_like(param)
            self.state[p] = state
        state["step"] += 1
        step = state["step"]
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        work = self._scratch_like(param, slot=1)

        if weight_decay != 0:
            if group["decoupled_weight_decay"]:
                param *= 1 - lr * weight_decay
            else:
                decayed = self._scratch_like(param, slot=0)
                xp.multiply(param, weight_decay, out=decayed)
                decayed += grad                                  # g + wd * p, leaving p.grad untouched
                grad = decayed

        # m.lerp_(g, 1 - beta1), with torch's two formulas for the two halves of the weight range
        weight = 1 - beta1
        xp.subtract(grad, exp_avg, out=work)                     # g - m
        if weight < 0.5:
            work *= weight
            exp_avg += work                                      # m + w * (g - m)
        else:
            work *= 1 - weight
            xp.subtract(grad, work, out=exp_avg)                 # g - (g - m) * (1 - w)

        exp_avg_sq *= beta2
        xp.multiply(grad, 1 - beta2, out=work)
        work *= grad
        exp_avg_sq += work                                       # beta2 * v + (1 - beta2) * g * g

        bias_correction1 = 1 - beta1**step
        bias_correction2_sqrt = (1 - beta2**step) ** 0.5
        step_size = lr / bias_correction1
        second = exp_avg_sq
        if amsgrad:
            xp.maximum(state["max_exp_avg_sq"], exp_avg_sq, out=state["max_exp_avg_sq"])
            second = state["max_exp_avg_sq"]
        denom = work
        xp.sqrt(second, out=denom)
        denom /= bias_correction2_sqrt
        denom += eps                                             # sqrt(v_hat) + eps
        update = self._scratch_like(param, slot=2)
        xp.multiply(exp_avg, -step_size, out=update)
        update /= denom
        param += update                                          # p - step_size * m / denom


SHARE_OUT_MIN = 1 << 20     # parameters' elements from which an update is shared out over the threads (2026-12-02)


def _share_out(items: list[tuple[Tensor, Any]], n: int) -> list[list[tuple[Tensor, Any]]]:
    """Split ``items`` into n lists of about the same number of elements (largest first, greedy)."""
    shares: list[list[tuple[Tensor, Any]]] = [[] for _ in range(max(1, min(n, len(items))))]
    sizes = [0] * len(shares)
    for item in sorted(items, key=lambda it: -it[0].data.size):
        i = sizes.index(min(sizes))
        shares[i].append(item)
        sizes[i] += item[0].data.size
    return shares


class AdamW(Adam):
    """Adam with decoupled weight decay (torch's ``AdamW``): ``p *= 1 - lr * weight_decay`` each step."""

    def __init__(self, params: ParamsT, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, amsgrad: bool = False):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                         decoupled_weight_decay=True)
