"""The report's "The code" section: the functions and classes that produced a stage's numbers.

Everything is read from the source at report time with ``inspect``, so the file names, line
ranges and lines shown are always those of the code that ran. For a stage given as experiments
the section lists, in order: each experiment function, then the helpers of the stage's own module
and the model classes (``groundup.models``) that the experiments call by name, then anything the
stage names in ``Stage.code``. Paths are relative to the folder that holds the ``groundup``
package (the repository root of a clone), never absolute.

    from groundup.roadmap.code import code_refs
    for ref in code_refs(stage):
        print(ref.name, f"{ref.file}:{ref.start}-{ref.end}")
"""

from __future__ import annotations

import inspect
import re
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["CodeRef", "code_refs", "code_records", "refs_for", "package_root"]

# Lines worth showing inline: a model or config built, a training call, a backward pass or an
# optimiser step, a loss, an evaluation (not comments, text, or the claims: the report shows those).
_KEY = re.compile(r"\b[A-Z][A-Za-z0-9]*(?:Config)?\(|\btrain\w*\(|\.backward\(|\.step\(|clip_grad_norm_|"
                  r"cross_entropy|softmax\(|\bmean_loss\(|\bevaluate\w*\(|\bfit\w*\(|\bgradient\w*\(|"
                  r"\bmeasure\w*\(|\bprofile\w*\(")
_SKIP = re.compile(r"""^\s*(?:#|f?["']|claims\.|\*\(claims|[A-Z_]+\s*=|raise\b)""")
_MAX_KEY_LINES = 10


@dataclass(frozen=True)
class CodeRef:
    """One function or class: where it is and the lines worth reading first.

    Attributes:
        name: qualified name (``rnn.language_models``, ``RNNLM``).
        kind: "experiment", "helper", "model" or "code".
        module: the Python module it lives in.
        file: path relative to the folder holding the package (``groundup/roadmap/stages/rnn.py``).
        start, end: first and last line of its source (1-based, inclusive).
        key_lines: (line number, text) of the lines shown inline.
        source: its whole source text.
    """

    name: str
    kind: str
    module: str
    file: str
    start: int
    end: int
    key_lines: tuple[tuple[int, str], ...]
    source: str

    def to_dict(self) -> dict[str, Any]:
        """What metrics.json records (no source text)."""
        return {"name": self.name, "kind": self.kind, "file": self.file, "lines": [self.start, self.end]}


def package_root() -> Path:
    """The folder holding the ``groundup`` package: references are relative to it."""
    import groundup

    return Path(groundup.__file__).resolve().parent.parent


def _relative(path: str) -> str:
    resolved = Path(path).resolve()
    try:
        return resolved.relative_to(package_root()).as_posix()
    except ValueError:  # code outside the package (a user's own stage): its file name only
        return resolved.name


def _key_lines(lines: list[str], start: int, is_class: bool) -> tuple[tuple[int, str], ...]:
    """The signature, then the lines that build, train and measure (for a class: its ``forward``)."""
    picked = [(start, lines[0].rstrip())]
    if is_class:
        for i, line in enumerate(lines):
            if re.match(r"\s*def forward\(", line):
                body = [(start + j, lines[j].rstrip()) for j in range(i, min(len(lines), i + _MAX_KEY_LINES + 4))]
                return tuple(picked + [b for b in body if b[1].strip()][:_MAX_KEY_LINES + 1])
        return tuple(picked)
    in_doc = False
    for i, line in enumerate(lines[1:], 1):
        stripped = line.strip()
        quotes = stripped.count('"""') + stripped.count("'''")
        if in_doc or (quotes and stripped.startswith(('"""', "'''", 'r"""'))):
            in_doc = (in_doc + quotes) % 2 == 1 if quotes else in_doc
            continue
        if _SKIP.match(line) or not _KEY.search(line) or "Finding(" in line:
            continue
        picked.append((start + i, line.rstrip()))
        if len(picked) > _MAX_KEY_LINES:
            break
    if len(picked) < 4:  # nothing stands out: the opening lines of the body instead
        body = _body_lines(lines, start)
        picked = sorted(set(picked) | set(body[:6]))
    return tuple(picked)


def _body_lines(lines: list[str], start: int) -> list[tuple[int, str]]:
    """(line number, text) of a function's code lines after its docstring (no comments, no blank lines)."""
    out: list[tuple[int, str]] = []
    in_doc, seen_code = False, False
    for i, line in enumerate(lines[1:], 1):
        stripped = line.strip()
        quotes = stripped.count('"""') + stripped.count("\'\'\'")
        if not seen_code and (in_doc or stripped.startswith(('"""', "\'\'\'", 'r"""'))):
            in_doc = (in_doc + quotes) % 2 == 1
            continue
        if not stripped or stripped.startswith("#"):
            continue
        seen_code = True
        out.append((start + i, line.rstrip()))
    return out


def _ref(obj: Any, kind: str) -> CodeRef | None:
    target = inspect.unwrap(obj)
    try:
        file = inspect.getsourcefile(target)
        lines, start = inspect.getsourcelines(target)
    except (OSError, TypeError):
        return None
    if file is None:
        return None
    module = getattr(target, "__module__", "") or ""
    name = getattr(target, "__qualname__", getattr(target, "__name__", repr(target)))
    if kind in ("experiment", "helper") or not inspect.isclass(target):  # a function: say its module
        name = f"{module.rsplit('.', 1)[-1]}.{name}"
    return CodeRef(name=name, kind=kind, module=module, file=_relative(file), start=start,
                   end=start + len(lines) - 1, key_lines=_key_lines(lines, start, inspect.isclass(target)),
                   source="".join(lines))


def _names_used(function: Any) -> set[str]:
    """The global names a function's code (and the code of functions nested in it) refers to."""
    names: set[str] = set()
    todo = [getattr(inspect.unwrap(function), "__code__", None)]
    while todo:
        code = todo.pop()
        if code is None:
            continue
        names.update(code.co_names)
        todo += [c for c in code.co_consts if isinstance(c, types.CodeType)]
    return names


def _worth_listing(helper: Any) -> bool:
    """A public helper, or a private one that trains, measures or builds a model (not a table or plot maker)."""
    name = helper.__name__
    if not name.startswith("_"):
        return True
    if re.search(r"train|fit|grad|loss|evaluat|measure|step", name):
        return True
    names = _names_used(helper)
    return any(inspect.isclass(helper.__globals__.get(n)) and
               getattr(helper.__globals__.get(n), "__module__", "").startswith("groundup.models") for n in names)


def _used_objects(function: Any) -> list[tuple[Any, str]]:
    """(object, kind) for the stage-module helpers and the model classes a function calls by name."""
    module = getattr(function, "__module__", "")
    found = []
    for name in sorted(_names_used(function)):
        obj = getattr(function, "__globals__", {}).get(name)
        in_models = getattr(obj, "__module__", "") or ""
        if (inspect.isclass(obj) or inspect.isfunction(obj)) and in_models.startswith("groundup.models"):
            found.append((obj, "model"))
        elif inspect.isfunction(obj) and obj.__module__ == module and obj is not function and _worth_listing(obj):
            found.append((obj, "helper"))
    return found


def code_refs(stage: Any) -> list[CodeRef]:
    """The code behind a stage's numbers: experiments, then their helpers and models, then ``stage.code``.

    A stage defined by ``run=`` lists its run function (and what it calls) instead of experiments.
    """
    experiments = list(getattr(stage, "experiments", ()) or ())
    if not experiments and getattr(stage, "run", None) is not None:
        experiments = [stage.run]
    ordered: list[tuple[Any, str]] = [(fn, "experiment") for fn in experiments]
    seen = {id(fn) for fn in experiments}
    extra: list[tuple[Any, str]] = []
    for fn in experiments:
        for obj, kind in _used_objects(fn):
            if id(obj) not in seen and obj not in experiments:
                seen.add(id(obj))
                extra.append((obj, kind))
    for obj, kind in list(extra):  # one level further: the models a helper builds
        if kind == "helper":
            for inner, inner_kind in _used_objects(obj):
                if inner_kind == "model" and id(inner) not in seen:
                    seen.add(id(inner))
                    extra.append((inner, inner_kind))
    extra.sort(key=lambda pair: pair[1] != "model")  # the models first: they are what a learner reads next
    ordered += extra
    for obj in getattr(stage, "code", ()) or ():
        if id(obj) not in seen:
            seen.add(id(obj))
            ordered.append((obj, "code"))
    refs = [_ref(obj, kind) for obj, kind in ordered]
    return [r for r in refs if r is not None]


def refs_for(objects: list[tuple[Any, str]]) -> list[CodeRef]:
    """``CodeRef``s of (object, kind) pairs, in order (those whose source cannot be read are left out)."""
    refs = [_ref(obj, kind) for obj, kind in objects]
    return [r for r in refs if r is not None]


def code_records(stage: Any) -> list[dict[str, Any]]:
    """``code_refs`` as metrics.json records: name, kind, file and [first, last] line."""
    try:
        return [r.to_dict() for r in code_refs(stage)]
    except Exception:  # noqa: BLE001 - a report without its code section beats a stage that cannot run
        return []
