"""Kernels of groundup.ops.kernels that the fused GPT twin uses beside the engine's, and the exact
GELU against math.erf (float32 and float64) and torch (the others are tested through the ops that
call them)."""

from __future__ import annotations

import math

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


def _gelu_exact(x):
    """GELU and its derivative in float64 from math.erf: the oracle for both kernels' paths."""
    x = np.asarray(x, dtype=np.float64)
    cdf = 0.5 * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))
    return x * cdf, cdf + x * np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


def test_gelu_erf_float32_is_exact_to_float32_rounding():
    """The A&S 7.1.26 path: |Phi error| <= 1.5e-7, so |y error| <= 2e-7 max(1, |x|), over +-12 and tiny x."""
    x = np.concatenate([np.linspace(-12, 12, 48_001), [0.0, -0.0, 1e-30, -1e-8, 3e-4]]).astype(np.float32)
    y, slope = K.gelu_erf_with_slope(x.reshape(-1, 7))
    want_y, want_slope = _gelu_exact(x)
    assert y.dtype == slope.dtype == np.float32 and y.shape == (x.size // 7, 7)
    assert np.all(np.abs(y.reshape(-1) - want_y) <= 2e-7 * np.maximum(1.0, np.abs(x)))
    np.testing.assert_allclose(slope.reshape(-1), want_slope, rtol=0, atol=5e-7)
    assert y.reshape(-1)[x.size - 5] == 0.0 and abs(slope.reshape(-1)[x.size - 5] - 0.5) <= 6e-8   # one ulp


def test_gelu_erf_float64_is_exact():
    x = np.random.default_rng(3).standard_normal((6, 5)) * 4
    y, slope = K.gelu_erf_with_slope(x)
    want_y, want_slope = _gelu_exact(x)
    assert y.dtype == np.float64
    np.testing.assert_allclose(y, want_y, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(slope, want_slope, rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("kernel", ["gelu_erf_with_slope", "gelu_tanh_with_slope"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gelu_slope_written_over_its_input_is_the_same_slope(kernel, dtype):
    fn = getattr(K, kernel)
    x = (np.random.default_rng(5).standard_normal((33, 17)) * 3).astype(dtype)
    y, slope = fn(x.copy())
    f = x.copy()
    y2, slope2 = fn(f, rows=5, slope_into_f=True)
    assert np.shares_memory(slope2, f)
    np.testing.assert_array_equal(y2, y)
    np.testing.assert_array_equal(slope2, slope)


def test_gelu_erf_blocks_do_not_change_the_result():
    x = (np.random.default_rng(4).standard_normal((2, 11, 9)) * 3).astype(np.float32)
    y, slope = K.gelu_erf_with_slope(x)
    for rows in (1, 4, 21, 100):                                 # blocks with a remainder, one block
        y2, slope2 = K.gelu_erf_with_slope(x, rows=rows)
        assert y2.shape == x.shape
        np.testing.assert_array_equal(y2, y)
        np.testing.assert_array_equal(slope2, slope)


def test_gelu_tanh_in_blocks_matches_float64_and_finite_differences():
    """The tanh kernel over several default blocks (70k elements, blocks of ~2^15): y against the float64
    formula, the slope against central differences of it; other block sizes give the same bits."""
    x = (np.random.default_rng(7).standard_normal((70, 1000)) * 3).astype(np.float32)
    y, slope = K.gelu_tanh_with_slope(x)
    x64 = x.astype(np.float64)

    def gelu(v):
        return 0.5 * v * (1 + np.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v ** 3)))

    h = 1e-6
    np.testing.assert_allclose(y, gelu(x64), rtol=0, atol=1e-6 * np.maximum(1.0, np.abs(x64)).max())
    np.testing.assert_allclose(slope, (gelu(x64 + h) - gelu(x64 - h)) / (2 * h), rtol=0, atol=2e-6)
    for rows in (1, 7, 70):
        y2, slope2 = K.gelu_tanh_with_slope(x, rows=rows)
        np.testing.assert_array_equal(y2, y)
        np.testing.assert_array_equal(slope2, slope)


def test_gelu_exact_matches_torch_in_float32():
    torch = pytest.importorskip("torch")
    import groundup as gu
    from groundup import functional as F

    x = (np.random.default_rng(5).standard_normal((64, 96)) * 3).astype(np.float32)
    g = np.random.default_rng(6).standard_normal(x.shape).astype(np.float32)
    xt = torch.tensor(x, requires_grad=True)
    torch.nn.functional.gelu(xt).backward(torch.tensor(g))
    xg = gu.tensor(x, requires_grad=True)
    out = F.gelu(xg)
    out.backward(gu.tensor(g))
    np.testing.assert_allclose(out.detach().numpy(), torch.nn.functional.gelu(xt).detach().numpy(), rtol=0, atol=3e-6)
    np.testing.assert_allclose(xg.grad.numpy(), xt.grad.numpy(), rtol=0, atol=3e-6)


@pytest.mark.parametrize("rows", [0, 1, 191, 192, 193, 3 * 192 + 17])
def test_matmul_tn_sums_its_row_blocks_to_a_transpose_b(rows, monkeypatch):
    """The weight-gradient product a^T b, taken ROW_BLOCK rows at a time, against one float64 GEMM;
    with ``out`` it writes there; with ROW_BLOCK None it is one GEMM."""
    monkeypatch.setattr(K, "ROW_BLOCK", 192)
    rng = np.random.default_rng(rows)
    a, b = rng.standard_normal((rows, 6)), rng.standard_normal((rows, 5))
    want = a.T @ b
    np.testing.assert_allclose(K.matmul_tn(a, b), want, rtol=1e-12, atol=1e-12)
    out = np.full((6, 5), np.nan)
    assert K.matmul_tn(a, b, out=out) is out
    np.testing.assert_allclose(out, want, rtol=1e-12, atol=1e-12)
    got32 = K.matmul_tn(a.astype(np.float32), b.astype(np.float32))
    assert got32.dtype == np.float32
    np.testing.assert_allclose(got32, want, rtol=1e-4, atol=1e-4)
    monkeypatch.setattr(K, "ROW_BLOCK", None)
    np.testing.assert_allclose(K.matmul_tn(a, b), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("libs, want", [
    ([{"internal_api": "openblas", "architecture": "SkylakeX"}], None),
    ([{"internal_api": "openblas", "architecture": "SapphireRapids"},
      {"internal_api": "openmp", "architecture": None}], None),
    ([{"internal_api": "openblas", "architecture": "Haswell"}], 192),
    ([{"internal_api": "openblas", "architecture": "Zen"}], 192),
    ([{"internal_api": "openblas", "architecture": "SkylakeX"},
      {"internal_api": "openblas", "architecture": "Haswell"}], 192),
    ([{"internal_api": "mkl", "architecture": None}], 192),
    ([], 192),
])
def test_blas_row_block_is_one_gemm_only_with_avx512_openblas_kernels(libs, want, monkeypatch):
    """matmul_tn's default blocks (``ROW_BLOCK = "auto"``) follow the BLAS kernels threadpoolctl reports."""
    import threadpoolctl

    monkeypatch.setattr(threadpoolctl, "threadpool_info", lambda: libs)
    K.blas_row_block.cache_clear()
    try:
        assert K.blas_row_block() == want
    finally:
        K.blas_row_block.cache_clear()


def test_matmul_tn_auto_uses_blas_row_block(monkeypatch):
    """With ROW_BLOCK "auto" the product is right whichever block the machine's BLAS gets."""
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((500, 7)), rng.standard_normal((500, 4))
    monkeypatch.setattr(K, "ROW_BLOCK", "auto")
    np.testing.assert_allclose(K.matmul_tn(a, b), a.T @ b, rtol=1e-12, atol=1e-12)
