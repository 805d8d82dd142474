"""The ``groundup train gpt`` / ``sample`` / ``bench`` commands: help texts, dotted overrides, a
2-iteration run that writes every file, resume, sampling, and a bench smoke run."""

from __future__ import annotations

import argparse
import io
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

import groundup as gu
from groundup import cli
from groundup.commands import TRAIN_PRESETS, apply_overrides, parse_field
from groundup.models.gpt import GPT, GPTConfig
from groundup.train import TrainConfig

TINY = ["--model.n_layer=1", "--model.n_head=2", "--model.n_embd=16", "--model.block_size=16",
        "--train.eval_iters=2", "--train.eval_interval=1", "--no-progress"]


def subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


@pytest.mark.parametrize("command", ["train", "sample", "bench"])
def test_help_explains_every_flag(command, capsys):
    sub = subparsers()[command]
    for action in sub._actions:
        if action.help == argparse.SUPPRESS:
            continue
        assert action.help, f"groundup {command}: {action.option_strings or action.dest} has no help text"
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for action in sub._actions:
        for option in action.option_strings:
            if action.help != argparse.SUPPRESS:
                assert option in text


def test_dotted_overrides_are_typed():
    assert parse_field("6", int, "n") == 6
    assert parse_field("3e-4", float, "lr") == 3e-4
    assert parse_field("false", bool, "bias") is False
    assert parse_field("none", int | None, "x") is None and parse_field("7", int | None, "x") == 7
    assert parse_field("0.9,0.95", tuple[float, float], "betas") == (0.9, 0.95)
    cfg = apply_overrides(GPTConfig.preset("baby"), {"n_layer": "6", "pos_encoding": "rotary"}, "model")
    assert (cfg.n_layer, cfg.pos_encoding, cfg.n_embd) == (6, "rotary", 128)
    tcfg = apply_overrides(TrainConfig(), {"lr": "3e-4", "lr_decay_iters": "none"}, "train")
    assert tcfg.lr == 3e-4 and tcfg.lr_decay_iters is None
    with pytest.raises(ValueError, match="unknown model field.*n_layers"):
        apply_overrides(GPTConfig(), {"n_layers": "6"}, "model")
    with pytest.raises(ValueError, match="expected an integer"):
        apply_overrides(GPTConfig(), {"n_layer": "six"}, "model")
    with pytest.raises(ValueError, match="GPTConfig"):  # the dataclass still validates
        apply_overrides(GPTConfig(), {"n_head": "3"}, "model")


def test_baby_preset_carries_nanogpt_cpu_recipe():
    baby = TRAIN_PRESETS["baby"]
    assert (baby["batch_size"], baby["lr"], baby["min_lr"], baby["warmup_iters"], baby["max_iters"]) == \
        (12, 1e-3, 1e-4, 100, 2000)
    assert baby["lr_decay_iters"] is None and baby["betas"] == (0.9, 0.99)
    assert (baby["weight_decay"], baby["grad_clip"], baby["eval_iters"]) == (0.1, 1.0, 100)
    assert GPTConfig.preset("baby").dropout == 0.0


def test_bad_usage_exits_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "gpt", "--out", str(tmp_path), "--model.n_layers=3"])
    assert exit_info.value.code == 2
    assert "--model.n_layers=3" in capsys.readouterr().err
    assert cli.main(["train", "gpt", "--out", str(tmp_path), "--model.n_layer=three"]) == 2
    assert "--model.n_layer: expected an integer" in capsys.readouterr().err
    assert cli.main(["train", "gpt", "--data", str(tmp_path / "missing.txt"), "--out", str(tmp_path)]) == 2
    assert cli.main(["sample", str(tmp_path / "nothing")]) == 2
    if not gu.cuda_is_available():
        assert cli.main(["train", "gpt", "--out", str(tmp_path), "--device", "cuda"]) == 2
        assert "CUDA" in capsys.readouterr().err


def test_two_iteration_run_writes_every_file_then_samples_and_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    horizon = "--train.lr_decay_iters=4"  # the cosine horizon stays put, so stopping at 2 and resuming is exact
    code = cli.main(["train", "gpt", "--data", "names", "--preset", "baby", "--out", str(out), "--max-iters", "2",
                     "--batch-size", "4", "--seed", "3", horizon, *TINY])
    assert code == 0
    for name in ("model.safetensors", "config.json", "metrics.jsonl", "summary.json", "tokenizer.json",
                 "state.json", "optimizer.safetensors", "run.json"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    for key in ("val_loss", "train_loss", "iters", "wall_s", "tokens_per_s"):
        assert summary[key] is not None, key
    assert summary["iters"] == 2 and summary["config"]["batch_size"] == 4
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {r["kind"] for r in records} == {"train", "eval", "sample"}        # samples: for the explorer
    assert all(isinstance(r["text"], str) and r["text"] for r in records if r["kind"] == "sample")
    assert json.loads((out / "config.json").read_text())["n_layer"] == 1
    err = capsys.readouterr().err
    assert "val loss" in err and "sample at iter" in err

    assert cli.main(["sample", str(out), "--prompt", "emma", "--max-new-tokens", "12", "--seed", "0",
                     "--top-k", "5"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("emma") and len(printed.rstrip("\n")) >= 4
    assert cli.main(["sample", str(out), "--prompt", "EMMA", "--max-new-tokens", "2"]) == 2   # not in the alphabet
    # without --seed each sample is fresh, and the seed it prints gives it again
    texts, seeds = [], []
    for _ in range(2):
        assert cli.main(["sample", str(out), "--prompt", "emma", "--max-new-tokens", "40"]) == 0
        got = capsys.readouterr()
        texts.append(got.out)
        seeds.append(re.search(r"seed (\d+) \(--seed \1 gives this sample again\)", got.err).group(1))
    assert texts[0] != texts[1] and seeds[0] != seeds[1]
    assert cli.main(["sample", str(out), "--prompt", "emma", "--max-new-tokens", "40", "--seed", seeds[1]]) == 0
    assert capsys.readouterr().out == texts[1]
    assert cli.main(["sample", str(out), "--prompt", "emma", "--max-new-tokens", "5", "--temperature", "0"]) == 0
    assert "seed" not in capsys.readouterr().err                        # greedy: no seed to give

    # resume to 4 iterations == a 4-iteration run from scratch
    assert cli.main(["train", "gpt", "--data", "names", "--out", str(out), "--max-iters", "4", "--batch-size", "4",
                     "--seed", "3", "--resume", horizon, *TINY]) == 0
    assert "resuming" in capsys.readouterr().err
    straight = tmp_path / "straight"
    assert cli.main(["train", "gpt", "--data", "names", "--out", str(straight), "--max-iters", "4", "--batch-size",
                     "4", "--seed", "3", horizon, *TINY]) == 0
    resumed, fresh = GPT.load(out).state_dict(), GPT.load(straight).state_dict()
    for key in fresh:
        np.testing.assert_array_equal(resumed[key], fresh[key], err_msg=key)
    capsys.readouterr()
    assert cli.main(["train", "gpt", "--data", "names", "--out", str(out), "--max-iters", "4", "--batch-size", "4",
                     "--seed", "3", "--resume", horizon, *TINY]) == 0
    assert "nothing left to train: the run was already complete" in capsys.readouterr().out


def test_a_fresh_run_of_zero_iterations_says_so(tmp_path, capsys):
    assert cli.main(["train", "gpt", "--data", "names", "--out", str(tmp_path / "zero"), "--max-iters", "0",
                     "--batch-size", "4", *TINY]) == 0
    out = capsys.readouterr().out
    assert "--max-iters 0: nothing trained; the checkpoint holds the initial weights" in out
    assert "already complete" not in out and (tmp_path / "zero" / "model.safetensors").is_file()


def test_bpe_tokenizer_on_a_text_file(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on the mat. the dog sat on the log. " * 60)
    out = tmp_path / "bpe"
    assert cli.main(["train", "gpt", "--data", str(corpus), "--tokenizer", "bpe", "--bpe-vocab-size", "280",
                     "--out", str(out), "--max-iters", "2", "--batch-size", "2", *TINY]) == 0
    assert (out / "vocab.json").is_file() and (out / "merges.txt").is_file()
    vocab = json.loads((out / "vocab.json").read_text())
    assert json.loads((out / "config.json").read_text())["vocab_size"] == len(vocab) <= 280
    capsys.readouterr()
    assert cli.main(["sample", str(out), "--prompt", "the cat", "--max-new-tokens", "5", "--seed", "1"]) == 0
    assert capsys.readouterr().out.startswith("the cat")


@pytest.mark.slow
@pytest.mark.torch
def test_bench_smoke(tmp_path, capsys):
    pytest.importorskip("torch")
    path = tmp_path / "bench.json"
    assert cli.main(["bench", "gpt", "--preset", "baby", "--iters", "1", "--warmup", "0", "--gen-tokens", "2",
                     "--gen-rounds", "1", "--no-memory", "--json", str(path)]) == 0
    record = json.loads(path.read_text())
    assert record["train"]["groundup"]["tokens_per_s"] > 0 and record["train"]["torch"]["tokens_per_s"] > 0
    assert record["train"]["ratio_tokens_per_s"] > 0 and record["generate"]["ratio_cache"] > 0
    out = capsys.readouterr().out
    assert "ratio groundup/PyTorch" in out
    rows = [line for line in out.splitlines()
            if line.startswith(("groundup ", "readable ", "PyTorch ")) and " [" in line]
    assert len(rows) == 4 and len({row.index(" [") for row in rows}) == 1, rows   # the medians line up
    others = record["machine"]["other_cores"]                              # Linux: read from /proc/stat
    assert others is not None and others >= 0.0
    assert f"other processes used {others:.2f} of {record['machine']['cores']} cores meanwhile" in out


def test_bench_gpt_warns_by_the_cores_other_processes_used():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bench_gpt

    machine = {"cores": 2, "load_avg_1m_at_start": 3.5, "load_avg_1m_at_end": 3.0, "other_cores": 0.1}
    assert bench_gpt.load_warning({"machine": machine}) is None              # the load was the bench's own
    assert "0.60 of 2 cores" in bench_gpt.load_warning({"machine": {**machine, "other_cores": 0.6}})
    assert "load average 3.5" in bench_gpt.load_warning({"machine": {**machine, "other_cores": None}})


def test_bench_gpt_threads_one_core_each(tmp_path, capsys):
    """`groundup bench gpt --threads 1`: both contenders on one thread, as the record states."""
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    path = tmp_path / "bench.json"
    try:
        assert cli.main(["bench", "gpt", "--threads", "1", "--iters", "1", "--warmup", "0", "--gen-tokens", "2",
                         "--gen-rounds", "1", "--no-memory", "--json", str(path)]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    record = json.loads(path.read_text())
    assert (record["machine"]["torch_threads"], record["machine"]["groundup_threads"]) == (1, 1)
    assert "torch threads 1, groundup threads 1" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.torch
def test_torch_oracle_trains_to_the_same_losses(tmp_path):
    """benchmarks/train_torch_gpt.py (PyTorch, groundup's weights, batches and schedule) tracks the CLI run."""
    pytest.importorskip("torch")
    import importlib.util
    import sys
    from pathlib import Path

    bench_dir = Path(__file__).resolve().parents[1] / "benchmarks"
    sys.path.insert(0, str(bench_dir))
    try:
        spec = importlib.util.spec_from_file_location("train_torch_gpt", bench_dir / "train_torch_gpt.py")
        oracle = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(oracle)
    finally:
        sys.path.remove(str(bench_dir))
    assert oracle.main(["--preset", "baby", "--data", "names", "--max-iters", "6", "--eval-interval", "3",
                        "--eval-iters", "3", "--json", str(tmp_path / "torch.json")]) == 0
    theirs = json.loads((tmp_path / "torch.json").read_text())["curve"]
    out = tmp_path / "run"
    assert cli.main(["train", "gpt", "--data", "names", "--preset", "baby", "--out", str(out), "--max-iters", "6",
                     "--train.eval_interval=3", "--train.eval_iters=3", "--no-progress"]) == 0
    ours = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "eval"]
    assert [r["iter"] for r in ours] == [r["iter"] for r in theirs] == [0, 3, 6]
    assert ours[0]["val_loss"] > ours[-1]["val_loss"] + 0.1                # it learned something
    for a, b in zip(ours, theirs):
        assert abs(a["val_loss"] - b["val_loss"]) < 1e-4 and abs(a["train_loss"] - b["train_loss"]) < 1e-4


def test_a_byte_order_mark_is_not_text_and_the_header_names_the_overrides(tmp_path, capsys):
    corpus = tmp_path / "bom.txt"
    corpus.write_bytes(b"\xef\xbb\xbf" + b"the cat sat on the mat. " * 40)       # UTF-8 with a BOM
    out = tmp_path / "run"
    assert cli.main(["train", "gpt", "--data", str(corpus), "--out", str(out), "--max-iters", "1",
                     "--batch-size", "2", *TINY]) == 0
    chars = json.loads((out / "tokenizer.json").read_text())["chars"]
    assert "\ufeff" not in chars and "".join(chars) == "".join(sorted(set("the cat sat on the mat. ")))
    header = capsys.readouterr().err.splitlines()[0]
    assert header.startswith("GPT baby (") and "n_layer=1" in header   # not the baby preset's size any more


def test_control_characters_are_escaped_on_a_terminal_only():
    from groundup.commands import for_terminal

    class Terminal:
        def isatty(self) -> bool:
            return True

    text = "a\x1b[2Jb\n\tc\x07\x9b"
    assert for_terminal(text, Terminal()) == "a\\x1b[2Jb\n\tc\\x07\\x9b"
    assert for_terminal(text, io.StringIO()) == text                    # a file or a pipe gets the text as it is
