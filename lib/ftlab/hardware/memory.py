"""Peak-memory planning for LoRA / QLoRA training, from the model's config alone (nothing is loaded).

The estimate adds up: base weights by quantization (NF4 linear layers at ~0.52 byte/param with double
quantization, everything else in the compute dtype), LoRA parameters + gradients + optimizer states, activations
at the longest batch (with or without gradient checkpointing), the logits and loss, and the CUDA context.

Calibrated on an H100 grid (`benchmarks/results/planner_grid_*_h100.json`: 135M and 1B shapes, rank 16/64, seq
1024/2048, fixed and mixed lengths, checkpointing on/off, bf16/fp16): the allocated part is within 10% of
torch's measured peak in 9 of 10 configurations (`python benchmarks/planner_check.py`); the total adds the CUDA
context and 10% for the allocator. Stage 02 prints it next to the measured peak.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

GIB = 2**30
OPTIM_BYTES = {
    "adamw_bnb_8bit": 2,
    "adamw_8bit": 2,
    "paged_adamw_8bit": 2,
    "adamw_torch": 8,
    "adamw_torch_fused": 8,
    "sgd": 0,
}  # optimizer state bytes per trainable parameter


@dataclass
class Shape:
    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    tied: bool

    @classmethod
    def from_config(cls, cfg: Any) -> Shape:
        cfg = getattr(cfg, "text_config", None) or cfg
        heads = cfg.num_attention_heads
        return cls(
            cfg.vocab_size,
            cfg.hidden_size,
            cfg.num_hidden_layers,
            heads,
            getattr(cfg, "num_key_value_heads", None) or heads,
            getattr(cfg, "head_dim", None) or cfg.hidden_size // heads,
            cfg.intermediate_size,
            bool(getattr(cfg, "tie_word_embeddings", False)),
        )

    def linears(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each linear layer of one decoder block (Llama-style)."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        return {
            "q_proj": (self.hidden, q),
            "k_proj": (self.hidden, kv),
            "v_proj": (self.hidden, kv),
            "o_proj": (q, self.hidden),
            "gate_proj": (self.hidden, self.intermediate),
            "up_proj": (self.hidden, self.intermediate),
            "down_proj": (self.intermediate, self.hidden),
        }

    def linear_params(self) -> int:
        return self.layers * sum(i * o for i, o in self.linears().values())

    def other_params(self) -> int:
        return self.vocab * self.hidden * (1 if self.tied else 2) + self.layers * 2 * self.hidden + self.hidden


@dataclass
class Plan:
    weights: float
    lora: float
    optimizer: float
    activations: float
    logits: float
    context: float
    total: float
    trainable_params: int
    base_params: int
    offload: bool = False  # checkpointed activations kept in CPU memory (activation offloading)
    keep_layers: int = 0  # decoder layers whose activations stay for backward (not recomputed); all: no checkpointing
    layers: int = 0

    @property
    def checkpointing(self) -> bool:
        return self.keep_layers < self.layers

    def gib(self) -> dict[str, float]:
        return {k: round(v / GIB, 3) if isinstance(v, float) else v for k, v in asdict(self).items()}


def estimate(
    shape: Shape,
    *,
    quantization: str,
    batch_size: int,
    seq_len: int,
    lora_r: int,
    lora_targets: list[str] | str = "all-linear",
    dtype_bytes: int = 2,
    gradient_checkpointing: bool = True,
    optim: str = "adamw_bnb_8bit",
    cuda: bool = True,
    chunked_loss: bool = True,
    liger: bool = False,
    fp16_compute: bool = False,
    offload: bool = False,
    keep_layers: int = 0,
) -> Plan:
    """Estimated peak memory in bytes for one training step at (batch_size, seq_len). `liger`: Liger's fused
    linear cross-entropy computes the loss (stage 02 on CUDA); `fp16_compute`: fp16 mixed precision (no bf16);
    `offload`: activation offloading keeps the checkpointed block inputs in CPU memory (two stay on the GPU: the
    block in use and the next one being fetched); `keep_layers`: under checkpointing, that many decoder layers keep
    their activations instead of recomputing them (selective checkpointing; all layers = no checkpointing)."""
    lin, other = shape.linear_params(), shape.other_params()
    weights = lin * (0.52 if quantization == "4bit" else dtype_bytes) + other * dtype_bytes
    targets = (
        shape.linears()
        if lora_targets == "all-linear"
        else {k: v for k, v in shape.linears().items() if k in lora_targets}
    )
    trainable = shape.layers * sum(lora_r * (i + o) for i, o in targets.values())
    lora = trainable * (4 + 4)  # fp32 adapter weights + their gradients
    optimizer = trainable * OPTIM_BYTES.get(optim, 8)
    tokens = batch_size * seq_len
    h, inter = shape.hidden, shape.intermediate
    # one decoder block keeps ~ (7 h + 3 intermediate) values per token for backward (sdpa/flash: no s^2 term;
    # fitted on the H100 grid without checkpointing), LoRA adds its r-sized inputs; with checkpointing only each
    # block's input stays, plus one block in flight
    per_layer = tokens * (7 * h + 3 * inter + 2 * lora_r * len(targets)) * dtype_bytes
    keep = min(keep_layers, shape.layers) if gradient_checkpointing else shape.layers
    recomputed = shape.layers - keep
    kept = tokens * h * dtype_bytes * (min(2, recomputed) if offload else recomputed) + per_layer * keep
    activations = kept + (per_layer if recomputed else 0)
    if fp16_compute:  # measured: fp16 mixed precision kept about twice the activation memory of bf16 (0.96-1.03x)
        activations *= 2
    # Liger's fused linear cross-entropy holds fp32 logits and their gradient for one chunk of tokens, sized
    # next_pow2(tokens / ceil(vocab / hidden)); TRL's chunked loss works on [4096 tokens x 8192 vocab] tiles; a plain
    # loss holds fp32 logits for every token and their gradient
    if liger:
        chunk = 1 << max(0, math.ceil(math.log2(max(1, math.ceil(tokens / math.ceil(shape.vocab / h))))))
        logits = min(chunk, tokens) * shape.vocab * 4 * 2
    elif chunked_loss:
        logits = min(tokens, 4096) * min(shape.vocab, 8192) * 4 * 2
    else:
        logits = tokens * shape.vocab * 4 * 2
    context = 0.5 * GIB if cuda else 0.0
    total = (weights + lora + optimizer + activations + logits + context) * 1.10  # allocator fragmentation
    return Plan(
        float(weights),
        float(lora),
        float(optimizer),
        float(activations),
        float(logits),
        float(context),
        float(total),
        int(trainable),
        int(lin + other),
        offload and recomputed > 0,
        keep,
        shape.layers,
    )


AUTO_SHARE = 0.85  # gradient_checkpointing 'auto' plans to this share of the device (the fit check allows 0.95)


def training_plan(shape: Shape, limit_bytes: float, checkpointing: bool | str, offloading: str, **cfg: Any) -> Plan:
    """The plan for stage 02/03's `gradient_checkpointing` (True, False or 'auto') and `activation_offloading`.
    'auto' recomputes only what memory needs: it keeps the activations of as many decoder layers as fit under
    AUTO_SHARE of `limit_bytes` (all of them: no checkpointing, ~25% less compute per step) and checkpoints the rest;
    when even full checkpointing does not fit, activation offloading 'auto' decides as before."""
    if checkpointing != "auto":
        return with_offloading(shape, limit_bytes, offloading, gradient_checkpointing=bool(checkpointing), **cfg)
    if offloading != "on":
        plans = (estimate(shape, **cfg, keep_layers=k) for k in range(shape.layers, -1, -1))  # most kept first
        fit = next((p for p in plans if p.total <= limit_bytes * AUTO_SHARE), None)
        if fit is not None:
            return fit
    return with_offloading(shape, limit_bytes, offloading, gradient_checkpointing=True, **cfg)


def with_offloading(shape: Shape, limit_bytes: float, setting: str, **cfg: Any) -> Plan:
    """The plan for activation offloading `setting`: 'on', 'off', or 'auto': on only when the plan without it does
    not fit under 95% of `limit_bytes` and the plan with it does (offloading slows short rows: it is no default)."""
    plan = estimate(shape, **cfg, offload=setting == "on")
    if setting == "auto" and plan.total > limit_bytes * 0.95:
        kept = estimate(shape, **cfg, offload=True)
        if kept.total <= limit_bytes * 0.95:
            return kept
    return plan


def suggest(shape: Shape, limit_bytes: float, **cfg: Any) -> list[dict[str, Any]]:
    """Configurations that fit under `limit_bytes`, cheapest change first (same effective batch where possible)."""
    out = []
    tries: list[dict[str, Any]] = []
    if not cfg.get("gradient_checkpointing", True):
        tries.append({"gradient_checkpointing": True})
    b = cfg["batch_size"]
    while b > 1:
        b //= 2
        tries.append({"batch_size": b, "grad_accum_factor": cfg["batch_size"] // b})
    s = cfg["seq_len"]
    while s > 256:
        s //= 2
        tries.append({"batch_size": 1, "seq_len": s})
    if cfg.get("quantization") != "4bit":
        tries.append({"quantization": "4bit", "batch_size": 1})
    for t in tries:
        c = {**cfg, **{k: v for k, v in t.items() if k != "grad_accum_factor"}}
        if estimate(shape, **c).total <= limit_bytes:
            out.append(t)
            if len(out) >= 3:
                break
    return out


def table(plan: Plan, device_bytes: float | None, device_name: str = "device memory") -> str:
    g = plan.gib()
    rows = [
        ("base weights", g["weights"]),
        ("LoRA params + grads", g["lora"]),
        ("optimizer states", g["optimizer"]),
        ("activations", g["activations"]),
        ("logits + loss", g["logits"]),
        ("CUDA context", g["context"]),
    ]
    lines = [f"{k:<22}{v:>9.2f} GiB" for k, v in rows]
    lines.append(f"{'estimated peak (+10%)':<22}{g['total']:>9.2f} GiB")
    if device_bytes:
        lines.append(
            f"{device_name:<22}{device_bytes / GIB:>9.2f} GiB  -> {'fits' if plan.total <= device_bytes * 0.95 else 'DOES NOT FIT'}"
        )
    lines.append(
        f"trainable LoRA params: {plan.trainable_params:,} of {plan.base_params:,} "
        f"({100 * plan.trainable_params / max(plan.base_params, 1):.2f}%)"
    )
    return "\n".join(lines)


def device_limit() -> tuple[float, str]:
    """Bytes training may use: the GPU's total memory (or the cap `FTLAB_GPU_CAP_GIB` sets, applied here), or the
    RAM available now on a CPU machine."""
    import psutil
    import torch

    from ftlab.hardware import devices

    if torch.cuda.is_available():
        cap = devices.cap_memory()
        total = float(torch.cuda.get_device_properties(0).total_memory)
        return (min(cap, total), f"GPU memory (capped by {devices.CAP_VARIABLE})") if cap else (total, "GPU memory")
    return float(psutil.virtual_memory().available), "available RAM"


def advice(plan: Plan, limit: float, fits: list[dict[str, Any]]) -> str:
    tips = "; ".join(", ".join(f"{k}={v}" for k, v in f.items()) for f in fits) or "a smaller model or a bigger GPU"
    return (
        f"estimated peak {plan.total / GIB:.2f} GiB vs {limit / GIB:.2f} GiB available. Settings that fit: {tips} "
        "(keep batch_size x grad_accum constant to keep the same effective batch)."
    )
