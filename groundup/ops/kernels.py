"""Raw-array kernels: each formula's forward and backward written once, over NumPy/CuPy arrays.

The engine's fused Functions (``ops/fused.py``, ``ops/attention.py``) and the GPT's fast twin
(``models/gpt_fast_block.py``, ``models/gpt_decode.py``) call these; nothing here knows about Tensors
or autograd. Row-wise kernels take 2-D ``(N, C)`` arrays (N = every leading dim flattened).

    layer norm  y = xhat w + b, xhat = (x - mean) rstd   dx = rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat))
    linear      y = x W^T + b                            dx = dy W,  dW = dy^T x,  db = sum_rows dy
    gelu (tanh) y = x s, s = sigmoid(2u) = (1 + tanh u) / 2, u = c (x + a x^3)
                dy/dx = s + 2 c x s (1 - s) (1 + 3 a x^2)
    gelu (erf)  y = x Phi(x), Phi(x) = (1 + erf(x / sqrt 2)) / 2
                dy/dx = Phi(x) + x phi(x), phi(x) = exp(-x^2 / 2) / sqrt(2 pi)
    softmax     p = softmax(z)                           dz = p (dp - sum(dp p))
    rotary      q' = q cos + R(q) sin, R([q1, q2]) = [-q2, q1]    dq = dq' cos + R^T(dq' sin)

Masks. One rule for causal attention, torch's: query i may see keys 0..i (top-left aligned, also
when the query and key lengths differ). A query row with no key it may see gets all-zero weights
(torch returns NaN there), so padded rows stay finite.

References: Ba et al. 2016 (layer norm), Hendrycks & Gimpel 2016 (GELU; GPT-2's tanh form),
Abramowitz & Stegun 1964, formula 7.1.26 (erfc for the exact GELU in float32),
Vaswani et al. 2017 (attention), Su et al. 2021 (rotary, rotate-half form as in GPT-NeoX).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np

from groundup.backend import array_module, erf

__all__ = ["layer_norm", "layer_norm_backward", "layer_norm_stats", "layer_norm_backward_xhat", "linear", "matmul_tn",
           "gelu_tanh", "gelu_tanh_with_slope", "gelu_erf_with_slope", "softmax_",
           "softmax_unshifted_", "softmax_backward", "causal_mask", "attention_bias", "rotate_half", "apply_rotary",
           "dropout_mask"]

GELU_C = math.sqrt(2.0 / math.pi)
GELU_A = 0.044715


# ----------------------------------------------------------------------------- layer norm, linear
@functools.lru_cache(maxsize=64)
def _ones(n: int, dtype: str, xp: Any) -> Any:
    return xp.ones(n, dtype=dtype)


def column_sums(a: Any) -> Any:
    """a (N, F) -> (F,): the sum over rows as ones @ a, one GEMV.

    NOTE: NumPy's a.sum(axis=0) on a (1500, 64) float32 array takes ~41 us, the GEMV ~7 us, and
    its float32 error was no larger (2.8e-5 vs 7.9e-5 against a float64 sum there)."""
    xp = array_module(a)
    return _ones(a.shape[0], a.dtype.str, xp) @ a


ROW_BLOCK: int | str | None = "auto"   # rows per GEMM in ``matmul_tn`` (None: one GEMM; "auto": ``blas_row_block``)
AVX512_CORES = ("skylakex", "cooperlake", "sapphirerapids")   # OpenBLAS's AVX-512 sgemm kernels


@functools.cache
def blas_row_block() -> int | None:
    """``matmul_tn``'s rows per GEMM for the BLAS NumPy runs: None (one GEMM) with OpenBLAS's AVX-512
    kernels, 192 otherwise (and when threadpoolctl, which reads the kernels' name, is missing).

    NOTE: measured on 2 cores, 2026-12-02, float32 (K rows, M, N), one GEMM against blocks of 192:
    AMD EPYC, AVX2 kernels: (704, 512, 128) 5.56 against 2.88 ms, blocks needed; Intel Xeon (Ice
    Lake), SkylakeX kernels, two threads: (704, 512, 128) 589 against 718 us, (4096, 1536, 384) 24.8
    against 42.6 ms, one GEMM faster for every shape tried; AMD EPYC (Zen 5), SkylakeX kernels: one
    GEMM 1.1-2x faster.
    """
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return 192
    cores = {str(lib.get("architecture", "")).lower() for lib in threadpool_info()
             if lib.get("internal_api") == "openblas"}
    return None if cores and cores <= set(AVX512_CORES) else 192


def matmul_tn(a: Any, b: Any, out: Any = None) -> Any:
    """a (K, M), b (K, N) -> a^T b (M, N), the K rows taken ``ROW_BLOCK`` at a time and the blocks summed
    (``blas_row_block`` says how many, where the BLAS needs blocks at all).

    This is every weight gradient's shape (dW = dy^T x, K = the rows of the batch). NOTE: OpenBLAS's
    AVX2 sgemm runs these long-K products far below its speed elsewhere; measured on a 2-core AMD
    EPYC (AVX2) on 2026-12-02: (704, 192)^T (704, 64) 915 us in one GEMM, 524 us in blocks of 192
    rows; (704, 512)^T (704, 128) 5.56 ms against 2.88 ms (blocks of 256 were slow again for some
    shapes). The blocked sum is no less accurate (shorter running sums). ``out``: an (M, N) array
    to write the result into.
    """
    xp = array_module(a)
    rows = a.shape[0]
    per_gemm = blas_row_block() if ROW_BLOCK == "auto" else ROW_BLOCK
    block = max(rows if xp is not np or per_gemm is None else int(per_gemm), 1)
    out = xp.matmul(a[:block].T, b[:block], out=out)                # (M, N)
    for start in range(block, rows, block):
        out += a[start:start + block].T @ b[start:start + block]
    return out


def check_rows(idx: Any, rows: int, op: str, noun: str) -> None:
    """Every index in ``idx`` picks one of ``rows`` rows, or an IndexError names the op and the index."""
    if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= rows):
        bad = int(idx.min()) if int(idx.min()) < 0 else int(idx.max())
        raise IndexError(f"{op}: index {bad} is out of range for {rows} {noun}")


def embedding_grad(idx: Any, g: Any, rows: int) -> Any:
    """The gradient of a (rows, C) table whose rows ``idx`` (N,) were looked up: g (N, C) summed per row.

    NOTE: as a one-hot (rows, N) GEMM while that matrix is small (faster than ``add.at`` here)."""
    xp = array_module(g)
    if rows * idx.size <= 1 << 24:
        onehot = (xp.arange(rows)[:, None] == idx[None, :]).astype(g.dtype)   # (rows, N)
        return onehot @ g                                           # (rows, C)
    grad = xp.zeros((rows, g.shape[1]), dtype=g.dtype)
    xp.add.at(grad, idx, g)
    return grad


def row_sums(a: Any) -> Any:
    """a (N, F) -> (N, 1): the sum over each row as a @ ones, one GEMV (see ``column_sums``)."""
    xp = array_module(a)
    return (a @ _ones(a.shape[1], a.dtype.str, xp))[:, None]


def layer_norm(x: Any, weight: Any, bias: Any, eps: float) -> tuple[Any, Any, Any]:
    """x (N, C) -> (y, xhat, rstd (N, 1)); weight/bias (C,) or None."""
    xp = array_module(x)
    inv_c = 1.0 / x.shape[1]
    mean = row_sums(x)                                              # (N, 1)
    mean *= inv_c
    xhat = x - mean
    var = xp.einsum("ij,ij->i", xhat, xhat)[:, None]                # (N, 1)
    var *= inv_c
    var += eps
    rstd = xp.sqrt(var, out=var)
    xp.reciprocal(rstd, out=rstd)
    xhat *= rstd
    y = xhat * weight if weight is not None else xhat.copy()
    if bias is not None:
        y += bias
    return y, xhat, rstd


def layer_norm_backward(dy: Any, xhat: Any, rstd: Any, weight: Any, has_bias: bool) -> tuple[Any, Any, Any]:
    """Gradients (dx, dweight, dbias) of ``layer_norm`` for dy (N, C); dweight is None without a weight."""
    xp = array_module(dy)
    inv_c = 1.0 / dy.shape[1]
    prod = dy * xhat                                                # (N, C)
    dweight = column_sums(prod) if weight is not None else None
    dbias = column_sums(dy) if has_bias else None
    # NOTE: with dxhat = dy * weight, the row means of dxhat and of dxhat * xhat are GEMVs of dy and
    # of dy * xhat (already made for dweight) with the weight: two passes over (N, C) fewer than
    # forming them from dxhat (measured 2026-12-03, Intel Xeon, (1600, 64): 613 -> 572 us).
    if weight is not None:
        mean_dxhat = (dy @ weight)[:, None]                         # (N, 1)
        mean_dxhat_xhat = (prod @ weight)[:, None]                  # (N, 1)
        dxhat = dy * weight
    else:
        mean_dxhat, mean_dxhat_xhat, dxhat = row_sums(dy), row_sums(prod), dy.copy()
    mean_dxhat *= inv_c
    mean_dxhat_xhat *= inv_c
    dxhat -= mean_dxhat
    xp.multiply(xhat, mean_dxhat_xhat, out=prod)
    dxhat -= prod
    dxhat *= rstd
    return dxhat, dweight, dbias


def layer_norm_stats(x: Any, eps: float) -> tuple[Any, Any]:
    """x (N, C) -> (xhat, rstd (N, 1)): ``layer_norm`` without its weight and bias.

    NOTE: the row means are a matrix-vector product with 1/C (BLAS), cheaper than ``sum(axis=1)``
    over a short axis.
    """
    xp = array_module(x)
    n = x.shape[1]
    mean = x @ xp.full(n, 1.0 / n, dtype=x.dtype)                  # (N,)
    xhat = x - mean[:, None]
    var = xp.einsum("ij,ij->i", xhat, xhat)                         # (N,)
    var *= 1.0 / n
    var += eps
    rstd = xp.sqrt(var, out=var)
    xp.reciprocal(rstd, out=rstd)
    rstd = rstd[:, None]                                            # (N, 1)
    xhat *= rstd
    return xhat, rstd


def layer_norm_backward_xhat(dxhat: Any, xhat: Any, rstd: Any) -> Any:
    """dx of ``layer_norm_stats`` from the gradient of xhat, in place on dxhat.

    dx = rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat)). With the norm's weight folded into the
    Linear after it (``fold_layer_norm`` in ``models/gpt_fast_block.py``), that Linear's backward gives
    dxhat directly.
    """
    xp = array_module(dxhat)
    n = dxhat.shape[1]
    mean = dxhat @ xp.full(n, 1.0 / n, dtype=dxhat.dtype)          # (N,)
    m = xp.einsum("ij,ij->i", dxhat, xhat)[:, None]                 # (N, 1)
    m *= 1.0 / n
    dxhat -= mean[:, None]
    dxhat -= xhat * m
    dxhat *= rstd
    return dxhat


def linear(x: Any, weight: Any, bias: Any) -> Any:
    """x (N, in) @ weight (out, in).T + bias -> (N, out)."""
    y = x @ weight.T                                                # (N, out)
    if bias is not None:
        y += bias
    return y


# ----------------------------------------------------------------------------- GELU (tanh form)
def gelu_tanh(f: Any) -> Any:
    """GPT-2's tanh GELU written with a sigmoid: 0.5 f (1 + tanh(u)) = f sigmoid(2u), u = c (f + a f^3).

    NOTE: the sigmoid form needs one ``exp`` instead of a ``tanh``, which NumPy computes more slowly.
    """
    xp = array_module(f)
    s = f * f
    s *= -2 * GELU_A * GELU_C
    s -= 2 * GELU_C
    s *= f                                                          # -2u
    with np.errstate(over="ignore"):                                # exp(+large) = inf -> s = 0: the right limit
        xp.exp(s, out=s)
    s += 1.0
    xp.reciprocal(s, out=s)                                         # sigmoid(2u)
    s *= f
    return s


def gelu_tanh_with_slope(f: Any, rows: int | None = None, slope_into_f: bool = False) -> tuple[Any, Any]:
    """GELU (tanh) and its derivative: f (N, F) -> (y, gelu'(f)), so that the backward is one multiply.
    ``slope_into_f``: the slope is written over f (a caller done with f saves a fresh array's writes).

    y = f h, h = (1 + tanh(u)) / 2 = sigmoid(2u);  gelu'(f) = h + y (1 - h) 2c (1 + 3a f^2).
    On NumPy the rows go ``rows`` at a time (default: blocks of about 2^15 elements, split evenly).
    NOTE: the blocks keep the ~14 passes over each block in cache without cutting the work into so
    many NumPy calls that their overhead (and, inside ``cpu_threads``, the GIL hand-offs between
    them) dominates; here ``tanh`` costs less than the ``exp`` and ``reciprocal`` of the sigmoid form.
    """
    xp = array_module(f)
    shape = f.shape
    f = f.reshape(-1, shape[-1]) if f.ndim >= 2 else f.reshape(1, -1)         # (N, F): rows of the last dim
    n, width = f.shape
    if xp is not np:
        rows = n
    elif rows is None:
        blocks = max(1, -(-n * width // (1 << 15)))
        rows = -(-n // blocks)
    rows = max(1, min(rows, n))
    y, slope = xp.empty_like(f), (f if slope_into_f else xp.empty_like(f))
    f2_buf, h_buf = xp.empty((rows, width), f.dtype), xp.empty((rows, width), f.dtype)
    for i in range(0, n, rows):
        fb, yb, gb = f[i:i + rows], y[i:i + rows], slope[i:i + rows]
        f2, h = f2_buf[:len(fb)], h_buf[:len(fb)]
        xp.multiply(fb, fb, out=f2)
        xp.multiply(f2, GELU_A * GELU_C, out=h)
        h += GELU_C
        h *= fb                                                     # u = c (f + a f^3)
        xp.tanh(h, out=h)
        h *= 0.5
        h += 0.5                                                    # h = (1 + tanh u) / 2
        xp.multiply(fb, h, out=yb)                                  # y = f h
        f2 *= 6 * GELU_A * GELU_C
        f2 += 2 * GELU_C                                            # 2c (1 + 3a f^2)
        f2 *= yb
        xp.subtract(1.0, h, out=gb)
        gb *= f2
        gb += h                                                     # h + y (1 - h) 2c (1 + 3a f^2)
    return y.reshape(shape), slope.reshape(shape)

# ----------------------------------------------------------------------------- GELU (exact, erf form)
# Abramowitz & Stegun 7.1.26 (Hastings): erfc(z) ~= t P(t) exp(-z^2), t = 1 / (1 + p z) for z >= 0,
# |error| <= 1.5e-7. The kernel works with s = 1 / (k + |x|), k = sqrt 2 / p, so that t = k s costs no
# multiply: the coefficients below are a_j k^(j+1) * (-sqrt(2 pi) / 2), so that the polynomial in s times
# the normal density phi(x) = exp(-x^2 / 2) / sqrt(2 pi) is -erfc(|x| / sqrt 2) / 2 in one multiply.
ERF_P = 0.3275911
ERF_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)
_ERF_K = math.sqrt(2.0) / ERF_P
_ERFC_PHI = tuple(a * _ERF_K ** (j + 1) * -0.5 * math.sqrt(2 * math.pi) for j, a in enumerate(ERF_A))
_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)
_SIGN_BIT = np.int32(-2 ** 31)                                     # float32's sign bit, as an int32


def gelu_erf_with_slope(f: Any, rows: int | None = None, slope_into_f: bool = False) -> tuple[Any, Any]:
    """Exact GELU and its derivative: f (N, F) -> (y, gelu'(f)), so that the backward is one multiply.
    ``slope_into_f``: the slope is written over f (a caller done with f saves a fresh array's writes:
    measured, (512, 512) out of the cache 1652 -> 1562 us).

    y = f Phi(f), Phi(f) = (1 + erf(f / sqrt 2)) / 2;  gelu'(f) = Phi(f) + f phi(f).
    float32 on NumPy: Phi from the erfc approximation above (A&S 7.1.26: y within 2e-7 max(1, |f|)
    of the exact value, as close as PyTorch's float32 GELU), its exp giving phi as well, with the rows
    going ``rows`` at a time (default: blocks of about 2^15 elements, split evenly) so that the ~24
    passes and their three scratch blocks stay in L2.
    Other dtypes (float64) and CuPy: ``backend.erf`` (SciPy / CuPy, exact to the dtype's precision).
    NOTE: SciPy's float32 ``erf`` costs ~50 NumPy multiplies per element; each pass here costs about one.
    ``np.copysign`` costs ~6 (it has no SIMD loop), so f's sign goes onto erf(|f|) with two integer passes.
    """
    xp = array_module(f)
    if xp is not np or f.dtype != np.float32:
        cdf = erf(f * (1 / math.sqrt(2.0)))
        cdf += 1.0
        cdf *= 0.5                                                  # Phi(f)
        with np.errstate(under="ignore"):
            pdf = xp.exp(-0.5 * f * f)
        pdf *= f * (1 / math.sqrt(2 * math.pi))                     # f phi(f)
        pdf += cdf
        y = f * cdf
        if slope_into_f:
            f[...] = pdf
            pdf = f
        return y, pdf
    shape = f.shape
    f = f.reshape(-1, shape[-1]) if f.ndim >= 2 else f.reshape(1, -1)         # (N, F): rows of the last dim
    n, width = f.shape
    if rows is None:
        blocks = max(1, -(-n * width // (1 << 15)))
        rows = -(-n // blocks)
    rows = max(1, min(rows, n))
    y, slope = np.empty_like(f), (f if slope_into_f else np.empty_like(f))
    s_buf, q_buf, e_buf = (np.empty((rows, width), f.dtype) for _ in range(3))
    with np.errstate(under="ignore", over="ignore"):                # exp(-f^2 / 2) -> 0 for large |f|: right
        for i in range(0, n, rows):
            fb, yb, gb = f[i:i + rows], y[i:i + rows], slope[i:i + rows]
            s, q, e = s_buf[:len(fb)], q_buf[:len(fb)], e_buf[:len(fb)]
            np.absolute(fb, out=s)
            s += _ERF_K
            np.reciprocal(s, out=s)                                 # s = 1 / (k + |f|): t = k s
            np.multiply(s, _ERFC_PHI[4], out=q)
            for a in _ERFC_PHI[3::-1]:
                q += a
                q *= s                                              # Horner: t P(t), scaled
            np.multiply(fb, fb, out=e)
            e *= -0.5
            e -= _LOG_SQRT_2PI
            np.exp(e, out=e)                                        # phi(f)
            q *= e                                                  # -erfc(|f| / sqrt 2) / 2
            q += 0.5                                                # erf(|f| / sqrt 2) / 2, >= 0 (to within rounding)
            sign = s.view(np.int32)                                 # s is spent: its block holds f's sign bits
            np.bitwise_and(fb.view(np.int32), _SIGN_BIT, out=sign)
            np.bitwise_or(q.view(np.int32), sign, out=q.view(np.int32))   # erf(f / sqrt 2) / 2
            q += 0.5                                                # Phi(f)
            np.multiply(fb, q, out=yb)                              # y = f Phi(f)
            np.multiply(fb, e, out=gb)
            gb += q                                                 # Phi(f) + f phi(f)
    return y.reshape(shape), slope.reshape(shape)


# ----------------------------------------------------------------------------- softmax
def softmax_(z: Any, axis: int = -1) -> Any:
    """Softmax over ``axis``, in place; a row whose entries are all -inf becomes zeros. Returns z."""
    xp = array_module(z)
    shift = z.max(axis=axis, keepdims=True)
    shift[~xp.isfinite(shift)] = 0.0
    z -= shift
    with np.errstate(under="ignore"):
        xp.exp(z, out=z)
    total = z.sum(axis=axis, keepdims=True)
    total[total == 0] = 1.0
    z /= total
    return z


def softmax_unshifted_(z: Any, any_key: Any = True) -> bool:
    """Softmax over the last axis in place, without subtracting each row's maximum; False if it could not.

    Softmax is shift-invariant, so exp(z) / sum(exp(z)) is the same softmax as ``softmax_`` computes,
    as long as no exp overflows and no row's exps all underflow. This checks both: the largest entry
    must be below L = log(finfo.max) / 2 (then a row's sum stays finite), and every row in
    ``any_key`` (True = every row, or a bool array broadcastable to z.shape[:-1]: rows that have a
    finite entry) must sum to at least exp(-L) (then its maximum is above -L). A row with no finite
    entry becomes zeros, as in ``softmax_``. On False, z holds garbage: recompute it and call
    ``softmax_``.
    NOTE: a row maximum is a reduction over a short axis, several times slower in NumPy than an
    ``exp`` over the same array; the single global maximum and the row sums (a matrix-vector
    product with ones) are cheap.
    """
    xp = array_module(z)
    limit = 0.5 * math.log(float(np.finfo(z.dtype).max))
    top = float(z.max()) if z.size else 0.0
    if not top <= limit:                                            # too large, or NaN
        return False
    with np.errstate(under="ignore"):
        xp.exp(z, out=z)
    n = z.shape[-1]
    total = z.reshape(-1, n) @ xp.ones(n, dtype=z.dtype)            # (rows,) the row sums
    total = total.reshape(z.shape[:-1])
    small = total < math.exp(-limit)
    if any_key is not True:
        small &= any_key
        total[total == 0] = 1.0                                     # rows without keys: zeros
    if small.any():
        return False
    z *= xp.reciprocal(total, out=total)[..., None]
    return True


def softmax_backward(p: Any, dp: Any, axis: int = -1) -> Any:
    """dz for p = softmax(z): p (dp - sum(dp p))."""
    return p * (dp - (dp * p).sum(axis=axis, keepdims=True))


# ----------------------------------------------------------------------------- attention masks
@functools.lru_cache(maxsize=64)
def _causal_bias_np(t_q: int, t_k: int, dtype: str) -> np.ndarray:
    bias = np.where(np.tril(np.ones((t_q, t_k), dtype=bool)), 0.0, -np.inf).astype(dtype)
    bias.flags.writeable = False                                    # shared: only ever added to scores
    return bias


def causal_mask(t_q: int, t_k: int, xp: Any = np) -> Any:
    """(t_q, t_k) bool, True where query i may see key j: j <= i (torch's top-left alignment)."""
    return xp.tril(xp.ones((t_q, t_k), dtype=bool))


def attention_bias(mask: Any, is_causal: bool, t_q: int, t_k: int, dtype: Any, xp: Any) -> Any:
    """Additive scores bias (0 = attend, -inf = blocked) from torch-style masks, or None.

    ``mask``: bool (True = may attend) or float (added as it is), broadcastable to (..., t_q, t_k).
    """
    bias = None
    if is_causal:
        bias = _causal_bias_np(t_q, t_k, np.dtype(dtype).str) if xp is np else \
            xp.where(causal_mask(t_q, t_k, xp), 0.0, -xp.inf).astype(dtype)                  # (t_q, t_k)
    if mask is not None:
        extra = xp.where(mask, 0.0, -xp.inf).astype(dtype) if mask.dtype == bool else mask.astype(dtype)
        bias = extra if bias is None else extra + bias
    return bias


# ----------------------------------------------------------------------------- rotary, dropout
def rotate_half(x: Any, sign: int = 1) -> Any:
    """R(x) = [-x2, x1] (sign=+1) or its transpose R^T(x) = [x2, -x1] (sign=-1), on the last dim."""
    xp = array_module(x)
    half = x.shape[-1] // 2
    out = xp.empty_like(x)
    if sign > 0:
        xp.negative(x[..., half:], out=out[..., :half])
        out[..., half:] = x[..., :half]
    else:
        out[..., :half] = x[..., half:]
        xp.negative(x[..., :half], out=out[..., half:])
    return out


def apply_rotary(x: Any, cos: Any, sin: Any, sign: int = 1) -> Any:
    """x (..., T, D) -> x cos + R(x) sin (sign=+1); sign=-1 is the adjoint, for the backward."""
    out = x * cos
    out += rotate_half(x * sin, -1) if sign < 0 else rotate_half(x, 1) * sin
    return out


_DEVICE_STREAMS: dict[int, Any] = {}          # one CuPy RandomState per GPU, reseeded for every mask


def dropout_mask(rng: np.random.Generator, shape: tuple[int, ...], p: float, dtype: Any, xp: Any = np) -> Any:
    """Inverted-dropout multiplier: 0 with probability p, else 1/(1-p); one float32 draw per element.

    Every dropout in the engine draws through here, so two models that draw the same shapes in the
    same order from one generator drop the same elements. On the GPU the host generator gives one
    64-bit seed per mask and the GPU draws the elements (cuRAND): drawing them on the host and
    copying them over cost ~1.5 s per step of the small GPT (B=64, T=256, 6 heads); the masks then
    differ from the CPU's, but the readable and fused twins on the GPU still drop the same elements.
    """
    if xp is np:
        keep = rng.random(shape, dtype=np.float32) >= p
        return (keep * (1.0 / (1.0 - p))).astype(dtype)
    seed = int(rng.integers(0, 2**63 - 1))
    device = xp.cuda.Device().id
    stream = _DEVICE_STREAMS.get(device)
    if stream is None:
        stream = _DEVICE_STREAMS[device] = xp.random.RandomState(seed)
    else:
        stream.seed(seed)
    keep = stream.random_sample(shape, dtype=np.float32) >= p
    return (keep * (1.0 / (1.0 - p))).astype(dtype)
