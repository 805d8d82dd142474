"""Layer parity with torch.nn: copy torch's weights into ours, compare outputs and gradients.

Every layer in ``groundup/nn/{layers,norm,conv}.py`` is built twice from one lambda (the names and
arguments are torch's, so ``make(torch.nn)`` and ``make(gu.nn)`` build the same layer), torch's
``state_dict`` is loaded into ours, and both run the same inputs for a few steps, in train and/or
eval mode. Each step compares the output, the input's gradient and every parameter's gradient of
``(out * R).sum()`` for a random ``R``; at the end the state dicts (running statistics) must agree.
Dropout is random, so it is checked by its statistics instead.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import groundup as gu
from groundup import functional as F
from groundup import nn

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.torch,
    pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths:UserWarning"),
]

TOL = {np.float32: dict(rtol=1e-5, atol=1e-5), np.float64: dict(rtol=1e-10, atol=1e-10)}
TORCH_DTYPE = {np.float32: torch.float32, np.float64: torch.float64}


def floats(*shape):
    return lambda rng, dtype: rng.standard_normal(shape).astype(dtype)


def ids(high, *shape, pad=None):
    """Integer ids in [0, high), with ``pad`` forced into a few positions."""
    def make(rng, dtype):
        out = rng.integers(0, high, size=shape)
        if pad is not None:
            out.reshape(-1)[::3] = pad
        return out
    return make


TRAIN, EVAL = "train", "eval"
BN_STEPS = (TRAIN, TRAIN, TRAIN, EVAL, EVAL)  # running stats after a few steps, then used in eval

# (id, make(nn_namespace) -> module, input maker, modes of the successive steps)
CASES = [
    ("linear", lambda m: m.Linear(5, 4), floats(3, 5), (TRAIN,)),
    ("linear-nobias-3d", lambda m: m.Linear(5, 4, bias=False), floats(2, 3, 5), (TRAIN,)),
    ("embedding", lambda m: m.Embedding(10, 4), ids(10, 3, 5), (TRAIN,)),
    ("embedding-padding_idx", lambda m: m.Embedding(10, 4, padding_idx=2), ids(10, 3, 5, pad=2), (TRAIN,)),
    ("embedding-padding_idx-neg", lambda m: m.Embedding(10, 4, padding_idx=-1), ids(10, 4, 3, pad=9), (TRAIN,)),
    ("layernorm", lambda m: m.LayerNorm(6), floats(3, 6), (TRAIN,)),
    ("layernorm-2d-shape", lambda m: m.LayerNorm((3, 4), eps=1e-3), floats(2, 3, 4), (TRAIN,)),
    ("layernorm-no-affine", lambda m: m.LayerNorm(6, elementwise_affine=False), floats(2, 2, 6), (TRAIN,)),
    ("layernorm-no-bias", lambda m: m.LayerNorm(6, bias=False), floats(3, 6), (TRAIN,)),
    ("rmsnorm", lambda m: m.RMSNorm(6), floats(3, 6), (TRAIN,)),
    ("rmsnorm-2d-shape-eps", lambda m: m.RMSNorm((3, 4), eps=1e-6), floats(2, 3, 4), (TRAIN,)),
    ("rmsnorm-no-affine", lambda m: m.RMSNorm(6, elementwise_affine=False), floats(2, 2, 6), (TRAIN,)),
    ("batchnorm1d-NC", lambda m: m.BatchNorm1d(4), floats(6, 4), BN_STEPS),
    ("batchnorm1d-NCL", lambda m: m.BatchNorm1d(4), floats(3, 4, 5), BN_STEPS),
    ("batchnorm1d-momentum-None", lambda m: m.BatchNorm1d(4, momentum=None), floats(5, 4), BN_STEPS),
    ("batchnorm1d-momentum-0.5-eps", lambda m: m.BatchNorm1d(4, eps=1e-3, momentum=0.5), floats(3, 4, 2), BN_STEPS),
    ("batchnorm1d-no-affine", lambda m: m.BatchNorm1d(4, affine=False), floats(5, 4), BN_STEPS),
    ("batchnorm1d-no-bias", lambda m: m.BatchNorm1d(4, bias=False), floats(5, 4), BN_STEPS),
    ("batchnorm1d-no-running-stats", lambda m: m.BatchNorm1d(4, track_running_stats=False), floats(5, 4), BN_STEPS),
    ("batchnorm2d", lambda m: m.BatchNorm2d(3), floats(2, 3, 4, 5), BN_STEPS),
    ("batchnorm2d-eval-first", lambda m: m.BatchNorm2d(3), floats(2, 3, 3, 3), (EVAL, TRAIN, EVAL)),
    ("identity", lambda m: m.Identity(), floats(3, 4), (TRAIN,)),
    ("flatten", lambda m: m.Flatten(), floats(2, 3, 4, 5), (TRAIN,)),
    ("flatten-0-1", lambda m: m.Flatten(0, 1), floats(2, 3, 4), (TRAIN,)),
    ("flatten-neg", lambda m: m.Flatten(-3, -2), floats(2, 3, 4, 5), (TRAIN,)),
    ("relu", lambda m: m.ReLU(), floats(4, 5), (TRAIN,)),
    ("gelu", lambda m: m.GELU(), floats(4, 5), (TRAIN,)),
    ("gelu-tanh", lambda m: m.GELU(approximate="tanh"), floats(4, 5), (TRAIN,)),
    ("tanh", lambda m: m.Tanh(), floats(4, 5), (TRAIN,)),
    ("sigmoid", lambda m: m.Sigmoid(), floats(4, 5), (TRAIN,)),
    ("silu", lambda m: m.SiLU(), floats(4, 5), (TRAIN,)),
    ("softmax-dim1", lambda m: m.Softmax(dim=1), floats(2, 3, 4), (TRAIN,)),
    ("softmax-dim-1", lambda m: m.Softmax(dim=-1), floats(3, 5), (TRAIN,)),
    ("logsoftmax-dim0", lambda m: m.LogSoftmax(dim=0), floats(3, 5), (TRAIN,)),
    ("logsoftmax-dim-1", lambda m: m.LogSoftmax(dim=-1), floats(2, 3, 5), (TRAIN,)),
    ("dropout-eval", lambda m: m.Dropout(0.5), floats(3, 4), (EVAL,)),
    ("dropout-p0-train", lambda m: m.Dropout(0.0), floats(3, 4), (TRAIN,)),
    ("conv2d", lambda m: m.Conv2d(3, 4, 3), floats(2, 3, 6, 7), (TRAIN,)),
    ("conv2d-1x1", lambda m: m.Conv2d(3, 5, 1), floats(2, 3, 4, 4), (TRAIN,)),
    ("conv2d-stride-padding", lambda m: m.Conv2d(3, 4, 3, stride=2, padding=1), floats(2, 3, 7, 8), (TRAIN,)),
    ("conv2d-rect-dilation-nobias",
     lambda m: m.Conv2d(2, 3, (2, 3), stride=(2, 1), padding=(1, 0), dilation=(2, 1), bias=False),
     floats(2, 2, 7, 6), (TRAIN,)),
    ("conv2d-dilation", lambda m: m.Conv2d(2, 3, 3, dilation=2, padding=2), floats(1, 2, 7, 7), (TRAIN,)),
    ("conv2d-groups", lambda m: m.Conv2d(4, 6, 3, groups=2, padding=1), floats(2, 4, 5, 5), (TRAIN,)),
    ("conv2d-depthwise", lambda m: m.Conv2d(3, 3, 3, groups=3), floats(2, 3, 5, 5), (TRAIN,)),
    ("conv2d-same", lambda m: m.Conv2d(2, 3, 3, padding="same", dilation=2), floats(2, 2, 6, 5), (TRAIN,)),
    ("conv2d-same-even-kernel", lambda m: m.Conv2d(2, 3, (2, 4), padding="same"), floats(2, 2, 5, 6), (TRAIN,)),
    ("conv2d-valid", lambda m: m.Conv2d(2, 3, 3, padding="valid"), floats(2, 2, 5, 6), (TRAIN,)),
    ("conv2d-reflect", lambda m: m.Conv2d(2, 3, 3, stride=2, padding=(1, 2), padding_mode="reflect"),
     floats(2, 2, 6, 7), (TRAIN,)),
    ("conv2d-replicate-same-even-kernel", lambda m: m.Conv2d(2, 4, (2, 3), padding="same", groups=2,
                                                            padding_mode="replicate"), floats(2, 2, 5, 6), (TRAIN,)),
    ("conv2d-circular-dilation", lambda m: m.Conv2d(2, 3, 3, padding=2, dilation=2, padding_mode="circular"),
     floats(1, 2, 6, 5), (TRAIN,)),
    ("conv2d-circular-same", lambda m: m.Conv2d(2, 3, 3, padding="same", padding_mode="circular"),
     floats(1, 2, 4, 5), (TRAIN,)),
    ("conv2d-unbatched", lambda m: m.Conv2d(2, 3, 3, stride=2, padding=1), floats(2, 7, 6), (TRAIN,)),
    ("conv2d-unbatched-same", lambda m: m.Conv2d(2, 4, (2, 3), padding="same", groups=2), floats(2, 5, 6), (TRAIN,)),
    ("maxpool2d", lambda m: m.MaxPool2d(2), floats(2, 3, 6, 6), (TRAIN,)),
    ("maxpool2d-odd-input", lambda m: m.MaxPool2d(2), floats(2, 3, 7, 5), (TRAIN,)),
    ("maxpool2d-stride-padding", lambda m: m.MaxPool2d(3, stride=2, padding=1), floats(2, 2, 7, 8), (TRAIN,)),
    ("maxpool2d-dilation", lambda m: m.MaxPool2d(2, stride=1, dilation=2), floats(1, 2, 6, 6), (TRAIN,)),
    ("maxpool2d-rect", lambda m: m.MaxPool2d((2, 3), stride=(1, 2)), floats(1, 2, 5, 7), (TRAIN,)),
    ("maxpool2d-unbatched", lambda m: m.MaxPool2d(3, stride=2, padding=1), floats(3, 7, 6), (TRAIN,)),
    ("avgpool2d", lambda m: m.AvgPool2d(2), floats(2, 3, 6, 6), (TRAIN,)),
    ("avgpool2d-stride-padding", lambda m: m.AvgPool2d(3, stride=2, padding=1), floats(2, 2, 7, 8), (TRAIN,)),
    ("avgpool2d-rect", lambda m: m.AvgPool2d((2, 3), stride=(1, 2)), floats(1, 2, 5, 7), (TRAIN,)),
    ("avgpool2d-unbatched", lambda m: m.AvgPool2d(2), floats(3, 6, 5), (TRAIN,)),
]


def assert_close(ours, theirs, dtype, what):
    np.testing.assert_allclose(ours, theirs, err_msg=what, **TOL[dtype])


def check_layer_matches_torch(make, make_input, modes, dtype, seed=0):
    """Build the layer in both frameworks, copy torch's weights into ours, and compare every step."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    theirs = make(torch.nn).to(TORCH_DTYPE[dtype])
    ours = make(nn).to(dtype=dtype)
    assert list(ours.state_dict()) == list(theirs.state_dict()), "parameter/buffer names or order differ"
    ours.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})

    for step, mode in enumerate(modes):
        theirs.train(mode == TRAIN)
        ours.train(mode == TRAIN)
        x = make_input(rng, dtype)
        is_float = x.dtype.kind == "f"
        x_theirs = torch.tensor(x, requires_grad=is_float)
        x_ours = gu.tensor(x, requires_grad=is_float)
        out_theirs, out_ours = theirs(x_theirs), ours(x_ours)
        what = f"step {step} ({mode})"
        assert out_ours.shape == tuple(out_theirs.shape), what
        assert out_ours.dtype == dtype, what
        assert_close(out_ours.detach().numpy(), out_theirs.detach().numpy(), dtype, f"output, {what}")

        weights = rng.standard_normal(out_ours.shape).astype(dtype)
        if not (is_float or out_theirs.requires_grad):
            continue
        (out_theirs * torch.tensor(weights)).sum().backward()
        (out_ours * gu.tensor(weights)).sum().backward()
        if is_float:
            assert_close(x_ours.grad.numpy(), x_theirs.grad.numpy(), dtype, f"input grad, {what}")
        their_params = dict(theirs.named_parameters())
        assert [name for name, _ in ours.named_parameters()] == list(their_params), what
        for name, p in ours.named_parameters():
            assert p.grad is not None, f"{name} got no gradient, {what}"
            assert_close(p.grad.numpy(), their_params[name].grad.numpy(), dtype, f"grad of {name}, {what}")
        theirs.zero_grad()
        ours.zero_grad()

    their_state = theirs.state_dict()
    for name, value in ours.state_dict().items():  # running statistics, num_batches_tracked
        expected = their_state[name].numpy()
        assert value.dtype == expected.dtype, name
        assert_close(value, expected, dtype, f"state {name} after {len(modes)} steps")


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("make,make_input,modes", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_layer_matches_torch(make, make_input, modes, dtype):
    check_layer_matches_torch(make, make_input, modes, dtype)


def test_every_public_layer_has_a_parity_case():
    """A new layer in layers/norm/conv.py must get a line in CASES."""
    from groundup.nn import conv, layers, norm

    covered = {type(make(nn)).__name__ for _, make, _, _ in CASES}
    public = set(layers.__all__) | set(norm.__all__) | set(conv.__all__)
    assert public - covered == set()


# ------------------------------------------------------------------ default initialisation
@pytest.mark.parametrize("make,fan_in", [
    (lambda m: m.Conv2d(16, 32, 3), 16 * 9),
    (lambda m: m.Conv2d(16, 32, (3, 5), groups=4), 4 * 15),
    (lambda m: m.Linear(300, 200), 300),
])
def test_default_init_is_torchs_uniform(make, fan_in):
    """kaiming_uniform_(a=sqrt(5)) == U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight, and the same bound for bias."""
    gu.manual_seed(0)
    ours, theirs = make(nn), make(torch.nn)
    bound = 1 / math.sqrt(fan_in)
    for name, p in ours.named_parameters():
        values = p.detach().numpy()
        their_values = dict(theirs.named_parameters())[name].detach().numpy()
        assert values.shape == their_values.shape
        assert np.abs(values).max() <= bound
        assert np.abs(their_values).max() <= bound
        assert np.abs(values).max() > 0.9 * bound  # fills the interval, not a narrower one
        np.testing.assert_allclose(values.std(), bound / math.sqrt(3), rtol=0.15)


def test_norm_default_init_and_buffers():
    bn = nn.BatchNorm2d(3)
    np.testing.assert_array_equal(bn.weight.detach().numpy(), np.ones(3))
    np.testing.assert_array_equal(bn.bias.detach().numpy(), np.zeros(3))
    state = bn.state_dict()
    assert list(state) == ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    assert state["num_batches_tracked"].shape == () and state["num_batches_tracked"].dtype == np.int64
    assert [n for n, _ in bn.named_parameters()] == ["weight", "bias"]  # buffers are not parameters
    np.testing.assert_array_equal(nn.RMSNorm(4).weight.detach().numpy(), np.ones(4))
    assert list(nn.BatchNorm1d(3, affine=False, track_running_stats=False).state_dict()) == []


# ------------------------------------------------------------------ batch norm details
def test_batchnorm_running_var_uses_unbiased_variance_and_eval_uses_running_stats():
    x = np.random.default_rng(0).standard_normal((4, 2)).astype(np.float64)
    bn = nn.BatchNorm1d(2, momentum=1.0).double()  # momentum 1: running stats = this batch's stats
    bn(gu.tensor(x))
    np.testing.assert_allclose(bn.running_mean.numpy(), x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(bn.running_var.numpy(), x.var(0, ddof=1), rtol=1e-12)
    assert bn.num_batches_tracked.item() == 1
    bn.eval()
    y = bn(gu.tensor(x)).detach().numpy()
    np.testing.assert_allclose(y, (x - x.mean(0)) / np.sqrt(x.var(0, ddof=1) + 1e-5), rtol=1e-12)
    assert bn.num_batches_tracked.item() == 1  # eval leaves the statistics alone


def test_batchnorm_errors():
    with pytest.raises(ValueError, match="2D .* or 3D"):
        nn.BatchNorm1d(3)(gu.randn(2, 3, 4, 5))
    with pytest.raises(ValueError, match="4D"):
        nn.BatchNorm2d(3)(gu.randn(2, 3))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        nn.BatchNorm1d(3)(gu.randn(1, 3))
    with pytest.raises(RuntimeError, match="expected 3 channels"):
        nn.BatchNorm2d(3)(gu.randn(2, 4, 2, 2))
    nn.BatchNorm1d(3).eval()(gu.randn(1, 3))  # one sample is fine in eval


def test_embedding_padding_idx_out_of_range_is_refused():
    for padding_idx in (5, -6):                  # -6 wrapped round to row 4 and silently froze it
        with pytest.raises(ValueError, match=f"padding_idx must be within.*got {padding_idx}"):
            nn.Embedding(5, 2, padding_idx=padding_idx)
        with pytest.raises(ValueError, match=f"padding_idx must be within.*got {padding_idx}"):
            F.embedding(gu.tensor([0, 4]), gu.randn(5, 2), padding_idx=padding_idx)
    assert nn.Embedding(5, 2, padding_idx=-5).padding_idx == 0


@pytest.mark.parametrize("freeze,padding_idx", [(True, None), (False, None), (False, 1), (True, -1)])
def test_embedding_from_pretrained_matches_torch(freeze, padding_idx):
    rows = np.random.default_rng(0).standard_normal((4, 3))
    ours = nn.Embedding.from_pretrained(gu.tensor(rows), freeze=freeze, padding_idx=padding_idx)
    theirs = torch.nn.Embedding.from_pretrained(torch.from_numpy(rows), freeze=freeze, padding_idx=padding_idx)
    assert repr(ours) == repr(theirs) and ours.padding_idx == theirs.padding_idx
    assert ours.weight.requires_grad == theirs.weight.requires_grad == (not freeze)
    np.testing.assert_array_equal(ours.weight.detach().numpy(), rows)  # the padding row keeps its values
    assert ours.weight.dtype == np.float64
    idx = [1, 2, 1, 3]
    out, out_torch = ours(gu.tensor(idx)), theirs(torch.tensor(idx))
    np.testing.assert_array_equal(out.detach().numpy(), out_torch.detach().numpy())
    if not freeze:
        out.sum().backward(), out_torch.sum().backward()
        np.testing.assert_array_equal(ours.weight.grad.numpy(), theirs.weight.grad.numpy())


def test_embedding_from_pretrained_shares_memory_and_refuses_bad_input():
    rows = gu.randn(5, 2)
    gu.manual_seed(0)
    expected = gu.randn(3).numpy()
    gu.manual_seed(0)
    emb = nn.Embedding.from_pretrained(rows)
    np.testing.assert_array_equal(gu.randn(3).numpy(), expected)  # no random init is drawn (and thrown away)
    rows.data[0] = 7.0
    assert emb.weight.data[0, 0] == 7.0                        # shares memory, as torch
    with pytest.raises(ValueError, match="must be 2-D"):
        nn.Embedding.from_pretrained(gu.randn(3))
    with pytest.raises(ValueError, match="padding_idx must be within"):
        nn.Embedding.from_pretrained(rows, padding_idx=5)


MIXED_DTYPE_LAYERS = {
    "Conv2d": (lambda lib: lib.Conv2d(3, 4, 3), (2, 3, 5, 5)),
    "LayerNorm": (lambda lib: lib.LayerNorm(5), (2, 3, 5)),
    "LayerNorm-no-affine": (lambda lib: lib.LayerNorm(5, elementwise_affine=False), (2, 3, 5)),
    "BatchNorm1d": (lambda lib: lib.BatchNorm1d(3), (4, 3)),
    "BatchNorm2d": (lambda lib: lib.BatchNorm2d(3), (2, 3, 4, 4)),
    "BatchNorm2d-eval": (lambda lib: lib.BatchNorm2d(3).eval(), (2, 3, 4, 4)),
    "BatchNorm1d-no-affine": (lambda lib: lib.BatchNorm1d(3, affine=False), (4, 3, 2)),
    "BatchNorm1d-stateless": (lambda lib: lib.BatchNorm1d(3, affine=False, track_running_stats=False), (4, 3)),
    "RMSNorm": (lambda lib: lib.RMSNorm(5), (2, 3, 5)),
}


@pytest.mark.filterwarnings("ignore:Mismatch dtype between input and weight:UserWarning")
@pytest.mark.parametrize("input_dtype,param_dtype", [
    (np.float64, np.float32), (np.float32, np.float64), (np.float16, np.float32), (np.float16, np.float64),
])
@pytest.mark.parametrize("name", list(MIXED_DTYPE_LAYERS))
def test_mixed_input_and_parameter_dtypes_as_torch(name, input_dtype, param_dtype):
    """Refused where torch refuses (naming both dtypes); elsewhere torch's output dtype and values."""
    make, shape = MIXED_DTYPE_LAYERS[name]
    torch_dtype = {np.float16: torch.float16, **TORCH_DTYPE}
    theirs = make(torch.nn).to(torch_dtype[param_dtype])
    ours = make(nn)
    ours.load_state_dict(theirs.state_dict())
    ours.to(param_dtype)
    x = np.random.default_rng(0).standard_normal(shape).astype(input_dtype)
    try:
        expected = theirs(torch.from_numpy(x))
    except RuntimeError:
        pattern = (f"input dtype {np.dtype(input_dtype)} differs from the "
                   f"(weight|running_mean)'s {np.dtype(param_dtype)}; convert one of them first")
        with pytest.raises(RuntimeError, match=pattern):
            ours(gu.tensor(x))
        return
    got = ours(gu.tensor(x))
    assert got.dtype == np.dtype(str(expected.dtype).removeprefix("torch."))
    tol = dict(rtol=1e-2, atol=1e-2) if input_dtype == np.float16 else TOL[np.float32]
    np.testing.assert_allclose(got.detach().numpy().astype(np.float64), expected.detach().double().numpy(), **tol)


def test_integer_input_to_a_float_layer_is_refused():
    for layer, shape in [(nn.Conv2d(3, 4, 3), (1, 3, 5, 5)), (nn.LayerNorm(5), (2, 5)), (nn.BatchNorm1d(3), (4, 3))]:
        with pytest.raises(RuntimeError, match="input dtype int64 is not floating point"):
            layer(gu.ones(*shape, dtype=gu.int64))


def test_conv_errors():
    with pytest.raises(ValueError, match="divisible by groups"):
        nn.Conv2d(3, 4, 3, groups=2)
    with pytest.raises(ValueError, match="strided"):
        nn.Conv2d(3, 4, 3, stride=2, padding="same")
    with pytest.raises(ValueError, match="padding"):
        nn.Conv2d(3, 4, 3, padding="full")
    with pytest.raises(ValueError, match="padding_mode must be one of"):
        nn.Conv2d(3, 4, 3, padding_mode="mirror")
    with pytest.raises(RuntimeError, match=r"\(N, 3, H, W\)"):
        nn.Conv2d(3, 4, 3)(gu.randn(2, 4, 5, 5))
    with pytest.raises(RuntimeError, match=r"\(N, 3, H, W\) or unbatched \(3, H, W\)"):
        nn.Conv2d(3, 4, 3)(gu.randn(4, 5, 5))
    x = gu.randn(1, 1, 5, 5)
    with pytest.raises(RuntimeError, match="avg_pool2d: padding"):          # as max_pool2d and torch
        nn.AvgPool2d(2, padding=2)(x)
    for layer, op, what in [(nn.Conv2d(1, 1, 3, stride=0), "conv2d", "stride must be positive, got 0"),
                            (nn.Conv2d(1, 1, 3, padding=-1), "conv2d", "padding must be non-negative, got -1"),
                            (nn.Conv2d(1, 1, 3, dilation=(1, 0)), "conv2d", "dilation must be positive, got 0"),
                            (nn.MaxPool2d(2, stride=0), "max_pool2d", "stride must be positive"),
                            (nn.AvgPool2d(0), "avg_pool2d", "kernel_size must be positive")]:
        with pytest.raises(RuntimeError, match=f"{op}: {what}"):            # not a ZeroDivisionError
            layer(x)
    for pool in (nn.MaxPool2d(2), nn.AvgPool2d(2)):             # not a NumPy unpacking error
        with pytest.raises(RuntimeError, match=r"pool2d: expected a 3-D \(C, H, W\) or 4-D \(N, C, H, W\)"):
            pool(gu.randn(4, 4))


@pytest.mark.parametrize("make", [
    lambda m: m.Conv2d(3, 4, 3, stride=2, padding=1, dilation=2, groups=1, bias=False),
    lambda m: m.Conv2d(4, 4, (1, 3), padding="same", groups=2),
    lambda m: m.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"),
    lambda m: m.BatchNorm1d(4, momentum=None, affine=False),
    lambda m: m.BatchNorm2d(4),
    lambda m: m.RMSNorm((2, 3), eps=1e-6),
    lambda m: m.AvgPool2d(3, stride=2, padding=1),
    lambda m: m.MaxPool2d(3, stride=2, padding=1, dilation=(1, 2)),
    lambda m: m.LayerNorm((2, 3), eps=1e-3),
    lambda m: m.LayerNorm(4, elementwise_affine=False),
    lambda m: m.LayerNorm(4, bias=False),
    lambda m: m.Dropout(0.25),
    lambda m: m.Flatten(0, -2),
    lambda m: m.GELU(approximate="tanh"),
    lambda m: m.Softmax(dim=1),
    lambda m: m.LogSoftmax(dim=-1),
    lambda m: m.Sequential(m.Linear(2, 3, bias=False), m.ReLU(), m.Dropout(), m.Embedding(5, 2, padding_idx=1)),
])
def test_repr_matches_torch(make):
    assert repr(make(nn)) == repr(make(torch.nn))


# ------------------------------------------------------------------ dropout statistics
def test_dropout_train_statistics_and_gradient():
    p = 0.3
    gu.manual_seed(0)
    x = gu.ones(400, 250, requires_grad=True)
    out = nn.Dropout(p)(x)
    values = out.detach().numpy()
    zero_fraction = (values == 0).mean()
    assert abs(zero_fraction - p) < 0.01  # 100k draws: std 0.0014
    np.testing.assert_allclose(values[values != 0], 1 / (1 - p), rtol=1e-6)  # inverted dropout scaling
    np.testing.assert_allclose(values.mean(), 1.0, atol=0.02)  # unbiased in expectation
    out.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), values)  # d out / d x is the scaled mask


def test_dropout_eval_identity_edge_cases_and_seed():
    x = gu.randn(20, 30)
    layer = nn.Dropout(0.5)
    np.testing.assert_array_equal(layer.eval()(x).numpy(), x.numpy())
    layer.train()
    np.testing.assert_array_equal(nn.Dropout(1.0)(x).numpy(), np.zeros((20, 30), np.float32))
    np.testing.assert_array_equal(nn.Dropout(0.0)(x).numpy(), x.numpy())
    gu.manual_seed(5)
    first = layer(x).numpy()
    gu.manual_seed(5)
    np.testing.assert_array_equal(layer(x).numpy(), first)
    assert not np.array_equal(layer(x).numpy(), first)
    with pytest.raises(ValueError, match="p must be in"):
        nn.Dropout(1.5)
