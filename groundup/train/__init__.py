"""Training: ``TrainConfig``, the generic ``Trainer``, checkpoints and plots.

    from groundup.train import TrainConfig, Trainer, save_checkpoint, load_checkpoint

NumPy-only at import: safetensors, rich and matplotlib are imported when first used.
"""

from groundup.train.checkpoint import CheckpointError, load_checkpoint, read_safetensors, save_checkpoint
from groundup.train.config import TrainConfig
from groundup.train.plots import plot_metrics
from groundup.train.trainer import Trainer, build_optimizer

__all__ = ["TrainConfig", "Trainer", "build_optimizer", "save_checkpoint", "load_checkpoint", "read_safetensors",
           "CheckpointError", "plot_metrics"]
