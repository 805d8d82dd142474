"""``groundup compare``: two stage runs and two training runs side by side (text and HTML); bad input is one
``groundup: error:`` line and exit status 2."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from groundup.cli import main

TEXT = "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n" * 40


@pytest.fixture(scope="module")
def stage_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("stage-runs")
    assert main(["run", "basics", "--tiny", "--out", str(root / "a")]) == 0
    assert main(["run", "basics", "--tiny", "--out", str(root / "b"), "--set", "epochs=2"]) == 0
    return root / "a" / "basics", root / "b" / "basics"


def _train(out: Path, data: Path, *extra: str) -> None:
    assert main(["train", "gpt", "--data", str(data), "--out", str(out), "--max-iters", "4", "--no-progress",
                 "--model.n_layer=1", "--model.n_embd=16", "--model.n_head=2", "--model.block_size=16",
                 "--train.eval_interval=2", "--train.eval_iters=2", *extra]) == 0


def test_two_stage_runs_side_by_side(stage_runs, tmp_path, capsys):
    a, b = stage_runs
    out = tmp_path / "cmp" / "page.html"
    assert main(["compare", str(a), str(b), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "headline: softmax test accuracy: A " in text and "higher is better" in text
    assert re.search(r"softmax regression epochs\s+3\s+2\s+-1", text)          # the setting that differs
    assert "claims:" in text and f"page: {out}" in text
    page = out.read_text()
    assert "softmax regression epochs" in page and "Every number" in page
    for src in re.findall(r'<img src="([^"]+)"', page):
        assert (out.parent / src).resolve().is_file(), src                       # images by relative path
    assert len(re.findall(r'<img src="', page)) >= 4                            # each plot of A beside B's


def test_two_training_runs_side_by_side_with_bits_per_character(tmp_path, capsys):
    data = tmp_path / "text.txt"
    data.write_text(TEXT, encoding="utf-8")
    runs = tmp_path / "runs"
    _train(runs / "char", data)
    _train(runs / "bpe", data, "--tokenizer", "bpe", "--bpe-vocab-size", "270")
    for name in ("char", "bpe"):
        report = (runs / name / "report.html").read_text()
        assert "bits per character" in report and "groundup sample" in report and 'src="loss.png"' in report
        assert "<h2>The code</h2>" in report and "groundup/models/gpt.py:" in report
    index = (runs / "index.html").read_text()
    assert 'href="char/report.html"' in index and 'href="bpe/report.html"' in index
    capsys.readouterr()
    out = tmp_path / "tt.html"
    assert main(["compare", str(runs / "char"), str(runs / "bpe"), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "headline: val bits per character" in text and re.search(r"tokenizer\s+char\s+bpe", text)
    assert out.with_suffix(".png").is_file() and 'src="tt.png"' in out.read_text()


@pytest.mark.parametrize("args, message", [
    (["nowhere", "nowhere"], "run not found: nowhere"),
    ([".", "."], "holds no run"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    assert main(["compare", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("groundup: error: ") and message in err and len(err.splitlines()) == 1


def test_out_must_be_an_html_file(stage_runs, tmp_path, capsys):
    a, b = stage_runs
    assert main(["compare", str(a), str(b), "--out", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err


def test_different_headlines_are_not_subtracted(stage_runs, tmp_path, capsys):
    """A stage's accuracy and another stage's (or a training run's) bits per character are different measures:
    the headline shows both values but no change and no "higher is better"."""
    a, _ = stage_runs
    assert main(["run", "mlp", "--tiny", "--out", str(tmp_path / "m")]) == 0
    capsys.readouterr()
    out = tmp_path / "page.html"
    assert main(["compare", str(a), str(tmp_path / "m" / "mlp"), "--out", str(out)]) == 0
    line = next(t for t in capsys.readouterr().out.splitlines() if t.startswith("headline:"))
    assert line.startswith("headline: softmax test accuracy / MLP test accuracy: A ")
    assert line.endswith("(different measures, not compared)") and "better" not in line and "%" not in line
    headline = re.search(r'<p class="headline">(.*?)</p>', out.read_text()).group(1)
    assert "different measures, not compared" in headline and "is better" not in headline
