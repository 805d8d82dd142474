"""The explorer's page in a real browser: Debian's Chromium driven headless by Playwright for Python
against a live uvicorn server on 127.0.0.1.

Type a prompt and see token chips and non-empty attention maps; click a token and see the top-k
bars; switch a head and an MLP off and see the distribution change; generate 20 tokens with the KV
cache on and off and get the same text for the same seed; watch a run's curve grow while its
metrics.jsonl grows; open a stage's report. Screenshots go to $GROUNDUP_TEST_ARTIFACTS (default: the
test's tmp_path).

Needs ``pip install playwright`` (no browser download: it drives /usr/bin/chromium from
``apt-get install chromium``). Without them the test skips with a warning saying what is missing;
with GROUNDUP_REQUIRE_BROWSER=1 (set it in CI) it fails instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import require_browser


def _require_browser() -> str:
    return require_browser("explorer browser test")


@contextlib.contextmanager
def _page(url: str, height: int = 1600) -> Iterator[tuple[Any, list[str]]]:
    """Headless Chromium open at ``url``: (the page, the page's uncaught JavaScript errors so far)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_require_browser(), args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1300, "height": height})
            errors: list[str] = []
            page.on("pageerror", lambda err: errors.append(str(err)))
            page.goto(url)
            yield page, errors
        finally:
            browser.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A live uvicorn on a free loopback port serving a runs folder: a tiny run, a live run, a stage."""
    _require_browser()
    pytest.importorskip("uvicorn")
    import uvicorn
    from test_explorer import TEXT, _train

    from groundup.explorer.app import create_app

    root = tmp_path_factory.mktemp("runs")
    data = root.parent / "text.txt"
    data.write_text(TEXT, encoding="utf-8")
    _train(root / "tiny", data)
    live = root / "live"
    live.mkdir()
    (live / "metrics.jsonl").write_text("".join(_records(0, 3)))
    stage = root / "transformer"
    stage.mkdir()
    (stage / "report.html").write_text("<html><head><title>transformer report</title></head><body>ok</body></html>")
    (stage / "metrics.json").write_text(json.dumps({
        "stage": "transformer", "title": "The transformer", "status": "pass",
        "headline": {"text": "val loss 1.500"}, "claims": [{"statement": "masking works", "passed": True,
                                                             "detail": "0 <= 0"}]}))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app([], root), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    assert server.servers[0].sockets[0].getsockname()[0] == "127.0.0.1"
    yield f"http://127.0.0.1:{port}/", root
    server.should_exit = True
    thread.join(timeout=10)


def _records(start: int, stop: int) -> list[str]:
    return [json.dumps({"kind": "eval", "iter": 10 * i, "train_loss": 3.0 - 0.1 * i, "val_loss": 3.1 - 0.1 * i,
                        "lr": 1e-3, "wall_s": float(i)}) + "\n" for i in range(start, stop)]


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = Path(os.environ.get("GROUNDUP_TEST_ARTIFACTS") or tmp_path_factory.mktemp("screenshots"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_the_page_in_chromium(served: tuple[str, Path], artifacts: Path) -> None:
    url, root = served
    prompt = "the cat sat on the mat"
    with _page(url) as (page, errors):
        page.wait_for_selector(".chip")                       # the page fills in a sample first

        # tokens, attention maps, top-k bars
        page.fill("#text", prompt)
        page.wait_for_function(f"document.querySelectorAll('#chips .chip').length === {len(prompt)}")
        assert page.locator(".head-map").count() == 2 * 2
        inked = page.evaluate("""() => [...document.querySelectorAll('.head-map')].map((c) => {
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let n = 0; for (let i = 0; i < d.length; i += 4) if (d[i] < 250) n++; return n; })""")
        assert all(n >= len(prompt) for n in inked), inked     # at least the diagonal of every map
        page.click(".chip[data-pos='3']")
        page.wait_for_function("document.querySelector('#pos-label').textContent.includes('position 3')")
        page.wait_for_selector("#bars .bar")
        assert page.locator("#bars .bar").count() == 10
        page.wait_for_selector(".attn-line")
        bars = page.inner_text("#bars")
        page.screenshot(path=str(artifacts / "explorer-inside.png"), full_page=True)

        # click-to-ablate: a head and an MLP
        page.click("[data-ablate='1,0']")
        page.click("[data-ablate-mlp='0']")
        page.wait_for_function("document.querySelector('#ablation-summary').textContent.includes('L1H0, MLP 0')")
        page.wait_for_function(f"document.querySelector('#bars').innerText !== {json.dumps(bars)}")
        assert "→" in page.inner_text("#bars")
        page.screenshot(path=str(artifacts / "explorer-ablated.png"), full_page=True)

        # generation, with and without the KV cache
        page.click("#tabs button[data-tab=generate]")
        page.fill("#prompt", "the ")
        page.fill("#g-n", "20")
        page.fill("#g-seed", "5")
        texts = []
        for cache in (True, False):
            page.set_checked("#g-cache", cache)
            page.evaluate("document.querySelector('#g-out').dataset.done = ''")
            page.click("#g-go")
            page.wait_for_selector("#g-out[data-done=true]")
            texts.append(page.inner_text("#g-out .generated"))
            assert "tokens/s" in page.inner_text("#g-speed")
        assert texts[0] == texts[1] and len(texts[0]) == 20
        page.screenshot(path=str(artifacts / "explorer-generate.png"), full_page=True)

        # a training run's curve grows without a reload
        page.select_option("#run", "live")
        page.click("#tabs button[data-tab=training]")
        page.wait_for_function("document.querySelector('#chart').dataset.points === '6'")  # 3 evals x 2 series
        # a reset and a refresh at once (a run chosen while its tab opens) fetch the records once
        page.evaluate("Promise.all([refreshMetrics(true), refreshMetrics(false)])")
        page.wait_for_function("!state.metricsBusy")
        assert page.evaluate("document.querySelector('#chart').dataset.points") == "6"
        with open(root / "live" / "metrics.jsonl", "a") as f:
            f.writelines(_records(3, 6))
        page.wait_for_function("document.querySelector('#chart').dataset.points === '12'", timeout=10_000)
        assert "following live" in page.inner_text("#t-live")
        page.screenshot(path=str(artifacts / "explorer-training.png"), full_page=True)

        # the roadmap and a stage's report
        page.click("#tabs button[data-tab=roadmap]")
        page.wait_for_selector(".stage[data-stage=transformer]")
        assert "PASS" in page.inner_text(".stage[data-stage=transformer]")
        with page.context.expect_page() as opened:
            page.click(".stage[data-stage=transformer] .report-link")
        report = opened.value
        report.wait_for_load_state()
        assert report.title() == "transformer report"
        page.screenshot(path=str(artifacts / "explorer-roadmap.png"), full_page=True)
        assert errors == [] and page.inner_text("#status") == ""


INSIDE_PANELS = ("#chips", "#bars", "#dla", "#attn", "#lens", "#lines")


def _inside_is_empty(page) -> bool:
    """Whether the Inside tab shows no result: no chips, bars, attribution, maps, lens, lines or labels."""
    return page.evaluate("""(panels) => panels.every((id) => document.querySelector(id).children.length === 0)
        && ['#dla-label', '#lines-label', '#ablation-summary']
            .every((id) => document.querySelector(id).textContent === '')
        && document.querySelector('#pos-label').textContent === '…'""", list(INSIDE_PANELS))


def test_the_inside_tab_never_shows_another_texts_results(served: tuple[str, Path]) -> None:
    """A refused text, an empty text and a run with no checkpoint clear the Inside tab, rather than leaving
    the previous text's tokens, bars, attribution and lens under the new text; a later text fills it again."""
    url, _ = served
    with _page(url) as (page, errors):
        page.wait_for_selector("#dla .dla-row")
        page.fill("#text", "the cat Z")                            # 'Z' is not in the tiny run's vocabulary
        page.wait_for_function("document.querySelector('#status').textContent.includes('not in the vocabulary')")
        assert _inside_is_empty(page)
        page.fill("#text", "")
        page.wait_for_function("document.querySelector('#status').textContent === ''")
        assert _inside_is_empty(page)
        page.click("#ablate-clear")                                # nothing to switch back on: no error
        page.fill("#text", "the cat")
        page.wait_for_selector("#dla .dla-row")
        page.wait_for_selector("#lens-table")
        assert page.locator("#chips .chip").count() == len("the cat")
        page.select_option("#run", "live")                          # metrics only, no checkpoint
        page.wait_for_function("state.run === 'live' && state.info !== null")
        page.wait_for_timeout(300)
        assert _inside_is_empty(page)
        assert page.inner_text("#heads") == ""
        assert errors == []


def test_a_run_followed_while_it_trains_shows_its_model_once_it_has_a_checkpoint(served: tuple[str, Path]) -> None:
    """A run picked before it has a checkpoint: when its first checkpoint is written, the run list drops
    '(no checkpoint yet)' and the Inside tab analyses the text, without choosing the run again."""
    import shutil

    url, root = served
    later = root / "later"
    later.mkdir()
    (later / "metrics.jsonl").write_text("".join(_records(0, 2)))
    with _page(url) as (page, errors):
        page.wait_for_selector("#chips .chip")
        page.select_option("#run", "later")
        page.wait_for_function("state.run === 'later' && state.info !== null && !state.info.has_model")
        assert "no checkpoint yet" in page.inner_text("#run option[value=later]")
        assert page.locator("#chips .chip").count() == 0
        for name in ("config.json", "tokenizer.json", "model.safetensors"):   # the checkpoint last
            shutil.copy(root / "tiny" / name, later / name)
        page.wait_for_selector("#chips .chip", timeout=15_000)
        page.wait_for_selector("#dla .dla-row")
        assert "no checkpoint yet" not in page.inner_text("#run option[value=later]")
        assert page.locator(".head-map").count() == 2 * 2
        (later / "summary.json").write_text(json.dumps({"val_loss": 2.5, "iters": 3}))
        page.click("#tabs button[data-tab=training]")
        page.wait_for_function("document.querySelector('#t-live').textContent === ''", timeout=15_000)
        assert "2.5" in page.inner_text("#summary")
        assert errors == []


def test_a_refused_prompt_s_error_goes_once_a_generation_starts(served: tuple[str, Path]) -> None:
    """The status line's error about a refused prompt does not stay up beside the next, good generation."""
    url, _ = served
    with _page(url, 1000) as (page, errors):
        page.wait_for_selector("#chips .chip")
        page.click("#tabs button[data-tab=generate]")
        page.fill("#g-n", "5")
        page.fill("#prompt", "the Z")                              # 'Z' is not in the tiny run's vocabulary
        page.click("#g-go")
        page.wait_for_function("document.querySelector('#status').textContent.includes('prompt')")
        page.wait_for_function("!document.querySelector('#g-go').disabled")
        page.fill("#prompt", "the ")
        page.click("#g-go")
        page.wait_for_selector("#g-out[data-done=true]")
        assert page.inner_text("#status") == "" and errors == []


def test_runs_started_later_join_the_list_and_a_newer_checkpoint_refreshes_the_inside_tab(
        served: tuple[str, Path]) -> None:
    """A run that appears after the page loaded joins the run lists without a reload; when the followed
    run writes a newer checkpoint, the Inside tab's numbers are recomputed from it (not left from the old)."""
    import shutil

    from safetensors.numpy import save_file

    from groundup.train.safetensors_file import read_tensors

    url, root = served
    moving = root / "moving"
    moving.mkdir()
    for name in ("config.json", "tokenizer.json", "model.safetensors"):
        shutil.copy(root / "tiny" / name, moving / name)
    (moving / "metrics.jsonl").write_text("".join(_records(0, 2)))   # no summary.json: still training
    with _page(url, 1000) as (page, errors):
        page.wait_for_selector("#chips .chip")
        newcomer = root / "newcomer"
        newcomer.mkdir()
        (newcomer / "metrics.jsonl").write_text("".join(_records(0, 1)))
        page.wait_for_selector("#run option[value=newcomer]", state="attached", timeout=15_000)
        page.wait_for_selector("#compare option[value=newcomer]", state="attached")

        page.select_option("#run", "moving")
        page.wait_for_function("state.run === 'moving' && state.analysis !== null")
        before = page.evaluate("[state.info.checkpoint, state.analysis.loss]")
        arrays, metadata = read_tensors(moving / "model.safetensors")
        arrays = {k: (a * 3 if a.dtype.kind == "f" else a) for k, a in arrays.items()}   # other weights
        save_file(arrays, str(moving / "next.safetensors"), metadata=metadata)
        os.replace(moving / "next.safetensors", moving / "model.safetensors")
        page.wait_for_function(f"state.info.checkpoint !== {json.dumps(before[0])} && state.analysis !== null "
                               f"&& state.analysis.loss !== {json.dumps(before[1])}", timeout=15_000)
        assert errors == []
