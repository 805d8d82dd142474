"""Scale-out: train groundup's GPT as its PyTorch twin with torch.distributed DDP, launched by torchrun.

    # 2 processes on this CPU (gloo); the flags are `groundup train gpt`'s
    torchrun --standalone --nproc_per_node 2 -m groundup.interop.ddp \\
        --data shakespeare --preset baby --out runs/gpt-ddp --max-iters 2000
    # the same run in one process (no torchrun), for comparison
    python -m groundup.interop.ddp --data shakespeare --preset baby --out runs/gpt-1proc --max-iters 2000
    groundup sample runs/gpt-ddp

For N GPUs on one node: ``--device cuda`` (each rank takes ``cuda:LOCAL_RANK``, the backend becomes
NCCL) and ``--nproc_per_node N``. For several nodes: the same command on every node with
``--nnodes M --node_rank K --rdzv-endpoint HOST:PORT`` in place of ``--standalone``. Nothing else.

Everything but the arithmetic is ``groundup train gpt``'s: the text, tokenizer and 90/10 split; the
model and training presets and the ``--model.*`` / ``--train.*`` overrides; the initial weights (a
groundup ``GPT`` built under ``gu.manual_seed(seed)``, copied into ``TorchGPT``); the batches
(``default_rng(seed)``, one ``get_batch`` of the *global* batch size per step); the learning-rate
schedule, AdamW with weight decay on ndim >= 2 parameters only, clipping of the global gradient norm;
the evaluation (mean loss over ``eval_iters`` fixed batches per split, generators
``default_rng([seed, 1])`` and ``[seed, 2]``); and the run directory: model.safetensors +
config.json + state.json (a groundup checkpoint), the tokenizer, run.json, metrics.jsonl (the same
``train`` and ``eval`` records) and summary.json.

Data parallelism: every rank draws the same global batch of B sequences and keeps rows
``rank * B/W .. (rank + 1) * B/W``; DDP averages the gradients, so each step equals one step on the
whole batch in one process, and the logged loss is the mean over ranks (all-reduced). With dropout
0 the losses of a W-process run and a one-process run agree to float rounding; with dropout each
rank draws its own masks (``torch.manual_seed(seed + rank)``), so they agree only in distribution.
The optimizer state stays in torch: the checkpoint holds the weights, not a resumable optimizer.

References: PyTorch DistributedDataParallel and torchrun docs
(https://pytorch.org/docs/stable/notes/ddp.html, https://pytorch.org/docs/stable/elastic/run.html).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["main", "parse_args"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The flags of ``groundup train gpt`` (its own parser, so they can never drift apart)."""
    from groundup import commands

    parser = argparse.ArgumentParser(prog="python -m groundup.interop.ddp", allow_abbrev=False)
    sub = parser.add_subparsers(dest="command")
    commands.register(sub)
    return parser.parse_args(["train", "gpt", *(sys.argv[1:] if argv is None else argv)])


def _dotted(args: argparse.Namespace, prefix: str) -> dict[str, str]:
    head = f"{prefix}__"
    return {k[len(head):]: v for k, v in vars(args).items() if k.startswith(head) and v is not None}


def _configs(args: argparse.Namespace, vocab_size: int) -> tuple[Any, Any]:
    from groundup.commands import TRAIN_PRESETS, apply_overrides
    from groundup.models.gpt import GPTConfig
    from groundup.train import TrainConfig

    model_cfg = apply_overrides(GPTConfig.preset(args.preset, vocab_size=vocab_size), _dotted(args, "model"), "model")
    shorthand = {"max_iters": args.max_iters, "batch_size": args.batch_size, "lr": args.lr, "device": args.device,
                 "seed": args.seed}                  # None = not given: the preset's (or TrainConfig's) value
    train_cfg = TrainConfig(**{**TRAIN_PRESETS[args.preset], **{k: v for k, v in shorthand.items() if v is not None},
                               "out_dir": str(args.out), "progress": False})
    return model_cfg, apply_overrides(train_cfg, _dotted(args, "train"), "train")


def _tokenizer(kind: str, text: str, bpe_vocab_size: int) -> Any:
    from groundup.tokenizers import ByteLevelBPE, CharTokenizer

    return CharTokenizer(text) if kind == "char" else ByteLevelBPE.train(text, vocab_size=bpe_vocab_size)


def main(argv: list[str] | None = None) -> int:
    """Train on this process's rank (torchrun's environment) or alone; returns the exit code."""
    from groundup.interop import MissingDependency, require

    try:
        torch = require("torch", "DDP training")
    except MissingDependency as err:
        print(f"groundup: error: {err}", file=sys.stderr)
        return 1
    import torch.distributed as dist
    from torch.nn import functional as F
    from torch.nn.parallel import DistributedDataParallel

    import groundup as gu
    from groundup.commands import VAL_FRACTION
    from groundup.data import get_batch, load_text
    from groundup.interop.torch_gpt import TorchGPT
    from groundup.models.gpt import GPT
    from groundup.optim.schedule import scheduled_lr
    from groundup.train import save_checkpoint

    args = parse_args(argv)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    leader = rank == 0

    def fail(message: str) -> int:
        if leader:
            print(f"groundup: error: {message}", file=sys.stderr)
        return 2

    if args.resume:
        return fail("--resume is not supported by DDP training (the optimizer state stays in torch)")
    out = Path(str(args.out))
    if out.is_dir() and any(out.iterdir()) and not getattr(args, "replace", False):
        return fail(f"--out {out} is not empty; give a new directory, or --replace to move the old one aside")
    try:
        text = load_text(args.data)
        tokenizer = _tokenizer(args.tokenizer, text, args.bpe_vocab_size)
        model_cfg, train_cfg = _configs(args, tokenizer.vocab_size)
    except Exception as err:  # noqa: BLE001 - bad flags or data: one line, as `groundup train` says it
        return fail(str(err))
    if train_cfg.device == "cuda" and not torch.cuda.is_available():
        return fail("--device cuda: torch sees no CUDA GPU")
    B, T = train_cfg.batch_size, model_cfg.block_size
    if B % world:
        return fail(f"the global batch size {B} must be divisible by the {world} processes")
    if train_cfg.optimizer != "adamw":
        return fail(f"DDP training uses AdamW, as groundup train gpt does; got --train.optimizer={train_cfg.optimizer}")
    ids = np.asarray(tokenizer.encode(text), dtype=np.int64)
    cut = int(len(ids) * (1 - VAL_FRACTION))
    splits = {"train": ids[:cut], "val": ids[cut:]}
    for name, data in splits.items():
        if len(data) <= T:
            return fail(f"the {name} split has {len(data)} tokens, fewer than block_size + 1 = {T + 1}")

    if train_cfg.device == "cuda":
        device = torch.device(f"cuda:{local_rank}")
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        dist.barrier()           # every rank has checked --out before rank 0 writes into it
    torch.manual_seed(train_cfg.seed + rank)            # dropout masks only; the weights come from groundup

    gu.manual_seed(train_cfg.seed)                      # the initial weights of `groundup train gpt`
    start_weights = GPT(model_cfg).state_dict()
    model = TorchGPT(model_cfg).to(device)
    model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in start_weights.items()})
    net = DistributedDataParallel(model, device_ids=[local_rank] if device.type == "cuda" else None) \
        if world > 1 else model
    params = list(model.parameters())
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": train_cfg.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=train_cfg.lr, betas=train_cfg.betas, foreach=False)

    metrics_path = out / "metrics.jsonl"
    if leader:
        if out.is_dir() and any(out.iterdir()):                           # --replace: keep the old run
            n = 1
            while out.with_name(f"{out.name}.old-{n}").exists():
                n += 1
            out.rename(out.with_name(f"{out.name}.old-{n}"))
        out.mkdir(parents=True, exist_ok=True)
        tokenizer.save(out)
        run = {"data": args.data, "tokenizer": args.tokenizer, "preset": args.preset, "engine": "torch-ddp",
               "world_size": world, "backend": "nccl" if device.type == "cuda" else "gloo",
               "train_tokens": int(cut), "val_tokens": int(len(ids) - cut), "model": model_cfg.to_dict(),
               "train": train_cfg.to_dict()}
        (out / "run.json").write_text(json.dumps(run, indent=1) + "\n")
        print(f"GPT {args.preset} on {world} process(es) ({run['backend']}): {sum(p.numel() for p in params):,} "
              f"parameters, global batch {B} ({B // world} per process) -> {out}", file=sys.stderr)

    def record(entry: dict[str, Any]) -> None:
        if leader:
            with open(metrics_path, "a") as f:
                f.write(json.dumps(entry) + "\n")

    def lr_at(it: int) -> float:
        return scheduled_lr(train_cfg.schedule, it, train_cfg.lr, train_cfg.min_lr, train_cfg.warmup_iters,
                            train_cfg.decay_iters)

    def evaluate() -> dict[str, float]:
        """Trainer.evaluate's batches and mean, on the whole global batch, rank 0 only."""
        model.eval()
        losses = {}
        with torch.no_grad():
            for index, split in enumerate(("train", "val")):
                rng = np.random.default_rng([train_cfg.seed, index + 1])
                values = []
                for _ in range(train_cfg.eval_iters):
                    x, y = get_batch(splits[split], B, T, rng)
                    values.append(float(model.loss(torch.from_numpy(x).to(device), torch.from_numpy(y).to(device))))
                losses[split] = float(np.mean(values))
        model.train()
        return losses

    rng = np.random.default_rng(train_cfg.seed)       # the Trainer's batch generator
    rows = slice(rank * (B // world), (rank + 1) * (B // world))
    start = time.perf_counter()
    last: dict[str, float] = {}
    best_val: float | None = None
    window_s, window_tokens = 0.0, 0
    model.train()
    for it in range(train_cfg.max_iters + 1):
        if it % train_cfg.eval_interval == 0 or it == train_cfg.max_iters:
            if leader:
                last = evaluate()
                best_val = last["val"] if best_val is None else min(best_val, last["val"])
                record({"kind": "eval", "iter": it, "lr": lr_at(it), "train_loss": last["train"],
                        "val_loss": last["val"], "wall_s": time.perf_counter() - start})
                print(f"iter {it}: train loss {last['train']:.4f}, val loss {last['val']:.4f}", file=sys.stderr,
                      flush=True)
        if it == train_cfg.max_iters:
            break
        step_start = time.perf_counter()
        lr = lr_at(it)
        for group in optimizer.param_groups:
            group["lr"] = lr
        x, y = get_batch(splits["train"], B, T, rng)                       # the global batch (B, T)
        xs, ys = torch.from_numpy(x[rows]).to(device), torch.from_numpy(y[rows]).to(device)   # this rank's rows
        logits = net(xs)                                                   # (B/W, T, V)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ys.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()                                                    # DDP all-reduces (averages) the grads
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, train_cfg.grad_clip)) \
            if train_cfg.grad_clip > 0 else None
        optimizer.step()
        value = loss.detach().clone()
        if world > 1:
            dist.all_reduce(value)
            value /= world
        loss_value = float(value)
        if not math.isfinite(loss_value):
            return fail(f"the loss is {loss_value} at iteration {it} (lr {lr:.3g}); lower the learning rate")
        window_s += time.perf_counter() - step_start
        window_tokens += B * T
        if (it + 1) % train_cfg.log_interval == 0 or it + 1 == train_cfg.max_iters:
            record({"kind": "train", "iter": it + 1, "lr": lr, "loss": loss_value, "grad_norm": grad_norm,
                    "tokens_per_s": window_tokens / window_s if window_s > 0 else 0.0,
                    "wall_s": time.perf_counter() - start})
            window_s, window_tokens = 0.0, 0

    if leader:
        trained = GPT(model_cfg)
        trained.load_state_dict({k: v.detach().cpu().numpy() for k, v in model.state_dict().items()})
        save_checkpoint(out, trained, config=model_cfg,
                        state={"iter": train_cfg.max_iters, "engine": "torch-ddp", "world_size": world})
        summary = {"train_loss": last.get("train"), "val_loss": last.get("val"), "best_val_loss": best_val,
                   "iters": train_cfg.max_iters, "wall_s": time.perf_counter() - start, "world_size": world,
                   "config": train_cfg.to_dict()}
        (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
        from groundup.roadmap.train_report import write_training_report

        report = write_training_report(out)                     # loss.png and report.html, as `groundup train`
        losses = f"val loss {last['val']:.4f}, train loss {last['train']:.4f}" if last else "no evaluation"
        print(f"done: {train_cfg.max_iters:,} iters on {world} process(es) in {summary['wall_s']:.1f} s; {losses}")
        print(f"report: {report}\nnext: groundup sample {out}")
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
