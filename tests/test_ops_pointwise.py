"""The pointwise ops of ``ops/pointwise.py`` and ``ops/pointwise_methods.py``: each against torch
(values, shapes, dtypes and gradients, float32 and float64, broadcasting), integer and bool dtype
rules, float64 finite differences for every differentiable op (on NumPy, and CuPy with a GPU),
and the errors for bad input.
"""

from __future__ import annotations

import doctest
import importlib

import numpy as np
import pytest
import torch
from helpers import Backend, assert_matches_torch, away_from, check_grad

import groundup as gu
from groundup.backend import to_numpy

BROADCAST = ((3, 1), (1, 4))


def uniform(low: float, high: float, shape: tuple[int, ...] = (3, 4)) -> np.ndarray:
    return np.random.uniform(low, high, shape)


def off_integers(x: np.ndarray, shift: float = 0.0, margin: float = 1e-2) -> np.ndarray:
    """Values at least ``margin`` from every jump of floor / ceil / trunc (shift 0) or round (shift 0.5)."""
    return away_from(x, np.arange(-20, 21) + shift, margin)


def quotient_off_integers(x_shape: tuple[int, ...], y_shape: tuple[int, ...], sign: float = 1.0,
                          ) -> tuple[np.ndarray, np.ndarray]:
    """x and y whose broadcast x / y keeps 0.05 away from integers: remainder and fmod have no jump there."""
    rng = np.random.default_rng(0)
    while True:
        x, y = rng.normal(0, 3, x_shape), sign * rng.uniform(0.5, 2.0, y_shape)
        fraction = np.abs(x / y) % 1
        if np.all((fraction > 0.05) & (fraction < 0.95)):
            return x, y


# ----------------------------------------------------------------------------- unary ops against torch
UNARY = {   # name: (the op on either framework, its input)
    "sin": (lambda x: x.sin(), lambda: (3, 4)),
    "cos": (lambda x: x.cos(), lambda: (3, 4)),
    "tan": (lambda x: x.tan(), lambda: uniform(-1.2, 1.2)),
    "asin": (lambda x: x.asin(), lambda: uniform(-0.9, 0.9)),
    "acos": (lambda x: x.acos(), lambda: uniform(-0.9, 0.9)),
    "atan": (lambda x: x.atan(), lambda: np.random.normal(0, 3, (3, 4))),
    "sinh": (lambda x: x.sinh(), lambda: (3, 4)),
    "cosh": (lambda x: x.cosh(), lambda: (3, 4)),
    "log1p": (lambda x: x.log1p(), lambda: uniform(-0.9, 3.0)),
    "expm1": (lambda x: x.expm1(), lambda: (3, 4)),
    "erf": (lambda x: x.erf(), lambda: uniform(-3.0, 3.0)),
    "square": (lambda x: x.square(), lambda: (3, 4)),
    "reciprocal": (lambda x: x.reciprocal(), lambda: away_from(np.random.standard_normal((3, 4)), margin=0.3)),
    "floor": (lambda x: x.floor(), lambda: off_integers(np.random.normal(0, 3, (3, 4)))),
    "ceil": (lambda x: x.ceil(), lambda: off_integers(np.random.normal(0, 3, (3, 4)))),
    "trunc": (lambda x: x.trunc(), lambda: off_integers(np.random.normal(0, 3, (3, 4)))),
    "round": (lambda x: x.round(), lambda: off_integers(np.random.normal(0, 3, (3, 4)), 0.5)),
    "round_decimals": (lambda x: x.round(decimals=1), lambda: off_integers(np.random.normal(0, 30, (3, 4)), 0.5) / 10),
    "frac": (lambda x: x.frac(), lambda: off_integers(np.random.normal(0, 3, (3, 4)))),
    "sign": (lambda x: x.sign(), lambda: away_from(np.random.standard_normal((3, 4)))),
}


@pytest.mark.parametrize("op", list(UNARY))
def test_unary_matches_torch(op: str) -> None:
    fn, make = UNARY[op]
    assert_matches_torch([make()], fn)


@pytest.mark.parametrize("op", ["sin", "cos", "tan", "asin", "acos", "atan", "sinh", "cosh", "log1p", "expm1",
                                "erf", "square", "reciprocal", "floor", "ceil", "trunc", "frac", "sign"])
def test_top_level_function_matches_torch(op: str) -> None:
    x = uniform(0.2, 0.9, (2, 3)) + 1.0 * (op in ("floor", "ceil", "trunc", "frac"))
    assert_matches_torch([x], getattr(torch, op), getattr(gu, op))


def test_round_any_all_top_level() -> None:
    """gu.round, gu.any and gu.all exist (torch's names) but stay out of __all__ (Python's builtins)."""
    x = np.array([[0.25, -1.5, 2.5], [0.0, 3.75, -0.5]])
    assert_matches_torch([x], lambda t: torch.round(t, decimals=1), lambda t: gu.round(t, decimals=1))
    assert_matches_torch([x], torch.round, gu.round)
    for name in ("any", "all"):
        assert getattr(gu, name)(gu.tensor(x)).item() == getattr(torch, name)(torch.tensor(x)).item()
        assert name not in gu.__all__
    assert "round" not in gu.__all__ and "sin" in gu.__all__


def test_zero_gradient_ops_give_zeros_like_torch() -> None:
    """floor & co.: the output requires grad, and the gradient is 0 (not None), as torch's."""
    for op in ("floor", "ceil", "round", "trunc", "sign"):
        x = gu.tensor([-1.5, 0.3, 2.7], requires_grad=True)
        out = getattr(x, op)()
        assert out.requires_grad
        (out * 3.0).sum().backward()
        np.testing.assert_array_equal(x.grad.data, np.zeros(3), err_msg=op)


def test_tiny_values_keep_their_digits() -> None:
    """log1p, expm1 and sinh are exact where the composites log(1 + x), e^x - 1, (e^x - e^-x) / 2 are not."""
    x = gu.tensor([1e-12, -3e-10], dtype=gu.float64)
    for op in ("log1p", "expm1", "sinh"):
        np.testing.assert_allclose(getattr(x, op)().data, getattr(torch, op)(torch.tensor(x.data)).numpy(),
                                   rtol=1e-15, err_msg=op)


# ----------------------------------------------------------------------------- binary ops against torch
def _lerp_inputs() -> list:
    return [(3, 1), (1, 4), uniform(0, 1, (3, 4))]


BINARY = {  # name: (torch op, our op or None for the same lambda, inputs)
    "atan2": (torch.atan2, gu.atan2, lambda: [(3, 1), (1, 4)]),
    "atan2_method": (lambda y, x: y.atan2(x), None, lambda: [(2, 3), (2, 3)]),
    "hypot": (torch.hypot, gu.hypot, lambda: [(3, 1), (1, 4)]),
    "hypot_method": (lambda a, b: a.hypot(b), None, lambda: [(2, 3), (3,)]),
    "logaddexp": (torch.logaddexp, gu.logaddexp, lambda: [(3, 1), (1, 4)]),
    "logaddexp_large": (lambda a, b: a.logaddexp(b), None,
                        lambda: [np.array([100.0, -100.0, 0.5]), np.array([99.0, -101.0, 0.5])]),
    "remainder": (torch.remainder, gu.remainder, lambda: list(quotient_off_integers((3, 1), (1, 4)))),
    "remainder_negative": (lambda a, b: a % b, None, lambda: list(quotient_off_integers((3, 4), (4,), -1.0))),
    "fmod": (torch.fmod, gu.fmod, lambda: list(quotient_off_integers((3, 1), (1, 4)))),
    "fmod_negative": (lambda a, b: a.fmod(b), None, lambda: list(quotient_off_integers((3, 4), (3, 4), -1.0))),
    "lerp": (torch.lerp, gu.lerp, _lerp_inputs),
    "lerp_scalar": (lambda a, b: a.lerp(b, 0.3), None, lambda: [(3, 1), (1, 4)]),
    "addcmul": (lambda a, b, c: torch.addcmul(a, b, c, value=0.5), lambda a, b, c: gu.addcmul(a, b, c, value=0.5),
                lambda: [(3, 4), (3, 1), (1, 4)]),
    "addcmul_method": (lambda a, b, c: a.addcmul(b, c), None, lambda: [(4,), (3, 1), (1, 4)]),
    "addcdiv": (lambda a, b, c: torch.addcdiv(a, b, c, value=-2.0), lambda a, b, c: gu.addcdiv(a, b, c, value=-2.0),
                lambda: [(3, 4), (3, 1), away_from(np.random.standard_normal((1, 4)), margin=0.5)]),
    "addcdiv_method": (lambda a, b, c: a.addcdiv(b, c), None,
                       lambda: [(3, 4), (3, 4), away_from(np.random.standard_normal((3, 4)), margin=0.5)]),
    "number_first": (lambda a, b: 2.5 - (a.abs() + 0.5) % 0.75 + 1.5 // (b.abs() + 0.3).detach(), None,
                     lambda: [away_from(np.random.standard_normal((3,)), (-2.0, 2.0)), (3,)]),
}


@pytest.mark.parametrize("op", list(BINARY))
def test_binary_matches_torch(op: str) -> None:
    torch_fn, our_fn, make = BINARY[op]
    assert_matches_torch(make(), torch_fn, our_fn)


def test_reflected_operators_match_torch_values() -> None:
    """``number % t`` and ``number // t``: torch's values. NOTE: torch has no derivative for a number %
    a tensor (its backward raises); ours gives -floor(number / t), checked by finite differences below."""
    x = quotient_off_integers((1,), (3, 4))[1]
    assert_matches_torch([x], lambda t: 2.5 % t, grad=False)
    assert_matches_torch([x], lambda t: 2.5 // t, grad=False)
    assert_matches_torch([x], lambda t: 7 % (t * 3), grad=False)


def test_hypot_and_logaddexp_at_the_extremes_match_torch() -> None:
    """hypot does not overflow where its squares would; logaddexp of equal infinities is that infinity."""
    big = np.array([3e30, -1e38, 0.0, 2.0, np.inf, 3e-40])
    other = np.array([4e30, 1e37, 0.0, -1e-30, 1.0, 4e-40])
    inf = np.inf
    for dtype in ("float32", "float64"):
        same(gu.hypot(gu.tensor(big.astype(dtype)), gu.tensor(other.astype(dtype))),
             torch.hypot(torch.tensor(big.astype(dtype)), torch.tensor(other.astype(dtype))))
        a, b = np.array([-inf, inf, -inf, 1.0, -inf]), np.array([-inf, inf, 2.0, inf, 0.5])
        same(gu.logaddexp(gu.tensor(a.astype(dtype)), gu.tensor(b.astype(dtype))),
             torch.logaddexp(torch.tensor(a.astype(dtype)), torch.tensor(b.astype(dtype))))
    assert_matches_torch([np.array([3e30, -1e30]), np.array([4e30, 2e29])], torch.hypot, gu.hypot,
                         dtypes=("float32",))


def test_zero_dim_operands_broadcast() -> None:
    assert_matches_torch([(), (2, 3)], torch.atan2, gu.atan2)
    assert_matches_torch([(2, 3), ()], torch.logaddexp, gu.logaddexp)
    assert_matches_torch([(), (3,), (2, 1)], torch.lerp, gu.lerp)


def test_floor_divide_values_and_no_derivative_as_torch() -> None:
    """Float ``//``: values as torch's (and as (x / y).floor()); the node is recorded, but its backward
    raises, as torch's does."""
    x, y = quotient_off_integers((3, 1), (1, 4))
    assert_matches_torch([x, y], lambda a, b: a // b, grad=False)
    assert_matches_torch([x, y], torch.floor_divide, gu.floor_divide, grad=False)
    assert_matches_torch([x, y], lambda a, b: a.floor_divide(b), grad=False)
    ours = gu.tensor(x, requires_grad=True) // gu.tensor(y)
    np.testing.assert_array_equal(ours.data, np.floor(x / y))
    theirs = torch.tensor(x, requires_grad=True) // torch.tensor(y)
    assert ours.requires_grad and theirs.requires_grad
    with pytest.raises(RuntimeError, match="not implemented"):
        theirs.sum().backward()
    with pytest.raises(RuntimeError, match="floor_divide: the derivative is not implemented"):
        ours.sum().backward()


def test_float_division_by_zero_gives_torch_values() -> None:
    """x // 0.0 and x % 0.0 are inf / nan as in torch, with no NumPy warning turned error (conftest)."""
    x = np.array([1.0, -1.0, 0.0, 2.5])
    zero = np.zeros(4)
    for op in ("floor_divide", "remainder", "fmod"):
        ours = to_numpy(getattr(gu, op)(gu.tensor(x), gu.tensor(zero)).data)
        np.testing.assert_array_equal(ours, getattr(torch, op)(torch.tensor(x), torch.tensor(zero)).numpy(),
                                      err_msg=op)


# ----------------------------------------------------------------------------- integer and bool dtype rules
def same(ours: gu.Tensor, theirs: torch.Tensor) -> None:
    assert str(ours.dtype) == str(theirs.dtype).removeprefix("torch."), f"dtype {ours.dtype}, torch {theirs.dtype}"
    assert ours.shape == tuple(theirs.shape)
    np.testing.assert_allclose(to_numpy(ours.data), theirs.numpy(), rtol=1e-6)


INT_CASES = {   # name: the op on either framework, for int64 a = [7, -7, 0, 5], b = [2, 3, -4, -5]
    "floordiv": lambda a, b: a // b,
    "mod": lambda a, b: a % b,
    "fmod": lambda a, b: a.fmod(b),
    "floordiv_int_number": lambda a, b: a // 3,
    "rfloordiv": lambda a, b: 20 // b,
    "rmod": lambda a, b: 20 % b,
    "mod_float_number": lambda a, b: a % 2.5,
    "rmod_float_number": lambda a, b: 7.5 % b,
    "floordiv_float_number": lambda a, b: a // 2.0,
    "floordiv_float_tensor": lambda a, b: a // b.float(),
    "sin": lambda a, b: a.sin(),
    "erf": lambda a, b: a.erf(),
    "reciprocal": lambda a, b: b.reciprocal(),
    "atan2": lambda a, b: a.atan2(b),
    "floor": lambda a, b: a.floor(),
    "round": lambda a, b: a.round(),
    "sign": lambda a, b: a.sign(),
    "square": lambda a, b: a.square(),
    "square_bool": lambda a, b: (a > 0).square(),
    "sign_bool": lambda a, b: (a > 0).sign(),
    "isnan": lambda a, b: a.isnan(),
    "isfinite": lambda a, b: a.isfinite(),
    "addcmul": lambda a, b: a.addcmul(a, b, value=2),
    "any": lambda a, b: a.any(),
    "all_dim": lambda a, b: a.reshape(2, 2).all(dim=1),
}


@pytest.mark.parametrize("op", list(INT_CASES))
def test_integer_dtypes_match_torch(op: str) -> None:
    a, b = np.array([7, -7, 0, 5]), np.array([2, 3, -4, -5])
    same(INT_CASES[op](gu.tensor(a), gu.tensor(b)), INT_CASES[op](torch.tensor(a), torch.tensor(b)))


def test_integer_results_are_outside_the_graph() -> None:
    a = gu.tensor([7, -7])
    assert not (a // 2).requires_grad and (a // 2)._ctx is None
    x = gu.tensor([1.5, -2.0], requires_grad=True)
    for out in (x.isnan(), x.isinf(), x.isfinite(), x.any(), x.all(dim=0)):
        assert out.dtype == np.bool_ and not out.requires_grad


def test_nan_inf_tests_match_torch() -> None:
    x = np.array([[1.0, np.nan, np.inf], [-np.inf, 0.0, -2.0]])
    for dtype in ("float32", "float64"):
        for op in ("isnan", "isinf", "isfinite"):
            same(getattr(gu.tensor(x.astype(dtype)), op)(), getattr(torch.tensor(x.astype(dtype)), op)())
            same(getattr(gu, op)(gu.tensor(x.astype(dtype))), getattr(torch, op)(torch.tensor(x.astype(dtype))))


@pytest.mark.parametrize("op", ["any", "all"])
@pytest.mark.parametrize("dim, keepdim", [(None, False), (0, False), (1, True), (-1, False), ((0, 2), False),
                                          ((0, 2), True)])
def test_any_all_match_torch(op: str, dim: int | tuple | None, keepdim: bool) -> None:
    rng = np.random.default_rng(1)
    for x in (rng.integers(0, 2, (2, 3, 4)) * 1.0, rng.integers(0, 3, (2, 3, 4)), rng.integers(0, 2, (2, 3, 4)) > 0,
              np.ones((2, 3, 4))):
        ours, theirs = getattr(gu.tensor(x), op), getattr(torch.tensor(x), op)
        if dim is None:
            same(ours(), theirs())
        else:
            same(ours(dim=dim, keepdim=keepdim), theirs(dim=dim, keepdim=keepdim))


# ----------------------------------------------------------------------------- finite differences (float64)
GRAD = {   # name: (fn, inputs: shapes or arrays)
    "sin": (lambda x: x.sin(), lambda: [(3, 4)]),
    "cos": (lambda x: gu.cos(x), lambda: [(3, 4)]),
    "tan": (lambda x: x.tan(), lambda: [uniform(-1.2, 1.2)]),
    "asin": (lambda x: x.asin(), lambda: [uniform(-0.9, 0.9)]),
    "acos": (lambda x: x.acos(), lambda: [uniform(-0.9, 0.9)]),
    "atan": (lambda x: x.atan(), lambda: [np.random.normal(0, 3, (3, 4))]),
    "sinh": (lambda x: x.sinh(), lambda: [(3, 4)]),
    "cosh": (lambda x: x.cosh(), lambda: [(3, 4)]),
    "log1p": (lambda x: x.log1p(), lambda: [uniform(-0.9, 3.0)]),
    "expm1": (lambda x: x.expm1(), lambda: [(3, 4)]),
    "erf": (lambda x: x.erf(), lambda: [uniform(-3.0, 3.0)]),
    "square": (lambda x: x.square(), lambda: [(3, 4)]),
    "reciprocal": (lambda x: x.reciprocal(), lambda: [away_from(np.random.standard_normal((3, 4)), margin=0.3)]),
    "floor": (lambda x: x.floor() + x, lambda: [off_integers(np.random.normal(0, 3, (3, 4)))]),
    "ceil": (lambda x: x.ceil() * x, lambda: [off_integers(np.random.normal(0, 3, (3, 4)))]),
    "round": (lambda x: x.round(decimals=1) * x, lambda: [off_integers(np.random.normal(0, 30, (3, 4)), 0.5) / 10]),
    "trunc_sign": (lambda x: x.trunc() * x.sign() * x, lambda: [off_integers(np.random.normal(0, 3, (3, 4)))]),
    "frac": (lambda x: x.frac(), lambda: [off_integers(np.random.normal(0, 3, (3, 4)))]),
    "atan2": (lambda y, x: gu.atan2(y, x), lambda: [*BROADCAST]),
    "hypot": (lambda a, b: a.hypot(b), lambda: [*BROADCAST]),
    "logaddexp": (lambda a, b: gu.logaddexp(a, b), lambda: [*BROADCAST]),
    "logaddexp_tie": (lambda a, b: a.logaddexp(b), lambda: [np.array([0.5, -1.0]), np.array([0.5, 2.0])]),
    "logaddexp_inf": (lambda a, b: a.logaddexp(b), lambda: [np.array([-np.inf, 0.3]), np.array([0.5, -np.inf])]),
    "lerp": (lambda a, b, w: a.lerp(b, w), lambda: [(3, 1), (1, 4), (3, 4)]),
    "lerp_scalar": (lambda a, b: gu.lerp(a, b, 0.7), lambda: [*BROADCAST]),
    "addcmul": (lambda a, b, c: a.addcmul(b, c, value=0.5), lambda: [(4,), (3, 1), (1, 4)]),
    "addcdiv": (lambda a, b, c: gu.addcdiv(a, b, c, value=2.0),
                lambda: [(4,), (3, 1), away_from(np.random.standard_normal((1, 4)), margin=0.5)]),
    "remainder": (lambda x, y: x % y, lambda: list(quotient_off_integers((3, 1), (1, 4)))),
    "remainder_negative": (lambda x, y: x.remainder(y), lambda: list(quotient_off_integers((3, 4), (4,), -1.0))),
    "rmod": (lambda y: 2.5 % y, lambda: [quotient_off_integers((1,), (3, 4))[1]]),
    "fmod": (lambda x, y: gu.fmod(x, y), lambda: list(quotient_off_integers((3, 1), (1, 4), -1.0))),
}


@pytest.mark.parametrize("op", list(GRAD))
def test_grad_matches_finite_differences(op: str, backend: Backend) -> None:
    fn, make = GRAD[op]
    check_grad(fn, *make(), device=backend.device)


def test_finite_differences_can_fail() -> None:
    """The oracle is live: a gradient off by a sign (sin's backward given -cos) is caught."""
    from groundup.ops import pointwise

    original = pointwise.Sin.backward
    pointwise.Sin.backward = lambda self, gz: -original(self, gz)
    try:
        with pytest.raises(AssertionError, match="finite differences"):
            check_grad(lambda x: x.sin(), (3,))
    finally:
        pointwise.Sin.backward = original


# ----------------------------------------------------------------------------- bad input
ERRORS = {  # name: (a call that must fail, the exception, a pattern its message matches)
    "floordiv_int_zero": (lambda: gu.tensor([1, 2]) // gu.tensor([1, 0]), ZeroDivisionError, "floor_divide: integer"),
    "mod_int_zero": (lambda: gu.tensor([1, 2]) % 0, ZeroDivisionError, "remainder: integer division by zero"),
    "rmod_int_zero": (lambda: 5 % gu.tensor([0, 2]), ZeroDivisionError, "remainder: integer"),
    "fmod_int_zero": (lambda: gu.fmod(gu.tensor([3]), gu.tensor([0])), ZeroDivisionError, "fmod: integer"),
    "frac_int": (lambda: gu.tensor([1, 2]).frac(), RuntimeError, "frac: not defined for dtype int64"),
    "hypot_int": (lambda: gu.hypot(gu.tensor([3]), gu.tensor([4])), RuntimeError, "hypot: expected floating"),
    "logaddexp_int": (lambda: gu.tensor([3]).logaddexp(gu.tensor([4])), RuntimeError, "logaddexp: expected float"),
    "lerp_int": (lambda: gu.lerp(gu.tensor([1]), gu.tensor([3]), 0.5), RuntimeError, "lerp: expected floating"),
    "lerp_weight": (lambda: gu.tensor([1.0]).lerp(gu.tensor([3.0]), "half"), TypeError, "lerp: weight must be"),
    "addcdiv_int": (lambda: gu.addcdiv(gu.tensor([1.0]), gu.tensor([2]), gu.tensor([3])), RuntimeError,
                    "addcdiv: integer"),
    "broadcast": (lambda: gu.atan2(gu.ones(2, 3), gu.ones(4)), RuntimeError, r"atan2: shapes \(2, 3\) and \(4,\)"),
    "broadcast_mod": (lambda: gu.ones(2) % gu.ones(3), RuntimeError, "remainder: shapes"),
    "broadcast_addcmul": (lambda: gu.ones(2).addcmul(gu.ones(3, 1), gu.ones(1, 3)), RuntimeError, "addcmul: shapes"),
    "not_a_tensor": (lambda: gu.sin(1.0), TypeError, "sin: expected a Tensor, got float"),
    "two_numbers": (lambda: gu.remainder(5, 3), TypeError, "remainder: expected at least one Tensor"),
    "any_dim": (lambda: gu.ones(2, 3).any(dim=2), IndexError, "any: dimension 2 is out of range"),
    "all_dim_twice": (lambda: gu.ones(2, 3).all(dim=(1, -1)), RuntimeError, "all: dim"),
    "round_decimals": (lambda: gu.ones(2).round(decimals=0.5), TypeError, "round: decimals must be an int"),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_bad_input_is_refused_clearly(case: str) -> None:
    call, error, pattern = ERRORS[case]
    with pytest.raises(error, match=pattern):
        call()


def test_docstring_examples_run() -> None:
    module = importlib.import_module("groundup.ops.pointwise_methods")
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted >= 3
