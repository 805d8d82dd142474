"""Claims: statements about deep learning turned into executable checks with measured numbers.

A claim is the sentence a learner meets in a course ("a CNN beats an MLP with fewer
parameters"), the numbers a stage measured on its run, what they were compared with, and
whether the comparison held. The runner prints each one as a PASS/FAIL line and writes it to
``metrics.json`` and the report; any FAIL makes ``groundup run`` exit non-zero. A claim that
does not hold on a run is reported as measured, never forced to pass (see CLAIMS.md).

A claim is a name, a sentence and one or more *checks*. A check is a comparison that writes its
own threshold text and detail text, so a comparison is spelled once:

    from groundup.roadmap import claims
    claims.claim("mlp.digits", "The MLP classifies held-out digits", claims.ge("test accuracy", acc, 0.97))
    claims.claim("cnn.shift", "Shifts hurt a CNN less than an MLP",
                 claims.gt("MLP accuracy drop", mlp_drop, "CNN accuracy drop", cnn_drop))
    claims.claim("cnn.weight_sharing", "A CNN beats an MLP with fewer parameters",
                 claims.gt("CNN accuracy", a_cnn, "MLP accuracy", a_mlp),
                 claims.lt("CNN parameters", n_cnn, "MLP parameters", n_mlp))   # all checks must hold

Checks: ``ge``/``le``/``above`` (a value against a bound), ``gt``/``lt`` (two measured values, optional
margin), ``near`` (a value within a tolerance of a target), ``close`` (two measured values within
a relative tolerance), ``is_true`` (an exact property), ``all_of`` (several checks as one). Any
non-finite measured value fails its check. The older one-call forms ``at_least``, ``at_most``,
``greater`` and ``check`` remain.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Claim", "Check", "claim", "ge", "le", "above", "gt", "lt", "near", "close", "is_true", "all_of",
           "at_least", "at_most", "greater", "check", "format_value"]


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


# ---------------------------------------------------------------- checks: one comparison, spelled once
@dataclass(frozen=True)
class Check:
    """One comparison of measured values: whether it held, the values, the rule and the rule with numbers.

    Attributes:
        passed: whether it held (False when any value is not finite).
        values: the measured numbers by label (``{"test accuracy": 0.981}``).
        rule: the comparison without the measurement (``"test accuracy >= 0.97"``).
        detail: the comparison with the numbers (``"test accuracy 0.981 >= 0.97"``).
    """

    passed: bool
    values: dict[str, float]
    rule: str
    detail: str


def _num(value: Any) -> float:
    """A measured number: an integer stays an integer (``5,000`` parameters), anything else a float."""
    if isinstance(value, int | np.integer) and not isinstance(value, bool):
        return int(value)
    return float(value)


def _make(passed: bool, values: dict[str, float], rule: str, detail: str) -> Check:
    values = {k: _num(v) for k, v in values.items()}
    return Check(bool(passed) and _finite(*values.values()), values, rule, detail)


def ge(label: str, value: float, bound: float) -> Check:
    """``value >= bound``."""
    v = _num(value)
    return _make(v >= bound, {label: v}, f"{label} >= {format_value(float(bound))}",
                 f"{label} {format_value(v)} >= {format_value(float(bound))}")


def le(label: str, value: float, bound: float) -> Check:
    """``value <= bound``."""
    v = _num(value)
    return _make(v <= bound, {label: v}, f"{label} <= {format_value(float(bound))}",
                 f"{label} {format_value(v)} <= {format_value(float(bound))}")


def above(label: str, value: float, bound: float) -> Check:
    """``value > bound`` (strictly: "the output does change")."""
    v = _num(value)
    return _make(v > bound, {label: v}, f"{label} > {format_value(float(bound))}",
                 f"{label} {format_value(v)} > {format_value(float(bound))}")


def _margin(margin: float, factor: float) -> str:
    text = f" + {format_value(float(margin))}" if margin else ""
    return text + (f" x {format_value(float(factor))}" if factor != 1.0 else "")


def gt(label_a: str, a: float, label_b: str, b: float, margin: float = 0.0, factor: float = 1.0) -> Check:
    """``a > factor * b + margin``: the first measured value beats the second."""
    a, b = _num(a), _num(b)
    rule = f"{label_a} > {label_b}" + _margin(margin, factor)
    return _make(a > factor * b + margin, {label_a: a, label_b: b}, rule,
                 f"{label_a} {format_value(a)} > {label_b} {format_value(b)}" + _margin(margin, factor))


def lt(label_a: str, a: float, label_b: str, b: float, margin: float = 0.0, factor: float = 1.0) -> Check:
    """``a < factor * b - margin``: the first measured value stays below the second."""
    a, b = _num(a), _num(b)
    text = (f" - {format_value(float(margin))}" if margin else "") + (
        f" x {format_value(float(factor))}" if factor != 1.0 else "")
    return _make(a < factor * b - margin, {label_a: a, label_b: b}, f"{label_a} < {label_b}" + text,
                 f"{label_a} {format_value(a)} < {label_b} {format_value(b)}" + text)


def near(label: str, value: float, target: float, tol: float) -> Check:
    """``|value - target| <= tol``."""
    v = _num(value)
    gap = abs(v - float(target))
    return _make(gap <= tol, {label: v},
                 f"|{label} - {format_value(float(target))}| <= {format_value(float(tol))}",
                 f"{label} {format_value(v)}, |{format_value(v)} - {format_value(float(target))}| = "
                 f"{format_value(gap)} <= {format_value(float(tol))}")


def close(label_a: str, a: float, label_b: str, b: float, rtol: float) -> Check:
    """``|a - b| <= rtol * max(|a|, |b|)``: two measured values agree to a relative tolerance."""
    a, b = _num(a), _num(b)
    gap = abs(a - b) / max(abs(a), abs(b), 1e-300)
    return _make(gap <= rtol, {label_a: a, label_b: b}, f"|{label_a} - {label_b}| / max <= {format_value(rtol)}",
                 f"{label_a} {format_value(a)} vs {label_b} {format_value(b)}: relative gap "
                 f"{format_value(gap)} <= {format_value(float(rtol))}")


def is_true(label: str, flag: bool, values: dict[str, float] | None = None) -> Check:
    """An exact property (``"earlier outputs unchanged"``), with the numbers behind it if any."""
    shown = ", ".join(f"{k} {format_value(float(v))}" for k, v in (values or {}).items())
    return _make(bool(flag), dict(values or {}), label, f"{label}: {'yes' if flag else 'no'}"
                 + (f" ({shown})" if shown else ""))


NOT_HELD = " (not held)"


def all_of(*checks: Check) -> Check:
    """Several checks as one: passes when every one does. When it fails, each check that did not hold is marked
    ``(not held)`` in the rule and the detail, so a reader of a long claim sees which part failed."""
    values: dict[str, float] = {}
    for c in checks:
        values.update(c.values)

    def mark(c: Check, text: str) -> str:
        return text + NOT_HELD if len(checks) > 1 and not c.passed and NOT_HELD not in c.detail else text

    return Check(all(c.passed for c in checks), values, "; ".join(mark(c, c.rule) for c in checks),
                 "; ".join(mark(c, c.detail) for c in checks))


def claim(name: str, statement: str, *checks: Check) -> Claim:
    """A claim that holds when all its checks do; threshold and detail come from the checks."""
    if not checks:
        raise ValueError(f"claim {name!r}: give at least one check")
    both = all_of(*checks)
    return Claim(name, statement, both.passed, both.values, both.rule, both.detail)
