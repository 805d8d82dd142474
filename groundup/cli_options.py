"""Command-line options shared by groundup's commands: checked argument types, the help formatter,
and the typed ``--model.FIELD=VALUE`` / ``--train.FIELD=VALUE`` overrides.

Every value is checked before any work starts: an integer type has its range (``--batch-size 0`` is
refused), a float type refuses NaN and inf, and a dotted override is parsed with the dataclass
field's annotation (minGPT's dotted keys + nanoGPT's type check, no ``exec``). A bad value is an
argparse error: one line ``groundup: error: ...`` and exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from collections.abc import Callable
from typing import Any

__all__ = ["int_range", "float_range", "HelpFormatter", "parse_field", "apply_overrides", "dotted_options",
           "collect", "field_types", "UsageError"]


class UsageError(Exception):
    """Bad input found after parsing (a conflict between flags, a missing file): exit 2, one line."""


def int_range(low: int | None = None, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer in [low, high] (either bound may be None)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if (low is not None and value < low) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{value} is out of range: expected {_range_text(low, high)}")
        return value

    parse.__name__ = "integer"
    return parse


def float_range(low: float | None = None, high: float | None = None, *, low_open: bool = False,
                high_open: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite float in the interval given (open at either end if asked)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        too_low = low is not None and (value <= low if low_open else value < low)
        too_high = high is not None and (value >= high if high_open else value > high)
        if too_low or too_high:
            left = "(" if low_open else "["
            right = ")" if high_open else "]"
            bounds = f"{left}{'-inf' if low is None else low}, {'inf' if high is None else high}{right}"
            raise argparse.ArgumentTypeError(f"{value} is out of range: expected a number in {bounds}")
        return value

    parse.__name__ = "number"
    return parse


def _range_text(low: int | None, high: int | None) -> str:
    if low is not None and high is not None:
        return f"an integer from {low} to {high}"
    return f"an integer >= {low}" if low is not None else f"an integer <= {high}"


class HelpFormatter(argparse.HelpFormatter):
    """Shows ``(default: X)`` only where there is a real default (not None / False / a required option)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("%(default)" in text or "default:" in text or action.required or not action.option_strings
                or action.default in (None, False, True, argparse.SUPPRESS)):
            return text
        return text + " (default: %(default)s)"


# ----------------------------------------------------------------------------- dotted overrides
def parse_field(text: str, annotation: Any, name: str) -> Any:
    """Parse ``text`` as a value of the dataclass field type ``annotation`` (int, float, bool, str,
    ``X | None`` and ``tuple[float, float]`` written ``0.9,0.95``); raise ValueError naming the field."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        if text.strip().lower() in ("none", "null"):
            return None
        return parse_field(text, options[0], name)
    if origin is tuple:
        cleaned = text.strip().strip("()[]")
        parts = [p for p in cleaned.replace(" ", ",").split(",") if p.strip()]
        kinds = typing.get_args(annotation)
        if len(parts) != len(kinds):
            raise ValueError(f"{name}: expected {len(kinds)} comma-separated values such as "
                             f"{','.join(['0.9', '0.95'][:len(kinds)])}, got {text!r}")
        return tuple(parse_field(p.strip(), k, name) for p, k in zip(parts, kinds))
    if annotation is bool:
        lowered = text.strip().lower()
        if lowered in ("true", "1", "yes", "on"):
            return True
        if lowered in ("false", "0", "no", "off"):
            return False
        raise ValueError(f"{name}: expected true or false, got {text!r}")
    if annotation is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"{name}: expected an integer, got {text!r}") from None
    if annotation is float:
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"{name}: expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise ValueError(f"{name}: expected a finite number, got {text!r}")
        return value
    if annotation is str:
        return text
    raise ValueError(f"{name}: cannot parse a value of type {annotation!r} from the command line")


def field_types(cls: type) -> dict[str, Any]:
    """{field name: resolved annotation} of the dataclass ``cls``."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def apply_overrides(config: Any, overrides: dict[str, str], prefix: str) -> Any:
    """``dataclasses.replace(config, **parsed)`` for ``{field: text}``; unknown fields are an error."""
    types_ = field_types(type(config))
    unknown = sorted(set(overrides) - set(types_))
    if unknown:
        raise ValueError(f"unknown {prefix} field(s) {', '.join(f'{prefix}.{u}' for u in unknown)}; "
                         f"known: {', '.join(sorted(types_))}")
    parsed = {k: parse_field(v, types_[k], f"--{prefix}.{k}") for k, v in overrides.items()}
    return dataclasses.replace(config, **parsed)


def _metavar(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        return f"{_metavar(options[0])}|none"
    if origin is tuple:
        return ",".join(_metavar(k) for k in typing.get_args(annotation))
    return getattr(annotation, "__name__", str(annotation)).upper()


class _JoinValues(argparse.Action):
    """``--train.betas 0.9 0.95`` and ``--train.betas=0.9,0.95`` both become the text ``0.9,0.95``."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        setattr(namespace, self.dest, ",".join(values))


def dotted_options(parser: argparse.ArgumentParser, prefix: str, cls: type, skip: tuple[str, ...] = (),
                   choices: dict[str, tuple[str, ...]] | None = None, aliases: dict[str, str] | None = None) -> None:
    """Add ``--PREFIX.FIELD`` for every field of the dataclass ``cls`` (values parsed later, typed).

    Args:
        choices: the allowed values of str fields (shown in the help, checked by argparse).
        aliases: fields that a short flag also sets (``{"max_iters": "--max-iters"}``), named in the help.
    """
    choices, aliases = choices or {}, aliases or {}
    title = (f"--{prefix}.FIELD=VALUE overrides ({cls.__name__}; each value is parsed with the field's type: "
             f"true/false for bools, none for optional fields, 0.9,0.95 for pairs)")
    group = parser.add_argument_group(title)
    for name, annotation in field_types(cls).items():
        if name in skip:
            continue
        kind = _metavar(annotation)
        extra: dict[str, Any] = {}
        if typing.get_origin(annotation) is tuple:
            extra = {"nargs": "+", "action": _JoinValues}
        if name in choices:
            extra["choices"] = choices[name]
            kind = "{" + ",".join(choices[name]) + "}"
        text = f"{cls.__name__}.{name}" + (f" (what {aliases[name]} sets: give one of the two)"
                                            if name in aliases else "")
        group.add_argument(f"--{prefix}.{name}", dest=f"{prefix}__{name}", metavar=kind, default=None,
                           help=argparse.SUPPRESS if name.startswith("_") else text, **extra)


def collect(args: argparse.Namespace, prefix: str) -> dict[str, str]:
    """The dotted overrides given on the command line for ``prefix``, as {field: text}."""
    head = f"{prefix}__"
    return {k[len(head):]: v for k, v in vars(args).items() if k.startswith(head) and v is not None}
