"""``TrainConfig``: every knob of the training loop, as one typed dataclass.

Defaults follow nanoGPT's Shakespeare recipe (AdamW, betas 0.9/0.99, weight decay 0.1 on matrices
only, 100 warmup iterations then cosine decay to ``min_lr``, gradient clipping at 1.0).
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass
from typing import Any

import numpy as np

from groundup.optim.schedule import SCHEDULES

__all__ = ["TrainConfig", "OPTIMIZERS", "DEVICES", "check_types", "FIELD_CHOICES"]

OPTIMIZERS = ("adamw", "adam", "sgd")
DEVICES = ("cpu", "cuda")


def _type_ok(value: Any, annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, option) for option in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if origin is tuple:
        kinds = typing.get_args(annotation)
        return isinstance(value, tuple | list) and len(value) == len(kinds) and \
            all(_type_ok(v, k) for v, k in zip(value, kinds))
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int | np.integer) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    return True  # a type this check does not know: the dataclass's own checks decide


def check_types(cls: type, values: dict[str, Any]) -> None:
    """Raise ValueError naming the field when a value in ``values`` does not have the type annotated on the
    dataclass ``cls`` (``"0.1"`` for a float, ``1`` for a bool, a float that is NaN or infinite ...).

    Config files are data from outside (a checkpoint's config.json), so they are checked before the
    dataclass's own invariants compare them with numbers.
    """
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if field.name not in values:
            continue
        value = values[field.name]
        if not _type_ok(value, hints[field.name]):
            kind = str(hints[field.name]).replace("typing.", "")
            kind = getattr(hints[field.name], "__name__", kind)
            raise ValueError(f"{cls.__name__}.{field.name} must be of type {kind}, got {value!r:.80}")
        floats = value if isinstance(value, tuple | list) else (value,)
        if any(isinstance(v, float | np.floating) and not math.isfinite(v) for v in floats):
            raise ValueError(f"{cls.__name__}.{field.name} must be finite, got {value!r}")


@dataclass
class TrainConfig:
    """Settings of :class:`groundup.train.Trainer`.

    Attributes:
        max_iters: number of optimizer steps.
        batch_size: batch size (informative for the Trainer: ``get_batch`` draws the batches).
        lr, min_lr: peak and final learning rate (``min_lr <= lr``, unless the schedule is ``"constant"``).
        warmup_iters: steps of linear warmup (``lr * (it + 1) / (warmup_iters + 1)``).
        lr_decay_iters: step at which the decay reaches ``min_lr`` (after ``warmup_iters``); None means
            ``max_iters``. A run shorter than ``warmup_iters`` ends in the warmup, below ``lr``.
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
        if isinstance(self.out_dir, os.PathLike):
            self.out_dir = os.fspath(self.out_dir)  # type: ignore[assignment] - a Path is kept as its text
        check_types(type(self), dataclasses.asdict(self))
        if self.schedule not in SCHEDULES:
            raise ValueError(f"TrainConfig.schedule={self.schedule!r}: expected one of {sorted(SCHEDULES)}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"TrainConfig.optimizer={self.optimizer!r}: expected one of {list(OPTIMIZERS)}")
        if self.device not in DEVICES and not self.device.startswith("cuda:"):
            raise ValueError(f"TrainConfig.device={self.device!r}: expected one of {list(DEVICES)}")
        for name in ("max_iters", "warmup_iters", "seed"):
            if getattr(self, name) < 0:
                raise ValueError(f"TrainConfig.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("batch_size", "eval_interval", "eval_iters", "log_interval"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("checkpoint_interval", "lr_decay_iters"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1 or None, got {getattr(self, name)}")
        if len(self.betas) != 2:
            raise ValueError(f"TrainConfig.betas must be a pair, got {self.betas}")
        for name in ("lr", "min_lr", "grad_clip", "weight_decay"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"TrainConfig.{name} must be a finite number >= 0, got {value}")
        if not all(math.isfinite(b) and 0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"TrainConfig.betas must both be in [0, 1), got {self.betas}")
        if self.schedule != "constant" and self.min_lr > self.lr:
            raise ValueError(f"TrainConfig.min_lr={self.min_lr:g} is above lr={self.lr:g}: the {self.schedule} "
                             f"schedule would raise the learning rate from lr to min_lr; give min_lr <= lr "
                             f"(or schedule='constant', which ignores min_lr)")
        if (self.schedule != "constant" and self.lr_decay_iters is not None
                and self.lr_decay_iters <= self.warmup_iters < self.max_iters):
            raise ValueError(f"TrainConfig.lr_decay_iters={self.lr_decay_iters} is not after warmup_iters="
                             f"{self.warmup_iters}: the {self.schedule} decay would be over before the warmup "
                             f"ends, and at step {self.warmup_iters} of the {self.max_iters} the learning rate "
                             f"would drop to min_lr at once; give lr_decay_iters > warmup_iters")

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
        if not isinstance(values, dict):
            raise ValueError(f"TrainConfig.from_dict: expected a dict, got {type(values).__name__}")
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"TrainConfig: unknown field(s) {unknown}; known fields are {sorted(names)}")
        check_types(cls, values)
        return cls(**values)


# The allowed values of the str fields, for the command line's --train.FIELD choices.
FIELD_CHOICES: dict[str, tuple[str, ...]] = {"schedule": tuple(sorted(SCHEDULES)), "optimizer": OPTIMIZERS,
                                             "device": DEVICES}
