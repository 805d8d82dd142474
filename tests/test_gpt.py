"""GPT and its fused twin FastGPT: config, parameter names and init, the fused stack against finite
differences, both classes against PyTorch with copied weights and a picoGPT-style NumPy reference; the
transformer's claims (causality, padding, permutation); KV-cache generation; save/load; errors.
(Readable == fast, hooks and the scoped threads: tests/test_gpt_twins.py.)"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
from helpers import check_grad

import groundup as gu
from groundup.models.gpt import GPT, GPTConfig
from groundup.models.gpt_decode import KVDecoder, sample_next
from groundup.models.gpt_fast import PARAM_NAMES, FastGPT, LMHeadLoss, TransformerStack
from groundup.nn.positional import RotaryEmbedding

TINY = dict(vocab_size=13, block_size=8, n_layer=2, n_head=2, n_embd=16)


BOTH = pytest.mark.parametrize("cls", [GPT, FastGPT], ids=["readable", "fast"])


def tiny(cls: type[GPT] = GPT, **overrides) -> GPT:
    gu.manual_seed(0)
    return cls(GPTConfig(**{**TINY, **overrides}))


def tokens(shape, vocab=13, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, shape)


def perturb_weights(model: GPT, seed: int = 1) -> GPT:
    """Give every parameter (LayerNorm and biases too) random values, so no term hides behind 0 or 1."""
    rng = np.random.default_rng(seed)
    with gu.no_grad():
        for _, p in model.named_parameters():
            p.data[...] = (rng.standard_normal(p.shape) * 0.3 + (1.0 if p.ndim == 1 and "ln" in _ else 0.0))
    return model


def load_torch_reference():
    """benchmarks/torch_gpt.py (the PyTorch GPT with groundup's parameter names), imported by path."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "torch_gpt.py"
    spec = importlib.util.spec_from_file_location("torch_gpt", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------- picoGPT-style reference
def _ref_layer_norm(x, w, b, eps=1e-5):
    mean = x.mean(-1, keepdims=True)
    var = x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * w + (0 if b is None else b)


def _ref_gelu(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def _ref_rotate(x, positions, base=10000.0):
    """RoPE written pairwise: dims (i, i + D/2) rotate by angle pos * base^(-2i/D)."""
    d = x.shape[-1]
    out = x.copy()
    for i in range(d // 2):
        theta = positions * base ** (-2 * i / d)
        a, b = x[..., i], x[..., i + d // 2]
        out[..., i] = a * np.cos(theta) - b * np.sin(theta)
        out[..., i + d // 2] = b * np.cos(theta) + a * np.sin(theta)
    return out


def _ref_linear(x, g, name):
    bias = g.get(f"{name}.bias")
    return x @ g[f"{name}.weight"].T + (0 if bias is None else bias)


def _ref_attention(h, g, prefix, cfg, pos, allowed):
    q, k, v = np.split(_ref_linear(h, g, f"{prefix}.attn.qkv"), 3, axis=-1)
    D = cfg.n_embd // cfg.n_head
    heads = []
    for hd in range(cfg.n_head):
        qh, kh, vh = (m[:, hd * D:(hd + 1) * D] for m in (q, k, v))
        if cfg.pos_encoding == "rotary":
            qh, kh = _ref_rotate(qh, pos), _ref_rotate(kh, pos)
        s = np.where(allowed, qh @ kh.T / math.sqrt(D), -np.inf)
        s = np.exp(s - s.max(-1, keepdims=True))
        heads.append(s / s.sum(-1, keepdims=True) @ vh)
    return _ref_linear(np.concatenate(heads, axis=-1), g, f"{prefix}.attn.proj")


def _ref_mlp(h, g, prefix):
    return _ref_linear(_ref_gelu(_ref_linear(h, g, f"{prefix}.mlp.fc")), g, f"{prefix}.mlp.proj")


def reference_forward(sd: dict, cfg: GPTConfig, idx: np.ndarray, causal: bool = True, window: int | None = None,
                      key_mask: np.ndarray | None = None) -> np.ndarray:
    """picoGPT-style forward in float64, one sequence at a time, heads in a Python loop.

    ``window``: each position attends only to the last ``window`` positions (itself included);
    positions are absolute (so T may exceed block_size for rotary / none).
    """
    g = {k: v.astype(np.float64) for k, v in sd.items()}
    C = cfg.n_embd
    out = []
    for b, seq in enumerate(idx):
        T = len(seq)
        pos = np.arange(T)
        x = g["wte.weight"][seq]
        if cfg.pos_encoding == "learned":
            x = x + g["wpe.weight"][pos]
        elif cfg.pos_encoding == "sinusoidal":
            pe = np.zeros((T, C))
            for i in range(0, C, 2):
                pe[:, i] = np.sin(pos / 10000 ** (i / C))
                pe[:, i + 1] = np.cos(pos / 10000 ** (i / C))
            x = x + pe
        allowed = np.ones((T, T), dtype=bool)
        if causal:
            allowed &= np.tril(allowed)
        if window is not None:
            allowed &= np.triu(np.ones((T, T), dtype=bool), -(window - 1))
        if key_mask is not None:
            allowed &= key_mask[b][None, :]
        for layer in range(cfg.n_layer):
            pre = f"blocks.{layer}"
            ln1 = (g[f"{pre}.ln_1.weight"], g.get(f"{pre}.ln_1.bias"))
            ln2 = (g[f"{pre}.ln_2.weight"], g.get(f"{pre}.ln_2.bias"))
            if cfg.norm == "pre":
                x = x + _ref_attention(_ref_layer_norm(x, *ln1), g, pre, cfg, pos, allowed)
                x = x + _ref_mlp(_ref_layer_norm(x, *ln2), g, pre)
            else:
                x = _ref_layer_norm(x + _ref_attention(x, g, pre, cfg, pos, allowed), *ln1)
                x = _ref_layer_norm(x + _ref_mlp(x, g, pre), *ln2)
        x = _ref_layer_norm(x, g["ln_f.weight"], g.get("ln_f.bias"))
        out.append(x @ g["lm_head.weight"].T)
    return np.stack(out)


# ----------------------------------------------------------------------------- config
def test_presets_and_validation():
    baby = GPTConfig.preset("baby")
    assert (baby.n_layer, baby.n_head, baby.n_embd, baby.block_size) == (4, 4, 128, 64)
    small = GPTConfig.preset("small", vocab_size=100)
    assert (small.n_layer, small.n_head, small.n_embd, small.block_size, small.vocab_size) == (6, 6, 384, 256, 100)
    with pytest.raises(ValueError, match="unknown GPT preset"):
        GPTConfig.preset("huge")
    bad = [dict(n_embd=10, n_head=4), dict(dropout=1.0), dict(pos_encoding="alibi"), dict(norm="sandwich"),
           dict(n_layer=0), dict(vocab_size=2.5), dict(bias="yes"), dict(n_embd=12, n_head=4, pos_encoding="rotary")]
    for overrides in bad:
        with pytest.raises(ValueError, match="GPTConfig"):
            GPTConfig(**{**TINY, **overrides})
    with pytest.raises(dataclasses.FrozenInstanceError):
        baby.n_layer = 3
    assert GPTConfig.from_dict(baby.to_dict()) == baby
    with pytest.raises(ValueError, match="unknown fields"):
        GPTConfig.from_dict({**baby.to_dict(), "n_layers": 3})


def test_parameter_names_tying_and_init():
    assert GPTConfig.preset("baby").pos_encoding == "rotary"
    assert GPT(GPTConfig.preset("baby")).num_parameters() == 804_096 - 64 * 128   # no position table
    model = GPT(GPTConfig.preset("baby", pos_encoding="learned"))
    keys = list(model.state_dict())
    for key in ("wte.weight", "wpe.weight", "blocks.0.ln_1.weight", "blocks.0.attn.qkv.weight",
                "blocks.0.attn.proj.weight", "blocks.3.mlp.fc.weight", "blocks.3.mlp.proj.weight", "ln_f.weight",
                "lm_head.weight"):
        assert key in keys
    assert model.lm_head.weight is model.wte.weight
    assert model.num_parameters() == 804_096  # nanoGPT's baby (bias=False), wpe included
    untied = GPT(GPTConfig(**TINY, tie_weights=False))
    assert untied.lm_head.weight is not untied.wte.weight
    sd = model.state_dict()
    assert abs(sd["blocks.0.attn.qkv.weight"].std() - 0.02) < 0.002
    assert abs(sd["blocks.0.mlp.proj.weight"].std() - 0.02 / math.sqrt(8)) < 0.001
    assert not GPT(GPTConfig(**TINY)).state_dict()["blocks.0.mlp.fc.bias"].any() and (sd["ln_f.weight"] == 1).all()
    assert "wpe.weight" not in GPT(GPTConfig(**TINY, pos_encoding="rotary")).state_dict()
    assert "blocks.0.attn.qkv.bias" not in GPT(GPTConfig(**TINY, bias=False)).state_dict()


def test_shapes_dtype_and_initial_loss():
    model = tiny()
    idx = tokens((3, 8))
    logits = model(idx)
    assert logits.shape == (3, 8, 13) and logits.dtype == gu.float32
    loss = model.loss(idx, tokens((3, 8), seed=1))
    assert abs(loss.item() - math.log(13)) < 0.05  # N(0, 0.02) init: near-uniform predictions
    assert model(idx[:, :3]).shape == (3, 3, 13)


@BOTH
def test_errors_are_clear(cls):
    model = tiny(cls)
    with pytest.raises(IndexError, match="token id 13 .* outside the vocabulary"):
        model(np.array([[1, 13]]))
    with pytest.raises(IndexError, match="token id -1"):
        model(np.array([[-1, 2]]))
    with pytest.raises(ValueError, match="sequence length 9 > block_size 8"):
        model(tokens((1, 9)))
    with pytest.raises(TypeError, match="integer token ids"):
        model(np.zeros((1, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=r"shape \(B, T\)"):
        model(np.array([1, 2, 3]))
    with pytest.raises(ValueError, match=r"\(1, 0\); need T >= 1"):      # no tokens: refused before the attention
        model(np.zeros((1, 0), dtype=np.int64))
    assert model(np.zeros((0, 3), dtype=np.int64)).shape == (0, 3, 13)   # an empty batch is fine
    with pytest.raises(IndexError, match="outside"):
        model.generate(np.array([[0, 99]]), 2)
    with pytest.raises(ValueError, match="top_p"):
        model.generate(np.array([[0]]), 2, top_p=0.0)
    with pytest.raises(ValueError, match="attention_mask"):
        model(tokens((2, 4)), attention_mask=np.ones((2, 5), bool))


# ----------------------------------------------------------------------------- the fused block
@pytest.mark.parametrize("norm,bias,rotary,masked,causal", [
    ("pre", True, False, False, True), ("post", False, True, True, True), ("pre", True, True, True, False),
    ("post", True, False, False, False)])
@pytest.mark.parametrize("complex_rope", [True, False])
def test_fused_block_matches_finite_differences(monkeypatch, norm, bias, rotary, masked, causal, complex_rope):
    from groundup.models import gpt_fast

    monkeypatch.setattr(gpt_fast, "COMPLEX_ROPE", complex_rope)        # rotary as a complex multiply, or real
    B, T, C, H = 2, 3, 8, 2
    shapes = {"ln_1.weight": (C,), "ln_1.bias": (C,), "attn.qkv.weight": (3 * C, C), "attn.qkv.bias": (3 * C,),
              "attn.proj.weight": (C, C), "attn.proj.bias": (C,), "ln_2.weight": (C,), "ln_2.bias": (C,),
              "mlp.fc.weight": (4 * C, C), "mlp.fc.bias": (4 * C,), "mlp.proj.weight": (C, 4 * C),
              "mlp.proj.bias": (C,)}
    names = PARAM_NAMES if bias else PARAM_NAMES[0::2]
    rotary_tables = RotaryEmbedding(C // H, T, dtype=np.float64)
    rope = (rotary_tables.cos_cached.data, rotary_tables.sin_cached.data) if rotary else None
    mask = None
    if masked:
        keys = np.array([[True, False, True], [True, True, True]])
        mask = keys[:, None, None, :] & (np.tril(np.ones((T, T), bool)) if causal else True)   # (B, 1, T, T)

    def fn(x, *params):
        return TransformerStack.apply(x, *params, n_head=H, pre_norm=norm == "pre", rope=rope, mask=mask,
                                      causal=causal, has_bias=bias)

    arrays = [np.random.standard_normal((B, T, C))] + [np.random.standard_normal(shapes[n]) * 0.5 for n in names]
    check_grad(fn, *arrays, rtol=1e-5, atol=1e-7)


@BOTH
def test_dropout_is_seeded_and_off_in_eval(cls):
    model = tiny(cls, dropout=0.3)
    idx = tokens((2, 8))
    gu.manual_seed(5)
    a = model(idx).detach().numpy()
    gu.manual_seed(5)
    b = model(idx).detach().numpy()
    c = model(idx).detach().numpy()
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    model.eval()
    np.testing.assert_array_equal(model(idx).detach().numpy(), model(idx).detach().numpy())


def test_dropout_gradient_matches_finite_differences():
    """The fused op's dropout masks come from the rng given; re-seeding replays the same masks."""
    B, T, C, H = 2, 3, 4, 2
    names = PARAM_NAMES
    shapes = [(C,), (C,), (3 * C, C), (3 * C,), (C, C), (C,), (C,), (C,), (4 * C, C), (4 * C,), (C, 4 * C), (C,)]

    def fn(x, *params):
        return TransformerStack.apply(x, *params, n_head=H, dropout_p=0.4, rng=np.random.default_rng(7))

    arrays = [np.random.standard_normal((B, T, C))] + [np.random.standard_normal(s) * 0.5 for s in shapes]
    assert len(names) == len(shapes)
    check_grad(fn, *arrays)


# ----------------------------------------------------------------------------- oracles
@pytest.mark.parametrize("pos_encoding", ["learned", "sinusoidal", "rotary", "none"])
@pytest.mark.parametrize("norm", ["pre", "post"])
@BOTH
def test_forward_matches_picogpt_reference(pos_encoding, norm, cls):
    model = perturb_weights(tiny(cls, pos_encoding=pos_encoding, norm=norm, bias=norm == "pre"))
    idx = tokens((2, 8))
    expected = reference_forward(model.state_dict(), model.cfg, idx)
    np.testing.assert_allclose(model(idx).detach().numpy(), expected, rtol=2e-4, atol=2e-4)


@BOTH
def test_padding_mask_matches_reference(cls):
    model = perturb_weights(tiny(cls, pos_encoding="none", causal=False))
    idx = tokens((2, 8))
    mask = np.array([[1, 1, 1, 1, 1, 0, 0, 0], [0, 0, 1, 1, 1, 1, 1, 1]], dtype=bool)
    expected = reference_forward(model.state_dict(), model.cfg, idx, causal=False, key_mask=mask)
    got = model(idx, attention_mask=mask).detach().numpy()
    np.testing.assert_allclose(got[mask], expected[mask], rtol=2e-4, atol=2e-4)


@pytest.mark.torch
@pytest.mark.parametrize("norm,bias,tie,pos", [("pre", True, True, "learned"), ("post", False, False, "learned"),
                                              ("pre", False, True, "rotary"), ("post", True, False, "none")])
@BOTH
def test_matches_torch_with_copied_weights(norm, bias, tie, pos, cls):
    torch = pytest.importorskip("torch")
    TorchGPT = load_torch_reference().TorchGPT

    model = perturb_weights(tiny(cls, norm=norm, bias=bias, tie_weights=tie, pos_encoding=pos))
    ref = TorchGPT(model.cfg)
    ref.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})
    idx, targets = tokens((3, 8)), tokens((3, 8), seed=4)
    loss = model.loss(idx, targets)
    ref_loss = ref.loss(torch.from_numpy(idx), torch.from_numpy(targets))
    np.testing.assert_allclose(model(idx).detach().numpy(), ref(torch.from_numpy(idx)).detach().numpy(),
                               rtol=1e-4, atol=1e-4)
    assert abs(loss.item() - ref_loss.item()) < 1e-4
    loss.backward()
    ref_loss.backward()
    ref_params = dict(ref.named_parameters())
    for name, p in model.named_parameters():
        np.testing.assert_allclose(p.grad.numpy(), ref_params[name].grad.numpy(), rtol=1e-3, atol=1e-5, err_msg=name)


# ----------------------------------------------------------------------------- the claims
@pytest.mark.parametrize("pos_encoding", ["learned", "rotary"])
@BOTH
def test_causal_mask_future_tokens_never_change_the_past(pos_encoding, cls):
    model = tiny(cls, pos_encoding=pos_encoding)
    idx = tokens((4, 8))
    base = model(idx).detach().numpy()
    for t in range(8):
        changed = idx.copy()
        changed[:, t] = (changed[:, t] + 1 + t) % 13
        out = model(changed).detach().numpy()
        np.testing.assert_array_equal(out[:, :t], base[:, :t])      # exactly: masked weights are exp(-inf) = 0
        assert not np.allclose(out[:, t], base[:, t])


@pytest.mark.parametrize("causal", [True, False])
@BOTH
def test_padding_never_changes_real_positions(causal, cls):
    model = tiny(cls, pos_encoding="rotary", causal=causal)
    idx = tokens((3, 8))
    mask = np.ones((3, 8), dtype=bool)
    mask[0, 5:] = False        # right padding
    mask[1, :3] = False        # left padding
    mask[2, [2, 6]] = False    # holes
    base = model(idx, attention_mask=mask).detach().numpy()
    for seed in range(3):
        other = np.where(mask, idx, tokens((3, 8), seed=10 + seed))
        out = model(other, attention_mask=mask).detach().numpy()
        np.testing.assert_array_equal(out[mask], base[mask])
    unmasked = model(np.where(mask, idx, (idx + 1) % 13)).detach().numpy()
    assert not np.allclose(unmasked[mask], base[mask])               # without the mask, padding leaks in


def test_permutation_equivariance_without_positions_or_mask():
    idx = tokens((2, 8))
    perm = np.random.default_rng(3).permutation(8)
    model = tiny(pos_encoding="none", causal=False)
    out, out_perm = model(idx).detach().numpy(), model(idx[:, perm]).detach().numpy()
    np.testing.assert_allclose(out_perm, out[:, perm], rtol=1e-5, atol=1e-5)
    for pos_encoding in ("learned", "sinusoidal", "rotary"):
        model = perturb_weights(tiny(pos_encoding=pos_encoding, causal=False))
        out, out_perm = model(idx).detach().numpy(), model(idx[:, perm]).detach().numpy()
        assert not np.allclose(out_perm, out[:, perm], rtol=1e-3, atol=1e-3), pos_encoding
    model = tiny(pos_encoding="none", causal=True)  # the causal mask alone also breaks the symmetry
    assert not np.allclose(model(idx[:, perm]).detach().numpy(), model(idx).detach().numpy()[:, perm], atol=1e-4)


# ----------------------------------------------------------------------------- generation
@pytest.mark.parametrize("pos_encoding", ["learned", "sinusoidal", "rotary", "none"])
@BOTH
def test_kv_cache_gives_the_same_tokens_within_the_context(pos_encoding, cls):
    model = perturb_weights(tiny(cls, pos_encoding=pos_encoding))
    prompt = tokens((2, 3))
    for kwargs in (dict(), dict(temperature=0.8, top_k=5), dict(top_p=0.9), dict(temperature=0)):
        cached = model.generate(prompt, 5, seed=11, use_cache=True, **kwargs).numpy()
        plain = model.generate(prompt, 5, seed=11, use_cache=False, **kwargs).numpy()
        assert cached.shape == (2, 8)
        np.testing.assert_array_equal(cached, plain)
        np.testing.assert_array_equal(cached[:, :3], prompt)


@pytest.mark.parametrize("pos_encoding", ["learned", "sinusoidal"])
def test_kv_cache_past_the_context_recomputes_with_absolute_positions(pos_encoding):
    model = perturb_weights(tiny(pos_encoding=pos_encoding))
    prompt = tokens((1, 5))
    cached = model.generate(prompt, 12, seed=3, use_cache=True).numpy()
    plain = model.generate(prompt, 12, seed=3, use_cache=False).numpy()
    np.testing.assert_array_equal(cached, plain)


@pytest.mark.parametrize("pos_encoding", ["rotary", "none"])
def test_kv_cache_past_the_context_is_sliding_window_attention(pos_encoding):
    """The cropped cache's logits == a full forward with a band mask of width block_size (the definition)."""
    model = perturb_weights(tiny(pos_encoding=pos_encoding))
    seq = tokens((2, 20))
    decoder = KVDecoder(model, 2, 20)
    got = [decoder.next_logits(seq[:, :3], first=True)]
    for L in range(4, 21):
        got.append(decoder.next_logits(seq[:, :L], first=False))
    got = np.stack(got, axis=1)                                     # (B, 18, V): logits after tokens 3..20
    expected = reference_forward(model.state_dict(), model.cfg, seq, window=8)[:, 2:]
    np.testing.assert_allclose(got, expected, rtol=2e-4, atol=2e-4)
    # ... which differs from recomputing the last block_size tokens (what use_cache=False does)
    recomputed = reference_forward(model.state_dict(), model.cfg, seq[:, -8:])[:, -1]
    assert not np.allclose(got[:, -1], recomputed, atol=1e-3)


@pytest.mark.torch
@pytest.mark.parametrize("pos_encoding", ["learned", "rotary", "none"])
@pytest.mark.parametrize("use_cache", [True, False])
@BOTH
def test_generation_matches_the_torch_reference_past_the_context(pos_encoding, use_cache, cls):
    """The benchmark's PyTorch reference follows the same cache rules, so both sample the same tokens."""
    torch = pytest.importorskip("torch")
    model = tiny(cls, pos_encoding=pos_encoding)
    with gu.no_grad():
        for _, p in model.named_parameters():
            p.data *= 8.0                                               # confident, varied predictions
    ref = load_torch_reference().TorchGPT(model.cfg)
    ref.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})
    prompt = tokens((2, 3))
    ours = model.generate(prompt, 20, seed=7, use_cache=use_cache).numpy()       # 23 tokens > block_size 8
    theirs = ref.generate(torch.from_numpy(prompt), 20, seed=7, use_cache=use_cache).numpy()
    np.testing.assert_array_equal(ours, theirs)
    assert len(set(ours[0, 3:].tolist())) > 2


def test_generation_is_seeded_and_respects_top_k():
    model = tiny()
    a = model.generate(np.array([[1]]), 20, seed=5).numpy()
    b = model.generate(np.array([[1]]), 20, seed=5).numpy()
    np.testing.assert_array_equal(a, b)
    logits = np.array([[0.0, 5.0, 4.0, -3.0]])
    draws = {int(sample_next(logits, 1.0, top_k=2, rng=np.random.default_rng(i))[0]) for i in range(200)}
    assert draws == {1, 2}
    draws = {int(sample_next(logits, 1.0, top_p=0.5, rng=np.random.default_rng(i))[0]) for i in range(50)}
    assert draws == {1}
    assert model.generate(np.array([2, 3]), 0).shape == (1, 2)


def test_a_tiny_temperature_samples_the_argmax():
    """logits / T overflows to inf for a tiny T (inf - inf = nan in the softmax): it must still pick the argmax."""
    logits = np.array([[0.0, 5.0, 4.0, -3.0], [9.0, -1.0, 2.0, 8.5]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")                          # no overflow or invalid-value warnings either
        for temperature in (1e-300, 1e-320, 5e-324):
            for seed in range(5):
                draws = sample_next(logits, temperature, top_k=3, rng=np.random.default_rng(seed))
                np.testing.assert_array_equal(draws, [1, 0])


# ----------------------------------------------------------------------------- training and checkpoints
@BOTH
def test_overfits_one_batch(cls):
    model = tiny(cls, n_layer=1)
    from groundup.optim import AdamW

    opt = AdamW(model.parameters(), lr=1e-2)
    idx, targets = tokens((4, 8)), tokens((4, 8), seed=9)
    first = None
    for _ in range(60):
        model.zero_grad()
        loss = model.loss(idx, targets)
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    assert first > 2.3 and loss.item() < 0.3


@pytest.mark.parametrize("saver,loader", [(GPT, FastGPT), (FastGPT, GPT)])
def test_save_load_gives_identical_logits(tmp_path, saver, loader):
    """A checkpoint written by either twin loads into the other with the same logits."""
    model = perturb_weights(tiny(saver, pos_encoding="rotary", tie_weights=True))
    model.save(tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "model.safetensors").is_file() and (tmp_path / "ckpt" / "config.json").is_file()
    loaded = loader.load(tmp_path / "ckpt")
    assert type(loaded) is loader
    assert loaded.cfg == model.cfg
    assert loaded.lm_head.weight is loaded.wte.weight
    idx = tokens((2, 8))
    np.testing.assert_allclose(loaded(idx).detach().numpy(), model(idx).detach().numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bias", [True, False])
def test_fused_loss_matches_logits_and_cross_entropy(bias):
    """FastGPT.loss (one fused ln_f + lm_head + cross-entropy op) == cross_entropy(model(idx)), values and grads."""
    from groundup import functional as F

    model = perturb_weights(tiny(FastGPT, bias=bias).double())
    idx, targets = tokens((3, 8)), tokens((3, 8), seed=4)
    targets[1, 5:] = -100                                           # ignored positions
    results = []
    for fused_loss in (True, False):
        model.zero_grad()
        if fused_loss:
            loss = model.loss(idx, targets)
        else:
            loss = F.cross_entropy(model(idx).reshape(-1, 13), gu.tensor(targets.reshape(-1)))
        loss.backward()
        results.append((loss.item(), {n: p.grad.numpy().copy() for n, p in model.named_parameters()}))
    (l1, g1), (l2, g2) = results
    assert abs(l1 - l2) < 1e-12
    for name in g2:
        np.testing.assert_allclose(g1[name], g2[name], rtol=1e-9, atol=1e-13, err_msg=name)
    with pytest.raises(IndexError, match="target 13 is out of range"):
        model.loss(idx, np.full((3, 8), 13))


def test_lm_head_loss_matches_finite_differences():
    targets = np.array([[1, 4, -100], [0, 2, 3]])

    def fn(x, w, b, head):
        return LMHeadLoss.apply(x, w, b, head, targets=targets)

    check_grad(fn, (2, 3, 4), np.random.standard_normal(4) + 1, (4,), (5, 4))


# ----------------------------------------------------------------------------- attention maps
@pytest.mark.torch
@pytest.mark.parametrize("pos_encoding,norm", [("rotary", "pre"), ("learned", "post")])
def test_attention_maps_match_torch(pos_encoding, norm):
    """Each layer's weights == softmax(q k^T / sqrt(D)) computed in PyTorch from the block's input."""
    torch = pytest.importorskip("torch")
    module = load_torch_reference()
    model = perturb_weights(tiny(pos_encoding=pos_encoding, norm=norm))
    ref = module.TorchGPT(model.cfg)
    ref.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})
    inputs = []
    for block in ref.blocks:
        block.register_forward_pre_hook(lambda _, args: inputs.append(args[0]))
    idx = tokens((2, 8))
    mask = np.ones((2, 8), dtype=bool)
    mask[1, 6:] = False
    maps = model.attention_maps(idx, attention_mask=mask)
    assert maps.shape == (2, 2, 2, 8, 8)
    with torch.no_grad():
        ref(torch.from_numpy(idx))                   # the padded tokens only matter for row 1's keys 6, 7
        cos, sin = module.rotary_tables(8, 8)
        for layer, (block, x) in enumerate(zip(ref.blocks, inputs)):
            h = block.ln_1(x) if norm == "pre" else x
            q, k, _ = block.attn.qkv(h).split(16, dim=2)
            q, k = (t.view(2, 8, 2, 8).transpose(1, 2) for t in (q, k))          # (B, H, T, D)
            if pos_encoding == "rotary":
                q, k = module.apply_rotary(q, cos, sin), module.apply_rotary(k, cos, sin)
            scores = q @ k.transpose(-2, -1) / math.sqrt(8)
            allowed = torch.tril(torch.ones(8, 8, dtype=torch.bool)) & torch.from_numpy(mask)[:, None, None, :]
            expected = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
            if layer == 0:                           # deeper layers see the padded rows' own (changed) inputs
                np.testing.assert_allclose(maps[0], expected.numpy(), rtol=1e-4, atol=1e-6)
            else:
                np.testing.assert_allclose(maps[layer, 0], expected[0].numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(maps.sum(-1), 1.0, rtol=1e-5)
    assert (maps[..., np.triu_indices(8, 1)[0], np.triu_indices(8, 1)[1]] == 0).all()     # causal: exactly 0
    assert (maps[:, 1, :, :, 6:] == 0).all()                                                   # padding: exactly 0
    assert model.training                                                                      # mode restored
