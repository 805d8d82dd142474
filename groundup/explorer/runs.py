"""Which runs and roadmap stages the explorer serves, and safe reads inside the served folders.

A *run* is a directory written by ``groundup train gpt --out DIR`` (model.safetensors, config.json,
the tokenizer, metrics.jsonl, run.json, summary.json). Runs come from the RUN_DIR arguments and from
the runs folder (``--runs``), which is searched a few levels deep, so ``runs/transformer/gpt`` (the
roadmap's GPT) is found too. A *stage* is ``runs/STAGE/metrics.json`` written by ``groundup run``.

Every run has an id (its path under the runs folder, or its directory name); the API looks runs up
by id in this table and never turns a request's text into a path. The one place a request names a
file is ``/files/PATH`` under the runs folder, and ``safe_file`` resolves it: no ``..``, no absolute
path, no symlink anywhere on the way, a regular file with an allowed suffix, inside the folder.
"""

from __future__ import annotations

import json
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Run", "Registry", "is_run_dir", "safe_file", "read_json", "read_metrics", "ExplorerError",
           "SERVED_SUFFIXES"]

MAX_JSON_BYTES = 4_000_000          # config, summary, run.json, a stage's metrics.json
MAX_METRICS_LINES = 20_000          # records returned by one /api/metrics call
SEARCH_DEPTH = 3                    # runs/a/b/c is found, deeper is not
SERVED_SUFFIXES = {".html": "text/html; charset=utf-8", ".png": "image/png", ".svg": "image/svg+xml",
                   ".json": "application/json", ".jsonl": "text/plain; charset=utf-8",
                   ".txt": "text/plain; charset=utf-8", ".css": "text/css; charset=utf-8"}
_RUN_FILES = ("model.safetensors", "metrics.jsonl", "run.json", "config.json")


class ExplorerError(Exception):
    """A request the explorer refuses: ``status`` (404 unknown run, 409 no checkpoint yet, 422 bad value)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass(frozen=True)
class Run:
    """One served run directory."""

    id: str
    path: Path

    @property
    def has_model(self) -> bool:
        return (self.path / "model.safetensors").is_file()


def read_json(path: Path, limit: int = MAX_JSON_BYTES) -> Any:
    """A JSON file's value, or None when it is missing, too big or not valid JSON (a run still being written)."""
    try:
        if path.is_symlink() or not path.is_file() or path.stat().st_size > limit:
            return None
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None


def read_metrics(path: Path, since: int = 0) -> tuple[list[dict[str, Any]], int]:
    """Records of metrics.jsonl from line ``since`` on, and the line to ask from next time.

    A last line without its newline is being written: it is left for the next call. Lines that are
    not JSON objects are skipped (and counted, so the offsets stay right).
    """
    records: list[dict[str, Any]] = []
    if path.is_symlink() or not path.is_file():
        return records, since
    line_no = 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.endswith("\n"):
                break
            if line_no >= since:
                if len(records) >= MAX_METRICS_LINES:
                    break
                try:
                    record = json.loads(line)
                except ValueError:
                    record = None
                if isinstance(record, dict):
                    records.append(record)
            line_no += 1
    return records, max(line_no, since)


def is_run_dir(path: Path) -> bool:
    """Whether ``path`` holds a training run's files (and is not a roadmap stage's folder)."""
    # a stage's folder holds metrics.json; a training run may hold a report.html of its own
    return any((path / name).is_file() for name in _RUN_FILES) and not (path / "metrics.json").is_file()


class Registry:
    """The runs and stages served: explicit run directories plus what the runs folder holds now.

    ``runs()`` rescans the runs folder (cheap: a few directory listings), so a run started after the
    server appears on the next call.
    """

    def __init__(self, run_dirs: list[str | os.PathLike] | tuple = (), runs_root: str | os.PathLike | None = None):
        self.root = Path(runs_root).resolve() if runs_root is not None else None
        if self.root is not None and not self.root.is_dir():
            raise FileNotFoundError(f"runs folder {runs_root}: no such directory")
        self._explicit: dict[str, Run] = {}
        for given in run_dirs:
            path = Path(given).resolve()
            if not path.is_dir():
                raise FileNotFoundError(f"run directory {given}: no such directory")
            if self.root is not None and path.is_relative_to(self.root) and path != self.root:
                run_id = path.relative_to(self.root).as_posix()
            else:
                run_id = _unique(re.sub(r"[^A-Za-z0-9._-]+", "-", path.name) or "run", self._explicit)
            self._explicit[run_id] = Run(run_id, path)
        self._lock = threading.Lock()

    def runs(self) -> dict[str, Run]:
        """id -> Run, the explicit runs first, then the runs folder's in path order."""
        found = dict(self._explicit)
        if self.root is not None:
            known = {r.path for r in found.values()}
            for path in self._scan(self.root, 0):
                run_id = path.relative_to(self.root).as_posix()
                if path not in known and run_id not in found:
                    found[run_id] = Run(run_id, path)
        return found

    def _scan(self, directory: Path, depth: int) -> list[Path]:
        out: list[Path] = []
        try:
            children = sorted(p for p in directory.iterdir() if p.is_dir() and not p.is_symlink())
        except OSError:
            return out
        for child in children:
            if child.name.startswith(".") or ".old-" in child.name:
                continue
            if is_run_dir(child):
                out.append(child)
            elif depth + 1 < SEARCH_DEPTH:
                out.extend(self._scan(child, depth + 1))
        return out

    def get(self, run_id: str) -> Run:
        """The run with this id; ExplorerError 404 naming the known ids otherwise."""
        runs = self.runs()
        if run_id not in runs:
            known = ", ".join(list(runs)[:10]) or "none"
            raise ExplorerError(404, f"unknown run {run_id[:100]!r}; runs served: {known}")
        return runs[run_id]

    def stages(self) -> list[dict[str, Any]]:
        """The roadmap stages found in the runs folder, in the roadmap's order where it is known."""
        if self.root is None:
            return []
        records = []
        for child in sorted(self.root.iterdir()):
            if child.is_symlink() or not child.is_dir():
                continue
            record = read_json(child / "metrics.json")
            if not isinstance(record, dict) or "stage" not in record:
                continue
            records.append(_stage_view(child.name, record, (child / "report.html").is_file()))
        order = _stage_order()
        records.sort(key=lambda r: (order.index(r["name"]) if r["name"] in order else len(order), r["name"]))
        return records


def _unique(name: str, taken: dict[str, Any]) -> str:
    candidate, n = name, 2
    while candidate in taken:
        candidate, n = f"{name}-{n}", n + 1
    return candidate


def _stage_order() -> list[str]:
    try:
        from groundup.roadmap.stages import STAGE_ORDER
    except Exception:  # noqa: BLE001 - the order is a nicety; without it stages sort by name
        return []
    return list(STAGE_ORDER)


def _stage_view(name: str, record: dict[str, Any], has_report: bool) -> dict[str, Any]:
    """What the page shows of one stage's metrics.json."""
    headline = record.get("headline") if isinstance(record.get("headline"), dict) else {}
    claims = []
    for claim in record.get("claims") or []:
        if isinstance(claim, dict):
            claims.append({"statement": str(claim.get("statement", "")), "passed": bool(claim.get("passed")),
                           "detail": str(claim.get("detail", ""))})
    return {"name": name, "title": str(record.get("title") or record.get("summary") or name),
            "status": str(record.get("status", "unknown")), "mode": str(record.get("mode", "")),
            "headline": str(headline.get("text", "")), "claims": claims,
            "error": str(record["error"]) if record.get("error") else None,
            "finished_at": str(record.get("finished_at", "")), "wall_s": record.get("wall_s"),
            "report": f"/files/{name}/report.html" if has_report else None}


def safe_file(root: Path | None, relative: str) -> Path:
    """The regular file ``root/relative``, refusing anything that could lead outside ``root``.

    Refused (ExplorerError 404, the same answer whether or not the file exists): an absolute path,
    a ``..`` or empty part, a backslash or NUL, a symlink at any step, a suffix not in
    SERVED_SUFFIXES, and a path whose resolved form is not inside the resolved root.
    """
    refused = ExplorerError(404, f"no such file {relative[:200]!r} in the runs folder")
    if root is None or not relative or "\x00" in relative or "\\" in relative or relative.startswith("/"):
        raise refused
    parts = relative.split("/")
    if any(part in ("", ".", "..") for part in parts) or Path(relative).is_absolute():
        raise refused
    path = root
    for part in parts:
        path = path / part
        if path.is_symlink():
            raise refused
    if path.suffix.lower() not in SERVED_SUFFIXES or not path.is_file():
        raise refused
    resolved = path.resolve()
    if not resolved.is_relative_to(root) or resolved != path:
        raise refused
    return resolved
