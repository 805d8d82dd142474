"""Every report page in a real browser: headless Chromium (Playwright for Python) at 1280 px.

Each stage runs ``--tiny`` into a temporary runs folder, a tiny GPT is trained into it with ``groundup
train`` (its report and index row), and two runs are compared; then every page (each stage's
report.html, the training run's, the comparison and index.html) is opened at a 1280 px wide window:
no page scrolls sideways (``document.documentElement.scrollWidth <= 1280``) and every image has loaded
(``naturalWidth > 0``). Screenshots go to $GROUNDUP_TEST_ARTIFACTS (default: the test's tmp folder).

Needs ``pip install playwright`` and a Chromium (``/usr/bin/chromium``; no browser download). Without
them the test skips saying what is missing; with GROUNDUP_REQUIRE_BROWSER=1 it fails instead.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import require_browser

from groundup.cli import main
from groundup.roadmap import load_stages, run_stage

WIDTH = 1280
TEXT = "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n" * 40


def _require_browser() -> str:
    return require_browser("report browser test")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A runs folder with every stage (tiny), a training run and a comparison page."""
    _require_browser()
    root = tmp_path_factory.mktemp("runs") / "runs"
    stages = load_stages()
    for stage in stages:
        record = run_stage(stage, root, tiny=True, all_stages=stages)
        assert record["status"] == "smoke", (stage.name, record.get("error"))
    data = root.parent / "text.txt"
    data.write_text(TEXT, encoding="utf-8")
    assert main(["train", "gpt", "--data", str(data), "--out", str(root / "gpt-tiny"), "--max-iters", "4",
                 "--no-progress", "--model.n_layer=1", "--model.n_embd=16", "--model.n_head=2",
                 "--model.block_size=16", "--train.eval_interval=2", "--train.eval_iters=2"]) == 0
    assert main(["compare", str(root / stages[0].name), str(root / "gpt-tiny"),
                 "--out", str(root / "compare" / "page.html")]) == 0
    return root


def _pages(root: Path) -> list[Path]:
    return [root / "index.html", *sorted(root.glob("*/report.html")), root / "compare" / "page.html"]


@pytest.mark.slow
def test_every_report_page_fits_1280px_and_every_image_loads(site):
    from playwright.sync_api import sync_playwright

    artifacts = Path(os.environ.get("GROUNDUP_TEST_ARTIFACTS", site.parent / "screenshots"))
    artifacts.mkdir(parents=True, exist_ok=True)
    pages = _pages(site)
    names = {p.parent.name for p in pages}
    assert {s.name for s in load_stages()} | {"gpt-tiny", "compare"} <= names
    problems = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=_require_browser(), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": WIDTH, "height": 900})
            for path in pages:
                page.goto(path.resolve().as_uri())
                page.wait_for_load_state("load")
                width = page.evaluate("document.documentElement.scrollWidth")
                broken = page.evaluate("[...document.images].filter(i => !(i.complete && i.naturalWidth > 0))"
                                       ".map(i => i.getAttribute('src'))")
                images = page.evaluate("document.images.length")
                name = path.relative_to(site).as_posix().replace("/", "__")
                page.screenshot(path=str(artifacts / f"{name}.png"), full_page=False)
                if width > WIDTH:
                    problems.append(f"{path.relative_to(site)}: scrollWidth {width} > {WIDTH}")
                if broken:
                    problems.append(f"{path.relative_to(site)}: images not loaded: {broken}")
                if path.name == "report.html" and path.parent.name != "gpt-tiny":
                    assert images >= 1 and "The code" in page.content(), path
        finally:
            browser.close()
    assert not problems, "\n".join(problems)
