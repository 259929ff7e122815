"""Before the long run: the worst-case batch through the Trainer's own loss path (an out-of-memory error surfaces
now, with the planner's advice), gradients on every trainable tensor, a measured wall-time forecast and the disk.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ftlab.train.activations import KeepActivations
from ftlab.train.callbacks import memory_now


class TrainingStopped(RuntimeError):
    """Training stopped on purpose (NaN/inf loss, out of memory in the preflight); the message says why and what to do."""


def longest(lengths: list[int], n: int) -> list[int]:
    """Indices of the `n` longest rows, longest first: the batch that sets peak memory (each method's `worst_case`
    says what a row's length is)."""
    return sorted(range(len(lengths)), key=lambda i: -lengths[i])[:n]


def longest_input_ids(trainer: Any) -> list[int]:
    """The worst-case batch of rows tokenized as `input_ids` (SFT; the default for a trainer without a method)."""
    return longest([len(x) for x in trainer.train_dataset["input_ids"]], trainer.args.per_device_train_batch_size)


def _tokens(batch: Any) -> int | None:
    """Token positions in a collated batch (ORPO: chosen + rejected sequences); None for GRPO, whose step samples
    its answers."""
    if not isinstance(batch, dict):
        return None
    if "input_ids" in batch:
        return int(batch["input_ids"].numel())
    return sum(int(v.numel()) for k, v in batch.items() if k.endswith("_input_ids") and not k.startswith("prompt"))


def preflight(trainer: Any, advice: str, worst_case: Callable[[Any], list[int]] = longest_input_ids) -> dict[str, Any]:
    """One training step's forward + backward on the worst-case batch (`worst_case(trainer)`: the method's, from
    its module), through the Trainer's own loss path (gradient checkpointing, mixed precision, TRL's chunked loss),
    before the real run. OOM -> TrainingStopped."""
    import torch

    idx = worst_case(trainer)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in idx])
    model = trainer.model
    if not hasattr(trainer, "current_gradient_accumulation_steps"):  # set inside train(); DPO's loss reads it
        trainer.current_gradient_accumulation_steps = trainer.args.gradient_accumulation_steps
    if trainer.args.gradient_checkpointing:  # the Trainer turns it on only inside train(); the preflight needs it now
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=trainer.args.gradient_checkpointing_kwargs)
        for cb in trainer.callback_handler.callbacks:  # and keeps the planned layers' activations, as train() will
            if isinstance(cb, KeepActivations):
                cb.apply(model)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t = time.time()
    model.train()
    try:
        n_items = int((batch["labels"] != -100).sum()) if isinstance(batch, dict) and "labels" in batch else None
        loss = trainer.training_step(model, batch, num_items_in_batch=n_items)
    except torch.OutOfMemoryError:
        model.zero_grad(set_to_none=True)
        torch.cuda.empty_cache()
        raise TrainingStopped(
            f"out of memory on the worst-case batch (the {len(idx)} longest rows). {advice}"
        ) from None
    grads = [(n, p.grad) for n, p in model.named_parameters() if p.requires_grad]
    no_grad = [n for n, g in grads if g is None or not torch.isfinite(g).all()]
    model.zero_grad(set_to_none=True)
    out = {
        "rows": len(idx),
        "tokens": _tokens(batch),
        "loss": round(float(loss.detach()), 4),
        "seconds": round(time.time() - t, 2),
        "trainable_tensors": len(grads),
        "without_grad": len(no_grad),
        **memory_now(),
    }
    if not math.isfinite(out["loss"]):
        raise TrainingStopped(f"the preflight loss is {out['loss']}: check the data and the model's dtype")
    if no_grad:
        raise TrainingStopped(
            f"{len(no_grad)} trainable tensors got no (finite) gradient in the preflight (e.g. "
            f"{no_grad[0]}); training would silently skip them"
        )
    return out


def seconds_per_step(trainer: Any, rows: int) -> float:
    """Measured wall time of one optimizer step: forward + backward over the first `rows` training rows, batch by
    batch (no optimizer update; gradients are cleared), times the accumulation steps."""
    ds, model = trainer.train_dataset, trainer.model
    bs = trainer.args.per_device_train_batch_size
    n = max(bs, min(rows, len(ds)))
    model.train()
    t, k = time.time(), 0
    for i in range(0, n, bs):
        batch = trainer.data_collator([ds[j] for j in range(i, min(i + bs, n))])
        items = int((batch["labels"] != -100).sum()) if isinstance(batch, dict) and "labels" in batch else None
        trainer.training_step(model, batch, num_items_in_batch=items)
        k += 1
    model.zero_grad(set_to_none=True)
    return (time.time() - t) / k * trainer.args.gradient_accumulation_steps


def forecast_and_disk(
    trainer: Any, pre: dict[str, Any], steps: int, forecast_rows: int, trainable_params: int, optim: str, folder: Path
) -> tuple[dict[str, Any], int, str]:
    """Before the long run: the wall-time forecast from a few timed batches (the preflight step when
    `forecast_rows` is 0) and the disk check for the checkpoints. Returns (forecast, bytes needed, disk message);
    stops when the disk cannot hold the checkpoints."""
    from ftlab.hardware import telemetry

    step_s = seconds_per_step(trainer, forecast_rows) if forecast_rows else pre["seconds"]
    fc = telemetry.forecast(step_s, steps)
    print(
        f"forecast: {telemetry.human(fc['forecast_s'])} for {steps} steps at {step_s:.2f} s/step"
        + (f"; {fc['advice']}" if fc["advice"] else "")
    )
    need = telemetry.checkpoint_bytes(trainable_params, optim)
    ok, msg = telemetry.disk_check(folder, need)
    print(msg)
    if not ok:
        raise TrainingStopped(msg)
    return fc, need, msg
