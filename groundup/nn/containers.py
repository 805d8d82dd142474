"""Containers with torch.nn's names and behaviour: ``Sequential``, ``ModuleList``, ``ModuleDict``.

Each holds its modules as registered submodules (``Module._modules``), so their parameters and
``state_dict`` keys carry the container's names: ``0.weight``, ``blocks.1.attn.qkv.weight``. Deleting
from a ``Sequential`` or ``ModuleList`` renumbers the names ``0, 1, ...`` as torch does; the tests
replay the same mutations on torch's containers and compare names and keys.
"""

from __future__ import annotations

import operator
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from groundup.nn.module import Module

__all__ = ["Sequential", "ModuleList", "ModuleDict"]


def _position(container: Module, idx: Any) -> int:
    """``idx`` (an int, negative counting from the end) as a position in ``container``; torch's IndexError."""
    size = len(container._modules)
    idx = operator.index(idx)
    if not -size <= idx < size:
        raise IndexError(f"index {idx} is out of range")
    return idx % size


def _renumber(container: Module) -> None:
    """Rename the submodules ``0``, ``1``, ... in order, as torch does after a deletion (names given to
    a Sequential by an OrderedDict become numbers too)."""
    modules = list(container._modules.values())
    container._modules.clear()
    container._modules.update((str(i), m) for i, m in enumerate(modules))


class Sequential(Module):
    """Modules applied in order; ``Sequential(a, b)(x) == b(a(x))``.

    Indexing, assignment, deletion, ``append``/``insert``/``extend``/``pop``, ``+`` and ``*`` follow
    torch, names included: deleting renumbers the submodules ``0``, ``1``, ...
    """

    def __init__(self, *modules: Module):
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], (dict, OrderedDict)):
            for name, m in modules[0].items():
                self.add_module(name, m)
        else:
            for i, m in enumerate(modules):
                self.add_module(str(i), m)

    def forward(self, x: Any) -> Any:
        for m in self._modules.values():
            x = m(x)
        return x

    def __getitem__(self, i: int | slice) -> Module:
        if isinstance(i, slice):  # a Sequential of the slice, keeping the names (as torch)
            return Sequential(OrderedDict(list(self._modules.items())[i]))
        return list(self._modules.values())[_position(self, i)]

    def __setitem__(self, i: int, module: Module) -> None:
        """Replace the module at position ``i`` (keeping its name); slices are refused, as torch."""
        setattr(self, list(self._modules)[_position(self, i)], module)

    def __delitem__(self, i: int | slice) -> None:
        names = list(self._modules)
        for name in (names[i] if isinstance(i, slice) else [names[_position(self, i)]]):
            delattr(self, name)
        _renumber(self)

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())

    def append(self, module: Module) -> Sequential:
        self.add_module(str(len(self)), module)
        return self

    def insert(self, index: int, module: Module) -> Sequential:
        """Put ``module`` before position ``index`` (-len <= index <= len); the later ones move up one
        name (``1`` -> ``2``), as torch."""
        if not isinstance(module, Module):
            raise TypeError(f"Sequential.insert: expected a Module, got {type(module).__name__}")
        n = len(self._modules)
        if not -n <= index <= n:
            raise IndexError(f"Index out of range: {index}")
        index = index + n if index < 0 else index
        names = [str(i) for i in range(index, n)]
        if any(name not in self._modules for name in names):   # torch fails half-way with a KeyError here
            raise ValueError(f"Sequential.insert: the modules from position {index} on must be named "
                             f"{', '.join(names)} to move up one, got names {', '.join(self._modules)}")
        for i in range(n, index, -1):
            self._modules[str(i)] = self._modules[str(i - 1)]
        self._modules[str(index)] = module
        return self

    def extend(self, modules: Iterable[Module]) -> Sequential:
        for m in modules:
            self.append(m)
        return self

    def pop(self, key: int | slice) -> Module:
        """Remove and return the module at ``key`` (a slice gives a Sequential); the rest are renumbered."""
        module = self[key]
        del self[key]
        return module

    def __add__(self, other: Sequential) -> Sequential:
        if not isinstance(other, Sequential):
            raise ValueError(f"add operator supports only objects of Sequential class, but {type(other)} is given.")
        return Sequential(*self, *other)

    def __iadd__(self, other: Sequential) -> Sequential:
        if not isinstance(other, Sequential):
            raise ValueError(f"add operator supports only objects of Sequential class, but {type(other)} is given.")
        offset = len(self)
        for i, m in enumerate(list(other)):
            self.add_module(str(i + offset), m)
        return self

    def __mul__(self, times: int) -> Sequential:
        """The same modules (not copies) ``times`` over, numbered from 0, as torch."""
        _check_factor(self, times)
        return Sequential(*(list(self) * times))

    __rmul__ = __mul__

    def __imul__(self, times: int) -> Sequential:
        _check_factor(self, times)
        modules = list(self)
        for i, m in enumerate(modules * (times - 1)):
            self.add_module(str(len(modules) + i), m)
        return self


def _check_factor(seq: Sequential, times: Any) -> None:
    if not isinstance(times, int):
        raise TypeError(f"unsupported operand type(s) for *: {type(seq)} and {type(times)}")
    if times <= 0:
        raise ValueError(f"Non-positive multiplication factor {times} for {type(seq)}")


class ModuleList(Module):
    """A list of modules registered as ``0``, ``1``, ... (no forward of its own); deleting, popping and
    inserting renumber them, as torch."""

    def __init__(self, modules: Iterable[Module] | None = None):
        super().__init__()
        if modules is not None:
            self.extend(modules)

    def append(self, module: Module) -> ModuleList:
        self.add_module(str(len(self._modules)), module)
        return self

    def extend(self, modules: Iterable[Module]) -> ModuleList:
        if not isinstance(modules, Iterable):
            raise TypeError(f"ModuleList.extend should be called with an iterable, but got {type(modules).__name__}")
        for m in list(modules):                             # list(): extending by itself doubles it once
            self.append(m)
        return self

    def insert(self, index: int, module: Module) -> None:
        """Put ``module`` before position ``index`` (0 <= index <= len); later modules move up one name.

        torch fails half-way for a negative index and leaves a gap in the names past the end; both are
        refused here before anything changes.
        """
        n = len(self._modules)
        index = operator.index(index)
        if not 0 <= index <= n:
            raise IndexError(f"ModuleList.insert: index {index} is out of range 0..{n}")
        for i in range(n, index, -1):
            self._modules[str(i)] = self._modules[str(i - 1)]
        self._modules[str(index)] = module

    def pop(self, key: int | slice) -> Any:
        """Remove and return the module at ``key`` (a slice gives a ModuleList); the rest are renumbered."""
        module = self[key]
        del self[key]
        return module

    def __getitem__(self, i: int | slice) -> Any:
        items = list(self._modules.values())
        if isinstance(i, slice):
            return ModuleList(items[i])
        return items[_position(self, i)]

    def __setitem__(self, i: int, module: Module) -> None:
        if not -len(self) <= i < len(self):
            raise IndexError(f"ModuleList index {i} is out of range for length {len(self)}")
        setattr(self, str(i % len(self)), module)

    def __delitem__(self, i: int | slice) -> None:
        names = list(self._modules)
        for name in (names[i] if isinstance(i, slice) else [names[_position(self, i)]]):
            delattr(self, name)
        _renumber(self)

    def __iadd__(self, modules: Iterable[Module]) -> ModuleList:
        return self.extend(modules)

    def __add__(self, other: Iterable[Module]) -> ModuleList:
        return ModuleList([*self, *other])

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())


class ModuleDict(Module):
    """A dict of modules registered under their keys."""

    def __init__(self, modules: Mapping[str, Module] | Iterable[tuple[str, Module]] | None = None):
        super().__init__()
        if modules is not None:
            self.update(modules)

    def __getitem__(self, key: str) -> Module:
        return self._modules[key]

    def __setitem__(self, key: str, module: Module) -> None:
        self.add_module(key, module)

    def __delitem__(self, key: str) -> None:
        del self._modules[key]

    def __contains__(self, key: str) -> bool:
        return key in self._modules

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[str]:
        return iter(self._modules)

    def keys(self) -> Iterable[str]:
        return self._modules.keys()

    def values(self) -> Iterable[Module]:
        return self._modules.values()

    def items(self) -> Iterable[tuple[str, Module]]:
        return self._modules.items()

    def pop(self, key: str) -> Module:
        """Remove ``key`` and return its module (KeyError if absent)."""
        module = self[key]
        del self[key]
        return module

    def clear(self) -> None:
        self._modules.clear()

    def update(self, modules: Mapping[str, Module] | Iterable[tuple[str, Module]]) -> None:
        """Add (or replace) entries from a mapping or from (key, module) pairs, in their order, as torch."""
        if not isinstance(modules, Iterable):
            raise TypeError(f"ModuleDict.update should be called with an iterable of key/value pairs, "
                            f"but got {type(modules).__name__}")
        if isinstance(modules, (Mapping, ModuleDict)):
            for key, m in modules.items():
                self[key] = m
            return
        for j, pair in enumerate(modules):
            if not isinstance(pair, Iterable):
                raise TypeError(f"ModuleDict update sequence element #{j} should be Iterable; is {type(pair).__name__}")
            if len(pair) != 2:
                raise ValueError(f"ModuleDict update sequence element #{j} has length {len(pair)}; 2 is required")
            self[pair[0]] = pair[1]
