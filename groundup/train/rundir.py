"""Run directories that are owned: one writer at a time, never silently replaced, never written
through a planted symlink.

    with RunDir.open("runs/gpt", resume=False, replace=False) as run:   # RunDirError if refused
        run.write("run.json", text)                                      # atomic, no symlink followed

Rules:
- ``--out`` must name a directory that can be created and written (not "", not a file, not under a file).
- A directory that already holds a run (``RUN_MARKERS``) is refused unless resuming, or unless
  ``replace`` moves the old run aside to ``<out>.old-<n>`` (it is never deleted). A non-empty directory
  that is not a run is refused, so a run never mixes its files with others (``--out .``).
- ``.lock`` inside the directory holds the writer's pid and host; a second writer is refused while
  that process lives; a lock left by a dead process (``kill -9``) is stale and taken over.
- Every run file in the directory must be a regular file or absent: a symlink is refused.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from types import TracebackType

from groundup.train.files import check_plain_name, write_atomic

__all__ = ["RunDir", "RunDirError", "RUN_MARKERS", "LOCK_FILE", "check_out_dir"]

LOCK_FILE = ".lock"
RUN_MARKERS = ("state.json", "model.safetensors", "run.json", "metrics.jsonl", "tokenizer.json", "vocab.json")
RUN_FILES = (*RUN_MARKERS, "config.json", "optimizer.safetensors", "merges.txt", "summary.json", "loss.png",
             "report.html")


class RunDirError(Exception):
    """The run directory cannot be used as asked (the message says why and what to do)."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def check_out_dir(path: str) -> Path:
    """``path`` as a run directory that could be created and written; RunDirError otherwise (before any work)."""
    if not path or not path.strip():
        raise RunDirError("--out is empty: give a run directory, e.g. --out runs/my-gpt")
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise RunDirError(f"--out {path}: is a file, not a directory")
    probe = out
    while not probe.exists():
        if probe.is_symlink():
            raise RunDirError(f"--out {path}: {probe} is a dangling symlink")
        probe = probe.parent
    if not probe.is_dir():
        raise RunDirError(f"--out {path}: {probe} is a file, so no directory can be made under it")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise RunDirError(f"--out {path}: {probe} is not writable")
    return out


def _holds_run(directory: Path) -> bool:
    return any(os.path.lexists(directory / name) for name in RUN_MARKERS)


def _aside_name(directory: Path) -> Path:
    n = 1
    while os.path.lexists(directory.with_name(f"{directory.name}.old-{n}")):
        n += 1
    return directory.with_name(f"{directory.name}.old-{n}")


class RunDir:
    """An owned run directory (a context manager holding its lock); see the module docstring."""

    def __init__(self, path: Path):
        self.path = path
        self.moved_to: Path | None = None
        self._locked = False

    @classmethod
    def open(cls, path: str | os.PathLike, *, resume: bool, replace: bool = False) -> RunDir:
        """Take the run directory ``path`` for a new run (or for ``resume``); RunDirError when refused."""
        out = check_out_dir(str(path))
        run = cls(out)
        if resume:
            if not out.is_dir():
                raise RunDirError(f"--resume: {out} does not exist")
            run._lock()
            run._check_symlinks()
            return run
        if out.is_dir() and any(not p.name.startswith(".") for p in out.iterdir()):
            if _holds_run(out):
                run._lock()  # the old run's writer, if alive, must have finished before it is moved
                if not replace:
                    run.release()
                    raise RunDirError(f"--out {out} already holds a run; continue it with --resume (same flags), "
                                      f"or pass --replace to move it aside to {_aside_name(out).name} and start "
                                      f"afresh (nothing is deleted), or choose another --out")
                aside = _aside_name(out)
                os.replace(out, aside)  # the lock moves with it and is dropped below
                (aside / LOCK_FILE).unlink(missing_ok=True)
                run._locked = False
                run.moved_to = aside
            else:
                raise RunDirError(f"--out {out} is a non-empty directory that is not a groundup run; choose a new "
                                  f"or empty directory (a run's files must not mix with others)")
        try:
            out.mkdir(parents=True, exist_ok=True)
            run._lock()
        except OSError as err:
            raise RunDirError(f"--out {out}: cannot create the run directory or its lock "
                              f"({err.strerror or err})") from None
        run._check_symlinks()
        return run

    # ------------------------------------------------------------------ the lock
    def _lock(self) -> None:
        lock = self.path / LOCK_FILE
        me = {"pid": os.getpid(), "host": socket.gethostname()}
        for _ in range(3):
            try:
                fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
            except FileExistsError:
                holder = self._holder(lock)
                if holder is not None and holder.get("host") == me["host"] and isinstance(holder.get("pid"), int) \
                        and not _pid_alive(holder["pid"]):
                    stale = lock.with_name(f"{LOCK_FILE}.stale-{os.getpid()}")
                    try:  # only one taker of a stale lock wins the rename
                        os.replace(lock, stale)
                        stale.unlink(missing_ok=True)
                    except FileNotFoundError:
                        pass
                    continue
                who = f"process {holder.get('pid')} on {holder.get('host')}" if holder else "another process"
                raise RunDirError(f"{self.path} is in use by {who} (lock file {lock}); wait for it to finish, "
                                  f"or delete the lock file if that process is gone") from None
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self._locked = True
            return
        raise RunDirError(f"could not take the lock {lock}")

    @staticmethod
    def _holder(lock: Path) -> dict | None:
        try:
            value = json.loads(lock.read_text()[:1000])
            return value if isinstance(value, dict) else None
        except (OSError, ValueError):
            return None

    def release(self) -> None:
        """Drop the lock (if this process holds it)."""
        if not self._locked:
            return
        lock = self.path / LOCK_FILE
        holder = self._holder(lock)
        if holder is not None and holder.get("pid") == os.getpid():
            lock.unlink(missing_ok=True)
        self._locked = False

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.release()

    # ------------------------------------------------------------------ files
    def _check_symlinks(self) -> None:
        for name in RUN_FILES:
            path = self.path / name
            if path.is_symlink() or (path.exists() and not path.is_file()):
                self.release()
                raise RunDirError(f"{path} is a symlink or not a regular file; a run directory's files must be "
                                  f"regular files (remove it, or choose another --out)")

    def write(self, name: str, data: bytes | str) -> Path:
        """Write the run file ``name`` atomically (never through a symlink)."""
        return write_atomic(self.path, check_plain_name(name), data)
