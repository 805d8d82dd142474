"""groundup.functional: a float64 finite-difference gradient check and a PyTorch parity line for
every function and option (reductions, masks, ignore_index, label smoothing, layouts).

``F`` is ours, ``TF`` is ``torch.nn.functional``; where the signatures agree a case lambda takes
the module as its first argument and runs on both.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from helpers import Backend, assert_matches_torch, away_from, check_grad
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes

import groundup as gu
import groundup.functional as F

shapes_1d = array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4)


def _targets(n: int, c: int, ignore: int | None = None, extra: tuple[int, ...] = ()) -> np.ndarray:
    """Class indices (n, *extra) in [0, c), with about a third set to ``ignore`` when given."""
    t = np.random.randint(0, c, size=(n, *extra))
    if ignore is not None:
        t[np.random.random(t.shape) < 0.33] = ignore
        t.reshape(-1)[0] = 0  # at least one counted target, or the mean is 0/0 (nan in torch too)
    return t


def _probs(shape: tuple[int, ...], dim: int = 1) -> np.ndarray:
    e = np.exp(np.random.standard_normal(shape))
    return e / e.sum(axis=dim, keepdims=True)


def both(case: Callable[..., gu.Tensor]) -> tuple[Callable[..., object], Callable[..., object]]:
    """(torch_fn, our_fn) from a lambda whose first argument is the functional module."""
    import torch.nn.functional as TF

    return (lambda *xs: case(TF, *xs)), (lambda *xs: case(F, *xs))


# ---------------------------------------------------------------- gradient checks
@given(shape=shapes_1d, data=st.data())
def test_softmax_family_grad(shape: tuple, data: st.DataObject, backend: Backend) -> None:
    dim = data.draw(st.integers(-len(shape), len(shape) - 1))
    dev = backend.device
    check_grad(lambda x: F.softmax(x, dim), shape, device=dev)
    check_grad(lambda x: F.log_softmax(x, dim=dim), shape, device=dev)
    check_grad(lambda x: x.softmax(dim) * x.log_softmax(dim), shape, device=dev)
    check_grad(lambda x: gu.softmax(x, dim=dim), shape, device=dev)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@given(n=st.integers(1, 4), c=st.integers(2, 5), smoothing=st.sampled_from([0.0, 0.1]),
       weighted=st.booleans(), ignore=st.booleans())
def test_cross_entropy_grad(reduction: str, n: int, c: int, smoothing: float, weighted: bool, ignore: bool,
                            backend: Backend) -> None:
    target = _targets(n, c, ignore=-100 if ignore else None)
    weight = gu.tensor(np.random.uniform(0.5, 2.0, c), device=backend.device) if weighted else None
    check_grad(lambda x, t: F.cross_entropy(x, t, weight=weight, reduction=reduction, label_smoothing=smoothing),
               (n, c), target, device=backend.device)


@given(n=st.integers(1, 3), c=st.integers(2, 4), d=st.integers(1, 3), smoothing=st.sampled_from([0.0, 0.2]))
def test_cross_entropy_layouts_and_probabilities_grad(n: int, c: int, d: int, smoothing: float,
                                                      backend: Backend) -> None:
    dev = backend.device
    check_grad(lambda x, t: F.cross_entropy(x, t, label_smoothing=smoothing), (n, c, d), _targets(n, c, extra=(d,)),
               device=dev)
    check_grad(lambda x, t: F.cross_entropy(x, t, reduction="none"), (n, c, d, 2), _targets(n, c, extra=(d, 2)),
               device=dev)
    q = gu.tensor(_probs((n, c, d)), device=dev)
    check_grad(lambda x: F.cross_entropy(x, q, label_smoothing=smoothing), (n, c, d), device=dev)
    q2 = gu.tensor(_probs((n, c)), device=dev)
    check_grad(lambda x: F.cross_entropy(x, q2, reduction="sum"), (n, c), device=dev)
    check_grad(lambda x, t: F.cross_entropy(x, t), (c,), np.array(c - 1), device=dev)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@given(n=st.integers(1, 4), c=st.integers(2, 5), weighted=st.booleans())
def test_nll_and_mse_grad(reduction: str, n: int, c: int, weighted: bool, backend: Backend) -> None:
    dev = backend.device
    weight = gu.tensor(np.random.uniform(0.5, 2.0, c), device=dev) if weighted else None
    target = _targets(n, c, ignore=1)
    check_grad(lambda x, t: F.nll_loss(x, t, weight=weight, ignore_index=1, reduction=reduction), (n, c), target,
               device=dev)
    check_grad(lambda x, t: F.nll_loss(x.log_softmax(1), t, reduction=reduction), (n, c, 2),
               _targets(n, c, extra=(2,)), device=dev)
    check_grad(lambda x, y: F.mse_loss(x, y, reduction=reduction), (n, c), (n, c), device=dev)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@given(shape=shapes_1d, weighted=st.booleans(), pos_weighted=st.booleans())
def test_bce_with_logits_grad(reduction: str, shape: tuple, weighted: bool, pos_weighted: bool,
                              backend: Backend) -> None:
    dev = backend.device
    target = gu.tensor(np.random.uniform(0, 1, shape), device=dev)
    weight = gu.tensor(np.random.uniform(0.5, 2, shape[-1:]), device=dev) if weighted else None
    pos_weight = gu.tensor(np.random.uniform(0.5, 3, shape[-1:]), device=dev) if pos_weighted else None
    check_grad(lambda x: F.binary_cross_entropy_with_logits(x, target, weight=weight, pos_weight=pos_weight,
                                                            reduction=reduction), shape, device=dev)


@given(shape=array_shapes(min_dims=1, max_dims=3, min_side=2, max_side=4), two_dims=st.booleans(),
       affine=st.sampled_from(["both", "weight", "bias", "none"]))
def test_layer_norm_and_rms_norm_grad(shape: tuple, two_dims: bool, affine: str, backend: Backend) -> None:
    norm = shape[-2:] if two_dims and len(shape) >= 2 else shape[-1:]
    dev = backend.device
    args = [shape]
    if affine in ("both", "weight"):
        args.append(norm)
    if affine in ("both", "bias"):
        args.append(norm)

    def fn(x: gu.Tensor, *params: gu.Tensor) -> gu.Tensor:
        weight = params[0] if affine in ("both", "weight") else None
        bias = params[-1] if affine in ("both", "bias") else None
        return F.layer_norm(x, norm, weight, bias)

    check_grad(fn, *args, device=dev)
    check_grad(lambda x, w: F.rms_norm(x, norm, w, eps=1e-6), shape, norm, device=dev)


@given(shape=array_shapes(min_dims=0, max_dims=3, min_side=1, max_side=4))
def test_activations_grad(shape: tuple, backend: Backend) -> None:
    dev = backend.device
    check_grad(lambda x: F.gelu(x), shape, device=dev)
    check_grad(lambda x: F.gelu(x, approximate="tanh"), shape, device=dev)
    check_grad(lambda x: F.silu(x) + F.tanh(x) + F.sigmoid(x), shape, device=dev)
    check_grad(lambda x: F.relu(x), away_from(np.random.standard_normal(shape)), device=dev)


@given(lead=array_shapes(min_dims=0, max_dims=2, min_side=1, max_side=3), n_in=st.integers(1, 4),
       n_out=st.integers(1, 4))
def test_linear_grad(lead: tuple, n_in: int, n_out: int, backend: Backend) -> None:
    check_grad(lambda x, w, b: F.linear(x, w, b), (*lead, n_in), (n_out, n_in), (n_out,), device=backend.device)
    check_grad(lambda x, w: F.linear(x, w), (*lead, n_in), (n_out, n_in), device=backend.device)


@given(idx_shape=array_shapes(min_dims=1, max_dims=2, min_side=1, max_side=5), num=st.integers(2, 5),
       padding=st.booleans())
def test_embedding_grad(idx_shape: tuple, num: int, padding: bool, backend: Backend) -> None:
    idx = np.random.randint(0, num, size=idx_shape)  # repeated indices sum their gradients
    pad = int(idx.reshape(-1)[0]) if padding else None
    # NOTE: the padding row's gradient is defined as 0 (torch), which finite differences cannot
    # see; zeroing the outputs that read it makes both sides agree that it is 0.
    reads_pad = gu.tensor((idx != pad)[..., None].astype(np.float64), device=backend.device)
    check_grad(lambda w, i: F.embedding(i, w, padding_idx=pad) * reads_pad, (num, 3), idx, device=backend.device)


CONV = [  # (x shape, weight shape, stride, padding, dilation, bias)
    ((1, 1, 5, 5), (1, 1, 3, 3), 1, 0, 1, False),
    ((2, 3, 6, 5), (4, 3, 3, 2), 1, 1, 1, True),
    ((2, 2, 7, 7), (3, 2, 3, 3), 2, 1, 1, True),
    ((1, 2, 7, 6), (2, 2, 2, 3), (2, 1), (1, 0), (2, 1), False),
    ((1, 1, 8, 8), (2, 1, 3, 3), 3, 2, 2, True),
]


@pytest.mark.parametrize("case", range(len(CONV)))
def test_conv2d_grad(case: int, backend: Backend) -> None:
    x, w, stride, padding, dilation, bias = CONV[case]
    shapes = (x, w, w[:1]) if bias else (x, w)
    check_grad(lambda *a: F.conv2d(*a, stride=stride, padding=padding, dilation=dilation), *shapes,
               device=backend.device)


POOL = [  # (x shape, kernel, stride, padding, dilation)
    ((1, 1, 4, 4), 2, None, 0, 1),
    ((2, 3, 5, 6), 3, 2, 1, 1),
    ((1, 2, 7, 7), (3, 2), (2, 1), (1, 1), (1, 2)),
]


@pytest.mark.parametrize("case", range(len(POOL)))
def test_pool_grad(case: int, backend: Backend) -> None:
    x, kernel, stride, padding, dilation = POOL[case]
    check_grad(lambda a: F.max_pool2d(a, kernel, stride, padding, dilation), x, device=backend.device)
    check_grad(lambda a: F.avg_pool2d(a, kernel, stride, padding), x, device=backend.device)


@given(b=st.integers(1, 2), h=st.integers(1, 2), q_len=st.integers(1, 4), k_len=st.integers(1, 4),
       e=st.integers(1, 3), ev=st.integers(1, 3), mask=st.sampled_from(["none", "bool", "float", "causal"]),
       scale=st.sampled_from([None, 0.3]))
def test_scaled_dot_product_attention_grad(b: int, h: int, q_len: int, k_len: int, e: int, ev: int, mask: str,
                                           scale: float | None, backend: Backend) -> None:
    dev = backend.device
    attn_mask = None
    if mask == "bool":
        allowed = np.random.random((b, 1, q_len, k_len)) < 0.7
        allowed[..., 0] = True  # every query keeps at least one key (torch gives nan otherwise)
        attn_mask = gu.tensor(allowed, device=dev)
    elif mask == "float":
        attn_mask = gu.tensor(np.random.standard_normal((q_len, k_len)), device=dev)
    check_grad(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=mask == "causal",
                                                              scale=scale),
               (b, h, q_len, e), (b, h, k_len, e), (b, h, k_len, ev), device=dev)


def test_pad_grad(backend: Backend) -> None:
    check_grad(lambda x: F.pad(x, (1, 2)), (2, 3), device=backend.device)
    check_grad(lambda x: F.pad(x, (0, 1, 2, 0), value=-1.0), (2, 3, 2), device=backend.device)


# ---------------------------------------------------------------- parity with PyTorch, one line per case
N, C = 5, 4
T = _targets(N, C)
T_IGNORE = _targets(N, C, ignore=-100)
T_IGNORE2 = _targets(N, C, ignore=2)
W = np.random.uniform(0.5, 2.0, C)
Q = _probs((N, C))
Q3 = _probs((2, C, 3))
T3 = _targets(2, C, extra=(3,))
T4 = _targets(2, C, extra=(3, 2), ignore=-100)
BOOL_MASK = np.random.random((2, 1, 3, 4)) < 0.6
BOOL_MASK[..., 0] = True
X_BIG = np.array([[-50.0, 0.0, 30.0], [100.0, -100.0, 1e-3]])

TORCH_CASES = {
    "softmax": ([(3, 4)], lambda f, x: f.softmax(x, dim=-1)),
    "softmax_dim0": ([(3, 4, 2)], lambda f, x: f.softmax(x, dim=0)),
    "softmax_large": ([np.array([[1000.0, 0.0, -1000.0]])], lambda f, x: f.softmax(x, dim=1)),
    "log_softmax": ([(3, 4)], lambda f, x: f.log_softmax(x, dim=1)),
    "log_softmax_large": ([np.array([[1000.0, 0.0, -1000.0]])], lambda f, x: f.log_softmax(x, dim=-1)),
    "cross_entropy": ([(N, C), T], lambda f, x, t: f.cross_entropy(x, t)),
    "cross_entropy_sum": ([(N, C), T], lambda f, x, t: f.cross_entropy(x, t, reduction="sum")),
    "cross_entropy_none": ([(N, C), T], lambda f, x, t: f.cross_entropy(x, t, reduction="none")),
    "cross_entropy_ignore": ([(N, C), T_IGNORE], lambda f, x, t: f.cross_entropy(x, t)),
    "cross_entropy_ignore_none": ([(N, C), T_IGNORE], lambda f, x, t: f.cross_entropy(x, t, reduction="none")),
    "cross_entropy_ignore_index": ([(N, C), T_IGNORE2], lambda f, x, t: f.cross_entropy(x, t, ignore_index=2)),
    "cross_entropy_smoothing": ([(N, C), T], lambda f, x, t: f.cross_entropy(x, t, label_smoothing=0.1)),
    "cross_entropy_smoothing_ignore": ([(N, C), T_IGNORE],
                                       lambda f, x, t: f.cross_entropy(x, t, label_smoothing=0.2)),
    "cross_entropy_weight": ([(N, C), T, W], lambda f, x, t, w: f.cross_entropy(x, t, weight=w)),
    "cross_entropy_weight_sum": ([(N, C), T_IGNORE, W],
                                 lambda f, x, t, w: f.cross_entropy(x, t, weight=w, reduction="sum")),
    "cross_entropy_weight_smoothing": ([(N, C), T_IGNORE, W],
                                       lambda f, x, t, w: f.cross_entropy(x, t, weight=w, label_smoothing=0.3)),
    "cross_entropy_weight_smoothing_none": ([(N, C), T, W], lambda f, x, t, w: f.cross_entropy(
        x, t, weight=w, label_smoothing=0.3, reduction="none")),
    "cross_entropy_probs": ([(N, C), Q], lambda f, x, q: f.cross_entropy(x, q)),
    "cross_entropy_probs_smoothing": ([(N, C), Q], lambda f, x, q: f.cross_entropy(x, q, label_smoothing=0.2)),
    "cross_entropy_probs_weight": ([(N, C), Q, W], lambda f, x, q, w: f.cross_entropy(x, q, weight=w)),
    "cross_entropy_probs_none": ([(N, C), Q], lambda f, x, q: f.cross_entropy(x, q, reduction="none")),
    "cross_entropy_ncd": ([(2, C, 3), T3], lambda f, x, t: f.cross_entropy(x, t)),
    "cross_entropy_ncd_none": ([(2, C, 3), T3], lambda f, x, t: f.cross_entropy(x, t, reduction="none")),
    "cross_entropy_ncdd_ignore": ([(2, C, 3, 2), T4], lambda f, x, t: f.cross_entropy(x, t, label_smoothing=0.1)),
    "cross_entropy_ncd_probs": ([(2, C, 3), Q3], lambda f, x, q: f.cross_entropy(x, q)),
    "cross_entropy_unbatched": ([(C,), np.array(1)], lambda f, x, t: f.cross_entropy(x, t)),
    "cross_entropy_large": ([X_BIG, np.array([0, 1])], lambda f, x, t: f.cross_entropy(x, t)),
    "nll_loss": ([(N, C), T], lambda f, x, t: f.nll_loss(x, t)),
    "nll_loss_weight_ignore": ([(N, C), T_IGNORE2, W], lambda f, x, t, w: f.nll_loss(x, t, w, ignore_index=2)),
    "nll_loss_sum": ([(N, C), T], lambda f, x, t: f.nll_loss(x, t, reduction="sum")),
    "nll_loss_none": ([(N, C), T_IGNORE], lambda f, x, t: f.nll_loss(x, t, reduction="none")),
    "nll_loss_ncd": ([(2, C, 3), T3], lambda f, x, t: f.nll_loss(x, t)),
    "mse_loss": ([(3, 4), (3, 4)], lambda f, x, y: f.mse_loss(x, y)),
    "mse_loss_sum": ([(3, 4), (3, 4)], lambda f, x, y: f.mse_loss(x, y, reduction="sum")),
    "mse_loss_none": ([(3, 4), (3, 4)], lambda f, x, y: f.mse_loss(x, y, reduction="none")),
    "bce_logits": ([(3, 4), np.random.uniform(0, 1, (3, 4))], lambda f, x, y: f.binary_cross_entropy_with_logits(x, y)),
    "bce_logits_weight": ([(3, 4), np.random.uniform(0, 1, (3, 4)), (4,)],
                          lambda f, x, y, w: f.binary_cross_entropy_with_logits(x, y, weight=w)),
    "bce_logits_pos_weight": ([(3, 4), np.random.uniform(0, 1, (3, 4)), np.random.uniform(0.5, 3, 4)],
                              lambda f, x, y, p: f.binary_cross_entropy_with_logits(x, y, pos_weight=p)),
    "bce_logits_both_sum": ([(3, 4), np.random.uniform(0, 1, (3, 4)), (3, 4), np.random.uniform(0.5, 3, 4)],
                            lambda f, x, y, w, p: f.binary_cross_entropy_with_logits(x, y, w, reduction="sum",
                                                                                       pos_weight=p)),
    "bce_logits_none": ([(3, 4), np.random.uniform(0, 1, (3, 4))],
                        lambda f, x, y: f.binary_cross_entropy_with_logits(x, y, reduction="none")),
    "bce_logits_large": ([X_BIG * 10, np.random.uniform(0, 1, (2, 3))],
                         lambda f, x, y: f.binary_cross_entropy_with_logits(x, y)),
    "layer_norm": ([(2, 3, 8), (8,), (8,)], lambda f, x, w, b: f.layer_norm(x, (8,), w, b)),
    "layer_norm_2d": ([(2, 3, 4), (3, 4), (3, 4)], lambda f, x, w, b: f.layer_norm(x, (3, 4), w, b, eps=1e-3)),
    "layer_norm_plain": ([(4, 6)], lambda f, x: f.layer_norm(x, [6])),
    "layer_norm_bias_only": ([(4, 6), (6,)], lambda f, x, b: f.layer_norm(x, (6,), bias=b)),
    "rms_norm": ([(2, 3, 8), (8,)], lambda f, x, w: f.rms_norm(x, (8,), w, eps=1e-6)),
    "gelu": ([(3, 4)], lambda f, x: f.gelu(x)),
    "gelu_tanh": ([(3, 4)], lambda f, x: f.gelu(x, approximate="tanh")),
    "relu": ([away_from(np.random.standard_normal((3, 4)))], lambda f, x: f.relu(x)),
    "silu": ([(3, 4)], lambda f, x: f.silu(x)),
    "tanh_sigmoid": ([(3, 4)], lambda f, x: f.tanh(x) * f.sigmoid(x)),
    "linear": ([(2, 3, 4), (5, 4), (5,)], lambda f, x, w, b: f.linear(x, w, b)),
    "linear_no_bias": ([(3, 4), (5, 4)], lambda f, x, w: f.linear(x, w)),
    "linear_1d": ([(4,), (5, 4), (5,)], lambda f, x, w, b: f.linear(x, w, b)),
    "embedding": ([np.random.randint(0, 6, (2, 5)), (6, 3)], lambda f, i, w: f.embedding(i, w)),
    "embedding_padding": ([np.array([[0, 2, 0], [1, 2, 5]]), (6, 3)], lambda f, i, w: f.embedding(i, w, padding_idx=2)),
    "embedding_large_vocab": ([np.random.randint(0, 5000, 4000), (5000, 2)], lambda f, i, w: f.embedding(i, w)),
    "embedding_padding_neg": ([np.array([0, 5, 5, 1]), (6, 3)], lambda f, i, w: f.embedding(i, w, padding_idx=-1)),
    "conv2d": ([(2, 3, 6, 5), (4, 3, 3, 3), (4,)], lambda f, x, w, b: f.conv2d(x, w, b)),
    "conv2d_no_bias": ([(2, 3, 6, 5), (4, 3, 3, 2)], lambda f, x, w: f.conv2d(x, w)),
    "conv2d_stride_pad": ([(2, 3, 7, 7), (4, 3, 3, 3), (4,)], lambda f, x, w, b: f.conv2d(x, w, b, 2, 1)),
    "conv2d_dilation": ([(1, 2, 9, 8), (3, 2, 3, 2)], lambda f, x, w: f.conv2d(x, w, None, (2, 1), (1, 2), (2, 3))),
    "conv2d_valid": ([(1, 2, 5, 5), (3, 2, 2, 2)], lambda f, x, w: f.conv2d(x, w, padding="valid")),
    "max_pool2d": ([(2, 3, 6, 6)], lambda f, x: f.max_pool2d(x, 2)),
    "max_pool2d_stride_pad": ([(2, 3, 7, 6)], lambda f, x: f.max_pool2d(x, 3, stride=2, padding=1)),
    "max_pool2d_dilation": ([(1, 2, 9, 8)], lambda f, x: f.max_pool2d(x, (3, 2), (2, 1), (1, 1), (2, 2))),
    "avg_pool2d": ([(2, 3, 6, 6)], lambda f, x: f.avg_pool2d(x, 2)),
    "avg_pool2d_stride_pad": ([(2, 3, 7, 6)], lambda f, x: f.avg_pool2d(x, 3, stride=2, padding=1)),
    "avg_pool2d_rect": ([(1, 2, 7, 8)], lambda f, x: f.avg_pool2d(x, (3, 2), (1, 2))),
    "sdpa": ([(2, 3, 4, 5), (2, 3, 6, 5), (2, 3, 6, 3)], lambda f, q, k, v: f.scaled_dot_product_attention(q, k, v)),
    "sdpa_3d": ([(2, 4, 5), (2, 6, 5), (2, 6, 3)], lambda f, q, k, v: f.scaled_dot_product_attention(q, k, v)),
    "sdpa_bool_mask": ([(2, 2, 3, 5), (2, 2, 4, 5), (2, 2, 4, 5), BOOL_MASK],
                       lambda f, q, k, v, m: f.scaled_dot_product_attention(q, k, v, attn_mask=m)),
    "sdpa_float_mask": ([(2, 2, 3, 5), (2, 2, 4, 5), (2, 2, 4, 5), (3, 4)],
                        lambda f, q, k, v, m: f.scaled_dot_product_attention(q, k, v, attn_mask=m)),
    "sdpa_mask_keys": ([(2, 2, 3, 5), (2, 2, 4, 5), (2, 2, 4, 5), np.array([[[[True, True, False, True]]]] * 2)],
                       lambda f, q, k, v, m: f.scaled_dot_product_attention(q, k, v, attn_mask=m)),
    "sdpa_mask_heads": ([(2, 2, 3, 5), (2, 2, 4, 5), (2, 2, 4, 5), (1, 2, 1, 4)],
                        lambda f, q, k, v, m: f.scaled_dot_product_attention(q, k, v, attn_mask=m)),
    "sdpa_causal": ([(2, 2, 4, 5), (2, 2, 4, 5), (2, 2, 4, 3)],
                    lambda f, q, k, v: f.scaled_dot_product_attention(q, k, v, is_causal=True)),
    "sdpa_causal_short_query": ([(1, 2, 3, 5), (1, 2, 5, 5), (1, 2, 5, 3)],
                                lambda f, q, k, v: f.scaled_dot_product_attention(q, k, v, is_causal=True)),
    "sdpa_causal_long_query": ([(1, 2, 5, 4), (1, 2, 3, 4), (1, 2, 3, 3)],
                               lambda f, q, k, v: f.scaled_dot_product_attention(q, k, v, is_causal=True)),
    "sdpa_scale": ([(2, 3, 4, 5), (2, 3, 4, 5), (2, 3, 4, 5)],
                   lambda f, q, k, v: f.scaled_dot_product_attention(q, k, v, scale=0.7, is_causal=True)),
    "sdpa_broadcast_kv": ([(2, 3, 4, 5), (1, 1, 4, 5), (1, 1, 4, 2)],
                          lambda f, q, k, v: f.scaled_dot_product_attention(q, k, v)),
    "pad": ([(2, 3, 4)], lambda f, x: f.pad(x, (1, 2, 0, 1))),
    "dropout_eval": ([(3, 4)], lambda f, x: f.dropout(x, 0.5, training=False)),
    "dropout_p0": ([(3, 4)], lambda f, x: f.dropout(x, 0.0)),
    "dropout_p1": ([(3, 4)], lambda f, x: f.dropout(x, 1.0)),
    "one_hot": ([np.array([[0, 3], [2, 2]])], lambda f, i: f.one_hot(i, 5)),
    "one_hot_infer": ([np.array([0, 3, 1])], lambda f, i: f.one_hot(i)),
}
CONST = {"cross_entropy_weight": (2,), "cross_entropy_weight_sum": (2,), "cross_entropy_weight_smoothing": (2,),
         "cross_entropy_weight_smoothing_none": (2,), "cross_entropy_probs": (1,),
         "cross_entropy_probs_smoothing": (1,), "cross_entropy_probs_weight": (1, 2), "cross_entropy_probs_none": (1,),
         "cross_entropy_ncd_probs": (1,),
         "nll_loss_weight_ignore": (2,), "bce_logits": (1,), "bce_logits_weight": (1, 2),
         "bce_logits_pos_weight": (1, 2), "bce_logits_both_sum": (1, 2, 3), "bce_logits_none": (1,),
         "bce_logits_large": (1,), "sdpa_float_mask": (3,), "sdpa_mask_heads": (3,)}


@pytest.mark.parametrize("case", list(TORCH_CASES))
def test_matches_torch(case: str, backend: Backend) -> None:
    pytest.importorskip("torch")
    inputs, fn = TORCH_CASES[case]
    assert_matches_torch(inputs, *both(fn), const=CONST.get(case, ()), device=backend.device)


# ---------------------------------------------------------------- dropout
def test_dropout_statistics_and_mask_in_backward(backend: Backend) -> None:
    p = 0.3
    x = gu.tensor(np.random.uniform(1.0, 2.0, (200, 100)), requires_grad=True, device=backend.device)
    y = F.dropout(x, p)
    out, data = y.detach().numpy(), x.detach().numpy()
    kept = out != 0
    assert abs(1 - kept.mean() - p) < 0.02  # 20,000 draws: 4 standard deviations
    np.testing.assert_allclose(out[kept], data[kept] / (1 - p), rtol=1e-6)
    assert abs(out.mean() / data.mean() - 1) < 0.03  # inverted dropout keeps the expectation
    y.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), kept / (1 - p), rtol=1e-6)  # same mask as the forward
    assert y.dtype == x.dtype == x.grad.dtype


def test_dropout_identity_cases_and_fresh_masks() -> None:
    x = gu.randn(50, 40, requires_grad=True)
    assert F.dropout(x, 0.0) is x and F.dropout(x, 0.9, training=False) is x
    first, second = F.dropout(x, 0.5).detach().numpy(), F.dropout(x, 0.5).detach().numpy()
    assert not np.array_equal(first != 0, second != 0)  # a new mask per call
    gu.manual_seed(7)
    a = F.dropout(x, 0.5).detach().numpy()
    gu.manual_seed(7)
    np.testing.assert_array_equal(a, F.dropout(x, 0.5).detach().numpy())  # reproducible under a seed
    with pytest.raises(ValueError, match="dropout"):
        F.dropout(x, 1.5)


def test_sdpa_dropout_statistics_and_backward() -> None:
    q, k = gu.randn(2, 8, 4, dtype=gu.float64), gu.randn(2, 8, 4, dtype=gu.float64)
    v = gu.ones(2, 8, 3, dtype=gu.float64, requires_grad=True)
    out = F.scaled_dot_product_attention(q, k, v, dropout_p=0.25)
    values = out.detach().numpy()
    assert abs(values.mean() - 1) < 0.1  # attention rows sum to 1; inverted dropout keeps the mean
    assert not np.allclose(values, 1)
    out.sum().backward()  # dv = dropped_attn^T @ 1 sums the same dropped weights the forward used
    np.testing.assert_allclose(v.grad.numpy().sum(), values.sum(), rtol=1e-10)


ALL_IGNORED = np.array([-100, -100, -100])
ZERO_WEIGHT_CLASSES = np.array([0, 2, 2])          # counted targets whose class weight is 0


@pytest.mark.parametrize("case,target", [
    (lambda f, x, t, w: f.cross_entropy(x, t), ALL_IGNORED),
    (lambda f, x, t, w: f.cross_entropy(x, t, label_smoothing=0.1), ALL_IGNORED),
    (lambda f, x, t, w: f.cross_entropy(x, t, weight=w, ignore_index=1), np.array([1, 1, 1])),
    (lambda f, x, t, w: f.cross_entropy(x, t, weight=w), ZERO_WEIGHT_CLASSES),
    (lambda f, x, t, w: f.nll_loss(x.log_softmax(1), t, weight=w), ALL_IGNORED),
    (lambda f, x, t, w: f.nll_loss(x.log_softmax(1), t, weight=w), ZERO_WEIGHT_CLASSES),
], ids=["ce", "ce_smoothing", "ce_weight_ignore_index", "ce_zero_weights", "nll", "nll_zero_weights"])
def test_a_mean_over_no_counted_target_is_nan_with_torchs_gradient(case, target: np.ndarray) -> None:
    """torch: a mean over no counted target is 0 / 0 = nan, but when every target is ignored the
    gradient is exactly 0 (an all-padding batch must not write NaN into the parameters); targets
    that count with class weight 0 give a nan gradient, in torch too. Neither warns."""
    import warnings

    import torch
    import torch.nn.functional as TF

    x, weight = np.random.standard_normal((3, 4)), np.array([0.0, 2.0, 0.0, 1.0])
    theirs = torch.tensor(x, requires_grad=True)
    case(TF, theirs, torch.tensor(target), torch.tensor(weight)).backward()
    ours = gu.tensor(x, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = case(F, ours, gu.tensor(target), gu.tensor(weight))
        out.backward()
    assert np.isnan(out.item())
    np.testing.assert_array_equal(ours.grad.numpy(), theirs.grad.numpy())


@pytest.mark.parametrize("call,name", [
    (lambda x, c: F.cross_entropy(x, c.softmax(1)), "target"),
    (lambda x, c: F.cross_entropy(x, gu.tensor([0, 1, 2]), weight=c[0]), "weight"),
    (lambda x, c: F.nll_loss(x, gu.tensor([0, 1, 2]), weight=c[0]), "weight"),
    (lambda x, c: F.binary_cross_entropy_with_logits(x, c.sigmoid()), "target"),
    (lambda x, c: F.binary_cross_entropy_with_logits(x, x.detach().sigmoid(), weight=c), "weight"),
    (lambda x, c: F.binary_cross_entropy_with_logits(x, x.detach().sigmoid(), pos_weight=c[0]), "pos_weight"),
], ids=["ce_target", "ce_weight", "nll_weight", "bce_target", "bce_weight", "bce_pos_weight"])
def test_a_loss_argument_that_requires_grad_is_refused_not_silently_constant(call, name: str) -> None:
    """torch differentiates these too (e.g. soft targets from a teacher that is still training); the
    fused losses treat them as constants, so a graph into them is refused instead of dropped."""
    x, c = gu.randn(3, 4, requires_grad=True), gu.randn(3, 4, requires_grad=True)
    with pytest.raises(RuntimeError, match=rf"requires grad.*pass {name}\.detach\(\)"):
        call(x, c)
    with gu.no_grad():
        call(x, c)                                      # no graph wanted: fine
    call(x, c.detach())


# ---------------------------------------------------------------- errors
def test_functional_errors_name_the_problem() -> None:
    x = gu.randn(3, 4)
    with pytest.raises(IndexError, match="out of range"):
        F.cross_entropy(x, gu.tensor([0, 4, 1]))
    with pytest.raises(ValueError, match="reduction"):
        F.cross_entropy(x, gu.tensor([0, 1, 1]), reduction="avg")
    with pytest.raises(ValueError, match="label_smoothing"):
        F.cross_entropy(x, gu.tensor([0, 1, 1]), label_smoothing=1.5)
    x3, t3 = gu.randn(2, 4, 3), gu.tensor(np.zeros((2, 3), np.int64))
    for loss in (F.cross_entropy, F.nll_loss):                 # as many targets, but paired wrongly
        for target in (t3.transpose(0, 1), t3.reshape(-1), t3.unsqueeze(-1)):
            with pytest.raises(ValueError, match=r"target has shape .*, expected \(2, 3\) for input \(2, 4, 3\)"):
                loss(x3, target)
        with pytest.raises(ValueError, match=r"expected \(3,\)"):
            loss(x, gu.tensor([[0], [1], [1]]))
    with pytest.raises(IndexError, match="embedding"):
        F.embedding(gu.tensor([0, 5]), gu.randn(5, 2))
    with pytest.raises(RuntimeError, match=r"linear.*\(3, 4\).*\(2, 5\)"):
        F.linear(x, gu.randn(2, 5))
    with pytest.raises(RuntimeError, match="conv2d"):
        F.conv2d(gu.randn(1, 3, 5, 5), gu.randn(2, 2, 3, 3))
    with pytest.raises(RuntimeError, match="layer_norm"):
        F.layer_norm(x, (3,))
    with pytest.raises(RuntimeError, match="scaled_dot_product_attention"):
        F.scaled_dot_product_attention(gu.randn(2, 3), gu.randn(4, 5), gu.randn(4, 5))
