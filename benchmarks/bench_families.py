"""Benchmark: every model family the roadmap trains, groundup against its PyTorch twin, in one process.

    python benchmarks/bench_families.py all           (or: groundup bench all / groundup bench gru ...)

Families and sizes (those of the roadmap stages, groundup/roadmap/stages/*.py):

    mlp          MLP 64 -> 256 -> 10 (ReLU), batch 64 of 8x8 digits, Adam           (stage mlp)
    cnn          CNN conv 16, conv 32 (3x3, ReLU, max-pool 2), batch 64 of 8x8 digits, Adam   (stage cnn)
    rnn/gru/lstm RNNLM embedding 64, hidden 128, batch 64 of names (27 ids, T <= 16), AdamW, clip 1   (stage rnn)
    seq2seq      GRU encoder-decoder with additive attention, embedding 32, hidden 24, attention 32,
                 batch 64 of dates (length-bucketed), Adam, clip 1                   (stage attention)
    transformer  pre-norm encoder-decoder, d_model 64, 4 heads, 2 + 2 layers, feed-forward 128,
                 batch 64 of dates, Adam, clip 1                                     (stage transformer)
    bert         BERT 2 layers, 4 heads, 128 dims (post-norm, exact GELU), batch 16 x 64 tokens, 15% MLM
                 labels, some rows padded, AdamW, clip 1 (BERTConfig's defaults), FastBERT (the fused twin)
    gpt          the baby GPT, FastGPT against PyTorch with SDPA (benchmarks/bench_gpt.py)

Method (BENCHMARKS.md "Method"): both contenders start from the same weights (groundup's, copied
into the twin of benchmarks/torch_families.py) and see the same batches; after warm-up
the contenders take turns of 4 steps (the first of each turn untimed) and the medians (with min and max)
are reported. A step is what the stage's loop does: forward, backward, clipping where the stage
clips, the optimizer's update (PyTorch's fused Adam / AdamW, its fastest on the CPU:
``bench_machine.torch_optimizer``). Dropout is 0 on both sides. groundup runs inside
``groundup.parallel.cpu_threads()`` (the roadmap's and the Trainer's CPU setup), PyTorch with
``torch.set_num_threads(2)``. ``ratio`` = groundup's rate / PyTorch's (> 1: groundup is faster).
Peak memory: each contender trains two steps in a fresh subprocess that reports its peak resident
set size above the one after imports (``--no-memory`` skips it). The load average is recorded
before and after each family; when other processes held the cores the ratio is marked unreliable.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import bench_machine  # noqa: E402 - beside this file

FAMILIES = ("mlp", "cnn", "rnn", "gru", "lstm", "seq2seq", "transformer", "gpt", "bert")
DEFAULT_ITERS = {"mlp": 200, "cnn": 60, "rnn": 40, "gru": 40, "lstm": 40, "seq2seq": 20, "transformer": 20,
                 "gpt": 30, "bert": 20}
DEFAULT_WARMUP = 3
# families whose step is large enough for DataParallel over worker processes to pay (a third contender)
DP_FAMILIES = ("rnn", "gru", "lstm", "seq2seq", "transformer", "bert")
TORCH_THREADS = 2                               # BENCHMARKS.md: torch.set_num_threads(2) on the 2-core machine

Batch = tuple[np.ndarray, ...]
IGNORE_INDEX = -1                               # target id of padding (the models' IGNORE_INDEX)
# The stages' recipes (groundup/roadmap/classify.py MLP_RECIPE, roadmap/stages/cnn.py CNN_RECIPE), written
# out so that the bench does not follow the roadmap's internal layout.
MLP_RECIPE = {"hidden_sizes": (256,), "lr": 3e-3, "batch_size": 64}
CNN_RECIPE = {"channels": (16, 32), "lr": 1e-2, "batch_size": 64}


@dataclass
class Contest:
    """One family's contenders: the same batches, a training step per contender, what a batch counts."""

    family: str
    description: str
    unit: str                                   # "samples" or "tokens"
    config: dict[str, Any]
    batches: list[Batch]
    units: Callable[[Batch], int]
    steps: dict[str, Callable[[Batch], None]] = field(default_factory=dict)
    losses: dict[str, Callable[[Batch], float]] = field(default_factory=dict)   # the loss alone, no update


# ----------------------------------------------------------------------------- step functions
def _groundup_step(model: Any, opt: Any, loss_fn: Callable[..., Any], clip: float | None) -> Callable[[Batch], None]:
    import groundup as gu
    from groundup.nn.utils import clip_grad_norm_

    params = [p for p in model.parameters() if p.requires_grad]

    def step(batch: Batch) -> None:
        loss = loss_fn(*(gu.tensor(a) if a.dtype != bool else a for a in batch))
        opt.zero_grad()
        loss.backward()
        if clip is not None:
            clip_grad_norm_(params, clip)
        opt.step()

    return step


def _torch_step(model: Any, opt: Any, loss_fn: Callable[..., Any], clip: float | None) -> Callable[[Batch], None]:
    import torch

    params = list(model.parameters())

    def step(batch: Batch) -> None:
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(*(torch.from_numpy(a) for a in batch))
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()

    return step


def _adam(framework: str, model: Any, lr: float, weight_decay: float | None = None,
          betas: tuple[float, float] = (0.9, 0.999)) -> Any:
    """Adam (weight_decay None) or AdamW of either framework, on every parameter."""
    if framework == "torch":
        import torch

        if weight_decay is None:                                         # fused: PyTorch's fastest (bench_machine)
            return bench_machine.torch_optimizer(torch, "Adam", model.parameters(), lr=lr, betas=betas)
        return bench_machine.torch_optimizer(torch, "AdamW", model.parameters(), lr=lr, betas=betas,
                                             weight_decay=weight_decay)
    from groundup import optim

    if weight_decay is None:
        return optim.Adam(model.parameters(), lr=lr, betas=betas)
    return optim.AdamW(model.parameters(), lr=lr, betas=betas, weight_decay=weight_decay)


def _groundup_dp_step(model: Any, opt: Any, count: Callable[..., Any], clip: float | None) -> Callable[[Batch], None]:
    """groundup's step with the forward and backward split by rows over worker processes (``DataParallel``)."""
    import groundup as gu
    from groundup.nn.utils import clip_grad_norm_
    from groundup.train import DataParallel

    params = [p for p in model.parameters() if p.requires_grad]
    split = DataParallel(model, count=count)

    def step(batch: Batch) -> None:
        opt.zero_grad()
        split(*(gu.tensor(a) if a.dtype != bool else a for a in batch))
        if clip is not None:
            clip_grad_norm_(params, clip)
        opt.step()

    return step


def _contenders(contest: Contest, which: Sequence[str], gu_model: Any, gu_loss: Callable[..., Any],
                make_twin: Callable[[], Any], opt_args: dict[str, Any], clip: float | None,
                count: Callable[..., Any] | None = None) -> Contest:
    """Add the groundup step, (with ``count``, the loss's items per block) groundup's step split over
    worker processes on a copy of the model, and (a copy of its weights in) the PyTorch twin's step.

    A twin whose parameter names differ from groundup's lists the differences in its ``RENAME``."""
    import copy

    import groundup as gu

    if "groundup_dp" in which and count is not None:
        dp_model = copy.deepcopy(gu_model)                           # the same initial weights, its own updates
        contest.steps["groundup_dp"] = _groundup_dp_step(dp_model, _adam("groundup", dp_model, **opt_args), count,
                                                         clip)
        contest.losses["groundup_dp"] = lambda batch: float(dp_model.loss(*(gu.tensor(a) if a.dtype != bool else a
                                                                            for a in batch)).item())
    if "groundup" in which:
        contest.steps["groundup"] = _groundup_step(gu_model, _adam("groundup", gu_model, **opt_args), gu_loss, clip)
        contest.losses["groundup"] = lambda batch: float(gu_loss(*(gu.tensor(a) if a.dtype != bool else a
                                                                   for a in batch)).item())
    if "torch" in which:
        import torch
        from torch_families import load_from_groundup

        twin = make_twin()
        load_from_groundup(twin, gu_model.state_dict(), getattr(twin, "RENAME", None))
        contest.steps["torch"] = _torch_step(twin, _adam("torch", twin, **opt_args), twin.loss, clip)
        contest.losses["torch"] = lambda batch: float(twin.loss(*(torch.from_numpy(a) for a in batch)).item())
    return contest


# ----------------------------------------------------------------------------- families
def _digits(n_batches: int, batch_size: int, seed: int) -> list[Batch]:
    from groundup.data import load_digits

    x, y = load_digits()                                            # (N, 8, 8) float32, (N,) int64
    rng = np.random.default_rng(seed)
    rows = [rng.choice(len(x), batch_size, replace=False) for _ in range(n_batches)]
    return [(np.ascontiguousarray(x[r], dtype=np.float32), y[r].astype(np.int64)) for r in rows]


def bench_mlp(n_batches: int, which: Sequence[str] = ("groundup", "torch"), seed: int = 0) -> Contest:
    """The mlp stage's MLP (MLP_RECIPE: 256 ReLU units, batch 64, Adam lr 3e-3) on 8x8 digits."""
    import groundup as gu
    from groundup.models.mlp import MLP, MLPConfig

    cfg = MLPConfig(in_features=64, hidden_sizes=tuple(MLP_RECIPE["hidden_sizes"]), num_classes=10)
    gu.manual_seed(seed)
    model = MLP(cfg)
    contest = Contest("mlp", f"MLP 64-{'-'.join(map(str, cfg.hidden_sizes))}-10 ReLU, Adam", "samples",
                      {"in_features": 64, "hidden_sizes": list(cfg.hidden_sizes),
                       "batch_size": MLP_RECIPE["batch_size"]},
                      _digits(n_batches, MLP_RECIPE["batch_size"], seed), lambda b: len(b[0]))

    def twin() -> Any:
        import torch_families
        return torch_families.MLP(64, cfg.hidden_sizes, 10)

    return _contenders(contest, which, model, model.loss, twin, {"lr": MLP_RECIPE["lr"]}, None)


def bench_cnn(n_batches: int, which: Sequence[str] = ("groundup", "torch"), seed: int = 0) -> Contest:
    """The cnn stage's CNN (CNN_RECIPE: channels 16, 32, batch 64, Adam lr 1e-2) on 8x8 digits."""
    import groundup as gu
    from groundup.models.cnn import CNN, CNNConfig

    cfg = CNNConfig(image_size=8, channels=tuple(CNN_RECIPE["channels"]))
    gu.manual_seed(seed)
    model = CNN(cfg)
    contest = Contest("cnn", f"CNN conv {'-'.join(map(str, cfg.channels))} 3x3 + max-pool, Adam", "samples",
                      {"image_size": 8, "channels": list(cfg.channels), "batch_size": CNN_RECIPE["batch_size"]},
                      _digits(n_batches, CNN_RECIPE["batch_size"], seed), lambda b: len(b[0]))

    def twin() -> Any:
        import torch_families
        return torch_families.CNN(1, cfg.channels, cfg.kernel_size, cfg.feature_size, cfg.num_classes)

    return _contenders(contest, which, model, model.loss, twin, {"lr": CNN_RECIPE["lr"]}, None)


def _count_targets(*batch: np.ndarray) -> int:
    """The items a language model's or a decoder's mean loss counts: targets (the last array) that are not padding."""
    return int((batch[-1] != IGNORE_INDEX).sum())


def _names_batches(n_batches: int, batch_size: int, seed: int) -> tuple[list[Batch], int]:
    """Batches of names as the rnn stage feeds them: "." + name -> name + ".", all-padding columns cut."""
    from groundup.data import names_splits

    splits = names_splits()
    names = splits.train
    chars = sorted(set("".join(splits.train + splits.val + splits.test)))
    stoi = {c: i + 1 for i, c in enumerate(chars)}                  # "." is id 0, as in makemore
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(n_batches):
        picked = [[0, *(stoi[c] for c in names[i])] for i in rng.integers(0, len(names), batch_size)]
        width = max(len(p) for p in picked)
        x = np.zeros((batch_size, width), dtype=np.int64)          # (B, T) right-padded with "."
        y = np.full((batch_size, width), IGNORE_INDEX, dtype=np.int64)
        for row, seq in enumerate(picked):
            x[row, :len(seq)] = seq
            y[row, :len(seq)] = seq[1:] + [0]                       # the next character, then "."
        batches.append((x, y))
    return batches, len(chars) + 1


def bench_recurrent(cell: str, n_batches: int, which: Sequence[str] = ("groundup", "torch"),
                    seed: int = 0) -> Contest:
    """The rnn stage's language model (embedding 64, hidden 128, batch 64 names, AdamW 3e-3 wd 0.01, clip 1)."""
    import groundup as gu
    from groundup.models.rnn_lm import RNNLM, RNNLMConfig

    batches, vocab = _names_batches(n_batches, 64, seed)
    cfg = RNNLMConfig(vocab_size=vocab, cell=cell, n_embd=64, hidden_size=128)
    gu.manual_seed(seed)
    model = RNNLM(cfg)
    label = {"rnn": "vanilla RNN", "gru": "GRU", "lstm": "LSTM"}[cell]
    contest = Contest(cell, f"{label} LM, embedding 64, hidden 128, AdamW, clip 1", "tokens",
                      {"vocab_size": vocab, "n_embd": 64, "hidden_size": 128, "batch_size": 64},
                      batches, lambda b: int(b[0].size))

    def twin() -> Any:
        import torch_families
        return torch_families.RNNLM(vocab, cell, 64, 128)

    return _contenders(contest, which, model, model.loss, twin,
                       {"lr": 3e-3, "weight_decay": 0.01, "betas": (0.9, 0.99)}, 1.0, count=_count_targets)


def _date_batches(n_batches: int, batch_size: int, seed: int) -> tuple[list[Batch], Any]:
    """Batches of dates as the attention and transformer stages feed them: similar source lengths together."""
    from groundup.data.synthetic import DateCodec, date_pairs

    codec = DateCodec()
    pairs = date_pairs(20000, seed=seed * 1000 + 1)
    rng = np.random.default_rng(seed)
    order = np.argsort([len(text) + rng.random() for text, _ in pairs])   # by length, random tie order
    cuts = [order[i:i + batch_size] for i in range(0, len(order) - batch_size + 1, batch_size)]
    batches = []
    for k in rng.permutation(len(cuts))[:n_batches]:
        b = codec.batch([pairs[i] for i in cuts[k]])
        batches.append((b["src"], b["src_mask"], b["tgt_in"], b["tgt_out"]))
    return batches, codec


def bench_seq2seq(n_batches: int, which: Sequence[str] = ("groundup", "torch"), seed: int = 0) -> Contest:
    """The attention stage's GRU encoder-decoder with additive attention (hidden 24, embedding 32, attention 32)."""
    import groundup as gu
    from groundup.models.seq2seq import Seq2Seq, Seq2SeqConfig

    batches, codec = _date_batches(n_batches, 64, seed)
    cfg = Seq2SeqConfig(codec.src_vocab_size, codec.tgt_vocab_size, n_embd=32, hidden_size=24, attention=True,
                        attn_size=32)
    gu.manual_seed(seed)
    model = Seq2Seq(cfg)
    contest = Contest("seq2seq", "GRU encoder-decoder + additive attention, hidden 24, Adam, clip 1", "samples",
                      {"n_embd": 32, "hidden_size": 24, "attn_size": 32, "batch_size": 64},
                      batches, lambda b: len(b[0]))

    def twin() -> Any:
        import torch_families
        return torch_families.Seq2Seq(cfg.src_vocab_size, cfg.tgt_vocab_size, 32, 24, 32)

    return _contenders(contest, which, model, model.loss, twin, {"lr": 3e-3}, 1.0, count=_count_targets)


def bench_transformer(n_batches: int, which: Sequence[str] = ("groundup", "torch"), seed: int = 0) -> Contest:
    """The transformer stage's encoder-decoder (d_model 64, 4 heads, 2 + 2 layers, feed-forward 128, Adam 5e-3)."""
    import groundup as gu
    from groundup.models.transformer_seq2seq import TransformerSeq2Seq, TransformerSeq2SeqConfig

    batches, codec = _date_batches(n_batches, 64, seed)
    cfg = TransformerSeq2SeqConfig(codec.src_vocab_size, codec.tgt_vocab_size, d_model=64, nhead=4,
                                   num_encoder_layers=2, num_decoder_layers=2, dim_feedforward=128, max_len=96,
                                   dropout=0.0)
    gu.manual_seed(seed)
    model = TransformerSeq2Seq(cfg)
    contest = Contest("transformer", "transformer encoder-decoder, 2+2 layers, 64 dims, 4 heads, Adam, clip 1",
                      "samples", {"d_model": 64, "nhead": 4, "layers": 2, "dim_feedforward": 128, "batch_size": 64},
                      batches, lambda b: len(b[0]))

    def twin() -> Any:
        import torch_families
        return torch_families.TransformerSeq2Seq(cfg.src_vocab_size, cfg.tgt_vocab_size, 64, 4, 2, 2, 128,
                                                 cfg.activation, model.pos.pe.numpy())

    return _contenders(contest, which, model, model.loss, twin, {"lr": 5e-3}, 1.0, count=_count_targets)


BERT_BATCH, BERT_T, BERT_VOCAB = 16, 64, 70


def _bert_batches(n_batches: int, seed: int) -> list[Batch]:
    """Random ids, 15% of the real positions labelled (the MLM targets), a quarter of the rows padded."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_batches):
        idx = rng.integers(5, BERT_VOCAB, (BERT_BATCH, BERT_T))
        lengths = np.where(rng.random(BERT_BATCH) < 0.25, rng.integers(BERT_T // 2, BERT_T, BERT_BATCH), BERT_T)
        mask = np.arange(BERT_T)[None, :] < lengths[:, None]                # (B, T) True at real tokens
        labels = np.where(mask & (rng.random((BERT_BATCH, BERT_T)) < 0.15), idx, -100)
        labels[:, 1] = idx[:, 1]                                            # every batch has a label
        out.append((idx, labels.astype(np.int64), mask))
    return out


def bench_bert(n_batches: int, which: Sequence[str] = ("groundup", "torch"), seed: int = 0) -> Contest:
    """BERTConfig's default size (2 layers, 4 heads, 128 dims), MLM loss, batch 16 x 64, AdamW 1e-3, clip 1."""
    import groundup as gu
    from groundup.models.bert import BERTConfig
    from groundup.models.bert_fast import FastBERT

    cfg = BERTConfig(vocab_size=BERT_VOCAB, block_size=BERT_T, dropout=0.0)
    gu.manual_seed(seed)
    model = FastBERT(cfg)                                            # the fused twin, as the GPT row's FastGPT
    contest = Contest("bert", f"BERT {cfg.n_layer} layers, {cfg.n_head} heads, {cfg.n_embd} dims, MLM, AdamW, clip 1 "
                      "(FastBERT)",
                      "tokens", {"n_layer": cfg.n_layer, "n_head": cfg.n_head, "n_embd": cfg.n_embd,
                                 "block_size": BERT_T, "batch_size": BERT_BATCH}, _bert_batches(n_batches, seed),
                      lambda b: int(b[0].size))

    def twin() -> Any:
        import torch_families
        return torch_families.BERT(cfg)

    return _contenders(contest, which, model, model.loss, twin, {"lr": 1e-3, "weight_decay": 0.01}, 1.0,
                       count=lambda idx, labels, mask: int((labels != -100).sum()))


BUILDERS: dict[str, Callable[..., Contest]] = {
    "mlp": bench_mlp, "cnn": bench_cnn,
    "rnn": lambda n, which=("groundup", "torch"), seed=0: bench_recurrent("rnn", n, which, seed),
    "gru": lambda n, which=("groundup", "torch"), seed=0: bench_recurrent("gru", n, which, seed),
    "lstm": lambda n, which=("groundup", "torch"), seed=0: bench_recurrent("lstm", n, which, seed),
    "seq2seq": bench_seq2seq, "transformer": bench_transformer, "bert": bench_bert,
}


# ----------------------------------------------------------------------------- timing
def _stats(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1e3
    return {"median_ms": float(np.median(ms)), "min_ms": float(ms.min()), "max_ms": float(ms.max())}


BLOCK = 4                                       # steps per contender per turn; the first is not timed


def time_contest(contest: Contest, iters: int, warmup: int, advance: Callable[[], None] = lambda: None,
                 names: Sequence[str] | None = None, block: int = BLOCK,
                 settle_s: float = bench_machine.IDLE_THREADS_S) -> dict[str, Any]:
    """Warm up, then the contenders (``names``: default all) take turns of ``block`` steps on the same
    batches, the order flipping every round; the first step of a turn settles and is not timed, the
    next ``block - 1`` are. Returns medians, rates and the ratio.

    NOTE: why turns and not single alternating steps: right after a PyTorch step its OpenMP threads
    still spin for a while, and a step that needs the second core then (groundup's worker process)
    measured 1.6x slower than alone (LSTM, split step: 6.1 ms alone, 10.0 ms alternating); PyTorch
    lost 1.3x the other way (5.2 -> 6.7 ms). Each turn also starts after ``settle_s`` of sleep, for
    the other contender's idle BLAS / OpenMP threads to stop spinning (bench_machine.IDLE_THREADS_S)."""
    names = list(contest.steps if names is None else names)
    for i in range(warmup):
        for name in names:
            contest.steps[name](contest.batches[i % len(contest.batches)])
        advance()
    seconds: dict[str, list[float]] = {n: [] for n in names}
    timed_batches: list[Batch] = []
    first = warmup
    while len(timed_batches) < iters:
        turn = [contest.batches[(first + j) % len(contest.batches)] for j in range(block)]
        take = min(block - 1, iters - len(timed_batches))
        order = names if (first // block) % 2 == 0 else names[::-1]    # neither always goes first
        for name in order:
            bench_machine.let_idle_threads_sleep(settle_s)             # the other contender's threads stop spinning
            contest.steps[name](turn[0])                               # settles: not timed
            for batch in turn[1:1 + take]:
                t = time.perf_counter()
                contest.steps[name](batch)
                seconds[name].append(time.perf_counter() - t)
        timed_batches += turn[1:1 + take]
        first += block
        for _ in range(take):
            advance()
    units = [contest.units(batch) for batch in timed_batches]
    per_step = float(np.median(units))
    result: dict[str, Any] = {"iters": iters, "warmup": warmup, "unit": contest.unit,
                              f"{contest.unit}_per_step": per_step}
    for name in names:
        s = _stats(seconds[name])
        s[f"{contest.unit}_per_s"] = per_step / (s["median_ms"] / 1e3)
        result[name] = s
    if "groundup" in result and "torch" in result:
        rounds = np.asarray(seconds["torch"]) / np.asarray(seconds["groundup"])
        result["ratio"] = result["torch"]["median_ms"] / result["groundup"]["median_ms"]
        result["ratio_rounds_min_max"] = [float(rounds.min()), float(rounds.max())]
    if "groundup_dp" in result and "torch" in result:
        result["ratio_dp"] = result["torch"]["median_ms"] / result["groundup_dp"]["median_ms"]
    return result


def _gpt_family(iters: int, warmup: int, memory: bool, torch_threads: int = TORCH_THREADS) -> dict[str, Any]:
    """The baby GPT row, from benchmarks/bench_gpt.py (FastGPT against PyTorch with SDPA)."""
    import bench_gpt

    train = bench_gpt.bench_training("baby", iters, None, warmup, readable=False, torch_threads=torch_threads)
    result: dict[str, Any] = {"iters": iters, "warmup": warmup, "unit": "tokens",
                              "tokens_per_step": train["tokens_per_step"], "description":
                              "baby GPT 4 layers, 4 heads, 128 dims, context 64, batch 12, AdamW, clip 1 "
                              "(FastGPT vs PyTorch SDPA)",
                              "config": {"preset": "baby", "batch_size": train["batch_size"]}}
    for ours, theirs in (("groundup", "groundup"), ("torch", "torch"), ("torch_explicit", "torch_explicit")):
        s = train[theirs]
        result[ours] = {"median_ms": s["median_ms"], "min_ms": s["min_ms"], "max_ms": s["max_ms"],
                        "tokens_per_s": s["tokens_per_s"]}
    result["ratio"] = train["ratio_tokens_per_s"]
    result["ratio_vs_explicit"] = train["ratio_vs_explicit_tokens_per_s"]
    if memory:
        result["memory"] = {w: bench_gpt.memory_probe(w, "baby", None) for w in ("groundup", "torch")}
    return result


# ----------------------------------------------------------------------------- memory
def _rss_mb(field_name: str) -> float:
    import bench_gpt

    return bench_gpt._rss_mb(field_name)


def memory_probe(family: str, which: str, steps: int = 2) -> dict[str, float]:
    """In a fresh process: peak RSS of building one contender and training ``steps`` steps."""
    cmd = [sys.executable, str(Path(__file__).resolve()), family, "--memory-probe", which, "--probe-steps", str(steps)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip()[-500:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _probe_main(family: str, which: str, steps: int) -> None:
    if which == "torch":
        import torch  # noqa: F401 - the library itself counts in the baseline
    import groundup  # noqa: F401
    from groundup.parallel import cpu_threads

    baseline = _rss_mb("VmRSS")
    with cpu_threads():
        contest = BUILDERS[family](steps, (which,))
        for batch in contest.batches[:steps]:
            contest.steps[which](batch)
    peak = _rss_mb("VmHWM")
    print(json.dumps({"baseline_rss_mb": baseline, "peak_rss_mb": peak, "delta_rss_mb": peak - baseline}))


# ----------------------------------------------------------------------------- the whole run
def machine_load() -> float:
    """The 1-minute load average (0 where the platform has none)."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return 0.0


cpu_seconds, other_cores, OTHERS_LIMIT = bench_machine.cpu_seconds, bench_machine.other_cores, \
    bench_machine.OTHERS_LIMIT


def load_warning(load: float, cores: int | None, others: float | None = None) -> str | None:
    """A loud line when other processes held the cores: ``others`` (cores they used while the bench
    ran, which excludes the bench's own threads and worker processes) where known, else the load
    average (the bench itself keeps about one core busy)."""
    if others is not None:
        if others > OTHERS_LIMIT:
            return (f"WARNING: other processes kept {others:.2f} of {cores} cores busy while the bench ran, so "
                    f"these ratios are unreliable (measure on a quiet machine)")
        return None
    if load - 1.0 > 0.5 * (cores or 1):
        return (f"WARNING: load average {load:.1f} on {cores} cores: other processes were running, so these "
                f"ratios are unreliable (measure on a quiet machine, load < 1)")
    return None


def run(families: Sequence[str], iters: int | None = None, warmup: int | None = None, memory: bool = True,
        progress: bool = True, torch_threads: int = TORCH_THREADS,
        groundup_threads: int | None = None) -> dict[str, Any]:
    """Benchmark each family in turn; returns the JSON record (see ``format_table``).

    Args:
        families: names from ``FAMILIES``.
        iters, warmup: timed and untimed steps per contender (default: ``DEFAULT_ITERS``, 3).
        memory: run the peak-RSS probes (two subprocesses per family).
        progress: a rich progress bar on stderr (when it is a terminal).
        torch_threads: PyTorch's intra-op threads (2, as BENCHMARKS.md; 1 shows the single-core race).
        groundup_threads: ``cpu_threads``'s n for groundup (None: the usable cores, as the Trainer).
    """
    import torch

    import groundup

    torch.set_num_threads(torch_threads)
    cores = os.cpu_count()
    record: dict[str, Any] = {
        "benchmark": "families", "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": cores,
                    "python": platform.python_version(), "numpy": np.__version__, "torch": torch.__version__,
                    "groundup": groundup.__version__, "torch_threads": torch_threads,
                    "load_avg_1m_at_start": machine_load(), **bench_machine.blas_facts(torch)},
        "families": {},
    }
    warm = DEFAULT_WARMUP if warmup is None else warmup
    plan = {f: (DEFAULT_ITERS[f] if iters is None else iters) for f in families}
    with _progress(progress) as bar:
        for family in families:
            n = plan[family]
            rounds = 2 if family in DP_FAMILIES and groundup_threads != 1 else 1
            task = bar.add_task(f"{family:<12}", total=(warm + n) * rounds) if bar else None
            load_before, cpu_before, wall_before = machine_load(), cpu_seconds(), time.perf_counter()
            try:
                result = _time_family(family, n, warm, bar, task, torch, torch_threads, record, groundup_threads)
            except Exception as err:  # noqa: BLE001 - one broken family must not lose the others' figures
                torch.set_num_threads(torch_threads)
                record["families"][family] = {"error": f"{type(err).__name__}: {' '.join(str(err).split())[:300]}"}
                continue
            result["load_avg_1m"] = [load_before, machine_load()]
            result["other_cores"] = other_cores(cpu_before, cpu_seconds(), time.perf_counter() - wall_before)
            result["ratio_reliable"] = load_warning(max(result["load_avg_1m"]), cores, result["other_cores"]) is None
            if memory:
                if bar:
                    bar.update(task, description=f"{family:<12} (memory)")
                if family == "gpt":
                    import bench_gpt
                    result["memory"] = {w: bench_gpt.memory_probe(w, "baby", None) for w in ("groundup", "torch")}
                else:
                    result["memory"] = {w: memory_probe(family, w) for w in ("groundup", "torch")}
            record["families"][family] = result
    record["machine"]["load_avg_1m_at_end"] = machine_load()
    return record


def run_repeated(families: Sequence[str], runs: int, iters: int | None = None, warmup: int | None = None,
                 memory: bool = True, progress: bool = True, torch_threads: int = TORCH_THREADS,
                 groundup_threads: int | None = None) -> dict[str, Any]:
    """``run`` ``runs`` times in a row; each family's row is its median run (by ratio), with every run's
    ratio in ``ratio_runs`` (the memory probes run in the first run only). One run returns ``run``'s record."""
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    records = [run(families, iters, warmup, memory=memory and i == 0, progress=progress, torch_threads=torch_threads,
                   groundup_threads=groundup_threads) for i in range(runs)]
    if runs == 1:
        return records[0]
    combined: dict[str, Any] = {**records[0], "runs": runs, "families": {}}
    combined["machine"] = {**records[0]["machine"], "load_avg_1m_at_end": records[-1]["machine"]["load_avg_1m_at_end"]}
    for family in families:
        rows = [r["families"][family] for r in records]
        ok = [row for row in rows if "error" not in row]
        if not ok:
            combined["families"][family] = rows[0]
            continue
        by_ratio = sorted(ok, key=lambda row: row["ratio"])
        median_row = dict(by_ratio[(len(by_ratio) - 1) // 2])          # lower median for an even count
        if "memory" in rows[0]:
            median_row["memory"] = rows[0]["memory"]
        median_row["ratio_runs"] = [row["ratio"] for row in ok]
        if all("ratio_dp" in row for row in ok):
            median_row["ratio_dp_runs"] = [row["ratio_dp"] for row in ok]
            median_row["ratio_dp"] = sorted(median_row["ratio_dp_runs"])[(len(ok) - 1) // 2]   # lower median
        median_row["load_avg_1m"] = [min(v for row in ok for v in row["load_avg_1m"]),
                                     max(v for row in ok for v in row["load_avg_1m"])]
        median_row["ratio_reliable"] = all(row["ratio_reliable"] for row in ok)
        others = [row["other_cores"] for row in ok if row.get("other_cores") is not None]
        median_row["other_cores"] = max(others) if others else None
        if len(ok) < len(rows):
            median_row["failed_runs"] = len(rows) - len(ok)
        combined["families"][family] = median_row
    return combined


def _time_family(family: str, n: int, warm: int, bar: Any, task: Any, torch: Any, torch_threads: int,
                 record: dict[str, Any], groundup_threads: int | None = None) -> dict[str, Any]:
    """One family's timed rounds inside the roadmap's and the Trainer's CPU setup."""
    from groundup.parallel import cpu_threads, num_threads

    with cpu_threads(groundup_threads):
        record["machine"]["groundup_threads"] = num_threads()
        if family == "gpt":
            result = _gpt_family(n, warm, memory=False, torch_threads=torch_threads)
            torch.set_num_threads(torch_threads)
            if bar:
                bar.update(task, completed=warm + n)
            return result
        dp = family in DP_FAMILIES and num_threads() > 1               # one thread: no worker to split over
        which = ("groundup", "groundup_dp", "torch") if dp else ("groundup", "torch")
        contest = BUILDERS[family](warm + n, which)
        tick = (lambda: bar.advance(task)) if bar else (lambda: None)
        result = time_contest(contest, n, warm, tick, names=("groundup", "torch"))
        if "groundup_dp" in contest.steps:
            # NOTE: a race of its own against PyTorch: three contenders taking turns slowed the other two
            # by 15-20% (caches; the worker process), so each pair races on its own
            split = time_contest(contest, n, warm, tick, names=("groundup_dp", "torch"))
            result.update(groundup_dp=split["groundup_dp"], torch_in_split_race=split["torch"],
                          ratio_dp=split["ratio_dp"])
        result.update(description=contest.description, config=contest.config)
        return result


class _progress:
    """A rich progress bar on stderr (or nothing), as a context manager."""

    def __init__(self, enabled: bool):
        self.enabled = enabled and sys.stderr.isatty()
        self.bar: Any = None

    def __enter__(self) -> Any:
        if not self.enabled:
            return None
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(TextColumn("bench {task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), TextColumn("load {task.fields[load]}"),
                            console=Console(stderr=True), transient=False)
        self.bar.__enter__()
        original = self.bar.add_task

        def add_task(description: str, **kwargs: Any) -> Any:
            return original(description, load=f"{machine_load():.1f}", **kwargs)

        self.bar.add_task = add_task                                  # every row shows the load when it starts
        return self.bar

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)


def format_table(record: dict[str, Any]) -> str:
    """One row per family: ms/step (median [min-max]) and rate of both, peak RSS, the ratio."""
    m = record["machine"]
    lines = [f"groundup vs PyTorch {m['torch']} CPU, training steps taking turns in one process; torch threads "
             f"{m['torch_threads']}, groundup threads {m.get('groundup_threads', '?')}; {m['cores']} cores; "
             f"load avg {m['load_avg_1m_at_start']:.2f} at start, {m.get('load_avg_1m_at_end', 0.0):.2f} at end; "
             f"{record['date']}"]
    worst = max(m["load_avg_1m_at_start"], m.get("load_avg_1m_at_end", 0.0),
                *(max(r["load_avg_1m"]) for r in record["families"].values() if "load_avg_1m" in r))
    others = [r["other_cores"] for r in record["families"].values() if r.get("other_cores") is not None]
    warning = load_warning(worst, m["cores"], max(others) if others else None)
    if warning:
        lines += ["!" * len(warning), warning, "!" * len(warning)]
    lines.append(f"NumPy's BLAS: {m.get('numpy_blas', 'unknown')}; PyTorch's CPU capability: "
                 f"{m.get('torch_cpu_capability', '?')}; PyTorch's optimizer: {m.get('torch_optimizer', '?')}")
    blas = bench_machine.blas_warning(m)
    if blas:
        lines += ["!" * min(len(blas), 120), blas, "!" * min(len(blas), 120)]
    lines.append(f"{'family':<12}{'groundup ms/step':>24}{'PyTorch ms/step':>24}{'groundup/s':>12}{'PyTorch/s':>12}"
                 f"{'peak RSS MB gu / pt':>22}{'ratio':>8}{'x2 proc':>9}  load / others")
    for family, r in record["families"].items():
        if "error" in r:
            lines.append(f"{family:<12}failed: {r['error']}")
            continue
        unit = r["unit"]
        gu, pt = r["groundup"], r["torch"]
        mem = r.get("memory", {})
        rss = "/".join(f"{mem[w]['peak_rss_mb']:.0f}" if "peak_rss_mb" in mem.get(w, {}) else "-"
                       for w in ("groundup", "torch")) if mem else "-"
        flag = "" if r["ratio_reliable"] else " (!)"
        lines.append(f"{family:<12}{gu['median_ms']:>9.2f} [{gu['min_ms']:.1f}-{gu['max_ms']:.1f}]".ljust(36)
                     + f"{pt['median_ms']:>9.2f} [{pt['min_ms']:.1f}-{pt['max_ms']:.1f}]".ljust(24)
                     + f"{gu[f'{unit}_per_s']:>12,.0f}{pt[f'{unit}_per_s']:>12,.0f}{rss:>22}"
                     + f"{r['ratio']:>8.2f}" + (f"{r['ratio_dp']:>9.2f}" if "ratio_dp" in r else f"{'-':>9}")
                     + f"  {max(r['load_avg_1m']):.1f}"
                     + (f" / {r['other_cores']:.2f}" if r.get("other_cores") is not None else "") + flag)
    runs = [f"{family} {' / '.join(f'{x:.2f}' for x in r['ratio_runs'])}" for family, r in record["families"].items()
            if "ratio_runs" in r]
    if runs:
        lines.append(f"each row is the median of {record.get('runs', len(runs))} runs by ratio (of an even count, the "
                     f"lower middle one); every run's ratio: "
                     + "; ".join(runs))
    lines.append("x2 proc: groundup with the step's forward and backward split by rows over 2 processes "
                 "(groundup.train.DataParallel), PyTorch's time / its time; - where the family has no such "
                 f"contender ({', '.join(f for f in FAMILIES if f not in DP_FAMILIES)}) or one thread runs")
    lines.append("ms/step: the median of the timed steps [the fastest-the slowest]; "
                 "rates: samples/s for mlp, cnn, seq2seq and transformer (sequence pairs), tokens/s for the language "
                 "models; ratio = groundup rate / PyTorch rate (> 1: groundup is faster); load = the 1-minute load "
                 "average (the bench's own threads and processes count in it), others = cores other processes used "
                 "meanwhile; (!) = taken under load")
    if "gpt" in record["families"] and "ratio_vs_explicit" in record["families"]["gpt"]:
        lines.append(f"gpt: PyTorch with SDPA above; against PyTorch with explicit attention the ratio is "
                     f"{record['families']['gpt']['ratio_vs_explicit']:.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("family", choices=(*FAMILIES, "all"))
    parser.add_argument("--iters", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--json", default=None)
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--torch-threads", type=int, default=TORCH_THREADS)
    parser.add_argument("--runs", type=int, default=1, help="repeat the whole run; each row is the median run")
    parser.add_argument("--memory-probe", choices=("groundup", "torch"), default=None, help=argparse.SUPPRESS)
    parser.add_argument("--probe-steps", type=int, default=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_probe:
        _probe_main(args.family, args.memory_probe, args.probe_steps)
        return 0
    families = FAMILIES if args.family == "all" else (args.family,)
    record = run_repeated(families, args.runs, args.iters, args.warmup, memory=not args.no_memory,
                          torch_threads=args.torch_threads)
    print(format_table(record))
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
