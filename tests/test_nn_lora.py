"""LoRALinear (groundup.nn.lora): a zero B gives the base layer exactly, merged equals unmerged, only A
and B train, finite differences in float64, apply_lora on a BERT and the parameter count."""

from __future__ import annotations

import numpy as np
import pytest

import groundup as gu
from groundup import nn
from groundup.models.bert import BERT, BERTConfig
from groundup.nn.lora import LoRALinear, apply_lora, mark_only_lora_as_trainable
from groundup.tensor import Tensor


def layer(r=3, alpha=6.0, bias=True, dtype=None) -> tuple[nn.Linear, LoRALinear]:
    gu.manual_seed(0)
    base = nn.Linear(5, 4, bias=bias, dtype=dtype)
    return base, LoRALinear.from_linear(base, r=r, alpha=alpha)


def test_a_zero_b_gives_the_base_layer_exactly_and_the_update_is_scaled():
    base, lora = layer()
    x = Tensor(np.random.default_rng(0).standard_normal((2, 3, 5)).astype(np.float32))
    np.testing.assert_array_equal(lora(x).detach().numpy(), base(x).detach().numpy())   # B = 0 at the start
    assert lora.weight is base.weight and lora.bias is base.bias and lora.scaling == 2.0
    lora.lora_B.data = np.random.default_rng(1).standard_normal((4, 3)).astype(np.float32)
    expected = base(x).detach().numpy() + 2.0 * x.numpy() @ (lora.lora_B.data @ lora.lora_A.data).T
    np.testing.assert_allclose(lora(x).detach().numpy(), expected, rtol=1e-5, atol=1e-6)


def test_merged_equals_unmerged_and_unmerge_restores_the_weight():
    _, lora = layer()
    lora.lora_B.data = np.random.default_rng(1).standard_normal((4, 3)).astype(np.float32)
    x = Tensor(np.random.default_rng(0).standard_normal((6, 5)).astype(np.float32))
    weight = lora.weight.data.copy()
    unmerged = lora(x).detach().numpy()
    lora.merge()
    assert lora.merged
    np.testing.assert_allclose(lora.weight.data, weight + lora.delta_weight().detach().numpy(), rtol=1e-6)
    np.testing.assert_allclose(lora(x).detach().numpy(), unmerged, rtol=1e-5, atol=1e-5)
    lora.merge()                                                      # merging twice adds the update once
    np.testing.assert_allclose(lora(x).detach().numpy(), unmerged, rtol=1e-5, atol=1e-5)
    lora.unmerge()
    assert not lora.merged
    np.testing.assert_allclose(lora.weight.data, weight, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(lora(x).detach().numpy(), unmerged, rtol=1e-5, atol=1e-5)


def test_only_a_and_b_receive_gradients_and_train():
    _, lora = layer()
    x = Tensor(np.random.default_rng(0).standard_normal((6, 5)).astype(np.float32))
    target = Tensor(np.random.default_rng(1).standard_normal((6, 4)).astype(np.float32))
    weight, bias = lora.weight.data.copy(), lora.bias.data.copy()
    optimizer = gu.optim.AdamW([p for p in lora.parameters() if p.requires_grad], lr=1e-2)
    assert {id(p) for p in lora.parameters() if p.requires_grad} == {id(lora.lora_A), id(lora.lora_B)}
    losses = []
    for _ in range(30):
        loss = ((lora(x) - target) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        assert lora.weight.grad is None and lora.bias.grad is None
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.05
    np.testing.assert_array_equal(lora.weight.data, weight)
    np.testing.assert_array_equal(lora.bias.data, bias)
    assert np.abs(lora.lora_B.data).max() > 0


def test_gradients_of_a_and_b_match_finite_differences_in_float64():
    _, lora = layer(dtype="float64")
    rng = np.random.default_rng(2)
    lora.lora_B.data = rng.standard_normal((4, 3))
    x = Tensor(rng.standard_normal((3, 5)))
    weights = rng.standard_normal((3, 4))

    def loss() -> float:
        return float((lora(x) * Tensor(weights)).sum().item())

    out = (lora(x) * Tensor(weights)).sum()
    out.backward()
    for p in (lora.lora_A, lora.lora_B):
        numeric = np.zeros(p.shape)
        for j in range(p.data.size):
            old = p.data.flat[j]
            p.data.flat[j] = old + 1e-6
            up = loss()
            p.data.flat[j] = old - 1e-6
            down = loss()
            p.data.flat[j] = old
            numeric.flat[j] = (up - down) / 2e-6
        np.testing.assert_allclose(p.grad.numpy(), numeric, rtol=1e-5, atol=1e-7)


def test_apply_lora_on_bert_keeps_its_outputs_and_counts_the_trainable_parameters():
    gu.manual_seed(0)
    cfg = BERTConfig(vocab_size=20, block_size=8, n_layer=2, n_head=2, n_embd=16, num_labels=3, dropout=0.0)
    model = BERT(cfg).eval()
    idx = np.random.default_rng(0).integers(0, 20, (2, 8))
    before = model.classify(idx).detach().numpy()
    keys = set(model.state_dict())
    replaced = apply_lora(model, ("query", "value"), r=2, alpha=4)
    assert replaced == ["blocks.0.attn.query", "blocks.0.attn.value", "blocks.1.attn.query", "blocks.1.attn.value"]
    assert isinstance(model.blocks[1].attn.value, LoRALinear) and not isinstance(model.blocks[1].attn.key, LoRALinear)
    new_keys = set(model.state_dict()) - keys
    assert keys <= set(model.state_dict()) and len(new_keys) == 8 and all("lora_" in k for k in new_keys)
    np.testing.assert_array_equal(model.classify(idx).detach().numpy(), before)
    trainable = mark_only_lora_as_trainable(model, also=("classifier.",))
    assert trainable == 4 * 2 * (16 + 16) + 16 * 3 + 3
    assert trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)
    with pytest.raises(ValueError, match="no Linear layer"):
        apply_lora(model, ("nothing",))


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="positive integer"):
        LoRALinear(3, 3, r=0)
    with pytest.raises(TypeError, match="plain Linear"):
        LoRALinear.from_linear(LoRALinear(3, 3, r=1))
