"""The ``groundup`` command under a careful user's abuse: bad flags, two writers, Ctrl-C, kill -9,
planted symlinks, hostile checkpoints, a full disk, changed flags on resume.

Every bad input must give exit status 2 and one line ``groundup: error: ...``; a failure while
working exit status 1 and one line; never a traceback (that needs --debug). The process tests run
the real command (``python -m groundup.cli``) on a 1-layer, 16-wide GPT over the names corpus.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from groundup import cli

COMMAND = [sys.executable, "-m", "groundup.cli"]
TINY = ["--data", "names", "--batch-size", "4", "--model.n_layer=1", "--model.n_head=2", "--model.n_embd=16",
        "--model.block_size=16", "--train.eval_iters=2", "--no-progress"]
ENV = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "GROUNDUP_DEBUG": ""}


def groundup(*args: str, cwd: Path, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([*COMMAND, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=ENV,
                          **kwargs)


def assert_one_line_error(result: subprocess.CompletedProcess, code: int, *fragments: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == code, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr and len(lines) >= 1
    assert lines[-1].startswith("groundup: error: "), result.stderr[-2000:]
    for fragment in fragments:
        assert fragment in lines[-1], (fragment, lines[-1])


def train(out: Path, *extra: str, cwd: Path, max_iters: int = 3) -> subprocess.CompletedProcess:
    return groundup("train", "gpt", "--out", str(out), "--max-iters", str(max_iters), *TINY, *extra, cwd=cwd)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A 3-step run, never touched: copy it before changing it."""
    root = tmp_path_factory.mktemp("finished")
    result = train(root / "run", "--train.eval_interval=3", cwd=root)
    assert result.returncode == 0, result.stderr
    return root / "run"


def copy_run(run: Path, to: Path) -> Path:
    import shutil

    shutil.copytree(run, to)
    return to


def weights(run: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(run / "model.safetensors"))


# ---------------------------------------------------------------------------- every bad flag, exit 2
BAD_FLAGS = [
    (["train", "gpt", "--out", "{out}", "--model.n_layr=2"],
     "unrecognized arguments: --model.n_layr=2; did you mean --model.n_layer? (see `groundup train --help`)"),
    (["train", "gpt", "--out", "{out}", "--train.lrr", "3", "--zzz"],
     "unrecognized arguments: --train.lrr 3 --zzz; did you mean --train.lr? (see `groundup train --help`)"),
    (["run", "all", "--quik"], "unrecognized arguments: --quik; did you mean --quick? (see `groundup run --help`)"),
    (["bench", "lstm", "--nope"], "unrecognized arguments: --nope (see `groundup bench --help`)"),
    (["--bogus"], "unrecognized arguments: --bogus (see `groundup --help`)"),
    (["train", "gpt", "--out", "{out}", "--batch-size", "0"], "--batch-size: 0 is out of range"),
    (["train", "gpt", "--out", "{out}", "--batch-size", "-3"], "--batch-size: -3 is out of range"),
    (["train", "gpt", "--out", "{out}", "--seed", "-1"], "--seed: -1 is out of range"),
    (["train", "gpt", "--out", "{out}", "--lr", "nan"], "--lr: expected a finite number"),
    (["train", "gpt", "--out", "{out}", "--lr", "inf"], "--lr: expected a finite number"),
    (["train", "gpt", "--out", "{out}", "--max-iters", "-1"], "--max-iters: -1 is out of range"),
    (["train", "gpt", "--out", "{out}", "--train.betas=1.5,0.99"], "TrainConfig.betas must both be in [0, 1)"),
    (["train", "gpt", "--out", "{out}", "--train.betas", "0.9"], "expected 2 comma-separated values"),
    (["train", "gpt", "--out", "{out}", "--train.device=tpu"], "invalid choice: 'tpu'"),
    (["train", "gpt", "--out", "{out}", "--train.schedule=bogus"], "invalid choice: 'bogus'"),
    (["train", "gpt", "--out", "{out}", "--train.eval_iters=1000000000"], "at most 10000 batches"),
    (["train", "gpt", "--out", "{out}", "--train.grad_clip=nan"], "--train.grad_clip: expected a finite number"),
    (["train", "gpt", "--out", "{out}", "--train.min_lr=nan"], "--train.min_lr: expected a finite number"),
    (["train", "gpt", "--out", "{out}", "--train.lr_decay_iters=-5"], "lr_decay_iters must be >= 1 or None"),
    (["train", "gpt", "--out", "{out}", "--train.lr=-1"], "TrainConfig.lr must be a finite number >= 0"),
    (["train", "gpt", "--out", "{out}", "--model.dropout=nan"], "--model.dropout: expected a finite number"),
    (["train", "gpt", "--out", "{out}", "--model.pos_encoding=spiral"], "invalid choice: 'spiral'"),
    (["train", "gpt", "--out", "{out}", "--model.n_layers=3"], "--model.n_layers=3"),
    (["train", "gpt", "--out", "{out}", "--model.n_layer=three"], "--model.n_layer: expected an integer"),
    (["train", "gpt", "--out", "{out}", "--max-iters", "1", "--train.max_iters", "5"],
     "conflicting flags: --max-iters and --train.max_iters"),
    (["train", "gpt", "--out", "{out}", "--no-progress", "--train.progress=true"], "conflicting flags"),
    (["train", "gpt", "--out", "{out}", "--allow-changes"], "--allow-changes only applies with --resume"),
    (["train", "gpt", "--out", "{out}", "--resume"], "no checkpoint in"),
    (["train", "gpt", "--out", ""], "--out is empty"),
    (["train", "gpt", "--out", "{file}"], "is a file, not a directory"),
    (["train", "gpt", "--out", "{file}/run"], "is a file, so no directory can be made under it"),
    (["train", "gpt", "--out", "{out}", "--data", "{tmp}/missing.txt"], "file not found: "),
    (["train", "gpt", "--out", "{out}", "--data", "{latin1}"], "not UTF-8 text (byte 0xe9 at offset 4)"),
    (["train", "gpt", "--out", "{out}", "--data", "{empty}"], "the file is empty"),
    (["sample", "{tmp}/nothing"], "no such directory"),
    (["sample", "{tmp}", "--temperature", "nan"], "--temperature: expected a finite number"),
    (["sample", "{tmp}", "--max-new-tokens", "1000000000"], "--max-new-tokens: 1000000000 is out of range"),
    (["sample", "{tmp}", "--top-p", "0"], "--top-p: 0.0 is out of range"),
    (["sample", "{tmp}", "--top-k", "0"], "--top-k: 0 is out of range"),
    (["sample", "{tmp}", "--seed", "-1"], "--seed: -1 is out of range"),
    (["bench", "gpt", "--iters", "0"], "--iters: 0 is out of range"),
    (["bench", "gpt", "--gen-tokens", "0"], "--gen-tokens: 0 is out of range"),
    (["bench", "gpt", "--warmup", "-1"], "--warmup: -1 is out of range"),
    (["bench", "gpt", "--gen-rounds", "0"], "--gen-rounds: 0 is out of range"),
    (["bench", "gpt", "--json", "{tmp}"], "--json {tmp}: is a directory"),
    (["bench", "gpt", "--json", "{file}/bench.json"], "is a file, so"),
]


@pytest.fixture
def places(tmp_path) -> dict[str, str]:
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait".encode("latin-1").replace(b"c", b"cc", 1))
    (tmp_path / "empty.txt").write_text("")
    return {"out": str(tmp_path / "out"), "file": str(tmp_path / "a-file"), "tmp": str(tmp_path),
            "latin1": str(tmp_path / "latin1.txt"), "empty": str(tmp_path / "empty.txt")}


@pytest.mark.parametrize("argv, message", BAD_FLAGS, ids=[" ".join(a[:1] + a[3:] if a[0] == "train" else a)
                                                          for a, _ in BAD_FLAGS])
def test_every_bad_flag_is_one_line_and_exit_2(argv, message, places, capsys):
    argv = [a.format(**places) for a in argv]
    try:
        code = cli.main(argv)
    except SystemExit as exit_info:     # argparse's own errors
        code = exit_info.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("groundup: error: ") and "Traceback" not in err, err
    assert message.format(**places) in err, err
    assert not Path(places["out"]).exists(), "work started before the flags were checked"


@pytest.mark.parametrize("argv, message", [BAD_FLAGS[0], BAD_FLAGS[10], BAD_FLAGS[19], BAD_FLAGS[27]])
def test_bad_flags_in_a_real_process(argv, message, places):
    result = groundup(*[a.format(**places) for a in argv], cwd=Path(places["tmp"]))
    assert_one_line_error(result, 2, message.format(**places))
    assert result.stderr.count("\n") == 1


def test_help_has_one_default_per_flag_and_documents_formats():
    parser = cli.build_parser()
    action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name, sub in action.choices.items():
        text = sub.format_help()
        assert "%%" not in text and "(default: None)" not in text, name
    text = " ".join(action.choices["train"].format_help().split())
    assert "the last 10% of the text" in text and "0.9,0.95 for pairs" in text and "--train.betas FLOAT,FLOAT" in text
    assert "--train.schedule {constant,cosine,linear}" in text and "--model.norm {pre,post}" in text
    max_iters = text[text.index("--max-iters MAX_ITERS optimizer"):text.index("--batch-size BATCH_SIZE sequences")]
    assert max_iters.count("default") == 1 and "the preset's, 2000 for baby" in max_iters
    assert "--out DIR run directory" in text and "--seed SEED seed of the batches, init and dropout (default: 1337)" \
        in text


@pytest.mark.parametrize("spelling", [["--train.betas", "0.9", "0.95"], ["--train.betas=0.9,0.95"],
                                      ["--train.betas=[0.9,0.95]"], ["--train.betas=(0.9, 0.95)"]])
def test_pairs_are_accepted_in_every_usual_spelling(spelling, tmp_path):
    from groundup.train_cli import build_configs

    args = cli.build_parser().parse_args(["train", "gpt", "--out", str(tmp_path / "r"), *spelling])
    assert build_configs(args, 27)[1].betas == (0.9, 0.95)


# ---------------------------------------------------------------------------- the run directory is owned
def test_an_existing_run_is_never_silently_replaced(finished_run, tmp_path):
    run = copy_run(finished_run, tmp_path / "run")
    before = weights(run)
    result = train(run, "--data", "shakespeare", cwd=tmp_path)
    assert_one_line_error(result, 2, "already holds a run", "--resume", "--replace")
    assert (run / "run.json").read_text() == (finished_run / "run.json").read_text()
    result = groundup("train", "gpt", "--out", str(run), "--replace", "--max-iters", "2", *TINY, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"moved to {run}.old-1" in result.stderr
    moved = weights(tmp_path / "run.old-1")
    for key in before:
        np.testing.assert_array_equal(moved[key], before[key])
    assert groundup("sample", str(tmp_path / "run.old-1"), "--max-new-tokens", "3", cwd=tmp_path).returncode == 0


def _wait_for(predicate, timeout: float = 90, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _evals(run: Path) -> list[int]:
    if not (run / "metrics.jsonl").exists():
        return []
    return [r["iter"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
            if r.get("kind") == "eval"]


@pytest.mark.slow
def test_second_writer_refused_and_ctrl_c_checkpoints_and_resumes_exactly(tmp_path):
    run = tmp_path / "run"
    exact = ["--train.lr_decay_iters=400", "--train.warmup_iters=2", "--train.eval_interval=100000"]
    first = subprocess.Popen([*COMMAND, "train", "gpt", "--out", str(run), "--max-iters", "100000", *TINY, *exact],
                             cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        _wait_for(lambda: _evals(run), what="the first evaluation")     # fit() runs: Ctrl-C is handled now
        second = train(run, *exact, cwd=tmp_path)
        assert_one_line_error(second, 2, f"is in use by process {first.pid}")
        time.sleep(1.0)
        first.send_signal(signal.SIGINT)
        out, err = first.communicate(timeout=120)
    finally:
        first.kill()
    assert first.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("groundup: interrupted at iter ") and last.endswith("--resume"), last
    step = json.loads((run / "state.json").read_text())["step"]
    assert step == int(last.split("interrupted at iter ")[1].split(";")[0]) and not (run / ".lock").exists()

    target = str(step + 3)
    resumed = groundup("train", "gpt", "--out", str(run), "--max-iters", target, *TINY, *exact, "--resume",
                       cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {run} at iter {step} of {target}" in resumed.stderr
    straight = groundup("train", "gpt", "--out", str(tmp_path / "straight"), "--max-iters", target, *TINY, *exact,
                        cwd=tmp_path)
    assert straight.returncode == 0, straight.stderr
    ours, theirs = weights(run), weights(tmp_path / "straight")
    for key in theirs:
        np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)
    evals = _evals(run)
    assert len(evals) == len(set(evals)), f"duplicate evaluations {evals}"


@pytest.mark.slow
def test_kill_9_during_a_restart_into_an_existing_run(finished_run, tmp_path):
    run = copy_run(finished_run, tmp_path / "run")
    before = weights(run)
    restart = subprocess.Popen([*COMMAND, "train", "gpt", "--out", str(run), "--replace", "--max-iters", "100000",
                                *TINY, "--train.eval_interval=100000"], cwd=tmp_path, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env=ENV)
    try:
        _wait_for(lambda: (run / "run.json").exists() and (tmp_path / "run.old-1").exists(), what="the restart")
        time.sleep(0.3)
    finally:
        restart.send_signal(signal.SIGKILL)
        restart.wait(30)
    old = weights(tmp_path / "run.old-1")                      # the earlier run is whole, moved aside
    for key in before:
        np.testing.assert_array_equal(old[key], before[key])
    assert groundup("sample", str(tmp_path / "run.old-1"), "--max-new-tokens", "3", cwd=tmp_path).returncode == 0
    # the half-started run: a clear answer from every command, never a traceback
    sample = groundup("sample", str(run), "--max-new-tokens", "3", cwd=tmp_path)
    assert sample.returncode == 0 or (sample.returncode == 2 and "no trained GPT" in sample.stderr), sample.stderr
    assert_one_line_error(train(run, cwd=tmp_path), 2, "already holds a run")   # its stale lock is no excuse
    again = train(run, "--replace", cwd=tmp_path, max_iters=2)                 # the stale lock is taken over
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "run.old-2" / "run.json").exists()


def test_a_planted_symlink_is_never_written_through(finished_run, tmp_path):
    run = copy_run(finished_run, tmp_path / "run")
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (run / "metrics.jsonl").unlink()
    (run / "metrics.jsonl").symlink_to(victim)
    result = train(run, "--resume", "--train.eval_interval=3", cwd=tmp_path)
    assert_one_line_error(result, 2, "metrics.jsonl is a symlink")
    assert victim.read_text() == "precious\n"


@pytest.mark.slow
def test_resume_is_exact_or_refused(finished_run, tmp_path):
    run = copy_run(finished_run, tmp_path / "run")
    same = ["--train.eval_interval=3"]
    result = train(run, "--resume", "--lr", "0.01", *same, cwd=tmp_path)
    assert_one_line_error(result, 2, "would not continue", "train.lr: 0.001 -> 0.01", "--allow-changes")
    result = train(run, "--resume", "--batch-size", "5", "--model.n_embd=32", *same, cwd=tmp_path)
    assert_one_line_error(result, 2, "train.batch_size: 4 -> 5", "model.n_embd: 16 -> 32")
    result = train(run, "--resume", *same, cwd=tmp_path, max_iters=6)            # cosine horizon 3 -> 6
    assert_one_line_error(result, 2, "the schedule's horizon", "3 -> 6")
    result = train(run, "--resume", *same, cwd=tmp_path)                         # nothing changed, nothing left
    assert result.returncode == 0 and "nothing left to train" in result.stdout, result.stderr
    for change, words in ((["--model.n_head=4"], "model.n_head: 2 -> 4"),        # no checkpoint fits these
                          (["--tokenizer", "bpe"], "tokenizer: 'char' -> 'bpe'")):
        result = train(run, "--resume", "--allow-changes", *change, *same, cwd=tmp_path, max_iters=5)
        assert_one_line_error(result, 2, "cannot change the model or its tokenizer", words)
    result = train(run, "--resume", "--allow-changes", *same, cwd=tmp_path, max_iters=5)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    resumes = [r for r in records if r["kind"] == "resume"]
    assert resumes[-1]["iter"] == 3 and any("horizon" in c for c in resumes[-1]["changed"])
    state = json.loads((run / "state.json").read_text())
    state["step"] = -5
    (run / "state.json").write_text(json.dumps(state))
    assert_one_line_error(train(run, "--resume", *same, cwd=tmp_path, max_iters=5), 1, "step is -5")


def test_training_ends_with_a_summary_a_person_can_use(finished_run, tmp_path):
    result = train(tmp_path / "bpe", "--tokenizer", "bpe", "--bpe-vocab-size", "300", "--train.eval_interval=3",
                   cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("done: 3 iters in ") and "bits per character" in lines[0]
    loss = json.loads((tmp_path / "bpe" / "summary.json").read_text())["val_loss"]
    bpc = float(lines[0].split("(")[1].split(" bits")[0])
    assert 0.2 * loss / np.log(2) < bpc < loss / np.log(2)       # BPE: fewer tokens than characters
    assert f"loss curves: {tmp_path / 'bpe' / 'loss.png'}" in lines[1] and (tmp_path / "bpe" / "loss.png").is_file()
    assert lines[2] == f"next: groundup sample {tmp_path / 'bpe'}"
    assert "{" not in result.stdout                                          # no raw JSON


# ---------------------------------------------------------------------------- hostile checkpoints
def _damage(run: Path, how: str) -> list[str]:
    """Damage the run ``how``; returns extra sample flags."""
    if how == "string dropout":
        cfg = json.loads((run / "config.json").read_text())
        (run / "config.json").write_text(json.dumps({**cfg, "dropout": "0.1"}))
        (run / "state.json").unlink()
    elif how == "deep config":
        (run / "config.json").write_text("[" * 50_000 + "]" * 50_000)
        (run / "state.json").unlink()
    elif how == "other tokenizer":
        (run / "tokenizer.json").write_text(json.dumps({"type": "char", "chars": list("ab")}))
    elif how in ("nan weights", "nan weights, accepted", "tied entries disagree"):
        from safetensors.numpy import save_file

        arrays = weights(run)
        arrays["wte.weight"][0, 0] = np.nan if how.startswith("nan") else 123.0
        if how.endswith("accepted"):                      # the same value under both of the tied names
            arrays["lm_head.weight"][0, 0] = np.nan
        save_file(arrays, str(run / "model.safetensors"))
        (run / "state.json").unlink()
        return ["--no-weight-check"] if how != "nan weights" else []
    elif how == "bit flip":
        data = bytearray((run / "model.safetensors").read_bytes())
        data[-5] ^= 0xFF
        (run / "model.safetensors").write_bytes(bytes(data))
    elif how == "short tokenizer":
        (run / "tokenizer.json").write_text(json.dumps({"type": "char", "chars": list("ab")}))
        (run / "state.json").unlink()
    elif how == "missing tensor":
        from safetensors.numpy import save_file

        arrays = weights(run)
        arrays.pop("ln_f.weight")
        save_file(arrays, str(run / "model.safetensors"))
        (run / "state.json").unlink()
    elif how == "/dev/zero":
        (run / "model.safetensors").unlink()
        (run / "model.safetensors").symlink_to("/dev/zero")
    return []


@pytest.mark.parametrize("how, message", [
    ("string dropout", "GPTConfig.dropout must be of type float, got '0.1'"),
    ("deep config", "config.json: JSON nested too deeply"),
    ("other tokenizer", "tokenizer.json: differs from the one the checkpoint"),
    ("nan weights", "tensor 'wte.weight' has 1 non-finite value(s)"),
    ("nan weights, accepted", None),
    ("tied entries disagree", "model.safetensors: load_state_dict for FastGPT: tied weights"),
    ("bit flip", "its sha256 does not match"),
    ("/dev/zero", "not a regular file"),
    ("missing tensor", "missing from the file: ln_f.weight"),
    ("short tokenizer", None),            # ids the tokenizer lacks print as U+FFFD, not a KeyError
])
def test_a_refused_checkpoint_is_one_line_and_exit_1(finished_run, tmp_path, how, message):
    run = copy_run(finished_run, tmp_path / "run")
    extra = _damage(run, how)
    result = groundup("sample", str(run), "--max-new-tokens", "3", *extra, cwd=tmp_path)
    if message is None:
        assert result.returncode == 0, result.stderr
        return
    assert_one_line_error(result, 1, message)
    if how in ("other tokenizer", "bit flip"):
        assert_one_line_error(train(run, "--resume", "--train.eval_interval=3", cwd=tmp_path), 1, message)


def _limit_memory() -> None:
    cap = 1536 * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))


def test_a_sparse_file_bomb_is_refused_under_a_memory_cap(finished_run, tmp_path):
    run = copy_run(finished_run, tmp_path / "run")
    header = json.loads((run / "model.safetensors").read_bytes()[8:8 + int.from_bytes(
        (run / "model.safetensors").read_bytes()[:8], "little")])
    header.pop("__metadata__", None)
    names = sorted(header)
    table, offset = {}, 0
    for name in names:
        shape = [2**30] if name == "wte.weight" else header[name]["shape"]
        size = int(np.prod(shape)) * 4
        table[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(table).encode()
    with open(run / "model.safetensors", "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw)
        f.truncate(8 + len(raw) + offset)                 # 4 GiB claimed, nothing on disk
    (run / "state.json").unlink()
    result = groundup("sample", str(run), "--max-new-tokens", "3", cwd=tmp_path, preexec_fn=_limit_memory)
    assert_one_line_error(result, 1, "model.safetensors does not fit", "wte.weight: file (1073741824,) vs model")
    assert "MemoryError" not in result.stderr


def test_a_full_disk_names_the_file_and_keeps_the_previous_checkpoint(tmp_path):
    script = f"""
import errno, sys
from groundup import cli
from groundup.train import checkpoint
real, calls = checkpoint._write_synced, []
def write(path, data):
    calls.append(path)
    if len(calls) > 4:          # the second checkpoint's first file
        raise OSError(errno.ENOSPC, "No space left on device")
    real(path, data)
checkpoint._write_synced = write
sys.exit(cli.main({["train", "gpt", "--out", str(tmp_path / "run"), "--max-iters", "4", *TINY,
                    "--train.eval_interval=2"]!r}))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=ENV)
    assert_one_line_error(result, 1, "no space left on device (disk full)", "the previous checkpoint (step 2) is "
                                                                            "intact", ".model.safetensors.")
    assert groundup("sample", str(tmp_path / "run"), "--max-new-tokens", "3", cwd=tmp_path).returncode == 0
    assert json.loads((tmp_path / "run" / "state.json").read_text())["step"] == 2


def test_sample_on_a_stage_folder_points_to_the_stage_gpt(finished_run, tmp_path):
    stage = tmp_path / "runs" / "basics"
    stage.mkdir(parents=True)
    (stage / "report.html").write_text("<html></html>")
    result = groundup("sample", str(stage), cwd=tmp_path)
    assert_one_line_error(result, 2, "is a roadmap stage folder", "groundup run transformer")
    assert "--out runs/basics" not in result.stderr
    copy_run(finished_run, tmp_path / "runs" / "transformer" / "gpt")
    result = groundup("sample", str(stage), cwd=tmp_path)
    assert_one_line_error(result, 2, f"groundup sample {tmp_path / 'runs' / 'transformer' / 'gpt'}")


def test_debug_shows_the_traceback(finished_run, tmp_path):
    run = copy_run(finished_run, tmp_path / "run")
    _damage(run, "bit flip")
    result = groundup("--debug", "sample", str(run), cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" in result.stderr and "CheckpointError" in result.stderr
