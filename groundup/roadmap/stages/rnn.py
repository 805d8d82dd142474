"""Stage ``rnn``: vanilla RNN, GRU and LSTM character models on names; vanishing and exploding gradients.

1. Language models: three ``groundup.models.rnn_lm`` models that differ only in the recurrent cell
   (same embedding, same hidden size), trained on the names corpus the same way; test loss per
   character next to makemore's published numbers, and names sampled from each.
2. Vanishing gradients: each model is unrolled step by step (``nn.unroll_cell``) over windows of
   a stream of held-out names; the norm of d loss_T / d h_t (the loss at the last step,
   with respect to the hidden state t steps earlier) is plotted against the distance T - t, at
   initialisation and after training.
3. Exploding gradients: the RNN's recurrent weights scaled x4 make the gradient norm grow with the
   sequence length; training it with plain SGD with and without ``clip_grad_norm_`` shows what
   clipping buys. This training loop is written out by hand: the clipping line is the lesson.

References: Karpathy, makemore (names task and reference losses): https://github.com/karpathy/makemore;
Bengio, Simard & Frasconi 1994, "Learning long-term dependencies with gradient descent is difficult";
Hochreiter & Schmidhuber 1997 (LSTM); Cho et al. 2014 (GRU); Pascanu, Mikolov & Bengio 2013, "On the
difficulty of training recurrent neural networks", https://arxiv.org/abs/1211.5063 (clipping).
"""

from __future__ import annotations

import html
import math
from typing import Any

import numpy as np

import groundup as gu
from groundup import functional as F
from groundup import optim
from groundup.data import names_splits, pad_sequences
from groundup.models.rnn_lm import IGNORE_INDEX, RNNLM, RNNLMConfig
from groundup.nn import recurrent as recurrent_cells
from groundup.nn import unroll_cell
from groundup.nn.utils import clip_grad_norm_
from groundup.roadmap import Finding, claims
from groundup.roadmap.plots import smooth
from groundup.roadmap.runner import Context, Stage
from groundup.roadmap.training import evals, train
from groundup.tokenizers import CharTokenizer
from groundup.train.evaluation import mean_loss

__all__ = ["STAGE", "name_codec", "name_stream", "encode_names", "evaluate_lm", "gradient_profile",
           "MAKEMORE_TEST_LOSSES", "language_models", "vanishing_gradients", "exploding_gradients"]

# makemore / nn-zero-to-hero test losses on names.txt (per character, natural log); BENCHMARKS.md.
MAKEMORE_TEST_LOSSES = {"bigram": 2.48, "MLP": 2.17, "WaveNet-style": 1.993, "transformer": 1.92}
CELL_NAMES = {"rnn": "vanilla RNN", "gru": "GRU", "lstm": "LSTM"}
COLORS = {"rnn": "C3", "gru": "C0", "lstm": "C2"}


# ---------------------------------------------------------------------------- data
def name_codec(names: list[str]) -> CharTokenizer:
    """Characters <-> ids for names: "." (id 0) starts and ends a name, letters get 1..V-1 (as makemore)."""
    return CharTokenizer("".join(names), specials=(".",))


def name_stream(names: list[str], codec: CharTokenizer) -> np.ndarray:
    """All names in one id stream, each preceded by ".": (N,) int64."""
    return np.array([i for name in names for i in [0, *codec.encode(name)]], dtype=np.int64)


def encode_names(names: list[str], codec: CharTokenizer) -> tuple[np.ndarray, np.ndarray]:
    """Inputs "." + name and targets name + ".", right-padded.

    Returns:
        (x, y) int64 (N, T) with T = longest name + 1; x is 0 and y is ``IGNORE_INDEX`` at padding.
    """
    seqs = [[0, *codec.encode(name)] for name in names]
    x, mask = pad_sequences(seqs)                                           # (N, T)
    y = np.full_like(x, IGNORE_INDEX)
    y[:, :-1] = np.where(mask[:, 1:], x[:, 1:], IGNORE_INDEX)               # the next character...
    y[np.arange(len(seqs)), mask.sum(1) - 1] = 0                             # ...and "." after the last one
    return x, y


def evaluate_lm(model: RNNLM, x: np.ndarray, y: np.ndarray, device: str = "cpu", batch_size: int = 500) -> float:
    """Mean cross-entropy per predicted character (padding excluded), in eval mode without a graph."""
    starts = range(0, len(x), batch_size)
    batches = [(gu.tensor(x[i:i + batch_size], device=device), gu.tensor(y[i:i + batch_size], device=device))
               for i in starts]
    return mean_loss(model, batches, weights=[int((y[i:i + batch_size] != IGNORE_INDEX).sum()) for i in starts])


def _trim(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cut the columns that are padding in every row of the batch."""
    width = int((y != IGNORE_INDEX).sum(1).max())
    return x[:, :width], y[:, :width]


# ---------------------------------------------------------------------------- training
def train_lm(ctx: Context, model: RNNLM, data: dict[str, np.ndarray], *, iters: int, lr: float, batch_size: int,
             rng: np.random.Generator, description: str, eval_every: int, seed_offset: int = 0) -> dict[str, Any]:
    """AdamW with warmup + cosine decay to lr/10, gradient clipping at 1 (the same recipe for every cell).

    Returns:
        history: train_loss (every step), eval_iters and val_loss (every ``eval_every`` steps), wall_s.
    """
    model.to(ctx.device)
    x_train, y_train = data["x_train"], data["y_train"]
    losses: list[float] = []

    def get_batch(split: str, _: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        rows = rng.integers(0, len(x_train), batch_size)                     # the same names for x and y
        return _trim(x_train[rows], y_train[rows])

    def validate(trainer: Any) -> dict[str, float]:
        return {"val_loss": evaluate_lm(model, data["x_val"], data["y_val"], ctx.device)} if trainer.iter else {}

    trainer = train(ctx, model, get_batch, steps=iters, lr=lr, warmup=min(100, iters // 10), grad_clip=1.0,
                    description=description, evaluate=validate, eval_every=eval_every, seed_offset=seed_offset,
                    optimizer=optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=0.01),
                    callbacks=[lambda t, event, info: losses.append(info["loss"]) if event == "step" else None],
                    status=lambda info: f"val {info['val_loss']:.3f}",
                    data_parallel=lambda x, y: (y != IGNORE_INDEX).sum())   # the loss's mean is over real tokens
    curve = evals(trainer, "iter", "val_loss")
    return {"train_loss": losses, "eval_iters": curve["iter"], "val_loss": curve["val_loss"],
            "wall_s": trainer.wall_s()}


# ---------------------------------------------------------------------------- vanishing gradients
def gradient_profile(model: RNNLM, windows: np.ndarray, device: str = "cpu") -> np.ndarray:
    """How much of the last step's loss gradient reaches each earlier hidden state.

    The model's recurrent layer is unrolled step by step (``unroll_cell``) so every h_t is a node of
    the graph; the loss is the cross-entropy of the prediction made at the last step T.

    Args:
        model: the language model.
        windows: (B, T + 1) token ids; the first T are read, the last one is the target at step T.
    Returns:
        (T,) array r with r[d] = geometric mean over the batch of |d loss_T / d h_{T-d}| / |d loss_T / d h_T|,
        for distances d = 0 .. T-1 (r[0] = 1).
    """
    x, target = windows[:, :-1], windows[:, -1]
    states = unroll_cell(model.rnn, model.wte(gu.tensor(x, device=device)))   # T x (B, H)
    for h in states:
        h.retain_grad()
    logits = model.lm_head(states[-1])                                      # (B, V)
    # a sum over the batch, so row b of each h_t.grad is example b's own gradient
    F.cross_entropy(logits, gu.tensor(target, device=device), reduction="sum").backward()
    norms = np.stack([np.linalg.norm(h.grad.numpy().astype(np.float64), axis=1) for h in states])   # (T, B)
    log_norms = np.log(np.maximum(norms, 1e-300))                            # (T, B)
    relative = np.exp((log_norms - log_norms[-1]).mean(axis=1))             # (T,) time order, 1 at t = T
    model.zero_grad()
    return relative[::-1].copy()                                            # distance order d = T - t


def _fit_decay(profile: np.ndarray) -> dict[str, float]:
    """Least-squares line through log10 r[d] for d >= 1: per-step factor and R^2 of the exponential fit."""
    d = np.arange(1, len(profile))
    logs = np.log10(np.maximum(profile[1:], 1e-300))
    slope, intercept = np.polyfit(d, logs, 1)
    residual = logs - (slope * d + intercept)
    r2 = 1.0 - float((residual ** 2).sum() / max(((logs - logs.mean()) ** 2).sum(), 1e-300))
    return {"factor_per_step": float(10 ** slope), "r2": r2}


# ---------------------------------------------------------------------------- exploding gradients
def _stream_windows(stream: np.ndarray, length: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` random windows of ``length + 1`` ids from a token stream: (count, length + 1)."""
    starts = rng.integers(0, len(stream) - length - 1, size=count)
    return stream[starts[:, None] + np.arange(length + 1)]                  # (count, length + 1)


def _scaled_rnn(vocab_size: int, hidden: int, embd: int, scale: float, seed: int, device: str) -> RNNLM:
    gu.manual_seed(seed)
    model = RNNLM(RNNLMConfig(vocab_size=vocab_size, cell="rnn", n_embd=embd, hidden_size=hidden))
    model.rnn.weight_hh_l0.data *= scale                                   # spectral radius x scale
    return model.to(device)


def _grad_norm(model: RNNLM, windows: np.ndarray, device: str) -> float:
    """Norm of the gradient of the mean next-character loss over all parameters."""
    model.zero_grad()
    x, y = gu.tensor(windows[:, :-1], device=device), gu.tensor(windows[:, 1:], device=device)
    model.loss(x, y).backward()
    norm = clip_grad_norm_(model.parameters(), math.inf)                    # measures, never scales
    model.zero_grad()
    return float(norm)


def _train_sgd(ctx: Context, model: RNNLM, stream: np.ndarray, val_windows: np.ndarray, *, iters: int, lr: float,
               length: int, batch_size: int, clip: float | None, rng: np.random.Generator,
               description: str) -> dict[str, Any]:
    """Plain SGD on random windows; records loss and the gradient norm (before clipping) at every step."""
    opt = optim.SGD(model.parameters(), lr=lr)
    losses, norms = [], []
    for _ in ctx.track(range(iters), description):
        windows = _stream_windows(stream, length, batch_size, rng)
        loss = model.loss(ctx.to_tensor(windows[:, :-1]), ctx.to_tensor(windows[:, 1:]))
        opt.zero_grad()
        loss.backward()
        norms.append(float(clip_grad_norm_(model.parameters(), math.inf if clip is None else clip)))
        opt.step()
        losses.append(float(loss.item()))
    with gu.no_grad():
        val = float(model.loss(ctx.to_tensor(val_windows[:, :-1]), ctx.to_tensor(val_windows[:, 1:])).item())
    return {"train_loss": losses, "grad_norm": norms, "val_loss": val, "max_grad_norm": float(np.max(norms)),
            "median_grad_norm": float(np.median(norms)), "clip": clip}


def _finite_or_nan(value: float) -> float:
    return float(value) if math.isfinite(value) else float("nan")


# ---------------------------------------------------------------------------- 1. language models
def language_models(ctx: Context, state: dict[str, Any]) -> Finding:
    """Three character models that differ only in the cell, trained the same way; test loss and samples."""
    splits = names_splits()
    train_names, val_names, test_names = splits.train, splits.val, splits.test
    if ctx.tiny:
        train_names, val_names, test_names = train_names[:500], val_names[:100], test_names[:100]
    codec = name_codec(splits.train + splits.val + splits.test)
    data = {}
    for split, names in (("train", train_names), ("val", val_names), ("test", test_names)):
        data[f"x_{split}"], data[f"y_{split}"] = encode_names(names, codec)
    hidden = ctx.budget("hidden size (all three cells)", full=128, quick=128, tiny=16, option="hidden")
    embd = ctx.budget("embedding size", full=64, quick=64, tiny=8)
    iters = ctx.budget("training steps per model", full=4000, quick=700, tiny=4, option="steps")
    batch_size = ctx.budget("batch size (names)", full=64, quick=64, tiny=16)
    lr = 3e-3
    window_len = ctx.budget("gradient-profile window (characters)", full=40, quick=40, tiny=25)
    profile_windows = _stream_windows(name_stream(val_names, codec), window_len, ctx.pick(64, 64, 8), ctx.rng(5))
    histories, lm, profiles = {}, {}, {"init": {}, "trained": {}}
    train_set = set(splits.train)
    for k, cell in enumerate(("rnn", "gru", "lstm")):
        gu.manual_seed(ctx.seed + k)
        model = RNNLM(RNNLMConfig(vocab_size=codec.vocab_size, cell=cell, n_embd=embd, hidden_size=hidden))
        model.to(ctx.device)
        profiles["init"][cell] = gradient_profile(model, profile_windows, ctx.device)
        histories[cell] = train_lm(ctx, model, data, iters=iters, lr=lr, batch_size=batch_size, rng=ctx.rng(10 + k),
                                   description=f"{CELL_NAMES[cell]} language model", eval_every=max(1, iters // 10),
                                   seed_offset=k)
        profiles["trained"][cell] = gradient_profile(model, profile_windows, ctx.device)
        samples = [codec.decode(ids, skip_specials=True) for ids in model.generate(12, ctx.rng(20 + k), max_len=30)]
        lm[cell] = {"parameters": model.num_parameters(), "hidden_size": hidden,
                    "test_loss": evaluate_lm(model, data["x_test"], data["y_test"], ctx.device),
                    "val_loss": histories[cell]["val_loss"][-1],
                    "train_loss_last_100": float(np.mean(histories[cell]["train_loss"][-100:])),
                    "train_wall_s": histories[cell]["wall_s"],
                    "samples": samples, "samples_in_training_set": sum(s in train_set for s in samples)}
    state.update(profiles=profiles, window_len=window_len, n_windows=len(profile_windows), codec=codec,
                 train_names=train_names, val_names=val_names, hidden=hidden, embd=embd)
    loss = {c: lm[c]["test_loss"] for c in lm}
    quality = ctx.threshold("GRU and LSTM test loss at most", full=2.10, quick=2.20)
    speed = {c: lm[c]["train_wall_s"] / iters * 1000 for c in lm}
    fig = ctx.figure(7.5, 4.2)
    ax = fig.subplots()
    for cell in ("rnn", "gru", "lstm"):
        h = histories[cell]
        smoothed = smooth(h["train_loss"], max(1, iters // 40))
        ax.plot(np.arange(len(smoothed)) + (len(h["train_loss"]) - len(smoothed)) + 1, smoothed, color=COLORS[cell],
                alpha=0.45, lw=1)
        ax.plot(h["eval_iters"], h["val_loss"], "o-", color=COLORS[cell], ms=3,
                label=f"{CELL_NAMES[cell]} (test {loss[cell]:.3f})")
    for name, value in MAKEMORE_TEST_LOSSES.items():
        ax.axhline(value, color="0.6", ls=":", lw=1)
        ax.text(iters, value, f" makemore {name}", va="center", ha="left", fontsize=7, color="0.4")
    ax.set(xlabel="training step", ylabel="cross-entropy per character", ylim=(1.85, 2.9),
           title="names: training loss (faint, smoothed) and validation loss (dots)")
    ax.legend(fontsize=8, loc="upper right")
    notes = ["Training time per step (CPU): " + ", ".join(f"{CELL_NAMES[c]} {v:.1f} ms" for c, v in speed.items())
             + "."] if ctx.device == "cpu" else []
    return Finding(
        title="Three character models on names",
        metrics={"language_models": {
            "config": {"n_embd": embd, "hidden_size": hidden, "steps": iters, "batch_size": batch_size, "lr": lr,
                       "optimizer": "AdamW, wd 0.01", "schedule": "warmup + cosine to lr/10", "grad_clip": 1.0},
            "results": lm, "curves": histories, "makemore_test_losses": MAKEMORE_TEST_LOSSES,
            "n_names": {"train": len(train_names), "val": len(val_names), "test": len(test_names)}},
            "ms_per_training_step": speed},
        claims=[claims.claim("rnn.gated_beat_vanilla", "Gated cells model text better than a vanilla RNN of the same "
                             f"size (hidden {hidden}; test loss per character on held-out names)",
                             claims.lt("GRU test loss", loss["gru"], "RNN test loss", loss["rnn"]),
                             claims.lt("LSTM test loss", loss["lstm"], "RNN test loss", loss["rnn"])),
                claims.claim("rnn.quality", f"GRU and LSTM character models reach a test loss of at most {quality:g} "
                             "per character on names (makemore: MLP 2.17, WaveNet-style 1.99)",
                             claims.le("GRU test loss", loss["gru"], quality),
                             claims.le("LSTM test loss", loss["lstm"], quality))],
        plots=[ctx.savefig(fig, "lm_loss.png", "Loss of the three character models on names; dotted lines are "
                           "makemore's published test losses for other model families (its own split).")],
        sections=[("Test loss next to makemore", _makemore_table(lm, hidden, iters, batch_size)),
                  ("Generated names", _samples_table(lm))],
        notes=notes,
        text=["A recurrent network reads a sequence one step at a time while carrying a memory, its hidden state: "
              "h_t = f(x_t, h_{t-1}). Three character models that differ only in f (a vanilla tanh RNN, a GRU, an "
              f"LSTM; embedding {embd}, hidden {hidden}) learn to spell names, trained the same way for {iters} "
              "steps.",
              f"Test loss per character: RNN {loss['rnn']:.3f}, GRU {loss['gru']:.3f}, LSTM {loss['lstm']:.3f}; "
              f"makemore reports {MAKEMORE_TEST_LOSSES['bigram']} for a bigram table, {MAKEMORE_TEST_LOSSES['MLP']} "
              f"for its MLP and {MAKEMORE_TEST_LOSSES['WaveNet-style']:.2f} for a WaveNet-style model."])


def _makemore_table(lm: dict[str, Any], hidden: int, iters: int, batch_size: int) -> str:
    rows = "".join(f"<tr><td>makemore {html.escape(name)}</td><td class=num>{value:.3f}</td><td>published</td></tr>"
                   for name, value in MAKEMORE_TEST_LOSSES.items())
    rows += "".join(f"<tr><td><b>groundup {CELL_NAMES[c]}</b> (hidden {hidden}, {lm[c]['parameters']:,} params)</td>"
                    f"<td class=num><b>{lm[c]['test_loss']:.3f}</b></td><td>this run, {iters} steps of "
                    f"{batch_size} names</td></tr>" for c in ("rnn", "gru", "lstm"))
    return ("<table><tr><th>model</th><th>test loss / character</th><th>source</th></tr>" + rows + "</table>"
            "<p>makemore's numbers come from its own test split of held-out names; ours from "
            "<code>names_splits()</code>'s held-out names, so the comparison is close but not exact.</p>")


def _samples_table(lm: dict[str, Any]) -> str:
    rows = "".join(f"<tr><td>{CELL_NAMES[c]}</td><td><code>{html.escape(', '.join(lm[c]['samples']))}</code></td>"
                   f"<td class=num>{lm[c]['samples_in_training_set']}/{len(lm[c]['samples'])}</td></tr>"
                   for c in ("rnn", "gru", "lstm"))
    return ("<table><tr><th>model</th><th>sampled names (temperature 1)</th><th>already in the training set</th>"
            "</tr>" + rows + "</table>")


# ---------------------------------------------------------------------------- 2. vanishing gradients
def vanishing_gradients(ctx: Context, state: dict[str, Any]) -> Finding:
    """|d loss_T / d h_t| against the distance T - t, at initialisation and after training."""
    profiles, window_len = state["profiles"], state["window_len"]
    distance = int(min(ctx.threshold("vanishing: compare at distance", full=20), window_len - 1))
    ratio_floor = ctx.threshold("vanishing: gated / RNN gradient at that distance, at least", full=10.0)
    vanish_max = ctx.threshold("vanishing: RNN relative gradient at that distance, at most", full=1e-2)
    at = {when: {cell: float(profiles[when][cell][distance]) for cell in profiles[when]} for when in profiles}
    fits = {when: {cell: _fit_decay(profiles[when][cell]) for cell in profiles[when]} for when in profiles}
    rnn_fit = fits["trained"]["rnn"]
    factors = {f"{cell} ({when})": fits[when][cell]["factor_per_step"] for when in ("init", "trained")
               for cell in ("rnn", "gru", "lstm")}
    gains = {f"{cell} ({when})": at[when][cell] / max(at[when]["rnn"], 1e-300)
             for when in ("init", "trained") for cell in ("gru", "lstm")}
    fig = ctx.figure(7.5, 4.4)
    ax = fig.subplots()
    d_axis = np.arange(window_len)
    for cell in ("rnn", "gru", "lstm"):
        ax.semilogy(d_axis, profiles["trained"][cell], "-", color=COLORS[cell], label=f"{CELL_NAMES[cell]}, trained")
        ax.semilogy(d_axis, profiles["init"][cell], "--", color=COLORS[cell], alpha=0.7,
                    label=f"{CELL_NAMES[cell]}, at initialisation")
    ax.axvline(distance, color="0.6", ls=":", lw=1)
    lowest = min(float(p.min()) for when in profiles for p in profiles[when].values())
    ax.set_ylim(max(lowest, 1e-16) / 2, 2.0)                                 # a tiny run can reach 1e-300
    ax.set(xlabel="distance T - t (characters back)", ylabel="|d loss_T / d h_t|  /  |d loss_T / d h_T|",
           title="How much of the last step's gradient reaches earlier hidden states")
    ax.legend(fontsize=8)
    grad_rows = "".join(f"<tr><td>{CELL_NAMES[c]}</td><td class=num>{at['init'][c]:.2e}</td>"
                        f"<td class=num>{at['trained'][c]:.2e}</td>"
                        f"<td class=num>{fits['trained'][c]['factor_per_step']:.3f}</td></tr>"
                        for c in ("rnn", "gru", "lstm"))
    grad_html = (f"<p>|d loss_T / d h_t| / |d loss_T / d h_T| at distance T - t = {distance}:</p><table><tr><th>cell"
                 "</th><th>at initialisation</th><th>trained</th><th>fitted factor per step (trained)</th></tr>"
                 + grad_rows + "</table>")
    return Finding(
        title="Vanishing gradients",
        metrics={"vanishing_gradients": {
            "window_characters": window_len, "windows": state["n_windows"], "distance": distance,
            "relative_grad_norm_at_distance": at, "exponential_fit": fits,
            "profiles": {when: {c: p.tolist() for c, p in profiles[when].items()} for when in profiles}}},
        claims=[claims.claim("rnn.vanishing", "In a vanilla RNN the gradient reaching earlier steps shrinks "
                             "exponentially with distance (trained model: |d loss_T / d h_t| relative to t = T, "
                             "fitted line on a log scale)",
                             claims.le(f"RNN ratio at distance {distance}", at["trained"]["rnn"], vanish_max),
                             claims.lt("factor per step", rnn_fit["factor_per_step"], "no decay", 1.0),
                             claims.ge("R^2 of the exponential fit", rnn_fit["r2"], 0.9)),
                claims.claim("rnn.decays_faster", "The gradient decays faster with distance in a vanilla RNN than in "
                             "a GRU or an LSTM (fitted factor per step, at initialisation and after training)",
                             *(claims.lt(f"factor per step, rnn ({w})", factors[f"rnn ({w})"],
                                         f"factor per step, {c} ({w})", factors[f"{c} ({w})"])
                               for w in ("init", "trained") for c in ("gru", "lstm"))),
                claims.claim("rnn.gated_keep_gradient", "Gated cells (LSTM, GRU) keep the gradient much larger: at "
                             f"distance {distance}, at initialisation and after training, each gated cell's relative "
                             f"gradient is at least {ratio_floor:g}x the vanilla RNN's",
                             *(claims.ge(f"{name} / RNN", value, ratio_floor) for name, value in gains.items()))],
        plots=[ctx.savefig(fig, "vanishing_gradients.png", f"Gradient of the loss at the last of {window_len} "
                           "characters (held-out names, back to back) with respect to each earlier hidden state, "
                           f"relative to the last one; geometric mean over {state['n_windows']} windows. A straight "
                           "line on this log scale is exponential decay; the vanilla RNN's is the steepest.")],
        sections=[("Vanishing gradients in numbers", grad_html)],
        notes=[f"Training changes the profiles: at distance {distance} the vanilla RNN passes back "
               f"{at['trained']['rnn']:.1e} of the last step's gradient after training against "
               f"{at['init']['rnn']:.1e} at initialisation, so the gated cells' lead there goes from "
               f"{gains['gru (init)']:.0f}x (GRU) and {gains['lstm (init)']:.0f}x (LSTM) to "
               f"{gains['gru (trained)']:.1f}x and {gains['lstm (trained)']:.1f}x.",
               "The gradient profiles run the recurrence step by step with nn.unroll_cell (the same weights as the "
               "fused layers used in training), so that every hidden state is a node whose gradient can be read. "
               "The windows run across name boundaries, since names are shorter than the distances measured; the "
               "models were trained on single names starting from a zero state."],
        text=[f"After training, the gradient that reaches {distance} characters back is {at['trained']['rnn']:.1e} "
              f"of the last step's for the RNN, against {at['trained']['gru']:.1e} for the GRU and "
              f"{at['trained']['lstm']:.1e} for the LSTM; the gates give the gradient a path that is not multiplied "
              "by W_hh and tanh' at every step."])


# ---------------------------------------------------------------------------- 3. exploding gradients
def exploding_gradients(ctx: Context, state: dict[str, Any]) -> Finding:
    """Recurrent weights scaled up: the gradient norm against length, and SGD with and without clipping."""
    codec, hidden, embd = state["codec"], state["hidden"], state["embd"]
    scale = 4.0
    explode_len = ctx.budget("exploding: training window (characters)", full=64, quick=64, tiny=16)
    train_stream, val_stream = name_stream(state["train_names"], codec), name_stream(state["val_names"], codec)
    lengths = [n for n in (8, 16, 32, 64, 128) if n < len(val_stream) - 1 and (not ctx.tiny or n <= 32)]
    probe = {n: _stream_windows(train_stream, n, ctx.pick(32, 32, 4), ctx.rng(30 + n)) for n in lengths}
    norm_vs_length: dict[str, list[float]] = {}
    for label, s in (("default init", 1.0), (f"weight_hh x{scale:g}", scale)):
        model = _scaled_rnn(codec.vocab_size, hidden, embd, s, ctx.seed + 40, ctx.device)
        norm_vs_length[label] = [_grad_norm(model, probe[n], ctx.device) for n in lengths]
    explode_iters = ctx.budget("exploding: SGD steps per run", full=300, quick=150, tiny=3)
    sgd_lr = 1.0
    val_windows = _stream_windows(val_stream, explode_len, ctx.pick(128, 128, 4), ctx.rng(6))
    runs = {}
    for label, s, clip in (("default init, no clipping", 1.0, None),
                           (f"weight_hh x{scale:g}, no clipping", scale, None),
                           (f"weight_hh x{scale:g}, clip_grad_norm_(1.0)", scale, 1.0)):
        model = _scaled_rnn(codec.vocab_size, hidden, embd, s, ctx.seed + 40, ctx.device)
        runs[label] = _train_sgd(ctx, model, train_stream, val_windows, iters=explode_iters, lr=sgd_lr,
                                 length=explode_len, batch_size=32, clip=clip, rng=ctx.rng(50), description=label)
    no_clip, clipped = runs[f"weight_hh x{scale:g}, no clipping"], runs[f"weight_hh x{scale:g}, clip_grad_norm_(1.0)"]
    idx = lengths.index(explode_len) if explode_len in lengths else len(lengths) - 1
    blowup = norm_vs_length[f"weight_hh x{scale:g}"][idx] / norm_vs_length["default init"][idx]
    blowup_floor = ctx.threshold("exploding: gradient norm ratio (x4 vs default) at least", full=100.0)
    margin = ctx.threshold("clipping: no-clip val loss exceeds clipped by at least", full=0.2, quick=0.2)
    diverged = not math.isfinite(no_clip["val_loss"])
    fig = ctx.figure(11, 4.6)
    ax1, ax2, ax3 = fig.subplots(1, 3)
    for label, values in norm_vs_length.items():
        ax1.loglog(lengths, values, "o-", label=label)
    ax1.set(xlabel="window length T (characters)", ylabel="gradient norm at initialisation",
            title="gradient norm vs length")
    ax1.legend(fontsize=7)
    for (label, r), color in zip(runs.items(), ("0.5", "C3", "C0")):
        ax2.plot(smooth(r["train_loss"], 5), color=color, label=f"{label} (val {r['val_loss']:.2f})")
        ax3.semilogy(r["grad_norm"], color=color, lw=0.8, label=label)
    ax2.set(xlabel="SGD step", ylabel="training loss", title=f"training (lr {sgd_lr:g})", ylim=(1.8, 4.5))
    fig.legend(*ax2.get_legend_handles_labels(), loc="outside lower center", ncol=3, fontsize=8)  # off the curves
    ax3.axhline(1.0, color="0.4", ls=":", lw=1)
    ax3.set(xlabel="SGD step", ylabel="gradient norm (before clipping)", title="gradient norm per step")
    return Finding(
        title="Exploding gradients and clipping",
        metrics={"exploding_gradients": {
            "weight_hh_scale": scale, "lengths": lengths, "grad_norm_at_init_vs_length": norm_vs_length,
            "blowup_at_training_length": blowup, "training_length": explode_len, "sgd_lr": sgd_lr,
            "steps": explode_iters, "runs": runs}},
        claims=[claims.claim("rnn.exploding", f"Exploding gradients: with large recurrent weights (weight_hh "
                             f"x{scale:g}) the gradient norm blows up ({lengths[idx]}-character windows, at "
                             "initialisation, relative to the default init)",
                             claims.ge("gradient norm ratio", blowup, blowup_floor)),
                claims.claim("rnn.clipping", f"Clipping keeps training stable: with weight_hh x{scale:g} and SGD (lr "
                             f"{sgd_lr:g}), training with clip_grad_norm_(1.0) ends far lower than without (or "
                             "without diverges)",
                             claims.is_true("clipped run finite", math.isfinite(clipped["val_loss"]),
                                            {"val loss, clipped": clipped["val_loss"]}),
                             claims.is_true("not clipped diverged", True, {}) if diverged else
                             claims.gt("val loss, not clipped", no_clip["val_loss"], "val loss, clipped",
                                       clipped["val_loss"], margin=margin))],
        plots=[ctx.savefig(fig, "exploding_gradients.png", f"Left: with the recurrent weights scaled x{scale:g} the "
                           "gradient norm grows with the sequence length; with torch's default init it does not. "
                           "Middle and right: plain SGD on such a network. Without clipping, the first steps "
                           "(gradient norms in the thousands) wreck the weights and the loss does not come back "
                           "down; clipping the norm keeps the steps small and training proceeds. The grey run is "
                           "the default init without clipping.")],
        text=[f"Scaling the RNN's recurrent weights by {scale:g} makes the gradient norm {blowup:.3g} times larger on "
              f"{lengths[idx]}-character windows. Plain SGD then reaches a validation loss of "
              f"{no_clip['val_loss']:.2f} without clipping and {clipped['val_loss']:.2f} with clip_grad_norm_(1.0)."])

# Report guide: static text, not part of the run's record (the provenance check reads only the record).
HOW = (
    "A recurrent network reads one token at a time and carries a hidden state; the same weights are used "
    "at every step:",
    '<div class="math">h_t = tanh(W_ih x_t + b_ih + W_hh h_{t−1} + b_hh),   logits_t = W_out h_t</div>',
    "Backpropagation through time multiplies one Jacobian per step, so the gradient that reaches a state "
    "k steps back shrinks (vanishes) or grows (explodes) geometrically with k, depending on whether the "
    "recurrent Jacobians have norm below or above one:",
    '<div class="math">∂h_t/∂h_{t−k} = Π_{s=t−k+1..t} diag(1 − h_s²) W_hh,   ‖·‖ ≲ (σ_max(W_hh))ᵏ</div>',
    "Gated cells add a path along which the state is copied rather than squashed. The GRU mixes the old "
    "state and a candidate with an update gate z; the LSTM keeps a cell c that is only scaled by the forget "
    "gate f and added to:",
    '<div class="math">GRU:  r = σ(W_r[x, h]),  z = σ(W_z[x, h]),  n = tanh(W_n x + r ⊙ (U_n h)),  '
    'h′ = (1 − z) ⊙ n + z ⊙ h\n'
    'LSTM: i, f, g, o = σ, σ, tanh, σ of (W_ih x + W_hh h + b)\n'
    '      c′ = f ⊙ c + i ⊙ g,   h′ = o ⊙ tanh(c′),   ∂c′/∂c = f</div>',
    "Clipping rescales the whole gradient when its norm exceeds a bound, so one exploding step cannot "
    "throw the weights away: g ← g · min(1, τ / ‖g‖).",
)
TRY_NEXT = (
    ("groundup run rnn --set hidden=16 --out runs/try",
     "a much smaller memory: every cell's test loss rises, and the gated cells' lead over the vanilla RNN "
     "may shrink."),
    ("groundup run rnn --quick --set steps=200 --out runs/try",
     "a short training: the losses stay well above makemore's, closer to its bigram model."),
)


STAGE = Stage("rnn", "RNN, GRU, LSTM char models on names; vanishing and exploding gradients, clipping",
              experiments=(language_models, vanishing_gradients, exploding_gradients),
              headline=("GRU test loss", "language_models.results.gru.test_loss"),
              title="Recurrent networks: RNN, GRU, LSTM",
              better="lower",
              anchor=('makemore transformer', 'language_models.makemore_test_losses.transformer'),
              how=HOW, try_next=TRY_NEXT,
              code=(recurrent_cells._rnn_step, recurrent_cells._gru_step, recurrent_cells._lstm_step,
                    clip_grad_norm_),
              options=(('hidden', 'hidden size of all three cells', int), ('steps', 'training steps per model', int)))
