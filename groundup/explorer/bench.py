"""The explorer's speed benchmark: the next-token distribution and every attention map for a 64-token
prompt on the baby GPT (4 layers x 4 heads x 128, context 64), through the HTTP API and without it;
and a load run (many concurrent clients on loopback, errors counted, p95 latency).

    python -m groundup.explorer.bench                 # an untrained baby GPT (the timing is the same)
    python -m groundup.explorer.bench --run runs/gpt-baby --clients 50 --requests 500

The target (issue 15): a median of at most 50 ms for /api/analyze on the baby GPT.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["baby_run", "time_analyze", "load_test", "main"]

PROMPT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
          "First Citizen:\nYou are all resolved rather to die than to famish?\n")


def baby_run(directory: Path) -> Path:
    """An untrained baby GPT with Tiny Shakespeare's character tokenizer, saved as a run directory."""
    from groundup.models.gpt import GPT, GPTConfig
    from groundup.tokenizers import CharTokenizer

    tokenizer = CharTokenizer(_shakespeare_alphabet())
    model = GPT(GPTConfig.preset("baby", vocab_size=tokenizer.vocab_size))
    model.save(directory)
    tokenizer.save(directory)
    return directory


def _shakespeare_alphabet() -> str:
    from groundup.data import load_text

    return load_text("shakespeare")


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def time_analyze(run_dir: Path, repeats: int = 30, tokens: int = 64) -> dict[str, Any]:
    """Median and p95 milliseconds of analyze, in-process and over HTTP (FastAPI's TestClient)."""
    from fastapi.testclient import TestClient

    from groundup.explorer import analysis
    from groundup.explorer.app import create_app

    run = analysis.load_run(run_dir)
    text = PROMPT[:min(tokens, run.cfg.block_size)]
    direct, http = [], []
    for _ in range(3):
        analysis.analyze(run, text)
    for _ in range(repeats):
        started = time.perf_counter()
        analysis.analyze(run, text)
        direct.append(1000 * (time.perf_counter() - started))
    client = TestClient(create_app([run_dir]))
    run_id = client.get("/api/runs").json()["runs"][0]["id"]
    size = 0
    for i in range(repeats + 3):
        started = time.perf_counter()
        response = client.post("/api/analyze", json={"run": run_id, "text": text})
        if i >= 3:
            http.append(1000 * (time.perf_counter() - started))
        size = len(response.content)
    return {"tokens": len(text), "direct_median_ms": statistics.median(direct),
            "direct_p95_ms": _percentile(direct, .95), "http_median_ms": statistics.median(http),
            "http_p95_ms": _percentile(http, .95), "response_bytes": size}


def load_test(base_url: str, run_id: str, clients: int = 50, requests: int = 500, text: str = "the ",
              timeout: float = 60.0) -> dict[str, Any]:
    """``requests`` requests (analyze, ablate, lens, heads, metrics, a short generation) from ``clients``
    threads against a live server; returns the error count, the p95 latency and the wall time."""
    import httpx

    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    counter = iter(range(requests))

    def one(client: Any, n: int) -> None:
        kind = n % 6
        started = time.perf_counter()
        if kind == 0:
            r = client.post("/api/analyze", json={"run": run_id, "text": text})
        elif kind == 1:
            r = client.post("/api/ablate", json={"run": run_id, "text": text, "heads": [{"layer": 0, "head": 0}]})
        elif kind == 2:
            r = client.post("/api/lens", json={"run": run_id, "text": text})
        elif kind == 3:
            r = client.get("/api/heads", params={"run": run_id})
        elif kind == 4:
            r = client.get("/api/metrics", params={"run": run_id})
        else:
            r = client.get("/api/generate", params={"run": run_id, "max_new_tokens": 5, "seed": n})
        elapsed = time.perf_counter() - started
        with lock:
            latencies.append(1000 * elapsed)
            if r.status_code != 200:
                errors.append(f"{r.status_code} {r.text[:100]}")

    def worker() -> None:
        with httpx.Client(base_url=base_url, timeout=timeout) as client:
            while True:
                with lock:
                    n = next(counter, None)
                if n is None:
                    return
                try:
                    one(client, n)
                except httpx.HTTPError as err:
                    with lock:
                        errors.append(f"{type(err).__name__}: {err}")

    started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"requests": len(latencies), "clients": clients, "errors": len(errors), "first_errors": errors[:3],
            "p50_ms": statistics.median(latencies) if latencies else None,
            "p95_ms": _percentile(latencies, .95) if latencies else None, "wall_s": time.perf_counter() - started}


def serve_in_thread(app: Any, host: str = "127.0.0.1") -> tuple[Any, threading.Thread, str]:
    """Start uvicorn on a free port of ``host`` in a daemon thread: (server, thread, base URL)."""
    import socket

    import uvicorn

    with socket.socket() as probe:
        probe.bind((host, 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    return server, thread, f"http://{host}:{port}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default=None, help="a GPT run directory (default: an untrained baby GPT)")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--requests", type=int, default=500)
    args = parser.parse_args(argv)
    from groundup.explorer.app import create_app

    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(args.run) if args.run else baby_run(Path(tmp) / "baby")
        record: dict[str, Any] = {"analyze": time_analyze(run_dir, args.repeats)}
        app = create_app([run_dir])
        run_id = next(iter(app.state.registry.runs()))
        server, thread, url = serve_in_thread(app)
        try:
            record["load"] = load_test(url, run_id, args.clients, args.requests, PROMPT[:32])
        finally:
            server.should_exit = True
            thread.join(timeout=10)
    print(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
