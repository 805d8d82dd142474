"""``export_torch``: a groundup GPT as a folder PyTorch loads with no groundup installed.

    OUT_DIR/model.safetensors   the state_dict, byte for byte the names and arrays of groundup's
                                (the key map to ``TorchGPT`` is the identity, see torch_gpt.py)
    OUT_DIR/config.json         the GPTConfig as JSON
    OUT_DIR/torch_gpt.py        the twin's source (imports only torch and NumPy)
    OUT_DIR/tokenizer files     as in the run directory (groundup's formats), when there is one;
                                tokenizer files already in OUT_DIR are removed first

    >>> import sys; sys.path.insert(0, "OUT_DIR")        # doctest: +SKIP
    >>> from torch_gpt import load; model = load("OUT_DIR")  # doctest: +SKIP

Writing needs no torch: the weights are written with safetensors' NumPy API.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["export_torch", "TWIN_SOURCE"]

TWIN_SOURCE = Path(__file__).with_name("torch_gpt.py")


def export_torch(source: Any, out_dir: str | os.PathLike, tokenizer: Any = None) -> Path:
    """Write a GPT (or a run directory's GPT and tokenizer) as model.safetensors + config.json + torch_gpt.py.

    Args:
        source: a run directory written by ``groundup train gpt`` or a ``GPT``.
        out_dir: created if needed.
        tokenizer: written next to the model (groundup's format) when ``source`` is a model.
    """
    from safetensors.numpy import save_file

    from groundup.interop.hf import TOKENIZER_FILES, load_run

    if isinstance(source, str | os.PathLike):
        model, run_tokenizer = load_run(source)
        tokenizer = tokenizer if tokenizer is not None else run_tokenizer
    else:
        model = source
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:   # an older export's tokenizer of the other kind must not be the one loaded
        (folder / name).unlink(missing_ok=True)
    state = {name: np.ascontiguousarray(value) for name, value in model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt", "producer": "groundup"})
    (folder / "config.json").write_text(json.dumps(model.cfg.to_dict(), indent=1) + "\n")
    shutil.copyfile(TWIN_SOURCE, folder / "torch_gpt.py")
    if tokenizer is not None:
        tokenizer.save(folder)
    return folder
