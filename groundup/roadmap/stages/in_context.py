"""Stage ``in-context``: induction heads form in a 2-layer attention-only transformer, and not in 1 layer.

The data: streams of random tokens in which one random segment (24-32 tokens) of the first half
repeats somewhere in the second half. The first occurrence cannot be predicted at all (loss ln V);
the repeat can, but only by looking back: find the earlier occurrence of the current token and
copy the token that followed it. The segment's length and both positions are random, so the
distance back to the earlier occurrence varies (24 to 41 tokens at context 64): a head that always
looks a fixed distance back finds the right token only for the most common distance (about a
fifth of the time); to do better, a model must find the earlier occurrence by its content.

1. A 2-layer and a 1-layer attention-only model (``groundup.models.attn_only``, same width, same
   steps, same batches) are trained; every few steps we measure, on held-out sequences, the loss
   on the second half and every head's attention pattern.
2. In-context learning: the 2-layer model's loss on later tokens falls far below its loss on early
   tokens (Olsson et al.'s in-context learning score: late loss minus early loss).
3. Induction heads: a head of layer 1 puts its attention on the token right after the previous
   occurrence of the current token, and a head of layer 0 attends to the previous token (the
   K-composition circuit of Elhage et al.). The 1-layer model has no such head and no such loss.
4. The phase change: the loss on the second half falls in a short burst of training, at the same
   time as the induction score jumps.

References: Elhage et al. 2021, "A Mathematical Framework for Transformer Circuits",
https://transformer-circuits.pub/2021/framework/index.html; Olsson et al. 2022, "In-context
Learning and Induction Heads", https://arxiv.org/abs/2209.11895.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

import groundup as gu
from groundup.models.attn_only import AttnBlock, AttnOnlyConfig, AttnOnlyLM
from groundup.roadmap import Finding, claims
from groundup.roadmap.runner import Context, Stage
from groundup.roadmap.training import train
from groundup.train.evaluation import evaluating

__all__ = ["STAGE", "repeated_segment_sequences", "per_position_loss", "mean_attention_on", "induction_sources",
           "previous_token_sources", "induction_scores", "best_fixed_offset_score", "steepest_drop", "evaluate",
           "train_models", "induction_heads", "one_layer", "phase_change"]


# ----------------------------------------------------------------------------- data
def repeated_segment_sequences(n: int, length: int, vocab_size: int, rng: np.random.Generator,
                               min_repeat: int, max_repeat: int) -> tuple[np.ndarray, np.ndarray]:
    """Random token streams in which a random segment of the first half repeats in the second half.

    Args:
        n: number of sequences.
        length: N, tokens per sequence (the model reads N - 1 and predicts the next token of each).
        vocab_size: tokens are drawn uniformly from 0..vocab_size-1.
        rng: the NumPy generator.
        min_repeat, max_repeat: the segment length R is drawn from [min_repeat, max_repeat].
    Returns:
        ``tokens`` (n, N) int64 and ``starts`` (n, 3) int64: per sequence (first start a, repeat
        start b, R), with ``tokens[b:b + R] == tokens[a:a + R]``, a + R <= N // 2 <= b, b + R <= N.
    """
    half = length // 2
    if not 1 <= min_repeat <= max_repeat <= half or max_repeat > length - half:
        raise ValueError(f"repeated_segment_sequences: need 1 <= min_repeat <= max_repeat <= {half} "
                         f"(half of length {length}), got {min_repeat}, {max_repeat}")
    tokens = rng.integers(vocab_size, size=(n, length), dtype=np.int64)       # (n, N)
    starts = np.zeros((n, 3), dtype=np.int64)
    for i in range(n):
        repeat = int(rng.integers(min_repeat, max_repeat + 1))
        first = int(rng.integers(0, half - repeat + 1))
        second = int(rng.integers(half, length - repeat + 1))
        tokens[i, second:second + repeat] = tokens[i, first:first + repeat]
        starts[i] = (first, second, repeat)
    return tokens, starts


# ----------------------------------------------------------------------------- measurements
def induction_sources(starts: np.ndarray, T: int) -> np.ndarray:
    """Where an induction head should look: (B, T) int, -1 where there is nothing to find.

    The model reads positions 0..T-1 and predicts the token at t + 1. Inside the repeat
    (b <= t <= b + R - 2) the current token also sits at t - (b - a), and the token to copy at
    t - (b - a) + 1: the token right after the previous occurrence.
    """
    sources = np.full((len(starts), T), -1, dtype=np.int64)
    for i, (first, second, repeat) in enumerate(starts):
        t = np.arange(second, min(second + repeat - 1, T))
        sources[i, t] = t - (second - first) + 1
    return sources


def previous_token_sources(B: int, T: int) -> np.ndarray:
    """(B, T) int: position t - 1 for every t >= 1 (-1 at t = 0, which has no previous token)."""
    return np.broadcast_to(np.arange(T) - 1, (B, T)).copy()


def mean_attention_on(maps: np.ndarray, sources: np.ndarray) -> np.ndarray:
    """(L, H): each head's mean attention weight on the source position, over positions that have one.

    Args:
        maps: (L, B, H, T, T) attention weights (``AttnOnlyLM.attention_maps``).
        sources: (B, T) int, the position each query should attend to; -1 = not counted.
    """
    b, t = np.nonzero(sources >= 0)
    if len(b) == 0:
        raise ValueError("mean_attention_on: no position has a source (all of sources is -1)")
    picked = maps[:, b, :, t, sources[b, t]]                                   # (n, L, H): fancy axes go first
    return picked.mean(axis=0)                                                 # (L, H)


def per_position_loss(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """(T,): next-token cross-entropy at each position, averaged over the batch.

    Args:
        logits: (B, T, V); targets: (B, T) int.
    """
    z = logits.astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    log_probs = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))              # (B, T, V)
    return -np.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0].mean(axis=0)  # (T,)


def steepest_drop(steps: list[int], values: list[float], window: int) -> dict[str, float]:
    """The largest fall of a curve within ``window`` steps, and its share of the whole fall.

    Returns: ``drop`` (largest values[i] - values[j] with steps[j] - steps[i] <= window), ``start``
    and ``end`` (the steps of that window), ``total`` (first value minus the lowest value) and
    ``share`` = drop / total.
    """
    steps_arr, vals = np.asarray(steps), np.asarray(values, dtype=float)
    best = (0.0, int(steps_arr[0]), int(steps_arr[0]))
    for i in range(len(vals)):
        j = np.nonzero((steps_arr >= steps_arr[i]) & (steps_arr <= steps_arr[i] + window))[0]
        k = j[np.argmin(vals[j])]
        if vals[i] - vals[k] > best[0]:
            best = (float(vals[i] - vals[k]), int(steps_arr[i]), int(steps_arr[k]))
    total = float(vals[0] - vals.min())
    return {"drop": best[0], "start": best[1], "end": best[2], "total": total,
            "share": best[0] / total if total > 0 else 0.0}


def evaluate(model: AttnOnlyLM, tokens: np.ndarray, starts: np.ndarray) -> dict[str, Any]:
    """Per-position loss and the induction / previous-token scores of every head, on held-out sequences."""
    x, y = tokens[:, :-1], tokens[:, 1:]                                       # (B, T) each
    B, T = x.shape
    with evaluating(model):
        logits = model(x).numpy()                                              # (B, T, V)
        maps = model.attention_maps(x)                                         # (L, B, H, T, T)
    losses = per_position_loss(logits, y)                                      # (T,)
    induction = induction_scores(maps, starts)                                 # (L, H)
    previous = mean_attention_on(maps, previous_token_sources(B, T))           # (L, H)
    half = T // 2
    return {"per_position": losses, "first_half": float(losses[:half].mean()),
            "second_half": float(losses[half:].mean()), "induction": induction, "previous": previous,
            "best_induction": float(induction[-1].max()), "best_previous": float(previous[0].max()), "maps": maps}


def best_fixed_offset_score(starts: np.ndarray, T: int) -> float:
    """The best induction score a purely positional head could get: one that always looks k back.

    Over the positions that have an induction source, the largest fraction whose source lies at
    the same distance t - source (the most common distance). A head that copies by position
    rather than by content can score at most about this.
    """
    sources = induction_sources(starts, T)
    b, t = np.nonzero(sources >= 0)
    counts = np.bincount(t - sources[b, t])
    return float(counts.max() / counts.sum())


def induction_scores(maps: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """(L, H): every head's induction score, its mean attention on the token after the previous occurrence."""
    return mean_attention_on(maps, induction_sources(starts, maps.shape[-1]))


# ----------------------------------------------------------------------------- training
def train_model(ctx: Context, cfg: AttnOnlyConfig, steps: int, batch: int, lr: float, data: dict[str, Any],
                eval_every: int, description: str) -> tuple[AttnOnlyLM, dict[str, Any]]:
    """AdamW (betas 0.9/0.99, no weight decay), constant lr, clipping at 1.0; a fresh batch every step.

    Every model sees the same batches (the same NumPy stream, ``ctx.rng(1)``) from the same seed.
    """
    gu.manual_seed(ctx.seed)
    model = AttnOnlyLM(cfg).to(ctx.device)
    rng, losses = ctx.rng(1), []

    def get_batch(split: str, _: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        tokens, _ = repeated_segment_sequences(batch, cfg.block_size + 1, cfg.vocab_size, rng, *data["repeat"])
        return tokens[:, :-1], tokens[:, 1:]

    def measure(trainer: Any) -> dict[str, float]:
        result = evaluate(model, data["val_tokens"], data["val_starts"])
        return {"second_half": result["second_half"], "best_induction": result["best_induction"]}

    trainer = train(ctx, model, get_batch, steps=steps, lr=lr, schedule="constant", grad_clip=1.0,
                    description=description, evaluate=measure, eval_every=eval_every,
                    optimizer=gu.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=0.0),
                    callbacks=[lambda t, event, info: losses.append(info["loss"]) if event == "step" else None],
                    status=lambda i: f"second half {i['second_half']:.2f}, induction {i['best_induction']:.2f}")
    records = [r for r in trainer.history if r["kind"] == "eval"]
    history = {"step": [r["iter"] for r in records], "second_half": [r["second_half"] for r in records],
               "best_induction": [r["best_induction"] for r in records], "train_loss": losses,
               "wall_s": trainer.wall_s()}
    return model.eval(), history


# ----------------------------------------------------------------------------- the experiments
def train_models(ctx: Context, state: dict[str, Any]) -> Finding:
    """Train a 2-layer and a 1-layer attention-only model on the same batches; their loss at each position."""
    vocab = 64
    block = ctx.budget("context length", full=64, quick=64, tiny=16, option="context")
    repeat = (3 * block // 8, block // 2)                                      # segment length 24..32 at 64
    steps = ctx.budget("training steps per model", full=1500, quick=500, tiny=4, option="steps")
    batch = ctx.budget("batch size", full=32, quick=32, tiny=4)
    n_val = ctx.budget("held-out sequences", full=256, quick=64, tiny=4)
    eval_every = max(1, steps // ctx.budget("evaluations during training", full=150, quick=50, tiny=2))
    lr = 3e-3
    val_tokens, val_starts = repeated_segment_sequences(n_val, block + 1, vocab, ctx.rng(0), *repeat)
    data = {"val_tokens": val_tokens, "val_starts": val_starts, "repeat": repeat}
    uniform = math.log(vocab)
    runs: dict[int, dict[str, Any]] = {}
    for n_layer in (2, 1):
        cfg = AttnOnlyConfig(vocab_size=vocab, block_size=block, n_layer=n_layer, n_head=4, n_embd=64)
        model, history = train_model(ctx, cfg, steps, batch, lr, data, eval_every, f"{n_layer}-layer attention-only")
        runs[n_layer] = {"model": model, "history": history, "final": evaluate(model, val_tokens, val_starts)}
    two, one = runs[2]["final"], runs[1]["final"]
    state.update(runs=runs, block=block, steps=steps, val_starts=val_starts, uniform=uniform)
    icl_score = two["second_half"] - two["first_half"]                          # Olsson et al.: late - early
    margin = ctx.threshold("second-half loss below ln V by at least (nats)", full=1.5, quick=1.0)
    near = ctx.threshold("first-half loss within this of ln V (nats)", full=0.1)
    metrics: dict[str, Any] = {"vocab_size": vocab, "ln_vocab": uniform, "repeat_length": list(repeat), "lr": lr,
                               "icl_score": icl_score, "n_layers": [2, 1], "steps": steps, "batch_size": batch,
                               "context_length": block}
    for n_layer, r in runs.items():
        final = r["final"]
        metrics[f"{n_layer}_layer"] = {
            "parameters": r["model"].num_parameters(), "per_position_loss": final["per_position"].tolist(),
            "first_half_loss": final["first_half"], "second_half_loss": final["second_half"],
            "icl_score": final["second_half"] - final["first_half"], "induction_scores": final["induction"].tolist(),
            "previous_token_scores": final["previous"].tolist(), "history": dict(r["history"])}
    one_icl = one["second_half"] - one["first_half"]
    notes = ["The 1-layer model still lowers its second-half loss a little: a single attention layer can raise the "
             "probability of tokens it has already seen in the context (a 'skip-trigram' copy), but it cannot "
             "tell which earlier token comes next without knowing what preceded each one, which needs a second "
             "layer reading what a previous-token head of the first layer wrote."] if one_icl < 0 else []
    return Finding(
        title="Two attention-only models, trained the same way", metrics=metrics, notes=notes,
        claims=[claims.claim("in-context.later_tokens", "With enough training a transformer learns to use its context: "
                             "on held-out sequences the 2-layer model's loss on the second half (where a segment "
                             "repeats) falls far below ln V, while on the first half (nothing to look back at) it "
                             "stays at ln V", claims.le("second-half loss", two["second_half"], uniform - margin),
                             claims.near("first-half loss", two["first_half"], uniform, near))],
        plots=[ctx.savefig(_position_plot(ctx, runs, uniform), "per_position_loss.png", "Held-out loss at each "
                           "position (mean over sequences). The first half is random; a random segment of it repeats "
                           "somewhere in the second half.")],
        text=[f"Both models read sequences of {block} tokens drawn at random from a vocabulary of {vocab}, in which "
              "a random segment of "
              f"{repeat[0]}-{repeat[1]} tokens from the first half repeats in the second half; they train for "
              f"{steps} steps of {batch} sequences ({runs[2]['history']['wall_s']:.0f} s and "
              f"{runs[1]['history']['wall_s']:.0f} s).",
              f"The 2-layer attention-only model learns to use its context: held-out loss {two['first_half']:.2f} on "
              f"the first half (ln {vocab} = {uniform:.2f}) and {two['second_half']:.2f} on the second, an in-context "
              f"learning score (late minus early loss; lower is better) of {icl_score:.2f} nats. The 1-layer model "
              f"reaches only {one['second_half']:.2f} on the second half (score {one_icl:.2f})."])


def induction_heads(ctx: Context, state: dict[str, Any]) -> Finding:
    """A layer-1 head attends after the previous occurrence, fed by a layer-0 previous-token head."""
    two, one, block = state["runs"][2]["final"], state["runs"][1]["final"], state["block"]
    ind_min = ctx.threshold("best induction score in layer 1, at least", full=0.5, quick=0.3)
    prev_min = ctx.threshold("best previous-token score in layer 0, at least", full=0.3)
    head, prev_head = int(np.argmax(two["induction"][-1])), int(np.argmax(two["previous"][0]))
    return Finding(
        title="Induction heads",
        metrics={"induction_head": {"layer": 1, "head": head}, "previous_token_head": {"layer": 0, "head": prev_head},
                 "uniform_attention_score": 2 / block},
        claims=[claims.claim("in-context.induction_heads", "Induction heads appear: in the 2-layer model a head of "
                             "layer 1 attends to the token right after the previous occurrence of the current token, "
                             "and a head of layer 0 attends to the previous token",
                             claims.ge("best induction score, layer 1", two["best_induction"], ind_min),
                             claims.ge("best previous-token score, layer 0", two["best_previous"], prev_min))],
        plots=[ctx.savefig(_maps_plot(ctx, two["maps"], state["val_starts"][0], two["induction"], two["previous"]),
                           "attention_maps.png", "Every head of the trained 2-layer model on one held-out sequence "
                           "(rows: the position attending, columns: the positions it reads). Dashed lines mark where "
                           "the segment's first occurrence and its repeat begin.")],
        text=[f"Head {head} of layer 1 is an induction head: it puts {two['best_induction']:.0%} of its attention on "
              f"the token after the previous occurrence of the current token, fed by head {prev_head} of layer 0, "
              f"which puts {two['best_previous']:.0%} on the previous token (uniform attention over a causal row "
              f"gives about {2 / block:.3f}). The 1-layer model's best head puts {one['best_induction']:.0%} there."])


def one_layer(ctx: Context, state: dict[str, Any]) -> Finding:
    """The 1-layer model against a head that always looks a fixed distance back."""
    two, one = state["runs"][2]["final"], state["runs"][1]["final"]
    positional = best_fixed_offset_score(state["val_starts"], state["block"])   # measured on the data, not tuned
    gap = ctx.threshold("1-layer second-half loss above the 2-layer model's by at least (nats)", full=1.0)
    return Finding(
        title="...and none in one layer", metrics={"best_fixed_offset_score": positional},
        claims=[claims.claim("in-context.one_layer", "...and cannot in a one-layer attention-only model: trained the "
                             "same way, none of its heads attends to the induction target more than a head that "
                             "always looks a fixed distance back could, and its second-half loss stays far above the "
                             "2-layer model's", claims.le("1-layer best induction score", one["best_induction"],
                                                          positional),
                             claims.gt("1-layer second-half loss", one["second_half"], "2-layer second-half loss",
                                       two["second_half"], margin=gap))],
        text=[f"A head that always looks the same distance back could score at most {positional:.2f} on this data; "
              f"the 1-layer model's best head scores {one['best_induction']:.2f}, the 2-layer model's "
              f"{two['best_induction']:.2f}."])


def phase_change(ctx: Context, state: dict[str, Any]) -> Finding:
    """How sudden the 2-layer model's fall in loss is, and whether the induction score jumps with it."""
    runs, steps = state["runs"], state["steps"]
    hist = runs[2]["history"]
    window = max(1, steps // 10)
    burst = steepest_drop(hist["step"], hist["second_half"], window)
    rise = steepest_drop(hist["step"], [-v for v in hist["best_induction"]], window)
    share_min = ctx.threshold("share of the loss drop in the steepest 10% of training, at least", full=0.3)
    rise_min = ctx.threshold("share of the induction score's rise in those same steps, at least", full=0.2)
    score_at = dict(zip(hist["step"], hist["best_induction"]))
    total_rise = max(hist["best_induction"]) - hist["best_induction"][0]
    rise_share = (score_at[burst["end"]] - score_at[burst["start"]]) / total_rise if total_rise > 0 else 0.0
    positional = best_fixed_offset_score(state["val_starts"], state["block"])
    return Finding(
        title="The phase change",
        metrics={"phase_change": {"loss": burst, "induction": {**rise, "drop": -rise["drop"]}, "window": window,
                                  "window_share_of_training": window / steps,
                                  "induction_rise_share_in_loss_window": rise_share}},
        claims=[claims.claim("in-context.phase_change", f"...often as a sudden phase change: the steepest {window} "
                             f"steps ({window / steps:.0%} of training) hold at least {share_min:.0%} of the 2-layer "
                             "model's fall in second-half loss, and in those same steps its induction score makes at "
                             f"least {rise_min:.0%} of its rise (a steady change would give {window / steps:.0%} of "
                             "each)", claims.ge("share of the loss drop", burst["share"], share_min),
                             claims.ge("share of the induction score's rise", rise_share, rise_min))],
        plots=[ctx.savefig(_curves_plot(ctx, runs, burst, positional), "training_curves.png", "During training: loss "
                           "on the second half (left) and the best induction score (right) of each model. The shaded "
                           "band is the 2-layer model's steepest fall; the dotted line is the best score a head that "
                           "always looks a fixed distance back could reach.")],
        text=[f"The 2-layer model's second-half loss falls by {burst['drop']:.2f} of its {burst['total']:.2f} nats "
              f"between steps {burst['start']} and {burst['end']}: the steepest {window} steps hold "
              f"{burst['share']:.0%} of the fall. Its best induction score rises fastest between steps "
              f"{rise['start']} and {rise['end']} (up by {rise['drop']:.2f}), and makes {rise_share:.0%} of its rise "
              "during the loss's steepest fall."])


# ----------------------------------------------------------------------------- plots
def _position_plot(ctx: Context, runs: dict[int, dict[str, Any]], uniform: float) -> Any:
    fig = ctx.figure(7, 3.6)
    ax = fig.subplots()
    for n_layer, r in runs.items():
        ax.plot(r["final"]["per_position"], "o-", ms=2.5, label=f"{n_layer} layer{'s' if n_layer > 1 else ''}")
    ax.axhline(uniform, color="grey", ls=":", label="ln V (a uniform guess)")
    half = len(runs[2]["final"]["per_position"]) // 2
    ax.axvline(half - 0.5, color="grey", lw=0.8)
    ax.set(xlabel="position in the sequence", ylabel="held-out loss (nats)", title="loss at each position")
    ax.legend(fontsize=8)
    return fig


def _curves_plot(ctx: Context, runs: dict[int, dict[str, Any]], burst: dict[str, float], positional: float) -> Any:
    fig = ctx.figure(10, 3.6)
    left, right = fig.subplots(1, 2)
    for n_layer, r in runs.items():
        h = r["history"]
        label = f"{n_layer} layer{'s' if n_layer > 1 else ''}"
        left.plot(h["step"], h["second_half"], label=label)
        right.plot(h["step"], h["best_induction"], label=label)
    for ax in (left, right):
        ax.axvspan(burst["start"], burst["end"], color="C3", alpha=0.15, lw=0)
        ax.set_xlabel("training step")
        ax.legend(fontsize=8)
    right.axhline(positional, color="grey", ls=":", lw=1)
    left.set(ylabel="held-out loss, second half", title="loss where the segment repeats")
    right.set(ylabel="best induction score (last layer)", ylim=(0, 1), title="induction score")
    return fig


def _maps_plot(ctx: Context, maps: np.ndarray, starts: np.ndarray, induction: np.ndarray,
               previous: np.ndarray) -> Any:
    L, _, H, T, _ = maps.shape
    fig = ctx.figure(2.4 * H, 2.5 * L)
    axes = np.atleast_2d(fig.subplots(L, H))
    first, second, _ = starts
    ticks: list[int] = []
    for tick in (int(first), int(second), 0, T - 1):  # the segment starts first: where copying can begin
        if all(abs(tick - kept) >= T / 8 for kept in ticks):
            ticks.append(tick)
    ticks.sort()
    image = None
    for layer in range(L):
        for head in range(H):
            ax = axes[layer, head]
            image = ax.imshow(maps[layer, 0, head], cmap="Greys", vmin=0, vmax=1)
            for pos in (first, second):
                ax.axvline(pos - 0.5, color="C0", ls="--", lw=0.6)
                ax.axhline(pos - 0.5, color="C0", ls="--", lw=0.6)
            ax.set_title(f"L{layer} H{head}: ind {induction[layer, head]:.2f}, prev {previous[layer, head]:.2f}",
                         fontsize=8)
            ax.set_xticks(ticks, [str(t) for t in ticks], fontsize=8)
            ax.set_yticks(ticks, [str(t) for t in ticks], fontsize=8)
            if layer == L - 1:
                ax.set_xlabel("key position", fontsize=8)
            if head == 0:
                ax.set_ylabel("query position", fontsize=8)
    fig.colorbar(image, ax=axes.ravel().tolist(), label="attention weight", shrink=0.7)
    return fig

# Report guide: static text, not part of the run's record (the provenance check reads only the record).
HOW = (
    "On random tokens whose second half repeats the first, nothing can be predicted in the first half, "
    "but in the second half a model that looks back can copy. An induction head does that with two "
    "heads in two layers: a previous-token head in layer one writes \"the token before me was A\" into each "
    "position; in layer two, the head at the current token B… searches (query = current token) for "
    "positions whose previous token matches, and copies the token found there:",
    '<div class="math">…  A  B  …  A  →  predict B\n'
    'layer 1: head attends i → i−1  (K-composition: the layer-two keys read it)\n'
    'layer 2: score(i, j) high when token_{j−1} = token_i,   output copies token_j</div>',
    "One layer of attention cannot compose two heads, so it cannot form the circuit. The in-context "
    "learning score measures how much later tokens gain from the context: the loss late in the sequence "
    "minus the loss early in it (negative when the model learns in context; lower is better). The "
    "induction score of a head is its mean attention from each repeated token to the token after its "
    "first occurrence.",
    '<div class="math">ICL score = mean loss(late positions) − mean loss(early positions)</div>',
)
TRY_NEXT = (
    ("groundup run in-context --quick --set steps=150 --out runs/try",
     "a short training, before or at the phase change: the two-layer model's score is close to the "
     "one-layer model's."),
    ("groundup run in-context --quick --set context=32 --out runs/try",
     "shorter sequences: a shorter repeated segment to copy from, and a smaller in-context gain."),
)


STAGE = Stage("in-context", "induction heads form in a 2-layer attention-only transformer (not in 1 layer)",
              experiments=(train_models, induction_heads, one_layer, phase_change),
              headline=("in-context learning score (2 layers)", "icl_score"),
              title="In-context learning: induction heads and the phase change",
              better="lower", anchor=("one layer", "1_layer.icl_score"),
              how=HOW, try_next=TRY_NEXT, code=(AttnBlock,),
              options=(('steps', 'training steps per model', int), ('context', 'context length', int)))
