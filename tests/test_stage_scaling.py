"""The ``scaling`` roadmap stage: a tiny run writes its files and makes every claim, a broken
measurement shows up in its claim, and the stage's helpers (exponent fit, graph depth, memory
peak) on inputs with known answers."""

from __future__ import annotations

import json

import numpy as np
import pytest

import groundup as gu
from groundup.roadmap import get_stage, run_stage
from groundup.roadmap.stages import scaling as stage

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CLAIMS = {"scaling.sequential_steps", "scaling.sequential_cost", "scaling.full_quadratic",
          "scaling.sliding_window_linear", "scaling.linear_linear", "scaling.memory_efficient_exact"}


@pytest.mark.slow
def test_tiny_run_writes_files_and_a_broken_memory_measurement_fails(tmp_path, monkeypatch):
    def constant_memory(fn):
        fn()
        return 1000                                                           # no growth with T at all

    monkeypatch.setattr(stage, "peak_memory", constant_memory)
    record = run_stage(get_stage("scaling"), tmp_path, tiny=True)
    assert record["status"] == "smoke", record.get("traceback", record.get("error"))
    out = tmp_path / "scaling"
    metrics = json.loads((out / "metrics.json").read_text())
    found = {c["name"]: c for c in metrics["claims"]}
    assert set(found) == CLAIMS
    full = found["scaling.full_quadratic"]
    assert not full["passed"] and full["values"]["memory exponent"] == pytest.approx(0.0, abs=1e-9)
    assert found["scaling.memory_efficient_exact"]["values"]["max abs difference from full"] <= 1e-4
    assert found["scaling.sequential_steps"]["passed"]                       # depth needs no timing: passes even tiny
    report = (out / "report.html").read_text()
    assert len(metrics["plots"]) == 3
    for plot in metrics["plots"]:
        assert (out / plot["file"]).read_bytes()[:8] == PNG_MAGIC
        assert f'src="{plot["file"]}"' in report
    att = metrics["metrics"]["attention"]
    assert att["lengths"] == [32, 64, 128] and all(len(v["time_s"]) == 3 for v in att["variants"].values())


@pytest.mark.parametrize("power", [0.0, 1.0, 2.0, 1.5])
def test_fit_exponent_recovers_known_powers(power):
    lengths = [256, 512, 1024, 2048]
    np.testing.assert_allclose(stage.fit_exponent(lengths, [3.0 * t**power for t in lengths]), power, atol=1e-9)
    noisy = [3.0 * t**power * f for t, f in zip(lengths, (1.05, 0.95, 1.04, 0.97))]
    assert abs(stage.fit_exponent(lengths, noisy) - power) < 0.05
    with pytest.raises(ValueError, match="two different lengths"):
        stage.fit_exponent([64, 64], [1.0, 2.0])


def test_graph_depth_counts_the_longest_chain():
    x = gu.randn(3, requires_grad=True)
    assert stage.graph_depth(x) == 0
    y = x
    for _ in range(5):
        y = y * 2.0                                                           # a chain of 5
    wide = x + x + x                                                          # depth 2 (two additions)
    assert stage.graph_depth(y) == 5 and stage.graph_depth(wide) == 2
    assert stage.graph_depth(y + wide) == 6                                   # the longer branch wins


def test_peak_memory_sees_numpy_allocations():
    small = stage.peak_memory(lambda: np.ones(1_000))
    big = stage.peak_memory(lambda: np.ones(1_000_000))
    assert big >= 8_000_000 > small
