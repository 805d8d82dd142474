"""Fused ops for GPT with hand-derived backward: a stack of transformer blocks, and the final
LayerNorm + output projection + cross-entropy.

    pre-norm:   x = x + drop(proj(attention(ln_1(x))));   x = x + drop(mlp(ln_2(x)))
    post-norm:  x = ln_1(x + drop(proj(attention(x))));   x = ln_2(x + drop(mlp(x)))
    attention:  q, k, v = split(x @ qkv.T + b);  (rotary on q, k);  softmax(q k^T / sqrt(D) + mask) v
    mlp:        proj(gelu_tanh(fc(x)))

Why fuse: composed from engine primitives a GPT block is ~40 graph nodes that each allocate
their output and their gradient. Here the forward and backward are written over raw arrays with
2-D ``(B*T, C)`` GEMMs and in-place elementwise work, and on the CPU the batch is split across a
few Python threads (the calling thread and workers), each taking its slice through every block,
with BLAS single-threaded (NumPy releases the GIL inside BLAS and ufunc loops), so the
elementwise work that BLAS cannot parallelise uses every core too. BENCHMARKS.md (repo root)
lists what each of these choices buys, measured.

Backward, per sub-layer (all row-wise over N = B*T rows):
    linear      y = x W^T + b        dx = dy W,  dW = dy^T x,  db = sum_rows dy
    layer norm  y = xhat w + b       dx = rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat)), dxhat = dy w
    gelu (tanh) y = x (1 + tanh(u)) / 2 = x s,  u = c (x + a x^3),  s = sigmoid(2u)
                dy/dx = s + 2 c x s (1 - s) (1 + 3 a x^2)
    softmax     p = softmax(s)       ds = p (dp - sum(dp p))
    rotary      q' = q cos + R(q) sin,  R([q1, q2]) = [-q2, q1]:  dq = dq' cos + R^T(dq' sin), R^T([g1, g2]) = [g2, -g1]

References: Vaswani et al. 2017 (attention), Radford et al. 2019 (GPT-2 pre-norm block, GELU tanh),
Su et al. 2021 (RoPE, rotate-half form as in GPT-NeoX), nanoGPT model.py.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from groundup.backend import array_module
from groundup.function import Function

__all__ = ["TransformerBlock", "LMHeadLoss", "PARAM_NAMES", "rotary_tables", "sinusoidal_table",
           "num_threads", "parallel_map", "keep_freed_memory", "all_blas_threads"]

# Order of the block's parameters as the op takes them (None entries are skipped when bias=False).
PARAM_NAMES = ("ln_1.weight", "ln_1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight",
               "attn.proj.bias", "ln_2.weight", "ln_2.bias", "mlp.fc.weight", "mlp.fc.bias",
               "mlp.proj.weight", "mlp.proj.bias")

_GELU_C = math.sqrt(2.0 / math.pi)
_GELU_A = 0.044715


# ----------------------------------------------------------------------------- threads, memory
_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_blas_libs: list[Any] = []
_blas_original: list[int] = []
_allocator_tuned = False


def keep_freed_memory() -> None:
    """Ask glibc's malloc to keep freed memory for reuse instead of returning it to the OS at once.

    A training step allocates and frees ~50 MB of activations and gradients. With glibc's defaults,
    blocks over 128 KB come from mmap and the top of the heap is trimmed as soon as it is free, so
    every step pays for the same memory again in page faults: measured on the 2-core CI machine for
    the baby GPT, ~11,400 minor faults and ~39 ms of system time per step (157 -> 110 ms of CPU per
    step when removed; the ``small`` GPT's 50 MB blocks cost ~180 ms of system time per layer). Serving
    every block from the heap and raising the trim threshold (``mallopt``) makes freed blocks reusable.
    The process keeps its peak heap instead of shrinking after each step. No-op off glibc.
    """
    global _allocator_tuned
    if _allocator_tuned:
        return
    _allocator_tuned = True
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold, m_mmap_max = -1, -3, -4
        libc.mallopt(m_mmap_threshold, 32 << 20)   # blocks under 32 MB come from the heap, reused
        libc.mallopt(m_mmap_max, 0)                # and larger ones too (the `small` GPT's 50 MB attention maps)
        libc.mallopt(m_trim_threshold, 1 << 30)    # give memory back only when 1 GB lies free at the top
    except (OSError, AttributeError):
        pass


def _limit_blas_to_one_thread() -> list[Any]:
    """Make NumPy's BLAS single-threaded for the whole process (threadpoolctl); returns the libraries
    limited (empty when that is not possible).

    NOTE: measured on the 2-core CI machine while other processes were busy: with OpenBLAS left at 2
    threads, a baby-GPT step split over 2 Python threads took 1.5 s and 1.5 s of CPU (OpenBLAS's
    worker threads spin while they wait for work and fight the Python threads for the cores), against
    0.14 s with BLAS at 1 thread. The Python threads give the parallelism instead.
    """
    global _blas_original
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return []
    libs = ThreadpoolController().select(user_api="blas").lib_controllers
    _blas_original = [lib.num_threads for lib in libs]
    for lib in libs:
        lib.set_num_threads(1)
    return libs


@contextlib.contextmanager
def all_blas_threads() -> Iterator[None]:
    """Give BLAS back its own thread count inside the block: for work that runs in one Python thread
    only (a batch of one sequence), where BLAS's threads are the only parallelism there is."""
    if not _blas_libs:
        yield
        return
    for lib, n in zip(_blas_libs, _blas_original):
        lib.set_num_threads(n)
    try:
        yield
    finally:
        for lib in _blas_libs:
            lib.set_num_threads(1)


def num_threads() -> int:
    """How many Python threads the CPU path splits a batch across: the usable cores (at most 8).

    The first call with more than one core starts the worker threads and, for the rest of the
    process, limits NumPy's BLAS to one thread (see ``_limit_blas_to_one_thread``): numpy code
    elsewhere in the same process then runs its matrix products single-threaded. Without
    threadpoolctl (which can set the BLAS thread count) the CPU path stays in one Python thread.
    """
    global _pool, _pool_size, _blas_libs
    if _pool_size == 0:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        _blas_libs = _limit_blas_to_one_thread() if cores > 1 else []
        _pool_size = min(cores, 8) if _blas_libs else 1
        if _pool_size > 1:
            _pool = ThreadPoolExecutor(_pool_size - 1, thread_name_prefix="groundup-block")
    return _pool_size


def parallel_map(fn: Callable[..., Any], *arg_lists: Sequence[Any]) -> list[Any]:
    """``[fn(*args) for args in zip(*arg_lists)]``, the jobs run at once: the first in the calling thread
    (which would otherwise only wait), the others on the worker threads."""
    jobs = list(zip(*arg_lists))
    if len(jobs) == 1:
        with all_blas_threads():
            return [fn(*jobs[0])]
    if len(jobs) == 0 or num_threads() <= 1:
        return [fn(*args) for args in jobs]
    results: list[Any] = [None] * len(jobs)
    order = itertools.count()                # next() on a count is atomic under the GIL

    def drain() -> None:                     # each thread takes the next job until none is left
        for i in iter(order.__next__, None):
            if i >= len(jobs):
                return
            results[i] = fn(*jobs[i])

    helpers = [_pool.submit(drain) for _ in range(min(_pool_size - 1, len(jobs) - 1))]  # type: ignore[union-attr]
    drain()
    for helper in helpers:
        helper.result()
    return results


CHUNKS_PER_THREAD = 1


def _chunks(batch: int, xp: Any) -> list[slice]:
    """Split ``batch`` rows into contiguous slices, CHUNKS_PER_THREAD per thread (one slice on the GPU)."""
    n = 1 if xp is not np else min(num_threads() * CHUNKS_PER_THREAD, batch)
    bounds = [round(i * batch / n) for i in range(n + 1)]
    return [slice(bounds[i], bounds[i + 1]) for i in range(n)]


# ----------------------------------------------------------------------------- position tables
def rotary_tables(positions: Any, head_dim: int, base: float = 10000.0, dtype: Any = np.float32,
                  xp: Any = np) -> tuple[Any, Any]:
    """cos and sin tables for rotary embeddings at integer ``positions`` (T,) -> two (T, D) arrays.

    Dimension pairs (i, i + D/2) rotate by angle position * base^(-2i/D) (rotate-half form).
    """
    if head_dim % 2:
        raise ValueError(f"rotary embeddings need an even head dim, got {head_dim}")
    inv_freq = base ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)  # (D/2,)
    angles = np.asarray(positions, dtype=np.float64)[:, None] * inv_freq[None, :]  # (T, D/2)
    angles = np.concatenate([angles, angles], axis=1)                               # (T, D)
    return xp.asarray(np.cos(angles).astype(dtype)), xp.asarray(np.sin(angles).astype(dtype))


def sinusoidal_table(length: int, dim: int, dtype: Any = np.float32) -> np.ndarray:
    """Vaswani et al.'s fixed encodings (length, dim): sin on even dims, cos on odd dims."""
    pos = np.arange(length, dtype=np.float64)[:, None]
    inv_freq = 10000.0 ** (-np.arange(0, dim, 2, dtype=np.float64) / dim)
    table = np.zeros((length, dim), dtype=np.float64)
    table[:, 0::2] = np.sin(pos * inv_freq)
    table[:, 1::2] = np.cos(pos * inv_freq[: dim // 2])
    return table.astype(dtype)


def _rotate_half(x: Any, sign: int) -> Any:
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


def _apply_rotary(x: Any, cos: Any, sin: Any, sign: int = 1) -> Any:
    """x (..., T, D) rotated: x cos + R(x) sin (sign=+1); the adjoint (sign=-1) rotates back."""
    out = x * cos
    out += _rotate_half(x * sin, -1) if sign < 0 else _rotate_half(x, 1) * sin
    return out


# ----------------------------------------------------------------------------- pieces
def _layer_norm(x: Any, weight: Any, bias: Any, eps: float) -> tuple[Any, Any, Any]:
    """x (N, C) -> (y, xhat, rstd (N, 1))."""
    xp = array_module(x)
    inv_c = 1.0 / x.shape[1]
    mean = x.sum(axis=1, keepdims=True)                             # (N, 1); sum is cheaper to call than mean
    mean *= inv_c
    xhat = x - mean
    var = xp.einsum("ij,ij->i", xhat, xhat)[:, None]                # (N, 1)
    var *= inv_c
    var += eps
    rstd = xp.sqrt(var, out=var)
    xp.reciprocal(rstd, out=rstd)
    xhat *= rstd
    y = xhat * weight
    if bias is not None:
        y += bias
    return y, xhat, rstd


def _layer_norm_backward(dy: Any, xhat: Any, rstd: Any, weight: Any, has_bias: bool) -> tuple[Any, Any, Any]:
    """Gradients (dx, dweight, dbias) of ``_layer_norm``; dy (N, C)."""
    xp = array_module(dy)
    dweight = xp.einsum("ij,ij->j", dy, xhat)
    dbias = dy.sum(axis=0) if has_bias else None
    inv_c = 1.0 / dy.shape[1]
    dxhat = dy * weight
    mean_dxhat = dxhat.sum(axis=1, keepdims=True)                   # (N, 1)
    mean_dxhat *= inv_c
    mean_dxhat_xhat = xp.einsum("ij,ij->i", dxhat, xhat)[:, None]   # (N, 1)
    mean_dxhat_xhat *= inv_c
    dxhat -= mean_dxhat
    dxhat -= xhat * mean_dxhat_xhat
    dxhat *= rstd
    return dxhat, dweight, dbias


def _linear(x: Any, weight: Any, bias: Any) -> Any:
    y = x @ weight.T                                                # (N, out)
    if bias is not None:
        y += bias
    return y


def _gelu(f: Any) -> Any:
    """GELU with GPT-2's tanh approximation, written with a sigmoid: f (N, F) -> y.

    0.5 f (1 + tanh(u)) = f sigmoid(2u), u = c (f + a f^3). NumPy's float32 ``exp`` costs ~2.4-3 ns per
    element against ~3.7-4.2 ns for ``tanh`` on this machine (neither is vectorised well: an add is 0.2 ns).
    """
    xp = array_module(f)
    s = f * f
    s *= -2 * _GELU_A * _GELU_C
    s -= 2 * _GELU_C
    s *= f                                                          # -2u
    with np.errstate(over="ignore"):                                # exp(+large) = inf -> s = 0: the right limit
        xp.exp(s, out=s)
    s += 1.0
    xp.reciprocal(s, out=s)                                         # sigmoid(2u)
    s *= f
    return s


def _gelu_with_slope(f: Any) -> tuple[Any, Any]:
    """GELU (tanh) and its derivative, for training: f (N, F) -> (y, gelu'(f)).

    gelu'(f) = s + 2c f s (1 - s) (1 + 3a f^2) = s + y (1 - s) 2c (1 + 3a f^2), with s = sigmoid(2u)
    and y = f s. Computed here, where f^2 and s already exist, the backward is one multiply: 14 passes
    over (N, 4C) in all instead of 17.
    """
    xp = array_module(f)
    f2 = f * f
    s = f2 * (-2 * _GELU_A * _GELU_C)
    s -= 2 * _GELU_C
    s *= f                                                          # -2u
    with np.errstate(over="ignore"):
        xp.exp(s, out=s)
    s += 1.0
    xp.reciprocal(s, out=s)                                         # s = sigmoid(2u)
    y = f * s
    slope = f2
    slope *= 6 * _GELU_A * _GELU_C
    slope += 2 * _GELU_C                                            # 2c (1 + 3a f^2)
    slope *= y
    one_minus = xp.subtract(1.0, s)
    slope *= one_minus
    slope += s
    return y, slope


def _dropout_mask(rng: np.random.Generator, shape: tuple[int, ...], p: float, xp: Any) -> Any:
    keep = rng.random(shape, dtype=np.float32) >= p
    return xp.asarray(keep.astype(np.float32) * np.float32(1.0 / (1.0 - p)))


# ----------------------------------------------------------------------------- forward / backward
class _Options:
    """Everything about a block call that is not a differentiable input."""

    __slots__ = ("n_head", "causal", "pre_norm", "eps", "cos", "sin", "has_bias", "save", "dropout_p")

    def __init__(self, n_head: int, causal: bool, pre_norm: bool, eps: float, cos: Any, sin: Any,
                 has_bias: bool, save: bool, dropout_p: float):
        self.n_head, self.causal, self.pre_norm, self.eps = n_head, causal, pre_norm, eps
        self.cos, self.sin, self.has_bias, self.save, self.dropout_p = cos, sin, has_bias, save, dropout_p


@functools.lru_cache(maxsize=32)
def _causal_bias(t_q: int, t_k: int, dtype: str) -> np.ndarray:
    """The (T, S) causal bias, built once per shape (read-only: it is only ever added to scores)."""
    allowed = np.tril(np.ones((t_q, t_k), dtype=bool), t_k - t_q)
    bias = np.where(allowed, 0.0, -np.inf).astype(dtype)
    bias.flags.writeable = False
    return bias


def _attention_bias(key_mask: Any, causal: bool, t_q: int, t_k: int, dtype: Any, xp: Any) -> Any:
    """Additive bias (0 or -inf): None, (T, S) for the causal mask, or (B, 1, T, S) with a key mask."""
    bias = None
    if causal:
        bias = _causal_bias(t_q, t_k, np.dtype(dtype).str) if xp is np else \
            xp.where(xp.tril(xp.ones((t_q, t_k), dtype=bool), t_k - t_q), 0.0, -xp.inf).astype(dtype)  # (T, S)
    if key_mask is not None:
        keys = xp.where(key_mask[:, None, None, :], 0.0, -xp.inf).astype(dtype)  # (B, 1, 1, S)
        bias = keys if bias is None else keys + bias                # (B, 1, T, S)
    return bias


def _softmax_rows(scores: Any, masked_rows_possible: bool) -> Any:
    """In-place softmax over the last axis; rows whose entries are all -inf become zeros."""
    xp = array_module(scores)
    shift = scores.max(axis=-1, keepdims=True)
    if masked_rows_possible:
        shift[~xp.isfinite(shift)] = 0.0
    scores -= shift
    xp.exp(scores, out=scores)
    total = scores.sum(axis=-1, keepdims=True)
    if masked_rows_possible:
        total[total == 0] = 1.0
    scores /= total
    return scores


def _block_forward(x: Any, params: dict[str, Any], opt: _Options, key_mask: Any, drops: dict[str, Any],
                   out: Any) -> dict[str, Any]:
    """One chunk of the batch: x (b, T, C) -> writes out (b, T, C); returns what backward needs."""
    xp = array_module(x)
    b, T, C = x.shape
    H = opt.n_head
    D = C // H
    N = b * T
    x2 = x.reshape(N, C)                                            # (N, C)
    saved: dict[str, Any] = {}

    # --- attention sub-layer
    if opt.pre_norm:
        h1, saved["xhat1"], saved["rstd1"] = _layer_norm(x2, params["ln_1.weight"], params["ln_1.bias"], opt.eps)
    else:
        h1 = x2
    qkv = _linear(h1, params["attn.qkv.weight"], params["attn.qkv.bias"])        # (N, 3C)
    qkv5 = qkv.reshape(b, T, 3, H, D)
    q = qkv5[:, :, 0].transpose(0, 2, 1, 3)                         # (b, H, T, D)
    k = qkv5[:, :, 1].transpose(0, 2, 1, 3)                         # (b, H, T, D)
    v = qkv5[:, :, 2].transpose(0, 2, 1, 3)                         # (b, H, T, D)
    if opt.cos is not None:
        q = _apply_rotary(q, opt.cos, opt.sin)                      # (b, H, T, D)
        k = _apply_rotary(k, opt.cos, opt.sin)
    scale = 1.0 / math.sqrt(D)
    att = q @ k.transpose(0, 1, 3, 2)                               # (b, H, T, T)
    att *= scale
    bias = _attention_bias(key_mask, opt.causal, T, T, x.dtype, xp)
    if bias is not None:
        att += bias
    att = _softmax_rows(att, key_mask is not None)
    att_used = att * drops["attn"] if "attn" in drops else att
    y = att_used @ v                                                # (b, H, T, D)
    y = y.transpose(0, 2, 1, 3).reshape(N, C)                       # (N, C)
    a = _linear(y, params["attn.proj.weight"], params["attn.proj.bias"])         # (N, C)
    if "resid1" in drops:
        a *= drops["resid1"]
    a += x2                                                         # residual: r1 = x + a
    if opt.pre_norm:
        r1 = a
        h2, saved["xhat2"], saved["rstd2"] = _layer_norm(r1, params["ln_2.weight"], params["ln_2.bias"], opt.eps)
    else:
        r1, saved["xhat1"], saved["rstd1"] = _layer_norm(a, params["ln_1.weight"], params["ln_1.bias"], opt.eps)
        h2 = r1

    # --- MLP sub-layer
    f = _linear(h2, params["mlp.fc.weight"], params["mlp.fc.bias"])              # (N, 4C)
    if opt.save:
        g, slope = _gelu_with_slope(f)                              # keep gelu'(f) for the backward
    else:
        g, slope = _gelu(f), None
    del f
    m = _linear(g, params["mlp.proj.weight"], params["mlp.proj.bias"])           # (N, C)
    if "resid2" in drops:
        m *= drops["resid2"]
    out2 = out.reshape(N, C)                                        # (N, C) view of the output chunk
    if opt.pre_norm:
        xp.add(r1, m, out=out2)
    else:
        m += r1
        y2, saved["xhat2"], saved["rstd2"] = _layer_norm(m, params["ln_2.weight"], params["ln_2.bias"], opt.eps)
        out2[...] = y2
    if opt.save:
        saved.update(h1=h1, q=q, k=k, v=v, att=att, y=y, h2=h2, g=g, slope=slope, drops=drops, shape=(b, T, C))
    return saved


def _block_backward(gout: Any, saved: dict[str, Any], params: dict[str, Any], opt: _Options,
                    gx_out: Any) -> dict[str, Any]:
    """Gradients for one chunk: gout (b, T, C) -> writes gx_out (b, T, C); returns parameter grads."""
    xp = array_module(gout)
    b, T, C = saved["shape"]
    H = opt.n_head
    D = C // H
    N = b * T
    drops = saved["drops"]
    grads: dict[str, Any] = {}
    has_bias = opt.has_bias
    g_out = gout.reshape(N, C)                                      # (N, C)

    # --- MLP sub-layer (and ln_2 for post-norm)
    if opt.pre_norm:
        dm = g_out
    else:
        dm, grads["ln_2.weight"], grads["ln_2.bias"] = _layer_norm_backward(
            g_out, saved["xhat2"], saved["rstd2"], params["ln_2.weight"], has_bias)
    d_r1 = dm                                                       # gradient reaching r1 by the residual
    if "resid2" in drops:
        dm = dm * drops["resid2"]
    grads["mlp.proj.weight"] = dm.T @ saved["g"]                    # (C, 4C)
    grads["mlp.proj.bias"] = dm.sum(axis=0) if has_bias else None
    dg = dm @ params["mlp.proj.weight"]                             # (N, 4C)
    dg *= saved["slope"]                                            # d f = dg * gelu'(f), (N, 4C)
    df = dg
    grads["mlp.fc.weight"] = df.T @ saved["h2"]                     # (4C, C)
    grads["mlp.fc.bias"] = df.sum(axis=0) if has_bias else None
    dh2 = df @ params["mlp.fc.weight"]                              # (N, C)
    if opt.pre_norm:
        dr1, grads["ln_2.weight"], grads["ln_2.bias"] = _layer_norm_backward(
            dh2, saved["xhat2"], saved["rstd2"], params["ln_2.weight"], has_bias)
        dr1 += d_r1
        da = dr1
    else:
        dh2 += d_r1                                                 # r1 = ln_1(x + a) feeds both paths
        da, grads["ln_1.weight"], grads["ln_1.bias"] = _layer_norm_backward(
            dh2, saved["xhat1"], saved["rstd1"], params["ln_1.weight"], has_bias)
    d_x = da                                                        # gradient reaching x by the residual

    # --- attention sub-layer
    if "resid1" in drops:
        da = da * drops["resid1"]
    grads["attn.proj.weight"] = da.T @ saved["y"]                   # (C, C)
    grads["attn.proj.bias"] = da.sum(axis=0) if has_bias else None
    dy = (da @ params["attn.proj.weight"]).reshape(b, T, H, D).transpose(0, 2, 1, 3)  # (b, H, T, D)
    att, q, k, v = saved["att"], saved["q"], saved["k"], saved["v"]
    att_used = att * drops["attn"] if "attn" in drops else att
    dv = att_used.transpose(0, 1, 3, 2) @ dy                        # (b, H, T, D)
    datt = dy @ v.transpose(0, 1, 3, 2)                             # (b, H, T, T)
    if "attn" in drops:
        datt *= drops["attn"]
    datt -= xp.einsum("bhts,bhts->bht", datt, att)[..., None]
    datt *= att
    datt *= 1.0 / math.sqrt(D)                                      # d scores
    dqkv = xp.empty((b, T, 3, H, D), dtype=gout.dtype)
    dq = datt @ k                                                   # (b, H, T, D)
    dk = datt.transpose(0, 1, 3, 2) @ q                             # (b, H, T, D)
    if opt.cos is not None:
        dq = _apply_rotary(dq, opt.cos, opt.sin, sign=-1)
        dk = _apply_rotary(dk, opt.cos, opt.sin, sign=-1)
    dqkv[:, :, 0] = dq.transpose(0, 2, 1, 3)                        # (b, T, H, D)
    dqkv[:, :, 1] = dk.transpose(0, 2, 1, 3)
    dqkv[:, :, 2] = dv.transpose(0, 2, 1, 3)
    dqkv2 = dqkv.reshape(N, 3 * C)                                  # (N, 3C)
    grads["attn.qkv.weight"] = dqkv2.T @ saved["h1"]                # (3C, C)
    grads["attn.qkv.bias"] = dqkv2.sum(axis=0) if has_bias else None
    dh1 = dqkv2 @ params["attn.qkv.weight"]                         # (N, C)
    gx = gx_out.reshape(N, C)
    if opt.pre_norm:
        dx, grads["ln_1.weight"], grads["ln_1.bias"] = _layer_norm_backward(
            dh1, saved["xhat1"], saved["rstd1"], params["ln_1.weight"], has_bias)
        xp.add(dx, d_x, out=gx)
    else:
        xp.add(dh1, d_x, out=gx)
    return grads


def _draw_dropout(x: Any, parts: list[slice], opt: _Options, n_layer: int, rng: Any) -> list[list[dict[str, Any]]]:
    """Dropout masks [chunk][layer], drawn here in layer-then-chunk order so that the numbers do not
    depend on how many threads run the chunks."""
    xp = array_module(x)
    drops: list[list[dict[str, Any]]] = [[] for _ in parts]
    for _ in range(n_layer):
        for c, part in enumerate(parts):
            masks: dict[str, Any] = {}
            if opt.dropout_p > 0:
                b, T, C = x[part].shape
                masks["attn"] = _dropout_mask(rng, (b, opt.n_head, T, T), opt.dropout_p, xp)
                masks["resid1"] = _dropout_mask(rng, (b * T, C), opt.dropout_p, xp)
                masks["resid2"] = _dropout_mask(rng, (b * T, C), opt.dropout_p, xp)
            drops[c].append(masks)
    return drops


def _stack_forward(x: Any, layers: list[dict[str, Any]], opt: _Options, key_mask: Any,
                   drops: list[dict[str, Any]], out: Any) -> list[dict[str, Any]]:
    """One chunk through every block: x (b, T, C) -> writes out (b, T, C); returns each block's saved state."""
    xp = array_module(x)
    saved = []
    h = x
    for i, params in enumerate(layers):
        nxt = out if i == len(layers) - 1 else xp.empty_like(x)
        saved.append(_block_forward(h, params, opt, key_mask, drops[i], nxt))
        h = nxt
    return saved


def _stack_backward(gout: Any, saved: list[dict[str, Any]], layers: list[dict[str, Any]], opt: _Options,
                    gx_out: Any) -> list[dict[str, Any]]:
    """One chunk back through every block: gout (b, T, C) -> writes gx_out; returns each block's grads."""
    xp = array_module(gout)
    grads: list[dict[str, Any]] = [{}] * len(layers)
    g = gout
    for i in reversed(range(len(layers))):
        gx = gx_out if i == 0 else xp.empty_like(gout)
        grads[i] = _block_backward(g, saved[i], layers[i], opt, gx)
        g = gx
    return grads


class TransformerBlock(Function):
    """A stack of transformer blocks, fused: x (B, T, C) and every block's parameters -> (B, T, C).

    Inputs: x, then for each block its parameters in ``PARAM_NAMES`` order (leaving out the
    biases when ``has_bias`` is False); one block or ``n_layer`` of them. Options: n_head, causal,
    norm ('pre' | 'post'), eps, rope ((cos, sin) each (T, D), or None), key_mask ((B, T) bool,
    True = a real token that may be attended to), dropout_p and rng (the generator that draws the
    dropout masks).

    NOTE: each thread takes its slice of the batch through all the blocks, forward and then
    backward, so a step waits for the threads twice instead of twice per block.
    """

    def forward(self, x, *param_arrays, n_head: int = 1, causal: bool = True, norm: str = "pre",
                eps: float = 1e-5, rope: tuple[Any, Any] | None = None, key_mask: Any = None,
                dropout_p: float = 0.0, rng: Any = None, has_bias: bool = True):
        xp = array_module(x)
        if x.ndim != 3 or x.shape[-1] % n_head:
            raise RuntimeError(f"TransformerBlock: x must be (B, T, C) with C divisible by n_head={n_head}, "
                               f"got {tuple(x.shape)}")
        names = PARAM_NAMES if has_bias else PARAM_NAMES[0::2]
        if not param_arrays or len(param_arrays) % len(names):
            raise RuntimeError(f"TransformerBlock: expected {len(names)} parameters per block, got {len(param_arrays)}")
        if norm not in ("pre", "post"):
            raise ValueError(f"TransformerBlock: norm must be 'pre' or 'post', got {norm!r}")
        layers = []
        for i in range(0, len(param_arrays), len(names)):
            params = dict.fromkeys(PARAM_NAMES)
            params.update(zip(names, param_arrays[i:i + len(names)]))
            layers.append(params)
        cos, sin = rope if rope is not None else (None, None)
        if xp is np and any(self.needs_input_grad):
            keep_freed_memory()
        opt = _Options(n_head, causal, norm == "pre", eps, cos, sin, has_bias, any(self.needs_input_grad), dropout_p)
        parts = _chunks(x.shape[0], xp)
        drops = _draw_dropout(x, parts, opt, len(layers), rng)
        masks = [None if key_mask is None else key_mask[p] for p in parts]
        out = xp.empty_like(x)
        chunk_saved = parallel_map(lambda p, m, d: _stack_forward(x[p], layers, opt, m, d, out[p]),
                                   parts, masks, drops)
        # NOTE: the parameters are saved too, so that the engine catches an in-place update between
        # this forward and its backward; the engine releases ``saved`` after the backward.
        self.save_for_backward(*param_arrays, chunk_saved)
        self.layers, self.opt, self.names, self.parts = layers, opt, names, parts
        return out

    def backward(self, gout):
        xp = array_module(gout)
        gx = xp.empty_like(gout)
        chunk_saved = self.saved[-1]
        grads_list = parallel_map(lambda p, s: _stack_backward(gout[p], s, self.layers, self.opt, gx[p]),
                                  self.parts, chunk_saved)
        total = grads_list[0]
        for grads in grads_list[1:]:
            for layer_total, layer in zip(total, grads):
                for name, g in layer.items():
                    if g is not None:
                        layer_total[name] += g
        return (gx, *(layer[name] for layer in total for name in self.names))


# ----------------------------------------------------------------------------- final norm + head + loss
def _head_forward(x: Any, ln_w: Any, ln_b: Any, weight: Any, targets: Any, eps: float,
                  ignore_index: int) -> tuple[float, int, dict[str, Any]]:
    """One chunk: x (n, C), targets (n,) -> (sum of -log p(target), number of counted rows, saved)."""
    xp = array_module(x)
    h, xhat, rstd = _layer_norm(x, ln_w, ln_b, eps)
    logits = h @ weight.T                                           # (n, V)
    logits -= logits.max(axis=1, keepdims=True)                    # z = logits - max
    valid = targets != ignore_index
    safe = xp.where(valid, targets, 0)
    rows = xp.arange(len(safe))
    z_target = logits[rows, safe]                                   # (n,) a copy, taken before the exp
    xp.exp(logits, out=logits)
    probs = logits
    total = probs.sum(axis=1, keepdims=True)                        # (n, 1)
    probs /= total
    nll = xp.log(total[:, 0]) - z_target                            # -log softmax(z)[target], stable
    nll_sum = float((nll * valid).sum())
    saved = {"h": h, "xhat": xhat, "rstd": rstd, "probs": probs, "safe": safe, "valid": valid}
    return nll_sum, int(valid.sum()), saved


def _head_backward(scale: float, saved: dict[str, Any], ln_w: Any, weight: Any, has_bias: bool,
                   gx_out: Any) -> dict[str, Any]:
    xp = array_module(gx_out)
    dlogits = saved["probs"].copy()                                 # softmax - onehot (saved stays intact)
    rows = xp.arange(dlogits.shape[0])
    dlogits[rows, saved["safe"]] -= 1.0
    dlogits *= (saved["valid"] * scale).astype(dlogits.dtype)[:, None]
    grads = {"weight": dlogits.T @ saved["h"]}                      # (V, C)
    dh = dlogits @ weight                                           # (n, C)
    gx_out[...], grads["ln_w"], grads["ln_b"] = _layer_norm_backward(dh, saved["xhat"], saved["rstd"], ln_w,
                                                                      has_bias)
    return grads


class LMHeadLoss(Function):
    """Mean next-token cross-entropy of ``layer_norm(x) @ weight.T``: the GPT's final LayerNorm, the
    (tied) output projection and the loss in one op, split over the worker threads like the blocks.

    Inputs: x (B, T, C), the LayerNorm weight (and bias when ``has_bias``), weight (V, C).
    Options: targets (B, T) ints (``ignore_index`` rows do not count), eps. Returns a 0-d loss.
    Backward: dlogits = (softmax - onehot(target)) / count, dW = dlogits^T h, dh = dlogits W, then
    the LayerNorm backward.
    """

    def forward(self, x, *arrays, targets: Any = None, eps: float = 1e-5, ignore_index: int = -100,
                has_bias: bool = True):
        xp = array_module(x)
        ln_w, ln_b, weight = (arrays[0], arrays[1], arrays[2]) if has_bias else (arrays[0], None, arrays[1])
        B, T, C = x.shape
        V = weight.shape[0]
        t = targets.reshape(B * T)
        bad = (t != ignore_index) & ((t < 0) | (t >= V))
        if bad.any():
            raise IndexError(f"cross_entropy: target {int(t[bad][0])} is out of range for {V} classes")
        x2 = x.reshape(B * T, C)                                    # (N, C)
        parts = [slice(p.start * T, p.stop * T) for p in _chunks(B, xp)]
        results = parallel_map(lambda p: _head_forward(x2[p], ln_w, ln_b, weight, t[p], eps, ignore_index), parts)
        count = sum(r[1] for r in results)
        total = sum(r[0] for r in results)
        self.save_for_backward(*arrays, [r[2] for r in results])
        self.parts, self.count, self.shape, self.has_bias = parts, count, x.shape, has_bias
        self.ln_w, self.weight = ln_w, weight
        return xp.asarray(total / count if count else float("nan"), dtype=x.dtype)

    def backward(self, gz):
        xp = array_module(gz)
        chunks = self.saved[-1]
        gx = xp.empty(self.shape, dtype=gz.dtype)
        gx2 = gx.reshape(-1, self.shape[-1])
        scale = float(gz) / self.count if self.count else 0.0
        grads_list = parallel_map(lambda p, s: _head_backward(scale, s, self.ln_w, self.weight, self.has_bias, gx2[p]),
                                  self.parts, chunks)
        total = grads_list[0]
        for grads in grads_list[1:]:
            for name, g in grads.items():
                if g is not None:
                    total[name] += g
        if self.has_bias:
            return gx, total["ln_w"], total["ln_b"], total["weight"]
        return gx, total["ln_w"], total["weight"]
