"""FastGPT: the readable ``GPT``'s twin for training, with the block stack and the head + loss fused.

Same parameters, same ``state_dict`` keys, same maths as ``groundup.models.gpt.GPT`` (tested equal in
float64, dropout included: the masks are drawn in the same order from the same generator); a
checkpoint loads into either class. ``groundup train``, ``sample`` and ``bench`` use this one;
hooks and interpretability use ``GPT`` (``FastGPT`` refuses hooks rather than skip them).

Why fuse: composed from engine ops a GPT block is ~40 graph nodes that each allocate their output and
their gradient. Here the forward and backward of the whole stack are written over raw arrays with
2-D ``(B*T, C)`` GEMMs and in-place elementwise work (the kernels of ``groundup.ops.kernels``). Inside
``groundup.parallel.cpu_threads()`` the batch is split into one chunk per thread and each chunk goes
through every block, forward and then backward, so a step waits for the others twice instead of
twice per block: chunk 0 in the calling thread, the others in the context's worker processes (where
the platform forks; else in its threads). Outside that context everything runs in the calling thread.
With worker processes each chunk also makes its own embeddings first (``GPT_STEM``) and goes on
through ln_f, lm_head and the loss after (``LM_HEAD``), so that no activations travel between them.

    pre-norm:   x = x + drop(proj(attention(ln_1(x))));   x = x + drop(mlp(ln_2(x)))
    post-norm:  x = ln_1(x + drop(proj(attention(x))));   x = ln_2(x + drop(mlp(x)))
    attention:  q, k, v = split(x @ qkv.T + b);  (rotary on q, k);  drop(softmax(q k^T / sqrt(D) + mask)) v
"""

from __future__ import annotations

import functools
import importlib
import itertools
import math
import weakref
from typing import Any

import numpy as np

from groundup import random
from groundup.backend import array_module
from groundup.function import Function
from groundup.models.gpt import GPT
from groundup.models.shared import check_token_ids
from groundup.ops import kernels as K
from groundup.parallel import chunks, parallel_map, split_work, worker_processes
from groundup.tensor import Tensor

__all__ = ["FastGPT", "TransformerStack", "LMHeadLoss", "PARAM_NAMES"]

# A block's parameters in the order the fused op takes them (the biases are left out when bias=False).
PARAM_NAMES = ("ln_1.weight", "ln_1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight",
               "attn.proj.bias", "ln_2.weight", "ln_2.bias", "mlp.fc.weight", "mlp.fc.bias",
               "mlp.proj.weight", "mlp.proj.bias")


class FastGPT(GPT):
    """``GPT`` with fused kernels: ``forward`` and ``loss`` give the readable model's numbers, faster."""

    # inside ``groundup.parallel.cpu_threads`` its stack splits the batch over threads / worker processes
    # (the Trainer then keeps BLAS on one thread for the whole run: ``groundup.parallel.split_work``)
    splits_work = True

    def hooks(self, fns: Any):  # type: ignore[override]
        raise TypeError("FastGPT runs fused kernels and has no hook points; use the readable twin: "
                        "GPT.load(run_dir) or model.as_class(GPT)")

    def run_with_cache(self, *args: Any, **kwargs: Any):  # type: ignore[override]
        self.hooks({})

    def stack(self, x: Tensor | None, mask: Tensor | None, head: dict[str, Any] | None = None,
              head_arrays: list[Tensor] = (), stem: dict[str, Any] | None = None,
              stem_arrays: list[Tensor] = ()) -> Tensor:
        """Every block at once: x (B, T, C) -> (B, T, C); ``for block in self.blocks: x = block(x, mask)``.
        With ``head`` (see ``TransformerStack``): the mean loss of ln_f, lm_head after them; with ``stem``
        (x None): the embeddings before them, made per chunk (``GPT_STEM``)."""
        cfg = self.cfg
        params = [p for block in self.blocks for p in _block_parameters(block, cfg.bias)]
        first = [x] if stem is None else list(stem_arrays)
        T = x.shape[1] if stem is None else stem["idx"].shape[1]
        tables = self._rope_tables(T, first[0].dtype) if cfg.pos_encoding == "rotary" else None
        p = cfg.dropout if self.training else 0.0
        return TransformerStack.apply(
            *first, *params, *head_arrays, head=head, stem=stem, n_head=cfg.n_head, causal=cfg.causal,
            pre_norm=cfg.norm == "pre", eps=self.blocks[0].ln_1.eps, rope_tables=tables,
            mask=None if mask is None else mask.data, dropout_p=p, rng=random.generator() if p > 0 else None,
            has_bias=cfg.bias)                                                  # (B, T, C)

    def _rope_tables(self, T: int, dtype: Any) -> tuple[Any, Any]:
        """The rotary tables of ``TransformerStack`` for T positions, kept while the rotary buffers stay."""
        rotary = self.blocks[0].attn.rotary
        key = (rotary.cos_cached.data, rotary.sin_cached.data, T, np.dtype(dtype).str)
        cached = self.__dict__.get("_rope_cache")
        if cached is None or any(a is not b for a, b in zip(cached[0][:2], key[:2])) or cached[0][2:] != key[2:]:
            cos, sin = (t[:T].astype(dtype) for t in key[:2])
            cached = (key, _rope_tables(cos, sin, self.cfg.n_head))
            self.__dict__["_rope_cache"] = cached
        return cached[1]

    def forward(self, idx: Any, attention_mask: Any = None) -> Tensor:
        x, mask = self.embed(idx, attention_mask)                               # (B, T, C)
        return self.lm_head(self.ln_f(self.stack(x, mask)))                     # (B, T, V)

    def loss(self, idx: Any, targets: Any, attention_mask: Any = None) -> Tensor:
        """Mean next-token cross-entropy (-100 = ignore): ln_f, lm_head and the loss as one fused op."""
        t = targets.data if isinstance(targets, Tensor) else np.asarray(targets)
        if tuple(t.shape) == tuple(np.shape(idx.data if isinstance(idx, Tensor) else idx)) and t.dtype.kind in "iu":
            x, loss = self._loss_in_workers(idx, t, attention_mask)
            if loss is not None:
                return loss
        else:
            x = self.stack(*self.embed(idx, attention_mask))                    # (B, T, C)
        if tuple(t.shape) != tuple(x.shape[:2]):
            raise ValueError(f"FastGPT.loss: targets {tuple(t.shape)} must match idx {tuple(x.shape[:2])}")
        if t.dtype.kind not in "iu":
            raise TypeError(f"FastGPT.loss: targets must be integer token ids, got dtype {t.dtype}")
        ln = [self.ln_f.weight] + ([self.ln_f.bias] if self.ln_f.bias is not None else [])
        return LMHeadLoss.apply(x, *ln, self.lm_head.weight, targets=array_module(x.data).asarray(t),
                                eps=self.ln_f.eps, has_bias=self.ln_f.bias is not None)

    def _loss_in_workers(self, idx: Any, t: Any, attention_mask: Any) -> Tensor | None:
        """The stack, ln_f, lm_head and the loss as one op when its chunks go to worker processes (each
        then takes its chunk through the head too: no stack output to send back); else None."""
        ids = np.shape(idx.data if isinstance(idx, Tensor) else idx)
        if (array_module(self.wte.weight.data) is not np or len(ids) != 2 or len(chunks(ids[0])) < 2
                or not worker_processes()):
            return self.stack(*self.embed(idx, attention_mask)), None
        stem, stem_arrays, mask = self._stem(idx, attention_mask)
        ln = [self.ln_f.weight] + ([self.ln_f.bias] if self.ln_f.bias is not None else [])
        head = dict(targets=np.asarray(t), eps=self.ln_f.eps, has_bias=self.ln_f.bias is not None,
                    n_arrays=len(ln) + 1)
        return None, self.stack(None, mask, head=head, head_arrays=[*ln, self.lm_head.weight], stem=stem,
                                stem_arrays=stem_arrays)

    def _stem(self, idx: Any, attention_mask: Any) -> tuple[dict[str, Any], list[Tensor], Tensor | None]:
        """``embed`` as the stack's stem (``GPT_STEM``): (the stem dict, its arrays, the attention mask),
        the ids checked as ``embed`` checks them."""
        cfg = self.cfg
        ids = np.asarray(check_token_ids(idx, type(self).__name__, "idx", cfg.block_size, cfg.vocab_size))
        B, T = ids.shape
        arrays = [self.wte.weight] + ([self.wpe.weight] if cfg.pos_encoding == "learned" else [])
        table = self.wpe_table.pe.data[:T].astype(self.wte.weight.dtype) if cfg.pos_encoding == "sinusoidal" else None
        stem = dict(impl=GPT_STEM.name, idx=ids, table=table, dropout_p=cfg.dropout if self.training else 0.0,
                    n_arrays=len(arrays))
        return stem, arrays, self._attention_mask(attention_mask, B, T, np)


def _block_parameters(block: Any, bias: bool) -> list[Tensor]:
    """A block's parameters in ``PARAM_NAMES`` order, read by attribute (cheaper than ``named_parameters``)."""
    a, m = block.attn, block.mlp
    params = [block.ln_1.weight, block.ln_1.bias, a.qkv.weight, a.qkv.bias, a.proj.weight, a.proj.bias,
              block.ln_2.weight, block.ln_2.bias, m.fc.weight, m.fc.bias, m.proj.weight, m.proj.bias]
    return params if bias else params[0::2]


# ----------------------------------------------------------------------------- one block, raw arrays
def _fold_layer_norm(params: dict[str, Any], norm: str, linear: str, key: str) -> None:
    """Pre-norm: LayerNorm ``norm`` then Linear ``linear`` as one Linear of xhat, into params[key + ...].

    (xhat w + b) W^T + c = xhat (W diag(w))^T + (W b + c): ``.folded`` = W diag(w), ``.folded_bias``
    = W b + c. The product of the Linear's output gradient with ``.folded`` is the gradient of xhat.
    NOTE: the fold saves the pass that scales xhat by w in the forward and the passes of dxhat = dy w
    and of sum(dy xhat) in the backward; the weight-sized work is done once per step. The gradients
    of the folded weight G turn back into W's and w's in ``_unfold_gradients``.
    """
    weight, w, b = params[linear + ".weight"], params[norm + ".weight"], params[norm + ".bias"]
    bias = params[linear + ".bias"]
    if b is not None:
        bias = weight @ b if bias is None else bias + weight @ b
    params[key + ".folded"], params[key + ".folded_bias"] = weight * w, bias   # (out, C), (out,) or None


def _unfold_gradients(grads: dict[str, Any], params: dict[str, Any], norm: str, linear: str) -> None:
    """The folded weight's gradient G (in grads[linear.weight]) -> the Linear's W and the norm's w, b.

    The model has biases everywhere or nowhere (``GPTConfig.bias``), so the Linear's bias gradient
    is there whenever the norm has a bias.
    """
    xp = array_module(params[linear + ".weight"])
    weight, g = params[linear + ".weight"], grads[linear + ".weight"]
    grads[norm + ".weight"] = xp.einsum("oc,oc->c", weight, g)                  # sum_o W G
    g *= params[norm + ".weight"]                                               # dW = G diag(w) (+ s b^T)
    if params[norm + ".bias"] is not None:                                      # s = sum_n dy, the Linear's db
        s = grads[linear + ".bias"]
        grads[norm + ".bias"] = s @ weight                                      # s W
        g += xp.multiply.outer(s, params[norm + ".bias"])


def _rope_tables(cos: Any, sin: Any, n_head: int) -> tuple[Any, Any]:
    """cos, sin (T, D) -> the tables of ``_rotate_qk``: COS and SIN each (T, 2, H, D), for q and k of every head.

    x' = x COS + swap(x) SIN with swap([x1, x2]) = [x2, x1] and SIN = [-sin, sin] is rotary's
    x cos + R(x) sin; the q half of both tables is multiplied by 1/sqrt(D), the attention scale.
    NOTE: the scale rides on the tables for free, instead of a pass over the (T, T) scores (and
    one over their gradient); tables for every head make the products contiguous over 2 H D.
    """
    xp = array_module(cos)
    T, D = cos.shape
    half = D // 2
    signed = xp.concatenate([-sin[:, :half], sin[:, half:]], axis=1)            # (T, D)
    scale = xp.asarray([1.0 / math.sqrt(D), 1.0], dtype=cos.dtype).reshape(1, 2, 1, 1)
    shape = (T, 2, n_head, D)
    cos_t = xp.broadcast_to(cos[:, None, None, :], shape) * scale               # (T, 2, H, D)
    sin_t = xp.broadcast_to(signed[:, None, None, :], shape) * scale
    return cos_t, sin_t


def _rotate_qk(x: Any, cos_t: Any, sin_t: Any) -> Any:
    """x (b, T, 2, H, D) q and k (a view) -> x COS + swap(x) SIN, a new (b, T, 2, H, D) array."""
    xp = array_module(x)
    half = x.shape[-1] // 2
    out = xp.multiply(x, cos_t)                                                 # (b, T, 2, H, D)
    swapped = xp.empty_like(out)
    swapped[..., :half] = x[..., half:]
    swapped[..., half:] = x[..., :half]
    swapped *= sin_t
    out += swapped
    return out


def _rotate_qk_adjoint(g: Any, cos_t: Any, sin_t: Any, out: Any) -> None:
    """The adjoint of ``_rotate_qk``: out = g COS + swap(g SIN); g (b, T, 2, H, D) is overwritten."""
    xp = array_module(g)
    half = g.shape[-1] // 2
    xp.multiply(g, cos_t, out=out)
    g *= sin_t
    out[..., :half] += g[..., half:]
    out[..., half:] += g[..., :half]


COMPLEX_ROPE = True           # rotary as one complex multiply on NumPy (``_complex_rope``); False: the real form


def _complex_rope(cos_t: Any, sin_t: Any) -> tuple[Any, Any] | None:
    """The tables of ``_rope_tables`` as complex numbers, (T, 2, H, D / 2) and their conjugates, or None
    where the two halves of cos do not match (rotary's tables always match) or the dtype has no
    complex twin (float16).

    Rotary turns each pair (x_d, x_{d + D/2}) by an angle: as the complex number x_d + i x_{d + D/2},
    a multiply by cos + i sin. With q's and k's features interleaved per head (``_interleaved_rows``:
    the pair side by side in memory), the rotation is one complex multiply over a view of qkv, instead
    of four passes and two half-copies of 16-wide rows; its adjoint is the multiply by the conjugate.
    Attention reads q and k only through q k^T, which the same order of features in both leaves as it
    is; the qkv weight's rows are put in that order before the blocks and its gradient's rows back.
    NOTE: measured (2026-12-03, baby GPT's (6, 64, 2, 4, 32)): rotate 163 -> 41 us, adjoint 256 -> 41 us.
    """
    half = cos_t.shape[-1] // 2
    if cos_t.dtype not in (np.float32, np.float64) or cos_t.shape[-1] % 2:      # complex64 / complex128 views
        return None
    if not (np.array_equal(cos_t[..., :half], cos_t[..., half:])
            and np.array_equal(sin_t[..., :half], -sin_t[..., half:])):
        return None
    z = cos_t[..., :half] + 1j * sin_t[..., half:]                              # (T, 2, H, D/2), q's half scaled
    z = z.astype(np.result_type(cos_t.dtype, np.complex64))
    return z, np.conj(z)


@functools.lru_cache(maxsize=16)
def _interleaved_rows(n_head: int, C: int) -> tuple[Any, Any]:
    """Row order of a (3C, C) qkv weight with q's and k's features of each head interleaved
    (d, d + D/2 side by side), v's as they are; and its inverse."""
    D, half = C // n_head, C // n_head // 2
    within = np.stack([np.arange(half), np.arange(half) + half], axis=1).reshape(D)   # 0, D/2, 1, D/2 + 1, ...
    qk = (np.arange(2 * n_head)[:, None] * D + within[None, :]).reshape(2 * C)
    order = np.concatenate([qk, np.arange(2 * C, 3 * C)])
    return order, np.argsort(order)


def _block_forward(x: Any, params: dict[str, Any], opt: dict[str, Any], bias: Any, drops: dict[str, Any],
                   out: Any, any_key: Any = True) -> dict[str, Any]:
    """One chunk through one block: x (b, T, C) -> writes out (b, T, C); returns what backward needs.

    ``any_key``: True, or (b, 1, T) bool, where a query row may see at least one key (see ``bias``).
    """
    xp = array_module(x)
    b, T, C = x.shape
    H = opt["n_head"]
    D, N = C // H, b * T
    x2 = x.reshape(N, C)                                                        # (N, C)
    saved: dict[str, Any] = {}
    pre, fold, eps = opt["pre_norm"], opt["fold"], opt["eps"]
    # --- attention sub-layer
    if fold:                                                                    # ln_1 folded into qkv's weight
        h1, saved["rstd1"] = K.layer_norm_stats(x2, eps)                        # h1 = xhat1 (N, C)
        qkv = K.linear(h1, params["qkv.folded"], params["qkv.folded_bias"])
    elif pre:
        h1, saved["xhat1"], saved["rstd1"] = K.layer_norm(x2, params["ln_1.weight"], params["ln_1.bias"], eps)
        qkv = K.linear(h1, params["attn.qkv.weight"], params["attn.qkv.bias"])
    else:
        h1 = x2
        qkv = K.linear(h1, params["attn.qkv.weight"], params["attn.qkv.bias"])
    qkv = qkv.reshape(b, T, 3, H, D)                                            # (b, T, 3, H, D)
    if opt.get("rope_z") is not None:                                           # the pairs side by side: complex
        z = qkv[:, :, :2].view(opt["rope_z"][0].dtype)                          # (b, T, 2, H, D/2)
        qk = xp.multiply(z, opt["rope_z"][0]).view(x.dtype)                     # (b, T, 2, H, D), rotated, q scaled
    elif opt["rope"] is not None:                                               # q and k rotated (and q scaled)
        qk = _rotate_qk(qkv[:, :, :2], *opt["rope"])                            # (b, T, 2, H, D)
    else:
        qk = qkv[:, :, :2]
        qk[:, :, 0] *= 1.0 / math.sqrt(D)                                       # NOTE: the scale on q, not on q k^T
    q, k = qk[:, :, 0].transpose(0, 2, 1, 3), qk[:, :, 1].transpose(0, 2, 1, 3)  # each (b, H, T, D)
    v = qkv[:, :, 2].transpose(0, 2, 1, 3)                                      # (b, H, T, D)
    att = q @ k.transpose(0, 1, 3, 2)                                           # (b, H, T, T) scores / sqrt(D)
    if bias is not None:
        att += bias
    if not K.softmax_unshifted_(att, any_key):
        att = q @ k.transpose(0, 1, 3, 2)                                       # rare: recompute, shift by row maxima
        if bias is not None:
            att += bias
        att = K.softmax_(att)
    att_used = att * drops["attn"] if "attn" in drops else att
    y = xp.empty((b, T, H, D), dtype=x.dtype)
    xp.matmul(att_used, v, out=y.transpose(0, 2, 1, 3))                         # (b, H, T, D) written as (b, T, H, D)
    y = y.reshape(N, C)                                                         # (N, C)
    a = K.linear(y, params["attn.proj.weight"], params["attn.proj.bias"])       # (N, C)
    if "resid1" in drops:
        a *= drops["resid1"]
    a += x2                                                                     # residual: r1 = x + a
    # --- MLP sub-layer
    if fold:                                                                    # ln_2 folded into fc's weight
        r1 = a
        h2, saved["rstd2"] = K.layer_norm_stats(r1, eps)                        # h2 = xhat2 (N, C)
        f = K.linear(h2, params["fc.folded"], params["fc.folded_bias"])         # (N, 4C)
    elif pre:
        r1 = a
        h2, saved["xhat2"], saved["rstd2"] = K.layer_norm(r1, params["ln_2.weight"], params["ln_2.bias"], eps)
        f = K.linear(h2, params["mlp.fc.weight"], params["mlp.fc.bias"])       # (N, 4C)
    else:
        r1, saved["xhat1"], saved["rstd1"] = K.layer_norm(a, params["ln_1.weight"], params["ln_1.bias"], eps)
        h2 = r1
        f = K.linear(h2, params["mlp.fc.weight"], params["mlp.fc.bias"])       # (N, 4C)
    if opt.get("activation", "tanh") == "erf":                                  # exact GELU (BERT)
        g, slope = K.gelu_erf_with_slope(f, slope_into_f=True)                 # f is spent: its slope there
    else:                                                                       # GPT-2's tanh approximation
        g, slope = K.gelu_tanh_with_slope(f, slope_into_f=True) if opt["save"] else (K.gelu_tanh(f), None)
    del f
    m = K.linear(g, params["mlp.proj.weight"], params["mlp.proj.bias"])         # (N, C)
    if "resid2" in drops:
        m *= drops["resid2"]
    out2 = out.reshape(N, C)                                                    # (N, C) view of the output chunk
    if pre:
        xp.add(r1, m, out=out2)
    else:
        m += r1
        out2[...], saved["xhat2"], saved["rstd2"] = K.layer_norm(m, params["ln_2.weight"], params["ln_2.bias"], eps)
    if opt["save"]:
        saved.update(h1=h1, q=q, k=k, v=v, att=att, y=y, h2=h2, g=g, slope=slope, drops=drops, shape=(b, T, C))
    return saved


def _weight_grad(dy: Any, x: Any, opt: dict[str, Any]) -> Any:
    """dW = dy^T x (out, in), made by ``opt["alloc"]`` when a worker process gives one (its output arena)."""
    alloc = opt.get("alloc")
    return K.matmul_tn(dy, x, out=None if alloc is None else alloc((dy.shape[1], x.shape[1]), dy.dtype))


def _block_backward(gout: Any, saved: dict[str, Any], params: dict[str, Any], opt: dict[str, Any],
                    gx_out: Any) -> dict[str, Any]:
    """Gradients for one chunk: gout (b, T, C) -> writes gx_out (b, T, C); returns the parameter grads."""
    xp = array_module(gout)
    b, T, C = saved["shape"]
    H = opt["n_head"]
    D, N = C // H, b * T
    drops, has_bias, pre, fold = saved["drops"], opt["has_bias"], opt["pre_norm"], opt["fold"]
    grads: dict[str, Any] = {}
    g_out = gout.reshape(N, C)                                                  # (N, C)
    # --- MLP sub-layer (and ln_2 for post-norm)
    if pre:
        dm = g_out
    else:
        dm, grads["ln_2.weight"], grads["ln_2.bias"] = K.layer_norm_backward(
            g_out, saved["xhat2"], saved["rstd2"], params["ln_2.weight"], has_bias)
    d_r1 = dm                                                                   # reaches r1 by the residual
    if "resid2" in drops:
        dm = dm * drops["resid2"]
    grads["mlp.proj.weight"] = _weight_grad(dm, saved["g"], opt)               # (C, 4C)
    grads["mlp.proj.bias"] = K.column_sums(dm) if has_bias else None
    df = dm @ params["mlp.proj.weight"]                                         # (N, 4C)
    df *= saved["slope"]                                                        # through gelu'(f)
    grads["mlp.fc.weight"] = _weight_grad(df, saved["h2"], opt)                # (4C, C); of the folded one if fold
    grads["mlp.fc.bias"] = K.column_sums(df) if has_bias else None
    if fold:
        dh2 = df @ params["fc.folded"]                                          # (N, C) d xhat2
        da = K.layer_norm_backward_xhat(dh2, saved["h2"], saved["rstd2"])
        da += d_r1
    elif pre:
        da, grads["ln_2.weight"], grads["ln_2.bias"] = K.layer_norm_backward(
            df @ params["mlp.fc.weight"], saved["xhat2"], saved["rstd2"], params["ln_2.weight"], has_bias)
        da += d_r1
    else:
        dh2 = df @ params["mlp.fc.weight"]                                      # (N, C)
        dh2 += d_r1                                                             # r1 = ln_1(x + a) feeds both paths
        da, grads["ln_1.weight"], grads["ln_1.bias"] = K.layer_norm_backward(
            dh2, saved["xhat1"], saved["rstd1"], params["ln_1.weight"], has_bias)
    d_x = da                                                                    # reaches x by the residual
    # --- attention sub-layer
    if "resid1" in drops:
        da = da * drops["resid1"]
    grads["attn.proj.weight"] = _weight_grad(da, saved["y"], opt)              # (C, C)
    grads["attn.proj.bias"] = K.column_sums(da) if has_bias else None
    dy = (da @ params["attn.proj.weight"]).reshape(b, T, H, D).transpose(0, 2, 1, 3)  # (b, H, T, D)
    att, q, k, v = saved["att"], saved["q"], saved["k"], saved["v"]
    att_used = att * drops["attn"] if "attn" in drops else att
    dqkv = xp.empty((b, T, 3, H, D), dtype=gout.dtype)
    # NOTE: the matmuls write straight into their places in dqkv (through transposed views), no copies
    xp.matmul(att_used.transpose(0, 1, 3, 2), dy, out=dqkv[:, :, 2].transpose(0, 2, 1, 3))   # dv (b, H, T, D)
    datt = dy @ v.transpose(0, 1, 3, 2)                                         # (b, H, T, T)
    if "attn" in drops:
        datt *= drops["attn"]
    datt -= xp.einsum("bhts,bhts->bht", datt, att)[..., None]                   # softmax backward, in place
    datt *= att                                                                 # d(scores / sqrt(D))
    rope = opt["rope"]
    dqk = xp.empty((b, T, 2, H, D), dtype=gout.dtype) if rope is not None else dqkv[:, :, :2]
    xp.matmul(datt, k, out=dqk[:, :, 0].transpose(0, 2, 1, 3))                  # d(scaled, rotated q)
    xp.matmul(datt.transpose(0, 1, 3, 2), q, out=dqk[:, :, 1].transpose(0, 2, 1, 3))  # d(rotated k)
    if opt.get("rope_z") is not None:                                           # the adjoint: times the conjugate
        zc = opt["rope_z"][1]
        xp.multiply(dqk.view(zc.dtype), zc, out=dqkv[:, :, :2].view(zc.dtype))
    elif rope is not None:                                                      # rotary's adjoint (and the scale)
        _rotate_qk_adjoint(dqk, *rope, out=dqkv[:, :, :2])
    else:
        dqkv[:, :, 0] *= 1.0 / math.sqrt(D)
    dqkv2 = dqkv.reshape(N, 3 * C)                                              # (N, 3C)
    grads["attn.qkv.weight"] = _weight_grad(dqkv2, saved["h1"], opt)           # (3C, C); of the folded one if fold
    grads["attn.qkv.bias"] = K.column_sums(dqkv2) if has_bias else None
    gx = gx_out.reshape(N, C)
    if fold:
        dh1 = dqkv2 @ params["qkv.folded"]                                      # (N, C) d xhat1
        xp.add(K.layer_norm_backward_xhat(dh1, saved["h1"], saved["rstd1"]), d_x, out=gx)
    elif pre:
        dx, grads["ln_1.weight"], grads["ln_1.bias"] = K.layer_norm_backward(
            dqkv2 @ params["attn.qkv.weight"], saved["xhat1"], saved["rstd1"], params["ln_1.weight"], has_bias)
        xp.add(dx, d_x, out=gx)
    else:
        xp.add(dqkv2 @ params["attn.qkv.weight"], d_x, out=gx)
    return grads


# ----------------------------------------------------------------------------- the stack as one op
def _draw_dropout(shape: tuple[int, int, int], opt: dict[str, Any], n_layer: int, rng: Any, dtype: Any,
                  xp: Any) -> list[dict[str, Any]]:
    """Per layer, masks for the whole batch in the readable model's order (attention, then each branch)."""
    B, T, C = shape
    layers: list[dict[str, Any]] = []
    for _ in range(n_layer):
        masks: dict[str, Any] = {}
        if opt["dropout_p"] > 0:
            p = opt["dropout_p"]
            masks["attn"] = K.dropout_mask(rng, (B, opt["n_head"], T, T), p, dtype, xp)     # (B, H, T, T)
            masks["resid1"] = K.dropout_mask(rng, (B, T, C), p, dtype, xp).reshape(B * T, C)
            masks["resid2"] = K.dropout_mask(rng, (B, T, C), p, dtype, xp).reshape(B * T, C)
        layers.append(masks)
    return layers


def _chunk_masks(masks: dict[str, Any], part: slice, T: int) -> dict[str, Any]:
    rows = slice(part.start * T, part.stop * T)
    return {name: m[part] if name == "attn" else m[rows] for name, m in masks.items()}


class TransformerStack(Function):
    """A stack of GPT blocks, fused: x (B, T, C) and every block's parameters -> (B, T, C).

    Inputs: x, then for each block its parameters in ``PARAM_NAMES`` order (without the biases when
    ``has_bias`` is False). Options: n_head, causal, pre_norm, eps, rope ((cos, sin) each (T, D) or
    None; or ``rope_tables``, the same made by ``_rope_tables``), mask ((B, 1, T, T) bool, True = may
    attend, the causal mask folded in; or None), dropout_p and rng (the generator of the dropout masks),
    activation ('tanh': GELU's tanh form, as GPT-2; 'erf': the exact GELU, as BERT).
    ``head``: a dict (targets, its options, ``n_arrays``: how many of the last inputs are the head's
    arrays, ``impl``: "module:attr" of its protocol, by default the GPT's ``LM_HEAD``): then each chunk
    goes on through the head to its loss where it ran, and the op returns the mean loss (0-d).
    ``stem``: a dict (its inputs, options, ``n_arrays``: how many of the first inputs are the stem's
    arrays, which then stand where x would, ``impl``: "module:attr" of its protocol, see ``stem_impl``):
    each chunk's x is made where the chunk runs (the embeddings: ``GPT_STEM``, ``bert_fast.BERT_STEM``),
    and the op returns the stem arrays' gradients instead of x's.
    """

    def forward(self, x, *param_arrays, n_head: int = 1, causal: bool = True, pre_norm: bool = True,
                eps: float = 1e-5, rope: tuple[Any, Any] | None = None, mask: Any = None, dropout_p: float = 0.0,
                rng: Any = None, has_bias: bool = True, rope_tables: tuple[Any, Any] | None = None,
                head: dict[str, Any] | None = None, activation: str = "tanh", stem: dict[str, Any] | None = None):
        if activation not in ("tanh", "erf"):
            raise ValueError(f"TransformerStack: activation must be 'tanh' (GELU's tanh form) or 'erf' (exact), "
                             f"got {activation!r}")
        xp = array_module(x)
        names = PARAM_NAMES if has_bias else PARAM_NAMES[0::2]
        head_arrays = param_arrays[len(param_arrays) - head["n_arrays"]:] if head else ()
        param_arrays = param_arrays[:len(param_arrays) - len(head_arrays)]
        self.stem, stem_arrays = None, ()
        if stem:                                                                # x is the stem's first array
            impl = stem_impl(stem)
            stem_arrays, param_arrays = (x, *param_arrays)[:stem["n_arrays"]], (x, *param_arrays)[stem["n_arrays"]:]
            self.stem = dict(impl.setup(stem, stem_arrays, rng, xp), impl=impl)
            self.stem["saved"] = []
        B, T, C = x.shape if stem is None else self.stem["shape"]
        dtype = x.dtype if stem is None else self.stem["dtype"]
        if not param_arrays or len(param_arrays) % len(names):
            raise RuntimeError(f"TransformerStack: expected {len(names)} parameters per block, got {len(param_arrays)}")
        # NOTE: folding costs weight-sized work once per call, and saves row-sized work: it pays from
        # about 4 C rows (not for a generated token's forward)
        fold = pre_norm and B * T >= 4 * C
        layers = []
        for i in range(0, len(param_arrays), len(names)):
            params = dict.fromkeys(PARAM_NAMES)
            params.update(zip(names, param_arrays[i:i + len(names)]))
            layers.append(params)
            if fold:
                _fold_layer_norm(params, "ln_1", "attn.qkv", "qkv")
                _fold_layer_norm(params, "ln_2", "mlp.fc", "fc")
        tables = rope_tables if rope is None else _rope_tables(rope[0], rope[1], n_head)  # each (T, 2, H, D)
        rope_z = _complex_rope(*tables) if tables is not None and xp is np and COMPLEX_ROPE else None
        if rope_z is not None:                                                  # q's, k's pairs side by side
            order = _interleaved_rows(n_head, C)[0]
            w, b = ("qkv.folded", "qkv.folded_bias") if fold else ("attn.qkv.weight", "attn.qkv.bias")
            for params in layers:
                params[w] = params[w][order]
                params[b] = None if params[b] is None else params[b][order]
        opt = dict(n_head=n_head, pre_norm=pre_norm, fold=fold, eps=eps, rope=tables, has_bias=has_bias,
                   save=any(self.needs_input_grad), dropout_p=dropout_p, activation=activation, rope_z=rope_z)
        parts = chunks(B, on_cpu=xp is np)
        drops = _draw_dropout((B, T, C), opt, len(layers), rng, dtype, xp)
        bias = K.attention_bias(mask, causal and mask is None, T, T, dtype, xp)   # (T, T), (B, 1, T, T) or None
        # rows that may see a key: every row under no mask or the causal one; else (B, 1, T) from the mask
        any_key = xp.isfinite(bias).any(axis=-1) if bias is not None and bias.ndim == 4 else True
        out = xp.empty((B, T, C), dtype=dtype)
        if self.stem:
            self.stem["saved"] = [None] * len(parts)

        def run(c: int) -> list[dict[str, Any]]:                                # chunk c through every block
            part = parts[c]
            b, keys = (bias[part], any_key[part]) if bias is not None and bias.ndim == 4 else (bias, any_key)
            if self.stem is None:
                xc = x[part]
            else:                                                               # the chunk's x, made here
                xc, self.stem["saved"][c] = self.stem["impl"].forward(
                    {n: a[part] for n, a in self.stem["inputs"].items()}, self.stem["params"], self.stem["meta"])
            return _chunk_forward(xc, layers, opt, b, keys, [_chunk_masks(m, part, T) for m in drops], out[part])

        self.remote, self.head = None, None
        if head:
            impl = head_impl(head)
            self.head = dict(impl.setup(head, head_arrays, (B, T, C)), impl=impl)
            out2, t, rows = out.reshape(B * T, C), self.head["targets"], [slice(p.start * T, p.stop * T) for p in parts]

            def run_head(i: int) -> tuple[float, int, dict[str, Any]]:
                return impl.forward(out2[rows[i]], self.head["params"], t[rows[i]], self.head["meta"])
        workers = worker_processes() if xp is np and len(parts) > 1 else []
        requests = (_remote_requests(x, layers, opt, bias, any_key, drops, parts, self.head, self.stem)
                    if workers else None)
        if requests is not None and all(w.fits(r) for w, r in zip(workers, requests)):
            # chunks 1.. go to the worker processes, chunk 0 runs here meanwhile
            key = next(_REMOTE_KEYS)
            region = _free_region(workers[0]) if opt["save"] else 2
            meta = {"key": key, "opt": {k: v for k, v in opt.items() if k not in ("rope", "rope_z")},
                    "n_layer": len(layers),
                    "param_keys": list(layers[0]), "copy": region == 2,
                    "head": head and {"impl": self.head["impl"].name, **self.head["meta"]},
                    "stem": stem and {"impl": self.stem["impl"].name, **self.stem["meta"]}}
            split_work()                                                        # the workers use the other cores
            for worker, request in zip(workers, requests):
                worker.submit(f"{__name__}:_remote_forward", request, meta, region)
                if region < 2:
                    worker.__dict__.setdefault("gpt_regions", {})[region] = weakref.ref(self)
            chunk_saved = [run(0)] + [None] * len(requests)
            head_results = [run_head(0)] if head else []
            for worker, part in zip(workers, parts[1:]):
                res, res_meta = worker.result()
                if head:
                    head_results.append((res_meta["nll"], res_meta["count"], None))
                else:
                    out[part] = res["out"]
            self.remote = (workers, key) if opt["save"] else None
        else:
            chunk_saved = parallel_map(run, range(len(parts)))
            head_results = parallel_map(run_head, range(len(parts))) if head else []
        if head:
            count, total = sum(r[1] for r in head_results), sum(r[0] for r in head_results)
            self.head.update(count=count, saved=[r[2] for r in head_results])
            out = xp.asarray(total / count if count else float("nan"), dtype=dtype)
        # NOTE: the parameters are saved too, so that the engine catches an in-place update between
        # this forward and its backward; the engine releases ``saved`` after the backward.
        self.save_for_backward(*stem_arrays, *param_arrays, *head_arrays, chunk_saved)
        self.layers, self.opt, self.names, self.parts = layers, opt, names, parts
        return out

    def backward(self, gout):
        xp = array_module(gout)
        head, head_grads = self.head, []
        if head:                                                                # gout is d loss: first the head's
            scale = float(gout) / head["count"] if head["count"] else 0.0
            B, T, C = head["shape"]
            gout = xp.empty(head["shape"], dtype=gout.dtype)
            gout2, rows = gout.reshape(B * T, C), [slice(p.start * T, p.stop * T) for p in self.parts]

            def run_head(i: int) -> dict[str, Any]:
                return head["impl"].backward(scale, head["saved"][i], head["params"], head["meta"], gout2[rows[i]])
        gx = xp.empty_like(gout)
        stem, stem_grads = self.stem, [None] * len(self.parts)                  # per chunk, summed in order

        def run(c: int, saved: list[dict[str, Any]]) -> list[dict[str, Any]]:   # chunk c, last block to first
            part = self.parts[c]
            grads = _chunk_backward(gout[part], saved, self.layers, self.opt, gx[part])
            if stem:                                                            # the chunk's gx on into the stem
                stem_grads[c] = stem["impl"].backward(gx[part], stem["saved"][c], stem["params"], stem["meta"])
            return grads

        if self.remote is not None:
            workers, key = self.remote
            split_work()                                                        # the workers use the other cores
            for worker, part in zip(workers, self.parts[1:]):
                request, meta = ({}, {"key": key, "scale": scale}) if head else ({"gout": gout[part]}, {"key": key})
                worker.submit(f"{__name__}:_remote_backward", request, meta, 2)
            if head:
                head_grads.append(run_head(0))
            grads_list = [run(0, self.saved[-1][0])]
            for c, (worker, part) in enumerate(zip(workers, self.parts[1:]), start=1):
                res = worker.result()[0]                                        # views, valid until its next call
                regions = worker.__dict__.get("gpt_regions", {})
                for region in [r for r, ref in regions.items() if ref() is self]:
                    del regions[region]                                         # its inputs may be overwritten now
                if stem:
                    stem_grads[c] = {n[2:]: a for n, a in res.items() if n.startswith("S:")}
                else:
                    gx[part] = res["gx"]
                grads_list.append([{name: res.get(f"{i}:{name}") for name in PARAM_NAMES}
                                   for i in range(len(self.layers))])
                if head:
                    head_grads.append({name[2:]: a for name, a in res.items() if name.startswith("H:")})
        else:
            if head:
                head_grads = parallel_map(run_head, range(len(self.parts)))
            grads_list = parallel_map(run, range(len(self.parts)), self.saved[-1])

        def reduce(i: int) -> dict[str, Any]:                                   # layer i: the chunks' sum, unfolded
            layer_total = grads_list[0][i]
            for grads in grads_list[1:]:
                for name, g in grads[i].items():
                    if g is not None:
                        layer_total[name] += g
            if self.opt["rope_z"] is not None:                                  # qkv's rows back in their order
                inverse = _interleaved_rows(self.opt["n_head"], self.layers[i]["attn.proj.weight"].shape[0])[1]
                for name in ("attn.qkv.weight", "attn.qkv.bias"):
                    if layer_total.get(name) is not None:
                        layer_total[name] = layer_total[name][inverse]
            if self.opt["fold"]:
                _unfold_gradients(layer_total, self.layers[i], "ln_1", "attn.qkv")
                _unfold_gradients(layer_total, self.layers[i], "ln_2", "mlp.fc")
            return layer_total

        total = parallel_map(reduce, range(len(self.layers)))                  # the layers shared out over the threads
        first = (gx,) if not stem else stem["impl"].finish(_sum_dicts(stem_grads), stem)
        grads = (*first, *(layer[name] for layer in total for name in self.names))
        if not head:
            return grads
        return (*grads, *head["impl"].finish(_sum_dicts(head_grads), head))


def _sum_dicts(dicts: list[dict[str, Any]]) -> dict[str, Any]:
    """The chunks' gradients of a head or a stem, summed per name (into the first chunk's arrays)."""
    total = dicts[0]
    for g in dicts[1:]:
        for name, a in g.items():
            if a is not None:
                total[name] += a
    return total


def _chunk_forward(x: Any, layers: list[dict[str, Any]], opt: dict[str, Any], bias: Any, any_key: Any,
                   masks: list[dict[str, Any]], out: Any) -> list[dict[str, Any]]:
    """One chunk x (b, T, C) through every block, the last one writing ``out``; each block's saved."""
    xp = array_module(x)
    h, saved = x, []
    for i, params in enumerate(layers):
        nxt = out if i == len(layers) - 1 else xp.empty_like(h)
        saved.append(_block_forward(h, params, opt, bias, masks[i], nxt, any_key))
        h = nxt
    return saved


def _chunk_backward(gout: Any, saved: list[dict[str, Any]], layers: list[dict[str, Any]], opt: dict[str, Any],
                    gx: Any) -> list[dict[str, Any]]:
    """One chunk's gradients through every block, last to first, the first one writing ``gx``."""
    xp = array_module(gout)
    grads: list[dict[str, Any]] = [{}] * len(layers)
    g = gout
    for i in reversed(range(len(layers))):
        nxt = gx if i == 0 else xp.empty_like(g)
        grads[i] = _block_backward(g, saved[i], layers[i], opt, nxt)
        g = nxt
    return grads


# ----------------------------------------------------------------------------- chunks in worker processes
_REMOTE_KEYS = itertools.count()


def _free_region(worker: Any) -> int:
    """An input region (0 or 1) of ``worker`` that no pending forward's saved chunk still reads; else 2,
    the scratch region, whose inputs the worker then copies."""
    regions = worker.__dict__.get("gpt_regions", {})
    for region in (0, 1):
        ref = regions.get(region)
        if ref is None or ref() is None:
            return region
    return 2
_REMOTE_KEEP = 8              # saved chunks a worker keeps (oldest dropped): forwards whose backward never came


_FOLDED_KEYS = ("qkv.folded", "qkv.folded_bias", "attn.proj.weight", "attn.proj.bias", "fc.folded", "fc.folded_bias",
                  "mlp.proj.weight", "mlp.proj.bias")                        # what a folded block reads


class _LMHead:
    """``TransformerStack``'s GPT head: ln_f folded into lm_head (``_fold_layer_norm``), the mean
    next-token loss. The protocol of a head (``head_impl``): ``setup`` once per forward in the calling
    process (its state: params, targets (B*T,), meta, shape), ``shipped`` (the arrays a worker needs),
    ``forward`` / ``backward`` per chunk (in a worker too, with the shipped arrays and the picklable
    meta), and ``finish`` (the summed gradients -> one per head array, in the order they came)."""

    name = f"{__name__}:LM_HEAD"

    @staticmethod
    def setup(head: dict[str, Any], arrays: tuple[Any, ...], shape: tuple[int, int, int]) -> dict[str, Any]:
        """ln_f (weight, bias when has_bias) and lm_head's weight (V, C), folded; the targets (B*T,)
        checked as ``LMHeadLoss`` does."""
        ln_w, ln_b, weight = (arrays[0], arrays[1], arrays[2]) if head["has_bias"] else (arrays[0], None, arrays[1])
        B, T, _ = shape
        V = weight.shape[0]
        t = array_module(weight).asarray(head["targets"]).reshape(B * T)
        bad = (t != -100) & ((t < 0) | (t >= V))
        if bad.any():
            raise IndexError(f"cross_entropy: target {int(t[bad][0])} is out of range for {V} classes")
        params = {"ln.weight": ln_w, "ln.bias": ln_b, "head.weight": weight, "head.bias": None}
        _fold_layer_norm(params, "ln", "head", "head")
        return {"params": params, "targets": t, "shape": shape,
                "meta": {"eps": head["eps"], "has_bias": head["has_bias"]}}

    @staticmethod
    def shipped(params: dict[str, Any]) -> dict[str, Any]:
        return {name: params[name] for name in ("head.folded", "head.folded_bias") if params[name] is not None}

    @staticmethod
    def forward(x: Any, params: dict[str, Any], targets: Any, meta: dict[str, Any]) -> tuple[float, int, Any]:
        return _head_forward(x, params, targets, meta["eps"], -100)

    @staticmethod
    def backward(scale: float, saved: Any, params: dict[str, Any], meta: dict[str, Any], gx_out: Any) -> dict:
        return _head_backward(scale, saved, params, meta["has_bias"], gx_out)

    @staticmethod
    def finish(total: dict[str, Any], state: dict[str, Any]) -> list[Any]:
        _unfold_gradients(total, state["params"], "ln", "head")
        return [total["ln.weight"]] + ([total["ln.bias"]] if state["meta"]["has_bias"] else []) + [total["head.weight"]]


LM_HEAD = _LMHead()


class EmbeddingStem:
    """What the embedding stems share (``stem_impl``'s protocol): the state ``setup`` returns, with the
    token ids (and the dropout mask, drawn before the blocks' masks) as the per-chunk inputs; every
    param shipped to the workers; the gradients returned in the order of ``meta["names"]``."""

    @staticmethod
    def state(stem: dict[str, Any], params: dict[str, Any], names: tuple[str, ...], rng: Any, xp: Any,
              **extra: Any) -> dict[str, Any]:
        (B, T), (_, C), dtype = stem["idx"].shape, params["wte"].shape, params["wte"].dtype
        inputs = {"idx": stem["idx"], **extra}
        if stem["dropout_p"] > 0:                                               # drawn before the blocks' masks
            inputs["drop"] = K.dropout_mask(rng, (B, T, C), stem["dropout_p"], dtype, xp)   # (B, T, C)
        return {"params": params, "inputs": inputs, "shape": (B, T, C), "dtype": dtype,
                "meta": {"names": names, **{k: stem[k] for k in ("eps",) if k in stem}}}

    @staticmethod
    def shipped(params: dict[str, Any]) -> dict[str, Any]:
        return params

    @staticmethod
    def finish(total: dict[str, Any], state: dict[str, Any]) -> list[Any]:
        return [total[n] for n in state["meta"]["names"]]


class _GPTStem(EmbeddingStem):
    """``TransformerStack``'s GPT stem (the protocol of ``stem_impl``): a chunk's token ids (b, T) ->
    wte(idx) [+ wpe(0..T-1) | + the sinusoid table] -> dropout, the blocks' input x.

    Backward: wte's gradient is gx (times the dropout mask) summed per id (``K.embedding_grad``),
    wpe's its sum over the chunk's sequences, in its first T rows.
    """

    name = f"{__name__}:GPT_STEM"

    @classmethod
    def setup(cls, stem: dict[str, Any], arrays: tuple[Any, ...], rng: Any, xp: Any) -> dict[str, Any]:
        names = ("wte", "wpe")[:len(arrays)]
        params = dict(zip(names, arrays))
        if stem["table"] is not None:
            params["table"] = stem["table"]                                     # (T, C), no gradient
        return cls.state(stem, params, names, rng, xp)

    @staticmethod
    def forward(inputs: dict[str, Any], params: dict[str, Any], meta: dict[str, Any]) -> tuple[Any, dict]:
        idx = inputs["idx"]
        T = idx.shape[1]
        x = params["wte"][idx]                                                  # (b, T, C) a copy
        if "wpe" in params:
            x += params["wpe"][:T]
        if "table" in params:
            x += params["table"]
        if "drop" in inputs:
            x *= inputs["drop"]
        return x, inputs

    @staticmethod
    def backward(gx: Any, saved: dict[str, Any], params: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
        idx = saved["idx"]
        b, T = idx.shape
        C = params["wte"].shape[1]
        g = gx * saved["drop"] if "drop" in saved else gx                      # (b, T, C)
        grads = {"wte": K.embedding_grad(idx.reshape(-1), g.reshape(b * T, C), params["wte"].shape[0])}
        if "wpe" in params:
            grads["wpe"] = np.zeros_like(params["wpe"])
            grads["wpe"][:T] = g.sum(axis=0)                                    # (T, C)
        return grads


GPT_STEM = _GPTStem()


def _impl_named(name: str) -> Any:
    module, _, attr = name.partition(":")
    return getattr(importlib.import_module(module), attr)


def head_impl(head: dict[str, Any]) -> Any:
    """The head protocol object a ``TransformerStack`` head dict names (``head["impl"]``, "module:attr"),
    by default the GPT's (``LM_HEAD``)."""
    return _impl_named(head["impl"]) if head.get("impl") else LM_HEAD


def stem_impl(stem: dict[str, Any]) -> Any:
    """The stem protocol object a ``TransformerStack`` stem dict names (``stem["impl"]``, "module:attr").

    A stem makes each chunk's x where the chunk runs. Its protocol: ``setup(stem, arrays, rng, xp)``
    once per forward in the calling process (its state: params, inputs (a dict of arrays whose first
    axis is the batch, cut per chunk), meta, shape (B, T, C), dtype; dropout masks drawn from ``rng``
    before the blocks' own), ``shipped`` (the params a worker needs), ``forward(inputs, params, meta)``
    -> (x (b, T, C), saved) and ``backward(gx, saved, params, meta)`` -> gradients per chunk, and
    ``finish`` (the summed gradients -> one per stem array, in the order they came).
    """
    if not stem.get("impl"):
        raise ValueError("TransformerStack: a stem needs its protocol, stem['impl'] = 'module:attr'")
    return _impl_named(stem["impl"])


def _remote_requests(x: Any, layers: list[dict[str, Any]], opt: dict[str, Any], bias: Any, any_key: Any,
                     drops: list[dict[str, Any]], parts: list[slice], head: dict[str, Any] | None = None,
                     stem: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The arrays each worker needs for chunks 1..: its x (or its stem's inputs and params), every
    layer's (folded) parameters, the rotary tables, its dropout masks, attention bias and key rows."""
    T = x.shape[1] if stem is None else stem["shape"][1]
    keys = _FOLDED_KEYS if opt["fold"] else PARAM_NAMES
    shared = {f"L{i}:{name}": params[name] for i, params in enumerate(layers) for name in keys
              if params.get(name) is not None}
    if opt["rope"] is not None:
        shared["rope.cos"], shared["rope.sin"] = opt["rope"]
    if opt.get("rope_z") is not None:
        shared["rope.z"], shared["rope.zc"] = opt["rope_z"]
    requests = []
    if stem is not None:
        shared.update((f"S:{name}", a) for name, a in stem["impl"].shipped(stem["params"]).items())
    for part in parts[1:]:
        request = dict(shared, x=x[part]) if stem is None else dict(
            shared, **{f"SI:{name}": a[part] for name, a in stem["inputs"].items()})
        for i, masks in enumerate(drops):
            for name, m in _chunk_masks(masks, part, T).items():
                request[f"M{i}:{name}"] = m
        if bias is not None:
            request["bias"] = bias[part] if bias.ndim == 4 else bias
        if any_key is not True:
            request["any_key"] = any_key[part]
        if head:                                                                # the worker's chunk goes on to the loss
            request.update((f"H:{name}", a) for name, a in head["impl"].shipped(head["params"]).items())
            request["targets"] = head["targets"][part.start * T:part.stop * T]
        requests.append(request)
    return requests


def _remote_forward(state: dict[str, Any], arrays: dict[str, Any], meta: dict[str, Any]) -> tuple[dict, dict]:
    """In a worker: one chunk's forward; keeps its saved activations under meta["key"] for
    ``_remote_backward``. The arrays are views of the shared arena; the caller leaves their region
    alone until that backward, or sends them in the scratch region with meta["copy"] (copied here)."""
    n_layer, opt = meta["n_layer"], dict(meta["opt"])
    keep = np.array if meta["copy"] else (lambda a: a)
    layers: list[dict[str, Any]] = [dict.fromkeys(meta["param_keys"]) for _ in range(n_layer)]
    masks: list[dict[str, Any]] = [{} for _ in range(n_layer)]
    for name, a in arrays.items():
        kind, _, rest = name.partition(":")
        if kind.startswith("L"):
            layers[int(kind[1:])][rest] = keep(a)
        elif kind.startswith("M"):
            masks[int(kind[1:])][rest] = keep(a)
    opt["rope"] = (keep(arrays["rope.cos"]), keep(arrays["rope.sin"])) if "rope.cos" in arrays else None
    opt["rope_z"] = (keep(arrays["rope.z"]), keep(arrays["rope.zc"])) if "rope.z" in arrays else None
    stem = meta.get("stem")
    if stem:                                                                    # the chunk's x made here
        impl = _impl_named(stem["impl"])
        sparams = {name[2:]: keep(a) for name, a in arrays.items() if name.startswith("S:")}
        x, ssaved = impl.forward({name[3:]: np.array(a) for name, a in arrays.items() if name.startswith("SI:")},
                                 sparams, stem)
        stem = (impl, sparams, ssaved, stem)
    else:
        x = np.array(arrays["x"])                                               # post-norm saves it
    out = np.empty_like(x)
    saved = _chunk_forward(x, layers, opt, arrays.get("bias"), arrays.get("any_key", True), masks, out)
    head = meta.get("head")
    if head:
        impl = _impl_named(head["impl"])
        hparams = {name[2:]: keep(a) for name, a in arrays.items() if name.startswith("H:")}
        nll, count, hsaved = impl.forward(out.reshape(-1, out.shape[-1]), hparams, np.array(arrays["targets"]), head)
        saved = saved + [(impl, hparams, hsaved, head)]
    if opt["save"]:
        state[meta["key"]] = (layers, opt, saved, stem)
        for old in sorted(k for k in state if isinstance(k, int))[:-_REMOTE_KEEP]:
            del state[old]
    return ({}, {"nll": nll, "count": count}) if head else ({"out": out}, {})


def _remote_backward(state: dict[str, Any], arrays: dict[str, Any], meta: dict[str, Any]) -> tuple[dict, dict]:
    """In a worker: the backward of the chunk saved under meta["key"]: its gx and parameter gradients."""
    if meta["key"] not in state:
        raise RuntimeError("TransformerStack: this forward's saved chunk was dropped by its worker "
                           f"(it keeps the last {_REMOTE_KEEP}); call backward sooner")
    layers, opt, saved, stem = state.pop(meta["key"])
    opt = dict(opt, alloc=state["alloc"])                                       # NOTE: gradients made in place, no copy
    out = {}
    if "scale" in meta:                                                         # the head's backward first
        (impl, hparams, hsaved, hmeta), saved = saved[-1], saved[:-1]
        b, T, C = saved[-1]["shape"]
        gout = np.empty((b, T, C), dtype=saved[-1]["h1"].dtype)
        hgrads = impl.backward(meta["scale"], hsaved, hparams, hmeta, gout.reshape(b * T, C))
        out.update((f"H:{name}", g) for name, g in hgrads.items() if g is not None)
    else:
        gout = np.array(arrays["gout"])
    gx = state["alloc"](gout.shape, gout.dtype) if stem is None else np.empty_like(gout)
    grads = _chunk_backward(gout, saved, layers, opt, gx)
    if stem is None:
        out["gx"] = gx
    else:                                                                       # gx on into the stem, here
        impl, sparams, ssaved, smeta = stem
        out.update((f"S:{name}", g) for name, g in impl.backward(gx, ssaved, sparams, smeta).items())
    for i, layer in enumerate(grads):
        out.update((f"{i}:{name}", g) for name, g in layer.items() if g is not None)
    return out, {}


# ----------------------------------------------------------------------------- final norm + head + loss
def softmax_nll_(logits: Any, targets: Any) -> Any:
    """logits (n, V) -> -log softmax(logits)[target] (n,); the logits become the softmax, in place."""
    xp = array_module(logits)
    logits -= logits.max(axis=1, keepdims=True)                                # z = logits - max
    z_target = logits[xp.arange(len(targets)), targets]                         # (n,) a copy, before the exp
    xp.exp(logits, out=logits)
    total = logits.sum(axis=1, keepdims=True)                                   # (n, 1)
    logits /= total
    return xp.log(total[:, 0]) - z_target


def _head_forward(x: Any, params: dict[str, Any], targets: Any, eps: float,
                  ignore_index: int) -> tuple[float, int, dict[str, Any]]:
    """One chunk: x (n, C), targets (n,) -> (sum of -log p(target), number of counted rows, saved).

    The final LayerNorm is folded into the output projection (``_fold_layer_norm``).
    """
    xp = array_module(x)
    xhat, rstd = K.layer_norm_stats(x, eps)
    logits = K.linear(xhat, params["head.folded"], params.get("head.folded_bias"))  # (n, V)
    valid = targets != ignore_index
    safe = xp.where(valid, targets, 0)
    nll = softmax_nll_(logits, safe)                                            # logits -> probs, in place
    saved = {"xhat": xhat, "rstd": rstd, "probs": logits, "safe": safe, "valid": valid}
    return float((nll * valid).sum()), int(valid.sum()), saved


def _head_backward(scale: float, saved: dict[str, Any], params: dict[str, Any], has_bias: bool,
                   gx_out: Any) -> dict[str, Any]:
    xp = array_module(gx_out)
    dlogits = saved["probs"].copy()                                             # softmax - onehot
    dlogits[xp.arange(dlogits.shape[0]), saved["safe"]] -= 1.0
    dlogits *= (saved["valid"] * scale).astype(dlogits.dtype)[:, None]
    grads = {"head.weight": K.matmul_tn(dlogits, saved["xhat"]),                # (V, C) of the folded weight
             "head.bias": K.column_sums(dlogits) if has_bias else None}
    dh = dlogits @ params["head.folded"]                                        # (n, C) d xhat
    gx_out[...] = K.layer_norm_backward_xhat(dh, saved["xhat"], saved["rstd"])
    return grads


_SMALL_HEAD = 1 << 19         # logits (rows x vocabulary) below which the head runs in one thread


def _in_this_thread(fn: Any, *arg_lists: Any) -> list[Any]:
    """``parallel_map``'s contract in the calling thread, BLAS left as it is."""
    return [fn(*args) for args in zip(*arg_lists)]


class LMHeadLoss(Function):
    """Mean next-token cross-entropy of ``layer_norm(x) @ weight.T``: the final LayerNorm, the (tied)
    output projection and the loss in one op, split over the threads like the blocks.

    Inputs: x (B, T, C), the LayerNorm weight (and bias when ``has_bias``), weight (V, C). Options:
    targets (B, T) ints (``ignore_index`` rows do not count), eps. Returns a 0-d loss. Backward:
    dlogits = (softmax - onehot(target)) / count, dW = dlogits^T h, dh = dlogits W, then LayerNorm's
    (with the LayerNorm folded into W: ``_fold_layer_norm``).
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
        x2 = x.reshape(B * T, C)                                                # (N, C)
        # NOTE: a small head (baby: 768 x 65 logits) runs faster in the calling thread than split
        # over the threads, whose hand-offs cost more than its work
        small = xp is np and B * T * V <= _SMALL_HEAD
        parts = [slice(p.start * T, p.stop * T) for p in chunks(B, on_cpu=xp is np and not small)]
        self.map = _in_this_thread if small else parallel_map
        params = {"ln.weight": ln_w, "ln.bias": ln_b, "head.weight": weight, "head.bias": None}
        _fold_layer_norm(params, "ln", "head", "head")
        results = self.map(lambda p: _head_forward(x2[p], params, t[p], eps, ignore_index), parts)
        count, total = sum(r[1] for r in results), sum(r[0] for r in results)
        self.save_for_backward(*arrays, [r[2] for r in results])
        self.parts, self.count, self.shape, self.has_bias = parts, count, x.shape, has_bias
        self.params = params
        return xp.asarray(total / count if count else float("nan"), dtype=x.dtype)

    def backward(self, gz):
        xp = array_module(gz)
        gx = xp.empty(self.shape, dtype=gz.dtype)
        gx2 = gx.reshape(-1, self.shape[-1])
        scale = float(gz) / self.count if self.count else 0.0
        grads_list = self.map(lambda p, s: _head_backward(scale, s, self.params, self.has_bias, gx2[p]),
                              self.parts, self.saved[-1])
        total = grads_list[0]
        for grads in grads_list[1:]:
            for name, g in grads.items():
                if g is not None:
                    total[name] += g
        _unfold_gradients(total, self.params, "ln", "head")
        if self.has_bias:
            return gx, total["ln.weight"], total["ln.bias"], total["head.weight"]
        return gx, total["ln.weight"], total["head.weight"]
