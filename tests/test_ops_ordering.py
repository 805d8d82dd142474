"""Ordering, cumulative and rearranging ops (groundup/ops/ordering.py, groundup/ops/cumulative.py):
values and gradients against torch, float64 finite differences, ties and zeros, and the errors.

Oracles: torch (``assert_matches_torch``: float32 and float64, values, dtypes, gradients of a random
weighting of every float output) and central differences (``check_grad``).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import Backend, assert_matches_torch, check_grad
from hypothesis import given
from hypothesis import strategies as st

import groundup as gu

torch = pytest.importorskip("torch")

rng = np.random.default_rng(0)
ZEROS = np.array([[1.5, 0.0, 2.0, -1.0, 0.5],      # one zero mid-row
                  [0.0, 0.0, 3.0, 1.0, -2.0],      # two zeros
                  [2.0, -0.5, 1.5, 1.2, 0.0],      # a zero at the end
                  [0.7, 1.1, -1.3, 0.9, 1.4]])     # no zero
TIES = np.array([[1.0, 3.0, 1.0, 2.0, 3.0],
                 [2.0, 2.0, 2.0, 0.5, 2.0],
                 [-1.0, 4.0, -1.0, 4.0, 0.0]])
DISTINCT = rng.permutation(24).reshape(2, 3, 4) * 0.37 - 4.0     # no ties: any sort order is unique
INDEX = np.array([2, 0, 2, 1])


# ------------------------------------------------------------------ against torch, one line per op
# name: (inputs, fn on torch or groundup tensors given the library as ``lib``)
CASES = {
    "cumsum": ([(3, 4)], lambda lib, x: x.cumsum(1)),
    "cumsum-neg-dim": ([(2, 3, 4)], lambda lib, x: lib.cumsum(x, -2)),
    "cumsum-0d": ([()], lambda lib, x: x.cumsum(0)),
    "cumprod": ([(3, 4)], lambda lib, x: x.cumprod(-1)),
    "cumprod-zeros": ([ZEROS], lambda lib, x: x.cumprod(1)),
    "cumprod-zeros-dim0": ([ZEROS], lambda lib, x: lib.cumprod(x, 0)),
    "prod": ([(3, 4)], lambda lib, x: x.prod()),
    "prod-dim": ([(3, 4)], lambda lib, x: x.prod(-1)),
    "prod-keepdim": ([(2, 3, 4)], lambda lib, x: lib.prod(x, 1, keepdim=True)),
    "prod-zeros": ([ZEROS], lambda lib, x: x.prod(1)),
    "prod-zeros-dim0": ([ZEROS], lambda lib, x: x.prod(0)),
    "prod-zeros-all": ([ZEROS[:1]], lambda lib, x: x.prod()),
    "prod-zeros-two": ([ZEROS[1:2]], lambda lib, x: x.prod()),
    "flip": ([(2, 3, 4)], lambda lib, x: x.flip(0)),
    "flip-dims": ([(2, 3, 4)], lambda lib, x: lib.flip(x, (0, -1))),
    "roll": ([(3, 4)], lambda lib, x: x.roll(1, 1)),
    "roll-dims": ([(2, 3, 4)], lambda lib, x: lib.roll(x, (2, -1), (0, 2))),
    "roll-flat": ([(3, 4)], lambda lib, x: x.roll(5)),
    "diff": ([(3, 5)], lambda lib, x: x.diff()),
    "diff-n2-dim0": ([(4, 3)], lambda lib, x: lib.diff(x, n=2, dim=0)),
    "diff-prepend-append": ([(3, 4), (3, 1), (3, 2)], lambda lib, x, p, a: x.diff(dim=-1, prepend=p, append=a)),
    "sort": ([DISTINCT], lambda lib, x: x.sort()),
    "sort-desc-dim0": ([DISTINCT], lambda lib, x: lib.sort(x, dim=0, descending=True)),
    "sort-ties": ([TIES], lambda lib, x: x.sort(dim=1, stable=True)),
    "sort-ties-desc": ([TIES], lambda lib, x: x.sort(dim=-1, descending=True, stable=True)),
    "sort-ties-dim0": ([TIES], lambda lib, x: lib.sort(x, dim=0, stable=True)),
    "argsort": ([DISTINCT], lambda lib, x: x.argsort(dim=1)),
    "argsort-ties-desc": ([TIES], lambda lib, x: lib.argsort(x, descending=True, stable=True)),
    "topk": ([DISTINCT], lambda lib, x: x.topk(2)),
    "topk-smallest-dim0": ([DISTINCT], lambda lib, x: lib.topk(x, 1, dim=0, largest=False)),
    "topk-all": ([DISTINCT], lambda lib, x: x.topk(4, dim=-1)),
    "norm": ([(3, 4)], lambda lib, x: x.norm()),
    "norm-dim": ([(3, 4)], lambda lib, x: x.norm(dim=1)),
    "norm-p1": ([(3, 4)], lambda lib, x: x.norm(1, dim=0, keepdim=True)),
    "norm-p3": ([(3, 4)], lambda lib, x: x.norm(3, dim=-1)),
    "norm-inf": ([(3, 4)], lambda lib, x: x.norm(math.inf, dim=1)),
    "norm-inf-ties": ([TIES], lambda lib, x: x.norm(math.inf)),
    "norm-minus-inf": ([(3, 4)], lambda lib, x: x.norm(-math.inf, dim=1)),
    "norm-p0": ([ZEROS], lambda lib, x: x.norm(0, dim=1)),
    "norm-fro": ([(2, 3, 4)], lambda lib, x: lib.norm(x, "fro", dim=(1, 2))),
    "norm-at-zero": ([ZEROS * (np.arange(5) < 2)], lambda lib, x: x.norm(dim=0)),
    "norm-p3-at-zero": ([np.zeros((2, 3))], lambda lib, x: x.norm(3, dim=1)),
    "amin": ([(3, 4)], lambda lib, x: x.amin()),
    "amin-dim": ([(2, 3, 4)], lambda lib, x: lib.amin(x, -1)),
    "amin-dims-keepdim": ([(2, 3, 4)], lambda lib, x: x.amin((0, 2), keepdim=True)),
    "amin-ties": ([TIES], lambda lib, x: x.amin(1)),
    "index_select": ([(3, 4)], lambda lib, x: x.index_select(1, lib.tensor(INDEX))),
    "index_select-dim0": ([(3, 4)], lambda lib, x: lib.index_select(x, 0, lib.tensor([2, 2, 0]))),
    "index_select-neg-dim": ([(2, 3, 4)], lambda lib, x: x.index_select(-1, lib.tensor(INDEX))),
    "index_select-0d-index": ([(3, 4)], lambda lib, x: x.index_select(0, lib.tensor(1))),
    "unbind": ([(2, 3, 4)], lambda lib, x: x.unbind(1)),
    "unbind-neg": ([(2, 3)], lambda lib, x: lib.unbind(x, -1)),
    "movedim": ([(2, 3, 4)], lambda lib, x: x.movedim(0, 2)),
    "movedim-tuple": ([(2, 3, 4, 5)], lambda lib, x: lib.movedim(x, (0, 1), (-1, 0))),
    "moveaxis": ([(2, 3, 4)], lambda lib, x: lib.moveaxis(x, -1, 0)),
    "swapaxes": ([(2, 3, 4)], lambda lib, x: x.swapaxes(0, -1)),
    "swapdims": ([(2, 3, 4)], lambda lib, x: lib.swapdims(x, 1, 2)),
    "narrow": ([(3, 5)], lambda lib, x: x.narrow(1, 1, 3)),
    "narrow-neg-start": ([(4, 3)], lambda lib, x: lib.narrow(x, 0, -3, 2)),
    "outer": ([(3,), (4,)], lambda lib, x, y: lib.outer(x, y)),
    "outer-method": ([(2,), (5,)], lambda lib, x, y: x.outer(y)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_matches_torch(name: str, backend: Backend) -> None:
    inputs, fn = CASES[name]
    assert_matches_torch(inputs, lambda *t: fn(torch, *t), lambda *t: fn(gu, *t), device=backend.device)


INT = rng.integers(-3, 4, size=(3, 4))


@pytest.mark.parametrize("name", ["cumsum", "cumsum-neg-dim", "cumprod", "prod", "prod-dim", "flip-dims", "roll",
                                  "diff", "sort-ties", "sort-ties-desc", "argsort-ties-desc", "topk-all", "amin-dim",
                                  "index_select", "unbind", "movedim", "narrow", "swapaxes"])
def test_int64_matches_torch(name: str) -> None:
    """The same ops on int64 (no gradient): values and dtypes (sums and products stay int64)."""
    _, fn = CASES[name]
    data = INT.reshape(3, 2, 2) if name in ("cumsum-neg-dim", "movedim") else INT
    if name == "topk-all":
        data = rng.permutation(12).reshape(3, 4) - 5           # torch's topk orders ties its own way
    assert_matches_torch([data], lambda t: fn(torch, t), lambda t: fn(gu, t))


def test_int32_and_bool_accumulate_as_int64() -> None:
    x = np.array([[1, 2, 3], [4, 5, 6]], dtype=np.int32)
    for fn in (lambda lib, t: t.cumsum(1), lambda lib, t: t.cumprod(0), lambda lib, t: t.prod(),
               lambda lib, t: lib.prod(t, 1, dtype=lib.float64), lambda lib, t: (t > 2).cumsum(1),
               lambda lib, t: (t > 2).diff(dim=1)):
        assert_matches_torch([x], lambda t, fn=fn: fn(torch, t), lambda t, fn=fn: fn(gu, t))


def test_nonzero_matches_torch() -> None:
    for data in (ZEROS, np.zeros((2, 0)), np.array(5.0), np.array(0.0), INT > 0):
        ours, theirs = gu.tensor(data), torch.tensor(data)
        np.testing.assert_array_equal(ours.nonzero().data, theirs.nonzero().numpy())
        assert ours.nonzero().dtype == np.int64
        for a, b in zip(gu.nonzero(ours, as_tuple=True), torch.nonzero(theirs, as_tuple=True), strict=True):
            np.testing.assert_array_equal(a.data, b.numpy())
    x = gu.tensor(ZEROS, requires_grad=True)
    assert not x.nonzero().requires_grad
    np.testing.assert_array_equal(x[x.nonzero(as_tuple=True)].data, ZEROS[ZEROS != 0])


def test_sort_values_with_ties_and_torch_default() -> None:
    """Without stable=True torch may order ties differently; the values still match, and ours keep the
    input's order among equal values."""
    for descending in (False, True):
        values, indices = gu.tensor(TIES).sort(descending=descending)
        theirs = torch.tensor(TIES).sort(descending=descending)
        np.testing.assert_array_equal(values.data, theirs.values.numpy())
        np.testing.assert_array_equal(np.take_along_axis(TIES, indices.data, 1), values.data)
        for row, idx in zip(values.data, indices.data):
            for v in np.unique(row):
                assert list(idx[row == v]) == sorted(idx[row == v])
    top = gu.tensor(TIES).topk(2)
    np.testing.assert_array_equal(top.values.data, torch.tensor(TIES).topk(2).values.numpy())


def test_result_types() -> None:
    x = gu.randn(3, 4)
    for result in (x.sort(), x.topk(2), gu.sort(x, 0), gu.topk(x, 1, largest=False)):
        values, indices = result
        assert result.values is values and result.indices is indices
        assert indices.dtype == np.int64 and values.dtype == x.dtype
    assert isinstance(x.unbind(), tuple) and len(x.unbind()) == 3
    assert x.topk(2, sorted=False).values.shape == (3, 2)
    s = gu.tensor(3.0).sort()
    assert s.values.shape == () and s.indices.item() == 0


def test_flip_is_a_copy_narrow_is_a_view() -> None:
    x = gu.arange(6).reshape(2, 3)
    y = x.flip(1)
    y[0, 0] = 100
    assert x[0, 2].item() == 2
    z = x.narrow(1, 0, 2)
    assert z.data.base is not None


# ------------------------------------------------------------------ finite differences, float64
GRADS = {
    "cumsum": (lambda x: x.cumsum(-1), (3, 4)),
    "cumsum-dim0": (lambda x: gu.cumsum(x, 0), (3, 2, 2)),
    "cumprod": (lambda x: x.cumprod(1), (3, 4)),
    "cumprod-zeros": (lambda x: x.cumprod(1), ZEROS),
    "cumprod-zeros-dim0": (lambda x: x.cumprod(0), ZEROS),
    "prod": (lambda x: x.prod(), (2, 3)),
    "prod-dim-zeros": (lambda x: x.prod(1), ZEROS),
    "prod-keepdim-zeros": (lambda x: x.prod(0, keepdim=True), ZEROS),
    "flip": (lambda x: x.flip(0, 2), (2, 3, 2)),
    "roll": (lambda x: x.roll((1, -2), (0, 1)), (3, 4)),
    "diff": (lambda x: x.diff(n=2, dim=0), (5, 2)),
    "sort": (lambda x: x.sort(dim=0, descending=True), DISTINCT),
    "topk": (lambda x: x.topk(2, dim=1).values, DISTINCT),
    "norm": (lambda x: x.norm(dim=1), (3, 4)),
    "norm-p3": (lambda x: x.norm(3), (3, 4)),
    "norm-p1": (lambda x: x.norm(1, dim=(0, 1)), DISTINCT[0]),
    "norm-inf": (lambda x: x.norm(math.inf, dim=-1), DISTINCT),
    "amin": (lambda x: x.amin(-1), DISTINCT),
    "index_select": (lambda x: x.index_select(1, gu.tensor(INDEX)), (2, 3)),
    "unbind": (lambda x: x.unbind(1), (2, 3)),
    "movedim": (lambda x: x.movedim((0, 2), (1, 0)), (2, 3, 4)),
    "swapaxes": (lambda x: x.swapdims(0, 1), (2, 3)),
    "narrow": (lambda x: x.narrow(0, 1, 2), (4, 2)),
    "outer": (lambda x, y: gu.outer(x, y), (3,), (2,)),
}


@pytest.mark.parametrize("name", list(GRADS))
def test_grad_finite_differences(name: str, backend: Backend) -> None:
    fn, *inputs = GRADS[name]
    check_grad(fn, *inputs, device=backend.device)


@given(n=st.integers(1, 6), dim=st.integers(-2, 1), zero_at=st.lists(st.integers(0, 11), max_size=3))
def test_cumprod_and_prod_with_zeros_match_torch(n: int, dim: int, zero_at: list[int]) -> None:
    x = np.random.standard_normal((2, n))
    x.reshape(-1)[[i % x.size for i in zero_at]] = 0.0
    assert_matches_torch([x], lambda t: t.cumprod(dim), dtypes=("float64",))
    assert_matches_torch([x], lambda t: t.prod(dim), dtypes=("float64",))


# ------------------------------------------------------------------ errors
def test_bad_input_is_refused_naming_the_op() -> None:
    x = gu.randn(3, 4)
    cases = [
        (lambda: x.cumsum(2), IndexError, "cumsum"),
        (lambda: x.prod((0, 1)), TypeError, "prod"),
        (lambda: x.prod(5), IndexError, "prod"),
        (lambda: x.flip(0, 0), RuntimeError, "flip.*twice"),
        (lambda: x.flip(3), IndexError, "flip"),
        (lambda: x.roll((1, 2), 0), RuntimeError, "roll.*same length"),
        (lambda: x.roll((1, 2)), RuntimeError, "roll"),
        (lambda: gu.tensor(1.0).diff(), RuntimeError, "diff.*one dimension"),
        (lambda: x.diff(n=-1), RuntimeError, "diff"),
        (lambda: x.sort(dim=2), IndexError, "sort"),
        (lambda: x.topk(5), RuntimeError, r"topk: k \(5\)"),
        (lambda: x.topk(-1), RuntimeError, "topk"),
        (lambda: x.topk(2, dim=3), IndexError, "topk"),
        (lambda: gu.arange(4).norm(), RuntimeError, "norm.*floating"),
        (lambda: x.norm("nuc"), ValueError, "norm"),
        (lambda: x.index_select(0, gu.tensor([3])), IndexError, "index_select.*3"),
        (lambda: x.index_select(0, gu.tensor([[0]])), IndexError, "index_select.*1-d"),
        (lambda: x.index_select(0, gu.tensor([0.5])), IndexError, "index_select.*integers"),
        (lambda: x.unbind(2), IndexError, "unbind"),
        (lambda: x.movedim((0, 1), 0), RuntimeError, "movedim.*same length"),
        (lambda: x.movedim((0, 0), (0, 1)), RuntimeError, "movedim.*repeat"),
        (lambda: x.swapaxes(0, 2), IndexError, "transpose"),
        (lambda: x.narrow(1, 2, 3), RuntimeError, "narrow.*exceeds"),
        (lambda: x.narrow(1, 5, 1), IndexError, "narrow"),
        (lambda: gu.outer(x, x), RuntimeError, "outer.*1-d"),
    ]
    for fn, error, match in cases:
        with pytest.raises(error, match=match):
            fn()


def test_docstring_examples_run() -> None:
    import doctest

    from groundup.ops import cumulative, ordering

    for module in (ordering, cumulative):
        result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
        assert result.failed == 0 and result.attempted >= 3, f"{module.__name__}: {result}"
