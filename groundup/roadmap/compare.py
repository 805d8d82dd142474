"""``groundup compare RUN_A RUN_B``: two runs side by side, in the terminal and as an HTML page.

A run is a stage's run directory (``runs/rnn``: metrics.json) or a training run
(``groundup train ... --out DIR``: run.json, summary.json, metrics.jsonl). The comparison lists
the headline, the settings (those that differ first), the claims and every number, A next to B
with the difference, and puts the curves side by side: a stage's plots pair by file name; two
training runs get their loss curves drawn on one set of axes.

    groundup run rnn --out runs && groundup run rnn --set hidden=16 --out runs/try
    groundup compare runs/rnn runs/try/rnn                     # -> runs/compare/rnn-vs-rnn.html
    groundup compare runs/gpt-char runs/gpt-bpe --out cmp.html
"""

from __future__ import annotations

import argparse
import html
import json
import math
import os
import re
from pathlib import Path
from typing import Any

from groundup.cli_options import UsageError

__all__ = ["register", "load_run", "compare_runs", "render_compare", "compare_command"]

_TERMINAL_ROWS = 40


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``compare`` to the ``groundup`` parser."""
    p = subparsers.add_parser(
        "compare", help="put two runs side by side: numbers, settings, claims and curves",
        description="Compare two runs (two stage runs such as runs/rnn and runs/try/rnn, or two training runs "
                    "from `groundup train`): the headline, settings, claims and every number, A next to B, "
                    "printed as a table, and an HTML page with the curves side by side.")
    p.add_argument("run_a", metavar="RUN_A", help="a run directory (holding metrics.json, or a training run)")
    p.add_argument("run_b", metavar="RUN_B", help="the run to compare it with")
    p.add_argument("--out", metavar="PATH", default=None,
                   help="where to write the HTML page (default: runs/compare/A-vs-B.html)")
    p.add_argument("--all", action="store_true", dest="show_all",
                   help="print every number in the terminal, not only the first rows that differ")
    p.set_defaults(handler=compare_command)


# ---------------------------------------------------------------------------------------------- reading
def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys to scalars; a list of numbers becomes one "N values, last x" entry."""
    out: dict[str, Any] = {}
    if isinstance(value, dict):
        for key, inner in value.items():
            out.update(_flatten(inner, f"{prefix}.{key}" if prefix else str(key)))
    elif isinstance(value, list):
        numbers = [v for v in value if isinstance(v, int | float) and not isinstance(v, bool)]
        if value and len(numbers) == len(value) and len(value) > 6:
            out[prefix] = f"{len(value)} values, last {_fmt(value[-1])}"
        elif all(not isinstance(v, dict | list) for v in value):
            out[prefix] = "[" + ", ".join(_fmt(v) for v in value) + "]"
        else:
            out[prefix] = f"{len(value)} entries"
    else:
        out[prefix] = value
    return out


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise UsageError(f"cannot read {path}: {err.strerror or err}") from None
    except ValueError as err:
        raise UsageError(f"{path} is not valid JSON ({err})") from None
    if not isinstance(value, dict):
        raise UsageError(f"{path} does not hold a run record")
    return value


def load_run(path: str | os.PathLike) -> dict[str, Any]:
    """A run as the comparison sees it: kind, name, headline, settings, claims, numbers, curves, plots.

    Raises:
        UsageError: the path is missing or holds no run.
    """
    from groundup.roadmap.train_report import is_training_run, read_training_run

    d = Path(path)
    if not d.exists():
        raise UsageError(f"run not found: {d}")
    if d.is_file() and d.name in ("metrics.json", "report.html", "summary.json"):
        d = d.parent
    if not d.is_dir():
        raise UsageError(f"{d} is not a run directory")
    if (d / "metrics.json").is_file():
        rec = _read_json(d / "metrics.json")
        if "stage" not in rec:
            raise UsageError(f"{d / 'metrics.json'} is not a stage run's record")
        settings = {name: s.get("value") for name, s in rec.get("settings", {}).items() if isinstance(s, dict)}
        settings.update({"mode": rec.get("mode"), "seed": rec.get("seed"), "device": rec.get("device")})
        settings.update({f"--set {k}": v for k, v in (rec.get("options") or {}).items() if k != "dataset"})
        if (rec.get("options") or {}).get("dataset"):
            settings["--dataset"] = rec["options"]["dataset"]
        headline = rec.get("headline", {})
        numbers = _flatten(rec.get("metrics", {}))
        numbers["wall_s"] = rec.get("wall_s")
        return {"kind": "stage", "name": rec["stage"], "dir": d, "status": rec.get("status", "?"),
                "headline": (headline.get("label", "headline"), headline.get("value"), headline.get("better", "")),
                "settings": settings,
                "claims": {c.get("name", c["statement"]): (c.get("passed"), c.get("detail", ""), c["statement"])
                           for c in rec.get("claims", [])},
                "numbers": numbers, "curves": {},
                "plots": [p["file"] for p in rec.get("plots", []) if (d / p["file"]).is_file()]}
    if is_training_run(d):
        info = read_training_run(d)
        summary, run, records = info["summary"], info["run"], info["records"]
        settings = {"data": run.get("data"), "tokenizer": run.get("tokenizer"), "preset": run.get("preset")}
        settings.update({f"model.{k}": v for k, v in run.get("model", {}).items()})
        settings.update({f"train.{k}": v for k, v in run.get("train", {}).items()})
        numbers = {k: v for k, v in summary.items() if not isinstance(v, dict)}
        numbers.update({f"data.{k}": run[k] for k in ("train_tokens", "val_tokens") if k in run})
        train = [(r["iter"], r["loss"]) for r in records if r.get("kind") == "train" and "loss" in r]
        val = [(r["iter"], r["val_loss"]) for r in records if r.get("kind") == "eval" and r.get("val_loss") is not None]
        value = summary.get("val_bits_per_char", summary.get("val_loss"))
        label = "val bits per character" if "val_bits_per_char" in summary else "val loss"
        return {"kind": "training", "name": d.name, "dir": d, "status": "done" if summary else "unfinished",
                "headline": (label, value, "lower"), "settings": settings, "claims": {}, "numbers": numbers,
                "curves": {"train loss (batch)": train, "val loss (eval)": val},
                "plots": ["loss.png"] if (d / "loss.png").is_file() else []}
    raise UsageError(f"{d} holds no run: expected a stage's metrics.json or a training run's run.json and "
                     "metrics.jsonl")


# ---------------------------------------------------------------------------------------------- comparing
def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "–" if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
            return f"{value:.3e}"
        return f"{value:.4g}"
    return str(value)


def _diff(a: Any, b: Any) -> str:
    numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (a, b))
    if not numeric:
        return "" if a == b else "differs"
    if not (math.isfinite(a) and math.isfinite(b)):
        return ""
    delta = b - a
    if delta == 0:
        return "same"
    rel = f" ({delta / abs(a):+.0%})" if a else ""
    return f"{_fmt(delta) if delta < 0 else '+' + _fmt(delta)}{rel}"


def _rows(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[str, str, str, str, bool]]:
    """(key, A, B, difference, differs) for the union of keys, A's order first."""
    keys = list(a) + [k for k in b if k not in a]
    rows = []
    for key in keys:
        va, vb = a.get(key), b.get(key)
        differs = va != vb
        rows.append((key, _fmt(va), _fmt(vb), _diff(va, vb) if key in a and key in b else "only one", differs))
    return rows


def compare_runs(run_a: dict[str, Any], run_b: dict[str, Any]) -> dict[str, Any]:
    """The comparison as rows: headline, settings (differing first), claims, numbers."""
    ha, hb = run_a["headline"], run_b["headline"]
    settings = _rows(run_a["settings"], run_b["settings"])
    settings.sort(key=lambda r: not r[4])
    claims = []
    judged = {run["status"] != "smoke" for run in (run_a, run_b)}
    words = ("PASS", "FAIL") if judged == {True} else ("held", "not held")  # a smoke run's claims are not judged
    for name in list(run_a["claims"]) + [s for s in run_b["claims"] if s not in run_a["claims"]]:
        ca, cb = run_a["claims"].get(name), run_b["claims"].get(name)
        statement = (ca or cb)[2]
        claims.append((statement, _claim_text(ca, words), _claim_text(cb, words),
                       (ca or (None,))[0] != (cb or (None,))[0]))
    if ha[0] == hb[0]:
        headline = (ha[0], _fmt(ha[1]), _fmt(hb[1]), _diff(ha[1], hb[1]), ha[2] or hb[2])
    else:  # two different measures (basics' accuracy, a GPT's bits per character): no difference, no "better"
        headline = (f"{ha[0]} / {hb[0]}", _fmt(ha[1]), _fmt(hb[1]), "different measures, not compared", "")
    return {"headline": headline,
            "settings": settings, "claims": claims, "numbers": _rows(run_a["numbers"], run_b["numbers"])}


def _claim_text(claim: tuple[Any, str, str] | None, words: tuple[str, str]) -> str:
    if claim is None:
        return "–"
    passed, detail, _ = claim
    return f"{words[0] if passed else words[1]} ({detail})"


def _text_table(header: tuple[str, ...], rows: list[tuple[str, ...]], width: int = 38) -> str:
    cut = [tuple(c if len(c) <= width else c[:width - 1] + "…" for c in row) for row in [header, *rows]]
    widths = [max(len(r[i]) for r in cut) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cut]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_terminal(run_a: dict[str, Any], run_b: dict[str, Any], comparison: dict[str, Any],
                    show_all: bool = False) -> str:
    """The comparison as plain text tables (numbers: the rows that differ, the first ones unless ``show_all``)."""
    label, va, vb, diff, better = comparison["headline"]
    out = [f"A: {run_a['dir']} ({run_a['kind']} {run_a['name']}, {run_a['status']})",
           f"B: {run_b['dir']} ({run_b['kind']} {run_b['name']}, {run_b['status']})", "",
           f"headline: {label}: A {va}, B {vb} ({diff})" + (f"; {better} is better" if better in ("lower", "higher")
                                                            else ""), ""]
    changed = [r[:4] for r in comparison["settings"] if r[4]]
    out.append(f"settings that differ ({len(changed)} of {len(comparison['settings'])}):")
    out.append(_text_table(("setting", "A", "B", "change"), changed) if changed else "  none")
    if comparison["claims"]:
        out += ["", "claims:", _text_table(("claim", "A", "B"), [c[:3] for c in comparison["claims"]])]
    numbers = [r[:4] for r in comparison["numbers"] if r[4]]
    shown = numbers if show_all else numbers[:_TERMINAL_ROWS]
    out += ["", f"numbers that differ ({len(numbers)} of {len(comparison['numbers'])}):"]
    out.append(_text_table(("number", "A", "B", "change"), shown) if shown else "  none")
    if len(shown) < len(numbers):
        out.append(f"... {len(numbers) - len(shown)} more (--all prints them; the HTML page has every one)")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------- HTML
def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _overlay_plot(run_a: dict[str, Any], run_b: dict[str, Any], path: Path) -> bool:
    """Both training runs' loss curves on one set of axes; False when there is nothing to draw."""
    if not any(run_a["curves"].values()) and not any(run_b["curves"].values()):
        return False
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for run, color in ((run_a, "tab:blue"), (run_b, "tab:orange")):
        for (name, points), style in zip(run["curves"].items(), ("-", "o-")):
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, style, color=color, alpha=0.35 if style == "-" else 1.0, markersize=3,
                        linewidth=1, label=f"{'A' if run is run_a else 'B'} {run['name']}: {name}")
    ax.set(xlabel="iteration", ylabel="loss (nats per token)", title="A and B: loss against iteration")
    ax.grid(alpha=0.3)
    fig.legend(loc="outside right upper", fontsize=8)
    fig.savefig(path, format="png", dpi=100)
    return True


def render_compare(run_a: dict[str, Any], run_b: dict[str, Any], comparison: dict[str, Any], out: Path,
                   overlay: str | None = None) -> str:
    """The HTML page (images by paths relative to ``out``'s folder)."""
    from groundup.roadmap.report import page, table

    here = out.resolve().parent
    label, va, vb, diff, better = comparison["headline"]

    def rel(run: dict[str, Any], file: str) -> str:
        return Path(os.path.relpath((run["dir"] / file).resolve(), here)).as_posix()

    def report_link(run: dict[str, Any]) -> str:
        if (run["dir"] / "report.html").is_file():
            return f' (<a href="{_esc(rel(run, "report.html"))}">report</a>)'
        return ""

    parts = ["<h1>Two runs side by side</h1>",
             f"<p><b>A</b>: <code>{_esc(run_a['dir'])}</code>, {_esc(run_a['kind'])} {_esc(run_a['name'])}, "
             f"{_esc(run_a['status'])}{report_link(run_a)}<br><b>B</b>: <code>{_esc(run_b['dir'])}</code>, "
             f"{_esc(run_b['kind'])} {_esc(run_b['name'])}, {_esc(run_b['status'])}{report_link(run_b)}</p>",
             f'<p class="headline">{_esc(label)}: A <b>{_esc(va)}</b>, B <b>{_esc(vb)}</b> '
             f'<span class="better">({_esc(diff)}{_better_text(better)})</span></p>']
    mark = lambda differs: "◆" if differs else ""  # noqa: E731 - a one-word marker
    parts.append("<h2>Settings</h2><p>Those that differ first, marked ◆.</p>"
                 + table(("", "setting", "A", "B", "change"), [(mark(r[4]), *r[:4]) for r in comparison["settings"]]))
    if comparison["claims"]:
        parts.append("<h2>Claims</h2>" + table(("", "claim", "A", "B"), [(mark(c[3]), *c[:3])
                                                                         for c in comparison["claims"]]))
    parts.append("<h2>Curves</h2>")
    if overlay:
        parts.append(f'<figure><img src="{_esc(overlay)}" alt="both runs\' loss curves"><figcaption>A and B on one '
                     "set of axes (faint: every training batch; dots: evaluations).</figcaption></figure>")
    pairs = list(dict.fromkeys(run_a["plots"] + run_b["plots"]))
    for file in pairs:
        cells = []
        for run, tag in ((run_a, "A"), (run_b, "B")):
            cells.append(f'<figure><img src="{_esc(rel(run, file))}" alt="{tag}: {_esc(file)}"><figcaption>{tag}: '
                         f"{_esc(file)}</figcaption></figure>" if file in run["plots"] else
                         f"<figure><figcaption>{tag}: no {_esc(file)}</figcaption></figure>")
        parts.append('<div class="pair">' + "".join(cells) + "</div>")
    if not overlay and not pairs:
        parts.append("<p>Neither run has curves.</p>")
    parts.append("<h2>Every number</h2><p>Those that differ are marked ◆.</p>"
                 + table(("", "number", "A", "B", "change"), [(mark(r[4]), *r[:4]) for r in comparison["numbers"]]))
    style = ("<style>.pair { display: grid; grid-template-columns: 1fr 1fr; gap: 12px; } "
             ".pair figure { margin: 0.6em 0; min-width: 0; }</style>\n")
    body = style + "\n".join(parts)
    return page(f"groundup compare: {run_a['name']} vs {run_b['name']}", body)


def _better_text(better: str) -> str:
    return f"; {_esc(better)} is better" if better in ("lower", "higher") else ""


def _default_out(run_a: dict[str, Any], run_b: dict[str, Any]) -> Path:
    safe = lambda s: re.sub(r"[^A-Za-z0-9_.-]+", "-", s).strip("-") or "run"  # noqa: E731
    return Path("runs") / "compare" / f"{safe(run_a['name'])}-vs-{safe(run_b['name'])}.html"


def compare_command(args: argparse.Namespace) -> int:
    """Print the comparison and write the HTML page; bad input is a UsageError (exit 2)."""
    from groundup.train.files import write_atomic

    run_a, run_b = load_run(args.run_a), load_run(args.run_b)
    comparison = compare_runs(run_a, run_b)
    out = Path(args.out) if args.out else _default_out(run_a, run_b)
    if out.exists() and out.is_dir():
        raise UsageError(f"--out {out} is a directory; give an HTML file path")
    if out.suffix.lower() not in (".html", ".htm"):
        raise UsageError(f"--out {out}: expected a file name ending in .html")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"--out {out}: cannot create {out.parent} ({err.strerror or err})") from None
    overlay = None
    if run_a["kind"] == "training" or run_b["kind"] == "training":
        image = out.with_suffix(".png")
        if _overlay_plot(run_a, run_b, image):
            overlay = image.name
    print(format_terminal(run_a, run_b, comparison, show_all=args.show_all))
    write_atomic(out.parent, out.name, render_compare(run_a, run_b, comparison, out, overlay))
    print(f"\npage: {out}")
    return 0
