"""What surrounds `trainer.train`: the GPU sampler and disk watch while it runs, evaluations before and after,
the telemetry and cost entries of the summary, and the adapter saved atomically."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from ftlab.hardware import devices, telemetry
from ftlab.train.callbacks import DiskWatch, LiveMetrics, read_metrics
from ftlab.train.config import Economics


def train_watched(trainer: Any, live: LiveMetrics, need_bytes: int, resume: str | None) -> Any:
    """`trainer.train` with the GPU sampler running (its samples join every metrics line; on a CPU one note) and
    the disk checked after every checkpoint."""
    import torch

    live.sampler = telemetry.Sampler().start()
    trainer.add_callback(DiskWatch(live, need_bytes))
    if torch.cuda.is_available():  # the training loop's own peak, apart from loading and the preflight
        torch.cuda.reset_peak_memory_stats()
    try:
        result = trainer.train(resume_from_checkpoint=resume)
    finally:
        live.sampler.stop()
    if torch.cuda.is_available():
        live.train_peak = {
            "allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3),
            "reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 3),
        }
    print(live.sampler.note or f"{len(live.sampler.samples)} GPU samples, {live.sampler.energy_wh():.1f} Wh")
    return result


def telemetry_summary(live: LiveMetrics, seconds: float, e: Economics) -> dict[str, Any]:
    """The summary.json entries for what the hardware did and what the run cost."""
    s = live.sampler
    cost = telemetry.economics(s.energy_wh() or None, seconds, e.device_power_w, e.price_per_kwh, e.price_per_gpu_hour)
    return {"telemetry": {"note": s.note, "samples": len(s.samples), "warnings": s.warnings}, "economics": cost}


def evaluate_before_training(trainer: Any) -> float:
    """Eval loss before training: the number to beat. Under FSDP this first evaluation wraps (shards) the model;
    transformers' train() would then look for the wrapped model in `model_wrapped`, find none and start without
    an optimizer, so it is pointed at the wrapped one."""
    loss = trainer.evaluate()["eval_loss"]
    if getattr(trainer, "is_fsdp_enabled", False) and trainer.model_wrapped is not trainer.model:
        trainer.model_wrapped = trainer.model
    return loss


def final_eval(trainer: Any, live: LiveMetrics) -> dict[str, float]:
    """Eval metrics after training: reuse the Trainer's eval at the last step when it ran one, else run it."""
    recs = [r for r in read_metrics(live.path) if "eval_loss" in r]
    if recs and recs[-1]["step"] == trainer.state.global_step:
        return {k: v for k, v in recs[-1].items() if k.startswith("eval_")}
    return {k: v for k, v in trainer.evaluate().items() if k.startswith("eval_")}


def save_adapter(trainer: Any, tokenizer: Any, folder: Path) -> Path:
    """Adapter (safetensors + config) and the tokenizer with its chat template, written to a temp dir then moved."""
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    main = devices.is_main_process()
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
    if devices.process_rank()[2] > 1:  # every process takes part: under FSDP the adapter is gathered from the shards
        devices.wait_for_everyone()
        trainer.save_model(str(tmp))  # the main process writes
        if main:
            (tmp / "training_args.bin").unlink(missing_ok=True)  # a pickle the adapter folder does not need
    else:
        trainer.model.save_pretrained(tmp, safe_serialization=True, selected_adapters=["default"])  # not DPO's 'ref'
    if main:
        tokenizer.save_pretrained(tmp)
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    devices.wait_for_everyone()
    return folder


def attention_warning(model: Any) -> str | None:
    """Eager attention on a GPU materializes the full attention matrix: slow and memory-hungry."""
    impl = getattr(model.config, "_attn_implementation", None)
    if devices.kind() == "cuda" and impl == "eager":
        return (
            "attention fell back to the slow 'eager' kernel: training will be slower and use more memory. "
            "Use a model with sdpa support, or install flash-attn and pass attn_implementation='flash_attention_2'."
        )
    return None


def check_same_model(stats: dict[str, Any], base_model: str, tokenizer: Any) -> None:
    """Stage 01 audited one tokenizer and template; training with another would silently change the format."""
    from ftlab.data.template_audit import template_hash

    if stats["base_model"] != base_model:
        raise ValueError(
            f"stage 01 prepared the data for base_model={stats['base_model']!r} but this stage has "
            f"base_model={base_model!r}; rerun stage 01 with the same base_model, or set it here."
        )
    if stats["audit"]["template_sha256_16"] != template_hash(tokenizer):
        raise ValueError(
            "the chat template differs from the one stage 01 audited (the model folder changed?); rerun stage 01."
        )
