"""2-D convolution (im2col with the batch last + one GEMM, batched over channel groups) and max / average pooling.

Convolution: the columns are built with the batch as the last axis, one strided slice copy per
kernel offset, and the backward scatters each offset's gradient back the same way (col2im); see
``Conv2d``; its output is an (N, C, H, W) view of memory laid out as (C, H, W, N), which the
ReLU and max-pooling that follow keep. Pooling: windows are strided views of the padded input,
laid out as (N, C, kh, kw, Ho, Wo), with a faster path for windows that tile the input.
Reference: cs231n's im2col notes; Chellapilla et al. 2006.
"""

from __future__ import annotations

from typing import Any

from groundup.backend import array_module
from groundup.function import Function


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _out_size(size: int, k: int, s: int, p: int, d: int, op: str) -> int:
    for name, value, low in (("kernel_size", k, 1), ("stride", s, 1), ("padding", p, 0), ("dilation", d, 1)):
        if value < low:
            raise RuntimeError(f"{op}: {name} must be {'positive' if low else 'non-negative'}, got {value}")
    out = (size + 2 * p - d * (k - 1) - 1) // s + 1
    if out <= 0:
        raise RuntimeError(f"{op}: input size {size} (padding {p}) is too small for kernel {k} "
                           f"with dilation {d}")
    return out


def _windows(xp_padded: Any, kh: int, kw: int, ho: int, wo: int, stride, dilation) -> Any:
    """Strided view (N, C, kh, kw, Ho, Wo) of every window of the padded input."""
    xp = array_module(xp_padded)
    n, c = xp_padded.shape[:2]
    sn, sc, sh, sw = xp_padded.strides
    return xp.lib.stride_tricks.as_strided(
        xp_padded, shape=(n, c, kh, kw, ho, wo),
        strides=(sn, sc, sh * dilation[0], sw * dilation[1], sh * stride[0], sw * stride[1]))


def _pad(x: Any, padding: tuple[int, int], value: float = 0.0) -> Any:
    xp = array_module(x)
    ph, pw = padding
    if ph == 0 and pw == 0:
        return xp.ascontiguousarray(x)
    n, c, h, w = x.shape
    out = xp.full((n, c, h + 2 * ph, w + 2 * pw), value, dtype=x.dtype)   # NOTE: faster than xp.pad here
    out[:, :, ph:ph + h, pw:pw + w] = x
    return out


def _scatter_windows(gwin: Any, padded_shape, padding, stride, dilation, ho: int, wo: int) -> Any:
    """Adjoint of ``_windows``: sum window gradients (N, C, kh, kw, Ho, Wo) into the input."""
    xp = array_module(gwin)
    n, c, kh, kw = gwin.shape[:4]
    grad = xp.zeros(padded_shape, dtype=gwin.dtype)
    for i in range(kh):
        for j in range(kw):
            hi, wj = i * dilation[0], j * dilation[1]
            grad[:, :, hi:hi + stride[0] * ho:stride[0], wj:wj + stride[1] * wo:stride[1]] += gwin[:, :, i, j]
    ph, pw = padding
    return grad[:, :, ph:padded_shape[2] - ph, pw:padded_shape[3] - pw]


class Conv2d(Function):
    """out = conv2d(x, weight) + bias; x (N, C, H, W), weight (O, C / groups, kh, kw) -> (N, O, Ho, Wo).

    im2col with the batch last: the input is copied once to (C, Hp, Wp, N) (padded), and each of the
    kh * kw kernel offsets copies one strided slice into the columns (g, kh, kw, C/g, Ho, Wo, N); the
    GEMM is (g, O/g, kh*kw*C/g) @ (g, kh*kw*C/g, Ho*Wo*N). NOTE: with the batch last every slice copy
    (and the backward's scatter-add) moves rows of Wo*N values; in (N, C, H, W) order they would be
    rows of Wo values, 4 on a 4x4 feature map, where NumPy's per-row overhead dominates (3x slower
    here). With ``groups`` = g the channels split into g independent convolutions (input channels
    [k C/g, (k+1) C/g) make output channels [k O/g, (k+1) O/g)), one batched GEMM.

    The output is an (N, O, Ho, Wo) view of the GEMM's (O, Ho, Wo, N) result, no copy: elementwise
    ops (ReLU) and max-pooling keep that memory layout, the next convolution's copy into its padded
    input is then contiguous, and the input gradient comes back in the input's layout. NOTE: an
    elementwise op between two arrays of different layouts is ~10x slower here (ReLU's backward).
    """

    def forward(self, x, weight, *bias, stride=1, padding=0, dilation=1, groups=1):
        if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
            raise ValueError(f"conv2d: groups must be a positive int, got {groups!r}")
        if (x.ndim != 4 or weight.ndim != 4 or x.shape[1] != weight.shape[1] * groups
                or weight.shape[0] % groups):
            raise RuntimeError(f"conv2d: input {tuple(x.shape)} and weight {tuple(weight.shape)} do not "
                               f"match with groups={groups} (expected (N, C, H, W) and (O, C / groups, kh, kw), "
                               f"O divisible by groups)")
        xp = array_module(x)
        stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
        n, c, h, w = x.shape
        o, cg, kh, kw = weight.shape
        g, og = groups, o // groups
        ho = _out_size(h, kh, stride[0], padding[0], dilation[0], "conv2d")
        wo = _out_size(w, kw, stride[1], padding[1], dilation[1], "conv2d")
        ph, pw = padding
        padded = xp.zeros((c, h + 2 * ph, w + 2 * pw, n), dtype=x.dtype)   # (C, Hp, Wp, N)
        padded[:, ph:ph + h, pw:pw + w] = x.transpose(1, 2, 3, 0)          # (N, C, H, W) -> (C, H, W, N)
        groups_in = padded.reshape(g, cg, *padded.shape[1:])                # (g, C/g, Hp, Wp, N)
        k = kh * kw * cg
        cols = xp.empty((g, k + len(bias), ho * wo * n), dtype=x.dtype)     # (g, K (+ 1), Ho*Wo*N)
        patch = cols[:, :k].reshape(g, kh, kw, cg, ho, wo, n)               # (g, kh, kw, C/g, Ho, Wo, N), a view
        for i, j in _offsets(kh, kw):
            patch[:, i, j] = groups_in[:, :, _rows(i, dilation[0], stride[0], ho), _rows(j, dilation[1], stride[1], wo)]
        w2 = weight.reshape(g, og, cg, kh, kw).transpose(0, 1, 3, 4, 2).reshape(g, og, k)   # (g, O/g, K)
        if bias:
            # NOTE: the bias is one more column of w2 against a row of ones in cols: the GEMM adds it and
            # the weight gradient's GEMM also gives its gradient (saves an add and a sum over Ho*Wo*N)
            cols[:, k] = 1
            w2 = xp.concatenate([w2, bias[0].reshape(g, og, 1)], axis=2)    # (g, O/g, K + 1)
        out = (w2 @ cols).reshape(o, ho * wo * n)                           # (O, Ho*Wo*N), groups stacked
        self.save_for_backward(cols, w2)
        self.meta = (x.shape, weight.shape, stride, padding, dilation, ho, wo, g)
        self.batch_last = _batch_last(x)
        return out.reshape(o, ho, wo, n).transpose(3, 0, 1, 2)             # (O, Ho, Wo, N) -> (N, O, Ho, Wo)

    def backward(self, gz):
        xp = array_module(gz)
        cols, w2 = self.saved
        (n, c, h, w), w_shape, stride, padding, dilation, ho, wo, g = self.meta
        o, cg, kh, kw = w_shape
        g2 = xp.ascontiguousarray(gz.transpose(1, 2, 3, 0)).reshape(g, o // g, ho * wo * n)   # (g, O/g, Ho*Wo*N)
        k = kh * kw * cg
        gx = gw = gb = None
        if self.needs_input_grad[0]:
            gcols = w2[:, :, :k].transpose(0, 2, 1) @ g2                   # (g, K, Ho*Wo*N), no bias column
            gcols = gcols.reshape(g, kh, kw, cg, ho, wo, n)                 # (g, kh, kw, C/g, Ho, Wo, N)
            ph, pw = padding
            grad = xp.zeros((g, cg, h + 2 * ph, w + 2 * pw, n), dtype=gz.dtype)   # (g, C/g, Hp, Wp, N)
            for i, j in _offsets(kh, kw):                                   # col2im: the adjoint of the copies
                grad[:, :, _rows(i, dilation[0], stride[0], ho), _rows(j, dilation[1], stride[1], wo)] += gcols[:, i, j]
            grad = grad.reshape(c, h + 2 * ph, w + 2 * pw, n)[:, ph:ph + h, pw:pw + w]   # (C, H, W, N)
            gx = grad.transpose(3, 0, 1, 2)                                 # (N, C, H, W), a view
            if not self.batch_last:                                         # x's layout: see _batch_last
                gx = xp.ascontiguousarray(gx)
        if any(self.needs_input_grad[1:]):
            # NOTE: cols @ g2^T, then transposed, is ~2x faster than g2 @ cols^T here (OpenBLAS, K = Ho*Wo*N)
            gwb = cols @ g2.transpose(0, 2, 1)                              # (g, K (+ 1), O/g): weight (and bias)
            gw = gwb[:, :k].reshape(g, kh, kw, cg, o // g)                  # (g, kh, kw, C/g, O/g)
            gw = xp.ascontiguousarray(gw.transpose(0, 4, 3, 1, 2)).reshape(w_shape)   # (O, C/g, kh, kw)
        if len(self.needs_input_grad) == 3:
            gb = gwb[:, k].reshape(o) if self.needs_input_grad[2] else None  # (g, O/g) -> (O,)
            return gx, gw, gb
        return gx, gw


def _offsets(kh: int, kw: int) -> list[tuple[int, int]]:
    return [(i, j) for i in range(kh) for j in range(kw)]


def _rows(k: int, dilation: int, stride: int, count: int) -> slice:
    """The input rows (or columns) that kernel offset ``k`` reads for the ``count`` outputs."""
    start = k * dilation
    return slice(start, start + stride * (count - 1) + 1, stride)


def _batch_last(x: Any) -> bool:
    """True when an (N, C, H, W) array lies in memory as (C, H, W, N): what ``Conv2d`` returns."""
    return x.shape[0] > 1 and x.transpose(1, 2, 3, 0).flags.c_contiguous


def _in_layout(x: Any, batch_last: bool) -> Any:
    """``x`` (N, C, H, W) stored as (C, H, W, N) if ``batch_last``, else as (N, C, H, W); copies only if needed."""
    xp = array_module(x)
    if batch_last:
        return xp.ascontiguousarray(x.transpose(1, 2, 3, 0)).transpose(3, 0, 1, 2)   # (C, H, W, N) -> (N, C, H, W)
    return xp.ascontiguousarray(x)


def _empty(xp: Any, shape: tuple[int, ...], dtype: Any, batch_last: bool) -> Any:
    """An uninitialised array of ``shape`` (N, ...), laid out with N last in memory if ``batch_last``."""
    if batch_last:
        empty = xp.empty((*shape[1:], shape[0]), dtype=dtype)                  # (..., N)
        return empty.transpose(-1, *range(len(shape) - 1))                      # (..., N) -> (N, ...)
    return xp.empty(shape, dtype=dtype)


class MaxPool2d(Function):
    """Max over each window; the gradient goes to the first maximum of the window.

    Windows that tile the input (stride = kernel, no padding or dilation: the usual 2x2 pooling)
    take a faster path: a running maximum over the kh*kw window offsets (each a strided slice of the
    input), and a backward that writes each offset's share with one multiply (no scatter-add). It
    keeps the input's memory layout: after a convolution that is (C, H, W, N) (see ``Conv2d``), so
    the output, the gradient and the ReLU between them all run over rows of N values.
    """

    def forward(self, x, kernel_size=2, stride=None, padding=0, dilation=1):
        xp = array_module(x)
        kh, kw = _pair(kernel_size)
        stride = _pair(stride if stride is not None else kernel_size)
        padding, dilation = _pair(padding), _pair(dilation)
        if padding[0] > kh // 2 or padding[1] > kw // 2:
            raise RuntimeError(f"max_pool2d: padding {padding} must be at most half the kernel {(kh, kw)}")
        n, c, h, w = x.shape
        ho = _out_size(h, kh, stride[0], padding[0], dilation[0], "max_pool2d")
        wo = _out_size(w, kw, stride[1], padding[1], dilation[1], "max_pool2d")
        self.tiled = stride == (kh, kw) and padding == (0, 0) and dilation == (1, 1)
        if self.tiled:
            self.batch_last = _batch_last(x)
            tiles = x[:, :, :ho * kh, :wo * kw].reshape(n, c, ho, kh, wo, kw)        # (N, C, Ho, kh, Wo, kw)
            out = tiles[:, :, :, 0, :, 0].copy(order="K")                            # (N, C, Ho, Wo), x's layout
            self.arg = xp.zeros_like(out, dtype=xp.int8 if kh * kw < 128 else xp.int32)   # offset of the max
            for k in range(1, kh * kw):
                value = tiles[:, :, :, k // kw, :, k % kw]                          # offset k of every window
                # NOTE: arg += (value > out) * (k - arg) is the masked copy arg[value > out] = k without
                # the mask (xp.copyto(..., where=) is ~10x slower here); strictly greater: ties keep the first
                self.arg += (value > out) * (k - self.arg)
                xp.maximum(out, value, out=out)                                      # (a NaN propagates, as torch)
            self.meta = (x.shape, (kh, kw), ho, wo)
            return out
        padded = _pad(x, padding, value=-xp.inf)
        win = _windows(padded, kh, kw, ho, wo, stride, dilation).reshape(n, c, kh * kw, ho, wo)
        self.arg = win.argmax(axis=2)                                        # (N, C, Ho, Wo)
        self.meta = (padded.shape, (kh, kw), stride, padding, dilation, ho, wo)
        return xp.take_along_axis(win, self.arg[:, :, None], axis=2)[:, :, 0]

    def backward(self, gz):
        xp = array_module(gz)
        if self.tiled:
            (n, c, h, w), (kh, kw), ho, wo = self.meta
            gz = _in_layout(gz, self.batch_last)                                   # the layout of arg
            tiles = _empty(xp, (n, c, ho, kh, wo, kw), gz.dtype, self.batch_last)     # (N, C, Ho, kh, Wo, kw)
            for k in range(kh * kw):
                xp.multiply(gz, self.arg == k, out=tiles[:, :, :, k // kw, :, k % kw])   # to each window's max
            if (ho * kh, wo * kw) == (h, w):
                return tiles.reshape(n, c, h, w)                                   # (N, C, H, W), no copy
            gx = _empty(xp, (n, c, h, w), gz.dtype, self.batch_last)
            gx[...] = 0                                                            # rows/columns no window covers
            gx[:, :, :ho * kh, :wo * kw] = tiles.reshape(n, c, ho * kh, wo * kw)
            return gx
        padded_shape, (kh, kw), stride, padding, dilation, ho, wo = self.meta
        n, c = gz.shape[:2]
        gwin = xp.zeros((n, c, kh * kw, ho, wo), dtype=gz.dtype)
        xp.put_along_axis(gwin, self.arg[:, :, None], gz[:, :, None], axis=2)
        gwin = gwin.reshape(n, c, kh, kw, ho, wo)
        return _scatter_windows(gwin, padded_shape, padding, stride, dilation, ho, wo)


class AvgPool2d(Function):
    """Mean over each window (zero padding counted, as torch's default count_include_pad)."""

    def forward(self, x, kernel_size=2, stride=None, padding=0):
        kh, kw = _pair(kernel_size)
        stride, padding = _pair(stride if stride is not None else kernel_size), _pair(padding)
        if padding[0] > kh // 2 or padding[1] > kw // 2:
            raise RuntimeError(f"avg_pool2d: padding {padding} must be at most half the kernel {(kh, kw)}")
        n, c, h, w = x.shape
        ho = _out_size(h, kh, stride[0], padding[0], 1, "avg_pool2d")
        wo = _out_size(w, kw, stride[1], padding[1], 1, "avg_pool2d")
        padded = _pad(x, padding)
        win = _windows(padded, kh, kw, ho, wo, stride, (1, 1))
        self.meta = (padded.shape, (kh, kw), stride, padding, ho, wo)
        return win.mean(axis=(2, 3)).astype(x.dtype, copy=False)

    def backward(self, gz):
        xp = array_module(gz)
        padded_shape, (kh, kw), stride, padding, ho, wo = self.meta
        n, c = gz.shape[:2]
        share = (gz / (kh * kw))[:, :, None, None]                           # (N, C, 1, 1, Ho, Wo)
        gwin = xp.broadcast_to(share, (n, c, kh, kw, ho, wo))
        return _scatter_windows(gwin, padded_shape, padding, stride, (1, 1), ho, wo)
