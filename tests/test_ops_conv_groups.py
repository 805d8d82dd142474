"""Grouped convolution in ``F.conv2d(..., groups=g)``: finite differences in float64, PyTorch parity
(values and gradients, float32 and float64), the depthwise case, and the errors for shapes that
do not divide."""

from __future__ import annotations

import numpy as np
import pytest

import groundup as gu
from groundup import functional as F
from tests.helpers import assert_matches_torch, check_grad

# (x shape, weight shape, groups, stride, padding, dilation, bias)
GROUPED = [
    ((2, 4, 5, 5), (6, 2, 3, 3), 2, 1, 1, 1, True),
    ((1, 6, 6, 5), (6, 2, 2, 3), 3, 2, 0, 1, False),
    ((2, 3, 6, 6), (3, 1, 3, 3), 3, 1, 1, 2, True),          # depthwise
    ((1, 4, 7, 6), (8, 1, 3, 2), 4, (2, 1), (1, 0), 1, True),  # depthwise with a channel multiplier of 2
]


@pytest.mark.parametrize("case", range(len(GROUPED)))
def test_grouped_conv2d_grad(case: int) -> None:
    x, w, groups, stride, padding, dilation, bias = GROUPED[case]
    shapes = (x, w, (w[0],)) if bias else (x, w)
    check_grad(lambda *a: F.conv2d(*a, stride=stride, padding=padding, dilation=dilation, groups=groups), *shapes)


@pytest.mark.torch
@pytest.mark.parametrize("case", range(len(GROUPED)))
def test_grouped_conv2d_matches_torch(case: int) -> None:
    pytest.importorskip("torch")
    import torch.nn.functional as TF

    x, w, groups, stride, padding, dilation, bias = GROUPED[case]
    shapes = (x, w, (w[0],)) if bias else (x, w)

    def run(f):
        return lambda *a: f.conv2d(a[0], a[1], a[2] if bias else None, stride, padding, dilation, groups)

    assert_matches_torch(shapes, run(TF), run(F))


def test_grouped_equals_separate_convolutions() -> None:
    rng = np.random.default_rng(0)
    x, w, b = rng.standard_normal((2, 6, 5, 5)), rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)
    out = F.conv2d(gu.tensor(x), gu.tensor(w), gu.tensor(b), padding=1, groups=2).numpy()   # (2, 4, 5, 5)
    for k in range(2):
        part = F.conv2d(gu.tensor(x[:, 3 * k:3 * k + 3]), gu.tensor(w[2 * k:2 * k + 2]), gu.tensor(b[2 * k:2 * k + 2]),
                        padding=1).numpy()
        np.testing.assert_allclose(out[:, 2 * k:2 * k + 2], part, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("x, w, groups", [((1, 4, 5, 5), (6, 2, 3, 3), 3),   # 4 channels do not split in 3
                                          ((1, 4, 5, 5), (5, 2, 3, 3), 2),   # 5 outputs do not split in 2
                                          ((1, 4, 5, 5), (6, 4, 3, 3), 2)])  # weight has C, not C / groups
def test_grouped_conv2d_shape_errors(x, w, groups) -> None:
    with pytest.raises(RuntimeError, match="groups"):
        F.conv2d(gu.randn(*x), gu.randn(*w), groups=groups)


@pytest.mark.parametrize("groups", [0, -1, 1.5, True])
def test_grouped_conv2d_bad_groups(groups) -> None:
    with pytest.raises(ValueError, match="groups"):
        F.conv2d(gu.randn(1, 2, 4, 4), gu.randn(2, 2, 3, 3), groups=groups)
