"""Benchmark: groundup's GPT against a PyTorch GPT of the same architecture, side by side in one process.

    python benchmarks/bench_gpt.py --preset baby --iters 40       (or: groundup bench gpt --preset baby)

Method (BENCHMARKS.md "Method"): both models start from the same weights and train on the same
random batches; after warm-up the contenders take turns of 3 steps (A A A, B B B, ...; the first step
of a turn is not timed), and the medians (with min and max) are reported with their ratio. A step is forward,
backward, gradient clipping at 1.0 and an AdamW update (weight decay on matrices only), as the
Trainer does; PyTorch's is its fused AdamW, its fastest on the CPU (``bench_machine.torch_optimizer``).
``torch.set_num_threads(2)``. Dropout is 0 on both sides (it is a training-time
regulariser; the timing compares the arithmetic). Generation: 200 new tokens from a 1-token prompt,
batch 1, with and without a KV cache, the four contenders alternating round by round. Peak memory:
each framework trains a few steps in a fresh subprocess that reports its peak resident set size
(``resource.getrusage``), and for groundup also the peak of NumPy allocations seen by tracemalloc.

FLOPs per token follow nanoGPT's ``estimate_mfu``: 6 N + 12 L C T (N = parameters without the
position table).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import bench_machine  # noqa: E402 - beside this file

DEFAULT_ITERS = {"baby": 40, "small": 3}
DEFAULT_WARMUP = {"baby": 3, "small": 1}
TORCH_THREADS = 2                               # torch.set_num_threads(2) on the 2-core machine
VOCAB = 65  # Tiny Shakespeare's characters


def _config(preset: str):
    from groundup.models.gpt import GPTConfig

    return GPTConfig.preset(preset, vocab_size=VOCAB, dropout=0.0)


def _train_config(preset: str, batch_size: int | None):
    from groundup.commands import TRAIN_PRESETS
    from groundup.train import TrainConfig

    values = dict(TRAIN_PRESETS[preset])
    if batch_size is not None:
        values["batch_size"] = batch_size
    return TrainConfig(**values)


def build(preset: str, batch_size: int | None, which: tuple[str, ...] = ("groundup", "torch"),
          torch_threads: int = TORCH_THREADS) -> dict[str, Any]:
    """The models, optimizers and step functions of each contender, from the same initial weights.

    ``groundup`` is the fused twin (``FastGPT``, what ``groundup train`` runs); ``readable`` is the
    readable ``GPT`` that a learner reads and hooks, trained by autograd through engine ops.
    """
    import groundup as gu
    from groundup.models.gpt import GPT
    from groundup.models.gpt_fast import FastGPT

    cfg, tcfg = _config(preset), _train_config(preset, batch_size)
    gu.manual_seed(0)
    model = FastGPT(cfg)
    out: dict[str, Any] = {"cfg": cfg, "tcfg": tcfg, "groundup_model": model}
    if "groundup" in which:
        out["groundup"] = _groundup_step(model, tcfg)
    if "readable" in which:
        out["readable"] = _groundup_step(model.as_class(GPT), tcfg)
    if "torch" in which:                          # PyTorch at its best: F.scaled_dot_product_attention
        out.update(_torch_contender(model, cfg, tcfg, sdpa=True, name="torch", threads=torch_threads))
    if "torch_explicit" in which:                 # and with attention written out (q k^T, mask, softmax)
        out.update(_torch_contender(model, cfg, tcfg, sdpa=False, name="torch_explicit", threads=torch_threads))
    return out


def _groundup_step(model: Any, tcfg: Any) -> Any:
    from groundup.nn.utils import clip_grad_norm_
    from groundup.train import build_optimizer

    opt = build_optimizer(model, tcfg)
    params = list(model.parameters())

    def gu_step(x: np.ndarray, y: np.ndarray, times: dict[str, list[float]]) -> float:
        t0 = time.perf_counter()
        loss = model.loss(x, y)
        opt.zero_grad(set_to_none=True)                     # as the Trainer: clear, backward, clip, step
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        clip_grad_norm_(params, tcfg.grad_clip)
        opt.step()
        t3 = time.perf_counter()
        times["forward"].append(t1 - t0)
        times["backward"].append(t2 - t1)
        times["optimizer"].append(t3 - t2)
        return t3 - t0

    return gu_step


def _torch_contender(model: Any, cfg: Any, tcfg: Any, sdpa: bool, name: str, threads: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    import torch
    from torch_gpt import TorchGPT

    torch.set_num_threads(threads)
    ref = TorchGPT(cfg, sdpa=sdpa)
    ref.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})
    decay = [p for p in ref.parameters() if p.ndim >= 2]
    no_decay = [p for p in ref.parameters() if p.ndim < 2]
    topt = bench_machine.torch_optimizer(torch, "AdamW", [{"params": decay, "weight_decay": tcfg.weight_decay},
                                                          {"params": no_decay, "weight_decay": 0.0}],
                                         lr=tcfg.lr, betas=tcfg.betas)   # fused: PyTorch's fastest

    def torch_step(x: np.ndarray, y: np.ndarray, times: dict[str, list[float]]) -> float:
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
        t0 = time.perf_counter()
        topt.zero_grad(set_to_none=True)
        loss = ref.loss(xt, yt)
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(ref.parameters(), tcfg.grad_clip)
        topt.step()
        t3 = time.perf_counter()
        times["forward"].append(t1 - t0)
        times["backward"].append(t2 - t1)
        times["optimizer"].append(t3 - t2)
        return t3 - t0

    out[name] = torch_step
    out[f"{name}_model"] = ref
    return out


def _stats(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1e3
    return {"median_ms": float(np.median(ms)), "min_ms": float(ms.min()), "max_ms": float(ms.max())}


def matmul_peak_gflops(n: int = 1024, reps: int = 5) -> float:
    """Best float32 NumPy matmul rate at n x n (GFLOP/s), for the fraction-of-peak figure."""
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    a @ a
    best = min(_timed(lambda: a @ a) for _ in range(reps))
    return 2 * n**3 / best / 1e9


def _timed(fn: Any) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


TURN = 3                                        # steps per contender per turn (the first is not timed)


def bench_training(preset: str, iters: int, batch_size: int | None, warmup: int,
                   readable: bool = True, torch_threads: int = TORCH_THREADS) -> dict[str, Any]:
    built = build(preset, batch_size, ("groundup", "torch", "torch_explicit") + (("readable",) if readable else ()),
                  torch_threads)
    cfg, tcfg = built["cfg"], built["tcfg"]
    B, T = tcfg.batch_size, cfg.block_size
    rng = np.random.default_rng(0)
    batches = [(rng.integers(0, cfg.vocab_size, (B, T)), rng.integers(0, cfg.vocab_size, (B, T)))
               for _ in range(warmup + iters)]
    names = ("groundup", "torch", "torch_explicit") + (("readable",) if readable else ())
    times = {n: {"step": [], "forward": [], "backward": [], "optimizer": []} for n in names}
    for i in range(warmup):  # warm-up: allocator, BLAS buffers, thread pools
        for n in names:
            built[n](*batches[i], {"forward": [], "backward": [], "optimizer": []})
    # Turns of TURN steps per contender on the same batches, the first of each turn untimed: right after
    # a PyTorch step its OpenMP threads still spin, and FastGPT's worker process needs that core
    # (benchmarks/families.md, Method). The order flips every round; each turn starts after a pause in
    # which the other contenders' idle BLAS / OpenMP threads stop spinning (bench_machine.IDLE_THREADS_S).
    done, turn = 0, 0
    while done < iters:
        take = min(TURN - 1, iters - done)
        timed = batches[warmup + done:warmup + done + take]
        for n in (names if turn % 2 == 0 else names[::-1]):
            bench_machine.let_idle_threads_sleep()                                 # the others' threads stop spinning
            built[n](*timed[0], {"forward": [], "backward": [], "optimizer": []})   # settles: not timed
            for batch in timed:
                times[n]["step"].append(built[n](*batch, times[n]))
        done, turn = done + take, turn + 1
    model = built["groundup_model"]
    n_params = model.num_parameters(non_embedding=True)
    flops_per_token = 6 * n_params + 12 * cfg.n_layer * cfg.n_embd * T
    result: dict[str, Any] = {"batch_size": B, "block_size": T, "tokens_per_step": B * T, "iters": iters,
                              "warmup": warmup, "flops_per_step": flops_per_token * B * T}
    for n in names:
        step = _stats(times[n]["step"])
        step["tokens_per_s"] = B * T / (step["median_ms"] / 1e3)
        step["gflops"] = flops_per_token * B * T / (step["median_ms"] / 1e3) / 1e9
        step["sections_median_ms"] = {k: float(np.median(v) * 1e3) for k, v in times[n].items() if k != "step"}
        result[n] = step
    result["ratio_tokens_per_s"] = result["groundup"]["tokens_per_s"] / result["torch"]["tokens_per_s"]
    result["ratio_vs_explicit_tokens_per_s"] = (result["groundup"]["tokens_per_s"]
                                                / result["torch_explicit"]["tokens_per_s"])
    if readable:
        result["ratio_readable_tokens_per_s"] = result["readable"]["tokens_per_s"] / result["torch"]["tokens_per_s"]
    return result


def bench_generation(preset: str, tokens: int, rounds: int, torch_threads: int = TORCH_THREADS) -> dict[str, Any]:
    import torch

    built = build(preset, None, torch_threads=torch_threads)
    model, ref = built["groundup_model"], built["torch_model"]
    model.eval()
    ref.eval()
    prompt = np.zeros((1, 1), dtype=np.int64)
    contenders = {
        "groundup_cache": lambda s: model.generate(prompt, tokens, seed=s, use_cache=True).numpy(),
        "torch_cache": lambda s: ref.generate(torch.from_numpy(prompt), tokens, seed=s, use_cache=True).numpy(),
        "groundup_no_cache": lambda s: model.generate(prompt, tokens, seed=s, use_cache=False).numpy(),
        "torch_no_cache": lambda s: ref.generate(torch.from_numpy(prompt), tokens, seed=s, use_cache=False).numpy(),
    }
    for fn in contenders.values():  # warm-up
        fn(0)
    seconds: dict[str, list[float]] = {k: [] for k in contenders}
    outputs: dict[str, np.ndarray] = {}
    for r in range(rounds):
        for name, fn in contenders.items():
            t = time.perf_counter()
            outputs[name] = fn(r)
            seconds[name].append(time.perf_counter() - t)
    result: dict[str, Any] = {"new_tokens": tokens, "batch": 1, "rounds": rounds,
                              "context": built["cfg"].block_size}
    for name, s in seconds.items():
        med = float(np.median(s))
        result[name] = {"median_s": med, "min_s": float(min(s)), "max_s": float(max(s)), "tokens_per_s": tokens / med}
    result["ratio_cache"] = result["groundup_cache"]["tokens_per_s"] / result["torch_cache"]["tokens_per_s"]
    result["ratio_no_cache"] = result["groundup_no_cache"]["tokens_per_s"] / result["torch_no_cache"]["tokens_per_s"]
    same = outputs["groundup_cache"] == outputs["torch_cache"]
    result["tokens_agree_groundup_torch"] = f"{int(same.sum())}/{same.size}"
    return result


def memory_probe(which: str, preset: str, batch_size: int | None, steps: int = 2) -> dict[str, float]:
    """Run in a fresh process: peak RSS of building + training ``steps`` steps of one contender."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-probe", which, "--preset", preset,
           "--probe-steps", str(steps)]
    if batch_size is not None:
        cmd += ["--batch-size", str(batch_size)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip()[-500:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _rss_mb(field: str) -> float:
    """VmRSS (now) or VmHWM (peak) of this process in MiB, from /proc; ru_maxrss where /proc is missing.

    NOTE: ru_maxrss is not used on Linux: a child starts with its parent's value, which would hide
    the child's own peak when the parent is larger.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def _probe_main(which: str, preset: str, batch_size: int | None, steps: int) -> None:
    import tracemalloc

    if which == "torch":
        import torch  # noqa: F401 - count the library itself in the baseline
    import groundup  # noqa: F401

    baseline = _rss_mb("VmRSS")
    built = build(preset, batch_size, which=(which,))
    cfg, tcfg = built["cfg"], built["tcfg"]
    rng = np.random.default_rng(0)
    traced = 0.0
    for i in range(steps):
        x = rng.integers(0, cfg.vocab_size, (tcfg.batch_size, cfg.block_size))
        y = rng.integers(0, cfg.vocab_size, (tcfg.batch_size, cfg.block_size))
        if which == "groundup" and i == steps - 1:
            tracemalloc.start()
        built[which](x, y, {"forward": [], "backward": [], "optimizer": []})
        if tracemalloc.is_tracing():
            traced = tracemalloc.get_traced_memory()[1] / 2**20
            tracemalloc.stop()
    peak = _rss_mb("VmHWM")
    out = {"baseline_rss_mb": baseline, "peak_rss_mb": peak, "delta_rss_mb": peak - baseline}
    if which == "groundup":
        out["tracemalloc_peak_mb"] = traced
    print(json.dumps(out))


def run(preset: str = "baby", iters: int | None = None, batch_size: int | None = None, gen_tokens: int = 200,
        gen_rounds: int = 3, memory: bool = True, warmup: int | None = None,
        threads: int | None = None) -> dict[str, Any]:
    """The whole benchmark; returns the JSON record (see format_table for the printed form).

    ``threads``: each contender's threads, PyTorch's ``torch.set_num_threads`` and groundup's
    ``cpu_threads(threads)`` (default: PyTorch 2, groundup the usable cores); 1 races one core against one.
    """
    import torch

    import groundup
    from groundup.parallel import blas_threads, cpu_threads, num_threads

    torch_threads = TORCH_THREADS if threads is None else threads
    # NOTE: the CPU other processes used is read around the whole context, whose exit stops (and
    # reaps) groundup's worker processes, so that their time counts as the bench's own.
    cpu_before, wall_before = bench_machine.cpu_seconds(), time.perf_counter()
    with cpu_threads(threads):               # the scoped CPU setup that `groundup train` runs under
        record = _run(preset, iters, batch_size, gen_tokens, gen_rounds, memory, warmup, torch, groundup,
                      blas_threads, num_threads, torch_threads)
    record["machine"]["other_cores"] = bench_machine.other_cores(cpu_before, bench_machine.cpu_seconds(),
                                                                 time.perf_counter() - wall_before)
    return record


def _run(preset: str, iters: int | None, batch_size: int | None, gen_tokens: int, gen_rounds: int, memory: bool,
         warmup: int | None, torch: Any, groundup: Any, blas_threads: Any, num_threads: Any,
         torch_threads: int) -> dict[str, Any]:

    iters = iters if iters is not None else DEFAULT_ITERS[preset]
    warmup = warmup if warmup is not None else DEFAULT_WARMUP[preset]
    cfg = _config(preset)
    record: dict[str, Any] = {
        "benchmark": "gpt", "preset": preset, "config": cfg.to_dict(),
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "python": platform.python_version(), "numpy": np.__version__, "torch": torch.__version__,
                    "groundup": groundup.__version__, "torch_threads": torch_threads, "groundup_threads": num_threads(),
                    "load_avg_1m_at_start": os.getloadavg()[0], **bench_machine.blas_facts(torch)},
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }
    with blas_threads():                     # BLAS with its own threads (the GPT path limits it to one)
        record["matmul_peak_gflops"] = matmul_peak_gflops()
    record["train"] = bench_training(preset, iters, batch_size, warmup, torch_threads=torch_threads)
    record["train"]["groundup"]["fraction_of_matmul_peak"] = (record["train"]["groundup"]["gflops"]
                                                              / record["matmul_peak_gflops"])
    record["train"]["torch"]["fraction_of_matmul_peak"] = (record["train"]["torch"]["gflops"]
                                                           / record["matmul_peak_gflops"])
    record["generate"] = bench_generation(preset, gen_tokens, gen_rounds, torch_threads)
    if memory:
        record["memory"] = {w: memory_probe(w, preset, batch_size) for w in ("groundup", "torch")}
    record["machine"]["load_avg_1m_at_end"] = os.getloadavg()[0]
    return record


def load_warning(record: dict[str, Any]) -> str | None:
    """A loud line when the machine was busy: other processes took cores, so the ratios mean little.
    Judged by the cores other processes used while the bench ran where that is known (Linux), else by
    the load average."""
    m = record["machine"]
    others = m.get("other_cores")
    if others is not None:
        if others > bench_machine.OTHERS_LIMIT:
            return (f"WARNING: other processes kept {others:.2f} of {m['cores']} cores busy while the bench ran, "
                    f"so the ratios below are unreliable (measure on a quiet machine)")
        return None
    load = max(m["load_avg_1m_at_start"], m.get("load_avg_1m_at_end", 0.0))
    busy = load - 1.0                                   # this benchmark itself keeps about one core's worth busy
    if busy > 0.5 * (m["cores"] or 1):
        return (f"WARNING: load average {load:.1f} on {m['cores']} cores: other processes were running, so the "
                f"ratios below are unreliable (measure on a quiet machine, load < 1)")
    return None


def _others_text(machine: dict[str, Any]) -> str:
    others = machine.get("other_cores")
    return "" if others is None else f"; other processes used {others:.2f} of {machine['cores']} cores meanwhile"


def format_table(record: dict[str, Any]) -> str:
    """The record as a short plain-text report."""
    tr, gen = record["train"], record["generate"]
    mem = record.get("memory", {})
    c = record["config"]
    lines = [f"GPT {record['preset']}: {c['n_layer']} layers, {c['n_head']} heads, {c['n_embd']} dims, context "
             f"{c['block_size']}, vocab {c['vocab_size']}; batch {tr['batch_size']}; {tr['iters']} timed "
             f"steps each (turns of {TURN}, the first untimed) after {tr['warmup']} warm-up; torch threads "
             f"{record['machine'].get('torch_threads', TORCH_THREADS)}, groundup threads "
             f"{record['machine']['groundup_threads']}; load avg {record['machine']['load_avg_1m_at_start']:.2f}"
             + _others_text(record["machine"]),
             load_warning(record) or "",
             f"NumPy's BLAS: {record['machine'].get('numpy_blas', 'unknown')}; PyTorch's CPU capability: "
             f"{record['machine'].get('torch_cpu_capability', '?')}; PyTorch's optimizer: "
             f"{record['machine'].get('torch_optimizer', '?')}",
             bench_machine.blas_warning(record["machine"]) or "",
             f"{'training':<14}{'ms/step median [min-max]':>26}{'tokens/s':>11}{'GFLOP/s':>9}"
             f"{'peak RSS MB (+over import)':>28}   fwd / bwd / opt ms"]
    rows = (("groundup", "groundup"), ("readable", "readable"), ("torch", "PyTorch SDPA"),
            ("torch_explicit", "PyTorch expl."))
    for name, label in (r for r in rows if r[0] in tr):
        s = tr[name]
        rss, delta = mem.get(name, {}).get("peak_rss_mb"), mem.get(name, {}).get("delta_rss_mb")
        sec = s["sections_median_ms"]
        lines.append(f"{label:<14}{s['median_ms']:>8.1f} [{s['min_ms']:.1f}-{s['max_ms']:.1f}]".ljust(40)
                     + f"{s['tokens_per_s']:>11,.0f}{s['gflops']:>9.1f}"
                     + (f"{f'{rss:.0f} (+{delta:.0f})':>28}" if rss is not None else f"{'-':>28}")
                     + f"   {sec['forward']:.1f} / {sec['backward']:.1f} / {sec['optimizer']:.1f}")
    if "readable" in tr:
        lines.append(f"readable GPT (engine ops + autograd) / PyTorch: {tr['ratio_readable_tokens_per_s']:.2f}")
    lines.append(f"groundup / PyTorch with explicit attention: {tr['ratio_vs_explicit_tokens_per_s']:.2f}")
    lines.append(f"ratio groundup/PyTorch (SDPA, its fastest CPU attention), training tokens/s: "
                 f"{tr['ratio_tokens_per_s']:.2f}; NumPy matmul peak "
                 f"{record['matmul_peak_gflops']:.0f} GFLOP/s (groundup at "
                 f"{100 * tr['groundup']['fraction_of_matmul_peak']:.0f}%, PyTorch at "
                 f"{100 * tr['torch']['fraction_of_matmul_peak']:.0f}%)")
    lines += ["", f"generation: {gen['new_tokens']} new tokens, batch 1, context {gen['context']}, "
                  f"median of {gen['rounds']} rounds"]
    for name, label in (("groundup_cache", "groundup, KV cache"), ("torch_cache", "PyTorch, KV cache"),
                        ("groundup_no_cache", "groundup, no cache"), ("torch_no_cache", "PyTorch, no cache")):
        lines.append(f"  {label:<22}{gen[name]['tokens_per_s']:>10,.0f} tokens/s")
    lines.append(f"ratio groundup/PyTorch, generation: KV cache {gen['ratio_cache']:.2f}, "
                 f"no cache {gen['ratio_no_cache']:.2f}; tokens agree {gen['tokens_agree_groundup_torch']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="baby", choices=("baby", "small"))
    parser.add_argument("--iters", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--json", default=None)
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--memory-probe", choices=("groundup", "torch"), default=None, help=argparse.SUPPRESS)
    parser.add_argument("--probe-steps", type=int, default=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_probe:
        _probe_main(args.memory_probe, args.preset, args.batch_size, args.probe_steps)
        return 0
    record = run(args.preset, args.iters, args.batch_size, memory=not args.no_memory)
    print(format_table(record))
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
