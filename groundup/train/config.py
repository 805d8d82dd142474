"""``TrainConfig``: every knob of the training loop, as one typed dataclass.

Defaults follow nanoGPT's Shakespeare recipe (AdamW, betas 0.9/0.99, weight decay 0.1 on matrices
only, 100 warmup iterations then cosine decay to ``min_lr``, gradient clipping at 1.0).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from groundup.optim.schedule import SCHEDULES

__all__ = ["TrainConfig", "OPTIMIZERS"]

OPTIMIZERS = ("adamw", "adam", "sgd")


@dataclass
class TrainConfig:
    """Settings of :class:`groundup.train.Trainer`.

    Attributes:
        max_iters: number of optimizer steps.
        batch_size: batch size (informative for the Trainer: ``get_batch`` draws the batches).
        lr, min_lr: peak and final learning rate.
        warmup_iters: steps of linear warmup (``lr * (it + 1) / (warmup_iters + 1)``).
        lr_decay_iters: step at which the decay reaches ``min_lr``; None means ``max_iters``.
        schedule: ``"cosine"`` (warmup, cosine to min_lr), ``"linear"`` (warmup, linear to min_lr) or
            ``"constant"`` (warmup, then lr).
        optimizer: ``"adamw"``, ``"adam"`` or ``"sgd"``.
        weight_decay: applied only to parameters with ndim >= 2 (matrices, embeddings), as nanoGPT.
        betas: Adam's (beta1, beta2); for ``"sgd"``, beta1 is the momentum.
        grad_clip: clip the global gradient norm to this value; 0 disables clipping.
        eval_interval: evaluate every this many steps (and at the start and the end).
        eval_iters: number of fixed batches per split in an evaluation.
        log_interval: write a training record to metrics.jsonl every this many steps.
        device: ``"cpu"`` or ``"cuda"``.
        seed: seeds the batch generator, groundup's global generator (dropout) and the eval batches.
        out_dir: where metrics, plots, summary and checkpoints go; None keeps everything in memory.
        progress: show a progress bar (only on a terminal).
        checkpoint_interval: save every this many steps; None saves at each evaluation and at the end
            (when ``out_dir`` is set).
    """

    max_iters: int = 2000
    batch_size: int = 12
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_iters: int = 100
    lr_decay_iters: int | None = None
    schedule: str = "cosine"
    optimizer: str = "adamw"
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.99)
    grad_clip: float = 1.0
    eval_interval: int = 250
    eval_iters: int = 100
    log_interval: int = 10
    device: str = "cpu"
    seed: int = 1337
    out_dir: str | None = None
    progress: bool = True
    checkpoint_interval: int | None = None

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)  # type: ignore[assignment] - a list from JSON becomes a tuple
        if self.schedule not in SCHEDULES:
            raise ValueError(f"TrainConfig.schedule={self.schedule!r}: expected one of {sorted(SCHEDULES)}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"TrainConfig.optimizer={self.optimizer!r}: expected one of {list(OPTIMIZERS)}")
        for name in ("max_iters", "warmup_iters"):
            if getattr(self, name) < 0:
                raise ValueError(f"TrainConfig.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("eval_interval", "eval_iters", "log_interval"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.checkpoint_interval is not None and self.checkpoint_interval < 1:
            raise ValueError(f"TrainConfig.checkpoint_interval must be >= 1 or None, got {self.checkpoint_interval}")
        if len(self.betas) != 2:
            raise ValueError(f"TrainConfig.betas must be a pair, got {self.betas}")
        if self.lr < 0 or self.min_lr < 0 or self.grad_clip < 0 or self.weight_decay < 0:
            raise ValueError("TrainConfig: lr, min_lr, grad_clip and weight_decay must be >= 0")

    @property
    def decay_iters(self) -> int:
        """``lr_decay_iters``, or ``max_iters`` when it is None."""
        return self.max_iters if self.lr_decay_iters is None else self.lr_decay_iters

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-friendly dict."""
        out = dataclasses.asdict(self)
        out["betas"] = list(self.betas)
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from a dict (e.g. the ``train_config`` in a checkpoint's state.json); unknown keys are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"TrainConfig: unknown field(s) {unknown}; known fields are {sorted(names)}")
        return cls(**values)
