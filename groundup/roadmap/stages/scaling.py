"""Stage ``scaling``: what sequence length costs: an RNN against attention, and four kinds of attention.

1. An RNN cannot process its positions in parallel: step t needs h_{t-1}. We measure the longest
   chain of dependent operations (the critical path of the autograd graph) of a GRU unrolled over
   T steps and of a self-attention layer, and wall times (forward + backward) of ``gu.nn.GRU``, of
   ``gu.nn.MultiheadAttention`` (causal) and of the very same GRU cell updates as the GRU (B * T
   of them) batched into one call: the arithmetic of the GRU, without its sequential dependency.
2. Attention's own cost in T: ``groundup.models.efficient_attention`` holds full causal attention
   (a T x T score matrix), sliding-window attention (a band of ``window`` keys), linear attention
   (Katharopoulos et al. 2020) and memory-efficient exact attention (an online softmax over key
   chunks, Rabe & Staats 2021 / FlashAttention). For each, forward wall time (the median of a few
   calls) and peak memory (tracemalloc's peak of the NumPy allocations during one call) over
   lengths T, and the exponents of power-law fits, cost ~ T^p, over the longer lengths.

References: Vaswani et al. 2017, https://arxiv.org/abs/1706.03762; Katharopoulos et al. 2020,
https://arxiv.org/abs/2006.16236; Rabe & Staats 2021, https://arxiv.org/abs/2112.05682; Dao et al.
2022, https://arxiv.org/abs/2205.14135; Beltagy et al. 2020 (Longformer), https://arxiv.org/abs/2004.05150.
"""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import numpy as np

import groundup as gu
from groundup.models.efficient_attention import (
    chunked_attention,
    full_attention,
    linear_attention,
    sliding_window_attention,
)
from groundup.nn.recurrent import unroll_cell
from groundup.roadmap import Finding, claims
from groundup.roadmap.runner import Context, Stage

__all__ = ["STAGE", "fit_exponent", "median_time", "peak_memory", "graph_depth", "attention_variants",
           "measure_attention", "measure_recurrence", "rnn_against_attention", "attention_costs"]


# ----------------------------------------------------------------------------- measuring
def fit_exponent(lengths: Sequence[float], values: Sequence[float]) -> float:
    """p of the least-squares fit log(value) = p log(length) + c (the slope on a log-log plot)."""
    x, y = np.log(np.asarray(lengths, dtype=float)), np.log(np.asarray(values, dtype=float))
    if len(x) < 2 or np.ptp(x) == 0:
        raise ValueError(f"fit_exponent: need at least two different lengths, got {list(lengths)}")
    return float(np.polyfit(x, y, 1)[0])


def median_time(fn: Callable[[], Any], repeats: int, warmup: bool = True) -> float:
    """Median wall time (seconds) of ``repeats`` calls of ``fn``, after one warm-up call (unless ``warmup=False``)."""
    if warmup:
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def peak_memory(fn: Callable[[], Any]) -> int:
    """Peak bytes allocated (NumPy arrays included: NumPy reports to tracemalloc) during one call of ``fn``."""
    tracemalloc.start()
    try:
        fn()
        return int(tracemalloc.get_traced_memory()[1])
    finally:
        tracemalloc.stop()


def graph_depth(output: gu.Tensor) -> int:
    """The longest chain of operations from any leaf to ``output`` in the autograd graph.

    Operations on one chain must run one after another; operations off it could run at the same
    time. A leaf counts 0, every operation 1 + the deepest of its inputs. Iterative (no recursion),
    so graphs of thousands of steps are fine.
    """
    depth: dict[int, int] = {}
    stack = [(output, False)]
    while stack:
        node, expanded = stack.pop()
        if id(node) in depth:
            continue
        parents = [p for p in node._ctx.parents if isinstance(p, gu.Tensor)] if node._ctx is not None else []
        if not parents:
            depth[id(node)] = 0 if node._ctx is None else 1
        elif expanded:
            depth[id(node)] = 1 + max(depth[id(p)] for p in parents)
        else:
            stack.append((node, True))
            stack.extend((p, False) for p in parents if id(p) not in depth)
    return depth[id(output)]


def attention_variants(window: int, chunk: int) -> dict[str, Callable[..., gu.Tensor]]:
    """name -> f(q, k, v), the four causal attentions measured."""
    return {
        "full": full_attention,
        f"sliding window ({window})": lambda q, k, v: sliding_window_attention(q, k, v, window),
        "linear": lambda q, k, v: linear_attention(q, k, v, chunk),
        f"memory-efficient exact (chunk {chunk})": lambda q, k, v: chunked_attention(q, k, v, chunk),
    }


def measure_attention(ctx: Context, lengths: Sequence[int], heads: int, head_dim: int, repeats: int,
                      variants: dict[str, Callable[..., gu.Tensor]]) -> dict[str, Any]:
    """Forward time (s), peak memory (bytes) per variant and length, and each variant's largest
    difference from the first variant (full attention), in float32 with batch 1.

    Each variant is measured on its own, the first variant last (its T x T allocations flush the
    caches and would slow whatever ran right after them); its timed calls go round the lengths
    ``repeats`` times, so that a busy moment of the machine slows every length alike.
    """
    rng = ctx.rng(2)
    inputs = {T: [ctx.to_tensor(rng.standard_normal((1, heads, T, head_dim)).astype(np.float32))
                  for _ in range(3)] for T in lengths}                       # q, k, v: (1, H, T, D) each
    result: dict[str, Any] = {name: {"time_s": [], "memory_bytes": [], "max_abs_diff": []} for name in variants}
    outputs: dict[str, list[np.ndarray]] = {}
    names = list(variants)
    for name in ctx.track(names[1:] + names[:1], "attention variants"):
        calls = [partial(variants[name], *inputs[T]) for T in lengths]
        ctx.info(name)
        with gu.no_grad():
            outputs[name] = [call().numpy() for call in calls]               # (1, H, T, D) each; also a warm-up
            result[name]["memory_bytes"] = [peak_memory(call) for call in calls]
            times = [[median_time(call, 1, warmup=False) for call in calls]  # round-robin over lengths: a slow
                     for _ in range(repeats)]                                 # moment of the machine hits all alike
        result[name]["time_s"] = [float(t) for t in np.median(times, axis=0)]
    for name in names:
        result[name]["max_abs_diff"] = [float(np.abs(out - ref).max()) for out, ref in
                                        zip(outputs[name], outputs[names[0]])]
    return result


def measure_recurrence(ctx: Context, lengths: Sequence[int], batch: int, width: int, heads: int,
                       repeats: int) -> dict[str, list[float]]:
    """Critical-path depth and forward + backward wall time of a GRU and a causal self-attention layer
    of the same width, and of the GRU's B * T cell updates batched into one call. At each length the
    three take turns ``repeats`` times (the median of each is kept), so that a busy moment of the
    machine slows all three alike and their ratios hold."""
    gu.manual_seed(ctx.seed)
    gru = gu.nn.GRU(width, width, batch_first=True).to(ctx.device)
    cell = gu.nn.GRUCell(width, width).to(ctx.device)
    attention = gu.nn.MultiheadAttention(width, heads, batch_first=True).to(ctx.device)
    rng = ctx.rng(3)
    out: dict[str, list[float]] = {key: [] for key in ("gru_depth", "attention_depth", "gru_s", "attention_s",
                                                       "batched_cell_s")}
    for T in ctx.track(lengths, "GRU vs attention over lengths"):
        x = ctx.to_tensor(rng.standard_normal((batch, T, width)).astype(np.float32), requires_grad=True)  # (B, T, C)
        h = ctx.to_tensor(rng.standard_normal((batch * T, width)).astype(np.float32))   # (B*T, C): given states
        future = gu.ones(T, T, dtype=gu.bool, device=ctx.device).triu(1)     # (T, T)

        calls = {
            "gru_s": partial(_gru_output, gru, x),                            # (B, T, C)
            "attention_s": partial(_attention_output, attention, x, future),  # (B, T, C)
            "batched_cell_s": partial(_batched_cell_output, cell, x, h),       # (B*T, C): all steps at once
        }
        states = unroll_cell(cell, x.transpose(0, 1))                         # T tensors (B, C), step by step
        out["gru_depth"].append(graph_depth(states[-1]))
        out["attention_depth"].append(graph_depth(calls["attention_s"]()))
        ctx.info(f"T={T}")
        steps = {key: partial(_backward_of, call) for key, call in calls.items()}
        for step in steps.values():
            step()                                                           # warm-up
        times = [[median_time(step, 1, warmup=False) for step in steps.values()]   # round-robin: a slow moment
                 for _ in range(repeats)]                                            # of the machine hits all alike
        for key, t in zip(steps, np.median(times, axis=0)):
            out[key].append(float(t))
    return out


def _gru_output(gru: gu.nn.GRU, x: gu.Tensor) -> gu.Tensor:
    return gru(x)[0]                                                          # (B, T, C)


def _attention_output(attention: gu.nn.MultiheadAttention, x: gu.Tensor, mask: gu.Tensor) -> gu.Tensor:
    return attention(x, x, x, need_weights=False, attn_mask=mask)[0]          # (B, T, C): causal self-attention


def _batched_cell_output(cell: gu.nn.GRUCell, x: gu.Tensor, h: gu.Tensor) -> gu.Tensor:
    B, T, C = x.shape
    return cell(x.reshape(B * T, C), h)                                       # (B*T, C): every step's update at once


def _backward_of(call: Callable[[], gu.Tensor]) -> None:
    call().sum().backward()


# ----------------------------------------------------------------------------- the experiments
def rnn_against_attention(ctx: Context, state: dict[str, Any]) -> Finding:
    """The GRU's chain of dependent steps against self-attention's, and their wall times."""
    rnn_lengths = ctx.budget("lengths, GRU vs attention", full=[32, 64, 128, 256, 512, 1024, 2048],
                             quick=[32, 64, 128, 256, 512, 1024], tiny=[8, 16, 32])
    batch, width, heads = 1, 64, 4                                            # one sequence at a time
    repeats = ctx.budget("timing repeats (median)", full=11, quick=9, tiny=1, option="repeats")
    state["repeats"] = repeats
    rec = measure_recurrence(ctx, rnn_lengths, batch, width, heads, repeats)
    depth_exponent = fit_exponent(rnn_lengths, rec["gru_depth"])
    speedup = rec["gru_s"][-1] / rec["batched_cell_s"][-1]
    min_speedup = ctx.threshold("GRU time / the same cell updates batched, at the longest length, at least",
                                full=3.0)
    crossover = next((T for T, g, a in zip(rnn_lengths, rec["gru_s"], rec["attention_s"]) if a > g), None)
    ms = {key: rec[f"{key}_s"][-1] * 1e3 for key in ("gru", "batched_cell", "attention")}
    return Finding(
        title="An RNN against self-attention",
        metrics={"recurrence": {"lengths": list(rnn_lengths), "batch": batch, "width": width, "heads": heads, **rec,
                                "gru_depth_exponent": depth_exponent, "gru_over_batched": speedup,
                                "gru_time_exponent": fit_exponent(rnn_lengths, rec["gru_s"]),
                                "attention_slower_from_length": crossover, "ms_at_longest": ms, "repeats": repeats}},
        claims=[claims.claim("scaling.sequential_steps", "An RNN must take its T steps one after another; "
                             "self-attention handles all positions at once: the longest chain of dependent "
                             "operations of a GRU grows in proportion to T, that of a self-attention layer does not "
                             "grow with T", claims.near("GRU depth exponent", depth_exponent, 1.0, 0.05),
                             claims.is_true("attention depth the same at every length",
                                            len(set(rec["attention_depth"])) == 1,
                                            {"GRU depth, longest": rec["gru_depth"][-1],
                                             "attention depth, longest": rec["attention_depth"][-1]})),
                claims.claim("scaling.sequential_cost", f"The sequence is what makes the RNN slow: at T = "
                             f"{rnn_lengths[-1]} the GRU (forward + backward) takes several times as long as the very "
                             "same B*T cell updates done as one batched call",
                             claims.ge("GRU time / batched cell updates", speedup, min_speedup))],
        plots=[ctx.savefig(_rnn_plot(ctx, rnn_lengths, rec), "rnn_vs_attention.png", "Forward + backward wall time "
                           f"(median of {repeats}) of a GRU, a causal self-attention layer (width {width}, {heads} "
                           f"heads, batch {batch}) and the GRU's cell updates batched into one call (left); the "
                           "longest chain of dependent operations in each graph (right).")],
        notes=["On this CPU the depth of the graph, not the wall time, shows the parallelism: a NumPy matmul over T "
               "positions runs on a couple of cores, so attention's quadratic work catches up with the GRU's T small "
               "steps: " + (f"the attention layer is slower than the GRU from T = {crossover} on." if crossover else
                            "the attention layer stays faster than the GRU at every length measured.")
               + " Attention's advantage is that its work can be spread over many cores at once (a GPU), while the "
               "GRU's T steps cannot; this run does not measure a GPU."],
        text=[f"Sequential steps: the GRU's longest chain of dependent operations grows from {rec['gru_depth'][0]} "
              f"to {rec['gru_depth'][-1]} as T goes from {rnn_lengths[0]} to {rnn_lengths[-1]} "
              f"(~T^{depth_exponent:.2f}); a self-attention layer's stays at {rec['attention_depth'][-1]}. At T = "
              f"{rnn_lengths[-1]} the GRU takes {ms['gru']:.1f} ms (forward + backward) against "
              f"{ms['batched_cell']:.1f} ms for the same cell updates batched ({speedup:.1f}x), and the attention "
              f"layer {ms['attention']:.1f} ms."])


def attention_costs(ctx: Context, state: dict[str, Any]) -> Finding:
    """Time and memory against length of full, sliding-window, linear and memory-efficient attention."""
    lengths = ctx.budget("lengths, attention variants", full=[256, 512, 1024, 1448, 2048, 2896, 4096, 5792, 8192],
                         quick=[256, 512, 1024, 1448, 2048, 2896, 4096], tiny=[32, 64, 128])
    fit_from = ctx.budget("fit exponents from length", full=1024, quick=1024, tiny=32)
    window, chunk, a_heads, head_dim = (8, 16, 2, 32) if ctx.tiny else (64, 128, 2, 32)
    variants = attention_variants(window, chunk)
    repeats = state["repeats"]
    att = measure_attention(ctx, lengths, a_heads, head_dim, repeats, variants)
    fitted = [T for T in lengths if T >= fit_from]
    idx = [lengths.index(T) for T in fitted]
    exponents = {name: {"time": fit_exponent(fitted, [att[name]["time_s"][i] for i in idx]),
                        "memory": fit_exponent(fitted, [att[name]["memory_bytes"][i] for i in idx])}
                 for name in variants}
    full_name, window_name, linear_name, chunked_name = variants
    mem_lo = ctx.threshold("full attention memory exponent, at least", full=1.7)
    mem_hi = ctx.threshold("full attention memory exponent, at most", full=2.3)
    time_min = ctx.threshold("full attention time exponent, at least", full=1.5)
    linear_max = ctx.threshold("linear-cost exponents (time and memory), at most", full=1.3)
    diff_max = ctx.threshold("memory-efficient vs full attention, max abs difference (float32)", full=1e-4)
    e_full, e_chunk = exponents[full_name], exponents[chunked_name]
    worst_diff = max(att[chunked_name]["max_abs_diff"])
    found = [claims.claim("scaling.full_quadratic", "Full self-attention costs time and memory quadratic in length: "
                          "fitted exponents near 2", claims.ge("memory exponent", e_full["memory"], mem_lo),
                          claims.le("memory exponent", e_full["memory"], mem_hi),
                          claims.ge("time exponent", e_full["time"], time_min))]
    for key, name, what in (("sliding_window", window_name, f"Sliding-window attention (a band of {window} keys)"),
                            ("linear", linear_name, "Linear attention (elu + 1 features, cumulative sums)")):
        found.append(claims.claim(f"scaling.{key}_linear", f"{what} grows linearly in length: fitted exponents near 1",
                                  claims.le("memory exponent", exponents[name]["memory"], linear_max),
                                  claims.le("time exponent", exponents[name]["time"], linear_max)))
    found.append(claims.claim("scaling.memory_efficient_exact", "Memory-efficient exact attention (online softmax "
                              "over key chunks) gives the same outputs as full attention with memory linear in length",
                              claims.le("max abs difference from full", worst_diff, diff_max),
                              claims.le("memory exponent", e_chunk["memory"], linear_max)))
    last = len(lengths) - 1
    at_longest = {"full_memory_mb": att[full_name]["memory_bytes"][last] / 1e6,
                  "full_time_ms": att[full_name]["time_s"][last] * 1e3,
                  "memory_efficient_memory_mb": att[chunked_name]["memory_bytes"][last] / 1e6}
    plots = [ctx.savefig(_cost_plot(ctx, lengths, fitted, att, exponents, "time_s", "forward time (s)"),
                         "attention_time.png", f"Forward wall time of each attention (median of {repeats}; batch "
                         f"of one, {a_heads} heads of {head_dim}); p is the fitted exponent over T >= {fit_from}."),
             ctx.savefig(_cost_plot(ctx, lengths, fitted, att, exponents, "memory_bytes", "peak memory (bytes)"),
                         "attention_memory.png", "Peak memory of the NumPy allocations during one forward call "
                         f"(tracemalloc); p is the fitted exponent over T >= {fit_from}.")]
    return Finding(
        title="Four attentions over length", claims=found, plots=plots,
        metrics={"attention": {"lengths": list(lengths), "fit_lengths": fitted, "heads": a_heads,
                               "head_dim": head_dim, "window": window, "chunk": chunk, "variants": att,
                               "exponents": exponents, "at_longest": at_longest}},
        notes=["Time is noisy on a shared machine (medians of a few calls); memory, counted by tracemalloc, is exact "
               "and repeatable. Short lengths are left out of the fits: there fixed per-call costs dominate.",
               "Linear attention is not the same function as softmax attention (its kernel is a product of "
               "positive elu features of the queries and keys); sliding-window attention equals full attention only "
               "within the window."],
        text=[f"Full attention: memory ~ T^{e_full['memory']:.2f}, time ~ T^{e_full['time']:.2f} "
              f"({at_longest['full_memory_mb']:.0f} MB and {at_longest['full_time_ms']:.0f} ms at T = {lengths[-1]}). "
              f"Sliding window: memory ~ T^{exponents[window_name]['memory']:.2f}, time ~ "
              f"T^{exponents[window_name]['time']:.2f}; linear: memory ~ T^{exponents[linear_name]['memory']:.2f}, "
              f"time ~ T^{exponents[linear_name]['time']:.2f}.",
              f"Memory-efficient exact attention matches full attention to {worst_diff:.1e} with memory ~ "
              f"T^{e_chunk['memory']:.2f} ({at_longest['memory_efficient_memory_mb']:.1f} MB at T = {lengths[-1]}); "
              f"its time is still ~ T^{e_chunk['time']:.2f}: it saves memory, not work."])


# ----------------------------------------------------------------------------- plots
def _rnn_plot(ctx: Context, lengths: Sequence[int], rec: dict[str, list[float]]) -> Any:
    fig = ctx.figure(10, 3.8)
    left, right = fig.subplots(1, 2)
    for key, label in (("gru_s", "GRU (T sequential steps)"), ("attention_s", "self-attention (causal)"),
                       ("batched_cell_s", "GRU cell updates, batched")):
        left.loglog(lengths, rec[key], "o-", label=f"{label}, p={fit_exponent(lengths, rec[key]):.2f}")
    left.set(xlabel="sequence length T", ylabel="forward + backward time (s)", title="wall time")
    right.loglog(lengths, rec["gru_depth"], "o-", label="GRU, unrolled")
    right.loglog(lengths, rec["attention_depth"], "s-", label="self-attention layer")
    right.set(xlabel="sequence length T", ylabel="longest chain of ops", title="sequential depth")
    for ax in (left, right):
        ax.legend(fontsize=8)
    return fig


def _cost_plot(ctx: Context, lengths: Sequence[int], fitted: Sequence[int], att: dict[str, Any],
               exponents: dict[str, dict[str, float]], key: str, ylabel: str) -> Any:
    fig = ctx.figure(6.5, 4.2)
    ax = fig.subplots()
    what = "time" if key == "time_s" else "memory"
    for name, m in att.items():
        ax.loglog(lengths, m[key], "o-", label=f"{name}: p={exponents[name][what]:.2f}")
    ax.axvspan(min(fitted), max(fitted), color="grey", alpha=0.1, lw=0)
    ax.set(xlabel="sequence length T", ylabel=ylabel, title=f"attention {what} vs length")
    ax.legend(fontsize=8)
    return fig

# Report guide: static text, not part of the run's record (the provenance check reads only the record).
HOW = (
    "An RNN does O(T) sequential steps: step t needs step t−1, so a long sequence cannot be spread over "
    "parallel hardware. Attention computes every position at once, but full attention forms a T × T "
    "score matrix per head:",
    '<div class="math">time ∝ T² · D,   memory ∝ T²   (S = Q Kᵀ / √D is T × T)\n'
    'a cost c ∝ Tᵖ is a straight line of slope p on log-log axes: p = Δlog c / Δlog T</div>',
    "The fixes trade something for the quadratic term. Sliding-window attention lets each position see "
    "only the last w keys (cost ∝ T·w). Linear attention replaces the softmax with a feature map φ so the "
    "product can be regrouped (cost ∝ T·D²), changing the model. Memory-efficient attention computes the "
    "exact softmax in blocks of keys with a running maximum and sum (FlashAttention's online softmax), so "
    "the T × T matrix is never stored:",
    '<div class="math">linear:  out_i = φ(q_i)ᵀ (Σ_j φ(k_j) v_jᵀ) / φ(q_i)ᵀ Σ_j φ(k_j)\n'
    'online softmax per block B:  m′ = max(m, max S_B),  ℓ′ = e^{m−m′} ℓ + Σ e^{S_B − m′},  '
    'o′ = e^{m−m′} o + e^{S_B − m′} V_B</div>',
)
TRY_NEXT = (
    ("groundup run scaling --quick --set repeats=3 --out runs/try",
     "fewer timing repeats: faster, with noisier timings and fitted exponents (memory exponents barely move)."),
    ("groundup run scaling --device cuda --quick --out runs/try",
     "the same measurements on a GPU (needs CuPy): attention's parallelism shows much more strongly against "
     "the RNN."),
)


STAGE = Stage("scaling", "RNN vs attention over length; full, sliding-window, linear and memory-efficient attention",
              experiments=(rnn_against_attention, attention_costs),
              headline=("full-attention memory exponent", "attention.exponents.full.memory"),
              title="Scaling with sequence length: sequential RNNs, quadratic attention, and the fixes",
              better="memory grows as length to this power: quadratic attention is near two, the fixes near one",
              how=HOW, try_next=TRY_NEXT,
              options=(('repeats', 'timing repeats (median)', int),))
