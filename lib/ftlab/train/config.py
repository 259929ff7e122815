"""Typed training parameters and the Trainer arguments every method shares.

A stage's validated parameters (a dict from `runs.resolve_stage`) become dataclasses here, once: `TrainParams` for
what every method shares, `Economics` for the forecast and cost figures, and each method's own options class in
its module. Required fields have no defaults: a missing one is an error, never a silent fallback.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

from ftlab.hardware import devices

T = TypeVar("T")


def from_params(cls: type[T], p: dict[str, Any]) -> T:
    """The dataclass `cls` from a parameter dict: its fields are taken by name, others ignored; a required field
    that is missing is a clear error."""
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    try:
        return cls(**{k: v for k, v in p.items() if k in names})
    except TypeError as e:
        raise ValueError(f"{cls.__name__}: {e}; the stage's parameters hold {sorted(p)}") from None


@dataclass(frozen=True)
class TrainParams:
    """What every training method shares (params.TRAINING plus the learning rate)."""

    learning_rate: float
    epochs: float
    max_steps: int
    batch_size: int
    grad_accum: int
    warmup_steps: int
    max_length: int
    eval_steps: int
    save_steps: int
    logging_steps: int
    gradient_checkpointing: bool | str  # True, False or "auto" (the memory plan decides: ftlab.train.activations)
    optim: str
    seed: int
    fused_lora: str = "auto"  # "auto": 4-bit LoRA layers as one function each on CUDA (ftlab.train.fused_lora)

    def total_steps(self, n_rows: int) -> int:
        if self.max_steps > 0:
            return self.max_steps
        per_epoch = math.ceil(n_rows / self.batch_size / self.grad_accum / devices.process_rank()[2])  # / processes
        return max(1, math.ceil(per_epoch * self.epochs))


@dataclass(frozen=True)
class Economics:
    """The wall-time forecast's sample size and the run's energy and cost assumptions (stages 02 and 03)."""

    forecast_rows: int
    device_power_w: float
    price_per_kwh: float
    price_per_gpu_hour: float


def trainer_args(out_dir: Path, t: TrainParams, device: str) -> dict[str, Any]:
    """What every method's TRL config shares: seeds, schedule (cosine with warmup), batch and accumulation, the
    optimizer, non-reentrant checkpointing, eval/save/log cadence, non-padding token counting, CPU or bf16/fp16."""
    return dict(
        output_dir=str(out_dir),
        seed=t.seed,
        data_seed=t.seed,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps if t.max_steps > 0 else -1,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        learning_rate=t.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=t.warmup_steps,
        weight_decay=0.0,
        max_grad_norm=1.0,
        optim=t.optim,
        gradient_checkpointing=t.gradient_checkpointing is not False,  # "auto": on; the plan may turn layers off
        gradient_checkpointing_kwargs={"use_reentrant": False},
        eval_strategy="steps" if t.eval_steps > 0 else "no",
        eval_steps=t.eval_steps or None,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=2,
        logging_steps=t.logging_steps,
        logging_first_step=True,
        include_num_input_tokens_seen="non_padding",
        max_length=t.max_length,
        use_cpu=device == "cpu",
        dataloader_num_workers=0,
        disable_tqdm=True,
        save_only_model=False,
        report_to=[],
        **devices.precision(device),
    )


def lora_config(r: int, alpha: int, dropout: float, targets: str | list[str]) -> Any:
    from peft import LoraConfig

    modules = "all-linear" if targets == "all-linear" else list(targets)
    return LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, bias="none", task_type="CAUSAL_LM", target_modules=modules
    )
