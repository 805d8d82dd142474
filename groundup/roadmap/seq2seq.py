"""Sequence-to-sequence on the date task, shared by the attention and transformer stages.

    codec = DateCodec()                                            # groundup.data.synthetic
    history = train_seq2seq(ctx, model, train_pairs, codec, iters=1200, lr=3e-3, batch_size=64,
                            rng=ctx.rng(10), description="GRU encoder-decoder")
    result = evaluate_seq2seq(model, test_pairs, codec, ctx.device)  # greedy decoding, exact match
    buckets = bucket_accuracy(result["correct"], lengths)            # accuracy by input length

Training goes through the Trainer (``groundup.roadmap.training``): Adam, warmup and cosine decay to
lr/10, clipping at 1, teacher forcing on batches of similar lengths.
"""

from __future__ import annotations

from typing import Any

import numpy as np

import groundup as gu
from groundup import optim
from groundup.data.synthetic import DateCodec
from groundup.models.seq2seq import IGNORE_INDEX
from groundup.nn import Module
from groundup.roadmap.runner import Context
from groundup.roadmap.training import train
from groundup.train.evaluation import evaluating

__all__ = ["BUCKET_EDGES", "TARGET_LEN", "DateCodec", "length_batches", "train_seq2seq", "evaluate_seq2seq",
           "bucket_accuracy"]

# Input-length buckets (characters): (0, 10], (10, 15], ..., (45, inf).
BUCKET_EDGES = (0, 10, 15, 20, 30, 45, 10_000)
TARGET_LEN = 10  # "YYYY-MM-DD"


def length_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """One epoch of batches of similar lengths: sort by length (random tie order), cut, shuffle the batches.

    Batches of similar lengths waste little padding, so the recurrent steps are spent on real tokens.
    """
    order = np.lexsort((rng.random(len(lengths)), lengths))
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    return [batches[k] for k in rng.permutation(len(batches))]


def train_seq2seq(ctx: Context, model: Module, pairs: list[tuple[str, str]], codec: DateCodec, *, iters: int,
                  lr: float, batch_size: int, rng: np.random.Generator, description: str,
                  seed_offset: int = 0) -> dict[str, Any]:
    """Adam with warmup + cosine decay to lr/10, clipping at 1, teacher forcing on length-bucketed batches.

    Returns:
        {"train_loss": the loss of every step, "wall_s": training time}.
    """
    model.to(ctx.device)
    lengths = np.array([len(text) for text, _ in pairs])
    plan: list[np.ndarray] = []

    def get_batch(split: str, _: np.random.Generator) -> tuple[np.ndarray, ...]:
        if not plan:
            plan.extend(length_batches(lengths, batch_size, rng))
        b = codec.batch([pairs[i] for i in plan.pop()])
        return b["src"], b["src_mask"], b["tgt_in"], b["tgt_out"]

    losses: list[float] = []
    trainer = train(ctx, model, get_batch, steps=iters, lr=lr, warmup=min(100, iters // 10), grad_clip=1.0,
                    description=description, optimizer=optim.Adam(model.parameters(), lr=lr), seed_offset=seed_offset,
                    callbacks=[lambda t, event, info: losses.append(info["loss"]) if event == "step" else None],
                    data_parallel=lambda src, mask, tgt_in, tgt_out: (tgt_out != IGNORE_INDEX).sum())   # target tokens
    return {"train_loss": losses, "wall_s": trainer.wall_s()}


def evaluate_seq2seq(model: Module, pairs: list[tuple[str, str]], codec: DateCodec, device: str = "cpu",
                     batch_size: int = 500) -> dict[str, Any]:
    """Greedy decoding of every pair.

    Returns:
        predictions (list of str), correct (N,) bool exact match, char_accuracy (N,) fraction of the ten
        characters right, weights (list of (11, len(source)) arrays, attention only; else None).
    """
    order = np.argsort([len(text) for text, _ in pairs], kind="stable")   # similar lengths per batch
    by_index: dict[int, tuple[str, Any]] = {}
    with evaluating(model):
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            b = codec.batch([pairs[i] for i in rows])
            ids, attn = model.greedy_decode(gu.tensor(b["src"], device=device), b["src_mask"], TARGET_LEN + 1)
            for k, i in enumerate(rows):
                length = int(b["src_mask"][k].sum())
                by_index[int(i)] = (codec.decode(ids[k]), None if attn is None else attn[k, :, :length])
    preds = [by_index[i][0] for i in range(len(pairs))]
    has_weights = any(by_index[i][1] is not None for i in range(len(pairs)))
    weights = [by_index[i][1] for i in range(len(pairs))] if has_weights else None
    correct = np.array([p == iso for p, (_, iso) in zip(preds, pairs)])
    char_acc = np.array([sum(a == b for a, b in zip(p.ljust(TARGET_LEN), iso)) / TARGET_LEN
                         for p, (_, iso) in zip(preds, pairs)])
    return {"predictions": preds, "correct": correct, "char_accuracy": char_acc, "weights": weights}


def bucket_accuracy(correct: np.ndarray, lengths: np.ndarray) -> list[dict[str, Any]]:
    """Exact-match accuracy per input-length bucket (``BUCKET_EDGES``); empty buckets are left out."""
    rows = []
    for low, high in zip(BUCKET_EDGES[:-1], BUCKET_EDGES[1:]):
        inside = (lengths > low) & (lengths <= high)
        if inside.any():
            label = f"{low + 1}-{min(high, int(lengths.max()))}" if high < 10_000 else f"{low + 1}+"
            rows.append({"bucket": label, "low": low + 1, "high": int(min(high, lengths.max())),
                         "n": int(inside.sum()), "accuracy": float(correct[inside].mean())})
    return rows
