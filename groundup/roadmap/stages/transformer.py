"""Stage ``transformer``: the transformer's parts, each measured, and a GPT trained on Tiny Shakespeare.

1. Scaled dot products: for random queries and keys of dimension d, the score q.k has variance d;
   dividing by sqrt(d) brings it back to 1, and keeps the softmax out of saturation.
2. A GPT (``groundup.models.gpt``, the ``baby`` preset: 4 layers, 4 heads, 128 dims, context 64,
   rotary positions) trained on Tiny Shakespeare with nanoGPT's CPU recipe; validation loss and a
   sample. The checkpoint is kept, so ``groundup sample runs/transformer/gpt`` continues from it.
3. Its masks and positions, checked exactly on the trained weights: the causal mask, the padding
   mask, and permutation equivariance without positions (and its loss with them).
4. Multiple heads: every head's attention map, and how far apart the heads of a layer attend.
5. What the sub-layers carry: the loss after switching off (zeroing) each attention or
   feed-forward sub-layer of the trained GPT.
6. Residual connections and layer norm: the same deep stack (``groundup.models.deep_stack``)
   trained with and without them.
7. An encoder-decoder transformer (``groundup.models.transformer_seq2seq``) on the attention
   stage's date translation.

References: Vaswani et al. 2017, https://arxiv.org/abs/1706.03762 (scaled dot-product attention,
heads, masks, sinusoidal positions); Radford et al. 2019 (GPT-2); Su et al. 2021,
https://arxiv.org/abs/2104.09864 (rotary positions); He et al. 2016, https://arxiv.org/abs/1512.03385
(residual connections); Ba et al. 2016, https://arxiv.org/abs/1607.06450 (layer norm); Geva et al.
2021, https://arxiv.org/abs/2012.14913 (feed-forward layers as key-value memories); Karpathy's nanoGPT.
"""

from __future__ import annotations

import dataclasses
import html
import math
from typing import Any

import numpy as np

import groundup as gu
from groundup import functional as F
from groundup.data import get_batch, load_text
from groundup.models.deep_stack import DeepStackConfig, DeepStackLM
from groundup.models.gpt import GPT, Block, CausalSelfAttention, GPTConfig
from groundup.models.gpt_fast import FastGPT
from groundup.models.transformer_seq2seq import TransformerSeq2Seq, TransformerSeq2SeqConfig
from groundup.roadmap import Finding, claims
from groundup.roadmap.plots import smooth
from groundup.roadmap.runner import Context, Stage
from groundup.roadmap.seq2seq import DateCodec, bucket_accuracy, evaluate_seq2seq, train_seq2seq
from groundup.roadmap.training import train
from groundup.tokenizers import CharTokenizer
from groundup.train import TrainConfig
from groundup.train.evaluation import mean_loss

__all__ = ["STAGE", "score_statistics", "mask_checks", "permutation_checks", "ablate_sublayers", "head_distances",
           "mean_attention_distance"]

VAL_FRACTION = 0.1


# ----------------------------------------------------------------------------- 1. scaled dot products
def score_statistics(dims: tuple[int, ...], n_keys: int, rng: np.random.Generator,
                     n_queries: int = 2000) -> dict[str, list[float]]:
    """Scores of random unit-variance queries against ``n_keys`` random keys, for each head dim d.

    Returns, per d: the variance of q.k and of q.k / sqrt(d), and the mean largest softmax weight
    of a query's row with and without the scaling (1 = saturated: all weight on one key).
    """
    out: dict[str, list[float]] = {"dims": list(dims), "var_raw": [], "var_scaled": [], "max_weight_raw": [],
                                   "max_weight_scaled": []}
    for d in dims:
        q = rng.standard_normal((n_queries, d))                                # (Q, d)
        k = rng.standard_normal((n_keys, d))                                   # (K, d)
        raw = q @ k.T                                                          # (Q, K)
        scaled = raw / math.sqrt(d)
        out["var_raw"].append(float(raw.var()))
        out["var_scaled"].append(float(scaled.var()))
        for name, s in (("raw", raw), ("scaled", scaled)):
            p = np.exp(s - s.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            out[f"max_weight_{name}"].append(float(p.max(axis=1).mean()))
    return out


# ----------------------------------------------------------------------------- 2. the GPT
def gpt_loss(model: GPT, data: np.ndarray, block_size: int, n_batches: int, ctx: Context,
             batch_size: int = 32) -> float:
    """Mean loss over ``n_batches`` fixed batches of ``data`` (the same windows every call), in eval mode."""
    rng = ctx.rng(2)
    batch_size = ctx.pick(batch_size, batch_size, 4)                     # tiny: a smoke test
    batches = [tuple(ctx.to_tensor(a) for a in get_batch(data, batch_size, block_size, rng)) for _ in range(n_batches)]
    return mean_loss(model, batches)


# ----------------------------------------------------------------------------- 3. masks and positions
def mask_checks(model: GPT, windows: np.ndarray, rng: np.random.Generator) -> dict[str, float]:
    """Exact checks on the trained weights; returns the largest changes measured (0.0 = exactly none)."""
    B, T = windows.shape
    V = model.cfg.vocab_size
    with gu.no_grad():
        base = model(windows).numpy()                                          # (B, T, V)
        past_change, own_change = 0.0, np.inf
        for t in rng.choice(np.arange(1, T), size=6, replace=False):
            changed = windows.copy()
            changed[:, t] = (changed[:, t] + 1 + rng.integers(V - 1, size=B)) % V  # a different token at t
            out = model(changed).numpy()
            past_change = max(past_change, float(np.abs(out[:, :t] - base[:, :t]).max()))
            own_change = min(own_change, float(np.abs(out[:, t] - base[:, t]).max()))
        mask = np.ones((B, T), dtype=bool)
        mask[:, -T // 4:] = False                                               # right padding
        mask[0, T // 3] = mask[1 % B, T // 2] = False                           # and holes
        padded = model(windows, attention_mask=mask).numpy()
        other = np.where(mask, windows, rng.integers(V, size=windows.shape))   # new tokens in the padding
        pad_change = float(np.abs(model(other, attention_mask=mask).numpy()[mask] - padded[mask]).max())
        leak = float(np.abs(model(other).numpy()[mask] - model(windows).numpy()[mask]).max())
    return {"causal_max_change_before_t": past_change, "causal_min_change_at_t": own_change,
            "padding_max_change_at_real_positions": pad_change, "without_mask_change_at_real_positions": leak}


def permutation_checks(model: GPT, windows: np.ndarray, rng: np.random.Generator, device: str) -> dict[str, float]:
    """Permute the tokens of each window and compare the outputs with the permuted outputs.

    The trained weights are loaded into copies of the model with no causal mask and positions
    'none', 'rotary' (the trained model's) and 'learned' (a random position table, nanoGPT's init).
    """
    T = windows.shape[1]
    perm = rng.permutation(T)
    out = {}
    state = model.state_dict()
    for positions in ("none", "rotary", "learned"):
        gu.manual_seed(0)
        other = GPT(dataclasses.replace(model.cfg, pos_encoding=positions, causal=False)).to(device)
        other.load_state_dict({**other.state_dict(), **state}, strict=True)
        other.eval()
        with gu.no_grad():
            a = other(windows[:, perm]).numpy()                                # f(P x)
            b = other(windows).numpy()[:, perm]                                # P f(x)
        out[positions] = float(np.abs(a - b).max())
    return out


# ----------------------------------------------------------------------------- 4. heads
def head_distances(maps: np.ndarray) -> list[float]:
    """Per layer, the mean total-variation distance between the attention rows of two different heads.

    maps: (L, B, H, T, T). 0 = the heads attend identically, 1 = to disjoint positions.
    """
    L, _, H = maps.shape[:3]
    out = []
    for layer in range(L):
        pairs = [0.5 * np.abs(maps[layer, :, i] - maps[layer, :, j]).sum(-1).mean()
                 for i in range(H) for j in range(i + 1, H)]
        out.append(float(np.mean(pairs)))
    return out


def mean_attention_distance(maps: np.ndarray) -> np.ndarray:
    """(L, H): how far back, on average, each head looks (sum over s of weight * (t - s))."""
    T = maps.shape[-1]
    gap = np.arange(T)[:, None] - np.arange(T)[None, :]                        # (T, S): t - s
    return (maps * gap).sum(-1).mean(axis=(1, 3))                              # (L, H)


# ----------------------------------------------------------------------------- 5. ablations
def ablate_sublayers(model: GPT, evaluate: Any, rng: np.random.Generator, fractions: tuple[float, ...] = (0.5,),
                     trials: int = 3) -> dict[str, Any]:
    """Loss increases when parts of the model are switched off through its hook points.

    A sub-layer is off when its output (``blocks.{i}.hook_attn_out`` / ``hook_mlp_out``) is replaced
    by zeros: it adds nothing to the residual stream. Heads are switched off in ``attn.hook_z``
    (B, H, T, D) and feed-forward hidden units in ``mlp.hook_post`` (B, T, 4C). Measured: each
    sub-layer alone, all attention or all feed-forward sub-layers at once, and the same fraction of
    attention heads and of feed-forward hidden units in every layer.
    """
    base = evaluate()
    cfg = model.cfg

    def zero(act: Any, hook: Any) -> Any:
        return act * 0.0

    def keep_only(axis: int, dropped: np.ndarray, size: int) -> Any:
        keep = np.ones(size, dtype=np.float32)
        keep[dropped] = 0.0
        shape = [1, 1, 1, 1] if axis == 1 else [1, 1, size]
        shape[axis] = size
        mask = gu.tensor(keep.reshape(shape))                   # (1, H, 1, 1) or (1, 1, 4C)
        return lambda act, hook: act * mask.to(act.device).type(act.dtype)

    def loss_change(hooks: dict[str, Any]) -> float:
        with model.hooks(hooks):
            return evaluate() - base

    L = len(model.blocks)
    out: dict[str, Any] = {"base_loss": base, "per_layer": [], "fraction": []}
    for layer in range(L):
        out["per_layer"].append({"layer": layer, "attention": loss_change({f"blocks.{layer}.hook_attn_out": zero}),
                                 "feed_forward": loss_change({f"blocks.{layer}.hook_mlp_out": zero})})
    out["all_attention"] = loss_change({"blocks.*.hook_attn_out": zero})
    out["all_feed_forward"] = loss_change({"blocks.*.hook_mlp_out": zero})
    hidden = 4 * cfg.n_embd
    for fraction in fractions:
        attn, ff = [], []
        for _ in range(trials):
            attn.append(loss_change({f"blocks.{i}.attn.hook_z": keep_only(
                1, rng.choice(cfg.n_head, max(1, round(cfg.n_head * fraction)), replace=False), cfg.n_head)
                for i in range(L)}))
            ff.append(loss_change({f"blocks.{i}.mlp.hook_post": keep_only(
                2, rng.choice(hidden, round(hidden * fraction), replace=False), hidden) for i in range(L)}))
        out["fraction"].append({"fraction": fraction, "attention_heads": float(np.mean(attn)),
                                "feed_forward_units": float(np.mean(ff))})
    return out


# ----------------------------------------------------------------------------- the experiments
def scaled_dot_products(ctx: Context, state: dict[str, Any]) -> Finding:
    """Score variance and softmax saturation of random queries and keys, with and without 1/sqrt(d)."""
    scores = score_statistics((4, 16, 64, 256), n_keys=256, rng=ctx.rng(0), n_queries=ctx.pick(2000, 2000, 200))
    slope = float(np.polyfit(np.log(scores["dims"]), np.log(scores["var_raw"]), 1)[0])
    scores["raw_variance_exponent"] = slope
    return Finding(
        title="Scaled dot products", metrics={"scaled_dot_products": scores},
        claims=[claims.claim("transformer.scaling", "Scaling the scores by 1/sqrt(d) keeps their variance near 1 at "
                             "every head dim d, where the raw dot product's variance grows like d",
                             claims.ge("scaled variance, smallest", min(scores["var_scaled"]), 0.8),
                             claims.le("scaled variance, largest", max(scores["var_scaled"]), 1.25),
                             claims.near("raw variance: fitted exponent of d", slope, 1.0, 0.1)),
                claims.claim("transformer.saturation", "Without the scaling the softmax saturates at large d (d = "
                             "256, 256 keys: the largest weight of a row takes almost everything)",
                             claims.gt("mean largest weight, raw", scores["max_weight_raw"][-1],
                                       "mean largest weight, scaled", scores["max_weight_scaled"][-1], margin=0.5))],
        plots=[ctx.savefig(_scaling_plot(ctx, scores), "scaled_dot_products.png", "Random queries and keys with "
                           "unit-variance entries: score variance and the softmax's largest weight.")],
        text=[f"Dot products of random d-dimensional vectors have variance d (measured {scores['var_raw'][-1]:.0f} "
              f"at d = {scores['dims'][-1]}); divided by sqrt(d) they have variance near 1 at every d, and the "
              f"softmax over them stays soft (largest weight {scores['max_weight_scaled'][-1]:.2f} instead of "
              f"{scores['max_weight_raw'][-1]:.2f})."])


def gpt_on_shakespeare(ctx: Context, state: dict[str, Any]) -> Finding:
    """The baby GPT trained with nanoGPT's CPU recipe (the Trainer's defaults), as the fused twin."""
    iters = ctx.budget("GPT training steps", full=2000, quick=500, tiny=3, option="steps")
    eval_batches = ctx.budget("GPT validation batches of 32 x 64", full=40, quick=15, tiny=1)
    text = load_text("shakespeare")
    tokenizer = CharTokenizer(text)
    ids = np.asarray(tokenizer.encode(text), dtype=np.int64)
    cut = int(len(ids) * (1 - VAL_FRACTION))
    splits = {"train": ids[:cut], "val": ids[cut:]}
    cfg = GPTConfig.preset("baby", vocab_size=tokenizer.vocab_size)
    recipe = TrainConfig(max_iters=iters, batch_size=12)                 # nanoGPT's CPU recipe
    gu.manual_seed(ctx.seed)
    fast = FastGPT(cfg).to(ctx.device)           # train the fused twin; look inside the readable GPT
    rng, losses = ctx.rng(1), []
    trainer = train(ctx, fast, lambda split, _: get_batch(splits["train"], recipe.batch_size, cfg.block_size, rng),
                    steps=iters, lr=recipe.lr, min_lr=recipe.min_lr, warmup=recipe.warmup_iters,
                    grad_clip=recipe.grad_clip, weight_decay=recipe.weight_decay, betas=recipe.betas,
                    description="GPT on Tiny Shakespeare", eval_every=max(1, iters // 8),
                    evaluate=lambda t: {"val_loss": gpt_loss(fast, splits["val"], cfg.block_size, eval_batches, ctx)},
                    callbacks=[_step_losses(losses)], status=lambda info: f"val {info['val_loss']:.3f}")
    model = fast.as_class(GPT).eval()
    evals = [{"iter": r["iter"], "val_loss": r["val_loss"]} for r in trainer.history if r["kind"] == "eval"]
    history = {"train_loss": losses, "eval": evals, "wall_s": trainer.wall_s(), "recipe": {
        k: v for k, v in recipe.to_dict().items() if k in ("batch_size", "lr", "min_lr", "warmup_iters",
                                                            "weight_decay", "betas", "grad_clip", "schedule")}}
    gpt_dir = ctx.out_dir / "gpt"
    model.save(gpt_dir)
    tokenizer.save(gpt_dir)
    val_loss = evals[-1]["val_loss"]
    sample_chars = 300
    sample = tokenizer.decode(model.generate(np.array([[tokenizer.encode("\n")[0]]]), sample_chars, temperature=0.8,
                                             seed=ctx.seed).numpy()[0].tolist())
    state.update(model=model, splits=splits, cfg=cfg, tokenizer=tokenizer)
    target = ctx.threshold("GPT validation loss, at most", full=1.90, quick=2.20)
    n_params = model.num_parameters()
    return Finding(
        title="A GPT on Tiny Shakespeare",
        metrics={"gpt": {"config": cfg.to_dict(), "parameters": n_params, "steps": iters, "val_loss": val_loss,
                         "evals": evals, "train_loss": losses, "wall_s": history["wall_s"], "recipe": history["recipe"],
                         "sample": sample, "checkpoint": str(gpt_dir), "uniform_loss": math.log(cfg.vocab_size),
                         "sample_characters": sample_chars, "sample_temperature": 0.8}},
        claims=[claims.claim("transformer.gpt", f"A {n_params / 1e6:.1f}M-parameter GPT learns Tiny Shakespeare in "
                             f"{iters:,} steps on a CPU (character-level; a uniform guess is ln {cfg.vocab_size} = "
                             f"{math.log(cfg.vocab_size):.2f})", claims.le("validation loss", val_loss, target))],
        plots=[ctx.savefig(_gpt_plot(ctx, history), "gpt_loss.png", "GPT training loss (moving average) and "
                           "validation loss on fixed batches.")],
        sections=[("A sample from the GPT", f"<p>{sample_chars} characters at temperature 0.8 after {iters:,} steps "
                   f"(continue with <code>groundup sample {html.escape(str(gpt_dir))} --prompt ROMEO:</code>):"
                   f"</p><pre>{html.escape(sample)}</pre>")],
        text=[f"A {n_params:,}-parameter GPT ({cfg.n_layer} layers, {cfg.n_head} heads, {cfg.n_embd} dims, rotary "
              f"positions) trained for {iters:,} steps of {recipe.batch_size} x {cfg.block_size} characters reaches "
              f"validation loss {val_loss:.3f} in {history['wall_s']:.0f} s (a uniform guess: "
              f"{math.log(cfg.vocab_size):.2f})."])


def _step_losses(losses: list[float]) -> Any:
    """A Trainer callback appending each step's loss to ``losses``."""
    return lambda trainer, event, info: losses.append(info["loss"]) if event == "step" else None


def masks_and_positions(ctx: Context, state: dict[str, Any]) -> Finding:
    """The causal and padding masks and permutation equivariance, checked exactly on the trained weights."""
    model, splits, cfg = state["model"], state["splits"], state["cfg"]
    check_rng = ctx.rng(3)
    windows, _ = get_batch(splits["val"], 4, cfg.block_size, check_rng)       # (4, T)
    masks = mask_checks(model, windows, check_rng)
    perms = permutation_checks(model, windows, check_rng, ctx.device)
    return Finding(
        title="Masks and positions, checked exactly", metrics={"masks": masks, "permutation": perms},
        claims=[claims.claim("transformer.causal", "Causal mask: changing token t never changes the outputs at "
                             "positions before t (exactly), while the output at t does change",
                             claims.le("largest change before t", masks["causal_max_change_before_t"], 0.0),
                             claims.above("smallest change at t", masks["causal_min_change_at_t"], 0.0)),
                claims.claim("transformer.padding", "Padding mask: whatever tokens sit in the padded positions, the "
                             "outputs at the real positions do not change (exactly); without the mask they do",
                             claims.le("largest change, with mask", masks["padding_max_change_at_real_positions"], 0.0),
                             claims.above("largest change, without mask",
                                          masks["without_mask_change_at_real_positions"], 0.0)),
                claims.claim("transformer.permutation", "Without positional information (and without the causal mask) "
                             "self-attention is permutation-equivariant: permuting the input permutes the output; "
                             "rotary or learned positions break that",
                             claims.le("max |f(Px) - P f(x)|, no positions", perms["none"], 1e-4),
                             claims.ge("rotary", perms["rotary"], 1e-2), claims.ge("learned", perms["learned"], 1e-2))],
        text=["On the trained weights the causal and padding masks hold exactly (the largest change where nothing may "
              f"change is {masks['causal_max_change_before_t']:g} and {masks['padding_max_change_at_real_positions']:g}"
              f"), and without positions the model is permutation-equivariant up to float rounding "
              f"({perms['none']:.2g})."])


def heads(ctx: Context, state: dict[str, Any]) -> Finding:
    """Every head's attention map, and how differently the heads of a layer attend."""
    model, splits, cfg, tokenizer = state["model"], state["splits"], state["cfg"], state["tokenizer"]
    line = "ROMEO:\nBut, soft! what light through"[:cfg.block_size]
    head_windows, _ = get_batch(splits["val"], 16, cfg.block_size, ctx.rng(4))
    maps = model.attention_maps(head_windows)                                  # (L, 16, H, T, T)
    distances = head_distances(maps)
    tv_min = ctx.threshold("heads of a layer: mean total-variation distance, at least", full=0.3)
    grid = _attention_grid(ctx, model.attention_maps(np.array([tokenizer.encode(line)]))[:, 0], line)
    return Finding(
        title="Multiple heads",
        metrics={"heads": {"mean_tv_distance_between_heads": distances,
                           "mean_attention_distance": mean_attention_distance(maps).tolist()}},
        claims=[claims.claim("transformer.heads", "Multiple heads attend to different things: in every layer, two "
                             "heads' attention rows differ (mean total-variation distance, 0 = identical, 1 = "
                             "disjoint)", claims.ge("smallest layer mean", min(distances), tv_min))],
        plots=[ctx.savefig(grid, "attention_maps.png", "Every head's attention on one line (rows: the position "
                           "attending, columns: the positions it reads; darker = more weight). The causal mask "
                           "leaves the upper triangle empty.")],
        text=[f"The heads attend differently: the mean total-variation distance between two heads of a layer is "
              f"{min(distances):.2f}-{max(distances):.2f} across the layers."])


def ablations(ctx: Context, state: dict[str, Any]) -> Finding:
    """Switch off sub-layers, heads and hidden units of the trained GPT through its hook points."""
    model, splits, cfg = state["model"], state["splits"], state["cfg"]
    batches = ctx.budget("ablation validation batches of 32 x 64", full=20, quick=8, tiny=1)
    ablation = ablate_sublayers(model, lambda: gpt_loss(model, splits["val"], cfg.block_size, batches, ctx),
                                ctx.rng(7), trials=ctx.pick(3, 3, 1))
    parts = [(r[kind], f"the {kind.replace('_', '-')} sub-layer of layer {r['layer']}")
             for r in ablation["per_layer"] for kind in ("attention", "feed_forward")]
    worst = max(parts)
    ablation["most_important_sublayer"] = {"loss_increase": worst[0], "name": worst[1]}
    fractions = "; ".join(f"{f['fraction']:.0%} of the attention heads costs {f['attention_heads']:.2f} nats, "
                          f"{f['fraction']:.0%} of the feed-forward hidden units {f['feed_forward_units']:.2f}"
                          for f in ablation["fraction"])
    heads_cost_more = all(f["attention_heads"] > f["feed_forward_units"] for f in ablation["fraction"])
    note = (f"Zeroing the same fraction of each in every layer: {fractions}"
            + (". Fraction for fraction the picture reverses: a head is a large unit and there are few of them; "
               "the feed-forward layers spread what they hold over many units." if heads_cost_more else "."))
    return Finding(
        title="What the sub-layers carry", metrics={"ablation": ablation},
        claims=[claims.claim("transformer.feed_forward", "The feed-forward layers carry much of what is learned: "
                             "switching off every feed-forward sub-layer costs more loss than switching off every "
                             "attention sub-layer", claims.gt("loss increase, feed-forward off",
                                                              ablation["all_feed_forward"], "attention off",
                                                              ablation["all_attention"]))],
        plots=[ctx.savefig(_ablation_plot(ctx, ablation), "ablation.png", "Validation loss increase when one "
                           "sub-layer of the trained GPT is switched off (its output zeroed).")],
        sections=[("Ablations", _ablation_table(ablation))], notes=[note],
        text=[f"Switching off all feed-forward sub-layers costs {ablation['all_feed_forward']:.2f} nats of loss, all "
              f"attention sub-layers {ablation['all_attention']:.2f}. The single most important sub-layer in this "
              f"run is {worst[1]} ({worst[0]:.2f} nats)."])


DEEP_VARIANTS = (("residual + layer norm", True, True), ("layer norm, no residual", False, True),
                 ("residual, no layer norm", True, False), ("neither", False, False))


def train_deep_stacks(ctx: Context, splits: dict[str, np.ndarray], vocab_size: int, size: dict[str, int],
                      steps: int, lr: float, eval_batches: int) -> dict[str, Any]:
    """The same deep stack, four ways, trained on the same batches from the same initial weights.

    size: ``n_layer``, ``n_embd``, ``block_size``. AdamW (betas 0.9/0.99, weight decay 0.1), batch 16,
    a constant learning rate, clipping at 1.0; the gradient norms per layer are those of the first
    step before clipping (read after the step, when clipping has scaled them all by one factor).
    """
    results = {}
    for name, residual, norm in DEEP_VARIANTS:
        cfg = DeepStackConfig(vocab_size=vocab_size, n_head=4, residual=residual, norm=norm, **size)
        gu.manual_seed(ctx.seed)
        model = DeepStackLM(cfg).to(ctx.device)
        rng, first, losses = ctx.rng(5), {}, []

        def first_step(trainer: Any, event: str, info: dict[str, Any], model: DeepStackLM = model,
                       first: dict[str, Any] = first) -> None:
            if event == "step" and info["iter"] == 1:
                coef = 1.0 / (info["grad_norm"] + 1e-6)                # clip_grad_norm_'s factor at max_norm 1
                first["norms"] = [n / min(coef, 1.0) for n in model.layer_grad_norms()]

        trainer = train(ctx, model, lambda split, _, rng=rng: get_batch(splits["train"], 16, size["block_size"], rng),
                        steps=steps, lr=lr, schedule="constant", grad_clip=1.0, description=f"deep stack: {name}",
                        optimizer=gu.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=0.1),
                        callbacks=[_step_losses(losses), first_step])
        val_rng = ctx.rng(6)
        val = mean_loss(model, [tuple(ctx.to_tensor(a) for a in get_batch(splits["val"], 32, cfg.block_size, val_rng))
                                for _ in range(eval_batches)])
        results[name] = {"residual": residual, "norm": norm, "train_loss": losses, "val_loss": val,
                         "grad_norms_at_init": first["norms"], "wall_s": trainer.wall_s()}
    return results


def residuals_and_layer_norm(ctx: Context, state: dict[str, Any]) -> Finding:
    """The same deep stack with and without residual connections and layer norm."""
    splits, vocab_size = state["splits"], state["tokenizer"].vocab_size
    deep_layers = ctx.budget("deep stack layers", full=8, quick=8, tiny=2, option="deep_layers")
    deep_size = {"n_layer": deep_layers, "n_embd": ctx.budget("deep stack width", full=64, quick=32, tiny=16),
                 "block_size": ctx.budget("deep stack context", full=64, quick=32, tiny=16)}
    deep_steps = ctx.budget("deep stack training steps per variant", full=200, quick=80, tiny=2)
    deep = train_deep_stacks(ctx, splits, vocab_size, deep_size, deep_steps, lr=ctx.pick(1e-3, 3e-3),
                             eval_batches=ctx.budget("deep stack validation batches", full=8, quick=4, tiny=1))
    both, no_res, no_norm = deep["residual + layer norm"], deep["layer norm, no residual"], \
        deep["residual, no layer norm"]
    counts = np.bincount(splits["train"], minlength=vocab_size) / len(splits["train"])
    baselines = {"uniform_loss": math.log(vocab_size),
                 "unigram_loss": float(-(counts[counts > 0] * np.log(counts[counts > 0])).sum()),
                 "first_step_grad_norm_ratio_without_norm": float(np.mean(no_norm["grad_norms_at_init"])
                                                                  / np.mean(both["grad_norms_at_init"]))}
    res_margin = ctx.threshold("deep stack: loss gained by the residual path, at least", full=0.3)
    norm_margin = ctx.threshold("deep stack: loss gained by layer norm, at least", full=0.1)
    return Finding(
        title="Residual connections and layer norm", metrics={"deep_stack": deep, "deep_stack_baselines": baselines},
        claims=[claims.claim("transformer.residual", f"Residual connections make a deep stack trainable ({deep_layers} "
                             f"layers, {deep_steps} steps, validation loss): without them it learns far less",
                             claims.gt("loss without residuals", no_res["val_loss"],
                                       "loss with residuals and layer norm", both["val_loss"], margin=res_margin)),
                claims.claim("transformer.layer_norm", "Layer norm helps too: the same stack with residuals but "
                             "without layer norm learns more slowly",
                             claims.gt("loss without layer norm", no_norm["val_loss"],
                                       "loss with residuals and layer norm", both["val_loss"], margin=norm_margin))],
        plots=[ctx.savefig(_deep_plot(ctx, deep), "deep_stack.png", f"The same {deep_layers}-layer stack trained four "
                           "ways on the same batches. Left: training loss. Right: the gradient norm reaching each "
                           "layer's parameters at the first step.")],
        notes=[f"For scale: a uniform guess has loss ln V = {baselines['uniform_loss']:.2f} and a character-frequency "
               f"guess {baselines['unigram_loss']:.2f}; with neither residuals nor layer norm the stack ends at "
               f"{deep['neither']['val_loss']:.2f} and with layer norm alone at {no_res['val_loss']:.2f}. With "
               "residuals but no layer norm the first step's gradients are "
               f"{baselines['first_step_grad_norm_ratio_without_norm']:.2g} times those with both (see the plot), "
               "and Adam's per-parameter scaling makes up for much of that."],
        text=[f"The {deep_layers}-layer stack reaches validation loss {both['val_loss']:.2f} with residuals and layer "
              f"norm, {no_res['val_loss']:.2f} without residuals and {no_norm['val_loss']:.2f} without layer norm, "
              f"after {deep_steps} steps."])


def encoder_decoder(ctx: Context, state: dict[str, Any]) -> Finding:
    """An encoder-decoder transformer on the attention stage's date translation."""
    from groundup.data import date_pairs

    codec = DateCodec()
    n_train = ctx.budget("date pairs for training", full=20000, quick=20000, tiny=300)
    n_test = ctx.budget("date pairs for testing", full=3000, quick=2000, tiny=60)
    pairs = date_pairs(n_train + n_test, seed=ctx.seed)
    train_pairs, test_pairs = pairs[:n_train], pairs[n_train:]
    steps = ctx.budget("encoder-decoder training steps", full=2000, quick=1000, tiny=3)
    layers = ctx.budget("encoder-decoder layers (each side)", full=2, quick=1, tiny=1)
    gu.manual_seed(ctx.seed)
    cfg = TransformerSeq2SeqConfig(codec.src_vocab_size, codec.tgt_vocab_size, d_model=64, nhead=4,
                                   num_encoder_layers=layers, num_decoder_layers=layers, dim_feedforward=128,
                                   max_len=96)                                 # the longest dates have 69 characters
    model = TransformerSeq2Seq(cfg).to(ctx.device)
    history = train_seq2seq(ctx, model, train_pairs, codec, iters=steps, lr=5e-3, batch_size=64, rng=ctx.rng(8),
                            description="encoder-decoder transformer on dates")
    result = evaluate_seq2seq(model, test_pairs, codec, ctx.device)
    lengths = np.array([len(t) for t, _ in test_pairs])
    seq = {"config": dataclasses.asdict(cfg), "parameters": model.num_parameters(), "steps": steps,
           "exact_match": float(result["correct"].mean()), "wall_s": history["wall_s"],
           "accuracy_by_length": bucket_accuracy(result["correct"], lengths)}
    return Finding(
        title="An encoder-decoder transformer", metrics={"encoder_decoder": seq},
        claims=[claims.claim("transformer.encoder_decoder", "An encoder-decoder transformer (self-attention over the "
                             "input, causal self-attention and cross-attention in the decoder) learns the date "
                             "translation of the attention stage",
                             claims.ge("exact match", seq["exact_match"], ctx.threshold(
                                 "encoder-decoder exact match, at least", full=0.95, quick=0.8)))],
        text=[f"An encoder-decoder transformer translates {seq['exact_match']:.1%} of held-out dates exactly after "
              f"{steps:,} steps."])


# ----------------------------------------------------------------------------- plots and tables
def _gpt_plot(ctx: Context, history: dict[str, Any]) -> Any:
    fig = ctx.figure(7, 3.6)
    ax = fig.subplots()
    ax.plot(smooth(history["train_loss"], 25), color="C0", label="train (moving average)")
    ax.plot([e["iter"] for e in history["eval"]], [e["val_loss"] for e in history["eval"]], "o-", color="C3",
            label="validation")
    ax.set(xlabel="step", ylabel="cross-entropy (nats per character)", title="GPT on Tiny Shakespeare")
    ax.legend(fontsize=8)
    return fig


def _scaling_plot(ctx: Context, scores: dict[str, list[float]]) -> Any:
    fig = ctx.figure(8, 3.4)
    left, right = fig.subplots(1, 2)
    left.loglog(scores["dims"], scores["var_raw"], "o-", label="q.k")
    left.loglog(scores["dims"], scores["var_scaled"], "o-", label="q.k / sqrt(d)")
    left.set(xlabel="head dim d", ylabel="score variance", title="score variance")
    right.semilogx(scores["dims"], scores["max_weight_raw"], "o-", label="q.k")
    right.semilogx(scores["dims"], scores["max_weight_scaled"], "o-", label="q.k / sqrt(d)")
    right.set(xlabel="head dim d", ylabel="largest softmax weight (256 keys)", ylim=(0, 1.05),
              title="softmax saturation")
    for ax in (left, right):
        ax.legend(fontsize=8)
    return fig


def _attention_grid(ctx: Context, maps: np.ndarray, text: str) -> Any:
    """Every head's map (L, H, T, T) as a grid; a tiny run draws the first layer without tick labels (fast)."""
    if ctx.tiny:
        maps = maps[:1]
    L, H, T, _ = maps.shape
    fig = ctx.figure(2.6 * H, 2.6 * L)
    axes = np.atleast_2d(fig.subplots(L, H))
    labels = [c if c not in "\n " else {"\n": "\\n", " ": "_"}[c] for c in text[:T]]
    every = max(1, -(-T // 12))                # at most a dozen labelled ticks per axis: readable at 8 pt
    ticks = list(range(0, T, every))
    image = None
    for layer in range(L):
        for head in range(H):
            ax = axes[layer, head]
            image = ax.imshow(maps[layer, head], cmap="Greys", vmin=0, vmax=1)
            ax.set_title(f"layer {layer}, head {head}", fontsize=9)
            if ctx.tiny:
                ax.set(xticks=[], yticks=[])
            else:
                ax.set_xticks(ticks, [f"{labels[i]}" for i in ticks], fontsize=8, fontfamily="monospace")
                ax.set_yticks(ticks, [f"{labels[i]}" for i in ticks], fontsize=8, fontfamily="monospace")
            if layer == L - 1:
                ax.set_xlabel("key (attended to)", fontsize=8)
            if head == 0:
                ax.set_ylabel("query", fontsize=8)
    fig.colorbar(image, ax=axes.ravel().tolist(), label="attention weight", shrink=0.6)
    return fig


def _ablation_plot(ctx: Context, ablation: dict[str, Any]) -> Any:
    fig = ctx.figure(6, 3.4)
    ax = fig.subplots()
    layers = [r["layer"] for r in ablation["per_layer"]]
    x = np.arange(len(layers))
    ax.bar(x - 0.2, [r["attention"] for r in ablation["per_layer"]], 0.4, label="attention off", color="C0")
    ax.bar(x + 0.2, [r["feed_forward"] for r in ablation["per_layer"]], 0.4, label="feed-forward off", color="C1")
    ax.set_xticks(x, [f"layer {i}" for i in layers])
    ax.set(ylabel="validation loss increase (nats)", title="switching off one sub-layer")
    ax.legend(fontsize=8)
    return fig


def _deep_plot(ctx: Context, deep: dict[str, Any]) -> Any:
    fig = ctx.figure(9, 4.2)
    left, right = fig.subplots(1, 2)
    for k, (name, r) in enumerate(deep.items()):
        left.plot(smooth(r["train_loss"], 10), color=f"C{k}", label=f"{name} (val {r['val_loss']:.2f})")
        right.semilogy(np.arange(len(r["grad_norms_at_init"])), r["grad_norms_at_init"], "o-", color=f"C{k}")
    left.set(xlabel="step", ylabel="training loss", title="training")
    right.set(xlabel="layer (0 = nearest the input)", ylabel="gradient norm at step 0", title="gradient per layer")
    fig.legend(*left.get_legend_handles_labels(), loc="outside lower center", ncol=2, fontsize=8)  # off the curves
    return fig


def _ablation_table(ablation: dict[str, Any]) -> str:
    rows = "".join(f"<tr><td>layer {r['layer']}</td><td class=num>{r['attention']:.3f}</td>"
                   f"<td class=num>{r['feed_forward']:.3f}</td></tr>" for r in ablation["per_layer"])
    rows += (f"<tr><td>all layers</td><td class=num>{ablation['all_attention']:.3f}</td>"
             f"<td class=num>{ablation['all_feed_forward']:.3f}</td></tr>")
    rows += "".join(f"<tr><td>{f['fraction']:.0%} of heads / of hidden units, every layer</td>"
                    f"<td class=num>{f['attention_heads']:.3f}</td><td class=num>{f['feed_forward_units']:.3f}</td>"
                    f"</tr>" for f in ablation["fraction"])
    return (f"<p>Validation loss {ablation['base_loss']:.3f} with everything on (on the ablations' own, fewer, "
            "validation batches, so it differs a little from the headline's); the increase when a part is "
            "switched off (its output projection, or the columns of it that carry the chosen heads or hidden units, "
            "set to zero):</p><table><tr><th>switched off</th><th>attention</th><th>feed-forward</th></tr>"
            + rows + "</table>")

# Report guide: static text, not part of the run's record (the provenance check reads only the record).
HOW = (
    "Scaled dot-product attention compares every query with every key; dividing by √D keeps the scores' "
    "variance near one, so the softmax does not saturate as the head dimension grows. A mask sets the "
    "scores a position may not see to −∞ before the softmax (causal: nothing from the future):",
    '<div class="math">Attention(Q, K, V) = softmax(Q Kᵀ / √D + M) V,   M_{ij} = 0 if j ≤ i else −∞\n'
    'multi-head: head_h = Attention(X W_q^h, X W_k^h, X W_v^h),   MHA(X) = [head_1 … head_H] W_o</div>',
    "Attention by itself is permutation-equivariant: shuffling the tokens shuffles the outputs, so order "
    "must be added, with a learned or sinusoidal table added to the embeddings, or by rotating queries "
    "and keys by a position-dependent angle (rotary), which makes scores depend on i − j.",
    '<div class="math">learned: x_i = E[token_i] + P[i]      rotary: q_i ↦ R(iθ) q_i,  k_j ↦ R(jθ) k_j,  '
    '⟨R(iθ)q, R(jθ)k⟩ = ⟨q, R((j−i)θ)k⟩</div>',
    "A pre-norm block adds each sub-layer's output to a residual stream; layer norm rescales each "
    "position's vector to zero mean and unit variance before a sub-layer. The residual path gives the "
    "gradient an identity route through a deep stack:",
    '<div class="math">x ← x + MHA(LN(x)),   x ← x + MLP(LN(x)),   MLP(u) = W₂ gelu(W₁ u)\n'
    'LN(u) = γ ⊙ (u − mean(u)) / √(var(u) + ε) + β,   ∂x_L/∂x_l = I + Σ (sub-layer terms)</div>',
)
TRY_NEXT = (
    ("groundup run transformer --quick --set steps=100 --out runs/try",
     "a GPT trained for a few steps: the validation loss stays far above this run's and the sample is "
     "mostly noise."),
    ("groundup run transformer --quick --set deep_layers=4 --out runs/try",
     "a shallower stack in the residual and layer-norm experiment: the variants without residuals or "
     "layer norm suffer less than in a deep stack."),
    ("groundup train gpt --preset baby --out runs/gpt-baby",
     "the same GPT as a training run of its own, with a report and a checkpoint to sample from."),
)


STAGE = Stage("transformer", "the transformer's parts measured, a GPT on Tiny Shakespeare, an encoder-decoder on "
              "dates", experiments=(scaled_dot_products, gpt_on_shakespeare, masks_and_positions, heads, ablations,
                                    residuals_and_layer_norm, encoder_decoder),
              headline=("GPT validation loss", "gpt.val_loss"),
              title="The transformer: attention, masks, positions, heads, residuals, a GPT",
              better="lower",
              anchor=('uniform guess', 'gpt.uniform_loss'),
              how=HOW, try_next=TRY_NEXT,
              code=(CausalSelfAttention, Block, F.scaled_dot_product_attention, F.layer_norm),
              options=(('steps', 'GPT training steps', int), ('deep_layers', 'layers of the deep stack', int)))
