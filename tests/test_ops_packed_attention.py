"""PackedAttention (ops/packed_attention.py): multi-head attention from packed projections, one node.

Oracles: float64 central differences (every packing, every mask kind); torch's
``F.scaled_dot_product_attention`` on heads split and merged with torch's own reshapes; groundup's
``F.scaled_dot_product_attention`` with the same seed for dropout; a NumPy max-shifted softmax where
the scores are too large for the unshifted softmax (its fallback path).
"""

from __future__ import annotations

import numpy as np
import pytest

import groundup as gu
from groundup import functional as F
from groundup.ops.packed_attention import PackedAttention
from tests.helpers import assert_matches_torch, check_grad

N, L, S, E, H = 2, 3, 4, 4, 2          # batch, query length, key length, width, heads
D = E // H


def split_heads(x, length):
    """(N, length, E) -> (N, H, length, D) with the framework's own reshape and transpose."""
    return x.reshape(N, length, H, D).transpose(1, 2)


def merge_heads(x, length):
    return x.transpose(1, 2).reshape(N, length, E)                     # (N, H, length, D) -> (N, length, E)


def composed(packing, tensors, sdpa, **options):
    """The same attention written with Tensor ops: chunk, split heads, SDPA, merge heads."""
    if packing == "qkv":
        q, k, v = tensors[0].chunk(3, dim=-1)
    elif packing == "q_kv":
        q, (k, v) = tensors[0], tensors[1].chunk(2, dim=-1)
    else:
        q, k, v = tensors
    out = sdpa(split_heads(q, L), split_heads(k, k.shape[1]), split_heads(v, k.shape[1]), **options)
    return merge_heads(out, L)


SHAPES = {"qkv": [(N, L, 3 * E)], "q_kv": [(N, L, E), (N, S, 2 * E)], "q_k_v": [(N, L, E), (N, S, E), (N, S, E)]}


def key_length(packing):
    return L if packing == "qkv" else S


def float_mask(packing):
    """A key-padding bias (N, 1, 1, S) as nn.MultiheadAttention builds it: 0 or -inf."""
    s = key_length(packing)
    bias = np.zeros((N, 1, 1, s))
    bias[0, ..., -1] = -np.inf
    bias[1, ..., 1] = -np.inf
    return bias


@pytest.mark.parametrize("packing", list(SHAPES))
@pytest.mark.parametrize("mask", ["none", "padding", "causal", "bool", "float_values"])
def test_gradients_match_finite_differences(packing, mask):
    rng = np.random.default_rng(0)
    s = key_length(packing)
    options = {}
    if mask == "padding":
        options["mask"] = float_mask(packing)
    elif mask == "causal":
        options["is_causal"] = True
    elif mask == "bool":
        allowed = rng.random((N, H, L, s)) < 0.7
        allowed[..., 0] = True
        options["mask"] = allowed
    elif mask == "float_values":
        options["mask"] = rng.standard_normal((L, s))
    check_grad(lambda *xs: PackedAttention.apply(*xs, num_heads=H, **options), *SHAPES[packing])


def test_strided_inputs_and_gradients():
    """Inputs that are views (a sequence-first tensor transposed) and a broadcast output gradient."""
    check_grad(lambda x: PackedAttention.apply(x.transpose(0, 1), num_heads=H, is_causal=True), (L, N, 3 * E))
    check_grad(lambda q, kv: PackedAttention.apply(q.transpose(0, 1), kv[:, ::2], num_heads=H).sum(),
               (L, N, E), (N, 2 * S, 2 * E))


@pytest.mark.parametrize("packing", list(SHAPES))
@pytest.mark.parametrize("causal", [False, True])
def test_matches_torch_sdpa_on_split_heads(packing, causal):
    torch = pytest.importorskip("torch")

    def theirs(*xs):
        return composed(packing, xs, torch.nn.functional.scaled_dot_product_attention, is_causal=causal)

    def ours(*xs):
        return PackedAttention.apply(*xs, num_heads=H, is_causal=causal)

    assert_matches_torch(SHAPES[packing], theirs, ours)


@pytest.mark.parametrize("packing", list(SHAPES))
def test_padding_mask_matches_torch(packing):
    torch = pytest.importorskip("torch")
    bias = float_mask(packing)

    def theirs(*xs):
        return composed(packing, xs, torch.nn.functional.scaled_dot_product_attention,
                        attn_mask=torch.tensor(bias, dtype=xs[0].dtype))

    assert_matches_torch(SHAPES[packing], theirs, lambda *xs: PackedAttention.apply(*xs, num_heads=H, mask=bias))


@pytest.mark.parametrize("packing", list(SHAPES))
def test_dropout_draws_the_masks_sdpa_draws(packing):
    """With one seed, the fused op and the composed SDPA path drop the same weights."""
    rng = np.random.default_rng(1)
    arrays = [rng.standard_normal(shape) for shape in SHAPES[packing]]
    results = []
    for fused in (True, False):
        gu.manual_seed(7)
        xs = [gu.tensor(a, requires_grad=True) for a in arrays]
        if fused:
            out = PackedAttention.apply(*xs, num_heads=H, dropout_p=0.5, rng=gu.random.generator())
        else:
            out = composed(packing, xs, F.scaled_dot_product_attention, dropout_p=0.5)
        (out * gu.tensor(np.arange(out.numel()).reshape(out.shape))).sum().backward()
        results.append([out.detach().numpy()] + [x.grad.numpy() for x in xs])
    assert np.any(results[0][0] != composed_without_dropout(packing, arrays))   # something was dropped
    for got, want in zip(*results):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def composed_without_dropout(packing, arrays):
    return PackedAttention.apply(*(gu.tensor(a) for a in arrays), num_heads=H).numpy()


def numpy_attention(q, k, v, scale):
    """(N, H, L, D) heads -> reference output with a max-shifted softmax in float64."""
    scores = q @ k.swapaxes(-1, -2) * scale
    scores -= scores.max(axis=-1, keepdims=True)
    weights = np.exp(scores)
    weights /= weights.sum(axis=-1, keepdims=True)
    return weights @ v


def test_large_scores_use_the_shifted_softmax():
    """Scores far beyond exp's range in float32: the unshifted softmax would overflow; the op falls back."""
    rng = np.random.default_rng(2)
    qkv = (rng.standard_normal((N, L, 3 * E)) * 30).astype(np.float32)
    out = PackedAttention.apply(gu.tensor(qkv), num_heads=H, scale=10.0).numpy()
    heads = qkv.astype(np.float64).reshape(N, L, 3, H, D).transpose(2, 0, 3, 1, 4)   # (3, N, H, L, D)
    want = numpy_attention(*heads, 10.0).transpose(0, 2, 1, 3).reshape(N, L, E)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-3)


def test_a_query_with_every_key_masked_gets_zeros():
    rng = np.random.default_rng(3)
    q, kv = gu.tensor(rng.standard_normal((N, L, E)), requires_grad=True), gu.tensor(rng.standard_normal((N, S, 2 * E)))
    bias = np.zeros((N, 1, L, S))
    bias[1, 0, 2] = -np.inf                                          # batch 1, query 2: no key at all
    out = PackedAttention.apply(q, kv, num_heads=H, mask=bias)
    values = out.detach().numpy()
    assert np.all(values[1, 2] == 0) and np.isfinite(values).all()
    out.sum().backward()
    assert np.isfinite(q.grad.numpy()).all()


def test_only_the_inputs_that_need_gradients_get_them():
    rng = np.random.default_rng(4)
    q_val, kv_val = rng.standard_normal((N, L, E)), rng.standard_normal((N, S, 2 * E))
    weight = gu.tensor(rng.standard_normal((N, L, E)))
    both = [gu.tensor(q_val, requires_grad=True), gu.tensor(kv_val, requires_grad=True)]
    (PackedAttention.apply(*both, num_heads=H) * weight).sum().backward()
    for which in (0, 1):
        xs = [gu.tensor(q_val, requires_grad=which == 0), gu.tensor(kv_val, requires_grad=which == 1)]
        (PackedAttention.apply(*xs, num_heads=H) * weight).sum().backward()
        assert xs[1 - which].grad is None
        np.testing.assert_allclose(xs[which].grad.numpy(), both[which].grad.numpy(), rtol=1e-12, atol=1e-12)


def test_float32_stays_float32_and_in_place_edits_are_caught():
    rng = np.random.default_rng(5)
    q = gu.tensor(rng.standard_normal((N, L, E)).astype(np.float32))                 # a constant
    kv = gu.tensor(rng.standard_normal((N, S, 2 * E)).astype(np.float32), requires_grad=True)
    out = PackedAttention.apply(q, kv, num_heads=H)
    assert out.dtype == np.float32 and out.shape == (N, L, E)
    out.sum().backward()
    assert kv.grad.dtype == np.float32
    out = PackedAttention.apply(q, kv, num_heads=H)
    q.add_(1.0)                                                     # the backward would read the new q
    with pytest.raises(RuntimeError, match="modified in place"):
        out.sum().backward()


@pytest.mark.parametrize("shapes, heads", [
    ([(N, L, 3 * E + 1)], H),                     # not three equal parts
    ([(N, L, 3 * E)], 3),                         # E not divisible by the heads
    ([(N, L, E), (N, S, E)], H),                  # kv must hold 2E columns
    ([(N, L, E), (N + 1, S, 2 * E)], H),          # batch sizes differ
    ([(N, L, E), (N, S, E), (N, S + 1, E)], H),   # k and v lengths differ
    ([(L, 3 * E)], H),                            # not (N, L, C)
])
def test_shape_errors(shapes, heads):
    with pytest.raises(RuntimeError, match="PackedAttention"):
        PackedAttention.apply(*(gu.zeros(*s) for s in shapes), num_heads=heads)
