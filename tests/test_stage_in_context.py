"""The ``in-context`` roadmap stage: a tiny run writes its files and makes every claim, a broken
measurement shows up in its claim, and the stage's measurements (induction and previous-token
scores, per-position loss, the steepest drop, the data) on hand-made inputs with known answers."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from groundup.roadmap import get_stage, run_stage
from groundup.roadmap.stages import in_context as stage

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CLAIMS = {"in-context.later_tokens", "in-context.induction_heads", "in-context.one_layer", "in-context.phase_change"}


@pytest.mark.slow
def test_tiny_run_writes_files_and_a_broken_score_fails(tmp_path, monkeypatch):
    monkeypatch.setattr(stage, "induction_scores", lambda maps, starts: np.ones(maps.shape[0:1] + maps.shape[2:3]))
    record = run_stage(get_stage("in-context"), tmp_path, tiny=True)
    assert record["status"] == "smoke", record.get("traceback", record.get("error"))
    out = tmp_path / "in-context"
    metrics = json.loads((out / "metrics.json").read_text())
    found = {c["name"]: c for c in metrics["claims"]}
    assert set(found) == CLAIMS
    one_layer = found["in-context.one_layer"]
    assert not one_layer["passed"] and one_layer["values"]["1-layer best induction score"] == 1.0
    assert found["in-context.induction_heads"]["values"]["best induction score, layer 1"] == 1.0
    report = (out / "report.html").read_text()
    assert len(metrics["plots"]) == 3
    for plot in metrics["plots"]:
        assert (out / plot["file"]).read_bytes()[:8] == PNG_MAGIC
        assert f'src="{plot["file"]}"' in report
    per_position = metrics["metrics"]["2_layer"]["per_position_loss"]
    assert len(per_position) == 16 and all(math.isfinite(v) for v in per_position)
    from groundup.roadmap.provenance import unmeasured_numbers

    assert unmeasured_numbers(metrics) == []           # every number in the prose was measured in this run
    assert "in our quick runs" not in report and "seed 1:" not in report


def test_the_data_repeats_one_segment_of_the_first_half_in_the_second():
    tokens, starts = stage.repeated_segment_sequences(200, 65, 50, np.random.default_rng(0), 24, 32)
    assert tokens.shape == (200, 65) and tokens.dtype == np.int64 and 0 <= tokens.min() and tokens.max() < 50
    for row, (first, second, length) in zip(tokens, starts):
        assert 24 <= length <= 32 and first + length <= 32 <= second and second + length <= 65
        np.testing.assert_array_equal(row[second:second + length], row[first:first + length])
    assert len(set(starts[:, 1] - starts[:, 0])) > 10                  # the distance back varies
    with pytest.raises(ValueError, match="max_repeat"):
        stage.repeated_segment_sequences(2, 16, 10, np.random.default_rng(0), 4, 9)


def test_induction_sources_point_after_the_previous_occurrence():
    starts = np.array([[1, 5, 3], [0, 4, 4]])                          # (first, second, length)
    sources = stage.induction_sources(starts, 8)
    np.testing.assert_array_equal(sources, [[-1, -1, -1, -1, -1, 2, 3, -1],   # t=5 holds x[1]; copy x[2]
                                            [-1, -1, -1, -1, 1, 2, 3, -1]])
    tokens = np.array([[9, 1, 2, 3, 8, 1, 2, 3, 7]])                   # (1, T + 1): the real thing
    src = stage.induction_sources(np.array([[1, 5, 3]]), 8)[0]
    for t in np.nonzero(src >= 0)[0]:
        assert tokens[0, t] == tokens[0, src[t] - 1] and tokens[0, t + 1] == tokens[0, src[t]]
    np.testing.assert_array_equal(stage.previous_token_sources(2, 4), [[-1, 0, 1, 2]] * 2)


def test_scores_on_hand_made_attention_maps():
    T = 4
    previous = np.eye(T, k=-1)
    previous[0, 0] = 1                                                  # row 0 can only look at itself
    uniform = np.tril(np.ones((T, T))) / np.arange(1, T + 1)[:, None]
    maps = np.stack([previous, uniform])[None, None]                    # (L=1, B=1, H=2, T, T)
    scores = stage.mean_attention_on(maps, stage.previous_token_sources(1, T))
    np.testing.assert_allclose(scores, [[1.0, (1 / 2 + 1 / 3 + 1 / 4) / 3]])
    with pytest.raises(ValueError, match="no position"):
        stage.mean_attention_on(maps, np.full((1, T), -1))

    starts = np.array([[0, 3, 3]])                                      # x0 x1 x2 x0 x1 x2 (T = 5)
    sources = stage.induction_sources(starts, 5)                        # t=3 -> 1, t=4 -> 2
    perfect = np.zeros((5, 5))
    perfect[np.arange(5), np.maximum(sources[0], 0)] = 1.0
    half = np.tril(np.ones((5, 5))) / np.arange(1, 6)[:, None]
    maps = np.stack([np.stack([half, half]), np.stack([half, perfect])])[:, None]   # (L=2, B=1, H=2, T, T)
    np.testing.assert_allclose(stage.induction_scores(maps, starts), [[(1 / 4 + 1 / 5) / 2] * 2,
                                                                      [(1 / 4 + 1 / 5) / 2, 1.0]])


def test_best_fixed_offset_score():
    same = np.array([[0, 10, 4], [2, 12, 4]])                           # the same distance back: 10
    assert stage.best_fixed_offset_score(same, 20) == 1.0
    different = np.array([[0, 10, 3], [0, 12, 3]])                      # distances 10 and 12, two targets each
    assert stage.best_fixed_offset_score(different, 20) == 0.5


def test_per_position_loss():
    V = 5
    logits = np.zeros((3, 4, V))
    targets = np.random.default_rng(0).integers(0, V, (3, 4))
    np.testing.assert_allclose(stage.per_position_loss(logits, targets), math.log(V))
    logits[:, 1, :] = 0.0
    np.put_along_axis(logits[:, 1], targets[:, 1:2], math.log(4 * (V - 1)), axis=1)   # p(target) = 4 / 5 exactly
    logits[0, 2, targets[0, 2]] = 1000.0                                # sure and right: 0 (stable in float64)
    losses = stage.per_position_loss(logits, targets)
    np.testing.assert_allclose(losses[1], -math.log(0.8))
    np.testing.assert_allclose(losses[2], 2 / 3 * math.log(V), rtol=1e-12)


def test_steepest_drop():
    steps, values = [0, 10, 20, 30, 40, 50], [4.0, 3.9, 3.8, 1.3, 1.0, 0.9]
    result = stage.steepest_drop(steps, values, window=10)
    assert result["drop"] == pytest.approx(2.5) and (result["start"], result["end"]) == (20, 30)
    assert result["total"] == pytest.approx(3.1) and result["share"] == pytest.approx(2.5 / 3.1)
    wide = stage.steepest_drop(steps, values, window=20)
    assert wide["drop"] == pytest.approx(2.8) and (wide["start"], wide["end"]) == (20, 40)
    flat = stage.steepest_drop([0, 1], [2.0, 2.0], window=1)
    assert flat["share"] == 0.0
