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

from collections.abc import Callable
from typing import Any

import numpy as np

from groundup.backend import array_module
from groundup.optim.optimizer import Optimizer, ParamsT
from groundup.parallel import num_threads, parallel_map, work_is_split
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
        if not 0.0 <= lr:  # NaN too, as torch
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        if not 0.0 <= betas[0] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 0: {betas[0]}")
        if not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 1: {betas[1]}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                        decoupled_weight_decay=decoupled_weight_decay)
        super().__init__(params, defaults)
        self._flat_buckets: dict[tuple[int, ...], dict[str, Any]] = {}   # see _update_flat

    @no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One Adam update of every parameter that has a gradient; ``closure`` and the result as ``Optimizer.step``."""
        loss, todo = self._begin_step(closure)

        def update(items: list[tuple[Tensor, dict[str, Any]]]) -> None:
            with np.errstate(under="ignore"):  # second moments of tiny gradients underflowing to 0 are no error
                for p, group in items:
                    self._update(p, group)

        small: dict[tuple[int, Any], list[Tensor]] = {}      # (group, dtype) -> its small NumPy parameters
        for p, group in todo:
            if p.data.size <= FLAT_MAX and type(p.data) is np.ndarray and type(p.grad.data) is np.ndarray:
                small.setdefault((id(group), p.data.dtype), []).append(p)
        groups = {id(group): group for group in self.param_groups}
        flat = {id(p) for members in small.values() if len(members) > 1 for p in members}
        if flat:
            with np.errstate(under="ignore"):
                for (gid, _), members in small.items():
                    if len(members) > 1:
                        self._update_flat(members, groups[gid])
            todo = [(p, group) for p, group in todo if id(p) not in flat]

        # Inside groundup.parallel.cpu_threads the parameters are shared out over the threads (each
        # update is independent of the others, so the result is the same).
        # NOTE: two threads pass the GIL around each of an update's ~13 NumPy calls, which costs more
        # than the second core gives until the arrays are large: measured on 2 cores, one thread against
        # two, 448k elements (BERT's default) 1.7 vs 2.0-2.8 ms, 796k (baby GPT) 2.3-2.5 vs 2.6-2.7 ms,
        # 1.8M 7.8 vs 4.8 ms (updates alone, their arrays warm in the cache). Inside a training step,
        # where the update reads arrays the backward has pushed out of the cache, two threads gain
        # sooner (2026-12-03, the steps taking turns in one process): the baby GPT's 796k elements
        # 4.94 -> 4.14 and 4.99 -> 3.89 ms, its whole step 60.3 -> 59.5 and 60.8 -> 60.1 ms; BERT's
        # 448k 2.80 -> 2.67 ms, its step within the noise. Below SHARE_OUT_MIN elements the calling
        # thread does it all.
        # NOTE: only once the step's work is split (BLAS on one thread since, ``work_is_split``): sharing
        # out here would narrow BLAS between one step's backward and the next step's forward, and a
        # resumed run would then run its first forward on other BLAS threads than the original did.
        threads = num_threads() if todo and array_module(todo[0][0].data) is np and work_is_split() else 1
        if sum(p.data.size for p, _ in todo) < SHARE_OUT_MIN:
            threads = 1
        if threads == 1:
            update(todo)                      # NOTE: no parallel_map hand-off (or BLAS-thread toggling) at all
        else:
            parallel_map(update, _share_out(todo, threads))
        return loss

    def _update(self, p: Tensor, group: dict[str, Any]) -> None:
        param = p.data
        xp = array_module(param)
        state = self.state.get(p)
        if not state:  # lazy initialisation, as torch
            state = {"step": 0, "exp_avg": xp.zeros_like(param), "exp_avg_sq": xp.zeros_like(param)}
            if group["amsgrad"]:
                state["max_exp_avg_sq"] = xp.zeros_like(param)
            self.state[p] = state
        self._apply(param, p.grad.data, state, group)

    def _update_flat(self, members: list[Tensor], group: dict[str, Any]) -> None:
        """Update ``members`` (small parameters of one group, one dtype, on NumPy) as one flat array.

        NOTE: an update is ~13 NumPy calls per parameter, and for a bias or a LayerNorm weight each
        call costs more than its arithmetic: gathering the small parameters and their gradients into
        flat arrays (two calls), updating those (~13 calls) and copying the results back (one call
        each) gives the same numbers, elementwise, for a fraction of the calls. Each parameter's
        ``exp_avg`` / ``exp_avg_sq`` in ``state`` stays its own array: a view of the bucket's flat moments.
        Measured (2 cores, 2026-12-02): BERT's default (46 parameters, 448k elements) 1.73 -> 1.42 ms
        per step with FLAT_MAX = 4096; with 16384 (its (128, 128) weights too) no faster, as the flat
        arrays then leave the cache between passes.
        """
        key = tuple(id(p) for p in members)
        bucket = self._flat_buckets.get(key)
        states = [self.state.get(p) for p in members]
        names = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq") if group["amsgrad"] else ("exp_avg", "exp_avg_sq")
        fresh = bucket is not None and all(st is not None and st["step"] == bucket["state"]["step"]
                                           and all(st[n].base is bucket["state"][n] for n in names)
                                           for st in states)
        if not fresh:                                        # first step, new members, or a loaded state
            started = [bool(st) for st in states]
            if any(started) and (not all(started) or len({st["step"] for st in states}) > 1):
                for p in members:                            # their step counts differ: one at a time
                    self._update(p, group)
                return
            if not any(started):
                states = [{"step": 0} | {n: np.zeros_like(p.data) for n in names} for p in members]
            sizes = [p.data.size for p in members]
            offsets = np.cumsum([0, *sizes])
            flat = {n: np.concatenate([st[n].reshape(-1) for st in states]) for n in names}
            for p, st, lo, hi in zip(members, states, offsets[:-1], offsets[1:]):
                for n in names:
                    st[n] = flat[n][lo:hi].reshape(p.data.shape)     # views of the flat moments
                self.state[p] = st
            params = np.empty(offsets[-1], dtype=members[0].data.dtype)
            bucket = {"state": {"step": states[0]["step"], **flat}, "param": params, "grad": np.empty_like(params),
                      "views": [params[lo:hi].reshape(p.data.shape) for p, lo, hi in
                                zip(members, offsets[:-1], offsets[1:])]}
            self._flat_buckets[key] = bucket
        flat_param, flat_grad = bucket["param"], bucket["grad"]
        np.concatenate([p.data.reshape(-1) for p in members], out=flat_param)
        np.concatenate([p.grad.data.reshape(-1) for p in members], out=flat_grad)
        self._apply(flat_param, flat_grad, bucket["state"], group)
        step = bucket["state"]["step"]
        for p, view in zip(members, bucket["views"]):
            np.copyto(p.data, view)
            self.state[p]["step"] = step

    def _apply(self, param: Any, grad: Any, state: dict[str, Any], group: dict[str, Any]) -> None:
        """One Adam update of ``param`` in place, from ``grad`` and the moments in ``state``."""
        lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
        weight_decay, amsgrad = group["weight_decay"], group["amsgrad"]
        xp = array_module(param)
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
        second = exp_avg_sq
        if amsgrad:
            xp.maximum(state["max_exp_avg_sq"], exp_avg_sq, out=state["max_exp_avg_sq"])
            second = state["max_exp_avg_sq"]
        # torch: p - lr / bc1 * m / (sqrt(v) / bc2_sqrt + eps); here with both sides of the fraction
        # times bc2_sqrt, the same number in one pass fewer (measured: the baby GPT's update 7-9% faster)
        denom = work
        xp.sqrt(second, out=denom)
        denom += eps * bias_correction2_sqrt                     # (sqrt(v_hat) + eps) * bc2_sqrt
        update = self._scratch_like(param, slot=2)
        xp.multiply(exp_avg, -lr * bias_correction2_sqrt / bias_correction1, out=update)
        update /= denom
        param += update                                          # p - lr / bc1 * m / (sqrt(v_hat) + eps)


FLAT_MAX = 1 << 12          # parameters of at most this many elements are updated together, flat (_update_flat)
SHARE_OUT_MIN = 1 << 19     # parameters' elements from which an update is shared out over the threads (2026-12-03)


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
