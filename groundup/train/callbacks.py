"""The Trainer's default callbacks: throughput, the metrics log, the progress bar and checkpoints.

A callback is any ``callback(trainer, event, info)``; the Trainer calls its callbacks in order for
each event (see ``groundup/train/trainer.py``):

    fit_start   {"iter", "max_iters", "resume"}
    step        {"iter", "lr", "loss", "grad_norm", "n_tokens", "step_s"} after each optimizer step
                (``Throughput`` adds "tokens_per_s")
    eval        {"iter", "lr", "train_loss", "val_loss"} (or what a custom ``evaluate`` returned)
    checkpoint  {"iter", "path"}
    fit_end     the summary dict

A callback that holds a resource (a terminal, a file) may define ``close()``: the Trainer calls it
when ``fit`` ends, normally or by an exception. The defaults, in the order the Trainer runs them,
before the user's callbacks:

    Throughput    tokens (or samples) per second over each logging window, and in total
    MetricsLog    metrics.jsonl records; at the end loss.png and summary.json (with ``out_dir``)
    ProgressBar   a rich bar on a terminal, the eval losses as lines (``config.progress``)
    Checkpointer  a checkpoint at each evaluation, every ``checkpoint_interval`` steps, and at the end
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from groundup.train.trainer import Trainer

__all__ = ["Throughput", "MetricsLog", "ProgressBar", "Checkpointer", "default_callbacks"]


class Throughput:
    """Tokens per second: over each ``log_interval`` window (into the step info) and over the whole run."""

    def __init__(self) -> None:
        self.train_s, self.tokens = 0.0, 0
        self._window_s, self._window_tokens, self.tokens_per_s = 0.0, 0, 0.0

    def __call__(self, trainer: Trainer, event: str, info: dict[str, Any]) -> None:
        if event == "fit_start":
            self.__init__()
        elif event == "step":
            self.train_s += info["step_s"]
            self.tokens += info["n_tokens"]
            self._window_s += info["step_s"]
            self._window_tokens += info["n_tokens"]
            if _log_step(trainer, info["iter"]):
                self.tokens_per_s = self._window_tokens / self._window_s if self._window_s > 0 else 0.0
                self._window_s, self._window_tokens = 0.0, 0
            info["tokens_per_s"] = self.tokens_per_s

    @property
    def overall_tokens_per_s(self) -> float:
        """Tokens (or samples) per second over the whole run: all counted tokens / all step time."""
        return self.tokens / self.train_s if self.train_s > 0 else 0.0


def _log_step(trainer: Trainer, iteration: int) -> bool:
    return iteration % trainer.config.log_interval == 0 or iteration == trainer.config.max_iters


class MetricsLog:
    """Training records every ``log_interval`` steps and every evaluation (``trainer.history`` and, with
    ``out_dir``, metrics.jsonl); at the end the loss plot and summary.json."""

    def __call__(self, trainer: Trainer, event: str, info: dict[str, Any]) -> None:
        if event == "step" and _log_step(trainer, info["iter"]):
            trainer.record({"kind": "train", "iter": info["iter"], "lr": info["lr"], "loss": info["loss"],
                            "grad_norm": info["grad_norm"], "tokens_per_s": info.get("tokens_per_s", 0.0),
                            "wall_s": trainer.wall_s()})
        elif event == "eval":
            trainer.record({"kind": "eval", **info, "wall_s": trainer.wall_s()})
        elif event == "fit_end" and trainer.out_dir is not None:
            from groundup.train.plots import plot_metrics
            from groundup.train.trainer import PLOT_FILE, SUMMARY_FILE, _write_json_atomic

            plot_metrics(trainer.read_metrics(), trainer.out_dir / PLOT_FILE, title=type(trainer.model).__name__)
            _write_json_atomic(trainer.out_dir / SUMMARY_FILE, info)


class ProgressBar:
    """A rich progress bar on a terminal when ``config.progress`` (else nothing); eval losses as lines."""

    def __init__(self) -> None:
        self._bar: Any = None
        self._task: Any = None

    def __call__(self, trainer: Trainer, event: str, info: dict[str, Any]) -> None:
        if not trainer.config.progress:
            return
        if event == "fit_start":
            self._bar = _rich_bar()
            if self._bar is not None:
                self._bar.start()
                self._task = self._bar.add_task("train", total=trainer.config.max_iters, completed=info["iter"],
                                                loss=float("nan"), tps=0.0)
        elif event == "step" and self._bar is not None:
            self._bar.update(self._task, completed=info["iter"], loss=info["loss"], tps=info.get("tokens_per_s", 0.0))
        elif event == "eval" and "train_loss" in info and "val_loss" in info:
            message = f"iter {info['iter']}: train loss {info['train_loss']:.4f}, val loss {info['val_loss']:.4f}"
            if self._bar is not None:
                self._bar.console.print(message)
            else:
                print(message, file=sys.stderr, flush=True)
        elif event == "fit_end":
            self.close()

    def close(self) -> None:
        """Stop the bar (the terminal gets its cursor and line back); the Trainer calls it when fit ends."""
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def _rich_bar() -> Any:
    from rich.console import Console

    console = Console(stderr=True)
    if not console.is_terminal or console.is_dumb_terminal:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[tps]:,.0f} tok/s"),
                    TimeRemainingColumn(), console=console, transient=False)


class Checkpointer:
    """With ``out_dir``: save at each evaluation after the first (or every ``checkpoint_interval`` steps)
    and at the end of the run."""

    def __call__(self, trainer: Trainer, event: str, info: dict[str, Any]) -> None:
        cfg = trainer.config
        if trainer.out_dir is None:
            return
        if event == "eval" and cfg.checkpoint_interval is None and trainer.iter > 0:
            trainer.save_checkpoint()
        elif event == "step" and cfg.checkpoint_interval is not None and info["iter"] % cfg.checkpoint_interval == 0:
            trainer.save_checkpoint()
        elif event == "fit_end" and trainer.last_save_iter != trainer.iter:
            trainer.save_checkpoint()


def default_callbacks() -> tuple[Throughput, list[Any]]:
    """(the throughput meter, the default callbacks in order)."""
    throughput = Throughput()
    return throughput, [throughput, MetricsLog(), ProgressBar(), Checkpointer()]
