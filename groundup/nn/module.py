"""Module and Parameter, with torch.nn's names and behaviour (the containers: ``groundup/nn/containers.py``).

Assigning a ``Parameter`` or a ``Module`` to an attribute registers it, in definition order, so
``named_parameters()`` yields paths such as ``blocks.0.attn.in_proj_weight``: one name for the
checkpoint key, the hook prefix and the explorer label. ``state_dict()`` maps those names to
NumPy arrays, so a torch module's ``{k: v.numpy()}`` loads here unchanged.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple

import numpy as np

from groundup.backend import normalize_device, to_device, to_numpy
from groundup.tensor import Tensor, no_grad


class Parameter(Tensor):
    """A Tensor that a Module registers as a learnable parameter (requires_grad by default)."""

    __slots__ = ()

    def __init__(self, data: Any, requires_grad: bool = True):
        if isinstance(data, Tensor):
            data = data.data
        super().__init__(data, requires_grad=requires_grad)

    def __repr__(self) -> str:
        return "Parameter containing:\n" + super().__repr__()


class IncompatibleKeys(NamedTuple):
    """What ``load_state_dict`` returns, as torch: a pair ``(missing_keys, unexpected_keys)`` that
    also names its fields; its repr says when every key matched."""

    missing_keys: list[str]
    unexpected_keys: list[str]

    def __repr__(self) -> str:
        if not self.missing_keys and not self.unexpected_keys:
            return "<All keys matched successfully>"
        return f"IncompatibleKeys(missing_keys={self.missing_keys}, unexpected_keys={self.unexpected_keys})"

    __str__ = __repr__


class Module:
    """Base class of every layer and model. Subclasses define ``forward``."""

    def __init__(self) -> None:
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "_non_persistent", set())
        object.__setattr__(self, "training", True)

    # ------------------------------------------------------------ registration
    def __setattr__(self, name: str, value: Any) -> None:
        d = self.__dict__
        if "_parameters" not in d:
            raise AttributeError(f"{type(self).__name__}: call super().__init__() before assigning {name!r}")
        params, buffers, modules = d["_parameters"], d["_buffers"], d["_modules"]
        if isinstance(value, Parameter):
            buffers.pop(name, None), modules.pop(name, None), d.pop(name, None)
            params[name] = value
        elif isinstance(value, Module):
            params.pop(name, None), buffers.pop(name, None), d.pop(name, None)
            modules[name] = value
        elif name in params or name in modules:
            if value is not None:
                kind = "parameter" if name in params else "submodule"
                raise TypeError(f"cannot assign {type(value).__name__} to {kind} {name!r} "
                                f"(expected a {'Parameter' if kind == 'parameter' else 'Module'} or None)")
            (params if name in params else modules)[name] = None
        elif name in buffers:
            buffers[name] = value
        else:
            object.__setattr__(self, name, value)

    def __getattr__(self, name: str) -> Any:
        for table in ("_parameters", "_buffers", "_modules"):
            d = self.__dict__.get(table)
            if d is not None and name in d:
                return d[name]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    def __delattr__(self, name: str) -> None:
        for table in (self._parameters, self._buffers, self._modules):
            if name in table:
                del table[name]
                return
        object.__delattr__(self, name)

    def register_buffer(self, name: str, tensor: Tensor | None, persistent: bool = True) -> None:
        """A non-learnable tensor saved in ``state_dict`` (e.g. BatchNorm's running mean)."""
        self.__dict__.pop(name, None)
        self._buffers[name] = tensor
        if not persistent:
            self._non_persistent.add(name)

    def register_parameter(self, name: str, param: Parameter | None) -> None:
        self._parameters[name] = param

    def add_module(self, name: str, module: Module | None) -> None:
        self._modules[name] = module

    # ------------------------------------------------------------ calling
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.forward(*args, **kwargs)

    def forward(self, *args: Any, **kwargs: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} has no forward() (abstract)")

    # ------------------------------------------------------------ traversal
    def named_modules(self, prefix: str = "", memo: set[int] | None = None,
                      remove_duplicate: bool = True) -> Iterator[tuple[str, Module]]:
        """(path, module) pairs, self first; a module reached twice is yielded once unless
        ``remove_duplicate=False`` (as torch)."""
        memo = set() if memo is None else memo
        if remove_duplicate:
            if id(self) in memo:
                return
            memo.add(id(self))
        yield prefix, self
        for name, child in self._modules.items():
            if child is not None:
                yield from child.named_modules(f"{prefix}.{name}" if prefix else name, memo, remove_duplicate)

    def modules(self) -> Iterator[Module]:
        for _, m in self.named_modules():
            yield m

    def named_children(self) -> Iterator[tuple[str, Module]]:
        for name, child in self._modules.items():
            if child is not None:
                yield name, child

    def children(self) -> Iterator[Module]:
        for _, child in self.named_children():
            yield child

    def named_parameters(self, prefix: str = "", recurse: bool = True) -> Iterator[tuple[str, Parameter]]:
        seen: set[int] = set()
        modules = self.named_modules(prefix) if recurse else iter([(prefix, self)])
        for mod_prefix, module in modules:
            for name, p in module._parameters.items():
                if p is None or id(p) in seen:
                    continue
                seen.add(id(p))
                yield (f"{mod_prefix}.{name}" if mod_prefix else name), p

    def parameters(self, recurse: bool = True) -> Iterator[Parameter]:
        for _, p in self.named_parameters(recurse=recurse):
            yield p

    def named_buffers(self, prefix: str = "") -> Iterator[tuple[str, Tensor]]:
        for mod_prefix, module in self.named_modules(prefix):
            for name, b in module._buffers.items():
                if b is not None:
                    yield (f"{mod_prefix}.{name}" if mod_prefix else name), b

    def buffers(self) -> Iterator[Tensor]:
        for _, b in self.named_buffers():
            yield b

    def get_submodule(self, target: str) -> Module:
        """The submodule at the dotted path ``target`` (``""`` is self), as torch; an AttributeError
        names the first part that is missing or is not a Module."""
        if target == "":
            return self
        mod: Any = self
        for item in target.split("."):
            if not hasattr(mod, item):
                raise AttributeError(f"{type(mod).__name__} has no attribute `{item}`")
            mod = getattr(mod, item)
            if not isinstance(mod, Module):
                raise AttributeError(f"`{item}` is not an nn.Module")
        return mod

    def _owner(self, target: str) -> tuple[Module, str]:
        """The submodule that holds the attribute at the dotted path ``target``, and the attribute's name."""
        module_path, _, name = target.rpartition(".")
        mod = self.get_submodule(module_path)
        if not hasattr(mod, name):
            raise AttributeError(f"{type(mod).__name__} has no attribute `{name}`")
        return mod, name

    def get_parameter(self, target: str) -> Parameter:
        """The Parameter at the dotted path ``target`` (``"blocks.0.proj.weight"``), as torch."""
        mod, name = self._owner(target)
        param = getattr(mod, name)
        if not isinstance(param, Parameter):
            raise AttributeError(f"`{name}` is not an nn.Parameter")
        return param

    def get_buffer(self, target: str) -> Tensor:
        """The buffer at the dotted path ``target`` (``"bn.running_mean"``), persistent or not, as torch."""
        mod, name = self._owner(target)
        if name not in mod._buffers:
            raise AttributeError(f"`{name}` is not a buffer")
        return mod._buffers[name]

    def num_parameters(self) -> int:
        """Total number of learnable scalars."""
        return sum(p.numel() for p in self.parameters())

    # ------------------------------------------------------------ state
    def state_dict(self, *, destination: dict[str, Any] | None = None, prefix: str = "",
                   keep_vars: bool = False) -> OrderedDict[str, Any]:
        """Parameter and persistent buffer names -> NumPy arrays (copies, on the CPU).

        Tied parameters and shared submodules appear under every name that refers to them, as in torch.

        Args:
            destination: a dict to fill and return instead of a new OrderedDict (as torch).
            prefix: put before every key (``prefix="model."`` gives ``model.0.weight``).
            keep_vars: map the names to the Parameters and buffer Tensors themselves, not to copies.
        """
        out: dict[str, Any] = OrderedDict() if destination is None else destination
        for key, t in self._state_tensors().items():
            out[prefix + key] = t if keep_vars else to_numpy(t.data).copy()
        return out

    def _state_tensors(self) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for mod_prefix, module in self.named_modules(remove_duplicate=False):
            for table in (module._parameters, module._buffers):
                for name, t in table.items():
                    if t is not None and not (table is module._buffers and name in module._non_persistent):
                        out[f"{mod_prefix}.{name}" if mod_prefix else name] = t
        return out

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True) -> IncompatibleKeys:
        """Copy arrays (NumPy arrays, Tensors or torch tensors) into this module's parameters.

        Checks everything before changing anything: missing keys, unexpected keys and shape
        mismatches are reported by name (with ``strict=False`` only shape mismatches raise).
        A tied parameter (one Parameter under several names, as a GPT's ``wte.weight`` and
        ``lm_head.weight``) takes the entry that differs from its current value, as editing one
        entry of torch's state_dict (whose tied entries share memory) does; entries that differ from
        it and from each other are refused.

        Returns:
            ``IncompatibleKeys(missing_keys, unexpected_keys)``, a NamedTuple (unpackable as a pair).
        """
        own = self._state_tensors()
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        arrays: dict[str, np.ndarray] = {}
        mismatched = []
        for key, value in state_dict.items():
            if key not in own:
                continue
            if isinstance(value, Tensor):
                value = to_numpy(value.data)
            elif type(value).__module__ == "torch":
                value = value.detach().cpu().numpy()
            value = np.asarray(value)
            if tuple(value.shape) != own[key].shape:
                mismatched.append(f"{key}: checkpoint {tuple(value.shape)} vs model {own[key].shape}")
            arrays[key] = value
        problems = []
        if strict and missing:
            problems.append("missing keys: " + ", ".join(missing))
        if strict and unexpected:
            problems.append("unexpected keys: " + ", ".join(unexpected))
        if mismatched:
            problems.append("shape mismatch: " + "; ".join(mismatched))
        if not problems:
            problems += _resolve_tied(own, arrays)
        if problems:
            raise RuntimeError(f"load_state_dict for {type(self).__name__}: " + " | ".join(problems))
        with no_grad():
            for key, value in arrays.items():
                target = own[key]
                target.data = to_device(value.astype(target.dtype, copy=True), target.device)
        return IncompatibleKeys(missing, unexpected)

    # ------------------------------------------------------------ modes, devices, grads
    def train(self, mode: bool = True) -> Module:
        for m in self.modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self) -> Module:
        return self.train(False)

    def requires_grad_(self, requires_grad: bool = True) -> Module:
        for p in self.parameters():
            p.requires_grad = requires_grad
        return self

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.parameters():
            if set_to_none or p.grad is None:
                p.grad = None
            else:
                p.grad.data[...] = 0

    def to(self, device: Any = None, dtype: Any = None) -> Module:
        """Move (in place) every parameter and buffer to ``device`` and/or cast floats to ``dtype``;
        ``module.to(gu.float64)`` casts, as in torch."""
        from groundup.backend import as_dtype

        if device is not None and dtype is None and not (isinstance(device, str) and
                                                         device.split(":")[0] in ("cpu", "cuda")):
            try:
                as_dtype(device)
            except (TypeError, ValueError):
                pass                                          # not a dtype: normalize_device names it below
            else:
                device, dtype = None, device
        dev = normalize_device(device) if device is not None else None
        for t in list(self.parameters()) + list(self.buffers()):
            data = t.data
            if dev is not None:
                data = to_device(data, dev)
            if dtype is not None and data.dtype.kind == "f":
                data = data.astype(as_dtype(dtype))
            t.data = data
            if t.grad is not None:
                t.grad = None
        return self

    def float(self) -> Module:
        return self.to(dtype="float32")

    def double(self) -> Module:
        return self.to(dtype="float64")

    def apply(self, fn: Callable[[Module], None]) -> Module:
        """Call ``fn`` on every submodule (children first) and on self, like torch."""
        for child in self.children():
            child.apply(fn)
        fn(self)
        return self

    # ------------------------------------------------------------ repr
    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        lines = []
        for name, child in self._modules.items():
            body = repr(child).replace("\n", "\n  ")
            lines.append(f"({name}): {body}")
        head = f"{type(self).__name__}({self.extra_repr()}"
        if not lines:
            return head + ")"
        return head + "\n  " + "\n  ".join(lines) + "\n)"


def _resolve_tied(own: dict[str, Tensor], arrays: dict[str, np.ndarray]) -> list[str]:
    """For each parameter loaded under several names, keep one entry in ``arrays`` (the edited one);
    a problem line for names whose entries disagree with each other and with the parameter."""
    problems = []
    names_of: dict[int, list[str]] = {}
    for key in arrays:
        names_of.setdefault(id(own[key]), []).append(key)
    for names in names_of.values():
        if len(names) < 2:
            continue
        current = to_numpy(own[names[0]].data)
        same = functools.partial(np.array_equal, equal_nan=current.dtype.kind in "fc")
        edited = [n for n in names if not same(arrays[n], current)]
        if not edited:
            continue
        if any(not same(arrays[n], arrays[edited[0]]) for n in edited[1:]):
            problems.append(f"tied weights {', '.join(names)} are one parameter, but the entries "
                            f"{', '.join(edited)} give it different values")
            continue
        for n in names:
            if n != edited[0]:
                del arrays[n]
    return problems
