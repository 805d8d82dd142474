"""Shared pytest setup: a fixed seed and raising float errors in every test, the ``backend``
fixture (NumPy, and CuPy when a GPU is present), and the Hypothesis profile for fast suites."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings

import groundup as gu

sys.path.insert(0, str(Path(__file__).parent))  # `from helpers import ...` in every test file

from helpers import Backend  # noqa: E402

# Small, quick property tests: shapes are tiny, so 15 examples cover the cases that matter.
# CI (.ci/run sets GROUNDUP_CI=1) draws the same examples every run, so that a red CI names a change,
# not a draw; a local run draws new ones and keeps looking.
settings.register_profile("groundup", max_examples=15, deadline=None, print_blob=True,
                          derandomize=os.environ.get("GROUNDUP_CI") == "1")
settings.load_profile("groundup")


@pytest.fixture(autouse=True)
def _seed_and_raise() -> Iterator[None]:
    """Seed groundup's and NumPy's generators; turn NumPy float warnings (overflow, 0/0) into errors.

    NOTE: underflow stays silent: exp(-1000) == 0 is the intended result in softmax, log-sum-exp
    and masked attention, not a bug.
    """
    gu.manual_seed(0)
    np.random.seed(0)
    with np.errstate(all="raise", under="ignore"):
        yield


@pytest.fixture(scope="session", params=["numpy", pytest.param("cupy", marks=pytest.mark.gpu)])
def backend(request: pytest.FixtureRequest) -> Backend:
    """The array backend under test; the cupy case skips when CuPy or a CUDA GPU is missing."""
    if request.param == "numpy":
        return Backend("numpy", np, "cpu")
    cupy = pytest.importorskip("cupy")
    if not gu.cuda_is_available():
        pytest.skip("CuPy is installed but no CUDA GPU is visible")
    return Backend("cupy", cupy, "cuda")
