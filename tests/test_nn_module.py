"""Module behaviour: registration, names, state dicts, modes, gradients and devices (containers: test_nn_containers.py).

Where torch defines the behaviour (names, key order, tied parameters, repr), torch is the oracle;
the rest is checked against hand-computed expectations.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest

import groundup as gu
from groundup import nn


class Block(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.proj = nn.Linear(width, width)
        self.scale = nn.Parameter(gu.ones(width))
        self.norm = nn.LayerNorm(width)
        self.register_buffer("steps", gu.zeros(()))

    def forward(self, x):
        return self.norm(self.proj(x) * self.scale)


class Net(nn.Module):
    def __init__(self, width: int = 4, depth: int = 2):
        super().__init__()
        self.embed = nn.Parameter(gu.randn(3, width))
        self.blocks = nn.ModuleList([Block(width) for _ in range(depth)])
        self.head = nn.Linear(width, 2, bias=False)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return self.head(self.drop(x))


# A module's own parameters come before its children's (torch's order, checked against torch below).
NET_PARAMS = ["embed", "blocks.0.scale", "blocks.0.proj.weight", "blocks.0.proj.bias", "blocks.0.norm.weight",
              "blocks.0.norm.bias", "blocks.1.scale", "blocks.1.proj.weight", "blocks.1.proj.bias",
              "blocks.1.norm.weight", "blocks.1.norm.bias", "head.weight"]
NET_STATE = (NET_PARAMS[:2] + ["blocks.0.steps"] + NET_PARAMS[2:7] + ["blocks.1.steps"] + NET_PARAMS[7:])


def arrays_of(module):
    return {k: v.copy() for k, v in module.state_dict().items()}


def assert_same_state(a, b):
    assert list(a) == list(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


# ------------------------------------------------------------------ registration and names
def test_named_parameters_follow_registration_order_with_nested_names():
    net = Net()
    assert [name for name, _ in net.named_parameters()] == NET_PARAMS
    assert [p.shape for p in net.parameters()][:3] == [(3, 4), (4,), (4, 4)]
    assert all(p.requires_grad for p in net.parameters())
    assert [name for name, _ in net.named_modules()] == [
        "", "blocks", "blocks.0", "blocks.0.proj", "blocks.0.norm", "blocks.1", "blocks.1.proj", "blocks.1.norm",
        "head", "drop"]
    assert [name for name, _ in net.named_children()] == ["blocks", "head", "drop"]
    assert [name for name, _ in net.named_buffers()] == ["blocks.0.steps", "blocks.1.steps"]
    assert [name for name, _ in net.named_parameters(recurse=False)] == ["embed"]
    assert [name for name, _ in net.named_parameters(prefix="model")][0] == "model.embed"
    assert net.num_parameters() == 3 * 4 + 2 * (16 + 4 + 4 + 4 + 4) + 8


@pytest.mark.torch
def test_net_names_match_the_same_net_in_torch():
    torch = pytest.importorskip("torch")

    def make(m, ones):
        class TorchBlock(m.Module):
            def __init__(self):
                super().__init__()
                self.proj = m.Linear(4, 4)
                self.scale = m.Parameter(ones(4))
                self.norm = m.LayerNorm(4)
                self.register_buffer("steps", ones(()))

        class TorchNet(m.Module):
            def __init__(self):
                super().__init__()
                self.embed = m.Parameter(ones(3, 4))
                self.blocks = m.ModuleList([TorchBlock() for _ in range(2)])
                self.head = m.Linear(4, 2, bias=False)
                self.drop = m.Dropout(0.5)

        return TorchNet()

    ours, theirs = make(nn, gu.ones), make(torch.nn, torch.ones)
    assert [n for n, _ in theirs.named_parameters()] == [n for n, _ in ours.named_parameters()] == NET_PARAMS
    assert list(theirs.state_dict()) == list(ours.state_dict()) == NET_STATE
    assert [n for n, _ in theirs.named_buffers()] == [n for n, _ in ours.named_buffers()]
    ours.load_state_dict(theirs.state_dict())


@pytest.mark.torch
def test_parameter_and_module_names_match_torch():
    torch = pytest.importorskip("torch")

    def make(m):
        return m.Sequential(OrderedDict(conv=m.Conv2d(1, 2, 3), bn=m.BatchNorm2d(2), act=m.ReLU(),
                                        fc=m.ModuleList([m.Linear(8, 3), m.Linear(3, 1)])))

    ours, theirs = make(nn), make(torch.nn)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    assert [n for n, _ in ours.named_modules()] == [n for n, _ in theirs.named_modules()]
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert repr(ours) == repr(theirs)


def test_reassigning_and_deleting_attributes():
    block = Block(3)
    block.proj = nn.Linear(3, 3, bias=False)  # replacing a submodule keeps its slot
    assert [n for n, _ in block.named_parameters()][:2] == ["scale", "proj.weight"]
    assert "proj.bias" not in block.state_dict()
    block.scale = None  # a parameter slot may be cleared, as in torch
    assert "scale" not in dict(block.named_parameters())
    with pytest.raises(TypeError, match="parameter 'scale'"):
        block.scale = gu.ones(3)  # a plain Tensor is not a Parameter
    with pytest.raises(TypeError, match="submodule 'norm'"):
        block.norm = 3
    del block.norm
    assert "norm.weight" not in block.state_dict()
    with pytest.raises(AttributeError, match="no attribute 'norm'"):
        block.norm
    block.plain = 5  # ordinary attributes stay ordinary
    assert block.plain == 5 and "plain" not in block.state_dict()


def test_assigning_before_super_init_is_a_clear_error():
    class Forgetful(nn.Module):
        def __init__(self):
            self.layer = nn.Linear(2, 2)

    with pytest.raises(AttributeError, match="super\\(\\).__init__\\(\\)"):
        Forgetful()


def test_tied_parameters_are_counted_once_but_saved_under_every_name():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte = nn.Embedding(5, 3)
            self.lm_head = nn.Linear(3, 5, bias=False)
            self.lm_head.weight = self.wte.weight

        def forward(self, idx):
            return self.lm_head(self.wte(idx))

    model = Tied()
    assert [n for n, _ in model.named_parameters()] == ["wte.weight"]
    assert len(list(model.parameters())) == 1 and model.num_parameters() == 15
    assert list(model.state_dict()) == ["wte.weight", "lm_head.weight"]  # as torch
    model(gu.tensor([[0, 1, 4]])).sum().backward()
    grad = model.wte.weight.grad.numpy()
    assert grad[2].sum() != 0  # the lm_head use reaches every row, not just the looked-up ones
    # loading writes the one shared array
    state = model.state_dict()
    state["wte.weight"] = state["lm_head.weight"] = np.full((5, 3), 0.5, np.float32)
    model.load_state_dict(state)
    assert model.lm_head.weight is model.wte.weight
    np.testing.assert_array_equal(model.lm_head.weight.detach().numpy(), state["wte.weight"])


@pytest.mark.torch
def test_shared_submodule_state_dict_keys_match_torch():
    torch = pytest.importorskip("torch")

    def make(m):
        class Shared(m.Module):
            def __init__(self):
                super().__init__()
                self.a = m.Linear(2, 2)
                self.b = self.a

        return Shared()

    ours, theirs = make(nn), make(torch.nn)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    ours.load_state_dict(theirs.state_dict())  # strict: no "unexpected keys"


# ------------------------------------------------------------------ state dicts
def test_state_dict_round_trip_and_copies():
    gu.manual_seed(0)
    a = Net()
    gu.manual_seed(1)
    b = Net()
    x = gu.randn(5, 4)
    b.eval(), a.eval()
    assert not np.allclose(a(x).detach().numpy(), b(x).detach().numpy())
    state = a.state_dict()
    assert list(state) == NET_STATE
    assert all(isinstance(v, np.ndarray) for v in state.values())
    missing, unexpected = b.load_state_dict(state)
    assert missing == [] and unexpected == []
    np.testing.assert_array_equal(a(x).detach().numpy(), b(x).detach().numpy())
    state["head.weight"][...] = 7.0  # state_dict returns copies: editing them changes no model
    assert not np.any(a.head.weight.detach().numpy() == 7.0)
    before = b.head.weight.detach().numpy().copy()
    state["head.weight"][...] = 0.0
    np.testing.assert_array_equal(b.head.weight.detach().numpy(), before)  # loading copied, too


def test_load_state_dict_accepts_tensors_and_casts_dtype():
    net, other = Net(), Net()
    net.load_state_dict({k: gu.tensor(v) for k, v in other.state_dict().items()})
    assert_same_state(arrays_of(net), arrays_of(other))
    net.load_state_dict({k: v.astype(np.float64) for k, v in other.state_dict().items()})
    assert all(p.dtype == np.float32 for p in net.parameters())  # the model keeps its dtype


@pytest.mark.torch
def test_load_state_dict_accepts_torch_tensors():
    torch = pytest.importorskip("torch")
    theirs = torch.nn.Linear(3, 2)
    ours = nn.Linear(3, 2)
    ours.load_state_dict(theirs.state_dict())
    np.testing.assert_array_equal(ours.weight.detach().numpy(), theirs.weight.detach().numpy())


def test_load_state_dict_errors_name_every_problem_and_change_nothing():
    net = Net()
    before = arrays_of(net)
    bad = arrays_of(Net())
    del bad["blocks.1.scale"]                      # missing
    bad["blocks.9.proj.weight"] = np.zeros((4, 4))  # unexpected
    bad["head.weight"] = np.zeros((3, 4))           # shape mismatch
    with pytest.raises(RuntimeError) as info:
        net.load_state_dict(bad)
    message = str(info.value)
    assert "missing keys: blocks.1.scale" in message
    assert "unexpected keys: blocks.9.proj.weight" in message
    assert "head.weight: checkpoint (3, 4) vs model (2, 4)" in message
    assert_same_state(arrays_of(net), before)  # checked everything before changing anything


@pytest.mark.parametrize("edit,pattern", [
    (lambda s: s.pop("embed"), "missing keys: embed"),
    (lambda s: s.update(extra=np.zeros(2)), "unexpected keys: extra"),
    (lambda s: s.update({"blocks.0.steps": np.zeros(2)}), r"blocks.0.steps: checkpoint \(2,\) vs model \(\)"),
])
def test_each_load_error_alone(edit, pattern):
    net = Net()
    before = arrays_of(net)
    state = arrays_of(Net())
    edit(state)
    with pytest.raises(RuntimeError, match=pattern):
        net.load_state_dict(state)
    assert_same_state(arrays_of(net), before)


def test_load_state_dict_non_strict():
    net = Net()
    source = arrays_of(Net())
    partial = {k: v for k, v in source.items() if k.startswith("blocks.0.")}
    partial["unknown.weight"] = np.zeros(3)
    missing, unexpected = net.load_state_dict(partial, strict=False)
    assert unexpected == ["unknown.weight"]
    assert set(missing) == set(source) - set(partial)
    np.testing.assert_array_equal(net.blocks[0].proj.weight.detach().numpy(), source["blocks.0.proj.weight"])
    partial["blocks.0.scale"] = np.zeros(9)
    with pytest.raises(RuntimeError, match="shape mismatch"):  # shapes are checked even when not strict
        net.load_state_dict(partial, strict=False)


@pytest.mark.torch
def test_load_state_dict_returns_torchs_named_pair():
    torch = pytest.importorskip("torch")
    ours, theirs = nn.Linear(3, 2), torch.nn.Linear(3, 2)
    matched, matched_torch = ours.load_state_dict(ours.state_dict()), theirs.load_state_dict(theirs.state_dict())
    assert matched == ([], []) and repr(matched) == repr(matched_torch) == "<All keys matched successfully>"
    partial = {"weight": ours.state_dict()["weight"], "extra": np.zeros(1)}
    result = ours.load_state_dict(partial, strict=False)
    result_torch = theirs.load_state_dict({k: torch.from_numpy(v) for k, v in partial.items()}, strict=False)
    assert result._fields == result_torch._fields == ("missing_keys", "unexpected_keys")
    assert result.missing_keys == result_torch.missing_keys == ["bias"]
    assert result.unexpected_keys == result_torch.unexpected_keys == ["extra"]
    missing, unexpected = result
    assert (missing, unexpected) == tuple(result_torch)
    with pytest.raises(RuntimeError, match="unexpected keys: extra"):  # strict still raises
        ours.load_state_dict(partial)


def _tree(lib):
    """The same small tree of modules in groundup or torch (``lib`` is ``nn`` or ``torch.nn``)."""
    tree = lib.Sequential(lib.Linear(2, 3), lib.Sequential(lib.BatchNorm1d(3), lib.Linear(3, 1, bias=False)))
    tree.note = "not a module"
    return tree


@pytest.mark.torch
@pytest.mark.parametrize("method,target", [
    ("get_submodule", ""), ("get_submodule", "1.0"), ("get_submodule", "2"), ("get_submodule", "0.weight"),
    ("get_submodule", "1.x.y"), ("get_submodule", "note"), ("get_parameter", "0.weight"),
    ("get_parameter", "1.1.bias"), ("get_parameter", "0.nope"), ("get_parameter", "1.0.running_mean"),
    ("get_parameter", "x.weight"), ("get_parameter", "weight"), ("get_parameter", "note"),
    ("get_buffer", "1.0.num_batches_tracked"), ("get_buffer", "1.0.weight"), ("get_buffer", "1.0.nope"),
])
def test_get_submodule_parameter_buffer_match_torch(method, target):
    torch = pytest.importorskip("torch")
    ours, theirs = _tree(nn), _tree(torch.nn)

    def outcome(tree):
        try:
            found = getattr(tree, method)(target)
        except AttributeError as err:
            return "AttributeError", str(err)
        path = [name for name, obj in [*tree.named_modules(), *tree.named_parameters(), *tree.named_buffers()]
                if obj is found]
        return type(found).__name__, path

    assert outcome(ours) == outcome(theirs)


def test_get_buffer_finds_non_persistent_buffers():
    m = nn.Module()
    m.register_buffer("scratch", gu.ones(2), persistent=False)
    assert m.get_buffer("scratch") is m.scratch


@pytest.mark.torch
def test_state_dict_prefix_destination_and_keep_vars_match_torch():
    torch = pytest.importorskip("torch")
    ours, theirs = _tree(nn), _tree(torch.nn)
    assert list(ours.state_dict(prefix="model.")) == list(theirs.state_dict(prefix="model."))
    kept, kept_torch = ours.state_dict(keep_vars=True), theirs.state_dict(keep_vars=True)
    assert [type(v).__name__ for v in kept.values()] == [type(v).__name__ for v in kept_torch.values()]
    assert kept["0.weight"] is ours[0].weight and kept["1.0.running_mean"] is ours[1][0].running_mean
    assert all(isinstance(v, np.ndarray) for v in ours.state_dict().values())  # copies unless keep_vars
    target = {"step": 3}
    assert ours.state_dict(destination=target, prefix="m.") is target
    assert list(target) == ["step", *theirs.state_dict(prefix="m.")]


def test_buffers_are_in_state_dict_unless_non_persistent():
    class WithBuffers(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("kept", gu.arange(3))
            self.register_buffer("scratch", gu.ones(2), persistent=False)
            self.register_buffer("empty", None)

    m = WithBuffers()
    assert list(m.state_dict()) == ["kept"]
    assert [n for n, _ in m.named_buffers()] == ["kept", "scratch"]
    assert list(m.parameters()) == []
    m.kept = gu.tensor([7, 8, 9])  # assigning to a buffer name replaces the buffer
    np.testing.assert_array_equal(m.state_dict()["kept"], [7, 8, 9])
    m.load_state_dict({"kept": np.array([1, 2, 3])})
    np.testing.assert_array_equal(m.kept.numpy(), [1, 2, 3])
    m.double()
    assert m.kept.dtype == np.int64 and m.scratch.dtype == np.float64  # only floats are cast


# ------------------------------------------------------------------ modes, grads, apply, devices
def test_train_and_eval_propagate_to_every_submodule():
    net = Net()
    assert all(m.training for m in net.modules())
    assert net.eval() is net
    assert not any(m.training for m in net.modules())
    x = gu.randn(6, 4)
    np.testing.assert_array_equal(net(x).detach().numpy(), net(x).detach().numpy())  # dropout off
    net.blocks.train()
    assert net.blocks[1].norm.training and not net.training and not net.drop.training
    net.train()
    assert all(m.training for m in net.modules())


def test_zero_grad_and_requires_grad():
    net = nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3), nn.Linear(3, 2))
    net(gu.randn(3, 4)).sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    net.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.numpy().any() for p in net.parameters())
    net.zero_grad()
    assert all(p.grad is None for p in net.parameters())
    net.requires_grad_(False)
    assert not any(p.requires_grad for p in net.parameters())
    assert not net(gu.randn(3, 4)).requires_grad


def test_apply_visits_children_first_then_self():
    net = Net(depth=1)
    visited = []
    assert net.apply(lambda m: visited.append(type(m).__name__)) is net
    assert visited == ["Linear", "LayerNorm", "Block", "ModuleList", "Linear", "Dropout", "Net"]

    def init_linear(m):
        if isinstance(m, nn.Linear):
            nn.init.zeros_(m.weight)

    net.apply(init_linear)
    assert not net.head.weight.detach().numpy().any() and not net.blocks[0].proj.weight.detach().numpy().any()


def test_to_dtype_and_back():
    net = Net()
    x = gu.randn(2, 4)
    out32 = net.eval()(x).detach().numpy()
    net.double()
    assert all(p.dtype == np.float64 for p in net.parameters())
    out64 = net(x.double()).detach().numpy()
    assert out64.dtype == np.float64
    np.testing.assert_allclose(out64, out32, rtol=1e-4, atol=1e-5)
    assert all(p.dtype == np.float32 for p in net.float().parameters())


@pytest.mark.skipif(gu.cuda_is_available(), reason="checks the error raised without CuPy/GPU")
def test_to_cuda_without_cupy_is_a_clear_error_and_moves_nothing():
    net = Net()
    before = arrays_of(net)
    with pytest.raises(RuntimeError, match="CuPy"):
        net.to("cuda")
    assert all(p.device == "cpu" for p in net.parameters())
    assert_same_state(arrays_of(net), before)
    with pytest.raises(ValueError, match="unknown device"):
        net.to("tpu")


def test_repr_nests_children():
    net = Net(depth=1)
    text = repr(net)
    assert text.startswith("Net(\n  (blocks): ModuleList(\n    (0): Block(\n      (proj): Linear(in_features=4")
    assert "(head): Linear(in_features=4, out_features=2, bias=False)" in text
    assert text.endswith("(drop): Dropout(p=0.5, inplace=False)\n)")
    assert repr(nn.ReLU()) == "ReLU()"


def test_parameter_repr_and_wrapping():
    p = nn.Parameter(gu.ones(2))
    assert p.requires_grad and repr(p).startswith("Parameter containing:")
    assert not nn.Parameter(gu.ones(2), requires_grad=False).requires_grad


# ----------------------------------------------------------------------------- eval_mode
def _mixed_model() -> nn.Module:
    model = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5), nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5)))
    model.train()
    model[2].eval()                                                    # one part frozen in eval mode
    return model


def _modes(model: nn.Module) -> list[bool]:
    return [m.training for m in model.modules()]


def test_eval_mode_restores_every_submodule_even_when_the_block_raises():
    model = _mixed_model()
    before = _modes(model)
    with nn.utils.eval_mode(model):
        assert not any(_modes(model))
    assert _modes(model) == before
    with pytest.raises(ZeroDivisionError), nn.utils.eval_mode(model):
        1 / 0
    assert _modes(model) == before


def test_the_models_helpers_that_switch_to_eval_mode_restore_a_mixed_mode():
    from groundup.models.gpt import GPT, GPTConfig
    from groundup.models.rnn_lm import RNNLM, RNNLMConfig
    from groundup.train.evaluation import evaluating

    gpt = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=8, dropout=0.1))
    gpt.train()
    gpt.blocks[0].eval()
    before = _modes(gpt)
    gpt.generate(np.zeros((1, 2), dtype=np.int64), max_new_tokens=3, seed=0)
    gpt.attention_maps(np.zeros((1, 4), dtype=np.int64))
    with evaluating(gpt):
        pass
    assert _modes(gpt) == before
    lm = RNNLM(RNNLMConfig(vocab_size=7, cell="gru", n_embd=4, hidden_size=5))
    lm.train()
    lm.rnn.eval()
    before = _modes(lm)
    lm.generate(2, np.random.default_rng(0), max_len=4)
    assert _modes(lm) == before
