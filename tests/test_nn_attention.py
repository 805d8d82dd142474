"""Attention, Transformer blocks and positional encodings.

MultiheadAttention and the Transformer layers/stacks are built twice from one lambda
(``make(torch.nn)`` and ``make(gu.nn)``: the names and arguments are torch's), torch's state_dict
is loaded into ours with ``load_state_dict({k: v.detach().numpy()})``, and both run the same inputs
and masks in eval mode. We compare the outputs, the attention weights, and the gradients of
``sum(out * R)`` (random ``R``) for every parameter and every float input, in float64 (1e-10) and
float32. Positional encodings are checked against their formulas written out independently
(sinusoids with math.sin, RoPE as complex rotations) and against their defining properties
(RoPE keeps norms; q . k depends only on the relative position).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import groundup as gu
from groundup import nn

torch = pytest.importorskip("torch")

# torch warns (deprecation) when key_padding_mask and attn_mask differ in type; both are still supported
pytestmark = [pytest.mark.torch, pytest.mark.filterwarnings("ignore:Support for mismatched:UserWarning")]

TOL = {np.float32: dict(rtol=2e-4, atol=2e-5), np.float64: dict(rtol=1e-10, atol=1e-10)}
TORCH_DTYPE = {np.float32: torch.float32, np.float64: torch.float64}
DTYPES = [np.float64, np.float32]

E, H, L, S, N = 8, 2, 4, 5, 3        # width, heads, query length, key length, batch


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny tensors: torch's thread pool only adds overhead, and much more on a busy 2-core CI box."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------------------- harness
def pair(make, dtype):
    """The same module in torch and groundup, torch's weights copied into ours, both in eval mode."""
    theirs = make(torch.nn).to(TORCH_DTYPE[dtype]).eval()
    ours = make(nn).to(dtype=dtype).eval()
    assert list(ours.state_dict()) == list(theirs.state_dict())
    ours.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})
    return theirs, ours


def check_parity(make, dtype, arrays, call, diff):
    """Run ``call(module, tensors)`` on both frameworks; compare outputs and gradients.

    Args:
        arrays: name -> NumPy array (float inputs, bool or float masks); floats are cast to ``dtype``.
        call: ``call(module, tensors)`` -> a Tensor or a tuple (None entries are compared as None).
        diff: names of the float inputs that get gradients (the rest are constants, e.g. masks).
    """
    theirs, ours = pair(make, dtype)
    arrays = {k: a.astype(dtype) if a.dtype.kind == "f" else a for k, a in arrays.items()}
    tt = {k: torch.tensor(a, requires_grad=k in diff) for k, a in arrays.items()}
    gt = {k: gu.tensor(a, requires_grad=k in diff) for k, a in arrays.items()}
    t_out, g_out = call(theirs, tt), call(ours, gt)
    t_out = t_out if isinstance(t_out, tuple) else (t_out,)
    g_out = g_out if isinstance(g_out, tuple) else (g_out,)
    tol = TOL[dtype]
    t_loss, g_loss = 0, 0
    for i, (t, g) in enumerate(zip(t_out, g_out, strict=True)):
        if t is None:
            assert g is None, f"output {i}: torch gives None"
            continue
        assert g.shape == tuple(t.shape), f"output {i}: shape {g.shape} vs torch {tuple(t.shape)}"
        assert g.dtype == np.dtype(dtype)
        np.testing.assert_allclose(g.detach().numpy(), t.detach().numpy(), err_msg=f"output {i}", **tol)
        weight = np.random.standard_normal(g.shape).astype(dtype)
        t_loss = t_loss + (t * torch.tensor(weight)).sum()
        g_loss = g_loss + (g * gu.tensor(weight)).sum()
    t_loss.backward()
    g_loss.backward()
    t_params = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        assert p.grad is not None, f"no gradient for {name}"
        np.testing.assert_allclose(p.grad.numpy(), t_params[name].grad.numpy(), err_msg=f"grad {name}", **tol)
    for name in diff:
        np.testing.assert_allclose(gt[name].grad.numpy(), tt[name].grad.numpy(), err_msg=f"grad of input {name}",
                                   **tol)


def rand(*shape):
    return np.random.standard_normal(shape)


def padding_mask(n, s):
    """(n, s) bool, True = padding: batch 0 loses its last 2 keys, batch 2 its last one; key 0 always stays."""
    mask = np.zeros((n, s), dtype=bool)
    mask[0, -2:] = True
    mask[-1, -1] = True
    return mask


def random_bool_mask(*shape):
    """True (blocked) with probability 0.4, never in column 0, so no query loses every key."""
    mask = np.random.random_sample(shape) < 0.4
    mask[..., 0] = False
    return mask


def seq(batch_first, n, t, e=E):
    return rand(n, t, e) if batch_first else rand(t, n, e)


# ---------------------------------------------------------------------------- MultiheadAttention parity
def mha_case(case, batch_first):
    """(arrays, call, diff) for one MultiheadAttention scenario, with torch's argument names."""
    q, kv = seq(batch_first, N, L), seq(batch_first, N, S)
    if case == "self":
        return {"x": q}, {}, ["x"]
    if case == "cross_kv_same":                              # key is value (memory), L != S
        return {"q": q, "kv": kv}, {}, ["q", "kv"]
    if case == "cross_distinct":
        return {"q": q, "k": kv, "v": seq(batch_first, N, S)}, {}, ["q", "k", "v"]
    if case == "kpm_bool":
        return {"q": q, "kv": kv, "key_padding_mask": padding_mask(N, S)}, {}, ["q", "kv"]
    if case == "kpm_float":
        return {"q": q, "kv": kv, "key_padding_mask": rand(N, S)}, {}, ["q", "kv"]
    if case == "attn_bool":
        return {"q": q, "kv": kv, "attn_mask": random_bool_mask(L, S)}, {}, ["q", "kv"]
    if case == "attn_float":
        return {"q": q, "kv": kv, "attn_mask": rand(L, S)}, {}, ["q", "kv"]
    if case == "attn_3d_and_kpm":                            # (N*H, L, S) merged with (N, S), both bool
        return ({"q": q, "kv": kv, "attn_mask": random_bool_mask(N * H, L, S), "key_padding_mask": padding_mask(N, S)},
                {}, ["q", "kv"])
    if case == "causal_bool":                                # is_causal hint with its (bool) mask
        return {"x": q, "attn_mask": np.triu(np.ones((L, L), bool), 1)}, {"is_causal": True}, ["x"]
    if case == "causal_cross":                               # L != S: torch's causal mask is top-left aligned
        return {"q": q, "kv": kv, "attn_mask": np.triu(np.ones((L, S), bool), 1)}, {"is_causal": True}, ["q", "kv"]
    if case == "causal_float_kpm":                           # float causal mask + padding: the mask is used
        causal = np.triu(np.full((L, L), -np.inf), 1)
        return {"x": q, "attn_mask": causal, "key_padding_mask": padding_mask(N, L)}, {"is_causal": True}, ["x"]
    raise AssertionError(case)


MHA_CASES = ["self", "cross_kv_same", "cross_distinct", "kpm_bool", "kpm_float", "attn_bool", "attn_float",
             "attn_3d_and_kpm", "causal_bool", "causal_cross", "causal_float_kpm"]


def mha_call(extra, need_weights, average):
    def call(module, t):
        if "x" in t:
            q, k, v = t["x"], t["x"], t["x"]
        elif "kv" in t:
            q, k, v = t["q"], t["kv"], t["kv"]
        else:
            q, k, v = t["q"], t["k"], t["v"]
        return module(q, k, v, key_padding_mask=t.get("key_padding_mask"), attn_mask=t.get("attn_mask"),
                      need_weights=need_weights, average_attn_weights=average, **extra)
    return call


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["seq_first", "batch_first"])
@pytest.mark.parametrize("case", MHA_CASES)
@pytest.mark.parametrize("need_weights,average", [(False, True), (True, True), (True, False)],
                         ids=["fused", "weights_avg", "weights_per_head"])
def test_mha_matches_torch(case, batch_first, need_weights, average, dtype):
    arrays, extra, diff = mha_case(case, batch_first)
    make = lambda m: m.MultiheadAttention(E, H, dropout=0.1, batch_first=batch_first)  # noqa: E731
    check_parity(make, dtype, arrays, mha_call(extra, need_weights, average), diff)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("need_weights,average", [(False, True), (True, True), (True, False)],
                         ids=["fused", "weights_avg", "weights_per_head"])
def test_mha_unbatched_matches_torch(need_weights, average, dtype):
    arrays = {"q": rand(L, E), "kv": rand(S, E), "key_padding_mask": np.array([False, False, True, False, True]),
              "attn_mask": rand(H, L, S)}
    make = lambda m: m.MultiheadAttention(E, H)  # noqa: E731
    check_parity(make, dtype, arrays, mha_call({}, need_weights, average), ["q", "kv"])


@pytest.mark.parametrize("need_weights", [False, True])
def test_mha_without_bias_matches_torch(need_weights):
    make = lambda m: m.MultiheadAttention(E, H, bias=False, batch_first=True)  # noqa: E731
    theirs, ours = pair(make, np.float64)
    assert list(ours.state_dict()) == ["in_proj_weight", "out_proj.weight"]
    check_parity(make, np.float64, {"x": rand(N, L, E)}, mha_call({}, need_weights, True), ["x"])


def test_mha_returns_weights_with_documented_shapes():
    mha = nn.MultiheadAttention(E, H, batch_first=True)
    q, kv = gu.randn(N, L, E), gu.randn(N, S, E)
    out, w = mha(q, kv, kv)
    assert out.shape == (N, L, E) and w.shape == (N, L, S)
    np.testing.assert_allclose(w.detach().numpy().sum(-1), 1.0, rtol=1e-6)
    out, w = mha(q, kv, kv, average_attn_weights=False)
    assert w.shape == (N, H, L, S)
    out, w = mha(q, kv, kv, need_weights=False)
    assert out.shape == (N, L, E) and w is None
    out, w = nn.MultiheadAttention(E, H)(gu.randn(L, E), gu.randn(S, E), gu.randn(S, E), average_attn_weights=False)
    assert out.shape == (L, E) and w.shape == (H, L, S)


def test_mha_masked_keys_get_zero_weight():
    """torch's convention: True = NOT allowed (the opposite of F.scaled_dot_product_attention)."""
    mha = nn.MultiheadAttention(E, H, batch_first=True)
    q, kv = gu.randn(N, L, E), gu.randn(N, S, E)
    kpm = padding_mask(N, S)
    _, w = mha(q, kv, kv, key_padding_mask=kpm, average_attn_weights=False)
    w = w.detach().numpy()                                    # (N, H, L, S)
    assert np.all(w[np.broadcast_to(kpm[:, None, None, :], w.shape)] == 0)
    assert np.all(w[np.broadcast_to(~kpm[:, None, None, :], w.shape)] > 0)


def test_mha_init_follows_torch():
    gu.manual_seed(1)
    e = 64
    mha = nn.MultiheadAttention(e, 4)
    w = mha.in_proj_weight.detach().numpy()
    bound = math.sqrt(6.0 / (e + 3 * e))                       # xavier_uniform_ on the (3E, E) matrix
    assert w.shape == (3 * e, e) and np.abs(w).max() <= bound and np.abs(w).max() > 0.98 * bound
    assert abs(w.std() - bound / math.sqrt(3)) < 0.03 * bound
    assert not mha.in_proj_bias.detach().numpy().any() and not mha.out_proj.bias.detach().numpy().any()
    out_w = mha.out_proj.weight.detach().numpy()
    assert np.abs(out_w).max() <= 1 / math.sqrt(e) and np.abs(out_w).max() > 0.95 / math.sqrt(e)
    assert isinstance(mha.out_proj, nn.Linear) and mha.head_dim == 16 and mha.dropout == 0.0


def test_mha_dropout_drops_and_rescales_weights_in_training_only():
    mha = nn.MultiheadAttention(E, H, dropout=0.5, batch_first=True)
    q, kv = gu.randn(N, L, E), gu.randn(N, S, E)
    mha.eval()
    _, clean = mha(q, kv, kv, average_attn_weights=False)
    _, again = mha(q, kv, kv, average_attn_weights=False)
    np.testing.assert_array_equal(clean.detach().numpy(), again.detach().numpy())
    mha.train()
    _, dropped = mha(q, kv, kv, average_attn_weights=False)
    clean, dropped = clean.detach().numpy(), dropped.detach().numpy()
    kept = dropped != 0
    assert 0.2 < kept.mean() < 0.8
    np.testing.assert_allclose(dropped[kept], 2 * clean[kept], rtol=1e-5)
    out, _ = mha(q, kv, kv, need_weights=False)                # fused path also runs with dropout
    assert out.shape == (N, L, E)


@pytest.mark.parametrize("case", MHA_CASES)
def test_mha_fused_path_equals_the_readable_path(case):
    """need_weights=False (one PackedAttention node) against need_weights=True (the softmax written out),
    in float64 and in training mode with attention dropout: one seed draws the same dropout masks."""
    arrays, extra, diff = mha_case(case, True)      # an is_causal hint: the fused path uses its own causal mask
    gu.manual_seed(3)
    mha = nn.MultiheadAttention(E, H, dropout=0.3, batch_first=True).to(dtype=np.float64)
    weight = rand(N, L, E)
    results = []
    for need_weights in (False, True):
        tensors = {k: gu.tensor(a, requires_grad=k in diff) for k, a in arrays.items()}
        mha.zero_grad()
        gu.manual_seed(11)
        out, _ = mha_call(extra, need_weights, True)(mha, tensors)
        (out * gu.tensor(weight)).sum().backward()
        results.append([out.detach().numpy()] + [tensors[k].grad.numpy() for k in diff]
                       + [p.grad.numpy() for p in mha.parameters()])
    for got, want in zip(*results, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    mha.eval()
    clean, _ = mha_call(extra, False, True)(mha, {k: gu.tensor(a) for k, a in arrays.items()})
    assert not np.allclose(clean.detach().numpy(), results[0][0])   # dropout did drop weights


def test_mha_argument_errors():
    with pytest.raises(ValueError, match="kdim"):
        nn.MultiheadAttention(E, H, kdim=4)
    with pytest.raises(ValueError, match="vdim"):
        nn.MultiheadAttention(E, H, vdim=4)
    with pytest.raises(ValueError, match="divisible"):
        nn.MultiheadAttention(E, 3)
    nn.MultiheadAttention(E, H, kdim=E, vdim=E)                # equal widths are fine
    mha = nn.MultiheadAttention(E, H, batch_first=True)
    q = gu.randn(N, L, E)
    with pytest.raises(RuntimeError, match="is_causal"):
        mha(q, q, q, is_causal=True)
    with pytest.raises(RuntimeError, match="2D attn_mask"):
        mha(q, q, q, attn_mask=np.zeros((L, L + 1), bool))
    with pytest.raises(RuntimeError, match="3D attn_mask"):
        mha(q, q, q, attn_mask=np.zeros((N, L, L), bool))
    with pytest.raises(RuntimeError, match="key_padding_mask"):
        mha(q, q, q, key_padding_mask=np.zeros((N, L + 1), bool))
    with pytest.raises(TypeError, match="bool and floating"):
        mha(q, q, q, attn_mask=np.zeros((L, L), np.int64))
    with pytest.raises(RuntimeError, match="features"):
        mha(gu.randn(N, L, E + 1), q, q)
    with pytest.raises(RuntimeError, match="2D or batched 3D"):
        mha(gu.randn(1, N, L, E), q, q)


# ---------------------------------------------------------------------------- Transformer layers and stacks
LAYER_VARIANTS = [(False, "relu"), (False, "gelu"), (True, "relu"), (True, "gelu")]
LAYER_IDS = ["post_relu", "post_gelu", "pre_relu", "pre_gelu"]


def encoder_inputs(batch_first):
    return {"src": seq(batch_first, N, L), "src_mask": np.triu(np.full((L, L), -np.inf), 1),
            "src_key_padding_mask": padding_mask(N, L)}


def encoder_call(module, t):
    return module(t["src"], src_mask=t["src_mask"], src_key_padding_mask=t["src_key_padding_mask"])


def decoder_inputs(batch_first):
    return {"tgt": seq(batch_first, N, L), "memory": seq(batch_first, N, S),
            "tgt_mask": np.triu(np.ones((L, L), bool), 1), "memory_mask": rand(L, S),
            "memory_key_padding_mask": padding_mask(N, S).astype(np.float64) * -1e9}


def decoder_call(module, t):
    return module(t["tgt"], t["memory"], tgt_mask=t["tgt_mask"], memory_mask=t["memory_mask"],
                  memory_key_padding_mask=t["memory_key_padding_mask"], tgt_is_causal=True)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["seq_first", "batch_first"])
@pytest.mark.parametrize("norm_first,activation", LAYER_VARIANTS, ids=LAYER_IDS)
def test_encoder_layer_matches_torch(norm_first, activation, batch_first, dtype):
    make = lambda m: m.TransformerEncoderLayer(E, H, dim_feedforward=16, activation=activation,  # noqa: E731
                                               batch_first=batch_first, norm_first=norm_first)
    check_parity(make, dtype, encoder_inputs(batch_first), encoder_call, ["src"])


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["seq_first", "batch_first"])
@pytest.mark.parametrize("norm_first,activation", LAYER_VARIANTS, ids=LAYER_IDS)
def test_decoder_layer_matches_torch(norm_first, activation, batch_first, dtype):
    make = lambda m: m.TransformerDecoderLayer(E, H, dim_feedforward=16, activation=activation,  # noqa: E731
                                               batch_first=batch_first, norm_first=norm_first)
    check_parity(make, dtype, decoder_inputs(batch_first), decoder_call, ["tgt", "memory"])


def test_layers_accept_callable_activation_and_unbatched_input():
    make = lambda m: m.TransformerEncoderLayer(E, H, 16, activation=m.GELU(), norm_first=True)  # noqa: E731
    check_parity(make, np.float64, {"src": rand(L, E)}, lambda mod, t: mod(t["src"]), ["src"])
    make = lambda m: m.TransformerDecoderLayer(E, H, 16, activation=torch.nn.functional.gelu  # noqa: E731
                                               if m is torch.nn else gu.functional.gelu, bias=False)
    check_parity(make, np.float64, {"tgt": rand(L, E), "memory": rand(S, E)},
                 lambda mod, t: mod(t["tgt"], t["memory"]), ["tgt", "memory"])


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("norm_first", [False, True], ids=["post", "pre"])
def test_encoder_stack_matches_torch(norm_first, dtype):
    def make(m):
        layer = m.TransformerEncoderLayer(E, H, 16, norm_first=norm_first, batch_first=True)
        kwargs = {"enable_nested_tensor": False} if m is torch.nn else {}
        return m.TransformerEncoder(layer, 2, norm=m.LayerNorm(E), **kwargs)

    def call(module, t):                                      # is_causal=None: detected from the mask
        return module(t["src"], mask=t["src_mask"], src_key_padding_mask=t["src_key_padding_mask"])

    check_parity(make, dtype, encoder_inputs(True), call, ["src"])


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("norm_first", [False, True], ids=["post", "pre"])
def test_decoder_stack_matches_torch(norm_first, dtype):
    make = lambda m: m.TransformerDecoder(m.TransformerDecoderLayer(E, H, 16, norm_first=norm_first),  # noqa: E731
                                          2, norm=m.LayerNorm(E))
    check_parity(make, dtype, decoder_inputs(False), decoder_call, ["tgt", "memory"])


def test_full_transformer_matches_torch():
    make = lambda m: m.Transformer(E, H, num_encoder_layers=2, num_decoder_layers=1,  # noqa: E731
                                   dim_feedforward=16, batch_first=True)
    arrays = {"src": rand(N, S, E), "tgt": rand(N, L, E), "tgt_mask": np.triu(np.full((L, L), -np.inf), 1),
              "src_key_padding_mask": padding_mask(N, S)}

    def call(module, t):
        return module(t["src"], t["tgt"], tgt_mask=t["tgt_mask"], src_key_padding_mask=t["src_key_padding_mask"],
                      memory_key_padding_mask=t["src_key_padding_mask"])

    check_parity(make, np.float64, arrays, call, ["src", "tgt"])
    causal = nn.Transformer.generate_square_subsequent_mask(5)
    np.testing.assert_array_equal(causal.numpy(), torch.nn.Transformer.generate_square_subsequent_mask(5).numpy())
    assert causal.dtype == gu.float32


def test_stack_layers_are_independent_copies():
    layer = nn.TransformerEncoderLayer(E, H, 16)
    stack = nn.TransformerEncoder(layer, 3)
    assert [k for k in stack.state_dict() if k.endswith("linear1.weight")] == [
        f"layers.{i}.linear1.weight" for i in range(3)]
    params = [dict(m.named_parameters()) for m in (layer, *stack.layers)]
    for name in params[0]:
        objects = [p[name] for p in params]
        assert len({id(p) for p in objects}) == 4, f"{name} is shared"
        assert len({id(p.data) for p in objects}) == 4, f"{name} shares its array"
        for p in objects[1:]:
            assert isinstance(p, nn.Parameter) and p.requires_grad
            np.testing.assert_array_equal(p.detach().numpy(), objects[0].detach().numpy())
    stack.layers[0].linear1.weight.data[...] = 0
    assert stack.layers[1].linear1.weight.detach().numpy().any() and layer.linear1.weight.detach().numpy().any()
    assert len(list(stack.parameters())) == 3 * len(params[0])


def test_transformer_argument_errors():
    with pytest.raises(ValueError, match="activation"):
        nn.TransformerEncoderLayer(E, H, activation="tanh")
    with pytest.raises(ValueError, match="num_layers"):
        nn.TransformerEncoder(nn.TransformerEncoderLayer(E, H), 0)


# ---------------------------------------------------------------------------- positional encodings
@pytest.mark.parametrize("d_model", [6, 7])
def test_sinusoidal_table_matches_the_formula(d_model):
    max_len = 12
    pe = nn.SinusoidalPositionalEncoding(d_model, max_len, dtype=gu.float64)
    expected = np.empty((max_len, d_model))
    for pos in range(max_len):
        for j in range(d_model):
            angle = pos / 10000 ** ((j - j % 2) / d_model)    # dims 2i and 2i+1 share the frequency
            expected[pos, j] = math.sin(angle) if j % 2 == 0 else math.cos(angle)
    np.testing.assert_allclose(pe.pe.numpy(), expected, rtol=0, atol=1e-12)
    assert list(pe.state_dict()) == ["pe"] and list(pe.parameters()) == []
    x = gu.randn(2, 5, d_model, dtype=gu.float64)
    np.testing.assert_allclose(pe(x, offset=3).numpy(), x.numpy() + expected[3:8], atol=1e-12)
    assert pe(gu.randn(2, 5, d_model)).dtype == gu.float32
    with pytest.raises(ValueError, match="max_len"):
        pe(gu.randn(1, 10, d_model), offset=3)


def test_learned_positional_encoding_adds_rows_and_trains_them():
    pe = nn.LearnedPositionalEncoding(10, 4)
    assert list(pe.state_dict()) == ["weight"] and pe.weight.shape == (10, 4)
    x = gu.randn(3, 5, 4, requires_grad=True)
    out = pe(x, offset=2)
    np.testing.assert_allclose(out.detach().numpy(), x.detach().numpy() + pe.weight.detach().numpy()[2:7], rtol=1e-6)
    upstream = np.random.standard_normal((3, 5, 4)).astype(np.float32)
    (out * gu.tensor(upstream)).sum().backward()
    expected = np.zeros((10, 4), np.float32)
    expected[2:7] = upstream.sum(0)
    np.testing.assert_allclose(pe.weight.grad.numpy(), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(x.grad.numpy(), upstream)
    with pytest.raises(ValueError, match="max_len"):
        pe(x, offset=6)


def rope_oracle(x, positions, base=10000.0):
    """RoPE as complex multiplication: feature i pairs with i + D/2 (the half-split convention)."""
    d = x.shape[-1]
    z = x[..., : d // 2] + 1j * x[..., d // 2:]                          # (..., T, D/2)
    freq = base ** (-np.arange(0, d, 2) / d)                              # (D/2,)
    z = z * np.exp(1j * positions[..., :, None] * freq)                   # rotate pair i by t * freq_i
    return np.concatenate([z.real, z.imag], axis=-1)


def test_rope_matches_complex_rotation_and_its_gradient():
    rope = nn.RotaryEmbedding(8, 32, dtype=gu.float64)
    x = gu.randn(2, 3, 5, 8, dtype=gu.float64, requires_grad=True)      # (B, H, T, D)
    out = rope.rotate(x, offset=4)
    np.testing.assert_allclose(out.detach().numpy(), rope_oracle(x.detach().numpy(), np.arange(4, 9)), atol=1e-12)
    # out = A x with A orthogonal, so d sum(out * R) / dx = A^T R = R rotated by minus the angle
    upstream = np.random.standard_normal(out.shape)
    (out * gu.tensor(upstream)).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), rope_oracle(upstream, -np.arange(4, 9.0)), atol=1e-12)
    np.testing.assert_allclose(rope.rotate(x, offset=0).detach().numpy()[..., 0, :], x.detach().numpy()[..., 0, :],
                               atol=0)                                     # position 0: identity
    positions = np.array([[4, 5, 6, 7, 8], [0, 3, 1, 9, 2]])               # (B, T): per sequence
    by_pos = rope.rotate(x, positions=positions).detach().numpy()
    np.testing.assert_allclose(by_pos[0], out.detach().numpy()[0], atol=1e-12)
    np.testing.assert_allclose(by_pos[1], rope_oracle(x.detach().numpy()[1], positions[1]), atol=1e-12)
    q_rot, k_rot = rope(x, x, offset=4)
    np.testing.assert_allclose(q_rot.detach().numpy(), out.detach().numpy(), atol=0)
    assert list(rope.state_dict()) == []


def test_rope_preserves_norms_and_depends_only_on_relative_position():
    d = 16
    rope = nn.RotaryEmbedding(d, 64, dtype=gu.float64)
    x = gu.randn(1, 2, 7, d, dtype=gu.float64)
    out = rope.rotate(x, offset=9).numpy()
    np.testing.assert_allclose(np.linalg.norm(out, axis=-1), np.linalg.norm(x.numpy(), axis=-1), rtol=1e-12)
    pairs_in = x.numpy()[..., : d // 2] ** 2 + x.numpy()[..., d // 2:] ** 2
    pairs_out = out[..., : d // 2] ** 2 + out[..., d // 2:] ** 2
    np.testing.assert_allclose(pairs_out, pairs_in, rtol=1e-12)            # each (i, i + D/2) pair keeps its norm
    q, k = gu.randn(1, 1, 1, d, dtype=gu.float64), gu.randn(1, 1, 1, d, dtype=gu.float64)

    def score(m, n):                                                      # q at position m, k at position n
        return float((rope.rotate(q, offset=m) * rope.rotate(k, offset=n)).sum().item())

    for m, n in [(0, 0), (3, 1), (1, 3), (10, 2)]:
        for shift in (1, 7, 40):
            assert abs(score(m, n) - score(m + shift, n + shift)) < 1e-10
    assert abs(score(3, 1) - score(1, 3)) > 1e-6                           # the sign of m - n matters
    assert abs(score(0, 0) - float((q * k).sum().item())) < 1e-12


def test_rope_float32_and_errors():
    rope = nn.RotaryEmbedding(8, 16)
    x = gu.randn(2, 2, 4, 8)
    out = rope.rotate(x, offset=3)
    assert out.dtype == gu.float32
    np.testing.assert_allclose(out.numpy(), rope_oracle(x.numpy().astype(np.float64), np.arange(3, 7)), atol=1e-5)
    with pytest.raises(ValueError, match="even"):
        nn.RotaryEmbedding(7, 16)
    with pytest.raises(ValueError, match="max_len"):
        rope.rotate(x, offset=13)
    with pytest.raises(ValueError, match="head_dim"):
        rope.rotate(gu.randn(2, 2, 4, 6))
    with pytest.raises(ValueError, match="positions"):
        rope.rotate(x, positions=np.array([0, 1, 2, 16]))
