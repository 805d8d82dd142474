"""Trainer, checkpoints and metrics on a tiny MLP with dropout (random data; each run is milliseconds).

Resume exactness (bit-identical weights and losses, dropout active), crash safety of checkpoint
writes (in process, and a hard ``os._exit`` in a subprocess), refusals of unsafe or mismatched
files with the model left unchanged, and the files a run writes (metrics.jsonl, summary.json,
loss.png); the learning-rate schedule and gradient clipping are checked on the actual updates.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import groundup as gu
import groundup.functional as F
import groundup.nn as nn
from groundup.optim import AdamW
from groundup.optim.schedule import scheduled_lr, warmup_cosine_lr
from groundup.train import CheckpointError, TrainConfig, Trainer, load_checkpoint, save_checkpoint
from groundup.train import checkpoint as checkpoint_module
from groundup.train import trainer as trainer_module

pytest.importorskip("safetensors")


@dataclass(frozen=True)
class MLPConfig:
    n_in: int = 8
    n_hidden: int = 32
    n_out: int = 4
    dropout: float = 0.3


class MLP(nn.Module):
    """(B, n_in) -> (B, n_out) logits; ``loss`` is the cross-entropy the Trainer calls."""

    def __init__(self, cfg: MLPConfig = MLPConfig()):
        super().__init__()
        self.cfg = cfg
        self.fc1 = nn.Linear(cfg.n_in, cfg.n_hidden)
        self.drop = nn.Dropout(cfg.dropout)
        self.fc2 = nn.Linear(cfg.n_hidden, cfg.n_out)

    def forward(self, x: gu.Tensor) -> gu.Tensor:
        return self.fc2(self.drop(F.relu(self.fc1(x))))

    def loss(self, x: gu.Tensor, y: gu.Tensor) -> gu.Tensor:
        return F.cross_entropy(self(x), y)


_data_rng = np.random.default_rng(0)
X = _data_rng.standard_normal((96, 8)).astype(np.float32)
Y = (X @ _data_rng.standard_normal((8, 4))).argmax(axis=1)


def get_batch(split: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    low, high = (0, 64) if split == "train" else (64, 96)
    index = rng.integers(low, high, size=8)
    return X[index], Y[index]


def make_model(seed: int = 0, **cfg) -> MLP:
    gu.manual_seed(seed)
    return MLP(MLPConfig(**cfg))


def config(out_dir: Path | None = None, **overrides) -> TrainConfig:
    values = dict(max_iters=20, lr=1e-2, min_lr=1e-3, warmup_iters=4, eval_interval=5, eval_iters=2,
                  log_interval=1, progress=False, out_dir=str(out_dir) if out_dir is not None else None)
    values.update(overrides)
    return TrainConfig(**values)


def weights(model: nn.Module) -> dict[str, np.ndarray]:
    return {k: v.copy() for k, v in model.state_dict().items()}


def assert_same_weights(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


class Recorder:
    """A callback keeping each step's loss and lr; optionally stops the run at a given step."""

    def __init__(self, stop_at: int | None = None):
        self.stop_at, self.losses, self.lrs, self.events = stop_at, [], [], []

    def __call__(self, trainer: Trainer, event: str, info: dict) -> None:
        self.events.append(event)
        if event == "step":
            self.losses.append(info["loss"])
            self.lrs.append(trainer.optimizer.param_groups[0]["lr"])
            if info["iter"] == self.stop_at:
                trainer.stop()


# ---------------------------------------------------------------------------- resume
def _run_stopped_and_resumed(tmp_path: Path) -> tuple[Recorder, Recorder, Trainer]:
    first = Recorder(stop_at=10)
    Trainer(make_model(seed=0), config(tmp_path / "b"), get_batch, callbacks=[first]).fit()
    second = Recorder()
    # a fresh process would build the model with other weights and another global RNG state
    resumed = Trainer(make_model(seed=99), config(tmp_path / "b"), get_batch, callbacks=[second])
    gu.manual_seed(12345)
    resumed.fit(resume=True)
    return first, second, resumed


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory) -> tuple[Recorder, Trainer]:
    """20 steps in one run, never stopped (with an out_dir, so it checkpoints as the others do)."""
    whole = Recorder()
    straight = Trainer(make_model(seed=0), config(tmp_path_factory.mktemp("straight")), get_batch,
                       callbacks=[whole])
    straight.fit()
    return whole, straight


def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path, straight_run):
    whole, straight = straight_run
    first, second, resumed = _run_stopped_and_resumed(tmp_path)
    assert len(first.losses) == 10 and len(second.losses) == 10
    assert first.losses + second.losses == whole.losses          # exact float equality
    assert_same_weights(weights(resumed.model), weights(straight.model))
    assert resumed.rng.bit_generator.state == straight.rng.bit_generator.state
    assert gu.get_rng_state() != gu.manual_seed(0).bit_generator.state  # dropout did draw numbers
    # the resumed metrics file continues the stopped one with no duplicate steps
    records = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    train_iters = [r["iter"] for r in records if r["kind"] == "train"]
    assert train_iters == list(range(1, 21))


def test_resume_with_other_settings_warns_and_names_them(tmp_path):
    """The CLI lists changed settings on --resume; the Python API warns with the same kind of list
    (an evaluation or logging change is free: no warning)."""
    import dataclasses
    import warnings

    from groundup.train import ResumeWarning

    Trainer(make_model(seed=0), config(tmp_path / "r", max_iters=4), get_batch).fit()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResumeWarning)
        Trainer(make_model(seed=0), config(tmp_path / "r", max_iters=4, eval_interval=3), get_batch).fit(resume=True)
    changed = dataclasses.replace(config(tmp_path / "r", max_iters=6), lr=config(tmp_path / "r").lr * 5)
    with pytest.warns(ResumeWarning, match=r"lr: .* -> .*the schedule's horizon: 4 -> 6"):
        Trainer(make_model(seed=0), changed, get_batch).fit(resume=True)


def test_resume_without_restoring_the_dropout_rng_diverges(tmp_path, monkeypatch, straight_run):
    """The check above can fail: skip restoring groundup's global RNG and the losses change."""
    whole, _ = straight_run
    monkeypatch.setattr(trainer_module, "set_rng_state", lambda state: None)
    first, second, _ = _run_stopped_and_resumed(tmp_path)
    assert first.losses == whole.losses[:10]
    assert second.losses != whole.losses[10:]


def test_resume_after_a_crash_continues_from_the_last_checkpoint(tmp_path, straight_run):
    whole, straight = straight_run

    def crash_at_12(trainer, event, info):
        if event == "step" and info["iter"] == 12:
            raise RuntimeError("power cut")

    with pytest.raises(RuntimeError, match="power cut"):
        Trainer(make_model(seed=0), config(tmp_path, checkpoint_interval=7), get_batch, callbacks=[crash_at_12]).fit()
    assert json.loads((tmp_path / "state.json").read_text())["step"] == 7
    after = Recorder()
    resumed = Trainer(make_model(seed=1), config(tmp_path, checkpoint_interval=7), get_batch, callbacks=[after])
    resumed.fit(resume=True)
    assert after.losses == whole.losses[7:]
    assert_same_weights(weights(resumed.model), weights(straight.model))
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in records if r["kind"] == "train"] == list(range(1, 21))   # 8..12 not twice


def test_evaluation_does_not_change_the_training_run():
    a = Trainer(make_model(seed=0), config(eval_interval=3), get_batch)
    b = Trainer(make_model(seed=0), config(eval_interval=100), get_batch)
    a.fit()
    b.fit()
    assert_same_weights(weights(a.model), weights(b.model))
    first, again = a.evaluate(), a.evaluate()
    assert first == again and set(first) == {"train", "val"}          # fixed batches
    assert first == Trainer(a.model, config(), get_batch).evaluate()  # same seed, same batches


def test_resume_needs_a_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        Trainer(make_model(), config(tmp_path), get_batch).fit(resume=True)


def test_resume_into_a_different_model_is_refused_and_leaves_it_unchanged(tmp_path):
    Trainer(make_model(), config(tmp_path, max_iters=3), get_batch).fit()
    other = make_model(n_hidden=16)
    before = weights(other)
    with pytest.raises(CheckpointError, match=r"config.json.*n_hidden: checkpoint 32 vs model 16"):
        Trainer(other, config(tmp_path), get_batch).fit(resume=True)
    assert_same_weights(weights(other), before)


# ---------------------------------------------------------------------------- files of a run
def test_metrics_summary_and_plot(tmp_path):
    recorder = Recorder()
    summary = Trainer(make_model(), config(tmp_path, log_interval=4), get_batch, callbacks=[recorder]).fit()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    train = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["iter"] for r in train] == [4, 8, 12, 16, 20]
    assert [r["iter"] for r in evals] == [0, 5, 10, 15, 20]
    for r in train:
        assert {"iter", "lr", "loss", "grad_norm", "tokens_per_s", "wall_s"} <= r.keys()
        assert r["tokens_per_s"] > 0 and r["loss"] == recorder.losses[r["iter"] - 1]
    for r in evals:
        assert {"iter", "lr", "train_loss", "val_loss", "wall_s"} <= r.keys()
    walls = [r["wall_s"] for r in records]
    assert walls == sorted(walls)
    saved = json.loads((tmp_path / "summary.json").read_text())
    for key in ("val_loss", "train_loss", "iters", "wall_s", "tokens_per_s"):
        assert key in saved and saved[key] == summary[key]
    assert saved["iters"] == 20 and saved["val_loss"] == evals[-1]["val_loss"]
    assert saved["val_loss"] < evals[0]["val_loss"]                      # it learned something
    assert saved["tokens_per_s"] > 0                                     # 8 samples per step (float inputs)
    png = (tmp_path / "loss.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert recorder.events[0] == "fit_start" and recorder.events[-1] == "fit_end"
    assert {"eval", "checkpoint"} <= set(recorder.events)
    for name in ("model.safetensors", "config.json", "optimizer.safetensors", "state.json"):
        assert (tmp_path / name).exists(), name
    assert json.loads((tmp_path / "config.json").read_text()) == {"n_in": 8, "n_hidden": 32, "n_out": 4,
                                                                  "dropout": 0.3}


def test_warmup_cosine_schedule_drives_the_optimizer():
    recorder = Recorder()
    Trainer(make_model(), config(max_iters=30, warmup_iters=5, lr_decay_iters=25), get_batch,
            callbacks=[recorder]).fit()
    expected = [warmup_cosine_lr(it, 1e-2, 1e-3, 5, 25) for it in range(30)]
    np.testing.assert_allclose(recorder.lrs, expected, rtol=0, atol=0)
    assert recorder.lrs[0] == pytest.approx(1e-2 / 6) and recorder.lrs[5] == pytest.approx(1e-2)
    # and the optimizer really uses it: lr 0 leaves every weight as it was (AdamW with decay too)
    model = make_model()
    before = weights(model)
    Trainer(model, config(max_iters=3, lr=0.0, min_lr=0.0, schedule="constant", warmup_iters=0), get_batch).fit()
    assert_same_weights(weights(model), before)


@pytest.mark.parametrize("grad_clip", [0.05, 0.0])
def test_gradient_clipping_bounds_the_update(grad_clip):
    """With plain SGD (momentum 0, lr 1, no decay) one update equals minus the (clipped) gradient."""
    recorder = []
    model = make_model(dropout=0.0)
    before = weights(model)
    cfg = config(max_iters=1, optimizer="sgd", betas=(0.0, 0.99), weight_decay=0.0, lr=1.0,
                 schedule="constant", warmup_iters=0, grad_clip=grad_clip)
    Trainer(model, cfg, get_batch, callbacks=[lambda t, e, i: recorder.append(i) if e == "step" else None]).fit()
    norm = np.sqrt(sum(((weights(model)[k] - before[k]).astype(np.float64) ** 2).sum() for k in before))
    grad_norm = recorder[0]["grad_norm"]
    if grad_clip:
        assert grad_norm > 10 * grad_clip
        assert norm == pytest.approx(grad_clip, rel=1e-4)
    else:
        assert grad_norm is None and norm > 10 * 0.05


def test_progress_bar_renders_on_a_terminal(monkeypatch):
    import rich.console

    buffer = io.StringIO()
    real = rich.console.Console
    monkeypatch.setattr(rich.console, "Console",
                        lambda **kw: real(**{**kw, "file": buffer, "force_terminal": True, "width": 120}))
    Trainer(make_model(), config(max_iters=6, progress=True), get_batch).fit()
    text = buffer.getvalue()
    assert "tok/s" in text and "6/6" in text and "val loss" in text


def test_config_is_checked():
    with pytest.raises(ValueError, match="schedule='exp'"):
        TrainConfig(schedule="exp")
    with pytest.raises(ValueError, match="optimizer='lion'"):
        TrainConfig(optimizer="lion")
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['lr_max'\]"):
        TrainConfig.from_dict({"lr_max": 1.0})
    assert TrainConfig.from_dict(TrainConfig(betas=[0.8, 0.9]).to_dict()).betas == (0.8, 0.9)
    assert TrainConfig(max_iters=50).decay_iters == 50


@pytest.mark.parametrize("values, message", [
    (dict(lr=1e-5), r"min_lr=0.0001 is above lr=1e-05: the cosine schedule would raise"),
    (dict(lr=1e-3, min_lr=1e-2, schedule="linear"), "min_lr=0.01 is above lr=0.001: the linear schedule"),
    (dict(warmup_iters=100, lr_decay_iters=50), "lr_decay_iters=50 is not after warmup_iters=100"),
    (dict(max_iters=11, warmup_iters=10, lr_decay_iters=10), "lr_decay_iters=10 is not after warmup_iters=10"),
])
def test_config_refuses_a_schedule_that_contradicts_itself(values, message):
    """The default min_lr (1e-4) above a smaller lr made the cosine 'decay' climb tenfold over the run, and a
    decay ending before the warmup dropped straight to min_lr after it; both were silently accepted."""
    with pytest.raises(ValueError, match=message):
        TrainConfig(**values)
    assert scheduled_lr("cosine", 1999, 1e-5, 1e-4, 100, 2000) > 1e-5    # what the refused config would have run


def test_config_allows_what_only_looks_odd():
    """``"constant"`` ignores min_lr; lr == min_lr is a flat schedule; a run shorter than its warmup (a smoke
    test) stays allowed, whatever its decay horizon, and so does a horizon past max_iters (a run to extend)."""
    TrainConfig(lr=1e-5, schedule="constant")
    TrainConfig(lr=1e-4, min_lr=1e-4)
    TrainConfig(max_iters=3, warmup_iters=100)
    TrainConfig(max_iters=2, warmup_iters=100, lr_decay_iters=4)
    TrainConfig(max_iters=100, warmup_iters=10, lr_decay_iters=400)
    TrainConfig(warmup_iters=0, lr_decay_iters=1)


def test_nan_loss_raises_a_clear_error():
    def bad_loss(model, batch):
        return model.loss(*batch) * float("nan")

    with np.errstate(invalid="ignore"):
        with pytest.raises(FloatingPointError, match="loss is nan at iteration 0"):
            Trainer(make_model(), config(), get_batch, loss_fn=bad_loss).fit()


# ---------------------------------------------------------------------------- checkpoints
def _checkpoint(tmp_path: Path, step: int = 1) -> tuple[MLP, AdamW, dict[str, np.ndarray]]:
    model = make_model(seed=step)
    optimizer = AdamW(model.parameters(), lr=1e-2)
    x, y = get_batch("train", np.random.default_rng(step))
    model.loss(gu.tensor(x), gu.tensor(y)).backward()
    optimizer.step()
    save_checkpoint(tmp_path, model, config=model.cfg, optimizer=optimizer, state={"step": step})
    return model, optimizer, weights(model)


def test_load_checkpoint_given_the_weights_file_says_so(tmp_path):
    """A path to model.safetensors itself said 'checkpoint directory .../model.safetensors does not exist'."""
    _checkpoint(tmp_path)
    with pytest.raises(FileNotFoundError, match="model.safetensors is a file, not a checkpoint directory"):
        load_checkpoint(tmp_path / "model.safetensors", make_model())


def test_save_load_round_trip(tmp_path):
    model, optimizer, saved = _checkpoint(tmp_path)
    fresh = make_model(seed=7)
    fresh_opt = AdamW(fresh.parameters(), lr=1e-2)
    arrays, cfg, state = load_checkpoint(tmp_path, fresh, optimizer=fresh_opt)
    assert_same_weights(weights(fresh), saved)
    assert cfg == {"n_in": 8, "n_hidden": 32, "n_out": 4, "dropout": 0.3} and state == {"step": 1}
    assert set(arrays) == set(saved)
    ours, theirs = optimizer.state_dict(), fresh_opt.state_dict()
    assert ours["param_groups"] == theirs["param_groups"]
    for index, entry in ours["state"].items():
        assert entry["step"] == theirs["state"][index]["step"] == 1
        np.testing.assert_array_equal(entry["exp_avg_sq"], theirs["state"][index]["exp_avg_sq"])
    assert not list(tmp_path.glob(".*")), "temporary or backup files left behind"


@pytest.mark.parametrize("failing_call", [1, 2, 3, 4])
def test_crash_while_replacing_files_keeps_the_previous_checkpoint(tmp_path, monkeypatch, failing_call):
    _, _, old = _checkpoint(tmp_path, step=1)
    new_model, new_opt, new = _checkpoint(tmp_path / "scratch", step=2)
    real_replace, calls = os.replace, []

    def flaky_replace(src, dst):
        calls.append(dst)
        if len(calls) == failing_call:
            raise OSError("simulated crash")
        real_replace(src, dst)

    monkeypatch.setattr(checkpoint_module.os, "replace", flaky_replace)
    with pytest.raises(OSError, match="simulated crash"):
        save_checkpoint(tmp_path, new_model, config=new_model.cfg, optimizer=new_opt, state={"step": 2})
    monkeypatch.setattr(checkpoint_module.os, "replace", real_replace)
    assert failing_call <= len(calls)
    loaded = make_model(seed=5)
    _, _, state = load_checkpoint(tmp_path, loaded, optimizer=AdamW(loaded.parameters()))
    assert state == {"step": 1}
    assert_same_weights(weights(loaded), old)
    # the next save repairs the half-replaced set and commits the new one
    save_checkpoint(tmp_path, new_model, config=new_model.cfg, optimizer=new_opt, state={"step": 2})
    _, _, state = load_checkpoint(tmp_path, loaded)
    assert state == {"step": 2}
    assert_same_weights(weights(loaded), new)
    assert not list(tmp_path.glob(".*"))


def test_crash_while_writing_a_file_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    _, _, old = _checkpoint(tmp_path, step=1)
    real_write = checkpoint_module._write_synced

    def half_write(path, data):
        if "optimizer" in path.name:
            path.write_bytes(data[: len(data) // 2])
            raise OSError("disk full")
        real_write(path, data)

    monkeypatch.setattr(checkpoint_module, "_write_synced", half_write)
    model = make_model(seed=3)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path, model, config=model.cfg, optimizer=AdamW(model.parameters()), state={"step": 2})
    loaded = make_model(seed=5)
    assert load_checkpoint(tmp_path, loaded)[2] == {"step": 1}
    assert_same_weights(weights(loaded), old)


_HARD_CRASH = """
import os, sys
sys.path.insert(0, {tests!r})
from test_train import make_model, save_checkpoint, checkpoint_module
real, calls = os.replace, []
def dying_replace(src, dst):
    calls.append(dst)
    if len(calls) == 2:
        os._exit(17)  # no finally blocks, no cleanup: like a power cut after the first file moved
    real(src, dst)
checkpoint_module.os.replace = dying_replace
model = make_model(seed=2)
save_checkpoint({out!r}, model, config=model.cfg, state={{"step": 2}})
"""


def test_hard_crash_midway_leaves_the_previous_checkpoint_loadable(tmp_path):
    _, _, old = _checkpoint(tmp_path, step=1)
    script = _HARD_CRASH.format(tests=str(Path(__file__).parent), out=str(tmp_path))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 17, result.stderr
    assert (tmp_path / ".model.safetensors.prev").exists()   # the new model file was already in place
    loaded = make_model(seed=5)
    assert load_checkpoint(tmp_path, loaded)[2] == {"step": 1}
    assert_same_weights(weights(loaded), old)


def _refused(tmp_path: Path, match: str, model: MLP | None = None, **kwargs) -> None:
    model = model if model is not None else make_model(seed=9)
    before = weights(model)
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(tmp_path, model, **kwargs)
    assert_same_weights(weights(model), before)


@pytest.mark.parametrize("with_record", [True, False])
def test_refuses_a_pickle_renamed_to_safetensors(tmp_path, with_record):
    model, _, _ = _checkpoint(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(pickle.dumps(model.state_dict(), protocol=4))
    if not with_record:
        (tmp_path / "state.json").unlink()
    _refused(tmp_path, r"model\.safetensors: this is a pickle, not a safetensors file")


def test_refuses_a_truncated_file(tmp_path):
    _checkpoint(tmp_path)
    path = tmp_path / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    _refused(tmp_path, r"model\.safetensors: truncated: its tensors need \d+ bytes of data but only \d+")
    path.write_bytes(path.read_bytes()[:5])
    _refused(tmp_path, r"model\.safetensors: truncated \(5 bytes\)")


def test_refuses_a_corrupt_header(tmp_path):
    _checkpoint(tmp_path)
    path = tmp_path / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[8] = ord("X")                                  # the header's opening '{'
    path.write_bytes(bytes(data))
    _refused(tmp_path, r"model\.safetensors: corrupt safetensors header \(not valid JSON")
    data[8:16] = b"\xff" * 8
    data[0:8] = (10**12).to_bytes(8, "little")          # an absurd header length
    path.write_bytes(bytes(data))
    _refused(tmp_path, r"model\.safetensors: the header length field says 1000000000000 bytes")


def test_refuses_corrupt_data_by_checksum(tmp_path):
    _checkpoint(tmp_path)
    path = tmp_path / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF                                    # a bit flip inside a weight
    path.write_bytes(bytes(data))
    _refused(tmp_path, r"model\.safetensors: its sha256 does not match the one recorded in .*state\.json")


def test_refuses_mismatched_shapes_and_config(tmp_path):
    _checkpoint(tmp_path)
    smaller = make_model(n_hidden=16)
    _refused(tmp_path, r"config\.json: the checkpoint's config does not match the model's: n_hidden: "
                       r"checkpoint 32 vs model 16", model=smaller)
    # without a config to compare, the shapes still decide, named parameter by parameter
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "state.json").unlink()
    _refused(tmp_path, r"model\.safetensors does not fit MLP: shape mismatch: fc1\.weight: file \(32, 8\) "
                       r"vs model \(16, 8\)", model=smaller)


def test_refuses_a_mismatched_optimizer_and_changes_nothing(tmp_path):
    _checkpoint(tmp_path)
    model = make_model(seed=9)
    sgd = gu.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    _refused(tmp_path, r"optimizer\.safetensors: holds the state of the optimizer AdamW, not of SGD",
             model=model, optimizer=sgd)
    assert sgd.state == {}
    two_groups = AdamW([{"params": [model.fc1.weight]}, {"params": [model.fc2.weight]}])
    _refused(tmp_path, r"optimizer\.safetensors: does not fit the optimizer: the file has 1 parameter groups",
             model=model, optimizer=two_groups)


# ---------------------------------------------------------------------------- callbacks, optimizer, evaluation
def test_fit_is_a_loop_you_read_in_one_screen():
    import inspect

    source = inspect.getsource(Trainer.fit)
    body = source.split('"""')[2]                           # after the docstring
    assert len([line for line in body.splitlines() if line.strip()]) <= 40


def test_a_custom_optimizer_with_param_groups_follows_the_schedule_scaled():
    from groundup.optim import SGD

    model = make_model(dropout=0.0)
    fast, slow = [model.fc1.weight, model.fc1.bias], [model.fc2.weight, model.fc2.bias]
    optimizer = SGD([{"params": fast}, {"params": slow, "lr_scale": 0.1}], lr=1.0)
    seen = []
    Trainer(model, config(max_iters=4, schedule="constant", warmup_iters=0, lr=0.5), get_batch, optimizer=optimizer,
            callbacks=[lambda t, e, i: seen.append([g["lr"] for g in t.optimizer.param_groups]) if e == "step"
                       else None]).fit()
    assert seen == [[0.5, pytest.approx(0.05)]] * 4


def test_a_custom_evaluation_runs_in_eval_mode_and_is_recorded():
    modes, results = [], []

    def accuracy(trainer):
        modes.append(trainer.model.training)
        gu.randn(3)                                         # draws from the global RNG: restored afterwards
        logits = trainer.model(gu.tensor(X[64:])).numpy()
        return {"val_accuracy": float((logits.argmax(1) == Y[64:]).mean()), "val_loss": 1.0 / (1 + len(modes))}

    a = Trainer(make_model(seed=0), config(eval_interval=5), get_batch, evaluate=accuracy,
                callbacks=[lambda t, e, i: results.append(i) if e == "eval" else None])
    summary = a.fit()
    b = Trainer(make_model(seed=0), config(eval_interval=100), get_batch)
    b.fit()
    assert_same_weights(weights(a.model), weights(b.model))   # evaluating changed nothing
    assert modes == [False] * 5 and a.model.training
    assert [r["iter"] for r in results] == [0, 5, 10, 15, 20] and "val_accuracy" in results[-1]
    assert [r["iter"] for r in a.history if r["kind"] == "eval"] == [0, 5, 10, 15, 20]
    assert summary["last_eval"]["val_accuracy"] == results[-1]["val_accuracy"]
    assert summary["best_val_loss"] == pytest.approx(1 / 6) and summary["val_loss"] == pytest.approx(1 / 6)


def test_mean_loss_restores_the_mode_it_found():
    from groundup.train.evaluation import mean_loss

    model = make_model()
    batches = [tuple(gu.tensor(a) for a in get_batch("val", np.random.default_rng(i))) for i in range(3)]
    for training in (True, False):
        model.train(training)
        values = [mean_loss(model, batches[i:i + 1]) for i in range(3)]
        assert mean_loss(model, batches) == pytest.approx(np.mean(values))       # dropout off: deterministic
        assert model.training is training
    assert mean_loss(model, batches, weights=[1, 0, 0]) == pytest.approx(values[0])


def test_without_default_callbacks_nothing_is_written(tmp_path):
    summary = Trainer(make_model(), config(tmp_path / "quiet"), get_batch, default_callbacks=False).fit()
    assert not (tmp_path / "quiet" / "state.json").exists() and summary["iters"] == 20


def test_resume_is_bit_identical_with_blas_on_two_threads(tmp_path, monkeypatch):
    """Inside ``cpu_threads(2)`` BLAS runs on two threads until the work is split; OpenBLAS's results can
    differ in the last bits between 1 and 2 threads, so every step, the first resumed one included, must
    run on the same count. A model over Adam's share-out size (``adam.SHARE_OUT_MIN``) is the case that
    once narrowed BLAS mid-run, at the first optimizer step."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from groundup.optim import adam

    monkeypatch.setenv("GROUNDUP_NUM_THREADS", "2")
    hidden = adam.SHARE_OUT_MIN // 8 + 1                          # fc1 alone holds 8 * hidden + hidden weights
    with threadpoolctl.threadpool_limits(2, user_api="blas"):
        whole = Recorder()
        Trainer(make_model(seed=0, n_hidden=hidden), config(tmp_path / "a", max_iters=6), get_batch,
                callbacks=[whole]).fit()
        first, second = Recorder(stop_at=3), Recorder()
        Trainer(make_model(seed=0, n_hidden=hidden), config(tmp_path / "b", max_iters=6), get_batch,
                callbacks=[first]).fit()
        resumed = Trainer(make_model(seed=99, n_hidden=hidden), config(tmp_path / "b", max_iters=6), get_batch,
                          callbacks=[second])
        resumed.fit(resume=True)
    assert len(first.losses) == 3 and len(second.losses) == 3
    assert first.losses + second.losses == whole.losses          # exact float equality


@pytest.mark.parametrize("splits", [False, True], ids=["plain", "splits_work"])
def test_blas_threads_for_the_whole_run_follow_the_model(monkeypatch, splits):
    """A model that splits its batch (``splits_work``, the fused GPT and BERT) trains with BLAS on one
    thread from its first step; any other on the context's threads."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    monkeypatch.setenv("GROUNDUP_NUM_THREADS", "2")
    seen = []

    def blas(trainer, event, info):
        if event in ("fit_start", "step"):
            seen.append([lib["num_threads"] for lib in threadpoolctl.threadpool_info() if lib["user_api"] == "blas"])

    model = make_model()
    if splits:
        model.splits_work = True
    with threadpoolctl.threadpool_limits(2, user_api="blas"):
        Trainer(model, config(max_iters=3), get_batch, callbacks=[blas]).fit()
    assert len(seen) == 4 and all(counts == [1 if splits else 2] * len(counts) for counts in seen), seen


def test_get_batch_names_its_bad_arguments():
    from groundup.data import get_batch as sample

    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="get_batch: batch_size must be a positive int, got -1"):
        sample(np.arange(10), -1, 4, rng)
    with pytest.raises(TypeError, match="get_batch: data must hold integer token ids, got dtype float64"):
        sample(np.arange(10.0), 2, 4, rng)


def test_a_path_is_a_valid_out_dir_and_a_model_only_checkpoint_explains_a_failed_resume(tmp_path):
    cfg = config(tmp_path / "p", max_iters=2)
    assert TrainConfig(**{**cfg.to_dict(), "out_dir": tmp_path / "p"}).out_dir == str(tmp_path / "p")
    trainer = Trainer(make_model(seed=0), cfg, get_batch)
    trainer.fit()
    from groundup.train import CheckpointError, save_checkpoint

    save_checkpoint(tmp_path / "p", trainer.model)                     # as model.save(dir) does: no optimizer
    with pytest.raises(CheckpointError, match=r"optimizer.safetensors: not found.*as model.save\(dir\) writes"):
        Trainer(make_model(seed=0), config(tmp_path / "p", max_iters=3), get_batch).fit(resume=True)
