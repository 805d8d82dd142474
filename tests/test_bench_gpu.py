"""benchmarks/bench_gpu.py off the GPU: its table from a record, and a clear refusal without CUDA.

The bench itself runs on a GPU (``benchmarks/run_on_gpu.sh``); its figures are in BENCHMARKS.md."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

import groundup as gu

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_gpu.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_gpu", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_gpu"] = module
    spec.loader.exec_module(module)
    return module


def test_the_table_shows_each_contender_against_torch(bench):
    record = {"preset": "small", "batch_size": 64, "block_size": 256, "iters": 20,
              "first_loss": {"groundup": 4.2664, "torch": 4.2664}, "torch_peak_mb": 3363.4, "cupy_pool_mb": 6342.8,
              "contenders": {
                  "groundup": {"median_ms": 69.9, "min_ms": 68.5, "max_ms": 72.2, "tokens_per_s": 234391.0,
                               "ratio_vs_torch": 0.5157, "sections_median_ms": {"forward": 34.1, "backward": 30.9}},
                  "torch": {"median_ms": 36.05, "min_ms": 35.8, "max_ms": 36.6, "tokens_per_s": 454498.0,
                            "ratio_vs_torch": 1.0, "sections_median_ms": {"forward": 13.4, "backward": 23.8}}}}
    table = bench.format_table(record)
    lines = table.splitlines()
    assert lines[0] == "GPT small: batch 64 x 256 tokens, 20 timed steps each"
    assert lines[2].split() == ["groundup", "69.90", "68.50", "72.20", "234391", "0.52x"]
    assert lines[3].split() == ["torch", "36.05", "35.80", "36.60", "454498", "1.00x"]
    assert "groundup forward 34.10, backward 30.90" in table
    assert "torch 3363 MiB allocated, CuPy pool 6343 MiB held" in table


def test_without_cuda_it_says_what_it_needs(bench, capsys):
    if gu.cuda_is_available():
        pytest.skip("a GPU is present: the bench runs instead of refusing")
    assert bench.main(["--preset", "baby"]) == 2
    assert "needs CuPy and a visible CUDA GPU" in capsys.readouterr().err
