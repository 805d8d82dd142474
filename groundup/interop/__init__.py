"""The way out and back: groundup's GPT to and from Hugging Face transformers and PyTorch.

    groundup.interop.hf          export_hf / import_hf: GPT2LMHeadModel (learned, sinusoidal or no
                                 positions) and GPTNeoXForCausalLM (rotary), tokenizers both ways
    groundup.interop.torch_gpt   TorchGPT, a torch.nn.Module twin with the same state_dict
    groundup.interop.torch_export  export_torch: weights + config + the twin's source in one folder
    groundup.interop.ddp         train the twin with torch.distributed DDP (launched by torchrun)
    groundup.interop.cli         `groundup export` and `groundup import`

Nothing here imports torch or transformers at import time: ``hf`` and ``torch_export`` read and
write safetensors and JSON with NumPy alone; ``torch_gpt`` and ``ddp`` import torch, and are only
imported when asked for. ``require(name, extra)`` gives the one-line error when a package is missing.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

__all__ = ["require", "MissingDependency"]


class MissingDependency(ImportError):
    """An optional package (torch, transformers) that a conversion needs is not installed."""


def require(name: str, purpose: str) -> ModuleType:
    """Import ``name`` or raise MissingDependency with one line naming what to install and why."""
    if importlib.util.find_spec(name) is None:
        install = {"torch": "pip install torch (CPU wheels: --index-url https://download.pytorch.org/whl/cpu)",
                   "transformers": "pip install transformers"}.get(name, f"pip install {name}")
        raise MissingDependency(f"{purpose} needs {name}, which is not installed: {install} "
                                f"(or pip install 'groundup[test]', which brings torch and transformers)")
    return importlib.import_module(name)
