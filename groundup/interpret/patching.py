"""Activation patching and causal tracing: put a clean activation into a different run, see what returns.

Activation patching (Wang et al. 2022; Heimersheim & Nanda 2024): run a *clean* input (the model
gets it right) and a *corrupted* one that differs in a few tokens (the answer changes). Then rerun
the corrupted input with one activation taken from the clean run, and measure how much of the
clean behaviour comes back. The metric (say the logit difference of the right and the wrong
answer) is normalised so that 0 is the corrupted run and 1 the clean run:

    patched = (metric(patched run) - metric(corrupted)) / (metric(clean) - metric(corrupted))

``patch_residual`` gives a (layer, position) map for the residual stream entering each block,
``patch_heads`` a (layer, head) map for each head's output z (all positions at once).

Causal tracing (Meng et al. 2022, ROME): corrupt the *subject* tokens of a fact prompt by adding
Gaussian noise (3x the embeddings' standard deviation) to their embeddings, so the model loses the
answer; then restore one hidden state at a time from the clean run (the residual stream after a
block, the MLP output or the attention output, at one layer and one position) and record the
probability of the right answer. Where restoring brings it back is where the fact is carried.

    trace = causal_trace(model, ids, subject=[1, 2], answer=answer_id)
    trace.mlp - trace.p_corrupted      # (L, T) indirect effect of each MLP output

References: Meng et al. 2022, "Locating and Editing Factual Associations in GPT", https://arxiv.org/abs/2202.05262;
Wang et al. 2022, "Interpretability in the Wild", https://arxiv.org/abs/2211.00593; Heimersheim &
Nanda 2024, "How to use and interpret activation patching", https://arxiv.org/abs/2404.15255;
Zhang & Nanda 2023, "Towards Best Practices of Activation Patching".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from groundup.backend import array_module
from groundup.interpret._access import (
    as_ids,
    as_int,
    check_model,
    eval_mode,
    has_mlp,
    log_softmax,
    n_head,
    n_layer,
    numpy_of,
    replace_at,
)
from groundup.nn.hooks import ActivationCache
from groundup.nn.module import Module
from groundup.tensor import Tensor

__all__ = ["Patching", "CausalTrace", "logit_diff_metric", "answer_prob_metric", "run_patched", "normalise",
           "patch_residual", "patch_heads", "activation_patching", "causal_trace"]

Metric = Callable[[np.ndarray], float]


@dataclass
class Patching:
    """A patching map: how much of the clean metric each patched activation restores (0 corrupted, 1 clean).

    Attributes:
        what: 'resid' (rows: layers, columns: positions) or 'head' (rows: layers, columns: heads).
        values: (L, T) or (L, H) normalised metric.
        rows, cols: labels of the rows ('blocks.0', …) and columns ('0', '1', … or 'H0', 'H1', …).
        clean, corrupted: the metric on the clean and the corrupted run (unnormalised).
    """

    what: str
    values: np.ndarray
    rows: list[str]
    cols: list[str]
    clean: float
    corrupted: float


def _check_metric_args(metric: str, logits: np.ndarray, position: int, **tokens: int) -> None:
    """A ValueError unless ``position`` is inside logits (B, T, V) and each token id inside the vocabulary."""
    T, V = logits.shape[1], logits.shape[-1]
    position = as_int(position, "position", metric)
    tokens = {name: as_int(token, name, metric) for name, token in tokens.items()}
    if not -T <= position < T:
        raise ValueError(f"{metric}: position {position} outside a sequence of {T}")
    for name, token in tokens.items():
        if not 0 <= token < V:          # a negative id would silently read a token from the end
            raise ValueError(f"{metric}: {name} {token} outside the vocabulary of {V}")


def logit_diff_metric(answer: int, wrong: int, position: int = -1) -> Metric:
    """``logits[:, position, answer] - logits[:, position, wrong]``, averaged over the batch."""
    def metric(logits: np.ndarray) -> float:
        _check_metric_args("logit_diff_metric", logits, position, answer=answer, wrong=wrong)
        z = np.asarray(logits, dtype=np.float64)[:, position]                # (B, V)
        return float((z[:, answer] - z[:, wrong]).mean())
    return metric


def answer_prob_metric(answer: int, position: int = -1) -> Metric:
    """p(answer) at ``position``, averaged over the batch."""
    def metric(logits: np.ndarray) -> float:
        _check_metric_args("answer_prob_metric", logits, position, answer=answer)
        return float(np.exp(log_softmax(logits[:, position])[:, answer]).mean())
    return metric


def normalise(value: float, clean: float, corrupted: float) -> float:
    """(value - corrupted) / (clean - corrupted); a ValueError when clean and corrupted agree."""
    if not np.isfinite(clean - corrupted) or abs(clean - corrupted) < 1e-12:
        raise ValueError(f"patching: the metric is the same on the clean ({clean:.6g}) and the corrupted "
                         f"({corrupted:.6g}) run, so nothing can be normalised; pick inputs whose answers differ")
    return float((value - corrupted) / (clean - corrupted))


def run_patched(model: Module, idx: Any, source: ActivationCache, patches: Sequence[tuple[str, tuple[Any, ...]]]
                ) -> np.ndarray:
    """Logits (B, T, V) of ``model(idx)`` with each ``(hook name, index)`` of ``patches`` taken from ``source``."""
    by_name: dict[str, list[tuple[Any, ...]]] = {}
    for name, index in patches:
        by_name.setdefault(name, []).append(index)

    def make(name: str) -> Callable[[Tensor, Any], Tensor]:
        clean = numpy_of(source[name])

        def hook(act: Tensor, point: Any) -> Tensor:
            if clean.shape != tuple(act.shape):
                raise ValueError(f"patching {name}: source activation {clean.shape} vs {tuple(act.shape)}; "
                                 "clean and corrupted inputs must have the same shape")
            for index in by_name[name]:
                act = replace_at(act, index, clean[index])
            return act
        return hook

    with eval_mode(model), model.hooks({name: make(name) for name in by_name}):
        return numpy_of(model(idx))


def _pair(model: Module, clean: Any, corrupted: Any, metric: Metric, names: Any
          ) -> tuple[np.ndarray, np.ndarray, ActivationCache, float, float]:
    check_model(model, "activation_patching")
    clean_ids, corrupt_ids = as_ids(clean, "activation_patching"), as_ids(corrupted, "activation_patching")
    if clean_ids.shape != corrupt_ids.shape:
        raise ValueError(f"activation_patching: clean {clean_ids.shape} and corrupted {corrupt_ids.shape} "
                         "inputs must have the same shape")
    with eval_mode(model):
        clean_logits, cache = model.run_with_cache(clean_ids, names=names)
        corrupt_logits = model(corrupt_ids)
    return (clean_ids, corrupt_ids, cache, metric(numpy_of(clean_logits)), metric(numpy_of(corrupt_logits)))


def patch_residual(model: Module, clean: Any, corrupted: Any, metric: Metric) -> Patching:
    """(layer, position) map: the residual stream entering block l at position t, patched from clean.

    Args:
        clean, corrupted: (B, T) token ids of the same shape.
        metric: logits (B, T, V) -> float (``logit_diff_metric``, ``answer_prob_metric``).
    """
    _, corrupt_ids, cache, m_clean, m_corrupt = _pair(model, clean, corrupted, metric, "blocks.*.hook_resid_pre")
    L, T = n_layer(model), corrupt_ids.shape[1]
    values = np.zeros((L, T))
    for layer in range(L):
        for t in range(T):
            logits = run_patched(model, corrupt_ids, cache, [(f"blocks.{layer}.hook_resid_pre", (slice(None), t))])
            values[layer, t] = normalise(metric(logits), m_clean, m_corrupt)
    return Patching("resid", values, [f"blocks.{i}" for i in range(L)], [str(t) for t in range(T)], m_clean, m_corrupt)


def patch_heads(model: Module, clean: Any, corrupted: Any, metric: Metric) -> Patching:
    """(layer, head) map: each head's output z (every position) patched from the clean run."""
    _, corrupt_ids, cache, m_clean, m_corrupt = _pair(model, clean, corrupted, metric, "blocks.*.attn.hook_z")
    L, H = n_layer(model), n_head(model)
    values = np.zeros((L, H))
    for layer in range(L):
        for head in range(H):
            logits = run_patched(model, corrupt_ids, cache, [(f"blocks.{layer}.attn.hook_z", (slice(None), head))])
            values[layer, head] = normalise(metric(logits), m_clean, m_corrupt)
    return Patching("head", values, [f"blocks.{i}" for i in range(L)], [f"H{h}" for h in range(H)], m_clean, m_corrupt)


def activation_patching(model: Module, clean: Any, corrupted: Any, metric: Metric, what: str = "resid") -> Patching:
    """``patch_residual`` (what='resid') or ``patch_heads`` (what='head')."""
    if what == "resid":
        return patch_residual(model, clean, corrupted, metric)
    if what == "head":
        return patch_heads(model, clean, corrupted, metric)
    raise ValueError(f"activation_patching: what must be 'resid' or 'head', got {what!r}")


# ----------------------------------------------------------------------------- causal tracing
@dataclass
class CausalTrace:
    """Causal tracing of one fact prompt.

    Attributes:
        p_clean: p(answer) at the last position on the clean prompt.
        p_corrupted: the same with noise on the subject's embeddings (mean over the noise samples).
        resid, mlp, attn: (L, T) p(answer) with that state restored at (layer, position): the residual
            stream after block l, the MLP output, the attention output (NaN for a model without MLPs).
        subject: the noised positions.   noise_std: the noise's standard deviation.
    """

    p_clean: float
    p_corrupted: float
    resid: np.ndarray
    mlp: np.ndarray
    attn: np.ndarray
    subject: list[int]
    noise_std: float

    def indirect_effect(self, kind: str) -> np.ndarray:
        """(L, T) p(answer) restored minus p(answer) corrupted, for 'resid', 'mlp' or 'attn'."""
        return getattr(self, kind) - self.p_corrupted


def _noise_std(model: Module, embeddings: np.ndarray) -> float:
    """The embeddings' standard deviation: of the token embedding table when there is one (ROME), else measured."""
    table = getattr(getattr(model, "wte", None), "weight", None)
    return float(numpy_of(table).std()) if table is not None else float(embeddings.std())


def causal_trace(model: Module, idx: Any, subject: Sequence[int], answer: int, noise: float = 3.0,
                 samples: int = 10, seed: int = 0, noise_std: float | None = None) -> CausalTrace:
    """Causal tracing (Meng et al. 2022) of the answer at the last position of one prompt.

    Args:
        model: a hooked language model.
        idx: (T,) or (1, T) the prompt; the answer is predicted at its last position.
        subject: the positions of the subject tokens (noised; negative counts from the end).
        answer: the correct answer's token id.
        noise: the noise's standard deviation in units of the embeddings' (ROME: 3).
        samples: noise samples averaged over.   seed: their generator's seed.
        noise_std: the embeddings' standard deviation (default: of the token embedding table).
    Returns:
        a ``CausalTrace``. Each (layer, position) is restored alone, one layer at a time.
    """
    check_model(model, "causal_trace")
    ids = as_ids(idx, "causal_trace", one=True)
    T, L = ids.shape[1], n_layer(model)
    for s in subject:
        if not -T <= int(s) < T:
            raise ValueError(f"causal_trace: subject position {s} outside a prompt of {T} tokens")
    subject = sorted({int(s) % T for s in subject})                           # negative: from the end
    if not subject:
        raise ValueError("causal_trace: name at least one subject position")
    if not isinstance(samples, (int, np.integer)) or samples < 1:
        raise ValueError(f"causal_trace: samples must be a positive integer, got {samples!r}")
    with eval_mode(model):
        clean_logits, cache = model.run_with_cache(ids)
    V = clean_logits.shape[-1]
    if not 0 <= int(answer) < V:
        raise ValueError(f"causal_trace: answer {answer} outside the vocabulary of {V}")
    embeddings = numpy_of(cache["blocks.0.hook_resid_pre"])                   # (1, T, C)
    std = _noise_std(model, embeddings) if noise_std is None else float(noise_std)
    rng = np.random.default_rng(seed)
    eps = rng.standard_normal((samples, len(subject), embeddings.shape[-1])) * noise * std  # (S, n_subj, C)

    def corrupt(act: Tensor, point: Any) -> Tensor:                           # act (R, T, C), R = groups * S
        data = act.data.copy()
        reps = data.shape[0] // samples
        data[:, subject] += array_module(data).asarray(np.tile(eps, (reps, 1, 1)), dtype=data.dtype)  # (R, n_subj, C)
        return Tensor(data)

    def p_answer(logits: Tensor) -> np.ndarray:
        return np.exp(log_softmax(numpy_of(logits)[:, -1])[:, answer])        # (R,)

    with eval_mode(model), model.hooks({"blocks.0.hook_resid_pre": corrupt}):
        p_corrupted = float(p_answer(model(np.repeat(ids, samples, axis=0))).mean())
    rows = np.repeat(np.arange(T), samples)                                   # (T*S,) the position each row restores
    batch = np.repeat(ids, T * samples, axis=0)                               # (T*S, T)
    traces = {}
    for kind, hook in (("resid", "hook_resid_post"), ("mlp", "hook_mlp_out"), ("attn", "hook_attn_out")):
        grid = np.full((L, T), np.nan)
        for layer in range(L):
            if kind == "mlp" and not has_mlp(model, layer):
                continue
            clean = numpy_of(cache[f"blocks.{layer}.{hook}"])[0]              # (T, C)

            def restore(act: Tensor, point: Any, clean: np.ndarray = clean) -> Tensor:
                return replace_at(act, (np.arange(len(rows)), rows), clean[rows])  # row r restores position rows[r]
            with eval_mode(model), model.hooks({"blocks.0.hook_resid_pre": corrupt,
                                                f"blocks.{layer}.{hook}": restore}):
                grid[layer] = p_answer(model(batch)).reshape(T, samples).mean(axis=1)  # (T,)
        traces[kind] = grid
    p_clean = float(np.exp(log_softmax(numpy_of(clean_logits)[0, -1])[answer]))
    return CausalTrace(p_clean, p_corrupted, traces["resid"], traces["mlp"], traces["attn"], subject, std)
