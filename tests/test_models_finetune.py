"""Sequence classifiers for fine-tuning (groundup.models.finetune): the GPT reads each row's last real token,
the readable GPT and FastGPT classify alike, and each fine-tuning mode trains exactly the weights it says."""

from __future__ import annotations

import numpy as np
import pytest

import groundup as gu
from groundup.models.bert import BERT, BERTConfig
from groundup.models.finetune import BERTClassifier, GPTClassifier, prepare_finetuning, trainable_parameters
from groundup.models.gpt import GPT, GPTConfig
from groundup.models.gpt_fast import FastGPT
from groundup.nn.lora import LoRALinear

GPT_CFG = GPTConfig(vocab_size=30, block_size=10, n_layer=2, n_head=2, n_embd=16, dropout=0.0, pos_encoding="learned")


def padded_batch():
    rng = np.random.default_rng(0)
    ids = rng.integers(4, 30, (3, 10))
    mask = np.ones((3, 10), dtype=bool)
    mask[0, 6:] = False
    mask[2, 3:] = False
    ids[~mask] = 0
    return ids, mask


def test_gpt_classifier_reads_the_last_real_token_and_ignores_padding():
    gu.manual_seed(0)
    model = GPTClassifier(GPT(GPT_CFG), num_labels=4).eval()
    ids, mask = padded_batch()
    logits = model(ids, mask).detach().numpy()
    assert logits.shape == (3, 4)
    for row, last in enumerate(mask.sum(1) - 1):                       # the row alone, cut after its last token
        alone = model(ids[row:row + 1, :last + 1]).detach().numpy()
        np.testing.assert_allclose(logits[row], alone[0], rtol=1e-5, atol=1e-6)
    other = ids.copy()
    other[~mask] = 7
    np.testing.assert_array_equal(model(other, mask).detach().numpy(), logits)
    with pytest.raises(ValueError, match="no real token"):
        model(ids, np.zeros_like(mask))


def test_fast_gpt_classifies_as_the_readable_gpt():
    gu.manual_seed(0)
    readable = GPTClassifier(GPT(GPT_CFG), num_labels=4).double().eval()
    fast = GPTClassifier(FastGPT(GPT_CFG), num_labels=4).double().eval()
    fast.load_state_dict(readable.state_dict())
    ids, mask = padded_batch()
    np.testing.assert_allclose(fast(ids, mask).detach().numpy(), readable(ids, mask).detach().numpy(), rtol=1e-10,
                               atol=1e-10)


def bert_classifier() -> BERTClassifier:
    gu.manual_seed(0)
    return BERTClassifier(BERT(BERTConfig(vocab_size=30, block_size=10, n_layer=2, n_head=2, n_embd=16, num_labels=4)))


def test_finetuning_modes_train_what_they_say():
    full = bert_classifier()
    n_full = prepare_finetuning(full, "full")
    mlm = sum(p.numel() for n, p in full.named_parameters() if n.startswith("bert.mlm_head."))
    assert n_full == full.num_parameters() - mlm and n_full == trainable_parameters(full)
    assert not any(p.requires_grad for n, p in full.named_parameters() if n.startswith("bert.mlm_head."))

    last = bert_classifier()
    n_last = prepare_finetuning(last, "last")
    trains = {n for n, p in last.named_parameters() if p.requires_grad}
    assert trains and all(n.startswith(("bert.blocks.1.", "bert.pooler.", "bert.classifier.")) for n in trains)
    assert n_last == sum(p.numel() for p in last.bert.blocks[1].parameters()) + 16 * 16 + 16 + 16 * 4 + 4

    lora = bert_classifier()
    n_lora = prepare_finetuning(lora, "lora", r=2)
    assert isinstance(lora.bert.blocks[0].attn.query, LoRALinear) and isinstance(lora.bert.blocks[1].attn.value,
                                                                                 LoRALinear)
    assert n_lora == 2 * 2 * 2 * (16 + 16) + 16 * 16 + 16 + 16 * 4 + 4

    gpt = GPTClassifier(GPT(GPT_CFG), 4)
    assert prepare_finetuning(gpt, "last") == sum(p.numel() for p in gpt.gpt.blocks[1].parameters()) + 16 * 4 + 4 + 32
    with pytest.raises(ValueError, match="LoRA"):
        prepare_finetuning(GPTClassifier(GPT(GPT_CFG), 4), "lora")
    with pytest.raises(ValueError, match="mode"):
        prepare_finetuning(bert_classifier(), "half")


def test_only_the_trainable_weights_move_in_a_step():
    model = bert_classifier()
    prepare_finetuning(model, "last")
    before = {n: p.data.copy() for n, p in model.named_parameters()}
    ids, mask = padded_batch()
    ids[:, 0] = 1
    optimizer = gu.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    loss = model.loss(ids, mask, np.array([0, 1, 2]))
    loss.backward()
    optimizer.step()
    for name, p in model.named_parameters():
        moved = not np.array_equal(before[name], p.data)
        assert moved == p.requires_grad, name
