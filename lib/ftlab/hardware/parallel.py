"""Which layout trains a configuration, from the memory planner's estimates: one card, DDP, FSDP-QLoRA, or none.

    one card fits, one GPU        -> one process (the notebook, or `python -m ftlab run 02`)
    one card fits, several GPUs   -> DDP: each GPU holds the whole 4-bit model, tokens/s grows with the GPUs
    one card does not fit         -> FSDP-QLoRA over the GPUs, when the per-GPU estimate fits
    neither                       -> does not fit, with the settings that would (`memory.suggest`) and the GPUs needed

The FSDP estimate (`fsdp_estimate`, FULL_SHARD as `accelerate/fsdp_qlora.yaml` sets it) splits the 4-bit decoder
weights, the LoRA weights, their gradients and the optimizer states across the GPUs. Each GPU still holds the root
unit whole (embeddings, lm_head and final norm: FSDP keeps the root's parameters gathered from forward to
backward), two decoder layers gathered at once (the one computing and the one prefetched), the activations and logits
of its own micro-batch, and NCCL's buffers.

Loading: without CPU-RAM-efficient loading every process first loads the whole 4-bit model onto its own GPU and
FSDP shards it afterwards. The estimate then adds that whole copy: the one FSDP measurement
(`benchmarks/results/multi_gpu_8b_h200x2.json`, 8B on two H200s) had a per-GPU training peak of 10.8 GiB, 1.64x one
GPU's 6.6 GiB, so sharding did not lower it. `ram_efficient=True` plans for loading where rank 0 reads the
weights and the others receive their shards; that path has not been measured yet.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any

from ftlab.core import stages
from ftlab.core.paths import repo_root
from ftlab.hardware import memory

ONE, DDP, FSDP, NONE = "one", "ddp", "fsdp", "none"
NCCL_BYTES = 0.5 * memory.GIB  # communication buffers and streams, per GPU
FIT_SHARE = 0.95  # as the single-card check: a plan fits under 95% of the card


@dataclass
class Layout:
    kind: str  # ONE, DDP, FSDP or NONE
    gpus: int
    plan: memory.Plan  # per GPU, in the chosen layout (one card's plan for ONE/DDP/NONE)
    single: memory.Plan  # the whole configuration on one card
    fsdp: memory.Plan | None  # per GPU under FSDP over `gpus` (None with one GPU)
    card_bytes: float
    why: str
    command: str = ""
    gpus_needed: int | None = None  # for NONE: the fewest GPUs FSDP would need (up to 8), if any


def fsdp_estimate(shape: memory.Shape, gpus: int, *, ram_efficient: bool = False, **cfg: Any) -> memory.Plan:
    """Per-GPU peak under FSDP FULL_SHARD over `gpus` processes (see the module's docstring for what is split)."""
    one = memory.estimate(shape, **cfg)
    dtype_bytes = cfg.get("dtype_bytes", 2)
    lin, other = shape.linear_params(), shape.other_params()
    per_linear = 0.52 if cfg["quantization"] == "4bit" else dtype_bytes
    decoder = lin * per_linear
    gathered = 2 * decoder / shape.layers + other * dtype_bytes
    weights = decoder / gpus + gathered + (0.0 if ram_efficient else one.weights)  # the whole copy as loaded
    context = one.context + (NCCL_BYTES if cfg.get("cuda", True) else 0.0)
    parts = dict(weights=weights, lora=one.lora / gpus, optimizer=one.optimizer / gpus, activations=one.activations)
    total = (sum(parts.values()) + one.logits + context) * 1.10
    return replace(one, **parts, context=context, total=total)


def launch_command(kind: str, gpus: int, stage: str = stages.TRAIN_SFT, params_file: str | None = None) -> str:
    """The command that trains `stage` in this layout (run from the repository root)."""
    args = f"-m ftlab.runner.launch {stage}" + (f" -f {params_file}" if params_file else "")
    if kind in (ONE, NONE) or gpus <= 1:
        return f"python {args}   (or run notebooks/{stage}.ipynb)"
    config = (
        repo_root() / "lib" / "ftlab" / "accelerate" / f"{'ddp' if kind == DDP else 'fsdp_qlora'}.yaml"
    ).relative_to(repo_root())
    return f"accelerate launch --config_file {config} --num_processes {gpus} {args}"


def choose(
    shape: memory.Shape,
    card_bytes: float,
    gpus: int,
    *,
    ram_efficient: bool = False,
    params_file: str | None = None,
    stage: str = stages.TRAIN_SFT,
    **cfg: Any,
) -> Layout:
    """The layout for `gpus` cards of `card_bytes` each. `cfg`: `memory.estimate`'s keyword arguments (one
    process's micro-batch)."""
    single = memory.estimate(shape, **cfg)
    limit = card_bytes * FIT_SHARE
    fsdp = fsdp_estimate(shape, gpus, ram_efficient=ram_efficient, **cfg) if gpus > 1 else None
    g = memory.GIB
    if single.total <= limit:
        kind = DDP if gpus > 1 else ONE
        why = f"one card holds it (estimate {single.total / g:.1f} of {card_bytes / g:.1f} GiB)" + (
            f"; DDP trains on all {gpus} GPUs, each with the whole model" if gpus > 1 else ""
        )
        return Layout(kind, gpus, single, single, fsdp, card_bytes, why, launch_command(kind, gpus, stage, params_file))
    if fsdp is not None and fsdp.total <= limit:
        why = (
            f"one card does not hold it ({single.total / g:.1f} GiB > {card_bytes / g:.1f}); FSDP over {gpus} GPUs: "
            f"{fsdp.total / g:.1f} GiB per GPU"
        )
        return Layout(FSDP, gpus, fsdp, single, fsdp, card_bytes, why, launch_command(FSDP, gpus, stage, params_file))
    needed = next(
        (n for n in range(2, 9) if fsdp_estimate(shape, n, ram_efficient=True, **cfg).total <= limit),
        None,
    )
    why = f"one card does not hold it ({single.total / g:.1f} GiB > {card_bytes / g:.1f})"
    if fsdp is not None:
        why += f", nor FSDP over {gpus} GPUs ({fsdp.total / g:.1f} GiB per GPU, the whole model loaded on each first)"
    if needed:
        why += (
            f"; FSDP with CPU-RAM-efficient loading (not measured yet) would need {needed} such GPUs"
            f" ({fsdp_estimate(shape, needed, ram_efficient=True, **cfg).total / g:.1f} GiB each)"
        )
    else:
        why += "; not even 8 GPUs with FSDP: use the settings below or a smaller model"
    return Layout(NONE, gpus, single, single, fsdp, card_bytes, why, launch_command(NONE, gpus, stage), needed)


def describe(layout: Layout) -> str:
    """Two lines for stage 02: the layout and why, then the command."""
    names = {ONE: "one GPU", DDP: "DDP", FSDP: "FSDP-QLoRA", NONE: "does not fit"}
    text = f"layout for {layout.gpus} GPU(s) of {layout.card_bytes / memory.GIB:.1f} GiB: {names[layout.kind]} ({layout.why})"
    return text + (f"\n  launch: {layout.command}" if layout.kind != NONE else "")


def under_fsdp() -> tuple[bool, bool]:
    """(this process is one of several under FSDP, with CPU-RAM-efficient loading), from the variables
    `accelerate launch` sets from its config file."""
    env = os.environ
    several = int(env.get("WORLD_SIZE", "1")) > 1
    return several and env.get("ACCELERATE_USE_FSDP", "").lower() == "true", env.get(
        "FSDP_CPU_RAM_EFFICIENT_LOADING", ""
    ).lower() == "true"


def for_stage(
    shape: memory.Shape, plan: memory.Plan, card_bytes: float, gpus: int, stage: str = stages.TRAIN_SFT, **cfg: Any
) -> tuple[memory.Plan, str]:
    """Stage 02/03's view: the plan its fit check uses (the per-GPU FSDP estimate when launched under FSDP, else
    `plan`) and the lines it prints (the layout this machine's GPUs would take and its launch command)."""
    cfg = {
        **cfg,
        "gradient_checkpointing": plan.checkpointing,
        "keep_layers": plan.keep_layers,
        "offload": plan.offload,
    }
    fsdp, ram_efficient = under_fsdp()
    if fsdp:
        world = int(os.environ["WORLD_SIZE"])
        per_gpu = fsdp_estimate(shape, world, ram_efficient=ram_efficient, **cfg)
        return per_gpu, f"FSDP over {world} processes: estimated {per_gpu.total / memory.GIB:.2f} GiB per GPU"
    if gpus < 1:
        return plan, ""
    return plan, describe(choose(shape, card_bytes, gpus, stage=stage, **cfg))


def what_if(
    p: dict[str, Any], config: Any, card_gib: float, gpus: int, seq_len: int | None = None
) -> tuple[memory.Plan, Layout]:
    """Stage 02's plan and layout for `gpus` bf16 GPUs of `card_gib` each, from its parameters `p` (defaults merged)
    and the model's `config` (`models.model_config(p["base_model"])`) alone: nothing is loaded, no GPU is needed.
    Rows are taken at `max_length` (the worst case) unless `seq_len` is given."""
    shape = memory.Shape.from_config(config)
    targets = p["lora_targets"]
    cfg = dict(
        quantization="none" if p["quantization"] == "none" else "4bit",
        batch_size=p["batch_size"],
        seq_len=seq_len or p["max_length"],
        lora_r=p["lora_r"],
        lora_targets="all-linear" if isinstance(targets, str) else list(targets),
        optim=p["optim"],
        liger=bool(p.get("liger", True)),
    )
    card = card_gib * memory.GIB
    plan = memory.training_plan(shape, card, p["gradient_checkpointing"], p.get("activation_offloading", "auto"), **cfg)
    cfg.update(gradient_checkpointing=plan.checkpointing, keep_layers=plan.keep_layers, offload=plan.offload)
    return plan, choose(shape, card, gpus, **cfg)
