"""The checks a checkpoint passes before it is loaded: config values of the right types, tensors that
fit the model and the optimizer (from the safetensors header alone, before any tensor is read), and
weights that are finite floating-point numbers. Each failure is a ``CheckpointError`` naming the
file; see checkpoint.py for the format and the loading order.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from groundup.nn.module import Module
from groundup.optim.optimizer import Optimizer
from groundup.train.safetensors_file import SafetensorsError, TensorInfo, read_header

__all__ = ["CheckpointError", "CheckpointWriteError", "config_from_dict"]


class CheckpointError(ValueError):
    """A checkpoint file is missing, unsafe, corrupt, or does not fit the model / optimizer."""


class CheckpointWriteError(OSError):
    """Writing a checkpoint failed (disk full, permissions); the previous checkpoint is intact."""


def _jsonable(value: Any) -> Any:
    """A dataclass / mapping / tuple as plain JSON types (tuples become lists)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    return json.loads(json.dumps(value, default=_json_default))


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot store a {type(value).__name__} in a checkpoint's JSON: {value!r}")


def _config_dict(config: Any) -> dict[str, Any]:
    if config is None:
        return {}
    if hasattr(config, "to_dict") and not isinstance(config, Mapping):
        config = config.to_dict()
    out = _jsonable(config)
    if not isinstance(out, dict):
        raise TypeError(f"checkpoint config must be a dataclass or a dict, got {type(config).__name__}")
    return out


def config_from_dict(cls: type, values: Any, where: str | os.PathLike = "config") -> Any:
    """Build the dataclass ``cls`` from a JSON dict, checking keys and value types first.

    Every field must have its annotated type (``"0.1"`` is not a float, ``1`` is not a bool) and
    floats must be finite; then the dataclass's own checks run. Any failure is a CheckpointError
    naming ``where``.
    """
    from groundup.train.config import check_types

    if not isinstance(values, dict):
        raise CheckpointError(f"{where}: expected a JSON object, got {type(values).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(str(k)[:40] for k in set(values) - names)
    if unknown:
        raise CheckpointError(f"{where}: unknown {cls.__name__} field(s) {unknown}")
    try:
        check_types(cls, values)
        return cls(**values)
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"{where}: {err}") from None


def _check_config(saved: dict[str, Any], expected: Any, where: Path) -> None:
    ours = _config_dict(expected)
    diffs = [f"{key}: checkpoint {saved[key]!r:.60} vs model {ours[key]!r}"
             for key in ours if key in saved and saved[key] != ours[key]]
    if diffs:
        raise CheckpointError(f"{where}: the checkpoint's config does not match the model's: " + "; ".join(diffs))


def _check_model_fit(model: Module | None, table: Mapping[str, TensorInfo], where: Path, check_values: bool) -> None:
    """Names, shapes and dtypes of the file's tensors against the model (from the header alone)."""
    own = model._state_tensors() if model is not None else {}
    problems = []
    if model is not None:
        missing = [k for k in own if k not in table]
        unexpected = [k[:80] for k in table if k not in own]
        if missing:
            problems.append("missing from the file: " + ", ".join(missing))
        if unexpected:
            problems.append("not in the model: " + ", ".join(unexpected[:20]))
        shapes = [f"{k}: file {table[k].shape} vs model {tuple(own[k].shape)}" for k in own
                  if k in table and table[k].shape != tuple(own[k].shape)]
        if shapes:
            problems.append("shape mismatch: " + "; ".join(shapes))
        if problems:
            raise CheckpointError(f"{where} does not fit {type(model).__name__}: " + " | ".join(problems))
    if not check_values:
        return
    for name, info in table.items():
        if info.dtype.kind == "f":
            continue
        model_kind = np.dtype(own[name].dtype).kind if name in own else None
        if model_kind == info.dtype.kind or (model is None and info.dtype.kind in "iu" and info.shape == ()):
            continue  # an integer buffer (a counter), stored as such
        raise CheckpointError(f"{where}: tensor {name[:80]!r} holds {info.dtype.name} values, not floating point "
                              f"weights (load it with check_values=False, or --no-weight-check, to accept it)")


def _check_finite(arrays: Mapping[str, np.ndarray], where: Path) -> None:
    for name, array in arrays.items():
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            count = int(array.size - np.isfinite(array).sum())
            raise CheckpointError(f"{where}: tensor {name[:80]!r} has {count} non-finite value(s) (NaN or inf); "
                                  f"load it with check_values=False (or --no-weight-check) to accept it")


def _optimizer_params(optimizer: Optimizer) -> list[Any]:
    seen: dict[int, Any] = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            seen.setdefault(id(p), p)
    return list(seen.values())


def _check_optimizer_fit(optimizer: Optimizer, path: Path) -> None:
    """The file's groups and tensors against the optimizer, from the header alone (no tensor read)."""
    try:
        table, metadata = read_header(path)
    except SafetensorsError as err:
        raise CheckpointError(str(err)) from None
    where = path
    try:
        groups = json.loads(metadata.get("param_groups", "[]"))
        sizes = [len(g["params"]) for g in groups]
    except (TypeError, KeyError, json.JSONDecodeError, RecursionError):
        raise CheckpointError(f"{where}: no valid optimizer metadata (param_groups)") from None
    ours = [len(g["params"]) for g in optimizer.param_groups]
    if len(sizes) != len(ours) or sizes != ours:
        raise CheckpointError(f"{where}: does not fit the optimizer: the file has {len(sizes)} parameter groups "
                              f"of {sizes} parameters, this optimizer has {len(ours)} of {ours}")
    params = _optimizer_params(optimizer)
    for key, info in table.items():
        prefix, _, rest = key.partition(".")
        index, _, name = rest.partition(".")
        if prefix != "state" or not index.isdigit() or not name:
            raise CheckpointError(f"{where}: unexpected tensor {key[:80]!r} (expected state.<index>.<name>)")
        if int(index) >= len(params):
            raise CheckpointError(f"{where}: tensor {key!r} is for parameter {index}, but the optimizer has "
                                  f"{len(params)} parameters")
        if math.prod(info.shape) > math.prod(params[int(index)].shape):
            raise CheckpointError(f"{where}: tensor {key!r} of shape {info.shape} is larger than its parameter "
                                  f"{tuple(params[int(index)].shape)}")


def _finite_json(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(_finite_json(v) for v in value)
    if isinstance(value, dict):
        return all(_finite_json(v) for v in value.values())
    return value is None or isinstance(value, bool | int | str)


def _optimizer_state(arrays: dict[str, np.ndarray], metadata: dict[str, str], where: Path) -> dict[str, Any]:
    try:
        groups = json.loads(metadata["param_groups"])
        scalars = json.loads(metadata.get("scalars", "{}"))
    except (KeyError, json.JSONDecodeError, RecursionError) as err:
        raise CheckpointError(f"{where}: no valid optimizer metadata ({str(err)[:200]})") from None
    if not isinstance(groups, list) or not all(isinstance(g, dict) and isinstance(g.get("params"), list)
                                               for g in groups) or not _finite_json(groups):
        raise CheckpointError(f"{where}: the optimizer's param_groups are not a list of groups with finite "
                              f"hyper-parameters")
    if not isinstance(scalars, dict) or not all(str(k).isdigit() and isinstance(v, dict) for k, v in scalars.items()) \
            or not _finite_json(scalars):
        raise CheckpointError(f"{where}: the optimizer's scalar state is malformed")
    state: dict[int, dict[str, Any]] = {int(k): dict(v) for k, v in scalars.items()}
    for key, value in arrays.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": groups}
