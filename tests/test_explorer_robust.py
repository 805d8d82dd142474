"""The explorer under hostile and heavy use: Hypothesis requests built from the app's own OpenAPI
schema (every endpoint, every parameter, values of the right and the wrong types) never get a 5xx;
many concurrent clients on a live loopback server get no errors (the full 500 x 50 run is ``slow``
and prints its p95 latency).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from urllib.parse import unquote

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402
from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from test_explorer import TEXT, _train  # noqa: E402

from groundup.explorer.app import create_app  # noqa: E402
from groundup.explorer.bench import load_test, serve_in_thread  # noqa: E402


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    data = root.parent / "text.txt"
    data.write_text(TEXT, encoding="utf-8")
    _train(root / "tiny", data)
    (root / "empty").mkdir()
    (root / "empty" / "metrics.jsonl").write_text('{"kind": "eval", "iter": 0, "val_loss": NaN}\nnot json\n')
    return root


@pytest.fixture(scope="module")
def client(runs_root: Path) -> TestClient:
    return TestClient(create_app([], runs_root), raise_server_exceptions=False)


@pytest.fixture(scope="module")
def schema(client: TestClient) -> dict:
    return client.get("/openapi.json").json()


JUNK = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12),
                 st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20),
                 st.lists(st.integers(-3, 3), max_size=3), st.just({"layer": 0, "head": 0}))
TEXTS = st.one_of(st.sampled_from(["the cat", "the", "", "THE", "a" * 40, "the mat. "]),
                  st.text(alphabet="the cats.\n THE€\x00", max_size=40))
RUNS = st.sampled_from(["tiny", "empty", "nope", "../tiny", "", "x" * 400])


def _value(name: str, spec: dict, schema: dict) -> st.SearchStrategy:
    """Values for one parameter or property: mostly plausible, often of the wrong type."""
    if name == "run":
        return st.one_of(RUNS, JUNK)
    if name in ("text", "prompt"):
        return st.one_of(TEXTS, JUNK)
    if name == "heads":
        head = st.fixed_dictionaries({"layer": st.integers(-1, 3), "head": st.integers(-1, 3)})
        return st.one_of(st.lists(head, max_size=3), JUNK)
    if name == "mlps":
        return st.one_of(st.lists(st.integers(-1, 3), max_size=3), JUNK)
    if name == "kind":
        return st.one_of(st.sampled_from(["zero", "mean", "half"]), JUNK)
    plausible = st.one_of(st.integers(-40, 40), st.floats(-2, 3), st.sampled_from([0, 1, -1, 10**9, 2**33]))
    return st.one_of(plausible, JUNK)


def _post_bodies(schema: dict, path: str) -> st.SearchStrategy:
    ref = schema["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    properties = schema["components"]["schemas"][ref.rsplit("/", 1)[1]]["properties"]
    fields = {name: _value(name, spec, schema) for name, spec in properties.items()}
    body = st.fixed_dictionaries({}, optional=fields)
    return st.one_of(body, st.builds(lambda b, extra: {**b, "surprise": extra}, body, JUNK), JUNK)


def _query(schema: dict, path: str) -> st.SearchStrategy:
    params = schema["paths"][path]["get"].get("parameters", [])
    as_text = st.one_of(st.text(max_size=12), st.sampled_from(["nan", "inf", "-inf", "-1", "0", "1e309", "true",
                                                               "1.5", "99999999999999999999"]))
    fields = {p["name"]: st.one_of(_value(p["name"], p.get("schema", {}), schema).map(
        lambda v: v if isinstance(v, str) else json.dumps(v)), as_text) for p in params}
    return st.fixed_dictionaries({}, optional=fields)


def _check(response) -> None:                                     # noqa: ANN001 - an httpx Response
    assert response.status_code < 500, (response.status_code, response.text[:300])
    if response.headers.get("content-type", "").startswith("application/json"):
        json.loads(response.text)                                 # valid JSON (no NaN)


SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                             HealthCheck.too_slow])


@pytest.mark.parametrize("path", ["/api/analyze", "/api/lens", "/api/attribution", "/api/ablate"])
def test_fuzzed_posts_never_fail_on_the_server(client: TestClient, schema: dict, path: str) -> None:
    @SETTINGS
    @given(body=_post_bodies(schema, path))
    def run(body: object) -> None:
        _check(client.post(path, json=body))

    run()


@pytest.mark.parametrize("path", ["/api/run", "/api/metrics", "/api/heads", "/api/generate", "/api/runs",
                                  "/api/stages"])
def test_fuzzed_gets_never_fail_on_the_server(client: TestClient, schema: dict, path: str) -> None:
    @SETTINGS
    @given(params=_query(schema, path))
    def run(params: dict) -> None:
        if path == "/api/generate" and params.get("max_new_tokens", "").isdigit():
            params["max_new_tokens"] = str(min(int(params["max_new_tokens"]), 30))   # keep it quick
        _check(client.get(path, params=params))

    run()


@pytest.mark.parametrize("raw", [b'{"run": "tiny", "text": "the", "k": NaN}', b'{"run": "tiny", "text": "the", '
                                 b'"position": Infinity}', b"{", b"\xff\xfe", b"[]", b"null", b'"the"',
                                 b'{"run": "tiny", "text": "the", "heads": [{"layer": 1e400, "head": 0}]}'])
@pytest.mark.parametrize("path", ["/api/analyze", "/api/attribution", "/api/ablate"])
def test_malformed_json_is_422(client: TestClient, path: str, raw: bytes) -> None:
    response = client.post(path, content=raw, headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text[:200]


def test_fuzzed_file_paths_never_escape(client: TestClient, runs_root: Path) -> None:
    parts = st.sampled_from(["..", ".", "", "tiny", "config.json", "etc", "passwd", "%2e%2e", "%00", "~", "\\..",
                             "report.html", "metrics.jsonl"])
    root = runs_root.resolve()

    @SETTINGS
    @given(path=st.lists(parts, min_size=1, max_size=5).map("/".join))
    @example(path="tiny/config.json")                # a file the server should serve, found by the fuzzer once
    @example(path="tiny/../../etc/passwd")
    def run(path: str) -> None:
        response = client.get(f"/files/{path}")
        asked = response.request.url.path
        if asked.startswith("/files/"):
            if response.status_code == 200:         # a real file of the runs folder (e.g. tiny/config.json)
                served = (root / unquote(asked[len("/files/"):])).resolve()
                assert served.is_relative_to(root) and served.is_file(), (path, served)
                assert response.content == served.read_bytes(), path
            else:
                assert response.status_code in (404, 405), (path, response.status_code)
        else:                                   # the client resolved '..' itself, above /files: the page
            assert response.status_code in (200, 404) and "root:" not in response.text

    run()


def test_metrics_with_nan_and_broken_lines_are_valid_json(client: TestClient) -> None:
    body = client.get("/api/metrics", params={"run": "empty"}).json()
    assert body["records"] == [{"kind": "eval", "iter": 0, "val_loss": None}] and body["next"] == 2
    assert not any(isinstance(v, float) and not math.isfinite(v) for v in body["records"][0].values())


def _live_load(runs_root: Path, clients: int, requests: int) -> dict:
    server, thread, url = serve_in_thread(create_app([runs_root / "tiny"]))
    try:
        return load_test(url, "tiny", clients=clients, requests=requests, text="the cat sat")
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_concurrent_clients_on_loopback_get_no_errors(runs_root: Path) -> None:
    record = _live_load(runs_root, clients=10, requests=60)
    assert record["requests"] == 60 and record["errors"] == 0, record["first_errors"]


@pytest.mark.slow
def test_500_requests_from_50_clients(runs_root: Path, capsys: pytest.CaptureFixture) -> None:
    record = _live_load(runs_root, clients=50, requests=500)
    with capsys.disabled():
        print(f"\nexplorer load: {record['requests']} requests, {record['clients']} clients, "
              f"{record['errors']} errors, p50 {record['p50_ms']:.0f} ms, p95 {record['p95_ms']:.0f} ms, "
              f"{record['wall_s']:.1f} s")
    assert record["requests"] == 500 and record["errors"] == 0, record["first_errors"]
    assert record["wall_s"] < 120


@pytest.mark.parametrize("text", ["²", "①", "3 ²", "-1", "1.5", "12", "x"])
def test_a_run_without_tokenizer_refuses_what_is_not_an_id_as_a_key_error(text: str) -> None:
    # LoadedRun.encode turns a KeyError into a 422; '²'.isdigit() is True but int('²') raises ValueError (a 500)
    from groundup.explorer.analysis import IdTokenizer

    tokenizer = IdTokenizer(vocab_size=12)
    with pytest.raises(KeyError, match="write token ids 0..11"):
        tokenizer.encode(text)


def test_a_run_without_tokenizer_reads_ids_and_writes_them_back() -> None:
    from groundup.explorer.analysis import IdTokenizer

    tokenizer = IdTokenizer(vocab_size=12)
    assert tokenizer.encode("3 11, 0") == [3, 11, 0]
    assert tokenizer.decode([3, 11]) == "3 11 "
