"""The PyTorch reference GPT for benchmarks and parity tests: a re-export of ``groundup.interop.torch_gpt``.

The model moved into the package (``groundup export --to torch`` ships it); this file keeps
``from torch_gpt import TorchGPT`` working for the scripts and tests that put benchmarks/ on the path.
"""

from __future__ import annotations

from groundup.interop.torch_gpt import TorchGPT, apply_rotary, load, make_config, rotary_tables

__all__ = ["TorchGPT", "make_config", "rotary_tables", "apply_rotary", "load"]
