"""``groundup.nn``: Module, Parameter, containers and layers with torch.nn's names.

Layers live in small files (layers, norm, conv, recurrent and its scans, attention, transformer, positional);
everything public is re-exported here, as ``torch.nn`` does.
"""

from groundup.nn import functional, init, utils
from groundup.nn.attention import *  # noqa: F403
from groundup.nn.containers import ModuleDict, ModuleList, Sequential
from groundup.nn.conv import *  # noqa: F403
from groundup.nn.hooks import ActivationCache, HookedModule, HookPoint
from groundup.nn.layers import *  # noqa: F403
from groundup.nn.lora import LoRALinear, apply_lora, mark_only_lora_as_trainable  # noqa: F401
from groundup.nn.module import Module, Parameter
from groundup.nn.norm import *  # noqa: F403
from groundup.nn.positional import *  # noqa: F403
from groundup.nn.recurrent import *  # noqa: F403
from groundup.nn.transformer import *  # noqa: F403

__all__ = ["ActivationCache", "HookedModule", "HookPoint",
           "Module", "ModuleDict", "ModuleList", "Parameter", "Sequential", "functional", "init", "utils"]
