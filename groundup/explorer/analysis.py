"""What the explorer's page asks of a model: NumPy computations on the hook points, plain lists out.

Each function takes a ``LoadedRun`` (the readable ``GPT`` in eval mode, its tokenizer and a lock)
and returns JSON-ready dicts. The model's hooks live on the module itself, so every use of the model
holds ``run.lock``: concurrent requests take turns, one forward pass each.

    analyze         tokens, the top-k next-token distribution at every position, every head's
                    attention (L, H, T, T) and the per-position loss
    head_scores     previous-token, induction, duplicate- and first-token scores of each (layer, head)
                    on a repeated random sequence (Olsson et al. 2022)
    logit_lens      each layer's residual stream through ln_f and the unembedding (nostalgebraist 2020)
    attribution     direct logit attribution of one prediction: each head, MLP and the embeddings'
                    share of the logit, through ln_f with its scale frozen (Elhage et al. 2021)
    ablate          the distribution and loss with heads / MLPs switched off (zeroed or mean-ablated)
    stream_tokens   generation one token at a time (KV cache on or off), for server-sent events

The head scores, logit lens, attribution and ablation are ``groundup.interpret``'s; this file picks
the inputs (a repeated random sequence for the detectors, the model's own samples for mean
ablation) and turns the results into what the page draws.

References: Elhage et al. 2021, "A Mathematical Framework for Transformer Circuits"; Olsson et al.
2022, "In-context Learning and Induction Heads"; nostalgebraist 2020, "interpreting GPT: the logit lens".
"""

from __future__ import annotations

import base64
import dataclasses
import math
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from groundup import interpret
from groundup.backend import to_numpy
from groundup.explorer.runs import ExplorerError
from groundup.tensor import no_grad

__all__ = ["LoadedRun", "load_run", "pack", "unpack", "analyze", "head_scores", "logit_lens", "attribution", "ablate",
           "stream_tokens", "MAX_NEW_TOKENS"]

MAX_NEW_TOKENS = 2000            # one generation request
ROUND = 5                        # decimals of the probabilities and weights sent to the page


class IdTokenizer:
    """Text is token ids written out ("3 14 15"): for a run with no tokenizer (a synthetic task)."""

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size

    def encode(self, text: str) -> list[int]:
        ids = []
        for word in text.replace(",", " ").split():
            if not (word.isascii() and word.isdigit()) or int(word) >= self.vocab_size:   # '²'.isdigit() too
                raise KeyError(f"this run has no tokenizer: write token ids 0..{self.vocab_size - 1} separated by "
                               f"spaces ({word[:20]!r} is not one)")
            ids.append(int(word))
        return ids

    def decode(self, ids: Any) -> str:
        return "".join(f"{int(i)} " for i in ids)


def _load_model(directory: Path) -> Any:
    """The readable model of a run: a ``GPT``, or an ``AttnOnlyLM`` when config.json has its fields."""
    from groundup.models.attn_only import AttnOnlyConfig, AttnOnlyLM
    from groundup.models.gpt import GPT
    from groundup.train import load_checkpoint
    from groundup.train.checkpoint import read_checkpoint_config

    saved = read_checkpoint_config(directory)
    saved = saved["model"] if isinstance(saved.get("model"), dict) else saved
    attn_only = {f.name for f in dataclasses.fields(AttnOnlyConfig)}
    if saved and set(saved) <= attn_only and isinstance(saved.get("norm"), bool):
        model = AttnOnlyLM(AttnOnlyConfig(**saved))
        load_checkpoint(directory, model)
        return model
    return GPT.load(directory)


class LoadedRun:
    """A run's readable model (eval mode), tokenizer and lock; ``stamp`` tells a newer checkpoint apart."""

    def __init__(self, directory: Path):
        from groundup.commands import load_tokenizer
        from groundup.models.gpt import GPT

        self.directory = directory
        self.stamp = checkpoint_stamp(directory)
        self.model = _load_model(directory).eval()
        self.is_gpt = isinstance(self.model, GPT)
        self.cfg = self.model.cfg
        try:
            self.tokenizer = load_tokenizer(directory)
        except FileNotFoundError:
            self.tokenizer = IdTokenizer(self.cfg.vocab_size)
        self.has_mlp = all(hasattr(block, "mlp") for block in self.model.blocks)
        self.lock = threading.Lock()
        self._fast: Any = None
        self._head_scores: dict[str, Any] | None = None
        self._reference: dict[int, np.ndarray] = {}

    @property
    def fast(self) -> Any:
        """The model to rerun the window with for generation without the cache: the GPT's fused twin
        (same weights), made on first use; the readable model itself for other models."""
        if self._fast is None:
            if not self.is_gpt:
                return self.model
            from groundup.models.gpt_fast import FastGPT

            self._fast = self.model.as_class(FastGPT).eval()
        return self._fast

    # ------------------------------------------------------------------ text <-> ids
    def encode(self, text: str, what: str = "text") -> list[int]:
        """Token ids of ``text``; 422 for an empty text, a character outside the vocabulary or a text
        longer than the model's context."""
        if not text:
            raise ExplorerError(422, f"{what} is empty: type some text")
        try:
            ids = [int(i) for i in self.tokenizer.encode(text)]
        except KeyError as err:   # UnknownTokenError is a KeyError
            raise ExplorerError(422, f"{what}: {' '.join(str(err).strip(chr(39)).split())}") from None
        if not ids:
            raise ExplorerError(422, f"{what} has no tokens")
        if any(i >= self.cfg.vocab_size for i in ids):
            raise ExplorerError(422, f"{what}: the tokenizer gives ids outside the model's vocabulary "
                                     f"0..{self.cfg.vocab_size - 1}")
        return ids

    def encode_context(self, text: str, what: str = "text") -> list[int]:
        """``encode``, refusing more tokens than the context (block_size) holds."""
        ids = self.encode(text, what)
        if len(ids) > self.cfg.block_size:
            raise ExplorerError(422, f"{what} has {len(ids)} tokens, more than this model's context of "
                                     f"{self.cfg.block_size}; shorten it")
        return ids

    def token_text(self, token_id: int) -> str:
        """The text of one token; a byte-level BPE token that ends inside a character shows its bytes (\\xf0)."""
        from groundup.commands import decode

        token_id = int(token_id)
        if hasattr(self.tokenizer, "id_to_token") and 0 <= token_id < self.tokenizer.vocab_size:
            try:
                return self.tokenizer.decode([token_id], errors="backslashreplace")
            except (KeyError, TypeError, UnicodeError):
                pass
        return decode(self.tokenizer, [token_id])

    def decode(self, ids: list[int]) -> str:
        from groundup.commands import decode

        return decode(self.tokenizer, [int(i) for i in ids])


def checkpoint_stamp(directory: Path) -> tuple[int, int]:
    """(mtime_ns, size) of model.safetensors: changes when a training run writes a new checkpoint."""
    stat = (directory / "model.safetensors").stat()
    return stat.st_mtime_ns, stat.st_size


def load_run(directory: Path) -> LoadedRun:
    return LoadedRun(directory)


# ----------------------------------------------------------------------------- helpers
def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    with np.errstate(under="ignore"):               # exp of a very negative logit is 0, as it should be
        e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _kl(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """KL(p || q) in nats over the last axis (0 log 0 = 0)."""
    with np.errstate(under="ignore"):
        return np.maximum((p * (np.log(np.maximum(p, 1e-300)) - np.log(np.maximum(q, 1e-300)))).sum(-1), 0.0)


def _top(run: LoadedRun, probs: np.ndarray, k: int) -> dict[str, list]:
    """The k most likely tokens of each row of probs (T, V): ids, texts and probabilities (T, k)."""
    k = min(k, probs.shape[-1])
    order = np.argsort(-probs, axis=-1, kind="stable")[:, :k]                     # (T, k)
    top_probs = np.take_along_axis(probs, order, axis=-1)                         # (T, k)
    return {"ids": order.tolist(), "tokens": [[run.token_text(i) for i in row] for row in order],
            "probs": np.round(top_probs, ROUND).tolist()}


def _next_token_losses(probs: np.ndarray, ids: list[int]) -> np.ndarray:
    """-log p(ids[t+1] | ids[:t+1]) for t < T-1: (T-1,)."""
    targets = np.asarray(ids[1:])
    picked = probs[np.arange(len(targets)), targets]
    return -np.log(np.maximum(picked, 1e-300))


def _mean_loss(losses: np.ndarray) -> float | None:
    return float(losses.mean()) if losses.size else None


def _check_position(position: int, n_tokens: int) -> int:
    if not -n_tokens <= position < n_tokens:
        raise ExplorerError(422, f"position {position} is outside the text's {n_tokens} tokens "
                                 f"(0..{n_tokens - 1}, or negative from the end)")
    return position % n_tokens


def _check_token(run: LoadedRun, token: int, what: str) -> int:
    if not 0 <= token < run.cfg.vocab_size:
        raise ExplorerError(422, f"{what} {token} is outside the vocabulary 0..{run.cfg.vocab_size - 1}")
    return token


def pack(values: np.ndarray) -> dict[str, Any]:
    """An array as {shape, dtype: 'float32', data: base64 of its little-endian bytes, C order}.

    The attention maps of a 64-token prompt on the baby GPT are 65,536 numbers: as JSON text they
    take longer to write and to parse than the forward pass takes to compute them; as float32 bytes
    they are 256 kB (350 kB in base64), written in a millisecond and read by a Float32Array.
    """
    data = np.ascontiguousarray(values, dtype="<f4")
    return {"shape": list(data.shape), "dtype": "float32", "data": base64.b64encode(data.tobytes()).decode("ascii")}


def unpack(packed: dict[str, Any]) -> np.ndarray:
    """The array ``pack`` packed."""
    return np.frombuffer(base64.b64decode(packed["data"]), dtype="<f4").reshape(packed["shape"])


# ----------------------------------------------------------------------------- analyze
def analyze(run: LoadedRun, text: str, k: int = 10) -> dict[str, Any]:
    """Tokens, top-k next-token distribution at every position, all attention maps and the loss.

    Returns:
        tokens: [{id, text}] (T);  top: {ids, tokens, probs} each (T, k);  attention: (L, H, T, T)
        packed (see ``pack``), row t = where position t looks;  losses: (T-1,) next-token losses;
        loss: their mean.
    """
    ids = run.encode_context(text)
    idx = np.asarray([ids], dtype=np.int64)                                      # (1, T)
    with run.lock:
        logits, cache = run.model.run_with_cache(idx, names="blocks.*.attn.hook_pattern")
    probs = _softmax(logits.numpy()[0])                                           # (T, V)
    attention = np.stack([cache[f"blocks.{i}.attn.hook_pattern"].numpy()[0]
                          for i in range(run.cfg.n_layer)])                       # (L, H, T, T)
    losses = _next_token_losses(probs, ids)
    return {"tokens": [{"id": i, "text": run.token_text(i)} for i in ids], "top": _top(run, probs, k),
            "attention": pack(attention),
            "losses": np.round(losses, ROUND).tolist(), "loss": _mean_loss(losses),
            "n_layer": run.cfg.n_layer, "n_head": run.cfg.n_head, "has_mlp": run.has_mlp}


# ----------------------------------------------------------------------------- head scores
def detector_sequence(run: LoadedRun, half: int | None = None, seed: int = 0) -> np.ndarray:
    """A random token sequence repeated twice, (1, 2 * half): induction heads light up on its second half."""
    half = half or max(2, min(32, run.cfg.block_size // 2))
    rng = np.random.default_rng(seed)
    first = rng.integers(0, min(run.cfg.vocab_size, run.tokenizer.vocab_size), size=half)
    return np.concatenate([first, first])[None, :].astype(np.int64)               # (1, 2 half)


def head_scores(run: LoadedRun) -> dict[str, Any]:
    """Each head's detector scores (L, H) on ``detector_sequence`` (``groundup.interpret.head_scores``):
    previous-token, induction, duplicate-token and first-token; cached per model. NaN becomes None."""
    if run._head_scores is None:
        idx = detector_sequence(run)
        with run.lock:
            scores = interpret.head_scores(run.model, idx)
        run._head_scores = {name: _grid(value) for name, value in scores.items()}
        run._head_scores["sequence_length"] = int(idx.shape[1])
    return run._head_scores


def _grid(values: np.ndarray) -> list[list[float | None]]:
    return [[round(float(v), 4) if math.isfinite(v) else None for v in row] for row in np.asarray(values, float)]


# ----------------------------------------------------------------------------- logit lens
def _targets(ids: list[int]) -> np.ndarray:
    """Next-token targets (1, T) of a text: ids shifted left, -100 (ignored) at the last position."""
    return np.asarray([ids[1:] + [-100]], dtype=np.int64)


def logit_lens(run: LoadedRun, text: str, k: int = 5) -> dict[str, Any]:
    """The residual stream after the embeddings and after each block, read through ln_f and lm_head
    (``groundup.interpret.logit_lens``).

    Returns:
        names (L+1,), top {ids, tokens, probs} each (L+1, T, k), kl_to_final (L+1, T) in nats, and
        target_probs (L+1, T-1): each layer's probability of the token that actually comes next.
    """
    ids = run.encode_context(text)
    with run.lock:
        lens = interpret.logit_lens(run.model, np.asarray([ids], dtype=np.int64), _targets(ids), k=k)
    target_probs = np.exp(-lens.loss[:, :-1]) if lens.loss is not None else np.zeros((len(lens.names), 0))
    return {"names": ["embed" if n == "embed" else n.replace("blocks.", "block ") for n in lens.names],
            "tokens": [{"id": i, "text": run.token_text(i)} for i in ids],
            "top": {"ids": lens.top_ids.tolist(),
                    "tokens": [[[run.token_text(i) for i in row] for row in layer] for layer in lens.top_ids],
                    "probs": np.round(lens.top_probs, ROUND).tolist()},
            "kl_to_final": np.round(lens.kl_to_final, ROUND).tolist(),
            "target_probs": np.round(target_probs, ROUND).tolist()}


# ----------------------------------------------------------------------------- attribution
def attribution(run: LoadedRun, text: str, position: int = -1, token: int | None = None,
                other: int | None = None) -> dict[str, Any]:
    """Direct logit attribution of the logit of ``token`` (default: the top prediction) at ``position``,
    minus ``other``'s if given (``groundup.interpret.direct_logit_attribution``).

    The final residual stream is a sum of parts (embeddings, each head, each MLP); ln_f is linear once
    its scale is frozen at the value it has, so each part has a share of the logit, and the shares
    (with 'bias', the biases' share) add up to the logit exactly. Pre-norm models only.
    """
    if run.is_gpt and run.cfg.norm != "pre":
        raise ExplorerError(422, "direct logit attribution needs a pre-norm model (the residual stream of a "
                                 "post-norm model is normalised inside every block)")
    ids = run.encode_context(text)
    position = _check_position(position, len(ids))
    idx = np.asarray([ids], dtype=np.int64)
    if token is None:
        with run.lock, no_grad():
            token = int(np.argmax(run.model(idx).numpy()[0, position]))
    _check_token(run, token, "token")
    if other is not None:
        _check_token(run, other, "other")
    with run.lock:
        result = interpret.direct_logit_attribution(run.model, idx, position, token, other)
    return {"position": position, "token": token, "token_text": run.token_text(token), "other": other,
            "other_text": run.token_text(other) if other is not None else None, "labels": list(result.labels),
            "values": np.round(result.values, ROUND).tolist(), "total": float(result.total),
            "sum": float(result.values.sum()), "scale": float(result.scale)}


# ----------------------------------------------------------------------------- ablation
REFERENCE_TEXTS = 16             # texts the model writes itself, for mean ablation


def reference_batch(run: LoadedRun, length: int) -> np.ndarray:
    """(REFERENCE_TEXTS, length) token ids the model sampled itself (seeded, cached per length; random
    ids for a model without a sampler): the batch whose mean activation, position by position,
    replaces a part in mean ablation."""
    from groundup.commands import start_id

    if length not in run._reference:
        if run.is_gpt:
            start = np.full((REFERENCE_TEXTS, 1), start_id(run.tokenizer), dtype=np.int64)
            run._reference[length] = run.model.generate(start, length - 1, temperature=1.0, seed=0).numpy()
        else:                                   # no sampler: uniformly random tokens (a synthetic task's inputs)
            rng = np.random.default_rng(0)
            run._reference[length] = rng.integers(0, run.cfg.vocab_size, size=(REFERENCE_TEXTS, length))
    return run._reference[length]


def ablate(run: LoadedRun, text: str, position: int = -1, heads: list[tuple[int, int]] | None = None,
           mlps: list[int] | None = None, kind: str = "zero", k: int = 10) -> dict[str, Any]:
    """Next-token distribution and loss with the given heads / MLPs switched off, beside the intact ones.

    ``zero`` replaces a head's output z (before the output projection) or an MLP's output with zeros
    (the same as zeroing that head's columns of attn.proj.weight, or the MLP's proj weight and bias);
    ``mean`` replaces it with its mean over ``reference_batch`` (texts the model wrote), position by
    position. The hooks are ``groundup.interpret.ablation_hooks``.
    """
    if kind not in ("zero", "mean"):
        raise ExplorerError(422, f"kind must be 'zero' or 'mean', got {kind!r}")
    heads, mlps = list(heads or []), list(mlps or [])
    cfg = run.cfg
    for layer, head in heads:
        if not (0 <= layer < cfg.n_layer and 0 <= head < cfg.n_head):
            raise ExplorerError(422, f"head ({layer}, {head}) does not exist: layers 0..{cfg.n_layer - 1}, "
                                     f"heads 0..{cfg.n_head - 1}")
    if mlps and not run.has_mlp:
        raise ExplorerError(422, f"this model ({type(run.model).__name__}) has no MLPs to ablate")
    for layer in mlps:
        if not 0 <= layer < cfg.n_layer:
            raise ExplorerError(422, f"MLP {layer} does not exist: layers 0..{cfg.n_layer - 1}")
    parts = list(dict.fromkeys([f"L{layer}H{head}" for layer, head in heads] + [f"L{layer}MLP" for layer in mlps]))
    ids = run.encode_context(text)
    position = _check_position(position, len(ids))
    idx = np.asarray([ids], dtype=np.int64)
    with run.lock, no_grad():
        before = _softmax(run.model(idx).numpy()[0])                                # (T, V)
        after = before
        if parts:
            reference = reference_batch(run, len(ids)) if kind == "mean" else None
            with run.model.hooks(interpret.ablation_hooks(run.model, parts, kind, mean_over=reference)):
                after = _softmax(run.model(idx).numpy()[0])                         # (T, V)
    loss_before, loss_after = _next_token_losses(before, ids), _next_token_losses(after, ids)
    p, q = before[position], after[position]
    k = min(k, p.shape[-1])
    shown = list(dict.fromkeys(np.argsort(-p, kind="stable")[:k].tolist() + np.argsort(-q, kind="stable")[:k].tolist()))
    return {"position": position, "kind": kind, "parts": parts, "heads": [list(h) for h in heads], "mlps": mlps,
            "ids": shown, "tokens": [run.token_text(i) for i in shown],
            "before": np.round(p[shown], ROUND).tolist(), "after": np.round(q[shown], ROUND).tolist(),
            "kl": float(_kl(p, q)), "loss_before": _mean_loss(loss_before), "loss_after": _mean_loss(loss_after),
            "losses_before": np.round(loss_before, ROUND).tolist(),
            "losses_after": np.round(loss_after, ROUND).tolist()}


# ----------------------------------------------------------------------------- generation
def stream_tokens(run: LoadedRun, prompt_ids: list[int], max_new_tokens: int, temperature: float = 1.0,
                  top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                  use_cache: bool = True) -> Iterator[dict[str, Any]]:
    """Check the request (ExplorerError now, before any event), then return ``_stream``'s records."""
    if use_cache and not run.is_gpt:
        raise ExplorerError(422, f"use_cache: the KV decoder is the GPT's; generate with use_cache=false for "
                                 f"this {type(run.model).__name__}")
    return _stream(run, prompt_ids, max_new_tokens, temperature, top_k, top_p, seed, use_cache)


def _stream(run: LoadedRun, prompt_ids: list[int], max_new_tokens: int, temperature: float, top_k: int | None,
            top_p: float | None, seed: int | None, use_cache: bool) -> Iterator[dict[str, Any]]:
    """Yield one record per generated token ({index, id, piece, tokens_per_s}), then {done, text, ...}.

    The same loop as ``GPT.generate`` (``groundup.models.gpt_decode``: the KV decoder or a rerun of the
    window, ``sample_next`` with one uniform per token from ``default_rng(seed)``), one token at a time,
    so a seed gives the text ``groundup sample`` gives. The lock is held per token, not per stream.
    """
    from groundup.models.gpt_decode import KVDecoder, sample_next

    block = run.cfg.block_size
    rng = np.random.default_rng(seed)
    tokens = np.asarray([prompt_ids], dtype=np.int64)                             # (1, T0)
    decoder = KVDecoder(run.model, 1, tokens.shape[1] + max_new_tokens) if use_cache else None
    fast = None if use_cache else run.fast
    generated: list[int] = []
    text_so_far = ""
    started = time.perf_counter()
    for step in range(max_new_tokens):
        with run.lock, no_grad():
            if decoder is not None:
                logits = decoder.next_logits(tokens, step == 0)                       # (1, V)
            else:
                logits = to_numpy(fast(tokens[:, -block:]).data[:, -1, :])           # (1, V)
        nxt = sample_next(logits, temperature, top_k, top_p, rng)                     # (1,)
        tokens = np.concatenate([tokens, nxt[:, None]], axis=1)                       # (1, T + 1)
        generated.append(int(nxt[0]))
        text = run.decode(generated)
        # a byte-level BPE token may end inside a character: send what is settled, the rest later
        piece = text[len(text_so_far):] if text.startswith(text_so_far) else text
        text_so_far = text
        elapsed = time.perf_counter() - started
        yield {"index": step, "id": int(nxt[0]), "piece": piece,
               "tokens_per_s": round((step + 1) / elapsed, 2) if elapsed > 0 else None}
    elapsed = time.perf_counter() - started
    yield {"done": True, "ids": generated, "text": run.decode(generated), "n": len(generated),
           "seconds": round(elapsed, 4),
           "tokens_per_s": round(len(generated) / elapsed, 2) if elapsed > 0 and generated else None}
