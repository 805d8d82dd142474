"""Training inside a stage: ``groundup.train.Trainer`` with the roadmap's progress bar and budgets.

    trainer = train(ctx, model, EpochBatches((x, y), 64, ctx.rng(7)), steps=600, lr=3e-3,
                    description="MLP", loss_fn=classification_loss, evaluate=test_accuracy, eval_every=30)
    trainer.history            # {"kind": "eval", "iter", ...} records, one per evaluation

Every stage that trains a model goes through ``train`` (one loop, ``Trainer.fit``); a stage keeps a
hand-written loop only where the loop is the lesson (gradient descent against the closed form,
backprop by hand, the clipping experiment).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from groundup import functional as F
from groundup.nn import Module
from groundup.optim import Optimizer
from groundup.train import TrainConfig, Trainer

__all__ = ["train", "EpochBatches", "StageProgress", "classification_loss", "evals"]


class StageProgress:
    """A Trainer callback that drives the stage's progress bar (``ctx.task``) and its status text."""

    def __init__(self, ctx: Any, description: str, total: int, status: Callable[[dict[str, Any]], str] | None = None):
        self.ctx, self.description, self.total, self.status = ctx, description, total, status
        self._task: Any = None

    def __call__(self, trainer: Trainer, event: str, info: dict[str, Any]) -> None:
        if event == "fit_start":
            self._task = self.ctx.task(self.description, self.total)
        elif event == "step":
            self._task.advance()
        elif event == "eval" and self.status is not None and self._task is not None and info["iter"] > 0:
            self._task.info(self.status(info))
        elif event == "fit_end":
            self.close()

    def close(self) -> None:
        if self._task is not None:
            self._task.done()
            self._task = None


class EpochBatches:
    """``get_batch`` over arrays in epochs: each epoch is a fresh shuffle cut into ``batch_size`` slices.

    The shuffles come from the generator given here (not the Trainer's), so a stage's batches
    depend on its own seed stream only. ``steps_per_epoch`` = ceil(N / batch_size).
    """

    def __init__(self, arrays: Sequence[np.ndarray], batch_size: int, rng: np.random.Generator):
        self.arrays, self.batch_size, self.rng = tuple(arrays), batch_size, rng
        self.n = len(self.arrays[0])
        self.steps_per_epoch = -(-self.n // batch_size)
        self._order: np.ndarray = np.empty(0, dtype=np.int64)
        self._position = 0

    def __call__(self, split: str, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
        if self._position >= len(self._order):
            self._order, self._position = self.rng.permutation(self.n), 0
        index = self._order[self._position:self._position + self.batch_size]
        self._position += self.batch_size
        return tuple(a[index] for a in self.arrays)


def classification_loss(model: Module, batch: tuple[Any, ...]) -> Any:
    """Mean cross-entropy of ``model(x)`` against labels ``y``, for a batch ``(x, y)``."""
    x, y = batch
    return F.cross_entropy(model(x), y)


def evals(trainer: Trainer, *keys: str) -> dict[str, list[float]]:
    """The run's evaluation records as lists by key (``evals(t, "iter", "val_loss")``), iteration 0 left out."""
    records = [r for r in trainer.history if r["kind"] == "eval" and r["iter"] > 0]
    return {key: [r[key] for r in records] for key in keys}


def train(ctx: Any, model: Module, get_batch: Callable[[str, np.random.Generator], Any], *, steps: int, lr: float,
          description: str, loss_fn: Callable[[Module, tuple], Any] | None = None,
          optimizer: Optimizer | None = None, evaluate: Callable[[Trainer], dict[str, float]] | None = None,
          eval_every: int | None = None, schedule: str = "cosine", min_lr: float | None = None, warmup: int = 0,
          grad_clip: float = 0.0, weight_decay: float = 0.0, betas: tuple[float, float] = (0.9, 0.999),
          seed_offset: int = 0, callbacks: Sequence[Any] = (),
          status: Callable[[dict[str, Any]], str] | None = None,
          data_parallel: bool | Callable[..., Any] = False) -> Trainer:
    """Train ``model`` for ``steps`` optimizer steps with the Trainer, on the run's device and seed.

    Args:
        ctx: the stage's Context.
        model: the model (moved to ``ctx.device``).
        get_batch: ``get_batch(split, rng)`` as the Trainer takes it (``EpochBatches`` for arrays).
        steps, lr, schedule, min_lr (default lr/10), warmup, grad_clip (0: none), weight_decay, betas:
            the recipe (``TrainConfig``); ``optimizer`` replaces the default AdamW built from it.
        description: the progress bar's label.
        loss_fn: ``loss_fn(model, batch)``; default ``model.loss(*batch)``.
        evaluate: ``evaluate(trainer) -> dict`` every ``eval_every`` steps and at the end (default: none).
        seed_offset: the Trainer's seed is ``ctx.seed * 1000 + seed_offset`` (dropout, its own generator).
        callbacks: more Trainer callbacks; ``status(eval_info) -> str`` is shown beside the bar.
        data_parallel: the Trainer's (each step split by rows over worker processes on the CPU).

    Returns:
        the Trainer after ``fit`` (``trainer.history`` holds the evaluations, ``evals`` reads them).
    """
    config = TrainConfig(max_iters=steps, lr=lr, min_lr=lr / 10 if min_lr is None else min_lr, warmup_iters=warmup,
                         schedule=schedule, grad_clip=grad_clip, weight_decay=weight_decay, betas=betas,
                         eval_interval=max(1, eval_every or steps), eval_iters=1, log_interval=max(1, steps),
                         device=ctx.device, seed=ctx.seed * 1000 + seed_offset, progress=False, out_dir=None)
    trainer = Trainer(model, config, get_batch, loss_fn=loss_fn, optimizer=optimizer,
                      evaluate=evaluate if evaluate is not None else (lambda t: {}),
                      callbacks=[StageProgress(ctx, description, steps, status), *callbacks],
                      data_parallel=data_parallel)
    trainer.fit()
    return trainer
