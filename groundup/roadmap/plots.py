"""Figures more than one stage draws: tiles of small images, a confusion matrix, a smoothed curve.

Drawn with ``ctx.figure`` (Matplotlib's Agg canvas, no pyplot) and saved with ``ctx.savefig``.
"""

from __future__ import annotations

import math

import numpy as np

from groundup.roadmap.runner import Context, Plot

__all__ = ["image_grid", "plot_confusion", "smooth"]


def image_grid(ctx: Context, images: np.ndarray, titles: list[str], filename: str, caption: str, cols: int = 10,
               cmap: str | list[str] = "gray_r", scale: str = "fixed", tile_inches: float = 1.0) -> Plot:
    """Tile small images (n, h, w) into one picture, a title above each, and save it.

    Drawn as a single RGB image on one Axes: a figure of dozens of Axes takes seconds to lay out.

    Args:
        cmap: one colormap name, or one per image.
        scale: "fixed" (values in [0, 1]), "each" (each image from its min to its max), or
            "symmetric" (each image in [-m, m], m its largest magnitude; 0 is the colormap's middle).
    """
    from matplotlib import colormaps

    n, h, w = images.shape
    rows = math.ceil(n / cols)
    gap, title_space = max(1, w // 4), max(3, round(h * 0.45))            # in image pixels
    canvas = np.ones((rows * (h + title_space), cols * (w + gap), 3))      # white RGB
    cmaps = [cmap] * n if isinstance(cmap, str) else list(cmap)
    for i, image in enumerate(images.astype(np.float64)):
        if scale == "fixed":
            low, high = 0.0, 1.0
        elif scale == "each":
            low, high = float(image.min()), float(image.max())
        elif scale == "symmetric":
            high = float(np.abs(image).max())
            low = -high
        else:
            raise ValueError(f"image_grid: scale must be 'fixed', 'each' or 'symmetric', got {scale!r}")
        if high > low:
            unit = np.clip((image - low) / (high - low), 0.0, 1.0)
        else:  # a constant image: the colormap's bottom (a dead feature map), or its middle (an all-zero filter)
            unit = np.full_like(image, 0.5 if scale == "symmetric" else 0.0)
        top, left = (i // cols) * (h + title_space) + title_space, (i % cols) * (w + gap) + gap // 2
        canvas[top:top + h, left:left + w] = colormaps[cmaps[i]](unit)[..., :3]
    width = tile_inches * cols
    fig = ctx.figure(width, width * canvas.shape[0] / canvas.shape[1], layout=None)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(canvas, interpolation="nearest")
    ax.axis("off")
    for i, title in enumerate(titles):
        x = (i % cols) * (w + gap) + gap // 2 + w / 2 - 0.5
        y = (i // cols) * (h + title_space) + title_space - 0.8
        ax.text(x, y, title, ha="center", va="bottom", fontsize=7)
    return ctx.savefig(fig, filename, caption)


def plot_confusion(ctx: Context, cm: np.ndarray, filename: str, caption: str, title: str = "",
                   labels: list[str] | None = None, what: str = "digit", counted: str = "test digits") -> Plot:
    """A confusion matrix (rows: true class, columns: predicted) with its counts, saved as ``filename``.

    ``labels`` names the classes (default 0..K-1); ``what`` is the axes' noun ("digit", "speaker"); ``counted``
    names what a cell counts, for the colour bar ("test digits", "test speeches").
    """
    k = cm.shape[0]
    fig = ctx.figure(5.4, 4.8) if labels is None else ctx.figure(6.0, 5.2)
    ax = fig.subplots()
    shown = ax.imshow(cm, cmap="Blues")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            if cm[i, j]:
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set(xlabel=f"predicted {what}", ylabel=f"true {what}", xticks=range(k), yticks=range(k), title=title)
    if labels is not None:
        ax.set_xticklabels(labels, rotation=60, fontsize=7)
        ax.set_yticklabels(labels, fontsize=7)
    fig.colorbar(shown, ax=ax, label=counted)
    return ctx.savefig(fig, filename, caption)


def smooth(values: list[float], window: int) -> np.ndarray:
    """A moving average over ``window`` values (shorter output: the "valid" part)."""
    v = np.asarray(values, dtype=np.float64)
    window = max(1, min(window, len(v)))
    return np.convolve(v, np.ones(window) / window, mode="valid")
