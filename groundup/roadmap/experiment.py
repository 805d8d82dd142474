"""One shape for every stage: a short list of experiments, each returning a ``Finding``.

An experiment is a function ``(ctx, state) -> Finding``. ``ctx`` is the run's ``Context``
(budgets, thresholds, seeds, progress, figures); ``state`` is a dict the experiments of one stage
share, in order (data loaded once, a model trained by one experiment and probed by the next). A
``Finding`` holds what the experiment measured and says: its metrics (merged, key by key, into
the stage's ``metrics.json``), its claims, its plots and its text. The report shows each finding
as one section: title, text, claims, plots.

    from groundup.roadmap import Finding, Stage, claims

    def xor(ctx, state):
        steps = ctx.budget("XOR training steps", full=500, quick=300, tiny=20)
        ...train, measure...
        acc = {"linear": 0.49, "mlp": 0.99}                    # measured, never typed in
        return Finding(
            title="XOR: what a linear model cannot do",
            metrics={"xor": {"linear_test_accuracy": acc["linear"], "mlp_test_accuracy": acc["mlp"]}},
            claims=[claims.claim("mlp.xor", "A hidden layer solves what a linear model cannot (XOR)",
                                 claims.ge("MLP accuracy", acc["mlp"], ctx.threshold("XOR: MLP", full=0.95)),
                                 claims.le("linear accuracy", acc["linear"], 0.65))],
            plots=[ctx.savefig(fig, "xor.png", "Decision regions ...")],
            text=[f"A linear model is stuck at chance ({acc['linear']:.0%}); ..."])

    STAGE = Stage("mlp", "feedforward net on digits", experiments=(xor, digits, backprop_by_hand),
                  headline=("MLP test accuracy", "classification.mlp_test_accuracy"), intro="...")

Rules the tests hold a stage to:
- every number in ``text`` and in plot captions is this run's: it appears (as printed, up to
  rounding, or as a percentage) among the run's metrics, settings or claim values
  (``groundup.roadmap.provenance.unmeasured_numbers``). Put a number you want to say in the
  finding's metrics first. ``intro`` (the stage's opening) holds no numbers at all.
- no stage imports another stage: helpers two stages share live in a roadmap module
  (``groundup/roadmap/classify.py``, ``groundup/roadmap/plots.py``) or lower (``groundup.data``).
- ``headline`` names a metric by its dotted path; the runner reads the value from the metrics.

What the report shows beyond the findings, from the ``Stage`` itself:
- "The code": found on its own (``groundup/roadmap/code.py``): each experiment, the models and the
  stage-module helpers it calls, with file, lines and key lines read from the source at report time;
  ``code=(fn_or_class, ...)`` adds the mechanism a stage is about (``code=(AdditiveAttention,)``).
- ``better="lower"`` / ``"higher"`` and ``anchor=(label, dotted metric path)`` beside the headline.
- ``how=(...)``: "How it works", static HTML with the maths; ``try_next=((command, expectation), ...)``:
  "Try next". Neither is part of the run's record, so the provenance rule does not read them: keep
  this run's numbers out of them.
- ``options=(("hidden", "hidden size", int), ...)``: the keys of ``groundup run STAGE --set KEY=VALUE``
  and the kind of value each takes (int and float: positive; checked before any stage runs); read
  one with ``ctx.option("hidden", 128)`` or ``ctx.budget(name, full, quick, tiny, option="hidden")``. A
  value that was set is recorded in the settings (metrics.json, the report, ``groundup compare``).

A stage may still define ``run(ctx) -> StageResult`` itself (``Stage(name, summary, run=...)``);
``run_experiments`` is what the runner calls for a stage given as experiments.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from groundup.roadmap.claims import Claim

__all__ = ["Finding", "Experiment", "run_experiments", "metric_at"]


@dataclass
class Finding:
    """What one experiment measured and says.

    Attributes:
        title: the report section's heading (no numbers).
        text: plain paragraphs; every number in them comes from this run's metrics.
        metrics: numbers measured (JSON-serialisable), merged into the stage's metrics at the top level;
            two findings of one stage may not use the same top-level key.
        claims: the executable claims this experiment checks.
        plots: the figures it saved with ``ctx.savefig``.
        sections: extra (title, trusted HTML) blocks shown after the plots (a derivation, a table).
        notes: remarks (caveats), shown with the finding.
    """

    title: str = ""
    text: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    claims: list[Claim] = field(default_factory=list)
    plots: list[Any] = field(default_factory=list)
    sections: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The finding as it is recorded in metrics.json (its metrics are in the stage's metrics)."""
        return {"title": self.title, "text": list(self.text), "claims": [c.name for c in self.claims],
                "plots": [p.file for p in self.plots], "notes": list(self.notes),
                "metric_keys": list(self.metrics)}


Experiment = Callable[[Any, dict[str, Any]], Finding]


def metric_at(metrics: dict[str, Any], path: str) -> Any:
    """The value at a dotted path (``"classification.mlp_test_accuracy"``); a KeyError names the path."""
    value: Any = metrics
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(f"no metric {path!r} (missing {part!r})")
        value = value[part]
    return value


def run_experiments(ctx: Any, experiments: Sequence[Experiment], headline: tuple[str, str],
                    intro: Sequence[str] = ()) -> Any:
    """Run a stage's experiments in order with one shared ``state`` dict; gather their findings.

    Args:
        ctx: the run's Context.
        experiments: the functions ``(ctx, state) -> Finding``.
        headline: (label, dotted metric path) of the stage's headline number.
        intro: the stage's opening paragraphs (no numbers).

    Returns:
        the ``StageResult``: metrics merged, claims and plots in experiment order, and the findings.
    """
    from groundup.roadmap.runner import StageResult

    state: dict[str, Any] = {}
    findings: list[Finding] = []
    metrics: dict[str, Any] = {}
    for experiment in experiments:
        finding = experiment(ctx, state)
        name = getattr(experiment, "__name__", repr(experiment))
        if not isinstance(finding, Finding):
            raise TypeError(f"experiment {name} returned {type(finding).__name__}, expected Finding")
        clash = sorted(set(finding.metrics) & set(metrics))
        if clash:
            raise ValueError(f"experiment {name}: metric keys {clash} already set by an earlier experiment")
        metrics.update(finding.metrics)
        findings.append(finding)
    label, path = headline
    return StageResult(
        headline=(label, float(metric_at(metrics, path))), summary=list(intro), metrics=metrics,
        claims=[c for f in findings for c in f.claims], plots=[p for f in findings for p in f.plots],
        notes=[], findings=findings)
