"""Inputs torch refuses are refused here too (no silent float64 or object tensors), and a float
attention mask is differentiable (learned attention biases need its gradient)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import check_grad

import groundup as gu
from groundup import functional as F
from groundup import nn


def test_linear_refuses_an_integer_input_instead_of_returning_float64():
    layer = nn.Linear(3, 2)
    with pytest.raises(RuntimeError, match="linear: input dtype int64 is not floating point"):
        layer(gu.tensor(np.ones((2, 3), dtype=np.int64)))
    assert layer(gu.randn(2, 3)).dtype == np.float32


@pytest.mark.parametrize("data", [np.array([1, "a"], dtype=object), np.array([1.0, 2.0], dtype=object),
                                  np.array(["x", "y"])])
def test_tensor_refuses_arrays_that_are_not_numbers(data):
    with pytest.raises(TypeError, match="cannot make a tensor from data of dtype"):
        gu.tensor(data)


def test_a_float_attention_mask_gets_a_gradient():
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((1, 2, 3, 4)) for _ in range(3))
    mask = rng.standard_normal((3, 3))
    check_grad(lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, attn_mask=m), q, k, v, mask)
    bias = gu.tensor(mask.astype(np.float32), requires_grad=True)
    F.scaled_dot_product_attention(*(gu.tensor(a.astype(np.float32)) for a in (q, k, v)), attn_mask=bias).sum()\
        .backward()
    assert bias.grad is not None and bias.grad.shape == (3, 3)
