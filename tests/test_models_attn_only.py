"""AttnOnlyLM: config checks, PyTorch parity with copied weights (logits, loss, every parameter's
gradient, attention maps), no MLP anywhere, causality, attention rows summing to 1, and clear errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

import groundup as gu
from groundup.models import AttnOnlyConfig, AttnOnlyLM

TINY = dict(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=8)


def tiny(**overrides) -> AttnOnlyLM:
    gu.manual_seed(0)
    return AttnOnlyLM(AttnOnlyConfig(**{**TINY, **overrides}))


def tokens(shape, vocab=11, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, shape)


def perturb_weights(model: AttnOnlyLM, seed: int = 1, scale: float = 0.3) -> AttnOnlyLM:
    """Random values for every parameter (LayerNorm weights around 1), so no term hides behind 0 or 1."""
    rng = np.random.default_rng(seed)
    with gu.no_grad():
        for name, p in model.named_parameters():
            offset = 1.0 if name.endswith((".ln.weight", "ln_f.weight")) else 0.0
            p.data[...] = rng.standard_normal(p.shape) * scale + offset
    return model


# ----------------------------------------------------------------------------- a PyTorch reference
def torch_reference(torch, cfg: AttnOnlyConfig):
    """The same model written directly in PyTorch, with groundup's parameter names; ``maps`` keeps the weights."""
    nn = torch.nn
    C, H = cfg.n_embd, cfg.n_head

    def norm():
        return nn.LayerNorm(C) if cfg.norm else nn.Identity()

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = nn.Linear(C, 3 * C, bias=False)
            self.proj = nn.Linear(C, C, bias=False)

        def forward(self, x, maps):
            B, T, _ = x.shape
            q, k, v = self.qkv(x).split(C, dim=2)
            q, k, v = (t.view(B, T, H, C // H).transpose(1, 2) for t in (q, k, v))
            att = q @ k.transpose(-2, -1) / math.sqrt(C // H)
            att = att.masked_fill(~torch.tril(torch.ones(T, T, dtype=torch.bool)), float("-inf")).softmax(dim=-1)
            maps.append(att)
            return self.proj((att @ v).transpose(1, 2).reshape(B, T, C))

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln, self.attn = norm(), Attention()

        def forward(self, x, maps):
            return x + self.attn(self.ln(x), maps)

    class Reference(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte = nn.Embedding(cfg.vocab_size, C)
            if cfg.pos_encoding == "learned":
                self.wpe = nn.Embedding(cfg.block_size, C)
            self.blocks = nn.ModuleList([Block() for _ in range(cfg.n_layer)])
            self.ln_f = norm()
            self.unembed = nn.Linear(C, cfg.vocab_size, bias=False)
            self.maps = []

        def forward(self, idx):
            self.maps = []
            x = self.wte(idx)
            if cfg.pos_encoding == "learned":
                x = x + self.wpe(torch.arange(idx.shape[1]))
            for block in self.blocks:
                x = block(x, self.maps)
            return self.unembed(self.ln_f(x))

    return Reference()


@pytest.mark.torch
@pytest.mark.parametrize("overrides", [{}, {"norm": False}, {"n_layer": 1, "n_head": 4}, {"pos_encoding": "none"}])
def test_matches_torch_with_copied_weights(overrides):
    torch = pytest.importorskip("torch")
    model = perturb_weights(tiny(**overrides)).double()
    ref = torch_reference(torch, model.cfg).double()
    ref.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})  # strict: same names
    idx, targets = tokens((3, 7)), tokens((3, 7), seed=4)

    logits = model(idx)
    ref_logits = ref(torch.from_numpy(idx))
    assert logits.shape == (3, 7, 11)
    np.testing.assert_allclose(logits.detach().numpy(), ref_logits.detach().numpy(), rtol=1e-10, atol=1e-12)
    maps = model.attention_maps(idx)
    assert maps.shape == (model.cfg.n_layer, 3, model.cfg.n_head, 7, 7)
    np.testing.assert_allclose(maps, np.stack([m.detach().numpy() for m in ref.maps]), rtol=1e-10, atol=1e-12)

    loss = model.loss(idx, targets)
    ref_loss = torch.nn.functional.cross_entropy(ref_logits.reshape(-1, 11), torch.from_numpy(targets).reshape(-1))
    assert abs(loss.item() - ref_loss.item()) < 1e-10
    loss.backward()
    ref_loss.backward()
    ref_params = dict(ref.named_parameters())
    assert sorted(ref_params) == sorted(n for n, _ in model.named_parameters())
    for name, p in model.named_parameters():
        np.testing.assert_allclose(p.grad.numpy(), ref_params[name].grad.numpy(), rtol=1e-8, atol=1e-12,
                                   err_msg=name)


def test_only_attention_no_mlp():
    names = [n for n, _ in tiny().named_parameters()]
    assert names == ["wte.weight", "wpe.weight", "blocks.0.ln.weight", "blocks.0.ln.bias", "blocks.0.attn.qkv.weight",
                     "blocks.0.attn.proj.weight", "blocks.1.ln.weight", "blocks.1.ln.bias", "blocks.1.attn.qkv.weight",
                     "blocks.1.attn.proj.weight", "ln_f.weight", "ln_f.bias", "unembed.weight"]
    assert tiny().num_parameters() == 11 * 8 + 8 * 8 + 2 * (2 * 8 + 3 * 64 + 64) + 2 * 8 + 8 * 11
    assert "wpe.weight" not in dict(tiny(pos_encoding="none").named_parameters())


def test_changing_a_token_never_changes_earlier_logits_or_attention():
    model = perturb_weights(tiny())
    idx = tokens((2, 8))
    base, base_maps = model(idx).detach().numpy(), model.attention_maps(idx)
    for t in range(8):
        changed = idx.copy()
        changed[:, t] = (changed[:, t] + 1 + t) % 11
        out, maps = model(changed).detach().numpy(), model.attention_maps(changed)
        np.testing.assert_array_equal(out[:, :t], base[:, :t])       # exactly: masked weights are exp(-inf) = 0
        np.testing.assert_array_equal(maps[..., :t, :], base_maps[..., :t, :])
        assert not np.allclose(out[:, t], base[:, t])


def test_attention_rows_sum_to_one_and_never_look_ahead():
    model = perturb_weights(tiny(n_head=4), scale=1.0)
    maps = model.attention_maps(tokens((3, 8)))
    assert isinstance(maps, np.ndarray) and maps.shape == (2, 3, 4, 8, 8)
    np.testing.assert_allclose(maps.sum(-1), 1.0, rtol=1e-5)
    assert np.all(maps[..., np.triu_indices(8, k=1)[0], np.triu_indices(8, k=1)[1]] == 0.0)
    np.testing.assert_allclose(maps[..., 0, 0], 1.0)                  # position 0 can only read itself
    assert maps.min() >= 0.0


def test_trains_on_one_batch():
    model = tiny()
    opt = gu.optim.Adam(model.parameters(), lr=1e-2)
    idx, targets = tokens((4, 8)), tokens((4, 8), seed=2)
    first = model.loss(idx, targets).item()
    for _ in range(60):
        loss = model.loss(idx, targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert first > 2.0 and loss.item() < 0.5 * first


@pytest.mark.parametrize("field,value", [("vocab_size", 0), ("block_size", -1), ("n_layer", 0), ("n_head", 1.5),
                                         ("n_embd", True), ("n_head", 3), ("pos_encoding", "rotary"),
                                         ("norm", "yes")])
def test_config_errors(field, value):
    with pytest.raises(ValueError, match=field if field != "n_head" or value != 3 else "divisible"):
        AttnOnlyConfig(**{**TINY, field: value})


def test_input_errors():
    model = tiny()
    with pytest.raises(TypeError, match="AttnOnlyConfig"):
        AttnOnlyLM(TINY)
    with pytest.raises(TypeError, match="integer"):
        model(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        model(np.zeros(3, dtype=np.int64))
    with pytest.raises(ValueError, match="block_size 8"):
        model(np.zeros((1, 9), dtype=np.int64))
    with pytest.raises(IndexError, match="token id 11"):
        model(np.full((1, 4), 11))
    with pytest.raises(IndexError, match="token id -1"):
        model.attention_maps(np.full((1, 4), -1))
    with pytest.raises(ValueError, match="do not match"):
        model.loss(tokens((2, 4)), tokens((2, 5)))
    with pytest.raises(TypeError, match="targets"):
        model.loss(tokens((2, 4)), np.zeros((2, 4)))
