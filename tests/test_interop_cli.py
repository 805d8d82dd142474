"""`groundup export` / `groundup import` as a user runs them: subprocesses, exit codes, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import groundup as gu
from groundup.models.gpt import GPT, GPTConfig
from groundup.tokenizers import ByteLevelBPE, CharTokenizer

pytest.importorskip("torch")
pytest.importorskip("transformers")

pytestmark = [pytest.mark.torch, pytest.mark.slow]

TEXT = "ROMEO:\nBut soft, what light through yonder window breaks?\nJULIET:\nAy me!\n"


def groundup(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "groundup.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def make_run(directory, tokenizer, **cfg) -> GPT:
    """A run directory as `groundup train gpt` leaves it: checkpoint + tokenizer."""
    gu.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16, **cfg))
    model.save(directory)
    tokenizer.save(directory)
    return model


def test_export_hf_verify_import_and_sample(tmp_path):
    run, hf_dir, back = tmp_path / "run", tmp_path / "hf", tmp_path / "back"
    model = make_run(run, CharTokenizer(TEXT), pos_encoding="rotary", bias=False)
    out = groundup("export", str(run), "--to", "hf", str(hf_dir), "--verify")
    assert out.returncode == 0, out.stderr
    assert "verified" in out.stdout
    assert "Loading weights" not in out.stderr + out.stdout and "%|" not in out.stderr   # no loading bar
    assert json.loads((hf_dir / "config.json").read_text())["architectures"] == ["GPTNeoXForCausalLM"]
    out = groundup("import", str(hf_dir), str(back))
    assert out.returncode == 0, out.stderr
    again = GPT.load(back)
    assert again.cfg == model.cfg
    for key, value in model.state_dict().items():
        assert np.array_equal(value, again.state_dict()[key]), key
    from groundup.explorer.analysis import load_run  # the explorer reads the imported run too

    loaded = load_run(back)
    assert loaded.decode(loaded.encode("ROMEO")) == "ROMEO" and loaded.cfg == model.cfg
    out = groundup("sample", str(back), "--prompt", "ROMEO", "--max-new-tokens", "8", "--seed", "1")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ROMEO") and len(out.stdout.rstrip("\n")) >= len("ROMEO") + 1


def run_main(capsys, *args: str) -> tuple[int, str, str]:
    """``groundup ARGS`` in this process (faster than a subprocess): (exit code, stdout, stderr)."""
    from groundup.cli import main

    try:
        code = main(list(args))
    except SystemExit as exit_:                       # argparse's own usage errors
        code = int(exit_.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_export_torch_and_bpe_export(tmp_path, capsys):
    run = tmp_path / "run"
    make_run(run, ByteLevelBPE.train(TEXT * 4, vocab_size=270))
    code, _, err = run_main(capsys, "export", str(run), "--to", "torch", str(tmp_path / "pt"))
    assert code == 0, err
    assert {"model.safetensors", "config.json", "torch_gpt.py", "vocab.json", "merges.txt"} <= \
        {p.name for p in (tmp_path / "pt").iterdir()}
    code, out, err = run_main(capsys, "export", str(run), "--to", "hf", str(tmp_path / "hf"))
    assert code == 0, err
    assert "GPT2LMHeadModel" in (tmp_path / "hf" / "config.json").read_text() and "exported" in out
    assert {"vocab.json", "merges.txt", "tokenizer_config.json"} <= {p.name for p in (tmp_path / "hf").iterdir()}


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    run = tmp_path / "post"
    make_run(run, CharTokenizer(TEXT), norm="post")
    for args, words in [
        (("export", str(run), "--to", "hf", str(tmp_path / "x")), "pre-norm"),
        (("export", str(tmp_path / "missing"), "--to", "hf", str(tmp_path / "y")), "no such run directory"),
        (("import", str(run), str(tmp_path / "z")), "groundup run directory"),
        (("export", str(run), "--to", "torch", str(tmp_path / "w"), "--verify"), "--verify"),
        (("export", str(run), "--to", "onnx", str(tmp_path / "v")), "--to"),
    ]:
        code, _, err = run_main(capsys, *args)
        assert code == 2, (args, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("groundup: error:") and words in lines[0], err
    assert not (tmp_path / "x").exists()


def test_import_refuses_to_overwrite_a_training_run(tmp_path, capsys):
    """`groundup import HF_DIR RUN` over a trained run (or other files) is refused, and nothing is touched."""
    run, hf_dir, other = tmp_path / "run", tmp_path / "hf", tmp_path / "other"
    make_run(run, CharTokenizer(TEXT), pos_encoding="rotary")
    (run / "metrics.jsonl").write_text("{}\n")
    code, _, err = run_main(capsys, "export", str(run), "--to", "hf", str(hf_dir))
    assert code == 0, err
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    other.mkdir()
    (other / "notes.txt").write_text("mine\n")
    for target, words in ((run, "training run"), (other, "not an earlier import")):
        code, _, err = run_main(capsys, "import", str(hf_dir), str(target))
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and words in lines[0], err
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    assert [p.name for p in other.iterdir()] == ["notes.txt"]
    back = tmp_path / "back"
    for _ in range(2):                                   # a new directory, then an earlier import: both fine
        code, _, err = run_main(capsys, "import", str(hf_dir), str(back))
        assert code == 0, err


def test_export_refuses_to_overwrite_a_run(tmp_path, capsys):
    """`groundup export RUN --to hf|torch OUT` into another training run, a stage's folder or a file is refused and
    nothing is touched (it replaced the run's config.json and model.safetensors, so the run no longer loaded);
    a new directory, then the same export again, are fine."""
    run, other, stage, afile = tmp_path / "run", tmp_path / "other", tmp_path / "stage", tmp_path / "notes.txt"
    make_run(run, CharTokenizer(TEXT), pos_encoding="rotary")
    make_run(other, CharTokenizer(TEXT), pos_encoding="learned")
    (other / "metrics.jsonl").write_text("{}\n")
    stage.mkdir()
    (stage / "metrics.json").write_text('{"stage": "basics"}')
    afile.write_text("mine\n")
    snapshot = {d: {p.name: p.read_bytes() for p in d.iterdir()} for d in (other, stage)}
    for to in ("hf", "torch"):
        for target, words in ((other, "holds a groundup run (state.json, metrics.jsonl)"),
                              (stage, "holds a groundup run (metrics.json)"), (afile, "is a file")):
            code, _, err = run_main(capsys, "export", str(run), "--to", to, str(target))
            lines = err.strip().splitlines()
            assert code == 2 and len(lines) == 1 and lines[0].startswith("groundup: error:") and words in lines[0], err
    assert {d: {p.name: p.read_bytes() for p in d.iterdir()} for d in (other, stage)} == snapshot
    assert afile.read_text() == "mine\n"
    assert GPT.load(other).cfg.pos_encoding == "learned"
    for _ in range(2):                                   # a new directory, then an earlier export: both fine
        code, _, err = run_main(capsys, "export", str(run), "--to", "hf", str(tmp_path / "hf"))
        assert code == 0, err


def test_sample_on_a_transformers_directory_says_to_import_it(tmp_path, capsys):
    run, hf_dir = tmp_path / "run", tmp_path / "hf"
    make_run(run, CharTokenizer(TEXT))
    code, _, err = run_main(capsys, "export", str(run), "--to", "hf", str(hf_dir))
    assert code == 0, err
    code, _, err = run_main(capsys, "sample", str(hf_dir), "--max-new-tokens", "3")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and f"groundup import {hf_dir}" in lines[0], err
