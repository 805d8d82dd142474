"""groundup: deep learning from the ground up in Python and NumPy.

    import groundup as gu
    x = gu.randn(3, 4, requires_grad=True)
    (x.tanh() ** 2).sum().backward()
    x.grad  # d/dx of sum(tanh(x)^2)

Public API: ``Tensor``, ``tensor``, creation functions with torch's names, ``no_grad``,
``manual_seed``; subpackages ``nn``, ``optim``, ``functional`` (import it as ``F``; it is also
``groundup.nn.functional``, torch's path), ``data``, ``train``, ``models``.
"""

from groundup import functional, nn, optim  # noqa: E402
from groundup.backend import (
    bool_ as bool,  # noqa: A001 - torch's name
)
from groundup.backend import cuda_is_available, float16, float32, float64, int32, int64
from groundup.creation import (
    arange,
    cat,
    empty,
    eye,
    full,
    full_like,
    one_hot,
    ones,
    ones_like,
    rand,
    rand_like,
    randint,
    randn,
    randn_like,
    randperm,
    stack,
    zeros,
    zeros_like,
)
from groundup.ops.einsum import einsum
from groundup.ops.methods import (
    argmax,
    argmin,
    clamp,
    logsumexp,
    matmul,
    maximum,
    minimum,
    softmax,
    where,
)
from groundup.ops.ordering import (
    amin,
    argsort,
    cumprod,
    cumsum,
    diff,
    flip,
    index_select,
    movedim,
    narrow,
    nonzero,
    norm,
    outer,
    prod,
    roll,
    sort,
    swapaxes,
    topk,
    unbind,
)
from groundup.ops.ordering import movedim as moveaxis
from groundup.ops.ordering import swapaxes as swapdims
from groundup.ops.pointwise_methods import (
    acos,
    addcdiv,
    addcmul,
    asin,
    atan,
    atan2,
    ceil,
    cos,
    cosh,
    erf,
    expm1,
    floor,
    floor_divide,
    fmod,
    frac,
    hypot,
    isfinite,
    isinf,
    isnan,
    lerp,
    log1p,
    logaddexp,
    reciprocal,
    remainder,
    sign,
    sin,
    sinh,
    square,
    tan,
    trunc,
)
from groundup.ops.pointwise_methods import all_ as all  # noqa: F401 - torch's name, not in __all__
from groundup.ops.pointwise_methods import any_ as any  # noqa: F401 - torch's name, not in __all__
from groundup.ops.pointwise_methods import round_ as round  # noqa: F401 - torch's name, not in __all__
from groundup.random import get_rng_state, manual_seed, set_rng_state
from groundup.tensor import Tensor, enable_grad, is_grad_enabled, no_grad, tensor

__version__ = "0.1.0"


def exp(x: Tensor) -> Tensor:
    return x.exp()


def log(x: Tensor) -> Tensor:
    return x.log()


def tanh(x: Tensor) -> Tensor:
    return x.tanh()


def sigmoid(x: Tensor) -> Tensor:
    return x.sigmoid()


def sqrt(x: Tensor) -> Tensor:
    return x.sqrt()


def tril(x: Tensor, diagonal: int = 0) -> Tensor:
    return x.tril(diagonal)


def triu(x: Tensor, diagonal: int = 0) -> Tensor:
    return x.triu(diagonal)


def from_numpy(array) -> Tensor:  # noqa: ANN001
    """Wrap a NumPy array (shares memory, keeps its dtype), like ``torch.from_numpy``."""
    return Tensor(array)


__all__ = [
    "Tensor", "tensor", "from_numpy", "no_grad", "enable_grad", "is_grad_enabled", "manual_seed",
    "get_rng_state", "set_rng_state", "float16", "float32", "float64", "int32", "int64", "bool",
    "zeros", "ones", "full", "arange", "randn", "rand", "randint", "randperm", "zeros_like", "ones_like",
    "full_like", "randn_like", "rand_like", "empty", "eye", "cat", "stack", "one_hot", "where", "maximum",
    "minimum", "clamp", "matmul", "softmax", "argmax", "argmin", "logsumexp", "exp", "log", "tanh",
    "sigmoid", "sqrt", "tril", "triu", "functional", "nn", "optim", "cuda_is_available",
    "cumsum", "cumprod", "prod", "diff", "norm", "sort", "argsort", "topk", "amin", "nonzero", "flip", "roll",
    "narrow", "index_select", "unbind", "movedim", "moveaxis", "swapaxes", "swapdims", "outer", "einsum",
    # pointwise ops (ops/pointwise_methods.py); gu.any, gu.all and gu.round exist too, but are left out
    # of __all__ so that ``from groundup import *`` does not shadow Python's builtins
    "sin", "cos", "tan", "asin", "acos", "atan", "sinh", "cosh", "log1p", "expm1", "erf", "sign", "square",
    "reciprocal", "floor", "ceil", "trunc", "frac", "isnan", "isinf", "isfinite", "atan2", "hypot", "logaddexp",
    "lerp", "addcmul", "addcdiv", "floor_divide", "remainder", "fmod",
]
