"""Checkpoints: safetensors for arrays, JSON for everything else; atomic writes; strict, bounded loading.

A checkpoint is a directory holding

    model.safetensors       the model's state_dict (parameter name -> array)
    config.json             the model's config (a dataclass or dict), enough to rebuild the model
    optimizer.safetensors   optimizer buffers as ``state.<param index>.<name>``; hyper-parameters and
                            scalar state (step counts) as JSON in the file's metadata
    state.json              the commit record: the sha256 of each file above and of the run's files
                            beside it (run.json, the tokenizer: ``COVERED_FILES``), plus the caller's
                            state (step, RNG states, best val loss, ...)

Loading never unpickles anything (safetensors cannot run code) and is bounded: only regular files
are read, JSON files have a size limit, a safetensors header is checked against the file's size and,
when a model is given, against the model's names and shapes before any tensor is read (see
safetensors_file.py). It refuses, with a ``CheckpointError`` that names the file: a pickle or zip
renamed to ``.safetensors``, a truncated file, a corrupt header, a file whose sha256 differs from
the one in state.json (including a tokenizer or run.json that belongs to another run), state.json
naming files other than the three above, a config, parameter names or shapes that do not match the
model, and weights that are not finite or not floating point (unless ``check_values=False``).
Everything is checked before anything changes, so a refused load leaves the model and optimizer as
they were.

Atomic saves: every file is written to a temporary file (``O_EXCL``, never through a symlink) in the
same directory and fsynced. The previous checkpoint's files are kept reachable as hard links
``.<name>.prev``; then the new files are moved into place with ``os.replace`` and state.json goes
last, as the commit. A crash at any point leaves a loadable checkpoint: before the commit,
state.json still lists the previous files' sha256 and the loader takes each file from ``<name>`` or
``.<name>.prev``, whichever matches; after it, the new set is complete. The next save first restores
any such half-replaced set. A failed write (a full disk) raises ``CheckpointWriteError`` naming the
file and saying that the previous checkpoint is intact.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from groundup.nn.module import Module
from groundup.optim.optimizer import Optimizer
from groundup.train.checkpoint_checks import (
    CheckpointError,
    CheckpointWriteError,
    _check_config,
    _check_finite,
    _check_model_fit,
    _check_optimizer_fit,
    _config_dict,
    _json_default,
    _jsonable,
    _optimizer_state,
    config_from_dict,
)
from groundup.train.files import describe_os_error, fsync_dir, open_regular, read_limited, write_synced
from groundup.train.safetensors_file import SafetensorsError, TensorInfo, read_header, read_tensors

__all__ = ["save_checkpoint", "load_checkpoint", "read_safetensors", "read_checkpoint_config",
           "read_checkpoint_state", "verify_covered", "config_from_dict", "CheckpointError",
           "CheckpointWriteError", "MODEL_FILE", "CONFIG_FILE", "OPTIMIZER_FILE", "STATE_FILE", "COVERED_FILES"]

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"
CHECKPOINT_FILES = (MODEL_FILE, CONFIG_FILE, OPTIMIZER_FILE)
COVERED_FILES = ("run.json", "tokenizer.json", "vocab.json", "merges.txt")  # a run's files, hashed in state.json
MAX_JSON_BYTES = 16 * 2**20            # config.json, state.json, run.json, tokenizers: small files
_RECORD_KEY = "checkpoint"             # reserved key of state.json holding the file digests
_FORMAT = "groundup-checkpoint"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


# ---------------------------------------------------------------------------- small helpers
def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _file_sha256(path: Path) -> str:
    """sha256 of a regular file, read in 1 MiB chunks (memory stays flat whatever the size)."""
    f, _ = open_regular(path)
    digest = hashlib.sha256()
    with f:
        while chunk := f.read(2**20):
            digest.update(chunk)
    return digest.hexdigest()


def _json_bytes(value: Any) -> bytes:
    return (json.dumps(value, indent=1, default=_json_default) + "\n").encode()


def _load_json(path: Path, data: bytes | None = None) -> Any:
    """Parse a small JSON file; anything wrong with it (size, encoding, nesting) is a CheckpointError."""
    try:
        if data is None:
            data = read_limited(path, MAX_JSON_BYTES)
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: not valid JSON ({str(err)[:200]})") from None
    except RecursionError:
        raise CheckpointError(f"{path}: JSON nested too deeply") from None
    except (ValueError, OSError) as err:
        raise CheckpointError(f"{path}: cannot be read ({err})") from None


def _write_synced(path: Path, data: bytes) -> None:
    """Write ``data`` to the new file ``path`` and force it to disk (never through a symlink)."""
    write_synced(path, data)


def _fsync_dir(path: Path) -> None:
    fsync_dir(path)


def _prev(directory: Path, name: str) -> Path:
    return directory / f".{name}.prev"


def _tmp(directory: Path, name: str) -> Path:
    return directory / f".{name}.{os.getpid()}.tmp"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


# ---------------------------------------------------------------------------- safetensors, checked
def read_safetensors(path: str | os.PathLike, data: bytes | None = None) -> tuple[dict[str, np.ndarray],
                                                                                  dict[str, str]]:
    """Read a safetensors file after checking it is one, whole and well-formed (see safetensors_file.py).

    Returns:
        (arrays, metadata): name -> NumPy array, and the file's ``__metadata__`` (str -> str).

    Raises:
        CheckpointError: naming the file, for a pickle / zip / .npy file, a file that is not regular, a
            truncated file, a header that is not JSON or not a valid table of tensors, or data that does
            not fill the file.
    """
    try:
        return read_tensors(path, data)
    except SafetensorsError as err:
        raise CheckpointError(str(err)) from None


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
        parts = leftover.name.split(".")
        pid = int(parts[-2]) if len(parts) >= 3 and parts[-2].isdigit() else None
        if pid is None or pid == os.getpid() or not _pid_alive(pid):
            leftover.unlink(missing_ok=True)
    prevs = [p for p in directory.glob(".*.prev") if p.name[1:-len(".prev")] in CHECKPOINT_FILES]
    if not prevs:
        return
    files = _committed_files(directory)
    for prev in prevs:
        name = prev.name[1:-len(".prev")]
        digest = files.get(name)
        main = directory / name
        if digest is not None and not (main.is_file() and _file_sha256(main) == digest) \
                and prev.is_file() and _file_sha256(prev) == digest:
            os.replace(prev, main)
        else:
            prev.unlink(missing_ok=True)
    _fsync_dir(directory)


def _committed_files(directory: Path) -> dict[str, str]:
    """The file -> sha256 table of the committed state.json ({} when there is none or it is unusable)."""
    try:
        return _read_record(directory)[0] or {}
    except (CheckpointError, OSError):
        return {}


def _committed_step(directory: Path) -> Any:
    try:
        return _read_record(directory)[1].get("step")
    except (CheckpointError, OSError):
        return None


def _covered_digests(directory: Path, names: Iterable[str]) -> dict[str, str]:
    out = {}
    for name in names:
        if name not in COVERED_FILES:
            raise ValueError(f"save_checkpoint: covers={name!r} is not one of {COVERED_FILES}")
        path = directory / name
        if path.is_file() and not path.is_symlink():
            out[name] = _sha256(read_limited(path, MAX_JSON_BYTES))
    return out


def save_checkpoint(out_dir: str | os.PathLike, model: Module, config: Any = None, optimizer: Optimizer | None = None,
                    state: Mapping[str, Any] | None = None, *, covers: Iterable[str] = COVERED_FILES) -> Path:
    """Save ``model`` (and optionally its config, optimizer and a JSON state) into ``out_dir``, atomically.

    Args:
        out_dir: the checkpoint directory (created if needed; other files in it are left alone).
        model: its ``state_dict()`` goes to model.safetensors.
        config: a dataclass or dict, written as config.json (``{}`` when None).
        optimizer: its state goes to optimizer.safetensors (skipped when None).
        state: JSON-serialisable dict written into state.json (step, RNG states, ...).
        covers: the run's files beside the checkpoint whose sha256 the record keeps (those present),
            so that loading detects a tokenizer or run.json replaced by another run's.

    Returns:
        the checkpoint directory.

    Raises:
        CheckpointWriteError: a file could not be written (the previous checkpoint is intact).
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
                            "files": {name: _sha256(data) for name, data in payloads.items()},
                            "covers": _covered_digests(directory, covers)}}
    record.update(_jsonable(state))
    record_bytes = _json_bytes(record)

    with _exclusive(directory):  # one saver at a time per directory, whatever the process
        _commit(directory, payloads, record_bytes)
        for prev in directory.glob(".*.prev"):
            prev.unlink(missing_ok=True)
        if optimizer is None:  # a stale optimizer file from an older checkpoint must not be mistaken for this one's
            (directory / OPTIMIZER_FILE).unlink(missing_ok=True)
    return directory


@contextmanager
def _exclusive(directory: Path) -> Iterator[None]:
    """An exclusive flock on the directory itself, released when the process ends (even by kill -9)."""
    try:
        import fcntl
    except ImportError:  # Windows: no flock; the command line's run-directory lock still applies
        yield
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _commit(directory: Path, payloads: dict[str, bytes], record_bytes: bytes) -> None:
    """Write the temp files, keep the previous set reachable, move the new set in, state.json last."""
    previous_step, written = None, None
    try:
        _recover(directory)
        previous_step = _committed_step(directory)
        try:
            for name, data in [*payloads.items(), (STATE_FILE, record_bytes)]:
                written = _tmp(directory, name)
                _write_synced(written, data)
            written = None
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
    except OSError as err:
        if isinstance(err, CheckpointWriteError):
            raise
        where = f"{written}: " if written is not None and err.filename is None else ""
        kept = f" (step {previous_step})" if previous_step is not None else ""
        intact = f"the previous checkpoint{kept} is intact" if previous_step is not None or \
            (directory / STATE_FILE).exists() else "no earlier checkpoint was there"
        failure = CheckpointWriteError(f"could not save the checkpoint in {directory}: {where}"
                                       f"{describe_os_error(err)}; {intact}")
        failure.errno = err.errno
        raise failure from None


def _keep_previous(main: Path, prev: Path) -> None:
    prev.unlink(missing_ok=True)
    try:
        os.link(main, prev)
    except OSError:  # file systems without hard links: a synced copy
        shutil.copyfile(main, prev)
        with open(prev, "rb+") as f:
            os.fsync(f.fileno())


# ---------------------------------------------------------------------------- load: the record
def _digest_table(value: Any, allowed: tuple[str, ...], where: Path, what: str) -> dict[str, str]:
    if not isinstance(value, dict):
        raise CheckpointError(f"{where}: '{_RECORD_KEY}.{what}' must be a table of file -> sha256")
    for name, digest in value.items():
        if name not in allowed:
            raise CheckpointError(f"{where}: '{_RECORD_KEY}.{what}' names {str(name)[:80]!r}; a checkpoint "
                                  f"lists only {', '.join(allowed)} (plain names inside its directory)")
        if not isinstance(digest, str) or not _SHA256.match(digest):
            raise CheckpointError(f"{where}: the sha256 of {name} is {str(digest)[:80]!r}, not 64 hex digits")
    return dict(value)


def _read_record(directory: Path) -> tuple[dict[str, str] | None, dict[str, Any], dict[str, str]]:
    """(files, state, covers) of state.json; (None, {}, {}) when there is none."""
    path = directory / STATE_FILE
    if not os.path.lexists(path):
        return None, {}, {}
    record = _load_json(path)
    if not isinstance(record, dict) or not isinstance(record.get(_RECORD_KEY), dict) \
            or not isinstance(record[_RECORD_KEY].get("files"), dict):
        raise CheckpointError(f"{path}: not a groundup checkpoint record (no '{_RECORD_KEY}.files' table)")
    entry = record.pop(_RECORD_KEY)
    files = _digest_table(entry["files"], CHECKPOINT_FILES, path, "files")
    covers = _digest_table(entry.get("covers", {}), COVERED_FILES, path, "covers")
    return files, record, covers


def read_checkpoint_state(directory: str | os.PathLike) -> dict[str, Any]:
    """The caller's state saved in state.json (step, RNG states, train_config ...), checked; {} if none."""
    return _read_record(Path(directory))[1]


def verify_covered(directory: str | os.PathLike) -> None:
    """Check that the run's files recorded in state.json (tokenizer, run.json) are the ones beside it."""
    directory = Path(directory)
    _, _, covers = _read_record(directory)
    for name, digest in covers.items():
        path = directory / name
        if not path.is_file():
            raise CheckpointError(f"{path}: missing, but the checkpoint in {directory} was saved with it")
        if _sha256(read_limited(path, MAX_JSON_BYTES)) != digest:
            raise CheckpointError(f"{path}: differs from the one the checkpoint in {directory} was saved with "
                                  f"(it belongs to another run, or was edited)")


# ---------------------------------------------------------------------------- load: the members
def _member(directory: Path, name: str, files: dict[str, str] | None, check: Any = None) -> Path | None:
    """The path holding checkpoint file ``name`` (``name`` or its ``.prev``), verified against state.json.

    ``check(path)`` runs first on each candidate (a header check that reads no tensor data).
    """
    main = directory / name
    if files is None:
        if not os.path.lexists(main):
            return None
        if check is not None:
            check(main)
        return main
    if name not in files:
        return None
    errors: list[CheckpointError] = []
    for candidate in (main, _prev(directory, name)):
        if not os.path.lexists(candidate):
            continue
        try:
            if check is not None:
                check(candidate)
            if _file_sha256(candidate) == files[name]:
                return candidate
        except CheckpointError as err:
            errors.append(err)
        except OSError as err:
            errors.append(CheckpointError(f"{candidate}: cannot be read ({describe_os_error(err)})"))
    if not os.path.lexists(main):
        raise CheckpointError(f"{main}: missing, but {directory / STATE_FILE} lists it")
    if errors:
        raise errors[0]
    raise CheckpointError(f"{main}: its sha256 does not match the one recorded in {directory / STATE_FILE}: "
                          f"the file is corrupt or belongs to another checkpoint")


def _header(path: Path) -> dict[str, TensorInfo]:
    try:
        return read_header(path)[0]
    except SafetensorsError as err:
        raise CheckpointError(str(err)) from None
    except OSError as err:
        raise CheckpointError(f"{path}: cannot be read ({describe_os_error(err)})") from None


def _model_config(model: Module) -> Any:
    for attribute in ("cfg", "config"):
        value = model.__dict__.get(attribute)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return value
    return None


def read_checkpoint_config(directory: str | os.PathLike) -> dict[str, Any]:
    """config.json of a checkpoint, verified against state.json's sha256; {} when there is none."""
    directory = Path(directory)
    files, _, _ = _read_record(directory)
    path = _member(directory, CONFIG_FILE, files)
    if path is None:
        return {}
    saved = _load_json(path)
    if not isinstance(saved, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(saved).__name__}")
    return saved


def load_checkpoint(out_dir: str | os.PathLike, model: Module | None = None, *, optimizer: Optimizer | None = None,
                    config: Any = None, check_values: bool = True
                    ) -> tuple[dict[str, np.ndarray], dict[str, Any], dict[str, Any]]:
    """Read a checkpoint and, if given, load it into ``model`` (and ``optimizer``).

    Args:
        out_dir: the checkpoint directory.
        model: receives the weights; its names and shapes must match the file exactly (checked from
            the file's header, before its tensors are read).
        optimizer: receives the optimizer state (the checkpoint must have one, of the same class).
        config: the config the checkpoint must agree with (fields present in both are compared);
            by default the model's own ``cfg`` / ``config`` dataclass, if it has one.
        check_values: refuse weights that are not floating point or not finite (NaN, inf).

    Returns:
        (arrays, config, state): the model's arrays by name, config.json as a dict, and the state
        saved with it ({} when there is no state.json).

    Raises:
        CheckpointError: naming the file, for anything unsafe, corrupt or not matching; the model and
            optimizer are then unchanged. FileNotFoundError when there is no model.safetensors.
    """
    directory = Path(out_dir)
    if directory.is_file():
        raise FileNotFoundError(f"{directory} is a file, not a checkpoint directory: load_checkpoint reads the "
                                f"directory holding {MODEL_FILE} (read_safetensors reads one file)")
    if not directory.is_dir():
        raise FileNotFoundError(f"checkpoint directory {directory} does not exist")
    files, state, _ = _read_record(directory)
    verify_covered(directory)
    saved_config = read_checkpoint_config(directory)
    expected = config if config is not None else (_model_config(model) if model is not None else None)
    if expected is not None and saved_config:
        _check_config(saved_config, expected, directory / CONFIG_FILE)

    def fits_model(path: Path) -> None:
        _check_model_fit(model, _header(path), path, check_values)

    if files is not None and MODEL_FILE not in files:
        raise CheckpointError(f"{directory / STATE_FILE}: does not list {MODEL_FILE}, so it is not this "
                              f"directory's checkpoint record")
    model_path = _member(directory, MODEL_FILE, files, fits_model)
    if model_path is None:
        raise FileNotFoundError(f"{directory / MODEL_FILE}: not found (is {directory} a checkpoint directory?)")
    arrays = read_safetensors(model_path)[0]
    if check_values:
        _check_finite(arrays, model_path)

    if optimizer is not None:
        def fits_optimizer(path: Path) -> None:
            _check_optimizer_fit(optimizer, path)

        opt_path = _member(directory, OPTIMIZER_FILE, files, fits_optimizer)
        if opt_path is None:
            raise CheckpointError(f"{directory / OPTIMIZER_FILE}: not found, but an optimizer was given to load "
                                  f"(a checkpoint saved without one, as model.save(dir) writes, holds no optimizer "
                                  f"state to resume from)")
        opt_arrays, metadata = read_safetensors(opt_path)
        saved_class = metadata.get("optimizer")
        if saved_class != type(optimizer).__name__:
            raise CheckpointError(f"{opt_path}: holds the state of the optimizer {str(saved_class)[:40]}, "
                                  f"not of {type(optimizer).__name__}")
        if check_values:
            _check_finite(opt_arrays, opt_path)
        try:
            optimizer.load_state_dict(_optimizer_state(opt_arrays, metadata, opt_path))
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as err:
            raise CheckpointError(f"{opt_path}: does not fit the optimizer: {err}") from None
    if model is not None:
        try:
            model.load_state_dict(arrays)
        except RuntimeError as err:                          # keys, shapes or tied entries that disagree
            raise CheckpointError(f"{model_path}: {err}") from None
    return arrays, saved_config, state
