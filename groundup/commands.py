"""``groundup train``, ``groundup sample`` and ``groundup bench``: train a GPT on text, sample from it, and
time it against PyTorch.

    groundup train gpt --data shakespeare --tokenizer char --preset baby --out runs/gpt-baby
    groundup train gpt --data names --preset baby --out runs/names --max-iters 500 --model.n_layer=2 --train.lr=3e-4
    groundup sample runs/gpt-baby --prompt "ROMEO:" --max-new-tokens 300 --temperature 0.8 --top-k 40
    groundup bench gpt --preset baby --iters 50 --json runs/bench-baby.json

Every field of ``GPTConfig`` and ``TrainConfig`` can be set as ``--model.FIELD=VALUE`` /
``--train.FIELD=VALUE`` (see ``groundup.cli_options``). The order is: preset, then the short flags
(``--lr``...), then the dotted overrides; giving both a short flag and its dotted twin is an error.

A training run owns its ``--out`` directory (``groundup.train.rundir``): it writes model.safetensors +
config.json + optimizer.safetensors + state.json (the checkpoint, see ``groundup.train``), the
tokenizer (tokenizer.json, or vocab.json + merges.txt for BPE), run.json (data, tokenizer, preset
and both configs), metrics.jsonl as it goes, and loss.png and summary.json at the end. The resume
rules (exact or refused) are in ``groundup.train_cli``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np

from groundup.cli_options import (
    HelpFormatter,
    UsageError,
    apply_overrides,
    dotted_options,
    float_range,
    int_range,
    parse_field,
)

__all__ = ["register", "train_command", "sample_command", "bench_command", "TRAIN_PRESETS", "parse_field",
           "apply_overrides", "MAX_NEW_TOKENS", "VAL_FRACTION", "load_tokenizer", "start_id"]

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
VAL_FRACTION = 0.1             # the last 10% of the tokens validate
SAMPLE_CHARS = 200             # tokens of the sample printed at each evaluation
MAX_NEW_TOKENS = 100_000       # sample: more than this is surely a typo (and hours of work)
MAX_SEED = 2**32 - 1
# `groundup bench` targets: the GPT (bench_gpt.py) and the roadmap's families (bench_families.py), or all
BENCH_CHOICES = ("gpt", "mlp", "cnn", "rnn", "gru", "lstm", "seq2seq", "transformer", "bert", "all")


def _model_choices() -> dict[str, tuple[str, ...]]:
    """The allowed values of GPTConfig's str fields (the config module's constants where it has them)."""
    import importlib

    out = {"pos_encoding": ("learned", "sinusoidal", "rotary", "none"), "norm": ("pre", "post")}
    for module_name in ("groundup.models.gpt", "groundup.models.gpt_config"):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        for field, constant in (("pos_encoding", "POS_ENCODINGS"), ("norm", "NORMS")):
            if isinstance(getattr(module, constant, None), tuple):
                out[field] = getattr(module, constant)
    return out


# ----------------------------------------------------------------------------- registration
def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``train``, ``sample`` and ``bench`` to the ``groundup`` parser."""
    from groundup.models.gpt import GPTConfig
    from groundup.train import TrainConfig
    from groundup.train.config import FIELD_CHOICES

    presets = sorted(GPTConfig.PRESETS)
    p = subparsers.add_parser(
        "train", allow_abbrev=False, help="train a model on text (a GPT)", formatter_class=HelpFormatter,
        description="Train a GPT language model on a text corpus with groundup's Trainer: progress bar, "
                    "periodic train/val loss (mean over fixed batches) with a short sample, checkpoint, "
                    "metrics.jsonl, loss.png and summary.json in --out. Validation data = the last 10% of "
                    "the text. Ctrl-C saves a checkpoint at the current step; --resume continues it exactly.")
    p.add_argument("model", choices=("gpt",), help="what to train")
    p.add_argument("--data", default="shakespeare",
                   help="'shakespeare' (Tiny Shakespeare), 'names' (makemore's names) or a path to a UTF-8 "
                        "text file")
    p.add_argument("--tokenizer", choices=("char", "bpe"), default="char",
                   help="one token per character, or byte-level BPE trained on the training text")
    p.add_argument("--bpe-vocab-size", type=int_range(257, 1_000_000), default=512,
                   help="vocabulary size when --tokenizer bpe")
    p.add_argument("--preset", choices=presets, default="baby",
                   help="model size and its training recipe: baby = 4 layers x 4 heads x 128 dims, context 64, "
                        "batch 12, 2000 iters (nanoGPT's CPU run); small = 6 x 6 x 384, context 256, batch 64, "
                        "5000 iters, dropout 0.2 (nanoGPT's GPU run)")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="run directory (checkpoint, tokenizer, metrics, summary); a new or empty directory, or "
                        "an earlier run with --resume or --replace")
    p.add_argument("--max-iters", type=int_range(0), default=None,
                   help="optimizer steps (default: the preset's, 2000 for baby, 5000 for small); the cosine "
                        "decay ends here unless --train.lr_decay_iters is set")
    p.add_argument("--batch-size", type=int_range(1, 1_000_000), default=None,
                   help="sequences per step (default: the preset's, 12 for baby, 64 for small)")
    p.add_argument("--lr", type=float_range(0.0, 10.0, low_open=True), default=None,
                   help="peak learning rate (default: the preset's, 1e-3)")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="cpu or cuda (default: cpu); cuda "
                                                                           "needs CuPy and a GPU")
    p.add_argument("--seed", type=int_range(0, MAX_SEED), default=None,
                   help="seed of the batches, init and dropout (default: 1337)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its checkpoint; the flags must be the first run's "
                        "(a difference that changes the result is refused)")
    p.add_argument("--allow-changes", action="store_true",
                   help="with --resume: accept changed data or training settings (the resume is then not "
                        "exact; the model and tokenizer cannot change); the changes are recorded in metrics.jsonl")
    p.add_argument("--replace", action="store_true",
                   help="--out holds another run: move it aside to OUT.old-N (nothing is deleted) and start "
                        "afresh")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar (the periodic losses and samples are still printed)")
    dotted_options(p, "model", GPTConfig, choices=_model_choices())
    dotted_options(p, "train", TrainConfig, skip=("out_dir",), choices=FIELD_CHOICES,
                   aliases={"max_iters": "--max-iters", "batch_size": "--batch-size", "lr": "--lr",
                            "device": "--device", "seed": "--seed", "progress": "--no-progress"})
    p.set_defaults(handler=train_command)

    p = subparsers.add_parser(
        "sample", allow_abbrev=False, help="generate text from a trained GPT", formatter_class=HelpFormatter,
        description="Load the GPT and tokenizer saved in DIR (by `groundup train gpt`) and print the prompt "
                    "followed by the sampled continuation.")
    p.add_argument("dir", help="run directory written by `groundup train gpt`")
    p.add_argument("--prompt", default=None, help="text to continue (every character must be in the vocabulary "
                                                  "for a char tokenizer; default: a newline, or token 0 if the "
                                                  "vocabulary has none)")
    p.add_argument("--max-new-tokens", type=int_range(0, MAX_NEW_TOKENS), default=500, help="tokens to generate")
    p.add_argument("--temperature", type=float_range(0.0, 100.0), default=1.0,
                   help="divide the logits by this; 0 = greedy")
    p.add_argument("--top-k", type=int_range(1), default=None, help="sample only among the k most likely tokens")
    p.add_argument("--top-p", type=float_range(0.0, 1.0, low_open=True), default=None,
                   help="sample only among the most likely tokens whose probabilities add up to p (nucleus "
                        "sampling)")
    p.add_argument("--seed", type=int_range(0, MAX_SEED), default=None,
                   help="seed for a reproducible sample (default: a fresh one each time, printed to stderr so "
                        "that --seed N gives the same sample again)")
    p.add_argument("--no-cache", action="store_true",
                   help="recompute the whole context for every token instead of using the KV cache. The same "
                        "text within the context; past it, rotary and position-free models read a sliding "
                        "window through the cache but a recomputed window without it, so the text may differ")
    p.add_argument("--no-weight-check", action="store_true",
                   help="load weights even if they are not finite or not floating point")
    p.set_defaults(handler=sample_command)

    p = subparsers.add_parser(
        "bench", allow_abbrev=False, help="time groundup against PyTorch (training and generation)",
        description="Time groundup's training step against PyTorch's at its best on the CPU, in one process, from "
                    "the same initial weights on the same batches: the contenders take turns of a few steps "
                    "after warm-up, each turn after a short pause for the other's idle threads to stop spinning "
                    "(the first step of each turn untimed), PyTorch with torch.set_num_threads(2) (--threads: "
                    "both contenders on N threads). "
                    "The argument names one of the roadmap's model families at the roadmap's sizes "
                    "(benchmarks/bench_families.py: nn.RNN/GRU/LSTM, nn.Conv2d, SDPA with copied weights), or "
                    "`all` for one table of every family; `gpt` also times generation (200 tokens, batch 1) with "
                    "and without a KV cache. Prints NumPy's BLAS kernels (with a warning when OPENBLAS_CORETYPE "
                    "pins them below the CPU), ms/step, samples or tokens per second, peak RSS, how much CPU "
                    "other processes used meanwhile, and the ratio = PyTorch's step time / groundup's (> 1: "
                    "groundup is faster); writes a JSON record. Needs a source checkout (the benchmarks/ "
                    "directory) and torch.",
        formatter_class=HelpFormatter)
    p.add_argument("what", choices=BENCH_CHOICES, help="what to benchmark: a model family, or all of them")
    p.add_argument("--preset", choices=presets, default="baby", help="model size")
    p.add_argument("--iters", type=int_range(1, 100_000), default=None,
                   help="timed training steps per framework (default: 40 for baby, 3 for small; for the other "
                        "families see benchmarks/bench_families.py DEFAULT_ITERS)")
    p.add_argument("--batch-size", type=int_range(1, 1_000_000), default=None,
                   help="sequences per step (default: the preset's training batch size; gpt only)")
    p.add_argument("--warmup", type=int_range(0, 100_000), default=None,
                   help="untimed training steps per framework first (default: 3 for baby, 1 for small)")
    p.add_argument("--gen-tokens", type=int_range(1, MAX_NEW_TOKENS), default=200,
                   help="tokens generated per generation run")
    p.add_argument("--gen-rounds", type=int_range(1, 1000), default=3,
                   help="alternating rounds of each generation contender")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory probes (one subprocess each)")
    p.add_argument("--runs", type=int_range(1, 100), default=1,
                   help="repeat the whole benchmark N times; each family's row is its median run, with every "
                        "run's ratio listed (for the families and `all`; for `gpt` alone raise --iters instead)")
    p.add_argument("--threads", type=int_range(1, 64), default=None, metavar="N",
                   help="threads for each contender: PyTorch's torch.set_num_threads(N) and groundup's "
                        "groundup.parallel.cpu_threads(N) (default: PyTorch 2, groundup the usable cores); "
                        "--threads 1 races one core against one core")
    p.add_argument("--json", default=None, metavar="PATH",
                   help="write the record here (default: runs/bench-gpt-PRESET.json for gpt, "
                        "runs/bench-WHAT.json otherwise)")
    p.set_defaults(handler=bench_command)


# ----------------------------------------------------------------------------- shared helpers
def load_tokenizer(directory: Path) -> Any:
    """The tokenizer saved in a run directory (char: tokenizer.json; BPE: vocab.json + merges.txt)."""
    from groundup.tokenizers import ByteLevelBPE, CharTokenizer
    from groundup.train.checkpoint import CheckpointError

    try:
        if (directory / "tokenizer.json").is_file():
            return CharTokenizer.load(directory)
        if (directory / "vocab.json").is_file():
            return ByteLevelBPE.load(directory)
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{directory}: the tokenizer cannot be loaded ({' '.join(str(err).split())[:300]})") \
            from None
    raise FileNotFoundError(f"no tokenizer in {directory} (expected tokenizer.json or vocab.json + merges.txt)")


def start_id(tokenizer: Any) -> int:
    """The newline token when there is one (nanoGPT samples from '\\n'), else id 0."""
    try:
        ids = tokenizer.encode("\n")
    except KeyError:
        return 0
    return int(ids[0]) if ids else 0


_CONTROLS = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F) if chr(c) not in "\n\t"}   # C0 and DEL
_CONTROLS.update({c: f"\\x{c:02x}" for c in range(0x80, 0xA0)})                       # C1


def for_terminal(text: str, stream: Any) -> str:
    """``text`` with its control characters (but newline and tab) as ``\\xNN`` escapes when ``stream`` is a
    terminal: a model's bytes (an early byte-level BPE sample, say) must not move the cursor, change
    colours or ring; to a file or a pipe the text goes as it is."""
    isatty = getattr(stream, "isatty", None)
    return text.translate(_CONTROLS) if isatty is not None and isatty() else text


def decode(tokenizer: Any, ids: list[int]) -> str:
    """Text of ``ids``; an id the tokenizer does not have (a padded vocabulary) shows as U+FFFD."""
    known = [i for i in ids if 0 <= i < tokenizer.vocab_size]
    if len(known) == len(ids):
        return tokenizer.decode(ids)
    pieces, run = [], []
    for i in ids:
        if 0 <= i < tokenizer.vocab_size:
            run.append(i)
            continue
        if run:
            pieces.append(tokenizer.decode(run))
            run = []
        pieces.append("\ufffd")
    if run:
        pieces.append(tokenizer.decode(run))
    return "".join(pieces)


_load_tokenizer, _start_id = load_tokenizer, start_id  # the names other modules used before


def train_command(args: argparse.Namespace) -> int:
    """``groundup train gpt``: returns the exit code (see groundup.train_cli)."""
    from groundup.train_cli import run_training

    return run_training(args)


# ----------------------------------------------------------------------------- sample
def _stage_hint(directory: Path) -> str:
    """Where to find a GPT when ``directory`` is a roadmap stage folder or a runs folder."""
    found = sorted(p.parent for p in directory.glob("*/model.safetensors"))
    if found:
        return f"; it holds a GPT run in {found[0]}: groundup sample {found[0]}"
    sibling = directory.parent / "transformer" / "gpt"
    if (directory / "report.html").exists() or (directory / "metrics.json").exists():
        if (sibling / "model.safetensors").exists():
            return (f"; {directory} is a roadmap stage folder, and the roadmap's GPT is in {sibling}: "
                    f"groundup sample {sibling}")
        return (f"; {directory} is a roadmap stage folder: `groundup run transformer` trains the roadmap's GPT "
                f"(into runs/transformer/gpt), or train one with `groundup train gpt --out runs/my-gpt`")
    return "; train one with `groundup train gpt --out runs/my-gpt`"


def sample_command(args: argparse.Namespace) -> int:
    """``groundup sample DIR``: print the prompt and its continuation."""
    from groundup.models.gpt import GPTConfig
    from groundup.models.gpt_fast import FastGPT
    from groundup.tokenizers import UnknownTokenError
    from groundup.train.checkpoint import config_from_dict, load_checkpoint, read_checkpoint_config

    directory = Path(args.dir)
    if not directory.is_dir():
        raise UsageError(f"{directory}: no such directory")
    if not (directory / "model.safetensors").exists():
        raise UsageError(f"{directory} holds no trained GPT (no model.safetensors){_stage_hint(directory)}")
    saved = read_checkpoint_config(directory)
    if "model_type" in saved:  # a transformers config (save_pretrained, `groundup export --to hf`)
        raise UsageError(f"{directory} is a Hugging Face transformers directory (model_type "
                         f"{saved['model_type']!r}), not a groundup run: `groundup import {directory} RUN_DIR` "
                         f"turns it into one, then `groundup sample RUN_DIR`")
    if isinstance(saved.get("model"), dict):  # a config that nests the model's
        saved = saved["model"]
    cfg = config_from_dict(GPTConfig, saved, directory / "config.json")
    tokenizer = load_tokenizer(directory)
    model = FastGPT(cfg)  # the fused twin of the readable GPT (same weights, faster)
    load_checkpoint(directory, model, check_values=not args.no_weight_check)
    try:
        prompt = tokenizer.encode(args.prompt) if args.prompt is not None else []
    except (UnknownTokenError, KeyError) as err:
        raise UsageError(f"--prompt: {' '.join(str(err).split())}") from None
    prompt = prompt or [start_id(tokenizer)]
    seed = args.seed
    if seed is None and args.temperature > 0 and args.max_new_tokens > 0:   # greedy needs no seed
        seed = int(np.random.SeedSequence().entropy % (MAX_SEED + 1))         # fresh from the OS
        print(f"seed {seed} (--seed {seed} gives this sample again)", file=sys.stderr)
    out = model.generate(np.array([prompt]), args.max_new_tokens, temperature=args.temperature,
                         top_k=args.top_k, top_p=args.top_p, seed=seed, use_cache=not args.no_cache)
    print(for_terminal(decode(tokenizer, out.numpy()[0].tolist()), sys.stdout))
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


def _check_writable_file(path: Path, flag: str) -> None:
    """Refuse, before any work, a path the record could not be written to."""
    if not str(path).strip():
        raise UsageError(f"{flag} is empty")
    if path.is_dir():
        raise UsageError(f"{flag} {path}: is a directory")
    probe = path.parent
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise UsageError(f"{flag} {path}: {probe} is a file, so {path.parent} cannot be created")
    import os

    if not os.access(probe, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise UsageError(f"{flag} {path}: not writable")


def bench_command(args: argparse.Namespace) -> int:
    """``groundup bench gpt``: time training and generation against PyTorch; print and write the record."""
    from groundup.train.files import write_atomic

    if args.what == "gpt" and args.runs != 1:
        raise UsageError("--runs applies to the families and `all`; for the GPT alone raise --iters")
    if args.what != "gpt" and args.batch_size is not None:
        raise UsageError(f"--batch-size applies to `groundup bench gpt` only; {args.what} uses its stage's batch size")
    default = f"bench-gpt-{args.preset}.json" if args.what == "gpt" else f"bench-{args.what}.json"
    path = Path(args.json) if args.json is not None else Path("runs") / default
    _check_writable_file(path, "--json")
    if importlib.util.find_spec("torch") is None:
        raise UsageError("`groundup bench` compares against PyTorch, which is not installed: pip install torch "
                         "(CPU wheels: --index-url https://download.pytorch.org/whl/cpu)")
    try:
        bench = load_benchmark_module("bench_gpt" if args.what == "gpt" else "bench_families")
    except FileNotFoundError as err:
        raise UsageError(str(err)) from None
    if args.what != "gpt":
        families = bench.FAMILIES if args.what == "all" else (args.what,)
        threads = {} if args.threads is None else {"torch_threads": args.threads, "groundup_threads": args.threads}
        record = bench.run_repeated(families, args.runs, iters=args.iters, warmup=args.warmup,
                                    memory=not args.no_memory, **threads)
    else:
        record = bench.run(preset=args.preset, iters=args.iters, batch_size=args.batch_size,
                           gen_tokens=args.gen_tokens, gen_rounds=args.gen_rounds, memory=not args.no_memory,
                           warmup=args.warmup, threads=args.threads)
    print(bench.format_table(record))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path.parent, path.name, json.dumps(record, indent=1) + "\n")
    print(f"record written to {path}")
    return 0
