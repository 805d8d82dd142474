"""Plots of a training run from its metrics records (the lines of metrics.jsonl).

Uses Matplotlib's object-oriented API with the Agg canvas only (no pyplot, no global backend
switch), so it works headless, in CI and inside a notebook without side effects.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["plot_metrics"]


def plot_metrics(records: Iterable[Mapping[str, Any]], path: str | os.PathLike, title: str | None = None) -> Path:
    """Draw loss against iteration (training batches, eval train/val) and the learning rate; save as PNG.

    Args:
        records: dicts with ``kind`` ``"train"`` (``iter``, ``loss``, ``lr``) or ``"eval"``
            (``iter``, ``train_loss``, ``val_loss``), as the Trainer writes them.
        path: the PNG file to write.
        title: optional figure title.

    Returns:
        the path written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    records = list(records)
    train = [r for r in records if r.get("kind") == "train"]
    evals = [r for r in records if r.get("kind") == "eval"]
    fig = Figure(figsize=(8, 6))
    FigureCanvasAgg(fig)
    # fixed margins instead of tight_layout, which draws the figure twice
    fig.subplots_adjust(left=0.12, right=0.97, top=0.94, bottom=0.08, hspace=0.08)  # room for "learning rate"
    ax_loss, ax_lr = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    if train:
        ax_loss.plot([r["iter"] for r in train], [r["loss"] for r in train], color="tab:blue", alpha=0.35,
                     linewidth=1, label="train (batch)")
        ax_lr.plot([r["iter"] for r in train], [r["lr"] for r in train], color="tab:green")
    for key, color in (("train_loss", "tab:blue"), ("val_loss", "tab:orange")):
        points = [(r["iter"], r[key]) for r in evals if r.get(key) is not None]
        if points:
            xs, ys = zip(*points)
            ax_loss.plot(xs, ys, "o-", color=color, markersize=3, label=f"{key.split('_')[0]} (eval)")
    ax_loss.set_ylabel("loss")
    if train or evals:
        ax_loss.legend(loc="best")  # wherever it covers the fewest points
    ax_loss.grid(alpha=0.3)
    ax_lr.set_ylabel("learning rate")
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))  # 1e-4, not 0.000100: short tick labels
    ax_lr.set_xlabel("iteration")
    ax_lr.grid(alpha=0.3)
    if title:
        ax_loss.set_title(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    import io

    from groundup.train.files import write_atomic

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    write_atomic(path.parent, path.name, buffer.getvalue())  # atomic, never through a symlink
    return path
