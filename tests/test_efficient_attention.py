"""Causal attention variants (groundup.models.efficient_attention) against independent oracles: a float64
NumPy softmax reference (and torch's scaled_dot_product_attention), a band-masked reference for the
sliding window, the direct O(T^2) kernelised formula for linear attention, finite differences for gradients."""

from __future__ import annotations

import numpy as np
import pytest

import groundup as gu
from groundup.models.efficient_attention import (
    chunked_attention,
    full_attention,
    linear_attention,
    sliding_window_attention,
)
from tests.helpers import check_grad


def _qkv(shape=(2, 3, 37, 8), seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape).astype(dtype) for _ in range(3)]


def reference_attention(q, k, v, window=None):
    """Plain float64 NumPy: softmax over j <= i (and i - j < window) of q_i . k_j / sqrt(D), times v."""
    q, k, v = (np.asarray(x, dtype=np.float64) for x in (q, k, v))
    T, D = q.shape[-2:]
    scores = q @ np.swapaxes(k, -1, -2) / np.sqrt(D)                          # (B, H, T, T)
    i, j = np.arange(T)[:, None], np.arange(T)[None, :]
    allowed = j <= i if window is None else (j <= i) & (i - j < window)
    scores = np.where(allowed, scores, -np.inf)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    return (weights / weights.sum(-1, keepdims=True)) @ v                     # (B, H, T, D)


def reference_linear_attention(q, k, v):
    """The kernelised formula computed directly, O(T^2), with f(x) = elu(x) + 1:
    out_i = sum_{j<=i} (f(q_i) . f(k_j)) v_j / sum_{j<=i} f(q_i) . f(k_j)."""
    def feature(x):
        return np.where(x > 0, x + 1.0, np.exp(np.minimum(x, 0.0)))          # elu(x) + 1

    fq, fk = feature(np.asarray(q, np.float64)), feature(np.asarray(k, np.float64))
    T = fq.shape[-2]
    kernel = (fq @ np.swapaxes(fk, -1, -2)) * np.tril(np.ones((T, T)))        # (B, H, T, T)
    return (kernel @ v) / kernel.sum(-1, keepdims=True)


def _run(fn, *arrays):
    with gu.no_grad():
        return fn(*(gu.tensor(a) for a in arrays)).numpy()


def test_full_attention_matches_numpy_and_torch():
    torch = pytest.importorskip("torch")
    q, k, v = _qkv()
    np.testing.assert_allclose(_run(full_attention, q, k, v), reference_attention(q, k, v), rtol=1e-10, atol=1e-12)
    q32, k32, v32 = (x.astype(np.float32) for x in (q, k, v))
    expected = torch.nn.functional.scaled_dot_product_attention(*(torch.tensor(x) for x in (q32, k32, v32)),
                                                                is_causal=True).numpy()
    out = _run(full_attention, q32, k32, v32)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, atol=1e-5)


@pytest.mark.parametrize("chunk", [1, 5, 16, 37, 100])
def test_chunked_attention_equals_full_attention(chunk):
    q, k, v = _qkv()
    np.testing.assert_allclose(_run(lambda *a: chunked_attention(*a, chunk=chunk), q, k, v),
                               reference_attention(q, k, v), rtol=1e-10, atol=1e-12)


def test_chunked_attention_is_stable_with_large_scores():
    q, k, v = _qkv(shape=(1, 1, 20, 4), seed=1)
    q, k = 300 * q, 300 * k                                                   # exp would overflow without the shift
    out = _run(lambda *a: chunked_attention(*a, chunk=6), q.astype(np.float32), k.astype(np.float32),
               v.astype(np.float32))
    np.testing.assert_allclose(out, reference_attention(q, k, v), atol=1e-4)


@pytest.mark.parametrize("window", [1, 3, 8, 37, 50])
def test_sliding_window_equals_band_masked_attention(window):
    q, k, v = _qkv()
    out = _run(lambda *a: sliding_window_attention(*a, window=window), q, k, v)
    np.testing.assert_allclose(out, reference_attention(q, k, v, window=window), rtol=1e-10, atol=1e-12)
    if window == 1:
        np.testing.assert_allclose(out, v)                                    # each position sees only itself


@pytest.mark.parametrize("chunk", [1, 4, 64])
def test_linear_attention_equals_the_direct_quadratic_formula(chunk):
    q, k, v = _qkv()
    np.testing.assert_allclose(_run(lambda *a: linear_attention(*a, chunk=chunk), q, k, v),
                               reference_linear_attention(q, k, v), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("fn", [
    full_attention,
    lambda q, k, v: sliding_window_attention(q, k, v, window=3),
    lambda q, k, v: linear_attention(q, k, v, chunk=3),
    lambda q, k, v: chunked_attention(q, k, v, chunk=3),
], ids=["full", "sliding", "linear", "chunked"])
def test_gradients_match_finite_differences(fn):
    check_grad(fn, (1, 2, 7, 3), (1, 2, 7, 3), (1, 2, 7, 3))


def test_chunked_gradients_equal_full_attention_gradients():
    arrays = _qkv(shape=(1, 2, 11, 4), seed=2)
    grads = []
    for fn in (full_attention, lambda q, k, v: chunked_attention(q, k, v, chunk=4)):
        tensors = [gu.tensor(a, requires_grad=True) for a in arrays]
        (fn(*tensors) * gu.tensor(arrays[0])).sum().backward()
        grads.append([t.grad.numpy() for t in tensors])
    for a, b in zip(*grads):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


def test_bad_shapes_and_arguments_raise_clear_errors():
    q, k, v = _qkv(shape=(2, 5, 4))
    with pytest.raises(ValueError, match=r"\(B, H, T, D\)"):
        full_attention(q, k, v)
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="same shape"):
        chunked_attention(q, k[:, :, :10], v)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="window must be a positive integer"):
            sliding_window_attention(q, k, v, bad)
        with pytest.raises(ValueError, match="chunk must be a positive integer"):
            chunked_attention(q, k, v, bad)
    with pytest.raises(ValueError, match="linear_attention: chunk"):
        linear_attention(q, k, v, chunk=0)
