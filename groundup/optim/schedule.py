"""Learning-rate schedules: plain functions of the iteration, and torch-style scheduler objects.

Functions (what the Trainer uses; stateless, so resuming needs only the iteration number):

- :func:`warmup_cosine_lr`: nanoGPT's ``get_lr``: linear warmup, cosine decay to ``min_lr``, then flat.
- :func:`warmup_linear_lr`, :func:`warmup_constant_lr`, and :func:`scheduled_lr` choosing by name.

Scheduler objects (``torch.optim.lr_scheduler`` names and semantics): :class:`LRScheduler` (base),
:class:`LambdaLR`, :class:`StepLR`, :class:`CosineAnnealingLR`, and :class:`WarmupCosine`. As in
torch, constructing one sets each group's ``lr`` to the schedule's value at step 0, and each call
of ``step()`` (after ``optimizer.step()``) moves to the next value. StepLR and CosineAnnealingLR
use torch's recursive ("chainable") formulas, so their values equal torch's bit for bit.

Reference: https://github.com/karpathy/nanoGPT/blob/master/train.py (get_lr);
Loshchilov & Hutter 2016, "SGDR: Stochastic Gradient Descent with Warm Restarts".
"""

from __future__ import annotations

import math
import types
from collections.abc import Callable, Sequence
from typing import Any

from groundup.optim.optimizer import Optimizer

__all__ = [
    "warmup_cosine_lr", "warmup_linear_lr", "warmup_constant_lr", "scheduled_lr", "SCHEDULES",
    "LRScheduler", "LambdaLR", "StepLR", "CosineAnnealingLR", "WarmupCosine",
]


# ---------------------------------------------------------------------------- plain functions
def warmup_cosine_lr(it: int, lr: float, min_lr: float, warmup_iters: int, decay_iters: int) -> float:
    """nanoGPT's learning rate at iteration ``it`` (0-based).

    1. ``it < warmup_iters``: linear warmup, ``lr * (it + 1) / (warmup_iters + 1)``;
    2. ``it > decay_iters``: ``min_lr``;
    3. in between: cosine from ``lr`` (at ``warmup_iters``) down to ``min_lr`` (at ``decay_iters``).
    """
    if it < warmup_iters:
        return lr * (it + 1) / (warmup_iters + 1)
    if it > decay_iters or decay_iters <= warmup_iters:
        return min_lr
    decay_ratio = (it - warmup_iters) / (decay_iters - warmup_iters)   # in [0, 1]
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))               # from 1 down to 0
    return min_lr + coeff * (lr - min_lr)


def warmup_linear_lr(it: int, lr: float, min_lr: float, warmup_iters: int, decay_iters: int) -> float:
    """Like :func:`warmup_cosine_lr` but decaying linearly from ``lr`` to ``min_lr``."""
    if it < warmup_iters:
        return lr * (it + 1) / (warmup_iters + 1)
    if it > decay_iters or decay_iters <= warmup_iters:
        return min_lr
    decay_ratio = (it - warmup_iters) / (decay_iters - warmup_iters)
    return min_lr + (1.0 - decay_ratio) * (lr - min_lr)


def warmup_constant_lr(it: int, lr: float, min_lr: float = 0.0, warmup_iters: int = 0, decay_iters: int = 0) -> float:
    """Linear warmup to ``lr``, then ``lr`` for ever (``min_lr`` and ``decay_iters`` are ignored)."""
    if it < warmup_iters:
        return lr * (it + 1) / (warmup_iters + 1)
    return lr


SCHEDULES: dict[str, Callable[[int, float, float, int, int], float]] = {
    "cosine": warmup_cosine_lr,
    "linear": warmup_linear_lr,
    "constant": warmup_constant_lr,
}


def scheduled_lr(schedule: str, it: int, lr: float, min_lr: float, warmup_iters: int, decay_iters: int) -> float:
    """The learning rate of the named schedule (``"cosine"``, ``"linear"`` or ``"constant"``) at ``it``."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown learning-rate schedule {schedule!r}; expected one of {sorted(SCHEDULES)}")
    return SCHEDULES[schedule](it, lr, min_lr, warmup_iters, decay_iters)


# ---------------------------------------------------------------------------- scheduler objects
class LRScheduler:
    """Base class of the schedulers (torch semantics). Subclasses implement ``get_lr()``.

    Args:
        optimizer: the optimizer whose groups' ``lr`` this scheduler sets.
        last_epoch: index of the last step taken; -1 starts a new schedule (and records each group's
            ``initial_lr``); any other value resumes one (the groups must then have ``initial_lr``).
    """

    def __init__(self, optimizer: Optimizer, last_epoch: int = -1):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{type(optimizer).__name__} is not an Optimizer")
        self.optimizer = optimizer
        if last_epoch == -1:
            for group in optimizer.param_groups:
                group.setdefault("initial_lr", group["lr"])
        else:
            for i, group in enumerate(optimizer.param_groups):
                if "initial_lr" not in group:
                    raise KeyError(f"param 'initial_lr' is not specified in param_groups[{i}] when resuming a "
                                   f"scheduler with last_epoch={last_epoch}; load the optimizer's state first")
        self.base_lrs: list[float] = [group["initial_lr"] for group in optimizer.param_groups]
        self.last_epoch = last_epoch
        self._step_count = 0
        self._is_initial = True
        self.step()
        self._is_initial = False

    def get_lr(self) -> list[float]:
        """The learning rate of each group at ``self.last_epoch`` (called by ``step``)."""
        raise TypeError(f"{type(self).__name__} must implement get_lr()")

    def step(self) -> None:
        """Advance one step and write the new learning rates into the optimizer's groups."""
        self._step_count += 1
        self.last_epoch += 1
        values = self.get_lr()
        for group, lr in zip(self.optimizer.param_groups, values, strict=True):
            group["lr"] = lr
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def get_last_lr(self) -> list[float]:
        """The learning rates set by the last ``step()`` (one per group)."""
        return list(self._last_lr)

    def state_dict(self) -> dict[str, Any]:
        """Every attribute except the optimizer and plain functions (JSON-friendly)."""
        return {key: (list(value) if isinstance(value, tuple) else value) for key, value in self.__dict__.items()
                if key != "optimizer" and not isinstance(value, types.FunctionType)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a state from :meth:`state_dict`."""
        self.__dict__.update(state_dict)


class LambdaLR(LRScheduler):
    """``lr = base_lr * lr_lambda(step)``, with one function for all groups or one per group."""

    def __init__(self, optimizer: Optimizer, lr_lambda: Callable[[int], float] | Sequence[Callable[[int], float]],
                 last_epoch: int = -1):
        if isinstance(lr_lambda, list | tuple):
            if len(lr_lambda) != len(optimizer.param_groups):
                raise ValueError(f"Expected {len(optimizer.param_groups)} lr_lambdas, but got {len(lr_lambda)}")
            self.lr_lambdas = list(lr_lambda)
        else:
            self.lr_lambdas = [lr_lambda] * len(optimizer.param_groups)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        return [base_lr * fn(self.last_epoch) for fn, base_lr in zip(self.lr_lambdas, self.base_lrs, strict=True)]

    def state_dict(self) -> dict[str, Any]:
        state = {k: v for k, v in super().state_dict().items() if k != "lr_lambdas"}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict({k: v for k, v in state_dict.items() if k != "lr_lambdas"})


class StepLR(LRScheduler):
    """Multiply the learning rate by ``gamma`` every ``step_size`` steps."""

    def __init__(self, optimizer: Optimizer, step_size: int, gamma: float = 0.1, last_epoch: int = -1):
        self.step_size = step_size
        self.gamma = gamma
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        # NOTE: recursive (chainable) form, as torch: scale the current lr, don't recompute from base_lr.
        if self.last_epoch == 0 or self.last_epoch % self.step_size != 0:
            return [group["lr"] for group in self.optimizer.param_groups]
        return [group["lr"] * self.gamma for group in self.optimizer.param_groups]

    def _get_closed_form_lr(self) -> list[float]:
        return [base_lr * self.gamma ** (self.last_epoch // self.step_size) for base_lr in self.base_lrs]


class CosineAnnealingLR(LRScheduler):
    """Cosine annealing from each group's base lr to ``eta_min`` over ``T_max`` steps (SGDR without restarts).

    ``lr_t = eta_min + (base_lr - eta_min) * (1 + cos(pi * t / T_max)) / 2``, computed as torch does,
    recursively from the previous step's lr.
    """

    def __init__(self, optimizer: Optimizer, T_max: int, eta_min: float = 0.0, last_epoch: int = -1):  # noqa: N803
        self.T_max = T_max
        self.eta_min = eta_min
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        groups = self.optimizer.param_groups
        if self._is_initial:
            return [group["lr"] for group in groups]
        if self._step_count == 1 and self.last_epoch > 0:
            return self._get_closed_form_lr()
        if (self.last_epoch - 1 - self.T_max) % (2 * self.T_max) == 0:
            return [group["lr"] + (base_lr - self.eta_min) * (1 - math.cos(math.pi / self.T_max)) / 2
                    for base_lr, group in zip(self.base_lrs, groups, strict=True)]
        return [(1 + math.cos(math.pi * self.last_epoch / self.T_max))
                / (1 + math.cos(math.pi * (self.last_epoch - 1) / self.T_max))
                * (group["lr"] - self.eta_min) + self.eta_min for group in groups]

    def _get_closed_form_lr(self) -> list[float]:
        return [self.eta_min + (base_lr - self.eta_min) * (1 + math.cos(math.pi * self.last_epoch / self.T_max)) / 2
                for base_lr in self.base_lrs]


class WarmupCosine(LRScheduler):
    """nanoGPT's schedule as a scheduler: ``lr = warmup_cosine_lr(step, base_lr, min_lr, ...)`` per group.

    Args:
        optimizer: the optimizer.
        warmup_iters: steps of linear warmup.
        decay_iters: step at which the cosine reaches ``min_lr``.
        min_lr: the final learning rate; one number for all groups or one per group.
    """

    def __init__(self, optimizer: Optimizer, warmup_iters: int, decay_iters: int,
                 min_lr: float | Sequence[float] = 0.0, last_epoch: int = -1):
        self.warmup_iters = warmup_iters
        self.decay_iters = decay_iters
        n_groups = len(optimizer.param_groups)
        self.min_lrs = list(min_lr) if isinstance(min_lr, Sequence) else [float(min_lr)] * n_groups
        if len(self.min_lrs) != n_groups:
            raise ValueError(f"Expected {n_groups} min_lr values, but got {len(self.min_lrs)}")
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        return [warmup_cosine_lr(self.last_epoch, base_lr, min_lr, self.warmup_iters, self.decay_iters)
                for base_lr, min_lr in zip(self.base_lrs, self.min_lrs, strict=True)]
