"""Micro-benchmark of groundup's ops against PyTorch on the CPU.

Two tables:
  * overhead: forward + backward of one op on tiny (4, 4) tensors, where the time is all Python
    and graph bookkeeping, in microseconds per call;
  * throughput: the fused ops (softmax, cross_entropy, layer_norm, gelu, linear, sdpa, conv2d)
    on realistic shapes (12 heads x 64 tokens = 768 rows of 128 features...), forward alone and
    forward + backward, in milliseconds per call.

Each measurement warms up first, then runs alternating rounds (ours, torch, torch, ours, ...) so
that drift in machine load hits both sides alike, and reports the median round. torch and NumPy's
BLAS both run with 2 threads (``BENCH_THREADS`` changes it). Ratio = groundup time / torch time
(lower is better; 1.0 = parity).

    python benchmarks/bench_ops.py [--rounds 7] [--json results.json] [--quick]
    BENCH_THREADS=1 python benchmarks/bench_ops.py      # both sides single-threaded
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# torch.set_num_threads(THREADS) and the same for NumPy's BLAS, so that both sides get the same cores.
# BENCH_THREADS=1 avoids thread hand-offs, which dominate small ops when the machine is oversubscribed.
THREADS = int(os.environ.get("BENCH_THREADS", "2"))
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, str(THREADS))  # read when NumPy loads its BLAS: set before the import

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import groundup as gu  # noqa: E402
import groundup.functional as F  # noqa: E402

try:
    import torch
    import torch.nn.functional as TF
except ImportError:  # pragma: no cover - the benchmark compares against torch
    sys.exit("bench_ops.py needs PyTorch (pip install torch) as the reference")


@dataclass
class Row:
    table: str
    name: str
    shape: str
    mode: str          # "fwd" or "fwd+bwd"
    ours: float        # seconds per call (median round)
    torch: float
    unit: str          # how the table prints the times: "us" or "ms"

    @property
    def ratio(self) -> float:
        return self.ours / self.torch


def _per_call(fn: Callable[[], Any], number: int) -> float:
    start = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - start) / number


def compare(ours: Callable[[], Any], theirs: Callable[[], Any], rounds: int, min_time: float) -> tuple[float, float]:
    """Median seconds per call of each, over alternating rounds after a warm-up."""
    for fn in (ours, theirs):  # warm-up: caches, allocator, lazy imports
        for _ in range(3):
            fn()
    single = max(_per_call(ours, 3), _per_call(theirs, 3), 1e-7)
    number = max(1, int(min_time / single))
    ours_times, their_times = [], []
    for r in range(rounds):
        pair = [(ours, ours_times), (theirs, their_times)]
        for fn, times in pair if r % 2 == 0 else pair[::-1]:
            times.append(_per_call(fn, number))
    return statistics.median(ours_times), statistics.median(their_times)


def _inputs(shapes: list[tuple[int, ...]], grad: bool, seed: int = 0) -> tuple[list[gu.Tensor], list[Any]]:
    rng = np.random.default_rng(seed)
    arrays = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    ours = [gu.tensor(a, requires_grad=grad) for a in arrays]
    theirs = [torch.tensor(a, requires_grad=grad) for a in arrays]
    return ours, theirs


def _step(fn: Callable[..., Any], inputs: list[Any], backward: bool, gradient: Any = None) -> Callable[[], None]:
    """One call of ``fn`` on ``inputs``; with ``backward``, then backward with a fixed gradient."""
    if not backward:
        def forward() -> None:
            fn(*inputs)
        return forward

    def forward_backward() -> None:
        for t in inputs:
            t.grad = None
        out = fn(*inputs)
        out.backward(gradient if out.ndim else None)
    return forward_backward


def overhead_rows(rounds: int, min_time: float) -> list[Row]:
    cases = {
        "add": lambda x, y: x + y,
        "mul": lambda x, y: x * y,
        "matmul": lambda x, y: x @ y,
        "tanh": lambda x, y: x.tanh(),
        "sum": lambda x, y: x.sum(),
        "chain(x*y+x).relu().sum()": lambda x, y: (x * y + x).relu().sum(),
    }
    rows = []
    for name, fn in cases.items():
        ours, theirs = _inputs([(4, 4), (4, 4)], grad=True)
        for mode, backward in (("fwd", False), ("fwd+bwd", True)):
            g_ours = gu.ones(fn(*ours).shape)
            g_theirs = torch.ones(tuple(fn(*theirs).shape))
            t_ours, t_theirs = compare(_step(fn, ours, backward, g_ours), _step(fn, theirs, backward, g_theirs),
                                       rounds, min_time)
            rows.append(Row("overhead", name, "(4, 4)", mode, t_ours, t_theirs, "us"))
    return rows


def throughput_rows(rounds: int, min_time: float) -> list[Row]:
    n, c, vocab = 12 * 64, 128, 512
    target = np.random.default_rng(1).integers(0, vocab, n)
    t_ours, t_theirs = gu.tensor(target), torch.tensor(target)
    cases: list[tuple[str, list[tuple[int, ...]], Callable[..., Any], Callable[..., Any]]] = [
        ("softmax", [(n, c)], lambda x: F.softmax(x, -1), lambda x: TF.softmax(x, -1)),
        ("log_softmax", [(n, vocab)], lambda x: F.log_softmax(x, -1), lambda x: TF.log_softmax(x, -1)),
        ("cross_entropy", [(n, vocab)], lambda x: F.cross_entropy(x, t_ours), lambda x: TF.cross_entropy(x, t_theirs)),
        ("layer_norm", [(n, c), (c,), (c,)], lambda x, w, b: F.layer_norm(x, (c,), w, b),
         lambda x, w, b: TF.layer_norm(x, (c,), w, b)),
        ("gelu(tanh)", [(n, 4 * c)], lambda x: F.gelu(x, approximate="tanh"),
         lambda x: TF.gelu(x, approximate="tanh")),
        ("gelu(erf)", [(n, 4 * c)], lambda x: F.gelu(x), lambda x: TF.gelu(x)),
        ("linear", [(n, c), (4 * c, c), (4 * c,)], lambda x, w, b: F.linear(x, w, b),
         lambda x, w, b: TF.linear(x, w, b)),
        ("sdpa(causal)", [(4, 12, 64, 32)] * 3,
         lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
         lambda q, k, v: TF.scaled_dot_product_attention(q, k, v, is_causal=True)),
        ("conv2d(3x3,pad1)", [(8, 16, 32, 32), (32, 16, 3, 3), (32,)],
         lambda x, w, b: F.conv2d(x, w, b, padding=1), lambda x, w, b: TF.conv2d(x, w, b, padding=1)),
        ("max_pool2d(2)", [(8, 32, 32, 32)], lambda x: F.max_pool2d(x, 2), lambda x: TF.max_pool2d(x, 2)),
    ]
    rows = []
    for name, shapes, ours_fn, their_fn in cases:
        ours, theirs = _inputs(shapes, grad=True)
        out_shape = ours_fn(*ours).shape
        grad = np.random.default_rng(2).standard_normal(out_shape).astype(np.float32)
        shape = " ".join(str(s) for s in shapes[:1])
        for mode, backward in (("fwd", False), ("fwd+bwd", True)):
            if not backward:
                with gu.no_grad(), torch.no_grad():
                    t_o, t_t = compare(_step(ours_fn, ours, False), _step(their_fn, theirs, False), rounds, min_time)
            else:
                t_o, t_t = compare(_step(ours_fn, ours, True, gu.tensor(grad)),
                                   _step(their_fn, theirs, True, torch.tensor(grad)), rounds, min_time)
            rows.append(Row("throughput", name, shape, mode, t_o, t_t, "ms"))
    return rows


def print_table(rows: list[Row], title: str) -> None:
    scale = {"us": 1e6, "ms": 1e3}
    header = ["op", "shape", "mode", "groundup", "torch", "ratio"]
    lines = [[r.name, r.shape, r.mode, f"{r.ours * scale[r.unit]:.1f} {r.unit}",
              f"{r.torch * scale[r.unit]:.1f} {r.unit}", f"{r.ratio:.2f}x"] for r in rows]
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
        print(f"\n{title}")
        print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
        print("  ".join("-" * w for w in widths))
        for line in lines:
            print("  ".join(cell.rjust(w) if i >= 3 else cell.ljust(w) for i, (cell, w) in
                            enumerate(zip(line, widths))))
        return
    table = Table(title=title)
    for i, h in enumerate(header):
        table.add_column(h, justify="right" if i >= 3 else "left")
    for line in lines:
        table.add_row(*line)
    Console(width=120).print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7, help="alternating timed rounds per measurement")
    parser.add_argument("--min-time", type=float, default=0.05, help="seconds per round (sets the loop count)")
    parser.add_argument("--quick", action="store_true", help="3 rounds of 20 ms: a smoke run")
    parser.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    rounds, min_time = (3, 0.02) if args.quick else (args.rounds, args.min_time)
    torch.set_num_threads(THREADS)
    gu.manual_seed(0)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"numpy {np.__version__}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"{os.cpu_count()} CPUs, load average {load:.1f} (timings are noisy when it exceeds the CPU count)")
    overhead = overhead_rows(rounds, min_time)
    print_table(overhead, "Per-op overhead on (4, 4) float32 tensors (median per call)")
    throughput = throughput_rows(rounds, min_time)
    print_table(throughput, "Fused ops on realistic shapes, float32 (median per call)")
    if args.json:
        meta = {"numpy": np.__version__, "torch": torch.__version__, "python": platform.python_version(),
                "machine": platform.machine(), "torch_threads": torch.get_num_threads(), "rounds": rounds,
                "cpus": os.cpu_count(), "load_average": load}
        payload = {"meta": meta, "rows": [asdict(r) | {"ratio": r.ratio} for r in overhead + throughput]}
        args.json.write_text(json.dumps(payload, indent=2))
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
