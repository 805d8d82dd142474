"""Evaluation without side effects: eval mode, no graph, and the model's mode and the RNG restored.

    with evaluating(model):                  # eval mode + no_grad; restores the mode it found
        logits = model(x)
    loss = mean_loss(model, batches)         # the mean of model.loss(*batch) over batches, in eval mode

One helper for "the mean loss in eval mode" across the library and the roadmap, so no caller
forgets to restore training mode (or turns training mode on for a model that was in eval mode).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

import groundup as gu
from groundup.nn.module import Module
from groundup.nn.utils import eval_mode
from groundup.random import get_rng_state, set_rng_state

__all__ = ["evaluating", "mean_loss"]


@contextmanager
def evaluating(model: Module) -> Iterator[Module]:
    """Eval mode (dropout off) and ``no_grad`` inside; afterwards the mode each part of the model had and
    groundup's global generator are restored, so evaluating never changes a training run."""
    rng_state = get_rng_state()
    try:
        with eval_mode(model), gu.no_grad():
            yield model
    finally:
        set_rng_state(rng_state)


def mean_loss(model: Module, batches: Iterable[tuple[Any, ...]],
              loss_fn: Callable[[Module, tuple[Any, ...]], Any] | None = None,
              weights: Iterable[float] | None = None) -> float:
    """The mean loss over ``batches`` in eval mode (see ``evaluating``).

    Args:
        model: the model; ``loss_fn(model, batch)`` or, by default, ``model.loss(*batch)`` gives a scalar.
        batches: tuples of Tensors (or arrays the loss function accepts).
        loss_fn: the loss of one batch.
        weights: one weight per batch (e.g. its number of tokens) for a weighted mean; default equal.

    Returns:
        the (weighted) mean as a Python float.
    """
    with evaluating(model):
        values = [float((loss_fn(model, b) if loss_fn is not None else model.loss(*b)).item()) for b in batches]
    if not values:
        raise ValueError("mean_loss: no batches")
    return float(np.average(values, weights=None if weights is None else list(weights)))
