"""Convolution and max-pooling on arrays laid out batch-last in memory: ``conv2d`` returns its
(N, C, H, W) output as a view of a (C, H, W, N) array, and max-pooling and the convolution's input
gradient keep that layout. Finite differences (float64) and PyTorch parity (values and gradients)
through conv -> ReLU -> max-pool -> conv chains, and max-pooling fed a batch-last leaf directly."""

from __future__ import annotations

import numpy as np
import pytest

import groundup as gu
from groundup import functional as F
from tests.helpers import assert_matches_torch, check_grad


def _batch_last(a: np.ndarray) -> np.ndarray:
    """The same (N, C, H, W) values, stored as (C, H, W, N)."""
    return np.ascontiguousarray(a.transpose(1, 2, 3, 0)).transpose(3, 0, 1, 2)   # (C, H, W, N) -> (N, C, H, W)


def _chain(f, kernel):
    """conv -> ReLU -> max-pool -> conv -> ReLU -> max-pool, as the CNN model runs it."""
    def run(x, w1, b1, w2, b2):
        h = f.max_pool2d(f.relu(f.conv2d(x, w1, b1, padding=1)), kernel)
        return f.max_pool2d(f.relu(f.conv2d(h, w2, b2, padding=1)), kernel)
    return run


# (x shape, pooling kernel): 2x2 as the CNN, maps with rows and columns no window covers, a 2x3 kernel
CHAINS = [((3, 2, 8, 8), 2), ((2, 1, 7, 9), 2), ((2, 2, 8, 9), (2, 3))]


def _chain_inputs(shape):
    n, c = shape[:2]
    return [shape, (4, c, 3, 3), (4,), (3, 4, 3, 3), (3,)]


def test_conv2d_output_is_batch_last_and_max_pool_keeps_it() -> None:
    x = gu.randn(4, 2, 6, 6)
    h = F.conv2d(x, gu.randn(3, 2, 3, 3), padding=1)
    pooled = F.max_pool2d(h, 2)
    for t in (h, pooled):
        assert t.data.transpose(1, 2, 3, 0).flags.c_contiguous
    assert F.max_pool2d(x, 2).data.flags.c_contiguous                  # an (N, C, H, W) input stays so


@pytest.mark.parametrize("shape, kernel", CHAINS)
def test_conv_pool_chain_grad(shape, kernel) -> None:
    check_grad(_chain(F, kernel), *_chain_inputs(shape))


@pytest.mark.torch
@pytest.mark.parametrize("shape, kernel", CHAINS)
def test_conv_pool_chain_matches_torch(shape, kernel) -> None:
    pytest.importorskip("torch")
    import torch.nn.functional as TF

    assert_matches_torch(_chain_inputs(shape), _chain(TF, kernel), _chain(F, kernel))


@pytest.mark.parametrize("shape, kernel", [((3, 2, 4, 6), 2), ((2, 3, 5, 7), 2), ((3, 1, 6, 6), (2, 3))])
def test_max_pool_after_conv_grad(shape, kernel) -> None:
    """A 1x1 convolution hands max-pooling a batch-last input; the weight is an input too."""
    c = shape[1]
    check_grad(lambda x, w: F.max_pool2d(F.conv2d(x, w), kernel), shape, np.eye(c).reshape(c, c, 1, 1))


@pytest.mark.torch
@pytest.mark.parametrize("shape, kernel", [((3, 2, 4, 6), 2), ((2, 3, 5, 7), 2), ((4, 2, 6, 6), 3)])
def test_max_pool_of_batch_last_leaf_matches_torch_with_ties(shape, kernel) -> None:
    """Values and gradient (to the first maximum of each window) for a batch-last leaf and an
    (N, C, H, W) output gradient, with many ties."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x = np.maximum(rng.integers(-3, 3, shape), 0).astype(np.float32)   # many ties, mostly at 0
    ours = gu.Tensor(_batch_last(x), requires_grad=True)
    out = F.max_pool2d(ours, kernel)
    theirs = torch.tensor(x, requires_grad=True)
    expected = torch.nn.functional.max_pool2d(theirs, kernel)
    np.testing.assert_array_equal(out.detach().numpy(), expected.detach().numpy())
    g = rng.standard_normal(tuple(expected.shape)).astype(np.float32)
    (out * gu.tensor(g)).sum().backward()
    (expected * torch.tensor(g)).sum().backward()
    np.testing.assert_array_equal(ours.grad.numpy(), theirs.grad.numpy())


def test_conv2d_input_grad_keeps_the_input_layout() -> None:
    rng = np.random.default_rng(1)
    x, w = rng.standard_normal((3, 2, 5, 5)), rng.standard_normal((4, 2, 3, 3))
    grads = []
    for data in (x, _batch_last(x)):
        leaf = gu.Tensor(data, requires_grad=True)
        F.conv2d(leaf, gu.tensor(w), padding=1).sum().backward()
        grads.append(leaf.grad.numpy())
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-12, atol=1e-12)


@pytest.mark.torch
@pytest.mark.parametrize("const", [(0, 1), (0, 2), (1,)])
def test_conv2d_bias_column_gradients_match_torch_when_some_inputs_are_constant(const) -> None:
    """The bias rides in the GEMM as one more weight column; its gradient alone (frozen weight),
    the weight's alone (constant bias) and both with a constant input, grouped."""
    pytest.importorskip("torch")
    import torch.nn.functional as TF

    def run(f):
        return lambda x, w, b: f.conv2d(x, w, b, padding=1, groups=2)

    assert_matches_torch([(3, 4, 5, 5), (6, 2, 3, 3), (6,)], run(TF), run(F), const=const)
