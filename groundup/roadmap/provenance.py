"""Where a report's numbers come from: every number in a stage's prose must be one this run measured.

A report that says "the MLP reaches 98.1%" must have measured 0.981 in this run; a sentence
carrying a number from another run ("42-46% in our quick runs") or a finding never computed is a
bug this module finds. ``unmeasured_numbers(record)`` reads a metrics.json record and returns the
numbers in its prose (the findings' text, claim statements, the summary and the plot captions) that match none of
the run's numbers (metrics, settings, claim values and thresholds), as printed: up to the
rounding the text shows, or as a percentage (``98.1%`` matches 0.9812).

    from groundup.roadmap.provenance import unmeasured_numbers
    assert unmeasured_numbers(record) == []          # tests/test_roadmap.py runs this on every stage
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from typing import Any

__all__ = ["prose_of", "numbers_in", "measured_values", "unmeasured_numbers"]

# A number not glued to a word (W1, x2, float64, GPT-2 are names, not numbers of a run), read whole
# ("113.7x" is 113.7, never 113); a multiplier "x" may follow it ("149x", and the 8 of "8x8").
_NUMBER = re.compile(r"(?<![\w.^/])(?<![A-Za-z]-)[-+]?\d[\d,]*(?:\.\d+)?(?:e[-+]?\d+)?%?"
                     r"(?![.,]?\d)(?=x(?!\w)|x\d|[^\w]|$)")


def prose_of(record: dict[str, Any]) -> list[str]:
    """The record's prose: summary paragraphs, findings' titles, text and notes, claim statements, plot captions,
    notes (not a stage's trusted HTML sections: derivations and tables)."""
    texts = list(record.get("summary_text", []))
    for finding in record.get("findings", []):
        texts += [finding.get("title", "")] + finding.get("text", []) + finding.get("notes", [])
    texts += [c.get("statement", "") for c in record.get("claims", [])]
    texts += [p.get("caption", "") for p in record.get("plots", [])]
    texts += list(record.get("notes", []))
    return texts


def numbers_in(text: str) -> list[str]:
    """The number tokens of a text (``"1,797"``, ``"98.1%"``, ``"-0.34"``, ``"2.5e-07"``)."""
    return [m.group(0).rstrip(",") for m in _NUMBER.finditer(text)]


def _walk(value: Any, text: bool = False) -> Iterator[float]:
    """The numbers in a JSON value; with ``text``, also those written inside strings (a claim's threshold)."""
    if isinstance(value, bool):
        return
    if isinstance(value, int | float):
        if math.isfinite(value):
            yield float(value)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _walk(v, text)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _walk(v, text)
    elif text and isinstance(value, str):  # a threshold written as text ("MLP >= 0.95") carries its numbers
        for token in numbers_in(value):
            parsed = _parse(token)
            if parsed is not None:
                yield parsed[0] / (100.0 if token.endswith("%") else 1.0)


def measured_values(record: dict[str, Any]) -> list[float]:
    """Every number the run measured or was configured with: metrics, settings, claims."""
    values = list(_walk(record.get("metrics", {})))
    for setting in record.get("settings", {}).values():
        values += list(_walk([setting.get("value"), setting.get("full")]))
    for claim in record.get("claims", []):
        values += list(_walk(claim.get("values", {}))) + list(_walk(claim.get("threshold"), text=True))
    return values


def _parse(token: str) -> tuple[float, float] | None:
    """(value, half a unit of the last printed digit) of a token, or None."""
    body = token.rstrip("%").replace(",", "")
    mantissa, _, exponent = body.lower().partition("e")
    try:
        value = float(body)
    except ValueError:
        return None
    decimals = len(mantissa.split(".")[1]) if "." in mantissa else 0
    half_unit = 0.5 * 10.0 ** (-decimals) * 10.0 ** (int(exponent) if exponent else 0)
    return value, half_unit


def _matches(token: str, values: list[float]) -> bool:
    parsed = _parse(token)
    if parsed is None:
        return True
    number, half_unit = parsed
    scales = (100.0,) if token.endswith("%") else (1.0,)
    slack = half_unit * (1 + 1e-9) + 1e-12
    for v in values:
        for scale in scales:
            if abs(v * scale - number) <= slack or abs(abs(v * scale) - abs(number)) <= slack:
                return True
    return False


def unmeasured_numbers(record: dict[str, Any]) -> list[str]:
    """The numbers in the record's prose that are not among its measured values, as ``"number: text"``."""
    values = measured_values(record)
    found = []
    for text in prose_of(record):
        for token in numbers_in(text):
            if not _matches(token, values):
                found.append(f"{token}: {text[:120]}")
    return found
