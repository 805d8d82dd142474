"""``groundup roadmap`` and ``groundup run``: list the stages, run one or all of them.

    groundup roadmap [--out runs]
    groundup run STAGE|all [--quick] [--device cpu|cuda] [--out runs] [--seed S] [--dataset digits|mnist]
                           [--set KEY=VALUE ...]

``run`` prints each claim as a PASS/FAIL line with its numbers, then a summary table and the
path of ``runs/index.html``; it exits 1 when any claim fails or a stage errors, 2 on bad usage.
``--set KEY=VALUE`` changes one thing a stage declares in ``Stage.options`` (``groundup run rnn
--set hidden=16``); the value is recorded in metrics.json and shown in the report, and a key no
chosen stage reads is refused. A ``--tiny`` run is a smoke test: its status is "smoke" (claims
shown, not judged) and it exits 0 when every stage ran.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from typing import Any

from groundup.cli_options import UsageError
from groundup.roadmap.claims import format_value
from groundup.roadmap.runner import option_kind, option_value, read_metrics, run_stages
from groundup.roadmap.stages import load_stages

__all__ = ["register", "roadmap_command", "run_command"]


def _console() -> Any:
    try:
        from rich.console import Console
    except ImportError:  # rich is optional: plain output without bars
        return None
    return Console(highlight=False)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``roadmap`` and ``run`` subcommands to the ``groundup`` parser."""
    p = subparsers.add_parser("roadmap", help="list the roadmap's stages and their last results",
                              description="List the roadmap's stages in order, with the status and headline "
                                          "number of each stage's last run (read from OUT/STAGE/metrics.json).")
    p.add_argument("--out", default="runs", help="runs directory to read (default: runs)")
    p.set_defaults(handler=roadmap_command)

    p = subparsers.add_parser("run", help="run a roadmap stage (or all) and check its claims",
                              description="Train and evaluate a stage, check its claims (PASS/FAIL with the "
                                          "measured numbers) and write OUT/STAGE/{metrics.json,*.png,report.html} "
                                          "and OUT/index.html. Exits 1 if any claim fails.")
    p.add_argument("stage", help="stage name (see `groundup roadmap`) or 'all'")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="smaller budgets (each stage a minute or two on two "
                      "cores), stated in the report")
    mode.add_argument("--tiny", action="store_true", help="a seconds-long smoke test; its numbers are meaningless")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cuda needs CuPy and a GPU")
    p.add_argument("--out", default="runs", help="runs directory (default: runs)")
    p.add_argument("--seed", type=int, default=0, help="seed for every random number (default: 0)")
    p.add_argument("--dataset", choices=("digits", "mnist"), default="digits",
                   help="image data for the mlp and cnn stages: sklearn's 8x8 digits (bundled) or MNIST "
                        "(downloaded once and cached)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="set_options",
                   help="change one of the stage's options, e.g. --set hidden=16 for rnn (repeatable; each "
                        "report's Try next section lists its options); recorded in metrics.json")
    p.set_defaults(handler=run_command)


def parse_set_options(pairs: list[str], chosen: list[Any]) -> dict[str, str]:
    """``["hidden=16"]`` -> ``{"hidden": "16"}``; a UsageError for a malformed pair, a key no chosen stage
    reads, or a value that is not of the kind a stage declares for it (checked before any stage runs)."""
    options: dict[str, str] = {}
    kinds: dict[str, set[type]] = {}
    for stage in chosen:
        for entry in getattr(stage, "options", ()):
            kinds.setdefault(entry[0], set()).add(option_kind(entry))
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key or not value.strip():
            raise UsageError(f"--set {pair}: expected KEY=VALUE, e.g. --set hidden=16")
        if key not in kinds:
            names = ", ".join(s.name for s in chosen)
            offer = ", ".join(sorted(kinds)) or "none"
            raise UsageError(f"--set {key}: not an option of {names} (options: {offer})")
        for kind in sorted(kinds[key], key=lambda k: k.__name__):
            try:
                option_value(key, value.strip(), kind)
            except ValueError as err:
                raise UsageError(str(err)) from None
        options[key] = value.strip()
    return options


def _headline_text(rec: dict[str, Any]) -> str:
    """The headline as text, with which way is better ("GRU test loss 2.01, lower is better")."""
    headline = rec.get("headline", {})
    text = headline.get("text", rec.get("error", ""))
    if headline.get("better") in ("lower", "higher"):
        text += f", {headline['better']} is better"
    return text


def roadmap_command(args: argparse.Namespace) -> int:
    """Print the stages in order with the last run's status and headline metric."""
    stages = load_stages()
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"roadmap --out {args.out} is a file; --out names the runs directory that "
                         f"`groundup run` wrote (default: runs)")
    if not out.exists() and args.out != "runs":       # a fresh checkout has no runs/ yet: every stage 'not run'
        raise UsageError(f"roadmap --out {args.out}: no such directory; --out names the runs directory that "
                         f"`groundup run --out DIR` wrote (default: runs)")
    console = _console()
    rows = []
    for i, stage in enumerate(stages, 1):
        rec = read_metrics(args.out, stage.name)
        if rec is None:
            last = "not run yet"
        else:
            status = rec.get("status", "?").upper()
            what = _headline_text(rec)
            last = f"{status} {what} ({rec.get('mode', '?')}, {format_value(float(rec.get('wall_s', 0.0)))} s)"
        rows.append((str(i), stage.name, stage.summary, last))
    if console is None:
        for row in rows:
            print("  ".join(row))
        return 0
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="groundup roadmap", title_justify="left")
    for column in ("#", "stage", "what it shows", f"last run in {escape(str(args.out))}/"):
        table.add_column(column)
    for row in rows:
        table.add_row(*(escape(cell) for cell in row))
    console.print(table)
    console.print("Run one with `groundup run STAGE [--quick]`, all with `groundup run all --quick`.")
    return 0


def run_command(args: argparse.Namespace) -> int:
    """Run one stage or all of them; exit status 1 if any claim fails or any stage errors."""
    import groundup as gu

    stages = load_stages()
    by_name = {s.name: s for s in stages}
    if args.stage == "all":
        chosen = stages
    elif args.stage in by_name:
        chosen = [by_name[args.stage]]
    else:
        print(f"groundup: error: run: no stage {args.stage!r}; available: {', '.join(by_name)} (or 'all')",
              file=sys.stderr)
        return 2
    if args.device == "cuda" and not gu.cuda_is_available():
        print("groundup: error: run: --device cuda needs CuPy and a visible CUDA GPU (pip install 'groundup[gpu]'); "
              "use --device cpu", file=sys.stderr)
        return 2
    missing = [name for name in ("matplotlib", "sklearn") if importlib.util.find_spec(name) is None]
    if missing:
        print(f"groundup: error: run: the roadmap needs {' and '.join(missing)} (plots, digits): "
              "pip install 'groundup[train]'", file=sys.stderr)
        return 2
    options: dict[str, Any] = {"dataset": args.dataset, **parse_set_options(args.set_options, chosen)}
    check_runs_dir(args.out)
    console = _console()
    records = run_stages(chosen, args.out, console=console, all_stages=stages, quick=args.quick,
                         tiny=args.tiny, device=args.device, seed=args.seed, options=options)
    index = (Path(args.out) / "index.html").resolve()
    _print_summary(console, records, index)
    return 0 if all(r["status"] in ("pass", "smoke") for r in records) else 1


def check_runs_dir(out: str | Path) -> None:
    """Refuse an ``--out`` that is not a runs directory, before any stage trains: a file, a training run of
    ``groundup train``, or a stage's own folder (``--out runs/basics`` would write runs/basics/basics)."""
    import json

    from groundup.roadmap.train_report import is_training_run

    d = Path(out)
    hint = "--out names the runs directory that holds the stage folders (default: runs; --out runs/try writes " \
           "runs/try/STAGE)"
    if d.exists() and not d.is_dir():
        raise UsageError(f"--out {out} is a file, not a directory; {hint}")
    if d.is_dir() and is_training_run(d):
        raise UsageError(f"--out {out} is a training run of `groundup train`; {hint}")
    try:
        stage = json.loads((d / "metrics.json").read_text(encoding="utf-8")).get("stage")
    except (OSError, ValueError, AttributeError):
        stage = None
    if isinstance(stage, str):
        raise UsageError(f"--out {out} is the folder of stage {stage}, written by an earlier run; {hint}")


def _print_summary(console: Any, records: list[dict[str, Any]], index: Path) -> None:
    rows = []
    for rec in records:
        claims = rec.get("claims", [])
        headline = _headline_text(rec)
        rows.append((rec["stage"], rec["status"].upper(), headline,
                     f"{sum(c['passed'] for c in claims)}/{len(claims)}", f"{rec['wall_s']:.1f} s"))
    total = sum(r["wall_s"] for r in records)
    if console is None:
        for row in rows:
            print("  ".join(row))
        print(f"total {total:.1f} s; reports: {index}")
        return
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="summary", title_justify="left")
    for column in ("stage", "status", "headline", "claims", "time"):
        table.add_column(column)
    for row in rows:
        style = {"PASS": "green", "FAIL": "red", "SMOKE": "cyan"}.get(row[1], "yellow")
        table.add_row(escape(row[0]), f"[{style}]{row[1]}[/{style}]", escape(row[2]), row[3], row[4])
    console.print(table)
    console.print(f"total {total:.1f} s; reports: {index}", markup=False)
