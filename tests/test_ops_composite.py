"""Every non-primitive op against its composite definition through the primitives.

``groundup.ops`` lists the primitives (Add, Mul, PowScalar, Exp, Log, Where, Sum, MaxMin, Reshape,
Permute, Expand, GetItem, MatMul, Cast, ToDevice) and the ops with their own backward that could
be built from them. Here each of those ops is built again from primitives alone (the test walks
the composite's graph and fails on any other Function), and must give the same values and the
same gradients of ``(out * R).sum()`` for a random ``R``, in float64. The catalogue itself is
checked too: every Function in the package is listed exactly once, and every listed name exists.
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import groundup as gu
import groundup.functional as F
from groundup import ops
from groundup.function import Function
from groundup.tensor import Tensor, _topological_order

ROOT = Path(gu.__file__).parent


def resolve(name: str) -> type:
    """``"ops.fused.Softmax"`` -> the class ``groundup.ops.fused.Softmax``."""
    module, _, cls = name.rpartition(".")
    return getattr(importlib.import_module(f"groundup.{module}"), cls)


def catalogue_name(fn: type) -> str:
    return f"{fn.__module__.removeprefix('groundup.')}.{fn.__name__}"


# ----------------------------------------------------------------- composites through primitives only
def const(array: np.ndarray) -> Tensor:
    """A float64 constant (a leaf outside the graph: it adds no node)."""
    return gu.tensor(np.asarray(array, dtype=np.float64))


def neg(x: Tensor) -> Tensor:
    return x * -1.0


def sub(x: Tensor, y: Tensor) -> Tensor:
    return x + y * -1.0


def div(x: Tensor, y: Tensor) -> Tensor:
    return x * y**-1


def tanh(x: Tensor) -> Tensor:
    e = (x * 2.0).exp()
    return (e + -1.0) * (e + 1.0) ** -1


def sigmoid(x: Tensor) -> Tensor:
    return (neg(x).exp() + 1.0) ** -1


def absolute(x: Tensor) -> Tensor:
    return x * const(np.sign(x.data))  # NOTE: sign(0) = 0: the subgradient torch uses at 0


def mean(x: Tensor, dim: int | tuple[int, ...], keepdim: bool = False) -> Tensor:
    dims = (dim,) if isinstance(dim, int) else dim
    count = math.prod(x.shape[d] for d in dims)
    return x.sum(dim=dim, keepdim=keepdim) * (1.0 / count)


def softmax(x: Tensor, dim: int = -1) -> Tensor:
    e = sub(x, x.amax(dim=dim, keepdim=True).detach()).exp()  # shift-invariant: no gradient through the max
    return e * e.sum(dim=dim, keepdim=True) ** -1


def log_softmax(x: Tensor, dim: int = -1) -> Tensor:
    z = sub(x, x.amax(dim=dim, keepdim=True).detach())
    return sub(z, z.exp().sum(dim=dim, keepdim=True).log())


def layer_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float = 1e-5) -> Tensor:
    centered = sub(x, mean(x, -1, keepdim=True))
    var = mean(centered * centered, -1, keepdim=True)
    return centered * (var + eps) ** -0.5 * weight + bias


def erf(x: Tensor, terms: int = 60) -> Tensor:
    """Maclaurin series 2/sqrt(pi) sum (-1)^n x^(2n+1) / (n! (2n+1)); exact to ~1e-13 for |x| < 2.5."""
    total = x * (2 / math.sqrt(math.pi))
    for n in range(1, terms):
        total = total + x ** (2 * n + 1) * ((-1) ** n * 2 / math.sqrt(math.pi) / (math.factorial(n) * (2 * n + 1)))
    return total


def power_series(x: Tensor, coefficients: dict[int, float]) -> Tensor:
    """sum_k c_k x^k, each power one PowScalar (x ** 0 is 1 with the gradient 0)."""
    total = None
    for k, c in coefficients.items():
        term = x**k * c
        total = term if total is None else total + term
    return total


def sin_series(x: Tensor) -> Tensor:
    """Taylor series; exact to ~1e-16 for |x| < 2.5 with 25 terms."""
    return power_series(x, {2 * n + 1: (-1) ** n / math.factorial(2 * n + 1) for n in range(25)})


def cos_series(x: Tensor) -> Tensor:
    return power_series(x, {2 * n: (-1) ** n / math.factorial(2 * n) for n in range(25)})


def asin_series(x: Tensor) -> Tensor:
    """sum C(2n, n) x^(2n+1) / (4^n (2n+1)); exact to ~1e-16 for |x| < 0.5 with 40 terms."""
    return power_series(x, {2 * n + 1: math.comb(2 * n, n) / (4**n * (2 * n + 1)) for n in range(40)})


def atan_series(x: Tensor) -> Tensor:
    """sum (-1)^n x^(2n+1) / (2n+1); exact to ~1e-16 for |x| < 0.5 with 40 terms."""
    return power_series(x, {2 * n + 1: (-1) ** n / (2 * n + 1) for n in range(40)})


def step(x: Tensor, values: np.ndarray) -> Tensor:
    """A piecewise-constant op: its values as a constant, and a zero gradient (x * 0)."""
    return x * 0.0 + const(values)


def stack(parts: list[Tensor]) -> Tensor:
    """Stack on a new first dim as a sum of one-hot placements (Mul with a constant, then Add)."""
    total = None
    for i, part in enumerate(parts):
        onehot = np.zeros((len(parts),) + (1,) * part.ndim)
        onehot[i] = 1.0
        placed = part.reshape(1, *part.shape) * const(onehot)           # (n, *shape), zero but row i
        total = placed if total is None else total + placed
    return total


def place(n_in: int, n_out: int, offset: int) -> Tensor:
    """The (n_in, n_out) 0/1 matrix that puts n_in columns at ``offset`` of n_out (matmul = padding)."""
    matrix = np.zeros((n_in, n_out))
    matrix[np.arange(n_in), offset + np.arange(n_in)] = 1.0
    return const(matrix)


def pad2d(x: Tensor, p: int) -> Tensor:
    """Zero padding of the last two dims by ``p``: two placement matmuls."""
    h, w = x.shape[-2:]
    x = (x.mT @ place(h, h + 2 * p, p)).mT                              # (..., H + 2p, W)
    return x @ place(w, w + 2 * p, p)                                   # (..., H + 2p, W + 2p)


def windows(x: Tensor, k: int, stride: int) -> Tensor:
    """(N, C, H, W) -> (N, C, Ho * Wo, k * k): every k x k window, by one integer-array GetItem."""
    n, c, h, w = x.shape
    ho, wo = (h - k) // stride + 1, (w - k) // stride + 1
    rows = (np.arange(ho)[:, None] * stride + np.arange(k)[None, :])    # (Ho, k)
    cols = (np.arange(wo)[:, None] * stride + np.arange(k)[None, :])    # (Wo, k)
    flat = rows[:, None, :, None] * w + cols[None, :, None, :]          # (Ho, Wo, k, k) into H * W
    return x.reshape(n, c, h * w)[:, :, flat.reshape(ho * wo, k * k)]   # (N, C, Ho * Wo, k * k)


def conv2d(x: Tensor, weight: Tensor, bias: Tensor, stride: int, padding: int, dilation: int) -> Tensor:
    """Cross-correlation as a sum over kernel offsets of strided slices times weight slices."""
    x = pad2d(x, padding)
    n, c, h, w = x.shape
    out_c, _, kh, kw = weight.shape
    ho = (h - dilation * (kh - 1) - 1) // stride + 1
    wo = (w - dilation * (kw - 1) - 1) // stride + 1
    total = None
    for i in range(kh):
        for j in range(kw):
            r0, c0 = i * dilation, j * dilation
            rows, cols = slice(r0, r0 + stride * (ho - 1) + 1, stride), slice(c0, c0 + stride * (wo - 1) + 1, stride)
            patch = x[:, :, rows, cols]                                 # (N, C, Ho, Wo)
            term = patch.permute(0, 2, 3, 1) @ weight[:, :, i, j].mT    # (N, Ho, Wo, O)
            total = term if total is None else total + term
    return total.permute(0, 3, 1, 2) + bias.reshape(1, out_c, 1, 1)     # (N, O, Ho, Wo)


def cross_entropy(logits: Tensor, target: np.ndarray, weight: np.ndarray, ignore_index: int,
                  smoothing: float) -> Tensor:
    """torch's definition: q = (1 - eps) onehot(t) + eps / C, loss_i = -sum_c w_c q_ic log p_ic,
    mean over the kept rows weighted by w[t_i]."""
    n, c = logits.shape
    keep = target != ignore_index
    safe = np.where(keep, target, 0)
    onehot = np.eye(c)[safe]
    q = ((1 - smoothing) * onehot + smoothing / c) * weight[None, :] * keep[:, None]
    losses = neg((log_softmax(logits) * const(q)).sum(dim=1))
    return losses.sum() * (1.0 / float((weight[safe] * keep).sum()))


def rnn_steps(xi: Tensor, h: Tensor, weight_hh: Tensor, bias_hh: Tensor) -> Tensor:
    states = []
    for t in range(xi.shape[0]):
        h = tanh(xi[t] + h @ weight_hh.mT + bias_hh)
        states.append(h)
    return stack(states)                                                # (T, N, H)


def gru_steps(xi: Tensor, h: Tensor, weight_hh: Tensor, bias_hh: Tensor) -> Tensor:
    hidden, states = h.shape[-1], []
    for t in range(xi.shape[0]):
        gh = h @ weight_hh.mT + bias_hh                                 # (N, 3H)
        r = sigmoid(xi[t, :, :hidden] + gh[:, :hidden])
        z = sigmoid(xi[t, :, hidden:2 * hidden] + gh[:, hidden:2 * hidden])
        n = tanh(xi[t, :, 2 * hidden:] + r * gh[:, 2 * hidden:])
        h = sub(n, n * z) + z * h                                       # (1 - z) n + z h
        states.append(h)
    return stack(states)


def lstm_steps(xi: Tensor, h: Tensor, c: Tensor, weight_hh: Tensor, bias_hh: Tensor) -> Tensor:
    hidden, hs, cs = h.shape[-1], [], []
    for t in range(xi.shape[0]):
        pre = xi[t] + h @ weight_hh.mT + bias_hh                        # (N, 4H): gates i, f, g, o
        i, f = sigmoid(pre[:, :hidden]), sigmoid(pre[:, hidden:2 * hidden])
        g, o = tanh(pre[:, 2 * hidden:3 * hidden]), sigmoid(pre[:, 3 * hidden:])
        c = f * c + i * g
        h = o * tanh(c)
        hs.append(h)
        cs.append(c)
    return stack([stack(hs), stack(cs)])                                # (2, T, N, H)


# ----------------------------------------------------------------- the cases
@dataclass(frozen=True)
class Case:
    """``ours`` must end in the op ``op``; ``composite`` must use primitives only."""

    op: str
    inputs: Callable[[np.random.Generator], list[np.ndarray]]
    ours: Callable[..., Tensor]
    composite: Callable[..., Tensor]


def normal(*shape: int) -> Callable[[np.random.Generator], list[np.ndarray]]:
    return lambda rng: [rng.standard_normal(shape)]


def normals(*shapes: tuple[int, ...]) -> Callable[[np.random.Generator], list[np.ndarray]]:
    return lambda rng: [rng.standard_normal(s) for s in shapes]


def positive(*shapes: tuple[int, ...]) -> Callable[[np.random.Generator], list[np.ndarray]]:
    return lambda rng: [rng.uniform(0.5, 2.0, s) for s in shapes]


def away_from_zero(*shape: int) -> Callable[[np.random.Generator], list[np.ndarray]]:
    return lambda rng: [rng.choice([-1.0, 1.0], shape) * rng.uniform(0.1, 2.0, shape)]


def with_ties(rng: np.random.Generator) -> list[np.ndarray]:
    x, y = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    y[0] = x[0]                                                         # ties: torch splits the gradient
    return [x, y]


def with_zeros(rng: np.random.Generator) -> list[np.ndarray]:
    """Rows with one zero, two zeros and none: where the gradient of a product is not out / x."""
    x = rng.standard_normal((3, 5))
    x[0, 2] = x[1, 0] = x[1, 3] = 0.0
    return [x]


def running_product(x: Tensor) -> Tensor:
    """cumprod along the last dim of a 2-D x as a chain of multiplies (exact gradients at zeros)."""
    columns = [x[:, 0]]
    for k in range(1, x.shape[1]):
        columns.append(columns[-1] * x[:, k])                           # (N,)
    return stack(columns).mT                                            # (N, K)


def product(x: Tensor) -> Tensor:
    """The product of a 1-D x as a chain of multiplies."""
    total = x[0]
    for k in range(1, x.shape[0]):
        total = total * x[k]
    return total


MASK = np.array([[True, False, False, True], [False, True, False, False], [True, True, False, False]])
GATHER_INDEX = np.array([[0, 3], [2, 2], [1, 0]])                       # a repeated index accumulates
TOKENS = np.array([[1, 0, 4], [4, 2, 1]])
TARGETS = np.array([1, 0, 3, 3, 2])
SDPA_MASK = np.array([[True, True, False, False], [True, False, True, False], [False, True, True, True]])
LM_TARGETS = np.array([[1, 4, 0], [2, -100, 3]])


def lm_head_composite(x: Tensor, ln_w: Tensor, ln_b: Tensor, weight: Tensor) -> Tensor:
    logits = (layer_norm(x, ln_w, ln_b) @ weight.mT).reshape(-1, weight.shape[0])   # (B*T, V)
    return cross_entropy(logits, LM_TARGETS.reshape(-1), np.ones(weight.shape[0]), -100, 0.0)


CASES: dict[str, Case] = {case_id: case for case_id, case in [
    # --- convenience ops in elementwise.py
    ("Sub", Case("ops.elementwise.Sub", normals((3, 1), (1, 4)), lambda x, y: x - y, sub)),
    ("Neg", Case("ops.elementwise.Neg", normal(3, 4), lambda x: -x, neg)),
    ("Div", Case("ops.elementwise.Div", lambda rng: [rng.standard_normal((3, 1)), away_from_zero(4)(rng)[0]],
                 lambda x, y: x / y, div)),
    ("Pow", Case("ops.elementwise.Pow", lambda rng: [rng.uniform(0.5, 2, (3, 1)), rng.standard_normal((1, 4))],
                 lambda x, y: x**y, lambda x, y: (y * x.log()).exp())),
    ("Sqrt", Case("ops.elementwise.Sqrt", positive((3, 4)), lambda x: x.sqrt(), lambda x: x**0.5)),
    ("Rsqrt", Case("ops.elementwise.Rsqrt", positive((3, 4)), lambda x: x.rsqrt(), lambda x: x**-0.5)),
    ("Tanh", Case("ops.elementwise.Tanh", normal(3, 4), lambda x: x.tanh(), tanh)),
    ("Sigmoid", Case("ops.elementwise.Sigmoid", normal(3, 4), lambda x: x.sigmoid(), sigmoid)),
    ("Relu", Case("ops.elementwise.Relu", away_from_zero(3, 4), lambda x: x.relu(),
                  lambda x: x * const(x.data > 0))),
    ("Abs", Case("ops.elementwise.Abs", lambda rng: [np.array([-1.5, 0.0, 0.3, 2.0])], lambda x: x.abs(), absolute)),
    ("Clamp", Case("ops.elementwise.Clamp", lambda rng: [np.array([-2.0, -0.5, -0.1, 0.2, 0.5, 1.3])],
                   lambda x: x.clamp(-0.5, 0.5),             # NOTE: the values at the bounds pass the gradient
                   lambda x: gu.where(x < -0.5, -0.5, gu.where(x > 0.5, 0.5, x)))),
    ("Maximum", Case("ops.elementwise.Maximum", with_ties, gu.maximum,
                     lambda x, y: (x + y + absolute(sub(x, y))) * 0.5)),
    ("Minimum", Case("ops.elementwise.Minimum", with_ties, gu.minimum,
                     lambda x, y: sub(x + y, absolute(sub(x, y))) * 0.5)),
    ("MaskedFill", Case("ops.elementwise.MaskedFill", normal(3, 4), lambda x: x.masked_fill(gu.tensor(MASK), 3.0),
                        lambda x: gu.where(MASK, 3.0, x))),
    ("Clone", Case("ops.elementwise.Clone", normal(3, 4), lambda x: x.clone(), lambda x: x * 1.0)),
    # --- pointwise maths in pointwise.py: series, exps and logs through primitives
    ("Sin", Case("ops.pointwise.Sin", lambda rng: [rng.uniform(-2, 2, (3, 4))], lambda x: x.sin(), sin_series)),
    ("Cos", Case("ops.pointwise.Cos", lambda rng: [rng.uniform(-2, 2, (3, 4))], lambda x: x.cos(), cos_series)),
    ("Tan", Case("ops.pointwise.Tan", lambda rng: [rng.uniform(-1.2, 1.2, (3, 4))], lambda x: x.tan(),
                 lambda x: sin_series(x) * cos_series(x) ** -1)),
    ("Asin", Case("ops.pointwise.Asin", lambda rng: [rng.uniform(-0.45, 0.45, (3, 4))], lambda x: x.asin(),
                  asin_series)),
    ("Acos", Case("ops.pointwise.Acos", lambda rng: [rng.uniform(-0.45, 0.45, (3, 4))], lambda x: x.acos(),
                  lambda x: neg(asin_series(x)) + math.pi / 2)),
    ("Atan", Case("ops.pointwise.Atan", lambda rng: [rng.uniform(-0.45, 0.45, (3, 4))], lambda x: x.atan(),
                  atan_series)),
    ("Atan2", Case("ops.pointwise.Atan2", lambda rng: [rng.uniform(-0.8, 0.8, (3, 1)), rng.uniform(2, 3, (1, 4))],
                   gu.atan2, lambda y, x: atan_series(y * x**-1))),
    ("Sinh", Case("ops.pointwise.Sinh", normal(3, 4), lambda x: x.sinh(), lambda x: sub(x.exp(), neg(x).exp()) * 0.5)),
    ("Cosh", Case("ops.pointwise.Cosh", normal(3, 4), lambda x: x.cosh(), lambda x: (x.exp() + neg(x).exp()) * 0.5)),
    ("Log1p", Case("ops.pointwise.Log1p", lambda rng: [rng.uniform(-0.5, 2, (3, 4))], lambda x: x.log1p(),
                   lambda x: (x + 1.0).log())),
    ("Expm1", Case("ops.pointwise.Expm1", normal(3, 4), lambda x: x.expm1(), lambda x: x.exp() + -1.0)),
    ("Erf", Case("ops.pointwise.Erf", lambda rng: [rng.uniform(-2, 2, (3, 4))], lambda x: x.erf(), erf)),
    ("Floor", Case("ops.pointwise.PiecewiseConstant", lambda rng: [rng.normal(0, 3, (3, 4))], lambda x: x.floor(),
                   lambda x: step(x, np.floor(x.data)))),
    ("Round", Case("ops.pointwise.PiecewiseConstant", lambda rng: [rng.normal(0, 3, (3, 4))],
                   lambda x: x.round(decimals=1), lambda x: step(x, np.round(x.data, 1)))),
    ("Sign", Case("ops.pointwise.PiecewiseConstant", normal(3, 4), lambda x: x.sign(),
                  lambda x: step(x, np.sign(x.data)))),
    ("Remainder", Case("ops.pointwise.Remainder", lambda rng: [rng.normal(0, 4, (3, 1)), rng.uniform(0.5, 2, (1, 4))],
                       lambda x, y: x % y, lambda x, y: sub(x, const(np.floor(x.data / y.data)) * y))),
    ("Fmod", Case("ops.pointwise.Remainder", lambda rng: [rng.normal(0, 4, (3, 1)), rng.uniform(-2, -0.5, (1, 4))],
                  gu.fmod, lambda x, y: sub(x, const(np.trunc(x.data / y.data)) * y))),
    # --- convenience ops in reduce.py
    ("Mean", Case("ops.reduce.Mean", normal(3, 4, 2), lambda x: x.mean(dim=(0, 2)), lambda x: mean(x, (0, 2)))),
    ("Var", Case("ops.reduce.Var", normal(3, 5), lambda x: x.var(dim=1),
                 lambda x: (sub(x, mean(x, 1, keepdim=True)) ** 2).sum(dim=1) * (1 / 4))),
    ("LogSumExp", Case("ops.reduce.LogSumExp", normal(3, 5), lambda x: x.logsumexp(dim=1),
                       lambda x: (sub(x, x.amax(dim=1, keepdim=True).detach()).exp().sum(dim=1).log()
                                  + x.amax(dim=1).detach()))),
    # --- convenience ops in movement.py
    ("Repeat", Case("ops.movement.Repeat", normal(2, 3), lambda x: x.repeat(2, 3),
                    lambda x: x.reshape(1, 2, 1, 3).expand(2, 2, 3, 3).reshape(4, 9))),
    ("Cat", Case("ops.movement.Cat", normals((2, 3), (2, 2)), lambda a, b: gu.cat([a, b], dim=1),
                 lambda a, b: a @ place(3, 5, 0) + b @ place(2, 5, 3))),
    ("Gather", Case("ops.movement.Gather", normal(3, 4), lambda x: x.gather(1, gu.tensor(GATHER_INDEX)),
                    lambda x: x[np.arange(3)[:, None], GATHER_INDEX])),
    ("Tril", Case("ops.movement.Triangle", normal(2, 3, 4), lambda x: x.tril(),
                  lambda x: x * const(np.tril(np.ones((3, 4)))))),
    ("Triu", Case("ops.movement.Triangle", normal(3, 4), lambda x: x.triu(1),
                  lambda x: x * const(np.triu(np.ones((3, 4)), 1)))),
    # --- convenience ops in cumulative.py and einsum.py
    ("Cumsum", Case("ops.cumulative.Cumsum", normal(3, 4), lambda x: x.cumsum(-1),
                    lambda x: x @ const(np.triu(np.ones((4, 4)))))),
    ("Cumsum-dim0", Case("ops.cumulative.Cumsum", normal(3, 2, 2), lambda x: x.cumsum(0),
                         lambda x: (const(np.tril(np.ones((3, 3)))) @ x.reshape(3, 4)).reshape(3, 2, 2))),
    ("Cumprod", Case("ops.cumulative.Cumprod", normal(3, 4), lambda x: x.cumprod(1), running_product)),
    ("Cumprod-zeros", Case("ops.cumulative.Cumprod", with_zeros, lambda x: x.cumprod(-1), running_product)),
    ("Prod", Case("ops.cumulative.Prod", normal(2, 3), lambda x: x.prod(), lambda x: product(x.reshape(6)))),
    ("Prod-zeros", Case("ops.cumulative.Prod", with_zeros, lambda x: x.prod(1, keepdim=True),
                        lambda x: stack([product(x[i]) for i in range(3)]).reshape(3, 1))),
    ("Einsum-bmm", Case("ops.einsum.Einsum", normals((2, 3, 4), (2, 4, 5)),
                        lambda a, b: gu.einsum("bij,bjk->bik", a, b),
                        lambda a, b: (a.reshape(2, 3, 4, 1) * b.reshape(2, 1, 4, 5)).sum(dim=2))),
    ("Einsum-diagonal", Case("ops.einsum.Einsum", normal(4, 4), lambda x: gu.einsum("ii->i", x),
                             lambda x: x[np.arange(4), np.arange(4)])),
    ("Einsum-summed-out", Case("ops.einsum.Einsum", normals((3, 4), (4,)), lambda a, b: gu.einsum("ij,k->j", a, b),
                               lambda a, b: a.sum(dim=0) * b.sum())),
    ("Einsum-ellipsis-broadcast", Case(
        "ops.einsum.Einsum", normals((2, 1, 3, 4), (5, 4, 1)), lambda a, b: gu.einsum("...ij,...jk->...ik", a, b),
        lambda a, b: (a.reshape(2, 1, 3, 4, 1) * b.reshape(1, 5, 1, 4, 1)).sum(dim=3))),
    ("Einsum-three", Case(                                             # a trace of a product: every index summed
        "ops.einsum.Einsum", normals((2, 3), (3, 4), (4, 2)), lambda a, b, c: gu.einsum("ij,jk,ki", a, b, c),
        lambda a, b, c: (a.reshape(2, 3, 1) * b.reshape(1, 3, 4) * c.permute(1, 0).reshape(2, 1, 4)).sum())),
    # --- fused ops
    ("Softmax", Case("ops.fused.Softmax", normal(3, 5), lambda x: x.softmax(dim=-1), softmax)),
    ("LogSoftmax", Case("ops.fused.LogSoftmax", normal(3, 5), lambda x: x.log_softmax(dim=0),
                        lambda x: log_softmax(x, 0))),
    ("CrossEntropy", Case("ops.fused.CrossEntropy", normal(5, 4), lambda x: F.cross_entropy(x, gu.tensor(TARGETS)),
                          lambda x: cross_entropy(x, TARGETS, np.ones(4), -100, 0.0))),
    ("CrossEntropy-options", Case(
        "ops.fused.CrossEntropy", normal(5, 4),
        lambda x: F.cross_entropy(x, gu.tensor(TARGETS), weight=gu.tensor([1.0, 0.5, 2.0, 1.5], dtype=gu.float64),
                                  ignore_index=3, label_smoothing=0.2),
        lambda x: cross_entropy(x, TARGETS, np.array([1.0, 0.5, 2.0, 1.5]), 3, 0.2))),
    ("NLLLoss", Case("ops.fused.NLLLoss", normal(5, 4),
                     lambda x: F.nll_loss(x, gu.tensor(TARGETS), weight=gu.tensor([1.0, 0.5, 2.0, 1.5],
                                                                                   dtype=gu.float64)),
                     lambda x: neg((x[np.arange(5), TARGETS] * const(np.array([1.0, 0.5, 2.0, 1.5])[TARGETS])).sum())
                     * (1 / float(np.array([1.0, 0.5, 2.0, 1.5])[TARGETS].sum())))),
    ("BCEWithLogits", Case(
        "ops.fused.BCEWithLogits", normal(3, 4),
        lambda x: F.binary_cross_entropy_with_logits(x, gu.tensor(MASK * 1.0), pos_weight=gu.tensor(
            [2.0, 1.0, 0.5, 1.0], dtype=gu.float64)),
        lambda x: mean(sub(x, x * const(MASK * 1.0))
                       + (neg(x).exp() + 1.0).log() * const(1 + (np.array([2.0, 1.0, 0.5, 1.0]) - 1) * MASK), (0, 1)))),
    ("LayerNorm", Case("ops.fused.LayerNorm", normals((2, 3, 4), (4,), (4,)),
                       lambda x, w, b: F.layer_norm(x, (4,), w, b), layer_norm)),
    ("GELU", Case("ops.fused.GELU", lambda rng: [rng.uniform(-3, 3, (3, 4))], lambda x: F.gelu(x),
                  lambda x: x * 0.5 * (erf(x * (1 / math.sqrt(2))) + 1.0))),
    ("GELU-tanh", Case("ops.fused.GELU", normal(3, 4), lambda x: F.gelu(x, approximate="tanh"),
                       lambda x: x * 0.5 * (tanh((x + x**3 * 0.044715) * math.sqrt(2 / math.pi)) + 1.0))),
    ("Linear", Case("ops.fused.Linear", normals((2, 3, 4), (5, 4), (5,)), F.linear, lambda x, w, b: x @ w.mT + b)),
    ("Embedding", Case("ops.fused.Embedding", normal(5, 3), lambda w: F.embedding(gu.tensor(TOKENS), w, padding_idx=4),
                       lambda w: gu.where((TOKENS == 4)[..., None], w.detach()[TOKENS], w[TOKENS]))),
    ("Conv2d", Case("ops.conv.Conv2d", normals((2, 3, 6, 5), (4, 3, 3, 2), (4,)),
                    lambda x, w, b: F.conv2d(x, w, b, stride=2, padding=1, dilation=1),
                    lambda x, w, b: conv2d(x, w, b, stride=2, padding=1, dilation=1))),
    ("Conv2d-dilated", Case("ops.conv.Conv2d", normals((1, 2, 7, 7), (3, 2, 2, 3), (3,)),
                            lambda x, w, b: F.conv2d(x, w, b, stride=1, padding=0, dilation=2),
                            lambda x, w, b: conv2d(x, w, b, stride=1, padding=0, dilation=2))),
    ("MaxPool2d", Case("ops.conv.MaxPool2d", normal(2, 3, 7, 6), lambda x: F.max_pool2d(x, 3, stride=2),
                       lambda x: windows(x, 3, 2).max(dim=-1).values.reshape(2, 3, 3, 2))),
    ("AvgPool2d", Case("ops.conv.AvgPool2d", normal(2, 3, 5, 4), lambda x: F.avg_pool2d(x, 2, stride=2, padding=1),
                       lambda x: (windows(pad2d(x, 1), 2, 2).sum(dim=-1) * 0.25).reshape(2, 3, 3, 3))),
    ("ScaledDotProductAttention", Case(
        "ops.attention.ScaledDotProductAttention", normals((2, 3, 4), (2, 4, 4), (2, 4, 5)),
        lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=gu.tensor(SDPA_MASK)),
        lambda q, k, v: softmax(q @ k.mT * 0.5 + const(np.where(SDPA_MASK, 0.0, -1e300))) @ v)),
    ("LMHeadLoss", Case(
        "models.gpt_fast.LMHeadLoss", normals((2, 3, 4), (4,), (4,), (5, 4)),
        lambda x, ln_w, ln_b, w: resolve("models.gpt_fast.LMHeadLoss").apply(x, ln_w, ln_b, w, targets=LM_TARGETS),
        lm_head_composite)),
    # --- fused recurrent scans (nn/scans.py): the time loop unrolled into primitive cells
    ("RNNScan", Case("nn.scans.RNNScan", normals((4, 2, 3), (2, 3), (3, 3), (3,)),
                     lambda xi, h, w, b: resolve("nn.scans.RNNScan").apply(xi, h, w, b), rnn_steps)),
    ("GRUScan", Case("nn.scans.GRUScan", normals((4, 2, 9), (2, 3), (9, 3), (9,)),
                     lambda xi, h, w, b: resolve("nn.scans.GRUScan").apply(xi, h, w, b), gru_steps)),
    ("LSTMScan", Case("nn.scans.LSTMScan", normals((4, 2, 12), (2, 3), (2, 3), (12, 3), (12,)),
                      lambda xi, h, c, w, b: resolve("nn.scans.LSTMScan").apply(xi, h, c, w, b), lstm_steps)),
]}

# Fused ops whose composite is a whole model, checked in the model's own tests; ops with no gradient to compare.
ELSEWHERE: dict[str, str] = {
    "models.gpt_fast.TransformerStack": "tests/test_gpt_twins.py: FastGPT's fused stack against the readable "
                                        "GPT (engine ops) in float64, values and gradients",
    "ops.additive_attention.AdditiveAttention": "tests/test_models_seq2seq_fused.py: against AdditiveAttention's "
                                                "forward (engine ops) and finite differences in float64",
    "ops.packed_attention.PackedAttention": "tests/test_ops_packed_attention.py: against the split, "
                                            "ScaledDotProductAttention and merge through Tensor ops, finite "
                                            "differences in float64 and torch",
    "ops.pointwise.FloorDivide": "tests/test_ops_pointwise.py: its values against torch and (x / y).floor(); "
                                 "its backward raises, as torch's, so there is no gradient to compare",
}


def _run(fn: Callable[..., Tensor], arrays: list[np.ndarray]) -> tuple[Tensor, list[Tensor]]:
    inputs = [gu.tensor(a, requires_grad=True) for a in arrays]
    return fn(*inputs), inputs


def _functions_in(out: Tensor) -> set[str]:
    return {catalogue_name(type(node._ctx)) for node in _topological_order(out)}


def check_against_composite(case: Case, seed: int) -> None:
    """Same values, shapes, dtypes and gradients; the composite through primitives only."""
    arrays = case.inputs(np.random.default_rng(seed))
    ours, our_inputs = _run(case.ours, arrays)
    theirs, their_inputs = _run(case.composite, arrays)
    assert type(ours._ctx) is resolve(case.op), f"the output comes from {type(ours._ctx).__name__}, not {case.op}"
    others = _functions_in(theirs) - set(ops.PRIMITIVES)
    assert not others, f"the composite uses non-primitive ops {sorted(others)}"
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype == np.float64
    np.testing.assert_allclose(ours.data, theirs.data, rtol=1e-9, atol=1e-12, err_msg="forward")
    weight = np.random.default_rng(seed + 1000).standard_normal(ours.shape)
    (ours * const(weight)).sum().backward()
    (theirs * const(weight)).sum().backward()
    for i, (a, b) in enumerate(zip(our_inputs, their_inputs)):
        assert a.grad is not None and b.grad is not None, f"input {i} got no gradient"
        np.testing.assert_allclose(a.grad.data, b.grad.data, rtol=1e-8, atol=1e-11, err_msg=f"gradient of input {i}")


@pytest.mark.parametrize("case_id", list(CASES))
def test_op_matches_its_composite_through_primitives(case_id: str) -> None:
    check_against_composite(CASES[case_id], seed=list(CASES).index(case_id))


def test_the_composite_check_can_fail() -> None:
    """A wrong forward, a wrong gradient, a composite that is not made of primitives, and an
    output made by another op are each caught."""
    wrong = {
        "forward": lambda x: tanh(x) * 1.001,
        "gradient of input 0": lambda x: tanh(x.detach()) + x * 0.0,
        "non-primitive": lambda x: x.tanh() * 1.0,
    }
    for message, composite in wrong.items():
        with pytest.raises(AssertionError, match=message):
            check_against_composite(Case("ops.elementwise.Tanh", normal(3, 4), lambda x: x.tanh(), composite), 0)
    with pytest.raises(AssertionError, match="comes from Sigmoid"):
        check_against_composite(Case("ops.elementwise.Tanh", normal(3, 4), lambda x: x.sigmoid(), sigmoid), 0)


def _function_classes_in_source() -> set[str]:
    """``module.Class`` for every ``class X(Function)`` in the package source."""
    found = set()
    for path in ROOT.rglob("*.py"):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        for name in re.findall(r"^class (\w+)\(Function\):", path.read_text(encoding="utf-8"), re.M):
            found.add(f"{module}.{name}")
    return found


def test_every_function_is_catalogued_exactly_once() -> None:
    groups = [ops.PRIMITIVES, ops.CONVENIENCE, ops.FUSED]
    listed = [name for group in groups for name in group]
    assert len(listed) == len(set(listed)), "an op is listed in two groups"
    assert set(listed) == _function_classes_in_source(), "groundup/ops/__init__.py is out of date"
    for name in listed:
        fn = resolve(name)
        assert issubclass(fn, Function) and catalogue_name(fn) == name
    assert 12 <= len(ops.PRIMITIVES) <= 16, "the primitives should stay a short list a learner can read"


def test_every_non_primitive_op_has_a_composite_test() -> None:
    covered = {case.op for case in CASES.values()} | set(ELSEWHERE)
    missing = (set(ops.CONVENIENCE) | set(ops.FUSED)) - covered
    assert not missing, f"no composite test for {sorted(missing)}"
    assert not {case.op for case in CASES.values()} & set(ops.PRIMITIVES)
