"""A bounded, checked reader of safetensors files: the header is validated against the file's size
before a single tensor byte is read, and tensors are then read one by one into their own arrays.

Format (https://github.com/huggingface/safetensors#format): an 8-byte little-endian header length
N, N bytes of JSON ``{name: {"dtype", "shape", "data_offsets": [start, end]}, "__metadata__": {...}}``,
then the tensors' bytes, which must tile the rest of the file exactly (no gaps, no overlaps, nothing
after the last tensor).

Checks, each an error naming the file: a pickle / zip / .npy renamed to .safetensors; a file that is
not regular (a device, a FIFO); a header length beyond the file or beyond 16 MiB; a header that is
not a JSON object; an entry whose dtype is unknown, whose shape is not a list of non-negative
integers, or whose byte range disagrees with ``prod(shape) * itemsize``; tensors that need more data
than the file holds (truncated) or leave bytes over. Memory used is at most the file's size, which
the header has been checked to describe exactly; ``expect`` lets a caller refuse, from the header
alone, a file that does not fit its model (a sparse 1 GiB file is refused before it is read).
"""

from __future__ import annotations

import io
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from groundup.train.files import open_regular

__all__ = ["TensorInfo", "read_header", "read_tensors", "SafetensorsError", "MAX_HEADER"]

MAX_HEADER = 16 * 2**20                  # bytes of header JSON; ~100 bytes per tensor leaves room for 160k
_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
           "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "?"}


class SafetensorsError(ValueError):
    """The file is not a well-formed safetensors file (the message names it)."""


@dataclass(frozen=True)
class TensorInfo:
    """One header entry: dtype, shape and the byte range ``[start, end)`` inside the data section."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    start: int
    end: int


def _kind_of(magic: bytes) -> str | None:
    if magic[:1] == b"\x80":
        return "a pickle"
    if magic[:2] == b"PK":
        return "a zip archive (torch.save / np.savez)"
    if magic[:6] == b"\x93NUMPY":
        return "a .npy file"
    return None


def _entry(path: Path, name: str, info: object) -> TensorInfo:
    bad = SafetensorsError(f"{path}: corrupt safetensors header: entry {name!r} is {str(info)[:200]}")
    if not isinstance(info, dict) or set(info) - {"dtype", "shape", "data_offsets"}:
        raise bad
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not isinstance(dtype, str) or not isinstance(shape, list) or not isinstance(offsets, list):
        raise bad
    if dtype not in _DTYPES:
        raise SafetensorsError(f"{path}: tensor {name!r} has dtype {dtype[:20]!r}, which groundup does not "
                               f"read (known: {', '.join(_DTYPES)})")
    if len(shape) > 32 or not all(type(n) is int and n >= 0 for n in shape):
        raise bad
    if len(offsets) != 2 or not all(type(o) is int for o in offsets) or not 0 <= offsets[0] <= offsets[1]:
        raise bad
    np_dtype = np.dtype(_DTYPES[dtype])
    if math.prod(shape) * np_dtype.itemsize != offsets[1] - offsets[0]:
        raise SafetensorsError(f"{path}: corrupt safetensors header: tensor {name!r} of shape {shape} and dtype "
                               f"{dtype} needs {math.prod(shape) * np_dtype.itemsize} bytes but its offsets "
                               f"span {offsets[1] - offsets[0]}")
    return TensorInfo(name, np_dtype, tuple(shape), offsets[0], offsets[1])


def _parse(f: BinaryIO, size: int, path: Path) -> tuple[dict[str, TensorInfo], dict[str, str], int]:
    magic = f.read(8)
    header_len = int.from_bytes(magic, "little") if len(magic) == 8 else -1
    plausible = 0 < header_len <= min(size - 8, MAX_HEADER)
    raw = f.read(header_len) if plausible else b""
    kind = _kind_of(magic)
    if kind is not None and not raw.startswith(b"{"):
        raise SafetensorsError(f"{path}: this is {kind}, not a safetensors file; groundup refuses to load it "
                               f"(unpickling can run arbitrary code). Convert it to safetensors first.")
    if size < 8 or len(magic) < 8:
        raise SafetensorsError(f"{path}: truncated ({size} bytes); a safetensors file starts with an "
                               f"8-byte header length")
    if header_len > size - 8 or header_len > MAX_HEADER:
        raise SafetensorsError(f"{path}: the header length field says {header_len} bytes but the file has "
                               f"{size} (and the limit is {MAX_HEADER}): the file is truncated or is not a "
                               f"safetensors file")
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise SafetensorsError(f"{path}: corrupt safetensors header (not valid JSON: {str(err)[:200]})") from None
    if not isinstance(header, dict):
        raise SafetensorsError(f"{path}: corrupt safetensors header (a JSON {type(header).__name__}, "
                               f"expected an object)")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                 for k, v in metadata.items()):
        raise SafetensorsError(f"{path}: corrupt safetensors header (__metadata__ must map strings to strings)")
    entries = {name: _entry(path, name, info) for name, info in header.items()}
    data_len = size - 8 - header_len
    end = max((e.end for e in entries.values()), default=0)
    if end > data_len:
        raise SafetensorsError(f"{path}: truncated: its tensors need {end} bytes of data but only {data_len} "
                               f"are present")
    if end < data_len:
        raise SafetensorsError(f"{path}: corrupt: {data_len - end} bytes after the last tensor")
    position = 0
    for entry in sorted(entries.values(), key=lambda e: (e.start, e.end)):
        if entry.start != position:
            raise SafetensorsError(f"{path}: corrupt safetensors header: tensor {entry.name!r} starts at byte "
                                   f"{entry.start}, expected {position} (tensors must not overlap or leave gaps)")
        position = entry.end
    return entries, dict(metadata), 8 + header_len


def _open(path: Path, data: bytes | None) -> tuple[BinaryIO, int]:
    if data is not None:
        return io.BytesIO(data), len(data)
    try:
        return open_regular(path)
    except FileNotFoundError:
        raise
    except OSError as err:
        raise SafetensorsError(f"{path}: cannot be read as a checkpoint file ({err.strerror or err})") from None


def read_header(path: str | os.PathLike, data: bytes | None = None) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """The checked table of tensors and the ``__metadata__`` of a safetensors file (no tensor is read)."""
    path = Path(path)
    f, size = _open(path, data)
    with f:
        entries, metadata, _ = _parse(f, size, path)
    return entries, metadata


def read_tensors(path: str | os.PathLike, data: bytes | None = None,
                 expect: Callable[[dict[str, TensorInfo]], None] | None = None
                 ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read every tensor of a checked safetensors file (or of its bytes ``data``).

    Args:
        expect: called with the header's table before any tensor is read; raise to refuse the file.

    Returns:
        (arrays, metadata): name -> NumPy array (native byte order), and ``__metadata__``.
    """
    path = Path(path)
    f, size = _open(path, data)
    with f:
        entries, metadata, data_start = _parse(f, size, path)
        if expect is not None:
            expect(entries)
        arrays: dict[str, np.ndarray] = {}
        for entry in entries.values():
            array = np.empty(entry.shape, dtype=entry.dtype)
            if array.nbytes:
                f.seek(data_start + entry.start)
                got = f.readinto(memoryview(array.reshape(-1).view(np.uint8)))
                if got != array.nbytes:
                    raise SafetensorsError(f"{path}: truncated while reading tensor {entry.name!r} (the file "
                                           f"changed while it was read)")
            arrays[entry.name] = array.astype(array.dtype.newbyteorder("="), copy=False)
    return arrays, metadata
