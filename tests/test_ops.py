"""Every Tensor op: a float64 finite-difference gradient check on shapes drawn by Hypothesis,
then one line per op against PyTorch (values, shapes, dtypes, gradients; float32 and float64).

Oracles are independent of groundup: central differences (``check_grad``) and torch
(``assert_matches_torch``), both in ``helpers.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import Backend, assert_matches_torch, away_from, check_grad, positive
from hypothesis import example, given
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, mutually_broadcastable_shapes

import groundup as gu

shapes = array_shapes(min_dims=0, max_dims=3, min_side=1, max_side=4)
shapes_1d = array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4)
pairs = mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, min_side=1, max_side=4).map(
    lambda s: s.input_shapes)
BROADCAST_EXAMPLE = ((3, 1), (1, 4))


# ---------------------------------------------------------------- elementwise, gradients
BINARY = {
    "add": lambda x, y: x + y,
    "sub": lambda x, y: x - y,
    "mul": lambda x, y: x * y,
    "div": lambda x, y: x / y,
    "pow": lambda x, y: x**y,
    "maximum": lambda x, y: gu.maximum(x, y),
    "minimum": lambda x, y: gu.minimum(x, y),
    "method_add": lambda x, y: x.add(y),
    "method_mul": lambda x, y: x.mul(y),
}


@pytest.mark.parametrize("op", list(BINARY))
@given(pair=pairs)
@example(pair=BROADCAST_EXAMPLE)
@example(pair=((2, 3, 1), (4,)))
def test_binary_grad(op: str, pair: tuple, backend: Backend) -> None:
    x, y = np.asarray(np.random.standard_normal(pair[0])), np.asarray(np.random.standard_normal(pair[1]))
    if op == "div":
        y = away_from(y, margin=0.5)
    if op == "pow":
        x = positive(pair[0])
    check_grad(BINARY[op], x, y, device=backend.device)


@given(pair=pairs)
@example(pair=BROADCAST_EXAMPLE)
def test_where_grad(pair: tuple, backend: Backend) -> None:
    cond = np.asarray(np.random.standard_normal(np.broadcast_shapes(*pair)) > 0)
    check_grad(lambda c, x, y: gu.where(c, x, y), cond, *pair, device=backend.device)


SCALAR = {
    "add": lambda x: x + 2.5, "radd": lambda x: 2.5 + x, "sub": lambda x: x - 1.5, "rsub": lambda x: 1.5 - x,
    "mul": lambda x: x * -2.0, "rmul": lambda x: 3 * x, "div": lambda x: x / 4.0, "rdiv": lambda x: 2.0 / x,
    "pow2": lambda x: x**2, "pow3": lambda x: x**3, "pow_half": lambda x: x**0.5, "pow_neg": lambda x: x**-1.5,
    "rpow": lambda x: 2.0**x, "neg": lambda x: -x, "neg_method": lambda x: x.neg(),
    "where_scalar": lambda x: gu.where(x > 1.0, x, 0.0),
}


NEEDS_POSITIVE = {"rdiv", "pow_half", "pow_neg"}  # 2.0 / x, x ** 0.5, x ** -1.5


@pytest.mark.parametrize("op", list(SCALAR))
@given(shape=shapes)
def test_scalar_grad(op: str, shape: tuple, backend: Backend) -> None:
    x = positive(shape) if op in NEEDS_POSITIVE else np.asarray(np.random.standard_normal(shape))
    if op == "where_scalar":
        x = away_from(x, (1.0,))
    check_grad(SCALAR[op], x, device=backend.device)


UNARY = {
    "exp": (lambda x: x.exp(), None),
    "log": (lambda x: x.log(), "positive"),
    "sqrt": (lambda x: x.sqrt(), "positive"),
    "rsqrt": (lambda x: x.rsqrt(), "positive"),
    "tanh": (lambda x: x.tanh(), None),
    "sigmoid": (lambda x: x.sigmoid(), None),
    "relu": (lambda x: x.relu(), (0.0,)),
    "abs": (lambda x: x.abs(), (0.0,)),
    "clamp": (lambda x: x.clamp(-0.5, 0.7), (-0.5, 0.7)),
    "clamp_min": (lambda x: x.clamp(min=-0.2), (-0.2,)),
    "clamp_max": (lambda x: x.clamp(max=0.3), (0.3,)),
    "gu_exp": (lambda x: gu.exp(x) + gu.log(x) + gu.sqrt(x), "positive"),
    "gu_tanh": (lambda x: gu.tanh(x) * gu.sigmoid(x), None),
}


@pytest.mark.parametrize("op", list(UNARY))
@given(shape=shapes)
def test_unary_grad(op: str, shape: tuple, backend: Backend) -> None:
    fn, domain = UNARY[op]
    if domain == "positive":
        x = positive(shape)
    elif domain is None:
        x = np.asarray(np.random.standard_normal(shape))
    else:
        x = away_from(np.random.standard_normal(shape), domain)
    check_grad(fn, x, device=backend.device)


# ---------------------------------------------------------------- matmul, gradients
@given(m=st.integers(1, 4), k=st.integers(1, 4), n=st.integers(1, 4), b=st.integers(1, 3),
       layout=st.sampled_from(["1d@1d", "1d@2d", "2d@1d", "2d@2d", "3d@3d", "3d@2d", "2d@3d", "1d@3d",
                               "3d@1d", "broadcast"]))
@example(m=3, k=4, n=2, b=2, layout="broadcast")
def test_matmul_grad(m: int, k: int, n: int, b: int, layout: str, backend: Backend) -> None:
    left, right = {
        "1d@1d": ((k,), (k,)), "1d@2d": ((k,), (k, n)), "2d@1d": ((m, k), (k,)), "2d@2d": ((m, k), (k, n)),
        "3d@3d": ((b, m, k), (b, k, n)), "3d@2d": ((b, m, k), (k, n)), "2d@3d": ((m, k), (b, k, n)),
        "1d@3d": ((k,), (b, k, n)), "3d@1d": ((b, m, k), (k,)), "broadcast": ((b, 1, m, k), (3, k, n)),
    }[layout]
    check_grad(lambda x, y: x @ y, left, right, device=backend.device)
    check_grad(lambda x, y: gu.matmul(x, y), left, right, device=backend.device)


# ---------------------------------------------------------------- reductions, gradients
@st.composite
def shape_and_dims(draw: st.DrawFn) -> tuple[tuple[int, ...], object]:
    """A shape and a ``dim`` for it: None, one (maybe negative) int, or a tuple of ints."""
    shape = draw(shapes)
    ndim = max(len(shape), 1)  # torch accepts dim 0 and -1 on a 0-d tensor
    kind = draw(st.sampled_from(["none", "int", "tuple"]))
    if kind == "none":
        return shape, None
    if kind == "int":
        return shape, draw(st.integers(-ndim, ndim - 1))
    axes = draw(st.lists(st.integers(0, ndim - 1), min_size=1, max_size=ndim, unique=True))
    return shape, tuple(axes)


REDUCE = {
    "sum": lambda x, dim, keepdim: x.sum(dim=dim, keepdim=keepdim),
    "mean": lambda x, dim, keepdim: x.mean(dim=dim, keepdim=keepdim),
    "var": lambda x, dim, keepdim: x.var(dim=dim, keepdim=keepdim),
    "var_biased": lambda x, dim, keepdim: x.var(dim=dim, keepdim=keepdim, correction=0),
    "std": lambda x, dim, keepdim: x.std(dim=dim, keepdim=keepdim),
    "logsumexp": lambda x, dim, keepdim: x.logsumexp(dim=dim, keepdim=keepdim),
    "amax": lambda x, dim, keepdim: x.amax(dim=dim, keepdim=keepdim),
}


@pytest.mark.parametrize("op", list(REDUCE))
@given(shape_dim=shape_and_dims(), keepdim=st.booleans())
@example(shape_dim=((3, 4, 2), (0, 2)), keepdim=True)
def test_reduce_grad(op: str, shape_dim: tuple, keepdim: bool, backend: Backend) -> None:
    shape, dim = shape_dim
    axes = range(len(shape)) if dim is None or not shape else ([dim] if isinstance(dim, int) else dim)
    count = int(np.prod([shape[a] for a in axes]))
    if op in ("var", "std") and count < 2:
        return  # Bessel's correction divides by count - 1 = 0: torch gives nan there too
    check_grad(lambda x: REDUCE[op](x, dim, keepdim), shape, device=backend.device)


@pytest.mark.parametrize("mode", ["max", "min"])
@given(shape_dim=shape_and_dims(), keepdim=st.booleans())
def test_max_min_grad(mode: str, shape_dim: tuple, keepdim: bool, backend: Backend) -> None:
    shape, dim = shape_dim
    if isinstance(dim, tuple):
        dim = dim[0]  # torch's max/min take one dim; tuples go through amax

    def fn(x: gu.Tensor) -> gu.Tensor:
        out = getattr(x, mode)() if dim is None else getattr(x, mode)(dim=dim, keepdim=keepdim)
        return out if dim is None else out.values

    check_grad(fn, shape, device=backend.device)


# ---------------------------------------------------------------- movement, gradients
@given(shape=shapes, data=st.data())
def test_reshape_family_grad(shape: tuple, data: st.DataObject, backend: Backend) -> None:
    size = int(np.prod(shape))
    dev = backend.device
    check_grad(lambda x: x.reshape(-1), shape, device=dev)
    check_grad(lambda x: x.reshape(size, 1).view(1, size), shape, device=dev)
    check_grad(lambda x: x.view(shape[::-1] if shape else ()), shape, device=dev)
    check_grad(lambda x: x.flatten(), shape, device=dev)
    if len(shape) >= 2:
        check_grad(lambda x: x.flatten(1), shape, device=dev)
        check_grad(lambda x: x.flatten(0, -2), shape, device=dev)
    dim = data.draw(st.integers(-len(shape) - 1, len(shape)))
    check_grad(lambda x: x.unsqueeze(dim), shape, device=dev)
    check_grad(lambda x: x.unsqueeze(dim).squeeze(dim), shape, device=dev)
    check_grad(lambda x: x.squeeze(), shape, device=dev)


@given(shape=shapes_1d, data=st.data())
def test_permute_transpose_grad(shape: tuple, data: st.DataObject, backend: Backend) -> None:
    ndim = len(shape)
    dims = data.draw(st.permutations(range(ndim)))
    d0, d1 = data.draw(st.integers(-ndim, ndim - 1)), data.draw(st.integers(-ndim, ndim - 1))
    check_grad(lambda x: x.permute(*dims), shape, device=backend.device)
    check_grad(lambda x: x.permute(dims), shape, device=backend.device)
    check_grad(lambda x: x.transpose(d0, d1), shape, device=backend.device)
    check_grad(lambda x: x.T, shape, device=backend.device)
    if ndim >= 2:
        check_grad(lambda x: x.mT, shape, device=backend.device)


@given(shape=shapes_1d, data=st.data())
def test_expand_repeat_grad(shape: tuple, data: st.DataObject, backend: Backend) -> None:
    ones = tuple(1 for _ in shape)
    target = tuple(data.draw(st.integers(1, 3)) for _ in shape)
    lead = data.draw(st.integers(1, 3))
    repeats = tuple(data.draw(st.integers(1, 3)) for _ in range(len(shape) + data.draw(st.integers(0, 1))))
    check_grad(lambda x: x.expand(lead, *target), ones, device=backend.device)
    check_grad(lambda x: x.expand(lead, *[-1] * len(shape)), shape, device=backend.device)
    check_grad(lambda x, y: x.expand_as(y), ones, (lead, *target), device=backend.device)
    check_grad(lambda x: x.repeat(*repeats), shape, device=backend.device)


@given(shape=shapes_1d, data=st.data(), count=st.integers(1, 3))
def test_cat_stack_grad(shape: tuple, data: st.DataObject, count: int, backend: Backend) -> None:
    ndim = len(shape)
    dim = data.draw(st.integers(-ndim, ndim - 1))
    sizes = [data.draw(st.integers(1, 3)) for _ in range(count)]
    parts = []
    for size in sizes:
        part = list(shape)
        part[dim] = size
        parts.append(tuple(part))
    check_grad(lambda *xs: gu.cat(xs, dim=dim), *parts, device=backend.device)
    new_dim = data.draw(st.integers(-ndim - 1, ndim))
    check_grad(lambda *xs: gu.stack(xs, dim=new_dim), *[shape] * count, device=backend.device)


@given(shape=shapes_1d, data=st.data())
def test_split_chunk_grad(shape: tuple, data: st.DataObject, backend: Backend) -> None:
    ndim = len(shape)
    dim = data.draw(st.integers(-ndim, ndim - 1))
    size = data.draw(st.integers(1, 4))
    chunks = data.draw(st.integers(1, 4))
    n = shape[dim]
    first = data.draw(st.integers(0, n))
    check_grad(lambda x: x.split(size, dim=dim), shape, device=backend.device)
    check_grad(lambda x: x.split([first, n - first], dim=dim), shape, device=backend.device)
    check_grad(lambda x: x.chunk(chunks, dim=dim), shape, device=backend.device)


INDEX = {
    "int": lambda x: x[1],
    "negative_int": lambda x: x[-1, 0],
    "slice": lambda x: x[1:, ::2],
    "ellipsis_none": lambda x: x[..., None, 1:3],
    "int_array_repeats": lambda x: x[[0, 2, 0, 0]],
    "int_array_2d": lambda x: x[np.array([[0, 1], [1, 1]])],
    "int_array_distinct": lambda x: x[np.array([2, 0])],                   # the backward assigns
    "int_array_2d_distinct": lambda x: x[np.array([[2], [0]])],
    "negative_repeats": lambda x: x[np.array([-1, 2, 0])],                 # -1 and 2 are the same row
    "int_array_empty": lambda x: x[np.array([], dtype=np.int64)] * 1.0,
    "pair_arrays_repeats": lambda x: x[[0, 0, 2], [1, 1, 3]],
    "mixed": lambda x: x[1:, [3, 0, 3]],
    "tensor_index": lambda x: x[gu.tensor([2, 2, 1])],
    "bool_mask": lambda x: x[x.detach() > 0],
    "bool_rows": lambda x: x[np.array([True, False, True])],
}


@pytest.mark.parametrize("case", list(INDEX))
def test_index_grad(case: str, backend: Backend) -> None:
    check_grad(INDEX[case], (3, 4), device=backend.device)


@given(shape=array_shapes(min_dims=2, max_dims=3, min_side=1, max_side=4), diagonal=st.integers(-2, 2))
def test_tril_triu_masked_fill_gather_grad(shape: tuple, diagonal: int, backend: Backend) -> None:
    dev = backend.device
    check_grad(lambda x: x.tril(diagonal), shape, device=dev)
    check_grad(lambda x: x.triu(diagonal), shape, device=dev)
    check_grad(lambda x: gu.tril(x, diagonal) + gu.triu(x, diagonal + 1), shape, device=dev)
    mask = np.random.standard_normal(shape[-1:]) > 0  # broadcasts over the leading dims
    check_grad(lambda x, m: x.masked_fill(m, -3.0), shape, mask, device=dev)
    index = np.random.randint(0, shape[-1], size=shape[:-1] + (5,))  # repeated indices accumulate
    check_grad(lambda x, i: x.gather(-1, i), shape, index, device=dev)
    index0 = np.random.randint(0, shape[0], size=(3,) + shape[1:])
    check_grad(lambda x, i: x.gather(0, i), shape, index0, device=dev)


# ---------------------------------------------------------------- parity with PyTorch, one line per op
def _torch():  # noqa: ANN202 - the module, imported lazily so the core suite needs only NumPy
    return pytest.importorskip("torch")


P = positive((3, 4))
TORCH_CASES = {
    # elementwise, with broadcasting and scalars
    "add": ([(3, 1), (1, 4)], lambda x, y: x + y),
    "sub": ([(3, 4), (4,)], lambda x, y: x - y),
    "mul": ([(2, 3, 4), (3, 1)], lambda x, y: x * y),
    "div": ([(3, 4), away_from(np.random.standard_normal((1, 4)), margin=0.5)], lambda x, y: x / y),
    "pow": ([P, (3, 4)], lambda x, y: x**y),
    "radd": ([(3, 4)], lambda x: 1.5 + x),
    "rsub": ([(3, 4)], lambda x: 1.5 - x),
    "rmul": ([(3, 4)], lambda x: 0.5 * x),
    "rdiv": ([P], lambda x: 2.0 / x),
    "rpow": ([(3, 4)], lambda x: 2.0**x),
    "int_scalar": ([(3, 4)], lambda x: x * 2 + 1 - 3 / x),
    "pow_scalar": ([P], lambda x: x**2 + x**0.5 + x**-1.5 + x**3),
    "neg": ([(3, 4)], lambda x: -x),
    "exp": ([(3, 4)], lambda x: x.exp()),
    "log": ([P], lambda x: x.log()),
    "sqrt": ([P], lambda x: x.sqrt()),
    "rsqrt": ([P], lambda x: x.rsqrt()),
    "tanh": ([(3, 4)], lambda x: x.tanh()),
    "sigmoid": ([(3, 4)], lambda x: x.sigmoid()),
    "sigmoid_large": ([np.array([-100.0, -20.0, 0.0, 20.0, 100.0])], lambda x: x.sigmoid()),
    "relu": ([away_from(np.random.standard_normal((3, 4)))], lambda x: x.relu()),
    "relu_at_kink": ([np.array([-1.0, 0.0, 2.0])], lambda x: x.relu()),
    "abs_at_kink": ([np.array([-1.0, 0.0, 2.0])], lambda x: x.abs()),
    "clamp_at_bounds": ([np.array([-0.5, 0.0, 0.5, 0.7])], lambda x: x.clamp(-0.5, 0.5)),
    "pow_int_exponent_negative_base": ([(3, 4)], lambda x: x**3 + x**2.0 + x**-2),
    "abs": ([away_from(np.random.standard_normal((3, 4)))], lambda x: x.abs()),
    "clamp": ([away_from(np.random.standard_normal((3, 4)), (-0.5, 0.5))], lambda x: x.clamp(-0.5, 0.5)),
    "clamp_min": ([away_from(np.random.standard_normal((3, 4)))], lambda x: x.clamp(min=0.0)),
    "clip": ([away_from(np.random.standard_normal((3, 4)))], lambda x: x.clip(max=0.0)),
    "maximum": ([(3, 1), (1, 4)], lambda x, y: x.maximum(y)),
    "minimum": ([(3, 4), (4,)], lambda x, y: x.minimum(y)),
    "max_other": ([(3, 4), (3, 4)], lambda x, y: x.max(y)),
    "maximum_ties": ([np.ones((2, 3)), np.ones((2, 3))], lambda x, y: x.maximum(y)),
    "masked_fill": ([(3, 4), np.random.standard_normal(4) > 0], lambda x, m: x.masked_fill(m, -1e9)),
    "tril": ([(4, 5)], lambda x: x.tril(-1)),
    "triu": ([(2, 4, 5)], lambda x: x.triu(1)),
    "gather": ([(3, 5), np.random.randint(0, 5, (3, 7))], lambda x, i: x.gather(1, i)),
    "float": ([(3, 4)], lambda x: x.float() * 2),
    "double": ([(3, 4)], lambda x: x.double() * 2),
    "clone": ([(3, 4)], lambda x: x.clone() * x),
    # matmul
    "matmul_1d_1d": ([(4,), (4,)], lambda x, y: x @ y),
    "matmul_1d_2d": ([(4,), (4, 3)], lambda x, y: x @ y),
    "matmul_2d_1d": ([(3, 4), (4,)], lambda x, y: x @ y),
    "matmul_2d": ([(3, 4), (4, 5)], lambda x, y: x.matmul(y)),
    "matmul_batched": ([(2, 3, 4), (2, 4, 5)], lambda x, y: x @ y),
    "matmul_weight": ([(2, 3, 4), (4, 5)], lambda x, y: x @ y),
    "matmul_broadcast": ([(2, 1, 3, 4), (3, 4, 5)], lambda x, y: x @ y),
    "matmul_1d_3d": ([(4,), (2, 4, 5)], lambda x, y: x @ y),
    # reductions
    "sum": ([(3, 4)], lambda x: x.sum()),
    "sum_dim": ([(2, 3, 4)], lambda x: x.sum(dim=1)),
    "sum_tuple": ([(2, 3, 4)], lambda x: x.sum(dim=(0, 2), keepdim=True)),
    "mean": ([(2, 3, 4)], lambda x: x.mean(dim=-1, keepdim=True)),
    "mean_tuple": ([(2, 3, 4)], lambda x: x.mean(dim=(0, 1))),
    "max": ([(3, 4)], lambda x: x.max()),
    "max_dim": ([(3, 4)], lambda x: x.max(dim=1)),
    "max_keepdim": ([(2, 3, 4)], lambda x: x.max(dim=-2, keepdim=True)),
    "min": ([(3, 4)], lambda x: x.min()),
    "min_dim": ([(3, 4)], lambda x: x.min(dim=0)),
    "max_ties": ([np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 0.0]])], lambda x: x.max()),
    "min_ties": ([np.array([[1.0, 0.0, 0.0], [-2.0, -2.0, 0.0]])], lambda x: x.min()),
    "amax_ties": ([np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 0.0]])], lambda x: x.amax(dim=1)),
    "amax_ties_tuple": ([np.array([[1.0, 3.0, 3.0], [3.0, 2.0, 0.0]])], lambda x: x.amax(dim=(0, 1))),
    "amax": ([(2, 3, 4)], lambda x: x.amax(dim=(0, 2))),
    "var": ([(3, 4)], lambda x: x.var()),
    "var_dim": ([(3, 4)], lambda x: x.var(dim=1, keepdim=True)),
    "var_unbiased": ([(3, 4)], lambda x: x.var(dim=0, unbiased=False)),
    "var_correction": ([(3, 4)], lambda x: x.var(dim=(0, 1), correction=0)),
    "std": ([(3, 4)], lambda x: x.std(dim=0)),
    "logsumexp": ([(3, 4)], lambda x: x.logsumexp(dim=1)),
    "logsumexp_tuple": ([(2, 3, 4)], lambda x: x.logsumexp(dim=(0, 2), keepdim=True)),
    "logsumexp_large": ([np.array([[1000.0, 1000.0], [-1000.0, 0.0]])], lambda x: x.logsumexp(dim=1)),
    "argmax": ([(3, 4)], lambda x: x.argmax()),
    "argmax_keepdim_all": ([(3, 4)], lambda x: x.argmax(keepdim=True)),
    "reduce_0d": ([()], lambda x: x.sum(0) + x.mean(-1) + x.amax(0) + x.logsumexp(0) + x.max(dim=0).values),
    "argmax_dim": ([(3, 4)], lambda x: x.argmax(dim=1)),
    "argmin_keepdim": ([(3, 4)], lambda x: x.argmin(dim=0, keepdim=True)),
    # movement
    "reshape": ([(3, 4)], lambda x: x.reshape(2, -1, 3)),
    "reshape_tuple": ([(3, 4)], lambda x: x.reshape((4, 3))),
    "view": ([(3, 4)], lambda x: x.view(12)),
    "flatten": ([(2, 3, 4)], lambda x: x.flatten(1)),
    "transpose": ([(2, 3, 4)], lambda x: x.transpose(0, 2)),
    "permute": ([(2, 3, 4)], lambda x: x.permute(2, 0, 1)),
    "T": ([(3, 4)], lambda x: x.T),
    "mT": ([(2, 3, 4)], lambda x: x.mT),
    "squeeze": ([(3, 1, 4, 1)], lambda x: x.squeeze()),
    "squeeze_dim": ([(3, 1, 4, 1)], lambda x: x.squeeze(1)),
    "squeeze_noop": ([(3, 4)], lambda x: x.squeeze(0)),
    "unsqueeze": ([(3, 4)], lambda x: x.unsqueeze(-1)),
    "expand": ([(3, 1)], lambda x: x.expand(2, 3, 4)),
    "expand_minus1": ([(3, 1)], lambda x: x.expand(-1, 4)),
    "repeat": ([(2, 3)], lambda x: x.repeat(2, 1, 3)),
    "split": ([(5, 3)], lambda x: x.split(2)),
    "split_sizes": ([(5, 3)], lambda x: x.split([1, 4], dim=0)),
    "chunk": ([(3, 7)], lambda x: x.chunk(3, dim=1)),
    "contiguous": ([(3, 4)], lambda x: x.T.contiguous()),
    # indexing
    "index_int": ([(3, 4)], lambda x: x[1]),
    "index_slice": ([(3, 4)], lambda x: x[1:, ::2]),
    "index_none": ([(3, 4)], lambda x: x[None, :, None, 1]),
    "index_ellipsis": ([(2, 3, 4)], lambda x: x[..., 1]),
    "index_repeats": ([(3, 4)], lambda x: x[[0, 2, 0, 0]]),
    "index_pairs": ([(3, 4)], lambda x: x[[0, 0, 2], [1, 1, 3]]),
    "index_mixed": ([(3, 4)], lambda x: x[1:, [3, 0, 3]]),
    "index_int_tensor": ([(3, 4), np.array([[2, 2], [0, 1]])], lambda x, i: x[i]),
    "index_bool": ([(3, 4), np.random.standard_normal((3, 4)) > 0], lambda x, m: x[m]),
    "index_bool_rows": ([(3, 4), np.array([True, False, True])], lambda x, m: x[m]),
}


@pytest.mark.parametrize("case", list(TORCH_CASES))
def test_matches_torch(case: str, backend: Backend) -> None:
    inputs, fn = TORCH_CASES[case]
    assert_matches_torch(inputs, fn, device=backend.device)


def test_matches_torch_namespace_functions(backend: Backend) -> None:
    """Functions under the package name: the same lambda with ``torch`` or ``gu`` as the module."""
    torch = _torch()
    dev = backend.device
    cond = np.random.standard_normal((3, 4)) > 0
    for mod_fn in [
        lambda m, x, y: m.cat([x, y, x], dim=1),
        lambda m, x, y: m.cat([x, y], dim=-2),
        lambda m, x, y: m.stack([x, y], dim=1),
        lambda m, x, y: m.stack([x, y], dim=-1),
        lambda m, x, y: m.maximum(x, y) + m.minimum(x, y),
        lambda m, x, y: m.matmul(x, y.T),
        lambda m, x, y: m.exp(x) + m.tanh(y) + m.sigmoid(x),
        lambda m, x, y: m.tril(x) + m.triu(y, 1),
        lambda m, x, y: m.clamp(x, -0.3, 0.3) * m.softmax(y, dim=0),
        lambda m, x, y: m.logsumexp(x, dim=1),
    ]:
        assert_matches_torch([(3, 4), (3, 4)], lambda x, y, f=mod_fn: f(torch, x, y),
                             lambda x, y, f=mod_fn: f(gu, x, y), device=dev)
    assert_matches_torch([cond, (3, 4), (3, 1)], lambda c, x, y: torch.where(c, x, y),
                         lambda c, x, y: gu.where(c, x, y), device=dev)
    assert_matches_torch([cond, (3, 4)], lambda c, x: torch.where(c, x, 0.0),
                         lambda c, x: gu.where(c, x, 0.0), device=dev)


COMPARE = {
    "lt": lambda x, y: x < y, "le": lambda x, y: x <= y, "gt": lambda x, y: x > y, "ge": lambda x, y: x >= y,
    "eq": lambda x, y: x == y, "ne": lambda x, y: x != y, "eq_method": lambda x, y: x.eq(y),
    "gt_scalar": lambda x, y: x > 0.5, "and": lambda x, y: (x > 0) & (y > 0), "or": lambda x, y: (x > 0) | (y > 0),
    "invert": lambda x, y: ~(x > y),
}


@pytest.mark.parametrize("op", list(COMPARE))
def test_comparisons_match_torch_and_carry_no_grad(op: str, backend: Backend) -> None:
    x = np.round(np.random.standard_normal((3, 4)), 0)  # rounded so that ties (== and <=) happen
    y = np.round(np.random.standard_normal((4,)), 0)
    assert_matches_torch([x, y], COMPARE[op], device=backend.device, grad=False)
    a = gu.tensor(x, requires_grad=True, device=backend.device)
    out = COMPARE[op](a, gu.tensor(y, device=backend.device))
    assert out.dtype == gu.bool and not out.requires_grad and out._ctx is None


def test_integer_tensors_promote_like_torch() -> None:
    torch = _torch()
    for fn in (lambda x: x**0.5, lambda x: x**2, lambda x: x / 2, lambda x: x * 1.5, lambda x: x.sum(),
               lambda x: x.exp(), lambda x: x.sqrt(), lambda x: 2.0**x):
        ours, theirs = fn(gu.arange(1, 5)), fn(torch.arange(1, 5))
        assert str(ours.dtype) == str(theirs.dtype).removeprefix("torch."), f"{ours.dtype} vs {theirs.dtype}"
        np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-6)


def test_argmax_argmin_carry_no_grad() -> None:
    x = gu.randn(3, 4, requires_grad=True)
    for out in (x.argmax(), x.argmin(dim=1), gu.argmax(x, dim=0), gu.argmin(x), x.max(dim=1).indices):
        assert out.dtype == gu.int64 and not out.requires_grad
