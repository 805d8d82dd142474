"""``groundup export`` and ``groundup import``: a run directory to Hugging Face / PyTorch and back.

    groundup export runs/gpt-baby --to hf out/gpt-baby-hf          # transformers loads it offline
    groundup export runs/gpt-baby --to hf out/gpt-baby-hf --verify # and check logits against groundup's
    groundup export runs/gpt-baby --to torch out/gpt-baby-torch    # TorchGPT source + the same state_dict
    groundup import out/gpt-baby-hf runs/from-hf                   # back: `groundup sample runs/from-hf`

Errors follow the other commands: one line ``groundup: error: ...`` on stderr, exit 2 for bad input
(a missing directory, a model that cannot be exported or imported, with the reason) and 1 for a
failure at run time (a missing optional package, a failed --verify); no tracebacks.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["add_parsers", "register", "export_command", "import_command", "VERIFY_TOLERANCE"]

VERIFY_TOLERANCE = 1e-4     # max |logit difference| --verify accepts (float32; the tests hold 1e-5)


def _error(message: str, code: int = 2) -> int:
    print(f"groundup: error: {message}", file=sys.stderr)
    return code


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Add ``export`` and ``import`` to the ``groundup`` parser."""
    p = subparsers.add_parser(
        "export", allow_abbrev=False, help="write a trained GPT as a Hugging Face or PyTorch model",
        description="Convert the GPT (and tokenizer) in RUN_DIR. --to hf: a transformers directory "
                    "(GPT2LMHeadModel for learned, sinusoidal or no positions; GPTNeoXForCausalLM for rotary) "
                    "that AutoModelForCausalLM and AutoTokenizer load offline. --to torch: model.safetensors "
                    "(the same state_dict), config.json and torch_gpt.py, a torch.nn.Module twin. Post-norm and "
                    "non-causal models have no transformers equivalent and are refused.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="run directory written by `groundup train gpt`")
    p.add_argument("--to", choices=("hf", "torch"), required=True, help="target format")
    p.add_argument("out_dir", metavar="OUT_DIR",
                   help="directory to write: new, empty, or an earlier export (created if needed; a run is refused)")
    p.add_argument("--verify", action="store_true",
                   help="(--to hf) load the export with transformers and compare its logits with groundup's "
                        f"on a random batch (needs torch and transformers; fails above {VERIFY_TOLERANCE:g})")
    p.set_defaults(handler=export_command)

    p = subparsers.add_parser(
        "import", allow_abbrev=False, help="turn a Hugging Face GPT-2 (or exported) directory into a run directory",
        description="Read a transformers directory (config.json, model.safetensors and a tokenizer: vocab.json + "
                    "merges.txt or tokenizer.json), e.g. one written by save_pretrained or `groundup export --to "
                    "hf`, and write a groundup run directory that `groundup sample` and `groundup explore` use. "
                    "GPT2LMHeadModel and GPTNeoXForCausalLM (rotary_pct 1.0, sequential residual, tanh GELU) "
                    "map exactly; anything else is refused with the reason.")
    p.add_argument("hf_dir", metavar="HF_DIR", help="transformers model directory")
    p.add_argument("out_dir", metavar="OUT_DIR",
                   help="run directory to write: new, empty, or an earlier import (a training run is refused)")
    p.set_defaults(handler=import_command)


register = add_parsers     # groundup.cli calls each command group's register(subparsers)


# Files that make a directory a groundup run (a training run, an import, a roadmap stage); an export writes none.
RUN_FILES = ("state.json", "run.json", "metrics.jsonl", "metrics.json", "summary.json", "optimizer.safetensors")


def export_command(args: argparse.Namespace) -> int:
    """``groundup export RUN_DIR --to hf|torch OUT_DIR``: returns the exit code."""
    from groundup.interop import MissingDependency
    from groundup.interop.hf import ExportError, export_hf, load_run, verify_hf
    from groundup.interop.torch_export import export_torch
    from groundup.train.checkpoint import CheckpointError

    run_dir, out_dir = Path(args.run_dir), Path(args.out_dir)
    if not run_dir.is_dir():
        return _error(f"{run_dir}: no such run directory")
    if args.verify and args.to != "hf":
        return _error("--verify checks a Hugging Face export: use it with --to hf")
    if out_dir.resolve() == run_dir.resolve():
        return _error("OUT_DIR must differ from RUN_DIR (the export would overwrite the run's files)")
    if out_dir.exists() and not out_dir.is_dir():
        return _error(f"OUT_DIR {out_dir} is a file; give a new or empty directory (or an earlier export)")
    held = [name for name in RUN_FILES if (out_dir / name).is_file()]
    if held:
        return _error(f"OUT_DIR {out_dir} holds a groundup run ({', '.join(held)}), whose files the export would "
                      "overwrite or mix with its own; give a new or empty directory (or an earlier export)")
    try:
        model, tokenizer = load_run(run_dir)
        if args.to == "hf":
            export_hf(model, out_dir, tokenizer=tokenizer)
        else:
            export_torch(model, out_dir, tokenizer=tokenizer)
    except (ExportError, CheckpointError, FileNotFoundError, ValueError, KeyError) as err:
        return _error(f"cannot export {run_dir}: {err}")
    except OSError as err:
        return _error(f"writing {out_dir}: {err}", 1)
    what = {"hf": "transformers", "torch": "PyTorch (torch_gpt.TorchGPT)"}[args.to]
    note = "" if tokenizer is not None else " (the run has no tokenizer: model only)"
    print(f"exported {run_dir} -> {out_dir} as a {what} model{note}")
    if args.verify:
        try:
            diff = verify_hf(model, out_dir)
        except MissingDependency as err:
            return _error(str(err), 1)
        if not diff <= VERIFY_TOLERANCE:
            return _error(f"--verify: transformers' logits differ from groundup's by {diff:.3g} "
                          f"(> {VERIFY_TOLERANCE:g})", 1)
        print(f"verified: max |logit difference| {diff:.3g} against transformers")
    return 0


def import_command(args: argparse.Namespace) -> int:
    """``groundup import HF_DIR OUT_DIR``: returns the exit code."""
    from groundup.interop.hf import ImportRefused, import_hf

    hf_dir, out_dir = Path(args.hf_dir), Path(args.out_dir)
    if not hf_dir.is_dir():
        return _error(f"{hf_dir}: no such directory")
    if out_dir.resolve() == hf_dir.resolve():
        return _error("OUT_DIR must differ from HF_DIR")
    try:
        import_hf(hf_dir, out_dir)
    except (ImportRefused, FileNotFoundError, FileExistsError, ValueError, KeyError) as err:
        return _error(f"cannot import {hf_dir}: {err}")
    except OSError as err:
        return _error(f"writing {out_dir}: {err}", 1)
    print(f"imported {hf_dir} -> {out_dir}: run `groundup sample {out_dir}`")
    return 0
