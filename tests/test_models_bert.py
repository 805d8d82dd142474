"""BERT (groundup.models.bert): Hugging Face parity of logits and gradients with copied weights, a
picoGPT-style NumPy forward for both norms, finite differences in float64, hook points named by
module path, padding that changes nothing, the MLM loss, and the config and input checks."""

from __future__ import annotations

import math

import numpy as np
import pytest

import groundup as gu
from groundup.models.bert import BERT, HF_KEY_MAP, BERTConfig, hf_config, to_hf_state_dict
from groundup.tensor import Tensor

TINY = dict(vocab_size=23, block_size=12, n_layer=2, n_head=2, n_embd=8, num_labels=3)


def tiny(**overrides) -> BERT:
    gu.manual_seed(0)
    return BERT(BERTConfig(**{**TINY, **overrides}))


def batch(B=3, T=9, vocab=23, seed=0):
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, vocab, (B, T))
    mask = np.ones((B, T), dtype=bool)
    mask[1, 5:] = False                                           # padded rows
    mask[B - 1, T - 2:] = False
    segments = (np.arange(T)[None, :] >= 4).astype(np.int64).repeat(B, axis=0)   # sentence A | B
    return idx, mask, segments


# ----------------------------------------------------------------------------- NumPy reference
def _layer_norm(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def _gelu(x, tanh):
    if tanh:
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


def reference_forward(sd, cfg, idx, mask, segments):
    """BERT written from the paper with NumPy only: returns (MLM logits (B, T, V), class logits (B, K))."""
    B, T = idx.shape
    H, D, eps, tanh = cfg.n_head, cfg.n_embd // cfg.n_head, cfg.layer_norm_eps, cfg.activation == "gelu_tanh"

    def lin(h, name):
        return h @ sd[f"{name}.weight"].T + sd[f"{name}.bias"]

    def ln(h, name):
        return _layer_norm(h, sd[f"{name}.weight"], sd[f"{name}.bias"], eps)

    def attention(h, p):
        q, k, v = (lin(h, f"{p}attn.{n}").reshape(B, T, H, D).transpose(0, 2, 1, 3) for n in ("query", "key", "value"))
        scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(D) + np.where(mask[:, None, None, :], 0.0, -np.inf)
        w = np.exp(scores - scores.max(-1, keepdims=True))
        w = w / w.sum(-1, keepdims=True)
        return lin((w @ v).transpose(0, 2, 1, 3).reshape(B, T, H * D), p + "attn.proj")

    def mlp(h, p):
        return lin(_gelu(lin(h, p + "mlp.fc"), tanh), p + "mlp.proj")

    x = ln(sd["wte.weight"][idx] + sd["wpe.weight"][:T] + sd["wse.weight"][segments], "ln_embd")
    for i in range(cfg.n_layer):
        p = f"blocks.{i}."
        if cfg.norm == "post":
            x = ln(x + attention(x, p), p + "ln_1")
            x = ln(x + mlp(x, p), p + "ln_2")
        else:
            x = x + attention(ln(x, p + "ln_1"), p)
            x = x + mlp(ln(x, p + "ln_2"), p)
    if cfg.norm == "pre":
        x = ln(x, "ln_f")
    h = ln(_gelu(lin(x, "mlm_head.dense"), tanh), "mlm_head.ln")
    mlm = h @ sd["wte.weight"].T + sd["mlm_head.decoder.bias"]
    pooled = np.tanh(lin(x[:, 0], "pooler"))
    return mlm, lin(pooled, "classifier")


def randomise(model: BERT, seed: int = 1) -> None:
    """Non-trivial values everywhere (LayerNorm gains, biases), so no parameter can be mapped wrongly unseen."""
    rng = np.random.default_rng(seed)
    for _, p in model.named_parameters():
        p.data = (rng.standard_normal(p.shape) * 0.3).astype(p.dtype)


@pytest.mark.parametrize("norm,activation", [("post", "gelu"), ("pre", "gelu"), ("post", "gelu_tanh")])
def test_forward_matches_a_numpy_reference_in_float64(norm, activation):
    model = tiny(norm=norm, activation=activation, dropout=0.0).double().eval()
    randomise(model)
    idx, mask, segments = batch()
    mlm, cls = reference_forward(model.state_dict(), model.cfg, idx, mask, segments)
    np.testing.assert_allclose(model(idx, mask, segments).detach().numpy(), mlm, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(model.classify(idx, mask, segments).detach().numpy(), cls, rtol=1e-10, atol=1e-10)


# ----------------------------------------------------------------------------- Hugging Face
def _hf_model(model: BERT, head: str):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = hf_config(model.cfg)
    config._attn_implementation = "eager"
    cls = transformers.BertForMaskedLM if head == "mlm" else transformers.BertForSequenceClassification
    hf = cls(config).eval()
    missing, unexpected = hf.load_state_dict({k: torch.tensor(v) for k, v in to_hf_state_dict(model, head).items()},
                                             strict=False)
    assert unexpected == [] and all("position_ids" in k or "token_type_ids" in k for k in missing), missing
    return torch, hf


@pytest.mark.slow  # parity with Hugging Face transformers (B6)
@pytest.mark.torch
@pytest.mark.parametrize("head", ["mlm", "classifier"])
@pytest.mark.parametrize("activation", ["gelu", "gelu_tanh"])
def test_logits_match_hugging_face_with_copied_weights(head, activation):
    model = tiny(activation=activation).eval()
    randomise(model)
    torch, hf = _hf_model(model, head)
    idx, mask, segments = batch()
    with torch.no_grad():
        expected = hf(input_ids=torch.tensor(idx), attention_mask=torch.tensor(mask.astype(np.int64)),
                      token_type_ids=torch.tensor(segments)).logits.numpy()
    ours = model(idx, mask, segments) if head == "mlm" else model.classify(idx, mask, segments)
    assert ours.shape == expected.shape
    np.testing.assert_allclose(ours.detach().numpy(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.torch
@pytest.mark.parametrize("head", ["mlm", "classifier"])
def test_gradients_match_hugging_face_for_every_parameter(head):
    model = tiny().eval()
    randomise(model, seed=2)
    torch, hf = _hf_model(model, head)
    idx, mask, segments = batch()
    shape = (3, 9, TINY["vocab_size"]) if head == "mlm" else (3, TINY["num_labels"])
    weights = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
    out = hf(input_ids=torch.tensor(idx), attention_mask=torch.tensor(mask.astype(np.int64)),
             token_type_ids=torch.tensor(segments)).logits
    (out * torch.tensor(weights)).sum().backward()
    ours = model(idx, mask, segments) if head == "mlm" else model.classify(idx, mask, segments)
    (ours * Tensor(weights)).sum().backward()
    hf_params = dict(hf.named_parameters(remove_duplicate=False))
    covered = set()
    for name, p in model.named_parameters():
        key = to_hf_key(name)
        if key not in hf_params:
            assert name.startswith("mlm_head." if head == "classifier" else ("pooler.", "classifier.")), name
            continue
        expected = hf_params[key].grad
        assert expected is not None and p.grad is not None, name
        np.testing.assert_allclose(p.grad.numpy(), expected.numpy(), rtol=2e-4, atol=2e-5, err_msg=name)
        covered.add(id(hf_params[key]))
    assert covered == {id(p) for p in hf.parameters()}                          # every HF weight was compared


def to_hf_key(name: str) -> str:
    parts = name.split(".")
    if parts[0] == "blocks":
        return HF_KEY_MAP[".".join(["blocks", "{i}", *parts[2:]])].replace("{i}", parts[1])
    return HF_KEY_MAP[name]


def test_key_map_covers_every_parameter_and_pre_norm_is_refused():
    model = tiny()
    for name in model.state_dict():
        assert to_hf_key(name)                                      # a KeyError would fail here
    assert set(to_hf_state_dict(model, "mlm")) >= {"cls.predictions.decoder.weight", "cls.predictions.bias"}
    assert "bert.pooler.dense.weight" in to_hf_state_dict(model, "classifier")
    with pytest.raises(ValueError, match="pre-norm"):
        to_hf_state_dict(tiny(norm="pre"))
    with pytest.raises(ValueError, match="head"):
        to_hf_state_dict(model, "qa")


# ----------------------------------------------------------------------------- gradients, float64
def test_gradients_match_finite_differences_in_float64():
    model = tiny(dropout=0.0, n_layer=1).double()
    randomise(model, seed=4)
    idx, mask, segments = batch(B=2, T=6)
    labels = np.full((2, 6), -100)
    labels[0, 2], labels[1, 1], labels[1, 4] = 5, 7, 0
    class_labels = np.array([2, 0])

    def loss() -> Tensor:
        return model.loss(idx, labels, mask, segments) + model.classification_loss(idx, class_labels, mask, segments)

    model.zero_grad()
    loss().backward()
    rng = np.random.default_rng(5)
    for name, p in model.named_parameters():
        flat = p.data.reshape(-1)
        for j in rng.choice(flat.size, size=min(3, flat.size), replace=False):
            old = flat[j]
            flat[j] = old + 1e-6
            up = float(loss().item())
            flat[j] = old - 1e-6
            down = float(loss().item())
            flat[j] = old
            numeric = (up - down) / 2e-6
            analytic = float(p.grad.data.reshape(-1)[j])
            assert abs(numeric - analytic) <= 1e-7 + 1e-5 * abs(numeric), (name, j, numeric, analytic)


def test_mlm_loss_is_cross_entropy_over_the_labelled_positions_only():
    model = tiny(dropout=0.0).double()
    idx, mask, segments = batch()
    labels = np.full(idx.shape, -100)
    labels[0, [1, 4]] = [3, 9]
    labels[2, 6] = 22
    logits = model(idx, mask, segments).detach().numpy()                        # (B, T, V)
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    rows = np.nonzero(labels != -100)
    expected = -logp[rows[0], rows[1], labels[rows]].mean()
    np.testing.assert_allclose(model.loss(idx, labels, mask, segments).item(), expected, rtol=1e-12)
    full = gu.functional.cross_entropy(model(idx, mask, segments).reshape(-1, 23), labels.reshape(-1))
    np.testing.assert_allclose(full.item(), expected, rtol=1e-12)
    with pytest.raises(ValueError, match="no position has a label"):
        model.loss(idx, np.full(idx.shape, -100))


# ----------------------------------------------------------------------------- padding, hooks, shapes
def test_padding_has_no_influence_on_real_positions():
    model = tiny().eval()
    idx, mask, segments = batch()
    other = idx.copy()
    other[~mask] = (other[~mask] + 7) % 23                                     # change only the padded tokens
    a, b = model(idx, mask, segments).detach().numpy(), model(other, mask, segments).detach().numpy()
    np.testing.assert_array_equal(a[mask], b[mask])
    np.testing.assert_array_equal(model.classify(idx, mask, segments).detach().numpy(),
                                  model.classify(other, mask, segments).detach().numpy())
    assert not np.array_equal(a[~mask], b[~mask])                               # the padded positions did change


class _WrappedLinear(gu.nn.Linear):
    """Not a plain Linear (as a LoRA layer is not): the fused attention calls q, k, v one by one."""


@pytest.mark.parametrize("dropout,wrapped", [(0.0, False), (0.3, False), (0.3, True)])
def test_fused_attention_equals_the_written_out_one_with_padding_and_dropout(dropout, wrapped):
    """No hook inside the attention: one node from the projections to the merged heads; a hook there:
    scores, mask, softmax, @ v. Same loss and gradients (float64), with padded keys and, in training,
    the same attention dropout draws."""
    model = tiny(dropout=dropout).double().train()
    randomise(model, seed=3)
    if wrapped:
        for block in model.blocks:
            plain, block.attn.query = block.attn.query, _WrappedLinear(8, 8, dtype=np.float64)
            block.attn.query.load_state_dict(plain.state_dict())
    idx, mask, segments = batch()
    labels = np.where(mask & (np.arange(9)[None, :] % 3 == 0), idx, -100)

    def loss_and_grads():
        gu.manual_seed(7)
        model.zero_grad()
        loss = model.loss(idx, labels, mask, segments)
        loss.backward()
        return loss.item(), {n: p.grad.numpy().copy() for n, p in model.named_parameters() if p.grad is not None}

    seen = []
    fused_loss, fused_grads = loss_and_grads()
    with model.hooks({"blocks.*.attn.hook_pattern": lambda act, hook: seen.append(hook.name)}):
        loss, grads = loss_and_grads()
    assert seen == ["blocks.0.attn.hook_pattern", "blocks.1.attn.hook_pattern"]   # the explicit path ran
    assert loss == pytest.approx(fused_loss, rel=1e-12) and len(grads) == len(fused_grads) > 20
    for name, g in grads.items():
        np.testing.assert_allclose(fused_grads[name], g, rtol=1e-9, atol=1e-12, err_msg=name)


def test_hook_points_are_named_by_module_path_with_the_documented_shapes():
    model = tiny().eval()
    idx, mask, segments = batch(B=2, T=7)
    logits, cache = model.run_with_cache(idx, mask, segments)
    B, T, C, H, D = 2, 7, 8, 2, 4
    expected = {"hook_embed": (B, T, C)}
    for i in range(2):
        for name in ("hook_resid_pre", "hook_resid_mid", "hook_resid_post"):
            expected[f"blocks.{i}.{name}"] = (B, T, C)
        for name in ("hook_q", "hook_k", "hook_v", "hook_z"):
            expected[f"blocks.{i}.attn.{name}"] = (B, H, T, D)
        expected[f"blocks.{i}.attn.hook_pattern"] = (B, H, T, T)
        expected[f"blocks.{i}.attn.hook_result"] = (B, T, C)
        expected[f"blocks.{i}.mlp.hook_pre"] = expected[f"blocks.{i}.mlp.hook_post"] = (B, T, 4 * C)
    assert {k: tuple(v.shape) for k, v in cache.items()} == expected
    pattern = cache["blocks.0.attn.hook_pattern"].numpy()
    np.testing.assert_allclose(pattern.sum(-1), 1.0, rtol=1e-6)
    assert np.all(pattern[1, :, :, ~mask[1]] == 0)                              # padded keys get no weight
    features = model.features(idx, mask, segments).detach().numpy()
    # without hooks the attention runs as one node (tested equal in float64 below): float32 rounding apart
    np.testing.assert_allclose(cache["blocks.1.hook_resid_post"].numpy(), features, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(logits.numpy(), model(idx, mask, segments).detach().numpy(), rtol=1e-5, atol=1e-6)


def test_a_hook_can_replace_an_activation_and_is_gone_after_the_block():
    model = tiny().eval()
    idx, mask, segments = batch()
    before = model.classify(idx, mask, segments).detach().numpy()
    with model.hooks({"blocks.*.attn.hook_result": lambda act, hook: act * 0.0}):
        ablated = model.classify(idx, mask, segments).detach().numpy()
    after = model.classify(idx, mask, segments).detach().numpy()
    assert not np.allclose(before, ablated)
    np.testing.assert_array_equal(before, after)
    assert all(not p._fns for p in model.hook_points().values())


def test_shapes_tied_weights_and_a_tiny_batch_is_learned():
    model = tiny(dropout=0.0, n_embd=16)
    assert model.mlm_head.decoder.weight is model.wte.weight
    idx, mask, segments = batch(B=4, T=8)
    assert model(idx).shape == (4, 8, 23) and model.classify(idx).shape == (4, 3)
    assert model.features(idx, mask).shape == (4, 8, 16) and model.pooled(idx).shape == (4, 16)
    labels = np.array([0, 1, 2, 1])
    optimizer = gu.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(150):
        loss = model.classification_loss(idx, labels, mask)
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert first > 0.9 and loss.item() < 0.05
    assert list(model.classify(idx, mask).detach().numpy().argmax(1)) == list(labels)


@pytest.mark.slow  # parity with Hugging Face transformers (B6)
@pytest.mark.torch
def test_training_follows_hugging_face_step_for_step():
    """20 Adam steps on the classification loss from equal weights: the same losses as transformers."""
    model = tiny(dropout=0.0)
    torch, hf = _hf_model(model, "classifier")
    idx, mask, _ = batch(B=4, T=8)
    labels = np.array([0, 1, 2, 1])
    ours_opt = gu.optim.Adam(model.parameters(), lr=3e-3)
    hf_opt = torch.optim.Adam(hf.parameters(), lr=3e-3)
    ours, theirs = [], []
    for _ in range(20):
        loss = model.classification_loss(idx, labels, mask)
        ours_opt.zero_grad()
        loss.backward()
        ours_opt.step()
        ours.append(loss.item())
        out = hf(input_ids=torch.tensor(idx), attention_mask=torch.tensor(mask.astype(np.int64)),
                 labels=torch.tensor(labels))
        hf_opt.zero_grad()
        out.loss.backward()
        hf_opt.step()
        theirs.append(out.loss.item())
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)
    assert ours[-1] < ours[0] - 0.2


def test_state_dict_round_trip_and_reset_classifier():
    model = tiny().eval()
    idx, mask, segments = batch()
    copy = BERT(model.cfg).eval()
    copy.load_state_dict(model.state_dict())
    np.testing.assert_array_equal(copy(idx, mask).detach().numpy(), model(idx, mask).detach().numpy())
    model.reset_classifier(5)
    assert model.classify(idx, mask).shape == (3, 5)


def test_config_and_input_errors_name_the_problem():
    with pytest.raises(ValueError, match="divisible"):
        BERTConfig(vocab_size=10, n_embd=10, n_head=3)
    with pytest.raises(ValueError, match="norm"):
        BERTConfig(vocab_size=10, norm="middle")
    with pytest.raises(ValueError, match="activation"):
        BERTConfig(vocab_size=10, activation="relu")
    model = tiny(type_vocab_size=0)
    assert model.wse is None and model(np.zeros((1, 4), dtype=np.int64)).shape == (1, 4, 23)
    with pytest.raises(IndexError, match="outside the vocabulary"):
        model(np.array([[1, 23]]))
    with pytest.raises(ValueError, match="block_size"):
        model(np.zeros((1, 13), dtype=np.int64))
    with pytest.raises(ValueError, match="attention_mask"):
        model(np.zeros((2, 4), dtype=np.int64), attention_mask=np.ones((2, 5), dtype=bool))
