"""The explorer's FastAPI app: a JSON API (OpenAPI schema at /openapi.json, an offline page of it at /docs)
and the page.

    GET  /                       the page (static/index.html); /static/* its CSS and JS
    GET  /api/runs               the runs served (id, config, summary, whether a checkpoint exists)
    GET  /api/run?run=ID         one run: config, run.json, summary, tokenizer, parameter count, checkpoint
                                 (changes with each newer one; model_error: why it cannot be loaded, if not)
    GET  /api/metrics?run=ID&since=N   metrics.jsonl records from line N on (poll it to follow training)
    POST /api/analyze            tokens, top-k next-token probabilities at every position, attention, loss
    GET  /api/heads?run=ID       previous-token and induction scores of every head
    POST /api/lens               the logit lens grid (layer x position)
    POST /api/attribution        direct logit attribution of one prediction
    POST /api/ablate             the distribution and loss with heads / MLPs switched off
    GET  /api/generate?...       server-sent events: one ``token`` event per token, then ``done``
    GET  /api/stages             the roadmap stages in the runs folder (status, headline, claims)
    GET  /files/PATH             a report or plot under the runs folder (never outside it)

Bad input is a 4xx with ``{"detail": message}`` (422 from FastAPI's own validation has a list of
``{"loc", "msg"}``); a run with no checkpoint yet is 409; an unknown run 404.
"""

from __future__ import annotations

import html
import json
import math
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field

from groundup.explorer import analysis
from groundup.explorer.runs import SERVED_SUFFIXES, ExplorerError, Registry, read_json, read_metrics, safe_file

__all__ = ["create_app", "MAX_TEXT_CHARS", "MAX_K"]

STATIC = Path(__file__).resolve().parent / "static"
MAX_TEXT_CHARS = 4000               # a text or prompt; the model's context caps the tokens further
MAX_K = 50                          # top-k rows shown
MAX_ID_CHARS = 300

RunId = Annotated[str, Field(min_length=1, max_length=MAX_ID_CHARS, description="a run id from /api/runs")]
Text = Annotated[str, Field(max_length=MAX_TEXT_CHARS, description="the text to look at")]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AnalyzeRequest(_Body):
    run: RunId
    text: Text
    k: Annotated[int, Field(ge=1, le=MAX_K)] = 10


class LensRequest(_Body):
    run: RunId
    text: Text
    k: Annotated[int, Field(ge=1, le=MAX_K)] = 3


class AttributionRequest(_Body):
    run: RunId
    text: Text
    position: Annotated[int, Field(ge=-100_000, le=100_000)] = -1
    token: Annotated[int | None, Field(ge=0, le=10_000_000, description="default: the top prediction")] = None
    other: Annotated[int | None, Field(ge=0, le=10_000_000, description="attribute logit(token) - logit(other)")] = None


class Head(_Body):
    layer: Annotated[int, Field(ge=0, le=10_000)]
    head: Annotated[int, Field(ge=0, le=10_000)]


class AblateRequest(_Body):
    run: RunId
    text: Text
    position: Annotated[int, Field(ge=-100_000, le=100_000)] = -1
    heads: Annotated[list[Head], Field(max_length=1024)] = []
    mlps: Annotated[list[Annotated[int, Field(ge=0, le=10_000)]], Field(max_length=1024)] = []
    kind: Literal["zero", "mean"] = "zero"
    k: Annotated[int, Field(ge=1, le=MAX_K)] = 10


class Cache:
    """Loaded models by run id, reloaded when the run writes a newer checkpoint."""

    def __init__(self) -> None:
        self._runs: dict[str, analysis.LoadedRun] = {}
        self._lock = threading.Lock()

    def get(self, run_id: str, path: Path) -> analysis.LoadedRun:
        if not (path / "model.safetensors").is_file():
            raise ExplorerError(409, f"run {run_id!r} has no checkpoint yet (no model.safetensors); "
                                     f"its curves are on the training tab")
        with self._lock:
            loaded = self._runs.get(run_id)
            try:
                stamp = analysis.checkpoint_stamp(path)
            except OSError as err:
                raise ExplorerError(409, f"run {run_id!r}: the checkpoint cannot be read ({err.strerror})") from None
            if loaded is None or loaded.stamp != stamp:
                try:
                    loaded = analysis.load_run(path)
                except (OSError, ValueError, KeyError, TypeError) as err:
                    message = " ".join(str(err).split())[:300]
                    raise ExplorerError(409, f"run {run_id!r}: the model cannot be loaded ({message})") from None
                self._runs[run_id] = loaded
            return loaded


def _json(content: Any, status: int = 200) -> Response:
    """JSON without FastAPI's per-element encoder (attention maps are tens of thousands of floats)."""
    return Response(json.dumps(content, allow_nan=False, separators=(",", ":")), status_code=status,
                    media_type="application/json")


def _run_view(run_id: str, path: Path, registry_root: Path | None) -> dict[str, Any]:
    config = read_json(path / "config.json")
    if isinstance(config, dict) and isinstance(config.get("model"), dict):
        config = config["model"]
    summary = read_json(path / "summary.json")
    return {"id": run_id, "name": path.name, "has_model": (path / "model.safetensors").is_file(),
            "has_metrics": (path / "metrics.jsonl").is_file(),
            "config": config if isinstance(config, dict) else None,
            "summary": _summary_view(summary), "finished": isinstance(summary, dict)}


def api_docs_page(schema: dict[str, Any]) -> str:
    """The API's endpoints as one HTML page from its OpenAPI schema: method, path, summary, parameters
    and request body, with no script or stylesheet from the network (the explorer runs offline)."""
    components = schema.get("components", {}).get("schemas", {})
    rows = []
    for path, methods in schema.get("paths", {}).items():
        for method, op in methods.items():
            params = [f"{q['name']}{'' if q.get('required') else '?'} ({q.get('in', '')})"
                      for q in op.get("parameters", [])]
            content = op.get("requestBody", {}).get("content", {}).get("application/json", {})
            ref = content.get("schema", {}).get("$ref", "")
            body = components.get(ref.rsplit("/", 1)[-1], {}) if ref else {}
            fields = [f"{name}{'' if name in body.get('required', []) else '?'}" for name in body.get("properties", {})]
            rows.append(f"<tr><td><code>{html.escape(method.upper())}</code></td><td><code>{html.escape(path)}</code></td>"
                        f"<td>{html.escape(op.get('summary', ''))}</td><td>{html.escape(', '.join(params))}</td>"
                        f"<td>{html.escape(', '.join(fields))}</td></tr>")
    return ("<!doctype html><html><head><meta charset='utf-8'><title>groundup explorer API</title><style>"
            "body{font:14px system-ui,sans-serif;margin:2em}td,th{border-bottom:1px solid #ddd;padding:4px 8px;"
            "text-align:left;vertical-align:top}table{border-collapse:collapse}</style></head><body>"
            f"<h1>{html.escape(schema.get('info', {}).get('title', 'API'))}</h1>"
            f"<p>{html.escape(schema.get('info', {}).get('description', ''))} The full schema is "
            "<a href='/openapi.json'>/openapi.json</a>; <code>?</code> marks an optional parameter or field. "
            "Bad input is a 4xx with <code>{\"detail\": message}</code>.</p>"
            "<table><tr><th>method</th><th>path</th><th>what</th><th>parameters</th><th>JSON body</th></tr>"
            + "".join(rows) + "</table></body></html>")


def _summary_view(summary: Any) -> dict[str, Any] | None:
    if not isinstance(summary, dict):
        return None
    keys = ("train_loss", "val_loss", "best_val_loss", "iters", "wall_s", "train_s", "tokens_per_s", "n_params",
            "stopped_early")
    return {k: summary[k] for k in keys if k in summary}


def create_app(run_dirs: list[str | os.PathLike] | tuple = (), runs_root: str | os.PathLike | None = None) -> FastAPI:
    """The explorer app for these run directories and/or the runs folder.

    Args:
        run_dirs: directories written by ``groundup train gpt --out DIR``.
        runs_root: a folder of runs and roadmap stages (``runs/``), rescanned on every /api/runs.
    """
    registry = Registry(list(run_dirs), runs_root)
    cache = Cache()
    # NOTE: FastAPI's own /docs loads Swagger UI from a CDN, blank offline: ``api_docs`` serves a page of its own
    app = FastAPI(title="groundup explorer", version="0.1.0", docs_url=None, redoc_url=None,
                  description="Look inside a trained groundup GPT, watch it train, browse the roadmap.")
    app.state.registry = registry

    @app.exception_handler(ExplorerError)
    def _refused(request: Request, err: ExplorerError) -> JSONResponse:
        return JSONResponse({"detail": err.message}, status_code=err.status)

    @app.exception_handler(RequestValidationError)
    def _invalid(request: Request, err: RequestValidationError) -> Response:
        # FastAPI's own handler echoes the input, and JSON has no NaN: a body with NaN would be a 500
        return _json({"detail": _printable(jsonable_encoder(err.errors()))}, status=422)

    def loaded(run_id: str) -> analysis.LoadedRun:
        return cache.get(run_id, registry.get(run_id).path)

    # ------------------------------------------------------------------ the page
    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8")

    @app.get("/docs", include_in_schema=False)
    def api_docs() -> HTMLResponse:
        return HTMLResponse(api_docs_page(app.openapi()))

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    # ------------------------------------------------------------------ runs
    @app.get("/api/runs", summary="the runs served")
    def runs() -> dict[str, Any]:
        return {"runs": [_run_view(r.id, r.path, registry.root) for r in registry.runs().values()],
                "runs_root": str(registry.root) if registry.root else None}

    @app.get("/api/run", summary="one run's config, run.json, summary and tokenizer")
    def run_info(run: Annotated[str, Query(min_length=1, max_length=MAX_ID_CHARS)]) -> dict[str, Any]:
        entry = registry.get(run)
        view = _run_view(entry.id, entry.path, registry.root)
        record = read_json(entry.path / "run.json")
        view["run"] = record if isinstance(record, dict) else None
        view["model_error"] = None
        if view["has_model"]:
            try:
                model = loaded(run)
            except ExplorerError as err:   # a damaged checkpoint: the config, summary and curves still show
                view["model_error"] = err.message
                return view
            view["tokenizer"] = {"kind": type(model.tokenizer).__name__, "vocab_size": model.tokenizer.vocab_size}
            view["n_params"] = model.model.num_parameters()
            view["model"] = type(model.model).__name__
            view["kv_cache"] = model.is_gpt
            view["checkpoint"] = "-".join(map(str, model.stamp))   # changes when the run writes a newer one
        return view

    @app.get("/api/metrics", summary="metrics.jsonl records from line `since` on")
    def metrics(run: Annotated[str, Query(min_length=1, max_length=MAX_ID_CHARS)],
                since: Annotated[int, Query(ge=0, le=10**9)] = 0) -> Response:
        entry = registry.get(run)
        records, next_line = read_metrics(entry.path / "metrics.jsonl", since)
        records = [_finite(r) for r in records]
        return _json({"run": entry.id, "records": records, "next": next_line,
                      "finished": (entry.path / "summary.json").is_file()})

    # ------------------------------------------------------------------ looking inside
    @app.post("/api/analyze", summary="tokens, next-token top-k at every position, attention maps, loss")
    def analyze(body: AnalyzeRequest) -> Response:
        return _json(analysis.analyze(loaded(body.run), body.text, body.k))

    @app.get("/api/heads", summary="previous-token and induction score of every head")
    def heads(run: Annotated[str, Query(min_length=1, max_length=MAX_ID_CHARS)]) -> Response:
        return _json(analysis.head_scores(loaded(run)))

    @app.post("/api/lens", summary="the logit lens: each layer's top tokens at each position")
    def lens(body: LensRequest) -> Response:
        return _json(analysis.logit_lens(loaded(body.run), body.text, body.k))

    @app.post("/api/attribution", summary="direct logit attribution of one prediction")
    def attribution(body: AttributionRequest) -> Response:
        return _json(analysis.attribution(loaded(body.run), body.text, body.position, body.token, body.other))

    @app.post("/api/ablate", summary="the distribution and loss with heads / MLPs switched off")
    def ablate(body: AblateRequest) -> Response:
        return _json(analysis.ablate(loaded(body.run), body.text, body.position,
                                     [(h.layer, h.head) for h in body.heads], body.mlps, body.kind, body.k))

    # ------------------------------------------------------------------ generation
    @app.get("/api/generate", summary="stream generated tokens as server-sent events",
             response_class=StreamingResponse,
             responses={200: {"content": {"text/event-stream": {}},
                              "description": "`token` events {index, id, piece, tokens_per_s}, then one `done` "
                                             "event {ids, text, n, seconds, tokens_per_s}"}})
    def generate(run: Annotated[str, Query(min_length=1, max_length=MAX_ID_CHARS)],
                 prompt: Annotated[str, Query(max_length=MAX_TEXT_CHARS)] = "",
                 max_new_tokens: Annotated[int, Query(ge=1, le=analysis.MAX_NEW_TOKENS)] = 100,
                 temperature: Annotated[float, Query(ge=0.0, le=100.0, allow_inf_nan=False)] = 1.0,
                 top_k: Annotated[int | None, Query(ge=1, le=10_000_000)] = None,
                 top_p: Annotated[float | None, Query(gt=0.0, le=1.0, allow_inf_nan=False)] = None,
                 seed: Annotated[int | None, Query(ge=0, le=2**32 - 1)] = None,
                 use_cache: bool = True) -> StreamingResponse:
        model = loaded(run)
        if prompt:
            ids = model.encode(prompt, "prompt")
        else:
            from groundup.commands import start_id

            ids = [start_id(model.tokenizer)]
        # everything is checked before the stream starts, so a bad value is a 422, not a broken stream
        tokens = analysis.stream_tokens(model, ids, max_new_tokens, temperature, top_k, top_p, seed, use_cache)
        return StreamingResponse(_events(tokens), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    # ------------------------------------------------------------------ roadmap and files
    @app.get("/api/stages", summary="the roadmap stages in the runs folder")
    def stages() -> dict[str, Any]:
        return {"stages": registry.stages(), "runs_root": str(registry.root) if registry.root else None}

    @app.get("/files/{path:path}", summary="a report or plot under the runs folder",
             responses={200: {"content": {t: {} for t in sorted(set(SERVED_SUFFIXES.values()))}}})
    def files(path: str) -> FileResponse:
        found = safe_file(registry.root, path)
        return FileResponse(found, media_type=SERVED_SUFFIXES[found.suffix.lower()])

    @app.get("/api/health", summary="liveness")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


def _events(records: Iterator[dict[str, Any]]) -> Iterator[str]:
    """Server-sent events: ``event: token`` per record, ``event: done`` last, ``event: error`` on failure."""
    try:
        for record in records:
            name = "done" if record.get("done") else "token"
            yield f"event: {name}\ndata: {json.dumps(record, separators=(',', ':'))}\n\n"
    except Exception as err:  # noqa: BLE001 - the stream has started: say what broke in it, in one line
        message = " ".join(str(err).split())[:300] or type(err).__name__
        yield f"event: error\ndata: {json.dumps({'detail': message})}\n\n"


def _printable(value: Any) -> Any:
    """``value`` with NaN / inf numbers written as text ('nan', 'inf'), at any depth."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _printable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_printable(v) for v in value]
    return value


def _finite(value: Any) -> Any:
    """``value`` with every NaN / inf number replaced by None (JSON has no NaN), at any depth."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value
