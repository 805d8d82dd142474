"""groundup <-> Hugging Face transformers: logits parity, greedy tokens, round trips, tokenizers, refusals.

transformers and torch are the independent oracles: every model here is built from a local config
(no download), in float32, with random weights on every parameter (LayerNorm gains and biases too).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import groundup as gu
from groundup.interop import hf
from groundup.models.gpt import GPT, GPTConfig
from groundup.tokenizers import ByteLevelBPE, CharTokenizer

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

pytestmark = [pytest.mark.torch, pytest.mark.slow]  # parity with Hugging Face transformers (B6)

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak. 42 times!  "


def random_gpt(pos: str, bias: bool = True, tie: bool = True, block_size: int = 16, vocab_size: int = 23,
               seed: int = 1) -> GPT:
    """A small GPT whose every parameter is random, so no term hides behind a 0 or a 1."""
    gu.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=vocab_size, block_size=block_size, n_layer=2, n_head=2, n_embd=16, bias=bias,
                          pos_encoding=pos, tie_weights=tie))
    rng = np.random.default_rng(seed)
    with gu.no_grad():
        for name, p in model.named_parameters():
            gain = name.split(".")[-2].startswith("ln_") and name.endswith("weight")   # LayerNorm gains near 1
            p.data[...] = rng.standard_normal(p.shape) * 0.3 + (1.0 if gain else 0.0)
    return model.eval()


def hf_logits(directory, ids: np.ndarray) -> np.ndarray:
    model = transformers.AutoModelForCausalLM.from_pretrained(str(directory), attn_implementation="eager").eval()
    with torch.no_grad():
        return model(torch.from_numpy(ids)).logits.numpy()


def our_logits(model: GPT, ids: np.ndarray) -> np.ndarray:
    with gu.no_grad():
        return model(ids).numpy()


CASES = [("learned", True, True), ("learned", False, False), ("sinusoidal", True, False), ("none", False, True),
         ("rotary", True, True), ("rotary", False, False)]


@pytest.mark.parametrize("pos, bias, tie", CASES)
def test_export_logits_match_transformers(tmp_path, pos, bias, tie):
    model = random_gpt(pos, bias, tie)
    hf.export_hf(model, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == [hf.NEOX if pos == "rotary" else hf.GPT2]
    ids = np.random.default_rng(3).integers(0, 23, size=(3, 16))
    theirs = hf_logits(tmp_path, ids)
    ours = our_logits(model, ids)
    assert ours.shape == theirs.shape == (3, 16, 23)
    assert np.abs(ours).max() > 1.0                     # not a trivially small output
    np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=0)


@pytest.mark.parametrize("pos, bias, tie", CASES)
def test_round_trip_gives_identical_weights_and_config(tmp_path, pos, bias, tie):
    model = random_gpt(pos, bias, tie)
    hf.export_hf(model, tmp_path)
    back = hf.from_hf(json.loads((tmp_path / "config.json").read_text()), hf.read_hf_weights(tmp_path))
    assert back.cfg == model.cfg
    ours, theirs = model.state_dict(), back.state_dict()
    assert set(ours) == set(theirs)
    for key in ours:
        assert ours[key].dtype == theirs[key].dtype and np.array_equal(ours[key], theirs[key]), key


@pytest.mark.parametrize("pos", ["learned", "sinusoidal", "none", "rotary"])
def test_fifty_greedy_tokens_identical(tmp_path, pos):
    # untied, and a seed whose greedy path visits several tokens (random weights often repeat one)
    model = random_gpt(pos, tie=False, block_size=64, seed=3)
    hf.export_hf(model, tmp_path)
    prompt = np.array([[3, 1, 4, 1]])
    ours = model.generate(prompt, 50, temperature=0).numpy()
    theirs_model = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path)).eval()
    theirs = theirs_model.generate(torch.from_numpy(prompt), max_new_tokens=50, min_new_tokens=50, do_sample=False,
                                   pad_token_id=0).numpy()
    assert ours.shape == theirs.shape == (1, 54)
    assert len(set(ours[0, 4:].tolist())) > 3          # the model does not just repeat one token
    np.testing.assert_array_equal(ours, theirs)


def test_neox_qkv_layout_is_per_head():
    """NeoX's rows are grouped (head, q|k|v, d); groundup's (q|k|v, head, d): check one row by hand."""
    H, C = 2, 6                                           # head dim D = 3
    rows = np.arange(3 * C)[:, None] * np.ones((1, C))   # row r holds the value r
    neox = hf._qkv_to_neox(rows, H)
    # NeoX row (head 1, k, d 2) = 1*3D + 1*D + 2 = 14 must be groundup row (k, head 1, d 2) = 1*C + 1*D + 2 = 11
    assert neox[14, 0] == 11
    np.testing.assert_array_equal(hf._qkv_from_neox(neox, H), rows)


@pytest.mark.parametrize("cfg, reason", [
    (dict(norm="post"), "pre-norm"),
    (dict(causal=False), "causal"),
])
def test_export_refuses_what_has_no_equal_class(tmp_path, cfg, reason):
    model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8, **cfg))
    with pytest.raises(hf.ExportError, match=reason):
        hf.export_hf(model, tmp_path)
    assert not (tmp_path / "model.safetensors").exists()


def test_import_gpt2_built_by_transformers(tmp_path):
    """A GPT2LMHeadModel from a local config (transformers' own init and layout) -> groundup, same logits."""
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=29, n_positions=12, n_embd=16, n_layer=2, n_head=4,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    reference = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():                                  # biases and gains away from 0 and 1
        for p in reference.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    reference.save_pretrained(tmp_path)
    model = hf.from_hf(json.loads((tmp_path / "config.json").read_text()), hf.read_hf_weights(tmp_path))
    assert model.cfg.pos_encoding == "learned" and model.cfg.bias and model.cfg.tie_weights
    ids = np.random.default_rng(0).integers(0, 29, size=(2, 12))
    with torch.no_grad():
        theirs = reference(torch.from_numpy(ids)).logits.numpy()
    np.testing.assert_allclose(our_logits(model, ids), theirs, atol=1e-5, rtol=0)


@pytest.mark.parametrize("change, reason", [
    (dict(use_parallel_residual=True), "parallel"),
    (dict(hidden_act="gelu"), "tanh"),
    (dict(rotary_pct=0.25, rope_parameters=None), "rotary_pct"),
])
def test_import_refuses_neox_that_differs(tmp_path, change, reason):
    model = random_gpt("rotary")
    config, tensors = hf.to_hf(model)
    config.update(change)
    if change.get("rope_parameters", 0) is None:
        config.pop("rope_parameters")
    with pytest.raises(hf.ImportRefused, match=reason):
        hf.from_hf(config, tensors)


def test_import_refuses_other_architectures():
    with pytest.raises(hf.ImportRefused, match="model_type='llama'"):
        hf.from_hf({"model_type": "llama"}, {})


def test_import_refuses_a_classifier_and_any_tensor_it_would_drop(tmp_path):
    """GPT2ForSequenceClassification has a GPT-2 body and a `score` head: imported as an LM, the head
    would be dropped silently. Refused by its architecture, and by the unused tensor without one."""
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=29, n_positions=12, n_embd=16, n_layer=1, n_head=4, num_labels=3,
                                     pad_token_id=0)
    transformers.GPT2ForSequenceClassification(config).save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    tensors = hf.read_hf_weights(tmp_path)
    assert "score.weight" in tensors
    with pytest.raises(hf.ImportRefused, match=r"architectures \['GPT2ForSequenceClassification'\]"):
        hf.from_hf(saved, tensors)
    saved.pop("architectures")
    with pytest.raises(hf.ImportRefused, match="no place for: score.weight"):
        hf.from_hf(saved, tensors)
    model = random_gpt("rotary")                                 # NeoX too; its rotary buffer is not a weight
    config, tensors = hf.to_hf(model)
    tensors["gpt_neox.layers.0.attention.rotary_emb.inv_freq"] = np.ones(2, dtype=np.float32)
    hf.from_hf(config, tensors)
    tensors["gpt_neox.extra.weight"] = np.ones(2, dtype=np.float32)
    with pytest.raises(hf.ImportRefused, match="no place for: extra.weight"):
        hf.from_hf(config, tensors)


# ----------------------------------------------------------------------------- tokenizers
def test_char_tokenizer_encodes_identically_in_transformers(tmp_path):
    ours = CharTokenizer(TEXT)
    hf.export_tokenizer(ours, tmp_path, model_max_length=64)
    theirs = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    for text in (TEXT, "  speak\n\nspeak!", "42 :F"):
        ids = ours.encode(text)
        assert theirs(text)["input_ids"] == ids
        assert theirs.decode(ids) == ours.decode(ids) == text
    assert len(theirs) == ours.vocab_size
    back = hf.import_tokenizer(tmp_path)
    assert isinstance(back, CharTokenizer) and back.chars == ours.chars


def test_bpe_tokenizer_encodes_identically_in_transformers(tmp_path):
    ours = ByteLevelBPE.train(TEXT * 3, vocab_size=290)
    hf.export_tokenizer(ours, tmp_path, model_max_length=64)
    theirs = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    for text in (TEXT, "Speak 🙂 further, citizens's   end ", "ünïcødé\n\n  x"):
        ids = ours.encode(text)
        assert theirs(text)["input_ids"] == ids
        assert theirs.decode(ids) == text
    assert len(theirs) == ours.vocab_size              # no special token was added
    back = hf.import_tokenizer(tmp_path)
    assert back.vocab == ours.vocab and back.merges == ours.merges


def test_bpe_from_a_fast_tokenizer_json(tmp_path):
    """A directory with only tokenizer.json (byte-level BPE, as save_pretrained of a fast GPT-2 tokenizer)."""
    ours = ByteLevelBPE.train(TEXT * 3, vocab_size=280)
    hf.export_tokenizer(ours, tmp_path / "slow", model_max_length=64)
    fast = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "slow"))
    fast.backend_tokenizer.save(str(tmp_path / "tokenizer.json"))
    back = hf.import_tokenizer(tmp_path)
    assert isinstance(back, ByteLevelBPE)
    assert back.encode(TEXT) == ours.encode(TEXT)


def test_import_accepts_legacy_gpt2_names():
    """Original GPT-2 files: no ``transformer.`` prefix, and causal-mask buffers ``h.{i}.attn.bias`` to ignore."""
    model = random_gpt("learned")
    config, tensors = hf.to_hf(model)
    legacy = {k.removeprefix("transformer."): v for k, v in tensors.items()}
    legacy["h.0.attn.bias"] = np.tril(np.ones((1, 1, 16, 16), dtype=np.float32))
    back = hf.from_hf(config, legacy)
    for key, value in model.state_dict().items():
        assert np.array_equal(value, back.state_dict()[key]), key


def test_verify_without_transformers_is_one_clear_line(tmp_path, monkeypatch, capsys):
    import sys

    from groundup.interop import MissingDependency

    model = random_gpt("learned")
    hf.export_hf(model, tmp_path)
    monkeypatch.setitem(sys.modules, "transformers", None)     # as if it were not installed
    with pytest.raises(MissingDependency, match=r"needs transformers.*pip install transformers"):
        hf.verify_hf(model, tmp_path)


def test_reexport_leaves_no_stale_tokenizer(tmp_path):
    """A BPE export over an older character export: transformers must load the BPE, not the old tokenizer.json."""
    hf.export_tokenizer(CharTokenizer(TEXT), tmp_path, model_max_length=64)
    bpe = ByteLevelBPE.train(TEXT * 3, vocab_size=270)
    hf.export_tokenizer(bpe, tmp_path, model_max_length=64)
    assert not (tmp_path / "tokenizer.json").exists()
    assert transformers.AutoTokenizer.from_pretrained(str(tmp_path))(TEXT)["input_ids"] == bpe.encode(TEXT)


def test_import_again_into_the_same_directory_loads(tmp_path):
    """Re-running an import into its earlier output (another model and tokenizer kind) gives a run that loads."""
    from groundup.commands import load_tokenizer
    from groundup.train.checkpoint import verify_covered

    hf.export_hf(random_gpt("learned"), tmp_path / "a", tokenizer=CharTokenizer("abcdefghijklmnopqrstuvw"))
    bpe = ByteLevelBPE.train(TEXT * 3, vocab_size=270)
    second = random_gpt("rotary", vocab_size=270)
    hf.export_hf(second, tmp_path / "b", tokenizer=bpe)
    hf.import_hf(tmp_path / "a", tmp_path / "run")
    hf.import_hf(tmp_path / "b", tmp_path / "run")
    verify_covered(tmp_path / "run")                  # what `groundup sample` checks first
    assert load_tokenizer(tmp_path / "run").encode(TEXT) == bpe.encode(TEXT)
    back = GPT.load(tmp_path / "run")
    assert back.cfg == second.cfg


def test_import_refuses_a_tokenizer_bigger_than_the_model(tmp_path):
    """Token ids the embedding has no row for would fail only later, in `groundup sample --prompt`."""
    hf.export_hf(random_gpt("learned", vocab_size=23), tmp_path / "hf", tokenizer=CharTokenizer(TEXT))  # 33 chars
    with pytest.raises(hf.ImportRefused, match=r"tokenizer.*33.*vocab_size=23"):
        hf.import_hf(tmp_path / "hf", tmp_path / "run")
    assert not (tmp_path / "run").exists()
    bigger = random_gpt("learned", vocab_size=40)           # a padded vocabulary is fine
    hf.export_hf(bigger, tmp_path / "hf", tokenizer=CharTokenizer(TEXT))
    hf.import_hf(tmp_path / "hf", tmp_path / "run")
    assert GPT.load(tmp_path / "run").cfg == bigger.cfg
