"""The ``Optimizer`` base class: parameter groups, per-parameter state, ``state_dict``.

Same names and state layout as ``torch.optim.Optimizer``:

- ``param_groups``: a list of dicts, each with ``'params'`` (a list of Tensors) and that group's
  hyper-parameters (``lr``, ``weight_decay``, ...), filled from the optimizer's ``defaults``;
- ``state``: a dict Tensor -> dict of that parameter's buffers (``exp_avg``, ``momentum_buffer``, ...);
- ``state_dict()``: ``{'state': {index: {...}}, 'param_groups': [{..., 'params': [index, ...]}]}``
  where parameters are numbered in order across groups, buffers are NumPy arrays on the CPU and
  everything else is a plain int / float / bool / tuple, so a checkpoint can put the arrays in a
  safetensors file and the rest in JSON. ``load_state_dict`` also accepts torch's own state dicts.

Updates work on the raw arrays ``p.data`` in place (``xp = array_module(p.data)``), never through
the autograd graph, and reuse one scratch buffer so a step allocates almost nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from groundup.backend import array_module, device_of, to_device, to_numpy
from groundup.function import bump_storage_version
from groundup.tensor import Tensor, enable_grad

__all__ = ["Optimizer", "ParamsT"]

ParamsT = Iterable[Tensor] | Iterable[dict[str, Any]]


class _Required:
    """Marks a hyper-parameter that has no default and must be given (like torch's ``required``)."""

    def __repr__(self) -> str:
        return "<required parameter>"


required = _Required()

# torch's words: a set's order depends on the objects' ids, so the parameter numbering in state_dict() would
# differ from one process to the next and a saved state would be loaded onto the wrong parameters
_SET_MESSAGE = ("optimizer parameters need to be organized in ordered collections, but the ordering of tensors in "
                "sets will change between runs. Please use a list instead.")


class Optimizer:
    """Base class of the optimizers. Subclasses implement ``step()``.

    Args:
        params: an iterable of Tensors, or of dicts ``{'params': [...], 'lr': ..., ...}`` (one per group;
            keys missing from a group take the value from ``defaults``).
        defaults: the default hyper-parameters of every group.
    """

    def __init__(self, params: ParamsT, defaults: dict[str, Any]):
        self.defaults = dict(defaults)
        self.state: dict[Tensor, dict[str, Any]] = {}
        self.param_groups: list[dict[str, Any]] = []
        self._scratch: dict[tuple[str, np.dtype, int], Any] = {}
        if isinstance(params, Tensor):
            raise TypeError("params argument given to the optimizer should be an iterable of Tensors or dicts, "
                            "but got a Tensor (wrap it in a list)")
        if isinstance(params, set | frozenset):
            raise TypeError(_SET_MESSAGE)
        groups = list(params)
        if not groups:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for group in groups:
            self.add_param_group(group)

    # ------------------------------------------------------------------ groups
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group of parameters (a dict with ``'params'`` and optional hyper-parameters)."""
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, got {type(param_group).__name__}")
        group = dict(param_group)
        if "params" not in group:
            raise ValueError(f"parameter group has no 'params' (its keys: {sorted(group)})")
        params = group["params"]
        if isinstance(params, set | frozenset):
            raise TypeError(_SET_MESSAGE)
        group["params"] = [params] if isinstance(params, Tensor) else list(params)
        for p in group["params"]:
            if not isinstance(p, Tensor):
                raise TypeError(f"optimizer can only optimize Tensors, but one of the params is {type(p).__name__}")
            if p.dtype.kind != "f":
                raise TypeError(f"optimizer can only optimize floating-point Tensors, got dtype {p.dtype}")
        for name, default in self.defaults.items():
            if default is required and name not in group:
                raise ValueError(f"parameter group didn't specify a value of required optimization parameter {name}")
            group.setdefault(name, default)
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        new = [id(p) for p in group["params"]]
        if len(set(new)) != len(new) or seen.intersection(new):
            raise ValueError("some parameters appear in more than one parameter group (or twice in one group)")
        self.param_groups.append(group)

    # ------------------------------------------------------------------ gradients
    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the gradients of all optimized parameters (set them to None, or fill with zeros)."""
        for group in self.param_groups:
            for p in group["params"]:
                if set_to_none or p.grad is None:
                    p.grad = None
                else:
                    p.grad.data[...] = 0

    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # pragma: no cover - subclasses override it
        """One update of every parameter that has a gradient (parameters with ``grad is None`` are skipped).

        Args:
            closure: as torch, an optional function that recomputes the loss (zero_grad, forward,
                backward) and returns it; it is called first, with grad enabled.

        Returns:
            the closure's loss, or None without one.
        """
        raise TypeError(f"{type(self).__name__} must implement step()")

    def _begin_step(self, closure: Callable[[], Any] | None) -> tuple[Any, list[tuple[Tensor, dict[str, Any]]]]:
        """What every ``step`` does first: run ``closure`` (``_run_closure``), then list the parameters to
        update, (parameter, its group) for each one with a gradient, and count the coming in-place write
        into each one's memory (torch bumps the same version counter): a graph that saved a parameter
        before the step then refuses to backpropagate through the old values, as torch refuses, instead
        of silently using the new ones. Returns (the closure's loss or None, that list)."""
        loss = self._run_closure(closure)
        todo = [(p, group) for group in self.param_groups for p in group["params"] if p.grad is not None]
        for p, _ in todo:
            bump_storage_version(p.data)
        return loss, todo

    @staticmethod
    def _run_closure(closure: Callable[[], Any] | None) -> Any:
        """torch's closure protocol: call ``closure()`` with graph recording on (``step`` runs under no_grad),
        so it can zero the gradients, compute the loss and backpropagate; its result is the step's return."""
        if closure is None:
            return None
        if not callable(closure):
            raise TypeError(f"step(closure): closure must be a callable that returns the loss, "
                            f"got {type(closure).__name__}")
        with enable_grad():
            return closure()

    # ------------------------------------------------------------------ helpers for subclasses
    def _scratch_like(self, array: Any, slot: int = 0) -> Any:
        """A scratch array with the shape, dtype and device of ``array`` (a view of a reused buffer).

        NOTE: valid until the next call with the same slot, dtype and device in the same thread; the
        update code uses the slots for one parameter at a time, so a step allocates no temporaries
        (each thread of ``groundup.parallel`` has its own buffers).
        """
        key = (device_of(array), array.dtype, slot, threading.get_ident())
        buffer = self._scratch.get(key)
        if buffer is None or buffer.size < array.size:
            buffer = array_module(array).empty(array.size, dtype=array.dtype)
            self._scratch[key] = buffer
        return buffer[: array.size].reshape(array.shape)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """``{'state': {index: {name: value}}, 'param_groups': [...]}`` with NumPy arrays (copies)."""
        index: dict[int, int] = {}
        groups = []
        for group in self.param_groups:
            packed = {k: v for k, v in group.items() if k != "params"}
            for p in group["params"]:
                index.setdefault(id(p), len(index))
            packed["params"] = [index[id(p)] for p in group["params"]]
            groups.append(packed)
        state = {}
        for group in self.param_groups:
            for p in group["params"]:
                if p in self.state:
                    state[index[id(p)]] = {k: _export_value(v) for k, v in self.state[p].items()}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Load a state from :meth:`state_dict` (or from a torch optimizer with the same groups).

        Everything is checked before anything changes: the number of groups, the number of
        parameters per group and the shape of every buffer; a mismatch raises ``ValueError``, and so
        does a torch group saved with ``maximize=True`` (these optimizers only minimise).
        """
        saved_groups = list(state_dict["param_groups"])
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"loaded state dict has {len(saved_groups)} parameter groups, "
                             f"this optimizer has {len(self.param_groups)}")
        for g, saved in enumerate(saved_groups):
            if saved.get("maximize") and "maximize" not in self.defaults:
                raise ValueError(f"loaded state dict's parameter group {g} has maximize=True (torch's gradient "
                                 f"ascent), which {type(self).__name__} here does not do; loading it would "
                                 f"minimise instead")
        id_to_param: dict[int, Tensor] = {}
        for g, (ours, saved) in enumerate(zip(self.param_groups, saved_groups)):
            if len(ours["params"]) != len(saved["params"]):
                raise ValueError(f"parameter group {g}: loaded state dict has {len(saved['params'])} parameters, "
                                 f"this optimizer has {len(ours['params'])}")
            for saved_index, p in zip(saved["params"], ours["params"]):
                id_to_param[int(saved_index)] = p
        new_state: dict[Tensor, dict[str, Any]] = {}
        for key, values in state_dict["state"].items():
            if int(key) not in id_to_param:
                raise ValueError(f"loaded state dict has state for parameter {key}, which no group lists")
            p = id_to_param[int(key)]
            entry = {}
            for name, value in values.items():
                value = _import_value(value, p, f"state[{key}][{name!r}]")
                entry[name] = value
            new_state[p] = entry
        for ours, saved in zip(self.param_groups, saved_groups):
            for name, value in saved.items():
                if name != "params":
                    ours[name] = tuple(value) if isinstance(value, list) else value
        self.state = new_state

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            lines += [f"    {k}: {v}" for k, v in sorted(group.items()) if k != "params"]
        return "\n".join(lines) + "\n)"


def _export_value(value: Any) -> Any:
    """A state value for ``state_dict``: arrays become NumPy copies, scalars plain Python numbers."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, np.generic):
        return value.item()
    return to_numpy(value).copy()


def _import_value(value: Any, param: Tensor, where: str) -> Any:
    """Turn a saved state value into what the update code expects, checked against ``param``."""
    if type(value).__module__ == "torch":
        value = value.detach().cpu().numpy()
        if value.ndim == 0:  # torch keeps 'step' as a 0-d tensor
            value = value.item()
            return int(value) if float(value).is_integer() else value
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Tensor):
        value = value.data
    array = to_numpy(value)
    if array.ndim == 0:
        return array.item()
    if tuple(array.shape) != param.shape:
        raise ValueError(f"loaded optimizer {where} has shape {tuple(array.shape)} "
                         f"but its parameter has shape {param.shape}")
    return to_device(np.array(array, dtype=param.dtype, copy=True), param.device)
