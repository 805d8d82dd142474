"""``groundup train``, ``groundup sample`` and ``groundup bench``: train a GPT on text, sample from it, and
time it against PyTorch.

    groundup train gpt --data shakespeare --tokenizer char --preset baby --out runs/gpt-baby
    groundup train gpt --data names --preset baby --out runs/names --max-iters 500 --model.n_layer=2 --train.lr=3e-4
    groundup sample runs/gpt-baby --prompt "ROMEO:" --max-new-tokens 300 --temperature 0.8 --top-k 40
    groundup bench gpt --preset baby --iters 50 --json runs/bench-baby.json

Every field of ``GPTConfig`` and ``TrainConfig`` can be set as ``--model.FIELD=VALUE`` /
``--train.FIELD=VALUE``: each value is parsed with the field's type (``true``/``false`` for bools,
``none`` for optional fields, ``0.9,0.99`` for pairs) and applied with ``dataclasses.replace``;
an unknown field is an error. The order is: preset, then the short flags (``--lr``...), then the
dotted overrides.

A training run writes into ``--out``: model.safetensors + config.json (the GPTConfig) +
optimizer.safetensors + state.json (the checkpoint, see ``groundup.train``), the tokenizer
(tokenizer.json, or vocab.json + merges.txt for BPE), run.json (data, tokenizer, preset and both
configs), metrics.jsonl as it goes, and loss.png and summary.json at the end.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import sys
import types
import typing
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["register", "train_command", "sample_command", "bench_command", "TRAIN_PRESETS", "parse_field",
           "apply_overrides"]

# Training settings that go with each model preset (nanoGPT's recipes; see BENCHMARKS.md).
TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    # nanoGPT README, CPU: batch 12, 2000 iters, lr 1e-3 -> 1e-4 cosine (lr_decay_iters = max_iters),
    # 100 warmup iters, AdamW betas (0.9, 0.99), weight decay 0.1, clip 1.0.
    "baby": dict(max_iters=2000, batch_size=12, lr=1e-3, min_lr=1e-4, warmup_iters=100, lr_decay_iters=None,
                 weight_decay=0.1, betas=(0.9, 0.99), grad_clip=1.0, eval_interval=250, eval_iters=100),
    # nanoGPT config/train_shakespeare_char.py: batch 64, 5000 iters, same schedule and optimizer.
    "small": dict(max_iters=5000, batch_size=64, lr=1e-3, min_lr=1e-4, warmup_iters=100, lr_decay_iters=None,
                  weight_decay=0.1, betas=(0.9, 0.99), grad_clip=1.0, eval_interval=250, eval_iters=200),
}
VAL_FRACTION = 0.1
SAMPLE_CHARS = 200


# ----------------------------------------------------------------------------- dotted overrides
def parse_field(text: str, annotation: Any, name: str) -> Any:
    """Parse ``text`` as a value of the dataclass field type ``annotation`` (int, float, bool, str,
    ``X | None`` and ``tuple[float, float]``); raise ValueError naming the field otherwise."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        if text.strip().lower() in ("none", "null"):
            return None
        return parse_field(text, options[0], name)
    if origin is tuple:
        parts = [p for p in text.replace("(", "").replace(")", "").split(",") if p.strip()]
        kinds = typing.get_args(annotation)
        if len(parts) != len(kinds):
            raise ValueError(f"{name}: expected {len(kinds)} comma-separated values, got {text!r}")
        return tuple(parse_field(p.strip(), k, name) for p, k in zip(parts, kinds))
    if annotation is bool:
        lowered = text.strip().lower()
        if lowered in ("true", "1", "yes", "on"):
            return True
        if lowered in ("false", "0", "no", "off"):
            return False
        raise ValueError(f"{name}: expected true or false, got {text!r}")
    if annotation is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"{name}: expected an integer, got {text!r}") from None
    if annotation is float:
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"{name}: expected a number, got {text!r}") from None
    if annotation is str:
        return text
    raise ValueError(f"{name}: cannot parse a value of type {annotation!r} from the command line")


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def apply_overrides(config: Any, overrides: dict[str, str], prefix: str) -> Any:
    """``dataclasses.replace(config, **parsed)`` for ``{field: text}``; unknown fields are an error."""
    types_ = _field_types(type(config))
    unknown = sorted(set(overrides) - set(types_))
    if unknown:
        raise ValueError(f"unknown {prefix} field(s) {', '.join(f'{prefix}.{u}' for u in unknown)}; "
                         f"known: {', '.join(sorted(types_))}")
    parsed = {k: parse_field(v, types_[k], f"--{prefix}.{k}") for k, v in overrides.items()}
    return dataclasses.replace(config, **parsed)


def _dotted_options(parser: argparse.ArgumentParser, prefix: str, cls: type, skip: tuple[str, ...] = ()) -> None:
    title = f"--{prefix}.FIELD=VALUE overrides ({cls.__name__}; parsed with the field's type)"
    group = parser.add_argument_group(title)
    for name, annotation in _field_types(cls).items():
        if name in skip:
            continue
        kind = getattr(annotation, "__name__", str(annotation)).replace("typing.", "")
        group.add_argument(f"--{prefix}.{name}", dest=f"{prefix}__{name}", metavar=kind.upper(), default=None,
                           help=argparse.SUPPRESS if name.startswith("_") else f"{cls.__name__}.{name} ({kind})")


def _collect(args: argparse.Namespace, prefix: str) -> dict[str, str]:
    head = f"{prefix}__"
    return {k[len(head):]: v for k, v in vars(args).items() if k.startswith(head) and v is not None}


# ----------------------------------------------------------------------------- registration
def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``train``, ``sample`` and ``bench`` to the ``groundup`` parser."""
    from groundup.models.gpt import GPTConfig
    from groundup.train import TrainConfig

    p = subparsers.add_parser(
        "train", allow_abbrev=False, help="train a model on text (a GPT)",
        description="Train a GPT language model on a text corpus with groundup's Trainer: progress bar, "
                    "periodic train/val loss (mean over fixed batches) with a short sample, checkpoint, "
                    "metrics.jsonl, loss.png and summary.json in --out. Validation data = the last 10%% of "
                    "the text.", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("model", choices=("gpt",), help="what to train")
    p.add_argument("--data", default="shakespeare",
                   help="'shakespeare' (Tiny Shakespeare), 'names' (makemore's names) or a path to a UTF-8 .txt file")
    p.add_argument("--tokenizer", choices=("char", "bpe"), default="char",
                   help="one token per character, or byte-level BPE trained on the training text")
    p.add_argument("--bpe-vocab-size", type=int, default=512, help="vocabulary size when --tokenizer bpe")
    p.add_argument("--preset", choices=sorted(GPTConfig.PRESETS), default="baby",
                   help="model size and its training recipe: baby = 4 layers x 4 heads x 128 dims, context 64, "
                        "batch 12, 2000 iters (nanoGPT's CPU run); small = 6 x 6 x 384, context 256, batch 64, "
                        "5000 iters, dropout 0.2 (nanoGPT's GPU run)")
    p.add_argument("--out", required=True, help="run directory (checkpoint, tokenizer, metrics, summary)")
    p.add_argument("--max-iters", type=int, default=None, help="optimizer steps (default: the preset's); the "
                                                               "cosine decay ends here (lr_decay_iters=max_iters)")
    p.add_argument("--batch-size", type=int, default=None, help="sequences per step (default: the preset's)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the preset's, 1e-3)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cuda needs CuPy and a GPU")
    p.add_argument("--seed", type=int, default=1337, help="seed of the batches, init and dropout")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its checkpoint (same flags as the first run)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar (the periodic losses and samples are still printed)")
    _dotted_options(p, "model", GPTConfig)
    _dotted_options(p, "train", TrainConfig, skip=("out_dir",))
    p.set_defaults(handler=train_command)

    p = subparsers.add_parser(
        "sample", allow_abbrev=False, help="generate text from a trained GPT",
        description="Load the GPT and tokenizer saved in DIR (by `groundup train gpt`) and print the prompt "
                    "followed by the sampled continuation.", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("dir", help="run directory written by `groundup train gpt`")
    p.add_argument("--prompt", default="\n", help="text to continue (every character must be in the vocabulary "
                                                  "for a char tokenizer)")
    p.add_argument("--max-new-tokens", type=int, default=500, help="tokens to generate")
    p.add_argument("--temperature", type=float, default=1.0, help="divide the logits by this; 0 = greedy")
    p.add_argument("--top-k", type=int, default=None, help="sample only among the k most likely tokens")
    p.add_argument("--top-p", type=float, default=None, help="sample only among the most likely tokens whose "
                                                             "probabilities add up to p (nucleus sampling)")
    p.add_argument("--seed", type=int, default=None, help="seed for a reproducible sample")
    p.add_argument("--no-cache", action="store_true", help="recompute the whole context for every token "
                                                           "instead of using the KV cache")
    p.set_defaults(handler=sample_command)

    p = subparsers.add_parser(
        "bench", allow_abbrev=False, help="time groundup against PyTorch (training and generation)",
        description="Train groundup's GPT and a PyTorch model of the same architecture (benchmarks/torch_gpt.py) "
                    "on the same random batches, alternating one step of each after warm-up, in one process "
                    "(torch.set_num_threads(2)); then time generation (200 tokens, batch 1) with and without a "
                    "KV cache. Prints ms/step, tokens/s, peak RSS and the ratio groundup/PyTorch; writes a JSON "
                    "record. Needs a source checkout (the benchmarks/ directory) and torch.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("what", choices=("gpt",), help="what to benchmark")
    p.add_argument("--preset", choices=sorted(GPTConfig.PRESETS), default="baby", help="model size")
    p.add_argument("--iters", type=int, default=None, help="timed training steps per framework "
                                                           "(default: 40 for baby, 3 for small)")
    p.add_argument("--batch-size", type=int, default=None, help="default: the preset's training batch size")
    p.add_argument("--warmup", type=int, default=None, help="untimed training steps per framework first "
                                                            "(default: 3 for baby, 1 for small)")
    p.add_argument("--gen-tokens", type=int, default=200, help="tokens generated per generation run")
    p.add_argument("--gen-rounds", type=int, default=3, help="alternating rounds of each generation contender")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory probes (one subprocess each)")
    p.add_argument("--json", default=None, help="write the record here (default: runs/bench-gpt-PRESET.json)")
    p.set_defaults(handler=bench_command)


# ----------------------------------------------------------------------------- train
def _build_tokenizer(kind: str, text: str, out: Path, resume: bool, bpe_vocab_size: int) -> Any:
    from groundup.tokenizers import ByteLevelBPE, CharTokenizer

    if resume:
        return _load_tokenizer(out)
    if kind == "char":
        return CharTokenizer(text)
    return ByteLevelBPE.train(text, vocab_size=bpe_vocab_size)


def _load_tokenizer(directory: Path) -> Any:
    from groundup.tokenizers import ByteLevelBPE, CharTokenizer

    if (directory / "tokenizer.json").is_file():
        return CharTokenizer.load(directory)
    if (directory / "vocab.json").is_file():
        return ByteLevelBPE.load(directory)
    raise FileNotFoundError(f"no tokenizer in {directory} (expected tokenizer.json or vocab.json + merges.txt)")


def _error(message: str) -> int:
    print(f"groundup: error: {message}", file=sys.stderr)
    return 2


def train_command(args: argparse.Namespace) -> int:
    """``groundup train gpt``: returns the exit code."""
    import groundup as gu
    from groundup.data import get_batch, load_text
    from groundup.models.gpt import GPT, GPTConfig
    from groundup.train import TrainConfig, Trainer

    out = Path(args.out)
    if args.device == "cuda" and not gu.cuda_is_available():
        return _error("--device cuda needs CuPy and a CUDA GPU (pip install 'groundup[gpu]'); none is available")
    try:
        text = load_text(args.data)
    except FileNotFoundError as err:
        return _error(str(err))
    if args.resume and not (out / "state.json").is_file():
        return _error(f"--resume: no checkpoint in {out} (state.json not found)")
    try:
        tokenizer = _build_tokenizer(args.tokenizer, text, out, args.resume, args.bpe_vocab_size)
        ids = np.asarray(tokenizer.encode(text), dtype=np.int64)
        preset_train = TRAIN_PRESETS[args.preset]
        model_cfg = GPTConfig.preset(args.preset, vocab_size=tokenizer.vocab_size)
        model_cfg = apply_overrides(model_cfg, _collect(args, "model"), "model")
        if model_cfg.vocab_size < tokenizer.vocab_size:
            raise ValueError(f"--model.vocab_size={model_cfg.vocab_size} is smaller than the tokenizer's "
                             f"{tokenizer.vocab_size} tokens")
        shorthand = {"max_iters": args.max_iters, "batch_size": args.batch_size, "lr": args.lr}
        train_cfg = TrainConfig(**{**preset_train, **{k: v for k, v in shorthand.items() if v is not None},
                                   "device": args.device, "seed": args.seed, "out_dir": str(out),
                                   "progress": not args.no_progress})
        train_cfg = apply_overrides(train_cfg, _collect(args, "train"), "train")
    except (ValueError, KeyError, FileNotFoundError) as err:
        return _error(str(err))
    cut = int(len(ids) * (1 - VAL_FRACTION))
    splits = {"train": ids[:cut], "val": ids[cut:]}
    T = model_cfg.block_size
    for name, data in splits.items():
        if len(data) <= T:
            return _error(f"the {name} split has {len(data)} tokens, fewer than block_size + 1 = {T + 1}; "
                          f"use more text or a smaller --model.block_size")
    B = train_cfg.batch_size

    def batch(split: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        return get_batch(splits[split], B, T, rng)

    gu.manual_seed(train_cfg.seed)  # the initial weights come from the run's seed too
    model = GPT(model_cfg)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save(out)
    run = {"data": args.data, "tokenizer": args.tokenizer, "preset": args.preset, "train_tokens": int(cut),
           "val_tokens": int(len(ids) - cut), "model": model_cfg.to_dict(), "train": train_cfg.to_dict()}
    (out / "run.json").write_text(json.dumps(run, indent=1) + "\n")
    print(f"GPT {args.preset}: {model.num_parameters():,} parameters, vocab {model_cfg.vocab_size}, "
          f"{cut:,} train / {len(ids) - cut:,} val tokens -> {out}", file=sys.stderr)
    start_id = _start_id(tokenizer)

    def show_sample(trainer: Trainer, event: str, info: dict[str, Any]) -> None:
        if event != "eval":
            return
        if not train_cfg.progress:  # the Trainer prints the losses itself unless told to be quiet
            print(f"iter {info['iter']}: train loss {info['train_loss']:.4f}, val loss {info['val_loss']:.4f}",
                  file=sys.stderr, flush=True)
        sample = model.generate(np.array([[start_id]]), min(SAMPLE_CHARS, 4 * T), temperature=0.8,
                                seed=trainer.iter)
        text_out = tokenizer.decode(sample.numpy()[0].tolist())
        print(f"--- sample at iter {info['iter']} ---\n{text_out.strip()}\n---", file=sys.stderr, flush=True)

    trainer = Trainer(model, train_cfg, batch, callbacks=[show_sample], model_config=model_cfg,
                      tokens_per_batch=B * T)
    summary = trainer.fit(resume=args.resume)
    print(json.dumps({k: summary[k] for k in ("iters", "train_loss", "val_loss", "wall_s", "tokens_per_s")}))
    return 0


def _start_id(tokenizer: Any) -> int:
    """The newline token when there is one (nanoGPT samples from '\\n'), else id 0."""
    try:
        ids = tokenizer.encode("\n")
    except KeyError:
        return 0
    return int(ids[0]) if ids else 0


# ----------------------------------------------------------------------------- sample
def sample_command(args: argparse.Namespace) -> int:
    """``groundup sample DIR``: print the prompt and its continuation."""
    from groundup.models.gpt import GPT

    directory = Path(args.dir)
    if not (directory / "model.safetensors").is_file():
        return _error(f"{directory} holds no model.safetensors (train one with `groundup train gpt --out {directory}`)")
    try:
        tokenizer = _load_tokenizer(directory)
        model = GPT.load(directory)
        prompt = tokenizer.encode(args.prompt) if args.prompt else [_start_id(tokenizer)]
        if not prompt:
            prompt = [_start_id(tokenizer)]
        out = model.generate(np.array([prompt]), args.max_new_tokens, temperature=args.temperature,
                             top_k=args.top_k, top_p=args.top_p, seed=args.seed, use_cache=not args.no_cache)
    except (KeyError, ValueError, IndexError, FileNotFoundError) as err:
        return _error(str(err))
    print(tokenizer.decode(out.numpy()[0].tolist()))
    return 0


# ----------------------------------------------------------------------------- bench
def _benchmarks_dir() -> Path | None:
    """benchmarks/ of the source checkout this package runs from (the repo root is groundup/..)."""
    root = Path(__file__).resolve().parent.parent
    candidate = root / "benchmarks"
    return candidate if (candidate / "bench_gpt.py").is_file() else None


def load_benchmark_module(name: str) -> types.ModuleType:
    """Import benchmarks/NAME.py from the repo root (it is not part of the installed package)."""
    directory = _benchmarks_dir()
    if directory is None:
        raise FileNotFoundError("the benchmarks/ directory was not found next to the groundup package: "
                                "`groundup bench` runs from a source checkout (git clone, pip install -e .)")
    if str(directory) not in sys.path:
        sys.path.insert(0, str(directory))
    spec = importlib.util.spec_from_file_location(name, directory / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def bench_command(args: argparse.Namespace) -> int:
    """``groundup bench gpt``: time training and generation against PyTorch; print and write the record."""
    if importlib.util.find_spec("torch") is None:
        return _error("`groundup bench` compares against PyTorch, which is not installed: pip install torch "
                      "(CPU wheels: --index-url https://download.pytorch.org/whl/cpu)")
    try:
        bench = load_benchmark_module("bench_gpt")
    except FileNotFoundError as err:
        return _error(str(err))
    path = Path(args.json) if args.json else Path("runs") / f"bench-gpt-{args.preset}.json"
    record = bench.run(preset=args.preset, iters=args.iters, batch_size=args.batch_size, gen_tokens=args.gen_tokens,
                       gen_rounds=args.gen_rounds, memory=not args.no_memory, warmup=args.warmup)
    print(bench.format_table(record))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n")
    print(f"record written to {path}")
    return 0
