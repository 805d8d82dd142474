"""The roadmap: each stage in a tiny configuration writes its metrics, plots, report and index entry;
the CLI exits non-zero when a claim fails; the stage helpers and models against independent oracles."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest

import groundup as gu
from groundup.cli import main
from groundup.models.cnn import CNN, CNNConfig
from groundup.models.mlp import MLP, MLPConfig
from groundup.roadmap import Stage, StageResult, claims, classify, load_stages, run_stage, run_stages, stages
from groundup.roadmap.report import render_stage
from groundup.roadmap.stages import basics, cnn, mlp

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------- the real stages, tiny
@pytest.mark.slow
@pytest.mark.parametrize("name", ["basics", "mlp", "cnn"])
def test_stage_writes_metrics_plots_report_and_index(tmp_path, monkeypatch, name):
    """Each real stage, tiny, through the CLI; every at-least threshold is raised out of reach, so the
    stage's claims do not hold; a tiny run is a smoke test, so the command still exits 0 with status "smoke"."""
    original, original_ge = claims.at_least, claims.ge
    monkeypatch.setattr(claims, "at_least", lambda n, s, vn, v, t: original(n, s, vn, v, math.inf))
    monkeypatch.setattr(claims, "ge", lambda label, v, bound: original_ge(label, v, math.inf))
    all_stages = load_stages()
    assert main(["run", name, "--tiny", "--out", str(tmp_path)]) == 0
    out = tmp_path / name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "smoke", metrics.get("traceback", metrics.get("error"))
    assert metrics["claims_passed"] is False
    assert any("inf" in str(c["threshold"]) and not c["passed"] for c in metrics["claims"])
    from groundup.roadmap.provenance import unmeasured_numbers

    assert unmeasured_numbers(metrics) == []           # every number in the prose was measured in this run
    assert metrics["stage"] == name and metrics["mode"] == "tiny"
    assert metrics["claims"], "a stage makes at least one claim"
    for claim in metrics["claims"]:
        assert set(claim) >= {"name", "statement", "passed", "values", "threshold", "detail"}
        assert isinstance(claim["passed"], bool) and claim["values"]
        assert all(isinstance(v, int | float) for v in claim["values"].values())
    assert isinstance(metrics["headline"]["value"], int | float)
    assert metrics["metrics"] and metrics["settings"]

    report = (out / "report.html").read_text()
    assert len(metrics["plots"]) >= 3
    for plot in metrics["plots"]:
        assert (out / plot["file"]).read_bytes()[:8] == PNG_MAGIC
        assert f'src="{plot["file"]}"' in report
    for claim in metrics["claims"]:
        assert claim["statement"].replace("'", "&#x27;") in report
    # self-contained: no scripts, no external styles, fonts or images
    assert "<script" not in report and not re.search(r"""(src|href)=["']?(https?:)?//""", report)
    assert "tiny test configuration" in report

    index = (tmp_path / "index.html").read_text()
    assert f'href="{name}/report.html"' in index
    for other in all_stages:  # every registered stage is listed, run or not
        assert other.name in index


def test_a_quick_report_says_how_to_run_the_full_version(tmp_path):
    """`groundup run STAGE` for the roadmap's stages; run_stage for a stage of one's own (the command
    does not know it)."""
    own = run_stage(_fake_stage("mine", 0.9, 0.5), tmp_path, quick=True)
    assert own["mode"] == "quick"
    page = (tmp_path / "mine" / "report.html").read_text()
    assert "run_stage(stage, quick=False)" in page and "groundup run mine" not in page
    from groundup.roadmap.report import _mode_banner

    assert "groundup run pretrain-finetune</code> without <code>--quick" in _mode_banner(
        {"mode": "quick", "stage": "pretrain-finetune", "settings": {}})


def test_runs_are_seeded(tmp_path):
    """The runner seeds Python, NumPy and groundup, and ctx.rng streams depend on the seed only."""
    import random

    def run(ctx):
        values = [random.random(), float(np.random.rand()), float(gu.randn(1).item()), float(ctx.rng(1).random())]
        return StageResult(headline=("v", values[0]), metrics={"values": values})

    stage = Stage("seeded", "draws random numbers", run=run)
    first, second, other = (run_stage(stage, tmp_path / d, seed=s)["metrics"]["values"]
                            for d, s in (("a", 5), ("b", 5), ("c", 6)))
    assert first == second and all(a != b for a, b in zip(first, other))


# ---------------------------------------------------------------------------- CLI
def _fake_stage(name: str, value: float, threshold: float, crash: bool = False) -> Stage:
    def run(ctx):
        if crash:
            raise RuntimeError("boom")
        fig = ctx.figure(2, 2)
        fig.subplots().plot([0, 1], [value, value])
        plot = ctx.savefig(fig, "line.png", "a line")
        return StageResult(headline=("score", value), summary=["A fake stage <b>escaped</b>."],
                           metrics={"score": value, "curve": list(range(50))}, plots=[plot],
                           claims=[claims.at_least(f"{name}.score", "The score is high enough", "score", value,
                                                   threshold)])

    return Stage(name, f"fake stage {name}", run=run)


@pytest.fixture
def fake_registry(monkeypatch):
    """Replace the stage list the CLI sees with fake stages: good passes, bad fails, crash raises."""
    fakes = [_fake_stage("good", 0.9, 0.5), _fake_stage("bad", 0.2, 0.5), _fake_stage("crash", 0, 0, crash=True)]
    monkeypatch.setattr("groundup.roadmap.cli.load_stages", lambda: fakes)
    return fakes


def test_cli_exit_status_follows_claims(tmp_path, capsys, fake_registry):
    assert main(["run", "good", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "PASS  The score is high enough  (score 0.9 >= 0.5)" in out
    assert str((tmp_path / "index.html").resolve()) in out.replace("\n", "")

    assert main(["run", "bad", "--out", str(tmp_path)]) == 1
    assert "FAIL  The score is high enough  (score 0.2 >= 0.5)" in capsys.readouterr().out
    bad = json.loads((tmp_path / "bad" / "metrics.json").read_text())
    assert bad["status"] == "fail" and bad["claims"][0] == {
        "name": "bad.score", "statement": "The score is high enough", "passed": False, "values": {"score": 0.2},
        "threshold": 0.5, "detail": "score 0.2 >= 0.5"}

    assert main(["run", "crash", "--out", str(tmp_path)]) == 1
    crash = json.loads((tmp_path / "crash" / "metrics.json").read_text())
    assert crash["status"] == "error" and "boom" in crash["error"] and "Traceback" in crash["traceback"]

    assert main(["run", "nonexistent", "--out", str(tmp_path)]) == 2


def test_cli_run_all_runs_every_stage_despite_failures(tmp_path, capsys, fake_registry):
    assert main(["run", "all", "--out", str(tmp_path)]) == 1
    for fake in fake_registry:
        assert (tmp_path / fake.name / "report.html").is_file()
    index = (tmp_path / "index.html").read_text()
    assert all(f'href="{f.name}/report.html"' in index for f in fake_registry)
    assert "score 0.9" in index  # headline numbers
    assert "&lt;b&gt;escaped&lt;/b&gt;" in (tmp_path / "good" / "report.html").read_text()


def test_roadmap_lists_stages_in_order_with_last_run(tmp_path, capsys, fake_registry):
    assert main(["roadmap", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.index("good") < out.index("bad") < out.index("crash") and "not run yet" in out
    main(["run", "good", "--out", str(tmp_path)])
    capsys.readouterr()
    main(["roadmap", "--out", str(tmp_path)])
    assert "PASS score 0.9" in capsys.readouterr().out


def test_real_roadmap_lists_the_registered_stages(tmp_path, capsys):
    assert main(["roadmap", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.index("basics") < out.index("mlp") < out.index("cnn")


def test_load_stages_follows_the_order_and_skips_missing_modules(monkeypatch):
    monkeypatch.setattr(stages, "STAGE_ORDER", ("cnn", "not_written_yet", "basics"))
    assert [s.name for s in stages.load_stages()] == ["cnn", "basics"]


def test_run_stages_continues_after_a_crash(tmp_path):
    fakes = [_fake_stage("crash", 0, 0, crash=True), _fake_stage("good", 1.0, 0.5)]
    records = run_stages(fakes, tmp_path)
    assert [r["status"] for r in records] == ["error", "pass"]


def test_a_run_that_errors_or_is_interrupted_keeps_the_last_finished_run(tmp_path):
    """The last finished run of a stage (metrics, plots, report) survives a re-run that crashes or is
    interrupted; the crash's record goes beside it as error.json; a run that finishes replaces it."""
    run_stage(_fake_stage("s", 0.9, 0.5), tmp_path)
    kept = {p.name: p.read_bytes() for p in (tmp_path / "s").iterdir()}
    assert {"metrics.json", "report.html", "line.png"} <= set(kept)

    crashed = run_stage(_fake_stage("s", 0, 0, crash=True), tmp_path)
    assert crashed["status"] == "error" and "boom" in crashed["error"]
    after = {p.name: p.read_bytes() for p in (tmp_path / "s").iterdir()}
    assert json.loads(after.pop("error.json"))["error"] == crashed["error"]
    assert after == kept                                   # the finished run, byte for byte
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.html", "s"]   # nothing set aside is left

    def interrupted(ctx):
        ctx.savefig(ctx.figure(2, 2), "half.png")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_stage(Stage("s", "interrupted", run=interrupted), tmp_path)
    assert json.loads((tmp_path / "s" / "metrics.json").read_text())["status"] == "pass"
    assert not (tmp_path / "s" / "half.png").exists() and sorted(p.name for p in tmp_path.iterdir()) == [
        "index.html", "s"]

    (tmp_path / "s" / "my notes.txt").write_text("mine")   # a file of one's own in the stage's folder
    again = run_stage(_fake_stage("s", 0.2, 0.5), tmp_path)   # finishes (a failed claim is a finished run)
    assert (tmp_path / "s" / "my notes.txt").read_text() == "mine"   # kept, as a re-run in place kept it
    assert again["status"] == "fail" and not (tmp_path / "s" / "error.json").exists()
    assert json.loads((tmp_path / "s" / "metrics.json").read_text())["status"] == "fail"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.html", "s"]


def test_a_run_killed_while_its_last_run_was_set_aside_gets_it_back(tmp_path):
    """A process killed mid-run leaves ``.STAGE.previous`` and a partial run: the next run puts the
    finished one back first, so an error then keeps it; the index never lists the set-aside run."""
    run_stage(_fake_stage("s", 0.9, 0.5), tmp_path)
    (tmp_path / "s").rename(tmp_path / ".s.previous")      # as a killed run leaves it
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "partial.png").write_bytes(b"x")
    run_stage(_fake_stage("s", 0, 0, crash=True), tmp_path)
    assert json.loads((tmp_path / "s" / "metrics.json").read_text())["status"] == "pass"
    assert not (tmp_path / "s" / "partial.png").exists() and not (tmp_path / ".s.previous").exists()
    assert ".s.previous" not in (tmp_path / "index.html").read_text()


def test_mnist_unavailable_is_a_clear_stage_error(tmp_path, monkeypatch):
    from groundup.data import DatasetUnavailableError

    def offline(*args, **kwargs):
        raise DatasetUnavailableError("could not download (offline)")

    monkeypatch.setattr("groundup.data.load_mnist", offline)
    record = run_stage(mlp.STAGE, tmp_path, tiny=True, options={"dataset": "mnist"})
    assert record["status"] == "error" and "MNIST is not available" in record["error"]
    assert "traceback" not in record


@pytest.mark.slow
def test_cnn_stage_on_28px_images(tmp_path, monkeypatch):
    """The MNIST branch, fed digits upscaled to 28x28 (no download in tests)."""
    from groundup.data import MNIST

    x, y = classify.load_digits_arrays()
    big = np.pad(np.kron(x, np.ones((3, 3), np.float32)), ((0, 0), (2, 2), (2, 2)))  # (N, 28, 28)
    monkeypatch.setattr("groundup.data.load_mnist", lambda *a, **k: MNIST(big[:1500], y[:1500], big[1500:], y[1500:]))
    record = run_stage(cnn.STAGE, tmp_path, tiny=True, options={"dataset": "mnist"})
    assert record["status"] == "smoke", record.get("traceback")
    assert record["metrics"]["classification"]["dataset"] == "mnist"
    assert "MNIST" in record["claims"][0]["statement"]


# ---------------------------------------------------------------------------- claims and report
def test_claims_compare_and_never_pass_nan():
    assert claims.at_least("a", "s", "x", 0.5, 0.5).passed
    assert not claims.at_least("a", "s", "x", 0.49, 0.5).passed
    assert claims.at_most("a", "s", "x", 1e-7, 1e-6).passed
    assert not claims.at_most("a", "s", "x", float("nan"), 1e-6).passed
    assert claims.greater("a", "s", "p", 2.0, "q", 1.0).passed
    assert not claims.greater("a", "s", "p", 1.0, "q", 1.0).passed
    assert not claims.check("a", "s", True, {"x": float("inf")}, 0, "").passed


def test_report_escapes_run_data():
    record = {"stage": "x", "status": "fail", "mode": "quick", "quick": True, "settings": {
        "epochs": {"kind": "budget", "value": 2, "full": 9}}, "summary_text": ["<script>alert(1)</script>"],
              "claims": [claims.at_least("x.y", "a < b", "v", 1.0, 2.0).to_dict()], "metrics": {"k": [1.0] * 40}}
    page = render_stage(record)
    assert "<script>" not in page and "&lt;script&gt;" in page and "a &lt; b" in page
    assert "quick run" in page and "40 values" in page


# ---------------------------------------------------------------------------- stage helpers
def test_shift_images_moves_pixels_and_blanks_the_border():
    x = np.arange(16, dtype=np.float32).reshape(1, 4, 4)
    right = cnn.shift_images(x, 1, 0)
    np.testing.assert_array_equal(right[0, :, 1:], x[0, :, :-1])
    np.testing.assert_array_equal(right[0, :, 0], 0)
    up = cnn.shift_images(x, 0, -2)
    np.testing.assert_array_equal(up[0, :2], x[0, 2:])
    np.testing.assert_array_equal(up[0, 2:], 0)


def test_kfold_tests_every_index_once():
    splits = classify.kfold(23, 5, seed=1)
    tested = np.concatenate([test for _, test in splits])
    np.testing.assert_array_equal(np.sort(tested), np.arange(23))
    for train, test in splits:
        assert not set(train) & set(test) and len(train) + len(test) == 23


def test_kmeans_purity_and_pca_against_sklearn():
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(0)
    centres = np.array([[0, 0], [10, 0], [0, 10]], dtype=float)
    labels = np.repeat(np.arange(3), 30)
    points = centres[labels] + rng.standard_normal((90, 2))
    _, assign, _ = basics.kmeans(points, 3, rng, n_init=3)
    assert basics.cluster_purity(assign, labels) == 1.0
    assert basics.cluster_purity(np.zeros(90, dtype=int), labels) == pytest.approx(1 / 3)

    x = rng.standard_normal((50, 6)) @ rng.standard_normal((6, 6))
    projected, _, ratio = basics.pca(x, 2)
    reference = PCA(2).fit(x)
    np.testing.assert_allclose(ratio, reference.explained_variance_ratio_, rtol=1e-10)
    np.testing.assert_allclose(np.abs(projected), np.abs(reference.transform(x)), atol=1e-10)  # up to sign


def test_backprop_by_hand_matches_engine_and_finite_differences():
    rng = np.random.default_rng(0)
    x, y = rng.random((6, 5)), rng.integers(0, 10, 6)
    check = mlp.backprop_check(x, y, rng, hidden=4)
    assert check["max_hand_vs_engine"] < 1e-12
    assert check["max_hand_vs_finite_differences"] < 1e-7
    assert check["n_parameters"] == 4 * 5 + 4 + 10 * 4 + 10


def test_confusion_matrix_counts():
    cm = classify.confusion_matrix(np.array([0, 1, 1, 2]), np.array([0, 2, 1, 2]), 3)
    np.testing.assert_array_equal(cm, [[1, 0, 0], [0, 1, 1], [0, 0, 1]])


# ---------------------------------------------------------------------------- models against NumPy references
def _numpy_conv2d(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, padding: int) -> np.ndarray:
    """Direct cross-correlation, one output pixel at a time: x (N, C, H, W), weight (O, C, k, k)."""
    k = weight.shape[-1]
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    n, _, h, w = xp.shape
    out = np.zeros((n, weight.shape[0], h - k + 1, w - k + 1))
    for i in range(out.shape[2]):
        for j in range(out.shape[3]):
            out[:, :, i, j] = np.einsum("nchw,ochw->no", xp[:, :, i:i + k, j:j + k], weight)
    return out + bias[None, :, None, None]


def _numpy_maxpool2(x: np.ndarray) -> np.ndarray:
    n, c, h, w = x.shape
    return x.reshape(n, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))


def test_mlp_matches_a_numpy_forward():
    model = MLP(MLPConfig(in_features=64, hidden_sizes=(32, 16), num_classes=10))
    p = {k: v.astype(np.float64) for k, v in model.state_dict().items()}
    x = np.random.default_rng(0).random((5, 8, 8)).astype(np.float32)
    h = np.maximum(x.reshape(5, 64) @ p["net.0.weight"].T + p["net.0.bias"], 0)
    h = np.maximum(h @ p["net.2.weight"].T + p["net.2.bias"], 0)
    expected = h @ p["net.4.weight"].T + p["net.4.bias"]
    np.testing.assert_allclose(model(gu.tensor(x)).detach().numpy(), expected, rtol=1e-5, atol=1e-6)
    assert model.num_parameters() == 64 * 32 + 32 + 32 * 16 + 16 + 16 * 10 + 10
    with pytest.raises(ValueError, match="64 input features"):
        model(gu.zeros(2, 63))


@pytest.mark.parametrize("image_size", [8, 28])
def test_cnn_matches_a_numpy_forward(image_size):
    config = CNNConfig(image_size=image_size, channels=(4, 6))
    model = CNN(config)
    p = {k: v.astype(np.float64) for k, v in model.state_dict().items()}
    x = np.random.default_rng(1).random((3, image_size, image_size)).astype(np.float32)
    h = _numpy_maxpool2(np.maximum(_numpy_conv2d(x[:, None], p["features.0.weight"], p["features.0.bias"], 1), 0))
    h = _numpy_maxpool2(np.maximum(_numpy_conv2d(h, p["features.3.weight"], p["features.3.bias"], 1), 0))
    expected = h.reshape(3, -1) @ p["head.weight"].T + p["head.bias"]
    np.testing.assert_allclose(model(gu.tensor(x)).detach().numpy(), expected, rtol=1e-4, atol=1e-5)
    assert model.num_parameters() == (4 * 9 + 4) + (6 * 4 * 9 + 6) + (6 * config.feature_size ** 2 * 10 + 10)
    assert model.first_layer_filters().shape == (4, 1, 3, 3)
    with pytest.raises(ValueError, match="expected images"):
        model(gu.zeros(2, 1, image_size + 1, image_size))


# ---------------------------------------------------------------------------- the stage framework
def test_checks_write_their_own_threshold_and_detail():
    c = claims.claim("x.acc", "s", claims.ge("test accuracy", 0.981, 0.97))
    assert c.passed and c.threshold == "test accuracy >= 0.97" and c.detail == "test accuracy 0.981 >= 0.97"
    assert c.values == {"test accuracy": 0.981}
    both = claims.claim("x.both", "s", claims.gt("CNN accuracy", 0.98, "MLP accuracy", 0.97),
                        claims.lt("CNN parameters", 5000, "MLP parameters", 19000))
    assert both.passed and both.detail == ("CNN accuracy 0.98 > MLP accuracy 0.97; "
                                           "CNN parameters 5,000 < MLP parameters 19,000")
    assert not claims.claim("x", "s", claims.ge("a", 1.0, 0.5), claims.le("b", 2.0, 1.0)).passed  # all must hold
    assert claims.near("e", 1.04, 1.0, 0.05).passed and not claims.near("e", 1.06, 1.0, 0.05).passed
    assert claims.close("a", 1.0, "b", 1.0 + 1e-7, 1e-6).passed and not claims.close("a", 1, "b", 1.1, 1e-2).passed
    assert not claims.gt("a", 2.0, "b", 1.0, margin=1.0).passed and claims.gt("a", 2.0, "b", 0.5, factor=2).passed
    for nan_check in (claims.ge("v", math.nan, 0), claims.le("v", math.nan, 0), claims.near("v", math.nan, 0, 1),
                      claims.is_true("exact", True, {"max diff": math.inf})):
        assert not nan_check.passed
    with pytest.raises(ValueError, match="at least one check"):
        claims.claim("x", "s")


def test_a_failed_claim_marks_the_checks_that_did_not_hold():
    """A claim of several checks that fails says which ones: the rule (the report's threshold column) and the
    detail (the console line) mark each failing check, and nothing else."""
    failed = claims.claim("x", "s", claims.gt("pretrained, 16", 0.14, "scratch, 16", 0.09),
                          claims.gt("pretrained, 977", 0.1405, "scratch, 977", 0.1405),
                          claims.ge("gain at fewest", math.nan, 0.0))
    assert not failed.passed
    assert failed.threshold == ("pretrained, 16 > scratch, 16; pretrained, 977 > scratch, 977 (not held); "
                                "gain at fewest >= 0 (not held)")
    assert failed.detail == ("pretrained, 16 0.14 > scratch, 16 0.09; pretrained, 977 0.1405 > scratch, 977 0.1405 "
                             "(not held); gain at fewest nan >= 0 (not held)")
    nested = claims.claim("y", "s", claims.all_of(claims.ge("a", 1.0, 0.5), claims.ge("b", 0.0, 1.0)),
                          claims.ge("c", 0.0, 1.0))
    assert nested.detail == "a 1 >= 0.5; b 0 >= 1 (not held); c 0 >= 1 (not held)"   # each marked once
    single = claims.claim("z", "s", claims.ge("a", 0.0, 1.0))
    assert single.threshold == "a >= 1" and single.detail == "a 0 >= 1"              # FAIL alone says it


def _experiment_stage(text: str, crash: bool = False) -> Stage:
    from groundup.roadmap import Finding

    def load(ctx, state):
        state["value"] = 0.75
        return Finding(title="Load", metrics={"data": {"n": 40}}, text=["Forty items: 40 of them."])

    def score(ctx, state):
        if crash:
            raise RuntimeError("boom")
        fig = ctx.figure(2, 2)
        fig.subplots().plot([0, 1])
        value = state["value"]
        return Finding(title="Score", metrics={"score": {"value": value}},
                       claims=[claims.claim("x.score", "The score is high", claims.ge("score", value, 0.5))],
                       plots=[ctx.savefig(fig, "line.png", f"The score, {value:.0%}.")], text=[text.format(value)])

    return Stage("exp", "a stage of experiments", experiments=(load, score), headline=("score", "score.value"),
                 intro=("Two experiments share one state.",))


def test_a_stage_of_experiments_renders_each_finding_with_its_claims_and_plots(tmp_path):
    record = run_stage(_experiment_stage("The score is {:.2f}."), tmp_path)
    assert record["status"] == "pass" and record["headline"]["value"] == 0.75
    assert record["metrics"] == {"data": {"n": 40}, "score": {"value": 0.75}}
    assert [f["title"] for f in record["findings"]] == ["Load", "Score"]
    assert record["findings"][1]["claims"] == ["x.score"] and record["findings"][1]["plots"] == ["line.png"]
    page = (tmp_path / "exp" / "report.html").read_text()
    assert page.index("1. Load") < page.index("Forty items") < page.index("2. Score") < page.index("The score is high")
    assert page.index("2. Score") < page.index('src="line.png"')
    from groundup.roadmap.provenance import unmeasured_numbers

    assert unmeasured_numbers(record) == []
    crashed = run_stage(_experiment_stage("", crash=True), tmp_path)
    assert crashed["status"] == "error" and "boom" in crashed["error"]


def test_prose_with_a_number_not_measured_in_the_run_is_caught(tmp_path):
    from groundup.roadmap.provenance import numbers_in, unmeasured_numbers

    record = run_stage(_experiment_stage("The score is {:.2f} (42-46% in our quick runs)."), tmp_path)
    assert [u.split(":")[0] for u in unmeasured_numbers(record)] == ["42", "46%"]
    assert numbers_in("W1, x2, GPT-2, float64, 1,797 8x8 digits, 98.1%, -0.34 and 2.5e-07") == [
        "1,797", "8", "98.1%", "-0.34", "2.5e-07"]


def test_metric_keys_of_two_experiments_may_not_clash(tmp_path):
    from groundup.roadmap import Finding

    def twice(ctx, state):
        return Finding(metrics={"same": 1})

    record = run_stage(Stage("clash", "s", experiments=(twice, twice), headline=("v", "same")), tmp_path)
    assert record["status"] == "error" and "already set" in record["error"]
    with pytest.raises(ValueError, match="either run= or experiments="):
        Stage("neither", "s")


def test_a_tiny_run_is_a_smoke_test_that_exits_0(tmp_path, capsys, fake_registry):
    assert main(["run", "bad", "--tiny", "--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "bad" / "metrics.json").read_text())
    assert record["status"] == "smoke" and record["claims_passed"] is False
    out = capsys.readouterr().out
    assert "not held  The score is high enough" in out and "FAIL" not in out
    assert "SMOKE" in (tmp_path / "bad" / "report.html").read_text()
    assert main(["run", "crash", "--tiny", "--out", str(tmp_path)]) == 1   # a crash is still an error


# ---------------------------------------------------------------------------- the stages' shape
def _stage_sources() -> dict[str, str]:
    from pathlib import Path

    folder = Path(stages.__file__).parent
    return {p.stem: p.read_text() for p in sorted(folder.glob("*.py")) if p.stem != "__init__"}


def test_stages_train_through_the_trainer_and_import_no_other_stage():
    """Hand-written loops only where the loop is the lesson: at most six ``.backward()`` calls in all stages."""
    import ast

    sources = _stage_sources()
    assert sum(source.count(".backward()") for source in sources.values()) <= 6
    for name, source in sources.items():
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith("groundup.roadmap.stages"), f"{name} imports {node.module}"
            if isinstance(node, ast.FunctionDef) and node.name == "run":
                assert node.end_lineno - node.lineno + 1 <= 60, f"{name}.run is longer than 60 lines"


def test_every_stage_is_a_short_list_of_experiments_or_a_short_run():
    for stage in load_stages():
        assert stage.experiments or stage.run is not None
        if stage.experiments:
            assert 1 <= len(stage.experiments) <= 8 and stage.headline[1], stage.name


@pytest.mark.slow
def test_every_stage_tiny_keeps_its_metric_keys_and_measured_prose(tmp_path):
    """Every registered stage, tiny: a smoke run whose metrics keep every key the stage wrote before it became
    a list of experiments (tests/roadmap_metric_keys.json) and whose prose holds only numbers it measured."""
    from pathlib import Path

    from groundup.roadmap.provenance import unmeasured_numbers

    golden = json.loads((Path(__file__).parent / "roadmap_metric_keys.json").read_text())

    def keys(metrics, prefix=""):
        out = set()
        for key, value in metrics.items() if isinstance(metrics, dict) else ():
            path = f"{prefix}.{key}" if prefix else str(key)
            out |= {path} | keys(value, path)
        return out

    for stage in load_stages():
        record = run_stage(stage, tmp_path, tiny=True)
        assert record["status"] == "smoke", (stage.name, record.get("traceback", record.get("error")))
        assert unmeasured_numbers(record) == [], stage.name
        missing = set(golden.get(stage.name, ())) - keys(record["metrics"])
        assert not missing, (stage.name, sorted(missing))


def test_run_refuses_an_out_that_is_not_a_runs_directory(tmp_path, capsys, fake_registry):
    """--out names the folder above the stage folders: a stage's own folder, a training run or a file is one
    error line (exit 2) before anything trains, and nothing is written into it."""
    assert main(["run", "good", "--out", str(tmp_path)]) == 0
    training = tmp_path / "gpt"
    training.mkdir()
    (training / "run.json").write_text("{}")
    (training / "metrics.jsonl").write_text("")
    afile = tmp_path / "notes.txt"
    afile.write_text("x")
    capsys.readouterr()
    for out, message in ((tmp_path / "good", "is the folder of stage good"),
                         (training, "is a training run of `groundup train`"),
                         (afile, "is a file, not a directory")):
        before = sorted(p.name for p in out.iterdir()) if out.is_dir() else None
        assert main(["run", "good", "--out", str(out)]) == 2
        captured = capsys.readouterr()
        err = captured.err.strip()
        assert err.startswith(f"groundup: error: --out {out} {message}") and "--out names the runs directory" in err
        assert len(err.splitlines()) == 1 and "PASS" not in captured.out
        assert (sorted(p.name for p in out.iterdir()) if out.is_dir() else None) == before


def test_roadmap_refuses_an_out_that_is_missing_or_a_file(tmp_path, capsys, fake_registry):
    """`groundup roadmap --out DIR` with a DIR that does not exist (a typo) or is a file is one error line
    (exit 2), not a table that calls every stage 'not run yet'; the default runs/ may be missing."""
    afile = tmp_path / "notes.txt"
    afile.write_text("x")
    for out, message in ((tmp_path / "rnus", "no such directory"), (afile, "is a file")):
        assert main(["roadmap", "--out", str(out)]) == 2
        captured = capsys.readouterr()
        err = captured.err.strip()
        assert err.startswith(f"groundup: error: roadmap --out {out}") and message in err
        assert len(err.splitlines()) == 1 and "not run yet" not in captured.out
