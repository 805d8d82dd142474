"""MaxPool2d's tiled path (stride = kernel, no padding or dilation): finite differences, and PyTorch's
values and gradients, including ties (the gradient goes to the first maximum, as torch) and inputs
whose last rows and columns no window covers."""

from __future__ import annotations

import numpy as np
import pytest

import groundup as gu
from groundup import functional as F
from tests.helpers import assert_matches_torch, check_grad

TILED = [((2, 3, 4, 6), 2), ((1, 2, 5, 7), 2), ((2, 1, 6, 6), (2, 3)), ((1, 2, 7, 5), 3)]


@pytest.mark.parametrize("shape, kernel", TILED)
def test_tiled_max_pool_grad(shape, kernel) -> None:
    check_grad(lambda a: F.max_pool2d(a, kernel), shape)


@pytest.mark.torch
@pytest.mark.parametrize("shape, kernel", TILED)
def test_tiled_max_pool_matches_torch(shape, kernel) -> None:
    pytest.importorskip("torch")
    import torch.nn.functional as TF

    assert_matches_torch([shape], lambda x: TF.max_pool2d(x, kernel), lambda x: F.max_pool2d(x, kernel))


@pytest.mark.torch
def test_tiled_max_pool_ties_go_to_the_first_maximum_as_torch() -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x = np.maximum(rng.integers(-3, 3, (2, 3, 6, 8)), 0).astype(np.float32)   # many ties, mostly at 0
    g = rng.standard_normal((2, 3, 3, 4)).astype(np.float32)
    ours = gu.tensor(x, requires_grad=True)
    (F.max_pool2d(ours, 2) * gu.tensor(g)).sum().backward()
    theirs = torch.tensor(x, requires_grad=True)
    (torch.nn.functional.max_pool2d(theirs, 2) * torch.tensor(g)).sum().backward()
    np.testing.assert_array_equal(ours.grad.numpy(), theirs.grad.numpy())


def test_tiled_max_pool_propagates_nan() -> None:
    x = np.arange(32, dtype=np.float32).reshape(1, 2, 4, 4)
    x[0, 0, 1, 1] = np.nan
    out = F.max_pool2d(gu.tensor(x), 2).numpy()
    assert np.isnan(out[0, 0, 0, 0]) and np.isfinite(np.delete(out.reshape(-1), 0)).all()
