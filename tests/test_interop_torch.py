"""groundup -> PyTorch: the exported folder (weights, config, torch_gpt.py) gives groundup's logits and tokens."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

import groundup as gu
from groundup.interop.torch_export import export_torch
from groundup.models.gpt import GPT, GPTConfig
from groundup.tokenizers import CharTokenizer

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.torch

ROOT = Path(__file__).resolve().parents[1]


def import_by_path(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def random_gpt(pos: str, tie: bool = True) -> GPT:
    gu.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=19, block_size=8, n_layer=2, n_head=2, n_embd=16, pos_encoding=pos,
                          tie_weights=tie))
    rng = np.random.default_rng(5)
    with gu.no_grad():
        for name, p in model.named_parameters():
            gain = name.split(".")[-2].startswith("ln_") and name.endswith("weight")
            p.data[...] = rng.standard_normal(p.shape) * 0.3 + (1.0 if gain else 0.0)
    return model.eval()


@pytest.mark.parametrize("pos, tie", [("learned", True), ("sinusoidal", False), ("rotary", True), ("none", False)])
def test_exported_folder_loads_without_groundup_and_matches(tmp_path, pos, tie):
    model = random_gpt(pos, tie)
    export_torch(model, tmp_path, tokenizer=CharTokenizer("abcdefghijklmnopqrs"))
    assert {p.name for p in tmp_path.iterdir()} >= {"model.safetensors", "config.json", "torch_gpt.py",
                                                      "tokenizer.json"}
    twin_module = import_by_path("exported_torch_gpt", tmp_path / "torch_gpt.py")   # the copy, not the package
    source_lines = (tmp_path / "torch_gpt.py").read_text().splitlines()
    assert not [line for line in source_lines if line.lstrip().startswith(("import groundup", "from groundup"))]
    twin = twin_module.load(str(tmp_path)).eval()
    assert set(twin.state_dict()) == set(model.state_dict())
    ids = np.random.default_rng(1).integers(0, 19, size=(2, 8))
    with torch.no_grad():
        theirs = twin(torch.from_numpy(ids)).numpy()
    with gu.no_grad():
        ours = model(ids).numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=0)
    # sampling with the same seed past the context (each encoding's own cache rule) gives the same tokens
    prompt = ids[:1, :3]
    np.testing.assert_array_equal(model.generate(prompt, 12, seed=7).numpy(),
                                  twin.generate(torch.from_numpy(prompt), 12, seed=7).numpy())


def test_benchmarks_torch_gpt_is_the_package_twin():
    from groundup.interop import torch_gpt

    shim = import_by_path("torch_gpt_shim", ROOT / "benchmarks" / "torch_gpt.py")
    assert shim.TorchGPT is torch_gpt.TorchGPT
    assert shim.rotary_tables is torch_gpt.rotary_tables and shim.apply_rotary is torch_gpt.apply_rotary


def test_interop_imports_no_torch_or_transformers():
    """Importing the converters and the CLI group must not import torch or transformers (they are optional)."""
    code = ("import sys, groundup.interop, groundup.interop.hf, groundup.interop.torch_export, "
            "groundup.interop.cli; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]"


def test_reexport_leaves_no_stale_tokenizer(tmp_path):
    """A BPE run exported over an older character export: the folder must hold the BPE alone."""
    from groundup.commands import load_tokenizer
    from groundup.tokenizers import ByteLevelBPE

    text = "First Citizen:\nBefore we proceed any further, hear me speak.\n" * 3
    export_torch(random_gpt("learned"), tmp_path, tokenizer=CharTokenizer("abcdefghijklmnopqrs"))
    bpe = ByteLevelBPE.train(text, vocab_size=270)
    export_torch(random_gpt("rotary"), tmp_path, tokenizer=bpe)
    assert not (tmp_path / "tokenizer.json").exists()
    assert load_tokenizer(tmp_path).encode(text) == bpe.encode(text)
    export_torch(random_gpt("rotary"), tmp_path)                  # no tokenizer: none of the old ones is left
    assert not {"tokenizer.json", "vocab.json", "merges.txt"} & {p.name for p in tmp_path.iterdir()}
