"""``groundup.functional`` (import as ``F``): torch.nn.functional's signatures and semantics.

Fused ops (softmax, cross-entropy, layer norm, GELU, linear, embedding, conv, pooling,
attention) dispatch to Functions with hand-derived backward in ``groundup.ops``; the rest
(dropout, mse_loss, relu...) are composites whose gradient comes from the primitives.
"""

from __future__ import annotations

from typing import Any

from groundup import backend, random
from groundup.creation import one_hot
from groundup.ops import attention, conv, fused, kernels
from groundup.ops.methods import log_softmax, softmax
from groundup.tensor import Tensor, is_grad_enabled

__all__ = [
    "softmax", "log_softmax", "cross_entropy", "nll_loss", "mse_loss", "binary_cross_entropy_with_logits",
    "layer_norm", "gelu", "relu", "tanh", "sigmoid", "linear", "embedding", "dropout", "conv2d",
    "max_pool2d", "avg_pool2d", "scaled_dot_product_attention", "one_hot", "rms_norm", "silu", "pad",
]


def _raw(x: Any, like: Tensor | None = None, name: str = "", op: str = "") -> Any:
    """The raw array of a tensor or array argument; with ``like``, on ``like``'s device.

    A tensor on another device is refused, as torch does (it names the op and both devices); a plain
    NumPy array (or list) next to a CUDA input is copied to the GPU, as the models copy NumPy ids.
    """
    raw = x.data if isinstance(x, Tensor) else x
    if like is None or raw is None or backend.device_of(raw) == like.device:
        return raw
    if isinstance(x, Tensor) or like.device == "cpu":
        raise RuntimeError(f"{op}: {name} is on {backend.device_of(raw)} but the input is on {like.device}; "
                           f"move it first ({name}.to({like.device!r}))")
    return backend.to_device(raw, like.device)


def _constant(x: Any, name: str, op: str, like: Tensor | None = None) -> Any:
    """The raw array of an argument that the loss treats as a constant (on ``like``'s device, as
    ``_raw``): one that requires grad is refused, as its gradient (which torch computes) would
    silently be missing."""
    if isinstance(x, Tensor) and x.requires_grad and is_grad_enabled():
        raise RuntimeError(f"{op}: {name} requires grad, but no gradient flows into {name} here; "
                           f"pass {name}.detach()")
    return _raw(x, like, name, op)


def _float_input(op: str, input: Tensor) -> None:
    """Refuse an integer or bool input, as torch does: a loss of int64 logits came back as a truncated
    int64, gelu's as float64, and the norms failed inside NumPy."""
    if input.dtype.kind != "f":
        raise RuntimeError(f"{op}: expected a floating point input, got dtype {input.dtype}; convert it first "
                           f"(x.float())")


def _refuse_mixed_dtypes(op: str, input: Tensor, params: dict[str, Tensor | None],
                         half_with_float32: bool = False) -> None:
    """Refuse an input whose dtype is not its parameters' (as ``linear`` does and torch does):
    promoting silently would compute a float32 layer in float64, or hand back another dtype.

    ``half_with_float32``: a float16 input with float32 parameters is allowed (torch's mixed-precision
    path for the normalisation layers, whose output keeps the input's dtype).
    """
    for name, p in params.items():
        if p is None or p.dtype == input.dtype:
            continue
        if input.dtype.kind != "f":
            raise RuntimeError(f"{op}: input dtype {input.dtype} is not floating point, {name} is {p.dtype}; "
                               f"convert the input first (x.float())")
        if half_with_float32 and input.dtype == backend.float16 and p.dtype == backend.float32:
            continue
        raise RuntimeError(f"{op}: input dtype {input.dtype} differs from the {name}'s {p.dtype}; convert one of "
                           f"them first (x.to({name}.dtype) or module.to(dtype))")


def cross_entropy(input: Tensor, target: Tensor, weight: Tensor | None = None, ignore_index: int = -100,
                  reduction: str = "mean", label_smoothing: float = 0.0) -> Tensor:
    """Softmax cross-entropy of logits ``input`` (N, C) or (N, C, d...) against class indices or
    class probabilities ``target``."""
    _float_input("cross_entropy", input)
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"cross_entropy: label_smoothing must be in [0, 1], got {label_smoothing}")
    t = _constant(target, "target", "cross_entropy", input)
    if t.dtype.kind == "f" and ignore_index != -100:
        raise RuntimeError(f"cross_entropy: ignore_index={ignore_index} is not supported for a class-probability "
                           f"(float) target, as in torch; give zero probabilities instead")
    if t.dtype.kind == "f" and t.dtype != input.dtype:
        t = t.astype(input.dtype)
    weight = _constant(weight, "weight", "cross_entropy", input)
    return fused.CrossEntropy.apply(input, target=t, weight=weight, ignore_index=ignore_index,
                                    reduction=reduction, label_smoothing=label_smoothing)


def nll_loss(input: Tensor, target: Tensor, weight: Tensor | None = None, ignore_index: int = -100,
             reduction: str = "mean") -> Tensor:
    """Negative log-likelihood of log-probabilities ``input`` (N, C)."""
    _float_input("nll_loss", input)
    return fused.NLLLoss.apply(input, target=_raw(target, input, "target", "nll_loss"),
                               weight=_constant(weight, "weight", "nll_loss", input),
                               ignore_index=ignore_index, reduction=reduction)


def mse_loss(input: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
    """Mean squared error."""
    if isinstance(target, Tensor) and target.shape != input.shape:
        raise ValueError(f"mse_loss: input {input.shape} and target {target.shape} differ in shape")
    sq = (input - target) ** 2
    if reduction == "mean":
        return sq.mean()
    if reduction == "sum":
        return sq.sum()
    if reduction == "none":
        return sq
    raise ValueError(f"mse_loss: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def binary_cross_entropy_with_logits(input: Tensor, target: Tensor, weight: Tensor | None = None,
                                     reduction: str = "mean", pos_weight: Tensor | None = None) -> Tensor:
    """Binary cross-entropy of logits, numerically stable for any magnitude."""
    _float_input("binary_cross_entropy_with_logits", input)
    op = "binary_cross_entropy_with_logits"
    t = _constant(target, "target", op, input)
    if tuple(t.shape) != input.shape:
        raise ValueError(f"{op}: target {tuple(t.shape)} and input {input.shape} differ in shape")
    return fused.BCEWithLogits.apply(input, target=t.astype(input.dtype, copy=False),
                                     weight=_constant(weight, "weight", op, input),
                                     pos_weight=_constant(pos_weight, "pos_weight", op, input), reduction=reduction)


def layer_norm(input: Tensor, normalized_shape: Any, weight: Tensor | None = None,
               bias: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    """Normalise over the trailing ``normalized_shape`` dims, then scale and shift."""
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    if input.shape[-len(shape):] != shape:
        raise RuntimeError(f"layer_norm: normalized_shape {shape} does not match the input's trailing "
                           f"dims {input.shape}")
    _refuse_mixed_dtypes("layer_norm", input, {"weight": weight, "bias": bias}, half_with_float32=True)
    _float_input("layer_norm", input)
    params = [p for p in (weight, bias) if p is not None]
    out = fused.LayerNorm.apply(input, *params, n=len(shape), eps=eps, has_weight=weight is not None)
    return out if out.dtype == input.dtype else out.to(input.dtype)  # float16 input stays float16, as torch


def rms_norm(input: Tensor, normalized_shape: Any, weight: Tensor | None = None,
             eps: float | None = None) -> Tensor:
    """x / sqrt(mean(x^2) + eps) * weight over the trailing dims (composite).

    A weight of another float dtype is accepted, as torch does, and the output keeps the input's dtype.
    """
    _float_input("rms_norm", input)
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    dims = tuple(range(-len(shape), 0))
    eps = eps if eps is not None else float(backend.np.finfo(input.dtype).eps)
    out = input * ((input * input).mean(dim=dims, keepdim=True) + eps).rsqrt()
    if weight is None:
        return out
    out = out * weight
    return out if out.dtype == input.dtype else out.to(input.dtype)


def gelu(input: Tensor, approximate: str = "none") -> Tensor:
    """Gaussian error linear unit; ``approximate='tanh'`` is GPT-2's form."""
    _float_input("gelu", input)
    return fused.GELU.apply(input, approximate=approximate)


def relu(input: Tensor) -> Tensor:
    return input.relu()


def tanh(input: Tensor) -> Tensor:
    return input.tanh()


def sigmoid(input: Tensor) -> Tensor:
    return input.sigmoid()


def silu(input: Tensor) -> Tensor:
    return input * input.sigmoid()


def linear(input: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """y = input @ weight.T + bias; weight is (out_features, in_features)."""
    if bias is None:
        return fused.Linear.apply(input, weight)
    return fused.Linear.apply(input, weight, bias)


def embedding(input: Tensor, weight: Tensor, padding_idx: int | None = None) -> Tensor:
    """Rows of ``weight`` (V, C) picked by the integer ``input`` (*) -> (*, C)."""
    idx = _raw(input)
    if idx.dtype.kind not in "iu":
        raise TypeError(f"embedding: indices must be integers, got dtype {idx.dtype}")
    if padding_idx is not None and not -weight.shape[0] <= padding_idx < weight.shape[0]:
        raise ValueError(f"embedding: padding_idx must be within the {weight.shape[0]} rows of weight, "
                         f"got {padding_idx}")
    if padding_idx is not None and padding_idx < 0:
        padding_idx += weight.shape[0]
    return fused.Embedding.apply(weight, idx=idx, padding_idx=padding_idx)


def dropout(input: Tensor, p: float = 0.5, training: bool = True) -> Tensor:
    """Zero each element with probability ``p`` and scale the rest by 1/(1-p) (inverted dropout)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout: p must be in [0, 1], got {p}")
    if not training or p == 0.0:
        return input
    if p == 1.0:
        return input * 0.0
    xp = backend.array_module(input.data)
    mask = kernels.dropout_mask(random.generator(), tuple(input.shape), p, input.dtype, xp)   # on input's device
    return input * Tensor._make(mask, False, None)


def conv2d(input: Tensor, weight: Tensor, bias: Tensor | None = None, stride: Any = 1, padding: Any = 0,
           dilation: Any = 1, groups: int = 1) -> Tensor:
    """2-D convolution (cross-correlation, as torch): (N, C, H, W) * (O, C / groups, kh, kw) -> (N, O, Ho, Wo);
    an unbatched (C, H, W) input gives (O, Ho, Wo).

    ``groups`` splits the channels into that many independent convolutions (torch's meaning; C and O
    divisible by it; groups = C is a depthwise convolution).
    """
    if isinstance(padding, str):
        if padding != "valid":
            raise ValueError(f"conv2d: padding={padding!r} is not supported; give a number or 'valid'")
        padding = 0
    _refuse_mixed_dtypes("conv2d", input, {"weight": weight, "bias": bias})
    return _batched_2d("conv2d", input, lambda x: conv.Conv2d.apply(
        *((x, weight) if bias is None else (x, weight, bias)), stride=stride, padding=padding, dilation=dilation,
        groups=groups))


def max_pool2d(input: Tensor, kernel_size: Any, stride: Any = None, padding: Any = 0, dilation: Any = 1) -> Tensor:
    """Max over sliding windows (N, C, H, W) -> (N, C, Ho, Wo); also unbatched (C, H, W) -> (C, Ho, Wo)."""
    return _batched_2d("max_pool2d", input, lambda x: conv.MaxPool2d.apply(
        x, kernel_size=kernel_size, stride=stride, padding=padding, dilation=dilation))


def avg_pool2d(input: Tensor, kernel_size: Any, stride: Any = None, padding: Any = 0) -> Tensor:
    """Mean over sliding windows (zero padding counts toward the mean); (N, C, H, W) or (C, H, W)."""
    return _batched_2d("avg_pool2d", input, lambda x: conv.AvgPool2d.apply(
        x, kernel_size=kernel_size, stride=stride, padding=padding))


def _batched_2d(op: str, input: Tensor, run: Any) -> Tensor:
    """``run`` on a (N, C, H, W) input; an unbatched (C, H, W) one runs as N = 1, as torch accepts it."""
    if input.ndim == 3:
        return run(input.unsqueeze(0)).squeeze(0)                 # (C, H, W) -> (1, C, H, W) -> (C, Ho, Wo)
    if input.ndim != 4:
        raise RuntimeError(f"{op}: expected a 3-D (C, H, W) or 4-D (N, C, H, W) input, got shape {input.shape}")
    return run(input)


def scaled_dot_product_attention(query: Tensor, key: Tensor, value: Tensor, attn_mask: Tensor | None = None,
                                 dropout_p: float = 0.0, is_causal: bool = False,
                                 scale: float | None = None) -> Tensor:
    """softmax(q @ k^T * scale + mask) @ v with torch's mask semantics.

    Args:
        query: (..., L, E); key: (..., S, E); value: (..., S, Ev).
        attn_mask: boolean (True = may attend) or float (added to the scores), broadcastable
            to (..., L, S).
        is_causal: block attention to later positions (top-left aligned as in torch).
    Returns:
        (..., L, Ev)
    """
    if is_causal and attn_mask is not None:
        raise RuntimeError("scaled_dot_product_attention: give attn_mask or is_causal, not both")
    mask_dtype = getattr(attn_mask, "dtype", None)
    if attn_mask is not None and mask_dtype is not None and mask_dtype.kind not in "bf":
        # an integer 0/1 mask would be added to the scores as numbers, not read as a mask (torch refuses it)
        raise RuntimeError(f"scaled_dot_product_attention: attn_mask must be bool (True = may attend) or float "
                           f"(added to the scores), got dtype {mask_dtype}; use mask.bool() for a 0/1 mask")
    rng = random.generator() if dropout_p > 0 else None
    if isinstance(attn_mask, Tensor) and attn_mask.requires_grad and attn_mask.dtype.kind == "f":
        return attention.ScaledDotProductAttention.apply(query, key, value, attn_mask, is_causal=is_causal,
                                                         scale=scale, dropout_p=dropout_p, rng=rng)
    return attention.ScaledDotProductAttention.apply(
        query, key, value, mask=_raw(attn_mask, query, "attn_mask", "scaled_dot_product_attention"),
        is_causal=is_causal, scale=scale, dropout_p=dropout_p, rng=rng)


PAD_MODES = ("constant", "reflect", "replicate", "circular")


def _pad_positions(mode: str, size: int, left: int, right: int, dim: int) -> Any:
    """The source position of every output position of one padded dim: (left + size + right,) ints."""
    import numpy as np

    limit = size - 1 if mode == "reflect" else size if mode == "circular" else None
    if min(left, right) < 0 or (limit is not None and max(left, right) > limit) or size == 0:
        raise ValueError(f"pad: mode {mode!r} pads dim {dim} of size {size} by ({left}, {right}); it needs amounts "
                         f"from 0" + (f" to {limit}" if limit is not None else "") + " and a non-empty dim")
    at = np.arange(-left, size + right)                     # positions relative to the input
    if mode == "replicate":
        return np.clip(at, 0, size - 1)
    if mode == "circular":
        return at % size
    period = 2 * (size - 1) if size > 1 else 1              # reflect: ... 2 1 | 0 1 2 ... n-1 | n-2 ...
    at = np.abs(at) % period
    return np.where(at < size, at, period - at)


def pad(input: Tensor, pad: tuple[int, ...], mode: str = "constant", value: float | None = None) -> Tensor:
    """Padding with torch's signature: ``pad`` lists (left, right) pairs starting from the last dim.

    ``mode``: "constant" (``value``, default 0; a negative amount crops that side, as in torch),
    "reflect" (mirror without repeating the edge: amounts below the dim's size), "replicate" (repeat
    the edge) or "circular" (wrap around: amounts up to the dim's size). The last three pick source
    positions with one index array per dim, so the gradient flows back through indexing.
    """
    from groundup.creation import cat, full

    if mode not in PAD_MODES:
        raise ValueError(f"pad: mode {mode!r} is not one of {', '.join(PAD_MODES)}")
    if len(pad) % 2 or len(pad) // 2 > input.ndim:
        raise ValueError(f"pad: expected (left, right) pairs for at most {input.ndim} dims, got {tuple(pad)}")
    if mode != "constant" and value is not None:
        raise ValueError(f"pad: value is only for mode 'constant', got value={value} with mode {mode!r}")
    value = 0.0 if value is None else value
    out = input
    for i in range(len(pad) // 2):
        dim = out.ndim - 1 - i
        left, right = int(pad[2 * i]), int(pad[2 * i + 1])
        if mode != "constant":
            out = out[(slice(None),) * dim + (_pad_positions(mode, out.shape[dim], left, right, dim),)]
            continue
        if left < 0 or right < 0:                           # crop first: torch's negative padding
            size = out.shape[dim]
            start, stop = max(-left, 0), size - max(-right, 0)
            if stop < start:
                raise ValueError(f"pad: cropping {tuple(pad)} leaves a negative size in dim {dim} of {size}")
            out = out[(slice(None),) * dim + (slice(start, stop),)]
        parts = []
        if left > 0:
            shape = list(out.shape)
            shape[dim] = left
            parts.append(full(shape, value, dtype=out.dtype, device=out.device))
        parts.append(out)
        if right > 0:
            shape = list(out.shape)
            shape[dim] = right
            parts.append(full(shape, value, dtype=out.dtype, device=out.device))
        out = cat(parts, dim=dim) if len(parts) > 1 else out
    return out
