"""Supervised fine-tuning (TRL's SFTTrainer): the method's options, its config and its dataset.

The registry entry (`ftlab.stages`, method "sft") names this module; `ftlab.train.fit` calls the functions below.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftlab import devices, stages
from ftlab.audit import encode
from ftlab.train.config import TrainParams, lora_config

# attention kernels that run packed rows as separate sequences (cu_seqlens), so padding-free costs nothing extra
VARLEN_ATTENTION = ("flash_attention_2", "flash_attention_3")


@dataclass(frozen=True)
class Options:
    """Stage 02's own parameters beyond TrainParams; the defaults are the notebook's (a test holds them equal)."""

    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_targets: str | tuple[str, ...] | list[str] = "all-linear"
    liger: bool = True
    padding_free: str = "auto"
    activation_offloading: str = "auto"
    report_to: str = "none"


def dataset(tokenizer: Any, rows: list[dict[str, Any]], max_length: int) -> Any:
    """Pre-tokenized rows: `input_ids` + `assistant_masks`; TRL turns the mask into labels (-100 elsewhere)."""
    from datasets import Dataset

    encs = [encode(tokenizer, r["messages"], max_length) for r in rows]
    return Dataset.from_dict(
        {"input_ids": [e.input_ids for e in encs], "assistant_masks": [e.assistant_masks for e in encs]}
    )


def offload_activations(setting: str, device: str) -> bool:
    """'on' / 'off', or 'auto': on CUDA (an 8B QLoRA step on an H100 kept 1.8 GiB less at about 1% of the speed,
    benchmarks/results/speed_h100.json); a CPU has nothing to offload to."""
    return device == "cuda" and setting in ("on", "auto")


def padding_free(setting: str, device: str, attn: str | None = None) -> bool:
    """'on' / 'off', or 'auto': on only on CUDA with a varlen attention kernel. Under sdpa a padding-free row gets a
    dense block-diagonal mask whose cost grows with the square of the packed length: on an H100 it lost to padded
    batches (benchmarks/results/speed_h100_padding_free_sdpa.json), so 'auto' leaves it off there."""
    return setting == "on" or (setting == "auto" and device == "cuda" and attn in VARLEN_ATTENTION)


def report_to(setting: str, out_dir: Path) -> list[str]:
    if setting == "mlflow":
        if importlib.util.find_spec("mlflow") is None:
            raise ValueError(
                "report_to='mlflow' needs the mlflow package, which is not in requirements.lock: "
                "pip install mlflow, or use report_to='tensorboard' (installed)."
            )
        os.environ.setdefault("MLFLOW_TRACKING_URI", (Path(out_dir) / "mlruns").resolve().as_uri())  # local, no server
    return [] if setting == "none" else [setting]


def config_kwargs(out_dir: Path, t: TrainParams, o: Options, device: str, attn: str | None) -> dict[str, Any]:
    """SFTConfig's method-specific arguments. Padding-free: a batch becomes one row with position_ids restarting per
    conversation; attention stays within each conversation and no step is spent on padding tokens. Stage 01 already
    rejected rows over max_length, so TRL need not enforce it then."""
    free = padding_free(o.padding_free, device, attn)
    out: dict[str, Any] = {
        "report_to": report_to(o.report_to, out_dir),
        "padding_free": free,
        "use_liger_kernel": devices.liger_available() and o.liger,
        "activation_offloading": offload_activations(o.activation_offloading, device),
    }
    if free:
        out["max_length"] = None
    return out


def trainer_kwargs(o: Options) -> dict[str, Any]:
    """SFTTrainer wraps the base model in a fresh LoRA adapter."""
    return {"peft_config": lora_config(o.lora_r, o.lora_alpha, o.lora_dropout, o.lora_targets)}


def read_inputs(stage: Any) -> dict[str, list[dict[str, Any]]]:
    """Stage 01's train and eval rows (their hashes go into the manifest)."""
    from ftlab.data import read_jsonl

    paths = {k: stage.input(stages.DATA, f"{k}.jsonl") for k in ("train", "eval")}
    stage.record_inputs(paths)
    return {k: read_jsonl(p) for k, p in paths.items()}
