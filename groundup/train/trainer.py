"""``Trainer``: a model-agnostic training loop (minGPT's generic trainer, nanoGPT's recipe).

    trainer = Trainer(model, TrainConfig(max_iters=2000, out_dir="runs/gpt"), get_batch)
    summary = trainer.fit()              # or fit(resume=True) to continue from out_dir's checkpoint

Each iteration: set the learning rate from the schedule, draw a batch with
``get_batch("train", rng)``, compute ``loss_fn(model, batch)`` (default ``model.loss(*batch)``),
backpropagate, clip the global gradient norm, take an optimizer step. Every ``eval_interval``
steps (and at the start and the end) it evaluates the mean loss over ``eval_iters`` fixed batches
of each split. Evaluation draws from its own generators and restores groundup's global generator
afterwards, so it never changes the training run: the same seed gives the same weights with or
without evaluation, and a run resumed from a checkpoint continues bit for bit.

With ``out_dir`` set it writes there:
    metrics.jsonl   one JSON object per line:
                    {"kind": "train", "iter", "lr", "loss", "grad_norm", "tokens_per_s", "wall_s"}
                    every ``log_interval`` steps, and
                    {"kind": "eval", "iter", "lr", "train_loss", "val_loss", "wall_s"} at each evaluation;
                    ``iter`` counts the optimizer steps done.
    loss.png        loss and learning-rate curves (at the end);
    summary.json    final train/val loss, best val loss, iters, wall_s, tokens_per_s, ...;
    the checkpoint  model.safetensors, config.json, optimizer.safetensors, state.json (see checkpoint.py).

``fit`` is the whole loop, in one screen: evaluate when due, then set the learning rate, draw a
batch, compute the loss, backpropagate, clip, step, and tell the callbacks. Everything else is a
callback ``callback(trainer, event, info)`` called at events ``"fit_start"``, ``"step"`` (after each
optimizer step), ``"eval"``, ``"checkpoint"`` and ``"fit_end"``. The defaults
(``groundup/train/callbacks.py``) are the throughput meter, the metrics log (metrics.jsonl,
loss.png, summary.json), the progress bar and the checkpointer; your callbacks run after them. A
callback may call ``trainer.stop()`` to end the run after the current step (it then evaluates and
checkpoints); one with a ``close()`` method has it called when ``fit`` ends, even by an exception.

Beyond the config: ``optimizer=`` takes an optimizer of your own (param groups; a group's
``lr_scale`` scales the schedule), ``evaluate=`` a function ``(trainer) -> dict`` that replaces the
mean train/val loss at each evaluation (accuracy on a test set, say), run in eval mode with the
RNG restored (``groundup.train.evaluation.evaluating``).

Reference: https://github.com/karpathy/nanoGPT/blob/master/train.py,
https://github.com/karpathy/minGPT/blob/master/mingpt/trainer.py
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

import groundup as gu
from groundup.backend import normalize_device
from groundup.nn.module import Module
from groundup.nn.utils import clip_grad_norm_
from groundup.optim import SGD, Adam, AdamW, Optimizer
from groundup.optim.schedule import scheduled_lr
from groundup.random import get_rng_state, set_rng_state
from groundup.tensor import Tensor
from groundup.train.callbacks import default_callbacks as _default_callbacks
from groundup.train.checkpoint import STATE_FILE, _model_config, load_checkpoint, save_checkpoint
from groundup.train.config import TrainConfig
from groundup.train.data_parallel import DataParallel
from groundup.train.evaluation import evaluating, mean_loss
from groundup.train.files import append_line, write_atomic

__all__ = ["Trainer", "build_optimizer"]

Callback = Callable[["Trainer", str, dict[str, Any]], Any]
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
PLOT_FILE = "loss.png"


def build_optimizer(model: Module, config: TrainConfig) -> Optimizer:
    """The optimizer named by ``config``, with weight decay only on parameters with ndim >= 2.

    Two groups, as nanoGPT: matrices and embeddings decay (``config.weight_decay``); biases and
    norm gains do not. For ``"sgd"`` the momentum is ``config.betas[0]``.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"{type(model).__name__} has no parameters that require grad: nothing to train")
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": config.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    if config.optimizer == "adamw":
        return AdamW(groups, lr=config.lr, betas=config.betas)
    if config.optimizer == "adam":
        return Adam(groups, lr=config.lr, betas=config.betas)
    return SGD(groups, lr=config.lr, momentum=config.betas[0])


class Trainer:
    """Train any Module that has a ``loss(*batch)`` method (or with a ``loss_fn``).

    Args:
        model: the model; moved to ``config.device``.
        config: the loop's settings.
        get_batch: ``get_batch(split, rng) -> tuple`` of Tensors or NumPy arrays for split ``"train"``
            or ``"val"``, drawing its randomness from the NumPy Generator ``rng`` only.
        loss_fn: ``loss_fn(model, batch) -> scalar Tensor``; default ``model.loss(*batch)``.
        callbacks: functions ``callback(trainer, event, info)`` (events in ``groundup/train/callbacks.py``);
            one function alone is taken as a list of one.
        model_config: the model's config (dataclass or dict), saved as config.json; by default the
            model's ``cfg`` / ``config`` dataclass attribute if it has one.
        tokens_per_batch: for tokens/s; by default the size of the first batch element if it holds
            integers (token ids, e.g. ``(B, T)`` -> B*T), else its first dimension (samples/s).
        optimizer: an optimizer of your own (any param groups); default ``build_optimizer(model, config)``.
            The schedule sets each group's lr to ``schedule(iter) * group.get("lr_scale", 1.0)``.
        evaluate: ``evaluate(trainer) -> dict[str, float]`` run at each evaluation instead of the mean
            train/val loss (it runs under ``evaluating``: eval mode, no graph, RNG restored); its dict is
            the "eval" record. Give it "val_loss" to have ``best_val_loss`` tracked.
        default_callbacks: False leaves out throughput, metrics log, progress bar and checkpoints.
        data_parallel: split each step's forward and backward by rows over worker processes
            (``groundup.train.DataParallel``; on the CPU inside ``cpu_threads``, which ``fit`` enters):
            True when the loss is a mean over rows, or ``count(*batch_block) -> number`` of the items it
            averages over (e.g. targets that are not padding). Needs ``model.loss`` (not ``loss_fn``).
    """

    def __init__(self, model: Module, config: TrainConfig, get_batch: Callable[[str, np.random.Generator], Any],
                 loss_fn: Callable[[Module, tuple], Tensor] | None = None,
                 callbacks: Iterable[Callback] | Callback = (),
                 model_config: Any = None, tokens_per_batch: int | None = None, optimizer: Optimizer | None = None,
                 evaluate: Callable[[Trainer], dict[str, float]] | None = None, default_callbacks: bool = True,
                 data_parallel: bool | Callable[..., Any] = False):
        if not isinstance(config, TrainConfig):
            raise TypeError(f"Trainer: config must be a TrainConfig, got {type(config).__name__}")
        if not isinstance(model, Module):
            raise TypeError(f"Trainer: model must be a groundup Module, got {type(model).__name__}")
        if loss_fn is None and not callable(getattr(model, "loss", None)):
            raise TypeError(f"Trainer: {type(model).__name__} has no loss(*batch) method; give "
                            f"loss_fn=lambda model, batch: ... returning the scalar loss")
        for name, value in (("get_batch", get_batch), ("loss_fn", loss_fn), ("evaluate", evaluate)):
            if (value is not None or name == "get_batch") and not callable(value):
                raise TypeError(f"Trainer: {name} must be a function, got {type(value).__name__}")
        callbacks = [callbacks] if callable(callbacks) else list(callbacks)   # one callback, or several
        for callback in callbacks:
            if not callable(callback):
                raise TypeError(f"Trainer: each callback must be a function callback(trainer, event, info), got "
                                f"{type(callback).__name__}")
        self.config = config
        self.model = model.to(config.device)
        if data_parallel and loss_fn is not None:
            raise ValueError("Trainer: data_parallel splits model.loss(*batch); it cannot split a loss_fn")
        self.split = (DataParallel(self.model, count=None if data_parallel is True else data_parallel)
                      if data_parallel else None)
        self.get_batch = get_batch
        self.loss_fn = loss_fn
        self.evaluate_fn = evaluate
        self.throughput, defaults = _default_callbacks() if default_callbacks else (None, [])
        self.callbacks: list[Callback] = [*defaults, *callbacks]
        self.model_config = model_config if model_config is not None else _model_config(model)
        self.tokens_per_batch = tokens_per_batch
        self.optimizer = optimizer if optimizer is not None else build_optimizer(self.model, config)
        self.out_dir = Path(config.out_dir) if config.out_dir is not None else None
        self.iter = 0                               # optimizer steps done
        self.rng = np.random.default_rng(config.seed)
        self.best_val_loss: float | None = None
        self.last_losses: dict[str, float] | None = None
        self.last_eval: dict[str, float] = {}       # the latest evaluation's record
        self.history: list[dict[str, Any]] = []     # the metrics records of this run
        self.last_save_iter: int | None = None
        self._last_eval_iter: int | None = None
        self._wall_before = 0.0                     # wall seconds spent by earlier (resumed-from) runs
        self._fit_start: float | None = None        # perf_counter() at the start of the current fit()
        self._stop_requested = False

    # ------------------------------------------------------------------ the loop
    def fit(self, resume: bool = False) -> dict[str, Any]:
        """Train until ``config.max_iters`` steps (or ``stop()``); returns the summary.

        Args:
            resume: continue from the checkpoint in ``config.out_dir`` (weights, optimizer state,
                step, batch generator, groundup's global generator), exactly where it stopped.

        Returns:
            the summary dict (also written to summary.json): ``train_loss``, ``val_loss``,
            ``best_val_loss``, ``iters``, ``wall_s``, ``train_s``, ``tokens_per_s``, ``lr``, ``stopped_early``.
        """
        cfg = self.config
        with self._scope():
            self._resume() if resume else self._start_fresh()
            self.model.train()
            params = [p for group in self.optimizer.param_groups for p in group["params"]]
            self._emit("fit_start", {"iter": self.iter, "max_iters": cfg.max_iters, "resume": resume})
            try:
                while True:
                    done = self.iter >= cfg.max_iters or self._stop_requested
                    if (done or self.iter % cfg.eval_interval == 0) and self._last_eval_iter != self.iter:
                        self._emit("eval", self._evaluation())
                    if done:
                        break
                    started = time.perf_counter()
                    lr = self._set_lr(self.iter)
                    batch = self._batch("train", self.rng)
                    loss_value = self._forward_backward(batch, lr)
                    grad_norm = clip_grad_norm_(params, cfg.grad_clip) if cfg.grad_clip > 0 else None
                    self.optimizer.step()
                    self.iter += 1
                    self._emit("step", {"iter": self.iter, "lr": lr, "loss": loss_value, "grad_norm": grad_norm,
                                        "n_tokens": self._count_tokens(batch), "step_s": time.perf_counter() - started})
                summary = self._summary()
                self._emit("fit_end", summary)
            finally:
                for callback in self.callbacks:
                    getattr(callback, "close", lambda: None)()
        return summary

    # ------------------------------------------------------------------ public API
    def stop(self) -> None:
        """End the run after the current step (then evaluate, checkpoint and summarise as at the end)."""
        self._stop_requested = True

    def lr_at(self, it: int) -> float:
        """The learning rate of iteration ``it`` (0-based) under the config's schedule."""
        cfg = self.config
        return scheduled_lr(cfg.schedule, it, cfg.lr, cfg.min_lr, cfg.warmup_iters, cfg.decay_iters)

    def evaluate(self) -> dict[str, float]:
        """Mean loss over ``eval_iters`` fixed batches of each split: ``{'train': x, 'val': y}``.

        The batches come from generators seeded by ``config.seed`` afresh at each call, so every
        evaluation (in this run or another with the same seed) sees the same batches. The model is
        put in eval mode, and its mode and groundup's global generator are restored afterwards.
        """
        losses = {}
        for index, split in enumerate(("train", "val")):
            rng = np.random.default_rng([self.config.seed, index + 1])
            batches = [self._batch(split, rng) for _ in range(self.config.eval_iters)]
            losses[split] = mean_loss(self.model, batches, lambda model, batch: self._loss(batch))
        return losses

    def save_checkpoint(self) -> Path:
        """Save the model, optimizer and loop state to ``config.out_dir`` (atomically)."""
        if self.out_dir is None:
            raise ValueError("Trainer.save_checkpoint: config.out_dir is None")
        path = save_checkpoint(self.out_dir, self.model, config=self.model_config, optimizer=self.optimizer,
                               state=self._state())
        self.last_save_iter = self.iter
        self._emit("checkpoint", {"iter": self.iter, "path": str(path)})
        return path

    def wall_s(self) -> float:
        """Wall seconds of the run so far, including earlier runs it resumed from."""
        start = self._fit_start if self._fit_start is not None else time.perf_counter()
        return self._wall_before + time.perf_counter() - start

    def record(self, record: dict[str, Any]) -> None:
        """Keep a metrics record in ``history`` and append it to metrics.jsonl (with ``out_dir``)."""
        self.history.append(record)
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            append_line(self.out_dir / METRICS_FILE, json.dumps(record))  # never through a symlink

    def read_metrics(self) -> list[dict[str, Any]]:
        """The run's metrics records: metrics.jsonl with ``out_dir`` (resumed runs included), else ``history``."""
        path = self.out_dir / METRICS_FILE if self.out_dir is not None else None
        if path is None or not path.exists():
            return list(self.history)
        return _parse_metrics(path.read_text(errors="replace"))

    # ------------------------------------------------------------------ the loop's parts
    @contextmanager
    def _scope(self) -> Iterator[None]:
        """The process-wide settings a run holds while it trains: ``groundup.parallel.cpu_threads()`` (threads
        for the fused ops, BLAS limits, allocator tuning), restored when ``fit`` returns; nested, a no-op.

        A model whose ops split the batch (``splits_work``, the fused GPT and BERT) or a data-parallel run
        has BLAS on one thread from the start (``split_work``), not from its first split: every step, the
        first after a resume included, then runs its GEMMs on the same number of BLAS threads.
        """
        from groundup.parallel import cpu_threads, split_work

        with cpu_threads():
            if self.split is not None or getattr(self.model, "splits_work", False):
                split_work()
            yield

    def _set_lr(self, it: int) -> float:
        lr = self.lr_at(it)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        return lr

    def _forward_backward(self, batch: tuple[Tensor, ...], lr: float) -> float:
        """The batch's loss (checked finite) with its gradients in the parameters' fresh ``.grad``."""
        if self.split is not None:
            self.optimizer.zero_grad(set_to_none=True)
            return self._finite(self.split(*batch), lr)   # NOTE: a non-finite loss stops before the update
        loss = self._loss(batch)
        value = self._finite(loss, lr)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        return value

    def _finite(self, loss: Tensor | float, lr: float) -> float:
        value = float(loss.item()) if isinstance(loss, Tensor) else float(loss)
        if not math.isfinite(value):
            raise FloatingPointError(f"Trainer: the loss is {value} at iteration {self.iter} "
                                     f"(lr {lr:.3g}); lower the learning rate or check the data")
        return value

    def _evaluation(self) -> dict[str, Any]:
        """Evaluate (the default mean losses or ``evaluate``); returns the "eval" event's info."""
        if self.evaluate_fn is not None:
            with evaluating(self.model):
                returned = self.evaluate_fn(self)
            if not isinstance(returned, Mapping):
                raise TypeError(f"Trainer: evaluate must return a dict of name -> number (give 'val_loss' to "
                                f"track the best), got {type(returned).__name__} {returned!r:.60}")
            try:
                result = {str(k): float(v) for k, v in returned.items()}
            except (TypeError, ValueError):
                raise TypeError(f"Trainer: evaluate returned {returned!r:.100}; every value must be a number") from None
        else:
            losses = self.evaluate()
            self.last_losses = losses
            result = {"train_loss": losses["train"], "val_loss": losses["val"]}
        self._last_eval_iter = self.iter
        self.last_eval = result
        if "val_loss" in result and (self.best_val_loss is None or result["val_loss"] < self.best_val_loss):
            self.best_val_loss = result["val_loss"]
        return {"iter": self.iter, "lr": self.lr_at(self.iter), **result}

    def _batch(self, split: str, rng: np.random.Generator) -> tuple[Tensor, ...]:
        batch = self.get_batch(split, rng)
        if not isinstance(batch, tuple | list):
            batch = (batch,)
        device = self.config.device
        out = []
        for index, item in enumerate(batch):
            if isinstance(item, Tensor):
                out.append(item if item.device == normalize_device(device) else item.to(device))
                continue
            array = np.asarray(item) if not isinstance(item, Mapping | str | bytes) else None
            if array is None or array.dtype.kind not in "biuf":
                kind = type(item).__name__ if array is None else f"{type(item).__name__} of dtype {array.dtype}"
                raise TypeError(f"Trainer: get_batch({split!r}, rng) must return a tuple of Tensors or numeric "
                                f"arrays (passed to the loss as model.loss(*batch)); item {index} is {kind}")
            out.append(Tensor(array, device=device))
        return tuple(out)

    def _loss(self, batch: tuple[Tensor, ...]) -> Tensor:
        loss = self.loss_fn(self.model, batch) if self.loss_fn is not None else self.model.loss(*batch)
        if not isinstance(loss, Tensor) or loss.data.size != 1:
            raise TypeError(f"Trainer: the loss must be a one-element Tensor, got "
                            f"{type(loss).__name__} {getattr(loss, 'shape', '')}")
        return loss

    def _count_tokens(self, batch: tuple[Tensor, ...]) -> int:
        if self.tokens_per_batch is not None:
            return self.tokens_per_batch
        first = batch[0]
        if first.ndim == 0:
            return 1
        return int(first.data.size) if first.dtype.kind in "iu" else int(first.shape[0])

    def _emit(self, event: str, info: dict[str, Any]) -> None:
        for callback in self.callbacks:
            callback(self, event, info)

    def _summary(self) -> dict[str, Any]:
        losses = self.last_losses or {}
        train_s = self.throughput.train_s if self.throughput is not None else 0.0
        return {
            "train_loss": losses.get("train", self.last_eval.get("train_loss")),
            "val_loss": losses.get("val", self.last_eval.get("val_loss")),
            "best_val_loss": self.best_val_loss,
            "iters": self.iter,
            "wall_s": self.wall_s(),
            "train_s": train_s,
            "tokens_per_s": self.throughput.overall_tokens_per_s if self.throughput is not None else 0.0,
            "lr": self.optimizer.param_groups[0]["lr"],
            "n_params": int(sum(p.numel() for p in self.model.parameters())),
            "stopped_early": self.iter < self.config.max_iters,
            "config": self.config.to_dict(),
            "last_eval": dict(self.last_eval),
        }

    # ------------------------------------------------------------------ start, resume, state
    def _start_fresh(self) -> None:
        cfg = self.config
        gu.manual_seed(cfg.seed)
        self.rng = np.random.default_rng(cfg.seed)
        self.iter = 0
        self.optimizer.state.clear()
        self.best_val_loss, self.last_losses, self.last_eval = None, None, {}
        self._last_eval_iter = self.last_save_iter = None
        self._stop_requested = False
        self._fit_start = time.perf_counter()
        self._wall_before = 0.0
        self.history = []
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            write_atomic(self.out_dir, METRICS_FILE, "")

    def _state(self) -> dict[str, Any]:
        cfg = self.config
        return {
            "step": self.iter,
            "rng": self.rng.bit_generator.state,
            "global_rng": get_rng_state(),
            "best_val_loss": self.best_val_loss,
            "last_losses": self.last_losses,
            "last_eval_iter": self._last_eval_iter,
            "wall_s": self.wall_s() if self._fit_start is not None else self._wall_before,
            "schedule": {"name": cfg.schedule, "lr": cfg.lr, "min_lr": cfg.min_lr, "warmup_iters": cfg.warmup_iters,
                         "decay_iters": cfg.decay_iters, "current_lr": self.optimizer.param_groups[0]["lr"]},
            "train_config": cfg.to_dict(),
        }

    def _resume(self) -> None:
        if self.out_dir is None:
            raise ValueError("Trainer.fit(resume=True) needs config.out_dir (where the checkpoint is)")
        if not (self.out_dir / STATE_FILE).exists():
            raise FileNotFoundError(f"Trainer.fit(resume=True): no checkpoint in {self.out_dir} "
                                    f"({STATE_FILE} not found)")
        _, _, state = load_checkpoint(self.out_dir, self.model, optimizer=self.optimizer, config=self.model_config)
        missing = [k for k in ("step", "rng", "global_rng") if k not in state]
        if missing:
            raise ValueError(f"{self.out_dir / STATE_FILE}: not a Trainer checkpoint (missing {missing})")
        if type(state["step"]) is not int or state["step"] < 0:
            raise ValueError(f"{self.out_dir / STATE_FILE}: step is {state['step']!r}, not a count >= 0")
        changed = _changed_settings(state.get("train_config"), self.config.to_dict())
        if changed:
            warnings.warn(f"Trainer.fit(resume=True): the run in {self.out_dir} was saved with other settings "
                          f"({'; '.join(changed)}), so the resumed run differs from one never stopped",
                          ResumeWarning, stacklevel=3)
        self.iter = state["step"]
        self.rng = np.random.default_rng()
        self.rng.bit_generator.state = state["rng"]
        set_rng_state(state["global_rng"])
        self.best_val_loss = state.get("best_val_loss")
        self.last_losses = state.get("last_losses")
        self._last_eval_iter = state.get("last_eval_iter")
        self.last_save_iter = self.iter
        self._wall_before = float(state.get("wall_s", 0.0))
        self._stop_requested = False
        self._fit_start = time.perf_counter()
        # keep the metrics up to the checkpoint; later lines belong to a run that did not survive
        kept = [r for r in self.read_metrics() if r.get("iter", 0) <= self.iter]
        self.history = kept
        self.out_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(self.out_dir, METRICS_FILE, "".join(json.dumps(r) + "\n" for r in kept))


class ResumeWarning(UserWarning):
    """A run is resumed with settings other than those it was saved with."""


# settings that may change on resume without changing the steps taken (when and how much to
# evaluate, log and checkpoint, where, and how far to go)
FREE_ON_RESUME = ("out_dir", "progress", "eval_interval", "eval_iters", "log_interval", "checkpoint_interval",
                  "max_iters")


def _changed_settings(saved: Any, now: dict[str, Any]) -> list[str]:
    """'name: old -> new' for each TrainConfig setting that differs from the saved one (lists and
    tuples compared as lists; the horizon of a schedule that decays to max_iters counts too)."""
    if not isinstance(saved, dict):
        return []
    out = []
    for key in sorted(set(saved) | set(now)):
        old, new = saved.get(key), now.get(key)
        if isinstance(old, list | tuple) and isinstance(new, list | tuple):
            old, new = list(old), list(new)
        if key not in FREE_ON_RESUME and old != new:
            out.append(f"{key}: {old!r} -> {new!r}")
    horizon = [c.get("max_iters") if c.get("lr_decay_iters") is None else c.get("lr_decay_iters") for c in (saved, now)]
    if horizon[0] != horizon[1]:
        out.append(f"the schedule's horizon: {horizon[0]!r} -> {horizon[1]!r} (set lr_decay_iters to extend a run "
                   f"exactly)")
    return out


def _write_json_atomic(path: Path, value: Mapping[str, Any]) -> None:
    write_atomic(path.parent, path.name, json.dumps(value, indent=1) + "\n")


def _parse_metrics(text: str) -> list[dict[str, Any]]:
    """The records of metrics.jsonl; a damaged line (a crash mid-write) is skipped, not fatal."""
    records = []
    for line in text.splitlines():
        try:
            record = json.loads(line) if line.strip() else None
        except (ValueError, RecursionError):
            continue
        if isinstance(record, dict) and isinstance(record.get("iter", 0), int):
            records.append(record)
    return records
