"""Kernels of groundup.ops.kernels that the fused GPT twin uses beside the engine's (the others are
tested through the ops that call them)."""

from __future__ import annotations

import numpy as np
import pytest

from groundup.ops import kernels as K


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_unshifted_matches_softmax_with_masks(dtype):
    rng = np.random.default_rng(0)
    z = (rng.standard_normal((2, 3, 5, 7)) * 4).astype(dtype)
    z[0, 0, 1, 2:] = -np.inf                                     # a partly masked row
    z[1, 2, 3, :] = -np.inf                                      # a row with no key: zeros
    any_key = np.isfinite(z).any(axis=-1)
    want = K.softmax_(z.copy())
    got = z.copy()
    assert K.softmax_unshifted_(got, any_key)
    np.testing.assert_allclose(got, want, rtol=1e-6 if dtype == np.float32 else 1e-12, atol=1e-30)
    assert not got[1, 2, 3].any()


@pytest.mark.parametrize("shift", [1e3, -1e3])
def test_softmax_unshifted_refuses_when_exp_would_overflow_or_underflow(shift):
    z = np.random.default_rng(1).standard_normal((4, 6)).astype(np.float32)
    z[2] += shift                                                # one row far up or far down
    assert not K.softmax_unshifted_(z.copy())


def test_fast_gpt_agrees_with_readable_when_scores_are_huge():
    """Scores beyond exp's range take the row-maximum path (recomputed) and still match."""
    import groundup as gu
    from groundup.models.gpt import GPT, GPTConfig
    from groundup.models.gpt_fast import FastGPT

    gu.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=13, block_size=8, n_layer=1, n_head=2, n_embd=16)).double()
    with gu.no_grad():
        model.blocks[0].attn.qkv.weight.data[...] *= 300.0        # q k^T / sqrt(D) beyond 1e3: past exp's range
    fast = model.as_class(FastGPT)
    idx = np.random.default_rng(0).integers(0, 13, (2, 8))
    with gu.no_grad():
        np.testing.assert_allclose(fast(idx).numpy(), model(idx).numpy(), rtol=1e-9, atol=1e-12)


def test_layer_norm_stats_and_xhat_backward_match_layer_norm():
    rng = np.random.default_rng(2)
    x, dxhat = rng.standard_normal((5, 8)) * 3 + 1, rng.standard_normal((5, 8))
    _, xhat, rstd = K.layer_norm(x, None, None, 1e-5)
    xhat2, rstd2 = K.layer_norm_stats(x, 1e-5)
    np.testing.assert_allclose(xhat2, xhat, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(rstd2, rstd, rtol=1e-12)
    want, _, _ = K.layer_norm_backward(dxhat, xhat, rstd, None, False)
    got = K.layer_norm_backward_xhat(dxhat.copy(), xhat2, rstd2)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
