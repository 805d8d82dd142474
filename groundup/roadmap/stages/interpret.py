"""Stage ``interpret``: look inside three models trained in the run, with ``groundup.interpret``.

1. An induction circuit. A 2-layer attention-only model (``groundup.models.attn_only``) learns
   streams of random tokens in which a segment of the first half repeats in the second half. Its
   head detectors find a previous-token head in layer 0 and an induction head in layer 1; ablating
   the previous-token head destroys the induction head's attention and the loss gain on repeats,
   and path patching (only layer 1's keys, queries or values see the ablation) shows the path
   goes through the keys: K-composition (Elhage et al. 2021).
2. Attention is not the whole story. For every head of that model: where it looks (its
   attention on the token to be copied) against what it does (the loss rise when it is
   mean-ablated), with their rank correlation, and the heads where the two disagree most.
3. The logit lens. A small GPT on Tiny Shakespeare; its residual stream after each layer read
   through the final norm and the unembedding: the prediction forms layer by layer, and the last
   row is the model's own loss.
4. Facts. A GPT memorises an invented world ("the capital of Zorbia is Velm": subjects x four
   relations). Direct logit attribution splits each answer's logit difference into heads and
   MLPs (a check: the parts add up); activation patching maps where the subject's information
   sits; causal tracing (Meng et al. 2022: noise on the subject, restore one state at a time)
   locates where the fact is recalled, and the report says whether, as ROME found in GPT-2, the
   MLPs at the last subject token carry it.

References: Elhage et al. 2021, "A Mathematical Framework for Transformer Circuits"; Olsson et al.
2022, "In-context Learning and Induction Heads"; nostalgebraist 2020, "interpreting GPT: the logit
lens"; Meng et al. 2022, "Locating and Editing Factual Associations in GPT" (ROME); Wang et al.
2022, "Interpretability in the Wild"; Heimersheim & Nanda 2024, "How to use and interpret
activation patching"; Jain & Wallace 2019, "Attention is not Explanation".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from groundup.data import get_batch, load_text
from groundup.interpret import (
    ablation_hooks,
    all_parts,
    causal_trace,
    direct_logit_attribution,
    head_scores,
    lens_losses,
    logit_diff_metric,
    logit_lens,
    patch_heads,
    patch_residual,
    run_patched,
    token_losses,
)
from groundup.models.attn_only import AttnOnlyConfig, AttnOnlyLM
from groundup.models.gpt import GPT, GPTConfig
from groundup.models.gpt_fast import FastGPT
from groundup.roadmap import claims
from groundup.roadmap.experiment import Finding
from groundup.roadmap.runner import Context, Stage
from groundup.roadmap.training import EpochBatches, train
from groundup.tensor import no_grad
from groundup.tokenizers import CharTokenizer

__all__ = ["STAGE", "repeated_segments", "FactWorld", "fact_world", "spearman"]


# ----------------------------------------------------------------------------- data
def repeated_segments(n: int, length: int, vocab: int, rng: np.random.Generator) -> np.ndarray:
    """(n, length) random tokens; a segment of the first half (3/4 to all of it) repeats in the second half.

    Its length and both places are random, so a head that always looks a fixed distance back cannot
    find the earlier copy: the model must find it by content (an induction head).
    """
    tokens = rng.integers(vocab, size=(n, length), dtype=np.int64)           # (n, N)
    half = length // 2
    for row in tokens:
        size = int(rng.integers(3 * half // 4, half + 1))
        first, second = int(rng.integers(0, half - size + 1)), int(rng.integers(half, length - size + 1))
        row[second:second + size] = row[first:first + size]
    return tokens


@dataclass
class FactWorld:
    """An invented world: prompts ``the RELATION of SUBJECT is`` and their one-token answers.

    Attributes:
        vocab: the token strings (id = index).
        prompts: (n_facts, 5) ids ``[the, relation, of, subject, is]``.
        answers: (n_facts,) the answer's id.
        subject_of: (n_facts,) which subject each fact is about.
    """

    vocab: list[str]
    prompts: np.ndarray
    answers: np.ndarray
    subject_of: np.ndarray

    SUBJECT = 3                       # the subject's position in a prompt (the last subject token)
    POSITIONS = ("the", "relation", "of", "subject", "is")


def fact_world(n_subjects: int, rng: np.random.Generator, values_per_relation: int = 12) -> FactWorld:
    """``n_subjects`` invented countries x four relations, each answer drawn at random from its relation's values."""
    relations = ("capital", "language", "river", "sport")
    onsets, vowels, codas = "bdfgklmnprstvz", "aeiou", ("ria", "bia", "land", "stan", "mor", "vania", "dor", "nia")
    names: list[str] = []
    while len(names) < n_subjects:
        name = (rng.choice(list(onsets)).upper() + rng.choice(list(vowels)) + rng.choice(list(onsets))
                + str(rng.choice(codas)))
        names = names if name in names else names + [name]
    values = [f"{r[:3]}-{v}" for r in relations for v in range(values_per_relation)]
    vocab = ["the", "of", "is", *relations, *names, *values]
    index = {word: i for i, word in enumerate(vocab)}
    picks = rng.integers(values_per_relation, size=(n_subjects, len(relations)))     # (S, R)
    prompts, answers, subject_of = [], [], []
    for s, name in enumerate(names):
        for r, relation in enumerate(relations):
            prompts.append([index["the"], index[relation], index["of"], index[name], index["is"]])
            answers.append(index[f"{relation[:3]}-{picks[s, r]}"])
            subject_of.append(s)
    return FactWorld(vocab, np.array(prompts), np.array(answers), np.array(subject_of))


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation (ranks by argsort; ties are not averaged)."""
    ra, rb = np.argsort(np.argsort(a)).astype(float), np.argsort(np.argsort(b)).astype(float)
    return float(np.corrcoef(ra, rb)[0, 1])


def _losses(model: Any, ids: np.ndarray, hooks: dict | None = None) -> np.ndarray:
    """(B, T-1) next-token losses of ``model`` on ids (B, T), optionally with hooks."""
    model.eval()
    with no_grad(), model.hooks(hooks or {}):
        logits = model(ids[:, :-1]).numpy()                                  # (B, T-1, V)
    return token_losses(logits, ids[:, 1:])


def _halves(losses: np.ndarray) -> dict[str, float]:
    half = losses.shape[1] // 2
    first, second = float(losses[:, :half].mean()), float(losses[:, half:].mean())
    return {"first_half": first, "second_half": second, "gain": first - second}


# ----------------------------------------------------------------------------- 1. an induction circuit
def induction_circuit(ctx: Context, state: dict[str, Any]) -> Finding:
    """Train a 2-layer attention-only model; find its circuit; ablate and path-patch it."""
    length = ctx.budget("repeated-segment context length", full=64, quick=48, tiny=12) + 1
    steps = ctx.budget("attention-only training steps", full=1200, quick=400, tiny=4)
    vocab = 64
    cfg = AttnOnlyConfig(vocab_size=vocab, block_size=length - 1, n_layer=2, n_head=4, n_embd=64)
    data_rng = ctx.rng(1)

    def batch(split: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        tokens = repeated_segments(32, length, vocab, data_rng)              # a fresh batch every step
        return tokens[:, :-1], tokens[:, 1:]

    model = AttnOnlyLM(cfg)
    train(ctx, model, batch, steps=steps, lr=3e-3, betas=(0.9, 0.99), grad_clip=1.0, schedule="constant",
          description="two-layer attention-only model")
    model.eval()
    val = repeated_segments(ctx.budget("held-out repeated sequences", full=128, quick=64, tiny=4), length, vocab,
                            ctx.rng(2))
    scores = head_scores(model, val[:, :-1])
    prev_head, ind_head = int(np.argmax(scores["previous_token"][0])), int(np.argmax(scores["induction"][1]))
    control = int(np.argmin(scores["previous_token"][0]))
    clean = _halves(_losses(model, val))

    def ablated(head: int) -> dict[str, float]:
        hooks = ablation_hooks(model, f"L0H{head}", "mean", val[:, :-1])
        with model.hooks(hooks):
            induction = float(head_scores(model, val[:, :-1])["induction"][1].max())
        return {**_halves(_losses(model, val, hooks)), "induction": induction}

    knocked, other = ablated(prev_head), ablated(control)
    # path patching: only layer 1's queries, keys or values see the ablated previous-token head
    with model.hooks(ablation_hooks(model, f"L0H{prev_head}", "mean", val[:, :-1])):
        _, ablated_cache = model.run_with_cache(val[:, :-1], names="blocks.1.attn.hook_[qkv]")
    path = {}
    for what in "qkv":
        logits = run_patched(model, val[:, :-1], ablated_cache, [(f"blocks.1.attn.hook_{what}", (Ellipsis,))])
        path[what] = _halves(token_losses(logits, val[:, 1:]))["gain"]
    kept = {what: path[what] / clean["gain"] for what in path}
    state.update(attn=model, attn_val=val, attn_scores=scores)
    metrics = {"induction_circuit": {
        "previous_token_head": f"L0H{prev_head}", "induction_head": f"L1H{ind_head}", "control_head": f"L0H{control}",
        "previous_token_score": float(scores["previous_token"][0, prev_head]),
        "induction_score": float(scores["induction"][1, ind_head]),
        "clean": clean, "ablated": knocked, "ablated_control": other,
        "induction_kept": knocked["induction"] / float(scores["induction"][1, ind_head]),
        "gain_kept": knocked["gain"] / clean["gain"], "control_gain_kept": other["gain"] / clean["gain"],
        "path_gain_kept": kept}}
    m = metrics["induction_circuit"]
    at_most = ctx.threshold("share of the induction score / repeat gain left after ablation, at most", full=0.5)
    return Finding(
        title="An induction circuit, found, knocked out and traced",
        metrics=metrics,
        claims=[claims.claim(
            "interpret.induction_ablation", "Ablating the layer-0 previous-token head destroys the layer-1 induction "
            "head's attention and most of the loss gain on repeated tokens (a low-previous-token layer-0 head, "
            "ablated the same way, does not)",
            claims.le("induction score kept", m["induction_kept"], at_most),
            claims.le("repeat gain kept", m["gain_kept"], at_most),
            claims.gt("control: repeat gain kept", m["control_gain_kept"], "repeat gain kept", m["gain_kept"])),
            claims.claim(
            "interpret.k_composition", "Path patching: when only the second layer's keys see the ablated "
            "previous-token head the repeat gain collapses; when only its queries or values do, it survives "
            "(K-composition)",
            claims.le("gain kept, keys ablated", kept["k"], at_most),
            claims.gt("gain kept, queries ablated", kept["q"], "gain kept, keys ablated", kept["k"]),
            claims.gt("gain kept, values ablated", kept["v"], "gain kept, keys ablated", kept["k"]))],
        plots=[_head_score_plot(ctx, scores)],
        text=[f"The detectors name {m['previous_token_head']} as the previous-token head (score "
              f"{m['previous_token_score']:.2f}) and {m['induction_head']} as the induction head (score "
              f"{m['induction_score']:.2f}). The model's loss is {clean['first_half']:.2f} nats on the first half "
              f"and {clean['second_half']:.2f} on the second, where a segment repeats. Mean-ablating "
              f"{m['previous_token_head']} leaves "
              f"{m['induction_kept']:.0%} of the induction score and {m['gain_kept']:.0%} of the gain; ablating "
              f"{m['control_head']} leaves {m['control_gain_kept']:.0%} of the gain.",
              f"Path patching keeps {kept['k']:.0%} of the gain when only the keys of the second layer see the "
              f"ablation, {kept['q']:.0%} for the queries and {kept['v']:.0%} for the values."])


def _head_score_plot(ctx: Context, scores: dict[str, np.ndarray]) -> Any:
    fig = ctx.figure(8, 2.4)
    axes = fig.subplots(1, len(scores))
    for ax, (name, grid) in zip(axes, scores.items(), strict=True):
        shown = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis")
        ax.set(title=name.replace("_", " "), xlabel="head", ylabel="layer", xticks=range(grid.shape[1]),
               yticks=range(grid.shape[0]))
    fig.colorbar(shown, ax=axes, shrink=0.8)
    return ctx.savefig(fig, "head_scores.png", "Each head's detector scores on held-out repeated sequences "
                       "(attention mass on the detector's keys).")


# ----------------------------------------------------------------------------- 2. looks vs does
def looks_vs_does(ctx: Context, state: dict[str, Any]) -> Finding:
    """For each head: attention on the token to copy vs the loss rise when it is mean-ablated."""
    model, val, scores = state["attn"], state["attn_val"], state["attn_scores"]
    heads = all_parts(model)
    looks = scores["induction"].ravel()                                       # (L*H,) attention on the copied token
    clean = _halves(_losses(model, val))["second_half"]
    does = np.array([_halves(_losses(model, val, ablation_hooks(model, h, "mean", val[:, :-1])))["second_half"] - clean
                     for h in heads])                                        # (L*H,) nats
    rho = spearman(looks, does)
    rank_looks, rank_does = np.argsort(np.argsort(-looks)), np.argsort(np.argsort(-does))
    worst = [heads[i] for i in np.argsort(-np.abs(rank_looks - rank_does), kind="stable")[:2]]
    matter = does >= 0.5 * does.max()
    elsewhere = [heads[i] for i in np.nonzero(matter & (looks < 0.1))[0]]
    idle = [heads[i] for i in np.nonzero((looks >= 0.5) & (does <= 0.1 * does.max()))[0]]   # look, but barely matter
    named = {h: (float(looks[heads.index(h)]), float(does[heads.index(h)])) for h in elsewhere[:1] + idle[:1]}
    fig = ctx.figure(4.6, 3.6)
    ax = fig.subplots()
    ax.scatter(looks, does)
    for i, h in enumerate(heads):
        ax.annotate(h, (looks[i], does[i]), fontsize=7)
    ax.set(xlabel="attention on the token to copy (induction score)", ylabel="loss rise when ablated (nats)")
    metrics = {"looks_vs_does": {"heads": heads, "attention_on_copied_token": looks.tolist(),
                                 "ablation_loss_rise": does.tolist(), "spearman": rho, "most_disagreeing": worst,
                                 "matter_but_look_elsewhere": elsewhere, "n_matter_look_elsewhere": len(elsewhere),
                                 "look_but_barely_matter": idle}}
    return Finding(
        title="Where a head looks is not what it does",
        metrics=metrics,
        claims=[claims.claim(
            "interpret.attention_not_effect", "Attention weights are not the whole story: some head that matters "
            "(its ablation costs at least half the largest loss rise) puts under a tenth of its attention on the "
            "token the model copies",
            claims.ge("heads that matter but look elsewhere", len(elsewhere), 1))],
        plots=[ctx.savefig(fig, "looks_vs_does.png", "Each head of the attention-only model: its attention on the "
                           "token to be copied against the rise in second-half loss when it is mean-ablated.")],
        text=[f"Across the heads the rank correlation of attention on the copied token and ablation effect is "
              f"{rho:.2f}. The heads whose two ranks disagree most: {', '.join(worst)}. Heads that matter but look "
              f"elsewhere: {', '.join(elsewhere) or 'none'}; heads that look at the copied token but barely matter: "
              f"{', '.join(idle) or 'none'}."]
        + [f"{h} puts {a:.0%} of its attention on the copied token; ablating it raises the loss by {d:.2f} nats."
           for h, (a, d) in named.items()])


# ----------------------------------------------------------------------------- 3. the logit lens
def lens(ctx: Context, state: dict[str, Any]) -> Finding:
    """A GPT on Tiny Shakespeare, read layer by layer through its own final norm and unembedding."""
    text = load_text("shakespeare")
    tokenizer = CharTokenizer(text)
    data = np.array(tokenizer.encode(text), dtype=np.int64)
    cut = int(0.9 * len(data))
    cfg = GPTConfig(vocab_size=tokenizer.vocab_size, block_size=ctx.budget("Shakespeare context", 64, 32, 16),
                    n_layer=ctx.budget("Shakespeare GPT layers", 4, 3, 2), n_head=4,
                    n_embd=ctx.budget("Shakespeare GPT width", 128, 64, 32), bias=False, pos_encoding="rotary")
    fast = FastGPT(cfg)
    train_rng = ctx.rng(3)
    train(ctx, fast, lambda split, rng: get_batch(data[:cut], 32, cfg.block_size, train_rng),
          steps=ctx.budget("Shakespeare training steps", full=1000, quick=300, tiny=3), lr=3e-3, warmup=20,
          grad_clip=1.0, description="GPT on Tiny Shakespeare")
    model = fast.as_class(GPT).to(dtype=np.float64).eval()
    x, y = get_batch(data[cut:], ctx.budget("held-out windows", 64, 32, 2), cfg.block_size, ctx.rng(4))
    losses = lens_losses(model, x, y)                                        # (L+1,)
    with no_grad():
        model_loss = float(model.loss(x, y).item())
    steps = np.diff(losses)
    line = tokenizer.encode("ROMEO:\nBut, soft! what light through yonder"[:cfg.block_size])
    one = logit_lens(model, np.array(line[:-1]), np.array(line[1:]), k=1)
    metrics = {"logit_lens": {"lens_loss": losses.tolist(), "model_loss": model_loss,
                              "largest_rise_between_layers": float(max(steps.max(), 0.0)),
                              "embed_loss": float(losses[0]), "last_loss": float(losses[-1])}}
    return Finding(
        title="The logit lens: the prediction forms layer by layer",
        metrics=metrics,
        claims=[claims.claim(
            "interpret.logit_lens", "Reading the residual stream after each layer through the final norm and the "
            "unembedding, the loss falls layer by layer, and after the last layer it is the model's own loss",
            claims.le("largest rise of the lens loss from one layer to the next", float(steps.max()), 0.0),
            claims.near("last-layer lens loss", float(losses[-1]), model_loss, 1e-9))],
        plots=[_lens_plot(ctx, one, losses, tokenizer, line)],
        text=[f"On held-out text the lens loss goes from {losses[0]:.2f} nats at the embeddings to "
              f"{losses[-1]:.2f} after the last block, which equals the model's loss ({model_loss:.2f})."])


def _lens_plot(ctx: Context, one: Any, losses: np.ndarray, tokenizer: CharTokenizer, line: list[int]) -> Any:
    fig = ctx.figure(10, 3.2)
    grid_ax, loss_ax = fig.subplots(1, 2, width_ratios=[4, 1])
    probs = np.exp(-one.loss)                                                # (L+1, T) p(target)
    grid_ax.imshow(probs, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    for (row, col), token in np.ndenumerate(one.top_ids[..., 0]):
        grid_ax.text(col, row, repr(tokenizer.decode([int(token)]))[1:-1], ha="center", va="center", fontsize=6)
    grid_ax.set(yticks=range(len(one.names)), yticklabels=one.names, xticks=range(len(line) - 1),
                xticklabels=[repr(tokenizer.decode([t]))[1:-1] for t in line[:-1]], title="top-1 guess per layer")
    grid_ax.tick_params(labelsize=6)
    loss_ax.plot(losses, range(len(losses)), marker="o")
    loss_ax.set(yticks=range(len(losses)), yticklabels=[], xlabel="lens loss (nats)", title="held-out loss")
    loss_ax.invert_yaxis()
    return ctx.savefig(fig, "logit_lens.png", "Logit lens: each row reads the residual stream after one more "
                       "block; text is the top guess, colour the probability of the true next character.")


# ----------------------------------------------------------------------------- 4. facts
def facts(ctx: Context, state: dict[str, Any]) -> Finding:
    """A GPT memorises an invented world; DLA and activation patching on its answers."""
    world = fact_world(ctx.budget("invented subjects (x 4 relations)", full=200, quick=64, tiny=8), ctx.rng(5))
    targets = np.full(world.prompts.shape, -100)
    targets[:, -1] = world.answers                                           # only the answer is trained
    cfg = GPTConfig(vocab_size=len(world.vocab), block_size=world.prompts.shape[1],
                    n_layer=ctx.budget("facts GPT layers", 4, 3, 2), n_head=4,
                    n_embd=ctx.budget("facts GPT width", 64, 64, 16), bias=False, tie_weights=False)
    fast = FastGPT(cfg)
    train(ctx, fast, EpochBatches((world.prompts, targets), 64, ctx.rng(6)), lr=3e-3, betas=(0.9, 0.99),
          steps=ctx.budget("facts training steps", full=2500, quick=700, tiny=3), description="GPT on invented facts")
    model = fast.as_class(GPT).to(dtype=np.float64).eval()
    with no_grad():
        logits = model(world.prompts).numpy()[:, -1]                         # (n_facts, V)
    recall = float((logits.argmax(-1) == world.answers).mean())
    sample = ctx.rng(7).permutation(len(world.answers))[:ctx.budget("facts analysed", 48, 24, 2)]
    runner_up = np.argsort(-logits, axis=-1)[:, 1]
    dla = [direct_logit_attribution(model, world.prompts[i], -1, int(world.answers[i]), int(runner_up[i]))
           for i in sample]
    gap = max(abs(a.values.sum() - a.total) for a in dla)
    share = np.mean([np.abs(a.values) / np.abs(a.values).sum() for a in dla], axis=0)   # (n_parts,)
    top = [dla[0].labels[i] for i in np.argsort(-share)[:3]]
    # patching: the same relation asked of a different subject with a different answer
    resid, heads = [], []
    pair_rng = ctx.rng(8)
    for i in sample[:ctx.budget("patching pairs", 12, 6, 1)]:
        same_relation = world.prompts[:, 1] == world.prompts[i, 1]
        j = int(pair_rng.choice(np.nonzero(same_relation & (world.answers != world.answers[i]))[0]))
        metric = logit_diff_metric(int(world.answers[i]), int(world.answers[j]))
        resid.append(patch_residual(model, world.prompts[i:i + 1], world.prompts[j:j + 1], metric).values)
        heads.append(patch_heads(model, world.prompts[i:i + 1], world.prompts[j:j + 1], metric).values)
    resid_map, head_map = np.mean(resid, axis=0), np.mean(heads, axis=0)     # (L, T), (L, H)
    state.update(facts_model=model, world=world, facts_sample=sample)
    metrics = {"facts": {"n_facts": len(world.answers), "recall": recall, "dla_max_sum_gap": float(gap),
                         "dla_top_parts": top, "dla_mean_share": dict(zip(dla[0].labels, share.tolist(), strict=True)),
                         "patch_resid": resid_map.tolist(), "patch_heads": head_map.tolist()}}
    return Finding(
        title="Facts: memorised, attributed and patched",
        metrics=metrics,
        claims=[claims.claim("interpret.facts_recall", "A small GPT memorises an invented world of facts",
                             claims.ge("recall on the training facts", recall, ctx.threshold("recall", 0.95))),
                claims.claim("interpret.dla_sums", "Direct logit attribution (final LayerNorm scale frozen at the "
                             "clean run): the parts add up to the logit difference, answer vs runner-up",
                             claims.le("largest |sum of parts - logit difference|", float(gap), 1e-8))],
        plots=[_patching_plot(ctx, resid_map, head_map)],
        text=[f"The model recalls {recall:.1%} of the {len(world.answers)} facts. The parts that write most of "
              f"the answer's logit difference directly: {', '.join(top)}."])


def _patching_plot(ctx: Context, resid_map: np.ndarray, head_map: np.ndarray) -> Any:
    fig = ctx.figure(8, 2.8)
    left, right = fig.subplots(1, 2)
    for ax, grid, xlabels, title in ((left, resid_map, FactWorld.POSITIONS, "residual stream entering block"),
                                     (right, head_map, [f"H{h}" for h in range(head_map.shape[1])], "head output")):
        shown = ax.imshow(grid, cmap="RdBu", vmin=-1, vmax=1, aspect="auto")
        ax.set(title=title, yticks=range(grid.shape[0]), ylabel="layer", xticks=range(len(xlabels)),
               xticklabels=xlabels)
        ax.tick_params(labelsize=7)
    fig.colorbar(shown, ax=[left, right], shrink=0.8)
    return ctx.savefig(fig, "patching.png", "Activation patching, a fact into the same question about another "
                       "subject: the share of the logit difference restored (0 corrupted, 1 clean).")


# ----------------------------------------------------------------------------- 5. causal tracing
def tracing(ctx: Context, state: dict[str, Any]) -> Finding:
    """Causal tracing of the facts model: noise on the subject, restore one state at a time."""
    model, world, sample = state["facts_model"], state["world"], state["facts_sample"]
    traces = [causal_trace(model, world.prompts[i], [FactWorld.SUBJECT], int(world.answers[i]),
                           samples=ctx.budget("noise samples per fact", 10, 10, 2), seed=int(i)) for i in sample]
    effect = {kind: np.mean([t.indirect_effect(kind) for t in traces], axis=0) for kind in ("resid", "mlp", "attn")}
    drop = float(np.mean([t.p_clean - t.p_corrupted for t in traces]))
    layer, position = np.unravel_index(np.argmax(effect["mlp"]), effect["mlp"].shape)
    resid_at = [int(i) for i in np.unravel_index(np.argmax(effect["resid"][:-1]), effect["resid"][:-1].shape)]
    at_subject = effect["mlp"][:, FactWorld.SUBJECT]
    elsewhere = np.delete(effect["mlp"], FactWorld.SUBJECT, axis=1)
    subject_resid = float(effect["resid"][:, FactWorld.SUBJECT].max() / drop)
    mid = 0 < int(layer) < model.cfg.n_layer - 1
    metrics = {"tracing": {"p_clean": float(np.mean([t.p_clean for t in traces])),
                           "p_corrupted": float(np.mean([t.p_corrupted for t in traces])), "drop": drop,
                           "resid_effect": effect["resid"].tolist(), "mlp_effect": effect["mlp"].tolist(),
                           "attn_effect": effect["attn"].tolist(), "best_mlp_layer": int(layer),
                           "best_mlp_position": FactWorld.POSITIONS[int(position)],
                           "best_mlp_effect": float(effect["mlp"].max()),
                           "best_mlp_share": float(effect["mlp"].max() / drop),
                           "best_resid_share": float(effect["resid"][:-1].max() / drop),
                           "best_resid_layer": resid_at[0], "best_resid_position": FactWorld.POSITIONS[resid_at[1]],
                           "mlp_at_subject_max": float(at_subject.max()), "mlp_elsewhere_max": float(elsewhere.max()),
                           "subject_resid_restores": subject_resid, "rome_pattern": bool(
                               position == FactWorld.SUBJECT and mid)}}
    m = metrics["tracing"]
    if m["rome_pattern"]:
        verdict = "as ROME found in GPT-2, a middle-layer MLP at the last subject token carries the most"
    elif position == FactWorld.SUBJECT:
        verdict = ("at the last subject token, as ROME found in GPT-2, but in the "
                   f"{'first' if layer == 0 else 'last'} layer rather than a middle one")
    else:
        verdict = ("unlike ROME's finding in GPT-2 (middle-layer MLPs at the last subject token), the largest MLP "
                   "effect is at a later token, after attention has moved the subject there")
    return Finding(
        title="Causal tracing: where the fact is recalled",
        metrics=metrics,
        claims=[claims.claim(
            "interpret.causal_tracing", "Causal tracing locates recall: noise on the subject destroys the answer, "
            "and restoring the residual stream at a single layer and position (before the last layer, whose "
            "stream is the output) brings back at least half of it",
            claims.ge("p(answer) lost to the noise", drop, ctx.threshold("p(answer) lost, at least", 0.3)),
            claims.ge("share restored by the best single state", m["best_resid_share"], 0.5))],
        plots=[_trace_plot(ctx, effect)],
        text=[f"Noise on the subject's embedding drops p(answer) from {m['p_clean']:.2f} to {m['p_corrupted']:.2f}. "
              f"Restoring the residual stream after block {m['best_resid_layer']} at position "
              f"'{m['best_resid_position']}' brings back {m['best_resid_share']:.0%} of that; the subject's own stream "
              f"at its best layer {subject_resid:.0%}.",
              f"The largest MLP effect ({m['best_mlp_effect']:.2f}, {m['best_mlp_share']:.0%} of the drop) is at "
              f"layer {m['best_mlp_layer']}, position '{m['best_mlp_position']}': {verdict}. The largest MLP effect "
              f"at the subject is {m['mlp_at_subject_max']:.2f}, elsewhere {m['mlp_elsewhere_max']:.2f}."])


def _trace_plot(ctx: Context, effect: dict[str, np.ndarray]) -> Any:
    fig = ctx.figure(10, 2.8)
    for ax, (kind, grid), cmap in zip(fig.subplots(1, 3), effect.items(), ("Purples", "Greens", "Reds"), strict=True):
        shown = ax.imshow(grid.T, cmap=cmap, aspect="auto")
        ax.set(title=f"restore {kind}", xlabel="layer", xticks=range(grid.shape[0]), yticks=range(grid.shape[1]),
               yticklabels=FactWorld.POSITIONS)
        fig.colorbar(shown, ax=ax)
    return ctx.savefig(fig, "causal_tracing.png", "Causal tracing (ROME's figure): the average rise in p(answer) "
                       "when one state is restored from the clean run into the run with a noised subject.")


STAGE = Stage("interpret", "look inside: induction circuit, attention vs effect, logit lens, facts and causal tracing",
              experiments=(induction_circuit, looks_vs_does, lens, facts, tracing),
              headline=("recall of invented facts", "facts.recall"),
              intro=("Interpretability on models trained in this run, with groundup.interpret: hooks read and "
                     "replace activations; ablation and patching show what a part does; the logit lens and "
                     "causal tracing show where a prediction forms and where a fact is recalled.",),
              title="Interpretability: looking inside trained models")
