"""The ``transformer`` roadmap stage: a tiny run writes its files and makes every claim, a broken
measurement makes its claim fail, and the stage's measurements against hand-made inputs and
independent computations (mask checks on a model without the causal mask, ablations redone by hand)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

import groundup as gu
from groundup.models.gpt import GPT, GPTConfig
from groundup.roadmap import get_stage, run_stage
from groundup.roadmap.stages import transformer as stage

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CLAIMS = {"transformer.scaling", "transformer.saturation", "transformer.gpt", "transformer.causal",
          "transformer.padding", "transformer.permutation", "transformer.heads", "transformer.feed_forward",
          "transformer.residual", "transformer.layer_norm", "transformer.encoder_decoder"}


def tiny_gpt(**overrides) -> GPT:
    gu.manual_seed(0)
    model = GPT(GPTConfig(**{**dict(vocab_size=11, block_size=12, n_layer=2, n_head=2, n_embd=16), **overrides}))
    model.eval()
    return model


@pytest.mark.slow
def test_tiny_run_writes_files_and_a_leaky_mask_fails(tmp_path, monkeypatch):
    real = stage.mask_checks

    def leaky(model, windows, rng):                    # as if the causal mask let the future in
        return {**real(model, windows, rng), "causal_max_change_before_t": 0.5}

    monkeypatch.setattr(stage, "mask_checks", leaky)
    record = run_stage(get_stage("transformer"), tmp_path, tiny=True)
    assert record["status"] == "smoke", record.get("traceback", record.get("error"))
    out = tmp_path / "transformer"
    metrics = json.loads((out / "metrics.json").read_text())
    found = {c["name"]: c for c in metrics["claims"]}
    assert set(found) == CLAIMS
    assert not found["transformer.causal"]["passed"]
    assert found["transformer.padding"]["passed"]                  # exact even for an untrained model
    report = (out / "report.html").read_text()
    assert len(metrics["plots"]) >= 5
    for plot in metrics["plots"]:
        assert (out / plot["file"]).read_bytes()[:8] == PNG_MAGIC
        assert f'src="{plot["file"]}"' in report
    assert "A sample from the GPT" in report
    assert (out / "gpt" / "model.safetensors").is_file() and (out / "gpt" / "tokenizer.json").is_file()
    assert GPT.load(out / "gpt").cfg.pos_encoding == "rotary"
    from groundup.roadmap.provenance import unmeasured_numbers

    assert unmeasured_numbers(metrics) == []           # every number in the prose was measured in this run
    assert "most important sub-layer in this run" in report   # named from the run's ablations, not asserted


def test_score_statistics_follow_the_variance_of_a_dot_product():
    scores = stage.score_statistics((2, 32, 512), n_keys=256, rng=np.random.default_rng(0), n_queries=4000)
    np.testing.assert_allclose(scores["var_raw"], [2, 32, 512], rtol=0.15)       # Var(q.k) = d
    np.testing.assert_allclose(scores["var_scaled"], 1.0, rtol=0.15)
    assert scores["max_weight_raw"][-1] > 0.9 > 0.5 > scores["max_weight_scaled"][-1] > 1 / 256


def test_head_distances_and_reach_on_hand_made_maps():
    T = 4
    eye, first = np.eye(T), np.zeros((T, T))
    first[:, 0] = 1                                                                # every row looks at position 0
    maps = np.stack([np.stack([eye, eye]), np.stack([eye, first])])[:, None]       # (L=2, B=1, H=2, T, T)
    np.testing.assert_allclose(stage.head_distances(maps), [0.0, 0.75])             # row 0 agrees: 3 of 4 rows differ
    np.testing.assert_allclose(stage.mean_attention_distance(maps), [[0, 0], [0, 1.5]])   # mean of t - 0 = 1.5


def test_mask_checks_catch_a_model_without_the_causal_mask():
    windows = np.random.default_rng(0).integers(0, 11, (3, 12))
    masked = stage.mask_checks(tiny_gpt(), windows, np.random.default_rng(1))
    assert masked["causal_max_change_before_t"] == 0.0 and masked["causal_min_change_at_t"] > 0
    assert masked["padding_max_change_at_real_positions"] == 0.0 < masked["without_mask_change_at_real_positions"]
    open_model = tiny_gpt(causal=False)
    assert stage.mask_checks(open_model, windows, np.random.default_rng(1))["causal_max_change_before_t"] > 1e-3


def test_permutation_checks():
    windows = np.random.default_rng(0).integers(0, 11, (2, 12))
    perms = stage.permutation_checks(tiny_gpt(pos_encoding="rotary"), windows, np.random.default_rng(2), "cpu")
    assert perms["none"] < 1e-5 and perms["learned"] > 1e-3 and perms["rotary"] > 1e-4


def test_ablations_match_zeroing_by_hand_and_restore_the_weights():
    model = tiny_gpt()
    with gu.no_grad():
        for _, p in model.named_parameters():
            p.data[...] = np.random.default_rng(p.numel()).standard_normal(p.shape) * 0.3
    x = np.random.default_rng(3).integers(0, 11, (4, 12))
    y = np.random.default_rng(4).integers(0, 11, (4, 12))

    def evaluate():
        with gu.no_grad():
            return float(model.loss(x, y).item())

    before = {k: v.copy() for k, v in model.state_dict().items()}
    result = stage.ablate_sublayers(model, evaluate, np.random.default_rng(5), fractions=(0.5,), trials=2)
    after = model.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before)

    by_hand = GPT(dataclasses.replace(model.cfg))
    state = {k: v.copy() for k, v in before.items()}
    for name in ("blocks.1.mlp.proj.weight", "blocks.1.mlp.proj.bias"):   # the sub-layer's whole output is 0
        if name in state:
            state[name][...] = 0
    by_hand.load_state_dict(state)
    with gu.no_grad():
        expected = float(by_hand.loss(x, y).item()) - result["base_loss"]
    assert result["per_layer"][1]["feed_forward"] == pytest.approx(expected, abs=1e-6)
    state = {k2: v.copy() for k2, v in before.items()}
    for name in ("blocks.0.attn.proj.weight", "blocks.1.attn.proj.weight", "blocks.0.attn.proj.bias",
                 "blocks.1.attn.proj.bias"):
        if name in state:
            state[name][...] = 0
    by_hand.load_state_dict(state)
    with gu.no_grad():
        expected = float(by_hand.loss(x, y).item()) - result["base_loss"]
    assert result["all_attention"] == pytest.approx(expected, abs=1e-6)
    assert result["fraction"][0]["fraction"] == 0.5
