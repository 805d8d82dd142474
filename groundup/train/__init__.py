"""Training: ``TrainConfig``, the generic ``Trainer``, checkpoints, run directories and plots.

    from groundup.train import TrainConfig, Trainer, save_checkpoint, load_checkpoint

checkpoint.py (atomic saves, bounded checked loads) reads safetensors through safetensors_file.py and
writes through files.py (atomic, never through a symlink); rundir.py owns a run directory (lock,
never silently replaced); data_parallel.py splits one step's forward and backward by rows over
worker processes (``DataParallel``).

NumPy-only at import: safetensors, rich and matplotlib are imported when first used.
"""

from groundup.train.checkpoint import (
    CheckpointError,
    CheckpointWriteError,
    load_checkpoint,
    read_safetensors,
    save_checkpoint,
)
from groundup.train.config import TrainConfig
from groundup.train.data_parallel import DataParallel
from groundup.train.plots import plot_metrics
from groundup.train.trainer import ResumeWarning, Trainer, build_optimizer

__all__ = ["TrainConfig", "Trainer", "build_optimizer", "save_checkpoint", "load_checkpoint", "read_safetensors",
           "CheckpointError", "CheckpointWriteError", "plot_metrics", "DataParallel", "ResumeWarning"]
