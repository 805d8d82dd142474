"""Reports lead to the code and onward: "The code" references exist, --set is recorded and refused for
unknown keys, every stage page links its neighbours and says which way its headline is good, and
``--help`` of every command reads cleanly."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from groundup.cli import build_parser, main
from groundup.roadmap import Context, StageError, load_stages, run_stage
from groundup.roadmap.code import code_refs, package_root
from groundup.roadmap.report import render_stage


@pytest.mark.parametrize("stage", load_stages(), ids=lambda s: s.name)
def test_every_code_reference_points_at_an_existing_file_and_line_range(stage):
    refs = code_refs(stage)
    assert refs, f"{stage.name}: no code found for its report"
    assert [r.kind for r in refs[:len(stage.experiments)]] == ["experiment"] * len(stage.experiments)
    for ref in refs:
        assert not ref.file.startswith("/"), ref.file                      # relative, never a machine path
        path = package_root() / ref.file
        assert path.is_file(), ref.file
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        assert 1 <= ref.start <= ref.end <= len(lines), (ref.name, ref.start, ref.end, len(lines))
        assert "".join(lines[ref.start - 1:ref.end]) == ref.source          # the range is the source shown
        for number, text in ref.key_lines:
            assert ref.start <= number <= ref.end and lines[number - 1].rstrip() == text


@pytest.mark.parametrize("stage", load_stages(), ids=lambda s: s.name)
def test_every_stage_page_has_the_code_neighbours_and_its_guide(stage):
    order = [s.name for s in load_stages()]
    record = {"stage": stage.name, "title": stage.title, "status": "smoke", "mode": "tiny", "settings": {},
              "headline": {"label": stage.headline[0], "value": 1.0, "better": stage.better}, "options": {}}
    page = render_stage(record, stage=stage, order=order)
    assert "<h2>The code</h2>" in page and "groundup/roadmap/stages/" in page
    i = order.index(stage.name)
    if i > 0:
        assert f'href="../{order[i - 1]}/report.html"' in page
    if i + 1 < len(order):
        assert f'href="../{order[i + 1]}/report.html"' in page
    if stage.name not in ("pretrain-finetune", "interpret"):                # those two stages' text is their authors'
        assert stage.better and "How it works" in page and "Try next" in page
        assert len(stage.try_next) >= 2
        for command, _ in stage.try_next:
            if "--set" in command:
                key = command.split("--set ", 1)[1].split("=", 1)[0]
                assert key in {o[0] for o in stage.options}, f"{stage.name}: Try next uses an undeclared option {key}"


def test_set_option_is_recorded_in_metrics_and_report(tmp_path, capsys):
    assert main(["run", "basics", "--tiny", "--out", str(tmp_path), "--set", "epochs=2", "--set", "lr=0.05"]) == 0
    record = json.loads((tmp_path / "basics" / "metrics.json").read_text())
    assert record["options"]["epochs"] == "2" and record["options"]["lr"] == "0.05"
    assert record["settings"]["softmax regression epochs"] == {"kind": "option epochs", "value": 2, "full": 100}
    assert record["settings"]["--set lr"]["value"] == 0.05
    assert record["headline"]["better"] == "higher"
    assert any(ref["name"] == "basics.softmax_regression" for ref in record["code"])
    page = (tmp_path / "basics" / "report.html").read_text()
    assert "--set epochs=2 --set lr=0.05" in page                         # shown, and in the re-run command


@pytest.mark.parametrize("argv, message", [
    (["run", "basics", "--tiny", "--set", "nope=1"], "--set nope: not an option of basics (options: epochs, lr)"),
    (["run", "basics", "--tiny", "--set", "epochs"], "--set epochs: expected KEY=VALUE"),
    (["run", "rnn", "--tiny", "--set", "epochs=3"], "--set epochs: not an option of rnn"),
    (["run", "rnn", "--tiny", "--set", "hidden=abc"], "--set hidden=abc: expected a positive int"),
    (["run", "rnn", "--tiny", "--set", "hidden=-5"], "--set hidden=-5: expected a positive int"),
    (["run", "rnn", "--tiny", "--set", "steps=1.5"], "--set steps=1.5: expected a positive int"),
    (["run", "basics", "--tiny", "--set", "lr=0"], "--set lr=0: expected a positive number"),
    (["run", "basics", "--tiny", "--set", "lr=nan"], "--set lr=nan: expected a positive number"),
])
def test_set_refuses_unknown_keys_and_malformed_pairs(tmp_path, capsys, argv, message):
    assert main([*argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("groundup: error: ") and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / argv[1]).exists()                              # refused before any work


def test_a_bad_option_value_leaves_the_last_run_alone(tmp_path, capsys):
    """Refused before any stage runs, so the stage's last finished run is untouched."""
    assert main(["run", "basics", "--tiny", "--out", str(tmp_path)]) == 0
    before = {p.name: p.read_bytes() for p in (tmp_path / "basics").iterdir()}
    capsys.readouterr()
    assert main(["run", "all", "--tiny", "--out", str(tmp_path), "--set", "epochs=abc"]) == 2
    assert capsys.readouterr().err.startswith("groundup: error: --set epochs=abc: expected a positive int")
    assert {p.name: p.read_bytes() for p in (tmp_path / "basics").iterdir()} == before


def test_quick_and_tiny_together_are_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["run", "basics", "--quick", "--tiny", "--out", str(tmp_path)])
    assert exit_.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
    assert not (tmp_path / "basics").exists()


def test_every_declared_option_has_a_kind_the_command_checks():
    for stage in load_stages():
        for entry in stage.options:
            assert len(entry) == 3 and entry[2] in (int, float, bool, str), (stage.name, entry)


def test_an_option_of_the_wrong_type_is_a_stage_error(tmp_path):
    ctx = Context(out_dir=tmp_path, options={"hidden": "many"})
    with pytest.raises(StageError, match="--set hidden=many: expected a positive int"):
        ctx.option("hidden", 16)
    with pytest.raises(StageError, match="--set hidden=0: expected a positive int"):
        Context(out_dir=tmp_path, options={"hidden": "0"}).option("hidden", 16)
    assert Context(out_dir=tmp_path, options={"shift": "-2"}).option("shift", 0) == -2   # a default of 0: any int
    assert Context(out_dir=tmp_path, options={"hidden": "8"}).budget("h", 16, 8, 4, option="hidden") == 8


def _commands(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser]]:
    found = [(parser.prog, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found += _commands(sub)
    return found


def test_help_of_every_command_has_no_doubled_percent_or_default_none():
    commands = _commands(build_parser())
    assert {"groundup compare", "groundup run", "groundup train"} <= {prog for prog, _ in commands}
    for prog, parser in commands:
        text = parser.format_help()
        assert "%%" not in text, prog
        assert "(default: None)" not in text, prog


def test_a_stage_run_lists_its_code_in_metrics(tmp_path):
    record = run_stage(load_stages()[0], tmp_path, tiny=True)
    for ref in record["code"]:
        assert (package_root() / ref["file"]).is_file()
        assert ref["lines"][0] <= ref["lines"][1]


@pytest.mark.parametrize("stage", [s for s in load_stages() if s.anchor[1]], ids=lambda s: s.name)
def test_every_headline_anchor_names_a_metric_the_stage_records(stage, tmp_path):
    """The anchor is among the metric keys the stage is known to write (tests/roadmap_metric_keys.json), or,
    for a key newer than that list, in the record of a tiny run."""
    keys = json.loads((Path(__file__).parent / "roadmap_metric_keys.json").read_text())
    assert stage.better in ("lower", "higher")
    if stage.anchor[1] not in keys[stage.name]:
        record = run_stage(stage, tmp_path, tiny=True)
        assert record["headline"]["anchor"]["label"] == stage.anchor[0], record["headline"]
