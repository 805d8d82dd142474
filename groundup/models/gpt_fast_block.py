"""The fused GPT's arithmetic on raw arrays: one block forward and backward, a chunk of the batch
through every block, and the final LayerNorm + head + loss of a chunk.

``groundup.models.gpt_fast`` (``TransformerStack``, ``LMHeadLoss``) and the worker processes
(``groundup.models.gpt_fast_workers``) call these; the BERT twin (``groundup.models.bert_fast``) reuses
the LayerNorm fold and the softmax + NLL. Everything here takes and returns NumPy (or CuPy) arrays,
with 2-D ``(B*T, C)`` GEMMs and in-place elementwise work (``groundup.ops.kernels``); the readable
model these must equal, in float64, is ``groundup.models.gpt`` (tests: ``tests/test_gpt.py``,
``tests/test_gpt_twins.py``).

    pre-norm:   x = x + drop(proj(attention(ln_1(x))));   x = x + drop(mlp(ln_2(x)))
    post-norm:  x = ln_1(x + drop(proj(attention(x))));   x = ln_2(x + drop(mlp(x)))
    attention:  q, k, v = split(x @ qkv.T + b);  (rotary on q, k);  drop(softmax(q k^T / sqrt(D) + mask)) v
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from groundup.backend import array_module
from groundup.ops import kernels as K

__all__ = ["PARAM_NAMES", "fold_layer_norm", "unfold_gradients", "rotary_tables", "rotate_qk", "rotate_qk_adjoint",
           "complex_rope", "interleaved_rows", "block_forward", "block_backward", "draw_dropout", "chunk_masks",
           "sum_dicts", "chunk_forward", "chunk_backward", "softmax_nll_", "head_forward", "head_backward"]


# A block's parameters in the order the fused op takes them (the biases are left out when bias=False).
PARAM_NAMES = ("ln_1.weight", "ln_1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight",
               "attn.proj.bias", "ln_2.weight", "ln_2.bias", "mlp.fc.weight", "mlp.fc.bias",
               "mlp.proj.weight", "mlp.proj.bias")


# ----------------------------------------------------------------------------- one block
def fold_layer_norm(params: dict[str, Any], norm: str, linear: str, key: str) -> None:
    """Pre-norm: LayerNorm ``norm`` then Linear ``linear`` as one Linear of xhat, into params[key + ...].

    (xhat w + b) W^T + c = xhat (W diag(w))^T + (W b + c): ``.folded`` = W diag(w), ``.folded_bias``
    = W b + c. The product of the Linear's output gradient with ``.folded`` is the gradient of xhat.
    NOTE: the fold saves the pass that scales xhat by w in the forward and the passes of dxhat = dy w
    and of sum(dy xhat) in the backward; the weight-sized work is done once per step. The gradients
    of the folded weight G turn back into W's and w's in ``unfold_gradients``.
    """
    weight, w, b = params[linear + ".weight"], params[norm + ".weight"], params[norm + ".bias"]
    bias = params[linear + ".bias"]
    if b is not None:
        bias = weight @ b if bias is None else bias + weight @ b
    params[key + ".folded"], params[key + ".folded_bias"] = weight * w, bias   # (out, C), (out,) or None


def unfold_gradients(grads: dict[str, Any], params: dict[str, Any], norm: str, linear: str) -> None:
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


def rotary_tables(cos: Any, sin: Any, n_head: int) -> tuple[Any, Any]:
    """cos, sin (T, D) -> the tables of ``rotate_qk``: COS and SIN each (T, 2, H, D), for q and k of every head.

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


def rotate_qk(x: Any, cos_t: Any, sin_t: Any) -> Any:
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


def rotate_qk_adjoint(g: Any, cos_t: Any, sin_t: Any, out: Any) -> None:
    """The adjoint of ``rotate_qk``: out = g COS + swap(g SIN); g (b, T, 2, H, D) is overwritten."""
    xp = array_module(g)
    half = g.shape[-1] // 2
    xp.multiply(g, cos_t, out=out)
    g *= sin_t
    out[..., :half] += g[..., half:]
    out[..., half:] += g[..., :half]


def complex_rope(cos_t: Any, sin_t: Any) -> tuple[Any, Any] | None:
    """The tables of ``rotary_tables`` as complex numbers, (T, 2, H, D / 2) and their conjugates, or None
    where the two halves of cos do not match (rotary's tables always match) or the dtype has no
    complex twin (float16).

    Rotary turns each pair (x_d, x_{d + D/2}) by an angle: as the complex number x_d + i x_{d + D/2},
    a multiply by cos + i sin. With q's and k's features interleaved per head (``interleaved_rows``:
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


def interleaved_rows(n_head: int, C: int) -> tuple[Any, Any]:
    """Row order of a (3C, C) qkv weight with q's and k's features of each head interleaved
    (d, d + D/2 side by side), v's as they are; and its inverse."""
    D, half = C // n_head, C // n_head // 2
    within = np.stack([np.arange(half), np.arange(half) + half], axis=1).reshape(D)   # 0, D/2, 1, D/2 + 1, ...
    qk = (np.arange(2 * n_head)[:, None] * D + within[None, :]).reshape(2 * C)
    order = np.concatenate([qk, np.arange(2 * C, 3 * C)])
    return order, np.argsort(order)


def block_forward(x: Any, params: dict[str, Any], opt: dict[str, Any], bias: Any, drops: dict[str, Any],
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
        qk = rotate_qk(qkv[:, :, :2], *opt["rope"])                            # (b, T, 2, H, D)
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


def block_backward(gout: Any, saved: dict[str, Any], params: dict[str, Any], opt: dict[str, Any],
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
        rotate_qk_adjoint(dqk, *rope, out=dqkv[:, :, :2])
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


# ----------------------------------------------------------------------------- a chunk through every block
def draw_dropout(shape: tuple[int, int, int], opt: dict[str, Any], n_layer: int, rng: Any, dtype: Any,
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


def chunk_masks(masks: dict[str, Any], part: slice, T: int) -> dict[str, Any]:
    rows = slice(part.start * T, part.stop * T)
    return {name: m[part] if name == "attn" else m[rows] for name, m in masks.items()}


def sum_dicts(dicts: list[dict[str, Any]]) -> dict[str, Any]:
    """The chunks' gradients of a head or a stem, summed per name (into the first chunk's arrays)."""
    total = dicts[0]
    for g in dicts[1:]:
        for name, a in g.items():
            if a is not None:
                total[name] += a
    return total


def chunk_forward(x: Any, layers: list[dict[str, Any]], opt: dict[str, Any], bias: Any, any_key: Any,
                   masks: list[dict[str, Any]], out: Any) -> list[dict[str, Any]]:
    """One chunk x (b, T, C) through every block, the last one writing ``out``; each block's saved."""
    xp = array_module(x)
    h, saved = x, []
    for i, params in enumerate(layers):
        nxt = out if i == len(layers) - 1 else xp.empty_like(h)
        saved.append(block_forward(h, params, opt, bias, masks[i], nxt, any_key))
        h = nxt
    return saved


def chunk_backward(gout: Any, saved: list[dict[str, Any]], layers: list[dict[str, Any]], opt: dict[str, Any],
                    gx: Any) -> list[dict[str, Any]]:
    """One chunk's gradients through every block, last to first, the first one writing ``gx``."""
    xp = array_module(gout)
    grads: list[dict[str, Any]] = [{}] * len(layers)
    g = gout
    for i in reversed(range(len(layers))):
        nxt = gx if i == 0 else xp.empty_like(g)
        grads[i] = block_backward(g, saved[i], layers[i], opt, nxt)
        g = nxt
    return grads


# ----------------------------------------------------------------------------- final norm + head + loss, one chunk
def softmax_nll_(logits: Any, targets: Any) -> Any:
    """logits (n, V) -> -log softmax(logits)[target] (n,); the logits become the softmax, in place."""
    xp = array_module(logits)
    logits -= logits.max(axis=1, keepdims=True)                                # z = logits - max
    z_target = logits[xp.arange(len(targets)), targets]                         # (n,) a copy, before the exp
    xp.exp(logits, out=logits)
    total = logits.sum(axis=1, keepdims=True)                                   # (n, 1)
    logits /= total
    return xp.log(total[:, 0]) - z_target


def head_forward(x: Any, params: dict[str, Any], targets: Any, eps: float,
                  ignore_index: int) -> tuple[float, int, dict[str, Any]]:
    """One chunk: x (n, C), targets (n,) -> (sum of -log p(target), number of counted rows, saved).

    The final LayerNorm is folded into the output projection (``fold_layer_norm``).
    """
    xp = array_module(x)
    xhat, rstd = K.layer_norm_stats(x, eps)
    logits = K.linear(xhat, params["head.folded"], params.get("head.folded_bias"))  # (n, V)
    valid = targets != ignore_index
    safe = xp.where(valid, targets, 0)
    nll = softmax_nll_(logits, safe)                                            # logits -> probs, in place
    saved = {"xhat": xhat, "rstd": rstd, "probs": logits, "safe": safe, "valid": valid}
    return float((nll * valid).sum()), int(valid.sum()), saved


def head_backward(scale: float, saved: dict[str, Any], params: dict[str, Any], has_bias: bool,
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
