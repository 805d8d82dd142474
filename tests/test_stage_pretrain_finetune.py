"""The ``pretrain-finetune`` roadmap stage: a tiny run writes its files and makes every claim, a broken
measurement makes its claims fail, and the sweep summary and the encoding on hand-made inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from groundup.roadmap import get_stage, run_stage
from groundup.roadmap.stages import pretrain_finetune as stage
from groundup.tokenizers.bpe import ByteLevelBPE

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CLAIMS = {"pretrain-finetune.mlm_learns", "pretrain-finetune.bert_beats_scratch", "pretrain-finetune.gpt_beats_scratch",
          "pretrain-finetune.lora", "pretrain-finetune.names"}


@pytest.mark.slow
def test_tiny_run_writes_files_and_a_broken_accuracy_fails_its_claims(tmp_path, monkeypatch):
    monkeypatch.setattr(stage, "accuracy", lambda model, ids, mask, labels: (0.0, np.zeros(len(labels), dtype=int)))
    record = run_stage(get_stage("pretrain-finetune"), tmp_path, tiny=True)
    assert record["status"] == "smoke", record.get("traceback", record.get("error"))
    out = tmp_path / "pretrain-finetune"
    metrics = json.loads((out / "metrics.json").read_text())
    found = {c["name"]: c for c in metrics["claims"]}
    assert set(found) == CLAIMS
    assert not found["pretrain-finetune.bert_beats_scratch"]["passed"]       # 0 > 0 does not hold
    assert not found["pretrain-finetune.gpt_beats_scratch"]["passed"]
    assert not found["pretrain-finetune.lora"]["passed"]
    assert found["pretrain-finetune.bert_beats_scratch"]["values"]["bert pretrained, 16 labels"] == 0.0
    report = (out / "report.html").read_text()
    assert len(metrics["plots"]) == 3
    for plot in metrics["plots"]:
        assert (out / plot["file"]).read_bytes()[:8] == PNG_MAGIC
        assert f'src="{plot["file"]}"' in report
    sweep = metrics["metrics"]["sweep"]
    assert sweep["sizes"][0] == 16 and sweep["bert"]["gap_at_fewest"] == 0.0
    assert metrics["metrics"]["cheap"]["lora_parameter_share"] < 0.05
    from groundup.roadmap.provenance import unmeasured_numbers

    assert unmeasured_numbers(metrics) == []


def test_sweep_summary_finds_the_gaps_and_where_the_gain_is_largest():
    results = {"pretrained": {16: [0.4, 0.2], 64: [0.5, 0.5], 256: [0.6, 0.62]},
               "scratch": {16: [0.1, 0.1], 64: [0.3, 0.4], 256: [0.58, 0.6]}}
    out = stage.sweep_summary(results, [16, 64, 256])
    np.testing.assert_allclose(out["pretrained"]["mean"], [0.3, 0.5, 0.61])
    np.testing.assert_allclose(out["gap"], [0.2, 0.15, 0.02])
    assert out["largest_gap_size"] == 16 and out["gap_at_fewest"] == pytest.approx(0.2)
    assert out["pretrained"]["min"] == [0.2, 0.5, 0.6] and out["scratch"]["max"] == [0.1, 0.4, 0.6]
    results["scratch"][16] = [0.35, 0.35]                               # now the gain is largest at 64
    assert stage.sweep_summary(results, [16, 64, 256])["largest_gap_size"] == 64


def test_speeches_are_encoded_with_cls_and_sep_for_bert_and_bare_for_gpt():
    tokenizer = ByteLevelBPE.train("to be or not to be", vocab_size=270, special_tokens=("[PAD]", "[CLS]", "[SEP]",
                                                                                          "[MASK]"))
    ids, mask = stage.encode_speeches(["to be", "or not to be or not to be"], tokenizer, 6, cls=True)
    assert ids[0, 0] == 1 and ids[1, 0] == 1 and ids[1, -1] == 2 and mask[1].all()
    assert list(ids[0, :mask[0].sum()]) == [1, *tokenizer.encode("to be"), 2] and not mask[0, -1]
    ids, mask = stage.encode_speeches(["to be"], tokenizer, 6, cls=False)
    assert list(ids[0, :mask[0].sum()]) == tokenizer.encode("to be")
