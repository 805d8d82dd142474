"""The explorer's JSON API (groundup/explorer/app.py) on tiny run directories trained here.

Every endpoint's answer is checked against the model itself: the top-k probabilities against a
direct forward pass, the attention against ``attention_maps``, the attribution against the logit,
an ablation against a model with those weights zeroed, the streamed tokens against
``GPT.generate``; bad input gives a 4xx with a message, and no request reads outside the served
folders. The command binds 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from groundup.cli import main as groundup_main  # noqa: E402
from groundup.commands import load_tokenizer  # noqa: E402
from groundup.explorer import analysis  # noqa: E402
from groundup.explorer.app import create_app  # noqa: E402
from groundup.models.gpt import GPT  # noqa: E402
from groundup.tensor import no_grad  # noqa: E402

TEXT = "the cat sat on the mat. the dog ate the log. a cat and a dog met at the mat.\n" * 40
PROMPT = "the cat sat on"


def _train(out: Path, data: Path, *extra: str) -> Path:
    code = groundup_main(["train", "gpt", "--data", str(data), "--out", str(out), "--max-iters", "3",
                          "--batch-size", "2", "--no-progress", "--model.n_layer=2", "--model.n_head=2",
                          "--model.n_embd=16", "--model.block_size=32", "--train.eval_interval=1",
                          "--train.eval_iters=1", *extra])
    assert code == 0
    return out


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """runs/ with two tiny GPT runs (one with biases and learned positions), a stage and a live run."""
    root = tmp_path_factory.mktemp("runs")
    data = root.parent / "text.txt"
    data.write_text(TEXT, encoding="utf-8")
    _train(root / "tiny", data, "--model.bias=true", "--model.pos_encoding=learned")
    _train(root / "tiny-rotary", data)
    stage = root / "transformer"
    stage.mkdir()
    (stage / "report.html").write_text("<html><title>transformer report</title><body>the report</body></html>")
    (stage / "metrics.json").write_text(json.dumps({
        "stage": "transformer", "title": "The transformer", "status": "pass", "mode": "quick",
        "headline": {"label": "val loss", "value": 1.5, "text": "val loss 1.500"},
        "claims": [{"statement": "masking works", "passed": True, "detail": "0 <= 0"},
                   {"statement": "it learns", "passed": False, "detail": "1.5 <= 1.2"}]}))
    live = root / "live"
    live.mkdir()
    lines = (root / "tiny" / "metrics.jsonl").read_text().splitlines(keepends=True)
    (live / "metrics.jsonl").write_text("".join(lines[:2]))
    return root


@pytest.fixture(scope="module")
def client(runs_root: Path) -> TestClient:
    return TestClient(create_app([], runs_root))


@pytest.fixture(scope="module")
def model(runs_root: Path) -> GPT:
    return GPT.load(runs_root / "tiny").eval()


def _ids(runs_root: Path, text: str) -> list[int]:
    return load_tokenizer(runs_root / "tiny").encode(text)


def _probs(model: GPT, ids: list[int]) -> np.ndarray:
    with no_grad():
        logits = model(np.asarray([ids])).numpy()[0].astype(np.float64)         # (T, V)
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _events(text: str) -> list[tuple[str, dict]]:
    out = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        out.append((lines["event"], json.loads(lines["data"])))
    return out


# ----------------------------------------------------------------------------- runs and metrics
def test_runs_lists_every_run_with_its_config(client: TestClient, runs_root: Path) -> None:
    body = client.get("/api/runs").json()
    by_id = {r["id"]: r for r in body["runs"]}
    assert set(by_id) == {"tiny", "tiny-rotary", "live"}          # the stage folder is not a run
    assert by_id["tiny"]["config"] == json.loads((runs_root / "tiny" / "config.json").read_text())
    assert by_id["tiny"]["has_model"] and by_id["tiny"]["finished"]
    assert not by_id["live"]["has_model"] and not by_id["live"]["finished"]
    info = client.get("/api/run", params={"run": "tiny"}).json()
    assert info["run"]["data"].endswith("text.txt") and info["tokenizer"]["kind"] == "CharTokenizer"
    assert info["n_params"] == GPT.load(runs_root / "tiny").num_parameters()
    assert info["summary"]["iters"] == 3


def test_metrics_follow_a_growing_file(client: TestClient, runs_root: Path) -> None:
    all_lines = (runs_root / "tiny" / "metrics.jsonl").read_text().splitlines(keepends=True)
    live = runs_root / "live" / "metrics.jsonl"
    first = client.get("/api/metrics", params={"run": "live"}).json()
    assert first["records"] == [json.loads(x) for x in all_lines[:2]] and first["next"] == 2
    assert not first["finished"]
    with open(live, "a") as f:                      # training writes a record and half of the next
        f.write(all_lines[2])
        f.write(all_lines[3][:10])
    more = client.get("/api/metrics", params={"run": "live", "since": first["next"]}).json()
    assert more["records"] == [json.loads(all_lines[2])] and more["next"] == 3
    with open(live, "a") as f:
        f.write(all_lines[3][10:])
    rest = client.get("/api/metrics", params={"run": "live", "since": 3}).json()
    assert rest["records"] == [json.loads(all_lines[3])] and rest["next"] == 4


# ----------------------------------------------------------------------------- looking inside
def test_analyze_matches_a_direct_forward_pass(client: TestClient, runs_root: Path, model: GPT) -> None:
    body = client.post("/api/analyze", json={"run": "tiny", "text": PROMPT, "k": 5}).json()
    ids = _ids(runs_root, PROMPT)
    assert [t["id"] for t in body["tokens"]] == ids
    assert "".join(t["text"] for t in body["tokens"]) == PROMPT
    probs = _probs(model, ids)
    top = np.argsort(-probs, axis=-1, kind="stable")[:, :5]
    np.testing.assert_allclose(body["top"]["probs"], np.take_along_axis(probs, top, -1), atol=2e-5)
    assert np.all(np.diff(body["top"]["probs"], axis=-1) <= 0)
    shown = np.take_along_axis(probs, np.asarray(body["top"]["ids"]), -1)      # ties may swap ids, not probs
    np.testing.assert_allclose(shown, body["top"]["probs"], atol=2e-5)
    maps = model.attention_maps(np.asarray([ids]))[:, 0]                        # (L, H, T, T)
    np.testing.assert_allclose(analysis.unpack(body["attention"]), maps, atol=1e-6)
    losses = -np.log(probs[np.arange(len(ids) - 1), ids[1:]])
    np.testing.assert_allclose(body["losses"], losses, atol=2e-5)
    assert abs(body["loss"] - losses.mean()) < 1e-5


def test_head_scores_are_the_attention_on_the_detector_patterns(client: TestClient, model: GPT) -> None:
    body = client.get("/api/heads", params={"run": "tiny"}).json()
    T = body["sequence_length"]
    rng = np.random.default_rng(0)
    first = rng.integers(0, model.cfg.vocab_size, size=T // 2)
    maps = model.attention_maps(np.concatenate([first, first])[None])[:, 0].astype(np.float64)  # (L, H, T, T)
    rows = np.arange(1, T)
    np.testing.assert_allclose(body["previous_token"], maps[:, :, rows, rows - 1].mean(-1), atol=1e-4)
    assert np.asarray(body["induction"]).shape == (model.cfg.n_layer, model.cfg.n_head)


def test_logit_lens_ends_at_the_model_and_attribution_adds_up(client: TestClient, runs_root: Path,
                                                              model: GPT) -> None:
    ids = _ids(runs_root, PROMPT)
    lens = client.post("/api/lens", json={"run": "tiny", "text": PROMPT, "k": 3}).json()
    assert lens["names"] == ["embed", "block 0", "block 1"]
    probs = _probs(model, ids)
    np.testing.assert_allclose(np.asarray(lens["top"]["probs"])[-1, :, 0], probs.max(-1), atol=2e-5)
    np.testing.assert_allclose(np.asarray(lens["kl_to_final"])[-1], 0.0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(lens["target_probs"])[-1], probs[np.arange(len(ids) - 1), ids[1:]], atol=2e-5)

    with no_grad():
        logits = model(np.asarray([ids])).numpy()[0].astype(np.float64)
    dla = client.post("/api/attribution", json={"run": "tiny", "text": PROMPT, "position": 3}).json()
    assert dla["token"] == int(logits[3].argmax()) and dla["position"] == 3
    assert dla["labels"][:3] == ["embed", "L0H0", "L0H1"] and "bias" in dla["labels"]
    assert abs(dla["total"] - logits[3, dla["token"]]) < 1e-4
    assert abs(sum(dla["values"]) - dla["total"]) < 1e-3
    diff = client.post("/api/attribution", json={"run": "tiny", "text": PROMPT, "position": -1, "token": 2,
                                                  "other": 5}).json()
    assert abs(diff["total"] - (logits[-1, 2] - logits[-1, 5])) < 1e-4 and diff["position"] == len(ids) - 1


def test_ablation_equals_zeroing_the_weights(client: TestClient, runs_root: Path, model: GPT) -> None:
    ids = _ids(runs_root, PROMPT)
    body = client.post("/api/ablate", json={"run": "tiny", "text": PROMPT, "position": 5,
                                            "heads": [{"layer": 1, "head": 0}], "mlps": [0], "k": 5}).json()
    assert body["parts"] == ["L1H0", "L0MLP"]
    zeroed = GPT.load(runs_root / "tiny").eval()
    D = zeroed.cfg.n_embd // zeroed.cfg.n_head
    zeroed.blocks[1].attn.proj.weight.data[:, 0:D] = 0.0          # head 0's columns of the output projection
    zeroed.blocks[0].mlp.proj.weight.data[:] = 0.0
    zeroed.blocks[0].mlp.proj.bias.data[:] = 0.0
    after, before = _probs(zeroed, ids), _probs(model, ids)
    np.testing.assert_allclose(body["after"], after[5, body["ids"]], atol=2e-5)
    np.testing.assert_allclose(body["before"], before[5, body["ids"]], atol=2e-5)
    loss_after = -np.log(after[np.arange(len(ids) - 1), ids[1:]]).mean()
    assert abs(body["loss_after"] - loss_after) < 1e-5
    kl = (before[5] * np.log(before[5] / after[5])).sum()
    assert abs(body["kl"] - kl) < 1e-5 and body["kl"] > 0

    nothing = client.post("/api/ablate", json={"run": "tiny", "text": PROMPT}).json()
    assert nothing["before"] == nothing["after"] and nothing["kl"] == 0.0
    mean = client.post("/api/ablate", json={"run": "tiny", "text": PROMPT, "kind": "mean",
                                            "heads": [{"layer": 0, "head": 1}]}).json()
    assert mean["kind"] == "mean" and mean["before"] != mean["after"]


# ----------------------------------------------------------------------------- generation
@pytest.mark.parametrize("run_id", ["tiny", "tiny-rotary"])
def test_streamed_generation_is_generate_with_or_without_the_cache(client: TestClient, runs_root: Path,
                                                                   run_id: str) -> None:
    params = {"run": run_id, "prompt": "the ", "max_new_tokens": 20, "temperature": 0.9, "top_k": 10,
              "top_p": 0.95, "seed": 7}
    texts = []
    for cache in ("true", "false"):
        response = client.get("/api/generate", params={**params, "use_cache": cache})
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        events = _events(response.text)
        assert [e for e, _ in events] == ["token"] * 20 + ["done"]
        done = events[-1][1]
        assert done["n"] == 20 and done["tokens_per_s"] > 0
        assert "".join(d["piece"] for _, d in events[:-1]) == done["text"]
        texts.append(done["text"])
        reference = GPT.load(runs_root / run_id).generate(np.asarray([_ids(runs_root, "the ")]), 20, 0.9, 10, 0.95,
                                                          seed=7, use_cache=cache == "true")
        assert done["ids"] == reference.numpy()[0, 4:].tolist()
    assert texts[0] == texts[1]                                       # within the context: same tokens


# ----------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("path, body, status, words", [
    ("/api/analyze", {"run": "nope", "text": "the"}, 404, "unknown run"),
    ("/api/analyze", {"run": "../../etc", "text": "the"}, 404, "unknown run"),
    ("/api/analyze", {"run": "tiny", "text": "the " * 20}, 422, "context of 32"),
    ("/api/analyze", {"run": "tiny", "text": "THE"}, 422, "not in the vocabulary"),
    ("/api/analyze", {"run": "tiny", "text": ""}, 422, "empty"),
    ("/api/analyze", {"run": "tiny", "text": "x" * 5000}, 422, "at most 4000"),
    ("/api/analyze", {"run": "tiny", "text": "the", "k": 0}, 422, "greater than or equal to 1"),
    ("/api/analyze", {"run": "tiny", "text": "the", "extra": 1}, 422, "extra"),
    ("/api/analyze", {"run": "live", "text": "the"}, 409, "no checkpoint yet"),
    ("/api/attribution", {"run": "tiny", "text": "the", "position": 3}, 422, "outside the text"),
    ("/api/attribution", {"run": "tiny", "text": "the", "token": 999}, 422, "outside the vocabulary"),
    ("/api/ablate", {"run": "tiny", "text": "the", "heads": [{"layer": 2, "head": 0}]}, 422, "does not exist"),
    ("/api/ablate", {"run": "tiny", "text": "the", "mlps": [5]}, 422, "does not exist"),
    ("/api/ablate", {"run": "tiny", "text": "the", "kind": "half"}, 422, "'zero' or 'mean'"),
    ("/api/lens", {"run": "tiny", "text": 5}, 422, "valid string"),
])
def test_bad_requests_are_refused_with_a_message(client: TestClient, path: str, body: dict, status: int,
                                                 words: str) -> None:
    response = client.post(path, json=body)
    assert response.status_code == status
    assert words in json.dumps(response.json()["detail"])


@pytest.mark.parametrize("params, words", [
    ({"max_new_tokens": 100_000}, "less than or equal to 2000"),
    ({"max_new_tokens": 0}, "greater than or equal to 1"),
    ({"temperature": "nan"}, "finite number"),
    ({"temperature": "inf"}, "finite number"),
    ({"temperature": -0.5}, "greater than or equal to 0"),
    ({"top_p": 0}, "greater than 0"),
    ({"top_k": 0}, "greater than or equal to 1"),
    ({"seed": -1}, "greater than or equal to 0"),
    ({"prompt": "THE"}, "not in the vocabulary"),
    ({"prompt": "x" * 5000}, "at most 4000"),
])
def test_bad_generation_settings_are_422_before_the_stream(client: TestClient, params: dict, words: str) -> None:
    response = client.get("/api/generate", params={"run": "tiny", **params})
    assert response.status_code == 422
    assert words in json.dumps(response.json()["detail"])


def test_files_never_leave_the_runs_folder(client: TestClient, runs_root: Path, tmp_path: Path) -> None:
    ok = client.get("/files/transformer/report.html")
    assert ok.status_code == 200 and "the report" in ok.text and ok.headers["content-type"].startswith("text/html")
    secret = tmp_path / "secret.txt"
    secret.write_text("do not serve")
    (runs_root / "transformer" / "link.txt").symlink_to(secret)
    (runs_root / "linkdir").symlink_to(tmp_path, target_is_directory=True)
    for path in ["../../etc/passwd", "..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd", "/etc/passwd",
                 "transformer/../../secret.txt", "transformer/link.txt", "linkdir/secret.txt",
                 "tiny/model.safetensors", "tiny/config.json/..", "transformer\\report.html", "nothing.html",
                 str(secret)]:
        response = client.get(f"/files/{path}")
        assert response.status_code == 404, path
        assert "do not serve" not in response.text and "root:" not in response.text
    assert "linkdir" not in {r["id"].split("/")[0] for r in client.get("/api/runs").json()["runs"]}


def test_stages_show_status_headline_claims_and_report(client: TestClient) -> None:
    (stage,) = client.get("/api/stages").json()["stages"]
    assert stage["name"] == "transformer" and stage["status"] == "pass" and stage["headline"] == "val loss 1.500"
    assert [c["passed"] for c in stage["claims"]] == [True, False]
    assert client.get(stage["report"]).status_code == 200


def test_openapi_schema_names_every_endpoint(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path in ["/api/runs", "/api/run", "/api/metrics", "/api/analyze", "/api/heads", "/api/lens",
                 "/api/attribution", "/api/ablate", "/api/generate", "/api/stages", "/files/{path}"]:
        assert path in paths
    page = client.get("/")
    assert page.status_code == 200 and "/static/explorer.js" in page.text
    assert client.get("/static/explorer.js").status_code == 200


def test_the_api_docs_page_works_offline_and_lists_every_endpoint(client: TestClient) -> None:
    """/docs is the explorer's own page (FastAPI's loads Swagger UI from a CDN, blank offline)."""
    docs = client.get("/docs")
    assert docs.status_code == 200 and docs.headers["content-type"].startswith("text/html")
    assert "http://" not in docs.text and "https://" not in docs.text and "<script" not in docs.text
    for path in client.get("/openapi.json").json()["paths"]:
        assert f"<code>{path}</code>" in docs.text
    assert "run, text, k?" in docs.text                               # /api/analyze's JSON body, k optional
    assert client.get("/redoc").status_code == 404


def test_concurrent_requests_get_the_answers_of_serial_ones(client: TestClient) -> None:
    """Ablation hooks live on the shared model: the lock must keep them out of other requests."""
    clean = client.post("/api/analyze", json={"run": "tiny", "text": PROMPT}).json()["top"]
    ablated = client.post("/api/ablate", json={"run": "tiny", "text": PROMPT, "heads": [{"layer": 0, "head": 0}],
                                               "mlps": [1]}).json()["after"]
    failures: list[str] = []

    def worker(n: int) -> None:
        for i in range(6):
            if (n + i) % 2:
                got = client.post("/api/analyze", json={"run": "tiny", "text": PROMPT}).json()["top"]
                if got != clean:
                    failures.append("analyze")
            else:
                got = client.post("/api/ablate", json={"run": "tiny", "text": PROMPT, "mlps": [1],
                                                       "heads": [{"layer": 0, "head": 0}]}).json()["after"]
                if got != ablated:
                    failures.append("ablate")

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []


def test_a_new_checkpoint_is_picked_up(runs_root: Path, tmp_path: Path) -> None:
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(runs_root / "tiny", run)
    client = TestClient(create_app([run]))
    first = client.post("/api/analyze", json={"run": "copy", "text": PROMPT}).json()["top"]
    stamp = client.get("/api/run", params={"run": "copy"}).json()["checkpoint"]
    model = GPT.load(run)
    model.lm_head.weight.data[:] *= 2.0                                 # a "later" checkpoint
    model.save(run)
    stat = (run / "model.safetensors").stat()
    os.utime(run / "model.safetensors", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    second = client.post("/api/analyze", json={"run": "copy", "text": PROMPT}).json()["top"]
    assert second["probs"] != first["probs"]
    assert client.get("/api/run", params={"run": "copy"}).json()["checkpoint"] != stamp   # the page re-asks on this


# ----------------------------------------------------------------------------- the command
def test_explore_binds_loopback_by_default_and_warns_off_it(runs_root: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture) -> None:
    import socket

    import uvicorn

    from groundup.explorer.cli import is_loopback

    calls: list[dict] = []
    ports = []
    for _ in range(2):                                   # free ports (nothing listens: uvicorn.run is stubbed)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            ports.append(str(probe.getsockname()[1]))
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append(kw))
    with pytest.raises(SystemExit) as exited:                                          # port out of range
        groundup_main(["explore", str(runs_root / "tiny"), "--port", "0"])
    assert exited.value.code == 2 and "groundup: error:" in capsys.readouterr().err
    assert groundup_main(["explore", str(runs_root / "tiny"), "--port", ports[0]]) == 0
    assert calls[-1]["host"] == "127.0.0.1" and calls[-1]["port"] == int(ports[0])
    assert "warning" not in capsys.readouterr().err
    assert groundup_main(["explore", "--runs", str(runs_root), "--host", "0.0.0.0", "--port", ports[1]]) == 0
    assert calls[-1]["host"] == "0.0.0.0" and "no authentication" in capsys.readouterr().err
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.2")


def test_explore_refuses_bad_arguments_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert groundup_main(["explore", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("groundup: error: RUN_DIR") and err.count("\n") == 1
    assert groundup_main(["explore", "--runs", str(tmp_path / "missing")]) == 2
    assert "--runs" in capsys.readouterr().err
    stage = tmp_path / "basics"                          # a roadmap stage's folder is not a training run
    stage.mkdir()
    (stage / "metrics.json").write_text('{"stage": "basics"}')
    assert groundup_main(["explore", str(stage)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"groundup: error: RUN_DIR {stage} is a roadmap stage's folder") and err.count("\n") == 1
    assert f"groundup explore --runs {tmp_path}" in err
    (tmp_path / "notes.txt").write_text("x")             # a file is not a directory that is missing
    assert groundup_main(["explore", str(tmp_path / "notes.txt")]) == 2
    err = capsys.readouterr().err
    assert err == f"groundup: error: RUN_DIR {tmp_path / 'notes.txt'} is a file, not a run directory\n"


def test_explore_refuses_a_runs_folder_given_as_a_run(runs_root: Path, capsys: pytest.CaptureFixture) -> None:
    """`groundup explore runs` (the folder of runs, not one run) points at --runs instead of serving an
    empty run called 'runs' with a warning that it has no checkpoint yet."""
    assert groundup_main(["explore", str(runs_root)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"groundup: error: RUN_DIR {runs_root} is a folder of runs") and err.count("\n") == 1
    assert f"groundup explore --runs {runs_root}" in err


def test_explore_warns_about_a_run_without_a_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: None)
    with socket.socket() as probe:                       # a free port (nothing listens: uvicorn.run is stubbed)
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    (tmp_path / "fresh").mkdir()                         # a run whose training has not checkpointed yet
    assert groundup_main(["explore", str(tmp_path / "fresh"), "--port", port]) == 0
    assert f"groundup: warning: RUN_DIR {tmp_path / 'fresh'} has no checkpoint (model.safetensors) yet" in \
        capsys.readouterr().err


def test_explore_refuses_a_port_in_use(runs_root: Path, capsys: pytest.CaptureFixture) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert groundup_main(["explore", str(runs_root / "tiny"), "--port", str(port)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"groundup: error: cannot listen on 127.0.0.1:{port}") and "Traceback" not in err


def test_analysis_of_the_speed_target_shape(runs_root: Path) -> None:
    """analyze returns every head's map for the whole prompt (the benchmark times this call)."""
    run = analysis.load_run(runs_root / "tiny")
    out = analysis.analyze(run, (PROMPT * 3)[:32], k=10)
    assert analysis.unpack(out["attention"]).shape == (2, 2, 32, 32) and np.asarray(out["top"]["ids"]).shape == (32, 10)


def test_a_byte_level_bpe_run(tmp_path: Path) -> None:
    data = tmp_path / "text.txt"
    data.write_text("the café is naïve. " * 80, encoding="utf-8")
    _train(tmp_path / "bpe", data, "--tokenizer", "bpe", "--bpe-vocab-size", "280")
    client = TestClient(create_app([tmp_path / "bpe"]))
    body = client.post("/api/analyze", json={"run": "bpe", "text": "the café 😀"}).json()
    texts = [t["text"] for t in body["tokens"]]
    assert "".join(texts[:-4]) == "the café " and texts[-4:] == ["\\xf0", "\\x9f", "\\x98", "\\x80"]
    done = _events(client.get("/api/generate", params={"run": "bpe", "max_new_tokens": 8, "seed": 1}).text)[-1][1]
    assert done["n"] == 8


def test_an_attention_only_run_without_a_tokenizer(tmp_path: Path) -> None:
    from groundup.models.attn_only import AttnOnlyConfig, AttnOnlyLM
    from groundup.train import save_checkpoint

    cfg = AttnOnlyConfig(vocab_size=12, block_size=16, n_layer=2, n_head=2, n_embd=16)
    model = AttnOnlyLM(cfg).eval()
    save_checkpoint(tmp_path / "induction", model, config=cfg)
    client = TestClient(create_app([tmp_path / "induction"]))
    assert client.get("/api/run", params={"run": "induction"}).json()["model"] == "AttnOnlyLM"
    body = client.post("/api/analyze", json={"run": "induction", "text": "3 4 5 3 4"}).json()
    assert [t["id"] for t in body["tokens"]] == [3, 4, 5, 3, 4] and not body["has_mlp"]
    maps = model.attention_maps(np.asarray([[3, 4, 5, 3, 4]]))[:, 0]             # (L, H, T, T)
    np.testing.assert_allclose(analysis.unpack(body["attention"]), maps, atol=1e-6)
    assert "token ids 0..11" in client.post("/api/analyze", json={"run": "induction", "text": "3 x"}).json()["detail"]
    dla = client.post("/api/attribution", json={"run": "induction", "text": "3 4 5 3 4"}).json()
    assert abs(sum(dla["values"]) - dla["total"]) < 1e-3
    ablated = client.post("/api/ablate", json={"run": "induction", "text": "3 4 5 3 4", "kind": "mean",
                                               "heads": [{"layer": 1, "head": 0}]})
    assert ablated.status_code == 200
    assert client.post("/api/ablate", json={"run": "induction", "text": "3 4", "mlps": [0]}).status_code == 422
    assert client.get("/api/heads", params={"run": "induction"}).status_code == 200
    cached = client.get("/api/generate", params={"run": "induction", "prompt": "1 2", "max_new_tokens": 5})
    assert cached.status_code == 422 and "use_cache" in cached.json()["detail"]
    done = _events(client.get("/api/generate", params={"run": "induction", "prompt": "1 2", "max_new_tokens": 5,
                                                       "use_cache": False, "seed": 0}).text)[-1][1]
    assert done["n"] == 5 and all(0 <= i < 12 for i in done["ids"])


def test_the_command_serves_on_loopback_until_interrupted(runs_root: Path) -> None:
    import signal
    import socket
    import subprocess
    import sys
    import time

    import httpx

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "groundup.cli", "explore", str(runs_root / "tiny"), "--port",
                                str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.communicate()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).json() == {"status": "ok"}:
                    break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "the server did not answer"
                time.sleep(0.2)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert f"at http://127.0.0.1:{port}/" in out and "Traceback" not in err
    assert process.returncode in (0, 130)


def test_a_run_whose_checkpoint_cannot_be_loaded_still_shows_its_config_and_summary(runs_root: Path,
                                                                                   tmp_path: Path) -> None:
    """/api/run of a run with a damaged model.safetensors is its config, summary and run.json with the
    reason in ``model_error`` (the training tab still has something to show); the model's endpoints are 409."""
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(runs_root / "tiny", broken)
    data = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 2])
    client = TestClient(create_app([broken]))
    response = client.get("/api/run", params={"run": "broken"})
    assert response.status_code == 200
    view = response.json()
    assert view["config"]["n_layer"] == 2 and view["summary"]["iters"] == 3 and view["run"] is not None
    assert "cannot be loaded" in view["model_error"] and "tokenizer" not in view
    refused = client.post("/api/analyze", json={"run": "broken", "text": "the"})
    assert refused.status_code == 409 and "cannot be loaded" in refused.json()["detail"]
    assert client.get("/api/run", params={"run": "tiny-rotary"}).status_code == 404
    good = TestClient(create_app([runs_root / "tiny"])).get("/api/run", params={"run": "tiny"}).json()
    assert good["model_error"] is None and good["tokenizer"]["vocab_size"] > 0
