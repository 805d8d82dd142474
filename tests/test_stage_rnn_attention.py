"""The ``rnn`` and ``attention`` roadmap stages: tiny runs write their files, a broken measurement makes
its claim fail, and the stage helpers against independent oracles (a NumPy backpropagation through
time for the gradient profile; hand-made inputs for the codecs, batching, buckets and alignment)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import groundup as gu
from groundup.models.rnn_lm import IGNORE_INDEX, RNNLM, RNNLMConfig
from groundup.roadmap import get_stage, run_stage
from groundup.roadmap import seq2seq as seq2seq_helpers
from groundup.roadmap.provenance import unmeasured_numbers
from groundup.roadmap.stages import attention as attention_stage
from groundup.roadmap.stages import rnn as rnn_stage

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _check_run_files(out, record, plots_at_least):
    assert record["status"] == "smoke", record.get("traceback", record.get("error"))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["mode"] == "tiny" and metrics["claims"]
    report = (out / "report.html").read_text()
    assert len(metrics["plots"]) >= plots_at_least
    for plot in metrics["plots"]:
        assert (out / plot["file"]).read_bytes()[:8] == PNG_MAGIC
        assert f'src="{plot["file"]}"' in report
    for claim in metrics["claims"]:
        assert isinstance(claim["passed"], bool) and claim["values"]
        assert all(isinstance(v, int | float) for v in claim["values"].values())
    assert unmeasured_numbers(metrics) == []           # every number in the prose was measured in this run
    return {c["name"]: c for c in metrics["claims"]}


# ---------------------------------------------------------------------------- tiny runs
@pytest.mark.slow
def test_rnn_stage_tiny_and_a_broken_measurement_fails(tmp_path, monkeypatch):
    """A flat gradient profile (nothing vanishes) must fail both vanishing-gradient claims."""
    monkeypatch.setattr(rnn_stage, "gradient_profile", lambda model, windows, device="cpu":
                        np.ones(windows.shape[1] - 1))
    record = run_stage(get_stage("rnn"), tmp_path, tiny=True)
    found = _check_run_files(tmp_path / "rnn", record, plots_at_least=3)
    assert set(found) == {"rnn.gated_beat_vanilla", "rnn.quality", "rnn.vanishing", "rnn.decays_faster",
                          "rnn.gated_keep_gradient", "rnn.exploding", "rnn.clipping"}
    for name in ("rnn.vanishing", "rnn.decays_faster", "rnn.gated_keep_gradient"):
        assert not found[name]["passed"], name
    assert found["rnn.vanishing"]["values"]["RNN ratio at distance 20"] == 1.0
    assert not record["claims_passed"]
    report = (tmp_path / "rnn" / "report.html").read_text()
    assert "makemore" in report and "Generated names" in report


@pytest.mark.slow
def test_attention_stage_tiny_and_a_broken_measurement_fails(tmp_path, monkeypatch):
    """Attention that never looks at the year must fail the alignment claim."""
    monkeypatch.setattr(attention_stage, "year_alignment", lambda pairs, weights, slack=1:
                        {"year_digit_steps": 4, "peak_on_year": 0.0, "mean_weight_on_year": 0.0})
    record = run_stage(get_stage("attention"), tmp_path, tiny=True)
    found = _check_run_files(tmp_path / "attention", record, plots_at_least=3)
    assert set(found) == {"attention.longest_inputs", "attention.bottleneck", "attention.alignment"}
    assert not found["attention.alignment"]["passed"]
    metrics = record["metrics"]
    assert sum(b["n"] for b in metrics["accuracy_by_length"]["plain"]) == metrics["config"]["n_test"]


# ---------------------------------------------------------------------------- rnn helpers
def test_encode_names_shifts_targets_and_pads():
    codec = rnn_stage.name_codec(["ab", "b", "abc"])
    x, y = rnn_stage.encode_names(["ab", "b"], codec)
    a, b = codec.stoi["a"], codec.stoi["b"]
    np.testing.assert_array_equal(x, [[0, a, b], [0, b, 0]])
    np.testing.assert_array_equal(y, [[a, b, 0], [b, 0, IGNORE_INDEX]])
    assert codec.decode([a, b]) == "ab" and codec.vocab_size == 4
    np.testing.assert_array_equal(rnn_stage.name_stream(["ab", "b"], codec), [0, a, b, 0, b])


def test_gradient_profile_matches_numpy_backprop_through_time():
    """For a vanilla RNN: dL/dh_T = (softmax - onehot) W_out and dL/dh_{t-1} = (dL/dh_t * (1 - h_t^2)) W_hh."""
    gu.manual_seed(3)
    model = RNNLM(RNNLMConfig(vocab_size=7, cell="rnn", n_embd=4, hidden_size=6)).to(dtype=gu.float64)
    windows = np.random.default_rng(0).integers(0, 7, (5, 9))              # read 8 ids, predict the 9th
    got = rnn_stage.gradient_profile(model, windows)
    p = {k: v.astype(np.float64) for k, v in model.state_dict().items()}
    x = p["wte.weight"][windows[:, :-1]]                                     # (B, T, C)
    h, states = np.zeros((5, 6)), []
    for t in range(8):
        h = np.tanh(x[:, t] @ p["rnn.weight_ih_l0"].T + p["rnn.bias_ih_l0"] + h @ p["rnn.weight_hh_l0"].T
                    + p["rnn.bias_hh_l0"])
        states.append(h)
    logits = states[-1] @ p["lm_head.weight"].T + p["lm_head.bias"]
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    grad = (probs - np.eye(7)[windows[:, -1]]) @ p["lm_head.weight"]        # dL/dh_T, (B, H)
    norms = []
    for t in range(7, -1, -1):
        norms.append(np.linalg.norm(grad, axis=1))
        grad = (grad * (1 - states[t] ** 2)) @ p["rnn.weight_hh_l0"]         # -> dL/dh_{t-1}
    norms = np.array(norms)                                                  # (T, B), distance order
    expected = np.exp(np.log(norms / norms[0]).mean(1))
    np.testing.assert_allclose(got, expected, rtol=1e-8)
    assert got[0] == 1.0
    assert all(p.grad is None for p in model.parameters())                  # leaves the model clean


def test_fit_decay_recovers_an_exponential():
    fit = rnn_stage._fit_decay(0.5 ** np.arange(30))
    assert abs(fit["factor_per_step"] - 0.5) < 1e-9 and abs(fit["r2"] - 1.0) < 1e-9
    noisy = rnn_stage._fit_decay(np.abs(np.random.default_rng(0).standard_normal(30)) + 0.1)
    assert noisy["r2"] < 0.5


# ---------------------------------------------------------------------------- attention helpers
def test_date_codec_round_trip():
    codec = seq2seq_helpers.DateCodec()
    b = codec.batch([("3/7/99", "1999-03-07"), ("Sunday, March 7, 1999", "1999-03-07")])
    assert b["src"].shape == (2, 21) and b["src_mask"].sum(1).tolist() == [6, 21]
    assert b["tgt_in"][0, 0] == 1 and b["tgt_out"][0, -1] == 2
    np.testing.assert_array_equal(b["tgt_in"][:, 1:], b["tgt_out"][:, :-1])
    assert codec.decode(b["tgt_out"][0]) == "1999-03-07"
    with pytest.raises(ValueError, match="outside the alphabet"):
        codec.batch([("7 März 1999", "1999-03-07")])


def test_length_batches_cover_everything_once_with_similar_lengths():
    lengths = np.random.default_rng(0).integers(5, 60, 103)
    batches = seq2seq_helpers.length_batches(lengths, 10, np.random.default_rng(1))
    assert sorted(np.concatenate(batches).tolist()) == list(range(103))
    assert len(batches) == 11
    spread = np.mean([np.ptp(lengths[b]) for b in batches])
    assert spread < 0.3 * np.ptp(lengths)                                    # random batches would span ~all


def test_bucket_accuracy_and_year_alignment():
    lengths = np.array([8, 9, 12, 50, 51])
    correct = np.array([True, False, True, False, False])
    rows = seq2seq_helpers.bucket_accuracy(correct, lengths)
    assert [(r["bucket"], r["n"], r["accuracy"]) for r in rows] == [("1-10", 2, 0.5), ("11-15", 1, 1.0),
                                                                    ("46+", 2, 0.0)]
    text = "3 mar 1999"                                                      # year at characters 6..9
    on_year = np.zeros((11, len(text)))
    on_year[np.arange(4), np.arange(6, 10) + 1 - (np.arange(4) == 3)] = 1   # peaks at 7, 8, 9, 9
    elsewhere = np.zeros_like(on_year)
    elsewhere[:, 0] = 1
    pairs = [(text, "1999-03-03"), ("the third of march nineteen ninety-nine", "1999-03-03")]
    assert attention_stage.year_alignment(pairs, [on_year, elsewhere[:, :0]])["peak_on_year"] == 1.0
    assert attention_stage.year_alignment(pairs[:1], [elsewhere])["peak_on_year"] == 0.0
    assert attention_stage.year_alignment(pairs[:1], [elsewhere])["year_digit_steps"] == 4


def test_date_format_of_names_the_writer():
    assert attention_stage.date_format_of("3/7/99", "1999-03-07") == "m/d/yy"
    assert attention_stage.date_format_of("Sunday 7th of March 1999", "1999-03-07") == "weekday dth of month yyyy"
    assert attention_stage.date_format_of("7 Mars 1999", "1999-03-07") == "?"


def test_char_tokenizer_specials_take_the_first_ids():
    from groundup.tokenizers import CharTokenizer

    names = CharTokenizer("emma", specials=(".",))
    assert names.tokens == [".", "a", "e", "m"] and names.encode("emma") == [2, 3, 3, 1]
    assert names.decode([0, 2, 3, 0]) == ".em." and names.decode([0, 2, 3, 0], skip_specials=True) == "em"
    target = CharTokenizer("0123456789-", specials=("<pad>", "<bos>", "<eos>"))
    assert target.id_of("<eos>") == 2 and target.vocab_size == 14 and target.decode(target.encode("1999-")) == "1999-"
    assert CharTokenizer("hello world").encode("hello") == [3, 2, 4, 4, 5]          # no specials: as before


def test_train_lm_learns_names_with_the_trainer(tmp_path):
    """The rnn stage's training (through the Trainer) learns a two-name language far below a uniform guess."""
    from groundup.roadmap.runner import Context

    codec = rnn_stage.name_codec(["anna", "bob"])
    x, y = rnn_stage.encode_names(["anna", "bob"] * 32, codec)
    data = {"x_train": x, "y_train": y, "x_val": x[:2], "y_val": y[:2]}
    gu.manual_seed(0)
    model = RNNLM(RNNLMConfig(vocab_size=codec.vocab_size, cell="gru", n_embd=8, hidden_size=16))
    before = rnn_stage.evaluate_lm(model, x[:2], y[:2])
    history = rnn_stage.train_lm(Context(out_dir=tmp_path), model, data, iters=60, lr=3e-2, batch_size=8,
                                 rng=np.random.default_rng(0), description="test", eval_every=20)
    assert history["eval_iters"] == [20, 40, 60] and len(history["train_loss"]) == 60
    assert history["val_loss"][-1] < 0.5 * before and model.training   # learned; the mode it had is kept
