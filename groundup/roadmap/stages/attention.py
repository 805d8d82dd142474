"""Stage ``attention``: a GRU encoder-decoder with and without additive attention, on date translation.

The task (``groundup.data.date_pairs``): human-written dates in 14 formats, from "3/7/99" to
"sunday, the seventh of march, nineteen ninety-nine", translated character by character into
"1999-03-07". Two ``groundup.models.seq2seq`` models with the same sizes are trained the same way
(teacher forcing, batches of similar lengths): one whose decoder sees only the encoder's final
state (a fixed-size summary of the whole input), one whose decoder attends over all encoder
states at every output step (Bahdanau et al. 2015). Both decode greedily on held-out dates.

Measured: exact-match accuracy (all ten characters right) by input length; how the attention
weights line up output characters with the input characters they copy (the year's digits, in the
formats that write the year out in digits); alignment heatmaps for a few examples.

References: Cho et al. 2014, https://arxiv.org/abs/1406.1078; Sutskever et al. 2014,
https://arxiv.org/abs/1409.3215; Bahdanau, Cho & Bengio 2015, https://arxiv.org/abs/1409.0473
(its Figure 2: the plain encoder-decoder degrades on long sentences, the attentive one does not).
"""

from __future__ import annotations

import datetime
import html
from typing import Any

import numpy as np

import groundup as gu
from groundup.data import DATE_FORMATS, date_pairs, format_date
from groundup.models.seq2seq import AdditiveAttention, Seq2Seq, Seq2SeqConfig
from groundup.roadmap import Finding, claims
from groundup.roadmap.plots import smooth
from groundup.roadmap.runner import Context, Stage
from groundup.roadmap.seq2seq import TARGET_LEN, DateCodec, bucket_accuracy, evaluate_seq2seq, train_seq2seq

__all__ = ["STAGE", "date_format_of", "format_accuracy", "year_alignment", "two_models", "bottleneck", "alignment"]

MODELS = {"plain": "no attention", "attention": "attention"}


def date_format_of(text: str, iso: str) -> str:
    """Which of ``DATE_FORMATS`` wrote ``text`` for the date ``iso`` ("?" if none)."""
    date = datetime.date.fromisoformat(iso)
    for fmt in DATE_FORMATS:
        if text in (format_date(date, fmt), format_date(date, fmt, capitalize=True)):
            return fmt
    return "?"


def format_accuracy(pairs: list[tuple[str, str]], correct: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """Exact-match accuracy of each model per date format, shortest formats first."""
    formats = np.array([date_format_of(text, iso) for text, iso in pairs])
    lengths = np.array([len(text) for text, _ in pairs])
    rows = [{"format": fmt, "n": int((formats == fmt).sum()), "mean_length": float(lengths[formats == fmt].mean()),
             **{name: float(c[formats == fmt].mean()) for name, c in correct.items()}}
            for fmt in dict.fromkeys(formats)]
    return sorted(rows, key=lambda r: r["mean_length"])


def year_alignment(pairs: list[tuple[str, str]], weights: list[np.ndarray], slack: int = 1) -> dict[str, float]:
    """Where attention looks while the decoder writes the year, in inputs that contain the year in digits.

    For each such input, output steps 0-3 write the year's four digits; an output step counts as aligned
    when its attention peak lies on the year in the source (its four characters, or up to ``slack``
    characters after them: a unidirectional encoder has read a digit once it is one step past it).
    """
    hits, total, mass = 0, 0, []
    for (text, iso), w in zip(pairs, weights):
        start = text.find(iso[:4])
        if start < 0:
            continue
        span = slice(start, min(start + 4 + slack, w.shape[1]))
        for step in range(4):
            peak = int(w[step].argmax())
            hits += span.start <= peak < span.stop
            total += 1
            mass.append(float(w[step, span].sum()))
    return {"year_digit_steps": total, "peak_on_year": hits / max(total, 1),
            "mean_weight_on_year": float(np.mean(mass)) if mass else float("nan")}


def _heatmaps(ctx: Context, examples: list[tuple[str, str, str, np.ndarray]]) -> Any:
    fig = ctx.figure(11, 2.1 * len(examples) + 0.6)
    axes = fig.subplots(len(examples), 1, squeeze=False)[:, 0]
    for ax, (text, iso, pred, w) in zip(axes, examples):
        steps = len(pred) + 1 if len(pred) < TARGET_LEN + 1 else TARGET_LEN + 1
        shown = w[:steps]                                                 # (outputs, source characters)
        image = ax.imshow(shown, cmap="Greys", vmin=0, vmax=1, aspect="auto")
        ax.set_xticks(range(len(text)), list(text), fontsize=9, fontfamily="monospace")
        ax.set_yticks(range(steps), list(pred) + ["<eos>"] if len(pred) < steps else list(pred[:steps]),
                      fontsize=9, fontfamily="monospace")
        ax.set(xlabel="input character", ylabel="output")
        fig.colorbar(image, ax=ax, label="weight", fraction=0.025, pad=0.01)
        ax.set_title(f"{text!r} -> {pred!r}" + ("" if pred == iso else f" (target {iso!r})"), fontsize=8)
    return fig


# ---------------------------------------------------------------------------- 1. two models
def two_models(ctx: Context, state: dict[str, Any]) -> Finding:
    """Train the GRU encoder-decoder with and without attention the same way; decode held-out dates."""
    codec = DateCodec()
    n_train = ctx.budget("training pairs", full=20000, quick=20000, tiny=300)
    n_test = ctx.budget("test pairs", full=3000, quick=2000, tiny=60)
    train_pairs = date_pairs(n_train, seed=ctx.seed * 1000 + 1)
    seen = {text for text, _ in train_pairs}
    test_pairs = [p for p in date_pairs(n_test, seed=ctx.seed * 1000 + 2) if p[0] not in seen]   # held out
    # NOTE: the summary must be small for the bottleneck to bind once training has converged; a quick run stops
    # long before convergence, when a small summary has not yet learned the longest formats even with attention.
    hidden = ctx.budget("hidden size (encoder, decoder, summary)", full=24, quick=32, tiny=8, option="hidden")
    embd = ctx.budget("embedding size", full=32, quick=32, tiny=8)
    attn_size = ctx.budget("attention hidden size", full=32, quick=32, tiny=8)
    iters = ctx.budget("training steps per model", full=3000, quick=1200, tiny=3, option="steps")
    batch_size = ctx.budget("batch size", full=64, quick=64, tiny=16)
    lr = 3e-3
    models, histories, results = {}, {}, {}
    for k, name in enumerate(MODELS):
        gu.manual_seed(ctx.seed + k)
        cfg = Seq2SeqConfig(codec.src_vocab_size, codec.tgt_vocab_size, n_embd=embd, hidden_size=hidden,
                            attention=name == "attention", attn_size=attn_size)
        models[name] = Seq2Seq(cfg).to(ctx.device)
        histories[name] = train_seq2seq(ctx, models[name], train_pairs, codec, iters=iters, lr=lr,
                                        batch_size=batch_size, rng=ctx.rng(10 + k), seed_offset=k,
                                        description=f"GRU encoder-decoder, {MODELS[name]}")
        results[name] = evaluate_seq2seq(models[name], test_pairs, codec, ctx.device)
    lengths = np.array([len(text) for text, _ in test_pairs])
    buckets = {name: bucket_accuracy(results[name]["correct"], lengths) for name in results}
    rows = {}
    for name, r in results.items():
        longest = buckets[name][-1]
        rest = ~((lengths >= longest["low"]) & (lengths <= longest["high"]))
        rows[name] = {"parameters": models[name].num_parameters(), "exact_match": float(r["correct"].mean()),
                      "char_accuracy": float(r["char_accuracy"].mean()), "longest_bucket": longest["bucket"],
                      "longest_bucket_accuracy": longest["accuracy"],
                      "shorter_inputs_accuracy": float(r["correct"][rest].mean()),
                      "train_wall_s": histories[name]["wall_s"],
                      "final_train_loss": float(np.mean(histories[name]["train_loss"][-50:]))}
    by_format = format_accuracy(test_pairs, {name: r["correct"] for name, r in results.items()})
    examples = [{"source": text, "target": iso, **{name: results[name]["predictions"][i] for name in MODELS}}
                for i, (text, iso) in enumerate(test_pairs[:12])]
    state.update(test_pairs=test_pairs, lengths=lengths, results=results, buckets=buckets, rows=rows, hidden=hidden)
    fig = ctx.figure(7, 3.6)
    ax = fig.subplots()
    for name, color in (("plain", "C3"), ("attention", "C0")):
        ax.semilogy(smooth(histories[name]["train_loss"], 25), color=color, label=MODELS[name])
    ax.set(xlabel="training step", ylabel="cross-entropy (teacher forcing)", title="training loss")
    ax.legend(fontsize=8)
    plain, attn = rows["plain"], rows["attention"]
    return Finding(
        title="Two encoder-decoders, with and without attention",
        metrics={"config": {"hidden_size": hidden, "n_embd": embd, "attn_size": attn_size, "steps": iters,
                            "batch_size": batch_size, "lr": lr, "optimizer": "Adam",
                            "schedule": "warmup + cosine to lr/10", "grad_clip": 1.0, "n_train": len(train_pairs),
                            "n_test": len(test_pairs)},
                 "results": rows, "accuracy_by_format": by_format, "examples": examples,
                 "train_loss": {name: h["train_loss"] for name, h in histories.items()}},
        plots=[ctx.savefig(fig, "train_loss.png", "Teacher-forced training loss per step (moving average).")],
        sections=[("Accuracy by date format", _format_table(by_format)), ("Examples", _examples_table(examples))],
        notes=["A quick run uses a larger hidden size than a full run (the settings table lists both) because it "
               "stops training much earlier: a larger summary learns the long formats sooner, while a full run "
               "trains to convergence, where only a small summary makes the bottleneck bind.",
               "Training batches hold inputs of similar lengths (sorted, cut, shuffled), so little time is spent on "
               "padding; padded source positions get exactly zero attention weight."],
        text=["An encoder-decoder reads the input with one recurrent network and writes the output with another. "
              f"Without attention, everything the decoder knows about the input is the encoder's last state, "
              f"{hidden} numbers; with additive attention the decoder recomputes, at every output step, a weighted "
              "average of all the encoder's states, the weights scoring how well each input position matches what "
              "it needs now.",
              f"On {len(test_pairs):,} held-out dates, exact-match accuracy is {plain['exact_match']:.3f} without "
              f"attention and {attn['exact_match']:.3f} with it ({plain['parameters']:,} vs {attn['parameters']:,} "
              f"parameters, {iters} training steps each)."])


def _format_table(by_format: list[dict[str, Any]]) -> str:
    rows = "".join(f"<tr><td><code>{html.escape(r['format'])}</code></td><td class=num>{r['n']}</td>"
                   f"<td class=num>{r['mean_length']:.1f}</td><td class=num>{r['plain']:.3f}</td>"
                   f"<td class=num>{r['attention']:.3f}</td></tr>" for r in by_format)
    return ("<p>The same test set split by the format the date was written in (shortest first). Length and format "
            "go together, so this table shows what the length buckets mix.</p><table><tr><th>format</th><th>n</th>"
            "<th>mean length</th><th>no attention</th><th>attention</th></tr>" + rows + "</table>")


def _examples_table(examples: list[dict[str, str]]) -> str:
    rows = "".join("<tr>" + "".join(f"<td><code>{html.escape(e[k])}</code></td>" for k in
                                    ("source", "target", "plain", "attention")) + "</tr>" for e in examples)
    return ("<table><tr><th>input</th><th>target</th><th>no attention</th><th>attention</th></tr>" + rows
            + "</table>")


# ---------------------------------------------------------------------------- 2. the bottleneck
def bottleneck(ctx: Context, state: dict[str, Any]) -> Finding:
    """Accuracy by input length: the fixed summary loses the longest inputs, attention holds up."""
    buckets, rows, hidden = state["buckets"], state["rows"], state["hidden"]
    plain, attn = rows["plain"], rows["attention"]
    margin = ctx.threshold("longest inputs: attention beats plain by at least", full=0.10, quick=0.10)
    drop_min = ctx.threshold("plain model: accuracy drop on the longest inputs, at least", full=0.05)
    # NOTE: quick runs stop while the attention model is still learning the years written in words (the
    # longest formats), so its drop there is looser.
    drop_max = ctx.threshold("attention model: accuracy drop on the longest inputs, at most", full=0.02, quick=0.05)
    plain_drop = plain["shorter_inputs_accuracy"] - plain["longest_bucket_accuracy"]
    attn_drop = attn["shorter_inputs_accuracy"] - attn["longest_bucket_accuracy"]
    fig = ctx.figure(8, 4.2)
    ax = fig.subplots()
    x = np.arange(len(buckets["plain"]))
    for offset, (name, color) in zip((-0.2, 0.2), (("plain", "C3"), ("attention", "C0"))):
        ax.bar(x + offset, [b["accuracy"] for b in buckets[name]], 0.4, color=color,
               label=f"{MODELS[name]} (overall {rows[name]['exact_match']:.3f})")
    ax.set_xticks(x, [f"{b['bucket']}\n(n={b['n']})" for b in buckets["plain"]], fontsize=8)
    ax.set(xlabel="input length (characters)", ylabel="exact-match accuracy", ylim=(0, 1.18),
           title=f"Date translation, hidden size {hidden}: accuracy by input length")
    ax.legend(fontsize=8, loc="upper center", ncol=2)
    return Finding(
        title="A fixed-size summary is a bottleneck", metrics={"accuracy_by_length": buckets},
        claims=[claims.claim("attention.longest_inputs", "With attention, an encoder-decoder holds up on the longest "
                             f"inputs ({plain['longest_bucket']} characters) where the fixed-summary model does not "
                             "(exact match)", claims.gt("attention accuracy", attn["longest_bucket_accuracy"],
                                                        "plain accuracy", plain["longest_bucket_accuracy"],
                                                        margin=margin)),
                claims.claim("attention.bottleneck", "A fixed-size summary of a long input is a bottleneck: without "
                             "attention accuracy drops on the longest inputs compared with shorter ones; with "
                             "attention it does not", claims.ge("plain: shorter - longest", plain_drop, drop_min),
                             claims.le("attention: shorter - longest", attn_drop, drop_max))],
        plots=[ctx.savefig(fig, "accuracy_by_length.png", "Held-out exact-match accuracy (all ten characters of "
                           "YYYY-MM-DD right) for each input-length bucket. The model without attention must pass "
                           f"the whole input through one {hidden}-number summary.")],
        text=[f"On the longest inputs ({plain['longest_bucket']} characters) exact-match accuracy is "
              f"{plain['longest_bucket_accuracy']:.3f} without attention against {attn['longest_bucket_accuracy']:.3f} "
              f"with it; on shorter inputs {plain['shorter_inputs_accuracy']:.3f} against "
              f"{attn['shorter_inputs_accuracy']:.3f}."])


# ---------------------------------------------------------------------------- 3. alignments
def alignment(ctx: Context, state: dict[str, Any]) -> Finding:
    """Where attention looks while the decoder writes the year; heatmaps for a few lengths."""
    test_pairs, lengths = state["test_pairs"], state["lengths"]
    weights, preds = state["results"]["attention"]["weights"], state["results"]["attention"]["predictions"]
    found = year_alignment(test_pairs, weights)
    align_min = ctx.threshold("year digits: attention peak on the year, at least", full=0.8, quick=0.8)
    picks: list[int] = []
    for target in ctx.pick((8, 18, 30, 50), (8, 18, 30, 50), (8, 30)):
        picks.append(int(np.argmin(np.abs(lengths - target) + 1000 * np.isin(np.arange(len(lengths)), picks))))
    examples = [(test_pairs[i][0], test_pairs[i][1], preds[i], weights[i]) for i in picks]
    return Finding(
        title="Attention learns alignments", metrics={"year_alignment": found},
        claims=[claims.claim("attention.alignment", "Attention learns alignments: while writing the year's digits, "
                             "the attention peak falls on the year in the input (inputs that write the year in "
                             "digits)", claims.ge("fraction of year steps", found["peak_on_year"], align_min))],
        plots=[ctx.savefig(_heatmaps(ctx, examples), "alignment.png", "Attention weights of the attentive model "
                           "(rows: output characters, columns: input characters; darker = more weight). The "
                           "decoder looks at the digits or words it is translating, on them or one character after "
                           "them (a unidirectional encoder has read a character once it is past it).")],
        text=["The attention weights line up with the input: while writing the year, the attention peak is on the "
              f"year's digits {found['peak_on_year']:.0%} of the time, in the inputs that contain them."])

# Report guide: static text, not part of the run's record (the provenance check reads only the record).
HOW = (
    "An encoder-decoder without attention squeezes the whole input into one vector, the encoder's last "
    "state, and the decoder must unfold the output from it. Additive (Bahdanau) attention lets the "
    "decoder look back at every encoder state at every output step, through a learned score:",
    '<div class="math">e_{t,j} = vᵀ tanh(W_s s_{t−1} + W_h h_j)\n'
    'α_{t,j} = exp(e_{t,j}) / Σ_k exp(e_{t,k})      (the alignment: one row per output step)\n'
    'c_t = Σ_j α_{t,j} h_j,   s_t = GRU([y_{t−1}, c_t], s_{t−1}),   p(y_t) = softmax(W_o [s_t, c_t])</div>',
    "The context vector c_t is recomputed for each output, so the capacity needed no longer grows with "
    "the input's length; the weights α are what the alignment maps show. Training is teacher-forced: the "
    "decoder is fed the true previous token and trained with cross-entropy on the next one.",
)
TRY_NEXT = (
    ("groundup run attention --set hidden=8 --out runs/try",
     "a tiny summary vector: the model without attention loses most on the longest inputs, while "
     "attention keeps much of its accuracy."),
    ("groundup run attention --quick --set steps=300 --out runs/try",
     "a short training: the alignment maps are blurrier and accuracy on long dates drops for both."),
)


STAGE = Stage("attention", "GRU encoder-decoder with and without additive attention on date translation",
              experiments=(two_models, bottleneck, alignment),
              headline=("attention accuracy, longest inputs", "results.attention.longest_bucket_accuracy"),
              title="Attention: encoder-decoder on date translation",
              better="higher", anchor=("without attention", "results.plain.longest_bucket_accuracy"),
              how=HOW, try_next=TRY_NEXT, code=(AdditiveAttention,),
              options=(('hidden', 'hidden size of encoder, decoder and summary', int),
                       ('steps', 'training steps per model', int)))
