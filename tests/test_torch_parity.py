"""The engine against PyTorch where the two once differed: each test runs the same call in torch and
groundup on the same random inputs (values, shapes, dtypes, gradients of a random upstream gradient),
or checks that groundup refuses, with an error naming the problem, what torch refuses.

Shapes and dims are drawn by Hypothesis; ``assert_matches_torch`` (``helpers.py``) does the comparing.
"""

from __future__ import annotations

import pytest
from helpers import assert_matches_torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes

import groundup as gu

torch = pytest.importorskip("torch")

shapes_1d = array_shapes(min_dims=1, max_dims=3, min_side=2, max_side=4)


# ---------------------------------------------------------------- var / std: torch's signature
@given(shape=shapes_1d, data=st.data())
def test_var_and_std_read_the_second_positional_argument_as_unbiased(shape: tuple, data: st.DataObject) -> None:
    """torch's ``x.var(dim, unbiased, keepdim)``: ``x.var(1, False)`` is the biased variance (it was
    read as keepdim=False, giving the unbiased one)."""
    dim = data.draw(st.integers(-len(shape), len(shape) - 1))
    unbiased, keepdim = data.draw(st.booleans()), data.draw(st.booleans())
    for op in ("var", "std"):
        assert_matches_torch([shape], lambda x, op=op: getattr(x, op)(dim, unbiased, keepdim))
        assert_matches_torch([shape], lambda x, op=op: getattr(x, op)(dim, unbiased))
        assert_matches_torch([shape], lambda x, op=op: getattr(x, op)(unbiased))
        assert_matches_torch([shape], lambda x, op=op: getattr(x, op)(dim, keepdim=keepdim, correction=0))


def test_var_refuses_unbiased_with_correction_and_a_non_bool_unbiased() -> None:
    x = gu.randn(3, 4)
    with pytest.raises(TypeError, match="unbiased or correction"):
        x.var(1, True, correction=0)
    with pytest.raises(TypeError, match="unbiased .* must be a bool"):
        x.std(1, 0)
