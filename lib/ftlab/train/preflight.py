"""Before the long run: the worst-case batch through the Trainer's own loss path (an out-of-memory error surfaces
now, with the planner's advice), gradients on every trainable tensor, a measured wall-time forecast and the disk.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from ftlab.train.activations import KeepActivations
from ftlab.train.callbacks import memory_now


class TrainingStopped(RuntimeError):
    """Training stopped on purpose (NaN/inf loss, out of memory in the preflight); the message says why and what to do."""


def worst_case_batch(dataset: Any, batch_size: int, group: int = 1) -> list[int]:
    """Indices of the `batch_size` longest rows: the batch that sets peak memory. GRPO (`group` answers sampled per
    prompt): the batch_size / group longest prompts (by characters: its rows are text), each `group` times."""
    names = dataset.column_names
    if group > 1:
        lengths = [sum(len(m["content"]) for m in p) for p in dataset["prompt"]]
        longest = sorted(range(len(lengths)), key=lambda i: -lengths[i])[: max(1, batch_size // group)]
        return [i for i in longest for _ in range(group)]
    if "chosen_input_ids" in names:  # ORPO: each answer tokenized with its prompt
        lengths = [max(len(a), len(b)) for a, b in zip(dataset["chosen_input_ids"], dataset["rejected_input_ids"])]
    elif "input_ids" in names:
        lengths = [len(x) for x in dataset["input_ids"]]
    else:  # DPO: prompt + the longer of the two answers; KTO: prompt + its answer (and its KL partner's)
        answers = [k for k in ("chosen_ids", "rejected_ids", "completion_ids", "KL_completion_ids") if k in names]
        cols = zip(dataset["prompt_ids"], *(dataset[k] for k in answers), strict=True)
        lengths = [len(p) + max(len(a) for a in rest) for p, *rest in cols]
    return sorted(range(len(lengths)), key=lambda i: -lengths[i])[:batch_size]


def _tokens(batch: Any) -> int | None:
    """Token positions in a collated batch (ORPO: chosen + rejected sequences); None for GRPO, whose step samples
    its answers."""
    if not isinstance(batch, dict):
        return None
    if "input_ids" in batch:
        return int(batch["input_ids"].numel())
    return sum(int(v.numel()) for k, v in batch.items() if k.endswith("_input_ids") and not k.startswith("prompt"))


def preflight(trainer: Any, advice: str) -> dict[str, Any]:
    """One training step's forward + backward on the worst-case batch, through the Trainer's own loss path
    (gradient checkpointing, mixed precision, TRL's chunked loss), before the real run. OOM -> TrainingStopped."""
    import torch

    group = getattr(trainer, "num_generations", 1)  # GRPO: its step samples the answers it trains on
    idx = worst_case_batch(trainer.train_dataset, trainer.args.per_device_train_batch_size, group)
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
