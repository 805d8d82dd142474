"""Safe file primitives for run directories: plain names, atomic writes that never follow symlinks,
bounded reads of regular files only.

    write_atomic(run_dir, "run.json", data)     # temp file (O_EXCL | O_NOFOLLOW) + fsync + rename
    append_line(run_dir / "metrics.jsonl", s)   # O_APPEND | O_NOFOLLOW: a planted symlink is refused
    data = read_limited(path, 16 * 2**20)       # a regular file of at most that many bytes

``os.replace`` replaces a symlink at the destination instead of writing through it, and a temp file
opened with ``O_CREAT | O_EXCL`` can never be a planted link, so nothing a run writes lands outside
its directory. Reads open with ``O_NONBLOCK`` (a FIFO cannot hang the loader) and refuse anything but
a regular file (``/dev/zero`` behind a symlink is refused, not read until memory runs out).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import BinaryIO

__all__ = ["check_plain_name", "write_atomic", "write_synced", "append_line", "open_regular", "read_limited",
           "fsync_dir", "describe_os_error"]

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)


def check_plain_name(name: str) -> str:
    """``name`` if it is a plain file name inside a directory (no separator, not ``.``/``..``, no NUL)."""
    if (not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name
            or "\0" in name or os.sep in name):
        raise ValueError(f"{name!r} is not a plain file name inside the run directory")
    return name


def fsync_dir(path: Path) -> None:
    """Make renames inside ``path`` durable (a no-op where directories cannot be opened)."""
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


def write_synced(path: Path, data: bytes) -> None:
    """Create ``path`` (it must not exist, and is never a symlink followed), write ``data``, fsync."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o644)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        Path(path).unlink(missing_ok=True)
        raise
    os.close(fd)


def write_atomic(directory: str | os.PathLike, name: str, data: bytes | str) -> Path:
    """Replace ``directory/name`` with ``data`` atomically: readers see the old file or the new one."""
    directory = Path(directory)
    check_plain_name(name)
    payload = data.encode() if isinstance(data, str) else bytes(data)
    tmp = directory / f".{name}.{os.getpid()}.tmp"
    tmp.unlink(missing_ok=True)
    try:
        write_synced(tmp, payload)
        os.replace(tmp, directory / name)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(directory)
    return directory / name


def append_line(path: str | os.PathLike, line: str) -> None:
    """Append ``line`` (plus a newline) to ``path``, creating it; refuses to write through a symlink."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | _NOFOLLOW, 0o644)
    try:
        os.write(fd, (line.rstrip("\n") + "\n").encode())
    finally:
        os.close(fd)


def open_regular(path: str | os.PathLike) -> tuple[BinaryIO, int]:
    """Open ``path`` for reading if it is a regular file (symlinks to one are fine); returns (file, size)."""
    try:
        fd = os.open(path, os.O_RDONLY | _NONBLOCK)
    except OSError as err:
        if err.errno == errno.ENOENT:
            raise FileNotFoundError(f"{path}: not found") from None
        raise
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise IsADirectoryError(f"{path}: not a regular file") if stat.S_ISDIR(info.st_mode) \
            else OSError(errno.EINVAL, f"{path}: not a regular file (a device, FIFO or socket)")
    return os.fdopen(fd, "rb"), info.st_size


def read_limited(path: str | os.PathLike, limit: int) -> bytes:
    """The bytes of the regular file ``path``; ValueError when it holds more than ``limit`` bytes."""
    f, size = open_regular(path)
    with f:
        if size > limit:
            raise ValueError(f"{path}: {size:,} bytes, more than the {limit:,} allowed for this file")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"{path}: more than the {limit:,} bytes allowed for this file")
    return data


def describe_os_error(err: OSError) -> str:
    """One line for an OSError: the file and the reason (``No space left on device`` ...)."""
    where = err.filename if err.filename is not None else ""
    reason = err.strerror or str(err)
    if err.errno == errno.ENOSPC:
        reason = "no space left on device (disk full)"
    return f"{where}: {reason}" if where else reason
