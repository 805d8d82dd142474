"""Hostile checkpoints: every damaged, oversized, planted or non-finite file is refused with a
CheckpointError naming it, memory stays bounded, and a refused load changes nothing.

The fuzz tests feed hypothesis-generated config.json, state.json and safetensors headers to
``load_checkpoint`` and accept only a clean load or a CheckpointError, with tracemalloc's peak
(NumPy reports its buffers to it) under a fixed bound.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import groundup as gu
from groundup import nn
from groundup.optim import AdamW
from groundup.train import CheckpointError, TrainConfig, Trainer, load_checkpoint, save_checkpoint
from groundup.train import checkpoint as checkpoint_module
from groundup.train.checkpoint import CheckpointWriteError

MEMORY_BOUND = 32 * 2**20    # bytes: the model is 100 floats; no load may allocate more than this


@dataclass(frozen=True)
class TinyConfig:
    n_in: int = 4
    n_out: int = 3
    scale: float = 1.0


class Tiny(nn.Module):
    def __init__(self, cfg: TinyConfig = TinyConfig()):
        super().__init__()
        self.cfg = cfg
        self.fc = nn.Linear(cfg.n_in, cfg.n_out)

    def loss(self, x: gu.Tensor, y: gu.Tensor) -> gu.Tensor:
        return ((self.fc(x) - y) ** 2).mean()


def weights(model: nn.Module) -> dict[str, np.ndarray]:
    return {k: np.array(v) for k, v in model.state_dict().items()}


def saved_run(directory: Path) -> Tiny:
    gu.manual_seed(0)
    model = Tiny()
    save_checkpoint(directory, model, config=model.cfg, optimizer=AdamW(model.parameters()), state={"step": 1})
    return model


def header_bytes(header: dict, data_len: int, length_field: int | None = None) -> bytes:
    raw = json.dumps(header).encode()
    length = len(raw) if length_field is None else length_field
    return length.to_bytes(8, "little") + raw + b"\0" * data_len


def refused(directory: Path, match: str, **kwargs) -> None:
    model = Tiny(TinyConfig())
    before = weights(model)
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(directory, model, **kwargs)
    for key, value in weights(model).items():
        np.testing.assert_array_equal(value, before[key])


# ---------------------------------------------------------------------------- the defects, one by one
def test_a_sparse_file_far_larger_than_the_model_is_refused_before_it_is_read(tmp_path):
    saved_run(tmp_path)
    (tmp_path / "state.json").unlink()
    path = tmp_path / "model.safetensors"
    header = {"fc.weight": {"dtype": "F32", "shape": [2**28], "data_offsets": [0, 2**30]},
              "fc.bias": {"dtype": "F32", "shape": [3], "data_offsets": [2**30, 2**30 + 12]}}
    raw = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw)
        f.truncate(8 + len(raw) + 2**30 + 12)            # 1 GiB on paper, 4 kB on disk
    tracemalloc.start()
    try:
        refused(tmp_path, r"model\.safetensors does not fit Tiny: shape mismatch: fc\.weight: file \(268435456,\)")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < MEMORY_BOUND, peak
    # without a model to compare with, the header still has to describe the file exactly
    path.write_bytes(header_bytes(header, 100))
    with pytest.raises(CheckpointError, match="truncated: its tensors need 1073741836 bytes of data but only 100"):
        load_checkpoint(tmp_path)


def test_only_regular_files_are_read(tmp_path):
    saved_run(tmp_path)
    (tmp_path / "state.json").unlink()
    (tmp_path / "model.safetensors").unlink()
    (tmp_path / "model.safetensors").symlink_to("/dev/zero")
    refused(tmp_path, r"model\.safetensors: cannot be read as a checkpoint file \(.*not a regular file")
    (tmp_path / "model.safetensors").unlink()
    os.mkfifo(tmp_path / "model.safetensors")            # opening a FIFO must not hang
    refused(tmp_path, r"not a regular file")


def test_state_json_names_only_the_checkpoint_files(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    run = tmp_path / "run"
    model = saved_run(run)
    record = json.loads((run / "state.json").read_text())
    record["checkpoint"]["files"]["../victim.txt"] = "0" * 64
    (run / "state.json").write_text(json.dumps(record))
    refused(run, r"state\.json: 'checkpoint\.files' names '\.\./victim\.txt'")
    save_checkpoint(run, model, config=model.cfg, state={"step": 2})   # later saves still work
    assert load_checkpoint(run, Tiny())[2] == {"step": 2}
    assert victim.read_text() == "precious" and not list(tmp_path.glob("*.prev"))


@pytest.mark.parametrize("bad", ["nan", "int8", "bool", "inf"])
def test_weights_that_are_not_finite_floats_are_refused_unless_asked(tmp_path, bad):
    from safetensors.numpy import save

    model = saved_run(tmp_path)
    arrays = weights(model)
    if bad in ("nan", "inf"):
        arrays["fc.weight"][1, 2] = float(bad)
    else:
        arrays["fc.weight"] = arrays["fc.weight"].astype(bad)
    (tmp_path / "model.safetensors").write_bytes(save(arrays))
    (tmp_path / "state.json").unlink()                     # no record to catch it by checksum
    match = r"tensor 'fc\.weight' has 1 non-finite" if bad in ("nan", "inf") else \
        rf"tensor 'fc\.weight' holds {bad} values, not floating point"
    refused(tmp_path, match)
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(tmp_path)                          # GPT.load's path: no model to compare with
    loaded = Tiny()
    load_checkpoint(tmp_path, loaded, check_values=False)  # the user opted in
    assert loaded.fc.weight.shape == (3, 4)


def test_a_replaced_tokenizer_or_run_record_is_detected(tmp_path):
    (tmp_path / "tokenizer.json").write_text('{"type": "char", "chars": ["a", "b"]}')
    saved_run(tmp_path)
    assert json.loads((tmp_path / "state.json").read_text())["checkpoint"]["covers"].keys() == {"tokenizer.json"}
    load_checkpoint(tmp_path, Tiny())
    (tmp_path / "tokenizer.json").write_text('{"type": "char", "chars": ["x", "y", "z"]}')
    refused(tmp_path, r"tokenizer\.json: differs from the one the checkpoint .* was saved with")
    (tmp_path / "tokenizer.json").unlink()
    refused(tmp_path, r"tokenizer\.json: missing, but the checkpoint")


def test_config_values_of_the_wrong_type_are_refused_by_name(tmp_path):
    from groundup.models.gpt import GPTConfig
    from groundup.train.checkpoint import config_from_dict

    good = GPTConfig().to_dict()
    assert config_from_dict(GPTConfig, good) == GPTConfig()
    for field, value, match in [("dropout", "0.1", "GPTConfig.dropout must be of type float"),
                                ("bias", 1, "GPTConfig.bias must be of type bool"),
                                ("n_layer", 2.0, "GPTConfig.n_layer must be of type int"),
                                ("dropout", float("nan"), "GPTConfig.dropout must be finite"),
                                ("n_heads", 4, r"unknown GPTConfig field\(s\) \['n_heads'\]")]:
        with pytest.raises(CheckpointError, match=match):
            config_from_dict(GPTConfig, {**good, field: value}, "config.json")
    deep = "[" * 100_000 + "]" * 100_000
    (tmp_path / "config.json").write_text(deep)
    saved = tmp_path / "x"
    saved_run(saved)
    (saved / "config.json").write_text(deep)
    (saved / "state.json").unlink()
    refused(saved, r"config\.json: JSON nested too deeply")


def test_a_full_disk_names_the_file_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    model = saved_run(tmp_path)

    def no_space(path, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_module, "_write_synced", no_space)
    with pytest.raises(CheckpointWriteError, match=r"could not save the checkpoint in .*: .*\.model\.safetensors\."
                                                   r"\d+\.tmp: no space left on device \(disk full\); the previous "
                                                   r"checkpoint \(step 1\) is intact"):
        save_checkpoint(tmp_path, model, config=model.cfg, state={"step": 2})
    monkeypatch.undo()
    assert load_checkpoint(tmp_path, Tiny())[2] == {"step": 1}
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_negative_step_is_not_resumed(tmp_path):
    def batches(split, rng):
        return rng.standard_normal((4, 4)).astype(np.float32), rng.standard_normal((4, 3)).astype(np.float32)

    cfg = TrainConfig(max_iters=2, eval_interval=1, eval_iters=1, out_dir=str(tmp_path), progress=False,
                      warmup_iters=0)
    Trainer(Tiny(), cfg, batches).fit()
    record = json.loads((tmp_path / "state.json").read_text())
    record["step"] = -5
    (tmp_path / "state.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match="step is -5"):
        Trainer(Tiny(), cfg, batches).fit(resume=True)


def test_a_damaged_metrics_line_does_not_block_a_resume(tmp_path):
    def batches(split, rng):
        return rng.standard_normal((4, 4)).astype(np.float32), rng.standard_normal((4, 3)).astype(np.float32)

    cfg = TrainConfig(max_iters=2, eval_interval=1, eval_iters=1, out_dir=str(tmp_path), progress=False,
                      warmup_iters=0, lr_decay_iters=10)
    Trainer(Tiny(), cfg, batches).fit()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"kind": "train", "iter": 3, "lo')           # a crash in the middle of a line
    resumed = Trainer(Tiny(), TrainConfig(**{**cfg.to_dict(), "max_iters": 3}), batches)
    assert resumed.fit(resume=True)["iters"] == 3


# ---------------------------------------------------------------------------- fuzz
_json_values = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=8),
                            lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8),
                                                                                              children, max_size=4),
                            max_leaves=20)
_config = st.one_of(
    st.fixed_dictionaries({}, optional={"n_in": _json_values | st.integers(0, 10), "n_out": _json_values,
                                        "scale": _json_values | st.floats()}),
    _json_values)
_digest = st.sampled_from(["0" * 64, "zz", ""]) | st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)
_state = st.one_of(
    _json_values,
    st.fixed_dictionaries({"checkpoint": st.fixed_dictionaries(
        {"files": st.dictionaries(st.sampled_from(["model.safetensors", "config.json", "../x", ".", "a/b",
                                                   "optimizer.safetensors"]), _digest, max_size=3)},
        optional={"covers": st.dictionaries(st.sampled_from(["run.json", "tokenizer.json", "x"]), _digest,
                                            max_size=2)})},
        optional={"step": _json_values}))
_dtype = st.sampled_from(["F32", "F64", "F16", "I64", "I8", "BOOL", "U8", "BF16", "Q4", ""])
_shape = st.lists(st.integers(-1, 2**40), max_size=3) | st.lists(st.integers(0, 5), max_size=3)
_entry = st.fixed_dictionaries({"dtype": _dtype, "shape": _shape,
                                "data_offsets": st.lists(st.integers(-4, 2**45), min_size=0, max_size=3)})
_header = st.dictionaries(st.sampled_from(["fc.weight", "fc.bias", "other", "__metadata__"]),
                          _entry | _json_values, max_size=3)


def _load_or_refuse(directory: Path, model: Tiny | None) -> None:
    before = weights(model) if model is not None else None
    tracemalloc.start()
    try:
        load_checkpoint(directory, model)
    except CheckpointError:
        if model is not None:
            for key, value in weights(model).items():
                np.testing.assert_array_equal(value, before[key])
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < MEMORY_BOUND, f"a load allocated {peak:,} bytes"


_FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_FUZZ
@given(config=_config, state=_state, with_model=st.booleans())
def test_fuzzed_config_and_state_json_load_cleanly_or_are_refused(config, state, with_model):
    with tempfile.TemporaryDirectory() as name:
        directory = Path(name)
        saved_run(directory)
        (directory / "config.json").write_text(json.dumps(config))
        if state is not None:
            (directory / "state.json").write_text(json.dumps(state))
        _load_or_refuse(directory, Tiny() if with_model else None)


@_FUZZ
@given(header=_header, data_len=st.integers(0, 64), length_field=st.none() | st.integers(0, 2**64 - 1),
       with_model=st.booleans())
def test_fuzzed_safetensors_headers_load_cleanly_or_are_refused(header, data_len, length_field, with_model):
    with tempfile.TemporaryDirectory() as name:
        directory = Path(name)
        saved_run(directory)
        (directory / "state.json").unlink()
        (directory / "model.safetensors").write_bytes(header_bytes(header, data_len, length_field))
        _load_or_refuse(directory, Tiny() if with_model else None)


_SAVER = """
import sys
sys.path.insert(0, {tests!r})
import groundup as gu
from test_checkpoint_robust import Tiny, save_checkpoint
gu.manual_seed({seed})
model = Tiny()
for step in range(25):
    save_checkpoint({out!r}, model, config=model.cfg, state={{"step": step, "writer": {seed}}})
"""


@pytest.mark.slow
def test_two_processes_saving_into_one_directory_never_break_it(tmp_path):
    import subprocess
    import sys

    tests = str(Path(__file__).parent)
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    savers = [subprocess.Popen([sys.executable, "-c", _SAVER.format(tests=tests, seed=seed, out=str(tmp_path))],
                               stderr=subprocess.PIPE, text=True, env=env) for seed in (1, 2)]
    errors = [p.communicate(timeout=120)[1] for p in savers]
    assert [p.returncode for p in savers] == [0, 0], errors
    loaded = Tiny()
    _, _, state = load_checkpoint(tmp_path, loaded)          # every file matches state.json's sha256
    gu.manual_seed(state["writer"])
    np.testing.assert_array_equal(weights(loaded)["fc.weight"], weights(Tiny())["fc.weight"])
    assert not list(tmp_path.glob(".*"))
