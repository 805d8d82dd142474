"""A training run's page: ``DIR/report.html`` for ``groundup train gpt ... --out DIR``.

It reads what the run wrote (run.json: data, tokenizer, model and training config; summary.json:
final losses, iterations, time; metrics.jsonl: the evaluations and the samples printed while
training; loss.png) and shows, in the style of a stage's report: the summary with bits per
character, the loss curves, the last sample, the settings, and the commands to go on
(``groundup sample DIR``, ``groundup compare``, ``groundup explore``). A run that lives in a runs
folder (``runs/NAME``) is listed on that folder's index.html (``report.render_index``).

    from groundup.roadmap.train_report import write_training_report
    write_training_report("runs/gpt-baby", bits_per_char=2.31)
"""

from __future__ import annotations

import json
import math
import os
import shlex
from pathlib import Path
from typing import Any

__all__ = ["is_training_run", "find_training_runs", "read_training_run", "run_summary", "render_training",
           "write_training_report"]


def is_training_run(directory: str | os.PathLike) -> bool:
    """A ``groundup train`` run directory: run.json or summary.json with metrics.jsonl, and no stage metrics.json."""
    d = Path(directory)
    return (d / "metrics.jsonl").is_file() and ((d / "run.json").is_file() or (d / "summary.json").is_file()) \
        and not (d / "metrics.json").is_file()


def find_training_runs(out_root: str | os.PathLike) -> list[Path]:
    """The training runs directly under ``out_root`` (one level), sorted by name."""
    root = Path(out_root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and is_training_run(p))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _read_records(path: Path) -> list[dict[str, Any]]:
    records = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut by a crash: the rest still counts
        if isinstance(record, dict):
            records.append(record)
    return records


def read_training_run(directory: str | os.PathLike) -> dict[str, Any]:
    """Everything the page shows: ``run`` (run.json), ``summary`` (summary.json), ``records`` (metrics.jsonl)."""
    d = Path(directory)
    return {"dir": d, "run": _read_json(d / "run.json"), "summary": _read_json(d / "summary.json"),
            "records": _read_records(d / "metrics.jsonl")}


def _num(value: Any, digits: int = 4) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return "–"
    return f"{value:,}" if isinstance(value, int) else f"{value:.{digits}f}"


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, int | float):
        return "–"
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def run_summary(directory: str | os.PathLike) -> dict[str, str]:
    """One row of text for the index: what (model, data), loss, iters, time."""
    info = read_training_run(directory)
    run, summary = info["run"], info["summary"]
    model = run.get("model", {})
    layers = model.get("n_layer", "?")
    what = (f"GPT {run.get('preset', '')} ({layers} layer{'' if layers == 1 else 's'}, "
            f"{model.get('n_embd', '?')} wide) "
            f"on {run.get('data', '?')}, {run.get('tokenizer', '?')} tokens")
    loss = _num(summary.get("val_loss"))
    if isinstance(summary.get("val_bits_per_char"), int | float):
        loss += f" ({summary['val_bits_per_char']:.3f} bits/char)"
    return {"what": what, "loss": loss if summary else "running or stopped",
            "iters": _num(summary.get("iters")) if summary else _num(_last_iter(info["records"])),
            "time": _duration(summary.get("wall_s"))}


def _last_iter(records: list[dict[str, Any]]) -> int | None:
    iters = [r["iter"] for r in records if isinstance(r.get("iter"), int)]
    return max(iters) if iters else None


def render_training(directory: str | os.PathLike, bits_per_char: float | None = None) -> str:
    """The HTML page of a training run (see the module docstring)."""
    from groundup.roadmap.report import page, table

    info = read_training_run(directory)
    d: Path = info["dir"]
    run, summary, records = info["run"], info["summary"], info["records"]
    esc = _esc
    name = d.name
    bpc = bits_per_char if bits_per_char is not None else summary.get("val_bits_per_char")
    parent = d.resolve().parent
    listed = parent.name == "runs" or (parent / "index.html").is_file()  # the index that lists this run
    parts = ['<nav class="steps"><a href="../index.html">all runs</a></nav>' if listed else "",
             f"<h1>{esc(name)} <span class=\"badge none\">training run</span></h1>"]
    model = run.get("model", {})
    parts.append(f"<p class=meta>GPT, preset {esc(run.get('preset', '?'))}, trained on {esc(run.get('data', '?'))} "
                 f"with a {esc(run.get('tokenizer', '?'))} tokenizer; {esc(_num(summary.get('n_params')))} "
                 "parameters</p>")
    if summary:
        headline = f"validation loss: <b>{esc(_num(summary.get('val_loss')))}</b>"
        if isinstance(bpc, int | float):
            headline += f", <b>{esc(f'{bpc:.3f}')}</b> bits per character"
        parts.append(f'<p class="headline">{headline} <span class="better">(lower is better; bits per character '
                     "compare across tokenizers)</span></p>")
        rows = [("validation loss (nats per token)", _num(summary.get("val_loss"))),
                ("bits per character (validation)", _num(bpc, 3) if isinstance(bpc, int | float) else "–"),
                ("best validation loss", _num(summary.get("best_val_loss"))),
                ("training loss", _num(summary.get("train_loss"))),
                ("iterations", _num(summary.get("iters"))),
                ("wall time", _duration(summary.get("wall_s"))),
                ("tokens per second", _num(summary.get("tokens_per_s"), 0)),
                ("train / val tokens", f"{_num(run.get('train_tokens'))} / {_num(run.get('val_tokens'))}")]
        parts.append("<h2>Summary</h2>" + table(("", "value"), rows))
    else:
        parts.append('<div class="banner">This run has not finished (no summary.json yet): the curves and samples '
                     "below are what it has logged so far.</div>")
    resumes = [r for r in records if r.get("kind") == "resume"]
    if resumes:
        parts.append("<p class=meta>resumed at iteration " + ", ".join(esc(r.get("iter")) for r in resumes) + "</p>")
    if (d / "loss.png").is_file():
        parts.append('<h2>Curves</h2><figure><img src="loss.png" alt="loss and learning rate against iteration">'
                     "<figcaption>Loss per training batch and at each evaluation (top), learning rate "
                     "(bottom).</figcaption></figure>")
    samples = [r for r in records if r.get("kind") == "sample" and isinstance(r.get("text"), str)]
    if samples:
        last = samples[-1]
        parts.append(f"<h2>The last sample (iteration {esc(last.get('iter'))})</h2><pre>{esc(last['text'].strip())}"
                     "</pre>")
    config_rows = [(f"model.{k}", str(v)) for k, v in model.items()]
    config_rows += [(f"train.{k}", str(v)) for k, v in run.get("train", {}).items()]
    if config_rows:
        parts.append("<h2>Config</h2>" + table(("setting", "value"), config_rows))
    parts.append(_code())
    quoted = shlex.quote(str(d))
    prompt = ' --prompt "ROMEO:"' if run.get("data") == "shakespeare" else ""
    parts.append("<h2>Next</h2><dl class=\"trynext\">"
                 f"<dt><code>groundup sample {esc(quoted)}{esc(prompt)}</code></dt><dd>generate text from this model"
                 "</dd>"
                 f"<dt><code>groundup explore {esc(quoted)}</code></dt><dd>look inside: tokens, attention, the logit "
                 "lens</dd>"
                 f"<dt><code>groundup compare {esc(quoted)} OTHER_RUN</code></dt><dd>put another run beside this one "
                 "(its numbers, settings and curves)</dd></dl>")
    return page(f"groundup training run: {name}", "\n".join(parts))


def _code() -> str:
    """"The code": the command's training function, the Trainer's loop, the GPT it trains (readable and fast)."""
    from groundup.models.gpt import GPT, Block, CausalSelfAttention
    from groundup.models.gpt_fast import FastGPT
    from groundup.roadmap.code import refs_for
    from groundup.roadmap.report import code_html
    from groundup.train import Trainer
    from groundup.train_cli import _train

    try:
        refs = refs_for([(_train, "command"), (Trainer.fit, "code"), (GPT, "model"), (Block, "model"),
                         (CausalSelfAttention, "model"), (FastGPT, "model")])
    except Exception:  # noqa: BLE001 - the page still renders without it
        return ""
    return code_html(refs).replace("The functions that produced this page's numbers",
                                   "The functions that trained this model", 1)


def _esc(value: Any) -> str:
    import html

    return html.escape(str(value), quote=True)


def write_training_report(directory: str | os.PathLike, bits_per_char: float | None = None,
                          update_index: bool = True) -> Path:
    """Write ``DIR/report.html``; when DIR's parent is a runs folder (named ``runs`` or holding an
    index.html), rewrite that folder's index.html so the run is listed.

    Args:
        directory: the run directory.
        bits_per_char: validation bits per character (also saved into summary.json as
            ``val_bits_per_char``, so ``groundup compare`` and the index can show it).
        update_index: refresh the parent's index.html.

    Returns:
        the report's path.
    """
    from groundup.train.files import write_atomic

    d = Path(directory)
    summary_path = d / "summary.json"
    if bits_per_char is not None and summary_path.is_file():
        summary = _read_json(summary_path)
        if summary:
            summary["val_bits_per_char"] = float(bits_per_char)
            write_atomic(d, "summary.json", json.dumps(summary, indent=1) + "\n")
    write_atomic(d, "report.html", render_training(d, bits_per_char))
    parent = d.resolve().parent
    if update_index and (parent.name == "runs" or (parent / "index.html").is_file()):
        from groundup.roadmap.report import render_index
        from groundup.roadmap.stages import load_stages

        write_atomic(parent, "index.html", render_index(parent, load_stages()))
    return d / "report.html"
