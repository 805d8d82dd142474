"""DDP scale-out: `torchrun --nproc_per_node 2` (gloo, CPU) trains exactly as one process with the same batch.

Both runs start from groundup's initial weights and draw groundup's batches; the 2-process run
splits each global batch in halves and DDP averages the gradients. The losses of 20 steps must agree
to 1e-5, and with `groundup train gpt` (groundup's NumPy engine, same flags) to 1e-4; the step-0
evaluation must equal groundup's own GPT on the same batches, and the run directory must be one
that `groundup sample` reads.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import groundup as gu
from groundup.data import get_batch, load_text
from groundup.models.gpt import GPT, GPTConfig
from groundup.tokenizers import CharTokenizer

pytest.importorskip("torch")

pytestmark = [pytest.mark.torch, pytest.mark.slow]

STEPS = 20
FLAGS = ["--data", "names", "--tokenizer", "char", "--preset", "baby", "--seed", "3", "--max-iters", str(STEPS),
         "--batch-size", "4", "--no-progress", "--model.n_layer=1", "--model.n_head=2", "--model.n_embd=32",
         "--model.block_size=16", "--train.warmup_iters=5", "--train.eval_interval=10", "--train.eval_iters=2",
         "--train.log_interval=1"]


def read_metrics(directory) -> tuple[list[float], list[dict]]:
    records = [json.loads(line) for line in (directory / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    assert [r["iter"] for r in train] == list(range(1, STEPS + 1))
    return [r["loss"] for r in train], [r for r in records if r["kind"] == "eval"]


def test_two_process_ddp_matches_one_process(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    one, two, numpy_run = tmp_path / "one", tmp_path / "two", tmp_path / "numpy"
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
              "-m", "groundup.interop.ddp"]
    procs = [subprocess.Popen([*launch, *FLAGS, "--out", str(two)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True),
             subprocess.Popen([sys.executable, "-m", "groundup.interop.ddp", *FLAGS, "--out", str(one)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
             subprocess.Popen([sys.executable, "-m", "groundup.cli", "train", "gpt", *FLAGS, "--out", str(numpy_run)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)]
    printed = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        printed.append(out)
    assert "done: 20 iters on 2 process(es)" in printed[0] and f"next: groundup sample {two}" in printed[0]
    assert (two / "report.html").is_file() and (one / "report.html").is_file()   # as `groundup train` leaves
    assert json.loads((two / "run.json").read_text())["world_size"] == 2
    assert json.loads((one / "run.json").read_text())["world_size"] == 1

    losses_two, evals_two = read_metrics(two)
    losses_one, evals_one = read_metrics(one)
    np.testing.assert_allclose(losses_two, losses_one, atol=1e-5, rtol=0)
    assert losses_one[-1] < losses_one[0] - 0.1              # it trained
    assert [e["iter"] for e in evals_two] == [0, 10, 20]
    for a, b in zip(evals_two, evals_one):
        assert abs(a["train_loss"] - b["train_loss"]) < 1e-5 and abs(a["val_loss"] - b["val_loss"]) < 1e-5

    # and groundup's own engine (`groundup train gpt`, same flags) takes the same steps, to float32 rounding
    losses_numpy, _ = read_metrics(numpy_run)
    np.testing.assert_allclose(losses_numpy, losses_one, atol=1e-4, rtol=0)

    # step 0 = groundup's own model (same seed, same weights) on the Trainer's fixed evaluation batches
    cfg = GPTConfig.from_dict(json.loads((one / "run.json").read_text())["model"])
    text = load_text("names")
    ids = np.asarray(CharTokenizer(text).encode(text), dtype=np.int64)
    gu.manual_seed(3)
    model = GPT(cfg).eval()
    rng = np.random.default_rng([3, 1])
    with gu.no_grad():
        ours = np.mean([float(model.loss(*get_batch(ids[:int(len(ids) * 0.9)], 4, 16, rng)).item())
                        for _ in range(2)])
    assert abs(ours - evals_one[0]["train_loss"]) < 1e-5

    # the run directories are groundup's: the weights load, agree, and `groundup sample` runs
    a, b = GPT.load(one).state_dict(), GPT.load(two).state_dict()
    for key in a:
        np.testing.assert_allclose(a[key], b[key], atol=1e-5, rtol=0, err_msg=key)
    out = subprocess.run([sys.executable, "-m", "groundup.cli", "sample", str(two), "--prompt", "an",
                          "--max-new-tokens", "10", "--seed", "0"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("an")
