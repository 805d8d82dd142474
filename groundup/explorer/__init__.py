"""The local web explorer: ``groundup explore [RUN_DIR ...] [--runs DIR]``.

A FastAPI app (``app.py``: the JSON API with its OpenAPI schema at ``/openapi.json``) serves one static
page (``static/``: HTML, CSS and JS, no CDN and no build step) on 127.0.0.1. The page looks inside
a trained GPT or attention-only model (tokens, next-token probabilities, attention, head scores,
logit lens, direct logit attribution, ablation), streams generation, draws the training curves of
one or two runs while they train, and lists the roadmap's stages.

    runs.py       which runs and stages are served, and safe paths into the served folders
    analysis.py   what the page asks of a model (NumPy in, plain lists out), on the hook points
    app.py        ``create_app(run_dirs, runs_root)``: the API and the page
    cli.py        the ``groundup explore`` command
    bench.py      its speed and load benchmark (``python -m groundup.explorer.bench``)

This package imports FastAPI only in ``app.py``, so ``groundup --help`` works without it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app"]


def create_app(run_dirs: Any = (), runs_root: Any = None) -> Any:
    """The explorer's FastAPI app (see ``groundup.explorer.app.create_app``)."""
    from groundup.explorer.app import create_app as _create_app

    return _create_app(run_dirs, runs_root)
