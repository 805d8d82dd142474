"""Stage ``pretrain-finetune``: pretrain on unlabelled text, fine-tune on few labels, compare with from scratch.

1. The labelled task, cut from Tiny Shakespeare with nothing to download (``groundup.data.speakers``):
   who is speaking? Speeches lose their header and are labelled with their speaker (the K with the
   most speeches). Test speeches come from held-out blocks of the text, with a gap around each, so
   no scene sits on both sides. The unlabelled pretraining text is the rest of the play text, headers
   removed. One byte-level BPE vocabulary (``groundup.tokenizers``), learnt from that text, serves
   every model.
2. Pretraining: a BERT (``groundup.models.bert``) by masked-language modelling (Devlin et al.'s
   15% of tokens, 80% [MASK] / 10% random / 10% kept, re-drawn every batch) and a GPT by next-token
   prediction, on the same text.
3. Fine-tuning against training from scratch: for several labelled-set sizes and seeds, the
   pretrained model and the same architecture with fresh weights train on the same labelled
   speeches with the same recipe (the BERT reads [CLS], the GPT its last token).
4. Cheaper fine-tuning: only the last block, or LoRA (rank-r updates of the attention's query and
   value, ``groundup.nn.LoRALinear``), with the number of weights each trains.
5. Transfer to another text: the GPT pretrained on Shakespeare, fine-tuned as a language model on a
   hundred or a thousand names (``names.txt``), against a GPT trained on the names alone.

References: Devlin et al. 2019, "BERT" (https://arxiv.org/abs/1810.04805); Radford et al. 2018,
"Improving Language Understanding by Generative Pre-Training"; Howard & Ruder 2018, "ULMFiT"
(https://arxiv.org/abs/1801.06146); Hu et al. 2021, "LoRA" (https://arxiv.org/abs/2106.09685).
"""

from __future__ import annotations

from typing import Any

import numpy as np

import groundup as gu
from groundup.data import names_splits
from groundup.data.masking import mask_tokens
from groundup.data.speakers import CLS, MASK, PAD, SEP, SPECIAL_TOKENS, labelled_subset, speaker_task
from groundup.models.bert import BERTConfig
from groundup.models.bert_fast import FastBERT
from groundup.models.finetune import BERTClassifier, GPTClassifier, prepare_finetuning
from groundup.models.gpt import GPTConfig
from groundup.models.gpt_fast import FastGPT
from groundup.nn import Linear
from groundup.roadmap import Finding, claims
from groundup.roadmap.plots import plot_confusion
from groundup.roadmap.runner import Context, Stage
from groundup.roadmap.training import EpochBatches, classification_loss, train
from groundup.tokenizers.bpe import ByteLevelBPE

__all__ = ["STAGE", "encode_speeches", "accuracy", "sweep_summary", "the_task", "pretraining", "labels_sweep",
           "cheap_finetuning", "names_transfer"]

MODEL = {"n_layer": 2, "n_head": 4, "n_embd": 64}
FINETUNE_LR = 1e-3


# ----------------------------------------------------------------------------- helpers
def encode_speeches(texts: list[str], tokenizer: ByteLevelBPE, max_len: int,
                    cls: bool) -> tuple[np.ndarray, np.ndarray]:
    """BPE ids (N, max_len): [CLS] text [SEP] for the BERT (cls=True), the text alone for the GPT; right-padded."""
    ids = np.full((len(texts), max_len), PAD, dtype=np.int64)                   # (N, T)
    for row, text in enumerate(texts):
        tokens = [CLS] + tokenizer.encode(text)[: max_len - 2] + [SEP] if cls else tokenizer.encode(text)[:max_len]
        ids[row, : len(tokens)] = tokens
    return ids, ids != PAD


def accuracy(model: Any, ids: np.ndarray, mask: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """Test accuracy and predictions of a classifier, in eval mode without a graph."""
    model.eval()
    with gu.no_grad():
        pred = np.concatenate([model(ids[i:i + 128], mask[i:i + 128]).numpy().argmax(1)
                               for i in range(0, len(ids), 128)])
    return float(np.mean(pred == labels)), pred


def sweep_summary(results: dict[str, dict[int, list[float]]], sizes: list[int]) -> dict[str, Any]:
    """Mean and spread of accuracy per size for 'pretrained' and 'scratch', the gaps, and where the gap is largest."""
    out: dict[str, Any] = {}
    for kind in ("pretrained", "scratch"):
        out[kind] = {"mean": [float(np.mean(results[kind][n])) for n in sizes],
                     "min": [float(np.min(results[kind][n])) for n in sizes],
                     "max": [float(np.max(results[kind][n])) for n in sizes]}
    gaps = [p - s for p, s in zip(out["pretrained"]["mean"], out["scratch"]["mean"])]
    out.update(gap=gaps, gap_at_fewest=gaps[0], largest_gap_size=sizes[int(np.argmax(gaps))],
               smallest_gap=float(min(gaps)), runs={k: {str(n): v for n, v in results[k].items()} for k in results})
    return out


def _lm_windows(ids: np.ndarray, length: int, n: int, rng: np.random.Generator) -> np.ndarray:
    starts = rng.integers(0, len(ids) - length, n)
    return np.stack([ids[s:s + length] for s in starts])                       # (n, length)


def _mlm_batch(ids: np.ndarray, T: int, n: int, rng: np.random.Generator, vocab_size: int) -> tuple[np.ndarray, ...]:
    """[CLS] + a window of T-1 tokens, masked as BERT does."""
    windows = np.concatenate([np.full((n, 1), CLS), _lm_windows(ids, T - 1, n, rng)], axis=1)   # (n, T)
    return mask_tokens(windows, rng, MASK, vocab_size, special_ids=range(len(SPECIAL_TOKENS)),
                       random_low=len(SPECIAL_TOKENS))


# ----------------------------------------------------------------------------- 1. the task
def the_task(ctx: Context, state: dict[str, Any]) -> Finding:
    """The speaker task, its split, its class balance and the shared BPE vocabulary."""
    k = ctx.budget("speakers (classes)", full=8, quick=8, tiny=8)
    task = speaker_task(k=k)
    vocab_size = ctx.budget("BPE vocabulary size", full=1024, quick=1024, tiny=512)
    tokenizer = ByteLevelBPE.train(task.pretrain_text, vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS)
    T = ctx.budget("tokens per sequence", full=64, quick=48, tiny=32)
    n_test = ctx.budget("test speeches", full=len(task.test_texts), quick=len(task.test_texts), tiny=48)
    test_index = np.sort(ctx.rng(1).permutation(len(task.test_texts))[:n_test])
    text_ids = np.array(tokenizer.encode(task.pretrain_text), dtype=np.int64)
    held_out = np.array(tokenizer.encode("\n\n".join(task.test_texts)), dtype=np.int64)
    data = {}
    for model, cls in (("bert", True), ("gpt", False)):
        train_ids, train_mask = encode_speeches(task.train_texts, tokenizer, T, cls)
        test_ids, test_mask = encode_speeches([task.test_texts[i] for i in test_index], tokenizer, T, cls)
        data[model] = (train_ids, train_mask, test_ids, test_mask)
    state.update(task=task, tokenizer=tokenizer, T=T, text_ids=text_ids, held_out_ids=held_out, data=data,
                 test_labels=task.test_labels[test_index])
    counts_train, counts_test = task.class_counts("train"), task.class_counts("test")
    share = max(counts_train.values()) / len(task.train_texts)
    rows = "".join(f"<tr><td>{name}</td><td>{counts_train[name]}</td><td>{counts_test[name]}</td></tr>"
                   for name in task.speakers)
    metrics = {"task": {"speakers": task.speakers, "train_counts": counts_train, "test_counts": counts_test,
                        "n_train": len(task.train_texts), "n_test": int(n_test),
                        "chance_accuracy": task.chance_accuracy, "uniform_accuracy": 1 / k,
                        "largest_class_share": share, "n_speeches": task.settings["speeches"],
                        "n_blocks": task.settings["n_blocks"], "test_every": task.settings["test_every"],
                        "gap": task.settings["gap"], "pretrain_characters": len(task.pretrain_text),
                        "pretrain_tokens": len(text_ids), "vocab_size": tokenizer.vocab_size,
                        "characters_per_token": len(task.pretrain_text) / len(text_ids), "tokens_per_sequence": T}}
    return Finding(
        title="Who is speaking? A labelled task from the bundled text", metrics=metrics,
        sections=[("Speeches per speaker",
                   f"<table><tr><th>speaker</th><th>train</th><th>test</th></tr>{rows}</table>")],
        text=[f"Tiny Shakespeare holds {task.settings['speeches']:,} speeches. The {k} speakers with the most of them "
              f"give {len(task.train_texts):,} labelled training speeches and {n_test} test speeches; the test "
              f"speeches come from every {task.settings['test_every']}th of {task.settings['n_blocks']} contiguous "
              f"blocks, and the {task.settings['gap']} speeches on each side of a test block are used nowhere. "
              f"Always answering the most common training speaker scores {task.chance_accuracy:.1%} on the test "
              f"speeches (uniform guessing {1 / k:.1%}).",
              f"The pretraining text is the rest of the play text without the speaker headers: "
              f"{len(task.pretrain_text):,} characters, {len(text_ids):,} BPE tokens from a vocabulary of "
              f"{tokenizer.vocab_size:,} learnt on that text alone. Each model reads the first {T} tokens of a "
              "speech."])


# ----------------------------------------------------------------------------- 2. pretraining
def pretraining(ctx: Context, state: dict[str, Any]) -> Finding:
    """Pretrain the BERT (masked LM) and the GPT (next token) on the unlabelled text."""
    T, V, ids, held_out = state["T"], state["tokenizer"].vocab_size, state["text_ids"], state["held_out_ids"]
    steps = ctx.budget("pretraining steps (each model)", full=3000, quick=300, tiny=3)
    batch = ctx.budget("pretraining batch", full=32, quick=32, tiny=4)
    bert_cfg = BERTConfig(vocab_size=V, block_size=T, num_labels=len(state["task"].speakers), dropout=0.1,
                          activation="gelu_tanh", **MODEL)
    gpt_cfg = GPTConfig(vocab_size=V, block_size=T, dropout=0.1, bias=True, pos_encoding="learned", **MODEL)
    mlm_eval = _mlm_batch(held_out, T, 64, ctx.rng(2), V)
    lm_eval = _lm_windows(held_out, T + 1, 64, ctx.rng(3))
    unigram = np.bincount(ids, minlength=V) / len(ids)
    unigram_loss = float(-np.mean(np.log(np.maximum(unigram[held_out], 1e-12))))   # a model that ignores context
    gu.manual_seed(ctx.seed)
    bert, rng = FastBERT(bert_cfg), ctx.rng(4)                               # BERT's fused twin, as FastGPT
    bert_trainer = train(ctx, bert, lambda split, _: _mlm_batch(ids, T, batch, rng, V), steps=steps, lr=2e-3,
                         warmup=min(100, steps // 10), weight_decay=0.01, grad_clip=1.0, description="BERT masked LM",
                         evaluate=lambda t: {"val_loss": float(t.model.loss(*mlm_eval).item())},
                         eval_every=max(1, steps // 20))
    gu.manual_seed(ctx.seed)
    gpt, rng_gpt = FastGPT(gpt_cfg), ctx.rng(5)
    gpt_trainer = train(ctx, gpt, lambda split, _: _shift(_lm_windows(ids, T + 1, batch, rng_gpt)), steps=steps,
                        lr=2e-3,
                        warmup=min(100, steps // 10), weight_decay=0.01, grad_clip=1.0, description="GPT next token",
                        evaluate=lambda t: {"val_loss": float(t.model.loss(*_shift(lm_eval)).item())},
                        eval_every=max(1, steps // 20))
    curves = {name: {"step": [r["iter"] for r in t.history if r["kind"] == "eval"],
                     "val_loss": [r["val_loss"] for r in t.history if r["kind"] == "eval"], "wall_s": t.wall_s()}
              for name, t in (("bert", bert_trainer), ("gpt", gpt_trainer))}
    state.update(bert=bert.state_dict(), gpt=gpt.state_dict(), bert_cfg=bert_cfg, gpt_cfg=gpt_cfg)
    mlm, lm = curves["bert"]["val_loss"][-1], curves["gpt"]["val_loss"][-1]
    fig = ctx.figure(6.4, 3.6)
    ax = fig.subplots()
    for name, label in (("bert", "BERT, masked tokens"), ("gpt", "GPT, next token")):
        ax.plot(curves[name]["step"], curves[name]["val_loss"], marker=".", label=label)
    ax.axhline(unigram_loss, color="gray", ls="--", label="token frequencies alone")
    ax.set(xlabel="pretraining step", ylabel="held-out loss (nats per token)", title="Pretraining")
    ax.legend()
    return Finding(
        title="Pretraining on unlabelled text", metrics={"pretraining": {
            "model": MODEL, "steps": steps, "batch": batch, "bert_parameters": bert.num_parameters(),
            "gpt_parameters": gpt.num_parameters(), "unigram_loss": unigram_loss, "bert_final_mlm_loss": mlm,
            "gpt_final_loss": lm, "curves": curves, "mask_prob": 0.15, "mask_share": 0.8, "random_share": 0.1}},
        claims=[claims.claim("pretrain-finetune.mlm_learns", "Masked-language modelling learns from unlabelled text: "
                             "on held-out text the BERT predicts masked tokens better than their frequencies do",
                             claims.lt("held-out MLM loss", mlm, "unigram loss", unigram_loss))],
        plots=[ctx.savefig(fig, "pretraining_loss.png", "Held-out loss during pretraining: the BERT on masked tokens "
                           "(the MLM loss), the GPT on every next token, against predicting from token frequencies.")],
        text=[f"Both models have {MODEL['n_layer']} blocks of width {MODEL['n_embd']} "
              f"({bert.num_parameters():,} and {gpt.num_parameters():,} parameters) and pretrain for {steps} steps "
              f"of {batch} sequences ({curves['bert']['wall_s']:.0f} s and {curves['gpt']['wall_s']:.0f} s). "
              f"On held-out text the BERT's masked-token loss ends at {mlm:.2f} nats and the GPT's next-token loss "
              f"at {lm:.2f}; predicting from token frequencies alone costs {unigram_loss:.2f}."])


def _shift(windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return windows[:, :-1], windows[:, 1:]                                      # inputs, next-token targets


def _names_batches(ids: np.ndarray, T: int, rng: np.random.Generator) -> Any:
    return lambda split, _: _shift(_lm_windows(ids, T + 1, 16, rng))          # 16 windows of the names text


# ----------------------------------------------------------------------------- 3. labels sweep
def _classifier(state: dict[str, Any], family: str, pretrained: bool, seed: int) -> Any:
    gu.manual_seed(seed)
    if family == "bert":
        body = FastBERT(state["bert_cfg"])                                      # the readable blocks under LoRA
        if pretrained:
            body.load_state_dict(state["bert"])
        body.reset_classifier()
        return BERTClassifier(body)
    body = FastGPT(state["gpt_cfg"])
    if pretrained:
        body.load_state_dict(state["gpt"])
    return GPTClassifier(body, len(state["task"].speakers))


def finetune(ctx: Context, state: dict[str, Any], family: str, pretrained: bool, n: int, seed: int,
             mode: str = "full") -> dict[str, Any]:
    """Fine-tune (or train from scratch) one classifier on ``n`` balanced labelled speeches; its test accuracy."""
    train_ids, train_mask, test_ids, test_mask = state["data"][family]
    labels = state["task"].train_labels
    picked = labelled_subset(labels, n, ctx.rng(100 + seed))
    model = _classifier(state, family, pretrained, ctx.seed * 100 + seed)
    trainable = prepare_finetuning(model, mode)
    steps = state["finetune_steps"]
    batches = EpochBatches((train_ids[picked], train_mask[picked], labels[picked]), min(16, n), ctx.rng(200 + seed))
    lr = FINETUNE_LR if mode == "full" else 3 * FINETUNE_LR
    trainer = train(ctx, model, batches, steps=steps, lr=lr, warmup=min(10, steps // 5), weight_decay=0.01,
                    grad_clip=1.0, loss_fn=lambda m, b: m.loss(*b), seed_offset=seed,
                    description=f"{family} {'pretrained' if pretrained else 'scratch'} {mode}, {n} labels")
    acc, pred = accuracy(model, test_ids, test_mask, state["test_labels"])
    return {"accuracy": acc, "pred": pred, "trainable": trainable, "wall_s": trainer.wall_s()}


def bag_of_tokens(ids: np.ndarray, mask: np.ndarray, vocab_size: int) -> np.ndarray:
    """log(1 + count) of every token id in each row (N, V), float32: what a linear model reads without order."""
    counts = np.zeros((len(ids), vocab_size), dtype=np.float32)                 # (N, V)
    rows = np.nonzero(mask)[0]
    np.add.at(counts, (rows, ids[mask]), 1.0)
    return np.log1p(counts)


def bag_of_tokens_accuracy(ctx: Context, state: dict[str, Any], n: int, seed: int) -> float:
    """A reference with no pretraining and no order: logistic regression on token counts, same labelled speeches."""
    train_ids, train_mask, test_ids, test_mask = state["data"]["gpt"]
    V, labels = state["tokenizer"].vocab_size, state["task"].train_labels
    picked = labelled_subset(labels, n, ctx.rng(100 + seed))
    gu.manual_seed(ctx.seed * 100 + seed)
    model = Linear(V, len(state["task"].speakers))
    x = bag_of_tokens(train_ids[picked], train_mask[picked], V)
    train(ctx, model, EpochBatches((x, labels[picked]), min(64, n), ctx.rng(200 + seed)), steps=state["bow_steps"],
          lr=1e-2, weight_decay=0.01, loss_fn=classification_loss, seed_offset=seed, description=f"bag of tokens, {n}")
    with gu.no_grad():
        pred = model(gu.Tensor(bag_of_tokens(test_ids, test_mask, V))).numpy().argmax(1)
    return float(np.mean(pred == state["test_labels"]))


def labels_sweep(ctx: Context, state: dict[str, Any]) -> Finding:
    """Pretrained vs from scratch at every labelled-set size and seed, for the BERT and the GPT."""
    n_pool = len(state["task"].train_texts)
    wanted = ctx.budget("labelled-set sizes", full=[16, 64, 256, 1024, "all"], quick=[16, 64, 256, "all"],
                        tiny=[16, "all"])
    sizes = sorted({min(n_pool, n) if n != "all" else n_pool for n in wanted})
    seeds = ctx.budget("seeds per size", full=3, quick=2, tiny=1)
    state["finetune_steps"] = ctx.budget("fine-tuning steps", full=200, quick=40, tiny=2)
    state["bow_steps"] = ctx.budget("bag-of-tokens steps", full=200, quick=100, tiny=2)
    bow = [float(np.mean([bag_of_tokens_accuracy(ctx, state, n, s) for s in range(seeds)])) for n in sizes]
    summary, best = {}, (-1.0, None, "")
    for family in ("bert", "gpt"):
        results: dict[str, dict[int, list[float]]] = {"pretrained": {}, "scratch": {}}
        for n in sizes:
            for kind in ("pretrained", "scratch"):
                runs = [finetune(ctx, state, family, kind == "pretrained", n, s) for s in range(seeds)]
                results[kind][n] = [r["accuracy"] for r in runs]
                top = max(runs, key=lambda r: r["accuracy"])
                if n == sizes[-1] and top["accuracy"] > best[0]:
                    best = (top["accuracy"], top["pred"], f"{family} {kind}")
        summary[family] = sweep_summary(results, sizes)
    state.update(sizes=sizes, seeds=seeds, best=best, sweep=summary)
    chance = state["task"].chance_accuracy
    checks = {family: [claims.gt(f"{family} pretrained, {n} labels", summary[family]["pretrained"]["mean"][i],
                                 f"{family} scratch, {n} labels", summary[family]["scratch"]["mean"][i])
                       for i, n in enumerate(sizes)] for family in summary}
    claim_list = [claims.claim(f"pretrain-finetune.{family}_beats_scratch",
                               f"Pretraining the {family.upper()} on unlabelled text and fine-tuning it beats training "
                               "the same model on the labelled speeches alone, at every labelled-set size (mean test "
                               "accuracy over seeds), and the gain is largest when labels are fewest",
                               *checks[family], claims.is_true(f"{family}: the gain is largest at the fewest labels",
                                                               summary[family]["largest_gap_size"] == sizes[0],
                                                               {f"{family}: size with the largest gain":
                                                                summary[family]["largest_gap_size"]}))
                  for family in summary]
    b, g = summary["bert"], summary["gpt"]
    best_mean = max(max(summary[f][k]["mean"]) for f in summary for k in ("pretrained", "scratch"))
    notes = ["At this budget no model gets far above the majority answer: the models are small and briefly trained, "
             "and telling the speakers apart from the opening lines of a speech is hard."] \
        if best_mean < chance + 0.05 else []
    return Finding(notes=notes,
        title="Fine-tuned against trained from scratch, as labels grow",
        metrics={"sweep": {"sizes": sizes, "seeds": seeds, "steps": state["finetune_steps"], "lr": FINETUNE_LR,
                           "chance_accuracy": chance, "bag_of_tokens": bow, **summary}},
        claims=claim_list, plots=[_sweep_plot(ctx, summary, sizes, chance, bow)],
        text=[f"Each point is the mean test accuracy over {seeds} seed{'s' if seeds > 1 else ''} (bars: lowest to "
              f"highest); every run trains "
              f"for {state['finetune_steps']} steps of AdamW on a class-balanced labelled set, the pretrained "
              f"model and the one from scratch on the same speeches in the same order.",
              f"With {sizes[0]} labels the pretrained BERT reaches {b['pretrained']['mean'][0]:.1%} against "
              f"{b['scratch']['mean'][0]:.1%} from scratch, and the pretrained GPT {g['pretrained']['mean'][0]:.1%} "
              f"against {g['scratch']['mean'][0]:.1%}; with all {sizes[-1]} labels {b['pretrained']['mean'][-1]:.1%} "
              f"against {b['scratch']['mean'][-1]:.1%} (BERT) and {g['pretrained']['mean'][-1]:.1%} against "
              f"{g['scratch']['mean'][-1]:.1%} (GPT). The BERT's gain is largest at {b['largest_gap_size']} labels, "
              f"the GPT's at {g['largest_gap_size']}; the majority answer scores {chance:.1%}.",
              f"For reference, a logistic regression on token counts (no pretraining, no word order) trained on the "
              f"same speeches scores {bow[0]:.1%} with {sizes[0]} labels and {bow[-1]:.1%} with {sizes[-1]}."])


def _sweep_plot(ctx: Context, summary: dict[str, Any], sizes: list[int], chance: float, bow: list[float]) -> Any:
    fig = ctx.figure(6.4, 4.0)
    ax = fig.subplots()
    for family, color in (("bert", "tab:blue"), ("gpt", "tab:orange")):
        for kind, style in (("pretrained", "-"), ("scratch", ":")):
            s = summary[family][kind]
            mean = np.array(s["mean"])
            ax.errorbar(sizes, mean, yerr=[mean - np.array(s["min"]), np.array(s["max"]) - mean], color=color,
                        ls=style, marker="o", capsize=3, label=f"{family.upper()} {kind}")
    ax.plot(sizes, bow, color="gray", marker="s", ls="-.", label="bag of tokens (logistic regression)")
    ax.axhline(chance, color="gray", ls="--", label="majority answer")
    ax.set_xscale("log")
    ax.set(xlabel="labelled speeches", ylabel="test accuracy", title="Who is speaking?")
    ax.legend(fontsize=8)
    return ctx.savefig(fig, "accuracy_vs_labels.png", "Test accuracy against the number of labelled speeches (log "
                       "scale): mean over seeds, bars from the lowest to the highest seed.")


# ----------------------------------------------------------------------------- 4. cheaper fine-tuning
def cheap_finetuning(ctx: Context, state: dict[str, Any]) -> Finding:
    """Full fine-tuning vs the last block only vs LoRA on query and value, with all labels."""
    n, seeds = state["sizes"][-1], state["seeds"]
    runs = {mode: [finetune(ctx, state, "bert", True, n, s, mode) for s in range(seeds)] for mode in ("full", "last",
                                                                                                       "lora")}
    acc = {mode: float(np.mean([r["accuracy"] for r in rs])) for mode, rs in runs.items()}
    trainable = {mode: rs[0]["trainable"] for mode, rs in runs.items()}
    ratio, share = acc["lora"] / max(acc["full"], 1e-12), trainable["lora"] / trainable["full"]
    chance = state["task"].chance_accuracy
    best_acc, pred, who = state["best"]
    speakers = state["task"].speakers
    cm = np.zeros((len(speakers), len(speakers)), dtype=np.int64)
    np.add.at(cm, (state["test_labels"], pred), 1)
    return Finding(
        title="Cheaper fine-tuning: the last block, or LoRA", metrics={"cheap": {
            "labels": n, "accuracy": acc, "trainable": trainable, "lora_accuracy_ratio": ratio,
            "lora_parameter_share": share, "lora_rank": 4, "best_model": who, "best_accuracy": best_acc,
            "confusion": cm.tolist()}},
        claims=[claims.claim("pretrain-finetune.lora", "LoRA on the attention's query and value reaches at least 90% "
                             "of full fine-tuning's accuracy while training at most 5% of its weights (and full "
                             "fine-tuning beats the majority answer, so that the comparison means something)",
                             claims.ge("LoRA / full accuracy", ratio, 0.9),
                             claims.le("LoRA / full trainable", share, 0.05),
                             claims.gt("full fine-tuning accuracy", acc["full"], "majority answer", chance))],
        plots=[_confusion_plot(ctx, cm, speakers, who, best_acc)],
        text=[f"With all {n} labels, full fine-tuning of the pretrained BERT trains {trainable['full']:,} weights and "
              f"reaches {acc['full']:.1%}; the last block alone {trainable['last']:,} weights, {acc['last']:.1%}; LoRA "
              f"{trainable['lora']:,} weights ({share:.1%} of full), {acc['lora']:.1%}, which is {ratio:.0%} of full "
              "fine-tuning's accuracy."])


def _confusion_plot(ctx: Context, cm: np.ndarray, speakers: list[str], who: str, acc: float) -> Any:
    return plot_confusion(ctx, cm, "confusion.png", f"Test confusion matrix of the best single run (one seed) "
                          f"with all labels ({who}, accuracy {acc:.1%}; the plot above shows means over seeds): "
                          "rows are the true speakers, columns the predicted ones.",
                          labels=[s.title()[:10] for s in speakers], what="speaker", counted="test speeches")


# ----------------------------------------------------------------------------- 5. names
def names_transfer(ctx: Context, state: dict[str, Any]) -> Finding:
    """The Shakespeare GPT fine-tuned as a language model on a few names, against a GPT trained on them alone."""
    tokenizer, T = state["tokenizer"], 32
    splits = names_splits()
    val = np.array(tokenizer.encode("\n".join(splits.val[:ctx.budget("validation names", full=1000, quick=500,
                                                                      tiny=50)]) + "\n"), dtype=np.int64)
    val_windows = _lm_windows(val, T + 1, 64, ctx.rng(6))
    steps = ctx.budget("names fine-tuning steps", full=300, quick=80, tiny=2)
    counts = ctx.budget("training names", full=[100, 1000], quick=[100, 1000], tiny=[100])
    cfg = GPTConfig(**{**state["gpt_cfg"].to_dict(), "block_size": T})
    loss: dict[str, dict[str, float]] = {}
    for count in counts:
        ids = np.array(tokenizer.encode("\n".join(splits.train[:count]) + "\n"), dtype=np.int64)
        for kind in ("pretrained", "scratch"):
            gu.manual_seed(ctx.seed)
            model = FastGPT(cfg)
            if kind == "pretrained":
                model.load_state_dict({k: (v[:T] if k == "wpe.weight" else v) for k, v in state["gpt"].items()})
            trainer = train(ctx, model, _names_batches(ids, T, ctx.rng(300 + count)), steps=steps,
                            lr=1e-3, warmup=min(10, steps // 5), weight_decay=0.01, grad_clip=1.0,
                            description=f"names LM, {kind}, {count} names", eval_every=max(1, steps // 8),
                            evaluate=lambda t: {"val_loss": float(t.model.loss(*_shift(val_windows)).item())})
            loss.setdefault(str(count), {})[kind] = min(r["val_loss"] for r in trainer.history if r["kind"] == "eval")
    first = loss[str(counts[0])]
    text = [f"A GPT of the same size reads names as BPE tokens of the Shakespeare vocabulary and trains for {steps} "
            f"steps on the first names of the training list; we report the lowest validation loss seen. With "
            f"{counts[0]} names the GPT pretrained on Shakespeare reaches {first['pretrained']:.2f} nats per token, "
            f"from scratch {first['scratch']:.2f}."]
    if len(counts) > 1:
        last = loss[str(counts[-1])]
        text.append(f"With {counts[-1]} names: {last['pretrained']:.2f} pretrained against {last['scratch']:.2f} "
                    "from scratch.")
    return Finding(
        title="Transfer to another text: names",
        metrics={"names": {"steps": steps, "counts": counts, "val_loss": loss}},
        claims=[claims.claim("pretrain-finetune.names", f"A GPT pretrained on Shakespeare and fine-tuned on "
                             f"{counts[0]} names models unseen names better (lower validation loss) than one trained "
                             "on those names alone", claims.lt("pretrained val loss", first["pretrained"],
                                                               "scratch val loss", first["scratch"]))],
        text=text)


STAGE = Stage("pretrain-finetune", "pretrain a BERT and a GPT on unlabelled text, fine-tune on few labels, vs scratch",
              experiments=(the_task, pretraining, labels_sweep, cheap_finetuning, names_transfer),
              headline=("BERT accuracy gain from pretraining, fewest labels", "sweep.bert.gap_at_fewest"),
              intro=("Pretraining teaches a model the text itself, with no labels: the BERT fills in masked tokens, "
                     "the GPT predicts the next one. Fine-tuning then adapts it to a labelled task. The claim under "
                     "test is that this beats training the same model on the labelled examples alone, and most "
                     "clearly when labels are few.",),
              title="Pretraining and fine-tuning: who is speaking in Shakespeare?")
