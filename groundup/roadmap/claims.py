"""Claims: statements about deep learning turned into executable checks with measured numbers.

A claim is the sentence a learner meets in a course ("a CNN beats an MLP with fewer
parameters"), the numbers a stage measured on its run, what they were compared with, and
whether the comparison held. The runner prints each one as a PASS/FAIL line and writes it to
``metrics.json`` and the report; any FAIL makes ``groundup run`` exit non-zero. A claim that
does not hold on a run is reported as measured, never forced to pass (see CLAIMS.md).

    from groundup.roadmap import claims
    claims.at_least("mlp.digits", "The MLP classifies held-out digits", "test accuracy", acc, 0.97)
    claims.greater("cnn.shift", "Shifts hurt a CNN less than an MLP",
                   "MLP accuracy drop", mlp_drop, "CNN accuracy drop", cnn_drop)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Claim", "at_least", "at_most", "greater", "check", "format_value"]


def format_value(value: Any) -> str:
    """A short human-readable form of a measured number (4 significant digits; scientific when tiny)."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        if value != 0.0 and (abs(value) < 1e-3 or abs(value) >= 1e6):
            return f"{value:.2e}"
        return f"{value:.4g}"
    return str(value)


@dataclass
class Claim:
    """One executable claim and its outcome.

    Attributes:
        name: short id, ``"stage.topic"`` (e.g. ``"mlp.xor"``); unique within a stage.
        statement: the claim in one plain sentence, as a learner would read it.
        passed: whether the measured values met the threshold.
        values: the measured numbers, by human-readable name (``{"test accuracy": 0.981}``).
        threshold: what the values were compared with: a number, or a short description
            (``"MLP drop > CNN drop"``).
        detail: the comparison written out with the numbers (``"0.981 >= 0.97"``).
    """

    name: str
    statement: str
    passed: bool
    values: dict[str, float] = field(default_factory=dict)
    threshold: float | str | None = None
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "statement": self.statement, "passed": bool(self.passed),
                "values": dict(self.values), "threshold": self.threshold, "detail": self.detail}

    def line(self) -> str:
        """The one-line console form: ``PASS  statement  (detail)``."""
        return f"{'PASS' if self.passed else 'FAIL'}  {self.statement}  ({self.detail})"


def _finite(*values: float) -> bool:
    return all(isinstance(v, int | float) and math.isfinite(v) for v in values)


def at_least(name: str, statement: str, value_name: str, value: float, threshold: float) -> Claim:
    """Passes when ``value >= threshold`` (a NaN never passes)."""
    value = float(value)
    passed = _finite(value) and value >= threshold
    return Claim(name, statement, passed, {value_name: value}, float(threshold),
                 f"{value_name} {format_value(value)} >= {format_value(float(threshold))}")


def at_most(name: str, statement: str, value_name: str, value: float, threshold: float) -> Claim:
    """Passes when ``value <= threshold`` (a NaN never passes)."""
    value = float(value)
    passed = _finite(value) and value <= threshold
    return Claim(name, statement, passed, {value_name: value}, float(threshold),
                 f"{value_name} {format_value(value)} <= {format_value(float(threshold))}")


def greater(name: str, statement: str, name_a: str, a: float, name_b: str, b: float,
            margin: float = 0.0) -> Claim:
    """Passes when ``a > b + margin``: the first measured value beats the second."""
    a, b = float(a), float(b)
    passed = _finite(a, b) and a > b + margin
    rule = f"{name_a} > {name_b}" + (f" + {format_value(margin)}" if margin else "")
    return Claim(name, statement, passed, {name_a: a, name_b: b}, rule,
                 f"{name_a} {format_value(a)} > {name_b} {format_value(b)}"
                 + (f" + {format_value(margin)}" if margin else ""))


def check(name: str, statement: str, passed: bool, values: dict[str, float], threshold: float | str,
          detail: str) -> Claim:
    """A claim with a comparison of its own (several conditions at once, for instance).

    Any non-finite measured value makes it fail, whatever ``passed`` says.
    """
    values = {k: float(v) for k, v in values.items()}
    return Claim(name, statement, bool(passed) and _finite(*values.values()), values, threshold, detail)
