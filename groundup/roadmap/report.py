"""HTML reports: ``runs/STAGE/report.html`` for one stage and ``runs/index.html`` for all of them.

Pages are self-contained and work offline: inline CSS, images by relative path (the PNGs
beside the report), no scripts, no fonts or styles from a CDN. Everything taken from a run
(text, numbers, captions) is HTML-escaped; only a stage's own ``sections`` (and its static
"How it works" text) are inserted as HTML. Pages fit a 1280 px window: long values wrap, wide
tables scroll inside their own box.

A stage's page reads: headline (and which way is better), what it shows, one section per
finding, "How it works" (the maths), "The code" (the functions behind the numbers, with file,
lines and the key lines, read from the source now), "Try next" (commands to change one thing),
then every number measured and the settings. ``render_index`` also lists training runs
(``groundup train ... --out runs/NAME``; their page is ``groundup.roadmap.train_report``).
"""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from groundup.roadmap.claims import format_value

__all__ = ["render_stage", "render_index", "flatten_metrics", "page", "table", "headline_html"]

_CSS = """
body { font: 16px/1.55 -apple-system, BlinkMacSystemFont, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;
       color: #1f2328; background: #fff; margin: 0; }
main { max-width: 960px; margin: 0 auto; padding: 24px 20px 64px; }
h1 { font-size: 1.7em; margin: 0.2em 0 0.3em; }
h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #d0d7de; padding-bottom: 0.2em; }
a { color: #0969da; }
nav { font-size: 0.9em; }
.meta { color: #59636e; font-size: 0.92em; }
.badge { display: inline-block; padding: 1px 9px; border-radius: 10px; font-weight: 600; font-size: 0.85em;
         color: #fff; vertical-align: middle; }
.pass { background: #1a7f37; } .fail { background: #cf222e; } .error { background: #9a6700; }
.none { background: #8c959f; } .smoke { background: #57606a; }
.finding { margin-top: 1.2em; }
.headline { font-size: 1.25em; margin: 0.6em 0; }
.banner { background: #fff8c5; border: 1px solid #d4a72c; border-radius: 6px; padding: 10px 14px; margin: 1em 0; }
.errorbox { background: #ffebe9; border: 1px solid #cf222e; border-radius: 6px; padding: 10px 14px; }
.tablebox { max-width: 100%; overflow-x: auto; margin: 0.8em 0; }
table { border-collapse: collapse; width: 100%; font-size: 0.93em; }
th, td { border: 1px solid #d0d7de; padding: 6px 9px; text-align: left; vertical-align: top;
         overflow-wrap: break-word; }
th { background: #f6f8fa; }
td.num { font-variant-numeric: tabular-nums; }
td.wrap, td code { overflow-wrap: anywhere; }
.badge { white-space: nowrap; }
p, li, dd, dt, figcaption, code { overflow-wrap: anywhere; }
nav.steps { display: flex; justify-content: space-between; gap: 1em; flex-wrap: wrap; margin: 0.5em 0; }
.better { color: #59636e; font-size: 0.8em; font-weight: normal; }
.math { background: #f6f8fa; border-left: 3px solid #8c959f; padding: 8px 12px; white-space: pre-wrap;
        font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 0.9em; }
.coderef { margin: 1em 0; }
.coderef pre { margin: 0.3em 0; }
details summary { cursor: pointer; color: #0969da; font-size: 0.92em; }
.trynext dt { margin-top: 0.6em; }
.trynext dd { margin-left: 1.2em; color: #1f2328; }
figure { margin: 1.4em 0; text-align: center; }
figure img { max-width: 100%; height: auto; border: 1px solid #d0d7de; border-radius: 4px; }
figcaption { color: #59636e; font-size: 0.92em; margin-top: 0.3em; }
pre { background: #f6f8fa; border-radius: 6px; padding: 12px; overflow-x: auto; font-size: 0.88em;
      line-height: 1.45; }
code { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
"""

_STATUS_TEXT = {"pass": "PASS", "fail": "FAIL", "error": "ERROR", "smoke": "SMOKE"}


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def table(header: Sequence[str], rows: Sequence[Sequence[str]], raw: bool = False) -> str:
    """An HTML table in a box that scrolls sideways on its own (cells are escaped unless ``raw``)."""
    cell = (lambda v: str(v)) if raw else _esc
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f'<td class="wrap">{cell(v)}</td>' for v in row) + "</tr>" for row in rows)
    return f'<div class="tablebox"><table><tr>{head}</tr>{body}</table></div>'


def headline_html(headline: dict[str, Any]) -> str:
    """``label: value (lower is better; anchor label value)`` for a headline record."""
    notes = []
    better = headline.get("better")
    if better:
        notes.append(f"{better} is better" if better in ("lower", "higher") else str(better))
    anchor = headline.get("anchor")
    if isinstance(anchor, dict) and "value" in anchor:
        notes.append(f"{anchor.get('label', 'reference')} {_fmt(anchor['value'])}")
    extra = f' <span class="better">({_esc("; ".join(notes))})</span>' if notes else ""
    return f"{_esc(headline['label'])}: <b>{_esc(_fmt(headline['value']))}</b>{extra}"


def page(title: str, body: str) -> str:
    """A whole self-contained HTML page with the reports' style."""
    return _page(title, body)


def _page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{_esc(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n<main>\n{body}\n</main>\n"
            f"</body>\n</html>\n")


def _badge(status: str | None) -> str:
    if status is None:
        return '<span class="badge none">not run</span>'
    return f'<span class="badge {_esc(status)}">{_STATUS_TEXT.get(status, _esc(status))}</span>'


def _fmt(value: Any) -> str:
    if isinstance(value, float | int) and not isinstance(value, bool):
        return format_value(value)
    return str(value)


def flatten_metrics(metrics: Any, prefix: str = "") -> list[tuple[str, str]]:
    """(dotted key, short text) rows for the report; long lists are summarised (full in metrics.json)."""
    rows: list[tuple[str, str]] = []
    if isinstance(metrics, dict):
        for key, value in metrics.items():
            rows += flatten_metrics(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(metrics, list):
        if len(metrics) <= 12 and all(not isinstance(v, dict | list) for v in metrics):
            rows.append((prefix, "[" + ", ".join(_fmt(v) for v in metrics) + "]"))
        elif all(isinstance(v, int | float) and not isinstance(v, bool) for v in metrics):
            rows.append((prefix, f"{len(metrics)} values, first {_fmt(metrics[0])}, last {_fmt(metrics[-1])}"))
        else:
            rows.append((prefix, f"{len(metrics)} entries (see metrics.json)"))
    else:
        rows.append((prefix, _fmt(metrics)))
    return rows


def _mode_banner(record: dict[str, Any]) -> str:
    mode = record.get("mode", "full")
    if mode == "full":
        return ""
    changed = [(name, s) for name, s in record.get("settings", {}).items() if s.get("value") != s.get("full")]
    rows = "".join(f"<tr><td>{_esc(name)}</td><td>{_esc(s.get('kind', ''))}</td>"
                   f"<td class=num>{_esc(_fmt(s['value']))}</td><td class=num>{_esc(_fmt(s['full']))}</td></tr>"
                   for name, s in changed)
    what = ("a <b>tiny test configuration</b>: budgets are cut to seconds, so the numbers say nothing about "
            "the claims" if mode == "tiny" else
            "a <b>quick run</b> (<code>--quick</code>): smaller training budgets and, where noted, looser "
            "thresholds than a full run")
    table = (f'<div class="tablebox"><table><tr><th>setting</th><th>kind</th><th>this run</th><th>full run</th>'
             f"</tr>{rows}</table></div>" if rows else "")
    flag = "--tiny" if mode == "tiny" else "--quick"
    if _registered(record["stage"]):
        again = f"Run <code>groundup run {_esc(record['stage'])}</code> without <code>{flag}</code>"
    else:                                                  # a stage of one's own: the command does not know it
        again = f"Run it again with <code>run_stage(stage, {flag.lstrip('-')}=False)</code>"
    return f'<div class="banner">This is {what}. {again} for the full version.{table}</div>'


def _registered(name: str) -> bool:
    """Whether ``groundup run NAME`` knows the stage (one of the roadmap's own)."""
    from groundup.roadmap.stages import STAGE_ORDER

    return name.replace("-", "_") in STAGE_ORDER          # module names: pretrain_finetune for pretrain-finetune


def _claims_table(claims: Sequence[dict[str, Any]], smoke: bool) -> str:
    rows = []
    for c in claims:
        measured = "<br>".join(f"{_esc(k)} = {_esc(_fmt(v))}" for k, v in c.get("values", {}).items())
        verdict = (f'<span class="badge smoke">{"held" if c["passed"] else "not held"}</span>' if smoke
                   else _badge("pass" if c["passed"] else "fail"))
        rows.append(f"<tr><td>{verdict}</td><td>{_esc(c['statement'])}</td>"
                    f"<td class=num>{measured}</td><td>{_esc(_fmt(c.get('threshold')))}</td></tr>")
    return ('<div class="tablebox"><table><tr><th>result</th><th>claim</th><th>measured</th><th>threshold</th></tr>'
            + "".join(rows) + "</table></div>")


def _figures(plots: Sequence[dict[str, Any]]) -> list[str]:
    return [f'<figure><img src="{_esc(plot["file"])}" alt="{_esc(plot["caption"] or plot["file"])}">'
            f"<figcaption>{_esc(plot['caption'])}</figcaption></figure>" for plot in plots]


def _findings(record: dict[str, Any], finding_sections: Sequence[Sequence[tuple[str, str]]]) -> list[str]:
    """One section per experiment: its title, text, claims and plots (and trusted extra HTML)."""
    claims = {c["name"]: c for c in record.get("claims", [])}
    plots = {p["file"]: p for p in record.get("plots", [])}
    smoke = record.get("status") == "smoke"
    parts = []
    for i, finding in enumerate(record["findings"]):
        parts.append(f'<h2 class="finding">{i + 1}. {_esc(finding["title"])}</h2>')
        parts += [f"<p>{_esc(p)}</p>" for p in finding.get("text", [])]
        if finding.get("claims"):
            parts.append(_claims_table([claims[name] for name in finding["claims"]], smoke))
        parts += _figures([plots[f] for f in finding.get("plots", [])])
        for title, body in (finding_sections[i] if i < len(finding_sections) else ()):
            parts.append(f"<h3>{_esc(title)}</h3>\n{body}")
        if finding.get("notes"):
            parts.append("<ul>" + "".join(f"<li>{_esc(n)}</li>" for n in finding["notes"]) + "</ul>")
    return parts


def _set_flags(record: dict[str, Any]) -> str:
    """`` --set k=v`` for each option given on the command line (not --dataset, which has its own flag)."""
    options = {k: v for k, v in (record.get("options") or {}).items() if k != "dataset"}
    dataset = (record.get("options") or {}).get("dataset")
    flags = f" --dataset {dataset}" if dataset not in (None, "digits") else ""
    return flags + "".join(f" --set {k}={v}" for k, v in options.items())


def _steps_nav(name: str, order: Sequence[str]) -> str:
    """Previous / all stages / next links (the stage's neighbours in roadmap order)."""
    links = ['<a href="../index.html">all stages</a>']
    if name in order:
        i = list(order).index(name)
        prev = (f'<a href="../{_esc(order[i - 1])}/report.html">&larr; previous: {_esc(order[i - 1])}</a>'
                if i > 0 else "<span>first stage</span>")
        nxt = (f'<a href="../{_esc(order[i + 1])}/report.html">next: {_esc(order[i + 1])} &rarr;</a>'
               if i + 1 < len(order) else "<span>last stage</span>")
        links = [prev, links[0], nxt]
    return '<nav class="steps">' + "".join(links) + "</nav>"


def _code_section(stage: Any) -> str:
    """"The code": each function or class behind the numbers, with file, lines and its key lines."""
    from groundup.roadmap.code import code_refs

    try:
        refs = code_refs(stage)
    except Exception:  # noqa: BLE001 - the rest of the report still renders
        return ""
    return code_html(refs)


def code_html(refs: Sequence[Any]) -> str:
    """"The code" section for ``groundup.roadmap.code.CodeRef``s ("" for none)."""
    if not refs:
        return ""
    what = {"experiment": "experiment", "helper": "helper it calls", "model": "model code it uses",
            "code": "also used", "command": "the command"}
    parts = ["<h2>The code</h2>",
             "<p>The functions that produced this page's numbers, read from the source when the report was written. "
             "Open the file at the lines shown; the key lines are below each name, the whole source under it.</p>"]
    for ref in refs:
        width = len(str(ref.end))
        key = "\n".join(f"{n:>{width}}  {text}" for n, text in ref.key_lines)
        parts.append(f'<div class="coderef"><b><code>{_esc(ref.name)}</code></b> '
                     f"<span class=meta>({_esc(what.get(ref.kind, ref.kind))}) "
                     f"<code>{_esc(ref.file)}:{ref.start}-{ref.end}</code></span>"
                     f"<pre><code>{_esc(key)}</code></pre>"
                     f"<details><summary>whole source ({ref.end - ref.start + 1} lines)</summary>"
                     f"<pre><code>{_esc(ref.source)}</code></pre></details></div>")
    return "\n".join(parts)


def _guide_sections(stage: Any, record: dict[str, Any]) -> list[str]:
    """"How it works" (static maths) and "Try next" (commands) from the stage's definition."""
    parts = []
    how = getattr(stage, "how", ()) or ()
    if how:
        parts.append("<h2>How it works</h2>")
        parts += [p if p.lstrip().startswith("<") else f"<p>{p}</p>" for p in how]
    tries = getattr(stage, "try_next", ()) or ()
    options = getattr(stage, "options", ()) or ()
    if tries or options:
        stage_dir = _esc(record["stage"])
        parts.append("<h2>Try next</h2><p>Change one thing and run again into another runs folder "
                     "(<code>--out runs/try</code> writes <code>runs/try/"
                     f"{stage_dir}</code>), then put the two runs side by side with <code>groundup compare "
                     f"runs/{stage_dir} runs/try/{stage_dir}</code>.</p>")
        if tries:
            parts.append('<dl class="trynext">' + "".join(
                f"<dt><code>{_esc(command)}</code></dt><dd>{_esc(expect)}</dd>" for command, expect in tries)
                + "</dl>")
        if options:
            rows = [(f"--set {key}=…", help_text) for key, help_text, *_ in options]
            parts.append("<p>Options this stage reads (<code>groundup run "
                         f"{_esc(record['stage'])} --set KEY=VALUE</code>):</p>" + table(("option", "what"), rows))
    return parts


def render_stage(record: dict[str, Any], sections: Sequence[tuple[str, str]] = (),
                 finding_sections: Sequence[Sequence[tuple[str, str]]] = (), *, stage: Any = None,
                 order: Sequence[str] = ()) -> str:
    """The HTML report of one stage run from its metrics.json ``record`` (plus trusted extra sections).

    A stage of experiments (``record["findings"]``) gets one section per finding, with that
    finding's text, claims and plots together; ``finding_sections[i]`` are finding i's extra HTML.

    Args:
        record: the metrics.json record.
        sections, finding_sections: trusted extra HTML of the stage and of each finding.
        stage: the ``Stage`` (for "How it works", "The code" and "Try next"); None leaves them out.
        order: the stage names in roadmap order, for the previous / next links.
    """
    name = record["stage"]
    parts = [_steps_nav(name, order),
             f"<h1>{_esc(name)} {_badge(record.get('status'))}</h1>",
             f"<p class=meta>{_esc(record.get('title', ''))}</p>"]
    headline = record.get("headline")
    if headline:
        parts.append(f'<p class="headline">{headline_html(headline)}</p>')
    if _set_flags(record):
        parts.append(f"<p class=meta>options: <code>{_esc(_set_flags(record).strip())}</code></p>")
    parts.append(f"<p class=meta>mode {_esc(record.get('mode'))} &middot; device {_esc(record.get('device'))} "
                 f"&middot; seed {_esc(record.get('seed'))} &middot; {_esc(_fmt(record.get('wall_s', 0.0)))} s "
                 f"&middot; finished {_esc(record.get('finished_at', ''))}</p>")
    parts.append(_mode_banner(record))
    if record.get("status") == "error":
        parts.append(f'<div class="errorbox"><b>The stage did not finish.</b><pre>{_esc(record.get("error"))}'
                     f"</pre></div>")
    if record.get("summary_text"):
        parts.append("<h2>What this stage shows</h2>")
        parts += [f"<p>{_esc(p)}</p>" for p in record["summary_text"]]
    if record.get("findings"):
        parts += _findings(record, finding_sections)
    elif record.get("claims"):
        parts.append("<h2>Claims, checked on this run</h2>")
        parts.append("<p>Each claim is a statement you will meet in courses and books, turned into a check on the "
                     "numbers measured above. A claim that does not hold is reported as measured.</p>")
        parts.append(_claims_table(record["claims"], record.get("status") == "smoke"))
    if record.get("plots") and not record.get("findings"):
        parts.append("<h2>Plots</h2>")
        parts += _figures(record["plots"])
    for title, body in sections:
        parts.append(f"<h2>{_esc(title)}</h2>\n{body}")
    if record.get("notes"):
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{_esc(n)}</li>" for n in record["notes"]) + "</ul>")
    if stage is not None:
        parts += _guide_sections(stage, record)
        parts.append(_code_section(stage))
    if record.get("metrics"):
        parts.append("<h2>Every number measured</h2><p>The same numbers, unabridged, are in "
                     '<a href="metrics.json">metrics.json</a>.</p>')
        rows = "".join(f'<tr><td><code>{_esc(k)}</code></td><td class="num wrap">{_esc(v)}</td></tr>'
                       for k, v in flatten_metrics(record["metrics"]))
        parts.append(f'<div class="tablebox"><table><tr><th>metric</th><th>value</th></tr>{rows}</table></div>')
    if record.get("settings"):
        rows = "".join(f"<tr><td>{_esc(k)}</td><td>{_esc(s.get('kind', ''))}</td>"
                       f"<td class=num>{_esc(_fmt(s['value']))}</td><td class=num>{_esc(_fmt(s['full']))}</td></tr>"
                       for k, s in record["settings"].items())
        parts.append('<h2>Settings</h2><div class="tablebox"><table><tr><th>setting</th><th>kind</th>'
                     f"<th>this run</th><th>full run</th></tr>{rows}</table></div>")
    mode_flag = " --tiny" if record.get("tiny") else " --quick" if record.get("quick") else ""
    if _registered(name):
        parts.append(f"<p class=meta>Re-run: <code>groundup run {_esc(name)}{mode_flag}"
                     f"{_esc(_set_flags(record))} --seed {_esc(record.get('seed'))}</code></p>")
    parts.append(_steps_nav(name, order))
    return _page(f"groundup roadmap: {name}", "\n".join(parts))


def render_index(out_root: str | os.PathLike, stages: Sequence[Any]) -> str:
    """``runs/index.html``: the stages in roadmap order with status and headline, linking each report.

    Args:
        out_root: the runs directory (each stage's metrics.json is read from it).
        stages: the stages to list, in order (objects with ``name`` and ``summary``). Stages that
            have a run on disk but are not in the list are appended after them.
    """
    from groundup.roadmap.runner import read_metrics

    out_root = Path(out_root)
    names = [s.name for s in stages]
    summaries = {s.name: s.summary for s in stages}
    for path in sorted(out_root.glob("*/metrics.json")):
        if path.parent.name not in names and not path.parent.name.startswith("."):   # not a set-aside run
            names.append(path.parent.name)
    rows = []
    for i, name in enumerate(names, 1):
        rec = read_metrics(out_root, name)
        if rec is None:
            rows.append(f"<tr><td>{i}</td><td>{_esc(name)}</td><td>{_esc(summaries.get(name, ''))}</td>"
                        f"<td>{_badge(None)}</td><td>run <code>groundup run {_esc(name)}</code></td><td></td>"
                        "<td></td></tr>")
            continue
        headline = rec.get("headline", {}).get("text", rec.get("error", ""))
        better = rec.get("headline", {}).get("better")
        if better:
            headline += f" ({better} is better)" if better in ("lower", "higher") else f" ({better})"
        claims = rec.get("claims", [])
        rows.append(f'<tr><td>{i}</td><td><a href="{_esc(name)}/report.html">{_esc(name)}</a></td>'
                    f"<td>{_esc(summaries.get(name, rec.get('summary', '')))}</td><td>{_badge(rec.get('status'))}</td>"
                    f"<td>{_esc(headline)}</td><td class=num>{sum(c['passed'] for c in claims)}/{len(claims)}</td>"
                    f"<td class=num>{_esc(rec.get('mode', ''))}, {_esc(_fmt(rec.get('wall_s', 0.0)))} s</td></tr>")
    body = ("<h1>groundup roadmap</h1>"
            "<p>From a single neuron to a GPT, one runnable stage at a time. Each stage trains a small model on "
            "real data, checks claims about it with the numbers it measured, and writes a report with its "
            "plots. Run one with <code>groundup run STAGE</code>, or all with <code>groundup run all</code>.</p>"
            '<div class="tablebox"><table><tr><th>#</th><th>stage</th><th>what it shows</th><th>status</th>'
            "<th>headline</th><th>claims</th><th>last run</th></tr>" + "".join(rows) + "</table></div>")
    body += _training_runs(out_root)
    return _page("groundup roadmap", body)


def _training_runs(out_root: Path) -> str:
    """The index's table of training runs (``groundup train ... --out OUT/NAME``), if there are any."""
    from groundup.roadmap.train_report import find_training_runs, run_summary

    rows = []
    for run in find_training_runs(out_root):
        info = run_summary(run)
        name = run.relative_to(out_root).as_posix()
        link = (f'<a href="{_esc(name)}/report.html">{_esc(name)}</a>' if (run / "report.html").is_file()
                else _esc(name))
        rows.append(f"<tr><td>{link}</td><td>{_esc(info['what'])}</td><td class=num>{_esc(info['loss'])}</td>"
                    f"<td class=num>{_esc(info['iters'])}</td><td class=num>{_esc(info['time'])}</td></tr>")
    if not rows:
        return ""
    return ("<h2>Training runs</h2><p>Models trained with <code>groundup train</code> into this folder; open one "
            "to see its curves and a sample, then <code>groundup sample RUN</code>.</p>"
            '<div class="tablebox"><table><tr><th>run</th><th>model and data</th><th>val loss</th><th>iters</th>'
            "<th>time</th></tr>" + "".join(rows) + "</table></div>")
