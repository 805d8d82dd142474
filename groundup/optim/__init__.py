"""Optimizers and learning-rate schedules with ``torch.optim``'s names, arguments and state layout.

    opt = gu.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1)
    loss.backward(); opt.step(); opt.zero_grad()

``SGD``, ``Adam``, ``AdamW`` and the ``Optimizer`` base live here; schedules are in
``groundup.optim.schedule`` (also importable as ``groundup.optim.lr_scheduler``, torch's name).
"""

from groundup.optim import schedule
from groundup.optim import schedule as lr_scheduler
from groundup.optim.adam import Adam, AdamW
from groundup.optim.optimizer import Optimizer
from groundup.optim.schedule import (
    CosineAnnealingLR,
    LambdaLR,
    LRScheduler,
    StepLR,
    WarmupCosine,
    scheduled_lr,
    warmup_cosine_lr,
)
from groundup.optim.sgd import SGD

__all__ = [
    "Optimizer", "SGD", "Adam", "AdamW", "schedule", "lr_scheduler", "LRScheduler", "LambdaLR", "StepLR",
    "CosineAnnealingLR", "WarmupCosine", "warmup_cosine_lr", "scheduled_lr",
]
