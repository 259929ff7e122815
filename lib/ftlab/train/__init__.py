"""Training: the methods (one module each: `sft`, `dpo`, `kto`), typed parameters and shared Trainer arguments (`config`),
callbacks (`callbacks`), checkpoints (`checkpoints`), the preflight and forecast (`preflight`), what surrounds the
training loop (`watch`), and one stage as a few calls (`fit`). The registry (`ftlab.core.stages`) says which methods exist.
"""

from ftlab.train.callbacks import CheckpointComplete, DiskWatch, LiveMetrics, add_callback, quiet, read_metrics
from ftlab.train.checkpoints import (
    CHECKPOINT_DONE,
    guard_stale_checkpoints,
    last_complete_checkpoint,
    truncate_metrics,
)
from ftlab.train.config import Economics, TrainParams, from_params, lora_config, trainer_args
from ftlab.train.fit import Job, attach, datasets, finished, inputs, memory_plan, method_module
from ftlab.train.preflight import TrainingStopped, forecast_and_disk, longest, preflight
from ftlab.train.sft import dataset as encode_dataset
from ftlab.train.trainer_config import config_kwargs, explain, method_args, trainer_kwargs, trl_classes
from ftlab.train.watch import check_same_model, save_adapter, train_watched

__all__ = [
    "CHECKPOINT_DONE",
    "CheckpointComplete",
    "DiskWatch",
    "Economics",
    "Job",
    "LiveMetrics",
    "TrainParams",
    "TrainingStopped",
    "add_callback",
    "attach",
    "check_same_model",
    "config_kwargs",
    "datasets",
    "encode_dataset",
    "explain",
    "finished",
    "forecast_and_disk",
    "from_params",
    "guard_stale_checkpoints",
    "inputs",
    "last_complete_checkpoint",
    "longest",
    "lora_config",
    "memory_plan",
    "preflight",
    "quiet",
    "read_metrics",
    "method_args",
    "method_module",
    "save_adapter",
    "train_watched",
    "trainer_args",
    "trainer_kwargs",
    "trl_classes",
    "truncate_metrics",
]
