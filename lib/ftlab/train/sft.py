"""Supervised fine-tuning (TRL's SFTTrainer): the method's options, its config and its dataset.

The registry entry (`ftlab.core.stages`, method "sft") names this module; `ftlab.train.fit` calls the functions below.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftlab.core import stages
from ftlab.data.template_audit import encode
from ftlab.hardware import devices
from ftlab.models import attention
from ftlab.models.attention import PACKED_KERNELS
from ftlab.train.config import TrainParams, lora_config
from ftlab.train.preflight import longest_input_ids

PARAMS: dict[str, Any] = {}  # stage 02 trains one method: all its parameters are in ftlab.core.params
NOT_ARGS: tuple[str, ...] = ()


@dataclass(frozen=True)
class Options:
    """Stage 02's own parameters beyond TrainParams; the defaults are the notebook's (a test holds them equal)."""

    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_targets: str | tuple[str, ...] | list[str] = "all-linear"
    liger: bool = True
    attention: str = "auto"
    packing: str = "auto"
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


def batch_rows(p: dict[str, Any]) -> int:
    """Sequences in one batch for the memory plan: batch_size rows (or packed bins)."""
    return p["batch_size"]


worst_case = longest_input_ids  # the preflight's batch: the batch_size longest tokenized rows


def offload_activations(setting: str, device: str, needed: bool = False) -> bool:
    """'on' / 'off', or 'auto': on only where the memory planner found the run would not fit without it
    (`train.memory_plan`). Offloading costs speed: on an H200 it took 19% of the tokens/s of packed 1B rows
    (benchmarks/results/speed_offload_h200_1b.json) and over half on padded 8B rows of ~900 tokens (issue 18's own
    H200 table, not re-run); a CPU has nothing to offload to."""
    return device == "cuda" and (setting == "on" or (setting == "auto" and needed))


def packing(setting: str, device: str, attn: str | None = None) -> bool:
    """Token-budget batches: 'on', 'off', or 'auto': on on CUDA under a kernel that runs packed rows as separate
    sequences (torch's varlen, flash-attn). Each micro-batch then holds batch_size bins of up to max_length tokens of
    whole conversations (TRL's best-fit-decreasing packing, padding-free), so short rows fill the step instead of
    padding it; the loss stays the mean over every trained token of the step, as for padded batches."""
    return _on_with_packed_kernel(setting, device, attn)


def planned_length(p: dict[str, Any], device: str, seq_len: int) -> int:
    """The row length the memory planner must assume: packed rows fill up to max_length tokens whatever the longest
    conversation; otherwise the longest batch's rows (`seq_len`)."""
    kernel = attention.resolve(p.get("attention", "auto"), device)
    return p["max_length"] if packing(p.get("packing", "off"), device, kernel) else seq_len


def padding_free(setting: str, device: str, attn: str | None = None) -> bool:
    """Rows of a batch laid end to end (no padding) when packing is off: 'on' / 'off', or 'auto': with a kernel that
    runs packed rows as separate sequences. Under sdpa a padding-free row gets a dense block-diagonal mask whose cost
    grows with the square of the packed length: on an H100 it lost to padded batches
    (benchmarks/results/speed_h100_padding_free_sdpa.json), so 'auto' leaves it off there."""
    return _on_with_packed_kernel(setting, device, attn)


def _on_with_packed_kernel(setting: str, device: str, attn: str | None) -> bool:
    """'on', or 'auto' on CUDA under a kernel that keeps packed conversations apart (packing and padding-free)."""
    return setting == "on" or (setting == "auto" and device == "cuda" and attn in PACKED_KERNELS)


def report_to(setting: str) -> list[str]:
    """The Trainer's report_to; 'mlflow' logs into the run folder's own store (ftlab.train.tracking)."""
    if setting == "mlflow" and importlib.util.find_spec("mlflow") is None:
        raise ValueError(
            "report_to='mlflow' needs the mlflow package (pinned in requirements.lock; this environment lacks it): "
            "pip install -r requirements.lock, or use report_to='tensorboard'."
        )
    return [] if setting == "none" else [setting]


def config_kwargs(
    out_dir: Path, t: TrainParams, o: Options, device: str, attn: str | None, offload_needed: bool = False
) -> dict[str, Any]:
    """SFTConfig's method-specific arguments. Packed or padding-free: a batch becomes one row with position_ids
    restarting per conversation; attention stays within each conversation and no step is spent on padding tokens.
    Stage 01 already rejected rows over max_length, so TRL need not enforce it on padding-free rows."""
    packed = packing(o.packing, device, attn)
    free = packed or padding_free(o.padding_free, device, attn)
    out: dict[str, Any] = {
        "report_to": report_to(o.report_to),
        "packing": packed,
        "packing_strategy": "bfd",  # whole conversations, never split across bins
        "padding_free": free,
        "use_liger_kernel": devices.liger_available() and o.liger,
        "activation_offloading": offload_activations(o.activation_offloading, device, offload_needed),
    }
    if free and not packed:
        out["max_length"] = None
    return out


def trainer_kwargs(o: Options, **_: Any) -> dict[str, Any]:
    """SFTTrainer wraps the base model in a fresh LoRA adapter."""
    return {"peft_config": lora_config(o.lora_r, o.lora_alpha, o.lora_dropout, o.lora_targets)}


def read_inputs(stage: Any) -> dict[str, list[dict[str, Any]]]:
    """Stage 01's train and eval rows (their hashes go into the manifest)."""
    from ftlab.data.rows import read_jsonl

    paths = {k: stage.input(stages.DATA, f"{k}.jsonl") for k in ("train", "eval")}
    stage.record_inputs(paths)
    return {k: read_jsonl(p) for k, p in paths.items()}
