"""One training stage as a few calls: a TRL trainer built in the notebook's own cells and `attach`ed (None for a
finished stage), then `Job.preflight`, `Job.fit`, `Job.summary`.

`fit` does the bookkeeping every method needs, in order: move aside checkpoints of other parameters, find the resume
point and cut the metrics back to it, evaluate before training (methods that ask for it), train with the GPU sampler
and disk watch, stop on a guard, evaluate after, save the adapter."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ftlab import models
from ftlab.core import runs, stages
from ftlab.hardware import devices, memory, parallel
from ftlab.train import activations, fused_lora, methods
from ftlab.train import checkpoints as ck
from ftlab.train.callbacks import (
    CheckpointComplete,
    LiveMetrics,
    count_pair_tokens,
    extra_callbacks,
    quiet,
    read_metrics,
)
from ftlab.train.config import Economics, TrainParams, from_params
from ftlab.train.preflight import TrainingStopped, forecast_and_disk, preflight
from ftlab.train.tracking import tensorboard_in_output_dir, tracked
from ftlab.train.trainer_config import config_fields
from ftlab.train.watch import (
    attention_warning,
    evaluate_before_training,
    final_eval,
    save_adapter,
    telemetry_summary,
    train_watched,
)


def inputs(stage: runs.Stage) -> dict[str, Any]:
    """What the method's stage reads from earlier stages (rows, and the adapter it builds on) plus stage 01's
    stats; hashed into the manifest."""
    got = method_module(stage).read_inputs(stage)
    got["stats"] = runs.read_json(stage.input(stages.DATA, "stats.json"))
    return got


def method_module(stage: runs.Stage) -> Any:
    """The checked module of the method this stage trains (`stage.method`; ftlab.train.methods: the contract)."""
    return methods.module(stage)


def finished(stage: runs.Stage) -> bool:
    """The stage already completed with these parameters and its adapter is there: nothing to train again."""
    return stage.previous() is not None and (stage.path(stage.method.adapter) / "adapter_config.json").exists()


def memory_plan(
    stage: runs.Stage,
    quant: str,
    device: str,
    seq_len: int,
    *,
    batch_rows: int | None = None,
    lora: Any = None,
    liger: bool = False,
) -> tuple[Any, str]:
    """The planner's estimate for this stage's configuration, printed as a table, and the advice an OOM would print;
    stops at once when the estimate does not fit the device. `batch_rows` defaults to the method's sequences per
    batch (`batch_rows(params)` of its module: DPO runs two per pair, GRPO num_generations per prompt; else
    batch_size); `lora` (a peft LoraConfig) defaults to the stage's lora_r and lora_targets; the row length is the
    method's `planned_length(params, device, seq_len)` (packed rows fill max_length). Activation offloading
    'auto' is decided here: on only when the plan does not fit without it and fits with it (`Plan.offload`); so is
    gradient checkpointing 'auto': how many layers keep their activations (`Plan.keep_layers`, `ftlab.train.activations`)."""
    p = stage.params
    mod = method_module(stage)
    seq_len = mod.planned_length(p, device, seq_len)
    r, targets = (p["lora_r"], p["lora_targets"]) if lora is None else (lora.r, lora.target_modules)
    targets = "all-linear" if isinstance(targets, str) else list(targets)
    shape = memory.Shape.from_config(models.model_config(p["base_model"]))
    cfg = dict(
        quantization=quant,
        batch_size=batch_rows or mod.batch_rows(p),
        seq_len=seq_len,
        lora_r=r,
        lora_targets=targets,
        dtype_bytes=devices.dtype_bytes(device),
        optim=p["optim"],
        cuda=device == "cuda",
        liger=liger,
        fp16_compute=devices.precision(device)["fp16"],
    )
    limit, limit_name = memory.device_limit()
    offload = p.get("activation_offloading", "off") if device == "cuda" else "off"  # a CPU has nowhere to offload
    plan = memory.training_plan(shape, limit, p["gradient_checkpointing"], offload, **cfg)
    print(activations.describe(plan))
    if plan.offload:
        print("activation offloading: on (checkpointed activations wait in CPU memory)")
    gpus = devices.gpu_count() if stage.name in stages.multi_process_stages() else min(1, devices.gpu_count())
    check, layout_text = parallel.for_stage(shape, plan, limit, gpus, stage=stage.name, **cfg)
    print(memory.table(check, limit, limit_name))
    print(layout_text or "layout: one process on the CPU")
    cfg["gradient_checkpointing"] = plan.checkpointing
    advice = memory.advice(check, limit, memory.suggest(shape, limit * 0.9, **cfg))
    if check.total > limit * 0.95:
        raise TrainingStopped(f"the configuration does not fit: {advice}\n{layout_text}".rstrip())
    return check, advice  # under FSDP the per-GPU plan (same checkpointing and offloading as `plan`)


@dataclass
class Job:
    """One training stage's state: the trainer (None when the stage had already finished), what the preflight and
    the run measured. Its methods print what a reader looks at and return it."""

    stage: runs.Stage
    method: stages.Method
    tokenizer: Any
    steps: int
    quantization: str
    device: str
    trainer: Any = None
    live: LiveMetrics | None = None
    pre: dict[str, Any] = field(default_factory=dict)
    forecast: dict[str, Any] = field(default_factory=dict)
    need_bytes: int = 0
    disk: str = ""
    resume: str | None = None
    eval_before: float | None = None
    final: dict[str, float] = field(default_factory=dict)
    result: Any = None
    trainable_params: int | None = None

    @property
    def done(self) -> bool:
        return self.trainer is None

    @property
    def params(self) -> TrainParams:
        return from_params(TrainParams, self.stage.params)

    def preflight(self, advice: str, plan: Any) -> dict[str, Any]:
        """The worst-case batch, then a few timed batches for the wall-time forecast and the disk check."""
        if self.done:
            return runs.read_json(self.stage.path("summary.json"))["preflight"]
        self.pre = preflight(self.trainer, advice, methods.module(self.method).worst_case)
        print(self.pre)
        e = from_params(Economics, self.stage.params)
        self.forecast, self.need_bytes, self.disk = forecast_and_disk(
            self.trainer,
            self.pre,
            self.steps,
            e.forecast_rows,
            plan.gib()["trainable_params"],
            self.params.optim,
            self.stage.path("checkpoints"),
        )
        for name in ("_metrics", "_stored_metrics"):  # TRL's batch metrics of these test batches are not training's
            for logged in getattr(self.trainer, name, {}).values():
                logged.clear()
        return self.pre

    def fit(self) -> dict[str, float]:
        """Stale guard -> resume point -> eval before -> watched training -> stop check -> eval after -> save."""
        if self.done:
            print(f"{self.stage.name} already finished with these parameters: nothing to train")
            return runs.read_json(self.stage.path("summary.json")).get("eval", {})
        folder, metrics = self.stage.path("checkpoints"), self.stage.path("metrics.jsonl")
        ck.guard_stale_checkpoints(folder, self.stage.params)
        self.resume = ck.last_complete_checkpoint(folder)
        ck.truncate_metrics(metrics, ck.resume_step(self.resume))
        with tracked(self.trainer, self.stage) as finish:  # report_to="mlflow": this stage's run in the local store
            if self.method.eval_before:
                self._eval_before()
            self.result = train_watched(self.trainer, self.live, self.need_bytes, self.resume)
            if self.live.stopped_reason:
                raise TrainingStopped(self.live.stopped_reason)
            self.final = final_eval(self.trainer, self.live)
            adapter = save_adapter(self.trainer, self.tokenizer, self.stage.path(self.method.adapter))
            finish({"eval_loss_before": self.eval_before, **self.final}, adapter, metrics)
        if self.eval_before is not None:
            print(f"eval loss after training: {self.final['eval_loss']:.4f} (before {self.eval_before:.4f})")
        else:
            print({k: round(v, 4) for k, v in self.final.items()})
        return self.final

    def _eval_before(self) -> None:
        if self.resume:
            self.eval_before = runs.read_json(self.stage.path("eval_before.json"))["eval_loss"]
        else:
            self.eval_before = evaluate_before_training(self.trainer)
        self.stage.write_json("eval_before.json", {"eval_loss": self.eval_before})
        print(
            f"eval loss before training: {self.eval_before:.4f}"
            + (f"; resuming from {self.resume}" if self.resume else "")
        )

    def metrics(self) -> list[dict[str, Any]]:
        return read_metrics(self.stage.path("metrics.jsonl"))

    def summary(self, plan: Any, **extra: Any) -> dict[str, Any]:
        """summary.json: steps, losses, evals, memory (estimate vs measured), speed, forecast, telemetry and cost, and
        the method's own `extra` entries; a finished stage's saved summary."""
        if self.done:
            return runs.read_json(self.stage.path("summary.json"))
        metrics, runtime = self.metrics(), self.result.metrics["train_runtime"]
        losses = [m["loss"] for m in metrics if "loss" in m]
        measured = max(m.get("vram_peak_gib", m.get("ram_rss_gib", 0)) for m in [self.pre, *metrics])  # preflight too
        s: dict[str, Any] = {
            "method": self.method.name,
            "steps": self.result.global_step,
            "train_tokens": metrics[-1]["tokens_seen"] if metrics else 0,
            "train_seconds": round(runtime, 1),
            "first_loss": losses[0],
            "last_loss": losses[-1],
        }
        if self.eval_before is not None:
            s.update(eval_loss_before=self.eval_before, eval_loss_after=self.final["eval_loss"])
        s.update(
            eval=self.final,
            resumed_from=self.resume,
            quantization=self.quantization,
            device=self.device,
            preflight=self.pre,
            warnings=self.live.warnings,
            memory={
                "estimate_gib": plan.gib(),
                "measured_peak_gib": measured,
                "measured_what": "torch.cuda.max_memory_allocated" if self.device == "cuda" else "process RSS",
            },
            tokens_per_s=round(metrics[-1]["tokens_seen"] / runtime, 1) if metrics else None,
            forecast=self.forecast,
            disk=self.disk,
            processes=devices.process_rank()[2],
            train_peak_gib=self.live.train_peak,
            trainable_params=self.trainable_params,
            config=config_fields(self.trainer.args),
            **extra,
        )
        return s | telemetry_summary(self.live, runtime, from_params(Economics, self.stage.params))


def datasets(stage: runs.Stage, tokenizer: Any, rows: dict[str, Any], max_length: int) -> tuple[Any, Any]:
    """The method's train and eval datasets (tokenized as stage 01's audit saw them) from `inputs(stage)`."""
    mod = method_module(stage)
    return mod.dataset(tokenizer, rows["train"], max_length), mod.dataset(tokenizer, rows["eval"], max_length)


def attach(
    stage: runs.Stage,
    trainer: Any,
    *,
    quantization: str,
    device: str,
    plan: Any = None,
    dashboard: Callable[[stages.Method, int], Callable[[dict[str, Any]], None]] | None = None,
    rows: int | None = None,
) -> Job:
    """What TRL does not do, put on a TRL trainer built in the open: live metrics and their dashboard, the guards
    (NaN, spikes, disk), checkpoints marked complete, the plan's kept activations, fused 4-bit LoRA layers, token
    counts, TensorBoard's folder. Prints what it changed; returns the Job whose `preflight`, `fit` and `summary`
    run the stage. `trainer=None` (a finished stage): the Job reads the saved results."""
    method = stage.method
    t = from_params(TrainParams, stage.params)
    job = Job(stage, method, trainer.processing_class if trainer else None, t.max_steps, quantization, device)
    if trainer is None:
        print("this stage already finished with these parameters: training is skipped")
        saved = runs.read_json(stage.path("summary.json")) if stage.path("summary.json").exists() else {}
        job.trainable_params = saved.get("trainable_params") or (plan.trainable_params if plan else None)
        return job
    job.trainer, job.live = trainer, LiveMetrics(stage.path("metrics.jsonl"))
    args = trainer.args
    if warning := attention_warning(trainer.model):
        print(f"WARNING: {warning}")
    keep = plan.keep_layers if plan is not None and args.gradient_checkpointing else 0
    callbacks = [job.live, *extra_callbacks(), CheckpointComplete()]
    for cb in callbacks + ([activations.KeepActivations(keep)] if keep else []):
        trainer.add_callback(cb)
    changed = [f"live metrics every {args.logging_steps} steps", "checkpoints marked complete once written"]
    if plan is not None:
        changed.append(activations.describe(plan) if args.gradient_checkpointing else "gradient checkpointing: off")
    n = fused_lora.setup(trainer.model, t.fused_lora, quantization, device)
    changed += [f"fused 4-bit LoRA on {n} layers"] if n else []
    count_pair_tokens(quiet(trainer))
    tensorboard_in_output_dir(trainer)
    # the config's max_steps (a notebook may have changed it), else the epochs over the rows the trainer got
    job.steps = args.max_steps if args.max_steps > 0 else t.total_steps(len(trainer.train_dataset))
    if getattr(args, "packing", False) and rows is not None:
        changed.append(f"packed {rows} conversations into {len(trainer.train_dataset)} rows")
    job.live.on_record = dashboard(method, job.steps) if dashboard else None
    if hasattr(trainer.model, "get_nb_trainable_parameters"):  # PEFT's count (4-bit weights counted unpacked)
        job.trainable_params, total = trainer.model.get_nb_trainable_parameters()
    else:
        job.trainable_params = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in trainer.model.parameters())
    print(
        f"{type(trainer).__name__} ready: {job.steps} optimizer steps of {t.batch_size} x {t.grad_accum} rows; "
        f"trainable parameters {job.trainable_params:,} of {total:,} ({100 * job.trainable_params / total:.2f}%)"
    )
    print("attached: " + "; ".join(changed))
    return job
