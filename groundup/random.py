"""Random numbers: one seeded generator for the whole library (``gu.manual_seed``).

Values are drawn on the CPU with NumPy's PCG64 and moved to the tensor's device, so a seed gives
the same numbers on NumPy and CuPy.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from groundup.backend import to_device

_generator = np.random.default_rng(0)


def manual_seed(seed: int) -> np.random.Generator:
    """Seed the global generator (like ``torch.manual_seed``); returns it."""
    global _generator
    _generator = np.random.default_rng(int(seed))
    return _generator


def get_rng_state() -> dict[str, Any]:
    """The generator's state as a JSON-serialisable dict (for checkpoints)."""
    return _generator.bit_generator.state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore a state returned by :func:`get_rng_state`."""
    _generator.bit_generator.state = state


def generator() -> np.random.Generator:
    """The global generator."""
    return _generator


@contextlib.contextmanager
def fork_rng(seed: int) -> Iterator[np.random.Generator]:
    """Inside the block the global generator is a fresh one seeded with ``seed``; the previous one is
    restored, untouched, on exit (as ``torch.random.fork_rng`` followed by a seed)."""
    global _generator
    saved = _generator
    _generator = np.random.default_rng(int(seed))
    try:
        yield _generator
    finally:
        _generator = saved


def normal_array(shape: tuple[int, ...], mean: float, std: float, dtype: Any, device: str) -> Any:
    values = _generator.standard_normal(shape, dtype=np.float64) * std + mean
    return to_device(values.astype(dtype, copy=False), device)


def uniform_array(shape: tuple[int, ...], low: float, high: float, dtype: Any, device: str) -> Any:
    values = _generator.uniform(low, high, size=shape)
    return to_device(np.asarray(values).astype(dtype, copy=False), device)
