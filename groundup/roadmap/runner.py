"""The roadmap runner: the Stage / Context / StageResult interface, and running stages to disk.

A stage is a short list of experiments ``(ctx, state) -> Finding`` wrapped in a ``Stage`` (see
``groundup/roadmap/experiment.py``), or a function ``run(ctx: Context) -> StageResult``. The runner seeds everything,
makes ``runs/STAGE/``, calls the stage under a progress display, then writes

    runs/STAGE/metrics.json   every number measured, each claim (passed, values, threshold), settings
    runs/STAGE/*.png          the plots the stage saved through ``ctx.savefig``
    runs/STAGE/report.html    the stage's text, plots, claims and numbers (see ``report.py``)
    runs/index.html           every stage with its status and headline number

and prints each claim as a PASS/FAIL line. A run that errors or is interrupted leaves the last finished
run of its stage in place (see ``run_stage``). ``groundup.roadmap.cli`` is the command-line face.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import os
import random
import shutil
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from groundup.roadmap.claims import Claim, format_value

__all__ = [
    "Stage", "StageResult", "Context", "Plot", "run_stage", "run_stages", "seed_everything", "read_metrics",
    "StageError",
]


class StageError(RuntimeError):
    """A stage cannot run as asked (an unavailable dataset or device); the message says what to do."""


@dataclass(frozen=True)
class Plot:
    """A PNG a stage wrote into its run directory. ``file`` is relative to that directory."""

    file: str
    caption: str = ""


@dataclass
class StageResult:
    """What a stage hands back to the runner.

    Attributes:
        headline: (label, value): the one number that sums the run up, shown by ``groundup
            roadmap`` and in ``runs/index.html`` (e.g. ``("test accuracy", 0.981)``).
        summary: a few plain sentences (each a paragraph) saying what the stage shows and how.
        metrics: every number measured, JSON-serialisable (nested dicts and lists allowed).
        claims: the executable claims (``groundup.roadmap.claims``), in the order to print them.
        plots: the figures saved with ``ctx.savefig``, in the order to show them.
        sections: extra report sections as (title, HTML body) pairs, e.g. a derivation written
            out step by step. The HTML comes from stage code (trusted); escape any data in it.
        notes: extra remarks for the report (anything surprising, caveats).
        findings: the experiments' findings (``groundup.roadmap.experiment``), each a report section.
    """

    headline: tuple[str, float]
    summary: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    claims: list[Claim] = field(default_factory=list)
    plots: list[Plot] = field(default_factory=list)
    sections: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    findings: list[Any] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.claims)


@dataclass(frozen=True)
class Stage:
    """One rung of the roadmap.

    Attributes:
        name: the id used on the command line and as the run directory (``groundup run mlp``).
        summary: one line for ``groundup roadmap`` and the index page.
        run: an entry point ``run(ctx) -> StageResult``; None for a stage given as ``experiments``.
        title: a longer heading for the report (defaults to the summary).
        experiments: the stage's experiments ``(ctx, state) -> Finding``, run in order.
        headline: (label, dotted metric path) of the headline number, for a stage of experiments.
        intro: the report's opening paragraphs (no numbers: those belong to findings).
        better: "lower" or "higher": which way the headline number is good (said beside it as "lower is
            better"); any other text is shown as written (for a number that is neither, say what it means).
        anchor: (label, dotted metric path) of a reference value to read the headline against (a
            published number the stage records in its metrics); ("", "") for none.
        how: "How it works": trusted HTML paragraphs with the maths of the stage's mechanism. Static
            text: it is not part of the run's record, so the provenance check does not read it; keep
            run numbers out of it.
        try_next: "Try next": (command, what to expect) pairs, each command runnable as written
            (``groundup run rnn --set hidden=16``); static text like ``how``.
        options: the keys ``groundup run STAGE --set KEY=VALUE`` accepts, each ``(key, help)`` or
            ``(key, help, kind)``: kind ``int`` or ``float`` (then the value must be a positive number, as
            sizes, counts and rates are), ``bool`` or ``str`` (the default); the command checks values
            against it before any stage runs. The stage reads them with ``ctx.option(KEY, default)`` (or
            ``ctx.budget(..., option=KEY)``), which parses the text as the type of ``default``.
        code: extra functions or classes for the report's "The code" section (the experiments and the
            model classes they use are found on their own).
    """

    name: str
    summary: str
    run: Callable[[Context], StageResult] | None = None
    title: str = ""
    experiments: tuple[Callable[..., Any], ...] = ()
    headline: tuple[str, str] = ("", "")
    intro: tuple[str, ...] = ()
    better: str = ""
    anchor: tuple[str, str] = ("", "")
    how: tuple[str, ...] = ()
    try_next: tuple[tuple[str, str], ...] = ()
    options: tuple[tuple[Any, ...], ...] = ()
    code: tuple[Any, ...] = ()

    def __post_init__(self) -> None:
        if (self.run is None) == (not self.experiments):
            raise ValueError(f"stage {self.name!r}: give either run= or experiments=, not both or neither")
        if self.experiments and not self.headline[1]:
            raise ValueError(f"stage {self.name!r}: a stage of experiments needs headline=(label, metric path)")

    def execute(self, ctx: Context) -> StageResult:
        """Run the stage: its ``run`` function, or its experiments in order."""
        if self.run is not None:
            return self.run(ctx)
        from groundup.roadmap.experiment import run_experiments

        return run_experiments(ctx, self.experiments, self.headline, self.intro)


class _Progress:
    """Rich progress bars when the console is a terminal; plain, quiet output otherwise (or without rich)."""

    def __init__(self, console: Any = None, enabled: bool | None = None):
        self.console = console
        self._bars = None
        if console is None:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        show = console.is_terminal if enabled is None else enabled
        self._bars = Progress(TextColumn("  {task.description}"), BarColumn(bar_width=30), MofNCompleteColumn(),
                              TimeElapsedColumn(), TextColumn("{task.fields[info]}"), console=console,
                              disable=not show)

    def __enter__(self) -> _Progress:
        if self._bars is not None:
            self._bars.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._bars is not None:
            self._bars.__exit__(*exc)

    def add(self, description: str, total: int | None) -> Any:
        return self._bars.add_task(description, total=total, info="") if self._bars is not None else None

    def advance(self, task: Any) -> None:
        if self._bars is not None and task is not None:
            self._bars.advance(task)

    def info(self, task: Any, text: str) -> None:
        if self._bars is not None and task is not None:
            self._bars.update(task, info=text)

    def done(self, task: Any) -> None:
        """Hide a finished bar: one live bar at a time keeps a long stage readable."""
        if self._bars is not None and task is not None:
            self._bars.update(task, visible=False)

    def log(self, text: str) -> None:
        if self.console is not None:
            self.console.print(text, highlight=False, markup=False, soft_wrap=True)
        else:
            print(text, flush=True)


@dataclass
class _Task:
    """One progress bar of a stage (see ``Context.task``)."""

    bars: _Progress
    task: Any

    def advance(self) -> None:
        self.bars.advance(self.task)

    def info(self, text: str) -> None:
        self.bars.info(self.task, text)

    def done(self) -> None:
        self.bars.done(self.task)


@dataclass
class Context:
    """Everything a stage needs to know and the helpers it runs with.

    Attributes:
        out_dir: the stage's run directory (``runs/STAGE``); it exists when ``run`` is called.
        quick: smaller budgets and possibly looser thresholds (``--quick``; stated in the report).
        tiny: a seconds-long configuration for tests; numbers are not meaningful.
        device: ``"cpu"`` or ``"cuda"`` (CuPy).
        seed: the run's seed; the runner has already seeded Python, NumPy and groundup with it.
        options: extra command-line options (``{"dataset": "mnist"}`` and ``--set KEY=VALUE`` pairs, values
            as text); read a ``--set`` key with ``option``; stages ignore what they don't use.
        settings: every budget, threshold and option the stage read, recorded in metrics.json.
    """

    out_dir: Path
    quick: bool = False
    tiny: bool = False
    device: str = "cpu"
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    _progress: _Progress = field(default_factory=_Progress, repr=False)
    _task: Any = field(default=None, repr=False)

    # ------------------------------------------------------------ budgets and thresholds
    @property
    def mode(self) -> str:
        """``"tiny"``, ``"quick"`` or ``"full"``."""
        return "tiny" if self.tiny else "quick" if self.quick else "full"

    def pick(self, full: Any, quick: Any, tiny: Any = None) -> Any:
        """The value for this mode (tiny falls back to quick when not given)."""
        if self.tiny:
            return quick if tiny is None else tiny
        return quick if self.quick else full

    def budget(self, name: str, full: Any, quick: Any, tiny: Any = None, option: str = "") -> Any:
        """A training budget (epochs, steps, samples) for this mode, recorded in the settings.

        With ``option``, ``groundup run STAGE --set OPTION=VALUE`` replaces it in every mode.
        """
        value = self.pick(full, quick, tiny)
        if option and option in self.options:
            value = _parse_option(option, self.options[option], value)
            self.settings[name] = {"kind": f"option {option}", "value": value, "full": full}
            return value
        self.settings[name] = {"kind": "budget", "value": value, "full": full}
        return value

    def option(self, key: str, default: Any) -> Any:
        """The value of ``--set KEY=VALUE``, parsed as the type of ``default``; ``default`` when not set.

        A value that was set is recorded in the settings (kind "option"), so the report shows it and
        its numbers count as this run's.
        """
        if key not in self.options:
            return default
        raw = self.options[key]
        value = _parse_option(key, raw, default)
        self.settings.setdefault(f"--set {key}", {"kind": "option", "value": value, "full": default})
        return value

    def threshold(self, name: str, full: float, quick: float | None = None) -> float:
        """A claim's threshold for this mode, recorded in the settings (quick may loosen it)."""
        value = full if (quick is None or self.mode == "full") else quick
        self.settings[name] = {"kind": "threshold", "value": value, "full": full}
        return value

    def rng(self, offset: int = 0) -> np.random.Generator:
        """A NumPy generator seeded from the run's seed (different ``offset``, independent streams)."""
        return np.random.default_rng([self.seed, offset])

    # ------------------------------------------------------------ progress and output
    def track(self, iterable: Iterable[Any], description: str, total: int | None = None) -> Iterator[Any]:
        """Iterate with a progress bar (``for epoch in ctx.track(range(n), "training"):``)."""
        if total is None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        task = self._progress.add(description, total)
        previous, self._task = self._task, task
        try:
            for item in iterable:
                yield item
                self._progress.advance(task)
        finally:
            self._progress.done(task)
            self._task = previous

    def task(self, description: str, total: int | None) -> _Task:
        """A progress bar to drive by hand: ``.advance()``, ``.info(text)``, ``.done()`` (the Trainer's callback)."""
        return _Task(self._progress, self._progress.add(description, total))

    def info(self, text: str) -> None:
        """Show a short status (``"loss 0.123"``) beside the innermost progress bar."""
        self._progress.info(self._task, text)

    def log(self, text: str) -> None:
        """Print a line above the progress bars."""
        self._progress.log(text)

    def figure(self, width: float = 6.0, height: float = 4.0, layout: str | None = "constrained") -> Any:
        """A new matplotlib ``Figure`` (Agg; no pyplot, so no global state and no GUI)."""
        from matplotlib.figure import Figure

        return Figure(figsize=(width, height), dpi=100, layout=layout)

    def savefig(self, fig: Any, filename: str, caption: str = "") -> Plot:
        """Save a figure as PNG into the run directory; returns the ``Plot`` to list in the result."""
        if not filename.endswith(".png") or "/" in filename or "\\" in filename:
            raise ValueError(f"savefig: expected a plain file name ending in .png, got {filename!r}")
        fig.savefig(self.out_dir / filename, format="png", dpi=50 if self.tiny else 100)  # tiny: tests, speed
        return Plot(filename, caption)

    def to_tensor(self, array: Any, dtype: Any = None, requires_grad: bool = False) -> Any:
        """A groundup Tensor of ``array`` on the run's device."""
        import groundup as gu

        return gu.tensor(np.asarray(array), dtype=dtype, requires_grad=requires_grad, device=self.device)


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def option_value(key: str, raw: str, kind: type, example: Any = None) -> Any:
    """``--set KEY=RAW`` as a value of ``kind`` (int, float, bool or str); a ValueError naming the
    option says what was expected. int and float values must be positive (sizes, counts and rates)."""
    like = f" (like {key}={example})" if example is not None else ""
    try:
        if kind is bool:
            if raw.lower() not in _TRUE + _FALSE:
                raise ValueError(raw)
            return raw.lower() in _TRUE
        if kind is int or kind is float:
            value = kind(raw)
            if not value > 0 or not math.isfinite(value):
                raise ValueError(raw)
            return value
    except ValueError:
        wanted = {int: "a positive int", float: "a positive number", bool: "true or false"}[kind]
        raise ValueError(f"--set {key}={raw}: expected {wanted}{like}") from None
    return raw


def option_kind(entry: tuple[Any, ...]) -> type:
    """The kind of a ``Stage.options`` entry ``(key, help[, kind])``: str when not given."""
    return entry[2] if len(entry) > 2 else str


def _parse_option(key: str, raw: Any, default: Any) -> Any:
    """``raw`` (text from ``--set``) as the type of ``default``; a StageError says what was expected.
    An option whose default is a positive number takes only positive numbers."""
    if not isinstance(raw, str):
        return raw
    kind = bool if isinstance(default, bool) else int if isinstance(default, int) else \
        float if isinstance(default, float) else str
    if kind in (int, float) and not default > 0:     # a number that may be zero or negative
        try:
            return kind(raw)
        except ValueError:
            raise StageError(f"--set {key}={raw}: expected {kind.__name__} (like {key}={default})") from None
    try:
        return option_value(key, raw, kind, default)
    except ValueError as err:
        raise StageError(str(err)) from None


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global generator and groundup's generator."""
    import groundup as gu

    random.seed(seed)
    np.random.seed(seed % 2**32)
    gu.manual_seed(seed)


# ---------------------------------------------------------------- JSON on disk
def _jsonable(value: Any) -> Any:
    """Plain JSON: NumPy scalars and arrays become numbers and lists; NaN/inf become strings."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, Path):
        return str(value)
    return value


def _write_atomic(path: Path, text: str) -> None:
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(temp, path)
    finally:
        Path(temp).unlink(missing_ok=True)


def read_metrics(out_root: str | os.PathLike, name: str) -> dict[str, Any] | None:
    """The last run's ``metrics.json`` of stage ``name`` under ``out_root``, or None if there is none."""
    path = Path(out_root) / name / "metrics.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------- running
def _cpu_setup() -> contextlib.AbstractContextManager:
    """The scoped CPU setup while a stage runs (``groundup.parallel.cpu_threads``): BLAS on the cores while
    one Python thread works, narrowed to one thread for the rest of the stage once a training splits its
    work over threads or worker processes (the fused GPT, ``DataParallel``); a thread count set in the
    environment (``OPENBLAS_NUM_THREADS``, ``GROUNDUP_NUM_THREADS``) caps both.

    NOTE: on a busy machine (two pytest workers, another job) a multithreaded BLAS spins waiting for
    threads that are not scheduled (BENCHMARKS.md has the measurement): `make test` runs with
    OPENBLAS_NUM_THREADS=1.
    """
    from groundup.parallel import cpu_threads

    return cpu_threads()


def run_stage(stage: Stage, out_root: str | os.PathLike = "runs", *, quick: bool = False, tiny: bool = False,
              device: str = "cpu", seed: int = 0, options: dict[str, Any] | None = None, console: Any = None,
              progress: bool | None = None, all_stages: Sequence[Stage] | None = None) -> dict[str, Any]:
    """Run one stage and write its metrics.json, report.html and the index.

    Args:
        stage: the stage to run.
        out_root: the runs directory; the stage writes into ``out_root/stage.name``.
        quick, tiny, device, seed, options: see ``Context``.
        console: a ``rich.console.Console`` for progress bars and output; None prints plainly.
        progress: force progress bars on/off (default: on when the console is a terminal).
        all_stages: the stages the index lists (default: just this one plus what is on disk).

    Returns:
        the record written to metrics.json: ``status`` is "pass" or "fail" (all claims held or not),
        "smoke" for a tiny run that finished (its numbers say nothing, so its claims are shown but
        not judged; ``claims_passed`` still says how they came out), or "error".

    A run never loses the last finished one: that run is moved aside (``.STAGE.previous``, one rename)
    while the new one runs, and deleted only once the new one has finished. If the new run errors or
    is interrupted, the last finished run is put back (an error's record then goes beside it, as
    ``error.json``, and is still returned); without one, the error's record is the stage's metrics.json.
    """
    out_root = Path(out_root)
    out_dir = out_root / stage.name
    previous = _set_aside(out_dir)                 # the last finished run, kept until this one finishes
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("*.png"):  # a re-run must not show a previous run's plots
        old.unlink()
    try:
        record = _run_into(stage, out_root, out_dir, previous, quick=quick, tiny=tiny, device=device, seed=seed,
                           options=options, console=console, progress=progress, all_stages=all_stages)
    finally:
        if previous is not None and previous.exists():  # interrupted (Ctrl-C) or the run errored: put it back
            _restore(previous, out_dir)
    return record


def _previous_dir(out_dir: Path) -> Path:
    return out_dir.with_name(f".{out_dir.name}.previous")


def _finished(out_dir: Path) -> bool:
    """Whether ``out_dir`` holds a run that finished (metrics.json says pass, fail or smoke)."""
    try:
        return json.loads((out_dir / "metrics.json").read_text()).get("status") in ("pass", "fail", "smoke")
    except (OSError, ValueError, AttributeError):
        return False


def _set_aside(out_dir: Path) -> Path | None:
    """Move the last finished run in ``out_dir`` to ``.STAGE.previous`` beside it (one rename) and return
    that path; None when there is none. A ``.previous`` left by a run that was killed is put back first."""
    previous = _previous_dir(out_dir)
    if previous.exists():
        if _finished(out_dir):                     # the killed run had finished: the old one can go
            shutil.rmtree(previous)
        else:
            _restore(previous, out_dir)
    if not _finished(out_dir):
        return None
    out_dir.rename(previous)
    return previous


def _restore(previous: Path, out_dir: Path) -> None:
    """Put the set-aside run back in place of whatever the new run left in ``out_dir``."""
    if out_dir.exists():
        shutil.rmtree(out_dir)
    previous.rename(out_dir)


def _run_into(stage: Stage, out_root: Path, out_dir: Path, previous: Path | None, *, quick: bool, tiny: bool,
              device: str, seed: int, options: dict[str, Any] | None, console: Any, progress: bool | None,
              all_stages: Sequence[Stage] | None) -> dict[str, Any]:
    """``run_stage``'s body: run the stage into ``out_dir`` and write its record, report and the index.

    When the stage errors and ``previous`` holds the last finished run, the new run's files are dropped
    and that run is put back, with this run's record beside it as ``error.json``.
    """
    from groundup.roadmap import code, report

    seed_everything(seed)
    bars = _Progress(console, progress)
    ctx = Context(out_dir=out_dir, quick=quick, tiny=tiny, device=device, seed=seed, options=dict(options or {}),
                  _progress=bars)
    record: dict[str, Any] = {
        "stage": stage.name, "summary": stage.summary, "title": stage.title or stage.summary,
        "mode": ctx.mode, "quick": quick, "tiny": tiny, "device": device, "seed": seed,
        "options": ctx.options, "code": code.code_records(stage),
    }
    started = time.perf_counter()
    result: StageResult | None = None
    try:
        with bars, _cpu_setup():
            result = stage.execute(ctx)
        if not isinstance(result, StageResult):
            raise TypeError(f"stage {stage.name!r}: run(ctx) returned {type(result).__name__}, expected StageResult")
        for plot in result.plots:
            if not (out_dir / plot.file).is_file():
                raise FileNotFoundError(f"stage {stage.name!r} lists plot {plot.file!r} but did not save it")
    except StageError as err:
        record.update(status="error", error=str(err))
        result = None
    except Exception as err:  # noqa: BLE001 - a crashing stage is reported, and the next one still runs
        record.update(status="error", error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc())
        result = None
    record["wall_s"] = round(time.perf_counter() - started, 3)
    record["finished_at"] = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    record["settings"] = ctx.settings
    if result is not None:
        label, value = result.headline
        record.update(
            status="smoke" if tiny else "pass" if result.passed else "fail", claims_passed=result.passed,
            findings=[f.to_dict() for f in result.findings],
            headline=_headline(stage, label, value, result.metrics),
            claims=[c.to_dict() for c in result.claims], metrics=result.metrics, summary_text=result.summary,
            plots=[{"file": p.file, "caption": p.caption} for p in result.plots], notes=result.notes)
    record = _jsonable(record)
    if record["status"] == "error" and previous is not None:
        _print_outcome(bars, record)
        _restore(previous, out_dir)
        _write_atomic(out_dir / "error.json", json.dumps(record, indent=2))
        bars.log(f"  {stage.name}: the last finished run in {out_dir} is kept; this run's error is in "
                 f"{out_dir / 'error.json'}")
        return record
    (out_dir / "error.json").unlink(missing_ok=True)
    _write_atomic(out_dir / "metrics.json", json.dumps(record, indent=2))
    if all_stages is not None:
        order = [s.name for s in all_stages]
    else:
        from groundup.roadmap.stages import load_stages

        order = [s.name for s in load_stages()]
    _write_atomic(out_dir / "report.html", report.render_stage(
        record, result.sections if result else [], [f.sections for f in result.findings] if result else [],
        stage=stage, order=order))
    listed = list(all_stages) if all_stages is not None else [stage]
    _write_atomic(out_root / "index.html", report.render_index(out_root, listed))
    if previous is not None:
        _carry_over(previous, out_dir)
        shutil.rmtree(previous)                     # this run finished: the last one is no longer needed
    _print_outcome(bars, record)
    return record


_RUN_OUTPUTS = ("metrics.json", "report.html", "error.json")


def _carry_over(previous: Path, out_dir: Path) -> None:
    """Move what the set-aside run's folder held beside the stage's own outputs (a file of one's own,
    a model trained further there) into the new run's folder, unless the new run wrote that name: a
    re-run replaces the stage's outputs, as it did in place, and nothing else."""
    for entry in previous.iterdir():
        if entry.name in _RUN_OUTPUTS or entry.suffix == ".png" or (out_dir / entry.name).exists():
            continue
        entry.rename(out_dir / entry.name)


def _headline(stage: Stage, label: str, value: float, metrics: dict[str, Any]) -> dict[str, Any]:
    """The headline record: label, value, text, which way is better and the anchor's value (if any)."""
    headline: dict[str, Any] = {"label": label, "value": value, "text": f"{label} {format_value(float(value))}"}
    if stage.better:
        headline["better"] = stage.better
    anchor_label, anchor_path = stage.anchor
    if anchor_path:
        from groundup.roadmap.experiment import metric_at

        try:
            headline["anchor"] = {"label": anchor_label, "value": float(metric_at(metrics, anchor_path))}
        except (KeyError, TypeError, ValueError):
            pass
    return headline


def _print_outcome(bars: _Progress, record: dict[str, Any]) -> None:
    smoke = record["status"] == "smoke"  # a tiny run: the claims ran, but its numbers judge nothing
    for claim in record.get("claims", []):
        verdict = ("held" if claim["passed"] else "not held") if smoke else ("PASS" if claim["passed"] else "FAIL")
        bars.log(f"  {verdict}  {claim['statement']}  ({claim['detail']})")
    if record["status"] == "error":
        if record.get("traceback"):
            bars.log(record["traceback"].rstrip())
        bars.log(f"  ERROR  {record['error']}")
    else:
        n_pass = sum(c["passed"] for c in record["claims"])
        what = "claims held (smoke run: not judged)" if smoke else "claims passed"
        bars.log(f"  {record['stage']}: {n_pass}/{len(record['claims'])} {what}, "
                 f"{record['headline']['text']}, {record['wall_s']:.1f} s")


def run_stages(stages: Sequence[Stage], out_root: str | os.PathLike = "runs", *, console: Any = None,
               all_stages: Sequence[Stage] | None = None, **kwargs: Any) -> list[dict[str, Any]]:
    """Run stages in order (each as ``run_stage``); a failing or crashing stage does not stop the next."""
    records = []
    for stage in stages:
        header = f"{stage.name}: {stage.summary}" + (" (quick)" if kwargs.get("quick") else "")
        if console is not None:
            console.rule(header, align="left")
        else:
            print(f"== {header}", flush=True)
        records.append(run_stage(stage, out_root, console=console, all_stages=all_stages or stages, **kwargs))
    return records
