"""benchmarks/bench_families.py: every family's PyTorch twin computes groundup's loss from the copied
weights (so the bench races the same maths), one update keeps them equal, the timing and the table,
the load warning, and ``groundup bench FAMILY`` on the command line."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from groundup import cli

pytestmark = pytest.mark.torch
BENCH_DIR = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    pytest.importorskip("torch")
    if str(BENCH_DIR) not in sys.path:
        sys.path.insert(0, str(BENCH_DIR))
    spec = importlib.util.spec_from_file_location("bench_families", BENCH_DIR / "bench_families.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_families"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("family", ["mlp", "cnn", "rnn", "gru", "lstm", "seq2seq", "transformer", "bert"])
def test_twin_has_groundups_loss_before_and_after_a_step(bench, family):
    import torch

    torch.set_num_threads(1)
    contest = bench.BUILDERS[family](2)
    first, second = contest.batches
    before = {name: loss(first) for name, loss in contest.losses.items()}
    np.testing.assert_allclose(before["groundup"], before["torch"], rtol=2e-5)
    for step in contest.steps.values():
        step(first)
    after = {name: loss(second) for name, loss in contest.losses.items()}
    np.testing.assert_allclose(after["groundup"], after["torch"], rtol=2e-4)   # one Adam update apart: float32
    assert contest.units(first) > 0 and set(contest.steps) == {"groundup", "torch"}


def test_pytorch_contenders_update_with_the_fused_optimizers(bench, monkeypatch):
    """PyTorch at its best: its fused Adam / AdamW (2.3-4.6x its default loop on the CPU), in both benches."""
    import bench_gpt
    import bench_machine
    import torch

    built = []
    real = bench_machine.torch_optimizer
    monkeypatch.setattr(bench_machine, "torch_optimizer", lambda *a, **k: built.append(real(*a, **k)) or built[-1])
    bench.BUILDERS["mlp"](1)                                          # Adam
    bench.BUILDERS["lstm"](1)                                         # AdamW
    bench_gpt.build("baby", 2, which=("torch",), torch_threads=1)     # AdamW, two groups
    assert [type(o) for o in built] == [torch.optim.Adam, torch.optim.AdamW, torch.optim.AdamW]
    assert all(o.defaults["fused"] is True for o in built)


def test_time_contest_and_table(bench):
    contest = bench.BUILDERS["mlp"](3)
    result = bench.time_contest(contest, iters=2, warmup=1)
    assert result["groundup"]["median_ms"] > 0 and result["torch"]["samples_per_s"] > 0
    assert abs(result["ratio"] - result["torch"]["median_ms"] / result["groundup"]["median_ms"]) < 1e-9
    result.update(unit="samples", load_avg_1m=[0.2, 0.3], ratio_reliable=True)
    record = {"date": "now", "families": {"mlp": result},
              "machine": {"torch": "2", "torch_threads": 2, "cores": 2, "load_avg_1m_at_start": 0.2,
                          "load_avg_1m_at_end": 0.3}}
    table = bench.format_table(record)
    assert "WARNING" not in table and f"{result['ratio']:.2f}" in table
    assert "- where the family has no such contender (mlp, cnn, gpt)" in table   # the mlp row's "-" explained
    record["machine"]["load_avg_1m_at_end"] = 6.0
    assert "WARNING: load average 6.0" in bench.format_table(record)


def test_load_warning_threshold(bench):
    assert bench.load_warning(1.5, 2) is None
    assert bench.load_warning(2.5, 2) is not None and "unreliable" in bench.load_warning(2.5, 2)


def test_cli_bench_family_writes_a_ratio(tmp_path, capsys):
    pytest.importorskip("torch")
    path = tmp_path / "b.json"
    assert cli.main(["bench", "mlp", "--iters", "1", "--warmup", "0", "--no-memory", "--json", str(path)]) == 0
    record = json.loads(path.read_text())
    assert record["families"]["mlp"]["ratio"] > 0
    assert "mlp" in capsys.readouterr().out


def test_cli_bench_threads_puts_both_contenders_on_n_threads(tmp_path, capsys):
    """--threads 1: PyTorch at one intra-op thread and groundup's cpu_threads(1), read back from the run
    (and no data-parallel contender: there is no worker process)."""
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    path = tmp_path / "b.json"
    try:
        assert cli.main(["bench", "rnn", "--threads", "1", "--iters", "1", "--warmup", "0", "--no-memory",
                         "--json", str(path)]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    record = json.loads(path.read_text())
    machine, row = record["machine"], record["families"]["rnn"]
    assert (machine["torch_threads"], machine["groundup_threads"]) == (1, 1)
    assert row["ratio"] > 0 and "ratio_dp" not in row             # one thread: no worker process to split over
    assert "torch threads 1, groundup threads 1" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["bench", "mlp", "--threads", "0"])
    assert exit_info.value.code == 2 and "--threads: 0 is out of range" in capsys.readouterr().err


def test_cli_bench_family_refuses_batch_size(capsys):
    assert cli.main(["bench", "gru", "--batch-size", "4"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("groundup: error: --batch-size") and len(err.strip().splitlines()) == 1


def test_a_failing_family_is_reported_and_the_others_still_run(bench, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no such kernel")

    monkeypatch.setitem(bench.BUILDERS, "cnn", broken)
    record = bench.run(["cnn", "mlp"], iters=1, warmup=0, memory=False, progress=False)
    assert record["families"]["cnn"] == {"error": "RuntimeError: no such kernel"}
    assert record["families"]["mlp"]["ratio"] > 0
    assert "cnn         failed: RuntimeError: no such kernel" in bench.format_table(record)


def test_repeated_runs_report_the_median_run_and_every_ratio(bench, monkeypatch):
    ratios = iter([1.5, 0.5, 1.0])

    def fake_run(families, iters=None, warmup=None, memory=True, progress=True, torch_threads=2, groundup_threads=None):
        ratio = next(ratios)
        row = {"ratio": ratio, "unit": "samples", "load_avg_1m": [0.1, ratio], "ratio_reliable": True,
               "groundup": {"median_ms": 1.0 / ratio, "min_ms": 1.0, "max_ms": 2.0, "samples_per_s": ratio},
               "torch": {"median_ms": 1.0, "min_ms": 1.0, "max_ms": 1.0, "samples_per_s": 1.0}}
        if memory:
            row["memory"] = {"groundup": {"peak_rss_mb": 10.0}, "torch": {"peak_rss_mb": 20.0}}
        return {"date": "now", "families": {"mlp": row},
                "machine": {"torch": "2", "torch_threads": 2, "cores": 2, "load_avg_1m_at_start": 0.1,
                            "load_avg_1m_at_end": ratio}}

    monkeypatch.setattr(bench, "run", fake_run)
    record = bench.run_repeated(["mlp"], 3)
    row = record["families"]["mlp"]
    assert row["ratio"] == 1.0 and row["ratio_runs"] == [1.5, 0.5, 1.0]
    assert row["memory"]["groundup"]["peak_rss_mb"] == 10.0          # the probes of the first run
    assert row["load_avg_1m"] == [0.1, 1.5] and record["runs"] == 3
    table = bench.format_table(record)
    assert "median of 3 runs" in table and "mlp 1.50 / 0.50 / 1.00" in table
    with pytest.raises(ValueError, match="runs must be >= 1"):
        bench.run_repeated(["mlp"], 0)


def test_cli_bench_gpt_refuses_runs(capsys):
    assert cli.main(["bench", "gpt", "--runs", "3"]) == 2
    assert capsys.readouterr().err.startswith("groundup: error: --runs applies")


@pytest.mark.parametrize("family", ["lstm", "seq2seq", "transformer"])
def test_split_contender_trains_like_groundup(bench, family):
    from groundup.parallel import cpu_threads, worker_processes

    with cpu_threads(2):
        assert worker_processes()
        contest = bench.BUILDERS[family](2, ("groundup", "groundup_dp"))
        first, second = contest.batches
        before = {name: loss(first) for name, loss in contest.losses.items()}
        assert before["groundup"] == before["groundup_dp"]                  # same weights (a copy)
        for step in contest.steps.values():
            step(first)
        after = {name: loss(second) for name, loss in contest.losses.items()}
    np.testing.assert_allclose(after["groundup_dp"], after["groundup"], rtol=1e-4)   # one step apart: float32
    assert after["groundup"] != before["groundup"]


def test_other_processes_are_measured_apart_from_the_bench(bench):
    assert bench.other_cores((100.0, 10.0), (102.0, 11.5), 1.0) == pytest.approx(0.5)   # 2 s busy, 1.5 s ours
    assert bench.other_cores((100.0, 10.0), (101.0, 11.5), 1.0) == 0.0                  # never negative
    assert bench.other_cores(None, (1.0, 1.0), 1.0) is None
    assert bench.load_warning(3.0, 2, others=0.1) is None                              # the load was the bench's own
    assert "0.60 of 2 cores" in bench.load_warning(0.5, 2, others=0.6)
    before = bench.cpu_seconds()
    if before is not None:                                                               # Linux
        sum(i * i for i in range(200_000))
        after = bench.cpu_seconds()
        assert after[0] >= before[0] and after[1] > before[1]


def test_blas_facts_and_the_pinned_kernel_warning(bench, tmp_path, monkeypatch):
    import bench_machine
    import torch

    facts = bench_machine.blas_facts(torch)
    assert facts["numpy_blas"] != "unknown" and facts["torch_cpu_capability"]
    assert facts["torch_optimizer"] == "Adam/AdamW(fused=True)"
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512bw\n\nprocessor\t: 1\nflags\t: fpu\n")
    assert bench_machine.cpu_flags(str(cpuinfo)) == {"fpu", "sse", "avx2", "avx512f", "avx512bw"}
    assert bench_machine.cpu_flags(str(tmp_path / "missing")) == set()
    pinned = {"cpu_avx512": True, "numpy_blas_arch": "Haswell", "openblas_coretype_env": "Haswell",
              "torch_cpu_capability": "AVX512"}
    warning = bench_machine.blas_warning(pinned)
    assert "OPENBLAS_CORETYPE=Haswell" in warning and "env -u OPENBLAS_CORETYPE" in warning
    assert "OpenBLAS chose" in bench_machine.blas_warning({**pinned, "openblas_coretype_env": None})
    assert bench_machine.blas_warning({**pinned, "numpy_blas_arch": "SkylakeX"}) is None
    assert bench_machine.blas_warning({**pinned, "cpu_avx512": False}) is None   # AVX2 is the CPU's best
    record = {"benchmark": "families", "date": "d", "families": {},
              "machine": {"torch": "2", "torch_threads": 2, "cores": 2, "load_avg_1m_at_start": 0.0, **pinned}}
    assert warning in bench.format_table(record)
    assert "PyTorch's optimizer: ?" in bench.format_table(record)
    fused = {**record, "machine": {**record["machine"], "torch_optimizer": bench_machine.optimizer_note()}}
    assert "PyTorch's optimizer: Adam/AdamW(fused=True)" in bench.format_table(fused)


def test_turns_start_after_a_pause_for_idle_threads(bench, monkeypatch):
    import bench_machine

    pauses = []
    monkeypatch.setattr(bench_machine.time, "sleep", pauses.append)
    contest = bench.Contest("toy", "toy", "samples", {}, [(np.zeros(1),)] * 8, lambda b: 1)
    contest.steps = {"groundup": lambda b: None, "torch": lambda b: None}
    bench.time_contest(contest, iters=6, warmup=1)                    # 2 turns of 3 timed steps each
    assert pauses == [bench_machine.IDLE_THREADS_S] * 4
    pauses.clear()
    bench.time_contest(contest, iters=3, warmup=0, settle_s=0.0)
    assert pauses == []
