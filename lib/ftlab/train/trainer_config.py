"""The method's TRL config (SFTConfig, DPOConfig, ...) from a stage's parameters, and the fields a lesson explains.

`config_kwargs(stage, ...)` gives every argument, so a notebook can build the config object in its own cell
(`SFTConfig(**train.config_kwargs(...))`), print it, change it and hand it to the trainer; `explain(args)` lists the
fields that matter with what each does; `config_fields(args)` is what summary.json and the manifest record.
"""

from __future__ import annotations

from typing import Any

from ftlab.core import runs, stages
from ftlab.train import methods
from ftlab.train.config import TrainParams, from_params, trainer_args


def method_kwargs(
    method: stages.Method,
    out_dir: Any,
    p: dict[str, Any],
    device: str,
    attn: str | None = None,
    offload_needed: bool = False,
) -> dict[str, Any]:
    """The arguments of the method's TRL config from a parameter dict: the shared ones, then the method's own.
    `attn` is the model's attention implementation (packing and padding-free 'auto' depend on it);
    `offload_needed` is the planner's verdict for activation offloading 'auto' (`Plan.offload`)."""
    mod = methods.module(method)
    t, o = from_params(TrainParams, p), from_params(mod.Options, p)
    own = mod.config_kwargs(out_dir, t, o, device, attn, offload_needed)
    shared = {k: v for k, v in trainer_args(out_dir, t, device).items() if k not in mod.NOT_ARGS}
    return {**shared, **own}


def method_args(method: stages.Method, *args: Any, **kwargs: Any) -> Any:
    """The method's TRL config object (SFTConfig, DPOConfig, ...): `method_kwargs`' arguments, same signature."""
    return stages.load(method.config)(**method_kwargs(method, *args, **kwargs))


def config_kwargs(stage: runs.Stage, device: str, model: Any = None, plan: Any = None) -> dict[str, Any]:
    """Every argument of this stage's TRL config (`SFTConfig(**config_kwargs(...))` in notebook 02) from its
    parameters: checkpoints in the stage folder, the schedule, batch, optimizer, eval/save cadence, precision, and
    what depends on the machine: packing and padding-free follow `model`'s attention kernel, activation offloading
    and gradient checkpointing follow the memory `plan` (off when every layer's activations fit)."""
    method = stage.method
    attn = getattr(getattr(model, "config", None), "_attn_implementation", None)
    offload = bool(plan is not None and plan.offload)
    kw = method_kwargs(method, stage.path("checkpoints"), stage.params, device, attn, offload)
    if plan is not None and kw.get("gradient_checkpointing") and not plan.checkpointing:
        kw["gradient_checkpointing"] = False
    return kw


EXPLAINED = {  # the config fields a lesson looks at, with what each does
    "per_device_train_batch_size": "rows per step on each device: more is faster per row, costs activation memory",
    "gradient_accumulation_steps": "steps summed before each optimizer update: effective batch = batch x this",
    "learning_rate": "peak learning rate, reached after the warmup",
    "lr_scheduler_type": "how the learning rate decays after the warmup",
    "warmup_steps": "steps of linear warmup from 0: avoids early loss spikes",
    "max_steps": "optimizer steps to train (-1: num_train_epochs passes over the data)",
    "max_length": "longest row in tokens (None: padding-free rows, stage 01 already rejected longer ones)",
    "packing": "whole conversations packed into rows of up to max_length tokens (fewer, fuller steps)",
    "padding_free": "a batch laid out as one row without padding (needs a kernel that keeps rows apart)",
    "gradient_checkpointing": "recompute activations in backward: less memory, about a quarter more compute",
    "optim": "the optimizer (8-bit AdamW keeps its state small)",
    "save_steps": "a complete checkpoint every N steps: a crash loses at most this many",
    "eval_steps": "eval loss on the held-out rows every N steps",
    "bf16": "16-bit brain-float compute (GPUs that have it)",
    "beta": "how far the policy may move from the reference (DPO, KTO, ORPO, GRPO)",
}


def explain(args: Any) -> list[tuple[str, Any, str]]:
    """Print the fields of a TRL config that a lesson looks at, each with its value and what it does; `print(args)`
    lists every field. Returns the rows."""
    rows = _rows(args)
    width = max(len(k) for k, _, _ in rows)
    print(f"{type(args).__name__}: the fields that matter (print(args) shows all {len(vars(args))})")
    for k, v, why in rows:
        print(f"  {k:<{width}} = {v!r:<12}  # {why}")
    return rows


def config_fields(args: Any) -> dict[str, Any]:
    """The explained fields of the config that trained (summary.json's `config`): what a notebook changed shows."""
    plain = (bool, int, float, str, type(None))
    return {k: (v if isinstance(v, plain) else str(v)) for k, _, _ in _rows(args) for v in [getattr(args, k)]}


def _rows(args: Any) -> list[tuple[str, Any, str]]:
    return [(k, getattr(args, k), why) for k, why in EXPLAINED.items() if hasattr(args, k)]


def trl_classes(stage: runs.Stage) -> tuple[type, type]:
    """The TRL config and trainer classes of the method this stage trains, from the registry (`method` in stage 03:
    DPOConfig and DPOTrainer by default; KTO's, ORPO's, GRPO's otherwise)."""
    return stages.load(stage.method.config), stages.load(stage.method.trainer)


def trainer_kwargs(stage: runs.Stage, **extra: Any) -> dict[str, Any]:
    """The trainer's method-specific arguments (SFT: the LoRA config; GRPO: its `reward_funcs` from `extra`)."""
    mod = methods.module(stage)
    return mod.trainer_kwargs(from_params(mod.Options, stage.params), **extra)
