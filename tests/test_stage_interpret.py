"""The ``interpret`` roadmap stage: a tiny run writes its files and makes every claim with measured
prose; a broken measurement shows up in its claim; the stage's data (repeated segments, the
invented world) and its rank correlation on inputs with known answers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from groundup.roadmap import get_stage, run_stage
from groundup.roadmap.provenance import unmeasured_numbers
from groundup.roadmap.stages import interpret as stage

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CLAIMS = {"interpret.induction_ablation", "interpret.k_composition", "interpret.attention_not_effect",
          "interpret.logit_lens", "interpret.facts_recall", "interpret.dla_sums", "interpret.causal_tracing"}


@pytest.mark.slow
def test_tiny_run_writes_files_and_a_broken_lens_fails(tmp_path, monkeypatch):
    real = stage.lens_losses
    monkeypatch.setattr(stage, "lens_losses", lambda *a: real(*a)[::-1].copy())   # a lens read backwards
    record = run_stage(get_stage("interpret"), tmp_path, tiny=True)
    assert record["status"] == "smoke", record.get("traceback", record.get("error"))
    out = tmp_path / "interpret"
    metrics = json.loads((out / "metrics.json").read_text())
    found = {c["name"]: c for c in metrics["claims"]}
    assert set(found) == CLAIMS
    assert not found["interpret.logit_lens"]["passed"]                  # a loss that rises layer by layer fails
    assert found["interpret.dla_sums"]["passed"]                        # exact, whatever the training
    report = (out / "report.html").read_text()
    assert len(metrics["plots"]) == 5
    for plot in metrics["plots"]:
        assert (out / plot["file"]).read_bytes()[:8] == PNG_MAGIC
        assert f'src="{plot["file"]}"' in report
    assert unmeasured_numbers(metrics) == []                           # every number in the prose was measured


def test_repeated_segments_repeat_a_piece_of_the_first_half():
    tokens = stage.repeated_segments(100, 33, 20, np.random.default_rng(0))
    assert tokens.shape == (100, 33) and tokens.min() >= 0 and tokens.max() < 20
    found = 0
    for row in tokens:                                                  # a run of >= 12 equal tokens 16+ apart
        for shift in range(1, 33):
            same = row[shift:] == row[:-shift]
            runs = np.diff(np.flatnonzero(np.diff(np.r_[0, same.astype(int), 0])))[::2]
            if len(runs) and runs.max() >= 12:
                found += 1
                break
    assert found == 100


def test_the_invented_world():
    world = stage.fact_world(30, np.random.default_rng(0))
    assert world.prompts.shape == (120, 5) and world.answers.shape == (120,)
    words = [[world.vocab[i] for i in row] for row in world.prompts[:4]]
    assert [w[0] for w in words] == ["the"] * 4 and [w[4] for w in words] == ["is"] * 4
    assert {w[1] for w in words} == {"capital", "language", "river", "sport"} and len({w[3] for w in words}) == 1
    assert len({world.vocab[world.prompts[i, 3]] for i in range(0, 120, 4)}) == 30      # 30 distinct subjects
    for prompt, answer in zip(world.prompts, world.answers, strict=True):   # an answer belongs to its relation
        assert world.vocab[answer].startswith(world.vocab[prompt[1]][:3] + "-")


def test_spearman():
    a = np.array([0.1, 0.5, 0.2, 0.9])
    assert stage.spearman(a, a * 3 + 1) == pytest.approx(1.0)
    assert stage.spearman(a, -a) == pytest.approx(-1.0)
    assert stage.spearman(a, np.array([4.0, 1.0, 3.0, 2.0])) == pytest.approx(-0.8)
