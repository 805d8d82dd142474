"""Benchmark on a CUDA GPU: groundup's GPT on CuPy against PyTorch's on CUDA, side by side in one process.

    python benchmarks/bench_gpu.py --preset small --iters 20 --json gpu-small.json

The contenders start from the same weights and train on the same random batches, already on the
GPU: ``groundup`` is the fused twin (``FastGPT``, what ``groundup train --device cuda`` runs),
``readable`` the readable ``GPT`` through the autograd engine, ``torch`` a PyTorch GPT of the same
architecture with ``F.scaled_dot_product_attention`` and the fused AdamW (PyTorch's fastest eager
path; no ``torch.compile``), and ``torch_explicit`` the same with attention written out. A step is
forward, backward, gradient clipping at 1.0 and an AdamW update, in float32 on both sides (TF32 off
on both: neither CuPy nor PyTorch uses it for float32 matmuls by default). After warm-up the
contenders take turns of 3 steps, the first untimed; every timed step ends with a device
synchronize, so a step's time is the GPU's work plus the host's launch overhead. Then a few more
steps each with a synchronize after the forward, the backward and the update say where the time
goes. Peak memory:
PyTorch's ``max_memory_allocated`` and the bytes CuPy's memory pool holds after the run.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

PRESETS = {"baby": dict(batch_size=12, iters=30), "small": dict(batch_size=64, iters=20)}
TURN = 3
PROFILE_STEPS = 5
VOCAB = 65


def _marker(synchronize: Any, parts: dict[str, list[float]] | None) -> Any:
    """``mark(name)``: with ``parts``, wait for the GPU and record the time since the last mark."""
    last = [time.perf_counter()]

    def mark(name: str) -> None:
        if parts is not None:
            synchronize()
            now = time.perf_counter()
            parts.setdefault(name, []).append(now - last[0])
            last[0] = now

    return mark


def _timed_step(loss_of: Any, params: list, clip: Any, opt: Any, synchronize: Any, grad_clip: float) -> Any:
    """One contender's training step (either framework): forward, backward, clip, update, synchronize.

    ``step(x, y)`` returns (seconds, loss); ``step(x, y, parts)`` also waits for the GPU after each part
    and appends each part's time to ``parts``.
    """
    def step(x: Any, y: Any, parts: dict[str, list[float]] | None = None) -> tuple[float, Any]:
        mark = _marker(synchronize, parts)
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = loss_of(x, y)
        mark("forward")
        loss.backward()
        mark("backward")
        clip(params, grad_clip)
        opt.step()
        synchronize()
        mark("clip + AdamW")
        return time.perf_counter() - t0, loss

    return step


def build(preset: str, batch_size: int, names: tuple[str, ...]) -> dict[str, Any]:
    """Step functions of each contender on the GPU, from the same initial weights."""
    import cupy as cp
    import torch

    import groundup as gu
    from groundup.commands import TRAIN_PRESETS
    from groundup.interop.torch_gpt import TorchGPT
    from groundup.models.gpt import GPT, GPTConfig
    from groundup.models.gpt_fast import FastGPT
    from groundup.nn.utils import clip_grad_norm_

    tcfg = TRAIN_PRESETS[preset]
    cfg = GPTConfig.preset(preset, vocab_size=VOCAB, dropout=0.0)
    gu.manual_seed(0)
    base = FastGPT(cfg)
    state = {k: np.array(v) for k, v in base.state_dict().items()}
    steps: dict[str, Any] = {"cfg": cfg}

    def groundup_step(model: Any) -> Any:
        params = list(model.parameters())
        decay = [p for p in params if p.ndim >= 2]
        opt = gu.optim.AdamW([{"params": decay, "weight_decay": tcfg["weight_decay"]},
                              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}],
                             lr=tcfg["lr"], betas=tcfg["betas"])
        return _timed_step(model.loss, params, clip_grad_norm_, opt, cp.cuda.Device().synchronize, tcfg["grad_clip"])

    def torch_step(sdpa: bool) -> Any:
        ref = TorchGPT(cfg, sdpa=sdpa)
        ref.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
        ref = ref.cuda()
        decay = [p for p in ref.parameters() if p.ndim >= 2]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": tcfg["weight_decay"]},
                                 {"params": [p for p in ref.parameters() if p.ndim < 2], "weight_decay": 0.0}],
                                lr=tcfg["lr"], betas=tcfg["betas"], fused=True)
        return _timed_step(ref.loss, list(ref.parameters()), torch.nn.utils.clip_grad_norm_, opt,
                           torch.cuda.synchronize, tcfg["grad_clip"])

    if "groundup" in names:
        steps["groundup"] = groundup_step(base.to("cuda"))
    if "readable" in names:
        readable = GPT(cfg)
        readable.load_state_dict(state)
        steps["readable"] = groundup_step(readable.to("cuda"))
    if "torch" in names:
        steps["torch"] = torch_step(sdpa=True)
    if "torch_explicit" in names:
        steps["torch_explicit"] = torch_step(sdpa=False)
    return steps


def bench(preset: str, iters: int | None = None, batch_size: int | None = None, warmup: int = 3,
          names: tuple[str, ...] = ("groundup", "readable", "torch", "torch_explicit")) -> dict[str, Any]:
    import cupy as cp
    import torch

    from groundup.tensor import Tensor

    iters = iters or PRESETS[preset]["iters"]
    B = batch_size or PRESETS[preset]["batch_size"]
    built = build(preset, B, names)
    cfg = built["cfg"]
    T = cfg.block_size
    rng = np.random.default_rng(0)
    host = [(rng.integers(0, VOCAB, (B, T)), rng.integers(0, VOCAB, (B, T))) for _ in range(warmup + iters)]
    gu_batches = [tuple(Tensor(cp.asarray(a)) for a in pair) for pair in host]
    torch_batches = [tuple(torch.from_numpy(a).cuda() for a in pair) for pair in host]

    def batch(name: str, i: int) -> tuple[Any, Any]:
        return torch_batches[i] if name.startswith("torch") else gu_batches[i]

    first_loss = {}
    for name in names:                                  # the same weights give the same first loss
        _, loss = built[name](*batch(name, 0))
        first_loss[name] = float(loss.item())
    for i in range(1, warmup):
        for name in names:
            built[name](*batch(name, i))
    times: dict[str, list[float]] = {n: [] for n in names}
    done, turn = 0, 0
    while done < iters:
        take = min(TURN - 1, iters - done)
        for name in (names if turn % 2 == 0 else names[::-1]):
            built[name](*batch(name, warmup + done))    # settles: not timed
            for j in range(take):
                times[name].append(built[name](*batch(name, warmup + done + j))[0])
        done, turn = done + take, turn + 1
    sections: dict[str, dict[str, list[float]]] = {n: {} for n in names}
    for i in range(PROFILE_STEPS):              # then where a step's time goes: a synchronize after each part
        for name in names:
            built[name](*batch(name, warmup + i % iters), sections[name])
    result: dict[str, Any] = {"preset": preset, "batch_size": B, "block_size": T, "tokens_per_step": B * T,
                              "iters": iters, "first_loss": first_loss, "contenders": {}}
    for name in names:
        ms = np.asarray(times[name]) * 1e3
        result["contenders"][name] = {"median_ms": float(np.median(ms)), "min_ms": float(ms.min()),
                                      "max_ms": float(ms.max()),
                                      "tokens_per_s": B * T / (float(np.median(ms)) / 1e3),
                                      "sections_median_ms": {k: float(np.median(v) * 1e3)
                                                             for k, v in sections[name].items()}}
    if "torch" in names:
        best = result["contenders"]["torch"]["tokens_per_s"]
        for name in names:
            result["contenders"][name]["ratio_vs_torch"] = result["contenders"][name]["tokens_per_s"] / best
    result["torch_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    result["cupy_pool_mb"] = cp.get_default_memory_pool().total_bytes() / 2**20
    return result


def machine() -> dict[str, Any]:
    import cupy as cp
    import torch

    props = cp.cuda.runtime.getDeviceProperties(0)
    return {"gpu": props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"]),
            "cupy": cp.__version__, "torch": torch.__version__, "cuda_runtime": cp.cuda.runtime.runtimeGetVersion(),
            "numpy": np.__version__, "python": platform.python_version(),
            "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def format_table(result: dict[str, Any]) -> str:
    lines = [f"GPT {result['preset']}: batch {result['batch_size']} x {result['block_size']} tokens, "
             f"{result['iters']} timed steps each",
             f"{'contender':16s} {'median ms':>10s} {'min':>8s} {'max':>8s} {'tokens/s':>10s} {'vs torch':>9s}"]
    for name, c in result["contenders"].items():
        lines.append(f"{name:16s} {c['median_ms']:10.2f} {c['min_ms']:8.2f} {c['max_ms']:8.2f} "
                     f"{c['tokens_per_s']:10.0f} {c.get('ratio_vs_torch', float('nan')):8.2f}x")
    lines.append("sections (ms, a synchronize after each): " + "; ".join(
        f"{name} " + ", ".join(f"{k} {v:.2f}" for k, v in c["sections_median_ms"].items())
        for name, c in result["contenders"].items()))
    lines.append("first loss (same weights, same batch): "
                 + ", ".join(f"{k} {v:.6f}" for k, v in result["first_loss"].items()))
    lines.append(f"peak memory: torch {result['torch_peak_mb']:.0f} MiB allocated, CuPy pool "
                 f"{result['cupy_pool_mb']:.0f} MiB held")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=sorted(PRESETS), action="append", help="GPT preset(s); default both")
    p.add_argument("--iters", type=int, default=None, help="timed steps per contender")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--json", type=Path, default=None, help="write the record here")
    args = p.parse_args(argv)
    import groundup as gu

    if not gu.cuda_is_available():
        print("bench_gpu: needs CuPy and a visible CUDA GPU", file=sys.stderr)
        return 2
    record = {"machine": machine(), "runs": []}
    print(record["machine"])
    for preset in args.preset or ["baby", "small"]:
        result = bench(preset, args.iters, args.batch_size)
        record["runs"].append(result)
        print(format_table(result), flush=True)
    if args.json:
        args.json.write_text(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
