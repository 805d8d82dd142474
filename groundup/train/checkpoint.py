"""Checkpoints: safetensors for arrays, JSON for everything else; atomic writes; strict, safe loading.

A checkpoint is a directory holding

    model.safetensors       the model's state_dict (parameter name -> array)
    config.json             the model's config (a dataclass or dict), enough to rebuild the model
    optimizer.safetensors   optimizer buffers as ``state.<param index>.<name>``; hyper-parameters and
                            scalar state (step counts) as JSON in the file's metadata
    state.json              the commit record: the sha256 of each file above, plus the caller's state
                            (step, RNG states, best val loss, ...)

Loading never unpickles anything (safetensors cannot run code), and refuses, with an error that
names the file, a pickle or zip (``torch.save``, ``np.savez``) renamed to ``.safetensors``, a
truncated file, a corrupt header, a file whose sha256 differs from the one in state.json, and a
checkpoint whose config, parameter names or shapes do not match the model. Everything is checked
before anything changes, so a refused load leaves the model and optimizer as they were.

Atomic saves: every file is written to a temporary file in the same directory and fsynced. The
previous checkpoint's files are kept reachable as hard links ``.<name>.prev``; then the new files
are moved into place with ``os.replace`` and state.json goes last, as the commit. A crash at any
point leaves a loadable checkpoint: before the commit, state.json still lists the previous files'
sha256 and the loader takes each file from ``<name>`` or ``.<name>.prev``, whichever matches;
after it, the new set is complete. The next save first restores any such half-replaced set.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from groundup.nn.module import Module
from groundup.optim.optimizer import Optimizer

__all__ = ["save_checkpoint", "load_checkpoint", "read_safetensors", "CheckpointError",
           "MODEL_FILE", "CONFIG_FILE", "OPTIMIZER_FILE", "STATE_FILE"]

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"
_RECORD_KEY = "checkpoint"           # reserved key of state.json holding the file digests
_FORMAT = "groundup-checkpoint"
_MAX_HEADER = 100_000_000            # safetensors' own limit on the JSON header (bytes)


class CheckpointError(ValueError):
    """A checkpoint file is missing, unsafe, corrupt, or does not fit the model / optimizer."""


# ---------------------------------------------------------------------------- small helpers
def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


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


def _json_bytes(value: Any) -> bytes:
    return (json.dumps(value, indent=1, default=_json_default) + "\n").encode()


def _write_synced(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` and force it to disk."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    """Make renames inside ``path`` durable (a no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _prev(directory: Path, name: str) -> Path:
    return directory / f".{name}.prev"


def _tmp(directory: Path, name: str) -> Path:
    return directory / f".{name}.tmp"


# ---------------------------------------------------------------------------- safetensors, checked
def read_safetensors(path: str | os.PathLike, data: bytes | None = None) -> tuple[dict[str, np.ndarray],
                                                                                  dict[str, str]]:
    """Read a safetensors file after checking it is one, whole and well-formed.

    Returns:
        (arrays, metadata): name -> NumPy array, and the file's ``__metadata__`` (str -> str).

    Raises:
        CheckpointError: naming the file, for a pickle / zip / .npy file, a truncated file, a header
            that is not JSON or not a valid table of tensors, or data that does not fill the file.
    """
    path = Path(path)
    if data is None:
        data = path.read_bytes()
    size = len(data)
    if data[:1] == b"\x80" or data[:2] == b"PK" or data[:6] == b"\x93NUMPY":
        kind = "a pickle" if data[:1] == b"\x80" else "a zip archive (torch.save / np.savez)" \
            if data[:2] == b"PK" else "a .npy file"
        raise CheckpointError(f"{path}: this is {kind}, not a safetensors file; groundup refuses to load it "
                              f"(unpickling can run arbitrary code). Convert it to safetensors first.")
    if size < 8:
        raise CheckpointError(f"{path}: truncated ({size} bytes); a safetensors file starts with an "
                              f"8-byte header length")
    header_len = int.from_bytes(data[:8], "little")
    if header_len > size - 8 or header_len > _MAX_HEADER:
        raise CheckpointError(f"{path}: the header length field says {header_len} bytes but the file has "
                              f"{size}: the file is truncated or is not a safetensors file")
    try:
        header = json.loads(data[8:8 + header_len])
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: corrupt safetensors header (not valid JSON: {err})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header (a JSON {type(header).__name__}, "
                              f"expected an object)")
    metadata = header.pop("__metadata__", None) or {}
    data_len = size - 8 - header_len
    end = 0
    for name, info in header.items():
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(isinstance(o, int) for o in offsets)
                or "dtype" not in info or "shape" not in info):
            raise CheckpointError(f"{path}: corrupt safetensors header: entry {name!r} is {info!r}")
        end = max(end, offsets[1])
    if end > data_len:
        raise CheckpointError(f"{path}: truncated: its tensors need {end} bytes of data but only {data_len} "
                              f"are present")
    if end < data_len:
        raise CheckpointError(f"{path}: corrupt: {data_len - end} bytes after the last tensor")
    from safetensors.numpy import load

    try:
        arrays = load(data)
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error type; re-raise with the file
        raise CheckpointError(f"{path}: invalid safetensors file: {err}") from None
    return arrays, dict(metadata)


# ---------------------------------------------------------------------------- save
def _model_payload(model: Module) -> bytes:
    from safetensors.numpy import save

    return save(dict(model.state_dict()), metadata={"format": "np", "producer": "groundup"})


def _optimizer_payload(optimizer: Optimizer) -> bytes:
    from safetensors.numpy import save

    saved = optimizer.state_dict()
    arrays: dict[str, np.ndarray] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entry in saved["state"].items():
        for name, value in entry.items():
            if isinstance(value, np.ndarray):
                arrays[f"state.{index}.{name}"] = np.ascontiguousarray(value)
            else:
                scalars.setdefault(str(index), {})[name] = value
    metadata = {
        "optimizer": type(optimizer).__name__,
        "param_groups": json.dumps(saved["param_groups"], default=_json_default),
        "scalars": json.dumps(scalars, default=_json_default),
    }
    return save(arrays, metadata=metadata)


def _recover(directory: Path) -> None:
    """Undo a save that crashed between replacing files and committing state.json; drop leftovers."""
    for leftover in directory.glob(".*.tmp"):
        leftover.unlink(missing_ok=True)
    prevs = list(directory.glob(".*.prev"))
    if not prevs:
        return
    files = _committed_files(directory)
    for prev in prevs:
        name = prev.name[1:-len(".prev")]
        digest = files.get(name)
        main = directory / name
        if digest is not None and not (main.exists() and _sha256(main.read_bytes()) == digest) \
                and _sha256(prev.read_bytes()) == digest:
            os.replace(prev, main)
        else:
            prev.unlink(missing_ok=True)
    _fsync_dir(directory)


def _committed_files(directory: Path) -> dict[str, str]:
    """The file -> sha256 table of the committed state.json ({} when there is none or it is unreadable)."""
    try:
        record = json.loads((directory / STATE_FILE).read_text())
        return dict(record[_RECORD_KEY]["files"])
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def save_checkpoint(out_dir: str | os.PathLike, model: Module, config: Any = None, optimizer: Optimizer | None = None,
                    state: Mapping[str, Any] | None = None) -> Path:
    """Save ``model`` (and optionally its config, optimizer and a JSON state) into ``out_dir``, atomically.

    Args:
        out_dir: the checkpoint directory (created if needed; other files in it are left alone).
        model: its ``state_dict()`` goes to model.safetensors.
        config: a dataclass or dict, written as config.json (``{}`` when None).
        optimizer: its state goes to optimizer.safetensors (skipped when None).
        state: JSON-serialisable dict written into state.json (step, RNG states, ...).

    Returns:
        the checkpoint directory.
    """
    directory = Path(out_dir)
    directory.mkdir(parents=True, exist_ok=True)
    state = dict(state or {})
    if _RECORD_KEY in state:
        raise ValueError(f"save_checkpoint: the state key {_RECORD_KEY!r} is reserved for the file digests")
    payloads = {MODEL_FILE: _model_payload(model), CONFIG_FILE: _json_bytes(_config_dict(config))}
    if optimizer is not None:
        payloads[OPTIMIZER_FILE] = _optimizer_payload(optimizer)
    record = {_RECORD_KEY: {"format": _FORMAT, "version": 1,
                            "files": {name: _sha256(data) for name, data in payloads.items()}}}
    record.update(_jsonable(state))
    record_bytes = _json_bytes(record)

    _recover(directory)
    try:
        for name, data in payloads.items():
            _write_synced(_tmp(directory, name), data)
        _write_synced(_tmp(directory, STATE_FILE), record_bytes)
        # keep the previous committed files reachable until the new state.json is in place
        for name in _committed_files(directory):
            if (directory / name).exists():
                _keep_previous(directory / name, _prev(directory, name))
        _fsync_dir(directory)
        for name in payloads:
            os.replace(_tmp(directory, name), directory / name)
        os.replace(_tmp(directory, STATE_FILE), directory / STATE_FILE)   # the commit
        _fsync_dir(directory)
    finally:
        for name in [*payloads, STATE_FILE]:
            _tmp(directory, name).unlink(missing_ok=True)
    for prev in directory.glob(".*.prev"):
        prev.unlink(missing_ok=True)
    if optimizer is None:  # a stale optimizer file from an older checkpoint must not be mistaken for this one's
        (directory / OPTIMIZER_FILE).unlink(missing_ok=True)
    return directory


def _keep_previous(main: Path, prev: Path) -> None:
    prev.unlink(missing_ok=True)
    try:
        os.link(main, prev)
    except OSError:  # file systems without hard links: a synced copy
        shutil.copyfile(main, prev)
        with open(prev, "rb+") as f:
            os.fsync(f.fileno())


# ---------------------------------------------------------------------------- load
def _read_record(directory: Path) -> tuple[dict[str, str] | None, dict[str, Any]]:
    path = directory / STATE_FILE
    if not path.exists():
        return None, {}
    try:
        record = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(record, dict) or not isinstance(record.get(_RECORD_KEY), dict) \
            or not isinstance(record[_RECORD_KEY].get("files"), dict):
        raise CheckpointError(f"{path}: not a groundup checkpoint record (no '{_RECORD_KEY}.files' table)")
    files = dict(record.pop(_RECORD_KEY)["files"])
    return files, record


def _read_member(directory: Path, name: str, files: dict[str, str] | None) -> tuple[Path, bytes] | None:
    """The bytes of one checkpoint file, verified against state.json's sha256 when there is one."""
    main = directory / name
    if files is None:
        return (main, main.read_bytes()) if main.exists() else None
    if name not in files:
        return None
    for candidate in (main, _prev(directory, name)):
        if candidate.exists():
            data = candidate.read_bytes()
            if _sha256(data) == files[name]:
                return main, data
    if not main.exists():
        raise CheckpointError(f"{main}: missing, but {directory / STATE_FILE} lists it")
    data = main.read_bytes()
    if name.endswith(".safetensors"):
        read_safetensors(main, data)  # raises the most specific error (pickle, truncated, corrupt header)
    raise CheckpointError(f"{main}: its sha256 does not match the one recorded in {directory / STATE_FILE}: "
                          f"the file is corrupt or belongs to another checkpoint")


def _check_config(saved: dict[str, Any], expected: Any, where: Path) -> None:
    ours = _config_dict(expected)
    diffs = [f"{key}: checkpoint {saved[key]!r} vs model {ours[key]!r}"
             for key in ours if key in saved and saved[key] != ours[key]]
    if diffs:
        raise CheckpointError(f"{where}: the checkpoint's config does not match the model's: " + "; ".join(diffs))


def _check_arrays(model: Module, arrays: Mapping[str, np.ndarray], where: Path) -> None:
    own = {name: tensor.shape for name, tensor in model._state_tensors().items()}
    problems = []
    missing = [k for k in own if k not in arrays]
    unexpected = [k for k in arrays if k not in own]
    if missing:
        problems.append("missing from the file: " + ", ".join(missing))
    if unexpected:
        problems.append("not in the model: " + ", ".join(unexpected))
    shapes = [f"{k}: file {tuple(arrays[k].shape)} vs model {own[k]}" for k in own
              if k in arrays and tuple(arrays[k].shape) != tuple(own[k])]
    if shapes:
        problems.append("shape mismatch: " + "; ".join(shapes))
    if problems:
        raise CheckpointError(f"{where} does not fit {type(model).__name__}: " + " | ".join(problems))


def _model_config(model: Module) -> Any:
    for attribute in ("cfg", "config"):
        value = model.__dict__.get(attribute)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return value
    return None


def _optimizer_state(arrays: dict[str, np.ndarray], metadata: dict[str, str], where: Path) -> dict[str, Any]:
    try:
        groups = json.loads(metadata["param_groups"])
        scalars = json.loads(metadata.get("scalars", "{}"))
    except (KeyError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{where}: no valid optimizer metadata ({err})") from None
    state: dict[int, dict[str, Any]] = {int(k): dict(v) for k, v in scalars.items()}
    for key, value in arrays.items():
        prefix, index, name = key.split(".", 2)
        if prefix != "state" or not index.isdigit():
            raise CheckpointError(f"{where}: unexpected tensor {key!r} (expected state.<index>.<name>)")
        state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": groups}


def load_checkpoint(out_dir: str | os.PathLike, model: Module | None = None, *, optimizer: Optimizer | None = None,
                    config: Any = None) -> tuple[dict[str, np.ndarray], dict[str, Any], dict[str, Any]]:
    """Read a checkpoint and, if given, load it into ``model`` (and ``optimizer``).

    Args:
        out_dir: the checkpoint directory.
        model: receives the weights; its names and shapes must match the file exactly.
        optimizer: receives the optimizer state (the checkpoint must have one, of the same class).
        config: the config the checkpoint must agree with (fields present in both are compared);
            by default the model's own ``cfg`` / ``config`` dataclass, if it has one.

    Returns:
        (arrays, config, state): the model's arrays by name, config.json as a dict, and the state
        saved with it ({} when there is no state.json).

    Raises:
        CheckpointError: naming the file, for anything unsafe, corrupt or not matching; the model and
            optimizer are then unchanged. FileNotFoundError when there is no model.safetensors.
    """
    directory = Path(out_dir)
    if not directory.is_dir():
        raise FileNotFoundError(f"checkpoint directory {directory} does not exist")
    files, state = _read_record(directory)
    member = _read_member(directory, MODEL_FILE, files)
    if member is None:
        raise FileNotFoundError(f"{directory / MODEL_FILE}: not found (is {directory} a checkpoint directory?)")
    model_path, model_bytes = member
    arrays, _ = read_safetensors(model_path, model_bytes)

    saved_config: dict[str, Any] = {}
    member = _read_member(directory, CONFIG_FILE, files)
    if member is not None:
        try:
            saved_config = json.loads(member[1])
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise CheckpointError(f"{member[0]}: not valid JSON ({err})") from None
        if not isinstance(saved_config, dict):
            raise CheckpointError(f"{member[0]}: expected a JSON object, got {type(saved_config).__name__}")

    expected = config if config is not None else (_model_config(model) if model is not None else None)
    if expected is not None and saved_config:
        _check_config(saved_config, expected, directory / CONFIG_FILE)
    if model is not None:
        _check_arrays(model, arrays, model_path)

    if optimizer is not None:
        member = _read_member(directory, OPTIMIZER_FILE, files)
        if member is None:
            raise CheckpointError(f"{directory / OPTIMIZER_FILE}: not found, but an optimizer was given to load")
        opt_arrays, metadata = read_safetensors(*member)
        saved_class = metadata.get("optimizer")
        if saved_class != type(optimizer).__name__:
            raise CheckpointError(f"{member[0]}: holds the state of a {saved_class} optimizer, "
                                  f"not of a {type(optimizer).__name__}")
        try:
            optimizer.load_state_dict(_optimizer_state(opt_arrays, metadata, member[0]))
        except (ValueError, TypeError) as err:
            raise CheckpointError(f"{member[0]}: does not fit the optimizer: {err}") from None
    if model is not None:
        model.load_state_dict(arrays)
    return arrays, saved_config, state
