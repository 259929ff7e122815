"""Build and run the SFT trainer (TRL): datasets from stage 01, LoRA config, arguments, live metrics and guards,
checkpoints that are only used once complete, resume, and the preflight on the worst-case batch.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from ftlab import runs
from ftlab.audit import encode

CHECKPOINT_DONE = "CHECKPOINT_COMPLETE"


class TrainingStopped(RuntimeError):
    """Training stopped on purpose (NaN/inf loss, out of memory in the preflight); the message says why and what to do."""


def device_kind() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def encode_dataset(tokenizer: Any, rows: list[dict[str, Any]], max_length: int) -> Any:
    """Pre-tokenized rows: `input_ids` + `assistant_masks`; TRL turns the mask into labels (-100 elsewhere)."""
    from datasets import Dataset

    encs = [encode(tokenizer, r["messages"], max_length) for r in rows]
    return Dataset.from_dict(
        {"input_ids": [e.input_ids for e in encs], "assistant_masks": [e.assistant_masks for e in encs]}
    )


def lora_config(r: int, alpha: int, dropout: float, targets: str | list[str]) -> Any:
    from peft import LoraConfig

    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, bias="none", task_type="CAUSAL_LM",
                      target_modules="all-linear" if targets == "all-linear" else list(targets))  # fmt: skip


def precision(device: str) -> dict[str, bool]:
    import torch

    if device != "cuda":
        return {"bf16": False, "fp16": False}
    bf16 = torch.cuda.is_bf16_supported()
    return {"bf16": bf16, "fp16": not bf16}


def liger_available() -> bool:
    import importlib.util

    return device_kind() == "cuda" and importlib.util.find_spec("liger_kernel") is not None


def sft_args(out_dir: Path, p: dict[str, Any], device: str, attn: str | None = None) -> Any:
    """TRL SFTConfig from the stage parameters; the defaults are the ones our benchmarks chose. `attn` is the
    model's attention implementation (`model.config._attn_implementation`): padding_free='auto' depends on it."""
    from trl import SFTConfig

    report_to = [] if p["report_to"] == "none" else [p["report_to"]]
    if p["report_to"] == "mlflow":
        import importlib.util

        if importlib.util.find_spec("mlflow") is None:
            raise ValueError("report_to='mlflow' needs the mlflow package, which is not in requirements.lock: "
                             "pip install mlflow, or use report_to='tensorboard' (installed).")  # fmt: skip
        os.environ.setdefault("MLFLOW_TRACKING_URI", (Path(out_dir) / "mlruns").resolve().as_uri())  # local, no server
    # padding-free: a batch becomes one row with position_ids restarting per conversation; attention stays within
    # each conversation (block-diagonal mask under sdpa, varlen kernels under flash attention) and no step is spent
    # on padding tokens. encode_dataset already rejected rows over max_length, so TRL need not enforce it.
    args = trainer_args(out_dir, p, device)
    free = padding_free(p.get("padding_free", "off"), device, attn)
    if free:
        args["max_length"] = None
    return SFTConfig(**args, report_to=report_to, use_liger_kernel=liger_available() and p["liger"],
                     padding_free=free, activation_offloading=offload_activations(p.get("activation_offloading", "off"), device),
                     loss_type=p.get("loss_type", "nll"))  # fmt: skip


def offload_activations(setting: str, device: str) -> bool:
    """'on' / 'off', or 'auto': on CUDA (an 8B QLoRA step on an H100 kept 1.8 GiB less at about 1% of the speed,
    benchmarks/results/speed_h100.json); a CPU has nothing to offload to."""
    return device == "cuda" and setting in ("on", "auto")


# attention kernels that run packed rows as separate sequences (cu_seqlens), so padding-free costs nothing extra
VARLEN_ATTENTION = ("flash_attention_2", "flash_attention_3")


def padding_free(setting: str, device: str, attn: str | None = None) -> bool:
    """'on' / 'off', or 'auto': on only on CUDA with a varlen attention kernel. Under sdpa a padding-free row gets a
    dense block-diagonal mask whose cost grows with the square of the packed length: on an H100 it lost to padded
    batches (benchmarks/results/speed_h100_padding_free_sdpa.json), so 'auto' leaves it off there."""
    return setting == "on" or (setting == "auto" and device == "cuda" and attn in VARLEN_ATTENTION)


def trainer_args(out_dir: Path, p: dict[str, Any], device: str) -> dict[str, Any]:
    """What SFT and DPO share: seeds, schedule (cosine with warmup), batch and accumulation, 8-bit AdamW,
    non-reentrant checkpointing, eval/save/log cadence, non-padding token counting, CPU or bf16/fp16."""
    return dict(
        output_dir=str(out_dir), seed=p["seed"], data_seed=p["seed"],
        num_train_epochs=p["epochs"], max_steps=p["max_steps"] if p["max_steps"] > 0 else -1,
        per_device_train_batch_size=p["batch_size"], per_device_eval_batch_size=p["batch_size"],
        gradient_accumulation_steps=p["grad_accum"], learning_rate=p["learning_rate"],
        lr_scheduler_type="cosine", warmup_steps=p["warmup_steps"], weight_decay=0.0, max_grad_norm=1.0,
        optim=p["optim"], gradient_checkpointing=p["gradient_checkpointing"],
        gradient_checkpointing_kwargs={"use_reentrant": False},
        eval_strategy="steps" if p["eval_steps"] > 0 else "no", eval_steps=p["eval_steps"] or None,
        save_strategy="steps", save_steps=p["save_steps"], save_total_limit=2,
        logging_steps=p["logging_steps"], logging_first_step=True, include_num_input_tokens_seen="non_padding",
        max_length=p["max_length"], use_cpu=device == "cpu", dataloader_num_workers=0, disable_tqdm=True,
        save_only_model=False, **precision(device),
    )  # fmt: skip


# ---- checkpoints -----------------------------------------------------------------------------------------------


def last_complete_checkpoint(folder: Path) -> str | None:
    """The newest checkpoint-N that was completely written; half-written ones are moved aside, never resumed."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    best = None
    for d in sorted(
        folder.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]) if p.name.split("-")[1].isdigit() else -1
    ):
        if (d / CHECKPOINT_DONE).exists():
            best = d
        elif runs.is_main_process():  # several processes: the main one moves it, the others just skip it
            aside = folder / f"incomplete-{d.name}-{int(time.time())}"
            d.rename(aside)
            print(f"checkpoint {d.name} was not completely written (interrupted save): moved to {aside.name}")
    return str(best) if best else None


def guard_stale_checkpoints(folder: Path, params: dict[str, Any]) -> None:
    """Checkpoints of a run with different parameters must not be resumed: move them aside."""
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / "params.json"
    if runs.is_main_process():
        if marker.exists() and json.loads(marker.read_text()) != params:
            aside = folder.with_name(f"{folder.name}-stale-{int(time.time())}")
            folder.rename(aside)
            print(f"parameters changed since the checkpoints were written: old checkpoints moved to {aside.name}")
            folder.mkdir(parents=True)
        marker.write_text(json.dumps(params, indent=1, sort_keys=True))
    runs.wait_for_everyone()


class CheckpointComplete(TrainerCallback):
    """Mark a checkpoint complete once the Trainer has written all of it (model, optimizer, RNG, state)."""

    def on_save(self, args, state, control, **kw):
        d = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if d.is_dir() and getattr(state, "is_world_process_zero", True):
            (d / CHECKPOINT_DONE).write_text(str(state.global_step))


class CrashAt(TrainerCallback):
    """Testing aid: FTLAB_CRASH_AT_STEP=N kills the process abruptly after step N, as a power cut would;
    FTLAB_CRASH_IN_SAVE_AT_STEP=N kills it while checkpoint-N is written (files there, completion mark not yet).
    Listed before CheckpointComplete so that its on_save runs first."""

    def on_step_end(self, args, state, control, **kw):
        if os.environ.get("FTLAB_CRASH_AT_STEP") == str(state.global_step):
            os._exit(137)

    def on_save(self, args, state, control, **kw):
        if os.environ.get("FTLAB_CRASH_IN_SAVE_AT_STEP") == str(state.global_step):
            os._exit(137)


# ---- live metrics and guards -------------------------------------------------------------------------------------


def memory_now() -> dict[str, float]:
    import psutil
    import torch

    out = {"ram_rss_gib": round(psutil.Process().memory_info().rss / 2**30, 3)}
    if torch.cuda.is_available():
        out["vram_alloc_gib"] = round(torch.cuda.memory_allocated() / 2**30, 3)
        out["vram_reserved_gib"] = round(torch.cuda.memory_reserved() / 2**30, 3)
        out["vram_peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    return out


class LiveMetrics(TrainerCallback):
    """Every log: one line in metrics.jsonl (loss, eval loss, grad norm, lr, tokens/s, memory, ETA) and guards."""

    KEYS = ("loss", "eval_loss", "grad_norm", "learning_rate", "mean_token_accuracy", "eval_mean_token_accuracy",
            "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
            "eval_rewards/chosen", "eval_rewards/rejected", "eval_rewards/margins", "eval_rewards/accuracies")  # fmt: skip

    def __init__(
        self, path: Path, on_record: Callable[[dict[str, Any]], None] | None = None, log: Callable[[str], None] = print
    ):
        self.path, self.on_record, self.log = Path(path), on_record, log
        self.losses: list[float] = []
        self.grads: list[float] = []
        self.warnings: list[str] = []
        self.stopped_reason: str | None = None
        self.sampler: Any = None  # a telemetry.Sampler: its latest GPU sample joins every record
        self.train_peak: dict[str, float] = {}  # CUDA peak of the training loop alone (train_watched fills it)
        self._t = self._tok = None
        self._t0, self._step0 = time.time(), 0

    def on_train_begin(self, args, state, control, **kw):
        self._t, self._tok, self._t0, self._step0 = (
            time.time(),
            state.num_input_tokens_seen,
            time.time(),
            state.global_step,
        )

    def _warn(self, msg: str) -> None:
        self.warnings.append(msg)
        self.log(f"WARNING: {msg}")

    def on_log(self, args, state, control, logs=None, **kw):
        logs = dict(logs or {})
        now = time.time()
        rec: dict[str, Any] = {"step": state.global_step, "epoch": round(state.epoch or 0, 4), "time": round(now, 2)}
        for k in self.KEYS:
            if k in logs:
                rec[k] = float(logs[k])
        seen = state.num_input_tokens_seen
        if "loss" in rec and self._t is not None and now > self._t:
            rec["tokens_per_s"] = round((seen - self._tok) / (now - self._t), 1)
            self._t, self._tok = now, seen
        done = state.global_step - self._step0
        if done > 0 and state.max_steps:
            rec["eta_s"] = round((now - self._t0) / done * (state.max_steps - state.global_step), 1)
        rec["tokens_seen"] = seen
        rec.update(memory_now())
        if self.sampler is not None:
            rec.update(self.sampler.latest())
            for w in self.sampler.warnings:
                if w not in self.warnings:
                    self._warn(w)
        self._guards(rec, control)  # every process: they all see the same gathered loss and stop together
        if not getattr(state, "is_world_process_zero", True):  # several processes train: the main one writes and shows the records
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")
        if self.on_record:
            self.on_record(rec)

    def _guards(self, rec: dict[str, Any], control: Any) -> None:
        loss = rec.get("loss", rec.get("eval_loss"))
        if loss is not None and not math.isfinite(loss):
            self.stopped_reason = (f"loss became {loss} at step {rec['step']}: training stopped. Usual causes: learning "
                                   "rate too high, fp16 overflow (use bf16 or a lower LR), bad rows (rerun stage 01).")  # fmt: skip
            control.should_training_stop = True
            return
        if "loss" in rec:
            if len(self.losses) >= 5 and rec["loss"] > 2.0 * statistics.median(self.losses[-20:]):
                self._warn(f"loss spike at step {rec['step']}: {rec['loss']:.3f} vs median {statistics.median(self.losses[-20:]):.3f}; "
                           "if it repeats lower the learning rate (or try nf4 -> none quantization to rule it out)")  # fmt: skip
            self.losses.append(rec["loss"])
        g = rec.get("grad_norm")
        if g is not None:
            if not math.isfinite(g) or (len(self.grads) >= 5 and g > 10 * statistics.median(self.grads[-20:])):
                self._warn(f"grad norm {g:.3g} at step {rec['step']} is far above its median: lower the learning rate")
            self.grads.append(g if math.isfinite(g) else 0.0)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    p = Path(path)
    return [json.loads(x) for x in p.read_text().splitlines() if x.strip()] if p.exists() else []


# ---- preflight -----------------------------------------------------------------------------------------------


def worst_case_batch(dataset: Any, batch_size: int) -> list[int]:
    """Indices of the `batch_size` longest rows: the batch that sets peak memory."""
    if "input_ids" in dataset.column_names:
        lengths = [len(x) for x in dataset["input_ids"]]
    else:  # a DPO dataset: prompt + the longer of the two answers
        cols = zip(dataset["prompt_ids"], dataset["chosen_ids"], dataset["rejected_ids"], strict=True)
        lengths = [len(p) + max(len(c), len(r)) for p, c, r in cols]
    return sorted(range(len(lengths)), key=lambda i: -lengths[i])[:batch_size]


def preflight(trainer: Any, advice: str) -> dict[str, Any]:
    """One training step's forward + backward on the worst-case batch, through the Trainer's own loss path
    (gradient checkpointing, mixed precision, TRL's chunked loss), before the real run. OOM -> TrainingStopped."""
    import torch

    idx = worst_case_batch(trainer.train_dataset, trainer.args.per_device_train_batch_size)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in idx])
    model = trainer.model
    if not hasattr(trainer, "current_gradient_accumulation_steps"):  # set inside train(); DPO's loss reads it
        trainer.current_gradient_accumulation_steps = trainer.args.gradient_accumulation_steps
    if trainer.args.gradient_checkpointing:  # the Trainer turns it on only inside train(); the preflight needs it now
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=trainer.args.gradient_checkpointing_kwargs)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t = time.time()
    model.train()
    try:
        n_items = int((batch["labels"] != -100).sum()) if "labels" in batch else None
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
    out = {"rows": len(idx), "tokens": int(batch["input_ids"].numel()), "loss": round(float(loss.detach()), 4),
           "seconds": round(time.time() - t, 2), "trainable_tensors": len(grads), "without_grad": len(no_grad),
           **memory_now()}  # fmt: skip
    if not math.isfinite(out["loss"]):
        raise TrainingStopped(f"the preflight loss is {out['loss']}: check the data and the model's dtype")
    if no_grad:
        raise TrainingStopped(f"{len(no_grad)} trainable tensors got no (finite) gradient in the preflight (e.g. "
                              f"{no_grad[0]}); training would silently skip them")  # fmt: skip
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
        items = int((batch["labels"] != -100).sum()) if "labels" in batch else None
        trainer.training_step(model, batch, num_items_in_batch=items)
        k += 1
    model.zero_grad(set_to_none=True)
    return (time.time() - t) / k * trainer.args.gradient_accumulation_steps


class DiskWatch(TrainerCallback):
    """After each checkpoint: warn (with the largest consumers) when the disk will not hold the next one."""

    def __init__(self, live: LiveMetrics, need_bytes: int):
        self.live, self.need = live, need_bytes

    def on_save(self, args, state, control, **kw):
        from ftlab.telemetry import disk_check

        ok, msg = disk_check(Path(args.output_dir), self.need)
        if not ok and msg not in self.live.warnings:
            self.live._warn(msg)


def forecast_and_disk(trainer: Any, pre: dict[str, Any], steps: int, forecast_rows: int, trainable_params: int,
                      optim: str, folder: Path) -> tuple[dict[str, Any], int, str]:  # fmt: skip
    """Before the long run: the wall-time forecast from a few timed batches (the preflight step when
    `forecast_rows` is 0) and the disk check for the checkpoints. Returns (forecast, bytes needed, disk message);
    stops when the disk cannot hold the checkpoints."""
    from ftlab import telemetry

    step_s = seconds_per_step(trainer, forecast_rows) if forecast_rows else pre["seconds"]
    fc = telemetry.forecast(step_s, steps)
    print(f"forecast: {telemetry.human(fc['forecast_s'])} for {steps} steps at {step_s:.2f} s/step"
          + (f"; {fc['advice']}" if fc["advice"] else ""))  # fmt: skip
    need = telemetry.checkpoint_bytes(trainable_params, optim)
    ok, msg = telemetry.disk_check(folder, need)
    print(msg)
    if not ok:
        raise TrainingStopped(msg)
    return fc, need, msg


def train_watched(trainer: Any, live: LiveMetrics, need_bytes: int, resume: str | None) -> Any:
    """`trainer.train` with the GPU sampler running (its samples join every metrics line; on a CPU one note) and
    the disk checked after every checkpoint."""
    import torch

    from ftlab import telemetry

    live.sampler = telemetry.Sampler().start()
    trainer.add_callback(DiskWatch(live, need_bytes))
    if torch.cuda.is_available():  # the training loop's own peak, apart from loading and the preflight
        torch.cuda.reset_peak_memory_stats()
    try:
        result = trainer.train(resume_from_checkpoint=resume)
    finally:
        live.sampler.stop()
    if torch.cuda.is_available():
        live.train_peak = {"allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3),
                           "reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 3)}  # fmt: skip
    print(live.sampler.note or f"{len(live.sampler.samples)} GPU samples, {live.sampler.energy_wh():.1f} Wh")
    return result


def telemetry_summary(live: LiveMetrics, seconds: float, p: dict[str, Any]) -> dict[str, Any]:
    """The summary.json entries for what the hardware did and what the run cost."""
    from ftlab import telemetry

    s = live.sampler
    return {"telemetry": {"note": s.note, "samples": len(s.samples), "warnings": s.warnings},
            "economics": telemetry.economics(s.energy_wh() or None, seconds, p["device_power_w"], p["price_per_kwh"],
                                             p["price_per_gpu_hour"])}  # fmt: skip


def save_adapter(trainer: Any, tokenizer: Any, folder: Path) -> Path:
    """Adapter (safetensors + config) and the tokenizer with its chat template, written to a temp dir then moved."""
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    main = runs.is_main_process()
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
    if runs.process_rank()[2] > 1:  # every process takes part: under FSDP the adapter is gathered from the shards
        runs.wait_for_everyone()
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
    runs.wait_for_everyone()
    return folder


def attention_warning(model: Any) -> str | None:
    """Eager attention on a GPU materializes the full attention matrix: slow and memory-hungry."""
    impl = getattr(model.config, "_attn_implementation", None)
    if device_kind() == "cuda" and impl == "eager":
        return (
            "attention fell back to the slow 'eager' kernel: training will be slower and use more memory. "
            "Use a model with sdpa support, or install flash-attn and pass attn_implementation='flash_attention_2'."
        )
    return None


def check_same_model(stats: dict[str, Any], base_model: str, tokenizer: Any) -> None:
    """Stage 01 audited one tokenizer and template; training with another would silently change the format."""
    from ftlab.audit import template_hash

    if stats["base_model"] != base_model:
        raise ValueError(f"stage 01 prepared the data for base_model={stats['base_model']!r} but this stage has "
                         f"base_model={base_model!r}; rerun stage 01 with the same base_model, or set it here.")  # fmt: skip
    if stats["audit"]["template_sha256_16"] != template_hash(tokenizer):
        raise ValueError(
            "the chat template differs from the one stage 01 audited (the model folder changed?); rerun stage 01."
        )


def truncate_metrics(path: Path, step: int | None) -> None:
    """On resume keep only the records up to the checkpoint's step; on a fresh start remove the old file."""
    path = Path(path)
    if not runs.is_main_process():
        return
    if step is None:
        path.unlink(missing_ok=True)
        return
    keep = [r for r in read_metrics(path) if r["step"] <= step]
    path.write_text("".join(json.dumps(r) + "\n" for r in keep))


def total_steps(n_rows: int, p: dict[str, Any]) -> int:
    if p["max_steps"] > 0:
        return p["max_steps"]
    per_epoch = math.ceil(n_rows / p["batch_size"] / p["grad_accum"] / runs.process_rank()[2])  # / processes
    return max(1, math.ceil(per_epoch * p["epochs"]))


def quiet(trainer: Any) -> Any:
    """Drop the Trainer's own dict printing: LiveMetrics already prints one readable line per log."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    return trainer


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


def final_eval_loss(trainer: Any, live: LiveMetrics) -> float:
    return final_eval(trainer, live)["eval_loss"]


# ---- DPO ---------------------------------------------------------------------------------------------------------


def prompt_length(tokenizer: Any, prompt: list[dict[str, str]]) -> int:
    return len(tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"])  # fmt: skip


def check_pairs(
    rows: list[dict[str, Any]], tokenizer: Any, max_length: int, max_prompt_length: int
) -> tuple[list[dict[str, Any]], list[Any]]:
    """Pairs DPO can train on whole. TRL would silently cut long prompts or drop fully truncated rows; here such
    rows are reported (with their line numbers) instead. Returns (kept rows, rejected records)."""
    from ftlab.data import Rejected

    keep, rejected = [], []
    for r in rows:
        p = prompt_length(tokenizer, r["prompt"])
        full = max(len(encode(tokenizer, r["prompt"] + r[k]).input_ids) for k in ("chosen", "rejected"))
        line, src = r.get("_line", 0), r.get("_source", "")
        if p > max_prompt_length:
            rejected.append(Rejected(line, "prompt_too_long", f"{p} > max_prompt_length {max_prompt_length}", r, src))
        elif full > max_length:
            rejected.append(Rejected(line, "too_long", f"{full} tokens > max_length {max_length}", r, src))
        else:
            keep.append({**r, "_tokens": full})
    return keep, rejected


def self_pairs(rows: list[dict[str, Any]], answers: list[str]) -> tuple[list[dict[str, Any]], list[Any]]:
    """On-the-fly pairs: chosen = the reference answer, rejected = the model's own greedy answer where it differs.
    An empty answer (the model stopped at once) is kept as a rejected answer: it is a real failure to push down."""
    from ftlab.data import Rejected
    from ftlab.scoring import exact_match

    pairs, same = [], []
    for r, a in zip(rows, answers, strict=True):
        prompt, ref = r["messages"][:-1], r["messages"][-1]["content"]
        if exact_match(a, ref):
            same.append(Rejected(r.get("_line", 0), "self_answer_matches", f"model answer {a[:60]!r}", r, r.get("_source", "")))  # fmt: skip
            continue
        pairs.append({"prompt": prompt, "chosen": [{"role": "assistant", "content": ref}],
                      "rejected": [{"role": "assistant", "content": a}], "_line": r.get("_line", 0),
                      "_source": "self:" + str(r.get("_source", ""))})  # fmt: skip
    return pairs, same


def pairs_dataset(rows: list[dict[str, Any]]) -> Any:
    from datasets import Dataset

    return Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows])


def dpo_args(out_dir: Path, p: dict[str, Any], device: str) -> Any:
    """TRL DPOConfig from the stage parameters (same conventions as `sft_args`)."""
    from trl import DPOConfig

    return DPOConfig(**trainer_args(out_dir, p, device), report_to=[], beta=p["beta"], loss_type=[p["loss_type"]])


def reference_is_sft(model: Any) -> dict[str, Any]:
    """The frozen reference must be a copy of the SFT adapter (TRL's "ref"), not the raw base: check the weights."""
    import torch

    ref = {n: p for n, p in model.named_parameters() if ".ref." in n}
    if not ref:
        raise TrainingStopped(
            "no frozen 'ref' adapter: DPO would compare against the raw base model, not the SFT policy"
        )
    pol = dict(model.named_parameters())
    diff = max(float((p - pol[n.replace(".ref.", ".default.")]).abs().max()) for n, p in ref.items())
    return {"ref_tensors": len(ref), "ref_trainable": sum(p.requires_grad for p in ref.values()),
            "max_abs_diff_to_policy": diff, "ref_nonzero": any(bool(torch.any(p != 0)) for p in ref.values())}  # fmt: skip
