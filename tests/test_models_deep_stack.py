"""DeepStackLM: config checks, PyTorch parity with copied weights for the four (residual, norm)
variants, finite differences in float64, what each switch does (zeroed branches), causality,
layer_grad_norms and clear errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import check_grad

import groundup as gu
from groundup.models import DeepStackConfig, DeepStackLM

VARIANTS = [(True, True), (True, False), (False, True), (False, False)]   # (residual, norm)
TINY = dict(vocab_size=11, block_size=8, n_layer=3, n_head=2, n_embd=8)


def tiny(**overrides) -> DeepStackLM:
    gu.manual_seed(0)
    return DeepStackLM(DeepStackConfig(**{**TINY, **overrides}))


def tokens(shape, vocab=11, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, shape)


def perturb_weights(model: DeepStackLM, seed: int = 1, scale: float = 0.3) -> DeepStackLM:
    """Random values for every parameter (LayerNorm weights around 1), so no term hides behind 0 or 1."""
    rng = np.random.default_rng(seed)
    with gu.no_grad():
        for name, p in model.named_parameters():
            offset = 1.0 if ".ln_" in f".{name}" and name.endswith("weight") else 0.0
            p.data[...] = rng.standard_normal(p.shape) * scale + offset
    return model


# ----------------------------------------------------------------------------- a PyTorch reference
def torch_reference(torch, cfg: DeepStackConfig):
    """The same model written directly in PyTorch (attention by hand), with groundup's parameter names."""
    nn, tF = torch.nn, torch.nn.functional
    C, H = cfg.n_embd, cfg.n_head

    def norm():
        return nn.LayerNorm(C, bias=cfg.bias) if cfg.norm else nn.Identity()

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = nn.Linear(C, 3 * C, bias=cfg.bias)
            self.proj = nn.Linear(C, C, bias=cfg.bias)

        def forward(self, x):
            B, T, _ = x.shape
            q, k, v = self.qkv(x).split(C, dim=2)
            q, k, v = (t.view(B, T, H, C // H).transpose(1, 2) for t in (q, k, v))
            att = q @ k.transpose(-2, -1) / math.sqrt(C // H)
            if cfg.causal:
                att = att.masked_fill(~torch.tril(torch.ones(T, T, dtype=torch.bool)), float("-inf"))
            y = att.softmax(dim=-1) @ v
            return self.proj(y.transpose(1, 2).reshape(B, T, C))

    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(C, 4 * C, bias=cfg.bias)
            self.proj = nn.Linear(4 * C, C, bias=cfg.bias)

        def forward(self, x):
            return self.proj(tF.gelu(self.fc(x), approximate="tanh"))

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1, self.attn, self.ln_2, self.mlp = norm(), Attention(), norm(), MLP()

        def forward(self, x):
            a = self.attn(self.ln_1(x))
            x = x + a if cfg.residual else a
            m = self.mlp(self.ln_2(x))
            return x + m if cfg.residual else m

    class Reference(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte = nn.Embedding(cfg.vocab_size, C)
            self.wpe = nn.Embedding(cfg.block_size, C)
            self.blocks = nn.ModuleList([Block() for _ in range(cfg.n_layer)])
            self.ln_f = norm()
            self.lm_head = nn.Linear(C, cfg.vocab_size, bias=False)

        def forward(self, idx):
            x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
            for block in self.blocks:
                x = block(x)
            return self.lm_head(self.ln_f(x))

    return Reference()


@pytest.mark.torch
@pytest.mark.parametrize("residual,norm", VARIANTS)
def test_matches_torch_with_copied_weights(residual, norm):
    torch = pytest.importorskip("torch")
    bias = residual != norm                                  # biases on for two of the four variants
    model = perturb_weights(tiny(residual=residual, norm=norm, bias=bias)).double()
    ref = torch_reference(torch, model.cfg).double()
    ref.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})  # strict: same names
    idx, targets = tokens((3, 8)), tokens((3, 8), seed=4)

    logits = model(idx)
    ref_logits = ref(torch.from_numpy(idx))
    np.testing.assert_allclose(logits.detach().numpy(), ref_logits.detach().numpy(), rtol=1e-10, atol=1e-12)
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


# ----------------------------------------------------------------------------- finite differences
@pytest.mark.parametrize("residual,norm", [(True, True), (False, False)])
def test_parameter_gradients_match_finite_differences(residual, norm):
    """d loss / d (a position table, block 0's qkv weight, the last MLP's output projection), float64."""
    model = perturb_weights(tiny(n_layer=2, n_embd=4, block_size=3, residual=residual, norm=norm, bias=True),
                            scale=0.5).double()
    idx, targets = tokens((2, 3)), tokens((2, 3), seed=1)
    owners = [(model.wpe, "weight"), (model.blocks[0].attn.qkv, "weight"), (model.blocks[-1].mlp.proj, "weight")]
    if norm:
        owners.append((model.blocks[1].ln_2, "weight"))

    def fn(*tensors):
        saved = [module._parameters[attr] for module, attr in owners]
        try:
            for (module, attr), t in zip(owners, tensors):
                module._parameters[attr] = t                  # differentiate the loss with respect to t
            return model.loss(idx, targets)
        finally:
            for (module, attr), p in zip(owners, saved):
                module._parameters[attr] = p

    check_grad(fn, *[getattr(module, attr).detach().numpy().copy() for module, attr in owners])


# ----------------------------------------------------------------------------- the switches
@pytest.mark.parametrize("residual,norm", VARIANTS)
def test_switches_do_what_they_say(residual, norm):
    """With every branch's output projection zeroed, each sub-layer adds 0: a residual stack is the
    identity (logits = head(ln_f(embeddings))) and a plain stack outputs 0 (logits = head(ln_f(0)))."""
    model = perturb_weights(tiny(residual=residual, norm=norm, bias=True)).double()
    with gu.no_grad():
        for block in model.blocks:
            for layer in (block.attn.proj, block.mlp.proj):
                layer.weight.data[...] = 0.0
                layer.bias.data[...] = 0.0
    assert [type(m).__name__ for m in (model.blocks[0].ln_1, model.blocks[0].ln_2, model.ln_f)] == \
        (["LayerNorm"] * 3 if norm else ["Identity"] * 3)
    idx = tokens((2, 8))
    sd = model.state_dict()
    x = sd["wte.weight"][idx] + sd["wpe.weight"][:8] if residual else np.zeros((2, 8, 8))
    if norm:
        mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        x = (x - mean) / np.sqrt(var + 1e-5) * sd["ln_f.weight"] + sd["ln_f.bias"]
    np.testing.assert_allclose(model(idx).detach().numpy(), x @ sd["lm_head.weight"].T, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("residual,norm", VARIANTS)
def test_changing_a_token_never_changes_earlier_logits(residual, norm):
    model = perturb_weights(tiny(residual=residual, norm=norm))
    idx = tokens((2, 8))
    base = model(idx).detach().numpy()
    for t in range(8):
        changed = idx.copy()
        changed[:, t] = (changed[:, t] + 1 + t) % 11
        out = model(changed).detach().numpy()
        np.testing.assert_array_equal(out[:, :t], base[:, :t])       # exactly: masked weights are exp(-inf) = 0
        assert not np.allclose(out[:, t], base[:, t])


def test_without_the_causal_mask_later_tokens_change_earlier_logits():
    model = perturb_weights(tiny(causal=False))
    idx = tokens((2, 8))
    changed = idx.copy()
    changed[:, -1] = (changed[:, -1] + 1) % 11
    assert not np.allclose(model(changed).detach().numpy()[:, 0], model(idx).detach().numpy()[:, 0])


# ----------------------------------------------------------------------------- layer_grad_norms
@pytest.mark.parametrize("residual,norm", VARIANTS)
def test_layer_grad_norms_are_each_blocks_gradient_norm(residual, norm):
    model = perturb_weights(tiny(residual=residual, norm=norm), scale=0.2)
    with pytest.raises(RuntimeError, match="backward"):
        model.layer_grad_norms()
    model.loss(tokens((2, 8)), tokens((2, 8), seed=3)).backward()
    norms = model.layer_grad_norms()
    assert len(norms) == model.cfg.n_layer
    assert all(isinstance(n, float) and math.isfinite(n) and n > 0 for n in norms)
    for i, n in enumerate(norms):
        grads = [p.grad.numpy().astype(np.float64) for name, p in model.named_parameters()
                 if name.startswith(f"blocks.{i}.")]
        assert abs(n - math.sqrt(sum(float((g**2).sum()) for g in grads))) <= 1e-6 * n


def test_without_residual_or_norm_the_blocks_get_almost_no_gradient():
    """At nanoGPT's init, a plain 8-block stack shrinks the signal at every block and passes almost
    no gradient to any block; with residuals and layer norm every depth gets a gradient of similar size."""
    idx, targets = tokens((2, 16), vocab=11), tokens((2, 16), vocab=11, seed=1)
    norms = {}
    for residual, norm in [(True, True), (False, False)]:
        model = tiny(n_layer=8, block_size=16, n_embd=16, residual=residual, norm=norm)
        model.loss(idx, targets).backward()
        norms[residual, norm] = model.layer_grad_norms()
    full, plain = norms[True, True], norms[False, False]
    assert max(full) / min(full) < 3                                # every depth gets a gradient
    assert max(plain) < 1e-6 * min(full)


# ----------------------------------------------------------------------------- contracts and errors
def test_shapes_init_and_initial_loss():
    model = DeepStackLM(DeepStackConfig(vocab_size=11))
    cfg = model.cfg
    assert (cfg.block_size, cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.residual, cfg.norm, cfg.bias, cfg.causal) == \
        (64, 8, 4, 64, True, True, False, True)
    params = dict(model.named_parameters())
    assert params["blocks.0.mlp.proj.weight"].shape == (64, 256)
    assert abs(params["blocks.0.attn.qkv.weight"].detach().numpy().std() - 0.02) < 0.002
    assert abs(params["blocks.7.mlp.proj.weight"].detach().numpy().std() - 0.02 / 4) < 0.0005
    np.testing.assert_array_equal(params["ln_f.weight"].detach().numpy(), 1.0)
    logits = model(tokens((2, 5)))
    assert logits.shape == (2, 5, 11) and logits.dtype == gu.float32
    assert abs(model.loss(tokens((4, 32)), tokens((4, 32), seed=1)).item() - math.log(11)) < 0.1
    assert not any(".ln_" in n for n, _ in DeepStackLM(DeepStackConfig(vocab_size=11, norm=False)).named_parameters())


def test_config_errors_are_clear():
    with pytest.raises(ValueError, match="divisible"):
        DeepStackConfig(vocab_size=11, n_embd=10, n_head=4)
    with pytest.raises(ValueError, match="n_layer"):
        DeepStackConfig(vocab_size=11, n_layer=0)
    with pytest.raises(ValueError, match="vocab_size"):
        DeepStackConfig(vocab_size=2.5)
    with pytest.raises(ValueError, match="residual"):
        DeepStackConfig(vocab_size=11, residual="no")
    with pytest.raises(TypeError, match="DeepStackConfig"):
        DeepStackLM(dict(vocab_size=11))


def test_input_errors_are_clear():
    model = tiny()
    with pytest.raises(IndexError, match="token id 11 .* outside the vocabulary 0..10"):
        model(np.array([[1, 11]]))
    with pytest.raises(IndexError, match="token id -1"):
        model(np.array([[-1, 2]]))
    with pytest.raises(ValueError, match=r"\(1, 9\).*block_size 8"):
        model(np.zeros((1, 9), dtype=np.int64))
    with pytest.raises(TypeError, match="integer token ids.*float"):
        model(np.zeros((1, 4)))
    with pytest.raises(ValueError, match=r"shape \(B, T\), got \(4,\)"):
        model(np.zeros(4, dtype=np.int64))
    with pytest.raises(ValueError, match=r"targets of shape \(2, 3\) do not match idx of shape \(2, 4\)"):
        model.loss(tokens((2, 4)), tokens((2, 3)))
    with pytest.raises(TypeError, match="targets"):
        model.loss(tokens((2, 4)), np.zeros((2, 4)))
