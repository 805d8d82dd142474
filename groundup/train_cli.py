"""``groundup train gpt``, step by step: check every flag, take the run directory, build or reload the
tokenizer, train with Ctrl-C saving a checkpoint, and end with a summary a person can read.

Resume is exact or refused: the settings that shape the result (every TrainConfig field but the ones
in ``FREE_ON_RESUME``, the model's config, the data and tokenizer of run.json, and the schedule's
horizon: ``max_iters`` only matters through ``lr_decay_iters=None``) are compared with the checkpoint's,
and a difference is an error listing each one, unless ``--allow-changes`` (which cannot change the
model or the tokenizer: the checkpoint's weights fit one model); either way a ``{"kind": "resume", ...}``
record with the changes goes to metrics.jsonl.

Ctrl-C: the first one asks the Trainer to stop after the current step, which then evaluates, saves a
checkpoint at that step and writes the summary; the command prints how to resume and exits 130. A
second Ctrl-C aborts at once (the last checkpoint on disk is intact: saves are atomic).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import signal
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from groundup.cli_options import UsageError, apply_overrides, collect
from groundup.commands import SAMPLE_CHARS, TRAIN_PRESETS, VAL_FRACTION, decode, for_terminal, load_tokenizer, start_id
from groundup.train.files import append_line, open_regular
from groundup.train.trainer import FREE_ON_RESUME, ResumeWarning

__all__ = ["run_training", "resume_differences", "FREE_ON_RESUME", "MAX_EVAL_ITERS"]

# FREE_ON_RESUME: TrainConfig fields that do not change the weights a run reaches (groundup.train.trainer)
MAX_EVAL_ITERS = 10_000        # batches per split per evaluation; more is a typo, and hours of work
_SHORT_FLAGS = {"max_iters": "--max-iters", "batch_size": "--batch-size", "lr": "--lr", "device": "--device",
                "seed": "--seed"}


# ----------------------------------------------------------------------------- inputs
def read_corpus(name_or_path: str) -> str:
    """A shipped corpus by name, or a UTF-8 text file; UsageError ("file not found: PATH" ...) otherwise."""
    from groundup.data import load_text

    try:
        from groundup.data.datasets import _SHIPPED_TEXTS as shipped
    except ImportError:
        shipped = {"shakespeare": None, "names": None}
    if name_or_path in shipped:
        return load_text(name_or_path)
    path = Path(name_or_path)
    if not path.exists():
        hint = f" (the shipped corpora are {', '.join(sorted(shipped))})" if os.sep not in name_or_path \
            and "." not in path.name else ""
        raise UsageError(f"--data: file not found: {name_or_path}{hint}")
    try:
        f, size = open_regular(path)
    except OSError as err:
        raise UsageError(f"--data {name_or_path}: {err.strerror or err}") from None
    with f:
        data = f.read()
    try:
        text = data.decode("utf-8-sig")   # a byte-order mark (Windows editors) is not a character of the text
    except UnicodeDecodeError as err:
        raise UsageError(f"--data {name_or_path}: not UTF-8 text (byte 0x{data[err.start]:02x} at offset "
                         f"{err.start}); convert it, e.g. iconv -f latin1 -t utf-8") from None
    if not text:
        raise UsageError(f"--data {name_or_path}: the file is empty")
    return text


def _check_conflicts(args: argparse.Namespace, train_overrides: dict[str, str]) -> None:
    both = [f"{flag} and --train.{name}" for name, flag in _SHORT_FLAGS.items()
            if getattr(args, name) is not None and name in train_overrides]
    if args.no_progress and "progress" in train_overrides:
        both.append("--no-progress and --train.progress")
    if both:
        raise UsageError(f"conflicting flags: {'; '.join(both)} set the same thing; give only one of each")
    if args.allow_changes and not args.resume:
        raise UsageError("--allow-changes only applies with --resume")
    if args.replace and args.resume:
        raise UsageError("--replace starts a new run and --resume continues one; give only one")


def build_configs(args: argparse.Namespace, vocab_size: int) -> tuple[Any, Any]:
    """(GPTConfig, TrainConfig) from the preset, the short flags and the dotted overrides; UsageError if bad."""
    from groundup.models.gpt import GPTConfig
    from groundup.train import TrainConfig

    train_overrides = collect(args, "train")
    _check_conflicts(args, train_overrides)
    try:
        model_cfg = GPTConfig.preset(args.preset, vocab_size=vocab_size)
        model_cfg = apply_overrides(model_cfg, collect(args, "model"), "model")
        if model_cfg.vocab_size < vocab_size:
            raise ValueError(f"--model.vocab_size={model_cfg.vocab_size} is smaller than the tokenizer's "
                             f"{vocab_size} tokens")
        short = {name: getattr(args, name) for name in _SHORT_FLAGS if getattr(args, name) is not None}
        train_cfg = TrainConfig(**{**TRAIN_PRESETS[args.preset], **short, "out_dir": str(args.out),
                                   "progress": not args.no_progress})
        train_cfg = apply_overrides(train_cfg, train_overrides, "train")
    except (ValueError, TypeError) as err:
        raise UsageError(str(err)) from None
    if train_cfg.eval_iters > MAX_EVAL_ITERS:
        raise UsageError(f"--train.eval_iters={train_cfg.eval_iters}: at most {MAX_EVAL_ITERS} batches per "
                         f"evaluation")
    return model_cfg, train_cfg


def _vocab_hint(args: argparse.Namespace) -> int:
    """A vocabulary size to check the flags with before the tokenizer exists (the largest that fits)."""
    override = collect(args, "model").get("vocab_size")
    try:
        return max(1, int(override)) if override is not None else 1
    except ValueError:
        return 1


# ----------------------------------------------------------------------------- resume
def _horizon(train: dict[str, Any]) -> Any:
    if train.get("schedule") == "constant":
        return None
    decay = train.get("lr_decay_iters")
    return train.get("max_iters") if decay is None else decay


def resume_differences(saved_train: dict[str, Any], train: dict[str, Any], saved_model: dict[str, Any],
                       model: dict[str, Any], saved_run: dict[str, Any], run: dict[str, Any]) -> list[str]:
    """Each setting that would make the resumed run differ from one never stopped: 'name: old -> new'."""
    diffs = []
    for key in ("data", "tokenizer", "bpe_vocab_size", "preset"):
        if key in saved_run and saved_run.get(key) != run.get(key):
            diffs.append(f"{key}: {saved_run.get(key)!r} -> {run.get(key)!r}")
    for key in sorted(set(saved_model) | set(model)):
        if saved_model.get(key) != model.get(key):
            diffs.append(f"model.{key}: {saved_model.get(key)!r} -> {model.get(key)!r}")
    for key in sorted(set(saved_train) | set(train)):
        if key in FREE_ON_RESUME:
            continue
        old, new = saved_train.get(key), train.get(key)
        if isinstance(old, list | tuple) and isinstance(new, list | tuple):
            old, new = list(old), list(new)
        if old != new:
            diffs.append(f"train.{key}: {old!r} -> {new!r}")
    if _horizon(saved_train) != _horizon(train):
        diffs.append(f"the schedule's horizon (max_iters when lr_decay_iters is none): {_horizon(saved_train)} -> "
                     f"{_horizon(train)}; set --train.lr_decay_iters to extend a run exactly")
    return diffs


def _saved_run(out: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(state, model config, run.json) of the run in ``out``, each checked; CheckpointError if damaged."""
    from groundup.train.checkpoint import (
        MAX_JSON_BYTES,
        CheckpointError,
        read_checkpoint_config,
        read_checkpoint_state,
        verify_covered,
    )
    from groundup.train.files import read_limited

    state = read_checkpoint_state(out)
    verify_covered(out)
    step = state.get("step")
    if type(step) is not int or step < 0:
        raise CheckpointError(f"{out / 'state.json'}: step is {step!r}, not a count of steps >= 0")
    if not isinstance(state.get("train_config"), dict):
        raise CheckpointError(f"{out / 'state.json'}: no train_config (not a checkpoint of `groundup train`)")
    run: dict[str, Any] = {}
    if (out / "run.json").exists():
        try:
            run = json.loads(read_limited(out / "run.json", MAX_JSON_BYTES))
        except (ValueError, OSError, RecursionError) as err:
            raise CheckpointError(f"{out / 'run.json'}: cannot be read ({str(err)[:200]})") from None
        if not isinstance(run, dict):
            raise CheckpointError(f"{out / 'run.json'}: expected a JSON object")
    return state, read_checkpoint_config(out), run


# ----------------------------------------------------------------------------- writing the run
def _save_tokenizer(tokenizer: Any, out: Path) -> None:
    """Save the tokenizer's files into ``out`` atomically (written in a private folder, then renamed)."""
    staging = out / f".tokenizer.{os.getpid()}.tmp"
    staging.mkdir()
    try:
        tokenizer.save(staging)
        for path in sorted(staging.iterdir()):
            os.replace(path, out / path.name)
    finally:
        for path in staging.iterdir():
            path.unlink()
        staging.rmdir()


def _bits_per_char(val_loss: float | None, tokenizer: Any, val_ids: np.ndarray) -> float | None:
    """Validation loss in bits per character: nats/token / ln 2 * tokens per character of the val text."""
    if val_loss is None or not math.isfinite(val_loss):
        return None
    chars = len(decode(tokenizer, val_ids.tolist()))
    return val_loss / math.log(2) * len(val_ids) / max(chars, 1)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s" if seconds >= 3600 else \
        f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def _resume_command(args: argparse.Namespace) -> str:
    argv = [a for a in getattr(args, "argv", []) if a != "--replace"]
    if "--resume" not in argv:
        argv.append("--resume")
    return shlex.join(["groundup", *argv])


# ----------------------------------------------------------------------------- the command
def run_training(args: argparse.Namespace) -> int:
    """``groundup train gpt``: returns the exit code."""
    import groundup as gu
    from groundup.train.rundir import RunDir, RunDirError, check_out_dir

    try:
        out = check_out_dir(args.out)
    except RunDirError as err:
        raise UsageError(str(err)) from None
    if (args.device or "cpu") == "cuda" and not gu.cuda_is_available():
        raise UsageError("--device cuda needs CuPy and a CUDA GPU (pip install 'groundup[gpu]'); none is available")
    build_configs(args, _vocab_hint(args))  # every flag checked before any work (the vocabulary comes later)
    if args.resume and not (out / "state.json").exists():
        raise UsageError(f"--resume: no checkpoint in {out} (state.json not found)")
    text = read_corpus(args.data)
    try:
        run_dir = RunDir.open(out, resume=args.resume, replace=args.replace)
    except RunDirError as err:
        raise UsageError(str(err)) from None
    with run_dir:
        if run_dir.moved_to is not None:
            print(f"the earlier run in {out} was moved to {run_dir.moved_to}", file=sys.stderr)
        return _train(args, out, text, run_dir)


def _train(args: argparse.Namespace, out: Path, text: str, run_dir: Any) -> int:
    import groundup as gu
    from groundup.data import get_batch
    from groundup.models.gpt_fast import FastGPT
    from groundup.parallel import cpu_threads
    from groundup.tokenizers import ByteLevelBPE, CharTokenizer
    from groundup.train import Trainer

    if args.resume:
        state, saved_model, saved_run = _saved_run(out)
        tokenizer = load_tokenizer(out)
    elif args.tokenizer == "char":
        tokenizer = CharTokenizer(text)
    else:
        try:
            tokenizer = ByteLevelBPE.train(text, vocab_size=args.bpe_vocab_size)
        except ValueError as err:
            raise UsageError(f"--bpe-vocab-size: {err}") from None
    try:
        ids = np.asarray(tokenizer.encode(text), dtype=np.int64)
    except KeyError as err:
        raise UsageError(f"--data {args.data}: the run's tokenizer cannot encode it ({err})") from None
    model_cfg, train_cfg = build_configs(args, tokenizer.vocab_size)
    cut = int(len(ids) * (1 - VAL_FRACTION))
    splits = {"train": ids[:cut], "val": ids[cut:]}
    T = model_cfg.block_size
    for name, data in splits.items():
        if len(data) <= T:
            raise UsageError(f"the {name} split has {len(data)} tokens, fewer than block_size + 1 = {T + 1}; "
                             f"use more text or a smaller --model.block_size")
    run = {"data": args.data, "tokenizer": args.tokenizer, "preset": args.preset, "train_tokens": int(cut),
           "val_tokens": int(len(ids) - cut), "model": model_cfg.to_dict(), "train": train_cfg.to_dict()}
    if args.tokenizer == "bpe":
        run["bpe_vocab_size"] = args.bpe_vocab_size
    changes: list[str] = []
    if args.resume:
        changes = resume_differences(state["train_config"], train_cfg.to_dict(), saved_model, model_cfg.to_dict(),
                                     saved_run, run)
        fixed = [c for c in changes if c.startswith(("model.", "tokenizer:", "bpe_vocab_size:"))]
        if fixed and args.allow_changes:   # the checkpoint's weights fit one model; run.json's tokenizer is kept
            raise UsageError(f"--resume cannot change the model or its tokenizer ({'; '.join(fixed)}): "
                             f"--allow-changes accepts other data and training settings only; give the first "
                             f"run's model and tokenizer flags, or start a new run (--replace or another --out)")
        if changes and not args.allow_changes:
            raise UsageError(f"--resume would not continue {out} exactly; changed since the checkpoint: "
                             f"{'; '.join(changes)}. Give the first run's flags, or --allow-changes to accept "
                             f"(recorded in metrics.jsonl)")
    B = train_cfg.batch_size

    def batch(split: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        return get_batch(splits[split], B, T, rng)

    gu.manual_seed(train_cfg.seed)  # the initial weights come from the run's seed too
    model = FastGPT(model_cfg)  # the readable GPT's fused twin: same parameters, faster steps
    if not args.resume:
        _save_tokenizer(tokenizer, out)
        run_dir.write("run.json", json.dumps(run, indent=1) + "\n")
    base = type(model_cfg).preset(args.preset, vocab_size=model_cfg.vocab_size).to_dict()
    changed = [f"{k}={v}" for k, v in model_cfg.to_dict().items() if base.get(k) != v]   # --model.FIELD overrides
    preset = f"{args.preset} ({', '.join(changed)})" if changed else args.preset
    print(f"GPT {preset}: {model.num_parameters():,} parameters, vocab {model_cfg.vocab_size}, "
          f"{cut:,} train / {len(ids) - cut:,} val tokens -> {out}", file=sys.stderr)
    if args.resume:
        print(f"resuming {out} at iter {state['step']} of {train_cfg.max_iters}"
              + (f" with changes: {'; '.join(changes)}" if changes else ""), file=sys.stderr)
    interrupts = [0]
    first = start_id(tokenizer)

    def on_event(trainer: Trainer, event: str, info: dict[str, Any]) -> None:
        if event == "fit_start" and args.resume:
            append_line(out / "metrics.jsonl", json.dumps({"kind": "resume", "iter": info["iter"],
                                                           "changed": changes, "at": time.time()}))
        if event != "eval" or interrupts[0]:
            return
        if not train_cfg.progress:  # the Trainer prints the losses itself unless told to be quiet
            print(f"iter {info['iter']}: train loss {info['train_loss']:.4f}, val loss {info['val_loss']:.4f}",
                  file=sys.stderr, flush=True)
        sample = model.generate(np.array([[first]]), min(SAMPLE_CHARS, 4 * T), temperature=0.8, seed=trainer.iter)
        text_out = decode(tokenizer, sample.numpy()[0].tolist())
        print(f"--- sample at iter {info['iter']} ---\n{for_terminal(text_out.strip(), sys.stderr)}\n---",
              file=sys.stderr, flush=True)
        trainer.record({"kind": "sample", "iter": info["iter"], "text": text_out})   # for the explorer, live

    trainer = Trainer(model, train_cfg, batch, callbacks=[on_event], model_config=model_cfg, tokens_per_batch=B * T)

    def on_sigint(signum: int, frame: Any) -> None:
        interrupts[0] += 1
        if interrupts[0] > 1:
            raise KeyboardInterrupt
        trainer.stop()
        print("\ngroundup: stopping after this step to save a checkpoint (Ctrl-C again to abort)",
              file=sys.stderr, flush=True)

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        with cpu_threads(), warnings.catch_warnings():  # threads, BLAS limits and allocator tuning, this run only
            warnings.simplefilter("ignore", ResumeWarning)  # the command said what changed, in its own words
            summary = trainer.fit(resume=args.resume)
    except KeyboardInterrupt:
        print(f"groundup: interrupted; the last checkpoint in {out} is intact; resume with: "
              f"{_resume_command(args)}", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGINT, previous)
    bpc = _bits_per_char(summary.get("val_loss"), tokenizer, splits["val"])
    if interrupts[0]:
        print(f"groundup: interrupted at iter {summary['iters']}; checkpoint saved in {out}; resume with: "
              f"{_resume_command(args)}", file=sys.stderr)
        return 130
    _print_summary(summary, bpc, out, args)
    from groundup.roadmap.train_report import write_training_report

    print(f"report: {write_training_report(out, bpc)}")
    return 0


def _print_summary(summary: dict[str, Any], bpc: float | None, out: Path, args: argparse.Namespace) -> None:
    val, train = summary.get("val_loss"), summary.get("train_loss")
    losses = f"val loss {val:.4f}" if val is not None else "no evaluation"
    if bpc is not None:
        losses += f" ({bpc:.3f} bits per character)"
    if train is not None:
        losses += f", train loss {train:.4f}"
    if summary.get("train_s"):
        speed = f", {summary['tokens_per_s']:,.0f} tokens/s"
    elif args.resume:
        speed = " (nothing left to train: the run was already complete)"
    else:
        speed = " (--max-iters 0: nothing trained; the checkpoint holds the initial weights)"
    print(f"done: {summary['iters']:,} iters in {_duration(summary['wall_s'])}{speed}; {losses}")
    print(f"loss curves: {out / 'loss.png'}   numbers: {out / 'summary.json'}")
    prompt = ' --prompt "ROMEO:"' if args.data == "shakespeare" else ""
    print(f"next: groundup sample {shlex.quote(str(out))}{prompt}")
