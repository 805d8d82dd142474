"""Train the PyTorch reference GPT exactly as ``groundup train gpt`` trains groundup's: a quality oracle.

    python benchmarks/train_torch_gpt.py --preset baby --max-iters 2000 --json runs/torch-gpt-baby.json
    python benchmarks/train_torch_gpt.py --preset baby --pos-encoding learned --seed 1

Everything except the model and its optimizer is groundup's, so the two runs differ only in the
arithmetic: the same text, character tokenizer and 90/10 split; the same initial weights (a groundup
``GPT`` built under ``gu.manual_seed(seed)``, copied into ``torch_gpt.TorchGPT``); the same training
batches (``np.random.default_rng(seed)``, one ``get_batch`` per step, as the Trainer draws them); the
same learning-rate schedule (``groundup.optim.schedule.scheduled_lr``); AdamW with weight decay on
parameters with ndim >= 2 only; clipping of the global gradient norm; and the same evaluation (the
mean loss over ``eval_iters`` fixed batches per split, generators ``default_rng([seed, 1])`` for train
and ``[seed, 2]`` for val). Prints the evaluation curve and writes it as JSON with ``--json``.

torch is imported at module import: run this only where torch is installed.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from torch_gpt import TorchGPT  # noqa: E402

import groundup as gu  # noqa: E402
from groundup.commands import TRAIN_PRESETS, VAL_FRACTION  # noqa: E402
from groundup.data import get_batch, load_text  # noqa: E402
from groundup.models.gpt import GPT, GPTConfig  # noqa: E402
from groundup.optim.schedule import scheduled_lr  # noqa: E402
from groundup.tokenizers import CharTokenizer  # noqa: E402


def evaluate(model: TorchGPT, splits: dict[str, np.ndarray], batch: int, block: int, seed: int,
             iters: int) -> dict[str, float]:
    """Mean loss over ``iters`` fixed batches per split, drawn as groundup's Trainer draws them."""
    model.eval()
    out = {}
    with torch.no_grad():
        for index, split in enumerate(("train", "val")):
            rng = np.random.default_rng([seed, index + 1])
            losses = []
            for _ in range(iters):
                x, y = get_batch(splits[split], batch, block, rng)
                losses.append(float(model.loss(torch.from_numpy(x), torch.from_numpy(y))))
            out[split] = float(np.mean(losses))
    model.train()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(TRAIN_PRESETS), default="baby", help="model and training preset")
    parser.add_argument("--data", default="shakespeare", help="'shakespeare', 'names' or a path to a .txt file")
    parser.add_argument("--max-iters", type=int, default=None, help="training steps (default: the preset's)")
    parser.add_argument("--seed", type=int, default=1337, help="initial weights, batches and evaluation batches")
    parser.add_argument("--pos-encoding", choices=("learned", "rotary", "none"), default=None,
                        help="override the preset's position encoding")
    parser.add_argument("--eval-interval", type=int, default=None, help="steps between evaluations")
    parser.add_argument("--eval-iters", type=int, default=None, help="batches per split in an evaluation")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--json", type=Path, default=None, help="write the curve and the final losses here")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    recipe = dict(TRAIN_PRESETS[args.preset])
    max_iters = args.max_iters if args.max_iters is not None else recipe["max_iters"]
    eval_interval = args.eval_interval or recipe["eval_interval"]
    eval_iters = args.eval_iters or recipe["eval_iters"]
    decay_iters = recipe["lr_decay_iters"] or max_iters

    text = load_text(args.data)
    tokenizer = CharTokenizer(text)
    ids = np.asarray(tokenizer.encode(text), dtype=np.int64)
    cut = int(len(ids) * (1 - VAL_FRACTION))
    splits = {"train": ids[:cut], "val": ids[cut:]}
    overrides = {"vocab_size": tokenizer.vocab_size, "dropout": 0.0}
    if args.pos_encoding is not None:
        overrides["pos_encoding"] = args.pos_encoding
    cfg = GPTConfig.preset(args.preset, **overrides)
    B, T = recipe["batch_size"], cfg.block_size

    gu.manual_seed(args.seed)                                   # groundup's initial weights, copied over
    state = GPT(cfg).state_dict()
    model = TorchGPT(cfg)
    model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()})
    params = list(model.parameters())
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": recipe["weight_decay"]},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=recipe["lr"], betas=recipe["betas"], foreach=False)
    rng = np.random.default_rng(args.seed)

    curve = []
    start = time.perf_counter()
    for it in range(max_iters + 1):
        if it % eval_interval == 0 or it == max_iters:
            losses = evaluate(model, splits, B, T, args.seed, eval_iters)
            curve.append({"iter": it, "train_loss": losses["train"], "val_loss": losses["val"],
                          "wall_s": time.perf_counter() - start})
            print(f"iter {it}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}", flush=True)
        if it == max_iters:
            break
        lr = scheduled_lr("cosine", it, recipe["lr"], recipe["min_lr"], recipe["warmup_iters"], decay_iters)
        for group in optimizer.param_groups:
            group["lr"] = lr
        x, y = get_batch(splits["train"], B, T, rng)
        loss = model.loss(torch.from_numpy(x), torch.from_numpy(y))
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"the loss is {loss.item()} at iteration {it}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, recipe["grad_clip"])
        optimizer.step()
    record = {"preset": args.preset, "seed": args.seed, "pos_encoding": cfg.pos_encoding, "iters": max_iters,
              "val_loss": curve[-1]["val_loss"], "train_loss": curve[-1]["train_loss"],
              "wall_s": time.perf_counter() - start, "curve": curve}
    print(json.dumps({k: v for k, v in record.items() if k != "curve"}))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
