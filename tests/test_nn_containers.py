"""Containers against torch's: Sequential, ModuleList and ModuleDict, built, indexed and mutated.

Each mutation (insert, pop, del, slices, +, +=, *, update, ...) is replayed on torch's container of
the same modules, and the names, state_dict keys and parameter names are compared after every step;
the refusals are compared with torch's exception types.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest

import groundup as gu
from groundup import nn


def test_sequential():
    gu.manual_seed(0)
    seq = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    x = gu.randn(5, 3)
    expected = seq[2](seq[1](seq[0](x)))
    np.testing.assert_array_equal(seq(x).detach().numpy(), expected.detach().numpy())
    assert len(seq) == 3 and isinstance(seq[-1], nn.Linear)
    assert [n for n, _ in seq.named_parameters()] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert [type(m).__name__ for m in seq] == ["Linear", "Tanh", "Linear"]
    tail = seq[1:]
    assert isinstance(tail, nn.Sequential) and len(tail) == 2
    np.testing.assert_array_equal(tail(seq[0](x)).detach().numpy(), expected.detach().numpy())
    seq.append(nn.ReLU())
    assert len(seq) == 4 and isinstance(seq[3], nn.ReLU)
    named = nn.Sequential(OrderedDict(fc=nn.Linear(3, 2), act=nn.ReLU()))
    assert [n for n, _ in named.named_parameters()] == ["fc.weight", "fc.bias"]
    assert isinstance(named.fc, nn.Linear)


def test_module_list():
    layers = nn.ModuleList([nn.Linear(2, 2) for _ in range(2)])
    layers.append(nn.Linear(2, 3)).extend([nn.ReLU()])
    assert len(layers) == 4
    assert [n for n, _ in layers.named_parameters()][-2:] == ["2.weight", "2.bias"]
    assert layers[-2].out_features == 3
    assert isinstance(layers[1:3], nn.ModuleList) and len(layers[1:3]) == 2
    replacement = nn.Linear(2, 5)
    layers[0] = replacement
    assert layers[0] is replacement and list(layers.state_dict())[0] == "0.weight"
    layers[-1] = nn.Tanh()
    assert isinstance(layers[3], nn.Tanh)
    with pytest.raises(IndexError):
        layers[4] = nn.ReLU()
    assert len(layers) == 4
    assert [type(m).__name__ for m in layers] == ["Linear", "Linear", "Linear", "Tanh"]
    assert len(nn.ModuleList()) == 0


def test_module_dict():
    heads = nn.ModuleDict({"cls": nn.Linear(4, 3), "reg": nn.Linear(4, 1)})
    heads["aux"] = nn.Linear(4, 2)
    assert list(heads) == ["cls", "reg", "aux"] == list(heads.keys())
    assert "reg" in heads and "nope" not in heads and len(heads) == 3
    assert heads["aux"].out_features == 2
    assert [n for n, _ in heads.named_parameters()][:2] == ["cls.weight", "cls.bias"]
    assert [k for k, _ in heads.items()] == ["cls", "reg", "aux"]
    assert all(isinstance(m, nn.Linear) for m in heads.values())


def _lin(lib, width):
    return lib.Linear(1, width)


def _snapshot(container):
    """Everything torch and groundup must agree on after a mutation: names, keys and which module is where."""
    modules = container.values() if hasattr(container, "values") else container
    return (list(container._modules), list(container.state_dict()), [n for n, _ in container.named_parameters()],
            [getattr(m, "out_features", type(m).__name__) for m in modules])


def _summary(value):
    """A returned value (a popped module or container) in comparable form."""
    if hasattr(value, "_modules") and len(value._modules):
        return type(value).__name__, _snapshot(value)
    return getattr(value, "out_features", type(value).__name__)


SEQUENTIAL_OPS = [
    lambda lib, s: s.__delitem__(1),
    lambda lib, s: s.append(_lin(lib, 4)),
    lambda lib, s: s.insert(1, _lin(lib, 5)),
    lambda lib, s: s.insert(-1, _lin(lib, 6)),
    lambda lib, s: s.insert(len(s), _lin(lib, 7)),
    lambda lib, s: s.insert(-len(s), lib.ReLU()),
    lambda lib, s: s.__setitem__(0, _lin(lib, 8)),
    lambda lib, s: s.__setitem__(-1, _lin(lib, 9)),
    lambda lib, s: s.pop(2),
    lambda lib, s: s.pop(-1),
    lambda lib, s: s.pop(slice(0, 2)),
    lambda lib, s: s.extend([_lin(lib, 10), lib.Tanh(), _lin(lib, 11)]),
    lambda lib, s: s.__delitem__(slice(None, None, 2)),
    lambda lib, s: s.__iadd__(lib.Sequential(_lin(lib, 12), _lin(lib, 13))),
    lambda lib, s: s.__delitem__(slice(-2, None)),
    lambda lib, s: s.__imul__(3),
]


def _run_ops(make, ops):
    """Apply ``ops`` to a container built by ``make(lib)`` in groundup and in torch, comparing after each."""
    torch = pytest.importorskip("torch")
    ours, theirs = make(nn), make(torch.nn)
    assert _snapshot(ours) == _snapshot(theirs)
    for step, op in enumerate(ops):
        got, expected = op(nn, ours), op(torch.nn, theirs)
        if got is not ours:
            assert _summary(got) == _summary(expected), f"step {step}: returned value"
        assert _snapshot(ours) == _snapshot(theirs), f"step {step}"


@pytest.mark.torch
def test_sequential_mutations_name_modules_as_torch():
    _run_ops(lambda lib: lib.Sequential(_lin(lib, 1), lib.ReLU(), _lin(lib, 2), _lin(lib, 3)), SEQUENTIAL_OPS)


@pytest.mark.torch
def test_named_sequential_mutations_name_modules_as_torch():
    _run_ops(lambda lib: lib.Sequential(OrderedDict(a=_lin(lib, 1), b=lib.ReLU(), c=_lin(lib, 2))), [
        lambda lib, s: s.__setitem__(1, _lin(lib, 3)),      # keeps the name "b"
        lambda lib, s: s.append(_lin(lib, 4)),              # "3"
        lambda lib, s: s.insert(len(s), _lin(lib, 5)),      # "4"
        lambda lib, s: s.__iadd__(lib.Sequential(_lin(lib, 6))),
        lambda lib, s: s.__delitem__(0),                    # renumbers every name
        lambda lib, s: s.insert(1, _lin(lib, 7)),
    ])


@pytest.mark.torch
def test_sequential_add_and_mul_match_torch():
    torch = pytest.importorskip("torch")
    for lib in (nn, torch.nn):
        a = lib.Sequential(OrderedDict(x=_lin(lib, 1), y=lib.ReLU()))
        b = lib.Sequential(_lin(lib, 2))
        total, twice, twice_left = a + b, a * 2, 2 * a
        assert total[0] is a[0] and total[2] is b[0] and twice[2] is a[0]
        assert type(total) is type(twice_left) is lib.Sequential
        assert len(a) == 2 and len(b) == 1                  # the operands are unchanged
        if lib is nn:
            ours = [_snapshot(m) for m in (total, twice, twice_left)]
        else:
            assert ours == [_snapshot(m) for m in (total, twice, twice_left)]


@pytest.mark.torch
@pytest.mark.parametrize("op", [
    lambda lib, s: s[3], lambda lib, s: s.__delitem__(-4), lambda lib, s: s.__setitem__(3, lib.ReLU()),
    lambda lib, s: s.__setitem__(slice(0, 2), lib.ReLU()), lambda lib, s: s.__setitem__(0, 3),
    lambda lib, s: s.insert(4, lib.ReLU()), lambda lib, s: s.insert(-4, lib.ReLU()),
    lambda lib, s: s + [lib.ReLU()], lambda lib, s: s.__iadd__([lib.ReLU()]), lambda lib, s: s * 0,
    lambda lib, s: s * 1.5,
])
def test_sequential_refusals_match_torch(op):
    torch = pytest.importorskip("torch")
    errors = []
    for lib in (nn, torch.nn):
        s = lib.Sequential(_lin(lib, 1), lib.ReLU(), _lin(lib, 2))
        with pytest.raises(Exception) as info:
            op(lib, s)
        errors.append(type(info.value))
        assert [getattr(m, "out_features", None) for m in s] == [1, None, 2]   # nothing changed
    assert errors[0] is errors[1]


def test_sequential_refusals_where_torch_fails_half_way():
    named = nn.Sequential(OrderedDict(a=nn.ReLU(), b=nn.Tanh()))
    with pytest.raises(ValueError, match="must be named 0, 1"):   # torch: a KeyError after moving some
        named.insert(0, nn.Linear(1, 1))
    assert list(named._modules) == ["a", "b"]
    with pytest.raises(TypeError, match="expected a Module"):
        nn.Sequential().insert(0, 3)


@pytest.mark.torch
def test_module_list_mutations_name_modules_as_torch():
    _run_ops(lambda lib: lib.ModuleList([_lin(lib, 1), _lin(lib, 2), _lin(lib, 3)]), [
        lambda lib, m: m.insert(1, _lin(lib, 4)),
        lambda lib, m: m.insert(0, lib.ReLU()),
        lambda lib, m: m.insert(len(m), _lin(lib, 5)),
        lambda lib, m: m.pop(1),
        lambda lib, m: m.pop(-1),
        lambda lib, m: m.__delitem__(0),
        lambda lib, m: m.__iadd__([_lin(lib, 6), _lin(lib, 7)]),
        lambda lib, m: m.pop(slice(1, 3)),
        lambda lib, m: m + [_lin(lib, 8)],
        lambda lib, m: m + lib.ModuleList([_lin(lib, 9)]),
        lambda lib, m: m.extend(lib.ModuleList([_lin(lib, 10), _lin(lib, 11), _lin(lib, 12)])),
        lambda lib, m: m.__delitem__(slice(None, None, -2)),
        lambda lib, m: m.__setitem__(-1, _lin(lib, 13)),
    ])


def test_module_list_refusals():
    layers = nn.ModuleList([nn.Linear(1, 1), nn.ReLU()])
    for index in (-1, 3):           # torch: a KeyError after moving some / a gap in the names
        with pytest.raises(IndexError, match="out of range 0..2"):
            layers.insert(index, nn.Tanh())
    with pytest.raises(IndexError, match="index 2 is out of range"):
        del layers[2]
    with pytest.raises(IndexError, match="index -3 is out of range"):
        layers.pop(-3)
    with pytest.raises(TypeError, match="iterable"):
        layers.extend(nn.Linear(1, 1))
    with pytest.raises(TypeError, match="cannot assign int"):
        layers[0] = 3
    assert [type(m).__name__ for m in layers] == ["Linear", "ReLU"]


@pytest.mark.torch
def test_module_dict_mutations_match_torch():
    _run_ops(lambda lib: lib.ModuleDict([("a", _lin(lib, 1)), ("b", _lin(lib, 2))]), [
        lambda lib, d: d.update({"c": _lin(lib, 3), "a": _lin(lib, 4)}),   # "a" is replaced in place
        lambda lib, d: d.update([("d", _lin(lib, 5))]),
        lambda lib, d: d.update(lib.ModuleDict({"e": lib.ReLU()})),
        lambda lib, d: d.pop("b"),
        lambda lib, d: d.__delitem__("c"),
        lambda lib, d: d.__setitem__("b", _lin(lib, 6)),
        lambda lib, d: list(d.keys()),
        lambda lib, d: d.clear(),
        lambda lib, d: d.update({"z": _lin(lib, 7)}),
    ])


@pytest.mark.torch
@pytest.mark.parametrize("op", [
    lambda lib, d: d.pop("zz"), lambda lib, d: d.__delitem__("zz"), lambda lib, d: d.update(3),
    lambda lib, d: d.update([3]), lambda lib, d: d.update([("a",)]),
])
def test_module_dict_refusals_match_torch(op):
    torch = pytest.importorskip("torch")
    errors = []
    for lib in (nn, torch.nn):
        d = lib.ModuleDict({"a": lib.ReLU()})
        with pytest.raises(Exception) as info:
            op(lib, d)
        errors.append(type(info.value))
        assert list(d) == ["a"]
    assert errors[0] is errors[1]
